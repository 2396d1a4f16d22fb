// The client against a real three-server nats-server cluster with JetStream (replicas 3) on loopback:
// pub/sub and request/reply across servers, no-responders, timeouts, a stream with three replicas, dedupe by
// Nats-Msg-Id, fetch and delete by sequence, key-value compare-and-set; and a kill -9 of the client's server
// during a burst: the client moves to another server, resubscribes, and every acknowledged publish is in the
// stream exactly once.
import Glibc
import NATSTestHarness
import SwitchboardCluster
import SwitchboardIO
import Testing

/// Starts a cluster and waits until routes are up and JetStream has a meta leader.
func readyCluster(_ name: String, basePort: Int) throws -> (NATSClusterProcess, TestLoop) {
    let cluster = try NATSClusterProcess(name: name, basePort: basePort)
    let t = try TestLoop()
    let probe = try t.connect(cluster.urls, name: "probe")
    let started = Clock.monotonicMs()
    var ready = false
    while !ready && Clock.monotonicMs() - started < 20_000 {
        try t.run(timeoutMs: 100) { false }
        guard probe.isConnected else { continue }
        let routes = (0..<3).compactMap { try? cluster.monitor($0, "/varz")["routes"]?.intValue }
        guard routes == [2, 2, 2] else { continue }
        if case .success(let m) = try t.request(probe, "$JS.API.INFO", "", timeoutMs: 500),
           case .success = JetStreamDecode.decode(m) { ready = true }
    }
    probe.close()
    guard ready else {
        let logs = (0..<3).map { cluster.log($0).suffix(1500) }.joined(separator: "\n---\n")
        cluster.stop()
        throw HarnessError(description: "cluster not ready within 20 s:\n\(logs)")
    }
    print("cluster \(name): ready after \(Clock.monotonicMs() - started) ms")
    return (cluster, t)
}

enum JetStreamDecode {
    static func decode(_ m: NATSMessage) -> Result<JSON, JetStreamError> {
        guard let json = try? JSON.parse(String(decoding: m.payload, as: UTF8.self)) else { return .failure(.invalidResponse("")) }
        if let e = json["error"] { return .failure(.api(code: e["code"]?.intValue ?? 0, errCode: e["err_code"]?.intValue ?? 0, description: "")) }
        return .success(json)
    }
}

/// Runs one callback-style call to completion.
func complete<T>(_ t: TestLoop, timeoutMs: UInt64 = 10_000, _ call: (@escaping (T) -> Void) -> Void) throws -> T {
    var result: T?
    call { result = $0 }
    try t.run(timeoutMs: timeoutMs) { result != nil }
    guard let result else { throw HarnessError(description: "call did not complete within \(timeoutMs) ms") }
    return result
}

