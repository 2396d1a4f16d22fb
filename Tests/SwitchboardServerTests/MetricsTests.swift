// The monitoring listener on a real server (TLS, LMDB, loopback): counters move by exactly what a short
// relay sent, /healthz turns 503 when the store thread stops, and every HTTP limit is pushed past.
import Foundation
import Glibc
import Testing
import SwitchboardClient
import SwitchboardIO
import SwitchboardProtocol
@testable import SwitchboardServer

@Suite struct MetricsTests {
    static func metricsServer() throws -> (InProcessServer, SocketAddress) {
        let server = try InProcessServer { config in
            config.metricsAddress = try? SocketAddress(parsing: "127.0.0.1:0")
        }
        guard let address = server.server.metricsAddress else { throw TestFailure("no metrics listener") }
        return (server, address)
    }

    @Test func countersMoveByExactlyWhatWasRelayed() throws {
        let (server, address) = try Self.metricsServer()
        defer { server.stop() }
        let (alice, bob, bobID) = try friendsOn(server)
        let carol = try server.user("carol")
        let before = try scrape(address)
        #expect(before["switchboard_connections{phase=\"active\",transport=\"tls\"}"] == 3)
        #expect(before["switchboard_logins_total"] == 3)
        #expect(before["switchboard_registrations_total"] == 3)
        #expect((before["switchboard_tls_handshakes_total{result=\"full\"}"] ?? 0)
                + (before["switchboard_tls_handshakes_total{result=\"resumed\"}"] ?? 0) == 3)
        #expect((before["process_resident_memory_bytes"] ?? 0) > 1_048_576.0)
        #expect((before["process_open_fds"] ?? 0) >= 8)

