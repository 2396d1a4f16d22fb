// Cluster mode of the core, sans I/O: several ServerCores ("nodes") over one real LMDB store that plays
// the replicated store (a commit is applied once; the committing node gets its results, every other
// node gets `clusterApplied`, as the cluster log does), and a double of the cluster driver that queues
// what one node says to the others (presence, forwards, answers) until the test delivers it — so each
// scenario controls the order, and a node can "die" with messages in flight. The real driver
// (ClusterRouter over NATS) is tested with real processes in SwitchboardServerTests' ClusterTests.
// A seeded schedule (random sends, acks, drops, logins on random nodes, node deaths) checks that every
// SEND_ACKed message reaches its recipient and that no device gets one message twice.
import Foundation
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardSession
import SwitchboardStore
import Testing

final class ClusterSim {
    enum Event {
        case joined(user: UserID, device: String, contacts: [UserID])
        case left(user: UserID, device: String)
        case forward(sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: [UInt8], multiCopy: Bool)
        case lost(sender: UserID, messageID: UInt64)
        case settled(sender: UserID, messageID: UInt64, status: SendStatus)
        case failed(sender: UserID, messageID: UInt64, code: ErrorCode, message: String)
        case sentCopy(sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: [UInt8])
        case senderAnswer(sender: UserID, messageID: UInt64, answer: SenderAnswer)
    }
    struct Envelope { var from: Int; var to: Int; var event: Event }

    var clock: UInt64 = 1_000
    let store: Store
    let directory: String
    var nodes: [SimNode] = []
    var queue: [Envelope] = []
    var userIDs: [String: UserID] = [:]
    var clients: [SimClient] = []
    let password = "cluster sim pw"
    var trace: [String] = []

    init(nodes count: Int, users: [String], contacts: [(String, String)]) throws {
        directory = "/dev/shm/sbcluster-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        store = try Store(directory: directory, mapSizeBytes: 64 << 20)
        let hash = PasswordHasher.hash(password: Array(password.utf8), iterations: 1)
        _ = try store.apply(users.map { .createAccount(name: $0, password: hash) })
        for name in users { userIDs[name] = try store.account(named: name)!.userID }
        var ops: [WriteOp] = []
        for (a, b) in contacts { ops.append(.contactAdd(owner: userIDs[a]!, contactName: b)) }
        for (a, b) in contacts { ops.append(.contactAccept(owner: userIDs[b]!, contactName: a)) }
        _ = try store.apply(ops)
        for index in 0..<count { nodes.append(SimNode(index: index, sim: self)) }
    }

    deinit {
        store.close()
        try? FileManager.default.removeItem(atPath: directory)
    }

    func id(_ name: String) -> UserID { userIDs[name]! }

    @discardableResult
    func connect(_ user: String, node: Int, device: String = "", autoAck: Bool = true) -> SimClient {
        let n = nodes[node]
        let state = n.core.newClient(host: "10.1.0.\(clients.count + 1)", peerText: "10.1.0.\(clients.count + 1):4000")
        let client = SimClient(user: user, node: node, state: state, autoAck: autoAck)
        state.link = client
        n.core.opened(state)
        clients.append(client)
        client.write(.hello(version: 2, agent: "sim"))
        if device.isEmpty {
            client.write(.login(requestID: 1, name: TextView(user), password: TextView(password)))
        } else {
            client.write(.loginDevice(requestID: 1, name: TextView(user), password: TextView(password), deviceID: TextView(device),
                                      deviceName: TextView("dev \(device)")))
        }
        return client
    }

    /// Everything moves until nothing does: reads, hashes, commits, cluster messages, writes.
    func settle(deliverCluster: Bool = true, maxRounds: Int = 200) {
        for _ in 0..<maxRounds {
            var moved = false
            for node in nodes where node.alive {
                for client in clients where client.node == node.index && !client.gone && !client.closed {
                    if client.feed(into: node.core) { moved = true }
                }
                node.endOfTurn()
                while let job = node.hashJobs.first {
                    node.hashJobs.removeFirst()
                    node.completeHash(job)
                    moved = true
                }
                node.endOfTurn()
                while !node.commits.isEmpty {
                    commit(node.commits.removeFirst(), from: node)
                    moved = true
                }
                node.endOfTurn()
            }
            if deliverCluster && !queue.isEmpty {
                let batch = queue
                queue.removeAll()
                for envelope in batch { deliver(envelope); moved = true }
            }
            for node in nodes where node.alive { node.endOfTurn() }
            for client in clients where !client.gone {
                if client.readAll() { moved = true }
            }
            if !moved { return }
        }
        Issue.record("the cluster did not settle in \(maxRounds) rounds")
    }

    func commit(_ batch: StoreBatch, from node: SimNode) {
        let results: Result<[WriteResult], StoreErrorBox>
        do { results = .success(try store.apply(batch.ops)) } catch { results = .failure(StoreErrorBox(description: "\(error)")) }
        node.core.commitCompleted([StoreBatchResult(batch: batch, results: results, commitNanos: 0)])
        if case .success(let writeResults) = results {
            for other in nodes where other !== node && other.alive { other.core.clusterApplied(batch.ops, writeResults) }
        }
    }

