// Cluster mode: the node's presence directory and cross-node relay over core NATS, on the loop thread.
// The core decides (Core+Cluster.swift, RelayCore+Cluster.swift); this moves its decisions between
// nodes and turns what other nodes say into core calls.
//
// Subjects (all under `sb.`):
//   sb.presence       every node: a device joined/left (user, device id, the user's accepted contacts)
//   sb.hb             every node, every `heartbeatMs`: node name, epoch, online users
//   sb.node.<name>    one node: forwarded SENDs, their answers, directory snapshot requests and replies
// A node is known by (name, epoch); the epoch changes at every start and every NATS reconnect, and a new
// epoch (or a first heartbeat) makes the others drop what they knew of that node and ask it for a
// snapshot of its online devices. NATS delivers one publisher's messages in order, so the snapshot
// follows every event the node published before it. A node whose heartbeats stop for `nodeTimeoutMs`
// is gone: its users read offline, SENDs handed to it and not answered go to the recipient's mailbox
// from here. Forwards wait for an answer at most `forwardTimeoutMs` (then the same), and at most
// `maxForwardBytes` of them are pending (beyond it a SEND gets SEND_ERROR busyRetryLater).
// Invariants: never blocks (publishes go to NATSConnection's bounded queue); each forward completes
// exactly once (answer, node gone, timeout, or refusal when it could not even be queued).
import Logging
import SwitchboardCluster
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardSession
import SwitchboardStore

public struct ClusterRouterConfiguration: Sendable {
    public var node: String
    public var heartbeatMs: UInt64 = 1_000
    public var nodeTimeoutMs: UInt64 = 3_500
    public var forwardTimeoutMs: UInt64 = 30_000
    public var maxForwardBytes = 64 << 20
    public init(node: String) { self.node = node }

    /// Node names are NATS subject tokens: 1-32 of A-Z a-z 0-9 _ -.
    public static func validNodeName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 32
            && name.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x5F || $0 == 0x2D }
    }
}

public struct ClusterRouterStatistics: Sendable {
    public var forwardsSent: UInt64 = 0
    public var forwardsAnswered: UInt64 = 0
    public var forwardsToMailbox: UInt64 = 0
    public var forwardsRefused: UInt64 = 0
    public var inboundReceived: UInt64 = 0
    public var presenceEventsIn: UInt64 = 0
    public var presenceEventsOut: UInt64 = 0
    public var nodesGone: UInt64 = 0
    public var publishFailures: UInt64 = 0
    public var malformed: UInt64 = 0
    /// Heartbeats or events under this node's own name from another process.
    public var duplicateNodeName: UInt64 = 0
}

final class ClusterRouter: ClusterSeam {
    private struct PendingKey: Hashable { var sender: UserID; var messageID: UInt64 }
    /// A forward waiting for its answer: one per destination node (a multi-copy message goes to several).
    private struct ForwardKey: Hashable { var sender: UserID; var messageID: UInt64; var node: UInt16 }
    private struct PendingForward {
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
    private struct NodeInfo {
        var name: String
        var epoch: UInt64 = 0
        var lastHeardMs: UInt64 = 0
        var alive = false
        var users = 0
        /// Not heard since our NATS link broke (loop ms): its forwards wait for it up to `nodeTimeoutMs`.
        var unheardSince: UInt64 = 0
    }

    let configuration: ClusterRouterConfiguration
    private let nats: NATSConnection
    private let loop: EventLoop
    private unowned let core: ServerCore
    private var logger: Logger
    private(set) var epoch: UInt64
    private var lastDuplicateNameLog: UInt64 = 0
    private var nodes: [NodeInfo] = []
    private var nodeIndex: [String: UInt16] = [:]
    private var pending: [ForwardKey: PendingForward] = [:]
    private var pendingBytes = 0
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
    private(set) var statistics = ClusterRouterStatistics()
    /// Forwards and answers of this turn, per destination node: one NATS message each at the end of the turn
    /// (`flush`), or sooner when one passes `maxBatchBytes`.
    private var forwardBatches: [UInt16: (count: UInt32, bytes: [UInt8])] = [:]
    private var answerBatches: [UInt16: (count: UInt32, bytes: [UInt8])] = [:]
    /// SENT_COPYs and final answers for the sender's devices on other nodes, per node, sent like the answers.
    private var deviceBatches: [UInt16: (count: UInt32, bytes: [UInt8])] = [:]
    private let maxBatchBytes = 256 << 10
    let timerToken: UInt64
    /// Another process publishes under this node's name (a second node started with the same --node).
    var onDuplicateName: (() -> Void)?
    private var subscribed = false

