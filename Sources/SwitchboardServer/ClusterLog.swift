// The cluster mode's store: state machine replication through one JetStream stream (issue 12). Every node keeps
// its own LMDB (`Store`, opened with `Store.Options.clusterReplica`) as a replica; every write batch of the
// server core is published as an entry of the stream `SB_LOG` (replicas 3); every node applies every entry of
// the stream, in stream order, with the deterministic `Store.applyLogEntries`. A batch of ours completes when
// its entries are durable in the stream and applied here, with the real results of that apply (so nameTaken,
// duplicateMail and contact changes mean the same as on one node: the log orders every write of the cluster).
//
// This file: the object, its life cycle, timers, status, and the commit side (submit, publish, resend, time
// out, complete in order). The feed (following the stream with a push consumer, catch-up, gap and failure
// handling) is ClusterLog+Feed.swift; the applier thread is ClusterLogApplier.swift; the design and its figures
// are in Sources/SwitchboardCluster/README.md, "The replicated log (ClusterLog)".
//
// Invariants:
// - Runs on the loop thread and never blocks it; LMDB write transactions run on the applier's own thread.
// - Batches complete (onCommitted) exactly once each and in submission order, never from inside `submit`.
// - Every entry applied locally is reported exactly once: inside a successful onCommitted (our batch), or through
//   onForeignApplied (another node's, or ours whose batch had already failed or that a previous run of this node
//   published).
// - A resend carries the same Nats-Msg-Id, only within commitTimeoutMs (< the stream's duplicate window), so an
//   entry is stored at most once however often it is sent.
// - What waits for the log is bounded (maxPendingBytes, maxPendingBatches); the applier's queue is bounded by the
//   consumer's max_ack_pending and by maxApplyQueueBytes.
import Glibc
import Logging
import SwitchboardCluster
import SwitchboardIO
import SwitchboardSession
import SwitchboardStore

public final class ClusterLog {
    /// Once, when the replica has applied everything up to the stream's last sequence seen at start.
    public var onReady: (() -> Void)?
    /// Our batch: durable and applied locally (results as applied), or failed.
    public var onCommitted: ((StoreBatchResult) -> Void)?
    /// An entry we did not commit through `onCommitted`, after its local apply: ops as applied (a renumbered
    /// putMail carries its stored seq) and their results.
    public var onForeignApplied: (([WriteOp], [WriteResult]) -> Void)?

    let loop: EventLoop
    let nats: NATSConnection
    let api: JetStream
    let publisher: JetStream
    let store: Store
    let node: String
    let configuration: ClusterLogConfiguration
    var logger: Logger
    /// Unique per process start: msg ids of a restarted node never repeat its earlier ones.
    let epoch: String
    let applier: ClusterLogApplier

    struct Entry {
        let msgID: String
        let payload: [UInt8]
        let opCount: Int
        var inFlight = false
        var attempts = 0
        /// Monotonic ms of the next resend; 0 when none is due.
        var retryAt: UInt64 = 0
        var ackedSeq: UInt64?
        var applied: Store.AppliedLogEntry?
        var lastError: String?
    }

    struct PendingBatch {
        let id: UInt64
        var accepted = false
        var batch: StoreBatch
        var entries: [Entry]
        let submittedNs: UInt64
        let deadline: UInt64
        let bytes: Int
        var failure: String?
        var isDone: Bool { failure != nil || entries.allSatisfy { $0.applied != nil } }
    }

    var pending: [PendingBatch] = []
    var pendingHead = 0
    var nextBatchID: UInt64 = 1
    var entryOwners: [String: (batch: UInt64, entry: Int)] = [:]
    var nextEntryNumber: UInt64 = 1
    var pendingBytes = 0
    /// Keeps our entries and other nodes' in log order when they are reported (see LogOrderGate).
    var order = LogOrderGate()
    /// Batches accepted (publishing) and not yet completed; refused ones wait in `pending` only for their turn.
    var acceptedBatches = 0
    var lastPublishedSeq: UInt64 = 0
    var publishTrouble: String?
    var publishTroubleSince: UInt64 = 0
    var counters = ClusterLogCounters()
    var closed = false
    /// The stream was created or updated by `start()`: publishes can be answered.
    var streamEnsured = false

