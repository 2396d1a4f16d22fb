// The running relay. Invariants: everything here runs on the loop thread except `requestShutdown`;
// connections are closed only at the end of a loop turn (never inside another connection's
// handler); each connection is written at most once per turn (the pending-write list), and
// EPOLLOUT is registered only for output that could not be written; a message is acknowledged to
// its sender only when its receiver acknowledged it or its mail commit returned.
// Bounds: every byte queued for a connection passes `outputChanged`, the one place its OutputBudget
// is consulted (pause reading, congestion, hard cap); password checks go through the AuthGate; a
// closed connection's last bytes are the rest of the frame being written and its ERROR, then FIN;
// HUP/ERR of a connection that is not being read closes it (level-triggered events never spin);
// accept failures pause accepting for 100 ms and are logged at most every 10 s.
import Glibc
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardSession
import SwitchboardStore
import SwitchboardTLS

public struct ServerStats: Sendable {
    public var accepted: UInt64 = 0
    public var closed: UInt64 = 0
    public var framesIn: UInt64 = 0
    public var relayedLive: UInt64 = 0
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
}

/// What a queued LOGIN or REGISTER needs once a hash thread is free.
struct AuthRequest {
    let requestID: UInt32
    let password: [UInt8]
}

public enum ServerError: Error, CustomStringConvertible {
    case tlsNotConfigured
    public var description: String {
        switch self {
        case .tlsNotConfigured:
            return "TLS is on by default but no certificate was given: run `switchboard cert init` (development) or pass --tls-cert and --tls-key, or --plaintext"
        }
    }
}

public final class RelayServer: EventHandler {
    public let configuration: ServerConfiguration
    public private(set) var stats = ServerStats()
    public var logger: Logger

    let loop: EventLoop
    let store: Store
    let core: RelayCore
    private let workers: Workers
    private var listenFD: Int32 = -1
    private var listenRegistration: RegistrationID?
    public private(set) var boundAddress: SocketAddress
    private var connections: [UInt64: Connection] = [:]
    private var nextConnectionID: UInt64 = 1
    private var pendingWrites: [Connection] = []
    private var toClose: [Connection] = []
    /// Swapped with the lists above each turn, so iterating never copies or reallocates them.
    private var spareConnections: [Connection] = []
    private var storeBatch = StoreBatch()
    private var storeInFlight = false
    private var authGate: AuthGate<AuthRequest>
    /// The attempt being hashed for each parked connection (at most one each).
    private var hashingAttempts: [UInt64: AuthAttempt<AuthRequest>] = [:]
    private var authWakeAt: UInt64 = .max
    private static let authWakeToken = UInt64.max - 1
    private var preLoginByAddress: [String: Int] = [:]
    private var reserveFD: Int32 = -1
    private var acceptPaused = false
    private static let acceptResumeToken = UInt64.max - 2
    private var rateLimitedLogs: [String: (last: UInt64, suppressed: Int)] = [:]
    /// Closed connections whose last bytes are still being written / whose FIN awaits the peer's.
    private var lingering: [UInt64: Lingerer] = [:]
    private let budgetLimits: OutputBudgetLimits
    /// One read buffer for all connections: frames that arrive whole are handled from here and
    /// never copied into per-connection memory.
    private let readBuffer = ByteBuffer(capacity: 64 << 10)
    private let readChunk = 64 << 10
    private var shuttingDown = false
    private let shutdownFD: Int32
    private var shutdownRegistration: RegistrationID?
    private let dummyHash: PasswordHash
    private var userNameCache: [UserID: String] = [:]
    private static let maintenanceToken = UInt64.max
    private static let maintenanceIntervalMs: UInt64 = 30_000
    private var lastDedupePrune: UInt64 = 0
    /// The context new connections get; replaced on reload, kept alive by existing connections.
    public private(set) var tlsContext: TLSContext?
    /// TLS connections holding decrypted bytes epoll will not report: read them again this turn.
    private var bufferedReads: [Connection] = []
    private let reloadFD: Int32
    private var reloadRegistration: RegistrationID?

    public init(configuration: ServerConfiguration, logger: Logger = Logger(label: "switchboard")) throws {
        self.configuration = configuration
        self.logger = logger
        Sys.ignoreSIGPIPE()
        loop = try EventLoop()
        store = try Store(directory: configuration.dataDirectory, mapSizeBytes: configuration.storeMapSizeBytes)
        let store = self.store
        let limits = configuration.limits
        core = RelayCore(limits: RelayLimits(mailboxMaxMessages: Int(limits.mailboxMaxMessages),
                                             mailboxMaxBytes: Int(limits.mailboxMaxBytes),
                                             maxBodyBytes: limits.maxBodyBytes,
                                             dedupeWindow: configuration.dedupeWindow),
                         loadMailboxUsage: { user in
                             (try? store.mailboxUsage(of: user)) ?? MailboxUsage(count: 0, bytes: 0, lastSeq: 0)
                         })
        authGate = AuthGate(limits: configuration.authLimits)
        budgetLimits = configuration.budgetLimits
        reserveFD = Sys.openReserveDescriptor()
        dummyHash = PasswordHasher.hash(password: Array("not a real password".utf8), iterations: configuration.pbkdf2Iterations)
        workers = try Workers(store: store, hashThreads: configuration.hashThreads)
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
        listenRegistration = try loop.register(fd: listenFD, interest: .readable, handler: self)
        shutdownRegistration = try loop.register(fd: shutdownFD, interest: .readable, handler: ShutdownHandler(server: self))
        reloadRegistration = try loop.register(fd: reloadFD, interest: .readable, handler: ReloadHandler(server: self))
        try workers.hashResults.attach(to: loop) { [unowned self] in self.handleHashResults($0) }
        try workers.storeResults.attach(to: loop) { [unowned self] in self.handleStoreResults($0) }
        loop.onTurnEnd = { [unowned self] in self.endOfTurn() }
        loop.onTimer = { [unowned self] in self.timerFired($0) }
        loop.hasPendingWork = { [unowned self] in
            !self.toClose.isEmpty || !self.pendingWrites.isEmpty || !self.bufferedReads.isEmpty
        }
        loop.schedule(at: loop.now + Self.maintenanceIntervalMs, token: Self.maintenanceToken)
    }

    deinit {
        Sys.close(reloadFD)
        Sys.close(shutdownFD)
        if reserveFD >= 0 { Sys.close(reserveFD) }
        if listenFD >= 0 { Sys.close(listenFD) }
    }

