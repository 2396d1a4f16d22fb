// What the cluster log is told (ClusterLogConfiguration) and what it tells (ClusterLogStatus, counters). The
// log itself is ClusterLog.swift; its design is in Sources/SwitchboardCluster/README.md, "The replicated log".
import SwitchboardIO
import SwitchboardStore

public struct ClusterLogConfiguration: Sendable, Equatable {
    /// The JetStream stream that holds the log, and its one subject.
    public var stream = "SB_LOG"
    public var subject = "sb.log"
    /// Stream replicas: 3 for a three-server NATS cluster (survives one server killed); 1 for a single server.
    public var replicas = 3
    /// A resend with the same Nats-Msg-Id within this window is acknowledged as a duplicate and stored once.
    /// Must exceed `commitTimeoutMs` (resends happen only within it).
    public var duplicateWindowMs: UInt64 = 120_000
    /// A batch not durable and applied locally within this is completed with "cluster store unavailable".
    public var commitTimeoutMs: UInt64 = 15_000
    /// One publish waits this long for its PubAck before it is resent.
    public var publishTimeoutMs: UInt64 = 2_000
    /// Stream and consumer API calls wait this long for an answer.
    public var apiTimeoutMs: UInt64 = 2_000
    /// Back-off between resends of an entry (and between attempts to set up the feed): base·2^k up to the cap.
    public var retryBaseDelayMs: UInt64 = 50
    public var retryMaxDelayMs: UInt64 = 1_000
    /// Bounds on what waits for the log (submitted, not yet completed): beyond either, `submit` fails the batch
    /// at once ("cluster store overloaded").
    public var maxPendingBytes = 32 << 20
    public var maxPendingBatches = 4_096
    /// Largest log entry (encoded ops plus headers), within the NATS server's max_payload; a batch larger than
    /// this is split into several entries, and a single op larger than it fails its batch.
    public var maxEntryBytes = 1 << 20
    /// Entries the server pushes before it waits for our acknowledgement (each entry is acknowledged once
    /// applied): a slow applier back-pressures the server.
    public var maxAckPending = 128
    /// Bound on the bytes of entries received and not yet applied. Beyond it, the feed stops taking entries and
    /// resumes (a new consumer from the next entry) once the applier is below half of it.
    public var maxApplyQueueBytes = 16 << 20
    /// The most entries the applier commits in one LMDB transaction (one fsync for all of them).
    public var maxEntriesPerTransaction = 256
    /// The server's idle heartbeat on the feed; `missedHeartbeats` intervals without a message or heartbeat
    /// mean the consumer is gone (its server died): it is made again from the next entry.
    public var heartbeatMs: UInt64 = 1_000
    public var missedHeartbeats: UInt64 = 3
    /// Timer tokens on the shared loop: `timerTokenBase + 0...7`; the loop's owner routes them to
    /// `ClusterLog.handleTimer(_:)`.
    public var timerTokenBase: UInt64 = 0x434C_4F47_0000_0000

    public init() {}

    func validate() throws(ClusterLogError) {
        func check(_ ok: Bool, _ what: String) throws(ClusterLogError) {
            if !ok { throw .invalidConfiguration(what) }
        }
        try check(replicas >= 1 && replicas <= 5, "replicas must be 1...5")
        try check(commitTimeoutMs >= 100, "commitTimeoutMs must be at least 100")
        try check(duplicateWindowMs > commitTimeoutMs + publishTimeoutMs,
                  "duplicateWindowMs must exceed commitTimeoutMs + publishTimeoutMs (resends must be recognised)")
        try check(publishTimeoutMs > 0 && apiTimeoutMs > 0, "timeouts must be positive")
        try check(retryBaseDelayMs > 0 && retryMaxDelayMs >= retryBaseDelayMs, "retry delays must be positive, cap >= base")
        try check(maxPendingBytes > 0 && maxPendingBatches > 0, "pending bounds must be positive")
        try check(maxEntryBytes >= 1024, "maxEntryBytes must be at least 1024")
        try check(maxAckPending >= 1 && maxEntriesPerTransaction >= 1, "maxAckPending and maxEntriesPerTransaction must be positive")
        try check(maxApplyQueueBytes >= maxEntryBytes, "maxApplyQueueBytes must hold at least one entry")
        try check(heartbeatMs >= 100 && missedHeartbeats >= 2, "heartbeatMs >= 100 and missedHeartbeats >= 2")
        try check(!stream.isEmpty && !stream.contains(where: { ".*> ".contains($0) }), "stream name must be one token")
    }
}

public enum ClusterLogError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidConfiguration(String)
    case store(String)

    public var description: String {
        switch self {
        case .invalidConfiguration(let why): return "invalid cluster log configuration: \(why)"
        case .store(let why): return "cluster log: cannot read the replica's applied sequence: \(why)"
        }
    }
}

public enum ClusterLogState: Equatable, Sendable, CustomStringConvertible {
    /// `start()` not called yet, or the stream is being checked.
    case starting
    /// Following the log, not yet applied up to the stream's last entry seen at start.
    case catchingUp
    case ready
    /// Transient: NATS disconnected, the stream has no leader, or the feed is being set up again. Commits wait
    /// (up to `commitTimeoutMs`) and recover on their own.
    case unavailable(String)
    /// Permanent until an operator acts: this replica refused to go on (an entry that does not decode, a store
    /// error, a stream that lost entries it needs, a stream behind it). Nothing more is applied; commits fail.
    case stopped(String)

