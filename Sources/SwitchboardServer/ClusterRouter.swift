// Cluster mode: the node's presence directory and cross-node relay over core NATS, on the loop thread.
// The core decides (Core+Cluster.swift, RelayCore+Cluster.swift); this moves its decisions between
// nodes and turns what other nodes say into core calls (through `ClusterRouterHost`). The directory's
// upkeep (snapshots in chunks, reconciliation after a link break, dropping a gone node's users in batches)
// is in ClusterRouter+Directory.swift, the wire format in ClusterWire.swift.
//
// Subjects (all under `sb.`):
//   sb.presence       every node: a device joined/left (user, device id, the user's accepted contacts)
//   sb.hb             every node, every `heartbeatMs`: node name, epoch, online users
//   sb.node.<name>    one node: forwarded SENDs, their answers, directory snapshot requests and chunks
// A node is known by (name, epoch); the epoch changes at every start and every NATS reconnect. A new epoch
// (or a first heartbeat, or our own reconnect) makes the others reconcile what they know of that node with
// a fresh snapshot of its online devices: only entries that really changed produce presence. NATS delivers
// one publisher's messages in order, so each snapshot chunk follows every event the node published before it.
// A node whose heartbeats stop for `nodeTimeoutMs` is gone: its users read offline (dropped in batches of
// `directoryBatch` per loop turn), SENDs handed to it and not answered go to the recipient's mailbox from
// here. Forwards wait for an answer at most `forwardTimeoutMs` (then the same), and at most `maxForwardBytes`
// of them are pending (beyond it a SEND gets SEND_ERROR busyRetryLater).
// Invariants: never blocks (publishes go to NATSConnection's bounded queue); nothing is published while the
// NATS link is not connected (the connection would replay it after a reconnect, after this node gave up on
// it: a forward already sent to the mailbox, a stale "joined"); what that skips is rebuilt by the epoch
// logic (pending forwards are resent when their node is heard again, presence by snapshots); each forward
// completes exactly once (answer, node gone, timeout, or refusal when it could not even be queued); no loop
// turn does more than `directoryBatch` users of directory upkeep or queues more than `snapshotBytesPerTurn`
// of snapshot.
import Logging
import SwitchboardCluster
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardSession
import SwitchboardStore

final class ClusterRouter: ClusterSeam {
    struct PendingKey: Hashable { var sender: UserID; var messageID: UInt64 }
    /// A forward waiting for its answer: one per destination node (a multi-copy message goes to several).
    struct ForwardKey: Hashable { var sender: UserID; var messageID: UInt64; var node: UInt16 }
    struct PendingForward {
        var node: UInt16
        var recipient: UserID
        var sentAtMs: UInt64
        var deadline: UInt64
        /// The encoded record (the body's one copy here): sent again (same id) when its node is heard again
        /// after a link break, and the mail's body if it ends in the mailbox.
        var record: [UInt8]
        var body: ArraySlice<UInt8> { record[Self.headerBytes...] }
        static let headerBytes = 29
    }
    struct NodeInfo {
        var name: String
        var epoch: UInt64 = 0
        var lastHeardMs: UInt64 = 0
        var alive = false
        /// Users online there, by its last heartbeat.
        var reportedUsers = 0
        /// Not heard since our NATS link broke (loop ms): its forwards and directory entries wait for it up to
        /// `nodeTimeoutMs`.
        var unheardSince: UInt64 = 0
        /// The users the directory has with a device on this node (kept in step with the core's directory by
        /// `resync` after every change the router makes or sees): what a reconciliation or a drop walks, and
        /// what a heartbeat's count is compared with.
        var members = Set<UserID>()
        /// When a heartbeat first disagreed with `members.count` (0: it agrees), and when a snapshot was last asked.
        var mismatchSince: UInt64 = 0
        var lastRequestMs: UInt64 = 0
    }
    /// A snapshot asked of a node: its chunks confirm users; those still unconfirmed at the last chunk are dropped.
    struct Reconcile {
        var requestID: UInt32
        var nextChunk: UInt32 = 0
        var unconfirmed: Set<UserID>
        var deadline: UInt64
    }
    /// Users of one node leaving the directory, `directoryBatch` per turn; a user re-confirmed meanwhile (a
    /// "joined" from that node) leaves `doomed` and is skipped.
    struct DropJob {
        var order: [UserID]
        var position = 0
        var doomed: Set<UserID>
    }
    /// A snapshot this node is sending: the users online when it was asked, walked a chunk at a time.
    struct SnapshotJob {
        var requester: String
        var requestID: UInt32
        var users: [UserID]
        var position = 0
        var chunk: UInt32 = 0
    }

