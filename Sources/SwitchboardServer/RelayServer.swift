// The running relay: the I/O driver around ServerCore. It owns the epoll loop, the listening socket,
// each client's transport (plain or TLS), the helper threads (hashing, group commit) and the lingering
// closes; it moves bytes and carries out what the core asks. Every decision about a session is in
// SwitchboardSession's ServerCore.
// Invariants: everything here runs on the loop thread except `requestShutdown`/`requestReload`; a
// client's socket is read only while the core lets it be read (`readingPaused`), but HUP/ERR/RDHUP of
// a client that is not being read closes it (level-triggered events never spin); each client is
// written at most once per turn, and EPOLLOUT is registered only for output that could not be
// written; accept failures pause accepting for 100 ms and are logged at most every 10 s; a closed
// client's last bytes (its ERROR) are written, then FIN, then its input is drained for up to
// `closeLingerMs` so the peer reads the ERROR rather than a reset.
import Glibc
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardSession
import SwitchboardStore
import SwitchboardTLS

public enum ServerError: Error, CustomStringConvertible {
    case tlsNotConfigured
    case clusterReplicaFolder(String)
    public var description: String {
        switch self {
        case .clusterReplicaFolder(let path):
            return "the data folder \(path) is a cluster node's replica (it applied the cluster log): start it with --cluster and --node, or give a fresh --data folder for a single node"

        case .tlsNotConfigured:
            return "TLS is on by default but no certificate was given: run `switchboard cert init` (development) or pass --tls-cert and --tls-key, or --plaintext"
        }
    }
}

/// The driver's half of a client: its socket and registration; `client` is the core's half.
final class Connection: EventHandler {
    let client: ClientState
    let transport: Transport
    /// The same transport when it is TLS (handshake accounting); nil for plaintext.
    let tls: TLSTransport?
    /// Its handshake was counted in the metrics (full or resumed).
    var handshakeCounted = false
    var registration: RegistrationID?
    unowned let server: RelayServer

    init(client: ClientState, transport: Transport, server: RelayServer) {
        self.client = client
        self.transport = transport
        self.tls = transport as? TLSTransport
        self.server = server
    }

    func handle(events: IOEvents, loop: EventLoop) { server.handle(self, events: events) }
}

public final class RelayServer: EventHandler, SessionDriver {
    /// The configuration in effect; a reload (Reload.swift) replaces its live-changeable part.
    public internal(set) var configuration: ServerConfiguration
    public var stats: ServerStats { core.stats }
    public var logger: Logger {
        get { core.logger }
        set { core.logger = newValue; driverLogger = newValue }
    }
    var driverLogger: Logger

