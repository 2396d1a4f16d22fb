// Cluster mode end to end: a real three-server nats-server cluster with JetStream on loopback (started by
// the test), real `switchboard serve --cluster ... --node ...` processes with TLS, and clients through the
// client library. The seed flow with users on different nodes; kill -9 of a node during a burst between
// nodes (its client reconnects to another node and resends); kill -9 of the NATS server that leads the
// log during a burst of offline mail; all of NATS down for a few seconds.
// Skipped, with a message, only when nats-server is not installed (`make test` installs it).
import Foundation
import Glibc
import NATSTestHarness
import SwitchboardClient
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardTLS
import Testing

/// One `switchboard serve` node of a test cluster. Every node serves the first node's certificate, so one
/// CA file verifies them all (as an operator deploys one certificate for the service's name).
final class ClusterNode {
    let name: String
    let directory: String
    let logPath: String
    let process: ServerProcess
    var address: String { process.address }

    init(name: String, nats: String, tlsFrom certificateDirectory: String?, extra: [String] = [], directory: String? = nil) throws {
        self.name = name
        self.directory = directory ?? makeTempDirectory("sbnode-\(name)")
        logPath = self.directory + "/server.log"
        var arguments = ["--cluster", nats, "--node", name, "--cluster-commit-timeout", "20"] + extra
        if let certificateDirectory {
            let tls = DevelopmentCA.directory(forDataDirectory: certificateDirectory)
            arguments += ["--tls-cert", tls + "/server.pem", "--tls-key", tls + "/server.key"]
        }
        process = try ServerProcess(directory: self.directory, extraArguments: arguments, stderrPath: logPath, logLevel: "info")
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    func kill9() { process.kill9() }
    deinit { removeDirectory(directory) }
}

final class TestCluster {
    let nats: NATSClusterProcess
    var nodes: [ClusterNode] = []
    let caFile: String

    /// `count` nodes; node i lists the NATS servers starting with server i (so the nodes use different servers).
    /// With `metrics`, node i serves /metrics and /healthz on 127.0.0.1:basePort+90+i.
    init(name: String, basePort: Int, nodes count: Int, metrics: Bool = false, extra: [String] = [],
         natsAuthorization: String? = nil) throws {
        let nats = try NATSClusterProcess(name: name, basePort: basePort, clientAuthorization: natsAuthorization)
        self.nats = nats
        try nats.waitUntilReady()
        var first: String?
        var started: [ClusterNode] = []
        for i in 0..<count {
            let order = (0..<3).map { nats.url(($0 + i) % 3) }.joined(separator: ",")
            let node = try ClusterNode(name: "n\(i)", nats: order, tlsFrom: first,
                                       extra: (metrics ? ["--metrics", "127.0.0.1:\(basePort + 90 + i)"] : []) + extra)
            if first == nil { first = node.directory }
            started.append(node)
        }
        nodes = started
        caFile = DevelopmentCA.directory(forDataDirectory: first!) + "/ca.pem"
    }

    func session(_ node: Int) throws -> ChatSession {
        try ChatSession(server: nodes[node].address, tls: .certificateAuthority(file: caFile))
    }

    /// Registers on `node` and logs in there.
    func user(_ name: String, on node: Int) throws -> ChatSession {
        let session = try self.session(node)
        try session.register(name: name, password: testPassword)
        try session.logIn(name: name, password: testPassword)
        return session
    }

    /// alice on node `a` and bob on node `b`, accepted contacts; bob's user id.
    func friends(_ a: Int, _ b: Int) throws -> (alice: ChatSession, bob: ChatSession, bobID: UInt32) {
        let alice = try user("alice", on: a)
        let bob = try user("bob", on: b)
        try eventually { try alice.addContact("bob") }
        try eventually { try bob.acceptContact("alice") }
        return (alice, bob, try userID(of: "bob", in: alice))
    }

    func logs() -> String { nodes.map { "--- \($0.name)\n" + String($0.log.suffix(3_000)) }.joined(separator: "\n") }

