// The terminal client's state and its transitions, without a terminal or a socket: server events
// and user input go in, the state changes, and the side effects the app must perform (requests to
// the server, acknowledgements) come out as `Effect`s. The renderer draws this state.
// Invariants: a message (sender, message id) is shown at most once, whether it came live or as
// offline mail; an outgoing message stays in `outbox` until the server acknowledges or refuses it,
// and is resent with the same id after a reconnect; dialog messages are kept oldest first and
// drawn newest on top; a dialog's title never falls back to a number while any name for that user
// was ever seen (contact list, mail, history); the typed input never holds more than one message's
// bytes after a paste (a paste that would pass the limit is refused whole, with a notice).
// Input editing (typing, paste) is in ScreenModel+Input.swift, keys and clicks in ScreenModel+Keys.swift.
import SwitchboardClient
import SwitchboardProtocol

public enum ConnectionState: Equatable, Sendable {
    case connecting(attempt: Int)
    case online
    case waitingToReconnect(reason: String, retryAtMs: UInt64, attempt: Int)
    /// No more attempts (e.g. the account logged in elsewhere).
    case stopped(reason: String)
}

public struct Contact: Equatable, Sendable {
    public var userID: UInt32
    public var name: String
    public var relation: ContactRelation
    public var online: Bool
    public init(_ info: ContactInfo) { userID = info.userID; name = info.name; relation = info.relation; online = info.online }
    public init(userID: UInt32, name: String, relation: ContactRelation, online: Bool) {
        self.userID = userID; self.name = name; self.relation = relation; self.online = online
    }
}

public enum MessageMark: Equatable, Sendable {
    /// Outgoing, waiting for the server.
    case sending
    /// The receiver's client acknowledged it.
    case delivered
    /// Stored in the receiver's mailbox.
    case storedOffline
    case failed(String)
    /// Incoming.
    case received
}

public struct ChatLine: Equatable, Sendable {
    public var messageID: UInt64
    public var outgoing: Bool
    public var atMs: UInt64
    public var text: String
    public var mark: MessageMark
    /// Sent while the contact was offline (an offline message).
    public var offline: Bool
}

public enum DialogID: Hashable, Sendable {
    case chat(UInt32)
    /// Offline messages received at login, grouped by sender.
    case mail
}

public struct MailItem: Equatable, Sendable {
    public var messageID: UInt64
    public var atMs: UInt64
    public var text: String
}

public struct MailGroup: Equatable, Sendable {
    public var senderID: UInt32
    public var senderName: String
    public var items: [MailItem]
}

public struct Dialog: Equatable, Sendable {
    public var id: DialogID
    /// Oldest first; drawn newest on top.
    public var lines: [ChatLine] = []
    public var unread = 0
    /// The server's offline notice while the contact is offline.
    public var notice: String?
    /// Rows scrolled away from the newest message.
    public var scroll = 0
    public init(id: DialogID) { self.id = id }
}

public enum Focus: Equatable, Sendable { case contacts, input }

public enum Prompt: Equatable, Sendable {
    case addContact
    case confirmRemove(name: String)
    /// Quit while messages wait for the server (kept for the next start) or text is typed but not sent.
    case confirmQuit(unsent: Int, typed: Bool)
}

/// What the app must do for the model.
public enum Effect: Equatable, Sendable {
    case openChat(userID: UInt32)
    case send(to: UInt32, messageID: UInt64, body: [UInt8])
    case addContact(String)
    case acceptContact(String)
    case removeContact(String)
    /// Reconnect now instead of waiting for the back-off.
    case reconnectNow
    case quit
}

/// Where a mouse click lands, as the renderer laid the screen out.
public enum HitTarget: Equatable, Sendable {
    case contact(UInt32)
    case tab(DialogID)
    case sendButton
    case input
    case messages
}

public struct HitRegion: Equatable, Sendable {
    public var row: Int
    public var columns: Range<Int>
    public var target: HitTarget
    public init(row: Int, columns: Range<Int>, target: HitTarget) { self.row = row; self.columns = columns; self.target = target }
}

public struct OutgoingMessage: Equatable, Sendable {
    public var to: UInt32
    public var messageID: UInt64
    public var body: [UInt8]
}