    let configuration: ClusterRouterConfiguration
    let nats: NATSConnection
    let loop: EventLoop
    unowned let host: ClusterRouterHost
    var logger: Logger
    private(set) var epoch: UInt64
    private var lastDuplicateNameLog: UInt64 = 0
    var nodes: [NodeInfo] = []
    private var nodeIndex: [String: UInt16] = [:]
    var pending: [ForwardKey: PendingForward] = [:]
    var pendingBytes = 0
    /// Inbound messages in flight here: where to send the answer (usually one node; more after a resend
    /// through another node).
    private var inboundReplies: [PendingKey: Origins] = [:]
    /// The nodes an inbound message came from: one, unless it was resent through another node meanwhile
    /// (no array allocated for the usual case).
    private struct Origins {
        var first: UInt16
        var more: [UInt16] = []
        func contains(_ node: UInt16) -> Bool { first == node || more.contains(node) }
    }
    var statistics = ClusterRouterStatistics()
    /// Forwards and answers of this turn, per destination node: one NATS message each at the end of the turn
    /// (`flush`), or sooner when one passes `maxBatchBytes`.
    private var forwardBatches: [UInt16: (count: UInt32, bytes: [UInt8])] = [:]
    private var answerBatches: [UInt16: (count: UInt32, bytes: [UInt8])] = [:]
    /// Answers that NATS could not queue (its outbound bound, link up) are kept and tried again from this loop
    /// time on: a lost answer would make the sending node time the forward out and store it (a second copy).
    private var answersResumeAt: UInt64 = 0
    /// Answers kept for one node at most; past it the oldest batch is dropped (counted).
    static let maxHeldAnswerBytes = 8 << 20
    /// SENT_COPYs and final answers for the sender's devices on other nodes, per node, sent like the answers.
    private var deviceBatches: [UInt16: (count: UInt32, bytes: [UInt8])] = [:]
    private let maxBatchBytes = 256 << 10
    let timerToken: UInt64
    /// Another process publishes under this node's name (a second node started with the same --node).
    var onDuplicateName: (() -> Void)?
    /// Wakes the loop when snapshot output waits for the NATS queue to drain.
    let workToken: UInt64
    var reconciles: [UInt16: Reconcile] = [:]
    var drops: [UInt16: DropJob] = [:]
    var snapshotJobs: [SnapshotJob] = []
    var nextRequestID: UInt32 = 1
    /// Snapshot output resumes at this loop time (after the NATS queue was found too full).
    var snapshotResumeAt: UInt64 = 0

    init(configuration: ClusterRouterConfiguration, nats: NATSConnection, loop: EventLoop, host: ClusterRouterHost, logger: Logger,
         timerToken: UInt64, workToken: UInt64) {
        self.configuration = configuration
        self.nats = nats
        self.loop = loop
        self.host = host
        self.logger = logger
        self.timerToken = timerToken
        self.workToken = workToken
        epoch = Clock.wallMs() &* 1_000 &+ (Clock.monotonicNs() % 1_000)
    }

    private var ownSubject: String { "sb.node.\(configuration.node)" }

    /// Subscribes (replayed by the connection after every reconnect) and starts the heartbeat.
    func start() throws {
        try nats.subscribe("sb.presence") { [unowned self] in self.received($0) }
        try nats.subscribe("sb.hb") { [unowned self] in self.received($0) }
        try nats.subscribe(ownSubject) { [unowned self] in self.received($0) }
        loop.schedule(at: loop.now + configuration.heartbeatMs, token: timerToken)
    }

