// Every bound of the cluster log pushed past (pending batches, pending bytes, entry size: split or refused, the
// applier's queue), and every way a replica must refuse to go on rather than diverge: an entry that does not
// decode, a store error (a replica whose map is full), a stream that no longer holds entries it needs, a stream
// behind it (recreated). Also the configuration checks. One real three-server cluster, one stream per case.
import NATSTestHarness
import Glibc
import SwitchboardCluster
import SwitchboardIO
@testable import SwitchboardServer
import SwitchboardSession
@_spi(Testing) import SwitchboardStore
import Testing

func mailOp(to recipient: UserID, seq: UInt64, from sender: UserID, id: UInt64, bytes: Int) -> WriteOp {
    .putMail(StoredMail(recipient: recipient, seq: seq, sender: sender, messageID: id, sentAtMs: 1_000 + id,
                        body: [UInt8](repeating: UInt8(truncatingIfNeeded: id), count: bytes)))
}

func failure(_ r: Result<[WriteResult], StoreErrorBox>?) -> String? {
    if case .failure(let e)? = r { return e.description }
    return nil
}

func on(_ stream: String, _ c: inout ClusterLogConfiguration) {
    c.stream = stream
    c.subject = "sb." + stream.lowercased()
}

@Suite struct ClusterLogLimitsTests {
    @Test(.timeLimit(.minutes(2)))
    func boundsAndRefusals() throws {
        guard natsServerPath() != nil else { try Test.cancel("nats-server is not installed (apt-get install nats-server)") }
        let t = try TestLoop()
        let cluster = try readyCluster("limits", basePort: 24100, t)
        let data = scratchDirectory("limits")
        defer { cluster.stop(); cluster.removeFiles(); _ = system("rm -rf '\(data)'") }

        // Configuration and store checks.
        let probe = try t.connect(cluster.urls, name: "probe")
        do {
            let plain = try Store(directory: "\(data)/plain", mapSizeBytes: 1 << 20)
            defer { plain.close() }
            #expect(throws: ClusterLogError.self) {
                _ = try ClusterLog(loop: t.loop, nats: probe, store: plain, node: "x", configuration: ClusterLogConfiguration(), logger: testLogger)
            }
            let replica = try Store(directory: "\(data)/replica", mapSizeBytes: 1 << 20, options: .clusterReplica)
            defer { replica.close() }
            var bad = ClusterLogConfiguration()
            bad.duplicateWindowMs = bad.commitTimeoutMs
            #expect(throws: ClusterLogError.self) {
                _ = try ClusterLog(loop: t.loop, nats: probe, store: replica, node: "x", configuration: bad, logger: testLogger)
            }
            #expect(throws: ClusterLogError.self) {
                _ = try ClusterLog(loop: t.loop, nats: probe, store: replica, node: "has space", configuration: ClusterLogConfiguration(), logger: testLogger)
            }
        }

        // Pending batches and bytes.
        let a = try Node("a", t, urls: cluster.urls(from: 0), directory: "\(data)/a") {
            on("SB_BOUNDS", &$0)
            $0.maxPendingBatches = 2
            $0.maxPendingBytes = 8_000
            $0.maxEntryBytes = 2_048
            $0.maxApplyQueueBytes = 2_048
        }
        defer { a.close() }
        #expect(try t.run { a.ready })
        #expect(try a.commit([.createAccount(name: "alice", password: testPassword),
                              .createAccount(name: "bob", password: testPassword)]).get() == [.accountCreated(1), .accountCreated(2)])
        let five = (0..<5).map { a.submit([.createAccount(name: "user\($0)", password: testPassword)]) }
        #expect(try t.run { five.allSatisfy { a.committed[$0] != nil } })
        #expect(five.prefix(2).allSatisfy { failure(a.committed[$0]?.results) == nil })
        #expect(five.suffix(3).allSatisfy { failure(a.committed[$0]?.results)?.hasPrefix("cluster store overloaded: 2 batches") == true },
                "\(five.map { failure(a.committed[$0]?.results) ?? "ok" })")
        #expect(a.outOfOrder == 0)
        // One entry holds one 1,400-byte mail (2,048 minus room for headers); three of them (about 4,300 bytes)
        // fit in 8,000 pending bytes, six at once do not.
        let big1 = a.submit((0..<3).map { mailOp(to: 2, seq: 1 + $0, from: 1, id: 10 + $0, bytes: 1_400) })
        let big2 = a.submit((3..<6).map { mailOp(to: 2, seq: 1 + $0, from: 1, id: 10 + $0, bytes: 1_400) })
        #expect(try t.run { a.committed[big1] != nil && a.committed[big2] != nil })
        #expect(failure(a.committed[big1]?.results) == nil)
        #expect(failure(a.committed[big2]?.results)?.contains("bytes) already wait") == true)
        #expect(a.log.status.counters.batchesRefused == 4)

        // A batch larger than one entry is split; a single op larger than an entry fails its batch.
        let published = a.log.status.counters.entriesPublished
        let split = try a.commit([.pruneDedupe(olderThanMs: 0)] + (0..<6).map { mailOp(to: 2, seq: 10 + $0, from: 1, id: 100 + $0, bytes: 600) })
        #expect(try split.get() == [.pruned(count: 0)] + Array(repeating: .mailStored, count: 6))
        #expect(a.log.status.counters.entriesPublished - published >= 3, "split into several entries")
        let tooBig = try a.commit([mailOp(to: 2, seq: 30, from: 1, id: 200, bytes: 4_000)])
        #expect(failure(tooBig)?.contains("more than a cluster log entry holds") == true, "\(String(describing: failure(tooBig)))")

        // A late replica with a tiny apply queue and window catches up through pauses of its feed; a replica whose
        // map is too small stops (the store error), the others go on.
        for i in 0..<40 { _ = a.submit([mailOp(to: 1, seq: UInt64(1 + i), from: 2, id: UInt64(300 + i), bytes: 900)]) }
        #expect(try t.run { a.log.status.pendingBatches == 0 })
        let late = try Node("late", t, urls: cluster.urls(from: 1), directory: "\(data)/late") {
            on("SB_BOUNDS", &$0)
            $0.maxEntryBytes = 2_048
            $0.maxApplyQueueBytes = 2_048
            $0.maxAckPending = 4
            $0.maxEntriesPerTransaction = 2
        }
        defer { late.close() }
        let small = try Node("small", t, urls: cluster.urls(from: 2), directory: "\(data)/small", mapSizeBytes: 64 * 1024) {
            on("SB_BOUNDS", &$0)
        }
        defer { small.close() }
        #expect(try t.run { late.ready })
        #expect(late.log.status.counters.feedPauses > 0, "\(late.log.status.counters)")
        // About 85 KB more: past the small replica's 64 KiB map.
        for i in 0..<60 {
            _ = try a.commit([mailOp(to: 1, seq: UInt64(100 + i), from: 2, id: UInt64(400 + i), bytes: 1_400)])
        }
        #expect(try quiesce([a, late], t))
        try expectEqualReplicas([a, late])
        #expect(try t.run { if case .stopped = small.log.status.state { return true }; return false })
        let smallState = "\(small.log.status.state)"
        #expect(smallState.contains("map full"), "\(smallState)")
        #expect(small.log.status.appliedSeq < a.log.status.appliedSeq)
        #expect(failure(try small.commit([.createAccount(name: "zed", password: testPassword)]))?.contains("replica stopped") == true)
        #expect(try a.commit([.createAccount(name: "after", password: testPassword)]).get().count == 1)

        // An entry that does not decode stops every replica at it; what came before is applied.
        let x = try Node("x", t, urls: cluster.urls(from: 0), directory: "\(data)/x") { on("SB_BAD", &$0) }
        let y = try Node("y", t, urls: cluster.urls(from: 1), directory: "\(data)/y") { on("SB_BAD", &$0) }
        defer { x.close(); y.close() }
        #expect(try t.run { x.ready && y.ready })
        #expect(try x.commit([.createAccount(name: "first", password: testPassword)]).get() == [.accountCreated(1)])
        let js = JetStream(connection: probe)
        let garbage = try t.complete { js.publish("sb.sb_bad", payload: [1, 1, 99, 0], messageID: "garbage-1", completion: $0) }.get()
        let after = x.submit([.createAccount(name: "second", password: testPassword)])
        #expect(try t.run { x.committed[after] != nil })
        #expect(failure(x.committed[after]?.results)?.contains("replica stopped") == true)
        #expect(try t.run { if case .stopped = y.log.status.state { return true }; return false })
        for node in [x, y] {
            let state = "\(node.log.status.state)"
            #expect(state.contains("log entry \(garbage.sequence) (id garbage-1, from node unknown) does not decode: "
                                   + "malformed write-op list at byte 2: op 0 has unknown tag 99"), "\(state)")
            #expect(node.log.status.appliedSeq == garbage.sequence - 1)
            #expect(try node.store.account(named: "first") != nil && node.store.account(named: "second") == nil)
        }

        // Entries this replica needs are gone (purged): an empty replica refuses to start.
        let p = try Node("p", t, urls: cluster.urls(from: 0), directory: "\(data)/p") { on("SB_AGE", &$0) }
        for i in 0..<6 { _ = p.submit([.createAccount(name: "aged\(i)", password: testPassword)]) }
        #expect(try t.run { p.order.count == 6 })
        var purged: Result<NATSMessage, NATSRequestError>?
        try probe.request("$JS.API.STREAM.PURGE.SB_AGE", payload: Array(#"{"keep":2}"#.utf8), timeoutMs: 2_000) { purged = $0 }
        #expect(try t.run { purged != nil })
        let q = try Node("q", t, urls: cluster.urls(from: 1), directory: "\(data)/q") { on("SB_AGE", &$0) }
        defer { q.close() }
        #expect(try t.run { if case .stopped = q.log.status.state { return true }; return false })
        #expect("\(q.log.status.state)".contains("entries 1...4 that this replica still needs are no longer in stream SB_AGE"),
                "\(q.log.status.state)")
        #expect(try q.store.clusterAppliedSeq() == 0)

        // The stream was recreated: a replica ahead of it refuses.
        p.close()
        _ = try t.complete { js.deleteStream("SB_AGE", completion: $0) }.get()
        let p2 = try Node("p", t, urls: cluster.urls(from: 2), directory: "\(data)/p") { on("SB_AGE", &$0) }
        defer { p2.close() }
        #expect(try t.run { if case .stopped = p2.log.status.state { return true }; return false })
        #expect("\(p2.log.status.state)".contains("has applied log entry 6 but stream SB_AGE ends at 0"), "\(p2.log.status.state)")
        probe.close()
    }
}