    func deliver(_ envelope: Envelope) {
        trace.append("deliver \(envelope.from)->\(envelope.to) \(envelope.event)")
        let target = nodes[envelope.to]
        guard target.alive, nodes[envelope.from].alive || !envelope.isFromDeadNodeSensitive else { return }
        let from = UInt16(envelope.from)
        switch envelope.event {
        case .joined(let user, let device, let contacts):
            target.core.remoteDeviceJoined(user: user, node: from, deviceID: device, contacts: contacts)
        case .left(let user, let device):
            target.core.remoteDeviceLeft(user: user, node: from, deviceID: device)
        case .forward(let sender, let recipient, let messageID, let sentAtMs, let body, let multiCopy):
            target.inboundOrigins[ClusterSim.key(sender, messageID), default: []].insert(envelope.from)
            body.withUnsafeBytes { raw in
                target.core.inboundMessage(from: sender, to: recipient, messageID: messageID, sentAtMs: sentAtMs,
                                           body: ByteView(borrowing: raw), multiCopy: multiCopy)
            }
        case .settled(let sender, let messageID, let status):
            guard target.pending.removeValue(forKey: ClusterSim.Key(sender: sender, messageID: messageID, node: envelope.from)) != nil else { return }
            target.core.forwardAnswered(sender: sender, messageID: messageID, status: status)
        case .failed(let sender, let messageID, let code, let message):
            guard target.pending.removeValue(forKey: ClusterSim.Key(sender: sender, messageID: messageID, node: envelope.from)) != nil else { return }
            target.core.forwardRefused(sender: sender, messageID: messageID, code: code, message: message)
        case .lost(let sender, let messageID):
            guard let forward = target.pending.removeValue(forKey: ClusterSim.Key(sender: sender, messageID: messageID, node: envelope.from)) else { return }
            target.core.forwardUndeliverable(sender: sender, recipient: forward.recipient, messageID: messageID,
                                             sentAtMs: forward.sentAtMs, body: forward.body)
        case .sentCopy(let sender, let recipient, let messageID, let sentAtMs, let body):
            body.withUnsafeBytes { raw in
                target.core.remoteSentCopy(sender: sender, recipient: recipient, messageID: messageID, sentAtMs: sentAtMs,
                                           body: ByteView(borrowing: raw))
            }
        case .senderAnswer(let sender, let messageID, let answer):
            target.core.remoteSenderAnswered(sender: sender, messageID: messageID, answer: answer)
        }
        target.endOfTurn()
    }

    /// A node dies (kill -9): its clients see their connections drop, its messages in the queue are lost,
    /// and the others notice it is gone (as the router does when heartbeats stop): their forwards to it
    /// go to mail.
    func kill(_ index: Int) {
        trace.append("kill \(index) dropping \(queue.filter { $0.from == index || $0.to == index }.map { "\($0.from)->\($0.to) \($0.event)" })")
        let dead = nodes[index]
        dead.alive = false
        queue.removeAll { $0.from == index || $0.to == index }
        for client in clients where client.node == index { client.gone = true }
        for node in nodes where node.alive {
            node.core.remoteNodeGone(UInt16(index))
            for (key, forward) in node.pending where forward.node == index {
                node.pending[key] = nil
                node.core.forwardUndeliverable(sender: key.sender, recipient: forward.recipient, messageID: key.messageID,
                                               sentAtMs: forward.sentAtMs, body: forward.body)
            }
            node.endOfTurn()
        }
    }

    /// `node`: the destination of a pending forward (-1 for inbound origins, keyed per message).
    struct Key: Hashable { var sender: UserID; var messageID: UInt64; var node: Int = -1 }
    static func key(_ sender: UserID, _ messageID: UInt64) -> Key { Key(sender: sender, messageID: messageID) }
}

extension ClusterSim.Envelope {
    /// Answers and forwards from a dead node never arrive (they were dropped with it in `kill`).
    var isFromDeadNodeSensitive: Bool { true }
}

final class SimNode: SessionDriver, ClusterSeam {
    let index: Int
    unowned let sim: ClusterSim
    var core: ServerCore!
    var alive = true
    var hashJobs: [HashJob] = []
    var commits: [StoreBatch] = []
    var flushRequests: [ClientState] = []
    var finalized: [ClientState] = []
    var timers: [(UInt64, UInt64)] = []
    struct Pending { var node: Int; var recipient: UserID; var sentAtMs: UInt64; var body: [UInt8] }
    var pending: [ClusterSim.Key: Pending] = [:]
    var inboundOrigins: [ClusterSim.Key: Set<Int>] = [:]

    init(index: Int, sim: ClusterSim) {
        self.index = index
        self.sim = sim
        var config = SessionConfiguration()
        config.pbkdf2Iterations = 1
        var logger = Logger(label: "node\(index)")
        logger.logLevel = .critical
        core = ServerCore(configuration: config, store: sim.store, driver: self, logger: logger,
                          dummyHash: PasswordHasher.hash(password: Array("dummy".utf8), iterations: 1))
        core.cluster = self
        core.replicatedStore = true
        core.start()
    }

    var now: UInt64 { sim.clock }
    var wallNow: UInt64 { 1_800_000_000_000 + sim.clock }
    func interestChanged(_ client: ClientState) {}
    func flush(_ client: ClientState) { flushRequests.append(client) }
    func finalize(_ client: ClientState) { finalized.append(client) }
    func hasBufferedInput(_ client: ClientState) -> Bool { false }
    func readAgain(_ client: ClientState) {}
    func handshakePending(_ client: ClientState) -> Bool { false }
    func startHash(_ job: HashJob) { hashJobs.append(job) }
    func startCommit(_ batch: StoreBatch) { commits.append(batch) }
    func schedule(at deadline: UInt64, token: UInt64) { timers.append((deadline, token)) }

    func completeHash(_ job: HashJob) {
        switch job {
        case .verifyLogin(let connection, let requestID, let name, let password, let account, let dummy):
            let ok = PasswordHasher.verify(password: password, against: account?.password ?? dummy) && account != nil
            core.hashCompleted([.verified(connection: connection, requestID: requestID, name: name, account: account, ok: ok)])
        case .hashForRegistration(let connection, let requestID, let name, let password, let iterations):
            core.hashCompleted([.hashed(connection: connection, requestID: requestID, name: name,
                                        hash: PasswordHasher.hash(password: password, iterations: iterations))])
        case .hashForAdmin(let token, let password, let iterations):
            core.hashCompleted([.hashedForAdmin(token: token, hash: PasswordHasher.hash(password: password, iterations: iterations))])
        }
    }