    init(configuration: ClusterRouterConfiguration, nats: NATSConnection, loop: EventLoop, core: ServerCore, logger: Logger,
         timerToken: UInt64) {
        self.configuration = configuration
        self.nats = nats
        self.loop = loop
        self.core = core
        self.logger = logger
        self.timerToken = timerToken
        epoch = Clock.wallMs() &* 1_000 &+ (Clock.monotonicNs() % 1_000)
    }

    private var ownSubject: String { "sb.node.\(configuration.node)" }

    /// Subscribes (replayed by the connection after every reconnect) and starts the heartbeat.
    func start() throws {
        try nats.subscribe("sb.presence") { [unowned self] in self.received($0) }
        try nats.subscribe("sb.hb") { [unowned self] in self.received($0) }
        try nats.subscribe(ownSubject) { [unowned self] in self.received($0) }
        subscribed = true
        loop.schedule(at: loop.now + configuration.heartbeatMs, token: timerToken)
    }

    /// The NATS link came back after a break: what others know of this node may be stale, and what this
    /// node knows of them certainly is (events were missed). A new epoch makes every node forget this
    /// one and ask for a snapshot; here every other node is forgotten until its next heartbeat.
    func natsReconnected() {
        epoch &+= 1
        // What we knew of the others may be stale: forget it until each is heard again (a snapshot follows).
        // Their pending forwards are not given up: a forward or its answer may have been lost with the link,
        // so each is sent again (same id; the receiving node answers a duplicate without delivering it twice)
        // once its node is heard, or goes to the mailbox if the node stays silent for `nodeTimeoutMs`.
        let now = loop.now
        for index in nodes.indices where nodes[index].alive {
            nodes[index].alive = false
            nodes[index].unheardSince = now
            core.remoteNodeGone(UInt16(index))
        }
        heartbeat()
    }

    // MARK: ClusterSeam (calls from the core)

    func deviceJoined(user: UserID, deviceID: String, contacts: [UserID]) {
        var w = Writer(kind: .joined, node: configuration.node, epoch: epoch)
        w.u32(user); w.string(deviceID); w.u32(UInt32(contacts.count)); for c in contacts { w.u32(c) }
        publish("sb.presence", w.bytes)
        statistics.presenceEventsOut += 1
    }

    func deviceLeft(user: UserID, deviceID: String) {
        var w = Writer(kind: .left, node: configuration.node, epoch: epoch)
        w.u32(user); w.string(deviceID)
        publish("sb.presence", w.bytes)
        statistics.presenceEventsOut += 1
    }

