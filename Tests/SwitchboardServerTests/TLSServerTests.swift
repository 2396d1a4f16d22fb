// TLS inside the server's loop: real OpenSSL on loopback against the real server.
import Foundation
import Glibc
import Testing
import SwitchboardClient
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardTLS
@testable import SwitchboardServer

@Suite struct TLSServerTests {
    @Test func largeMessageCrossesSeveralRecords() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let alice = try server.user("alice")
        let bob = try server.user("bob")
        #expect(alice.connection.tls?.protocolVersion == "TLSv1.3")
        try befriend(alice, "alice", bob, "bob")
        let bobID = try userID(of: "bob", in: alice)
        let maxBody = Int(alice.connection.welcome.limits.maxBodyBytes)
        let body = (0..<maxBody).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        try alice.send(to: bobID, messageID: 1, body: body)
        guard case .message(let seq, _, _, _, let received)? = try waitForEvent(bob, isMessage) else {
            Issue.record("no delivery"); return
        }
        #expect(received == body)
        try bob.acknowledgeDeliveries(through: seq)
        #expect(try alice.awaitSendOutcome(1) == .delivered)
    }

    @Test func plaintextClientOnTheTLSPortIsClosedWithoutHarmingOthers() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let alice = try server.user("alice")
        let raw = try RawSocket(server.address)
        raw.write(helloFrame())
        let reply = raw.readUntilClosed()
        #expect(reply.closed)
        // No Switchboard frame ever went out in clear text.
        #expect(RawSocket.serverFrames(reply.bytes).isEmpty)
        #expect(try alice.contacts().isEmpty)
    }

    @Test func clientThatStopsMidHandshakeIsClosedAtTheTimeout() throws {
        let server = try InProcessServer { $0.handshakeTimeoutMs = 300 }
        defer { server.stop() }
        let raw = try RawSocket(server.address)
        // The first bytes of a TLS ClientHello record header, then silence.
        raw.write([0x16, 0x03, 0x01])
        let started = Clock.monotonicMs()
        let reply = raw.readUntilClosed(timeoutMs: 10_000)
        #expect(reply.closed)
        #expect(Clock.monotonicMs() - started < 9_000)
        _ = try server.user("still-fine")
    }

    @Test func resumedSessionsResume() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let first = try server.session()
        #expect(first.connection.tls?.sessionReused == false)
        let ticket = try #require(first.connection.resumableTLSSession)
        var options = try #require(server.clientTLS)
        options.session = ticket
        let second = try ChatSession(server: server.address, tls: options)
        #expect(second.connection.tls?.sessionReused == true)
    }

    @Test func sighupReloadKeepsClientsAndRefusesABrokenCertificate() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let (alice, bob, bobID) = try friendsOn(server)
        let oldKey = try #require(alice.connection.tls?.serverPublicKeyFingerprint)

        // New CA and certificate on disk, then reload.
        let tlsDirectory = DevelopmentCA.directory(forDataDirectory: server.directory)
        let fresh = try DevelopmentCA.create(in: tlsDirectory, extraNames: [], force: true)
        let newCA = server.directory + "/new-ca.pem"
        try FileManager.default.copyItem(atPath: fresh.caCertificate, toPath: newCA)
        server.server.requestReload()
        var newcomer: ChatSession?
        for _ in 0..<50 where newcomer == nil {
            newcomer = try? ChatSession(server: server.address, tls: .certificateAuthority(file: newCA))
            if newcomer == nil { usleep(50_000) }
        }
        let connected = try #require(newcomer)
        #expect(connected.connection.tls?.serverPublicKeyFingerprint == fresh.serverPublicKeyFingerprint)
        #expect(fresh.serverPublicKeyFingerprint != oldKey)

        // Existing connections stay up and keep chatting.
        try alice.send(to: bobID, messageID: 5, body: Array("after reload".utf8))
        guard case .message(let seq, _, _, _, _)? = try waitForEvent(bob, isMessage) else {
            Issue.record("existing connection lost by reload"); return
        }
        try bob.acknowledgeDeliveries(through: seq)
        #expect(try alice.awaitSendOutcome(5) == .delivered)

        // A broken certificate is refused; the last good one stays in use.
        try "not a certificate".write(toFile: fresh.serverCertificate, atomically: true, encoding: .utf8)
        server.server.requestReload()
        usleep(200_000)
        let again = try ChatSession(server: server.address, tls: .certificateAuthority(file: newCA))
        #expect(again.connection.tls?.serverPublicKeyFingerprint == fresh.serverPublicKeyFingerprint)
    }

    @Test func wrongCAIsRefusedByTheClient() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let otherDirectory = makeTempDirectory("sbca")
        defer { removeDirectory(otherDirectory) }
        let other = try DevelopmentCA.create(in: otherDirectory, extraNames: [], force: false)
        #expect(throws: (any Error).self) {
            _ = try ChatSession(server: server.address, tls: .certificateAuthority(file: other.caCertificate))
        }
    }
}
