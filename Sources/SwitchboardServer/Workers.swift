// Work that must never run on the loop thread: PBKDF2 hashing (tens of milliseconds by design) and
// LMDB write transactions (each commit fsyncs). Each kind has its own queue and thread(s); results
// come back through a CompletionQueue whose eventfd wakes the loop. Workers get immutable items and
// never touch a connection.
import SwitchboardIO
import SwitchboardSession
import SwitchboardStore

final class Workers: @unchecked Sendable {
    let hashJobs = WorkQueue<HashJob>()
    let hashResults: CompletionQueue<HashResult>
    let storeJobs = WorkQueue<StoreBatch>()
    let storeResults: CompletionQueue<StoreBatchResult>
    private var threads: [HelperThread] = []

    init(store: Store, hashThreads: Int) throws {
        hashResults = try CompletionQueue()
        storeResults = try CompletionQueue()
        let hashJobs = self.hashJobs, hashResults = self.hashResults
        for _ in 0..<max(1, hashThreads) {
            threads.append(try HelperThread { Workers.runHashing(jobs: hashJobs, results: hashResults) })
        }
        let storeJobs = self.storeJobs, storeResults = self.storeResults
        threads.append(try HelperThread { Workers.runStore(store: store, jobs: storeJobs, results: storeResults) })
    }

    private static func runHashing(jobs: WorkQueue<HashJob>, results: CompletionQueue<HashResult>) {
        while let batch = jobs.popAll() {
            for job in batch {
                switch job {
                case .hashForRegistration(let connection, let requestID, let name, let password, let iterations):
                    let hash = PasswordHasher.hash(password: password, iterations: iterations)
                    results.post(.hashed(connection: connection, requestID: requestID, name: name, hash: hash))
                case .verifyLogin(let connection, let requestID, let name, let password, let account, let dummy):
                    // Unknown users are checked against a dummy hash so both answers take as long.
                    let ok = PasswordHasher.verify(password: password, against: account?.password ?? dummy) && account != nil
                    results.post(.verified(connection: connection, requestID: requestID, name: name, account: account, ok: ok))
                }
            }
        }
    }

    private static func runStore(store: Store, jobs: WorkQueue<StoreBatch>, results: CompletionQueue<StoreBatchResult>) {
        while let batches = jobs.popAll() {
            for batch in batches {
                let start = Clock.monotonicNs()
                let outcome: Result<[WriteResult], StoreErrorBox>
                do {
                    outcome = .success(try store.apply(batch.ops))
                } catch {
                    outcome = .failure(StoreErrorBox(description: "\(error)"))
                }
                results.post(StoreBatchResult(batch: batch, results: outcome, commitNanos: Clock.monotonicNs() - start))
            }
        }
    }

    /// Stops the threads after they finished what was queued.
    func shutdown() {
        hashJobs.close()
        storeJobs.close()
        for thread in threads { thread.join() }
        threads.removeAll()
    }
}
