// LMDB through SwitchboardStore, in a temporary directory: put/scan/delete of mail, one message per
// transaction and 100 per transaction (group commit). Every commit fsyncs (LMDB's default), so
// these measure the disk as much as the code; compare them on the same machine only.
import Benchmark
import Glibc
import SwitchboardStore

func temporaryStore() -> (Store, String) {
    var template = Array("/tmp/sb-bench-XXXXXX".utf8CString)
    guard let path = mkdtemp(&template) else { fatalError("mkdtemp failed") }
    let directory = String(cString: path)
    let store = try! Store(directory: directory)
    _ = try! store.createAccountsBulk(names: ["alice", "bob"], password: PasswordHasher.hash(password: Array("benchmark-pw".utf8), iterations: 1))
    return (store, directory)
}

func remove(_ directory: String) {
    for file in ["data.mdb", "lock.mdb"] { unlink(directory + "/" + file) }
    rmdir(directory)
}

var storeConfig: Benchmark.Configuration { .init(
    metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .throughput, .syscalls],
    warmupIterations: 3,
    maxDuration: .seconds(3),
    maxIterations: 2_000) }

let body64 = [UInt8](repeating: 0x61, count: 64)

let benchmarks: @Sendable () -> Void = {
    Benchmark("LMDB_put_scan_delete_1_per_txn", configuration: storeConfig) { benchmark in
        let (store, directory) = temporaryStore()
        let bob = try! store.account(named: "bob")!.userID
        let alice = try! store.account(named: "alice")!.userID
        var seq: UInt64 = 0
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            seq += 1
            let mail = StoredMail(recipient: bob, seq: seq, sender: alice, messageID: seq, sentAtMs: 1, body: body64)
            _ = try! store.apply([.putMail(mail)])
            blackHole(try! store.mail(for: bob, afterSeq: seq - 1, limit: 1).count)
            _ = try! store.apply([.deleteMail(recipient: bob, throughSeq: seq)])
        }
        benchmark.stopMeasurement()
        store.close()
        remove(directory)
    }

    Benchmark("LMDB_put_scan_delete_100_per_txn", configuration: storeConfig) { benchmark in
        let (store, directory) = temporaryStore()
        let bob = try! store.account(named: "bob")!.userID
        let alice = try! store.account(named: "alice")!.userID
        var seq: UInt64 = 0
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let first = seq + 1
            var ops: [WriteOp] = []
            ops.reserveCapacity(100)
            for _ in 0..<100 {
                seq += 1
                ops.append(.putMail(StoredMail(recipient: bob, seq: seq, sender: alice, messageID: seq, sentAtMs: 1, body: body64)))
            }
            _ = try! store.apply(ops)
            blackHole(try! store.mail(for: bob, afterSeq: first - 1, limit: 100).count)
            _ = try! store.apply([.deleteMail(recipient: bob, throughSeq: seq)])
        }
        benchmark.stopMeasurement()
        store.close()
        remove(directory)
    }
}
