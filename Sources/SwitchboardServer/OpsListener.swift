// The operator-facing sockets' shared machinery (the /metrics HTTP listener and the admin Unix socket):
// a nonblocking listener on the event loop and small request/response connections with bounded input,
// a bounded number of connections and an idle deadline. Nothing here blocks: reads and writes are
// nonblocking, output that does not fit the socket waits for EPOLLOUT, and a one-second sweep (a loop
// timer, scheduled only while connections exist) closes the ones past their deadline.
// Invariants: loop thread only; a connection's input never exceeds `maxRequestBytes` (the protocol is
// told once, then the connection is closed after its answer); at most `maxConnections` are open, the
// next one is answered `refusal` and closed at once; every descriptor is closed exactly once (`close`).
import Glibc
import SwitchboardIO

final class OpsConnection: EventHandler {
    let fd: Int32
    var registration: RegistrationID?
    /// Received bytes not yet consumed by the protocol.
    var input: [UInt8] = []
    var output: [UInt8] = []
    var outputOffset = 0
    /// Close once `output` is written (HTTP: always; admin: after a fatal error).
    var closeAfterWrite = false
    /// The peer sent EOF: answer what is pending, then close.
    var peerClosed = false
    /// An answer is being prepared off the loop (admin: hash, commit); input waits until it is queued.
    var awaitingAnswer = false
    var deadline: UInt64
    /// Admin `talkers`: each session's (sent, received) at this connection's previous `talkers`.
    var talkerBaseline: [UInt64: (sent: UInt64, received: UInt64)] = [:]
    unowned let listener: OpsListener
    private(set) var isClosed = false

    init(fd: Int32, deadline: UInt64, listener: OpsListener) {
        self.fd = fd
        self.deadline = deadline
        self.listener = listener
    }

    func handle(events: IOEvents, loop: EventLoop) { listener.connectionEvent(self, events) }

    func queue(_ bytes: [UInt8]) {
        if outputOffset == output.count { output.removeAll(keepingCapacity: true); outputOffset = 0 }
        output.append(contentsOf: bytes)
    }

    func queue(_ text: String) { queue(Array(text.utf8)) }

    /// Closes the socket (idempotent); the listener forgets the connection.
    func close() {
        guard !isClosed else { return }
        isClosed = true
        listener.forget(self)
        Sys.close(fd)
    }
}

/// What an operator socket speaks: consume complete requests from `connection.input`, queue answers.
protocol OpsProtocol: AnyObject {
    /// Called after new input arrived (and again after an answer was queued, while input remains).
    func process(_ connection: OpsConnection)
    /// Input went past `maxRequestBytes`: queue a last answer (the connection closes after it).
    func requestTooLarge(_ connection: OpsConnection)
    /// The idle deadline passed: queue a last answer if the protocol has one (then it closes).
    func timedOut(_ connection: OpsConnection)
    /// Answer for a connection over `maxConnections` (written best effort, then closed).
    var refusal: [UInt8] { get }
}

final class OpsListener: EventHandler {
    let name: String
    let fd: Int32
    let loop: EventLoop
    let maxConnections: Int
    let maxRequestBytes: Int
    let idleTimeoutMs: UInt64
    let sweepToken: UInt64
    weak var proto: OpsProtocol?
    private var registration: RegistrationID?
    private(set) var connections: [ObjectIdentifier: OpsConnection] = [:] {
        didSet { countLock.withLock { countMirror = connections.count } }
    }
    /// `connections.count` for other threads (tests wait on it): the dictionary itself is the loop's.
    private let countLock = Lock()
    private var countMirror = 0
    private var sweepScheduled = false
    /// true: the deadline moves with each read (an idle timeout, admin); false: it is fixed at accept
    /// (the whole request must arrive in time, HTTP: a slow sender cannot hold a connection open).
    var deadlineMovesOnRead = false
    /// Accept filter (the admin socket checks the peer's uid); false closes the connection at once.
    var admit: (Int32) -> Bool = { _ in true }
    /// Counters for /metrics.
    private(set) var accepted: UInt64 = 0
    private(set) var refused: UInt64 = 0
    private(set) var timeouts: UInt64 = 0
    private(set) var oversized: UInt64 = 0
    private var readChunk = [UInt8](repeating: 0, count: 16 << 10)

    init(name: String, fd: Int32, loop: EventLoop, maxConnections: Int, maxRequestBytes: Int, idleTimeoutMs: UInt64,
         sweepToken: UInt64) throws {
        self.name = name
        self.fd = fd
        self.loop = loop
        self.maxConnections = maxConnections
        self.maxRequestBytes = maxRequestBytes
        self.idleTimeoutMs = idleTimeoutMs
        self.sweepToken = sweepToken
        registration = try loop.register(fd: fd, interest: .readable, handler: self)
    }

    /// Open connections; safe to read from any thread.
    var connectionCount: Int { countLock.withLock { countMirror } }