    // Feed state (ClusterLog+Feed.swift).
    enum FeedState: Equatable { case idle, preparing, creating, active, waiting, paused, stopped }
    var feed = FeedState.idle
    var generation: UInt64 = 0
    var deliverSid: UInt64?
    var consumerName: String?
    var nextSeq: UInt64
    var appliedSeq: UInt64
    var lastConsumerSeq: UInt64 = 0
    var freshStart: UInt64?
    var lastFeedActivity: UInt64 = 0
    var feedAttempts = 0
    var feedRetryAt: UInt64 = 0
    var feedRetryStage = FeedState.preparing
    var feedError: String?
    var readyTarget: UInt64?
    var announcedReady = false
    var startedAtMs: UInt64 = 0
    var stoppedReason: String?
    var queuedEntries = 0
    var queuedBytes = 0
    var streamLastSeq: UInt64 = 0

    var deliverToken: UInt64 { configuration.timerTokenBase }
    var retryToken: UInt64 { configuration.timerTokenBase + 1 }
    var deadlineToken: UInt64 { configuration.timerTokenBase + 2 }
    var watchdogToken: UInt64 { configuration.timerTokenBase + 3 }
    var feedRetryToken: UInt64 { configuration.timerTokenBase + 4 }

    /// `store` must be opened with `Store.Options.clusterReplica`. Chains itself into `nats.onEvent` (calling
    /// the handler set before, if any) to set the feed up again after a reconnect. The loop's owner routes timer
    /// tokens `configuration.timerTokenBase + 0...7` to `handleTimer(_:)`.
    public init(loop: EventLoop, nats: NATSConnection, store: Store, node: String,
                configuration: ClusterLogConfiguration, logger: Logger) throws {
        try configuration.validate()
        guard store.options.clusterReplica else {
            throw ClusterLogError.invalidConfiguration("the store must be opened as a cluster replica (Store.Options.clusterReplica)")
        }
        guard !node.isEmpty, node.utf8.count <= 64, !node.utf8.contains(where: { $0 <= 0x20 || $0 >= 0x7F }) else {
            throw ClusterLogError.invalidConfiguration("node name must be 1-64 printable ASCII characters without spaces")
        }
        self.loop = loop
        self.nats = nats
        self.store = store
        self.node = node
        self.configuration = configuration
        self.logger = logger
        api = JetStream(connection: nats, timeoutMs: configuration.apiTimeoutMs)
        publisher = JetStream(connection: nats, timeoutMs: configuration.publishTimeoutMs)
        var random = SplitMix64(seed: Clock.monotonicNs() ^ UInt64(getpid()) << 32 ^ Clock.wallMs())
        epoch = String(Clock.wallMs(), radix: 36) + String(random.next() & 0xFFFFFF, radix: 36)
        do {
            appliedSeq = try store.clusterAppliedSeq()
        } catch {
            throw ClusterLogError.store("\(error)")
        }
        nextSeq = appliedSeq + 1
        streamLastSeq = appliedSeq
        applier = try ClusterLogApplier(store: store, appliedSeq: appliedSeq,
                                        maxEntriesPerTransaction: configuration.maxEntriesPerTransaction)
        try applier.outcomes.attach(to: loop) { [unowned self] in self.applierReported($0) }
        let previous = nats.onEvent
        nats.onEvent = { [weak self] event in
            previous?(event)
            self?.natsEvent(event)
        }
    }

    deinit { close() }

    /// Ensures the stream (create, or update to this configuration), checks this replica against it, then
    /// catches up and follows it.
    public func start() {
        guard feed == .idle, !closed else { return }
        startedAtMs = loop.now
        logger.info("cluster log starting", metadata: ["node": "\(node)", "stream": "\(configuration.stream)",
                                                      "applied": "\(appliedSeq)", "replicas": "\(configuration.replicas)"])
        prepareStream()
    }

    /// Routes a loop timer token; false when it is not this log's.
    @discardableResult
    public func handleTimer(_ token: UInt64) -> Bool {
        guard token >= configuration.timerTokenBase, token < configuration.timerTokenBase + 8 else { return false }
        guard !closed else { return true }
        switch token - configuration.timerTokenBase {
        case 0: deliverCompleted()
        case 1: resendDue()
        case 2: expireBatches()
        case 3: watchdog()
        case 4: feedRetryDue()
        default: break
        }
        return true
    }

    public var status: ClusterLogStatus {
        let known = max(streamLastSeq, lastPublishedSeq, appliedSeq)
        return ClusterLogStatus(state: state, appliedSeq: appliedSeq, lastPublishedSeq: lastPublishedSeq,
                                streamLastSeq: known, lag: known - appliedSeq, pendingBatches: pending.count - pendingHead,
                                pendingBytes: pendingBytes, applyQueueEntries: queuedEntries, applyQueueBytes: queuedBytes,
                                counters: counters)
    }