    deinit {
        nodes.removeAll()
        nats.stop()
        nats.removeFiles()
    }
}

/// Reads (and acknowledges) up to `limit` deliveries and mails from `receiver`'s raw connection, counting each
/// message id it sees (a second copy shows as a count of 2).
func readAndAcknowledge(_ receiver: ChatSession, into received: inout [UInt64: Int], limit: Int = 10, waitMs: Int32 = 20) throws {
    var frames = 0
    while frames < limit, let frame = try receiver.connection.nextFrame(timeoutMs: waitMs) {
        frames += 1
        switch frame {
        case .deliver(let seq, _, let id, _, _):
            received[id, default: 0] += 1
            try receiver.connection.sendFrame(.deliveryAck(throughSeq: seq))
        case .mail(let seq, _, _, let id, _, _):
            received[id, default: 0] += 1
            try receiver.connection.sendFrame(.mailAck(throughSeq: seq))
        default:
            break
        }
    }
}

/// Retries `body` until it stops throwing or `ms` pass (a write made on one node is applied on the others
/// within milliseconds; tests that act on another node at once allow for it and measure it).
func eventually<T>(_ ms: UInt64 = 5_000, _ body: () throws -> T) throws -> T {
    let deadline = Clock.monotonicMs() + ms
    while true {
        do { return try body() } catch {
            if Clock.monotonicMs() >= deadline { throw error }
            usleep(20_000)
        }
    }
}

/// Waits up to 5 s for the outcome of `id`, reading (and acknowledging) `receiver`'s deliveries meanwhile
/// from its raw connection; nil when none came.
func exchange(_ sender: ChatSession, _ receiver: ChatSession, _ id: UInt64) throws -> ChatSession.SendOutcome? {
    let deadline = Clock.monotonicMs() + 5_000
    while Clock.monotonicMs() < deadline {
        while let frame = try receiver.connection.nextFrame(timeoutMs: 10) {
            if case .deliver(let seq, _, _, _, _) = frame { try receiver.connection.sendFrame(.deliveryAck(throughSeq: seq)) }
        }
        while let event = try sender.nextEvent(timeoutMs: 10) {
            if case .sendAck(id, let status) = event { return status == .delivered ? .delivered : .storedOffline }
            if case .sendError(id, let code, let message) = event { return .refused(code: code, message: message) }
        }
    }
    return nil
}

@Suite(.serialized) struct ClusterNodeTests {
    @Test(.enabled(if: natsServerPath() != nil, "nats-server is not installed (make test installs it)"))
    func seedFlowWithUsersOnDifferentNodes() throws {
        let cluster = try TestCluster(name: "seed", basePort: 27000, nodes: 3)
        let alice = try cluster.user("alice", on: 0)
        let bob = try cluster.user("bob", on: 1)
        let carol = try cluster.user("carol", on: 2)
        // Accounts registered on one node are usable on the others: alice (node 0) adds bob (node 1).
        let start = Clock.monotonicMs()
        try eventually { try alice.addContact("bob") }
        print("cluster: a registration on node 1 usable on node 0 after \(Clock.monotonicMs() - start) ms")
        try eventually { try bob.acceptContact("alice") }
        try eventually { try alice.addContact("carol") }
        try eventually { try carol.acceptContact("alice") }

        // Contact list with online status, across nodes.
        let view = try eventually { () -> [ContactInfo] in
            let list = try alice.contacts()
            guard list.count == 2, list.allSatisfy({ $0.relation == .accepted && $0.online }) else { throw ClientError("\(list)") }
            return list
        }
        #expect(view.map(\.name) == ["bob", "carol"])
        let bobID = view[0].userID, carolID = view[1].userID

        // Presence pushed on change: carol (node 2) logs out, alice (node 0) sees it.
        carol.connection.close()
        let offline = try waitForEvent(alice) { if case .presence(carolID, false) = $0 { return true } else { return false } }
        #expect(offline != nil, "alice never saw carol go offline\n\(cluster.logs())")
        #expect(try alice.openChat(with: bobID).online)
        let status = try alice.openChat(with: carolID)
        #expect(!status.online)
        #expect(status.text == "Contact offline at the moment, send offline message")

        // Live relay node 0 -> node 1: delivered only after bob's client acknowledged.
        try alice.send(to: bobID, messageID: 1, body: Array("hi bob".utf8))
        guard case .message(let seq, _, 1, _, let body)? = try waitForEvent(bob, isMessage) else {
            Issue.record("bob got no message\n\(cluster.logs())"); return
        }
        #expect(String(decoding: body, as: UTF8.self) == "hi bob")
        try bob.acknowledgeDeliveries(through: seq)
        #expect(try alice.awaitSendOutcome(1) == .delivered)
        // And back, node 1 -> node 0.
        let aliceID = alice.login!.userID
        try bob.send(to: aliceID, messageID: 1, body: Array("hi alice".utf8))
        guard case .message(let seq2, _, 1, _, _)? = try waitForEvent(alice, isMessage) else { Issue.record("alice got no reply"); return }
        try alice.acknowledgeDeliveries(through: seq2)
        #expect(try bob.awaitSendOutcome(1) == .delivered)

        // Offline mail for carol from two senders on two nodes, stored durably in the cluster.
        try bob.addContact("carol")
        let carolAgain = try cluster.session(0)
        try carolAgain.logIn(name: "carol", password: testPassword)
        try eventually { try carolAgain.acceptContact("bob") }
        carolAgain.connection.close()
        _ = try waitForEvent(alice) { if case .presence(carolID, false) = $0 { return true } else { return false } }
        usleep(300_000)  // bob's node has seen carol leave too
        for id: UInt64 in 2...3 {
            try alice.send(to: carolID, messageID: id, body: Array("alice \(id)".utf8))
            #expect(try alice.awaitSendOutcome(id) == .storedOffline)
        }
        try bob.send(to: carolID, messageID: 2, body: Array("bob 2".utf8))
        #expect(try bob.awaitSendOutcome(2) == .storedOffline)
        // carol logs in on yet another node: her mail, grouped by sender; MAIL_ACK deletes it everywhere.
        let carolOnOne = try cluster.session(1)
        let login = try carolOnOne.logIn(name: "carol", password: testPassword)
        #expect(login.pendingMail == 3)
        var mail: [(from: String, body: String, seq: UInt64)] = []
        while let event = try carolOnOne.nextEvent(timeoutMs: 5_000) {
            if case .mail(let seq, _, let name, _, _, let body) = event { mail.append((name, String(decoding: body, as: UTF8.self), seq)) }
            if case .mailEnd = event { break }
        }
        #expect(mail.map(\.body).sorted() == ["alice 2", "alice 3", "bob 2"])
        let senders = mail.map(\.from)
        #expect(senders == senders.sorted() || senders == senders.sorted().reversed(), "grouped by sender: \(senders)")
        try carolOnOne.acknowledgeMail(through: mail.map(\.seq).max() ?? 0)
        _ = try carolOnOne.contacts()  // a round trip: the ack was read
        carolOnOne.connection.close()
        usleep(300_000)
        let carolOnTwo = try cluster.session(2)
        let second = try carolOnTwo.logIn(name: "carol", password: testPassword)
        #expect(second.pendingMail == 0, "MAIL_ACK on node 1 deleted the mail for every node")

        // The same device logging in on another node takes the session over: bob (plain LOGIN on node 1)
        // logs in again on node 0; node 1 closes the old connection with sessionTakenOver, and alice does not
        // see him go offline.
        let bobElsewhere = try cluster.session(0)
        try bobElsewhere.logIn(name: "bob", password: testPassword)
        var takenOver = false
        let deadline = Clock.monotonicMs() + 5_000
        while !takenOver && Clock.monotonicMs() < deadline {
            do {
                if case .serverError(let code, let text)? = try bob.nextEvent(timeoutMs: 100) {
                    takenOver = code == ErrorCode.sessionTakenOver.rawValue
                    #expect(takenOver && text.contains("another server"), "\(code) \(text)")
                    break
                }
            } catch {
                Issue.record("bob's old session ended without ERROR sessionTakenOver: \(error)")
                break
            }
        }
        #expect(takenOver, "node 1 did not close bob's older session")
        let blip = try waitForEvent(alice, timeoutMs: 500) { if case .presence(bobID, false) = $0 { return true } else { return false } }
        #expect(blip == nil, "a takeover across nodes is not an offline blip")
        try alice.send(to: bobID, messageID: 9, body: Array("to the new session".utf8))
        #expect(try exchange(alice, bobElsewhere, 9) == .delivered)
    }

