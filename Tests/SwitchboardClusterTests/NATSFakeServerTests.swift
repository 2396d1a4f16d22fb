// The driver against a scripted server on the same loop (loopback TCP): what the handshake sends, server PINGs
// answered, a silent server timed out and the next one tried, -ERR during the handshake, a server without
// headers refused, protocol violations dropping the link, a malformed header block dropping only its message.
import Glibc
import NATSTestHarness
import SwitchboardCluster
import SwitchboardIO
import Testing

final class FakeConnection: EventHandler {
    let fd: Int32
    var received: [UInt8] = []
    var registration: RegistrationID?
    var closed = false
    var onData: ((FakeConnection) -> Void)?

    init(fd: Int32) { self.fd = fd }

    var text: String { String(decoding: received, as: UTF8.self) }

    func send(_ s: String) {
        let bytes = Array(s.utf8)
        var offset = 0
        while offset < bytes.count, !closed {
            let r = bytes[offset...].withUnsafeBytes { try? Sys.write(fd, $0) }
            if case .processed(let n)? = r { offset += n } else { break }
        }
    }

    func handle(events: IOEvents, loop: EventLoop) {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let r = chunk.withUnsafeMutableBytes { try? Sys.read(fd, $0) }
        switch r {
        case .processed(let n)? where n > 0:
            received += chunk[0..<n]
            onData?(self)
        case .wouldBlock?: break
        default: close(loop)
        }
    }

    func close(_ loop: EventLoop) {
        guard !closed else { return }
        closed = true
        if let registration { loop.deregister(registration) }
        Sys.close(fd)
    }
}

final class FakeNATSServer: EventHandler {
    let fd: Int32
    let port: Int
    var connections: [FakeConnection] = []
    var onAccept: (FakeConnection) -> Void = { _ in }
    private var registration: RegistrationID?
    private let loop: EventLoop

    init(loop: EventLoop, port: Int) throws {
        self.loop = loop
        self.port = port
        fd = try Socket.listen(on: SocketAddress(parsing: "127.0.0.1:\(port)"))
        registration = try loop.register(fd: fd, interest: .readable, handler: self)
    }

    func handle(events: IOEvents, loop: EventLoop) {
        while let (cfd, _) = (try? Socket.accept(fd)) ?? nil {
            let c = FakeConnection(fd: cfd)
            c.registration = try? loop.register(fd: cfd, interest: .readable, handler: c)
            connections.append(c)
            onAccept(c)
        }
    }

    func stop() {
        for c in connections { c.close(loop) }
        if let registration { loop.deregister(registration) }
        Sys.close(fd)
    }

    static let info = "INFO {\"server_id\":\"FAKE\",\"server_name\":\"fake\",\"version\":\"2.9.10\",\"headers\":true,\"max_payload\":1048576}\r\n"

    /// A well-behaved server: INFO at once, PONG to every PING.
    func behaveNormally() {
        onAccept = { c in
            c.send(Self.info)
            var answered = 0
            c.onData = { c in
                let pings = c.text.components("PING\r\n")
                while answered < pings { c.send("PONG\r\n"); answered += 1 }
            }
        }
    }
}

extension String {
    /// Occurrences of `s`.
    func components(_ s: String) -> Int {
        var count = 0
        var rest = self[...]
        while let r = rest.firstRange(of: s) { count += 1; rest = rest[r.upperBound...] }
        return count
    }
}

@Suite(.serialized) struct NATSFakeServerTests {
    @Test(.timeLimit(.minutes(1)))
    func handshakeAndServerPing() throws {
        let t = try TestLoop()
        let fake = try FakeNATSServer(loop: t.loop, port: 25301)
        defer { t.closeAll(); fake.stop() }
        fake.behaveNormally()
        var got: [NATSMessage] = []
        let c = try t.connect("nats://127.0.0.1:25301", name: "node-a")
        try c.subscribe("early.>") { got.append($0) }
        #expect(try t.run { c.isConnected })
        #expect(c.currentServerName == "fake")
        let hello = fake.connections[0].text
        let connect = hello.split(separator: "\r\n").first.map(String.init) ?? ""
        #expect(connect.hasPrefix("CONNECT {"))
        let json = try JSON.parse(String(connect.dropFirst("CONNECT ".count)))
        #expect(json["headers"]?.boolValue == true && json["no_responders"]?.boolValue == true)
        #expect(json["verbose"]?.boolValue == false && json["name"]?.stringValue == "node-a")
        #expect(hello.hasSuffix("\r\nSUB early.> 1\r\nPING\r\n"), "CONNECT, the replayed SUB, PING: \(hello.debugDescription)")
        // The server's PING is answered.
        fake.connections[0].send("PING\r\n")
        #expect(try t.run { fake.connections[0].text.hasSuffix("PONG\r\n") })
        // A message with headers and a reply subject reaches the handler.
        fake.connections[0].send("HMSG early.x 1 inbox.9 18 21\r\nNATS/1.0\r\nA: b\r\n\r\nxyz\r\n")
        #expect(try t.run { got.count == 1 })
        #expect(got.first?.headers?["A"] == "b" && got.first?.payload == Array("xyz".utf8) && got.first?.replyTo == "inbox.9")
        // An unsubscribed sid's message, still in flight, is dropped quietly.
        c.unsubscribe(1)
        fake.connections[0].send("MSG early.y 1 1\r\nq\r\n")
        try t.run(timeoutMs: 100) { false }
        #expect(got.count == 1 && c.isConnected)
    }