    /// The NATS link came back after a break: what others know of this node may be stale, and what this
    /// node knows of them certainly is (events were missed). A new epoch makes every node reconcile what it
    /// has of this one; here every other node is reconciled when next heard (its entries stay meanwhile, so
    /// users who did not change read online throughout). Their pending forwards are not given up: a forward
    /// or its answer may have been lost with the link, so each is sent again (same id; the receiving node
    /// answers a duplicate without delivering it twice) once its node is heard; a node silent for
    /// `nodeTimeoutMs` is gone (forwards to the mailbox, users dropped). Snapshots being sent stop: every
    /// requester asks again when it hears the new epoch.
    func natsReconnected() {
        epoch &+= 1
        let now = loop.now
        for index in nodes.indices where nodes[index].alive {
            nodes[index].alive = false
            nodes[index].unheardSince = now
        }
        reconciles.removeAll()
        snapshotJobs.removeAll()
        heartbeat()
    }

    // MARK: ClusterSeam (calls from the core)

    func deviceJoined(user: UserID, deviceID: String, contacts: [UserID]) {
        // A login here may have taken the device over from another node's entry (the core dropped it).
        resync(user)
        var w = ClusterWriter(kind: .joined, node: configuration.node, epoch: epoch)
        w.u32(user); w.string(deviceID); w.u32(UInt32(contacts.count)); for c in contacts { w.u32(c) }
        publish("sb.presence", w.bytes)
        statistics.presenceEventsOut += 1
    }

    func deviceLeft(user: UserID, deviceID: String) {
        var w = ClusterWriter(kind: .left, node: configuration.node, epoch: epoch)
        w.u32(user); w.string(deviceID)
        publish("sb.presence", w.bytes)
        statistics.presenceEventsOut += 1
    }

    func forward(to node: UInt16, sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView,
                 multiCopy: Bool) {
        let key = ForwardKey(sender: sender, messageID: messageID, node: node)
        guard Int(node) < nodes.count, nodes[Int(node)].alive || nodes[Int(node)].unheardSince != 0 else {
            host.forwardUndeliverable(sender: sender, recipient: recipient, messageID: messageID, sentAtMs: sentAtMs, body: body.array)
            statistics.forwardsToMailbox += 1
            return
        }
        guard pendingBytes + body.count <= configuration.maxForwardBytes else {
            statistics.forwardsRefused += 1
            if multiCopy {
                // One of several copies (the recipient has devices elsewhere too): a lost copy, not a refusal of the
                // message; the last lost copy sends it to the mailbox.
                host.forwardUndeliverable(sender: sender, recipient: recipient, messageID: messageID, sentAtMs: sentAtMs,
                                          body: body.array)
                return
            }
            host.forwardRefused(sender: sender, messageID: messageID, code: .busyRetryLater,
                                message: "too many messages waiting for other servers of the cluster; try again later")
            return
        }
        var record = ClusterWriter()
        record.bytes.reserveCapacity(PendingForward.headerBytes + body.count)
        record.u32(sender); record.u32(recipient); record.u64(messageID); record.u64(sentAtMs); record.u8(multiCopy ? 1 : 0)
        record.u32(UInt32(body.count))
        body.withUnsafeBytes { record.bytes.append(contentsOf: $0) }
        queueForward(record.bytes, to: node)
        statistics.forwardsSent += 1
        // The same key again (the sender reused an id its window had forgotten): the new one replaces the old.
        if let replaced = pending.updateValue(PendingForward(node: node, recipient: recipient, sentAtMs: sentAtMs,
                                                             deadline: loop.now + configuration.forwardTimeoutMs,
                                                             record: record.bytes), forKey: key) {
            pendingBytes -= replaced.record.count
        }
        pendingBytes += record.bytes.count
    }

    func queueForward(_ record: [UInt8], to node: UInt16) {
        // Mutated in place (the dictionary's default subscript): a copy-and-store would copy the batch's bytes
        // at every forward.
        forwardBatches[node, default: (0, [])].count += 1
        forwardBatches[node, default: (0, [])].bytes.append(contentsOf: record)
        if forwardBatches[node]!.bytes.count >= maxBatchBytes { flushForwards(to: node) }
    }

    private func flushForwards(to node: UInt16) {
        guard let batch = forwardBatches.removeValue(forKey: node), batch.count > 0 else { return }
        // A publish that cannot be made (link down, or the 8 MiB bound) loses nothing: the forwards stay
        // pending, are sent again when their node is heard after a reconnect, or go to the mailbox when it is
        // declared gone or they time out.
        publish("sb.node.\(nodes[Int(node)].name)", batchMessage(.forwards, batch))
    }

