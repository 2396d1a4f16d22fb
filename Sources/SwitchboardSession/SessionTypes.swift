// What crosses the boundary between the server core and its driver: the jobs the core asks for
// (password hashes, store batches) and their results, the driver's side of the contract
// (`SessionDriver`), the store reads the core makes (`StoreReading`), and the counters.
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

public enum HashJob: Sendable {
    case hashForRegistration(connection: UInt64, requestID: UInt32, name: String, password: [UInt8], iterations: UInt32)
    case verifyLogin(connection: UInt64, requestID: UInt32, name: String, password: [UInt8], account: AccountRecord?,
                     dummy: PasswordHash)
    /// A password set by an administrator (`switchboard users add/passwd` on a running server).
    case hashForAdmin(token: UInt64, password: [UInt8], iterations: UInt32)
}

public enum HashResult: Sendable {
    case hashed(connection: UInt64, requestID: UInt32, name: String, hash: PasswordHash)
    case verified(connection: UInt64, requestID: UInt32, name: String, account: AccountRecord?, ok: Bool)
    case hashedForAdmin(token: UInt64, hash: PasswordHash)
}

/// What the loop must do when a write op completes: one context per op, same order.
public enum StoreContext: Sendable {
    case createAccount(connection: UInt64, requestID: UInt32)
    case contact(connection: UInt64, requestID: UInt32)
    case mail(StoredMail)
    case deleteMail(recipient: UserID, count: Int, bytes: Int, throughSeq: UInt64)
    case prune
    /// A sender's persisted dedupe window; `generation` tells a stale completion from the latest.
    case dedupeWindow(sender: UserID, generation: UInt64)
    /// An administrator's write (Core+Admin); `token` names the waiting admin request.
    case admin(token: UInt64)
}

public struct StoreBatch: Sendable {
    public init() {}
    public var ops: [WriteOp] = []
    public var contexts: [StoreContext] = []
    public var isEmpty: Bool { ops.isEmpty }
    public mutating func append(_ op: WriteOp, _ context: StoreContext) {
        ops.append(op)
        contexts.append(context)
    }
}

public struct StoreBatchResult: Sendable {
    public init(batch: StoreBatch, results: Result<[WriteResult], StoreErrorBox>, commitNanos: UInt64) {
        self.batch = batch; self.results = results; self.commitNanos = commitNanos
    }
    public var batch: StoreBatch
    public var results: Result<[WriteResult], StoreErrorBox>
    public var commitNanos: UInt64
}

public struct StoreErrorBox: Error, Sendable, CustomStringConvertible {
    public init(description: String) { self.description = description }
    public let description: String
}


/// What a queued LOGIN or REGISTER needs once a hash thread is free.
public struct AuthRequest: Sendable {
    public let requestID: UInt32
    public let password: [UInt8]
}

public struct ServerStats: Sendable {
    public var accepted: UInt64 = 0
    public var closed: UInt64 = 0
    public var framesIn: UInt64 = 0
    public var relayedLive: UInt64 = 0
    /// Cluster mode: SENDs handed to the node where the recipient is online.
    public var forwarded: UInt64 = 0
    public var storedOffline: UInt64 = 0
    public var duplicatesDropped: UInt64 = 0
    public var storeBatches: UInt64 = 0
    public var storeOps: UInt64 = 0
    public var protocolErrors: UInt64 = 0
    public var writes: UInt64 = 0
    public var reads: UInt64 = 0
    public var slowConsumerCloses: UInt64 = 0
    public var readPauses: UInt64 = 0
    public var lockouts: UInt64 = 0
    public var authBusy: UInt64 = 0
    public var acceptPauses: UInt64 = 0
    public var refusedConnections: UInt64 = 0
    public var storageFull: UInt64 = 0
    public init() {}
}