    /// A node added later from another node's `switchboard backup` (taken while that node runs) resumes the log
    /// after the backup's last entry: what was written after the backup reaches it too.
    @Test(.enabled(if: natsServerPath() != nil, "nats-server is not installed (make test installs it)"))
    func aNodeStartedFromAnotherNodesBackupCatchesUpAndServes() throws {
        let cluster = try TestCluster(name: "backup", basePort: 27500, nodes: 2)
        let (alice, bob, bobID) = try cluster.friends(0, 1)
        let folder = makeTempDirectory("sbnode-backup")
        defer { removeDirectory(folder) }
        let copy = folder + "/n2"
        let backup = try runSwitchboardCLI(["backup", copy, "--data", cluster.nodes[1].directory])
        #expect(backup.status == 0, "\(backup.err)")
        // Written after the backup: a new account, and mail for bob (who logs out).
        _ = try cluster.user("carol", on: 0)
        bob.connection.close()
        _ = try waitForEvent(alice) { if case .presence(bobID, false) = $0 { return true } else { return false } }
        try alice.send(to: bobID, messageID: 1, body: Array("written after the backup".utf8))
        #expect(try alice.awaitSendOutcome(1) == .storedOffline)
        let order = (0..<3).map { cluster.nats.url(($0 + 2) % 3) }.joined(separator: ",")
        let third = try ClusterNode(name: "n2", nats: order, tlsFrom: cluster.nodes[0].directory, directory: copy)
        cluster.nodes.append(third)
        // It resumed from the backup's applied entry, not from the start of the log.
        let starting = third.log.split(separator: "\n").first { $0.contains("cluster log starting") }.map(String.init) ?? ""
        let applied = starting.split(separator: " ").first { $0.hasPrefix("applied=") }.flatMap { UInt64($0.dropFirst(8)) } ?? 0
        #expect(applied > 0, "the new node did not start from the backup's applied entry: \(starting)")
        let bobOnThird = try cluster.session(2)
        let login = try bobOnThird.logIn(name: "bob", password: testPassword)
        #expect(login.pendingMail == 1, "the mail stored after the backup reached the new node")
        let carolOnThird = try cluster.session(2)
        #expect(throws: Never.self) { try carolOnThird.logIn(name: "carol", password: testPassword) }
    }

