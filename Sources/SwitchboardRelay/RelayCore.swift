// The relay's decisions, sans I/O: who is online on which connections (devices), who may see whose presence,
// where a message goes (live delivery, mailbox, or refusal), which resends are duplicates, and whose
// acknowledgement a completed delivery releases. It never touches a socket, a clock or the disk:
// callers pass time in and carry out the decisions. All state belongs to the loop thread.

/// SwitchboardRelay owns the chat semantics of the server: sessions, presence visibility, contact
/// views of online users, routing decisions, per-sender duplicate suppression, mailbox quotas and the
/// bookkeeping of unacknowledged live deliveries (`DeliveryWindow`).
import SwitchboardProtocol
import SwitchboardStore

/// A message as its sender names it.
public struct MessageKey: Hashable, Sendable {
    public var sender: UserID
    public var messageID: UInt64
    public init(sender: UserID, messageID: UInt64) { self.sender = sender; self.messageID = messageID }
}

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
    /// How many devices (sessions) of one user may be online at once.
    public var maxDevicesPerUser: Int
    public init(mailboxMaxMessages: Int = 10_000, mailboxMaxBytes: Int = 64 << 20, maxBodyBytes: Int = 65_472, dedupeWindow: Int = 1024,
                maxDevicesPerUser: Int = 8) {
        self.mailboxMaxMessages = mailboxMaxMessages; self.mailboxMaxBytes = mailboxMaxBytes
        self.maxBodyBytes = maxBodyBytes; self.dedupeWindow = dedupeWindow; self.maxDevicesPerUser = maxDevicesPerUser
    }
}

/// Where one SEND goes.
public enum RouteDecision: Equatable, Sendable {
    /// Write a DELIVER to this connection now (the recipient's one reachable device).
    case deliver(ConnectionID)
    /// Write a DELIVER to every device of the recipient that is not congested (`Session.devices`):
    /// `count` of them, each a pending copy; the first acknowledgement completes the message.
    case deliverToDevices(count: Int)
    /// Store as mail with this mailbox sequence; ack once durable.
    case store(recipient: UserID, mailSeq: UInt64)
    /// Cluster mode: the recipient is online on another node (its index in the directory): hand the
    /// message to that node; its outcome completes the send.
    case forward(node: UInt16)
    /// Cluster mode: the recipient has devices here (`localCopies` reachable ones) and on other nodes: a
    /// DELIVER to each local device and the message to each of those nodes; the first acknowledgement
    /// completes it, and it goes to the mailbox once every copy was lost (`RemoteUser.nodes`).
    case deliverAndForward(localCopies: Int)
    /// Same (sender, id) is still in flight: its acknowledgement will come; drop this copy.
    case dropInFlightDuplicate
    /// Same (sender, id) already completed: acknowledge again with the recorded status, do nothing else.
    case acknowledgeDuplicate(SendStatus)
    case reject(ErrorCode, String)
}

/// One online device of a user: one connection.
public struct DeviceSession: Sendable, Equatable {
    public let connection: ConnectionID
    /// The stable id the client keeps; "" is the implicit device of a LOGIN without one (version 1).
    public let deviceID: String
    public let deviceName: String
    public let address: String
    /// Speaks protocol version 2 or later: gets SENT_COPY of its user's sends from other devices.
    public let receivesCopies: Bool
    /// Set by the server while this connection's output backlog is over its soft cap: new messages
    /// are not delivered to it (stored as mail when no device of the user can take them).
    public var congested = false
}

/// One logged-in user and its online devices (one per connection, at least one). A class so that the
/// hot path reads it through one dictionary lookup and a reference, instead of copying (and retaining
/// everything in) a struct per message.
public final class Session {
    public let userID: UserID
    public let name: String
    /// Oldest login first. Never empty while the session is in `RelayCore.sessions`.
    public internal(set) var devices: [DeviceSession] { didSet { deriveRouting() } }
    /// Derived from `devices` whenever it changes (never set elsewhere), so the hot path reads two
    /// plain fields instead of the array: how many devices, and the one to deliver to when there is
    /// exactly one and it is not congested.
    public private(set) var deviceCount = 1
    public private(set) var soleReachable: ConnectionID?
    /// How each contact relates to this user (incoming/outgoing requests and accepted contacts).
    public var contacts: IDMap<UserID, ContactState>
    public var contactNames: [UserID: String]