    func forward(to node: UInt16, sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView,
                 multiCopy: Bool) {
        let key = ForwardKey(sender: sender, messageID: messageID, node: node)
        guard Int(node) < nodes.count, nodes[Int(node)].alive || nodes[Int(node)].unheardSince != 0 else {
            core.forwardUndeliverable(sender: sender, recipient: recipient, messageID: messageID, sentAtMs: sentAtMs, body: body.array)
            statistics.forwardsToMailbox += 1
            return
        }
        guard pendingBytes + body.count <= configuration.maxForwardBytes else {
            statistics.forwardsRefused += 1
            if multiCopy {
                // One of several copies (the recipient has devices elsewhere too): a lost copy, not a refusal of the
                // message; the last lost copy sends it to the mailbox.
                core.forwardUndeliverable(sender: sender, recipient: recipient, messageID: messageID, sentAtMs: sentAtMs,
                                          body: body.array)
                return
            }
            core.forwardRefused(sender: sender, messageID: messageID, code: .busyRetryLater,
                                message: "too many messages waiting for other servers of the cluster; try again later")
            return
        }
        var record = Writer()
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

    private func queueForward(_ record: [UInt8], to node: UInt16) {
        // Mutated in place (the dictionary's default subscript): a copy-and-store would copy the batch's bytes
        // at every forward.
        forwardBatches[node, default: (0, [])].count += 1
        forwardBatches[node, default: (0, [])].bytes.append(contentsOf: record)
        if forwardBatches[node]!.bytes.count >= maxBatchBytes { flushForwards(to: node) }
    }

    private func flushForwards(to node: UInt16) {
        guard let batch = forwardBatches.removeValue(forKey: node), batch.count > 0 else { return }
        var w = Writer(kind: .forwards, node: configuration.node, epoch: epoch)
        w.u32(batch.count)
        w.bytes += batch.bytes
        // A publish that cannot be queued (the 8 MiB bound while NATS is away) loses nothing: the forwards
        // stay pending and go to the mailbox when their node is declared gone or they time out.
        publish("sb.node.\(nodes[Int(node)].name)", w.bytes)
    }

    /// Sends this turn's forwards and answers, one NATS message per destination node (RelayServer calls it at
    /// the end of every loop turn).
    func flush() {
        if !forwardBatches.isEmpty { for node in Array(forwardBatches.keys) { flushForwards(to: node) } }
        if !answerBatches.isEmpty {
            for (target, batch) in answerBatches where Int(target) < nodes.count {
                var w = Writer(kind: .answers, node: configuration.node, epoch: epoch)
                w.u32(batch.count)
                w.bytes += batch.bytes
                publish("sb.node.\(nodes[Int(target)].name)", w.bytes)
            }
            answerBatches.removeAll(keepingCapacity: true)
        }
        if !deviceBatches.isEmpty { for node in Array(deviceBatches.keys) { flushDeviceNotes(to: node) } }
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

    private func deviceNote(to node: UInt16, _ fill: (inout Writer) -> Void) {
        deviceBatches[node, default: (0, [])].count += 1
        Writer.append(to: &deviceBatches[node, default: (0, [])].bytes, fill)
        if deviceBatches[node]!.bytes.count >= maxBatchBytes { flushDeviceNotes(to: node) }
    }

    private func flushDeviceNotes(to node: UInt16) {
        guard let batch = deviceBatches.removeValue(forKey: node), batch.count > 0 else { return }
        var w = Writer(kind: .deviceNotes, node: configuration.node, epoch: epoch)
        w.u32(batch.count)
        w.bytes += batch.bytes
        publish("sb.node.\(nodes[Int(node)].name)", w.bytes)
    }

    private func answer(_ key: PendingKey, _ fill: (inout Writer) -> Void) {
        guard let targets = inboundReplies.removeValue(forKey: key) else { return }
        func add(_ target: UInt16) {
            answerBatches[target, default: (0, [])].count += 1
            // Written straight into the batch (in place): no buffer per answer.
            Writer.append(to: &answerBatches[target, default: (0, [])].bytes) { w in
                w.u32(key.sender); w.u64(key.messageID)
                fill(&w)
            }
        }
        add(targets.first)
        for target in targets.more { add(target) }
    }

    // MARK: timers

    func timerFired() {
        heartbeat()
        let now = loop.now
        for index in nodes.indices where nodes[index].alive && now &- nodes[index].lastHeardMs > configuration.nodeTimeoutMs {
            nodeGone(UInt16(index), why: "no heartbeat for \(now &- nodes[index].lastHeardMs) ms")
        }
        for index in nodes.indices where nodes[index].unheardSince != 0 && now &- nodes[index].unheardSince > configuration.nodeTimeoutMs {
            // Silent since our link came back: it is gone; its forwards go to the mailbox.
            nodes[index].unheardSince = 0
            statistics.nodesGone += 1
            logger.warning("cluster node not heard again after the NATS link came back", metadata: ["node": "\(nodes[index].name)"])
            let orphaned = pending.filter { $0.value.node == UInt16(index) }.map(\.key)
            for key in orphaned { toMailbox(key) }
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
        var w = Writer(kind: .heartbeat, node: configuration.node, epoch: epoch)
        w.u32(UInt32(clamping: core.core.onlineCount))
        publish("sb.hb", w.bytes)
    }

    private func nodeGone(_ index: UInt16, why: String, keepForwards: Bool = false) {
        nodes[Int(index)].alive = false
        statistics.nodesGone += 1
        logger.warning("cluster node gone", metadata: ["node": "\(nodes[Int(index)].name)", "why": "\(why)"])
        core.remoteNodeGone(index)
        guard !keepForwards else { return }
        let orphaned = pending.filter { $0.value.node == index }.map(\.key)
        for key in orphaned { toMailbox(key) }
    }

    private func toMailbox(_ key: ForwardKey) {
        guard let forward = pending.removeValue(forKey: key) else { return }
        pendingBytes -= forward.record.count
        statistics.forwardsToMailbox += 1
        core.forwardUndeliverable(sender: key.sender, recipient: forward.recipient, messageID: key.messageID,
                                  sentAtMs: forward.sentAtMs, body: Array(forward.body))
    }

    // MARK: receiving

    private func received(_ message: NATSMessage) {
        var r = Reader(message.payload)
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
            nodes[Int(index)].users = Int(r.u32() ?? 0)
        case .joined:
            guard let user = r.u32(), let device = r.string(), let count = r.u32(), count <= 1_000_000 else { return malformed() }
            var contacts: [UserID] = []
            contacts.reserveCapacity(Int(count))
            for _ in 0..<count { guard let c = r.u32() else { return malformed() }; contacts.append(c) }
            statistics.presenceEventsIn += 1
            core.remoteDeviceJoined(user: user, node: index, deviceID: device, contacts: contacts)
        case .left:
            guard let user = r.u32(), let device = r.string() else { return malformed() }
            statistics.presenceEventsIn += 1
            core.remoteDeviceLeft(user: user, node: index, deviceID: device)
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
                    core.inboundMessage(from: sender, to: recipient, messageID: messageID, sentAtMs: sentAtMs,
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
                    core.forwardUndeliverable(sender: sender, recipient: forward.recipient, messageID: messageID,
                                              sentAtMs: forward.sentAtMs, body: Array(forward.body))
                } else if let status {
                    core.forwardAnswered(sender: sender, messageID: messageID, status: status)
                } else if let (code, text) = refusal {
                    core.forwardRefused(sender: sender, messageID: messageID, code: ErrorCode(rawValue: code) ?? .internalError, message: text)
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
                        core.remoteSentCopy(sender: sender, recipient: recipient, messageID: messageID, sentAtMs: sentAtMs,
                                            body: ByteView(borrowing: body))
                    case 1:
                        guard let raw = r.u8(), let status = SendStatus(rawValue: raw) else { return malformed() }
                        core.remoteSenderAnswered(sender: sender, messageID: messageID, answer: .ack(status))
                    case 2:
                        guard let code = r.u16(), let text = r.string() else { return malformed() }
                        core.remoteSenderAnswered(sender: sender, messageID: messageID,
                                                  answer: .error(ErrorCode(rawValue: code) ?? .internalError, text))
                    default:
                        return malformed()
                    }
                }
            }
        case .snapshotRequest:
            sendSnapshot(to: name)
        case .snapshot:
            guard let count = r.u32() else { return malformed() }
            for _ in 0..<count {
                guard let user = r.u32(), let device = r.string(), let n = r.u32(), n <= 1_000_000 else { return malformed() }
                var contacts: [UserID] = []
                for _ in 0..<n { guard let c = r.u32() else { return malformed() }; contacts.append(c) }
                core.remoteDeviceJoined(user: user, node: index, deviceID: device, contacts: contacts)
            }
        }
    }