    func endOfTurn() {
        guard alive else { return }
        repeat {
            core.endOfTurn()
            let requests = flushRequests
            flushRequests.removeAll()
            for client in requests { (client.link as? SimClient)?.takeOutput(core) }
            for client in finalized {
                guard let simClient = client.link as? SimClient else { continue }
                simClient.closed = true
                simClient.closeCode = client.closeCode
                simClient.inbound.append(contentsOf: client.output.readableView)
                client.output.clear()
            }
            finalized.removeAll()
        } while core.hasPendingWork
    }

    // MARK: ClusterSeam

    private func broadcast(_ event: ClusterSim.Event) {
        for other in sim.nodes where other !== self { sim.queue.append(.init(from: index, to: other.index, event: event)) }
    }
    func deviceJoined(user: UserID, deviceID: String, contacts: [UserID]) { broadcast(.joined(user: user, device: deviceID, contacts: contacts)) }
    func deviceLeft(user: UserID, deviceID: String) { broadcast(.left(user: user, device: deviceID)) }
    func forward(to node: UInt16, sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView,
                 multiCopy: Bool) {
        pending[ClusterSim.Key(sender: sender, messageID: messageID, node: Int(node))] =
            Pending(node: Int(node), recipient: recipient, sentAtMs: sentAtMs, body: body.array)
        sim.queue.append(.init(from: index, to: Int(node), event: .forward(sender: sender, recipient: recipient, messageID: messageID,
                                                                        sentAtMs: sentAtMs, body: body.array, multiCopy: multiCopy)))
    }
    func inboundLost(sender: UserID, messageID: UInt64) {
        for origin in inboundOrigins.removeValue(forKey: ClusterSim.key(sender, messageID)) ?? [] {
            sim.queue.append(.init(from: index, to: origin, event: .lost(sender: sender, messageID: messageID)))
        }
    }
    func inboundSettled(sender: UserID, messageID: UInt64, status: SendStatus) {
        for origin in inboundOrigins.removeValue(forKey: ClusterSim.key(sender, messageID)) ?? [] {
            sim.queue.append(.init(from: index, to: origin, event: .settled(sender: sender, messageID: messageID, status: status)))
        }
    }
    func sentCopy(to node: UInt16, sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView) {
        sim.queue.append(.init(from: index, to: Int(node), event: .sentCopy(sender: sender, recipient: recipient, messageID: messageID,
                                                                         sentAtMs: sentAtMs, body: body.array)))
    }
    func senderAnswered(to node: UInt16, sender: UserID, messageID: UInt64, answer: SenderAnswer) {
        sim.queue.append(.init(from: index, to: Int(node), event: .senderAnswer(sender: sender, messageID: messageID, answer: answer)))
    }
    func inboundFailed(sender: UserID, messageID: UInt64, code: ErrorCode, message: String) {
        for origin in inboundOrigins.removeValue(forKey: ClusterSim.key(sender, messageID)) ?? [] {
            sim.queue.append(.init(from: index, to: origin, event: .failed(sender: sender, messageID: messageID, code: code, message: message)))
        }
    }
}

/// One client connection and what it saw, decoded.
final class SimClient {
    let user: String
    let node: Int
    let state: ClientState
    var autoAck: Bool
    var outbound: [UInt8] = []
    var inbound: [UInt8] = []
    var gone = false
    var closed = false
    var closeCode: ErrorCode?
    var loggedIn = false
    var contacts: [UInt32: Bool] = [:]   // from the contact list and presence
    var presence: [(UInt32, Bool)] = []
    var delivered: [(from: UInt32, id: UInt64)] = []
    var mail: [(from: UInt32, id: UInt64)] = []
    var acks: [UInt64: SendStatus] = [:]
    var sendErrors: [UInt64: UInt16] = [:]
    var chatStatus: [UInt32: Bool] = [:]
    var sentCopies: [(to: UInt32, id: UInt64)] = []
    var errors: [UInt16] = []
    var pendingDeliveryAck: UInt64?
    var pendingMailAck: UInt64?
    private let scratch = ByteBuffer(capacity: 1 << 16)

    init(user: String, node: Int, state: ClientState, autoAck: Bool) {
        self.user = user; self.node = node; self.state = state; self.autoAck = autoAck
    }

    func write(_ frame: ClientFrame) {
        let buffer = ByteBuffer()
        FrameEncoder.encode(frame, into: buffer)
        outbound.append(contentsOf: buffer.readableArray())
    }

    /// The server reads all the client wrote. True if anything was read.
    func feed(into core: ServerCore) -> Bool {
        guard !outbound.isEmpty, !state.isClosing, !state.readingPaused else { return false }
        let target = state.input.isEmpty ? scratch : state.input
        outbound.withUnsafeBytes { target.writeBytes($0) }
        outbound.removeAll()
        core.received(state, from: target)
        if target === scratch {
            if scratch.readableBytes > 0 && !state.isClosing { state.input.writeBytes(scratch.readableView) }
            scratch.clear()
        }
        return true
    }

    func takeOutput(_ core: ServerCore) {
        guard !gone, !state.isClosing else { return }
        let out = state.output
        guard out.readableBytes > 0 else { return }
        inbound.append(contentsOf: out.readableView)
        out.advanceReaderRetaining(by: out.readableBytes)
        core.wrote(state)
    }