    init(userID: UserID, name: String, device: DeviceSession,
         contacts: IDMap<UserID, ContactState>, contactNames: [UserID: String]) {
        self.userID = userID; self.name = name; self.devices = [device]
        self.contacts = contacts; self.contactNames = contactNames
        deriveRouting()
    }

    private func deriveRouting() {
        deviceCount = devices.count
        soleReachable = devices.count == 1 && !devices[0].congested ? devices[0].connection : nil
    }

    /// The oldest device's connection (the only one for a single-device user).
    public var connection: ConnectionID { devices[0].connection }
    public var address: String { devices[0].address }
    /// True when no device can take a live delivery.
    public var congested: Bool { !devices.contains { !$0.congested } }

    func index(of connection: ConnectionID) -> Int? { devices.firstIndex { $0.connection == connection } }
}

public struct LoginOutcome {
    /// The previous connection of the same device, to be told and closed.
    public var takenOver: ConnectionID?
    /// The user's contacts with relation and online status, sorted by name.
    public var contacts: [ContactInfo]
    /// Connections of accepted contacts who are online and must be told this user is now online
    /// (only at the user's first device: presence changes at first login and last logout).
    public var notifyOnline: [ConnectionID]
    /// Set when the login is refused (too many devices); then nothing changed.
    public var refusal: String? = nil
    /// The user's session (shared by all its devices), nil when refused.
    public var session: Session? = nil
}

public final class RelayCore {
    /// The mailbox quotas may be changed by a configuration reload (checked at each store).
    public var limits: RelayLimits
    public internal(set) var sessions = IDMap<UserID, Session>()
    /// Cluster mode: users online on other nodes (RelayCore+Cluster.swift). Empty on a single node.
    public internal(set) var remote = IDMap<UserID, RemoteUser>()
    /// Cluster mode: recent ids of messages other nodes handed here for local receivers, per sender
    /// (kept apart from `recentIDs`, which is the sender's own window and is persisted).
    var inboundIDs = IDMap<UserID, SenderHistory>()
    /// Cluster mode: one message that reached this node both ways while the first copy was in flight: the sender
    /// resent it from a device here while the copy its previous node handed here was in flight (`localResends`:
    /// answered here when that copy settles: its node may be gone, or the sender left it), or the previous node's
    /// copy arrived while the resend from here was in flight (`inboundResends`: that node is answered when the local
    /// one settles). Bounded by `maxCrossResends`; pruned of what is no longer in flight.
    public internal(set) var localResends = Set<MessageKey>()
    public internal(set) var inboundResends = Set<MessageKey>()
    public static let maxCrossResends = 65_536
    private var connectionUsers: [ConnectionID: UserID] = [:]
    /// Behind a class on purpose: mutating a struct stored in a dictionary goes through nested
    /// `_modify` coroutines whose frames are heap-allocated (3 mallocs per message, measured with
    /// DHAT); a reference is looked up and mutated in place with none.
    final class SenderHistory {
        let ids: RecentMessageIDs
        init(capacity: Int) { ids = RecentMessageIDs(capacity: capacity) }
    }
    var recentIDs = IDMap<UserID, SenderHistory>()
    var mailboxes: [UserID: MailboxState] = [:]
    /// Loads a mailbox's persisted usage the first time the core needs it (the store, in production).
    private let loadMailboxUsage: (UserID) -> MailboxUsage

    public struct MailboxState: Equatable, Sendable {
        public var count: Int
        public var bytes: Int
        public var lastSeq: UInt64
        /// Highest MAIL_ACK of any device: mail at or below it is deleted (or being deleted) and is
        /// not counted again when another device acknowledges the same mail.
        public var ackedThrough: UInt64 = 0
        /// Cluster mode: the store's high-water mark when this usage was read. Every replica stores a recipient's
        /// mail under rising seqs in log order, so another node's mail at or below it was counted in that read
        /// (its notice may come after the read: `foreignMailStored` must not count it twice).
        public var loadedThrough: UInt64 = 0