    /// Stops listening and closes every connection (shutdown).
    func close() {
        if let registration { loop.deregister(registration) }
        registration = nil
        for connection in Array(connections.values) { drop(connection) }
        Sys.close(fd)
    }

    func handle(events: IOEvents, loop: EventLoop) {
        for _ in 0..<64 {
            let fd: Int32
            do {
                guard let accepted = try UnixSocket.accept(self.fd) else { return }
                fd = accepted
            } catch {
                return  // EMFILE and the like: the client's accept retries; the relay listener logs these
            }
            guard admit(fd) else { Sys.close(fd); refused += 1; continue }
            if connections.count >= maxConnections {
                refused += 1
                if let proto { _ = proto.refusal.withUnsafeBytes { try? Sys.write(fd, $0) } }
                Sys.close(fd)
                continue
            }
            let connection = OpsConnection(fd: fd, deadline: loop.now + idleTimeoutMs, listener: self)
            guard let id = try? loop.register(fd: fd, interest: .readable, handler: connection) else {
                Sys.close(fd)
                continue
            }
            connection.registration = id
            connections[ObjectIdentifier(connection)] = connection
            accepted += 1
            if !sweepScheduled {
                sweepScheduled = true
                loop.schedule(at: loop.now + 1000, token: sweepToken)
            }
        }
    }

    func connectionEvent(_ connection: OpsConnection, _ events: IOEvents) {
        if events.contains(.readable) || events.contains(.hangup) || events.contains(.error) || events.contains(.readHangup) {
            readAvailable(connection)
        }
        guard !connection.isClosed else { return }
        flush(connection)
    }

    private func readAvailable(_ connection: OpsConnection) {
        guard !connection.peerClosed else { return }
        while true {
            let room = maxRequestBytes + 1 - connection.input.count
            if room <= 0 { break }
            let result = readChunk.withUnsafeMutableBytes { raw in
                try? Sys.read(connection.fd, UnsafeMutableRawBufferPointer(rebasing: raw[0..<min(raw.count, room)]))
            }
            switch result {
            case .processed(0)?, nil:
                connection.peerClosed = true
            case .processed(let count)?:
                connection.input.append(contentsOf: readChunk[0..<count])
                if deadlineMovesOnRead { connection.deadline = loop.now + idleTimeoutMs }
                continue
            case .wouldBlock?:
                break
            }
            break
        }
        if !connection.awaitingAnswer { proto?.process(connection) }
        if connection.input.count > maxRequestBytes && !connection.closeAfterWrite {
            oversized += 1
            connection.input.removeAll()
            proto?.requestTooLarge(connection)
            connection.closeAfterWrite = true
        }
    }

    /// Writes what is queued; closes when done and the protocol or the peer is finished.
    func flush(_ connection: OpsConnection) {
        guard !connection.isClosed else { return }
        while connection.outputOffset < connection.output.count {
            let result = connection.output.withUnsafeBytes { raw in
                try? Sys.write(connection.fd, UnsafeRawBufferPointer(rebasing: raw[connection.outputOffset...]))
            }
            switch result {
            case .processed(let count)?:
                connection.outputOffset += count
                continue
            case .wouldBlock?:
                setInterest(connection, [.readable, .writable])
                return
            case nil:
                drop(connection)
                return
            }
        }
        connection.output.removeAll(keepingCapacity: connection.output.capacity <= 64 << 10)
        connection.outputOffset = 0
        if connection.closeAfterWrite || (connection.peerClosed && !connection.awaitingAnswer) {
            drop(connection)
            return
        }
        // A peer that sent EOF is not watched for reading any more (EPOLLRDHUP is level-triggered).
        setInterest(connection, connection.peerClosed ? [] : .readable)
    }

    /// An answer prepared off the loop was queued: write it and go on with buffered requests.
    func answered(_ connection: OpsConnection) {
        guard !connection.isClosed else { return }
        connection.awaitingAnswer = false
        if !connection.input.isEmpty { proto?.process(connection) }
        flush(connection)
    }

    private func setInterest(_ connection: OpsConnection, _ interest: IOEvents) {
        if let registration = connection.registration { loop.setInterest(registration, interest) }
    }

    private func drop(_ connection: OpsConnection) {
        if let registration = connection.registration { loop.deregister(registration) }
        connection.registration = nil
        connection.close()
    }

    func forget(_ connection: OpsConnection) { connections[ObjectIdentifier(connection)] = nil }

    /// The one-second sweep: connections past their deadline get the protocol's last word and close.
    func sweep() {
        sweepScheduled = false
        let now = loop.now
        for connection in Array(connections.values) where connection.deadline <= now && !connection.awaitingAnswer {
            timeouts += 1
            proto?.timedOut(connection)
            connection.closeAfterWrite = true
            connection.input.removeAll()
            flush(connection)
        }
        if !connections.isEmpty {
            sweepScheduled = true
            loop.schedule(at: now + 1000, token: sweepToken)
        }
    }
}
