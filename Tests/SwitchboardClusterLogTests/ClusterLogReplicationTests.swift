// Two nodes (two LMDB replicas, two NATS connections on different servers of a real three-server JetStream
// cluster) submit interleaved batches through their cluster logs: one name registered from both gets exactly
// one accountCreated; contacts change across nodes; mail to one recipient from both is renumbered identically;
// deletes; then the replicas hold the same bytes. A third replica started late from an empty folder catches up
// to the same bytes; a replica restarted from its folder resumes after its applied sequence (no double apply).
import NATSTestHarness
import Glibc
import SwitchboardCluster
import SwitchboardIO
@testable import SwitchboardServer
import SwitchboardSession
@_spi(Testing) import SwitchboardStore
import Testing

func results(_ r: Result<[WriteResult], StoreErrorBox>?) -> [WriteResult] { (try? r?.get()) ?? [] }

@Suite struct ClusterLogReplicationTests {
    @Test(.timeLimit(.minutes(2)))
    func nodesReplicateCatchUpAndResume() throws {
        guard natsServerPath() != nil else { try Test.cancel("nats-server is not installed (apt-get install nats-server)") }
        let t = try TestLoop()
        let cluster = try readyCluster("replication", basePort: 24000, t)
        let data = scratchDirectory("replication")
        defer { cluster.stop(); cluster.removeFiles(); _ = system("rm -rf '\(data)'") }

        var started = Clock.monotonicMs()
        let a = try Node("a", t, urls: cluster.urls(from: 0), directory: "\(data)/a")
        let b = try Node("b", t, urls: cluster.urls(from: 1), directory: "\(data)/b")
        defer { a.close(); b.close() }
        #expect(try t.run { a.ready && b.ready }, "a: \(a.log.status), b: \(b.log.status)")
        print("replication: two empty replicas ready in \(Clock.monotonicMs() - started) ms")
        #expect(a.log.status.state == .ready && b.log.status.state == .ready)

        // One name from both nodes at once: exactly one account; the same ids on both replicas.
        let ta = a.submit([.createAccount(name: "alice", password: testPassword), .createAccount(name: "carol", password: testPassword)])
        let tb = b.submit([.createAccount(name: "alice", password: testPassword), .createAccount(name: "dave", password: testPassword)])
        #expect(try t.run { a.committed[ta] != nil && b.committed[tb] != nil })
        let ra = results(a.committed[ta]?.results), rb = results(b.committed[tb]?.results)
        let aliceWins = [ra.first, rb.first].filter { if case .accountCreated? = $0 { return true }; return false }
        #expect(aliceWins.count == 1 && [ra.first, rb.first].contains(.nameTaken), "\(ra) \(rb)")
        // Each node applies the other's entry as foreign.
        #expect(try t.run { a.foreign.count == 1 && b.foreign.count == 1 })
        guard let alice = try a.store.account(named: "alice")?.userID, let dave = try a.store.account(named: "dave")?.userID,
              let carol = try a.store.account(named: "carol")?.userID else {
            Issue.record("accounts missing on a"); return
        }
        #expect(try b.store.account(named: "alice")?.userID == alice && b.store.account(named: "dave")?.userID == dave)

        // Contacts across nodes: alice (via a) asks dave, dave (via b) accepts, dave asks carol.
        #expect(results(try a.commit([.contactAdd(owner: alice, contactName: "dave")])).first.map {
            if case .contactChanged = $0 { return true }; return false } == true)
        let accept = b.submit([.contactAccept(owner: dave, contactName: "alice")])
        let ask = b.submit([.contactAdd(owner: dave, contactName: "carol")])
        #expect(try t.run { b.committed[ask] != nil })
        #expect(b.order.suffix(2) == [accept, ask] && b.outOfOrder == 0, "completed in submission order")
        #expect(results(b.committed[accept]?.results) == [.contactChanged(
            owner: ContactEntry(userID: alice, name: "alice", state: .accepted),
            other: ContactEntry(userID: dave, name: "dave", state: .accepted), ownerID: dave, otherID: alice)])

        // Mail to dave from both nodes, pipelined: each node picks seqs from its own replica, so they collide; every
        // replica renumbers the same way, and the core is told the seq each mail was stored under.
        var mailTokens: [(Node, UInt64)] = []
        var messageID: UInt64 = 1000
        for round in 0..<20 {
            for node in [a, b] {
                let next = (try node.store.mailboxUsage(of: dave).lastSeq) + 1
                var ops: [WriteOp] = [.pruneDedupe(olderThanMs: 0)]
                for k in 0..<(1 + round % 3) {
                    messageID += 1
                    ops.append(.putMail(StoredMail(recipient: dave, seq: next + UInt64(k), sender: node === a ? alice : carol,
                                                   messageID: messageID, sentAtMs: 5_000 + messageID, body: Array("m\(messageID)".utf8))))
                }
                mailTokens.append((node, node.submit(ops)))
            }
        }
        // A resend of one already stored is a duplicate on every replica.
        mailTokens.append((b, b.submit([.pruneDedupe(olderThanMs: 0), .putMail(StoredMail(recipient: dave, seq: 1, sender: alice,
                                                            messageID: 1001, sentAtMs: 0, body: []))])))
        started = Clock.monotonicMs()
        #expect(try t.run { mailTokens.allSatisfy { $0.0.committed[$0.1] != nil } })
        print("replication: \(mailTokens.count) pipelined mail batches from two nodes committed in \(Clock.monotonicMs() - started) ms")
        var storedSeqs: [UInt64] = []
        for (node, token) in mailTokens {
            guard let result = node.committed[token], case .success(let writes) = result.results else {
                Issue.record("batch \(token) of \(node.name) failed: \(String(describing: node.committed[token]?.results))")
                continue
            }
            for (index, context) in result.batch.contexts.enumerated() {
                guard case .mail(let mail) = context else { continue }
                if writes[index] == .mailStored {
                    // The context carries the stored seq: the replica has exactly that mail under it.
                    let stored = try node.store.mail(for: dave, afterSeq: mail.seq - 1, limit: 1).first
                    #expect(stored?.messageID == mail.messageID && stored?.seq == mail.seq)
                    storedSeqs.append(mail.seq)
                } else {
                    #expect(writes[index] == .duplicateMail && mail.messageID == 1001)
                }
            }
        }
        let mails = Int(messageID - 1000)
        #expect(storedSeqs.count == mails && Set(storedSeqs).count == mails, "every mail stored once, under its own seq")
        #expect(try quiesce([a, b], t))
        for node in [a, b] {
            #expect(try node.store.mail(for: dave, afterSeq: 0, limit: 1000).map(\.seq) == Array(1...UInt64(mails)))
        }

        // Deletes from both sides.
        let delete = a.submit([.deleteMail(recipient: dave, throughSeq: 10)])
        let remove = b.submit([.deleteAccount(name: "carol")])
        #expect(try t.run { a.committed[delete] != nil && b.committed[remove] != nil })
        #expect(results(a.committed[delete]?.results) == [.mailDeleted(count: 10)])
        #expect(results(b.committed[remove]?.results) == [.accountDeleted(carol, contacts: [dave])])

        #expect(try quiesce([a, b], t))
        try expectEqualReplicas([a, b])
        let lastSeq = a.log.status.appliedSeq
        #expect(a.log.status.counters.entriesApplied == lastSeq && b.log.status.counters.entriesApplied == lastSeq)
        // Every entry applied on a node was reported once: in its own commits or as foreign.
        for node in [a, b] {
            let own = node.committed.values.filter { if case .success = $0.results { return true }; return false }.count
            #expect(UInt64(own + node.foreign.count) == lastSeq, "\(node.name): \(own) own + \(node.foreign.count) foreign")
        }

        // A third replica from an empty folder catches up to the same bytes.
        started = Clock.monotonicMs()
        let c = try Node("c", t, urls: cluster.urls(from: 2), directory: "\(data)/c")
        defer { c.close() }
        #expect(try t.run { c.ready })
        print("replication: a late replica applied \(c.log.status.appliedSeq) entries and was ready in \(Clock.monotonicMs() - started) ms")
        #expect(c.log.status.appliedSeq == lastSeq && c.foreign.count == Int(lastSeq))
        try expectEqualReplicas([a, c])

        // b restarts from its folder while a keeps writing: it resumes after its applied sequence.
        b.close()
        for i in 0..<5 { _ = a.submit([.createAccount(name: "late\(i)", password: testPassword)]) }
        #expect(try t.run { a.committed.count == a.order.count && a.log.status.pendingBatches == 0 })
        let b2 = try Node("b", t, urls: cluster.urls(from: 1), directory: "\(data)/b")
        defer { b2.close() }
        #expect(try t.run { b2.ready })
        #expect(b2.log.status.counters.entriesApplied == 5, "only the entries after its applied seq: \(b2.log.status)")
        #expect(try quiesce([a, b2, c], t))
        try expectEqualReplicas([a, b2, c])

        // Figures (printed; the README quotes them): submit -> committed one at a time and pipelined, and the catch-up
        // (apply) rate of a fresh replica.
        var alone: [UInt64] = []
        for i in 0..<50 {
            let before = Clock.monotonicNs()
            _ = try a.commit([.putMail(StoredMail(recipient: alice, seq: 1_000 + UInt64(i), sender: dave, messageID: 50_000 + UInt64(i),
                                                  sentAtMs: 1, body: Array(repeating: 0x61, count: 100)))])
            alone.append(Clock.monotonicNs() - before)
        }
        alone.sort()
        let burst = 1_000
        let pipelinedStart = Clock.monotonicNs()
        var pipelined: [UInt64] = []
        for i in 0..<burst {
            pipelined.append(a.submit([.putMail(StoredMail(recipient: dave, seq: 10_000 + UInt64(i), sender: alice,
                                                           messageID: 60_000 + UInt64(i), sentAtMs: 1, body: Array(repeating: 0x62, count: 100)))]))
        }
        #expect(try t.run(timeoutMs: 30_000) { pipelined.allSatisfy { a.committed[$0] != nil } })
        let pipelinedNs = Clock.monotonicNs() - pipelinedStart
        #expect(try quiesce([a, b2, c], t))
        let entries = a.log.status.appliedSeq
        let fresh = try Node("d", t, urls: cluster.urls(from: 0), directory: "\(data)/d")
        defer { fresh.close() }
        let catchUpStart = Clock.monotonicNs()
        #expect(try t.run(timeoutMs: 30_000) { fresh.ready })
        let catchUpNs = Clock.monotonicNs() - catchUpStart
        try expectEqualReplicas([a, fresh])
        print("figures: submit->committed alone p50 \(alone[25] / 1_000) µs, p90 \(alone[45] / 1_000) µs; "
              + "\(burst) pipelined in \(pipelinedNs / 1_000_000) ms (\(pipelinedNs / UInt64(burst) / 1_000) µs each); "
              + "catch-up of \(entries) entries by an empty replica \(catchUpNs / 1_000_000) ms "
              + "(\(UInt64(entries) * 1_000_000_000 / max(1, catchUpNs)) entries/s, \(fresh.log.status.counters.consumersCreated) consumer)")
    }
}
