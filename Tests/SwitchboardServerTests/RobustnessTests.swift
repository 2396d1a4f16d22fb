// Hostile and broken clients against the real server: nothing they send crashes it, grows its
// memory without bound, or disturbs other clients.
import Foundation
import Glibc
import Testing
import SwitchboardClient
import SwitchboardIO
import SwitchboardProtocol
@testable import SwitchboardServer

@Suite struct RobustnessTests {
    @Test func framesOtherThanHelloRegisterLoginAreRefusedBeforeLogin() throws {
        let server = try InProcessServer(tls: false)
        defer { server.stop() }
        // Before HELLO: anything else closes.
        let raw = try RawSocket(server.address)
        raw.write(.listContacts(requestID: 1))
        let first = raw.readUntilClosed()
        #expect(first.closed)
        #expect(errorCodes(in: RawSocket.serverFrames(first.bytes)) == [ErrorCode.notAllowedNow.rawValue])
        // After HELLO but before LOGIN: SEND is refused and the connection closed.
        let raw2 = try RawSocket(server.address)
        raw2.write(helloFrame())
        raw2.write(.send(to: 1, messageID: 1, body: ByteView([1, 2, 3])))
        let second = raw2.readUntilClosed()
        let frames = RawSocket.serverFrames(second.bytes)
        #expect(second.closed)
        guard case .welcome? = frames.first else { Issue.record("no WELCOME: \(frames)"); return }
        #expect(errorCodes(in: frames) == [ErrorCode.notAllowedNow.rawValue])
    }

    @Test func hugeLengthPrefixBeforeLoginIsRefusedWithoutGrowingMemory() throws {
        let server = try InProcessServer(tls: false)
        defer { server.stop() }
        let before = residentKiB()
        var sockets: [RawSocket] = []
        for _ in 0..<20 {
            let raw = try RawSocket(server.address)
            // 100 MB length prefix, then a few bytes of "body".
            raw.write([0x06, 0x40, 0x00, 0x00, FrameType.hello.rawValue, 1, 2, 3])
            sockets.append(raw)
        }
        for raw in sockets {
            let reply = raw.readUntilClosed()
            #expect(reply.closed)
            #expect(errorCodes(in: RawSocket.serverFrames(reply.bytes)) == [ErrorCode.frameTooLarge.rawValue])
        }
        let grown = residentKiB() - before
        // 20 x 100 MB would be 2 GB; the server reserved nothing for them. The bound is loose
        // because other suites run in this process at the same time.
        #expect(grown < 256 * 1024, "RSS grew by \(grown) KiB")
        // And it still serves normal clients.
        _ = try server.user("after")
    }

    @Test func clientThatDisconnectsMidFrameDoesNotDisturbOthers() throws {
        let server = try InProcessServer(tls: false)
        defer { server.stop() }
        let (alice, _, bobID) = try friendsOn(server)
        // A logged-in client sends half a SEND frame and vanishes.
        let half = try RawSocket(server.address)
        half.write(helloFrame())
        half.write(.login(requestID: 1, name: "bob", password: TextView(testPassword)))
        let buffer = ByteBuffer()
        FrameEncoder.encode(ClientFrame.send(to: bobID, messageID: 9, body: ByteView(Array(repeating: 7, count: 1000))), into: buffer)
        half.write(Array(buffer.readableArray().prefix(500)))
        usleep(50_000)
        _ = half  // closes at end of scope
        // Others still chat.
        let carol = try server.user("carol")
        try befriend(alice, "alice", carol, "carol")
        let carolID = try userID(of: "carol", in: alice)
        try alice.send(to: carolID, messageID: 1, body: Array("still here".utf8))
        guard case .message(let seq, _, _, _, _)? = try waitForEvent(carol, isMessage) else {
            Issue.record("no delivery after a broken client"); return
        }
        try carol.acknowledgeDeliveries(through: seq)
        #expect(try alice.awaitSendOutcome(1) == .delivered)
    }