    /// Two nodes started with the same --node would take each other's forwards: the operator is told.
    /// alice's phone on n0 and laptop on n1, bob on n2 (real processes, TLS, NATS): what the phone sends is copied
    /// to the laptop (SENT_COPY through the cluster), and its SEND_ACK reaches both devices; --max-devices 2 counts
    /// both nodes' devices, so a tablet on n2 is refused.
    @Test(.enabled(if: natsServerPath() != nil, "nats-server is not installed (make test installs it)"))
    func aSendersDevicesOnTwoNodesSeeTheSameConversation() throws {
        let cluster = try TestCluster(name: "devices", basePort: 27800, nodes: 3, extra: ["--max-devices", "2"])
        // alice's first session (LOGIN, her implicit device) on n0 is the phone.
        let (phone, bob, bobID) = try cluster.friends(0, 2)
        let laptop = try cluster.session(1)
        _ = try laptop.logIn(name: "alice", password: testPassword, device: DeviceIdentity(id: "laptop", name: "laptop"))
        usleep(300_000)  // n0 has heard of the laptop on n1
        try phone.send(to: bobID, messageID: 77, body: Array("from the phone".utf8))
        guard case .message(let seq, _, 77, _, _)? = try waitForEvent(bob, isMessage) else {
            Issue.record("bob got no message\n\(cluster.logs())"); return
        }
        let copy = try waitForEvent(laptop) { if case .sentCopy(bobID, 77, _, _) = $0 { return true } else { return false } }
        #expect(copy != nil, "the laptop on n1 got no SENT_COPY\n\(cluster.logs())")
        try bob.acknowledgeDeliveries(through: seq)
        #expect(try phone.awaitSendOutcome(77) == .delivered)
        let ack = try waitForEvent(laptop) { if case .sendAck(77, .delivered) = $0 { return true } else { return false } }
        #expect(ack != nil, "the laptop on n1 got no SEND_ACK")
        // Two devices online, on two nodes: a third, on a third node, is over the limit.
        let tablet = try cluster.session(2)
        do {
            _ = try tablet.logIn(name: "alice", password: testPassword, device: DeviceIdentity(id: "tablet", name: "tablet"))
            Issue.record("a device over --max-devices 2 was let in")
        } catch {
            #expect("\(error)".contains("devices online"), "\(error)")
        }
    }