    var state: ClusterLogState {
        if let stoppedReason { return .stopped(stoppedReason) }
        if closed { return .stopped("closed") }
        if feed == .idle || feed == .preparing && readyTarget == nil && feedError == nil { return .starting }
        if !nats.isConnected { return .unavailable("not connected to NATS") }
        if let trouble = unacknowledgedError { return .unavailable("publishing to the log: \(trouble)") }
        if feed != .active, let feedError { return .unavailable("following the log: \(feedError)") }
        if feed != .active && announcedReady { return .unavailable("following the log: setting up a new consumer") }
        return announcedReady ? .ready : .catchingUp
    }

    /// The last error of the oldest entry still waiting for its PubAck after a failed attempt, if any.
    var unacknowledgedError: String? {
        for b in pendingHead..<pending.count where pending[b].failure == nil {
            for entry in pending[b].entries where entry.ackedSeq == nil && entry.applied == nil {
                if let error = entry.lastError { return error }
            }
        }
        return nil
    }

    /// Stops following, applies what was received, fails what is still pending ("cluster log closed", in order,
    /// through onCommitted), and stops the applier thread. Idempotent.
    public func close() {
        guard !closed else { return }
        closed = true
        dropConsumer()
        feed = .stopped
        applier.shutdown()
        applier.outcomes.drain()
        applier.outcomes.detach(from: loop)
        failAllPending("cluster log closed")
        deliverCompleted()
    }

    // MARK: - Commit side

    /// Publishes the batch (split into entries of at most maxEntryBytes) and completes it through onCommitted
    /// once it is durable and applied here, or with a failure: at once (in order) when a bound is reached or the
    /// replica stopped, after commitTimeoutMs when the log stays unavailable.
    public func submit(_ batch: StoreBatch) {
        let id = nextBatchID
        nextBatchID += 1
        counters.batchesSubmitted += 1
        var item = PendingBatch(id: id, batch: batch, entries: [], submittedNs: Clock.monotonicNs(),
                                deadline: loop.now + configuration.commitTimeoutMs, bytes: 0)
        if let stoppedReason {
            item.failure = "cluster store unavailable: this node's replica stopped: \(stoppedReason)"
        } else if closed {
            item.failure = "cluster store unavailable: the cluster log is closed"
        } else {
            switch makeEntries(batch.ops) {
            case .failure(let why):
                item.failure = why
                counters.batchesRefused += 1
            case .success(let entries):
                let bytes = entries.reduce(0) { $0 + $1.payload.count }
                let waiting = acceptedBatches
                if pendingBytes + bytes > configuration.maxPendingBytes || waiting >= configuration.maxPendingBatches {
                    item.failure = "cluster store overloaded: \(waiting) batches (\(pendingBytes) bytes) already wait for "
                        + "the cluster log (limits \(configuration.maxPendingBatches) batches, \(configuration.maxPendingBytes) bytes)"
                    counters.batchesRefused += 1
                } else {
                    item = PendingBatch(id: id, accepted: true, batch: batch, entries: entries,
                                        submittedNs: item.submittedNs, deadline: item.deadline, bytes: bytes)
                    pendingBytes += bytes
                    acceptedBatches += 1
                }
            }
        }
        pending.append(item)
        if item.failure != nil || item.entries.isEmpty {
            scheduleDelivery()
            return
        }
        for index in item.entries.indices {
            entryOwners[item.entries[index].msgID] = (id, index)
            if streamEnsured {
                publish(batch: id, entry: index)
            } else if let b = batchIndex(id) {
                // Published once the stream exists (`streamIsReady`): before, the subject has no responders.
                pending[b].entries[index].retryAt = .max
            }
        }
        loop.schedule(at: item.deadline, token: deadlineToken)
    }

    enum EntriesOutcome { case success([Entry]), failure(String) }

    /// Splits ops into entries whose payload (plus room for headers) fits maxEntryBytes and the server's
    /// max_payload.
    func makeEntries(_ ops: [WriteOp]) -> EntriesOutcome {
        let headerRoom = 256 + node.utf8.count * 2
        let limit = min(configuration.maxEntryBytes, nats.maxPayload) - headerRoom
        var entries: [Entry] = []
        var body: [UInt8] = []
        var count = 0
        var scratch: [UInt8] = []
        func close() {
            guard count > 0 else { return }
            let msgID = "\(node)-\(epoch)-\(nextEntryNumber)"
            nextEntryNumber += 1
            entries.append(Entry(msgID: msgID, payload: WriteOpCodec.assemble(count: count, encodedOps: body), opCount: count))
            body.removeAll(keepingCapacity: true)
            count = 0
        }
        for op in ops {
            scratch.removeAll(keepingCapacity: true)
            WriteOpCodec.append(op, to: &scratch)
            guard scratch.count + 11 <= limit else {
                return .failure("cluster store refused the batch: one write is \(scratch.count) bytes, more than a "
                                + "cluster log entry holds (\(limit) bytes: maxEntryBytes and the NATS server's max_payload)")
            }
            if body.count + scratch.count + 11 > limit { close() }
            body += scratch
            count += 1
        }
        close()
        return .success(entries)
    }

