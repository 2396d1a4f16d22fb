// The NATS client driver on the project's epoll loop: one nonblocking TCP link at a time to one server of the
// list, the INFO/CONNECT/PING handshake, keepalive, reconnect with back-off, subscription replay, and the
// outbound queue. Request/reply lives in NATSConnection+Requests.swift.
// Invariants:
// - Never blocks: nonblocking connect (completion seen as EPOLLOUT), no DNS (numeric addresses only), reads
//   and writes until EAGAIN, deadlines through the loop's timer heap.
// - Byte order on a new link: handshake buffer (CONNECT, one SUB per live subscription, PING) first; the
//   outbound queue only after the handshake's PONG, so nothing published while disconnected reaches a server
//   before the subscriptions are back and CONNECT was accepted.
// - The outbound queue holds at most `maxOutboundBytes` of PUB/HPUB/PING (checked before writing a command).
//   While disconnected it only grows by whole commands, so it is replayed intact after reconnect; when a live
//   link breaks, its unwritten remainder may start mid-command and is dropped (counted in statistics), and
//   every request in flight fails with `.connectionLost` at once (its reply could no longer arrive).
// - Writes are batched per loop turn: a command only sets EPOLLOUT interest; the next turn writes everything
//   queued in one send (or `flush()` writes at once).
import CSwitchboard
import Glibc
import SwitchboardIO

public final class NATSConnection: EventHandler {
    enum State: Equatable { case idle, connecting, awaitingInfo, awaitingPong, connected, closed }

    struct Subscription {
        let subject: String
        let queue: String?
        let handler: (NATSMessage) -> Void
    }

    enum PongWaiter { case handshake, keepalive, flush((Bool) -> Void) }

    /// The current TCP link (if any).
    struct Link {
        var fd: Int32 = -1
        var registration: RegistrationID?
        var serverIndex = 0
        /// Counts links, so a callback can tell that the link it ran on is gone.
        var generation: UInt64 = 0
        var deadline: UInt64 = 0
        var pingsOutstanding = 0
        var serverName = ""
        /// max_payload announced in INFO.
        var maxPayload = 1024 * 1024
    }

    public let configuration: NATSConfiguration
    let loop: EventLoop
    var state: State = .idle
    var link = Link()
    private var backoff: NATSReconnectBackoff
    private let input = ByteBuffer(capacity: 16 * 1024)
    private var parser: NATSParser
    let handshake = ByteBuffer()
    let out = ByteBuffer()
    var subscriptions: [UInt64: Subscription] = [:]
    var nextSid: UInt64 = 1
    var pongWaiters: [PongWaiter] = []
    var requests = RequestTable()
    public internal(set) var statistics = NATSStatistics()
    /// Connection events for the owner's log and metrics.
    public var onEvent: ((NATSEvent) -> Void)?

    var connectToken: UInt64 { configuration.timerTokenBase }
    var reconnectToken: UInt64 { configuration.timerTokenBase + 1 }
    var pingToken: UInt64 { configuration.timerTokenBase + 2 }
    var requestToken: UInt64 { configuration.timerTokenBase + 3 }

    public init(loop: EventLoop, configuration: NATSConfiguration) {
        precondition(!configuration.servers.isEmpty, "NATSConnection needs at least one server")
        self.loop = loop
        self.configuration = configuration
        backoff = NATSReconnectBackoff(configuration)
        parser = NATSParser(limits: configuration.limits)
        var rng = SplitMix64(seed: configuration.seed ^ 0x1B0C)
        requests.inboxPrefix = "_INBOX." + String(rng.next(), radix: 36) + String(rng.next() & 0xFFFF, radix: 36) + "."
    }

    /// Starts connecting to the first server (then the others, round-robin, for ever until `close()`).
    public func start() {
        guard state == .idle, link.registration == nil else { return }
        link.serverIndex = 0
        connectNow()
    }

    public var isConnected: Bool { state == .connected }
    /// The largest payload (headers included) a publish may carry: the current server's max_payload (from its
    /// INFO; 1 MiB until one was seen) within the configured limit.
    public var maxPayload: Int { min(link.maxPayload, configuration.limits.maxPayload) }
    /// The server of the current link (meaningful while connected).
    public var currentServer: SocketAddress { configuration.servers[link.serverIndex] }
    public var currentServerName: String { link.serverName }
    /// Bytes waiting to be written (handshake excluded).
    public var pendingBytes: Int { out.readableBytes }

    /// Closes for good: fails what is in flight, stops reconnecting.
    public func close() {
        guard state != .closed else { return }
        dropLink()
        state = .closed
        out.clear()
        failAllInFlight(.closed)
        onEvent?(.closed)
    }