    let loop: EventLoop
    let store: Store
    /// The session core; set once at the end of init (it needs `self` as its driver).
    private(set) var core: ServerCore!
    /// Cluster mode (RelayServer+Cluster.swift); nil on a single node.
    private(set) var clusterMode: ClusterMode?
    let workers: Workers
    private var listenFD: Int32 = -1
    private var listenRegistration: RegistrationID?
    public private(set) var boundAddress: SocketAddress
    private var reserveFD: Int32 = -1
    private var acceptPaused = false
    private static let acceptResumeToken = ServerCore.reservedTokens - 1
    /// The operator sockets' one-second sweeps (RelayServer+Ops.swift).
    static let metricsSweepToken = ServerCore.reservedTokens - 2
    static let adminSweepToken = ServerCore.reservedTokens - 3
    private static let heapTrimToken = ServerCore.reservedTokens - 4
    /// Accepts + closes since the last heap trim, and the trim timer's state (see HeapTrimmer).
    private var churnSinceTrim = 0
    private var churnAtTrimCheck = 0
    private var trimFirstRequested: UInt64 = 0
    private var trimScheduled = false
    private let heapTrimmer: HeapTrimmer
    /// Heap trims handed to the trimmer thread so far (tests, logs).
    public private(set) var heapTrimsRequested = 0
    private var rateLimitedLogs: [String: (last: UInt64, suppressed: Int)] = [:]
    /// Closed connections whose last bytes are still being written / whose FIN awaits the peer's.
    var lingering: [UInt64: Lingerer] = [:]
    /// The operator surfaces (RelayServer+Ops.swift): monitoring HTTP listener, admin socket, counters.
    var metricsHTTP: MetricsHTTP?
    var admin: AdminSocket?
    var tlsHandshakes = TLSHandshakeCounts()
    public let startedAtWallMs = Clock.wallMs()
    /// One read buffer for all connections: frames that arrive whole are handled from here and
    /// never copied into per-connection memory.
    private let readBuffer = ByteBuffer(capacity: 64 << 10)
    private let readChunk = 64 << 10
    private let shutdownFD: Int32
    private var shutdownRegistration: RegistrationID?
    /// The context new connections get; replaced on reload, kept alive by existing connections.
    public internal(set) var tlsContext: TLSContext?
    /// TLS connections holding decrypted bytes epoll will not report: read them again this turn.
    private var bufferedReads: [Connection] = []
    private var spareReads: [Connection] = []
    private let reloadFD: Int32
    private var reloadRegistration: RegistrationID?
    /// Configuration reloads (Reload.swift).
    let reloadState = ReloadState()
    /// Tells systemd (NOTIFY_SOCKET) READY=1 when the loop starts and STOPPING=1 when shutdown begins.
    public var serviceNotifier: ServiceNotifier?

    public init(configuration: ServerConfiguration, logger: Logger = Logger(label: "switchboard")) throws {
        self.configuration = configuration
        self.driverLogger = logger
        Sys.ignoreSIGPIPE()
        loop = try EventLoop()
        store = try Store(directory: configuration.dataDirectory, mapSizeBytes: configuration.storeMapSizeBytes,
                          options: configuration.clusterServers != nil ? .clusterReplica : Store.Options())
        if configuration.clusterServers == nil && store.holdsClusterLog {
            store.close()
            throw ServerError.clusterReplicaFolder(configuration.dataDirectory)
        }
        reserveFD = Sys.openReserveDescriptor()
        let dummyHash = PasswordHasher.hash(password: Array("not a real password".utf8), iterations: configuration.pbkdf2Iterations)
        workers = try Workers(store: store, hashThreads: configuration.hashThreads)
        heapTrimmer = try HeapTrimmer(logger: logger)
        shutdownFD = try Sys.eventfdCreate()
        reloadFD = try Sys.eventfdCreate()
        if configuration.plaintext {
            tlsContext = nil
        } else {
            guard let tls = configuration.tls else { throw ServerError.tlsNotConfigured }
            tlsContext = try TLSContext(server: tls)
        }
        listenFD = try Socket.listen(on: configuration.listenAddress)
        boundAddress = try Socket.localAddress(listenFD)
        core = ServerCore(configuration: configuration.session, store: store, driver: self, logger: logger, dummyHash: dummyHash)
        if let servers = configuration.clusterServers, let node = configuration.clusterNode {
            // Clients wait in the listen backlog until the replica has caught up with the log (clusterReady).
            clusterMode = try ClusterMode(server: self, servers: servers, node: node)
        } else {
            listenRegistration = try loop.register(fd: listenFD, interest: .readable, handler: self)
        }
        shutdownRegistration = try loop.register(fd: shutdownFD, interest: .readable, handler: ShutdownHandler(server: self))
        reloadRegistration = try loop.register(fd: reloadFD, interest: .readable, handler: ReloadHandler(server: self))
        try workers.hashResults.attach(to: loop) { [unowned self] in self.core.hashCompleted($0) }
        try workers.storeResults.attach(to: loop) { [unowned self] in self.core.commitCompleted($0) }
        loop.onTurnEnd = { [unowned self] in self.endOfTurn() }
        loop.onTimer = { [unowned self] in self.timerFired($0) }
        loop.hasPendingWork = { [unowned self] in
            // The cluster router's directory upkeep and snapshot output go on a bounded batch per turn.
            self.core.hasPendingWork || !self.bufferedReads.isEmpty || (self.clusterMode?.router.hasBackgroundWork ?? false)
        }
        try startOps()
        core.start()
        try clusterMode?.start()
    }

