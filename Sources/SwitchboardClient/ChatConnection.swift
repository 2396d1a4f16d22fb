// A blocking client connection for scripts, tests and the terminal client: connect, optionally TLS
// (verified against a CA file or pinned on first use), HELLO/WELCOME, then frames in and out with
// explicit timeouts (poll). Frames handed out are owned copies, valid after the read buffer moves
// on. Host names are resolved here, off any server loop.
// Invariants: every byte goes through `transport` (plain or TLS); with TLS the socket is
// nonblocking and poll is consulted only when the transport holds no decrypted bytes; with TLS
// and pinning, nothing is sent before the server's key has been checked against the pin store.

/// SwitchboardClient owns the client side of the protocol: a connection with timeouts, a session
/// that pairs requests with answers and queues pushed frames, and duplicate hiding for deliveries.
import CSwitchboard
import Glibc
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardTLS

public struct ClientError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String
    /// The server's error code, when the server refused something.
    public var code: UInt16?
    public init(_ message: String, code: UInt16? = nil) { self.message = message; self.code = code }
    public var description: String { message }
}

/// How a `ChatConnection` speaks TLS.
public struct ClientTLSOptions: Sendable {
    public enum Trust: Sendable, Hashable {
        /// Verify the server's chain against the CAs in this PEM file, and its name.
        case certificateAuthority(file: String)
        /// Pin the server's public key on first contact (like ssh's known_hosts) in this file;
        /// nil means `PinStore.defaultPath()` (under XDG_CONFIG_HOME or ~/.config).
        case trustOnFirstUse(knownServersFile: String?)
    }

    public var trust: Trust
    /// The name to send as SNI and to check in the certificate; default: the host of `server`.
    public var serverName: String?
    /// A session from an earlier connection to the same server (`resumableTLSSession`), to resume.
    public var session: TLSSession?

    public init(trust: Trust, serverName: String? = nil, session: TLSSession? = nil) {
        self.trust = trust
        self.serverName = serverName
        self.session = session
    }

    public static func certificateAuthority(file: String) -> ClientTLSOptions { ClientTLSOptions(trust: .certificateAuthority(file: file)) }
    public static func trustOnFirstUse(knownServersFile: String? = nil) -> ClientTLSOptions {
        ClientTLSOptions(trust: .trustOnFirstUse(knownServersFile: knownServersFile))
    }
}

/// What the TLS handshake established, for the caller to show.
public struct ClientTLSInfo: Sendable, Equatable {
    public enum ServerKey: Sendable, Equatable {
        case verifiedByCertificateAuthority
        /// The key matched the one recorded earlier.
        case pinMatched(knownServersFile: String)
        /// First contact: the key was recorded now. Print a clear notice with the fingerprint.
        case newlyPinned(knownServersFile: String)
    }

    public let protocolVersion: String
    public let cipher: String
    public let sessionReused: Bool
    /// SHA-256 (hex) of the server certificate's SubjectPublicKeyInfo.
    public let serverPublicKeyFingerprint: String
    public let serverKey: ServerKey
    /// The entry name used in the known-servers file ("host:port").
    public let serverEntry: String
}

public final class ChatConnection {
    public let fd: Int32
    /// The "HOST:PORT" this connection was opened to, as the caller wrote it.
    public let server: String
    public private(set) var welcome: Welcome
    /// Set when the connection uses TLS.
    public let tls: ClientTLSInfo?
    private let transport: Transport
    private let input = ByteBuffer(capacity: 64 << 10)
    private let output = ByteBuffer(capacity: 4096)
    private var maxFrameIn = 16 << 20
    public private(set) var closed = false