        /// The usage (not when it was read).
        public static func == (a: MailboxState, b: MailboxState) -> Bool {
            a.count == b.count && a.bytes == b.bytes && a.lastSeq == b.lastSeq && a.ackedThrough == b.ackedThrough
        }
    }

    public init(limits: RelayLimits, loadMailboxUsage: @escaping (UserID) -> MailboxUsage) {
        self.limits = limits
        self.loadMailboxUsage = loadMailboxUsage
    }

    /// Users online (with at least one device).
    public var onlineCount: Int { sessions.count }

    public func session(of user: UserID) -> Session? { sessions[user] }
    public func user(on connection: ConnectionID) -> UserID? { connectionUsers[connection] }
    /// The user's oldest device's connection.
    public func connection(of user: UserID) -> ConnectionID? { sessions[user]?.connection }

    // MARK: sessions and presence

    /// A user finished authentication on `connection` as device `deviceID` ("" for a LOGIN without a
    /// device). The same device's older connection is taken over; another device joins alongside,
    /// up to `maxDevicesPerUser`. `contacts` comes from the store.
    public func login(user: UserID, name: String, connection: ConnectionID, address: String,
                      contacts stored: [ContactEntry], deviceID: String = "", deviceName: String = "",
                      receivesCopies: Bool = false) -> LoginOutcome {
        var takenOver: ConnectionID?
        let device = DeviceSession(connection: connection, deviceID: deviceID, deviceName: deviceName, address: address,
                                   receivesCopies: receivesCopies)
        var contactStates = IDMap<UserID, ContactState>()
        var names: [UserID: String] = [:]
        for entry in stored {
            contactStates[entry.userID] = entry.state
            names[entry.userID] = entry.name
        }
        // The device limit counts the user's devices on every node (cluster mode): a device not online anywhere
        // yet is refused at the limit; the same device logging in again takes its old connection over, here or
        // on another node. (Two logins on two nodes at the same moment can each see the other's node one device
        // short: the limit can be passed by one per node for as long as a presence event takes.)
        let elsewhere = remote.isEmpty ? nil : remote[user]
        let local = sessions[user]
        if local?.devices.contains(where: { $0.deviceID == deviceID }) != true,
           elsewhere?.devices.contains(where: { $0.deviceID == deviceID }) != true {
            let localCount = local?.devices.count ?? 0
            let remoteCount = elsewhere?.devices.count ?? 0
            if localCount + remoteCount >= limits.maxDevicesPerUser {
                var online = (local?.devices ?? []).map { $0.deviceName.isEmpty ? "(unnamed)" : $0.deviceName }
                if remoteCount > 0 { online.append("\(remoteCount) on other servers") }
                return LoginOutcome(takenOver: nil, contacts: [], notifyOnline: [],
                                    refusal: "\(name) already has \(localCount + remoteCount) devices online (the limit is \(limits.maxDevicesPerUser)): \(online.joined(separator: ", ")); log out one of them first")
            }
        }
        // The same device logged in elsewhere before: this login takes it over (its old node closes it without
        // announcing a logout), so its entry in the directory goes now.
        if let elsewhere, elsewhere.devices.contains(where: { $0.deviceID == deviceID }) {
            elsewhere.devices.removeAll { $0.deviceID == deviceID }
            if elsewhere.devices.isEmpty { remote[user] = nil }
        }
        var wasOnline = remote[user] != nil
        let session: Session
        if let existing = sessions[user] {
            wasOnline = true
            if let index = existing.devices.firstIndex(where: { $0.deviceID == deviceID }) {
                let previous = existing.devices[index].connection
                takenOver = previous
                connectionUsers[previous] = nil
                existing.devices.remove(at: index)
            }
            existing.devices.append(device)
            existing.contacts = contactStates
            existing.contactNames = names
            session = existing
        } else {
            session = Session(userID: user, name: name, device: device, contacts: contactStates, contactNames: names)
            sessions[user] = session
        }
        connectionUsers[connection] = user
        var infos: [ContactInfo] = []
        var notify: [ConnectionID] = []
        for entry in stored {
            let contactSession = sessions[entry.userID]
            let mutual = entry.state == .accepted && contactSession?.contacts[user] == .accepted
            // A contact online on another node: acceptance is mutual in the store (one op sets both views).
            let remoteOnline = contactSession == nil && entry.state == .accepted && remote[entry.userID] != nil
            infos.append(ContactInfo(userID: entry.userID, name: entry.name, relation: ContactRelation(entry.state),
                                     online: (mutual && contactSession != nil) || remoteOnline))
            if mutual, !wasOnline, let contactSession { notify.append(contentsOf: contactSession.devices.map(\.connection)) }
        }
        infos.sort { $0.name < $1.name }
        return LoginOutcome(takenOver: takenOver, contacts: infos, notifyOnline: notify, session: session)
    }