    /// Cluster mode: the replica applied the whole log; clients waiting in the backlog are accepted now.
    /// Why the server stopped before it served anyone (e.g. a second node with the same name); `serve` exits 1.
    public private(set) var startRefusal: String?

    func refuseToStart(_ why: String) {
        startRefusal = why
        driverLogger.critical("refusing to start", metadata: ["why": "\(why)"])
        beginShutdown()
    }

    func clusterReady() {
        guard listenRegistration == nil, listenFD >= 0, !core.shuttingDown else { return }
        do {
            listenRegistration = try loop.register(fd: listenFD, interest: .readable, handler: self)
        } catch {
            driverLogger.critical("cannot listen after the cluster catch-up", metadata: ["error": "\(error)"])
            beginShutdown()
        }
    }

    deinit {
        stopOps()
        Sys.close(reloadFD)
        Sys.close(shutdownFD)
        if reserveFD >= 0 { Sys.close(reserveFD) }
        if listenFD >= 0 { Sys.close(listenFD) }
    }

    /// Runs the loop until shutdown completes: listener closed, clients told, unacknowledged
    /// deliveries moved to mailboxes, every queued mail committed.
    public func run() throws {
        if let tlsContext {
            driverLogger.info("listening", metadata: ["address": "\(boundAddress)", "data": "\(configuration.dataDirectory)",
                                                      "tls": "on", "certificate": "\(configuration.tls?.certificateChainFile ?? "")",
                                                      "key-sha256": "\(tlsContext.certificateFingerprint ?? "?")"])
        } else {
            driverLogger.warning("listening WITHOUT TLS (--plaintext): traffic and passwords travel in clear text",
                                 metadata: ["address": "\(boundAddress)", "data": "\(configuration.dataDirectory)"])
        }
        serviceNotifier?.notify("READY=1\nSTATUS=listening on \(boundAddress)")
        try loop.run()
        clusterMode?.close()
        stopOps()
        workers.shutdown()
        heapTrimmer.shutdown()
        // Results that arrived after the loop stopped still carry acknowledgements (best effort now).
        workers.storeResults.drain()
        core.finalizeAll()
        for lingerer in Array(lingering.values) { endLinger(lingerer) }
        store.close()
        driverLogger.info("stopped", metadata: ["accepted": "\(stats.accepted)", "relayed": "\(stats.relayedLive)",
                                                "stored": "\(stats.storedOffline)"])
    }

    /// Thread- and signal-safe: asks the loop to shut down cleanly.
    public func requestShutdown() { Sys.eventfdSignal(shutdownFD) }
    /// The descriptor a signal handler writes to (eventfd, async-signal-safe).
    public var shutdownEventFD: Int32 { shutdownFD }
    /// Written on SIGHUP: reload the configuration (Reload.swift).
    public var reloadEventFD: Int32 { reloadFD }
    /// Thread- and signal-safe: asks the loop to reload the configuration (Reload.swift).
    public func requestReload() { Sys.eventfdSignal(reloadFD) }

    private final class ReloadHandler: EventHandler {
        unowned let server: RelayServer
        init(server: RelayServer) { self.server = server }
        func handle(events: IOEvents, loop: EventLoop) {
            Sys.eventfdDrain(server.reloadFD)
            server.reloadSignalled()
        }
    }

    /// TLS contexts swapped in by reloads.
    public internal(set) var reloads = 0

    private final class ShutdownHandler: EventHandler {
        unowned let server: RelayServer
        init(server: RelayServer) { self.server = server }
        func handle(events: IOEvents, loop: EventLoop) {
            Sys.eventfdDrain(server.shutdownFD)
            server.beginShutdown()
        }
    }