    /// NATS servers that require a token: nodes given it in a --cluster-credentials file relay across nodes; a wrong
    /// token is said at once (bulk-create fails in seconds naming the refusal); a credentials file others may read is
    /// refused before the node starts.
    @Test(.enabled(if: natsServerPath() != nil, "nats-server is not installed (make test installs it)"))
    func natsThatRequiresATokenIsJoinedWithTheCredentialsFile() throws {
        let folder = makeTempDirectory("sbcreds")
        defer { removeDirectory(folder) }
        func credentials(_ name: String, _ text: String, mode: mode_t = 0o600) throws -> String {
            let path = "\(folder)/\(name)"
            try text.write(toFile: path, atomically: false, encoding: .utf8)
            chmod(path, mode)
            return path
        }
        let good = try credentials("good", "# the cluster's NATS token\ntoken: s3cr3t-token\n")
        let wrong = try credentials("wrong", "token: not-the-token\n")
        let open = try credentials("open", "token: s3cr3t-token\n", mode: 0o644)
        let cluster = try TestCluster(name: "auth", basePort: 27900, nodes: 2, extra: ["--cluster-credentials", good],
                                      natsAuthorization: "token: \"s3cr3t-token\"")
        let (alice, bob, bobID) = try cluster.friends(0, 1)
        try alice.send(to: bobID, messageID: 5, body: Array("through an authorized NATS".utf8))
        #expect(try exchange(alice, bob, 5) == .delivered, "\(cluster.logs())")

        let started = Clock.monotonicMs()
        let refused = try runSwitchboard(["users", "bulk-create", "--cluster", cluster.nats.urls(from: 0), "--count", "1",
                                          "--password", "password1", "--cluster-credentials", wrong], timeout: 30)
        #expect(refused.status != 0 && refused.err.contains("refused the credentials"), "\(refused)")
        #expect(Clock.monotonicMs() - started < 15_000, "a refusal is said at once, not after the catch-up timeout")

        let data = makeTempDirectory("sbcreds-node")
        defer { removeDirectory(data) }
        let loose = try runSwitchboard(["serve", "--data", data, "--plaintext", "--listen", "127.0.0.1:0", "--cluster",
                                        cluster.nats.urls(from: 0), "--node", "n9", "--cluster-credentials", open], timeout: 30)
        #expect(loose.status != 0 && loose.err.contains("chmod 600"), "\(loose)")
    }

    @Test(.enabled(if: natsServerPath() != nil, "nats-server is not installed (make test installs it)"))
    func aSecondNodeWithTheSameNameIsRefusedAndTheFirstGoesOn() throws {
        let cluster = try TestCluster(name: "samename", basePort: 27600, nodes: 1)
        let twin = try ClusterNode(name: "n0", nats: cluster.nats.urls(from: 1), tlsFrom: cluster.nodes[0].directory)
        // The twin has not served anyone yet: it hears n0's heartbeats under its own name and exits 1, saying why.
        let exited = try eventually(8_000) { () -> Bool in
            guard !twin.process.process.isRunning else { throw ClientError("still running") }
            return true
        }
        #expect(exited && twin.process.process.terminationStatus == 1, "twin: \(twin.log.suffix(2_000))")
        #expect(twin.log.contains("another cluster node is running with --node n0"), "\(twin.log.suffix(2_000))")
        // The first one goes on serving (it may or may not have heard the twin before the twin gave up).
        let alice = try cluster.user("alice", on: 0)
        #expect(alice.login != nil)
    }