    /// One NATS message of a batch of records of `kind` (forwards, answers, device notes): header, count, records.
    private func batchMessage(_ kind: ClusterWireKind, _ batch: (count: UInt32, bytes: [UInt8])) -> [UInt8] {
        var w = ClusterWriter(kind: kind, node: configuration.node, epoch: epoch)
        w.u32(batch.count)
        w.bytes += batch.bytes
        return w.bytes
    }

    /// Sends this turn's forwards and answers, one NATS message per destination node, then does one bounded
    /// batch of directory upkeep and snapshot output if any waits (RelayServer calls it at the end of every
    /// loop turn, and keeps turning while `hasBackgroundWork`).
    func flush() {
        if !forwardBatches.isEmpty { for node in Array(forwardBatches.keys) { flushForwards(to: node) } }
        if !answerBatches.isEmpty && loop.now >= answersResumeAt {
            var held = false
            for target in Array(answerBatches.keys) {
                guard let batch = answerBatches[target], Int(target) < nodes.count else { answerBatches[target] = nil; continue }
                if publishOrKeep("sb.node.\(nodes[Int(target)].name)", batchMessage(.answers, batch)) {
                    answerBatches[target] = nil
                } else if batch.bytes.count > Self.maxHeldAnswerBytes {
                    statistics.answersDropped += UInt64(batch.count)
                    answerBatches[target] = nil
                } else {
                    held = true
                }
            }
            if held {
                statistics.answerDeferrals += 1
                answersResumeAt = loop.now + 5
                loop.schedule(at: answersResumeAt, token: workToken)
            }
        }
        if !deviceBatches.isEmpty { for node in Array(deviceBatches.keys) { flushDeviceNotes(to: node) } }
        if !drops.isEmpty { dropBatch() }
        if !snapshotJobs.isEmpty { sendSnapshotChunks() }
    }

    func inboundSettled(sender: UserID, messageID: UInt64, status: SendStatus) {
        answer(PendingKey(sender: sender, messageID: messageID)) { w in w.u8(0); w.u8(status.rawValue) }
    }

    func inboundFailed(sender: UserID, messageID: UInt64, code: ErrorCode, message: String) {
        answer(PendingKey(sender: sender, messageID: messageID)) { w in w.u8(1); w.u16(code.rawValue); w.string(message) }
    }

    func inboundLost(sender: UserID, messageID: UInt64) {
        answer(PendingKey(sender: sender, messageID: messageID)) { w in w.u8(2) }
    }

    func sentCopy(to node: UInt16, sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView) {
        guard Int(node) < nodes.count, nodes[Int(node)].alive else { return }  // fire and forget, as on one node
        deviceNote(to: node) { w in
            w.u8(0); w.u32(sender); w.u64(messageID); w.u32(recipient); w.u64(sentAtMs); w.u32(UInt32(body.count))
            body.withUnsafeBytes { w.bytes.append(contentsOf: $0) }
        }
    }

    func senderAnswered(to node: UInt16, sender: UserID, messageID: UInt64, answer: SenderAnswer) {
        guard Int(node) < nodes.count, nodes[Int(node)].alive else { return }
        deviceNote(to: node) { w in
            switch answer {
            case .ack(let status): w.u8(1); w.u32(sender); w.u64(messageID); w.u8(status.rawValue)
            case .error(let code, let text): w.u8(2); w.u32(sender); w.u64(messageID); w.u16(code.rawValue); w.string(text)
            }
        }
    }

    private func deviceNote(to node: UInt16, _ fill: (inout ClusterWriter) -> Void) {
        deviceBatches[node, default: (0, [])].count += 1
        ClusterWriter.append(to: &deviceBatches[node, default: (0, [])].bytes, fill)
        if deviceBatches[node]!.bytes.count >= maxBatchBytes { flushDeviceNotes(to: node) }
    }

    private func flushDeviceNotes(to node: UInt16) {
        guard let batch = deviceBatches.removeValue(forKey: node), batch.count > 0 else { return }
        publish("sb.node.\(nodes[Int(node)].name)", batchMessage(.deviceNotes, batch))
    }