    /// Connects to "HOST:PORT" (names resolved with getaddrinfo), runs the TLS handshake when `tls`
    /// is given (plaintext otherwise), and exchanges HELLO/WELCOME.
    /// TLS failures throw `TLSError` (e.g. kind `.pinMismatch` with both fingerprints).
    /// `protocolVersion` is what HELLO asks for (the newest by default; 1 speaks as an old client).
    public init(server: String, timeoutMs: Int32 = 10_000, agent: String = "switchboard-client",
                tls options: ClientTLSOptions? = nil, protocolVersion: UInt16 = ProtocolConstants.version,
                from source: SocketAddress? = nil) throws {
        let address = try ChatConnection.resolve(server)
        let fd = try ChatConnection.connect(to: address, from: source, timeoutMs: timeoutMs, server: server)
        if let options {
            // On failure startTLS has closed the socket.
            (transport, tls) = try ChatConnection.startTLS(fd: fd, server: server, port: address.port,
                                                          options: options, timeoutMs: timeoutMs)
        } else {
            transport = PlainTransport(fd: fd)
            tls = nil
        }
        self.fd = fd
        self.server = server
        welcome = Welcome(limits: ServerLimits(), serverName: "")
        do {
            try sendFrame(.hello(version: protocolVersion, agent: TextView(agent)))
            guard let frame = try nextFrame(timeoutMs: timeoutMs) else { throw ClientError("no WELCOME from \(server) within \(timeoutMs) ms") }
            switch frame {
            case .welcome(let w):
                welcome = w
                maxFrameIn = Int(w.limits.maxFrameBytes) + ProtocolConstants.envelopeOverhead
            case .error(_, let code, let message):
                throw ClientError("server refused the connection: \(message.string)", code: code)
            default:
                throw ClientError("expected WELCOME, got \(frame)")
            }
        } catch {
            // close() marks the connection closed, so deinit does not close the descriptor twice.
            close()
            throw error
        }
    }

    deinit { close() }

    public func close() {
        guard !closed else { return }
        closed = true
        transport.close()
    }

    /// The session to offer next time (`ClientTLSOptions.session`) for an abbreviated handshake.
    /// TLS 1.3 tickets arrive after the handshake; once WELCOME has been read they are here.
    public var resumableTLSSession: TLSSession? { (transport as? TLSClientStream)?.resumableSession }

    private static func startTLS(fd: Int32, server: String, port: UInt16, options: ClientTLSOptions,
                                 timeoutMs: Int32) throws -> (TLSClientStream, ClientTLSInfo) {
        let stream: TLSClientStream
        do {
            let host = ChatConnection.host(of: server)
            let context = try ClientTLSContexts.context(for: options.trust)
            stream = try TLSClientStream(fd: fd, context: context, serverName: options.serverName ?? host,
                                         session: options.session)
        } catch {
            Sys.close(fd)
            throw error
        }
        // From here the stream owns the descriptor.
        do {
            try stream.handshake(timeoutMs: timeoutMs)
            guard let fingerprint = stream.peerPublicKeyFingerprint else {
                throw TLSError(.handshake, "the server presented no certificate")
            }
            let entry = PinStore.serverKey(host: ChatConnection.host(of: server), port: port)
            let serverKey: ClientTLSInfo.ServerKey
            switch options.trust {
            case .certificateAuthority:
                serverKey = .verifiedByCertificateAuthority
            case .trustOnFirstUse(let file):
                let store = PinStore(path: try file ?? PinStore.defaultPath())
                switch try store.verify(server: entry, fingerprint: fingerprint) {
                case .matched: serverKey = .pinMatched(knownServersFile: store.path)
                case .recorded: serverKey = .newlyPinned(knownServersFile: store.path)
                }
            }
            let info = ClientTLSInfo(protocolVersion: stream.protocolVersion, cipher: stream.cipherName,
                                     sessionReused: stream.sessionReused, serverPublicKeyFingerprint: fingerprint,
                                     serverKey: serverKey, serverEntry: entry)
            return (stream, info)
        } catch {
            stream.close()
            throw error
        }
    }

    /// The host part of "HOST:PORT" or "[IPv6]:PORT", without brackets.
    static func host(of server: String) -> String {
        if server.hasPrefix("["), let close = server.firstIndex(of: "]") {
            return String(server[server.index(after: server.startIndex)..<close])
        }
        guard let colon = server.lastIndex(of: ":") else { return server }
        return String(server[..<colon])
    }