    /// Decodes what arrived; acknowledges deliveries and mail when `autoAck`. True if anything was read.
    func readAll() -> Bool {
        guard !inbound.isEmpty else {
            return flushAcks()
        }
        var offset = 0
        inbound.withUnsafeBytes { raw in
            while case .frame(let frame, let used) = FrameDecoder.decodeServer(UnsafeRawBufferPointer(rebasing: raw[offset...]),
                                                                               maxFrameBytes: 1 << 24) {
                offset += used
                switch frame {
                case .loginOK: loggedIn = true
                case .contactList(_, _, let list): for c in list { contacts[c.userID] = c.online }
                case .presence(let user, let online): presence.append((user, online)); contacts[user] = online
                case .contactUpdate(let c): contacts[c.userID] = c.online
                case .deliver(let seq, let from, let id, _, _): delivered.append((from, id)); pendingDeliveryAck = seq
                case .mail(let seq, let from, _, let id, _, _): mail.append((from, id)); pendingMailAck = seq
                case .sendAck(let id, let status): acks[id] = SendStatus(rawValue: status)
                case .sendError(let id, let code, _): sendErrors[id] = code
                case .chatStatus(_, let user, let online, _): chatStatus[user] = online
                case .sentCopy(let to, let id, _, _): sentCopies.append((to, id))
                case .error(_, let code, _):
                    errors.append(code)
                    if code == ErrorCode.sessionTakenOver.rawValue { closeCode = .sessionTakenOver }
                default: break
                }
            }
        }
        inbound.removeFirst(offset)
        _ = flushAcks()
        return true
    }

    private func flushAcks() -> Bool {
        guard autoAck, !gone, !closed else { return false }
        var wrote = false
        if let seq = pendingDeliveryAck { write(.deliveryAck(throughSeq: seq)); pendingDeliveryAck = nil; wrote = true }
        if let seq = pendingMailAck { write(.mailAck(throughSeq: seq)); pendingMailAck = nil; wrote = true }
        return wrote
    }

    /// Every copy this client got of messages from `sender` (live and mail).
    func received(from sender: UInt32) -> [UInt64] {
        delivered.filter { $0.from == sender }.map(\.id) + mail.filter { $0.from == sender }.map(\.id)
    }
}

@Suite(.serialized) struct ClusterCoreTests {
    func pair() throws -> ClusterSim {
        try ClusterSim(nodes: 3, users: ["alice", "bob", "carol"], contacts: [("alice", "bob"), ("alice", "carol")])
    }

    @Test func presenceAndLiveRelayAcrossNodes() throws {
        let sim = try pair()
        let bob = sim.connect("bob", node: 1)
        sim.settle()
        let alice = sim.connect("alice", node: 0)
        sim.settle()
        #expect(alice.loggedIn && bob.loggedIn)
        // alice's contact list says bob (on node 1) is online; bob was told alice came online.
        #expect(alice.contacts[sim.id("bob")] == true)
        #expect(alice.contacts[sim.id("carol")] == false)
        #expect(bob.presence.contains { $0 == (sim.id("alice"), true) })
        alice.write(.openChat(requestID: 7, contact: sim.id("bob")))
        alice.write(.send(to: sim.id("bob"), messageID: 1, body: ByteView(Array("hi bob".utf8))))
        sim.settle()
        #expect(alice.chatStatus[sim.id("bob")] == true)
        #expect(bob.received(from: sim.id("alice")) == [1])
        #expect(alice.acks[1] == .delivered, "SEND_ACK delivered comes after bob's node reported his DELIVERY_ACK")
        // The reply goes the other way.
        bob.write(.send(to: sim.id("alice"), messageID: 1, body: ByteView(Array("hi alice".utf8))))
        sim.settle()
        #expect(alice.received(from: sim.id("bob")) == [1])
        #expect(bob.acks[1] == .delivered)
        // bob logs out: alice sees him offline; the next message is stored and delivered at his next login.
        bob.gone = true
        sim.nodes[1].core.peerGone(bob.state, "bye")
        sim.nodes[1].endOfTurn()
        sim.settle()
        #expect(alice.contacts[sim.id("bob")] == false)
        alice.write(.send(to: sim.id("bob"), messageID: 2, body: ByteView(Array("later".utf8))))
        sim.settle()
        #expect(alice.acks[2] == .storedOffline)
        let bobAgain = sim.connect("bob", node: 2)
        sim.settle()
        #expect(bobAgain.received(from: sim.id("alice")) == [2])
        #expect(alice.contacts[sim.id("bob")] == true)
    }

    @Test func sendSeenAsOfflineWhileTheRecipientLogsInElsewhereIsPushedOnceStored() throws {
        let sim = try pair()
        let alice = sim.connect("alice", node: 0)
        sim.settle()
        // bob logs in on node 1, but node 0 has not heard yet (the presence event is held back).
        let bob = sim.connect("bob", node: 1)
        sim.settle(deliverCluster: false)
        alice.write(.send(to: sim.id("bob"), messageID: 5, body: ByteView(Array("race".utf8))))
        sim.settle(deliverCluster: false)
        #expect(alice.acks[5] == .storedOffline)
        // The mail committed through the shared store reached node 1 as a foreign write: pushed to bob.
        #expect(bob.received(from: sim.id("alice")) == [5])
        sim.settle()
        #expect(bob.received(from: sim.id("alice")) == [5], "delivered once")
    }

    @Test func receiverDroppingUnacknowledgedStoresOnItsNodeAndAnswersStored() throws {
        let sim = try pair()
        let bob = sim.connect("bob", node: 1, autoAck: false)
        let alice = sim.connect("alice", node: 0)
        sim.settle()
        alice.write(.send(to: sim.id("bob"), messageID: 9, body: ByteView(Array("unacked".utf8))))
        sim.settle()
        #expect(bob.received(from: sim.id("alice")) == [9])
        #expect(alice.acks[9] == nil, "no SEND_ACK before bob acknowledged")
        bob.gone = true
        sim.nodes[1].core.peerGone(bob.state, "dropped")
        sim.nodes[1].endOfTurn()
        sim.settle()
        #expect(alice.acks[9] == .storedOffline)
        let bobAgain = sim.connect("bob", node: 0)
        sim.settle()
        #expect(bobAgain.mail.map(\.id) == [9])
    }