    private func malformed() {
        statistics.malformed += 1
    }

    /// Records that `name` spoke with `epoch`; a node first heard of, back after it was gone, or with a new
    /// epoch is (re)learnt: what was known of it is dropped and a snapshot of its devices requested.
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
            if nodes[i].alive { nodeGone(index, why: reconnected ? "its NATS link was re-established" : "restarted (new epoch)",
                                         keepForwards: reconnected) }
            let waited = nodes[i].unheardSince != 0 || reconnected
            nodes[i].unheardSince = 0
            nodes[i].alive = true
            nodes[i].epoch = epoch
            if waited {
                // Heard again after our link broke: what it may have missed is sent again.
                let again = pending.filter { $0.value.node == index }
                for (_, forward) in again { queueForward(forward.record, to: index) }
                if !again.isEmpty {
                    logger.info("cluster forwards sent again after the NATS link came back",
                                metadata: ["node": "\(name)", "count": "\(again.count)"])
                }
            }
            logger.info("cluster node joined", metadata: ["node": "\(name)"])
            let w = Writer(kind: .snapshotRequest, node: configuration.node, epoch: self.epoch)
            publish("sb.node.\(name)", w.bytes)
        }
        nodes[i].lastHeardMs = loop.now
        return index
    }

    /// Every device online here, in chunks of at most ~256 KiB.
    private func sendSnapshot(to node: String) {
        var entries: [[UInt8]] = []
        for session in core.core.sessions.values {
            let contacts = core.core.acceptedContacts(of: session.userID)
            for device in session.devices {
                var e = Writer()
                e.u32(session.userID); e.string(device.deviceID); e.u32(UInt32(contacts.count)); for c in contacts { e.u32(c) }
                entries.append(e.bytes)
            }
        }
        var start = 0
        repeat {
            var size = 0
            var end = start
            while end < entries.count && (end == start || size + entries[end].count < 256 << 10) { size += entries[end].count; end += 1 }
            var w = Writer(kind: .snapshot, node: configuration.node, epoch: epoch)
            w.u32(UInt32(end - start))
            for e in entries[start..<end] { w.bytes.append(contentsOf: e) }
            publish("sb.node.\(node)", w.bytes)
            start = end
        } while start < entries.count
    }

    private func publish(_ subject: String, _ payload: [UInt8]) {
        do {
            try nats.publish(subject, payload: payload)
        } catch {
            statistics.publishFailures += 1
        }
    }

    /// For the metrics and `admin stats`: nodes alive, forwards pending.
    var aliveNodes: Int { nodes.reduce(0) { $0 + ($1.alive ? 1 : 0) } }
    var pendingForwards: Int { pending.count }
}

