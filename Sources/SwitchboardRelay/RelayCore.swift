// The relay's decisions, sans I/O: who is online on which connection, who may see whose presence,
// where a message goes (live delivery, mailbox, or refusal), which resends are duplicates, and whose
// acknowledgement a completed delivery releases. It never touches a socket, a clock or the disk:
// callers pass time in and carry out the decisions. All state belongs to the loop thread.

/// SwitchboardRelay owns the chat semantics of the server: sessions, presence visibility, contact
/// views of online users, routing decisions, per-sender duplicate suppression, mailbox quotas and the
/// bookkeeping of unacknowledged live deliveries (`DeliveryWindow`).
import SwitchboardProtocol
import SwitchboardStore

/// The server's handle for one connection (opaque to the core).
public struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    public let raw: UInt64
    public init(_ raw: UInt64) { self.raw = raw }
    public var description: String { "conn#\(raw)" }
}

public struct RelayLimits: Sendable {
    public var mailboxMaxMessages: Int
    public var mailboxMaxBytes: Int
    public var maxBodyBytes: Int
    /// How many recent message ids per sender are remembered for duplicate suppression.
    public var dedupeWindow: Int
    public init(mailboxMaxMessages: Int = 10_000, mailboxMaxBytes: Int = 64 << 20, maxBodyBytes: Int = 65_472, dedupeWindow: Int = 1024) {
        self.mailboxMaxMessages = mailboxMaxMessages; self.mailboxMaxBytes = mailboxMaxBytes
        self.maxBodyBytes = maxBodyBytes; self.dedupeWindow = dedupeWindow
    }
}

/// Where one SEND goes.
public enum RouteDecision: Equatable, Sendable {
    /// Write a DELIVER to this connection now.
    case deliver(ConnectionID)
    /// Store as mail with this mailbox sequence; ack once durable.
    case store(recipient: UserID, mailSeq: UInt64)
    /// Same (sender, id) is still in flight: its acknowledgement will come; drop this copy.
    case dropInFlightDuplicate
    /// Same (sender, id) already completed: acknowledge again with the recorded status, do nothing else.
    case acknowledgeDuplicate(SendStatus)
    case reject(ErrorCode, String)
}

/// One logged-in user. A class so that the hot path reads it through one dictionary lookup and a
/// reference, instead of copying (and retaining everything in) a struct per message.
public final class Session {
    public let userID: UserID
    public let name: String
    public let connection: ConnectionID
    public let address: String
    /// How each contact relates to this user (incoming/outgoing requests and accepted contacts).
    public var contacts: IDMap<UserID, ContactState>
    public var contactNames: [UserID: String]
    /// Set by the server while this user's output backlog is over its soft cap: new messages
    /// are stored as mail instead of growing the backlog.
    public var congested = false

    init(userID: UserID, name: String, connection: ConnectionID, address: String,
         contacts: IDMap<UserID, ContactState>, contactNames: [UserID: String]) {
        self.userID = userID; self.name = name; self.connection = connection; self.address = address
        self.contacts = contacts; self.contactNames = contactNames
    }
}

public struct LoginOutcome {
    /// The previous connection of the same user, to be told and closed.
    public var takenOver: ConnectionID?
    /// The user's contacts with relation and online status, sorted by name.
    public var contacts: [ContactInfo]
    /// Accepted contacts who are online and must be told this user is now online.
    public var notifyOnline: [ConnectionID]
}

public final class RelayCore {
    /// The mailbox quotas may be changed by a configuration reload (checked at each store).
    public var limits: RelayLimits
    public private(set) var sessions = IDMap<UserID, Session>()
    private var connectionUsers: [ConnectionID: UserID] = [:]
    /// Behind a class on purpose: mutating a struct stored in a dictionary goes through nested
    /// `_modify` coroutines whose frames are heap-allocated (3 mallocs per message, measured with
    /// DHAT); a reference is looked up and mutated in place with none.
    private final class SenderHistory {
        let ids: RecentMessageIDs
        init(capacity: Int) { ids = RecentMessageIDs(capacity: capacity) }
    }
    private var recentIDs = IDMap<UserID, SenderHistory>()
    private var mailboxes: [UserID: MailboxState] = [:]
    /// Loads a mailbox's persisted usage the first time the core needs it (the store, in production).
    private let loadMailboxUsage: (UserID) -> MailboxUsage

