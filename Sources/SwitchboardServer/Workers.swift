// Work that must never run on the loop thread: PBKDF2 hashing (tens of milliseconds by design) and
// LMDB write transactions (each commit fsyncs). Each kind has its own queue and thread(s); results
// come back through a CompletionQueue whose eventfd wakes the loop. Workers get immutable items and
// never touch a connection. The store thread reports its liveness (`storeHealth`) for /healthz: whether
// it runs, and since when its current commit has been running.
import Glibc
import SwitchboardIO
import SwitchboardSession
import SwitchboardStore

final class Workers: @unchecked Sendable {
    let hashJobs = WorkQueue<HashJob>()
    let hashResults: CompletionQueue<HashResult>
    let storeJobs = WorkQueue<StoreBatch>()
    let storeResults: CompletionQueue<StoreBatchResult>
    let storeHealth = StoreThreadHealth()
    private var threads: [HelperThread] = []

    init(store: Store, hashThreads: Int) throws {
        hashResults = try CompletionQueue()
        storeResults = try CompletionQueue()
        let hashJobs = self.hashJobs, hashResults = self.hashResults
        for _ in 0..<max(1, hashThreads) {
            threads.append(try HelperThread { Workers.runHashing(jobs: hashJobs, results: hashResults) })
        }
        let storeJobs = self.storeJobs, storeResults = self.storeResults, health = storeHealth
        threads.append(try HelperThread {
            Workers.runStore(store: store, jobs: storeJobs, results: storeResults, health: health)
            health.update { $0.running = false }
        })
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
                case .hashForAdmin(let token, let password, let iterations):
                    results.post(.hashedForAdmin(token: token, hash: PasswordHasher.hash(password: password, iterations: iterations)))
                }
            }
        }
    }

    private static func runStore(store: Store, jobs: WorkQueue<StoreBatch>, results: CompletionQueue<StoreBatchResult>,
                                 health: StoreThreadHealth) {
        while let batches = jobs.popAll() {
            if health.state.stopRequested { return }
            for batch in batches {
                let start = Clock.monotonicNs()
                let delayMs = health.update { state -> UInt32 in
                    state.busySinceNs = start
                    defer { state.delayNextCommitMsForTesting = 0 }
                    return state.delayNextCommitMsForTesting
                }
                if delayMs > 0 { usleep(delayMs * 1000) }
                defer { health.update { $0.busySinceNs = 0; $0.commits &+= 1 } }
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

    /// Test hook: the store thread exits at its next wake-up (woken now by an empty batch that never
    /// reaches the core), as if it had died; /healthz then answers 503. Nothing queued later is committed.
    func stopStoreThreadForTesting() {
        storeHealth.update { $0.stopRequested = true }
        storeJobs.push(StoreBatch())
    }

    /// Stops the threads after they finished what was queued.
    func shutdown() {
        hashJobs.close()
        storeJobs.close()
        for thread in threads { thread.join() }
        threads.removeAll()
    }
}

/// The store thread's liveness, written by it (twice per batch) and read by /healthz on the loop.
final class StoreThreadHealth: @unchecked Sendable {
    struct State {
        var running = true
        /// Monotonic ns at which the running commit began; 0 while waiting for work.
        var busySinceNs: UInt64 = 0
        var commits: UInt64 = 0
        var stopRequested = false
        /// Test hook: the next commit sleeps this long first (a stuck disk, as /healthz sees it).
        var delayNextCommitMsForTesting: UInt32 = 0
    }
    private let lock = Lock()
    private var current = State()

    var state: State { lock.withLock { current } }
    @discardableResult
    func update<R>(_ change: (inout State) -> R) -> R { lock.withLock { change(&current) } }
}