/// Little-endian fields; strings as u16 length + UTF-8.
private struct Writer {
    var bytes: [UInt8] = []
    init() {}
    init(kind: ClusterWireKind, node: String, epoch: UInt64) {
        bytes.reserveCapacity(64)
        u8(kind.rawValue); string(node); u64(epoch)
    }
    /// Appends fields to `bytes` in place.
    static func append(to bytes: inout [UInt8], _ body: (inout Writer) -> Void) {
        var w = Writer()
        swap(&w.bytes, &bytes)
        body(&w)
        swap(&w.bytes, &bytes)
    }
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func string(_ s: String) {
        let utf8 = Array(s.utf8.prefix(Int(UInt16.max)))
        u16(UInt16(utf8.count)); bytes.append(contentsOf: utf8)
    }
}

/// The first byte of every cluster message.
private enum ClusterWireKind: UInt8 {
    case joined = 1, left = 2, heartbeat = 3
    case forwards = 14, answers = 15, snapshotRequest = 12, snapshot = 13
    /// SENT_COPYs and SEND_ACK/SEND_ERRORs for a sender's devices on the receiving node.
    case deviceNotes = 16
}

private struct Reader {
    let bytes: [UInt8]
    var offset = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    mutating func take(_ n: Int) -> ArraySlice<UInt8>? {
        guard n >= 0, bytes.count - offset >= n else { return nil }
        defer { offset += n }
        return bytes[offset..<offset + n]
    }
    mutating func u8() -> UInt8? { take(1)?.first }
    mutating func u16() -> UInt16? { take(2).map { s in s.reversed().reduce(0) { $0 << 8 | UInt16($1) } } }
    mutating func u32() -> UInt32? { take(4).map { s in s.reversed().reduce(0) { $0 << 8 | UInt32($1) } } }
    mutating func u64() -> UInt64? { take(8).map { s in s.reversed().reduce(0) { $0 << 8 | UInt64($1) } } }
    mutating func string() -> String? {
        guard let n = u16(), let s = take(Int(n)) else { return nil }
        return String(validating: s, as: UTF8.self)
    }
}