    public var description: String {
        switch self {
        case .starting: return "starting"
        case .catchingUp: return "catching up"
        case .ready: return "ready"
        case .unavailable(let why): return "unavailable: \(why)"
        case .stopped(let why): return "stopped: \(why)"
        }
    }
}

public struct ClusterLogCounters: Equatable, Sendable {
    public var batchesSubmitted: UInt64 = 0
    public var batchesCommitted: UInt64 = 0
    /// Completed with a failure: timed out, refused at submit, or the replica stopped.
    public var batchesFailed: UInt64 = 0
    /// Of those, refused by `submit` because a bound was reached or an op was too large.
    public var batchesRefused: UInt64 = 0
    public var batchesTimedOut: UInt64 = 0
    public var entriesPublished: UInt64 = 0
    public var publishResends: UInt64 = 0
    /// PubAcks that said "duplicate" (a resend of an entry already stored).
    public var duplicateAcks: UInt64 = 0
    public var entriesApplied: UInt64 = 0
    /// Entries of other nodes (or ours that we had given up on) applied here.
    public var foreignEntriesApplied: UInt64 = 0
    public var consumersCreated: UInt64 = 0
    /// Times the feed was set up again: a gap, a missed heartbeat, a reconnect, the apply-queue bound.
    public var feedRestarts: UInt64 = 0
    /// Times the apply-queue byte bound paused the feed.
    public var feedPauses: UInt64 = 0

    public init() {}
}

public struct ClusterLogStatus: Sendable, CustomStringConvertible {
    public var state: ClusterLogState
    /// Last stream sequence applied to the local replica.
    public var appliedSeq: UInt64
    /// Highest sequence any of our PubAcks carried.
    public var lastPublishedSeq: UInt64
    /// Highest stream sequence known to exist (from start, PubAcks, deliveries, heartbeats).
    public var streamLastSeq: UInt64
    /// streamLastSeq - appliedSeq.
    public var lag: UInt64
    public var pendingBatches: Int
    public var pendingBytes: Int
    /// Entries received from the feed and not yet applied.
    public var applyQueueEntries: Int
    public var applyQueueBytes: Int
    public var counters: ClusterLogCounters

    public var description: String {
        "\(state), applied \(appliedSeq), stream last \(streamLastSeq) (lag \(lag)), \(pendingBatches) batches / "
            + "\(pendingBytes) bytes pending"
    }
}

/// Keeps what a node is told of the log in the log's order. Our entries are reported inside onCommitted, which
/// waits for the whole batch and for every batch submitted before it; another node's entry applied after one of
/// ours that is not reported yet waits here until ours is (the core applies contact changes and mail notices from
/// both callbacks to its memory: told out of order, it would hold a state the store does not). Held entries are
/// bounded by the commit timeout: a batch of ours is delivered (committed or failed) within it.
struct LogOrderGate {
    /// Log seqs of our entries applied here whose batch is not delivered yet, ascending (the applier applies in log
    /// order), from `head` on.
    private var own: [UInt64] = []
    private var head = 0
    /// Other nodes' entries applied after one in `own`, in log order, from `heldHead` on.
    private var held: [Store.AppliedLogEntry] = []
    private var heldHead = 0

    var heldCount: Int { held.count - heldHead }
    var isOpen: Bool { head == own.count && heldHead == held.count }

    mutating func ownApplied(_ seq: UInt64) { own.append(seq) }

    /// Another node's entry: true when it may be reported now, else it is held.
    mutating func foreign(_ entry: Store.AppliedLogEntry) -> Bool {
        if isOpen { return true }
        held.append(entry)
        return false
    }

    /// The held entries that come before log seq `seq` in the log (report them before anything at `seq`).
    mutating func release(before seq: UInt64) -> ArraySlice<Store.AppliedLogEntry> {
        let start = heldHead
        while heldHead < held.count, held[heldHead].seq < seq { heldHead += 1 }
        let released = held[start..<heldHead]
        return released
    }

    /// The held entries now reportable: those before our oldest entry still waiting (all when none waits).
    mutating func releaseReady() -> ArraySlice<Store.AppliedLogEntry> {
        release(before: head < own.count ? own[head] : .max)
    }

    /// Our entry at `seq` was reported (its batch delivered).
    mutating func ownDelivered(_ seq: UInt64) {
        if head < own.count, own[head] == seq {
            head += 1
        } else if let index = own[head...].firstIndex(of: seq) {
            own.remove(at: index)
        }
        if head == own.count { own.removeAll(keepingCapacity: true); head = 0 } else if head > 64, head * 2 > own.count {
            own.removeFirst(head); head = 0
        }
    }

    /// Drops what `release` handed out (call after reporting it).
    mutating func compactHeld() {
        if heldHead == held.count { held.removeAll(keepingCapacity: held.count <= 1_024); heldHead = 0 } else if heldHead > 64, heldHead * 2 > held.count {
            held.removeFirst(heldHead); heldHead = 0
        }
    }
}