    @Test(.timeLimit(.minutes(1)))
    func silentServerTimesOutAndTheNextIsTried() throws {
        let t = try TestLoop()
        let silent = try FakeNATSServer(loop: t.loop, port: 25302)
        let good = try FakeNATSServer(loop: t.loop, port: 25303)
        defer { t.closeAll(); silent.stop(); good.stop() }
        good.behaveNormally()
        let started = Clock.monotonicMs()
        let c = try t.connect("nats://127.0.0.1:25302,nats://127.0.0.1:25303", name: "n") { $0.connectTimeoutMs = 200 }
        #expect(try t.run { c.isConnected })
        let elapsed = Clock.monotonicMs() - started
        #expect(c.currentServer.port == 25303)
        #expect(elapsed >= 190 && elapsed < 1_500, "\(elapsed) ms")
        #expect(t.events.contains { $0.contains("connectFailed(127.0.0.1:25302") && $0.contains("within 200 ms") })
    }

    @Test(.timeLimit(.minutes(1)))
    func refusedHandshakes() throws {
        let t = try TestLoop()
        let fake = try FakeNATSServer(loop: t.loop, port: 25304)
        defer { t.closeAll(); fake.stop() }
        var accepted = 0
        fake.onAccept = { c in
            accepted += 1
            if accepted == 1 {
                c.send("INFO {\"headers\":false}\r\n")
            } else {
                c.send(FakeNATSServer.info)
                c.onData = { c in if c.text.contains("PING\r\n") { c.send("-ERR 'Authorization Violation'\r\n") } }
            }
        }
        let c = try t.connect("nats://127.0.0.1:25304", name: "n") { $0.reconnectBaseDelayMs = 10 }
        #expect(try t.run { accepted >= 3 })
        #expect(!c.isConnected)
        #expect(t.events.contains { $0.contains("does not support headers") })
        #expect(t.events.contains { $0.contains("serverError(\"Authorization Violation\")") })
        #expect(t.events.contains { $0.contains("connectFailed") && $0.contains("server refused: Authorization Violation") })
    }

    @Test(.timeLimit(.minutes(1)), arguments: [
        "MSG a 1 99999999999\r\n", "BOGUS\r\n", "MSG a 1 3\r\nabcde\r\n", String(repeating: "x", count: 20_000),
    ])
    func violationDropsTheLinkAndReconnects(bytes: String) throws {
        let t = try TestLoop()
        let fake = try FakeNATSServer(loop: t.loop, port: 25305)
        defer { t.closeAll(); fake.stop() }
        fake.behaveNormally()
        let c = try t.connect("nats://127.0.0.1:25305", name: "n")
        try c.subscribe("a") { _ in }
        #expect(try t.run { c.isConnected })
        fake.connections[0].send(bytes)
        #expect(try t.run { t.events.contains { $0.contains("disconnected") && $0.contains("protocol violation") } })
        #expect(try t.run { c.isConnected && fake.connections.count == 2 })
        #expect(fake.connections[1].text.contains("SUB a 1\r\n"), "resubscribed on the new link")
    }

    @Test(.timeLimit(.minutes(1)))
    func malformedHeaderBlockDropsOnlyThatMessage() throws {
        let t = try TestLoop()
        let fake = try FakeNATSServer(loop: t.loop, port: 25306)
        defer { t.closeAll(); fake.stop() }
        fake.behaveNormally()
        var got: [String] = []
        let c = try t.connect("nats://127.0.0.1:25306", name: "n")
        try c.subscribe("a") { got.append(String(decoding: $0.payload, as: UTF8.self)) }
        #expect(try t.run { c.isConnected })
        fake.connections[0].send("HMSG a 1 16 16\r\nHTTP/1.1 200\r\n\r\n\r\nMSG a 1 2\r\nok\r\n")
        #expect(try t.run { got == ["ok"] })
        #expect(c.isConnected)
        #expect(t.events.contains { $0.contains("malformed header block") })
    }
}