    @Test(.enabled(if: natsServerPath() != nil, "nats-server is not installed (make test installs it)"))
    func killingTheSendersNodeDuringABurstLosesAndDuplicatesNothing() throws {
        let cluster = try TestCluster(name: "killnode", basePort: 27100, nodes: 3)
        var (alice, bob, bobID) = try cluster.friends(0, 1)
        let total: UInt64 = 300
        for id in 1...total { alice.queueSend(to: bobID, messageID: id, body: Array("burst \(id)".utf8)) }
        try alice.flush()
        var acked = Set<UInt64>()
        var received: [UInt64: Int] = [:]
        var killed = false
        var reconnected = false
        let deadline = Clock.monotonicMs() + 90_000
        // bob reads (and acknowledges) at most 10 deliveries per round, so that when the sender's node dies
        // most of the burst is still in flight somewhere: unacknowledged at bob, or acknowledged with the
        // answer on its way.
        var inFlightAtKill = 0
        while acked.count < Int(total) && Clock.monotonicMs() < deadline {
            try readAndAcknowledge(bob, into: &received)
            // Killed right after bob acknowledged a round: those answers are on their way to n0 and die
            // with it, so alice resends messages bob already has (they must not reach him twice).
            if !killed && received.count >= 60 {
                cluster.nodes[0].kill9()
                killed = true
                inFlightAtKill = received.count - acked.count
                print("cluster: node n0 killed with \(acked.count) of \(total) acknowledged to alice, \(received.count) delivered to bob")
            }
            do {
                while let event = try alice.nextEvent(timeoutMs: 5) {
                    if case .sendAck(let id, _) = event { acked.insert(id) }
                }
            } catch {
                guard killed, !reconnected else { throw error }
                // The node died under alice: reconnect to another node and resend what was not acknowledged.
                alice = try eventually(10_000) {
                    let session = try cluster.session(2)
                    try session.logIn(name: "alice", password: testPassword)
                    return session
                }
                reconnected = true
                for id in 1...total where !acked.contains(id) {
                    alice.queueSend(to: bobID, messageID: id, body: Array("burst \(id)".utf8))
                }
                try alice.flush()
            }
        }
        try readAndAcknowledge(bob, into: &received, limit: .max, waitMs: 200)
        #expect(killed && reconnected, "the kill came after every acknowledgement: nothing was tested")
        #expect(inFlightAtKill > 0, "no delivered-but-unanswered message at the kill: the dedupe across nodes was not exercised")
        #expect(acked.count == Int(total), "acknowledged \(acked.count) of \(total)\n\(cluster.logs())")
        let missing = acked.filter { received[$0] == nil }
        let twice = received.filter { $0.value > 1 }.map(\.key).sorted()
        print("cluster: kill -9 of the sender's node, \(inFlightAtKill) delivered but unanswered at the kill: acked \(acked.count), received \(received.count), twice \(twice.count)")
        #expect(missing.isEmpty, "acknowledged but never delivered: \(missing.sorted().prefix(10))")
        #expect(twice.isEmpty, "delivered twice: \(twice.prefix(10))")
    }

    @Test(.enabled(if: natsServerPath() != nil, "nats-server is not installed (make test installs it)"))
    func killingTheSendersNATSServerDuringALiveBurstLosesAndDuplicatesNothing() throws {
        let cluster = try TestCluster(name: "killlink", basePort: 27400, nodes: 2)
        let (alice, bob, bobID) = try cluster.friends(0, 1)
        let total: UInt64 = 300
        for id in 1...total { alice.queueSend(to: bobID, messageID: id, body: Array("live \(id)".utf8)) }
        try alice.flush()
        var acked = Set<UInt64>()
        var received: [UInt64: Int] = [:]
        var killed = false
        let deadline = Clock.monotonicMs() + 90_000
        while acked.count < Int(total) && Clock.monotonicMs() < deadline {
            try readAndAcknowledge(bob, into: &received)
            if !killed && received.count >= 60 {
                // n0 lists NATS server 0 first: its link breaks with forwards and answers in flight.
                cluster.nats.kill9(0)
                killed = true
                print("cluster: NATS server 0 (n0's) killed with \(acked.count) acknowledged, \(received.count) delivered")
            }
            while let event = try alice.nextEvent(timeoutMs: 5) {
                if case .sendAck(let id, _) = event { acked.insert(id) }
            }
        }
        let twice = received.filter { $0.value > 1 }.map(\.key).sorted()
        let missing = acked.filter { received[$0] == nil }
        let resent = cluster.nodes[0].log.split(separator: "\n").filter { $0.contains("forwards sent again") }
        print("cluster: n0's NATS server killed mid-burst: acked \(acked.count) of \(total), received \(received.count), twice \(twice.count); \(resent.first.map(String.init) ?? "no forward sent again")")
        #expect(acked.count == Int(total), "acknowledged \(acked.count) of \(total)\n\(cluster.logs())")
        #expect(missing.isEmpty, "acknowledged but never received: \(missing.sorted().prefix(10))")
        #expect(twice.isEmpty, "received twice: \(twice.prefix(10))")
    }