    private func answer(_ key: PendingKey, _ fill: (inout ClusterWriter) -> Void) {
        guard let targets = inboundReplies.removeValue(forKey: key) else { return }
        func add(_ target: UInt16) {
            answerBatches[target, default: (0, [])].count += 1
            // Written straight into the batch (in place): no buffer per answer.
            ClusterWriter.append(to: &answerBatches[target, default: (0, [])].bytes) { w in
                w.u32(key.sender); w.u64(key.messageID)
                fill(&w)
            }
        }
        add(targets.first)
        for target in targets.more { add(target) }
    }

    // MARK: timers

    /// Routes the router's timer tokens; false when `token` is not one of them.
    func handleTimer(_ token: UInt64) -> Bool {
        if token == timerToken { timerFired(); return true }
        return token == workToken  // only wakes the loop: the turn's `flush` resumes the snapshot output
    }

    func timerFired() {
        heartbeat()
        let now = loop.now
        for index in nodes.indices where nodes[index].alive && now &- nodes[index].lastHeardMs > configuration.nodeTimeoutMs {
            nodeGone(UInt16(index), why: "no heartbeat for \(now &- nodes[index].lastHeardMs) ms")
        }
        for index in nodes.indices where nodes[index].unheardSince != 0 && now &- nodes[index].unheardSince > configuration.nodeTimeoutMs {
            // Silent since our link came back: it is gone.
            nodeGone(UInt16(index), why: "not heard again \(configuration.nodeTimeoutMs) ms after the NATS link came back")
        }
        for (index, reconcile) in reconciles where reconcile.deadline <= now && nodes[Int(index)].alive {
            logger.notice("cluster snapshot incomplete in time; asking again", metadata: ["node": "\(nodes[Int(index)].name)"])
            statistics.snapshotRerequests += 1
            startReconcile(index)
        }
        var expired: [ForwardKey] = []
        for (key, forward) in pending where forward.deadline <= now { expired.append(key) }
        for key in expired {
            logger.warning("cluster forward unanswered; storing as mail", metadata: ["node": "\(nodes[Int(pending[key]!.node)].name)"])
            toMailbox(key)
        }
        loop.schedule(at: now + configuration.heartbeatMs, token: timerToken)
    }

    private func heartbeat() {
        var w = ClusterWriter(kind: .heartbeat, node: configuration.node, epoch: epoch)
        w.u32(UInt32(clamping: host.localUserCount))
        publish("sb.hb", w.bytes)
    }

    /// The node stopped answering (heartbeats, or not heard again after our reconnect): its forwards go to the
    /// mailbox now, its users leave the directory over the next turns.
    private func nodeGone(_ index: UInt16, why: String) {
        nodes[Int(index)].alive = false
        nodes[Int(index)].unheardSince = 0
        statistics.nodesGone += 1
        logger.warning("cluster node gone", metadata: ["node": "\(nodes[Int(index)].name)", "why": "\(why)"])
        reconciles[index] = nil
        startDrop(index)
        forwardsToMailbox(of: index)
    }

    func forwardsToMailbox(of index: UInt16) {
        let orphaned = pending.filter { $0.value.node == index }.map(\.key)
        for key in orphaned { toMailbox(key) }
    }

    private func toMailbox(_ key: ForwardKey) {
        guard let forward = pending.removeValue(forKey: key) else { return }
        pendingBytes -= forward.record.count
        statistics.forwardsToMailbox += 1
        host.forwardUndeliverable(sender: key.sender, recipient: forward.recipient, messageID: key.messageID,
                                  sentAtMs: forward.sentAtMs, body: Array(forward.body))
    }

    // MARK: receiving