    @Test func resendThroughAnotherNodeAfterTheSendersNodeDiedIsNotDeliveredTwice() throws {
        let sim = try pair()
        let bob = sim.connect("bob", node: 1)
        let alice = sim.connect("alice", node: 0)
        sim.settle()
        alice.write(.send(to: sim.id("bob"), messageID: 3, body: ByteView(Array("once".utf8))))
        // Deliver the forward and bob's ack, but node 0 dies before the answer reaches it.
        sim.settle(deliverCluster: false)
        let forward = sim.queue
        sim.queue.removeAll()
        for envelope in forward { sim.deliver(envelope) }
        sim.settle(deliverCluster: false)
        #expect(bob.received(from: sim.id("alice")) == [3])
        sim.kill(0)
        sim.settle()
        #expect(alice.acks[3] == nil)
        // alice's client reconnects to node 2 and resends what was not acknowledged.
        let aliceAgain = sim.connect("alice", node: 2)
        sim.settle()
        aliceAgain.write(.send(to: sim.id("bob"), messageID: 3, body: ByteView(Array("once".utf8))))
        sim.settle()
        #expect(aliceAgain.acks[3] == .delivered, "bob's node remembers it delivered (alice, 3)")
        #expect(bob.received(from: sim.id("alice")) == [3], "and does not deliver it again")
    }

    /// alice's node dies while bob (on node 1) holds her message unacknowledged; her client reconnects to bob's
    /// own node and resends it. It is not delivered twice, and she is answered there when bob acknowledges (the
    /// answer for the first copy goes to the dead node) — or when it is stored, if bob drops instead.
    @Test(arguments: [false, true])
    func resendOnTheRecipientsNodeWhileTheFirstCopyIsInFlightIsAnsweredThere(bobDrops: Bool) throws {
        let sim = try pair()
        let bob = sim.connect("bob", node: 1, autoAck: false)
        let alice = sim.connect("alice", node: 0)
        sim.settle()
        alice.write(.send(to: sim.id("bob"), messageID: 7, body: ByteView(Array("first copy".utf8))))
        sim.settle()
        #expect(bob.received(from: sim.id("alice")) == [7])
        sim.kill(0)
        sim.settle()
        let aliceAgain = sim.connect("alice", node: 1)
        sim.settle()
        aliceAgain.write(.send(to: sim.id("bob"), messageID: 7, body: ByteView(Array("first copy".utf8))))
        sim.settle()
        #expect(bob.received(from: sim.id("alice")) == [7], "the resend is not delivered again")
        #expect(aliceAgain.acks[7] == nil, "not acknowledged before bob did")
        if bobDrops {
            bob.gone = true
            sim.nodes[1].core.peerGone(bob.state, "dropped")
            sim.nodes[1].endOfTurn()
            sim.settle()
            #expect(aliceAgain.acks[7] == .storedOffline)
            let bobAgain = sim.connect("bob", node: 2)
            sim.settle()
            #expect(bobAgain.mail.map(\.id) == [7])
        } else {
            bob.autoAck = true
            sim.settle()
            #expect(aliceAgain.acks[7] == .delivered, "the resend waits for the first copy and is answered here")
        }
        #expect(sim.nodes[1].core.core.localResends.isEmpty)
    }

    /// The same with alice's node alive: her device moved to bob's node (its connection to node 0 dropped) and
    /// resent; and the other way round: the resend from bob's node is delivered before node 0's forward of the
    /// first copy arrives there. Either way bob gets it once, alice is answered on node 1, and node 0 is answered.
    @Test(arguments: [false, true])
    func senderMovedToTheRecipientsNodeGetsItsAnswerThere(forwardArrivesLast: Bool) throws {
        let sim = try pair()
        let bob = sim.connect("bob", node: 1, autoAck: false)
        let alice = sim.connect("alice", node: 0)
        sim.settle()
        alice.write(.send(to: sim.id("bob"), messageID: 8, body: ByteView(Array("moving".utf8))))
        if forwardArrivesLast {
            sim.settle(deliverCluster: false)  // node 0's forward waits in the cluster
        } else {
            sim.settle()
            #expect(bob.received(from: sim.id("alice")) == [8])
        }
        alice.gone = true
        sim.nodes[0].core.peerGone(alice.state, "moved")
        sim.nodes[0].endOfTurn()
        let aliceAgain = sim.connect("alice", node: 1)
        sim.settle(deliverCluster: !forwardArrivesLast)
        aliceAgain.write(.send(to: sim.id("bob"), messageID: 8, body: ByteView(Array("moving".utf8))))
        sim.settle()
        #expect(bob.received(from: sim.id("alice")) == [8], "once: \(bob.received(from: sim.id("alice")))")
        #expect(aliceAgain.acks[8] == nil)
        bob.autoAck = true
        sim.settle()
        #expect(aliceAgain.acks[8] == .delivered)
        #expect(sim.nodes[0].pending.isEmpty, "node 0's forward was answered: \(sim.nodes[0].pending)")
        #expect(sim.nodes[1].core.core.localResends.isEmpty && sim.nodes[1].core.core.inboundResends.isEmpty)
    }