@Suite struct NATSClusterTests {
    @Test(.timeLimit(.minutes(2)))
    func clusterFeatures() throws {
        guard natsServerPath() != nil else { try Test.cancel("nats-server is not installed (apt-get install nats-server)") }
        let (cluster, t) = try readyCluster("features", basePort: 25000)
        defer { t.closeAll(); cluster.stop(); cluster.removeFiles() }
        let c1 = try t.connect(cluster.url(0), name: "c1")
        let c2 = try t.connect(cluster.url(1), name: "c2")
        let c3 = try t.connect(cluster.url(2), name: "c3")
        #expect(try t.run { c1.isConnected && c2.isConnected && c3.isConnected })
        #expect(Set([c1.currentServerName, c2.currentServerName, c3.currentServerName]) == ["n1", "n2", "n3"])

        // Request/reply across servers: c2 answers on svc.echo.
        try c2.subscribe("svc.echo") { m in if let r = m.replyTo { try? c2.publish(r, payload: Array("echo:".utf8) + m.payload) } }
        try c2.subscribe("svc.silent") { _ in }
        try t.flush(c2)
        var answer: Result<NATSMessage, NATSRequestError> = .failure(.noResponders)
        // Interest reaches the other servers over the routes shortly after the SUB.
        for _ in 0..<50 {
            answer = try t.request(c1, "svc.echo", "hi")
            if case .failure(.noResponders) = answer { try t.run(timeoutMs: 20) { false } } else { break }
        }
        #expect((try? answer.get().payload) == Array("echo:hi".utf8))

        // Pub/sub across servers, in order.
        var got: [String] = []
        try c3.subscribe("chat.>") { got.append("\($0.subject)=\(String(decoding: $0.payload, as: UTF8.self))") }
        try c3.subscribe("chat.ready") { m in if let r = m.replyTo { try? c3.publish(r, payload: []) } }
        try t.flush(c3)
        for _ in 0..<50 {
            if case .success = try t.request(c1, "chat.ready", "") { break }
            try t.run(timeoutMs: 20) { false }
        }
        got.removeAll()
        for i in 0..<100 { try c1.publish("chat.m\(i % 3)", payload: Array(String(i).utf8)) }
        #expect(try t.run { got.count == 100 })
        #expect(got == (0..<100).map { "chat.m\($0 % 3)=\($0)" })

        // No responders is distinct and fast; a silent responder times out.
        let before = Clock.monotonicMs()
        #expect(try t.request(c1, "svc.nobody", "x", timeoutMs: 2_000).failureValue == .noResponders)
        #expect(Clock.monotonicMs() - before < 1_000)
        #expect(try t.request(c1, "svc.silent", "x", timeoutMs: 200).failureValue == .timeout)
        #expect(c1.requestsInFlight == 0)

        // A stream with three replicas; ensuring it again is a no-op.
        let js = JetStream(connection: c1)
        var config = StreamConfiguration(name: "MAIL", subjects: ["mail.>"], replicas: 3)
        config.duplicateWindowMs = 60_000
        let info = try complete(t) { js.ensureStream(config, completion: $0) }.get()
        #expect(info.replicas == 3 && info.leader != nil && info.followers.count == 2, "\(info)")
        #expect(Set([info.leader ?? "none"] + info.followers) == ["n1", "n2", "n3"])
        #expect(try complete(t) { js.ensureStream(config, completion: $0) }.get().name == "MAIL")

        // Dedupe by Nats-Msg-Id.
        let first = try complete(t) { js.publish("mail.bob", payload: Array("one".utf8), messageID: "m1", completion: $0) }.get()
        let again = try complete(t) { js.publish("mail.bob", payload: Array("one".utf8), messageID: "m1", completion: $0) }.get()
        #expect(!first.duplicate && again.duplicate && again.sequence == first.sequence && first.stream == "MAIL")
        for (i, who) in ["bob", "carol", "bob", "bob"].enumerated() {
            _ = try complete(t) { js.publish("mail.\(who)", payload: Array("n\(i)".utf8), messageID: "n\(i)", completion: $0) }.get()
        }
        #expect(try complete(t) { js.streamInfo("MAIL", completion: $0) }.get().messages == 5)
        var bob = try complete(t) { js.fetchMessages(stream: "MAIL", subject: "mail.bob", limit: 100, completion: $0) }.get()
        #expect(bob.map { String(decoding: $0.data, as: UTF8.self) } == ["one", "n0", "n2", "n3"])
        #expect(bob[0].headers?["Nats-Msg-Id"] == "m1")
        #expect(try complete(t) { js.fetchMessages(stream: "MAIL", subject: "mail.bob", limit: 2, completion: $0) }.get().count == 2)

        // Delete by sequence.
        try complete(t) { js.deleteMessage(stream: "MAIL", sequence: first.sequence, completion: $0) }.get()
        #expect(try complete(t) { js.getMessage(stream: "MAIL", sequence: first.sequence, completion: $0) }.get() == nil)
        bob = try complete(t) { js.fetchMessages(stream: "MAIL", subject: "mail.bob", limit: 100, completion: $0) }.get()
        #expect(bob.count == 3)
        let deletedTwice = try complete(t) { js.deleteMessage(stream: "MAIL", sequence: first.sequence, completion: $0) }
        if case .failure(.api) = deletedTwice {} else { Issue.record("second delete: \(deletedTwice)") }
        let last = try complete(t) { js.getLastMessage(stream: "MAIL", subject: "mail.carol", completion: $0) }.get()
        #expect(last.map { String(decoding: $0.data, as: UTF8.self) } == "n1")

        // Publish to a subject no stream holds: no responders, reported as such.
        let orphan = try complete(t) { js.publish("nostream.x", payload: [1], completion: $0) }
        #expect(orphan.failureValue == .request(.noResponders))

        // Key-value bucket with compare-and-set.
        let kv = try complete(t) { KeyValueBucket.ensure(jetStream: js, bucket: "accounts", replicas: 3, completion: $0) }.get()
        let r1 = try complete(t) { kv.create("alice", Array("v1".utf8), completion: $0) }.get()
        #expect(try complete(t) { kv.create("alice", Array("other".utf8), completion: $0) }.failureValue == .exists("alice"))
        #expect(try complete(t) { kv.get("alice", completion: $0) }.get() == KeyValueEntry(key: "alice", value: Array("v1".utf8), revision: r1))
        let r2 = try complete(t) { kv.update("alice", Array("v2".utf8), revision: r1, completion: $0) }.get()
        #expect(r2 > r1)
        // A writer that read r1 loses: the conflict is detected, the value is unchanged.
        #expect(try complete(t) { kv.update("alice", Array("stale".utf8), revision: r1, completion: $0) }.failureValue
                == .wrongRevision(key: "alice", expected: r1))
        #expect(try complete(t) { kv.get("alice", completion: $0) }.get()?.value == Array("v2".utf8))
        _ = try complete(t) { kv.delete("alice", completion: $0) }.get()
        #expect(try complete(t) { kv.get("alice", completion: $0) }.get() == nil)
        let r4 = try complete(t) { kv.create("alice", Array("v3".utf8), completion: $0) }.get()
        #expect(try complete(t) { kv.get("alice", completion: $0) }.get()?.revision == r4)
        #expect(try complete(t) { kv.get("nobody", completion: $0) }.get() == nil)
        #expect(try complete(t) { kv.put("bad key", [], completion: $0) }.failureValue == .invalidKey("bad key"))
        let concurrent = try concurrentCreates(t, kv)
        #expect(concurrent == 1, "of 10 racing creates of one key exactly one wins, got \(concurrent)")