    /// Routes a loop timer token; returns false when it is not this connection's.
    @discardableResult
    public func handleTimer(_ token: UInt64) -> Bool {
        guard token >= configuration.timerTokenBase, token <= configuration.timerTokenBase + 3 else { return false }
        let now = loop.now
        switch token - configuration.timerTokenBase {
        case 0:
            if state == .connecting || state == .awaitingInfo || state == .awaitingPong, now >= link.deadline {
                failAttempt("no connection and handshake within \(configuration.connectTimeoutMs) ms")
            }
        case 1:
            if state == .idle, link.registration == nil, now >= link.deadline { connectNow() }
        case 2:
            if state == .connected, now >= link.deadline { keepalive() }
        default:
            expireRequests(now: now)
        }
        return true
    }

    // MARK: - Link life cycle

    private func connectNow() {
        let server = configuration.servers[link.serverIndex]
        link.generation += 1
        link.pingsOutstanding = 0
        link.deadline = loop.now + configuration.connectTimeoutMs
        do {
            let fd = try Socket.connectNonBlocking(to: server)
            link.fd = fd
            link.registration = try loop.register(fd: fd, interest: .writable, handler: self)
            state = .connecting
            loop.schedule(at: link.deadline, token: connectToken)
        } catch {
            if link.fd >= 0 { Sys.close(link.fd); link.fd = -1 }
            state = .connecting
            failAttempt("\(error)")
        }
    }

    public func handle(events: IOEvents, loop: EventLoop) {
        let generation = link.generation
        if state == .connecting {
            let code = Socket.pendingError(link.fd)
            if code != 0 { failAttempt(String(cString: strerror(code))); return }
            guard events.contains(.writable) else {
                if !events.isDisjoint(with: [.error, .hangup]) { failAttempt("connection refused or reset") }
                return
            }
            state = .awaitingInfo
            if let id = link.registration { loop.setInterest(id, .readable) }
            return
        }
        if !events.isDisjoint(with: [.readable, .error, .hangup, .readHangup]) {
            readAvailable()
            guard link.generation == generation, state != .closed, state != .idle else { return }
        }
        if events.contains(.writable) { writeQueued() }
    }

    private func readAvailable() {
        let generation = link.generation
        for _ in 0..<16 {
            let region = input.writableRegion(minimum: 16 * 1024)
            let result: IOResult
            do {
                result = try Sys.read(link.fd, region)
            } catch {
                linkBroke("read: \(error)")
                return
            }
            switch result {
            case .wouldBlock: return
            case .processed(0):
                linkBroke("server closed the connection")
                return
            case .processed(let n):
                input.didWrite(n)
                statistics.bytesIn += UInt64(n)
                processInput()
                guard link.generation == generation, state != .closed, state != .idle else { return }
                if n < region.count { return }
            }
        }
    }

    private func processInput() {
        let generation = link.generation
        while input.readableBytes > 0 {
            let view = input.readableView
            switch parser.next(view) {
            case .needMore:
                return
            case .violation(let reason):
                linkBroke("protocol violation from the server: \(reason)")
                return
            case .operation(let op, let consumed):
                handleOperation(op, view)
                guard link.generation == generation, state != .closed, state != .idle else { return }
                input.moveReaderIndex(forwardBy: consumed)
            }
        }
    }

    private func handleOperation(_ op: NATSOperation, _ b: UnsafeRawBufferPointer) {
        switch op {
        case .ping:
            NATSEncoder.pong(into: state == .connected ? out : handshake)
            if state == .connected || state == .awaitingPong { wantWrite() } else { writeQueued() }
        case .pong:
            link.pingsOutstanding = 0
            guard !pongWaiters.isEmpty else { return }
            switch pongWaiters.removeFirst() {
            case .handshake: handshakeDone()
            case .keepalive: break
            case .flush(let completion): completion(true)
            }
        case .ok:
            break
        case .err(let range):
            let text = b.string(range)
            onEvent?(.serverError(text))
            if state != .connected { failAttempt("server refused: \(text)") }
        case .info(let range):
            let info = try? JSON.parse(UnsafeRawBufferPointer(rebasing: b[range.start..<range.end]))
            if let max = info?["max_payload"]?.intValue { link.maxPayload = max }
            if let name = info?["server_name"]?.stringValue { link.serverName = name }
            if state == .awaitingInfo {
                if info?["headers"]?.boolValue != true {
                    failAttempt("server does not support headers (needs nats-server 2.2 or later)")
                    return
                }
                sendHandshake()
            }
        case .message(let frame):
            deliver(frame, b)
        }
    }

