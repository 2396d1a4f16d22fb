// Issue 8, item 9: when the LMDB map is full, sends that need storing get SEND_ERROR storageFull, the
// server keeps serving reads and live relays, and it recovers once mail is acknowledged (space freed).
import Foundation
import SwitchboardClient
import SwitchboardProtocol
import SwitchboardServer
import Testing

@Suite struct StorageFullTests {
    @Test func fullStoreRefusesStoringButKeepsRelayingAndRecovers() throws {
        let server = try InProcessServer(tls: false) { $0.storeMapSizeBytes = 1 << 20 }
        let friends = try Friends(server.session)
        try friends.bobGoesOffline()
        let body = [UInt8](repeating: 0x64, count: 8_000)
        var stored = 0
        var fullAt: UInt64?
        for id in UInt64(1)...400 {
            try friends.alice.send(to: friends.bobID, messageID: id, body: body)
            switch try friends.alice.awaitSendOutcome(id) {
            case .storedOffline: stored += 1
            case .refused(let code, let message):
                #expect(code == ErrorCode.storageFull.rawValue, "refused with \(code): \(message)")
                fullAt = id
            case .delivered: Issue.record("delivered to an offline user")
            }
            if fullAt != nil { break }
        }
        guard fullAt != nil else { Issue.record("the 1 MiB map never filled (\(stored) stored)"); return }
        #expect(stored > 10)
        // Reads and live relay still work: bob logs in, gets his mail, and a live message arrives.
        let bob = try server.loggedIn("bob")
        var mails: [UInt64] = []
        while let event = try waitForEvent(bob, timeoutMs: 5_000, { _ in true }) {
            if case .mail(let seq, _, _, _, _, _) = event { mails.append(seq) }
            if case .mailEnd = event { break }
            // Acknowledge as a client does once it has shown them; the next page follows the ack of the last.
            if case .mail(let seq, _, _, _, _, _) = event { try bob.acknowledgeMail(through: seq) }
        }
        #expect(mails.count == stored, "bob got \(mails.count) of \(stored) stored mails")
        try friends.alice.send(to: friends.bobID, messageID: 10_000, body: Array("live".utf8))
        let live = try waitForEvent(bob) { if case .message(_, _, 10_000, _, _) = $0 { return true } else { return false } }
        guard case .message(let seq, _, _, _, _)? = live else { Issue.record("no live message while the store is full"); return }
        try bob.acknowledgeDeliveries(through: seq)
        #expect(try friends.alice.awaitSendOutcome(10_000) == .delivered)
        // Space was freed by the acknowledgements: storing works again (LMDB reuses freed pages from
        // the second commit after the delete, so allow a few tries).
        bob.connection.close()
        _ = try waitForEvent(friends.alice) { if case .presence(_, false) = $0 { return true } else { return false } }
        var recovered = false
        for id in UInt64(20_000)..<20_010 {
            try friends.alice.send(to: friends.bobID, messageID: id, body: body)
            if try friends.alice.awaitSendOutcome(id) == .storedOffline { recovered = true; break }
        }
        #expect(recovered, "storing did not recover after the mail was deleted")
    }
}