    func batchIndex(_ id: UInt64) -> Int? {
        guard pendingHead < pending.count else { return nil }
        let first = pending[pendingHead].id
        guard id >= first, id - first < UInt64(pending.count - pendingHead) else { return nil }
        return pendingHead + Int(id - first)
    }

    func publish(batch id: UInt64, entry: Int) {
        guard let b = batchIndex(id), pending[b].failure == nil, pending[b].entries[entry].applied == nil else { return }
        pending[b].entries[entry].inFlight = true
        pending[b].entries[entry].retryAt = 0
        pending[b].entries[entry].attempts += 1
        if pending[b].entries[entry].attempts > 1 { counters.publishResends += 1 } else { counters.entriesPublished += 1 }
        let msgID = pending[b].entries[entry].msgID
        var headers = NATSHeaders()
        try? headers.add("Sb-Node", node)
        publisher.publish(configuration.subject, payload: pending[b].entries[entry].payload, messageID: msgID,
                          headers: headers) { [weak self] result in
            self?.published(batch: id, entry: entry, result)
        }
    }

    func published(batch id: UInt64, entry: Int, _ result: Result<PubAck, JetStreamError>) {
        guard !closed, let b = batchIndex(id), pending[b].failure == nil else { return }
        pending[b].entries[entry].inFlight = false
        switch result {
        case .success(let ack):
            pending[b].entries[entry].ackedSeq = ack.sequence
            lastPublishedSeq = max(lastPublishedSeq, ack.sequence)
            if ack.duplicate { counters.duplicateAcks += 1 }
            if let trouble = publishTrouble {
                logger.notice("cluster log publishing again", metadata: [
                    "after ms": "\(loop.now - publishTroubleSince)", "last error": "\(trouble)"])
                publishTrouble = nil
            }
        case .failure(let error):
            guard pending[b].entries[entry].applied == nil else { return }  // seen in the feed: durable anyway
            pending[b].entries[entry].lastError = "\(error)"
            if publishTrouble == nil {
                publishTroubleSince = loop.now
                logger.warning("cluster log publish failed; resending with the same message id",
                               metadata: ["error": "\(error)", "transient": "\(error.isTransient)"])
            }
            publishTrouble = "\(error)"
            guard error.isTransient else {
                fail(index: b, "cluster store refused the write: \(error)")
                scheduleDelivery()
                return
            }
            let attempts = pending[b].entries[entry].attempts
            let delay = min(configuration.retryMaxDelayMs, configuration.retryBaseDelayMs << UInt64(min(attempts - 1, 20)))
            let at = loop.now + delay
            guard at < pending[b].deadline else { return }  // the deadline fails it
            pending[b].entries[entry].retryAt = at
            loop.schedule(at: at, token: retryToken)
        }
    }

    func resendDue() {
        let now = loop.now
        var due: [(UInt64, Int)] = []
        for b in pendingHead..<pending.count where pending[b].failure == nil {
            for (e, entry) in pending[b].entries.enumerated() where entry.retryAt != 0 && entry.retryAt <= now {
                due.append((pending[b].id, e))
            }
        }
        for (id, e) in due { publish(batch: id, entry: e) }
    }

    /// After a reconnect (or once the stream exists): resend what waits for its back-off now.
    func resendAllWaiting() {
        guard streamEnsured else { return }
        for b in pendingHead..<pending.count where pending[b].failure == nil {
            for e in pending[b].entries.indices where pending[b].entries[e].retryAt != 0 {
                pending[b].entries[e].retryAt = loop.now
            }
        }
        resendDue()
    }

    func expireBatches() {
        let now = loop.now
        var expired = false
        for b in pendingHead..<pending.count where pending[b].failure == nil && !pending[b].isDone && pending[b].deadline <= now {
            let entries = pending[b].entries
            let durable = entries.filter { $0.ackedSeq != nil || $0.applied != nil }.count
            let why: String
            if durable == entries.count {
                why = "cluster store unavailable: the write is durable in the cluster log but this node has not "
                    + "applied it within \(configuration.commitTimeoutMs) ms (\(state)); it will be applied when the feed recovers"
            } else {
                let last = entries.compactMap(\.lastError).last ?? "no answer"
                why = "cluster store unavailable: the cluster log did not acknowledge the write within "
                    + "\(configuration.commitTimeoutMs) ms (\(last))"
            }
            counters.batchesTimedOut += 1
            fail(index: b, why)
            expired = true
        }
        if expired {
            logger.error("cluster log commits timed out", metadata: ["state": "\(state)", "timed out so far": "\(counters.batchesTimedOut)"])
            scheduleDelivery()
        }
    }