    private func sendHandshake() {
        handshake.clear()
        let connect = JSON.object([
            ("verbose", .bool(false)), ("pedantic", .bool(false)), ("tls_required", .bool(false)),
            ("name", .string(configuration.name)), ("lang", .string("swift-switchboard")), ("version", .string("0.1")),
            ("protocol", .int(1)), ("echo", .bool(true)), ("headers", .bool(true)), ("no_responders", .bool(true)),
        ] + (configuration.credentials?.connectFields ?? []))
        NATSEncoder.connect(connect.serialized, into: handshake)
        for sid in subscriptions.keys.sorted() {
            let s = subscriptions[sid]!
            NATSEncoder.sub(subject: s.subject, queue: s.queue, sid: sid, into: handshake)
        }
        NATSEncoder.ping(into: handshake)
        pongWaiters = [.handshake]
        state = .awaitingPong
        wantWrite()
    }

    private func handshakeDone() {
        state = .connected
        backoff.reset()
        statistics.connects += 1
        onEvent?(.connected(currentServer, serverName: link.serverName))
        link.deadline = loop.now + configuration.pingIntervalMs
        loop.schedule(at: link.deadline, token: pingToken)
        if !out.isEmpty { wantWrite() }
    }

    private func keepalive() {
        if link.pingsOutstanding >= configuration.maxPingsOutstanding {
            linkBroke("stale connection: \(link.pingsOutstanding) PINGs unanswered for \(configuration.pingIntervalMs) ms each")
            return
        }
        link.pingsOutstanding += 1
        NATSEncoder.ping(into: out)  // not counted against the bound: keepalive must never fail
        pongWaiters.append(.keepalive)
        wantWrite()
        link.deadline = loop.now + configuration.pingIntervalMs
        loop.schedule(at: link.deadline, token: pingToken)
    }

    func writeQueued() {
        guard link.fd >= 0 else { return }
        let generation = link.generation
        for buffer in [handshake, out] {
            if buffer === out && state != .connected { break }
            while buffer.readableBytes > 0 {
                do {
                    switch try Sys.write(link.fd, buffer.readableView) {
                    case .processed(let n): buffer.moveReaderIndex(forwardBy: n)
                    case .wouldBlock:
                        if let id = link.registration { loop.setInterest(id, [.readable, .writable]) }
                        return
                    }
                } catch {
                    linkBroke("write: \(error)")
                    return
                }
            }
        }
        if link.generation == generation, let id = link.registration { loop.setInterest(id, .readable) }
    }

    /// A live or half-made link broke: tidy up, tell the owner, schedule the next attempt.
    private func linkBroke(_ reason: String) {
        if state == .connected {
            statistics.bytesDroppedOnDisconnect += UInt64(out.readableBytes)
            out.clear()
            dropLink()
            failAllInFlight(.connectionLost)
            onEvent?(.disconnected(currentServer, reason: reason))
            scheduleReconnect()
        } else {
            failAttempt(reason)
        }
    }

    private func failAttempt(_ reason: String) {
        guard state != .closed, state != .idle else { return }
        onEvent?(.connectFailed(currentServer, reason: reason))
        dropLink()
        // What was queued before this attempt is still whole (the queue is only written after a handshake).
        scheduleReconnect()
    }

    private func dropLink() {
        if let id = link.registration { loop.deregister(id) }
        link.registration = nil
        if link.fd >= 0 { Sys.close(link.fd) }
        link.fd = -1
        link.generation += 1
        link.serverName = ""
        handshake.clear()
        input.clear()
        parser.reset()
        let waiters = pongWaiters
        pongWaiters = []
        for case .flush(let completion) in waiters { completion(false) }
        state = .idle
    }

    private func scheduleReconnect() {
        link.serverIndex = (link.serverIndex + 1) % configuration.servers.count
        let delay = backoff.nextDelay()
        link.deadline = loop.now + delay
        onEvent?(.reconnectScheduled(attempt: backoff.attempt, server: currentServer, delayMs: delay))
        loop.schedule(at: link.deadline, token: reconnectToken)
    }

    // MARK: - Delivery

    private func deliver(_ frame: NATSMessageFrame, _ b: UnsafeRawBufferPointer) {
        statistics.messagesIn += 1
        guard let subscription = subscriptions[frame.sid] else { return }  // unsubscribed, still in flight
        var headers: NATSHeaders?
        if let h = frame.headers {
            do {
                headers = try NATSHeaders.parse(UnsafeRawBufferPointer(rebasing: b[h.start..<h.end]))
            } catch {
                onEvent?(.serverError("dropped a message on '\(b.string(frame.subject))' with a malformed header block: \(error)"))
                return
            }
        }
        let message = NATSMessage(subject: b.string(frame.subject), replyTo: frame.replyTo.count > 0 ? b.string(frame.replyTo) : nil,
                                  headers: headers, payload: b.bytes(frame.payload), sid: frame.sid)
        subscription.handler(message)
    }
}