public struct ScreenModel {
    public var me = ""
    public var server = ""
    public var connection: ConnectionState = .connecting(attempt: 1)
    /// Sorted for display: requests to answer first, then online, offline, and requests sent.
    public private(set) var contacts: [Contact] = []
    public var selectedContact: UInt32?
    public internal(set) var dialogs: [Dialog] = []
    public var activeDialog: DialogID?
    public private(set) var mailGroups: [MailGroup] = []
    public var focus: Focus = .contacts
    public var input = ""
    /// Cursor position in `input`, in characters.
    public var cursor = 0
    public var prompt: Prompt?
    public var showHelp = false
    /// A one-line notice in the status line (errors, "request sent", ...).
    public var flash: String?
    public var maxBodyBytes = 65_536 - ProtocolConstants.envelopeOverhead
    public internal(set) var outbox: [OutgoingMessage] = []
    /// Highest delivery / mail sequence shown but not yet acknowledged.
    public private(set) var deliveryAckDue: UInt64?
    public private(set) var mailAckDue: UInt64?
    public private(set) var mailExpected: UInt32 = 0
    /// Rows one page of the active dialog shows (the app sets it from the last frame); PgUp/PgDn move by a page.
    public var pageRows = 10
    /// Bells to ring: messages that arrived in a dialog other than the one shown.
    public private(set) var bellsDue = 0
    /// Every name seen for a user id, so a dialog keeps its title after the contact is removed.
    public private(set) var knownNames: [UInt32: String] = [:]
    /// Local history (nil: none): loaded when a dialog opens, told about every change.
    public var history: (any ConversationHistory)?
    var seen = Set<SeenKey>()
    private var makeMessageID: () -> UInt64

    struct SeenKey: Hashable { let from: UInt32; let id: UInt64 }

    public init(makeMessageID: @escaping () -> UInt64 = { UInt64.random(in: 1...UInt64.max) }) {
        self.makeMessageID = makeMessageID
    }

    // MARK: queries

    public func contact(_ userID: UInt32) -> Contact? { contacts.first { $0.userID == userID } }
    public func dialog(_ id: DialogID) -> Dialog? { dialogs.first { $0.id == id } }
    public var mailCount: Int { mailGroups.reduce(0) { $0 + $1.items.count } }

    public func title(of id: DialogID) -> String {
        switch id {
        case .mail: return "Offline messages"
        case .chat(let user): return contact(user)?.name ?? knownNames[user] ?? "user \(user)"
        }
    }

    /// Unread messages in all dialogs.
    public var unreadCount: Int { dialogs.reduce(0) { $0 + $1.unread } }

    /// The terminal window's title: who is logged in, and unread messages.
    public var windowTitle: String {
        let unread = unreadCount
        return "Switchboard: \(me.isEmpty ? "…" : me)" + (unread > 0 ? " (\(unread) unread)" : "")
    }

    public mutating func takeBells() -> Int { defer { bellsDue = 0 }; return bellsDue }

    private mutating func learnNames() {
        for c in contacts { knownNames[c.userID] = c.name }
    }

    // MARK: server side

    /// After a (re)login: the contact list, and the messages to send again (same ids).
    public mutating func loggedIn(name: String, contacts list: [ContactInfo], pendingMail: UInt32) -> [Effect] {
        me = name
        connection = .online
        contacts = list.filter { $0.relation != .removed }.map(Contact.init)
        sortContacts()
        learnNames()
        if selectedContact == nil || contact(selectedContact!) == nil { selectedContact = contacts.first?.userID }
        mailExpected = pendingMail
        for index in dialogs.indices {
            if case .chat(let user) = dialogs[index].id, let c = contact(user), c.online { dialogs[index].notice = nil }
        }
        // New sessions start with no delivery or mail state to acknowledge.
        deliveryAckDue = nil
        mailAckDue = nil
        return outbox.map { .send(to: $0.to, messageID: $0.messageID, body: $0.body) }
    }

    /// A fresh contact list (after add / accept / remove).
    public mutating func replaceContacts(_ list: [ContactInfo]) {
        contacts = list.filter { $0.relation != .removed }.map(Contact.init)
        sortContacts()
        learnNames()
        if selectedContact == nil || contact(selectedContact!) == nil { selectedContact = contacts.first?.userID }
    }

    public mutating func connectionLost(reason: String, retryAtMs: UInt64, attempt: Int) {
        connection = .waitingToReconnect(reason: reason, retryAtMs: retryAtMs, attempt: attempt)
    }

    /// The answer to OPEN_CHAT.
    public mutating func chatStatus(userID: UInt32, online: Bool, text: String) {
        if let index = contacts.firstIndex(where: { $0.userID == userID }) { contacts[index].online = online; sortContacts() }
        guard let index = dialogs.firstIndex(where: { $0.id == .chat(userID) }) else { return }
        dialogs[index].notice = online ? nil : text
    }