    /// The connection closed. Returns the connections to tell that the user went offline: empty
    /// unless this was the user's last device.
    public func connectionClosed(_ connection: ConnectionID) -> [ConnectionID] {
        guard let user = connectionUsers.removeValue(forKey: connection), let session = sessions[user],
              let index = session.index(of: connection) else { return [] }
        session.devices.remove(at: index)
        guard session.devices.isEmpty else { return [] }
        sessions[user] = nil
        // Still online on another node: its contacts here go on seeing it online.
        if remote[user] != nil { return [] }
        return visibleContactConnections(of: session)
    }

    /// Connections of online users who see `session`'s presence (accepted both ways), every device.
    func visibleContactConnections(of session: Session) -> [ConnectionID] {
        var result: [ConnectionID] = []
        for (contact, state) in session.contacts where state == .accepted {
            if let other = sessions[contact], other.contacts[session.userID] == .accepted {
                for device in other.devices { result.append(device.connection) }
            }
        }
        return result
    }

    /// Congestion of the device on `connection` (see `DeviceSession.congested`).
    public func setCongested(_ connection: ConnectionID, _ congested: Bool) {
        guard let user = connectionUsers[connection], let session = sessions[user],
              let index = session.index(of: connection) else { return }
        session.devices[index].congested = congested
    }

    /// Congestion of every device of `user` (tests of single-device users).
    public func setCongested(_ user: UserID, _ congested: Bool) {
        guard let session = sessions[user] else { return }
        for index in session.devices.indices { session.devices[index].congested = congested }
    }

    /// Result of opening a chat dialog: whether the contact can be reached live.
    public enum ChatStatus: Equatable, Sendable { case online, offline, notAContact }

