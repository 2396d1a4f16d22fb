// The server's decisions, without sockets: sessions and their phases, auth and lockout, contacts,
// relay and takeover, mail paging, keepalive, back pressure and shutdown. The driver (RelayServer, or
// the simulation in the tests) feeds it events — bytes received, bytes written, a peer gone, hash and
// commit results, timers, the end of a loop turn — and carries out what it asks through
// `SessionDriver`: write a client's output, close it, hash, commit, schedule.
//
// One concern per file: Core+Frames (decode and dispatch), Core+Auth, Core+Mail, Core+Relay (hot
// path), Core+Output (the one output path and its budget), Core+Close, Core+Store (group commit),
// Core+Timers. Invariants: everything runs on the loop thread; a client is closed only at the end of
// a turn (never inside another client's handler); each client is flushed at most once per turn; a
// message is acknowledged to its sender only when its receiver acknowledged it or its mail commit
// returned; every limit lives in SessionConfiguration and is checked in exactly one place.
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

public final class ServerCore {
    /// Replaced only by `applyLive` (Core+Reload).
    public internal(set) var configuration: SessionConfiguration
    public var stats = ServerStats()
    /// Counters and histograms beyond `stats` (SessionMetrics.swift).
    public let metrics = SessionMetrics()
    /// Monotonic nanoseconds of the read being processed, set by the driver before `received`: the
    /// start of the relay latency a DELIVER carries.
    public var receiveClockNs: UInt64 = 0
    /// Monotonic nanoseconds taken once when the end of a turn starts flushing (and by the driver before
    /// an EPOLLOUT write): the "DELIVER written" end of the relay latency, one clock read per turn rather
    /// than per write.
    public var writeClockNs: UInt64 = 0
    /// Where the results of administrator requests go (the driver's admin socket; Core+Admin).
    public var adminEvents: ((AdminEvent) -> Void)?
    /// Cluster mode: the driver that reaches the other nodes (Core+Cluster.swift); nil on a single node.
    public weak var cluster: (any ClusterSeam)?
    /// The store is a replica of the cluster log: a mail's seq is final only once applied (the replica
    /// may renumber it), so committed mail is pushed to an online receiver by reading it back.
    public var replicatedStore = false
    public var logger: Logger
    unowned let driver: any SessionDriver
    let store: any StoreReading
    public let core: RelayCore
    var connections = IDMap<UInt64, ClientState>()
    private var nextConnectionID: UInt64 = 1
    var pendingWrites: [ClientState] = []
    var toClose: [ClientState] = []
    /// Swapped with the lists above each turn, so iterating never copies or reallocates them.
    var spareConnections: [ClientState] = []
    var storeBatch = StoreBatch()
    var storeInFlight = false
    /// Body bytes of mail queued for or in a commit; above `maxStoreBacklogBytes` the senders adding to
    /// it are not read until it is half that (`storeWaiters`).
    var storeBacklogBytes = 0
    var storeWaiters: [ClientState] = []
    var authGate: AuthGate<AuthRequest>
    /// The attempt being hashed for each parked client (at most one each).
    var hashingAttempts: [UInt64: AuthAttempt<AuthRequest>] = [:]
    var authWakeAt: UInt64 = .max
    var preLoginByAddress: [String: Int] = [:]
    var budgetLimits: OutputBudgetLimits
    /// Below this many held bytes no budget mark can be crossed (the smallest of them).
    var quietBelowBytes: Int
    public private(set) var shuttingDown = false
    let dummyHash: PasswordHash
    var userNameCache: [UserID: String] = [:]
    var lastDedupePrune: UInt64 = 0
    var lastStorageFullLog: UInt64 = 0
    /// Per recipient, the highest MAIL_ACK whose delete is queued or committing (not sent again at login).
    var pendingMailDeletes: [UserID: UInt64] = [:]
    /// Dedupe windows handed to the store and not yet committed (restored from here at login meanwhile).
    var pendingWindows: [UserID: (generation: UInt64, entries: [(id: UInt64, status: SendStatus)])] = [:]
    /// Accounts an administrator's delete is queued or committing for (by the write's token): a login
    /// whose password check finishes meanwhile is refused, so no session of a deleted account survives.
    var accountsBeingDeleted: [UInt64: String] = [:]
    var windowGeneration: UInt64 = 0
    private var windowsPersistedAtShutdown = false
    public static let maintenanceToken = UInt64.max
    public static let authWakeToken = UInt64.max - 1
    /// Tokens at or above this are the core's own; the driver may use the ones just below for itself.
    public static let reservedTokens = UInt64.max - 15