    public struct MailboxState: Equatable, Sendable {
        public var count: Int
        public var bytes: Int
        public var lastSeq: UInt64
    }

    public init(limits: RelayLimits, loadMailboxUsage: @escaping (UserID) -> MailboxUsage) {
        self.limits = limits
        self.loadMailboxUsage = loadMailboxUsage
    }

    public var onlineCount: Int { sessions.count }

    public func session(of user: UserID) -> Session? { sessions[user] }
    public func user(on connection: ConnectionID) -> UserID? { connectionUsers[connection] }
    public func connection(of user: UserID) -> ConnectionID? { sessions[user]?.connection }

    // MARK: sessions and presence

    /// A user finished authentication on `connection`. `contacts` comes from the store.
    public func login(user: UserID, name: String, connection: ConnectionID, address: String,
                      contacts stored: [ContactEntry]) -> LoginOutcome {
        var takenOver: ConnectionID?
        var wasOnline = false
        if let previous = sessions[user] {
            takenOver = previous.connection
            connectionUsers[previous.connection] = nil
            wasOnline = true
        }
        var contactStates = IDMap<UserID, ContactState>()
        var names: [UserID: String] = [:]
        for entry in stored {
            contactStates[entry.userID] = entry.state
            names[entry.userID] = entry.name
        }
        sessions[user] = Session(userID: user, name: name, connection: connection, address: address,
                                 contacts: contactStates, contactNames: names)
        connectionUsers[connection] = user
        var infos: [ContactInfo] = []
        var notify: [ConnectionID] = []
        for entry in stored {
            let contactSession = sessions[entry.userID]
            let mutual = entry.state == .accepted && contactSession?.contacts[user] == .accepted
            infos.append(ContactInfo(userID: entry.userID, name: entry.name, relation: ContactRelation(entry.state),
                                     online: mutual && contactSession != nil))
            if mutual, !wasOnline, let contactSession { notify.append(contactSession.connection) }
        }
        infos.sort { $0.name < $1.name }
        return LoginOutcome(takenOver: takenOver, contacts: infos, notifyOnline: notify)
    }

    /// The connection closed. Returns the connections to tell that the user went offline, or an
    /// empty list when this connection was not (or no longer) the user's session.
    public func connectionClosed(_ connection: ConnectionID) -> [ConnectionID] {
        guard let user = connectionUsers.removeValue(forKey: connection), let session = sessions[user],
              session.connection == connection else { return [] }
        sessions[user] = nil
        return visibleContactConnections(of: session)
    }

    /// Online users who see `session`'s presence (accepted both ways).
    private func visibleContactConnections(of session: Session) -> [ConnectionID] {
        var result: [ConnectionID] = []
        for (contact, state) in session.contacts where state == .accepted {
            if let other = sessions[contact], other.contacts[session.userID] == .accepted {
                result.append(other.connection)
            }
        }
        return result
    }

    public func setCongested(_ user: UserID, _ congested: Bool) {
        sessions[user]?.congested = congested
    }

    /// Result of opening a chat dialog: whether the contact can be reached live.
    public enum ChatStatus: Equatable, Sendable { case online, offline, notAContact }

    public func openChat(from user: UserID, with contact: UserID) -> ChatStatus {
        guard let session = sessions[user], session.contacts[contact] == .accepted else { return .notAContact }
        return sessions[contact] == nil ? .offline : .online
    }

    // MARK: contacts

    /// Pushes to send after the store committed a contact change.
    public struct ContactPush: Equatable, Sendable {
        public var connection: ConnectionID
        public var info: ContactInfo
    }