    /// A TCP connect that gives up after `timeoutMs` (a host that is gone drops SYNs silently, and
    /// the kernel alone would retry for about two minutes: too long before trying another server).
    /// Returns a blocking descriptor.
    static func connect(to address: SocketAddress, from source: SocketAddress?, timeoutMs: Int32, server: String) throws -> Int32 {
        let fd = try Socket.connectNonBlocking(to: address, from: source)
        do {
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let deadline = Clock.monotonicMs() + UInt64(max(0, timeoutMs))
            while true {
                let rc = poll(&pfd, 1, remainingMs(until: deadline))
                if rc > 0 { break }
                if rc < 0 && errno == EINTR { continue }
                if rc < 0 { throw ClientError("poll failed: errno \(errno)") }
                throw ClientError("no answer from \(server) within \(timeoutMs) ms (connect timed out)")
            }
            let error = Socket.pendingError(fd)
            if error != 0 { throw ClientError("connect failed: \(String(cString: strerror(error)))") }
            let flags = fcntl(fd, F_GETFL)
            guard flags >= 0, fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == 0 else { throw ClientError("fcntl failed: errno \(errno)") }
            return fd
        } catch {
            Sys.close(fd)
            throw error
        }
    }

    private static func remainingMs(until deadline: UInt64) -> Int32 {
        let now = Clock.monotonicMs()
        return deadline > now ? Int32(clamping: deadline - now) : 0
    }

    static func resolve(_ server: String) throws -> SocketAddress {
        if let numeric = try? SocketAddress(parsing: server) { return numeric }
        guard let colon = server.lastIndex(of: ":"), let port = UInt16(server[server.index(after: colon)...]) else {
            throw ClientError("server must be HOST:PORT, got '\(server)'")
        }
        let host = String(server[..<colon])
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, nil, &hints, &result)
        guard rc == 0, let first = result else { throw ClientError("cannot resolve '\(host)': \(String(cString: gai_strerror(rc)))") }
        defer { freeaddrinfo(result) }
        var storage = sockaddr_storage()
        memcpy(&storage, first.pointee.ai_addr, Int(first.pointee.ai_addrlen))
        let resolved = SocketAddress(storage: storage)
        return try SocketAddress(parsing: resolved.description.replacingPort(with: port))
    }

    /// Encodes and writes a frame completely (blocking).
    public func sendFrame(_ frame: ClientFrame) throws {
        FrameEncoder.encode(frame, into: output)
        try flush()
    }

    /// Encodes without writing; `flush()` sends everything queued in one write.
    public func queueFrame(_ frame: ClientFrame) { FrameEncoder.encode(frame, into: output) }

    public func flush() throws {
        while output.readableBytes > 0 {
            switch try transport.write(from: output.readableView) {
            case .processed(let n): output.moveReaderIndex(forwardBy: n)
            case .wouldBlock:
                // TLS may need to read before it can write (only mid-handshake); otherwise wait for room.
                try waitFor(events: Int16(transport.needsReadable ? POLLIN : POLLOUT), timeoutMs: 10_000)
            }
        }
    }

    /// Returns the next frame (an owned copy), or nil when `timeoutMs` passes without one.
    public func nextFrame(timeoutMs: Int32) throws -> ServerFrame? {
        let deadline = Clock.monotonicMs() + UInt64(max(0, timeoutMs))
        while true {
            switch FrameDecoder.decodeServer(input.readableView, maxFrameBytes: maxFrameIn) {
            case .frame(let frame, let consumed):
                let owned = frame.ownedCopy()
                input.moveReaderIndex(forwardBy: consumed)
                return owned
            case .failure(let error):
                throw ClientError("server sent a bad frame: \(error)")
            case .needMore:
                break
            }
            // Bytes OpenSSL already decrypted will never make the socket readable: read them first.
            if !transport.hasBufferedPlaintext {
                let now = Clock.monotonicMs()
                if now >= deadline && timeoutMs >= 0 { return nil }
                let events = transport.needsWritable ? Int16(POLLOUT) : Int16(POLLIN)
                var pfd = pollfd(fd: fd, events: events, revents: 0)
                let wait = Int32(clamping: deadline > now ? deadline - now : 0)
                let rc = poll(&pfd, 1, wait)
                if rc < 0 {
                    if errno == EINTR { continue }
                    throw ClientError("poll failed: errno \(errno)")
                }
                if rc == 0 { return nil }
            }
            let region = input.writableRegion(minimum: 16 << 10)
            // With TLS, readable may mean half a record or a session ticket: .wouldBlock, poll again.
            switch try transport.read(into: region) {
            case .processed(0):
                throw ClientError("the server closed the connection")
            case .processed(let n):
                input.didWrite(n)
            case .wouldBlock:
                continue
            }
        }
    }

    private func waitFor(events: Int16, timeoutMs: Int32) throws {
        var pfd = pollfd(fd: fd, events: events, revents: 0)
        let rc = poll(&pfd, 1, timeoutMs)
        if rc == 0 { throw ClientError("timed out writing to the server") }
    }
}