    private func received(_ message: NATSMessage) {
        var r = ClusterReader(message.payload)
        guard let kindByte = r.u8(), let kind = ClusterWireKind(rawValue: kindByte), let name = r.string(), let epoch = r.u64() else {
            statistics.malformed += 1
            return
        }
        guard name != configuration.node else {
            // Our own presence and heartbeats come back to us; another epoch under our name is a second node
            // started with the same --node: both get each other's forwards. Said loudly, at most every 10 s.
            if epoch != self.epoch && epoch / 1_000 != self.epoch / 1_000, loop.now &- lastDuplicateNameLog > 10_000 {
                lastDuplicateNameLog = loop.now
                statistics.duplicateNodeName += 1
                logger.critical("another cluster node runs with this node's name: give every node a unique --node",
                                metadata: ["node": "\(configuration.node)"])
            }
            if epoch != self.epoch && epoch / 1_000 != self.epoch / 1_000 { onDuplicateName?() }
            return
        }
        guard ClusterRouterConfiguration.validNodeName(name) else { statistics.malformed += 1; return }
        let index = heard(name, epoch: epoch)
        switch kind {
        case .heartbeat:
            guard let users = r.u32() else { return malformed() }
            heartbeatCount(Int(users), from: index)
        case .joined:
            guard let user = r.u32(), let device = r.string(), let count = r.u32(), count <= 1_000_000 else { return malformed() }
            var contacts: [UserID] = []
            contacts.reserveCapacity(Int(count))
            for _ in 0..<count { guard let c = r.u32() else { return malformed() }; contacts.append(c) }
            statistics.presenceEventsIn += 1
            host.remoteDeviceJoined(user: user, node: index, deviceID: device, contacts: contacts)
            resync(user)
            confirmed(user, on: index)
        case .left:
            guard let user = r.u32(), let device = r.string() else { return malformed() }
            statistics.presenceEventsIn += 1
            host.remoteDeviceLeft(user: user, node: index, deviceID: device)
            resync(user)
        case .forwards:
            guard let count = r.u32() else { return malformed() }
            message.payload.withUnsafeBytes { raw in
                for _ in 0..<count {
                    guard let sender = r.u32(), let recipient = r.u32(), let messageID = r.u64(), let sentAtMs = r.u64(),
                          let flags = r.u8(), let length = r.u32(), Int(length) <= raw.count - r.offset else { return malformed() }
                    statistics.inboundReceived += 1
                    let key = PendingKey(sender: sender, messageID: messageID)
                    if let known = inboundReplies[key] {
                        if !known.contains(index) { inboundReplies[key]!.more.append(index) }
                    } else {
                        inboundReplies[key] = Origins(first: index)
                    }
                    let body = UnsafeRawBufferPointer(rebasing: raw[r.offset..<(r.offset + Int(length))])
                    r.offset += Int(length)
                    host.inboundMessage(from: sender, to: recipient, messageID: messageID, sentAtMs: sentAtMs,
                                        body: ByteView(borrowing: body), multiCopy: flags & 1 != 0)
                }
            }
        case .answers:
            guard let count = r.u32() else { return malformed() }
            for _ in 0..<count {
                guard let sender = r.u32(), let messageID = r.u64(), let outcome = r.u8() else { return malformed() }
                let key = ForwardKey(sender: sender, messageID: messageID, node: index)
                var status: SendStatus?
                var refusal: (UInt16, String)?
                if outcome == 0 {
                    guard let raw = r.u8(), let s = SendStatus(rawValue: raw) else { return malformed() }
                    status = s
                } else if outcome == 1 {
                    guard let code = r.u16(), let text = r.string() else { return malformed() }
                    refusal = (code, text)
                } else if outcome != 2 {  // 2: every copy there was lost (a multi-copy message)
                    return malformed()
                }
                guard let forward = pending.removeValue(forKey: key) else { continue }  // answered already, or sent to mail
                pendingBytes -= forward.record.count
                statistics.forwardsAnswered += 1
                if outcome == 2 {
                    host.forwardUndeliverable(sender: sender, recipient: forward.recipient, messageID: messageID,
                                              sentAtMs: forward.sentAtMs, body: Array(forward.body))
                } else if let status {
                    host.forwardAnswered(sender: sender, messageID: messageID, status: status)
                } else if let (code, text) = refusal {
                    host.forwardRefused(sender: sender, messageID: messageID, code: ErrorCode(rawValue: code) ?? .internalError, message: text)
                }
            }
        case .deviceNotes:
            guard let count = r.u32() else { return malformed() }
            message.payload.withUnsafeBytes { raw in
                for _ in 0..<count {
                    guard let type = r.u8(), let sender = r.u32(), let messageID = r.u64() else { return malformed() }
                    switch type {
                    case 0:
                        guard let recipient = r.u32(), let sentAtMs = r.u64(), let length = r.u32(),
                              Int(length) <= raw.count - r.offset else { return malformed() }
                        let body = UnsafeRawBufferPointer(rebasing: raw[r.offset..<(r.offset + Int(length))])
                        r.offset += Int(length)
                        host.remoteSentCopy(sender: sender, recipient: recipient, messageID: messageID, sentAtMs: sentAtMs,
                                            body: ByteView(borrowing: body))
                    case 1:
                        guard let raw = r.u8(), let status = SendStatus(rawValue: raw) else { return malformed() }
                        host.remoteSenderAnswered(sender: sender, messageID: messageID, answer: .ack(status))
                    case 2:
                        guard let code = r.u16(), let text = r.string() else { return malformed() }
                        host.remoteSenderAnswered(sender: sender, messageID: messageID,
                                                  answer: .error(ErrorCode(rawValue: code) ?? .internalError, text))
                    default:
                        return malformed()
                    }
                }
            }
        case .snapshotRequest:
            guard let requestID = r.u32() else { return malformed() }
            snapshotRequested(by: name, requestID: requestID)
        case .snapshotChunk:
            snapshotChunk(&r, from: index)
        }
    }