    /// Applies a committed change to the online parties and says what each should be told.
    /// `ownerView`/`otherView` are how each side now sees the other (nil: removed).
    public func applyContactChange(owner: UserID, other: UserID, ownerView: ContactEntry?, otherView: ContactEntry?)
        -> [ContactPush] {
        // Names as known before the change: a removal push still names the removed contact.
        let ownerKnewOtherAs = sessions[owner]?.contactNames[other]
        let otherKnewOwnerAs = sessions[other]?.contactNames[owner]
        func apply(_ user: UserID, _ counterpart: UserID, _ view: ContactEntry?) {
            guard sessions[user] != nil else { return }
            if let view {
                sessions[user]!.contacts[counterpart] = view.state
                sessions[user]!.contactNames[counterpart] = view.name
            } else {
                sessions[user]!.contacts[counterpart] = nil
                sessions[user]!.contactNames[counterpart] = nil
            }
        }
        apply(owner, other, ownerView)
        apply(other, owner, otherView)
        let mutual = ownerView?.state == .accepted && otherView?.state == .accepted
        var pushes: [ContactPush] = []
        func push(to user: UserID, about counterpart: UserID, view: ContactEntry?, formerName: String?) {
            guard let session = sessions[user] else { return }
            let name = view?.name ?? formerName ?? ""
            let online = mutual && sessions[counterpart] != nil
            pushes.append(ContactPush(connection: session.connection,
                                      info: ContactInfo(userID: counterpart, name: name,
                                                        relation: view.map { ContactRelation($0.state) } ?? .removed,
                                                        online: online)))
        }
        push(to: owner, about: other, view: ownerView, formerName: ownerKnewOtherAs)
        push(to: other, about: owner, view: otherView, formerName: otherKnewOwnerAs)
        return pushes
    }

    /// Contact list of an online user, as for a listing request.
    public func contactList(of user: UserID) -> [ContactInfo] {
        guard let session = sessions[user] else { return [] }
        var infos: [ContactInfo] = []
        for (contact, state) in session.contacts {
            let mutual = state == .accepted && sessions[contact]?.contacts[user] == .accepted
            infos.append(ContactInfo(userID: contact, name: session.contactNames[contact] ?? "", relation: ContactRelation(state),
                                     online: mutual))
        }
        infos.sort { $0.name < $1.name }
        return infos
    }

    // MARK: messages (hot path: no allocation in steady state)

    /// Decides where a SEND goes. The sender's identity comes from its session, never from the frame.
    public func route(from sender: UserID, to recipient: UserID, messageID: UInt64, bodyBytes: Int) -> RouteDecision {
        guard let session = sessions[sender] else { return .reject(.notAllowedNow, "not logged in") }
        guard session.contacts[recipient] == .accepted else {
            return .reject(.notAContact, "user \(recipient) is not an accepted contact")
        }
        guard bodyBytes <= limits.maxBodyBytes else {
            return .reject(.invalidRequest, "message body of \(bodyBytes) bytes exceeds \(limits.maxBodyBytes)")
        }
        switch recentIDs[sender]?.ids.lookup(messageID) {
        case .some(.inFlight): return .dropInFlightDuplicate
        case .some(.completed(let status)): return .acknowledgeDuplicate(status)
        case .none: break
        }
        if let target = sessions[recipient], !target.congested {
            remember(sender: sender, messageID: messageID)
            return .deliver(target.connection)
        }
        return storeDecision(sender: sender, recipient: recipient, messageID: messageID, bodyBytes: bodyBytes)
    }

    /// A message that was delivered live but never acknowledged (the receiver dropped): goes to mail.
    public func rerouteToMailbox(sender: UserID, recipient: UserID, messageID: UInt64, bodyBytes: Int) -> RouteDecision {
        storeDecision(sender: sender, recipient: recipient, messageID: messageID, bodyBytes: bodyBytes, alreadyRemembered: true)
    }