    /// bob's phone (node 1) and laptop (node 2) each get a copy; the laptop logs out before its copy arrives and
    /// node 2 cannot store it (bob's mailbox is full as node 2 counts it). That is one lost copy, not a refusal of
    /// the message: the phone's copy is delivered and alice gets `delivered`, no SEND_ERROR.
    @Test func aCopyRefusedOnOneNodeIsALostCopyWhileAnotherIsDelivered() throws {
        let sim = try pair()
        let phone = sim.connect("bob", node: 1, device: "phone", autoAck: false)
        let laptop = sim.connect("bob", node: 2, device: "laptop")
        let alice = sim.connect("alice", node: 0)
        sim.settle()
        sim.nodes[2].core.core.limits.mailboxMaxMessages = 0
        alice.write(.send(to: sim.id("bob"), messageID: 10, body: ByteView(Array("two copies".utf8))))
        sim.settle(deliverCluster: false)
        laptop.gone = true
        sim.nodes[2].core.peerGone(laptop.state, "bye")
        sim.nodes[2].endOfTurn()
        sim.settle()
        #expect(phone.received(from: sim.id("alice")) == [10])
        #expect(alice.sendErrors[10] == nil, "SEND_ERROR \(alice.sendErrors[10] ?? 0) for a message another device holds")
        phone.autoAck = true
        sim.settle()
        #expect(alice.acks[10] == .delivered)
        #expect(alice.sendErrors.isEmpty)
    }

    /// alice's phone is on node 0 and her laptop on node 1; bob is on node 2. What the phone sends is copied to
    /// the laptop (SENT_COPY) and its SEND_ACK reaches both, as on one node; the same when bob is on the laptop's
    /// node and when he is offline (stored); the laptop's own sends come back to the phone the same way.
    @Test func theSendersDevicesOnOtherNodesGetCopiesAndAnswers() throws {
        let sim = try pair()
        let phone = sim.connect("alice", node: 0, device: "phone")
        let laptop = sim.connect("alice", node: 1, device: "laptop")
        let bob = sim.connect("bob", node: 2)
        sim.settle()
        phone.write(.send(to: sim.id("bob"), messageID: 1, body: ByteView(Array("from the phone".utf8))))
        sim.settle()
        #expect(bob.received(from: sim.id("alice")) == [1])
        #expect(laptop.sentCopies.map(\.id) == [1] && laptop.sentCopies.first?.to == sim.id("bob"))
        #expect(phone.acks[1] == .delivered && laptop.acks[1] == .delivered)
        laptop.write(.send(to: sim.id("bob"), messageID: 2, body: ByteView(Array("from the laptop".utf8))))
        sim.settle()
        #expect(phone.sentCopies.map(\.id) == [2] && phone.acks[2] == .delivered && laptop.acks[2] == .delivered)
        // bob offline: stored; both devices hear it.
        bob.gone = true
        sim.nodes[2].core.peerGone(bob.state, "bye")
        sim.nodes[2].endOfTurn()
        sim.settle()
        phone.write(.send(to: sim.id("bob"), messageID: 3, body: ByteView(Array("stored".utf8))))
        sim.settle()
        #expect(laptop.sentCopies.map(\.id) == [1, 3] && phone.acks[3] == .storedOffline && laptop.acks[3] == .storedOffline)
        // A refusal reaches every device too (bob's mailbox is full as node 0 counts it).
        sim.nodes[0].core.core.limits.mailboxMaxMessages = 1
        phone.write(.send(to: sim.id("bob"), messageID: 4, body: ByteView(Array("full".utf8))))
        sim.settle()
        #expect(phone.sendErrors[4] == ErrorCode.mailboxFull.rawValue)
        #expect(laptop.sendErrors[4] == nil, "refused before it was accepted: not copied, not answered elsewhere (as on one node)")
        // A resend is not copied again.
        phone.write(.send(to: sim.id("bob"), messageID: 3, body: ByteView(Array("stored".utf8))))
        sim.settle()
        #expect(laptop.sentCopies.map(\.id) == [1, 3])
    }

    /// --max-devices counts a user's devices on every node: with a limit of 2 and devices on nodes 0 and 1, a
    /// third on node 2 is refused (tooManyDevices, naming the devices); the same device again takes over.
    @Test func theDeviceLimitCountsDevicesOnEveryNode() throws {
        let sim = try pair()
        for node in sim.nodes { node.core.core.limits.maxDevicesPerUser = 2 }
        let phone = sim.connect("alice", node: 0, device: "phone")
        _ = sim.connect("alice", node: 1, device: "laptop")
        sim.settle()
        let tablet = sim.connect("alice", node: 2, device: "tablet")
        sim.settle()
        #expect(!tablet.loggedIn && tablet.errors.contains(ErrorCode.tooManyDevices.rawValue), "errors \(tablet.errors)")
        let phoneAgain = sim.connect("alice", node: 2, device: "phone")
        sim.settle()
        #expect(phoneAgain.loggedIn && phone.closeCode == .sessionTakenOver)
    }

    @Test func forwardsToANodeThatDiedGoToTheMailbox() throws {
        let sim = try pair()
        _ = sim.connect("bob", node: 1, autoAck: false)
        let alice = sim.connect("alice", node: 0)
        sim.settle()
        alice.write(.send(to: sim.id("bob"), messageID: 4, body: ByteView(Array("lost node".utf8))))
        sim.settle(deliverCluster: false)
        sim.kill(1)  // the forward never arrived
        sim.settle()
        #expect(alice.acks[4] == .storedOffline)
        #expect(alice.contacts[sim.id("bob")] == false, "bob's node is gone: he reads offline")
        let bobAgain = sim.connect("bob", node: 2)
        sim.settle()
        #expect(bobAgain.mail.map(\.id) == [4])
    }

    @Test func sameDeviceOnAnotherNodeTakesOver() throws {
        let sim = try pair()
        let phone = sim.connect("bob", node: 1, device: "phone")
        let alice = sim.connect("alice", node: 0)
        sim.settle()
        let phoneAgain = sim.connect("bob", node: 2, device: "phone")
        sim.settle()
        #expect(phone.closeCode == .sessionTakenOver)
        #expect(phoneAgain.loggedIn)
        #expect(!alice.presence.contains { $0 == (sim.id("bob"), false) }, "a takeover is not an offline blip")
        alice.write(.send(to: sim.id("bob"), messageID: 6, body: ByteView(Array("to the new one".utf8))))
        sim.settle()
        #expect(phoneAgain.received(from: sim.id("alice")) == [6])
        #expect(alice.acks[6] == .delivered)
        // The node that took the phone over keeps no entry for the old node's phone (it would read bob online
        // there forever: the old node closes a taken-over connection without announcing a logout).
        #expect(sim.nodes[2].core.core.remote[sim.id("bob")] == nil, "stale directory entry on the new node")
        // The new phone logs out: alice must see bob offline.
        phoneAgain.gone = true
        sim.nodes[2].core.peerGone(phoneAgain.state, "bye")
        sim.nodes[2].endOfTurn()
        sim.settle()
        #expect(alice.presence.last.map { $0 == (sim.id("bob"), false) } == true, "alice still sees bob online")
    }