    public init(configuration: SessionConfiguration, store: any StoreReading, driver: any SessionDriver,
                logger: Logger, dummyHash: PasswordHash) {
        self.configuration = configuration
        self.store = store
        self.driver = driver
        self.logger = logger
        self.dummyHash = dummyHash
        let limits = configuration.limits
        core = RelayCore(limits: RelayLimits(mailboxMaxMessages: Int(limits.mailboxMaxMessages),
                                             mailboxMaxBytes: Int(limits.mailboxMaxBytes),
                                             maxBodyBytes: limits.maxBodyBytes,
                                             dedupeWindow: configuration.dedupeWindow,
                                             maxDevicesPerUser: configuration.maxDevicesPerUser),
                         loadMailboxUsage: { user in
                             (try? store.mailboxUsage(of: user)) ?? MailboxUsage(count: 0, bytes: 0, lastSeq: 0)
                         })
        authGate = AuthGate(limits: configuration.authLimits)
        budgetLimits = configuration.budgetLimits
        quietBelowBytes = min(budgetLimits.preLoginPauseAboveBytes, budgetLimits.pauseAboveBytes,
                              budgetLimits.congestAboveBytes, budgetLimits.hardCapBytes)
    }

    /// Starts the periodic maintenance; call once the driver can schedule.
    public func start() {
        driver.schedule(at: driver.now + configuration.maintenanceIntervalMs, token: Self.maintenanceToken)
    }

    // MARK: connections

    public var connectionCount: Int { connections.count }

    /// nil if a new connection from `host` may be accepted, else the refusal (ERROR code and text).
    public func admission(host: String) -> (code: ErrorCode, message: String)? {
        if connections.count >= configuration.maxConnections {
            return (.serverBusy, "server is at its connection limit (\(configuration.maxConnections))")
        }
        if preLoginByAddress[host, default: 0] >= configuration.maxPreLoginConnectionsPerAddress {
            return (.serverBusy,
                    "too many connections from \(host) have not logged in yet (limit \(configuration.maxPreLoginConnectionsPerAddress))")
        }
        return nil
    }

    /// A fresh client for an accepted connection (call `opened` once the driver holds its socket).
    public func newClient(host: String, peerText: String) -> ClientState {
        let id = ConnectionID(nextConnectionID)
        nextConnectionID += 1
        return ClientState(id: id, host: host, peerText: peerText, now: driver.now)
    }

    public func opened(_ connection: ClientState) {
        stats.accepted += 1
        connections[connection.id.raw] = connection
        connection.countedPreLogin = true
        preLoginByAddress[connection.host, default: 0] += 1
        scheduleTimer(connection, at: nextDeadline(connection))
    }

    // MARK: events

    /// Bytes arrived in `buffer` (the loop's shared read buffer or the client's own input): handle every
    /// complete frame while the client may be read. The driver keeps what is left.
    public func received(_ connection: ClientState, from buffer: ByteBuffer) {
        connection.lastActivity = driver.now
        connection.pingOutstanding = false
        process(connection, from: buffer)
    }

    /// The peer closed, reset or hung up, or its socket failed.
    public func peerGone(_ connection: ClientState, _ reason: String) {
        close(connection, code: nil, reason)
    }

    /// The driver wrote some of the client's output (advancing its reader): move the frame cursor and the
    /// retention point, and let the budget resume reading or lift congestion.
    public func wrote(_ connection: ClientState) {
        let out = connection.output
        if out.readableBytes == 0 {
            connection.frameCursor = out.streamPosition(ofIndex: out.writerIndex)
        } else {
            connection.frameCursor = frameBoundary(connection, atOrBefore: true)
        }
        updateRetention(connection)
        if out.readableBytes == 0 && connection.messagesReceived == 0 && connection.messagesSent == 0 && connection.mailPaging == .done
            && connection.window.isEmpty && connection.phase == .active {
            // Idle right after its login (answers written, no message sent or received yet): the output buffer goes back
            // now rather than at the next maintenance sweep. Most connections of a large relay sit idle; one that
            // gets a message allocates it again, once (after that it never qualifies again).
            out.releaseIfEmpty()
        }
        if connection.budget.readingPaused || connection.budget.congested { applyBudget(connection) }
        if connection.latencyTimedSeq < connection.window.lastSeq { timeWrittenDeliveries(connection) }
    }