    private func storeDecision(sender: UserID, recipient: UserID, messageID: UInt64, bodyBytes: Int,
                               alreadyRemembered: Bool = false) -> RouteDecision {
        var box = mailbox(of: recipient)
        if box.count + 1 > limits.mailboxMaxMessages || box.bytes + bodyBytes > limits.mailboxMaxBytes {
            if alreadyRemembered { forget(sender: sender, messageID: messageID) }
            return .reject(.mailboxFull, "the recipient's mailbox is full (\(limits.mailboxMaxMessages) messages or \(limits.mailboxMaxBytes) bytes)")
        }
        box.count += 1
        box.bytes += bodyBytes
        box.lastSeq += 1
        mailboxes[recipient] = box
        if !alreadyRemembered { remember(sender: sender, messageID: messageID) }
        return .store(recipient: recipient, mailSeq: box.lastSeq)
    }

    public func mailbox(of user: UserID) -> MailboxState {
        if let box = mailboxes[user] { return box }
        let usage = loadMailboxUsage(user)
        let box = MailboxState(count: usage.count, bytes: usage.bytes, lastSeq: usage.lastSeq)
        mailboxes[user] = box
        return box
    }

    /// Mail left the mailbox (acknowledged by its recipient and deleted), or a store failed.
    public func mailRemoved(recipient: UserID, count: Int, bytes: Int) {
        guard var box = mailboxes[recipient] else { return }
        box.count = max(0, box.count - count)
        box.bytes = max(0, box.bytes - bytes)
        mailboxes[recipient] = box
    }

    /// A message reached its final state; returns the sender's connection to acknowledge, if online.
    public func completed(sender: UserID, messageID: UInt64, status: SendStatus) -> ConnectionID? {
        recentIDs[sender]?.ids.complete(messageID, status: status)
        return sessions[sender]?.connection
    }

    /// A message failed for good (e.g. the store refused it): forget it so a resend is tried again.
    public func failed(sender: UserID, messageID: UInt64) -> ConnectionID? {
        forget(sender: sender, messageID: messageID)
        return sessions[sender]?.connection
    }

    private func remember(sender: UserID, messageID: UInt64) {
        let history: SenderHistory
        if let existing = recentIDs[sender] {
            history = existing
        } else {
            history = SenderHistory(capacity: limits.dedupeWindow)
            recentIDs[sender] = history
        }
        history.ids.insertInFlight(messageID)
    }

    private func forget(sender: UserID, messageID: UInt64) {
        recentIDs[sender]?.ids.remove(messageID)
    }

    /// Removes and returns the duplicate-suppression memory of offline users with nothing in flight
    /// (all users' with `all`), oldest id first, so the caller can persist it before it is forgotten.
    public func takeSenderHistories(all: Bool = false) -> [(sender: UserID, entries: [(id: UInt64, status: SendStatus)])] {
        var taken: [(sender: UserID, entries: [(id: UInt64, status: SendStatus)])] = []
        for (user, history) in recentIDs where all || (sessions[user] == nil && history.ids.inFlightCount == 0) {
            taken.append((user, history.ids.completedEntries()))
        }
        for item in taken { recentIDs[item.sender] = nil }
        return taken
    }

    /// True while the core remembers recent ids of `sender`.
    public func hasSenderHistory(_ sender: UserID) -> Bool { recentIDs[sender] != nil }

    /// Restores a persisted history (oldest first) for a sender the core has none for.
    public func restoreSenderHistory(_ sender: UserID, _ entries: [(id: UInt64, status: SendStatus)]) {
        guard recentIDs[sender] == nil, !entries.isEmpty else { return }
        let history = SenderHistory(capacity: limits.dedupeWindow)
        for entry in entries.suffix(limits.dedupeWindow) { history.ids.restoreCompleted(entry.id, status: entry.status) }
        recentIDs[sender] = history
    }
}

extension ContactRelation {
    public init(_ state: ContactState) {
        switch state {
        case .outgoingRequest: self = .outgoingRequest
        case .incomingRequest: self = .incomingRequest
        case .accepted: self = .accepted
        }
    }
}