    /// carol's node announced her with the contacts she had at login (none); she accepts alice afterwards and
    /// then leaves: alice, on another node, must still see her go offline (the store knows the accept).
    @Test func presenceFollowsContactsAcceptedAfterLogin() throws {
        let sim = try ClusterSim(nodes: 2, users: ["alice", "carol"], contacts: [])
        let alice = sim.connect("alice", node: 0)
        let carol = sim.connect("carol", node: 1)
        sim.settle()
        alice.write(.contactAdd(requestID: 2, name: "carol"))
        sim.settle()
        carol.write(.contactAccept(requestID: 3, name: "alice"))
        sim.settle()
        #expect(alice.contacts[sim.id("carol")] == true, "carol is online on node 1")
        carol.gone = true
        sim.nodes[1].core.peerGone(carol.state, "bye")
        sim.nodes[1].endOfTurn()
        sim.settle()
        #expect(alice.presence.contains { $0 == (sim.id("carol"), false) }, "alice never saw carol go offline")
    }

    /// bob's phone is on node 1 and his laptop on node 2 (and, later, a tablet on the sender's own node): a
    /// message reaches every device, the first acknowledgement answers the sender once, and when every device
    /// drops without acknowledging it is stored exactly once.
    @Test func devicesOnSeveralNodesAllReceiveAndTheMessageIsStoredOnceWhenAllDrop() throws {
        let sim = try pair()
        let phone = sim.connect("bob", node: 1, device: "phone", autoAck: false)
        let laptop = sim.connect("bob", node: 2, device: "laptop", autoAck: false)
        let alice = sim.connect("alice", node: 0)
        sim.settle()
        alice.write(.send(to: sim.id("bob"), messageID: 1, body: ByteView(Array("both".utf8))))
        sim.settle()
        #expect(phone.received(from: sim.id("alice")) == [1] && laptop.received(from: sim.id("alice")) == [1])
        #expect(alice.acks[1] == nil)
        laptop.autoAck = true
        sim.settle()
        #expect(alice.acks[1] == .delivered)
        // A tablet on alice's node joins: the next message goes to the tablet here and to both other nodes.
        let tablet = sim.connect("bob", node: 0, device: "tablet", autoAck: false)
        laptop.autoAck = false
        sim.settle()
        alice.write(.send(to: sim.id("bob"), messageID: 2, body: ByteView(Array("everywhere".utf8))))
        sim.settle()
        for device in [phone, laptop, tablet] { #expect(device.delivered.contains { $0.id == 2 }, "\(device.node)") }
        // Every device drops unacknowledged: stored once, answered once.
        for device in [phone, laptop, tablet] {
            device.gone = true
            sim.nodes[device.node].core.peerGone(device.state, "dropped")
            sim.nodes[device.node].endOfTurn()
            sim.settle()
        }
        #expect(alice.acks[2] == .storedOffline)
        let back = sim.connect("bob", node: 1, device: "phone")
        sim.settle()
        #expect(back.mail.map(\.id) == [2], "stored once: \(back.mail.map(\.id))")
    }

    @Test func contactChangesOnOneNodeReachTheOtherPartyOnAnother() throws {
        let sim = try pair()
        let bob = sim.connect("bob", node: 1)
        let carol = sim.connect("carol", node: 2)
        sim.settle()
        bob.write(.contactAdd(requestID: 2, name: "carol"))
        sim.settle()
        #expect(carol.contacts[sim.id("bob")] == false, "carol sees bob's request (pushed from the foreign write)")
        carol.write(.contactAccept(requestID: 3, name: "bob"))
        sim.settle()
        #expect(bob.contacts[sim.id("carol")] == true, "accepted, and carol is online on node 2")
        bob.write(.send(to: sim.id("carol"), messageID: 1, body: ByteView(Array("new friend".utf8))))
        sim.settle()
        #expect(carol.received(from: sim.id("bob")) == [1])
    }

    /// Seeded schedules: random logins on random nodes, sends (and resends) between them, drops, one
    /// node death; cluster messages delivered in random order per step. At the end everyone logs in
    /// again: every SEND_ACKed message was received, and no client got the same message twice.
    /// 24 seeds in `make test`; SB_SOAK_SEEDS=N runs N (make soak).
    static let seeds: [UInt64] = Array(0..<UInt64(ProcessInfo.processInfo.environment["SB_SOAK_SEEDS"].flatMap { UInt64($0) } ?? 24))

    @Test(arguments: seeds)
    func seededSchedulesLoseNothingAcknowledged(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed &+ 0xC1A5)
        let names = ["u0", "u1", "u2", "u3"]
        var contacts: [(String, String)] = []
        for a in 0..<names.count { for b in (a + 1)..<names.count { contacts.append((names[a], names[b])) } }
        let sim = try ClusterSim(nodes: 3, users: names, contacts: contacts)
        var nextID: [String: UInt64] = [:]
        var sentBy: [String: [(to: String, id: UInt64)]] = [:]
        var acked: [(from: String, to: String, id: UInt64)] = []
        var killed = false
        var resendOnLogin: [SimClient] = []
        func live(_ name: String) -> SimClient? {
            sim.clients.last { $0.user == name && !$0.gone && !$0.closed && $0.loggedIn && sim.nodes[$0.node].alive }
        }
        func collectAcks() {
            for client in sim.clients {
                for (id, _) in client.acks {
                    if let to = sentBy[client.user]?.first(where: { $0.id == id })?.to,
                       !acked.contains(where: { $0.from == client.user && $0.id == id }) {
                        acked.append((client.user, to, id))
                    }
                }
            }
        }
        for step in 0..<120 {
            let name = names[Int.random(in: 0..<names.count, using: &rng)]
            switch Int.random(in: 0..<10, using: &rng) {
            case 0..<2:
                let node = Int.random(in: 0..<3, using: &rng)
                if sim.nodes[node].alive {
                    let device = "d\(Int.random(in: 0..<2, using: &rng))"
                    resendOnLogin.append(sim.connect(name, node: node, device: device))
                    sim.trace.append("\(name) logs in on node \(node) as \(device)")
                }
            case 2..<7:
                if let client = live(name) {
                    let to = names.filter { $0 != name }[Int.random(in: 0..<(names.count - 1), using: &rng)]
                    let id = (nextID[name] ?? 0) + 1
                    nextID[name] = id
                    sentBy[name, default: []].append((to, id))
                    client.write(.send(to: sim.id(to), messageID: id, body: ByteView(Array("m\(id)".utf8))))
                    sim.trace.append("\(name) on node \(client.node) sends #\(id) to \(to)")
                }
            case 7:
                if let client = live(name) {
                    client.gone = true
                    sim.trace.append("\(name) on node \(client.node) drops")
                    sim.nodes[client.node].core.peerGone(client.state, "dropped")
                    sim.nodes[client.node].endOfTurn()
                }
            case 8:
                if !killed && step > 40 && Int.random(in: 0..<4, using: &rng) == 0 {
                    collectAcks()
                    sim.kill(Int.random(in: 0..<3, using: &rng))
                    killed = true
                }
            default:
                // Interleave what different nodes said; one node's messages keep their order (as NATS
                // delivers one publisher's messages).
                var bySource = Dictionary(grouping: sim.queue, by: \.from)
                var mixed: [ClusterSim.Envelope] = []
                while !bySource.isEmpty {
                    let source = bySource.keys.sorted()[Int.random(in: 0..<bySource.count, using: &rng)]
                    mixed.append(bySource[source]!.removeFirst())
                    if bySource[source]!.isEmpty { bySource[source] = nil }
                }
                sim.queue = mixed
            }
            // Partial progress: sometimes hold the cluster messages back a step.
            sim.settle(deliverCluster: Int.random(in: 0..<3, using: &rng) != 0)
            collectAcks()
            // A client that logged in resends what its user has not seen acknowledged (as clients do after a
            // reconnect), maybe through the recipient's own node while the first copy is still in flight.
            for client in resendOnLogin where client.loggedIn && !client.gone && !client.closed {
                for sent in sentBy[client.user] ?? [] where !acked.contains(where: { $0.from == client.user && $0.id == sent.id }) {
                    client.write(.send(to: sim.id(sent.to), messageID: sent.id, body: ByteView(Array("m\(sent.id)".utf8))))
                    sim.trace.append("\(client.user) on node \(client.node) resends #\(sent.id) to \(sent.to)")
                }
            }
            resendOnLogin.removeAll { $0.loggedIn || $0.gone || $0.closed }
        }
        sim.settle()
        collectAcks()
        // Everyone comes back on a live node and reads everything; unacknowledged messages are resent
        // (as clients do after a reconnect) through that node.
        let liveNode = sim.nodes.first { $0.alive }!.index
        var finals: [String: SimClient] = [:]
        for name in names { finals[name] = sim.connect(name, node: liveNode, device: "final") }
        sim.settle()
        for name in names {
            for sent in sentBy[name] ?? [] where !acked.contains(where: { $0.from == name && $0.id == sent.id }) {
                finals[name]!.write(.send(to: sim.id(sent.to), messageID: sent.id, body: ByteView(Array("m\(sent.id)".utf8))))
            }
        }
        sim.settle()
        collectAcks()
        for message in acked {
            let everywhere = sim.clients.filter { $0.user == message.to }.flatMap { $0.received(from: sim.id(message.from)) }
            #expect(everywhere.contains(message.id), "seed \(seed): \(message.from) #\(message.id) to \(message.to) acknowledged but never received")
        }
        for client in sim.clients {
            for name in names {
                let ids = client.received(from: sim.id(name))
                #expect(Set(ids).count == ids.count, "seed \(seed): \(client.user) on node \(client.node) got a message of \(name) twice: live \(client.delivered.filter { $0.from == sim.id(name) }.map(\.id)) mail \(client.mail.filter { $0.from == sim.id(name) }.map(\.id))")
            }
        }
        for name in names {
            for sent in sentBy[name] ?? [] {
                #expect(acked.contains { $0.from == name && $0.id == sent.id } || finals[name]!.sendErrors[sent.id] != nil,
                        "seed \(seed): \(name) #\(sent.id) to \(sent.to) never answered after the resend; final node \(liveNode) remembers: \(sim.nodes[liveNode].core.core.remembers(sender: sim.id(name), messageID: sent.id)); pending forwards: \(sim.nodes.map { $0.pending[ClusterSim.key(sim.id(name), sent.id)].map { "to \($0.node)" } ?? "-" }); alive \(sim.nodes.map(\.alive)); trace \(sim.trace.filter { $0.contains("#\(sent.id)") || $0.contains("messageID: \(sent.id)") || $0.contains("kill") || $0.contains(name) || $0.contains(sent.to) }.joined(separator: "\n")) code \(String(describing: finals[name]!.closeCode)) loggedIn \(finals[name]!.loggedIn) acks \(finals[name]!.acks.keys.sorted())")
            }
        }
    }
}
