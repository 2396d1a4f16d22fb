// What a node is told of the log comes in the log's order: its own batches (onCommitted) and other nodes'
// entries (onForeignApplied) interleave as the entries were applied. The core applies contact changes and mail
// notices from both callbacks to its memory; told out of order, it would hold a contact state the store does not
// (an accept applied after a remove that came later in the log). Two nodes submit mail to one recipient,
// interleaved: the mail seqs one node hears of, through both callbacks in callback order, must rise strictly
// (every replica numbers a recipient's mail in log order, renumbering collisions).
import NATSTestHarness
import Glibc
import SwitchboardCluster
import SwitchboardIO
@testable import SwitchboardServer
import SwitchboardSession
@_spi(Testing) import SwitchboardStore
import Testing

@Suite struct ClusterLogOrderTests {
    @Test(.timeLimit(.minutes(2)))
    func ownAndForeignEntriesAreReportedInLogOrder() throws {
        guard natsServerPath() != nil else { try Test.cancel("nats-server is not installed (apt-get install nats-server)") }
        let t = try TestLoop()
        let cluster = try readyCluster("order", basePort: 27700, t)
        let data = scratchDirectory("order")
        defer { cluster.stop(); cluster.removeFiles(); _ = system("rm -rf '\(data)'") }

        let a = try Node("a", t, urls: cluster.urls(from: 0), directory: "\(data)/a")
        let b = try Node("b", t, urls: cluster.urls(from: 1), directory: "\(data)/b")
        defer { a.close(); b.close() }
        #expect(try t.run { a.ready && b.ready }, "a: \(a.log.status), b: \(b.log.status)")
        guard case .accountCreated(let dave)? = results(try a.commit([.createAccount(name: "dave", password: testPassword)])).first
        else { Issue.record("no account"); return }
        #expect(try quiesce([a, b], t))

        // Every mail seq each node hears of, in the order it is told.
        var heard: [ObjectIdentifier: [UInt64]] = [:]
        for node in [a, b] {
            let key = ObjectIdentifier(node)
            let committed = node.log.onCommitted
            node.log.onCommitted = { result in
                committed?(result)
                if case .success(let writes) = result.results {
                    for (op, write) in zip(result.batch.ops, writes) {
                        if case .putMail(let mail) = op, write == .mailStored { heard[key, default: []].append(mail.seq) }
                    }
                }
            }
            let foreign = node.log.onForeignApplied
            node.log.onForeignApplied = { ops, writes in
                foreign?(ops, writes)
                for (op, write) in zip(ops, writes) {
                    if case .putMail(let mail) = op, write == .mailStored { heard[key, default: []].append(mail.seq) }
                }
            }
        }

        // 150 rounds: both nodes submit one mail batch each, pipelined (at most 8 of each node's in flight).
        var messageID: UInt64 = 0
        var tokens: [(Node, UInt64)] = []
        for _ in 0..<150 {
            for node in [a, b] {
                messageID += 1
                let next = (try node.store.mailboxUsage(of: dave).lastSeq) + 1
                tokens.append((node, node.submit([.pruneDedupe(olderThanMs: 0), .putMail(StoredMail(
                    recipient: dave, seq: next, sender: dave, messageID: messageID, sentAtMs: 1_000 + messageID,
                    body: Array("m\(messageID)".utf8)))])))
            }
            try t.run(timeoutMs: 10_000) {
                tokens.filter { $0.0.committed[$0.1] == nil }.count <= 16
            }
        }
        #expect(try t.run { tokens.allSatisfy { $0.0.committed[$0.1] != nil } })
        #expect(try quiesce([a, b], t))
        for node in [a, b] {
            let seqs = heard[ObjectIdentifier(node)] ?? []
            var inversions = 0
            for i in seqs.indices.dropFirst() where seqs[i] <= seqs[i - 1] { inversions += 1 }
            #expect(seqs.count == Int(messageID), "\(node.name) heard of \(seqs.count) of \(messageID) mails")
            #expect(inversions == 0, "\(node.name) was told \(inversions) mails out of log order: \(seqs.prefix(40))")
            print("order: \(node.name) heard \(seqs.count) mails, \(inversions) out of log order")
        }
    }
}
