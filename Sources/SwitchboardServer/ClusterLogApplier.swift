// The cluster log's applier: one helper thread of its own that decodes log entries (WriteOpCodec) and applies
// them to the local replica (Store.applyLogEntries), many entries per LMDB write transaction, and posts what it
// applied back to the loop through a CompletionQueue (eventfd). It follows Workers.swift: immutable jobs in,
// immutable results out, nothing shared with the loop but the two queues and the Store.
// Invariants: entries are applied in the order they were queued, each exactly once: an entry at or below the
// replica's applied sequence is skipped (a redelivery, or one applied before a restart). The first entry that
// does not decode, or any store error, stops the applier for good: it posts what it applied before that entry,
// then the failure, and applies nothing more (a replica that skipped an entry would silently differ from the
// others).
import SwitchboardIO
import SwitchboardStore

struct ApplyJob: Sendable {
    var seq: UInt64
    var msgID: String?
    var node: String?
    var payload: [UInt8]
    /// Where to acknowledge the entry once applied, and the consumer generation it came from.
    var ackReply: String
    var generation: UInt64
}

struct AppliedJob: Sendable {
    var entry: Store.AppliedLogEntry
    var msgID: String?
    var ackReply: String
    var generation: UInt64
    var payloadBytes: Int
}

enum ApplyOutcome: Sendable {
    case applied([AppliedJob], transactionNanos: UInt64)
    /// The applier stopped at entry `seq`; `skipped` counts entries dropped (already applied ones excluded).
    case stopped(seq: UInt64, reason: String, droppedBytes: Int)
}

final class ClusterLogApplier: @unchecked Sendable {
    let jobs = WorkQueue<ApplyJob>()
    let outcomes: CompletionQueue<ApplyOutcome>
    private var thread: HelperThread?

    init(store: Store, appliedSeq: UInt64, maxEntriesPerTransaction: Int) throws {
        outcomes = try CompletionQueue()
        let jobs = self.jobs, outcomes = self.outcomes
        thread = try HelperThread {
            ClusterLogApplier.run(store: store, appliedSeq: appliedSeq, maxPerTransaction: maxEntriesPerTransaction,
                                  jobs: jobs, outcomes: outcomes)
        }
    }

    /// Applies what is queued, then stops the thread.
    func shutdown() {
        jobs.close()
        thread?.join()
        thread = nil
    }

    private static func run(store: Store, appliedSeq: UInt64, maxPerTransaction: Int, jobs: WorkQueue<ApplyJob>,
                            outcomes: CompletionQueue<ApplyOutcome>) {
        var applied = appliedSeq
        var stopped = false
        while let batch = jobs.popAll() {
            if stopped { continue }
            var start = 0
            while start < batch.count && !stopped {
                let chunk = batch[start..<min(batch.count, start + maxPerTransaction)]
                start += chunk.count
                var entries: [Store.LogEntry] = []
                var kept: [ApplyJob] = []
                var failure: (seq: UInt64, reason: String)?
                for job in chunk where job.seq > applied {
                    if let last = kept.last, job.seq <= last.seq { continue }  // queued twice: keep the first
                    do {
                        entries.append(Store.LogEntry(seq: job.seq, ops: try WriteOpCodec.decode(job.payload)))
                        kept.append(job)
                    } catch {
                        failure = (job.seq, "log entry \(job.seq) (id \(job.msgID ?? "none"), from node "
                                   + "\(job.node ?? "unknown")) does not decode: \(error)")
                        break
                    }
                }
                if !entries.isEmpty {
                    let (done, storeFailure) = apply(entries, kept, store)
                    if let last = done.last { applied = last.job.entry.seq }
                    if !done.isEmpty || storeFailure == nil {
                        outcomes.post(.applied(done.map(\.job), transactionNanos: done.first?.nanos ?? 0))
                    }
                    if let storeFailure { failure = storeFailure }
                }
                if let failure {
                    stopped = true
                    let dropped = batch.filter { $0.seq >= failure.seq }.reduce(0) { $0 + $1.payload.count }
                    outcomes.post(.stopped(seq: failure.seq, reason: failure.reason, droppedBytes: dropped))
                }
            }
        }
    }

    /// All entries in one transaction; if that fails, one by one up to the entry that fails (so the replica
    /// keeps every entry before it and the error names the entry).
    private static func apply(_ entries: [Store.LogEntry], _ jobs: [ApplyJob],
                              _ store: Store) -> ([(job: AppliedJob, nanos: UInt64)], (UInt64, String)?) {
        func wrap(_ applied: [Store.AppliedLogEntry], _ from: Int, _ nanos: UInt64) -> [(job: AppliedJob, nanos: UInt64)] {
            applied.enumerated().map { offset, entry in
                let job = jobs[from + offset]
                return (AppliedJob(entry: entry, msgID: job.msgID, ackReply: job.ackReply, generation: job.generation,
                                   payloadBytes: job.payload.count), nanos)
            }
        }
        let started = Clock.monotonicNs()
        do {
            let applied = try store.applyLogEntries(entries)
            return (wrap(applied, 0, Clock.monotonicNs() - started), nil)
        } catch {
            guard entries.count > 1 else {
                return ([], (entries[0].seq, "applying log entry \(entries[0].seq) to the local store failed: \(error)"))
            }
        }
        var done: [(job: AppliedJob, nanos: UInt64)] = []
        for (index, entry) in entries.enumerated() {
            let one = Clock.monotonicNs()
            do {
                done += wrap(try store.applyLogEntries([entry]), index, Clock.monotonicNs() - one)
            } catch {
                return (done, (entry.seq, "applying log entry \(entry.seq) to the local store failed: \(error)"))
            }
        }
        return (done, nil)
    }
}