    public func openChat(from user: UserID, with contact: UserID) -> ChatStatus {
        guard let session = sessions[user], session.contacts[contact] == .accepted else { return .notAContact }
        return sessions[contact] == nil && remote[contact] == nil ? .offline : .online
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
            let online = mutual && (sessions[counterpart] != nil || remote[counterpart] != nil)
            let info = ContactInfo(userID: counterpart, name: name, relation: view.map { ContactRelation($0.state) } ?? .removed,
                                   online: online)
            for device in session.devices { pushes.append(ContactPush(connection: device.connection, info: info)) }
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
            let mutual = state == .accepted && (sessions[contact]?.contacts[user] == .accepted
                                                || (sessions[contact] == nil && remote[contact] != nil))
            infos.append(ContactInfo(userID: contact, name: session.contactNames[contact] ?? "", relation: ContactRelation(state),
                                     online: mutual))
        }
        infos.sort { $0.name < $1.name }
        return infos
    }

    // MARK: messages (hot path: no allocation in steady state)

    /// Decides where a SEND goes. The sender's identity comes from its session, never from the frame.
    public func route(from sender: UserID, to recipient: UserID, messageID: UInt64, bodyBytes: Int) -> RouteDecision {
        var senderDevices = 0
        return route(from: sender, to: recipient, messageID: messageID, bodyBytes: bodyBytes, senderDevices: &senderDevices)
    }

    /// The same, also telling how many devices the sender has online (its other devices get a copy).
    public func route(from sender: UserID, to recipient: UserID, messageID: UInt64, bodyBytes: Int,
                      senderDevices: inout Int) -> RouteDecision {
        guard let session = sessions[sender] else { return .reject(.notAllowedNow, "not logged in") }
        // Devices on other nodes get their copies too (cluster mode; a single node loads and compares).
        senderDevices = remote.isEmpty ? session.deviceCount : session.deviceCount + (remote[sender]?.devices.count ?? 0)
        guard session.contacts[recipient] == .accepted else {
            return .reject(.notAContact, "user \(recipient) is not an accepted contact")
        }
        guard bodyBytes <= limits.maxBodyBytes else {
            return .reject(.invalidRequest, "message body of \(bodyBytes) bytes exceeds \(limits.maxBodyBytes)")
        }
        switch recentIDs[sender]?.ids.lookup(messageID) {
        case .some(.inFlight): return .dropInFlightDuplicate
        case .some(.completed(let status)): return .acknowledgeDuplicate(status)
        case .none:
            // Cluster mode: the same message may have come here from the sender's previous node (which
            // died before it could answer) and the sender now resends it from here.
            if !inboundIDs.isEmpty, let seen = inboundIDs[sender]?.ids.lookup(messageID) {
                if case .completed(let status) = seen { return .acknowledgeDuplicate(status) }
                // Answered here when the first copy settles (`takeLocalResend`).
                if localResends.count < Self.maxCrossResends { localResends.insert(MessageKey(sender: sender, messageID: messageID)) }
                return .dropInFlightDuplicate
            }
        }
        // Single node: `remote` is empty and this is one load and a compare.
        let elsewhere = remote.isEmpty ? nil : remote[recipient]
        if let target = sessions[recipient] {
            if let elsewhere {
                var reachable = 0
                for device in target.devices where !device.congested { reachable += 1 }
                let copies = reachable + elsewhere.nodeCount
                remember(sender: sender, messageID: messageID, pendingCopies: copies)
                return .deliverAndForward(localCopies: reachable)
            }
            if let only = target.soleReachable {
                remember(sender: sender, messageID: messageID, pendingCopies: 1)
                return .deliver(only)
            } else if target.deviceCount > 1 {
                var reachable = 0
                for device in target.devices where !device.congested { reachable += 1 }
                if reachable > 0 {
                    remember(sender: sender, messageID: messageID, pendingCopies: reachable)
                    return .deliverToDevices(count: reachable)
                }
            }
        } else if let elsewhere {
            let nodes = elsewhere.nodeCount
            remember(sender: sender, messageID: messageID, pendingCopies: nodes)
            return nodes == 1 ? .forward(node: elsewhere.homeNode) : .deliverAndForward(localCopies: 0)
        }
        return storeDecision(sender: sender, recipient: recipient, messageID: messageID, bodyBytes: bodyBytes)
    }

    /// One pending live copy of a message will never be acknowledged (its device dropped, or could not
    /// be written to). `.last` when that was the last one and the message is still in flight: then it
    /// goes to the mailbox (`rerouteToMailbox`). `.othersRemain` when another device still holds a copy
    /// or one already acknowledged it. `.unknown` when the core no longer remembers the id (evicted
    /// from the sender's window): the caller looks at the receiver's other devices' windows.
    public func deliveryLost(sender: UserID, messageID: UInt64) -> RecentMessageIDs.CopyLoss {
        guard let history = recentIDs[sender] else { return .unknown }
        return history.ids.copyLost(messageID)
    }

    /// A message that was delivered live but never acknowledged (the receiver dropped): goes to mail.
    public func rerouteToMailbox(sender: UserID, recipient: UserID, messageID: UInt64, bodyBytes: Int) -> RouteDecision {
        storeDecision(sender: sender, recipient: recipient, messageID: messageID, bodyBytes: bodyBytes, alreadyRemembered: true)
    }

    func storeDecision(sender: UserID, recipient: UserID, messageID: UInt64, bodyBytes: Int,
                               alreadyRemembered: Bool = false, inbound: Bool = false) -> RouteDecision {
        var box = mailbox(of: recipient)
        if box.count + 1 > limits.mailboxMaxMessages || box.bytes + bodyBytes > limits.mailboxMaxBytes {
            if inbound { inboundIDs[sender]?.ids.remove(messageID) } else if alreadyRemembered { forget(sender: sender, messageID: messageID) }
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
        var box = MailboxState(count: usage.count, bytes: usage.bytes, lastSeq: usage.lastSeq)
        box.loadedThrough = usage.lastSeq
        mailboxes[user] = box
        return box
    }

    /// Forgets an empty mailbox's cached usage (nothing queued, nothing acknowledged pending): read again from
    /// the store when next needed. Keeps the cache from holding an entry per idle online user.
    public func forgetEmptyMailbox(of user: UserID) {
        guard let box = mailboxes[user], box.count == 0, box.bytes == 0, box.ackedThrough == 0 else { return }
        mailboxes[user] = nil
    }

    /// Mail left the mailbox (acknowledged by its recipient and deleted), or a store failed.
    public func mailRemoved(recipient: UserID, count: Int, bytes: Int) {
        guard var box = mailboxes[recipient] else { return }
        box.count = max(0, box.count - count)
        box.bytes = max(0, box.bytes - bytes)
        mailboxes[recipient] = box
    }

    /// A message reached its final state; returns the sender's session, whose devices get the SEND_ACK,
    /// if online. Nil as well when the message had completed already (a second device acknowledged
    /// the same delivery): it is acknowledged once.
    public func completed(sender: UserID, messageID: UInt64, status: SendStatus) -> SenderDevices? {
        if let history = recentIDs[sender], !history.ids.complete(messageID, status: status) { return nil }
        return devices(of: sender)
    }

    /// Where a sender's acknowledgements go: its one device (no reference held), or all of them.
    public enum SenderDevices {
        case one(ConnectionID)
        case several(Session)
        /// The oldest device's connection.
        public var connection: ConnectionID {
            switch self {
            case .one(let connection): connection
            case .several(let session): session.connection
            }
        }
    }

    @inline(__always) func devices(of user: UserID) -> SenderDevices? {
        guard let session = sessions[user] else { return nil }
        return session.deviceCount == 1 ? .one(session.devices[0].connection) : .several(session)
    }

    /// A message failed for good (e.g. the store refused it): forget it so a resend is tried again.
    /// Returns the sender's session, whose devices get the SEND_ERROR, if online.
    public func failed(sender: UserID, messageID: UInt64) -> SenderDevices? {
        forget(sender: sender, messageID: messageID)
        return devices(of: sender)
    }

    /// Mail through `throughSeq` was acknowledged by a device of `recipient`. Returns the seq the
    /// mailbox was acknowledged through before (mail at or below it was counted already).
    public func mailAcknowledged(recipient: UserID, throughSeq: UInt64) -> UInt64 {
        var box = mailbox(of: recipient)
        let before = box.ackedThrough
        if throughSeq > before {
            box.ackedThrough = throughSeq
            mailboxes[recipient] = box
        }
        return before
    }

    /// A queued delete failed: the mail stays and will be sent (and counted) again.
    public func mailDeleteFailed(recipient: UserID) {
        guard var box = mailboxes[recipient] else { return }
        box.ackedThrough = 0
        mailboxes[recipient] = box
    }

    @inline(__always) func remember(sender: UserID, messageID: UInt64, pendingCopies: Int = 0) {
        let history: SenderHistory
        if let existing = recentIDs[sender] {
            history = existing
        } else {
            history = SenderHistory(capacity: limits.dedupeWindow)
            recentIDs[sender] = history
        }
        // Only called by `route` after its lookup found the id absent (nothing changed the table since).
        history.ids.insertAbsentInFlight(messageID, pendingCopies: UInt16(clamping: pendingCopies))
    }

    func forget(sender: UserID, messageID: UInt64) {
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
