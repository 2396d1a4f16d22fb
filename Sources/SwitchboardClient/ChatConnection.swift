// A blocking client connection for scripts, tests and the terminal client: connect, HELLO/WELCOME,
// then frames in and out with explicit timeouts (poll). Frames handed out are owned copies, valid
// after the read buffer moves on. Host names are resolved here, off any server loop.

/// SwitchboardClient owns the client side of the protocol: a connection with timeouts, a session
/// that pairs requests with answers and queues pushed frames, and duplicate hiding for deliveries.
import CSwitchboard
import Glibc
import SwitchboardIO
import SwitchboardProtocol

public struct ClientError: Error, CustomStringConvertible, Sendable, Equatable {
    public var message: String
    /// The server's error code, when the server refused something.
    public var code: UInt16?
    public init(_ message: String, code: UInt16? = nil) { self.message = message; self.code = code }
    public var description: String { message }
}

public final class ChatConnection {
    public let fd: Int32
    public private(set) var welcome: Welcome
    private let input = ByteBuffer(capacity: 64 << 10)
    private let output = ByteBuffer(capacity: 4096)
    private var maxFrameIn = 16 << 20
    public private(set) var closed = false

    /// Connects to "HOST:PORT" (names resolved with getaddrinfo) and exchanges HELLO/WELCOME.
    public init(server: String, timeoutMs: Int32 = 10_000, agent: String = "switchboard-client") throws {
        let address = try ChatConnection.resolve(server)
        fd = try Socket.connectBlocking(to: address)
        welcome = Welcome(limits: ServerLimits(), serverName: "")
        do {
            try sendFrame(.hello(version: ProtocolConstants.version, agent: TextView(agent)))
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
            Sys.close(fd)
            throw error
        }
    }

    deinit { close() }

    public func close() {
        guard !closed else { return }
        closed = true
        Sys.close(fd)
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
            switch try Sys.write(fd, output.readableView) {
            case .processed(let n): output.moveReaderIndex(forwardBy: n)
            case .wouldBlock: try waitFor(events: Int16(POLLOUT), timeoutMs: 10_000)
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
            let now = Clock.monotonicMs()
            if now >= deadline && timeoutMs >= 0 { return nil }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let wait = Int32(clamping: deadline > now ? deadline - now : 0)
            let rc = poll(&pfd, 1, wait)
            if rc < 0 {
                if errno == EINTR { continue }
                throw ClientError("poll failed: errno \(errno)")
            }
            if rc == 0 { return nil }
            let region = input.writableRegion(minimum: 16 << 10)
            switch try Sys.read(fd, region) {
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
        default: return self
        }
    }
}