    func malformed() {
        statistics.malformed += 1
    }

    /// Records that `name` spoke with `epoch`; a node first heard of, back after it was gone or after our link
    /// broke, or with a new epoch is reconciled: a snapshot of its devices is asked for, and what the directory
    /// has of it stays until that snapshot says otherwise.
    private func heard(_ name: String, epoch: UInt64) -> UInt16 {
        let index: UInt16
        if let known = nodeIndex[name] {
            index = known
        } else {
            index = UInt16(nodes.count)
            nodes.append(NodeInfo(name: name))
            nodeIndex[name] = index
        }
        let i = Int(index)
        if !nodes[i].alive || nodes[i].epoch != epoch {
            // An epoch starts from the wall clock (x 1000) and goes up by one at each NATS reconnect: a small
            // step is the same process after a link break (it still holds what we handed it), a jump a restart.
            let old = nodes[i].epoch
            let reconnected = old != 0 && epoch > old && epoch - old < 1_000
            if nodes[i].alive && !reconnected {
                // A new process: what was handed to the old one is lost with it.
                statistics.nodesGone += 1
                logger.warning("cluster node restarted (new epoch)", metadata: ["node": "\(name)"])
                forwardsToMailbox(of: index)
            }
            let waited = nodes[i].unheardSince != 0 || reconnected
            nodes[i].unheardSince = 0
            nodes[i].alive = true
            nodes[i].epoch = epoch
            if waited {
                // Heard again after a link broke: what it may have missed is sent again.
                let again = pending.filter { $0.value.node == index }
                for (_, forward) in again { queueForward(forward.record, to: index) }
                if !again.isEmpty {
                    logger.info("cluster forwards sent again after the NATS link came back",
                                metadata: ["node": "\(name)", "count": "\(again.count)"])
                }
            }
            logger.info("cluster node joined", metadata: ["node": "\(name)"])
            nodes[i].lastHeardMs = loop.now
            startReconcile(index)
        }
        nodes[i].lastHeardMs = loop.now
        return index
    }

    /// Publishes, unless the link is down: NATSConnection would queue it and replay it after the reconnect,
    /// when this node may already have given up on it (see the invariants above).
    /// Publishes; false only when the link is up and NATS refused to queue it (its outbound bound): the caller
    /// keeps it. While the link is down it is skipped as by `publish` (what the others missed is sent again once
    /// they hear this node's new epoch).
    func publishOrKeep(_ subject: String, _ payload: [UInt8]) -> Bool {
        guard nats.isConnected else {
            statistics.publishesSkippedOffline += 1
            return true
        }
        do {
            try nats.publish(subject, payload: payload)
            return true
        } catch {
            statistics.publishFailures += 1
            return false
        }
    }

    func publish(_ subject: String, _ payload: [UInt8]) {
        guard nats.isConnected else {
            statistics.publishesSkippedOffline += 1
            return
        }
        do {
            try nats.publish(subject, payload: payload)
        } catch {
            statistics.publishFailures += 1
        }
    }

    /// For the metrics and `admin stats`: nodes alive, forwards pending.
    var aliveNodes: Int { nodes.reduce(0) { $0 + ($1.alive ? 1 : 0) } }
    var pendingForwards: Int { pending.count }
    /// The index this router gave node `name` (tests).
    func index(ofNode name: String) -> UInt16? { nodeIndex[name] }
}