    public mutating func apply(_ event: ChatEvent) {
        switch event {
        case .message(let seq, let from, let messageID, let sentAtMs, let body):
            deliveryAckDue = max(deliveryAckDue ?? 0, seq)
            // The dialog (and its history) first, so a message already in the history is not shown twice.
            guard !seen.contains(SeenKey(from: from, id: messageID)) else { return }
            let index = ensureDialog(.chat(from))
            guard seen.insert(SeenKey(from: from, id: messageID)).inserted,
                  history?.contains(from: from, messageID: messageID) != true else { return }
            let line = ChatLine(messageID: messageID, outgoing: false, atMs: sentAtMs, text: Self.text(body),
                                mark: .received, offline: false)
            dialogs[index].lines.append(line)
            history?.record(peer: from, name: title(of: .chat(from)), line: line)
            if activeDialog == nil { activeDialog = .chat(from) }
            if activeDialog != .chat(from) { dialogs[index].unread += 1; bellsDue += 1 } else { dialogs[index].scroll = 0 }
        case .mail(let seq, let from, let fromName, let messageID, let sentAtMs, let body):
            mailAckDue = max(mailAckDue ?? 0, seq)
            if knownNames[from] == nil || contact(from) == nil { knownNames[from] = fromName }
            guard seen.insert(SeenKey(from: from, id: messageID)).inserted,
                  history?.contains(from: from, messageID: messageID) != true else { return }
            let item = MailItem(messageID: messageID, atMs: sentAtMs, text: Self.text(body))
            // Offline mail is part of the conversation too (history shows it; the mail dialog groups it).
            history?.record(peer: from, name: fromName,
                            line: ChatLine(messageID: messageID, outgoing: false, atMs: sentAtMs, text: item.text,
                                           mark: .received, offline: true))
            if let g = mailGroups.firstIndex(where: { $0.senderID == from }) {
                mailGroups[g].items.append(item)
            } else {
                mailGroups.append(MailGroup(senderID: from, senderName: fromName, items: [item]))
            }
            let index = ensureDialog(.mail)
            if activeDialog == nil { activeDialog = .mail }
            if activeDialog != .mail { dialogs[index].unread += 1; bellsDue += 1 }
        case .mailEnd(let count):
            if count > 0 { flash = "\(count) offline message(s) received" }
            mailExpected = 0
        case .presence(let user, let online):
            guard let index = contacts.firstIndex(where: { $0.userID == user }) else { return }
            contacts[index].online = online
            sortContacts()
            if let d = dialogs.firstIndex(where: { $0.id == .chat(user) }) {
                dialogs[d].notice = online ? nil : ProtocolConstants.offlineNotice
            }
        case .contactUpdate(let info):
            knownNames[info.userID] = info.name
            if let index = contacts.firstIndex(where: { $0.userID == info.userID }) {
                if info.relation == .removed { contacts.remove(at: index) } else { contacts[index] = Contact(info) }
            } else if info.relation != .removed {
                contacts.append(Contact(info))
            }
            sortContacts()
            if info.relation == .incomingRequest { flash = "\(info.name) wants to add you: select and press a to accept" }
            if info.relation == .accepted { flash = "\(info.name) is now a contact" }
            if selectedContact == nil || contact(selectedContact!) == nil { selectedContact = contacts.first?.userID }
        case .sendAck(let messageID, let status):
            settle(messageID, mark: status == .delivered ? .delivered : .storedOffline)
        case .sendError(let messageID, _, let message):
            settle(messageID, mark: .failed(message))
            flash = "not sent: \(message)"
        case .serverError(_, let message):
            flash = "server: \(message)"
        }
    }

    /// Acknowledgements for what has been drawn; call after the screen shows it.
    public mutating func takeAcknowledgements() -> (deliveries: UInt64?, mail: UInt64?) {
        defer { deliveryAckDue = nil; mailAckDue = nil }
        return (deliveryAckDue, mailAckDue)
    }

    private mutating func settle(_ messageID: UInt64, mark: MessageMark) {
        let peer = outbox.first { $0.messageID == messageID }?.to
        outbox.removeAll { $0.messageID == messageID }
        for d in dialogs.indices {
            if let l = dialogs[d].lines.lastIndex(where: { $0.outgoing && $0.messageID == messageID }) {
                dialogs[d].lines[l].mark = mark
                if case .chat(let user) = dialogs[d].id { history?.settle(peer: user, messageID: messageID, mark: mark) }
                return
            }
        }
        if let peer { history?.settle(peer: peer, messageID: messageID, mark: mark) }
    }

    /// Message text safe to draw: invalid UTF-8 replaced; controls are replaced when drawn.
    static func text(_ body: [UInt8]) -> String { String(decoding: body, as: UTF8.self) }

    // MARK: user side

