// The cluster log when NATS fails: kill -9 of the server that leads the SB_LOG stream (and that one node is
// connected to) during a burst of submits from two nodes; every batch completes, every batch that completed ok
// is in the stream and in every replica exactly once, the replicas are equal. All three servers stopped for less
// than commitTimeoutMs: submits wait and complete after the restart; stopped for longer: a clear failure, then
// recovery without restarting the cluster log.
import NATSTestHarness
import Glibc
import SwitchboardCluster
import SwitchboardIO
@testable import SwitchboardServer
import SwitchboardSession
@_spi(Testing) import SwitchboardStore
import Testing

func isReady(_ node: Node) -> Bool { node.log.status.state == .ready }

/// The msg id of every entry of the stream, read through `probe` (pipelined gets).
func streamMessageIDs(_ t: TestLoop, _ probe: NATSConnection, stream: String, last: UInt64) throws -> [UInt64: String] {
    let js = JetStream(connection: probe, timeoutMs: 5_000)
    var ids: [UInt64: String] = [:]
    var answered = 0
    for seq in 1...max(1, last) where last > 0 {
        js.getMessage(stream: stream, sequence: seq) { result in
            answered += 1
            if case .success(let message?) = result { ids[seq] = message.headers?["Nats-Msg-Id"] ?? "none" }
        }
    }
    try t.run(timeoutMs: 20_000) { answered == Int(last) }
    return ids
}

@Suite struct ClusterLogFailureTests {
    @Test(.timeLimit(.minutes(2)))
    func streamLeaderKilledDuringABurst() throws {
        guard natsServerPath() != nil else { try Test.cancel("nats-server is not installed (apt-get install nats-server)") }
        let t = try TestLoop()
        let cluster = try readyCluster("leaderkill", basePort: 24200, t)
        let data = scratchDirectory("leaderkill")
        defer { cluster.stop(); cluster.removeFiles(); _ = system("rm -rf '\(data)'") }

        let b = try Node("b", t, urls: cluster.urls(from: 1), directory: "\(data)/b")
        defer { b.close() }
        #expect(try t.run { b.ready })
        let probe = try t.connect(cluster.urls, name: "probe")
        #expect(try t.run { probe.isConnected })
        let info = try t.complete { JetStream(connection: probe).streamInfo("SB_LOG", completion: $0) }.get()
        let leader = try #require(info.leader, "an R3 stream has a leader")
        let victim = try #require(Int(leader.dropFirst())) - 1
        // a is connected to the leader's server; b to another one (moved if it is the victim's).
        let a = try Node("a", t, urls: cluster.urls(from: victim), directory: "\(data)/a")
        defer { a.close() }
        #expect(try t.run { a.ready })
        #expect(a.nats.currentServerName == leader)
        let target = try a.commit([.createAccount(name: "target", password: testPassword)])
        guard case .accountCreated(let targetID)? = results(target).first else { Issue.record("no target: \(target)"); return }

        // 240 batches, alternating nodes, at most 8 in flight per node; the leader is killed at the 60th completion.
        let total = 240
        var tokens: [(node: Node, token: UInt64, index: Int)] = []
        var next = 0
        var killedAt: UInt64 = 0
        let start = Clock.monotonicMs()
        func done(_ n: Node) -> Int { tokens.filter { $0.node === n && n.committed[$0.token] != nil }.count }
        while Clock.monotonicMs() - start < 60_000 {
            let completed = tokens.filter { $0.node.committed[$0.token] != nil }.count
            if completed == total { break }
            for node in [a, b] {
                while next < total && tokens.filter({ $0.node === node }).count - done(node) < 8 {
                    let ops: [WriteOp] = [.createAccount(name: "burst\(next)", password: testPassword),
                                          .putMail(StoredMail(recipient: targetID, seq: 1, sender: targetID, messageID: UInt64(next),
                                                              sentAtMs: 1_000, body: Array("burst \(next)".utf8)))]
                    tokens.append((node, node.submit(ops), next))
                    next += 1
                }
            }
            if killedAt == 0 && completed >= 60 {
                cluster.kill9(victim)
                killedAt = Clock.monotonicMs()
            }
            try t.loop.runOnce(maxWaitMs: 10)
        }
        let elapsed = Clock.monotonicMs() - start
        var ok: [Int] = [], failed: [String] = []
        for (node, token, index) in tokens {
            switch node.committed[token]?.results {
            case .success(let writes)?:
                let created: Bool
                if case .accountCreated? = writes.first { created = true } else { created = false }
                #expect(created && writes.count == 2 && writes[1] == .mailStored, "\(writes)")
                ok.append(index)
            case .failure(let error)?: failed.append(error.description)
            case nil: failed.append("never completed")
            }
        }
        print("leaderkill: \(leader) killed after 60 completions; \(ok.count)/\(total) ok, \(failed.count) failed, in \(elapsed) ms; "
              + "a: \(a.log.status.counters), b: \(b.log.status.counters)")
        #expect(killedAt > 0)
        #expect(ok.count + failed.count == total, "every batch completed")
        #expect(failed.allSatisfy { $0.hasPrefix("cluster store unavailable") }, "\(failed.prefix(3))")
        #expect(a.outOfOrder == 0 && b.outOfOrder == 0)
        #expect(a.nats.currentServerName != leader)

        // Quiesced: the replicas are equal; every ok batch is in each exactly once; the stream holds each entry once.
        #expect(try quiesce([a, b], t, timeoutMs: 30_000), "a: \(a.log.status), b: \(b.log.status)")
        try expectEqualReplicas([a, b])
        let mail = try a.store.mail(for: targetID, afterSeq: 0, limit: 10_000)
        let byID = Dictionary(grouping: mail, by: \.messageID)
        for index in ok {
            #expect(byID[UInt64(index)]?.count == 1, "mail of batch \(index)")
            #expect(try a.store.account(named: "burst\(index)") != nil && b.store.account(named: "burst\(index)") != nil)
        }
        #expect(byID.values.allSatisfy { $0.count == 1 })
        let last = a.log.status.appliedSeq
        let ids = try streamMessageIDs(t, probe, stream: "SB_LOG", last: last)
        #expect(ids.count == Int(last) && Set(ids.values).count == Int(last), "\(ids.count) entries, \(Set(ids.values).count) distinct ids")
        probe.close()
    }

