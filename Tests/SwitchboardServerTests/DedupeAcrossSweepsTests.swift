// Issue 8, item 8: a resend of a (sender, id) pair is never delivered twice, whether the sender's
// in-memory window was swept while it was offline or the server restarted in between.
import Foundation
import Glibc
import SwitchboardClient
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardServer
import Testing

/// Logs `name` in over a raw socket and reads until MAIL_END.
func rawLogin(_ address: String, _ name: String) throws -> RawClient {
    let client = try RawClient(address)
    client.hello()
    client.send(.login(requestID: 1, name: TextView(name), password: TextView(testPassword)))
    let frames = client.readFrames(timeoutMs: 5_000) { if case .mailEnd = $0 { return true } else { return false } }.frames
    guard frames.contains(where: { if case .mailEnd = $0 { return true } else { return false } }) else {
        throw ClientError("\(name) did not log in: \(frames)")
    }
    return client
}

/// DELIVER and MAIL frames carrying `messageID`, acknowledged as they come, within `ms`.
func copies(of messageID: UInt64, at client: RawClient, withinMs ms: Int) -> Int {
    var count = 0
    for frame in client.readFrames(timeoutMs: ms, quietMs: nil, stop: { _ in false }).frames {
        switch frame {
        case .deliver(let seq, _, let id, _, _):
            client.send(.deliveryAck(throughSeq: seq))
            if id == messageID { count += 1 }
        case .mail(let seq, _, _, let id, _, _):
            client.send(.mailAck(throughSeq: seq))
            if id == messageID { count += 1 }
        default:
            break
        }
    }
    return count
}

@Suite(.serialized) struct DedupeAcrossSweepsTests {
    @Test func aResendAfterASweepAndAfterARestartIsNotDeliveredAgain() throws {
        let directory = makeTempDirectory("sbdedupe")
        defer { removeDirectory(directory) }
        let configure: (inout ServerConfiguration) -> Void = { $0.maintenanceIntervalMs = 100 }
        var server: InProcessServer? = try InProcessServer(directory: directory, tls: false, configure: configure)
        let friends = try Friends(server!.session)
        friends.bob.connection.close()
        let bob = try rawLogin(server!.address, "bob")
        try friends.alice.send(to: friends.bobID, messageID: 42, body: Array("hello once".utf8))
        #expect(copies(of: 42, at: bob, withinMs: 500) == 1)
        #expect(try friends.alice.awaitSendOutcome(42) == .delivered)

        // alice goes offline; several sweeps run (before the fix they dropped her window).
        friends.alice.connection.close()
        usleep(600_000)
        let alice2 = try server!.loggedIn("alice")
        try alice2.send(to: friends.bobID, messageID: 42, body: Array("hello once".utf8))
        #expect(try alice2.awaitSendOutcome(42) == .delivered, "the resend is acknowledged as delivered")
        #expect(copies(of: 42, at: bob, withinMs: 500) == 0, "the resend after a sweep was delivered again")

        // A clean restart: the window is read back from the store at login.
        alice2.connection.close()
        usleep(300_000)
        server!.stop()
        server = nil
        server = try InProcessServer(directory: directory, tls: false, configure: configure)
        let bob2 = try rawLogin(server!.address, "bob")
        let alice3 = try server!.loggedIn("alice")
        try alice3.send(to: friends.bobID, messageID: 42, body: Array("hello once".utf8))
        #expect(try alice3.awaitSendOutcome(42) == .delivered)
        #expect(copies(of: 42, at: bob2, withinMs: 500) == 0, "the resend after a restart was delivered again")
        // A new id still goes through.
        try alice3.send(to: friends.bobID, messageID: 43, body: Array("new".utf8))
        #expect(copies(of: 43, at: bob2, withinMs: 1_000) == 1)
        _ = bob
    }
}
