import SwitchboardProtocol
@testable import SwitchboardRelay
import SwitchboardStore

/// In-memory stand-in for the store's mailbox usage: the core loads from it lazily and the tests
/// can see which mailboxes were loaded and how often.
final class MailboxUsageSource {
    var usage: [UserID: MailboxUsage]
    private(set) var loads: [UserID] = []

    init(_ usage: [UserID: MailboxUsage] = [:]) { self.usage = usage }

    func load(_ user: UserID) -> MailboxUsage {
        loads.append(user)
        return usage[user] ?? MailboxUsage(count: 0, bytes: 0, lastSeq: 0)
    }
}

/// The seed users and their connections.
enum Seed {
    static let alice: UserID = 1
    static let bob: UserID = 2
    static let carol: UserID = 3
    static let dave: UserID = 4

    static let aliceConn = ConnectionID(10)
    static let bobConn = ConnectionID(20)
    static let carolConn = ConnectionID(30)
    static let daveConn = ConnectionID(40)

    static func name(_ user: UserID) -> String {
        switch user {
        case alice: "alice"
        case bob: "bob"
        case carol: "carol"
        case dave: "dave"
        default: "user\(user)"
        }
    }

    static func entry(_ user: UserID, _ state: ContactState) -> ContactEntry {
        ContactEntry(userID: user, name: name(user), state: state)
    }

    /// alice <-> bob accepted; alice -> carol pending (carol has an incoming request).
    static let storedContacts: [UserID: [ContactEntry]] = [
        alice: [entry(bob, .accepted), entry(carol, .outgoingRequest)],
        bob: [entry(alice, .accepted)],
        carol: [entry(alice, .incomingRequest)],
        dave: [],
    ]
}

/// A core plus the in-memory "store" it would be fed from.
final class RelayFixture {
    let usage: MailboxUsageSource
    let core: RelayCore
    /// What the store would hand in at login, kept current by `change`.
    var stored: [UserID: [ContactEntry]]

    init(limits: RelayLimits = RelayLimits(), usage: [UserID: MailboxUsage] = [:],
         contacts: [UserID: [ContactEntry]] = Seed.storedContacts) {
        let source = MailboxUsageSource(usage)
        self.usage = source
        self.stored = contacts
        self.core = RelayCore(limits: limits, loadMailboxUsage: { source.load($0) })
    }

    @discardableResult
    func login(_ user: UserID, _ connection: ConnectionID) -> LoginOutcome {
        core.login(user: user, name: Seed.name(user), connection: connection, address: "127.0.0.1:\(connection.raw)",
                   contacts: stored[user] ?? [])
    }

    /// Commits a contact change to the in-memory store and applies it to the core, as the server does.
    func change(owner: UserID, other: UserID, ownerState: ContactState?, otherState: ContactState?) -> [RelayCore.ContactPush] {
        let ownerView = ownerState.map { Seed.entry(other, $0) }
        let otherView = otherState.map { Seed.entry(owner, $0) }
        func commit(_ user: UserID, _ view: ContactEntry?, about counterpart: UserID) {
            var list = (stored[user] ?? []).filter { $0.userID != counterpart }
            if let view { list.append(view) }
            stored[user] = list
        }
        commit(owner, ownerView, about: other)
        commit(other, otherView, about: owner)
        return core.applyContactChange(owner: owner, other: other, ownerView: ownerView, otherView: otherView)
    }

    func route(_ from: UserID, _ to: UserID, id: UInt64, bytes: Int = 5) -> RouteDecision {
        core.route(from: from, to: to, messageID: id, bodyBytes: bytes)
    }
}

func info(_ user: UserID, _ relation: ContactRelation, online: Bool) -> ContactInfo {
    ContactInfo(userID: user, name: Seed.name(user), relation: relation, online: online)
}

func push(_ connection: ConnectionID, _ user: UserID, _ relation: ContactRelation, online: Bool) -> RelayCore.ContactPush {
    RelayCore.ContactPush(connection: connection, info: info(user, relation, online: online))
}

extension RouteDecision {
    var isMailboxFull: Bool {
        if case .reject(.mailboxFull, _) = self { return true }
        return false
    }
    var rejectCode: ErrorCode? {
        if case .reject(let code, _) = self { return code }
        return nil
    }
}
