// Durability against the real executable: kill -9 in the middle of a burst of offline sends loses no
// acknowledged message and, after the sender resends what was not acknowledged, shows none twice.
import Foundation
import Glibc
import Testing
import SwitchboardClient
import SwitchboardProtocol

@Suite struct CrashSafetyTests {
    @Test func killNineMidBurstLosesNothingAcknowledgedAndShowsNothingTwice() throws {
        let directory = makeTempDirectory("sbkill")
        defer { removeDirectory(directory) }
        let total = 400
        var acknowledged = Set<UInt64>()
        var bobID: UInt32 = 0

        do {
            let server = try ServerProcess(directory: directory)
            let friends = try Friends(server.session)
            let alice = friends.alice
            bobID = friends.bobID
            try friends.bobGoesOffline()

            // Burst: queue everything in chunks, collect acks, kill -9 once some have arrived.
            var killed = false
            for chunkStart in stride(from: 1, through: total, by: 50) {
                for id in chunkStart..<min(chunkStart + 50, total + 1) {
                    alice.queueSend(to: bobID, messageID: UInt64(id), body: Array("message \(id)".utf8))
                }
                try? alice.flush()
                while let event = try? alice.nextEvent(timeoutMs: 5) {
                    if case .sendAck(let id, .storedOffline) = event { acknowledged.insert(id) }
                }
                if acknowledged.count >= 60 && !killed {
                    server.kill9()
                    killed = true
                    break
                }
            }
            if !killed {
                // Everything was sent before enough acks came: kill while acks are still arriving.
                while acknowledged.count < 60, let event = try? alice.nextEvent(timeoutMs: 2000) {
                    if case .sendAck(let id, .storedOffline) = event { acknowledged.insert(id) }
                }
                server.kill9()
            }
            // Acks already on the wire before the kill are acks too.
            while let event = try? alice.nextEvent(timeoutMs: 200) {
                if case .sendAck(let id, .storedOffline) = event { acknowledged.insert(id) }
            }
        }
        #expect(acknowledged.count >= 60)
        #expect(acknowledged.count < total, "the kill came after the whole burst was acknowledged")

        // Restart on the same data; the sender resends everything not acknowledged, same ids.
        let server = try ServerProcess(directory: directory)
        defer { _ = server.terminate() }
        let alice = try server.session()
        try alice.logIn(name: "alice", password: testPassword)
        let unacknowledged = (1...total).map(UInt64.init).filter { !acknowledged.contains($0) }
        for id in unacknowledged { alice.queueSend(to: bobID, messageID: id, body: Array("message \(id)".utf8)) }
        try alice.flush()
        for id in unacknowledged {
            #expect(try alice.awaitSendOutcome(id, timeoutMs: 30_000) == .storedOffline)
        }

        // The receiver drains the mailbox: every message exactly once, oldest first per sender.
        let bob = try server.session()
        let info = try bob.logIn(name: "bob", password: testPassword)
        #expect(info.pendingMail == UInt32(total))
        var seen: [UInt64] = []
        var lastSeq: UInt64 = 0
        while true {
            guard let event = try bob.nextEvent(timeoutMs: 20_000) else { Issue.record("mail stalled after \(seen.count)"); break }
            switch event {
            case .mail(let seq, _, "alice", let id, _, let body):
                #expect(String(decoding: body, as: UTF8.self) == "message \(id)")
                seen.append(id)
                lastSeq = seq
                if seen.count % 256 == 0 { try bob.acknowledgeMail(through: lastSeq) }
            case .mailEnd:
                break
            default:
                continue
            }
            if case .mailEnd = event { break }
        }
        #expect(seen.count == total)
        #expect(Set(seen).count == seen.count, "a message was shown twice")
        #expect(acknowledged.isSubset(of: Set(seen)), "an acknowledged message was lost")
    }

    @Test func sigtermShutsDownCleanlyAndKeepsMail() throws {
        let directory = makeTempDirectory("sbterm")
        defer { removeDirectory(directory) }
        var bobID: UInt32 = 0
        do {
            let server = try ServerProcess(directory: directory)
            let friends = try Friends(server.session)
            let alice = friends.alice
            bobID = friends.bobID
            try friends.bobGoesOffline()
            try alice.send(to: bobID, messageID: 1, body: Array("kept".utf8))
            #expect(try alice.awaitSendOutcome(1) == .storedOffline)
            #expect(server.terminate() == 0)
            // The client was told why before the connection closed.
            let notice = try waitForEvent(alice) { if case .serverError = $0 { return true } else { return false } }
            if case .serverError(let code, _)? = notice { #expect(code == ErrorCode.shuttingDown.rawValue) }
        }
        let server = try ServerProcess(directory: directory)
        defer { _ = server.terminate() }
        let bob = try server.session()
        #expect(try bob.logIn(name: "bob", password: testPassword).pendingMail == 1)
    }
}