    func beginShutdown() {
        guard !core.shuttingDown else { return }
        serviceNotifier?.notify("STOPPING=1")
        if let listenRegistration { loop.deregister(listenRegistration) }
        listenRegistration = nil
        Sys.close(listenFD)
        listenFD = -1
        core.beginShutdown()
    }

    // MARK: accepting

    public func handle(events: IOEvents, loop: EventLoop) {
        guard !acceptPaused, listenFD >= 0 else { return }
        // Level-triggered: accept a bounded number per turn; the rest are reported again.
        for _ in 0..<256 {
            let accepted: (fd: Int32, peer: SocketAddress)?
            do {
                accepted = try Socket.accept(listenFD)
            } catch {
                acceptFailed(error)
                return
            }
            guard let (fd, peer) = accepted else { return }
            let host = peer.host
            if let (code, message) = core.admission(host: host) {
                refuse(fd: fd, code: code, message)
                warnRateLimited("connection refused", ["reason": "\(message)"])
                continue
            }
            try? Sys.setOption(fd, level: Int32(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
            let transport: Transport
            if let tlsContext {
                do {
                    transport = try TLSTransport(fd: fd, context: tlsContext)
                } catch {
                    warnRateLimited("TLS setup failed", ["error": "\(error)"])
                    Sys.close(fd)
                    continue
                }
            } else {
                transport = PlainTransport(fd: fd)
            }
            let client = core.newClient(host: host, peerText: peer.description)
            let connection = Connection(client: client, transport: transport, server: self)
            do {
                connection.registration = try loop.register(fd: fd, interest: .readable, handler: connection)
            } catch {
                warnRateLimited("register failed", ["error": "\(error)"])
                transport.close()
                continue
            }
            client.link = connection
            core.opened(client)
            countChurn()
            driverLogger.trace("accepted", metadata: ["peer": "\(client.peerText)", "conn": "\(client.id)"])
        }
    }

    /// Out of descriptors (or another accept error): free the reserve descriptor to accept and refuse one
    /// waiting connection, stop accepting for 100 ms, and say so at most every 10 s.
    private func acceptFailed(_ error: Error) {
        let code = (error as? SyscallError)?.errno ?? 0
        if code == EMFILE || code == ENFILE, reserveFD >= 0 {
            Sys.close(reserveFD)
            reserveFD = -1
            if case let (fd, _)?? = try? Socket.accept(listenFD) {
                refuse(fd: fd, code: .serverBusy, "server is out of file descriptors; try again later")
            }
            reserveFD = Sys.openReserveDescriptor()
        }
        acceptPaused = true
        core.stats.acceptPauses += 1
        if let listenRegistration { loop.setInterest(listenRegistration, []) }
        loop.schedule(at: loop.now + 100, token: Self.acceptResumeToken)
        warnRateLimited("accept failed; accepting paused for 100 ms (raise the descriptor limit, e.g. ulimit -n or LimitNOFILE)",
                        ["error": "\(error)", "connections": "\(core.connectionCount)"])
    }

    private func resumeAccepting() {
        acceptPaused = false
        if let listenRegistration { loop.setInterest(listenRegistration, .readable) }
    }

    /// One warning per `key` per 10 s; the next one says how many were suppressed.
    private func warnRateLimited(_ key: String, _ metadata: Logger.Metadata) {
        let now = loop.now
        var entry = rateLimitedLogs[key] ?? (last: 0, suppressed: 0)
        if entry.last != 0 && now - entry.last < 10_000 {
            entry.suppressed += 1
            rateLimitedLogs[key] = entry
            return
        }
        var metadata = metadata
        if entry.suppressed > 0 { metadata["suppressed"] = "\(entry.suppressed) more in the last \((now - entry.last) / 1000) s" }
        driverLogger.warning("\(key)", metadata: metadata)
        rateLimitedLogs[key] = (last: now, suppressed: 0)
    }

    /// Plaintext: one ERROR frame, then close. TLS: close at once (no handshake spent on a refusal).
    private func refuse(fd: Int32, code: ErrorCode, _ message: String) {
        core.stats.refusedConnections += 1
        guard tlsContext == nil else { Sys.close(fd); return }
        let out = ByteBuffer()
        FrameEncoder.encode(ServerFrame.error(requestID: 0, code: code.rawValue, message: TextView(message)), into: out)
        _ = try? Sys.write(fd, out.readableView)
        Sys.close(fd)
    }

    // MARK: reading

    func handle(_ connection: Connection, events: IOEvents) {
        let client = connection.client
        if client.isClosing { return }
        // HUP, ERR and RDHUP are reported whatever the interest, level-triggered: a connection that is not
        // being read (parked for a hash, or paused for its output) would report them every turn. A peer
        // that hung up while paused is closed now; one that is read finds the EOF by reading.
        if client.readingPaused
            && (events.contains(.hangup) || events.contains(.error) || events.contains(.readHangup)) {
            core.peerGone(client, "peer hung up")
            return
        }
        let transport = connection.transport
        let readable = events.contains(.readable) || events.contains(.error) || events.contains(.hangup)
            || events.contains(.readHangup)
        if readable {
            if !client.readingPaused { readAndProcess(connection) }
            // A TLS write that needed to read first (handshake) can go on now.
            if transport.needsReadable && !client.isClosing { write(connection) }
        }
        if events.contains(.writable), !client.isClosing {
            // A TLS read that needed to write first (handshake) can go on now.
            if transport.needsWritable && !client.readingPaused { readAndProcess(connection) }
            if !client.isClosing {
                core.writeClockNs = Clock.monotonicNs()
                write(connection)
            }
        }
    }

    private func readAndProcess(_ connection: Connection) {
        let client = connection.client
        // Bytes of a partial frame (or of frames held while reading was paused) live in the client's own
        // buffer; otherwise read into the shared buffer and keep only what is left.
        let buffered = client.hasInput
        let target = buffered ? client.input : readBuffer
        let region = target.writableRegion(minimum: buffered ? 4096 : readChunk)
        let result: IOResult
        do {
            result = try connection.transport.read(into: region)
        } catch {
            core.peerGone(client, "read failed: \(error)")
            return
        }
        core.stats.reads += 1
        if connection.tls != nil && !connection.handshakeCounted { countHandshake(connection) }
        switch result {
        case .wouldBlock:
            if connection.transport.needsWritable { updateInterest(connection) }
            return
        case .processed(0):
            core.peerGone(client, "peer closed")
            return
        case .processed(let count):
            target.didWrite(count)
            core.receiveClockNs = Clock.monotonicNs()
            core.received(client, from: target)
            if target === readBuffer {
                if readBuffer.readableBytes > 0 && !client.isClosing {
                    client.input.writeBytes(readBuffer.readableView)
                }
                readBuffer.clear()
            }
            if connection.transport.hasBufferedPlaintext && !client.isClosing && !client.readingPaused {
                bufferedReads.append(connection)
            }
            if connection.transport.needsWritable { updateInterest(connection) }
        }
    }

    // MARK: writing

    /// Writes what the client has queued, up to the per-turn cap; what is left waits for EPOLLOUT.
    private func write(_ connection: Connection) {
        let client = connection.client
        let out = client.output
        var budget = configuration.maxWriteBytesPerTurn
        writeLoop: while out.readableBytes > 0 && budget > 0 {
            let chunk = min(out.readableBytes, budget)
            do {
                switch try connection.transport.write(from: out.view(from: out.readerIndex, to: out.readerIndex + chunk)) {
                case .processed(let written):
                    core.stats.writes += 1
                    out.advanceReaderRetaining(by: written)
                    budget -= written
                    if written < chunk { break writeLoop }
                case .wouldBlock:
                    break writeLoop
                }
            } catch {
                core.peerGone(client, "write failed: \(error)")
                return
            }
        }
        core.wrote(client)
        updateInterest(connection)
    }

    private func updateInterest(_ connection: Connection) {
        let client = connection.client
        guard let registration = connection.registration, !client.isClosing else { return }
        var interest: IOEvents = []
        if !client.readingPaused || connection.transport.needsReadable { interest.insert(.readable) }
        if client.output.readableBytes > 0 || connection.transport.needsWritable { interest.insert(.writable) }
        loop.setInterest(registration, interest)
    }

    // MARK: SessionDriver

    @inline(__always) private func connection(_ client: ClientState) -> Connection? {
        client.link.map { unsafeDowncast($0, to: Connection.self) }
    }

    public var now: UInt64 { loop.now }
    public var wallNow: UInt64 { loop.wallNow }
    public func interestChanged(_ client: ClientState) { if let c = connection(client) { updateInterest(c) } }
    public func flush(_ client: ClientState) { if let c = connection(client) { write(c) } }
    public func hasBufferedInput(_ client: ClientState) -> Bool { connection(client)?.transport.hasBufferedPlaintext ?? false }
    public func readAgain(_ client: ClientState) { if let c = connection(client) { bufferedReads.append(c) } }
    public func handshakePending(_ client: ClientState) -> Bool {
        guard let tls = connection(client)?.transport as? TLSTransport else { return false }
        return !tls.isHandshakeComplete
    }
    public func startHash(_ job: HashJob) { workers.hashJobs.push(job) }
    public func startCommit(_ batch: StoreBatch) {
        if let clusterMode { clusterMode.log.submit(batch) } else { workers.storeJobs.push(batch) }
    }
    public func schedule(at deadline: UInt64, token: UInt64) { loop.schedule(at: deadline, token: token) }

    public func finalize(_ client: ClientState) {
        guard let connection = connection(client) else { return }
        if connection.tls != nil && !connection.handshakeCounted { tlsHandshakes.failed += 1 }
        countChurn()
        client.link = nil
        if let registration = connection.registration { loop.deregister(registration) }
        connection.registration = nil
        let out = client.output
        if out.readableBytes > 0, client.closeCode != nil, lingering.count < 10_000, let lingerer = startLinger(connection) {
            lingering[client.id.raw] = lingerer
        } else {
            connection.transport.close()
            out.clear()
            out.releaseIfEmpty()
        }
    }

    /// A closed connection's socket while its last bytes go out: written, then FIN (shutdown), then the
    /// peer's bytes are read and dropped until its EOF or `closeLingerMs`, so the peer reads the ERROR
    /// instead of a reset.
    final class Lingerer: EventHandler {
        let id: UInt64
        let transport: Transport
        let output: ByteBuffer
        let deadline: UInt64
        var registration: RegistrationID?
        var finSent = false
        unowned let server: RelayServer
        init(id: UInt64, transport: Transport, output: ByteBuffer, deadline: UInt64, server: RelayServer) {
            self.id = id
            self.transport = transport
            self.output = output
            self.deadline = deadline
            self.server = server
        }
        func handle(events: IOEvents, loop: EventLoop) { server.lingerEvent(self, events) }
    }

    private func startLinger(_ connection: Connection) -> Lingerer? {
        let lingerer = Lingerer(id: connection.client.id.raw, transport: connection.transport, output: connection.client.output,
                                deadline: loop.now + configuration.closeLingerMs, server: self)
        guard let registration = try? loop.register(fd: connection.transport.fd, interest: [.readable, .writable],
                                                    handler: lingerer) else { return nil }
        lingerer.registration = registration
        loop.schedule(at: lingerer.deadline, token: lingerer.id)
        return lingerer
    }

    func lingerEvent(_ lingerer: Lingerer, _ events: IOEvents) {
        guard lingering[lingerer.id] != nil else { return }
        let out = lingerer.output
        if !lingerer.finSent {
            while out.readableBytes > 0 {
                switch try? lingerer.transport.write(from: out.readableView) {
                case .processed(let written)?:
                    out.moveReaderIndex(forwardBy: written)
                case .wouldBlock?:
                    if lingerer.transport.needsReadable, let registration = lingerer.registration {
                        loop.setInterest(registration, [.readable, .writable])
                    }
                    return
                case nil:
                    endLinger(lingerer)
                    return
                }
            }
            Sys.shutdownWrite(lingerer.transport.fd)
            lingerer.finSent = true
            out.releaseIfEmpty()
            if let registration = lingerer.registration { loop.setInterest(registration, .readable) }
        }
        if events.contains(.hangup) || events.contains(.error) {
            endLinger(lingerer)
            return
        }
        // Drain what the peer still sends (a few reads per wake-up) until its EOF.
        for _ in 0..<4 {
            let region = readBuffer.writableRegion(minimum: readChunk)
            let result = try? lingerer.transport.read(into: region)
            readBuffer.clear()
            switch result {
            case .processed(let count)? where count > 0:
                continue
            case .wouldBlock?:
                return
            default:
                endLinger(lingerer)
                return
            }
        }
    }

    private func endLinger(_ lingerer: Lingerer) {
        guard lingering.removeValue(forKey: lingerer.id) != nil else { return }
        if let registration = lingerer.registration { loop.deregister(registration) }
        lingerer.registration = nil
        lingerer.transport.close()
        lingerer.output.clear()
        lingerer.output.releaseIfEmpty()
    }

    // MARK: heap trim after storms

    /// One accept or close. Per connection, never per message: an add and a compare.
    @inline(__always) private func countChurn() {
        churnSinceTrim &+= 1
        if churnSinceTrim >= configuration.heapTrimChurn && !trimScheduled && configuration.heapTrimChurn > 0 {
            trimScheduled = true
            trimFirstRequested = loop.now
            churnAtTrimCheck = churnSinceTrim
            loop.schedule(at: loop.now + Self.trimSettleMs, token: Self.heapTrimToken)
        }
    }

    private static let trimSettleMs: UInt64 = 1000
    private static let trimMaxDelayMs: UInt64 = 10_000

    /// Trims once the storm has calmed (less than the threshold of churn in the last second), or at the
    /// latest 10 s after it was first due.
    private func heapTrimCheck() {
        let recent = churnSinceTrim - churnAtTrimCheck
        if recent >= configuration.heapTrimChurn && loop.now - trimFirstRequested < Self.trimMaxDelayMs {
            churnAtTrimCheck = churnSinceTrim
            loop.schedule(at: loop.now + Self.trimSettleMs, token: Self.heapTrimToken)
            return
        }
        heapTrimmer.request(churn: churnSinceTrim)
        heapTrimsRequested += 1
        churnSinceTrim = 0
        trimScheduled = false
    }

    // MARK: turns and timers

    private func endOfTurn() {
        if !bufferedReads.isEmpty {
            swap(&bufferedReads, &spareReads)
            for connection in spareReads where !connection.client.isClosing && !connection.client.readingPaused {
                readAndProcess(connection)
            }
            spareReads.removeAll(keepingCapacity: true)
        }
        core.endOfTurn()
        clusterMode?.router.flush()
        if core.isStopped && lingering.isEmpty { loop.stop() }
    }

    private func timerFired(_ token: UInt64) {
        if let clusterMode, clusterMode.timerFired(token) { return }
        if token == Self.acceptResumeToken {
            resumeAccepting()
            return
        }
        if opsTimerFired(token) { return }
        if token == Self.heapTrimToken {
            heapTrimCheck()
            return
        }
        if let lingerer = lingering[token], loop.now >= lingerer.deadline {
            endLinger(lingerer)
            if core.isStopped && lingering.isEmpty { loop.stop() }
            return
        }
        core.timerFired(token)
    }
}
