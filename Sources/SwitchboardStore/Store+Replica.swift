// The store as a replica of the cluster log (issue 12): every node keeps its own LMDB, and every write of the
// cluster is an entry of one replicated JetStream stream that every node applies, in stream order, with the same
// deterministic code as a single node (`perform`). The entry's stream sequence is written in the entry's own
// transaction ("cluster_applied_seq" in meta), so after a crash the replica resumes exactly after the last entry
// it applied: an entry lands with its sequence or not at all.
//
// Invariants:
// - A replica (`Options.clusterReplica`) is written only through `apply(_:logSeq:)` / `applyLogEntries`: the plain
//   `apply` and `createAccountsBulk` refuse, since a write outside the log would make this replica differ.
// - Entries are applied with strictly increasing sequences above the applied one; anything else is refused
//   before a byte is written (the caller skips entries at or below `clusterAppliedSeq()`).
// - Applying is deterministic: the same entries in the same order give the same records and results on every
//   replica. No clock is read (times come inside the ops), user ids come from the store's own counter, and the one
//   place where two nodes can disagree, the mail seq they chose for one recipient, is settled here: a `putMail`
//   whose seq is not above the mailbox's high-water mark gets high-water + 1 (the single-node store answers
//   `invalidRequest`). Running out of room is not a result on a replica but an error: a single node answers
//   `storageFull` for the ops that need room and applies the others, which would make a replica with a smaller
//   map or disk differ from the rest. So a full replica stops (the error is thrown, nothing of the entries is
//   written) and its operator makes room; the other replicas go on.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CLMDB

extension Store {
    public struct Options: Sendable, Equatable {
        /// How a commit reaches the disk.
        public enum Sync: Sendable, Equatable {
            /// LMDB's default: data and meta page fsynced at every commit (two fsyncs).
            case full
            /// MDB_NOMETASYNC: the data pages are fsynced at every commit, the meta page is not (it goes with
            /// the next commit's fsync). A power loss may undo the last committed transaction but keeps the
            /// file consistent. One fsync per commit.
            case noMetaSync
            /// MDB_NOSYNC: nothing is fsynced by a commit; the kernel writes it back when it likes. A process
            /// crash (kill -9) loses nothing (the page cache survives it), but a power loss or kernel crash may
            /// lose recent commits *or corrupt the file* (LMDB may have written the meta page before the data
            /// pages it points to). Only for a replica that can be rebuilt from another node's backup.
            case noSync
        }

        /// A replica of the cluster log: written only through `apply(_:logSeq:)`, renumbers colliding mail
        /// seqs, and throws instead of answering `storageFull` (see the file header).
        public var clusterReplica: Bool
        public var sync: Sync

        public init(clusterReplica: Bool = false, sync: Sync = .full) {
            self.clusterReplica = clusterReplica
            self.sync = sync
        }

        /// What cluster mode opens: a replica with one fsync per commit (`noMetaSync`). The log is the source of
        /// truth and a replica replays from its applied seq, so a commit undone by a power loss is applied again
        /// from the log; unlike `noSync`, a power loss cannot corrupt the file, which would need a restore from
        /// another node. The applier commits many entries per transaction, so the fsync is shared (figures in
        /// Sources/SwitchboardCluster/README.md).
        public static let clusterReplica = Options(clusterReplica: true, sync: .noMetaSync)
    }

    /// One entry of the cluster log: its stream sequence and its ops.
    public struct LogEntry: Sendable, Equatable {
        public var seq: UInt64
        public var ops: [WriteOp]

        public init(seq: UInt64, ops: [WriteOp]) {
            self.seq = seq
            self.ops = ops
        }
    }

    /// An applied entry: `ops` as they were applied (a renumbered `putMail` carries the seq it was stored
    /// under), and one result per op.
    public struct AppliedLogEntry: Sendable, Equatable {
        public var seq: UInt64
        public var ops: [WriteOp]
        public var results: [WriteResult]
        public init(seq: UInt64, ops: [WriteOp], results: [WriteResult]) { self.seq = seq; self.ops = ops; self.results = results }
    }

