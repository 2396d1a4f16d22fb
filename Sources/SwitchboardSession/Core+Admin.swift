// What an administrator may ask of the running core (the driver's admin socket relays it): read the
// sessions, close one (`kick`), and account writes that go through the same hash threads and group
// commit as everything else. Results come back through `adminEvents`, tagged with the caller's token.
// Invariants: loop thread only; a kick is an ordinary close (unacknowledged deliveries go to the
// mailbox at finalize); a deleted account's online session is closed first and its former contacts
// are told it is gone once the delete has committed.
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

public enum AdminEvent {
    case hashed(token: UInt64, hash: PasswordHash)
    case written(token: UInt64, Result<WriteResult, StoreErrorBox>)
}

extension ServerCore {
    /// Every connection the core knows (any phase); for listing, not for keeping.
    public var clients: some Sequence<ClientState> { connections.values }

    /// Body bytes of mail queued for or in a commit, and whether a commit is running.
    public var storeBacklog: (bytes: Int, commitInFlight: Bool) { (storeBacklogBytes, storeInFlight) }

    /// The logged-in sessions of `name`, one per device (empty when offline).
    public func sessions(named name: String) -> [ClientState] {
        connections.values.filter { $0.phase == .active && $0.userName == name && !$0.isClosing }
    }

    /// Closes `client` at the end of this turn with ERROR kicked; its unacknowledged live deliveries go to
    /// its mailbox exactly as on any disconnect.
    public func kick(_ client: ClientState, reason: String) {
        guard !client.isClosing else { return }
        metrics.kicks += 1
        logger.notice("session closed by an administrator", metadata: ["user": "\(client.userName)", "peer": "\(client.peerText)",
                                                                       "reason": "\(reason)"])
        close(client, code: .kicked, reason)
    }

    /// Hashes `password` on a hash thread; the result comes back as `.hashed(token:)`.
    public func adminHash(token: UInt64, password: [UInt8]) {
        driver.startHash(.hashForAdmin(token: token, password: password, iterations: configuration.pbkdf2Iterations))
    }

    /// Queues `op` for the next group commit; the result comes back as `.written(token:)`.
    /// A deleted account's session is closed first (before its delete commits).
    public func adminWrite(_ op: WriteOp, token: UInt64) {
        if case .deleteAccount(let name) = op {
            // Every device of the account, and any login of it that finishes before the delete commits.
            for client in sessions(named: name) { kick(client, reason: "your account was deleted by an administrator") }
            accountsBeingDeleted[token] = name
        }
        storeBatch.append(op, .admin(token: token))
    }

    /// A login of `name` must not complete: its delete is queued or committing.
    func isBeingDeleted(_ name: String) -> Bool {
        !accountsBeingDeleted.isEmpty && accountsBeingDeleted.values.contains(name)
    }

    func adminWriteCompleted(token: UInt64, _ result: Result<WriteResult, StoreErrorBox>) {
        accountsBeingDeleted[token] = nil
        if case .success(.accountDeleted(let userID, let contacts)) = result {
            // Former contacts that are online see the contact removed, as after CONTACT_REMOVE.
            for other in contacts {
                for push in core.applyContactChange(owner: userID, other: other, ownerView: nil, otherView: nil) {
                    if let target = connections[push.connection.raw] { send(target, .contactUpdate(contact: push.info)) }
                }
            }
            userNameCache[userID] = nil
        }
        adminEvents?(.written(token: token, result))
    }
}