    /// Runs the loop until shutdown completes: listener closed, clients told, unacknowledged
    /// deliveries moved to mailboxes, every queued mail committed.
    public func run() throws {
        if let tlsContext {
            logger.info("listening", metadata: ["address": "\(boundAddress)", "data": "\(configuration.dataDirectory)",
                                                "tls": "on", "certificate": "\(configuration.tls?.certificateChainFile ?? "")",
                                                "key-sha256": "\(tlsContext.certificateFingerprint ?? "?")"])
        } else {
            logger.warning("listening WITHOUT TLS (--plaintext): traffic and passwords travel in clear text",
                           metadata: ["address": "\(boundAddress)", "data": "\(configuration.dataDirectory)"])
        }
        try loop.run()
        workers.shutdown()
        // Results that arrived after the loop stopped still carry acknowledgements (best effort now).
        workers.storeResults.drain()
        for connection in Array(connections.values) { finalizeClose(connection) }
        for lingerer in Array(lingering.values) { endLinger(lingerer) }
        store.close()
        logger.info("stopped", metadata: ["accepted": "\(stats.accepted)", "relayed": "\(stats.relayedLive)",
                                          "stored": "\(stats.storedOffline)"])
    }

    /// Thread- and signal-safe: asks the loop to shut down cleanly.
    public func requestShutdown() { Sys.eventfdSignal(shutdownFD) }
    /// The descriptor a signal handler writes to (eventfd, async-signal-safe).
    public var shutdownEventFD: Int32 { shutdownFD }
    /// Written on SIGHUP: reload the TLS certificate and key.
    public var reloadEventFD: Int32 { reloadFD }
    /// Thread-safe: asks the loop to reload the TLS certificate and key.
    public func requestReload() { Sys.eventfdSignal(reloadFD) }

    private final class ReloadHandler: EventHandler {
        unowned let server: RelayServer
        init(server: RelayServer) { self.server = server }
        func handle(events: IOEvents, loop: EventLoop) {
            Sys.eventfdDrain(server.reloadFD)
            server.reloadTLS()
        }
    }

    /// New connections use the new certificate; existing ones keep theirs. A broken new
    /// certificate is refused and the old one stays in use. Runs on the loop: loading two PEM
    /// files is a few hundred microseconds, rare, and keeps the context swap trivially safe.
    public private(set) var reloads = 0
    private func reloadTLS() {
        guard let current = tlsContext, let tls = configuration.tls else {
            logger.notice("reload requested, but TLS is off (--plaintext): nothing to reload")
            return
        }
        do {
            let fresh = try TLSContext(server: tls, ticketKeys: current.ticketKeys ?? TicketKeyRing())
            tlsContext = fresh
            reloads += 1
            logger.notice("TLS certificate reloaded", metadata: ["certificate": "\(tls.certificateChainFile)",
                                                                  "key-sha256": "\(fresh.certificateFingerprint ?? "?")"])
        } catch {
            logger.error("TLS reload refused, keeping the certificate in use", metadata: ["error": "\(error)"])
        }
    }

    private final class ShutdownHandler: EventHandler {
        unowned let server: RelayServer
        init(server: RelayServer) { self.server = server }
        func handle(events: IOEvents, loop: EventLoop) {
            Sys.eventfdDrain(server.shutdownFD)
            server.beginShutdown()
        }
    }