extension String {
    fileprivate func replacingPort(with port: UInt16) -> String {
        guard let colon = lastIndex(of: ":") else { return self }
        return String(self[..<colon]) + ":\(port)"
    }
}

extension ServerFrame {
    /// A copy whose views own their bytes.
    public func ownedCopy() -> ServerFrame {
        switch self {
        case .welcome(let w): return .welcome(Welcome(version: w.version, limits: w.limits, serverName: w.serverName.owned()))
        case .error(let r, let c, let m): return .error(requestID: r, code: c, message: m.owned())
        case .loginOK(let r, let u, let n, let a, let p): return .loginOK(requestID: r, userID: u, name: n.owned(), address: a.owned(), pendingMail: p)
        case .chatStatus(let r, let u, let o, let t): return .chatStatus(requestID: r, userID: u, online: o, text: t.owned())
        case .deliver(let s, let f, let m, let t, let b): return .deliver(seq: s, from: f, messageID: m, sentAtMs: t, body: b.owned())
        case .sendError(let m, let c, let t): return .sendError(messageID: m, code: c, message: t.owned())
        case .mail(let s, let f, let n, let m, let t, let b):
            return .mail(seq: s, from: f, fromName: n.owned(), messageID: m, sentAtMs: t, body: b.owned())
        case .sentCopy(let to, let m, let t, let b): return .sentCopy(to: to, messageID: m, sentAtMs: t, body: b.owned())
        default: return self
        }
    }
}

/// One client context per trust setting, built on first use: SSL_CTX_new and loading a CA file
/// cost far more than a handshake's setup, and a load generator opens thousands of connections.
/// A changed CA file is picked up by the next process, not by this cache.
private enum ClientTLSContexts {
    private static let lock = ClientMutex()
    nonisolated(unsafe) private static var contexts: [ClientTLSOptions.Trust: TLSContext] = [:]

    static func context(for trust: ClientTLSOptions.Trust) throws -> TLSContext {
        // The pin store's path does not change how the context verifies: one pinning context for all.
        let key: ClientTLSOptions.Trust = {
            if case .trustOnFirstUse = trust { return .trustOnFirstUse(knownServersFile: nil) }
            return trust
        }()
        return try lock.withLock {
            if let existing = contexts[key] { return existing }
            let configuration: TLSClientConfiguration
            switch key {
            case .certificateAuthority(let file):
                configuration = TLSClientConfiguration(verification: .certificateAuthority(file: file))
            case .trustOnFirstUse:
                configuration = TLSClientConfiguration(verification: .publicKeyPinning)
            }
            let context = try TLSContext(client: configuration)
            contexts[key] = context
            return context
        }
    }
}

/// A pthread mutex in its own allocation (a pthread lock must not move).
private final class ClientMutex: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}