    /// A node's NATS server dies; the node is on another server within the first reconnect pass (well inside the
    /// 3.5 s node timeout). Before, the other node dropped its whole directory of that node at the new epoch and
    /// rebuilt it from the snapshot: every user there read offline, then online again. Now it reconciles: nobody
    /// who stayed logged in gets a PRESENCE change.
    @Test(.enabled(if: natsServerPath() != nil, "nats-server is not installed (make test installs it)"))
    func aNodesNATSServerDyingFlapsNobodysPresence() throws {
        let cluster = try TestCluster(name: "noflap", basePort: 28800, nodes: 2)
        let (alice, bob, bobID) = try cluster.friends(0, 1)
        let aliceID = try userID(of: "alice", in: bob)
        try alice.send(to: bobID, messageID: 1, body: Array("before".utf8))
        #expect(try exchange(alice, bob, 1) == .delivered)
        var presence: [Bool] = []
        func drain(_ ms: UInt64) throws {
            let until = Clock.monotonicMs() + ms
            while Clock.monotonicMs() < until {
                while let frame = try bob.connection.nextFrame(timeoutMs: 20) {
                    if case .presence(aliceID, let online) = frame { presence.append(online) }
                }
            }
        }
        try drain(300)
        presence.removeAll()
        cluster.nats.kill9(0)  // n0 lists server 0 first: its link breaks, it reconnects elsewhere with a new epoch
        try drain(3_000)
        let reconnected = cluster.nodes[0].log.contains("cluster: NATS connected") &&
            cluster.nodes[0].log.components(separatedBy: "cluster: NATS connected").count >= 3
        #expect(reconnected, "n0 did not reconnect to another NATS server\n\(cluster.logs())")
        #expect(presence.isEmpty, "bob saw alice's presence change across n0's reconnect: \(presence)")
        try alice.send(to: bobID, messageID: 2, body: Array("after".utf8))
        #expect(try exchange(alice, bob, 2) == .delivered, "\(cluster.logs())")
    }