    private func beginShutdown() {
        guard !shuttingDown else { return }
        shuttingDown = true
        logger.info("shutting down", metadata: ["connections": "\(connections.count)"])
        if let listenRegistration { loop.deregister(listenRegistration) }
        listenRegistration = nil
        Sys.close(listenFD)
        listenFD = -1
        for connection in connections.values {
            close(connection, code: .shuttingDown, "server shutting down")
        }
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
            stats.accepted += 1
            if connections.count >= configuration.maxConnections {
                refuse(fd: fd, code: .serverBusy, "server is at its connection limit (\(configuration.maxConnections))")
                warnRateLimited("connection refused: at the connection limit", ["limit": "\(configuration.maxConnections)"])
                continue
            }
            let host = peer.host
            if preLoginByAddress[host, default: 0] >= configuration.maxPreLoginConnectionsPerAddress {
                refuse(fd: fd, code: .serverBusy,
                       "too many connections from \(host) have not logged in yet (limit \(configuration.maxPreLoginConnectionsPerAddress))")
                warnRateLimited("connection refused: address over its pre-login limit",
                                ["address": "\(host)", "limit": "\(configuration.maxPreLoginConnectionsPerAddress)"])
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
            let id = ConnectionID(nextConnectionID)
            nextConnectionID += 1
            let connection = Connection(id: id, transport: transport, peer: peer, now: loop.now)
            connection.server = self
            do {
                connection.registration = try loop.register(fd: fd, interest: .readable, handler: connection)
            } catch {
                warnRateLimited("register failed", ["error": "\(error)"])
                connection.transport.close()
                continue
            }
            connections[id.raw] = connection
            connection.countedPreLogin = true
            preLoginByAddress[host, default: 0] += 1
            scheduleTimer(connection, at: nextDeadline(connection))
            logger.trace("accepted", metadata: ["peer": "\(connection.peerText)", "conn": "\(id)"])
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
                stats.refusedConnections += 1
                refuse(fd: fd, code: .serverBusy, "server is out of file descriptors; try again later")
            }
            reserveFD = Sys.openReserveDescriptor()
        }
        acceptPaused = true
        stats.acceptPauses += 1
        if let listenRegistration { loop.setInterest(listenRegistration, []) }
        loop.schedule(at: loop.now + 100, token: Self.acceptResumeToken)
        warnRateLimited("accept failed; accepting paused for 100 ms (raise the descriptor limit, e.g. ulimit -n or LimitNOFILE)",
                        ["error": "\(error)", "connections": "\(connections.count)"])
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
        logger.warning("\(key)", metadata: metadata)
        rateLimitedLogs[key] = (last: now, suppressed: 0)
    }

    /// Plaintext: one ERROR frame, then close. TLS: close at once (no handshake spent on a refusal).
    private func refuse(fd: Int32, code: ErrorCode, _ message: String) {
        stats.refusedConnections += 1
        guard tlsContext == nil else { Sys.close(fd); return }
        let out = ByteBuffer()
        FrameEncoder.encode(ServerFrame.error(requestID: 0, code: code.rawValue, message: TextView(message)), into: out)
        _ = try? Sys.write(fd, out.readableView)
        Sys.close(fd)
    }

    // MARK: reading and decoding

    func handle(_ connection: Connection, events: IOEvents) {
        if connection.isClosing { return }
        // HUP, ERR and RDHUP are reported whatever the interest, level-triggered: a connection that is not
        // being read (parked for a hash, or paused for its output) would report them every turn. A peer
        // that hung up while paused is closed now; one that is read finds the EOF by reading.
        if connection.readingPaused
            && (events.contains(.hangup) || events.contains(.error) || events.contains(.readHangup)) {
            close(connection, code: nil, "peer hung up")
            return
        }
        let transport = connection.transport
        let readable = events.contains(.readable) || events.contains(.error) || events.contains(.hangup)
            || events.contains(.readHangup)
        if readable {
            if !connection.readingPaused { readAndProcess(connection) }
            // A TLS write that needed to read first (handshake) can go on now.
            if transport.needsReadable && !connection.isClosing { flush(connection) }
        }
        if events.contains(.writable), !connection.isClosing {
            // A TLS read that needed to write first (handshake) can go on now.
            if transport.needsWritable && !connection.readingPaused { readAndProcess(connection) }
            if !connection.isClosing { flush(connection) }
        }
    }

    private func readAndProcess(_ connection: Connection) {
        // Bytes of a partial frame live in the connection's own buffer; otherwise read into the
        // shared buffer and keep only what is left of an incomplete frame.
        let target = connection.input.isEmpty ? readBuffer : connection.input
        let region = target.writableRegion(minimum: connection.input.isEmpty ? readChunk : 4096)
        let result: IOResult
        do {
            result = try connection.transport.read(into: region)
        } catch {
            close(connection, code: nil, "read failed: \(error)")
            return
        }
        stats.reads += 1
        switch result {
        case .wouldBlock:
            if connection.transport.needsWritable { updateInterest(connection) }
            return
        case .processed(0):
            close(connection, code: nil, "peer closed")
            return
        case .processed(let count):
            target.didWrite(count)
            connection.lastActivity = loop.now
            connection.pingOutstanding = false
            process(connection, from: target)
            if target === readBuffer {
                if readBuffer.readableBytes > 0 && !connection.isClosing {
                    connection.input.writeBytes(readBuffer.readableView)
                }
                readBuffer.clear()
            }
            if connection.transport.hasBufferedPlaintext && !connection.isClosing && !connection.readingPaused {
                bufferedReads.append(connection)
            }
            if connection.transport.needsWritable { updateInterest(connection) }
        }
    }

    private func maxFrameBytes(_ connection: Connection) -> Int {
        Int(connection.phase == .active ? configuration.limits.maxFrameBytes : configuration.limits.maxFrameBytesBeforeLogin)
    }

    /// Handles every complete frame in `buffer`, stopping early while authentication is in flight.
    private func process(_ connection: Connection, from buffer: ByteBuffer) {
        while !connection.isClosing && !connection.readingPaused {
            switch FrameDecoder.split(buffer.readableView, maxFrameBytes: maxFrameBytes(connection)) {
            case .needMore:
                return
            case .failure(let error):
                protocolFailure(connection, error)
                return
            case .frame(let (type, body), let consumed):
                stats.framesIn += 1
                do {
                    let frame = try FrameDecoder.clientFrame(type: type, body: body)
                    handleFrame(connection, frame)
                } catch {
                    protocolFailure(connection, error)
                    return
                }
                buffer.moveReaderIndex(forwardBy: consumed)
            }
        }
    }

    private func protocolFailure(_ connection: Connection, _ error: ProtocolError) {
        stats.protocolErrors += 1
        logger.debug("protocol error", metadata: ["peer": "\(connection.peerText)", "error": "\(error)"])
        close(connection, code: error.code, error.message)
    }

    // MARK: frames

    private func handleFrame(_ connection: Connection, _ frame: ClientFrame) {
        switch connection.phase {
        case .awaitingHello:
            switch frame {
            case .hello(let version, _):
                guard version == ProtocolConstants.version else {
                    close(connection, code: .unsupportedVersion,
                          "protocol version \(version) is not supported; this server speaks \(ProtocolConstants.version)")
                    return
                }
                connection.phase = .awaitingAuth
                send(connection, .welcome(Welcome(limits: configuration.limits, serverName: TextView(configuration.serverName))))
            case .ping(let token):
                send(connection, .pong(token: token))
            default:
                close(connection, code: .notAllowedNow, "send HELLO first")
            }
        case .awaitingAuth:
            switch frame {
            case .register(let requestID, let name, let password):
                startRegistration(connection, requestID: requestID, name: name.string, password: password.bytes.array)
            case .login(let requestID, let name, let password):
                startLogin(connection, requestID: requestID, name: name.string, password: password.bytes.array)
            case .ping(let token):
                send(connection, .pong(token: token))
            case .pong:
                break
            default:
                close(connection, code: .notAllowedNow, "only REGISTER, LOGIN and PING are allowed before login")
            }
        case .active:
            handleActiveFrame(connection, frame)
        case .authenticating, .closing:
            break
        }
    }

    private func handleActiveFrame(_ connection: Connection, _ frame: ClientFrame) {
        switch frame {
        case .send(let to, let messageID, let body):
            relay(from: connection, to: to, messageID: messageID, body: body)
        case .deliveryAck(let throughSeq):
            acknowledgeDeliveries(connection, throughSeq: throughSeq)
        case .mailAck(let throughSeq):
            acknowledgeMail(connection, throughSeq: throughSeq)
        case .ping(let token):
            send(connection, .pong(token: token))
        case .pong:
            break
        case .openChat(let requestID, let contact):
            switch core.openChat(from: connection.userID, with: contact) {
            case .online:
                send(connection, .chatStatus(requestID: requestID, userID: contact, online: true, text: "Contact online"))
            case .offline:
                send(connection, .chatStatus(requestID: requestID, userID: contact, online: false,
                                             text: TextView(ProtocolConstants.offlineNotice)))
            case .notAContact:
                send(connection, .error(requestID: requestID, code: ErrorCode.notAContact.rawValue,
                                        message: "user \(contact) is not an accepted contact"))
            }
        case .listContacts(let requestID):
            sendContactList(connection, requestID: requestID, contacts: core.contactList(of: connection.userID))
        case .contactAdd(let requestID, let name):
            contactChange(connection, requestID: requestID, name: name.string) { .contactAdd(owner: $0, contactName: $1) }
        case .contactAccept(let requestID, let name):
            contactChange(connection, requestID: requestID, name: name.string) { .contactAccept(owner: $0, contactName: $1) }
        case .contactRemove(let requestID, let name):
            contactChange(connection, requestID: requestID, name: name.string) { .contactRemove(owner: $0, contactName: $1) }
        case .register(let requestID, _, _), .login(let requestID, _, _):
            send(connection, .error(requestID: requestID, code: ErrorCode.alreadyLoggedIn.rawValue,
                                    message: "already logged in as \(connection.userName)"))
        case .hello:
            close(connection, code: .notAllowedNow, "HELLO was already received")
        }
    }

    // MARK: registration and login

    private func startRegistration(_ connection: Connection, requestID: UInt32, name: String, password: [UInt8]) {
        guard Store.isValidUserName(name) else {
            send(connection, .error(requestID: requestID, code: ErrorCode.invalidName.rawValue,
                                    message: "user names are 1-32 characters of A-Z a-z 0-9 _ . -"))
            return
        }
        guard password.count >= ProtocolConstants.minPasswordBytes else {
            send(connection, .error(requestID: requestID, code: ErrorCode.invalidPassword.rawValue,
                                    message: "passwords need at least \(ProtocolConstants.minPasswordBytes) bytes"))
            return
        }
        submitAuth(connection, kind: .register, name: name, AuthRequest(requestID: requestID, password: password))
    }

    private func startLogin(_ connection: Connection, requestID: UInt32, name: String, password: [UInt8]) {
        submitAuth(connection, kind: .login, name: name, AuthRequest(requestID: requestID, password: password))
    }

    /// Every password check enters the AuthGate, which decides when (and whether) it is hashed.
    private func submitAuth(_ connection: Connection, kind: AuthKind, name: String, _ request: AuthRequest) {
        let now = loop.now
        let attempt = AuthAttempt(connection: connection.id.raw, address: connection.peer.host, user: name, kind: kind,
                                  payload: request, now: now)
        switch authGate.submit(attempt, now: now) {
        case .queued:
            park(connection)
            pumpAuth()
        case .lockedOut(let why):
            stats.lockouts += 1
            logger.notice("login locked out", metadata: ["user": "\(name)", "peer": "\(connection.peerText)"])
            close(connection, code: .lockedOut, why)
        case .busy(let why):
            stats.authBusy += 1
            send(connection, .error(requestID: request.requestID, code: ErrorCode.busyRetryLater.rawValue, message: TextView(why)))
        }
    }

    /// Hands the gate's ready attempts to the hash threads (at most one per thread is outstanding, so
    /// the rest stay queued where a close can cancel them) and wakes the gate for delayed ones.
    private func pumpAuth() {
        let now = loop.now
        while let dispatch = authGate.next(now: now) {
            switch dispatch {
            case .refuse(let attempt, let why):
                stats.lockouts += 1
                if let connection = connections[attempt.connection], !connection.isClosing {
                    close(connection, code: .lockedOut, why)
                }
            case .hash(let attempt):
                guard let connection = connections[attempt.connection], !connection.isClosing else {
                    authGate.finished(attempt, .neutral, now: now)
                    continue
                }
                let request = attempt.payload
                switch attempt.kind {
                case .register:
                    hashingAttempts[attempt.connection] = attempt
                    workers.hashJobs.push(.hashForRegistration(connection: attempt.connection, requestID: request.requestID,
                                                               name: attempt.user, password: request.password,
                                                               iterations: configuration.pbkdf2Iterations))
                case .login:
                    let account: AccountRecord?
                    do {
                        account = Store.isValidUserName(attempt.user) ? try store.account(named: attempt.user) : nil
                    } catch {
                        logger.error("account lookup failed", metadata: ["error": "\(error)"])
                        authGate.finished(attempt, .neutral, now: now)
                        send(connection, .error(requestID: request.requestID, code: ErrorCode.internalError.rawValue,
                                                message: "account lookup failed"))
                        unpark(connection, phase: .awaitingAuth)
                        continue
                    }
                    hashingAttempts[attempt.connection] = attempt
                    workers.hashJobs.push(.verifyLogin(connection: attempt.connection, requestID: request.requestID,
                                                       name: attempt.user, password: request.password, account: account,
                                                       dummy: dummyHash))
                }
            }
        }
        if let wake = authGate.nextWakeupMs, wake > now, wake < authWakeAt {
            authWakeAt = wake
            loop.schedule(at: wake, token: Self.authWakeToken)
        }
    }

    private func finishAttempt(_ connection: UInt64, _ outcome: AuthOutcome) {
        if let attempt = hashingAttempts.removeValue(forKey: connection) {
            authGate.finished(attempt, outcome, now: loop.now)
        }
    }

    /// Stops reading while a helper thread works for this connection; frames already received
    /// wait in its input buffer.
    private func park(_ connection: Connection) {
        connection.phase = .authenticating
        connection.parked = true
        updateInterest(connection)
    }

    private func unpark(_ connection: Connection, phase: Connection.Phase) {
        connection.phase = phase
        connection.parked = false
        resumeReading(connection)
    }

    /// Reading may go on (unparked, or output drained): frames that arrived meanwhile are handled first.
    private func resumeReading(_ connection: Connection) {
        guard !connection.isClosing, !connection.readingPaused else { return }
        updateInterest(connection)
        if !connection.input.isEmpty { process(connection, from: connection.input) }
        if connection.transport.hasBufferedPlaintext && !connection.isClosing { bufferedReads.append(connection) }
    }

    private func handleHashResults(_ results: [HashResult]) {
        for result in results {
            switch result {
            case .hashed(let id, let requestID, let name, let hash):
                finishAttempt(id, .neutral)
                guard let connection = connections[id], !connection.isClosing else { continue }
                storeBatch.append(.createAccount(name: name, password: hash), .createAccount(connection: id, requestID: requestID))
            case .verified(let id, let requestID, let name, let account, let ok):
                finishAttempt(id, ok ? .success : .wrongPassword)
                guard let connection = connections[id], !connection.isClosing else { continue }
                guard ok, let account else {
                    logger.info("login failed", metadata: ["user": "\(name)", "peer": "\(connection.peerText)"])
                    send(connection, .error(requestID: requestID, code: ErrorCode.authenticationFailed.rawValue,
                                            message: "wrong user name or password"))
                    unpark(connection, phase: .awaitingAuth)
                    continue
                }
                completeLogin(connection, requestID: requestID, account: account)
            }
        }
        pumpAuth()
    }

    private func leavePreLogin(_ connection: Connection) {
        guard connection.countedPreLogin else { return }
        connection.countedPreLogin = false
        let host = connection.peer.host
        if let count = preLoginByAddress[host], count > 1 { preLoginByAddress[host] = count - 1 } else { preLoginByAddress[host] = nil }
    }

    private func completeLogin(_ connection: Connection, requestID: UInt32, account: AccountRecord) {
        let contacts: [ContactEntry]
        do {
            contacts = try store.contacts(of: account.userID)
        } catch {
            logger.error("contact lookup failed", metadata: ["error": "\(error)"])
            send(connection, .error(requestID: requestID, code: ErrorCode.internalError.rawValue, message: "contact lookup failed"))
            unpark(connection, phase: .awaitingAuth)
            return
        }
        connection.userID = account.userID
        connection.userName = account.name
        leavePreLogin(connection)
        userNameCache[account.userID] = account.name
        let outcome = core.login(user: account.userID, name: account.name, connection: connection.id,
                                 address: connection.peerText, contacts: contacts)
        if let old = outcome.takenOver, let oldConnection = connections[old.raw] {
            logger.info("session taken over", metadata: ["user": "\(account.name)", "old": "\(oldConnection.peerText)",
                                                         "new": "\(connection.peerText)"])
            oldConnection.userID = 0 // its deliveries still go to the mailbox, but it is no longer the session
            close(oldConnection, code: .sessionTakenOver, "logged in from \(connection.peerText)", keepUserForReroute: account.userID)
        }
        let box = core.mailbox(of: account.userID)
        send(connection, .loginOK(requestID: requestID, userID: account.userID, name: TextView(account.name),
                                  address: TextView(connection.peerText), pendingMail: UInt32(clamping: box.count)))
        sendContactList(connection, requestID: requestID, contacts: outcome.contacts)
        for target in outcome.notifyOnline {
            if let other = connections[target.raw] { send(other, .presence(userID: account.userID, online: true)) }
        }
        logger.info("login", metadata: ["user": "\(account.name)", "peer": "\(connection.peerText)"])
        connection.mailPaging = .notStarted
        sendMailPage(connection)
        unpark(connection, phase: .active)
        connection.lastActivity = loop.now
        scheduleTimer(connection, at: nextDeadline(connection))
    }

    private func sendContactList(_ connection: Connection, requestID: UInt32, contacts: [ContactInfo]) {
        let chunk = 500
        var start = 0
        repeat {
            let end = min(start + chunk, contacts.count)
            send(connection, .contactList(requestID: requestID, final: end == contacts.count, contacts: Array(contacts[start..<end])))
            start = end
        } while start < contacts.count
    }

    // MARK: stored mail

    private func userName(_ id: UserID) -> String {
        if let name = userNameCache[id] { return name }
        let name = (try? store.userName(of: id)) ?? nil
        if let name {
            if userNameCache.count > 100_000 { userNameCache.removeAll(keepingCapacity: true) }
            userNameCache[id] = name
        }
        return name ?? "user\(id)"
    }

    /// One page of stored mail after the cursor: at most `mailPageSize` messages and about
    /// `mailPageBytes` bytes (one message more than that only if it alone is larger), read from the
    /// store a few at a time so a page of large mails is never all in memory at once.
    /// Returns true when the mailbox had nothing more after the page.
    private func sendStoredMail(_ connection: Connection) -> Bool {
        var count = 0
        var bytes = 0
        while count < configuration.mailPageSize && bytes < configuration.mailPageBytes {
            let limit = min(8, configuration.mailPageSize - count)
            let mails: [StoredMail]
            do {
                mails = try store.mail(for: connection.userID, afterSeq: connection.mailCursor, limit: limit)
            } catch {
                logger.error("mail read failed", metadata: ["error": "\(error)", "user": "\(connection.userName)"])
                return false
            }
            for (index, mail) in mails.enumerated() {
                if bytes >= configuration.mailPageBytes { return false }
                sendMail(connection, mail)
                count += 1
                bytes += mail.body.count + 64
                if index == mails.count - 1 && mails.count < limit { return true }
            }
            if mails.isEmpty { return true }
        }
        return false
    }

    private func sendMailPage(_ connection: Connection) {
        if sendStoredMail(connection) {
            connection.mailPaging = .done
            send(connection, .mailEnd(count: connection.mailSentCount))
        } else {
            connection.mailPaging = .awaitingAck
        }
    }

    /// After MAIL_END, mail committed while the receiver was congested waits in the store; it follows
    /// in pages once the receiver has drained (never into a congested connection).
    private func catchUpMail(_ connection: Connection) {
        guard connection.mailBehind, connection.mailPaging == .done, !connection.isClosing, !connection.budget.congested,
              connection.output.readableBytes < configuration.mailPageBytes else { return }
        if sendStoredMail(connection) { connection.mailBehind = false }
    }

    private func sendMail(_ connection: Connection, _ mail: StoredMail) {
        send(connection, .mail(seq: mail.seq, from: mail.sender, fromName: TextView(userName(mail.sender)),
                               messageID: mail.messageID, sentAtMs: mail.sentAtMs, body: ByteView(mail.body)))
        connection.mailCursor = max(connection.mailCursor, mail.seq)
        connection.mailSentCount &+= 1
        connection.mailInFlight.append((mail.seq, mail.body.count))
    }

    private func acknowledgeMail(_ connection: Connection, throughSeq requested: UInt64) {
        // A client cannot acknowledge (and so delete) mail it was never sent.
        let throughSeq = min(requested, connection.mailCursor)
        var count = 0
        var bytes = 0
        while let first = connection.mailInFlight.first, first.seq <= throughSeq {
            count += 1
            bytes += first.bytes
            connection.mailInFlight.removeFirst()
        }
        if count > 0 {
            storeBatch.append(.deleteMail(recipient: connection.userID, throughSeq: throughSeq),
                              .deleteMail(recipient: connection.userID, count: count, bytes: bytes))
        }
        if connection.mailPaging == .awaitingAck && throughSeq >= connection.mailCursor {
            sendMailPage(connection)
        } else if connection.mailBehind && throughSeq >= connection.mailCursor {
            catchUpMail(connection)
        }
    }

    // MARK: contacts

    private func contactChange(_ connection: Connection, requestID: UInt32, name: String, _ op: (UserID, String) -> WriteOp) {
        guard Store.isValidUserName(name) else {
            send(connection, .error(requestID: requestID, code: ErrorCode.invalidName.rawValue, message: "'\(name)' is not a valid user name"))
            return
        }
        storeBatch.append(op(connection.userID, name), .contact(connection: connection.id.raw, requestID: requestID))
    }

    // MARK: relaying (hot path)

    private func relay(from sender: Connection, to recipient: UInt32, messageID: UInt64, body: ByteView) {
        let bodyBytes = body.count
        let decision = core.route(from: sender.userID, to: recipient, messageID: messageID, bodyBytes: bodyBytes)
        switch decision {
        case .deliver(let targetID):
            guard let target = connections[targetID.raw], !target.isClosing else {
                // The session ended this turn; its close is pending. Store instead.
                storeMail(sender: sender, recipient: recipient, messageID: messageID, body: body, decision: core.rerouteToMailbox(
                    sender: sender.userID, recipient: recipient, messageID: messageID, bodyBytes: bodyBytes))
                return
            }
            deliver(to: target, sender: sender.userID, messageID: messageID, sentAtMs: loop.wallNow, body: body)
            stats.relayedLive += 1
        case .store:
            storeMail(sender: sender, recipient: recipient, messageID: messageID, body: body, decision: decision)
        case .dropInFlightDuplicate:
            stats.duplicatesDropped += 1
        case .acknowledgeDuplicate(let status):
            stats.duplicatesDropped += 1
            sendAck(sender, messageID: messageID, status: status)
        case .reject(let code, let message):
            send(sender, .sendError(messageID: messageID, code: code.rawValue, message: TextView(message)))
        }
    }

    /// Queues a `.store` decision's mail for the next group commit (the body's one copy off the
    /// loop's buffers), or reports a `.reject`.
    private func storeMail(sender: Connection, recipient: UInt32, messageID: UInt64, body: ByteView, decision: RouteDecision) {
        switch decision {
        case .store(let recipientID, let seq):
            let mail = StoredMail(recipient: recipientID, seq: seq, sender: sender.userID, messageID: messageID,
                                  sentAtMs: loop.wallNow, body: body.array)
            storeBatch.append(.putMail(mail), .mail(mail))
        case .reject(let code, let message):
            send(sender, .sendError(messageID: messageID, code: code.rawValue, message: TextView(message)))
        default:
            break
        }
    }

    /// Writes one DELIVER into the receiver's output (the body's only copy) and remembers it until acknowledged.
    private func deliver(to target: Connection, sender: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView) {
        let seq = target.window.nextSeq()
        let out = target.output
        body.withUnsafeBytes { raw in
            out.reserveWritable(33 + raw.count)
            let start = out.streamPosition(ofIndex: out.writerIndex)
            FrameEncoder.writeDeliver(into: out, seq: seq, from: sender, messageID: messageID, sentAtMs: sentAtMs, body: raw)
            target.window.append(PendingDelivery(seq: seq, sender: sender, messageID: messageID, frameStart: start,
                                                 frameEnd: out.streamPosition(ofIndex: out.writerIndex)))
        }
        outputChanged(target)
    }

    private func acknowledgeDeliveries(_ connection: Connection, throughSeq: UInt64) {
        connection.window.acknowledge(throughSeq: throughSeq) { delivery in
            if let senderID = core.completed(sender: delivery.sender, messageID: delivery.messageID, status: .delivered),
               let sender = connections[senderID.raw] {
                sendAck(sender, messageID: delivery.messageID, status: .delivered)
            }
        }
        updateRetention(connection)
        applyBudget(connection)
    }

    private func updateRetention(_ connection: Connection) {
        let out = connection.output
        var from = out.index(ofStreamPosition: connection.frameCursor)
        if let oldest = connection.window.oldest { from = min(from, out.index(ofStreamPosition: oldest.frameStart)) }
        out.retain(from: from)
    }

    // MARK: writing

    private func send(_ connection: Connection, _ frame: ServerFrame) {
        guard !connection.isClosing else { return }
        FrameEncoder.encode(frame, into: connection.output)
        outputChanged(connection)
    }

    private func sendAck(_ connection: Connection, messageID: UInt64, status: SendStatus) {
        guard !connection.isClosing else { return }
        FrameEncoder.writeSendAck(into: connection.output, messageID: messageID, status: status.rawValue)
        outputChanged(connection)
    }

    /// The one output path: every frame queued for a connection ends here, once.
    @inline(__always)
    private func outputChanged(_ connection: Connection) {
        if !connection.isPendingWrite {
            connection.isPendingWrite = true
            pendingWrites.append(connection)
        }
        applyBudget(connection)
    }

    /// The one place a connection's backlog is judged (see OutputBudget): over the hard cap it closes
    /// with slowConsumer, above the high-water mark reading stops, and congestion is told to the core.
    private func applyBudget(_ connection: Connection) {
        guard !connection.isClosing else { return }
        let out = connection.output
        let change = connection.budget.update(unwritten: out.readableBytes, retained: out.retainedBytes,
                                              loggedIn: connection.userID != 0, limits: budgetLimits)
        if change.isEmpty { return }
        if change.overHardCap {
            stats.slowConsumerCloses += 1
            close(connection, code: .slowConsumer,
                  "output backlog over \(configuration.outputHardCapBytes) bytes: read faster (unacknowledged messages go to your mailbox)")
            return
        }
        if let congested = change.congested {
            core.setCongested(connection.userID, congested)
            if !congested { catchUpMail(connection) }
        }
        if let reading = change.reading {
            if reading {
                resumeReading(connection)
            } else {
                stats.readPauses += 1
                updateInterest(connection)
            }
        }
    }

    /// Writes what the connection has queued, up to the per-turn cap; what is left waits for EPOLLOUT.
    private func flush(_ connection: Connection) {
        let out = connection.output
        var budget = configuration.maxWriteBytesPerTurn
        writeLoop: while out.readableBytes > 0 && budget > 0 {
            let chunk = min(out.readableBytes, budget)
            do {
                switch try connection.transport.write(from: out.view(from: out.readerIndex, to: out.readerIndex + chunk)) {
                case .processed(let written):
                    stats.writes += 1
                    out.advanceReaderRetaining(by: written)
                    budget -= written
                    if written < chunk { break writeLoop }
                case .wouldBlock:
                    break writeLoop
                }
            } catch {
                close(connection, code: nil, "write failed: \(error)")
                return
            }
        }
        if out.readableBytes == 0 {
            connection.frameCursor = out.streamPosition(ofIndex: out.writerIndex)
        } else {
            connection.frameCursor = frameBoundary(connection, atOrBefore: true)
        }
        updateRetention(connection)
        updateInterest(connection)
        if connection.budget.readingPaused || connection.budget.congested { applyBudget(connection) }
    }

    /// Walks frame lengths from `frameCursor` to the write position: the start of the frame being
    /// written (`atOrBefore`), or the end of it (the first boundary at or after the write position).
    private func frameBoundary(_ connection: Connection, atOrBefore: Bool) -> UInt64 {
        let out = connection.output
        let written = out.streamPosition(ofIndex: out.readerIndex)
        var position = connection.frameCursor
        while position < written {
            let view = out.view(from: out.index(ofStreamPosition: position), to: out.writerIndex)
            guard view.count >= 4 else { break }
            let length = UInt64(view[0]) << 24 | UInt64(view[1]) << 16 | UInt64(view[2]) << 8 | UInt64(view[3])
            let next = position + 4 + length
            if atOrBefore && next > written { break }
            position = next
        }
        return position
    }

    private func updateInterest(_ connection: Connection) {
        guard let registration = connection.registration, !connection.isClosing else { return }
        var interest: IOEvents = []
        if !connection.readingPaused || connection.transport.needsReadable { interest.insert(.readable) }
        if connection.output.readableBytes > 0 || connection.transport.needsWritable { interest.insert(.writable) }
        loop.setInterest(registration, interest)
    }

    // MARK: closing

    /// Marks a connection for closing at the end of this turn, after a last attempt to send `code`.
    private func close(_ connection: Connection, code: ErrorCode?, _ reason: String, keepUserForReroute: UserID = 0) {
        guard !connection.isClosing else { return }
        connection.closeCode = code
        connection.closeReason = reason
        logger.debug("closing", metadata: ["peer": "\(connection.peerText)", "reason": "\(reason)"])
        connection.rerouteOwner = keepUserForReroute != 0 ? keepUserForReroute : connection.userID
        connection.phase = .closing
        toClose.append(connection)
    }

    private func finalizeClose(_ connection: Connection) {
        guard connections[connection.id.raw] != nil else { return }
        authGate.cancel(connection: connection.id.raw, address: connection.peer.host)
        leavePreLogin(connection)
        let out = connection.output
        if let registration = connection.registration { loop.deregister(registration) }
        connection.registration = nil
        connections[connection.id.raw] = nil
        stats.closed += 1
        for target in core.connectionClosed(connection.id) {
            if let other = connections[target.raw] { send(other, .presence(userID: connection.userID, online: false)) }
        }
        // Live deliveries the receiver never acknowledged move to its mailbox; their frames are
        // still in the retained output bytes.
        let owner = connection.rerouteOwner
        let written = out.streamPosition(ofIndex: out.readerIndex)
        var firstUnwrittenDelivery: UInt64?
        connection.window.drain { delivery in
            if delivery.frameStart >= written && firstUnwrittenDelivery == nil { firstUnwrittenDelivery = delivery.frameStart }
            let frameBytes = out.view(from: out.index(ofStreamPosition: delivery.frameStart),
                                      to: out.index(ofStreamPosition: delivery.frameEnd))
            guard case .frame(let (type, body), _) = FrameDecoder.split(frameBytes, maxFrameBytes: Int.max),
                  case .deliver(_, let from, let messageID, let sentAtMs, let payload)? = try? FrameDecoder.serverFrame(type: type, body: body)
            else {
                logger.error("retained delivery frame unreadable", metadata: ["conn": "\(connection.id)"])
                return
            }
            let decision = core.rerouteToMailbox(sender: from, recipient: owner, messageID: messageID, bodyBytes: payload.count)
            switch decision {
            case .store(let recipient, let seq):
                let mail = StoredMail(recipient: recipient, seq: seq, sender: from, messageID: messageID, sentAtMs: sentAtMs,
                                      body: payload.array)
                storeBatch.append(.putMail(mail), .mail(mail))
            case .reject(let code, let message):
                if let senderID = core.failed(sender: from, messageID: messageID), let sender = connections[senderID.raw] {
                    send(sender, .sendError(messageID: messageID, code: code.rawValue, message: TextView(message)))
                }
            default:
                break
            }
        }
        connection.input.clear()
        connection.input.releaseIfEmpty()
        // The peer's last bytes: what was queued before its first unwritten DELIVER (those went to the
        // mailbox above), at most 64 KiB of it; for a slow consumer only the rest of the frame being
        // written. Then the ERROR. A cut is always at a frame boundary.
        let partialEnd = frameBoundary(connection, atOrBefore: false)
        var cut = firstUnwrittenDelivery ?? out.streamPosition(ofIndex: out.writerIndex)
        if connection.closeCode == .slowConsumer || cut - written > 64 << 10 { cut = partialEnd }
        out.truncate(toIndex: out.index(ofStreamPosition: max(cut, partialEnd)))
        out.retain(from: out.readerIndex)
        if let code = connection.closeCode {
            FrameEncoder.encode(ServerFrame.error(requestID: 0, code: code.rawValue, message: TextView(connection.closeReason)),
                                into: out)
        }
        if out.readableBytes > 0, connection.closeCode != nil, lingering.count < 10_000,
           let lingerer = startLinger(connection) {
            lingering[connection.id.raw] = lingerer
        } else {
            connection.transport.close()
            out.clear()
            out.releaseIfEmpty()
        }
    }

    // MARK: lingering close

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
        let lingerer = Lingerer(id: connection.id.raw, transport: connection.transport, output: connection.output,
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

    // MARK: end of turn

    private func endOfTurn() {
        if !bufferedReads.isEmpty {
            swap(&bufferedReads, &spareConnections)
            for connection in spareConnections where !connection.isClosing && !connection.readingPaused {
                readAndProcess(connection)
            }
            spareConnections.removeAll(keepingCapacity: true)
        }
        while !toClose.isEmpty {
            swap(&toClose, &spareConnections)
            for connection in spareConnections { finalizeClose(connection) }
            spareConnections.removeAll(keepingCapacity: true)
        }
        if !pendingWrites.isEmpty {
            swap(&pendingWrites, &spareConnections)
            for connection in spareConnections {
                connection.isPendingWrite = false
                if !connection.isClosing { flush(connection) }
            }
            spareConnections.removeAll(keepingCapacity: true)
        }
        submitStoreBatch()
        if shuttingDown && toClose.isEmpty && storeBatch.isEmpty && !storeInFlight && connections.isEmpty && lingering.isEmpty {
            loop.stop()
        }
    }

    /// Group commit: everything queued since the last commit goes in one transaction; while one is
    /// in flight the next batch keeps growing.
    private func submitStoreBatch() {
        guard !storeInFlight, !storeBatch.isEmpty else { return }
        storeInFlight = true
        stats.storeBatches += 1
        stats.storeOps += UInt64(storeBatch.ops.count)
        workers.storeJobs.push(storeBatch)
        storeBatch = StoreBatch()
    }

    private func handleStoreResults(_ results: [StoreBatchResult]) {
        for result in results {
            storeInFlight = false
            switch result.results {
            case .success(let writeResults):
                for (context, outcome) in zip(result.batch.contexts, writeResults) { complete(context, outcome) }
            case .failure(let error):
                logger.error("store batch failed", metadata: ["error": "\(error)", "ops": "\(result.batch.ops.count)"])
                for context in result.batch.contexts { fail(context, error.description) }
            }
        }
        submitStoreBatch()
    }

    private func complete(_ context: StoreContext, _ outcome: WriteResult) {
        switch context {
        case .createAccount(let id, let requestID):
            guard let connection = connections[id], !connection.isClosing else { return }
            switch outcome {
            case .accountCreated:
                send(connection, .ok(requestID: requestID))
            case .nameTaken:
                send(connection, .error(requestID: requestID, code: ErrorCode.nameTaken.rawValue, message: "that name is taken"))
            case .invalidRequest(let why):
                send(connection, .error(requestID: requestID, code: ErrorCode.invalidName.rawValue, message: TextView(why)))
            default:
                send(connection, .error(requestID: requestID, code: ErrorCode.internalError.rawValue, message: "unexpected store result"))
            }
            unpark(connection, phase: .awaitingAuth)
        case .contact(let id, let requestID):
            let connection = connections[id].flatMap { $0.isClosing ? nil : $0 }
            switch outcome {
            case .contactChanged(let ownerView, let otherView, let ownerID, let otherID):
                for push in core.applyContactChange(owner: ownerID, other: otherID, ownerView: ownerView, otherView: otherView) {
                    if let target = connections[push.connection.raw] { send(target, .contactUpdate(contact: push.info)) }
                }
                if let connection { send(connection, .ok(requestID: requestID)) }
            case .alreadyInThatState:
                if let connection { send(connection, .ok(requestID: requestID)) }
            case .noSuchUser:
                if let connection { send(connection, .error(requestID: requestID, code: ErrorCode.noSuchUser.rawValue, message: "no such user")) }
            case .invalidRequest(let why):
                if let connection { send(connection, .error(requestID: requestID, code: ErrorCode.invalidRequest.rawValue, message: TextView(why))) }
            default:
                if let connection { send(connection, .error(requestID: requestID, code: ErrorCode.internalError.rawValue, message: "unexpected store result")) }
            }
        case .mail(let mail):
            switch outcome {
            case .mailStored:
                stats.storedOffline += 1
                ackStored(mail)
                // The recipient may have come online meanwhile: push it once its login backlog is done.
                // Never into a congested receiver: then it follows from the store once drained.
                if let recipientID = core.connection(of: mail.recipient), let recipient = connections[recipientID.raw],
                   !recipient.isClosing, recipient.mailPaging == .done {
                    if recipient.mailBehind || recipient.budget.congested
                        || recipient.output.readableBytes >= configuration.mailPageBytes {
                        recipient.mailBehind = true
                    } else {
                        sendMail(recipient, mail)
                    }
                }
            case .duplicateMail:
                // Stored before (e.g. acknowledged just before a crash): give the reserved slot back, ack again.
                core.mailRemoved(recipient: mail.recipient, count: 1, bytes: mail.body.count)
                stats.duplicatesDropped += 1
                ackStored(mail)
            default:
                core.mailRemoved(recipient: mail.recipient, count: 1, bytes: mail.body.count)
                failMail(mail, "unexpected store result")
            }
        case .deleteMail(let recipient, let count, let bytes):
            core.mailRemoved(recipient: recipient, count: count, bytes: bytes)
        case .prune:
            break
        }
    }

    private func ackStored(_ mail: StoredMail) {
        if let senderID = core.completed(sender: mail.sender, messageID: mail.messageID, status: .storedOffline),
           let sender = connections[senderID.raw] {
            sendAck(sender, messageID: mail.messageID, status: .storedOffline)
        }
    }

    private func failMail(_ mail: StoredMail, _ why: String) {
        if let senderID = core.failed(sender: mail.sender, messageID: mail.messageID), let sender = connections[senderID.raw] {
            send(sender, .sendError(messageID: mail.messageID, code: ErrorCode.internalError.rawValue,
                                    message: TextView("could not store the message: \(why)")))
        }
    }

    private func fail(_ context: StoreContext, _ why: String) {
        switch context {
        case .createAccount(let id, let requestID):
            if let connection = connections[id], !connection.isClosing {
                send(connection, .error(requestID: requestID, code: ErrorCode.internalError.rawValue, message: "could not create the account"))
                unpark(connection, phase: .awaitingAuth)
            }
        case .contact(let id, let requestID):
            if let connection = connections[id], !connection.isClosing {
                send(connection, .error(requestID: requestID, code: ErrorCode.internalError.rawValue, message: "could not change contacts"))
            }
        case .mail(let mail):
            core.mailRemoved(recipient: mail.recipient, count: 1, bytes: mail.body.count)
            failMail(mail, why)
        case .deleteMail, .prune:
            break // the mail stays; it is delivered again at the next login
        }
    }

    // MARK: timers

    private func scheduleTimer(_ connection: Connection, at deadline: UInt64) {
        if connection.isClosing || deadline == .max { return }
        if connection.timerDeadline != 0 && connection.timerDeadline <= deadline { return }
        connection.timerDeadline = deadline
        loop.schedule(at: deadline, token: connection.id.raw)
    }

    private func nextDeadline(_ connection: Connection) -> UInt64 {
        let limits = configuration.limits
        switch connection.phase {
        case .awaitingHello, .awaitingAuth, .authenticating:
            let login = connection.createdAt + UInt64(limits.loginTimeoutMs)
            if let tls = connection.transport as? TLSTransport, !tls.isHandshakeComplete {
                return min(login, connection.createdAt + configuration.handshakeTimeoutMs)
            }
            return login
        case .active:
            let idle = connection.lastActivity + UInt64(limits.idleTimeoutMs)
            if connection.pingOutstanding { return idle }
            return min(idle, connection.lastActivity + UInt64(limits.pingIntervalMs))
        case .closing:
            return .max
        }
    }

    private func timerFired(_ token: UInt64) {
        switch token {
        case Self.maintenanceToken:
            maintenance()
            return
        case Self.authWakeToken:
            authWakeAt = .max
            pumpAuth()
            return
        case Self.acceptResumeToken:
            resumeAccepting()
            return
        default:
            break
        }
        if let lingerer = lingering[token], loop.now >= lingerer.deadline {
            endLinger(lingerer)
            return
        }
        guard let connection = connections[token], !connection.isClosing else { return }
        let now = loop.now
        // A superseded heap entry: the live one (at timerDeadline) is still queued.
        if connection.timerDeadline > now { return }
        connection.timerDeadline = 0
        let deadline = nextDeadline(connection)
        if deadline > now {
            scheduleTimer(connection, at: deadline)
            return
        }
        switch connection.phase {
        case .awaitingHello, .awaitingAuth, .authenticating:
            if let tls = connection.transport as? TLSTransport, !tls.isHandshakeComplete {
                logger.debug("TLS handshake timeout", metadata: ["peer": "\(connection.peerText)"])
                close(connection, code: nil, "TLS handshake not completed within \(configuration.handshakeTimeoutMs) ms")
                return
            }
            close(connection, code: .loginTimeout, "login not completed within \(configuration.limits.loginTimeoutMs) ms")
        case .active:
            if now >= connection.lastActivity + UInt64(configuration.limits.idleTimeoutMs) {
                close(connection, code: .idleTimeout, "no traffic for \(configuration.limits.idleTimeoutMs) ms")
            } else {
                connection.pingOutstanding = true
                send(connection, .ping(token: now))
                scheduleTimer(connection, at: nextDeadline(connection))
            }
        case .closing:
            break
        }
    }

    private func maintenance() {
        let now = loop.now
        authGate.sweep(now: now)
        for (key, entry) in rateLimitedLogs where now - entry.last > 60_000 { rateLimitedLogs[key] = nil }
        core.pruneRecentIDs()
        // Idle connections give their buffer memory back.
        for connection in connections.values where !connection.isClosing && connection.window.isEmpty {
            connection.output.releaseIfEmpty()
            connection.input.releaseIfEmpty()
        }
        if now - lastDedupePrune > 3_600_000 || lastDedupePrune == 0 {
            lastDedupePrune = now
            let cutoff = Clock.wallMs() &- configuration.dedupeRetentionMs
            if cutoff < Clock.wallMs() { storeBatch.append(.pruneDedupe(olderThanMs: cutoff), .prune) }
        }
        loop.schedule(at: now + Self.maintenanceIntervalMs, token: Self.maintenanceToken)
    }
}
