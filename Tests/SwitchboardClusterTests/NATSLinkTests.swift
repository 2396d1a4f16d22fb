// The driver against one real nats-server on loopback: queueing while the server is absent (and the bound on
// it), subscription replay before queued publishes, stale-link detection (server stopped with SIGSTOP), the
// payload limit from INFO, and bad calls refused with clear errors.
import Glibc
import NATSTestHarness
import SwitchboardCluster
import SwitchboardIO
import Testing

@Suite(.serialized) struct NATSLinkTests {
    @Test(.timeLimit(.minutes(1)))
    func queuesWhileAbsentWithinTheBoundThenReplaysSubscriptionsFirst() throws {
        guard natsServerPath() != nil else { try Test.cancel("nats-server is not installed (apt-get install nats-server)") }
        let server = SingleNATSServer(name: "link-queue", port: 25201)
        let t = try TestLoop()
        defer { t.closeAll(); server.stop() }
        let c = try t.connect("nats://127.0.0.1:25201", name: "q") { $0.maxOutboundBytes = 4096; $0.reconnectBaseDelayMs = 20; $0.maxReconnectDelayMs = 100 }
        var received: [String] = []
        try c.subscribe("q.>") { received.append(String(decoding: $0.payload, as: UTF8.self)) }
        // Nothing listens: attempts fail and back off; publishes queue up to the bound.
        try t.run(timeoutMs: 300) { false }
        #expect(!c.isConnected)
        #expect(t.events.contains { $0.contains("connectFailed") })
        let delays = t.events.compactMap { e -> UInt64? in
            guard let r = e.firstRange(of: "delayMs: ") else { return nil }
            return UInt64(e[r.upperBound...].prefix { $0.isNumber })
        }
        #expect(delays.count >= 2 && delays.allSatisfy { $0 <= 100 }, "back-off capped at 100 ms: \(delays)")
        var queued = 0
        var refused: NATSError?
        for i in 0..<1000 {
            do {
                try c.publish("q.m", payload: Array("m\(i)-".utf8) + [UInt8](repeating: 0x61, count: 90))
                queued += 1
            } catch {
                refused = error
                break
            }
        }
        #expect(queued > 10 && queued < 60, "4 KiB bound: \(queued) publishes of ~110 bytes queued")
        guard case .outboundBufferFull(let pending, let limit)? = refused else {
            Issue.record("expected outboundBufferFull, got \(String(describing: refused))")
            return
        }
        #expect(limit == 4096 && pending <= 4096 && c.pendingBytes == pending)
        #expect(c.statistics.publishesRefused == 1)
        // The server appears: the SUB is replayed before the queued PUBs, so echo delivers every one, in order.
        try server.start()
        #expect(try t.run(timeoutMs: 5_000) { received.count == queued })
        #expect(received == (0..<queued).map { "m\($0)-" + String(repeating: "a", count: 90) })
        #expect(c.pendingBytes == 0 && c.statistics.connects == 1)
    }

    @Test(.timeLimit(.minutes(1)))
    func staleLinkDetectedAndRecovered() throws {
        guard natsServerPath() != nil else { try Test.cancel("nats-server is not installed (apt-get install nats-server)") }
        let server = SingleNATSServer(name: "link-stale", port: 25202)
        try server.start()
        let t = try TestLoop()
        defer { t.closeAll(); server.stop() }
        let c = try t.connect("nats://127.0.0.1:25202", name: "s") {
            $0.pingIntervalMs = 150; $0.maxPingsOutstanding = 2; $0.connectTimeoutMs = 400; $0.maxReconnectDelayMs = 100
        }
        #expect(try t.run { c.isConnected })
        var got = 0
        try c.subscribe("s.x") { _ in got += 1 }
        try t.flush(c)
        // A server that stops answering (SIGSTOP: the TCP link stays up) is found stale by unanswered PINGs.
        server.signal(SIGSTOP)
        let stoppedAt = Clock.monotonicMs()
        #expect(try t.run(timeoutMs: 3_000) { t.events.contains { $0.contains("stale connection") } })
        let detection = Clock.monotonicMs() - stoppedAt
        #expect(detection < 1_500, "stale after \(detection) ms with 150 ms PINGs and 2 outstanding")
        #expect(!c.isConnected)
        server.signal(SIGCONT)
        #expect(try t.run(timeoutMs: 5_000) { c.isConnected })
        // The subscription came back with the new link.
        try c.publish("s.x", payload: [1])
        #expect(try t.run { got == 1 })
        #expect(c.statistics.connects == 2)
    }

    @Test(.timeLimit(.minutes(1)))
    func boundHoldsAgainstAServerThatStopsReading() throws {
        guard natsServerPath() != nil else { try Test.cancel("nats-server is not installed (apt-get install nats-server)") }
        let server = SingleNATSServer(name: "link-slow", port: 25204)
        try server.start()
        let t = try TestLoop()
        defer { t.closeAll(); server.stop() }
        let c = try t.connect("nats://127.0.0.1:25204", name: "slow") { $0.maxOutboundBytes = 256 * 1024; $0.pingIntervalMs = 60_000 }
        #expect(try t.run { c.isConnected })
        server.signal(SIGSTOP)
        // The kernel's socket buffers take the first few MiB; then the queue fills to its bound and refuses.
        let chunk = [UInt8](repeating: 0x5A, count: 60 * 1024)
        var accepted = 0
        var refusal: NATSError?
        while refusal == nil && accepted < 1_000 {  // 60 MiB at most
            do {
                try c.publish("slow.x", payload: chunk)
                accepted += 1
            } catch {
                refusal = error
            }
            try t.loop.runOnce(maxWaitMs: 1)
        }
        #expect(refusal == .outboundBufferFull(pending: c.pendingBytes, limit: 256 * 1024), "\(String(describing: refusal))")
        #expect(c.pendingBytes <= 256 * 1024 && c.isConnected)
        print("slow server: \(accepted) publishes of 60 KiB taken before the 256 KiB queue refused")
        server.signal(SIGCONT)
        // Once it reads again, the queue drains and publishing works.
        #expect(try t.run { c.pendingBytes == 0 })
        try c.publish("slow.x", payload: chunk)
        try t.flush(c)
    }

    @Test(.timeLimit(.minutes(1)))
    func badCallsRefusedClearly() throws {
        guard natsServerPath() != nil else { try Test.cancel("nats-server is not installed (apt-get install nats-server)") }
        let server = SingleNATSServer(name: "link-bad", port: 25203)
        try server.start()
        let t = try TestLoop()
        defer { t.closeAll(); server.stop() }
        let c = try t.connect("nats://127.0.0.1:25203", name: "b")
        #expect(try t.run { c.isConnected })
        #expect(throws: NATSError.self) { try c.publish("a b", payload: []) }
        #expect(throws: NATSError.self) { try c.publish("a.*", payload: []) }
        #expect(throws: NATSError.self) { try c.subscribe("a..b") { _ in } }
        // INFO says max_payload 1 MiB (nats-server's default): one byte more is refused before queueing.
        let big = [UInt8](repeating: 0, count: 1024 * 1024 + 1)
        #expect(throws: NATSError.payloadTooLarge(size: big.count, limit: 1024 * 1024)) { try c.publish("a", payload: big) }
        try c.publish("a", payload: Array(big.dropLast()))
        try t.flush(c)
        #expect(c.isConnected, "a max_payload message is accepted by the server")
        c.close()
        #expect(throws: NATSError.closed) { try c.publish("a", payload: []) }
        #expect(t.events.last?.hasSuffix("closed") == true)
    }
}
