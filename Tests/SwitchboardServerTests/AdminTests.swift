// The admin socket on a real server (TLS, LMDB, loopback): `who` shows the addresses the sockets really
// have, `kick` moves unacknowledged deliveries to the mailbox, account writes go through the running
// server, the socket is 0600, a live socket is never taken over and a stale one is replaced.
import Foundation
import Glibc
import Testing
import SwitchboardClient
import SwitchboardIO
import SwitchboardProtocol
@testable import SwitchboardServer

@Suite struct AdminTests {
    @Test func whoListsUsersWithTheirRealAddressesAndTheSocketIs0600() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        guard let path = server.server.adminSocketPath else { Issue.record("no admin socket"); return }
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & S_IFMT == S_IFSOCK)
        #expect(info.st_mode & 0o777 == 0o600)

        // alice from 127.0.0.2, bob from 127.0.0.1.
        let aliceConnection = try ChatConnection(server: server.address, tls: server.clientTLS,
                                                 from: try SocketAddress(parsing: "127.0.0.2:0"))
        let alice = ChatSession(connection: aliceConnection)
        try alice.register(name: "alice", password: testPassword)
        let aliceLogin = try alice.logIn(name: "alice", password: testPassword)
        let bob = try server.user("bob")
        let aliceLocal = try Socket.localAddress(aliceConnection.fd).description
        let bobLocal = try Socket.localAddress(bob.connection.fd).description
        #expect(aliceLocal.hasPrefix("127.0.0.2:"))

        let (ok, text) = try adminRequest(path, "who")
        #expect(ok)
        let rows = text.split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
        #expect(rows.first?.prefix(6) == ["NAME", "DEVICE", "ADDRESS", "SINCE", "TRANSPORT", "QUEUED"])
        let users = Dictionary(uniqueKeysWithValues: rows.dropFirst().map { ($0[0], $0) })
        #expect(users.count == 2)
        #expect(users["alice"]?[2] == aliceLocal)
        #expect(users["alice"]?[2] == aliceLogin.address)
        #expect(users["bob"]?[2] == bobLocal)
        #expect(users["alice"]?[4].hasPrefix("TLSv1.") == true)
        #expect(users["bob"]?[5] == "0")
        #expect(users["bob"]?[3].hasSuffix("Z") == true)
        #expect(users["alice"]?[1] == "-", "a plain LOGIN has no device")
    }

    @Test func whoNamesEachDeviceOfAUser() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        guard let path = server.server.adminSocketPath else { Issue.record("no admin socket"); return }
        let plain = try server.user("carol")
        let laptop = try server.session()
        try laptop.logIn(name: "carol", password: testPassword, device: DeviceIdentity(id: "lap1", name: "carol's laptop"))
        let phone = try server.session()
        try phone.logIn(name: "carol", password: testPassword, device: DeviceIdentity(id: "ph1", name: ""))
        let (ok, text) = try adminRequest(path, "who")
        #expect(ok)
        let devices = text.split(separator: "\n").dropFirst()
            .map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
            .filter { $0.first == "carol" }.map { $0[1] }.sorted()
        // The readable name when given, else the device id; the plain login of server.user("carol") shows "-".
        #expect(devices == ["-", "carol's laptop", "ph1"])
        withExtendedLifetime((plain, laptop, phone)) {}
    }

    @Test func kickClosesTheSessionAndItsUnacknowledgedDeliveriesGoToItsMailbox() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let path = server.server.adminSocketPath!
        let (alice, bob, bobID) = try friendsOn(server)
        for i in 1...3 { try alice.send(to: bobID, messageID: UInt64(i), body: Array("unacked \(i)".utf8)) }
        var seen = 0
        while seen < 3 {
            guard try waitForEvent(bob, isMessage) != nil else { Issue.record("bob got \(seen) of 3"); return }
            seen += 1
        }
        // talkers: the busiest sessions since this connection's previous call (ties by name).
        let admin = try UnixSocket.connect(path: path)
        defer { Sys.close(admin) }
        let top1 = try adminRequest(fd: admin, "talkers 1").text.split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }
        #expect(top1.count == 2)
        #expect(top1.last?[0] == "alice" && top1.last?[7] == "3" && top1.last?[8] == "0")
        #expect(try adminRequest(fd: admin, "talkers 5").text.split(separator: "\n").count == 1)  // nothing since
        // Bob read all three but acknowledged none: kick him.
        let (ok, text) = try adminRequest(path, "kick bob maintenance window")
        #expect(ok, "\(text)")
        #expect(text.hasPrefix("kicked bob"))
        let closing = try waitForEvent(bob) { if case .serverError = $0 { return true } else { return false } }
        guard case .serverError(let code, let message)? = closing else { Issue.record("bob was not told"); return }
        #expect(code == ErrorCode.kicked.rawValue)
        #expect(message == "maintenance window")
        // The three went to bob's mailbox: alice hears storedOffline for each.
        for i in 1...3 { #expect(try alice.awaitSendOutcome(UInt64(i)) == .storedOffline) }
        #expect(try adminRequest(path, "kick bob").text.contains("not online"))
        // Bob logs in again and gets them as mail.
        let bob2 = try server.session()
        let login = try bob2.logIn(name: "bob", password: testPassword)
        #expect(login.pendingMail == 3)
        var bodies: [String] = []
        while true {
            guard let event = try bob2.nextEvent(timeoutMs: 10_000) else { Issue.record("no MAIL_END"); return }
            if case .mail(_, _, let from, _, _, let body) = event {
                #expect(from == "alice")
                bodies.append(String(decoding: body, as: UTF8.self))
            }
            if case .mailEnd = event { break }
        }
        #expect(bodies == ["unacked 1", "unacked 2", "unacked 3"])
        let stats = try adminRequest(path, "stats").text
        #expect(stats.contains("\nkicks 1\n"))
        #expect(stats.contains("\ndeliveries_rerouted 3\n"))
    }

    @Test func accountWritesThroughTheRunningServer() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let path = server.server.adminSocketPath!
        let alice = try server.user("alice")
        #expect(try adminRequest(path, "users add dave first password").ok)
        #expect(try adminRequest(path, "users add dave another password").text.contains("already exists"))
        #expect(try adminRequest(path, "users add bad/name password123").text.contains("invalid user name"))
        #expect(try adminRequest(path, "users add erin short").text.contains("passwords need"))
        let dave = try server.loggedIn("dave", password: "first password")
        try befriend(alice, "alice", dave, "dave")
        // passwd: the old password stops working, the new one works.
        #expect(try adminRequest(path, "users passwd dave second password").ok)
        #expect(try adminRequest(path, "users passwd nobody second password").text.contains("no such user"))
        #expect(throws: (any Error).self) { try server.loggedIn("dave", password: "first password") }
        let dave2 = try server.loggedIn("dave", password: "second password")  // takes over dave's session
        _ = dave
        // delete while online: dave is closed (kicked), alice sees the contact removed, logins fail.
        let (ok, text) = try adminRequest(path, "users delete dave")
        #expect(ok, "\(text)")
        #expect(text.contains("1 contacts told"))
        let closing = try waitForEvent(dave2) { if case .serverError = $0 { return true } else { return false } }
        if case .serverError(let code, _)? = closing { #expect(code == ErrorCode.kicked.rawValue) } else { Issue.record("dave not told") }
        let removed = try waitForEvent(alice) { if case .contactUpdate(let c) = $0 { return c.name == "dave" && c.relation == .removed } else { return false } }
        #expect(removed != nil)
        #expect(try alice.contacts().isEmpty)
        #expect(throws: (any Error).self) { try server.loggedIn("dave", password: "second password") }
        #expect(try adminRequest(path, "users delete dave").text.contains("no such user"))
        // The name is free again, with a new user id.
        #expect(try adminRequest(path, "users add dave third password").ok)
    }

    @Test func protocolLimitsAndErrors() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let path = server.server.adminSocketPath!
        #expect(try adminRequest(path, "ping") == (true, "pong\n"))
        #expect(try adminRequest(path, "frobnicate").text.contains("unknown"))
        // reload: the same as SIGHUP (without a config file it rebuilds the TLS context from the same files).
        let reload = try adminRequest(path, "reload")
        #expect(reload.ok, "\(reload.text)")
        #expect(reload.text.hasPrefix("reload: 0 change(s) applied live"), "\(reload.text)")
        #expect(server.server.reloadsCompleted == 1)
        // Several requests on one connection are answered in order.
        let fd = try UnixSocket.connect(path: path)
        defer { Sys.close(fd) }
        #expect(try adminRequest(fd: fd, "ping").ok)
        #expect(try adminRequest(fd: fd, "stats").text.contains("connections 0\n"))
        // A request line over 4096 bytes: an error, then the connection is closed.
        let long = try UnixSocket.connect(path: path)
        defer { Sys.close(long) }
        let answer = try adminRequest(fd: long, "who " + String(repeating: "x", count: 5000))
        #expect(!answer.ok && answer.text.contains("over 4096 bytes"))
        var byte: UInt8 = 0
        var pfd = pollfd(fd: long, events: Int16(POLLIN), revents: 0)
        _ = poll(&pfd, 1, 5_000)
        #expect(Glibc.read(long, &byte, 1) == 0)
        // Past 16 connections the next one is refused.
        var held: [Int32] = []
        defer { for fd in held { Sys.close(fd) } }
        // `fd` is still open (`long` was closed by the server): 15 more make 16.
        for _ in 0..<(AdminSocket.maxConnections - 1) { held.append(try UnixSocket.connect(path: path)) }
        // A round trip on each: the server has accepted all 16 (reading the listener's count from this
        // thread would race with the loop thread that changes it: it crashed once under load).
        for fd in held { #expect(try adminRequest(fd: fd, "ping").ok) }
        let refused = try adminRequest(path, "ping")
        #expect(!refused.ok && refused.text.contains("too many admin connections"))
    }

    @Test func aLiveSocketIsNeverTakenOverAndAStaleOneIsReplaced() throws {
        let directory = makeTempDirectory("sbadmin")
        defer { removeDirectory(directory) }
        let path = directory + "/admin.sock"
        let first = try UnixSocket.listen(path: path)
        #expect(throws: UnixSocketError.self) { _ = try UnixSocket.listen(path: path) }
        Sys.close(first)  // the file stays: a stale socket, as after a crash
        #expect(FileManager.default.fileExists(atPath: path))
        let second = try UnixSocket.listen(path: path)
        Sys.close(second)
        // A path that is not a socket is never replaced.
        unlink(path)
        _ = FileManager.default.createFile(atPath: path, contents: Data("keep me".utf8))
        #expect(throws: (any Error).self) { _ = try UnixSocket.listen(path: path) }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "keep me")
    }
}

extension InProcessServer {
    func loggedIn(_ name: String, password: String) throws -> ChatSession {
        let s = try session()
        try s.logIn(name: name, password: password)
        return s
    }
}