    /// Marks a batch failed: its unapplied entries are no longer ours (if they show up in the feed they are
    /// foreign); the ones already applied are reported as foreign when it is delivered.
    func fail(index b: Int, _ why: String) {
        guard pending[b].failure == nil else { return }
        pending[b].failure = why
        for entry in pending[b].entries where entry.applied == nil { entryOwners[entry.msgID] = nil }
    }

    func failAllPending(_ why: String) {
        for b in pendingHead..<pending.count { fail(index: b, why) }
        scheduleDelivery()
    }

    /// An applied entry of ours: attach it to its batch. Returns false when it is not (or no longer) ours.
    func attachApplied(_ applied: Store.AppliedLogEntry, msgID: String) -> Bool {
        guard let owner = entryOwners.removeValue(forKey: msgID), let b = batchIndex(owner.batch),
              pending[b].failure == nil else { return false }
        pending[b].entries[owner.entry].applied = applied
        order.ownApplied(applied.seq)
        if pending[b].isDone { scheduleDelivery() }
        return true
    }

    func scheduleDelivery() {
        loop.schedule(at: loop.now, token: deliverToken)
    }

    /// Completes, in submission order, every batch at the head that is done. Callbacks may submit again.
    func deliverCompleted() {
        while pendingHead < pending.count, pending[pendingHead].isDone {
            let item = pending[pendingHead]
            pending[pendingHead] = PendingBatch(id: item.id, batch: StoreBatch(), entries: [], submittedNs: 0,
                                                deadline: 0, bytes: 0, failure: "delivered")
            pendingHead += 1
            pendingBytes -= item.bytes
            if item.accepted { acceptedBatches -= 1 }
            if acceptedBatches == 0 { publishTrouble = nil }
            if pendingHead > 64 && pendingHead * 2 > pending.count {
                pending.removeFirst(pendingHead)
                pendingHead = 0
            }
            let nanos = Clock.monotonicNs() - item.submittedNs
            // Other nodes' entries that came before this batch's in the log are reported before it.
            if let first = item.entries.compactMap({ $0.applied?.seq }).min() { reportHeld(order.release(before: first)) }
            for entry in item.entries { if let applied = entry.applied { order.ownDelivered(applied.seq) } }
            if let failure = item.failure {
                counters.batchesFailed += 1
                for entry in item.entries { if let applied = entry.applied { reportForeign(applied) } }
                onCommitted?(StoreBatchResult(batch: item.batch, results: .failure(StoreErrorBox(description: failure)),
                                              commitNanos: nanos))
            } else {
                counters.batchesCommitted += 1
                var batch = item.batch
                var results: [WriteResult] = []
                results.reserveCapacity(batch.ops.count)
                var ops: [WriteOp] = []
                ops.reserveCapacity(batch.ops.count)
                for entry in item.entries {
                    ops += entry.applied?.ops ?? []
                    results += entry.applied?.results ?? []
                }
                // As applied: a renumbered mail seq is what the core must tell the recipient and ack later.
                for index in batch.contexts.indices where index < ops.count {
                    if case .putMail(let stored) = ops[index], case .mail(var mail) = batch.contexts[index],
                       mail.seq != stored.seq {
                        mail.seq = stored.seq
                        batch.contexts[index] = .mail(mail)
                    }
                }
                batch.ops = ops
                onCommitted?(StoreBatchResult(batch: batch, results: .success(results), commitNanos: nanos))
            }
        }
        reportHeld(order.releaseReady())
    }

    /// Another node's entry (or ours of a failed batch) applied here: reported now, or after our entries before it.
    func foreignApplied(_ applied: Store.AppliedLogEntry) {
        if order.foreign(applied) { reportForeign(applied) }
    }

    func reportHeld(_ entries: ArraySlice<Store.AppliedLogEntry>) {
        guard !entries.isEmpty else { return }
        for applied in entries { reportForeign(applied) }
        order.compactHeld()
    }

    func reportForeign(_ applied: Store.AppliedLogEntry) {
        counters.foreignEntriesApplied += 1
        onForeignApplied?(applied.ops, applied.results)
    }
}