        try churnAndCostFigures(cluster, t, c1, js)
    }

    /// Ten creates of the same key in flight at once: compare-and-set lets exactly one through.
    private func concurrentCreates(_ t: TestLoop, _ kv: KeyValueBucket) throws -> Int {
        var wins = 0, done = 0
        for i in 0..<10 {
            kv.create("race", Array("w\(i)".utf8)) { r in
                if case .success = r { wins += 1 }
                done += 1
            }
        }
        try t.run(timeoutMs: 10_000) { done == 10 }
        return wins
    }

    /// Figures for the design note (Sources/SwitchboardCluster/README.md): subscription churn of a login storm
    /// and what one per-user subscription costs each server; the JetStream round trips mail delivery pays.
    private func churnAndCostFigures(_ cluster: NATSClusterProcess, _ t: TestLoop, _ c: NATSConnection, _ js: JetStream) throws {
        let n = 5_000
        func subs(_ i: Int) -> Int { (try? cluster.monitor(i, "/varz")["subscriptions"]?.intValue) ?? -1 }
        func mem(_ i: Int) -> Int { (try? cluster.monitor(i, "/varz")["mem"]?.intValue) ?? -1 }
        // JetStream adds subscriptions of its own for a while after streams are made: start from a settled count.
        var subsBefore = (0..<3).map(subs)
        let settle = Clock.monotonicMs()
        while Clock.monotonicMs() - settle < 3_000 {
            try t.run(timeoutMs: 150) { false }
            let now = (0..<3).map(subs)
            if now == subsBefore { break }
            subsBefore = now
        }
        let memBefore = (0..<3).map(mem)
        var sids: [UInt64] = []
        let t0 = Clock.monotonicNs()
        for i in 0..<n { sids.append(try c.subscribe("sb.user.\(100_000 + i)") { _ in }) }
        try t.flush(c)
        let subMs = Double(Clock.monotonicNs() - t0) / 1e6
        // Until both remote servers know all of them (interest is propagated over the routes).
        let propagated = try t.run(timeoutMs: 10_000) { (1..<3).allSatisfy { subs($0) >= subsBefore[$0] + n - 50 } }
        let propagationMs = Double(Clock.monotonicNs() - t0) / 1e6
        let subsAfter = (0..<3).map(subs), memAfter = (0..<3).map(mem)
        let t1 = Clock.monotonicNs()
        for sid in sids { c.unsubscribe(sid) }
        try t.flush(c)
        let unsubMs = Double(Clock.monotonicNs() - t1) / 1e6
        try t.run(timeoutMs: 10_000) { (1..<3).allSatisfy { subs($0) <= subsBefore[$0] + 50 } }
        let subsEnd = (0..<3).map(subs)
        #expect(propagated, "all \(n) subscriptions visible on both remote servers")
        // Usually exact; JetStream's own subscriptions (a few dozen at most) may still come and go meanwhile.
        for i in 0..<3 {
            #expect(abs(subsAfter[i] - subsBefore[i] - n) <= 50, "server \(i): \(subsBefore) -> \(subsAfter)")
            #expect(abs(subsEnd[i] - subsBefore[i]) <= 50, "server \(i) after UNSUB: \(subsEnd) vs \(subsBefore)")
        }
        let perSub = (0..<3).map { Double(memAfter[$0] - memBefore[$0]) / Double(n) }
        print("churn: \(n) SUB + flush \(String(format2: subMs)) ms, visible on both remote servers after \(String(format2: propagationMs)) ms, "
              + "\(n) UNSUB + flush \(String(format2: unsubMs)) ms; RSS delta per subscription (bytes) n1(local) n2 n3: "
              + perSub.map { String(format2: $0) }.joined(separator: " ") + "; subscriptions \(subsBefore) -> \(subsAfter) -> \(subsEnd)")

        // JetStream costs: acked publish round trip (R3), and one get per message when reading a mailbox.
        let m = 200
        let p0 = Clock.monotonicNs()
        for i in 0..<m {
            _ = try complete(t) { js.publish("mail.dave", payload: [UInt8](repeating: 0x41, count: 200), messageID: "d\(i)", completion: $0) }.get()
        }
        let publishUs = Double(Clock.monotonicNs() - p0) / 1e3 / Double(m)
        let f0 = Clock.monotonicNs()
        let fetched = try complete(t) { js.fetchMessages(stream: "MAIL", subject: "mail.dave", limit: m, completion: $0) }.get()
        let fetchUs = Double(Clock.monotonicNs() - f0) / 1e3 / Double(m)
        #expect(fetched.count == m)
        var done = 0
        let w0 = Clock.monotonicNs()
        for i in 0..<m {
            js.publish("mail.erin", payload: [UInt8](repeating: 0x42, count: 200), messageID: "e\(i)") { r in if case .success = r { done += 1 } }
        }
        try t.run(timeoutMs: 20_000) { done == m }
        let pipelinedUs = Double(Clock.monotonicNs() - w0) / 1e3 / Double(m)
        #expect(done == m)
        // Mail stream with many recipients: 10,000 messages over 1,000 subjects, then one 10-message mailbox read.
        var loaded = 0
        let l0 = Clock.monotonicNs()
        for i in 0..<10_000 {
            js.publish("mail.r\(i % 1_000)", payload: [UInt8](repeating: 0x43, count: 200), messageID: "r\(i)") { r in
                if case .success = r { loaded += 1 }
            }
            if i % 500 == 499 { try t.run(timeoutMs: 20_000) { loaded == i + 1 } }
        }
        #expect(loaded == 10_000)
        let loadUs = Double(Clock.monotonicNs() - l0) / 1e3 / 10_000
        let g0 = Clock.monotonicNs()
        let mailbox = try complete(t) { js.fetchMessages(stream: "MAIL", subject: "mail.r777", limit: 100, completion: $0) }.get()
        let mailboxUs = Double(Clock.monotonicNs() - g0) / 1e3 / Double(max(1, mailbox.count))
        #expect(mailbox.count == 10)

        // Request/reply across servers (c1 on n1 -> svc.echo answered by c2 on n2): one at a time and 1,000 in flight.
        let q0 = Clock.monotonicNs()
        for _ in 0..<500 { _ = try t.request(c, "svc.echo", "ping").get() }
        let requestUs = Double(Clock.monotonicNs() - q0) / 1e3 / 500
        var answered = 0
        let q1 = Clock.monotonicNs()
        for _ in 0..<1_000 { try c.request("svc.echo", payload: [1], timeoutMs: 5_000) { r in if case .success = r { answered += 1 } } }
        try t.run(timeoutMs: 10_000) { answered == 1_000 }
        let requestPipelinedUs = Double(Clock.monotonicNs() - q1) / 1e3 / 1_000
        var offline = 0
        let q2 = Clock.monotonicNs()
        for i in 0..<1_000 { try c.request("sb.user.offline\(i)", payload: [1], timeoutMs: 5_000) { r in if r.failureValue == .noResponders { offline += 1 } } }
        try t.run(timeoutMs: 10_000) { offline == 1_000 }
        let noRespondersUs = Double(Clock.monotonicNs() - q2) / 1e3 / 1_000
        #expect(answered == 1_000 && offline == 1_000)
        print("requests: cross-server request/reply \(String(format2: requestUs)) us one at a time, \(String(format2: requestPipelinedUs)) us/req "
              + "with 1000 in flight; no-responders answers \(String(format2: noRespondersUs)) us/req with 1000 in flight")
        print("jetstream: R3 publish+ack one at a time \(String(format2: publishUs)) us, \(m) in flight \(String(format2: pipelinedUs)) us/msg; "
              + "mailbox read by next_by_subj \(String(format2: fetchUs)) us/msg; 10,000 msgs over 1,000 subjects at \(String(format2: loadUs)) us/msg, "
              + "then a 10-message mailbox read at \(String(format2: mailboxUs)) us/msg")
    }

    @Test(.timeLimit(.minutes(2)))
    func killedServerDuringBurst() throws {
        guard natsServerPath() != nil else { try Test.cancel("nats-server is not installed (apt-get install nats-server)") }
        let (cluster, t) = try readyCluster("kill", basePort: 25100)
        defer { t.closeAll(); cluster.stop(); cluster.removeFiles() }
        // The stream's leader runs on the server the client is connected to, so the kill also forces a new
        // stream leader (and maybe meta leader) to be elected while the burst goes on.
        let other = try t.connect(cluster.url(2), name: "other")
        #expect(try t.run { other.isConnected })
        let setup = JetStream(connection: other)
        let created = try complete(t) { setup.ensureStream(StreamConfiguration(name: "BURST", subjects: ["burst.>"], replicas: 3), completion: $0) }.get()
        let leader = try #require(created.leader, "an R3 stream has a leader")
        let victim = try #require(Int(leader.dropFirst())) - 1
        let order = (0..<3).map { (victim + $0) % 3 }.map { cluster.url($0) }.joined(separator: ",")
        let c = try t.connect(order, name: "c") { $0.pingIntervalMs = 500 }
        #expect(try t.run { c.isConnected })
        #expect(c.currentServer.port == UInt16(cluster.clientPorts[victim]))
        var probes = 0
        try c.subscribe("probe") { _ in probes += 1 }
        let js = JetStream(connection: c, timeoutMs: 1_000)
        if victim == 2 {
            // `other` would die with it: move it to a survivor.
            other.close()
        }
        let observer = victim == 2 ? try t.connect(cluster.url(0), name: "observer") : other
        #expect(try t.run { observer.isConnected })

        // 300 publishes, 20 in flight; at the 100th ack the client's server is killed with -9. Failed or
        // unanswered publishes are resent with the same Nats-Msg-Id until acknowledged (bounded by 30 s).
        let total = 300
        var acked: [Int: PubAck] = [:]
        var inFlight = Set<Int>()
        var next = 0
        var retries = 0
        var failures: [String: Int] = [:]
        var permanent: [String] = []
        var killedAt: UInt64 = 0
        // Resends wait 250 ms: while the stream has no leader its subject has no responders, and a tight
        // retry loop would only burn CPU.
        var retryQueue: [(index: Int, notBefore: UInt64)] = []
        func send(_ i: Int) {
            inFlight.insert(i)
            js.publish("burst.u\(i % 7)", payload: Array("msg-\(i)".utf8), messageID: "burst-\(i)") { r in
                inFlight.remove(i)
                switch r {
                case .success(let ack): acked[i] = ack
                case .failure(let e):
                    if !e.isTransient { permanent.append("\(e)") }
                    failures["\(e)".prefix(60).description, default: 0] += 1
                    retries += 1
                    retryQueue.append((i, Clock.monotonicMs() + 250))
                }
            }
        }
        let start = Clock.monotonicMs()
        while acked.count < total && Clock.monotonicMs() - start < 30_000 {
            let now = Clock.monotonicMs()
            while inFlight.count < 20 {
                if let k = retryQueue.firstIndex(where: { $0.notBefore <= now }) {
                    send(retryQueue.remove(at: k).index)
                } else if next < total {
                    next += 1
                    send(next - 1)
                } else {
                    break
                }
            }
            if killedAt == 0 && acked.count >= 100 {
                cluster.kill9(victim)
                killedAt = Clock.monotonicMs()
            }
            try t.loop.runOnce(maxWaitMs: 10)
        }
        print("burst: stream leader \(leader) killed; \(acked.count)/\(total) acked in \(Clock.monotonicMs() - start) ms, \(retries) resends "
              + "(\(acked.values.filter(\.duplicate).count) acked as duplicates), "
              + "failures \(failures), reconnected to \(c.currentServerName); events: \(t.events.filter { $0.hasPrefix("c:") })")
        #expect(killedAt > 0)
        #expect(permanent.isEmpty, "every failure during failover is transient: \(permanent.prefix(3))")
        #expect(acked.count == total)
        #expect(c.isConnected && c.currentServer.port != UInt16(cluster.clientPorts[victim]))
        #expect(c.statistics.connects == 2)
        #expect(t.events.contains { $0.hasPrefix("c: disconnected") })

        // Every acknowledged publish is in the stream exactly once (resends were deduplicated).
        let seqs = Set(acked.values.map(\.sequence))
        #expect(seqs.count == total, "distinct sequences for distinct messages")
        let info = try complete(t) { JetStream(connection: observer).streamInfo("BURST", completion: $0) }.get()
        #expect(info.messages == UInt64(total), "\(info)")
        let checkJS = JetStream(connection: observer, timeoutMs: 2_000)
        var mismatches = 0, checked = 0
        for (i, ack) in acked {
            checkJS.getMessage(stream: "BURST", sequence: ack.sequence) { r in
                checked += 1
                if (try? r.get())??.data != Array("msg-\(i)".utf8) { mismatches += 1 }
            }
        }
        try t.run(timeoutMs: 15_000) { checked == total }
        #expect(checked == total && mismatches == 0)

        // The subscription was replayed on the new server: a publish from elsewhere reaches it.
        let probeStart = Clock.monotonicMs()
        while probes == 0 && Clock.monotonicMs() - probeStart < 5_000 {
            try observer.publish("probe", payload: [1])
            try t.run(timeoutMs: 50) { probes > 0 }
        }
        #expect(probes > 0, "resubscribed after reconnect")
    }
}

extension Result {
    var failureValue: Failure? { if case .failure(let e) = self { return e }; return nil }
}

extension String {
    init(format2 value: Double) {
        let scaled = (value * 100).rounded() / 100
        self = String(scaled)
    }
}