    @Test(.enabled(if: natsServerPath() != nil, "nats-server is not installed (make test installs it)"))
    func killingTheLogLeadersNATSServerLosesNoStoredMail() throws {
        let cluster = try TestCluster(name: "killnats", basePort: 27200, nodes: 2)
        let (alice, bob, bobID) = try cluster.friends(0, 1)
        bob.connection.close()
        _ = try waitForEvent(alice) { if case .presence(bobID, false) = $0 { return true } else { return false } }
        let leader = try cluster.nats.streamLeader("SB_LOG")
        let total: UInt64 = 200
        for id in 1...total {
            alice.queueSend(to: bobID, messageID: id, body: Array("mail \(id)".utf8))
            if id % 10 == 0 { try alice.flush(); usleep(5_000) }
            if id == 50 { cluster.nats.kill9(leader) }
        }
        try alice.flush()
        var outcomes: [UInt64: ChatSession.SendOutcome] = [:]
        for id in 1...total { outcomes[id] = try alice.awaitSendOutcome(id, timeoutMs: 60_000) }
        let stored = outcomes.filter { $0.value == .storedOffline }.map(\.key)
        let refused = outcomes.filter { if case .refused = $0.value { return true } else { return false } }
        print("cluster: kill -9 of the log's leader (NATS server \(leader)) mid-burst: stored \(stored.count), refused \(refused.count) of \(total)")
        if let first = refused.first { print("  e.g. \(first.key): \(first.value)") }
        let bobAgain = try cluster.session(0)
        let login = try bobAgain.logIn(name: "bob", password: testPassword)
        var mail: [UInt64: Int] = [:]
        while let event = try bobAgain.nextEvent(timeoutMs: 10_000) {
            if case .mail(let seq, _, _, let id, _, _) = event { mail[id, default: 0] += 1; try bobAgain.acknowledgeMail(through: seq) }
            if case .mailEnd = event { break }
        }
        #expect(Int(login.pendingMail) >= stored.count)
        for id in stored { #expect(mail[id] == 1, "stored message \(id) delivered \(mail[id] ?? 0) times") }
        #expect(stored.count + refused.count == Int(total))
    }

    @Test(.enabled(if: natsServerPath() != nil, "nats-server is not installed (make test installs it)"))
    func allOfNATSDownForAFewSecondsThenRecoveryWithoutRestartingNodes() throws {
        let cluster = try TestCluster(name: "natsdown", basePort: 27300, nodes: 2, metrics: true)
        let monitor = try SocketAddress(parsing: "127.0.0.1:27390")
        let alice = try cluster.user("alice", on: 0)
        let bob = try cluster.user("bob", on: 1)
        let dave = try cluster.user("dave", on: 0)
        try eventually { try alice.addContact("bob") }
        try eventually { try bob.acceptContact("alice") }
        try eventually { try alice.addContact("dave") }
        try eventually { try dave.acceptContact("alice") }
        let bobID = try userID(of: "bob", in: alice)
        let daveID = try userID(of: "dave", in: alice)
        let before = try scrape(monitor)
        #expect(before["switchboard_cluster_nats_connected"] == 1 && before["switchboard_cluster_nodes_alive"] == 1, "\(before.filter { $0.key.hasPrefix("switchboard_cluster") })")
        #expect(before["switchboard_cluster_log_state{state=\"ready\"}"] == 1)
        for i in 0..<3 { cluster.nats.kill9(i) }
        // The node says so in its metrics, health and log (and stays healthy: it relays locally).
        #expect(try eventually(timeoutMs: 10_000) {
            let down = try scrape(monitor)
            return down["switchboard_cluster_nats_connected"] == 0 && down["switchboard_cluster_nodes_alive"] == 0
        }, "metrics never showed NATS down")
        let health = try httpGet(monitor, "/healthz")
        #expect(health.status == 200 && health.body.contains("cluster store unavailable"), "\(health.status) \(health.body)")
        #expect(cluster.nodes[0].log.contains("cluster: NATS link lost"))
        // Local relaying goes on without NATS: alice and dave are both on node 0.
        let localStart = Clock.monotonicMs()
        try alice.send(to: daveID, messageID: 1, body: Array("local".utf8))
        #expect(try exchange(alice, dave, 1) == .delivered, "local relay stalled without NATS\n\(cluster.logs())")
        print("cluster: local relay with all of NATS down: \(Clock.monotonicMs() - localStart) ms")
        // A message for bob (node 1) while NATS is down: it waits (bounded by the commit timeout) or is refused clearly.
        try alice.send(to: bobID, messageID: 2, body: Array("across, during the outage".utf8))
        sleep(3)
        for i in 0..<3 { try cluster.nats.start(i) }
        try cluster.nats.waitUntilReady()
        let outcome = try alice.awaitSendOutcome(2, timeoutMs: 60_000)
        print("cluster: a cross-node send during a 3 s NATS outage: \(outcome)")
        if case .refused(let code, let text) = outcome {
            #expect(text.contains("cluster"), "a clear error (\(code)): \(text)")
        }
        // Recovery without restarting the nodes: a new cross-node message is delivered live.
        let recovered = Clock.monotonicMs()
        var live = false
        for attempt in 0..<40 where !live {
            let id = UInt64(100 + attempt)
            try alice.send(to: bobID, messageID: id, body: Array("after \(attempt)".utf8))
            live = try exchange(alice, bob, id) == .delivered
        }
        #expect(live, "no live cross-node relay after NATS came back\n\(cluster.logs())")
        let after = try scrape(monitor)
        #expect(after["switchboard_cluster_nats_connected"] == 1 && after["switchboard_cluster_nodes_alive"] == 1)
        #expect((after["switchboard_cluster_forwards_total{result=\"answered\"}"] ?? 0) >= 1)
        // The router published nothing while the link was down (its heartbeats at least were skipped, not queued).
        #expect((after["switchboard_cluster_publishes_skipped_offline_total"] ?? 0) >= 1)
        print("cluster: live cross-node relay again \(Clock.monotonicMs() - recovered) ms after NATS restarted")
    }
}