    @Test(.timeLimit(.minutes(2)))
    func allOfNATSDownShortAndLong() throws {
        guard natsServerPath() != nil else { try Test.cancel("nats-server is not installed (apt-get install nats-server)") }
        let t = try TestLoop()
        let cluster = try readyCluster("outage", basePort: 24300, t)
        let data = scratchDirectory("outage")
        defer { cluster.stop(); cluster.removeFiles(); _ = system("rm -rf '\(data)'") }

        // a waits up to 25 s for a commit (NATS recovery after a full restart took 6.7-9.1 s here), c 2.5 s.
        let a = try Node("a", t, urls: cluster.urls(from: 0), directory: "\(data)/a") { $0.commitTimeoutMs = 25_000 }
        let c = try Node("c", t, urls: cluster.urls(from: 1), directory: "\(data)/c") { $0.commitTimeoutMs = 2_500 }
        defer { a.close(); c.close() }
        #expect(try t.run { a.ready && c.ready })
        #expect(try a.commit([.createAccount(name: "before", password: testPassword)]).get() == [.accountCreated(1)])

        // Down for ~3 s (less than a's commit timeout): a's submits wait, then complete.
        for i in 0..<3 { cluster.kill9(i) }
        let waiting = (0..<5).map { a.submit([.createAccount(name: "short\($0)", password: testPassword)]) }
        try t.sleep(3_000)
        #expect(waiting.allSatisfy { a.committed[$0] == nil })
        if case .unavailable = a.log.status.state {} else { Issue.record("a during the outage: \(a.log.status.state)") }
        var restarted = Clock.monotonicMs()
        for i in 0..<3 { try cluster.start(i) }
        #expect(try t.run(timeoutMs: 24_000) { waiting.allSatisfy { a.committed[$0] != nil } })
        print("outage: 3 s down; the 5 waiting batches committed \(Clock.monotonicMs() - restarted) ms after the restart")
        #expect(waiting.allSatisfy { failure(a.committed[$0]?.results) == nil },
                "\(waiting.map { failure(a.committed[$0]?.results) ?? "ok" })")
        #expect(try t.run(timeoutMs: 15_000) { isReady(a) && isReady(c) }, "a: \(a.log.status.state), c: \(c.log.status.state)")

        // Down for longer than c's 2.5 s timeout: clear failures; after the restart c recovers on its own.
        for i in 0..<3 { cluster.kill9(i) }
        let doomed = (0..<3).map { c.submit([.createAccount(name: "long\($0)", password: testPassword)]) }
        #expect(try t.run(timeoutMs: 5_000) { doomed.allSatisfy { c.committed[$0] != nil } })
        for token in doomed {
            let why = failure(c.committed[token]?.results) ?? "ok"
            #expect(why.hasPrefix("cluster store unavailable: the cluster log did not acknowledge the write within 2500 ms"), "\(why)")
        }
        #expect("\(c.log.status.state)".hasPrefix("unavailable"), "\(c.log.status.state)")
        try t.sleep(1_000)
        restarted = Clock.monotonicMs()
        for i in 0..<3 { try cluster.start(i) }
        #expect(try t.run(timeoutMs: 20_000) { isReady(c) && isReady(a) }, "a: \(a.log.status.state), c: \(c.log.status.state)")
        // Ready means following again; the first publishes may still meet a stream leader being elected.
        var again = try c.commit([.createAccount(name: "recovered", password: testPassword)])
        var attempts = 1
        while failure(again) != nil && attempts < 4 {
            attempts += 1
            again = try c.commit([.createAccount(name: "recovered", password: testPassword)])
        }
        print("outage: long outage; c committed again \(Clock.monotonicMs() - restarted) ms after the restart "
              + "(attempt \(attempts)); c: \(c.log.status.counters)")
        #expect(failure(again) == nil, "\(String(describing: failure(again)))")
        #expect(try quiesce([a, c], t))
        try expectEqualReplicas([a, c])
        // A given-up batch may still have been stored (its publish left before the servers died): then it was
        // applied as foreign, on c too, and exactly once.
        for i in 0..<3 {
            let stored = try c.store.account(named: "long\(i)") != nil
            let reported = c.foreign.contains { ops, _ in ops == [.createAccount(name: "long\(i)", password: testPassword)] }
            #expect(stored == reported, "long\(i): stored \(stored), reported as foreign \(reported)")
        }
    }
}