    /// The sequence of the last log entry applied to this store; 0 if none ever was.
    public func clusterAppliedSeq() throws -> UInt64 {
        try withReadTransaction { txn in try appliedSeq(txn) }
    }

    /// Applies one log entry in one write transaction, which also records `logSeq` as the applied sequence.
    /// `logSeq` must be above `clusterAppliedSeq()` (the caller skips entries it already applied). Only on a
    /// store opened with `Options.clusterReplica`.
    public func apply(_ ops: [WriteOp], logSeq: UInt64) throws -> [WriteResult] {
        try applyLogEntries([LogEntry(seq: logSeq, ops: ops)])[0].results
    }

    /// Applies several consecutive log entries in one write transaction (one commit, so one fsync, for all):
    /// each entry's ops in order, then the last entry's sequence as the applied sequence. Sequences must be
    /// strictly increasing and above `clusterAppliedSeq()`. Any error (a full map or disk included) aborts the
    /// transaction: nothing of any entry is written and the applied sequence stays where it was.
    public func applyLogEntries(_ entries: [LogEntry]) throws -> [AppliedLogEntry] {
        guard options.clusterReplica else {
            throw StoreError.invalidArgument("log entries are applied only to a store opened as a cluster replica")
        }
        guard let last = entries.last else { return [] }
        for (previous, next) in zip(entries, entries.dropFirst()) where next.seq <= previous.seq {
            throw StoreError.invalidArgument("log entry \(next.seq) follows entry \(previous.seq): sequences must increase")
        }
        return try withWriteTransaction { txn in
            let applied = try appliedSeq(txn)
            guard entries[0].seq > applied else {
                throw StoreError.invalidArgument("log entry \(entries[0].seq) is not above the applied sequence \(applied)")
            }
            var out: [AppliedLogEntry] = []
            out.reserveCapacity(entries.count)
            for entry in entries {
                var ops = entry.ops
                var results: [WriteResult] = []
                results.reserveCapacity(ops.count)
                for index in ops.indices {
                    let result = try perform(ops[index], txn)
                    if case .putMail(var mail) = ops[index], result == .mailStored {
                        // Its seq may have been renumbered: the high-water mark is now the seq it was stored under.
                        let stored = try mailHighWater(mail.recipient, txn)
                        if stored != mail.seq {
                            mail.seq = stored
                            ops[index] = .putMail(mail)
                        }
                    }
                    results.append(result)
                }
                out.append(AppliedLogEntry(seq: entry.seq, ops: ops, results: results))
            }
            try txn.put(databases.meta, RecordKey.clusterAppliedSeq, MetaLayout.encode(last.seq))
            return out
        }
    }

    func refuseIfReplica() throws {
        if options.clusterReplica {
            throw StoreError.invalidArgument("this store is a cluster replica: its writes come from the cluster log only")
        }
        if holdsClusterLog {
            throw StoreError.invalidArgument("this data folder is a cluster node's replica (it applied the cluster log up to entry \((try? clusterAppliedSeq()) ?? 0)): a direct write would make it differ from the other nodes; write through a running node (switchboard users add/passwd/delete) instead")
        }
    }

    private func appliedSeq(_ txn: LMDBTransaction) throws -> UInt64 {
        try txn.withValue(databases.meta, RecordKey.clusterAppliedSeq) {
            try MetaLayout.decodeU64($0, "cluster_applied_seq")
        } ?? 0
    }

    /// Every record of every database, raw, in key order: for tests that compare replicas byte for byte.
    @_spi(Testing)
    public func rawContentsForTesting() throws -> [(database: String, key: [UInt8], value: [UInt8])] {
        try withReadTransaction { txn in
            var out: [(database: String, key: [UInt8], value: [UInt8])] = []
            for database in [databases.meta, databases.accounts, databases.users, databases.contacts, databases.mail,
                             databases.dedupe, databases.dedupeWindows] {
                try txn.scan(database, from: nil) { key, value in
                    out.append((database.name, Array(key), Array(value)))
                    return .proceed
                }
            }
            return out
        }
    }
}