        // N live messages, acknowledged by bob in one DELIVERY_ACK.
        let n = 40
        for i in 1...n { try alice.send(to: bobID, messageID: UInt64(i), body: Array("message \(i)".utf8)) }
        var lastSeq: UInt64 = 0
        var received = 0
        while received < n {
            guard case .message(let seq, _, _, _, _)? = try waitForEvent(bob, isMessage) else { Issue.record("bob got \(received)"); return }
            lastSeq = seq
            received += 1
        }
        try bob.acknowledgeDeliveries(through: lastSeq)
        for i in 1...n { #expect(try alice.awaitSendOutcome(UInt64(i)) == .delivered) }
        // A SEND to a non-contact is rejected (notAContact).
        let carolID = carol.login!.userID
        try alice.send(to: carolID, messageID: 1000, body: Array("not a contact".utf8))
        if case .refused(let code, _) = try alice.awaitSendOutcome(1000) {
            #expect(code == ErrorCode.notAContact.rawValue)
        } else { Issue.record("expected a refusal") }
        // Bob goes offline: 5 messages are stored.
        try Friends.offline(bob, seenBy: alice, bobID)
        for i in 1...5 { try alice.send(to: bobID, messageID: UInt64(2000 + i), body: Array("stored \(i)".utf8)) }
        for i in 1...5 { #expect(try alice.awaitSendOutcome(UInt64(2000 + i)) == .storedOffline) }

        let after = try scrape(address)
        func delta(_ key: String) -> Double { (after[key] ?? .nan) - (before[key] ?? 0) }
        #expect(delta("switchboard_messages_relayed_live_total") == Double(n))
        #expect(delta("switchboard_frames_received_total{type=\"send\"}") == Double(n + 1 + 5))
        #expect(delta("switchboard_frames_sent_total{type=\"deliver\"}") == Double(n))
        #expect(delta("switchboard_frames_received_total{type=\"deliveryAck\"}") == 1)
        #expect(delta("switchboard_deliveries_acknowledged_total") == Double(n))
        #expect(delta("switchboard_frames_sent_total{type=\"sendAck\"}") == Double(n + 5))
        #expect(delta("switchboard_relay_latency_seconds_count") == Double(n))
        // Plausible values: more than nothing, less than a second on average on loopback.
        let latencySum = delta("switchboard_relay_latency_seconds_sum")
        #expect(latencySum > 0 && latencySum / Double(n) < 1.0, "\(latencySum)")
        #expect(delta("switchboard_messages_rejected_total{reason=\"notAContact\"}") == 1)
        #expect(delta("switchboard_frames_sent_total{type=\"sendError\"}") == 1)
        #expect(delta("switchboard_messages_stored_total") == 5)
        #expect(delta("switchboard_connections_closed_total") == 1)
        #expect(after["switchboard_connections{phase=\"active\",transport=\"tls\"}"] == 2)
        // Every commit is in the latency histogram, and its ops in the batch-size one.
        #expect(after["switchboard_store_commit_seconds_count"] == after["switchboard_store_commits_total"])
        #expect(after["switchboard_store_batch_ops_sum"] == after["switchboard_store_ops_total"])
        #expect(delta("switchboard_store_ops_total") >= 5)
        // Histograms are cumulative and end in +Inf = count.
        #expect(after["switchboard_relay_latency_seconds_bucket{le=\"+Inf\"}"] == after["switchboard_relay_latency_seconds_count"])
        #expect((after["switchboard_loop_turn_seconds_count"] ?? 0) > 0)
        // Bob's login reads his 5 mails; acknowledging them moves the mail counters by 5.
        let bob2 = try server.loggedIn("bob")
        var mails: [UInt64] = []
        while true {
            guard let event = try bob2.nextEvent(timeoutMs: 10_000) else { Issue.record("no MAIL_END"); return }
            if case .mail(let seq, _, _, _, _, _) = event { mails.append(seq) }
            if case .mailEnd = event { break }
        }
        try bob2.acknowledgeMail(through: mails.last ?? 0)
        #expect(try eventually { try scrape(address)["switchboard_mail_acknowledged_total"] == 5 })
        let final = try scrape(address)
        #expect(final["switchboard_mail_delivered_total"] == 5)
        #expect(final["switchboard_frames_sent_total{type=\"mail\"}"] == 5)
        #expect(final["switchboard_logins_total"] == 4)
    }

    @Test func healthzTurns503WhenTheStoreThreadStops() throws {
        let (server, address) = try Self.metricsServer()
        defer { server.stop() }
        let healthy = try httpGet(address, "/healthz")
        #expect(healthy.status == 200)
        #expect(healthy.body.hasPrefix("ok"))
        server.server.stopStoreThreadForTesting()
        #expect(try eventually { try httpGet(address, "/healthz").status == 503 })
        let sick = try httpGet(address, "/healthz")
        #expect(sick.body.contains("store thread is not running"))
        // The loop itself still answers everything else.
        #expect(try httpGet(address, "/metrics").status == 200)
    }

    @Test func healthzTurns503WhileACommitIsStuckAndRecovers() throws {
        let server = try InProcessServer { config in
            config.metricsAddress = try? SocketAddress(parsing: "127.0.0.1:0")
            config.storeStallMs = 200
        }
        defer { server.stop() }
        let address = server.server.metricsAddress!
        #expect(try httpGet(address, "/healthz").status == 200)
        server.server.delayNextCommitForTesting(ms: 1_500)
        // An account write needs a commit: it hangs for 1.5 s on the store thread.
        let path = server.server.adminSocketPath!
        let fd = try UnixSocket.connect(path: path)
        defer { Sys.close(fd) }
        _ = Array("users add stuck password-for-stuck\n".utf8).withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        #expect(try eventually(timeoutMs: 1_400) { try httpGet(address, "/healthz").status == 503 })
        #expect(try httpGet(address, "/healthz").body.contains("store commit running for"))
        // Once the commit returns the answer comes and health is back.
        let added = try adminRequest(fd: fd, "ping")  // the first answer on this connection is the add's
        #expect(added.ok && added.text.contains("created stuck"))
        #expect(try eventually { try httpGet(address, "/healthz").status == 200 })
    }

    @Test func httpLimitsAndErrors() throws {
        let (server, address) = try Self.metricsServer()
        defer { server.stop() }
        #expect(try httpGet(address, "/nope").status == 404)
        #expect(try httpGet(address, "/").status == 200)
        let post = try rawHTTP(address, Array("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n".utf8)).answer
        #expect(post?.status == 405)
        #expect(post?.head.contains("Allow: GET, HEAD") == true)
        #expect(try rawHTTP(address, Array("HELLO\r\n\r\n".utf8)).answer?.status == 400)
        let head = try rawHTTP(address, Array("HEAD /metrics HTTP/1.1\r\n\r\n".utf8)).answer
        #expect(head?.status == 200)
        #expect(head?.body.isEmpty == true)
        // A request head over 8 KiB: 431 and closed.
        let big = Array("GET /metrics HTTP/1.1\r\nX-Padding: ".utf8) + [UInt8](repeating: UInt8(ascii: "a"), count: 9000)
        let tooLarge = try rawHTTP(address, big)
        #expect(tooLarge.answer?.status == 431)
        #expect(tooLarge.closed)
        // 16 idle connections are held; the 17th is answered 503 and closed at once.
        var idle: [Int32] = []
        defer { for fd in idle { Sys.close(fd) } }
        for _ in 0..<MetricsHTTP.maxConnections { idle.append(try Socket.connectBlocking(to: address)) }
        #expect(eventually { server.server.metricsHTTP.map { $0.listener.connectionCount } == MetricsHTTP.maxConnections })
        let refused = try rawHTTP(address, [])
        #expect(refused.answer?.status == 503)
        #expect(refused.closed)
        // A request trickling in a header line per second is still answered 408 at 5 s after accept: the
        // deadline does not move with each read (a slow sender cannot hold a connection).
        let start = Clock.monotonicMs()
        let trickle = idle[0]
        var answer = ""
        func sendLine(_ text: String) { _ = Array(text.utf8).withUnsafeBytes { Glibc.send(trickle, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
        sendLine("GET /metrics HTTP/1.1\r\n")
        while Clock.monotonicMs() - start < 9_000 && answer.isEmpty {
            var pfd = pollfd(fd: trickle, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 1_000) > 0 {
                var chunk = [UInt8](repeating: 0, count: 4096)
                let n = chunk.withUnsafeMutableBytes { Glibc.read(trickle, $0.baseAddress, $0.count) }
                answer = n > 0 ? String(decoding: chunk[0..<n], as: UTF8.self) : "(closed)"
            } else {
                sendLine("X-Slow: 1\r\n")
            }
        }
        #expect(answer.hasPrefix("HTTP/1.1 408"), "\(answer)")
        let waited = Clock.monotonicMs() - start
        #expect(waited >= 2_000 && waited <= 7_500)
        // The loop was never blocked: a scrape works after all of it.
        for fd in idle { Sys.close(fd) }
        idle.removeAll()
        #expect(eventually { (try? httpGet(address, "/metrics").status) == 200 })
    }
}

extension Friends {
    /// Closes `session` and waits until `watcher` saw `id` go offline.
    static func offline(_ session: ChatSession, seenBy watcher: ChatSession, _ id: UInt32) throws {
        session.connection.close()
        _ = try waitForEvent(watcher) { if case .presence(id, false) = $0 { return true } else { return false } }
    }
}