/// The driver's side: everything the core needs done that touches a socket, a thread or the clock.
/// The real one is SwitchboardServer's RelayServer (epoll, sockets, TLS, helper threads); the
/// simulation in SwitchboardSessionTests is another.
public protocol SessionDriver: AnyObject {
    /// Monotonic and wall-clock milliseconds.
    var now: UInt64 { get }
    var wallNow: UInt64 { get }
    /// The client's reading or writing wishes changed (`readingPaused`, queued output): update its interest.
    func interestChanged(_ client: ClientState)
    /// Write what the client has queued (called once per turn per client with output).
    func flush(_ client: ClientState)
    /// The client is closed: write its remaining output (its last frames and ERROR) if any, then close the socket.
    func finalize(_ client: ClientState)
    /// Decrypted input is waiting inside the transport (TLS): read again this turn.
    func hasBufferedInput(_ client: ClientState) -> Bool
    func readAgain(_ client: ClientState)
    /// The TLS handshake has not finished yet (the handshake timeout applies).
    func handshakePending(_ client: ClientState) -> Bool
    func startHash(_ job: HashJob)
    func startCommit(_ batch: StoreBatch)
    /// Call `timerFired(token)` at (or after) `deadline`. Extra or early calls are harmless.
    func schedule(at deadline: UInt64, token: UInt64)
}

/// Cluster mode: what the core asks of the cluster driver (RelayServer's ClusterRouter). A single node
/// has none. Every call is made on the loop thread and must not block: the driver queues and returns.
public protocol ClusterSeam: AnyObject {
    /// A device of `user` logged in here; `contacts` are its accepted contacts (whom the other nodes tell).
    func deviceJoined(user: UserID, deviceID: String, contacts: [UserID])
    /// A device of `user` here logged out or dropped (not called for a device taken over).
    func deviceLeft(user: UserID, deviceID: String)
    /// Hand a SEND to the node where the recipient is online; the answer comes back through
    /// `ServerCore.forwardAnswered` / `forwardUndeliverable` (exactly one of them, eventually).
    /// `multiCopy`: the recipient has devices on other nodes too (or here): that node must not store the
    /// message when its copies are lost, only say so (`inboundLost`); the sending node stores it once all are.
    func forward(to node: UInt16, sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView,
                 multiCopy: Bool)
    /// A message another node handed here reached its final state (tell that node).
    func inboundSettled(sender: UserID, messageID: UInt64, status: SendStatus)
    /// A message another node handed here was refused for good (tell that node: its sender gets SEND_ERROR).
    func inboundFailed(sender: UserID, messageID: UInt64, code: ErrorCode, message: String)
    /// A multi-copy message handed here: every copy here was lost (tell that node: it counts the copy lost).
    func inboundLost(sender: UserID, messageID: UInt64)
    /// A SEND of `sender` accepted here: its devices on `node` get SENT_COPY (fire and forget, as on one node: a
    /// device that misses it does not get it later).
    func sentCopy(to node: UInt16, sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView)
    /// The final answer (SEND_ACK or SEND_ERROR) of a message of `sender` accepted here, for its devices on `node`.
    func senderAnswered(to node: UInt16, sender: UserID, messageID: UInt64, answer: SenderAnswer)
}

/// What a sender's devices are told of a message in the end.
public enum SenderAnswer: Equatable, Sendable {
    case ack(SendStatus)
    case error(ErrorCode, String)
}

/// The store reads the core makes on the loop (LMDB reads are memory-mapped and do not block on I/O
/// in steady state). `Store` conforms; the simulation may use a real store in a temp folder.
public protocol StoreReading: AnyObject {
    func account(named name: String) throws -> AccountRecord?
    func userName(of userID: UserID) throws -> String?
    func contacts(of userID: UserID) throws -> [ContactEntry]
    func mail(for recipient: UserID, afterSeq: UInt64, limit: Int) throws -> [StoredMail]
    func mailboxUsage(of recipient: UserID) throws -> MailboxUsage
    func dedupeWindow(of sender: UserID, notBeforeMs: UInt64) throws -> [DedupeWindowEntry]
    /// A mail of (sender, messageID) was stored (and its dedupe record not pruned yet).
    func dedupeRecordExists(sender: UserID, messageID: UInt64) throws -> Bool
}

extension Store: StoreReading {}