    /// Relay latency: each DELIVER whose last byte is now written is timed once against `writeClockNs`
    /// (one histogram add per message; the window's entries are fixed-size, nothing allocates).
    func timeWrittenDeliveries(_ connection: ClientState) {
        let out = connection.output
        let written = out.streamPosition(ofIndex: out.readerIndex)
        if let oldest = connection.window.oldest, oldest.seq > connection.latencyTimedSeq + 1 {
            connection.latencyTimedSeq = oldest.seq - 1  // acknowledged before it was timed (cannot be written later)
        }
        while let delivery = connection.window.pending(seq: connection.latencyTimedSeq + 1), delivery.frameEnd <= written {
            if delivery.receivedNs != 0 {
                // A write outside the end-of-turn flush may find an older writeClockNs: read the clock then.
                if writeClockNs < delivery.receivedNs { writeClockNs = Clock.monotonicNs() }
                metrics.relayLatency.record(writeClockNs &- delivery.receivedNs)
            }
            connection.latencyTimedSeq += 1
        }
        if connection.window.isEmpty { connection.latencyTimedSeq = connection.window.lastSeq }
    }

    public func hashCompleted(_ results: [HashResult]) { handleHashResults(results) }
    public func commitCompleted(_ results: [StoreBatchResult]) { handleStoreResults(results) }

    public var hasPendingWork: Bool { !toClose.isEmpty || !pendingWrites.isEmpty }

    /// Closes what was marked, flushes each client with output once, submits the store batch.
    public func endOfTurn() {
        while !toClose.isEmpty {
            swap(&toClose, &spareConnections)
            for connection in spareConnections { finalizeClose(connection) }
            emptyKeepingCapacity(&spareConnections)
        }
        if !pendingWrites.isEmpty {
            writeClockNs = Clock.monotonicNs()
            swap(&pendingWrites, &spareConnections)
            for connection in spareConnections {
                connection.isPendingWrite = false
                if !connection.isClosing { driver.flush(connection) }
            }
            emptyKeepingCapacity(&spareConnections)
        }
        if shuttingDown && connections.isEmpty && toClose.isEmpty && !windowsPersistedAtShutdown
            && storeBatch.isEmpty && !storeInFlight {
            // Everything rerouted has committed: now every sender's recent ids are settled and persisted.
            windowsPersistedAtShutdown = true
            persistSenderHistories(all: true)
        }
        submitStoreBatch()
    }

    // MARK: shutdown

    /// Every client is told (ERROR shuttingDown) and closed; unacknowledged deliveries go to mailboxes.
    public func beginShutdown() {
        guard !shuttingDown else { return }
        shuttingDown = true
        logger.info("shutting down", metadata: ["connections": "\(connections.count)"])
        for connection in connections.values {
            close(connection, code: .shuttingDown, "server shutting down")
        }
    }

    /// Shutdown is complete: no client, nothing to commit or in commit.
    public var isStopped: Bool {
        shuttingDown && toClose.isEmpty && storeBatch.isEmpty && !storeInFlight && connections.isEmpty
            && windowsPersistedAtShutdown
    }

    /// After the loop stopped: finalize whatever is left (best effort).
    public func finalizeAll() {
        for connection in Array(connections.values) { finalizeClose(connection) }
    }
}

/// `removeAll(keepingCapacity: true)` goes through Array's generic replaceSubrange: ~300 instructions
/// for the one or two connections of a light-load turn (perf/instructions-per-message.sh). Popping
/// keeps the storage and costs a few per element.
@inline(__always) func emptyKeepingCapacity(_ array: inout [ClientState]) {
    while !array.isEmpty { array.removeLast() }
}