    @Test func loginTimeoutClosesSilentConnections() throws {
        let server = try InProcessServer(tls: false) { $0.limits.loginTimeoutMs = 300 }
        defer { server.stop() }
        let raw = try RawSocket(server.address)
        raw.write(helloFrame())
        let reply = raw.readUntilClosed(timeoutMs: 10_000)
        #expect(reply.closed)
        #expect(errorCodes(in: RawSocket.serverFrames(reply.bytes)) == [ErrorCode.loginTimeout.rawValue])
    }

    @Test func idleConnectionsArePingedAndClosedWhenSilent() throws {
        let server = try InProcessServer(tls: false) {
            $0.limits.pingIntervalMs = 200
            $0.limits.idleTimeoutMs = 600
        }
        defer { server.stop() }
        _ = try server.user("frank")   // registers on its own connection
        let raw = try RawSocket(server.address)
        raw.write(helloFrame())
        raw.write(.login(requestID: 1, name: "frank", password: TextView(testPassword)))
        let reply = raw.readUntilClosed(timeoutMs: 10_000)
        let frames = RawSocket.serverFrames(reply.bytes)
        #expect(reply.closed)
        #expect(frames.contains { if case .ping = $0 { return true } else { return false } })
        #expect(errorCodes(in: frames).last == ErrorCode.idleTimeout.rawValue)
    }

    @Test func thousandSeededRandomByteStringsThenANormalClient() throws {
        let server = try InProcessServer(tls: false)
        defer { server.stop() }
        var rng = SplitMix64(seed: 0x5EED_2026)
        let hello = { () -> [UInt8] in
            let b = ByteBuffer(); FrameEncoder.encode(helloFrame(), into: b); return b.readableArray()
        }()
        for i in 0..<1000 {
            let raw = try RawSocket(server.address)
            var bytes: [UInt8] = []
            // Half start with a valid HELLO so the random part hits the post-HELLO decoder too.
            if i % 2 == 0 { bytes += hello }
            let count = Int(rng.next() % 300)
            for _ in 0..<count { bytes.append(UInt8(truncatingIfNeeded: rng.next())) }
            // Some use a plausible small length prefix so bodies get parsed.
            if i % 3 == 0 && count > 5 {
                let start = i % 2 == 0 ? hello.count : 0
                bytes[start] = 0; bytes[start + 1] = 0; bytes[start + 2] = UInt8((count - 4) >> 8); bytes[start + 3] = UInt8((count - 4) & 0xFF)
                bytes[start + 4] = UInt8(1 + rng.next() % 14)
            }
            raw.write(bytes)
        }
        let (alice, bob, bobID) = try friendsOn(server)
        try alice.send(to: bobID, messageID: 1, body: Array("fine".utf8))
        guard case .message(let seq, _, _, _, _)? = try waitForEvent(bob, isMessage) else {
            Issue.record("server no longer relays"); return
        }
        try bob.acknowledgeDeliveries(through: seq)
        #expect(try alice.awaitSendOutcome(1) == .delivered)
    }

    @Test func slowConsumerIsDisconnectedAndItsMessagesGoToTheMailbox() throws {
        let server = try InProcessServer {
            $0.outputSoftCapBytes = 16 << 10
            $0.outputHardCapBytes = 64 << 10
        }
        defer { server.stop() }
        let (alice, bob, bobID) = try friendsOn(server)
        // Bob reads but never acknowledges: his backlog grows past the soft cap, so later messages
        // are stored rather than queued; nothing is lost.
        let body = Array(repeating: UInt8(ascii: "x"), count: 2000)
        for i in 1...60 { alice.queueSend(to: bobID, messageID: UInt64(i), body: body) }
        try alice.flush()
        // Past the soft cap, messages are stored instead of queued.
        for i in 30...60 {
            #expect(try alice.awaitSendOutcome(UInt64(i), timeoutMs: 20_000) == .storedOffline)
        }
        // Bob drops: the live deliveries he never acknowledged move to his mailbox.
        bob.connection.close()
        var stored = 31
        for i in 1..<30 {
            switch try alice.awaitSendOutcome(UInt64(i), timeoutMs: 20_000) {
            case .storedOffline: stored += 1
            case .delivered: Issue.record("message \(i) acknowledged as delivered, but bob never acknowledged it")
            case .refused(_, let m): Issue.record("refused: \(m)")
            }
        }
        #expect(stored == 60)
    }
}