    /// Opens (or switches to) the dialog with a contact.
    public mutating func openDialog(with userID: UInt32) -> [Effect] {
        guard let c = contact(userID) else { return [] }
        guard c.relation == .accepted else {
            flash = c.relation == .incomingRequest ? "\(c.name) wants to add you: press a to accept"
                                                   : "\(c.name) has not accepted your request yet"
            return []
        }
        selectedContact = userID
        _ = ensureDialog(.chat(userID))
        activate(.chat(userID))
        focus = .input
        return [.openChat(userID: userID)]
    }

    public mutating func activate(_ id: DialogID) {
        guard let index = dialogs.firstIndex(where: { $0.id == id }) else { return }
        activeDialog = id
        dialogs[index].unread = 0
        showHelp = false
    }

    public mutating func closeActiveDialog() {
        guard let id = activeDialog, let index = dialogs.firstIndex(where: { $0.id == id }) else { return }
        dialogs.remove(at: index)
        activeDialog = nil
        if !dialogs.isEmpty { activate(dialogs[min(index, dialogs.count - 1)].id) }
        if activeDialog == nil { focus = .contacts }
    }

    public mutating func cycleDialog(by step: Int) {
        guard !dialogs.isEmpty else { return }
        let current = activeDialog.flatMap { id in dialogs.firstIndex { $0.id == id } } ?? -1
        let next = ((current + step) % dialogs.count + dialogs.count) % dialogs.count
        activate(dialogs[next].id)
    }

    /// Sends the input line in the active chat dialog; it shows at once, marked as sending.
    public mutating func sendInput(nowMs: UInt64) -> [Effect] {
        let text = input.trimmingSpaces()
        guard !text.isEmpty else {
            if !input.isEmpty { flash = "nothing to send: the message is blank" }
            return []
        }
        guard case .chat(let user)? = activeDialog, let c = contact(user) else {
            flash = "open a dialog first: select a contact and press Enter"
            return []
        }
        guard c.relation == .accepted else { flash = "\(c.name) is not a contact"; return [] }
        let body = Array(text.utf8)
        guard body.count <= maxBodyBytes else { flash = "message too long (\(body.count) bytes, at most \(maxBodyBytes))"; return [] }
        let id = makeMessageID()
        let index = ensureDialog(.chat(user))
        let line = ChatLine(messageID: id, outgoing: true, atMs: nowMs, text: text, mark: .sending, offline: !c.online)
        dialogs[index].lines.append(line)
        dialogs[index].scroll = 0
        let message = OutgoingMessage(to: user, messageID: id, body: body)
        outbox.append(message)
        // Recorded with its body as unsent: a quit before the server's answer sends it at the next start.
        history?.record(peer: user, name: c.name, line: line)
        history?.keepUnsent(message)
        input = ""
        cursor = 0
        return [.send(to: user, messageID: id, body: body)]
    }

    /// Keeps a dialog's scroll offset within what there is to show (the renderer knows the rows).
    public mutating func clampScroll(_ id: DialogID, maximum: Int) {
        guard let index = dialogs.firstIndex(where: { $0.id == id }) else { return }
        dialogs[index].scroll = min(dialogs[index].scroll, max(0, maximum))
    }

    mutating func ensureDialog(_ id: DialogID) -> Int {
        if let index = dialogs.firstIndex(where: { $0.id == id }) { return index }
        var dialog = Dialog(id: id)
        if case .chat(let user) = id, let history {
            // Earlier conversations; messages still unsent (from the outbox) show as such.
            let earlier = history.lines(peer: user)
            if knownNames[user] == nil, let name = history.name(peer: user) { knownNames[user] = name }
            for line in earlier where !line.outgoing { seen.insert(SeenKey(from: user, id: line.messageID)) }
            dialog.lines = earlier
        }
        dialogs.append(dialog)
        let index = dialogs.count - 1
        if case .chat(let user) = id, let c = contact(user), !c.online {
            dialogs[index].notice = ProtocolConstants.offlineNotice
        }
        return index
    }

    private mutating func sortContacts() {
        func rank(_ c: Contact) -> Int {
            switch c.relation {
            case .incomingRequest: return 0
            case .accepted: return c.online ? 1 : 2
            case .outgoingRequest: return 3
            case .removed: return 4
            }
        }
        contacts.sort { (rank($0), $0.name) < (rank($1), $1.name) }
    }
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        func blank(_ c: Character) -> Bool { c == " " || c == "\t" || c == "\n" || c == "\r" || c == "\r\n" }
        while let f = s.first, blank(f) { s = s.dropFirst() }
        while let l = s.last, blank(l) { s = s.dropLast() }
        return String(s)
    }
}
