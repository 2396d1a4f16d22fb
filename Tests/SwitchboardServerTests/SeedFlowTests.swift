// The seed's whole chat flow through the real server and the client library.
import Foundation
import Testing
import SwitchboardClient
import SwitchboardProtocol
@testable import SwitchboardServer

@Suite struct SeedFlowTests {
    @Test func registerLoginContactsPresenceChatAndOfflineMail() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let alice = try server.user("alice")
        let bob = try server.user("bob")
        let carol = try server.user("carol")

        // Request/accept flow: a request alone shows no presence.
        try alice.addContact("bob")
        let bobView = try bob.contacts()
        #expect(bobView.map(\.name) == ["alice"])
        #expect(bobView.first?.relation == .incomingRequest)
        #expect(bobView.first?.online == false)
        try bob.acceptContact("alice")
        try alice.addContact("carol")
        try carol.acceptContact("alice")

        // Alice's list: both accepted and online.
        let aliceView = try alice.contacts()
        #expect(aliceView.map(\.name) == ["bob", "carol"])
        #expect(aliceView.allSatisfy { $0.relation == .accepted && $0.online })
        let bobID = aliceView[0].userID
        let carolID = aliceView[1].userID

        // Carol logs out: alice sees it at once.
        carol.connection.close()
        let offline = try waitForEvent(alice) { if case .presence(carolID, false) = $0 { return true } else { return false } }
        #expect(offline != nil)

        // Opening chats: online contact confirmed, offline one gets the seed's notice.
        #expect(try alice.openChat(with: bobID).online)
        let status = try alice.openChat(with: carolID)
        #expect(!status.online)
        #expect(status.text == "Contact offline at the moment, send offline message")

        // Live message through bob's existing connection; delivered once bob acknowledges.
        try alice.send(to: bobID, messageID: 1, body: Array("hi bob".utf8))
        guard case .message(let seq, let from, 1, _, let body)? = try waitForEvent(bob, isMessage) else {
            Issue.record("bob got no message"); return
        }
        #expect(String(decoding: body, as: UTF8.self) == "hi bob")
        #expect(from == alice.login?.userID)
        try bob.acknowledgeDeliveries(through: seq)
        #expect(try alice.awaitSendOutcome(1) == .delivered)

        // Offline messages for carol from alice and bob, stored durably.
        try bob.addContact("carol")
        try alice.send(to: carolID, messageID: 2, body: Array("first from alice".utf8))
        #expect(try alice.awaitSendOutcome(2) == .storedOffline)
        try alice.send(to: carolID, messageID: 3, body: Array("second from alice".utf8))
        #expect(try alice.awaitSendOutcome(3) == .storedOffline)

        // Carol logs in: contacts with status, her address, then her mail oldest first, tagged with sender.
        let carol2 = try server.session()
        let info = try carol2.logIn(name: "carol", password: testPassword)
        #expect(info.address.hasPrefix("127.0.0.1:"))
        #expect(info.pendingMail == 2)
        #expect(info.contacts.first { $0.name == "alice" }?.online == true)
        #expect(info.contacts.first { $0.name == "bob" }?.relation == .incomingRequest)
        var mails: [(UInt64, String, String)] = []
        while true {
            guard let event = try carol2.nextEvent(timeoutMs: 10_000) else { Issue.record("no MAIL_END"); return }
            if case .mail(let seq, _, let name, _, _, let body) = event { mails.append((seq, name, String(decoding: body, as: UTF8.self))) }
            if case .mailEnd = event { break }
        }
        #expect(mails.map(\.2) == ["first from alice", "second from alice"])
        #expect(mails.allSatisfy { $0.1 == "alice" })
        try carol2.acknowledgeMail(through: mails.last!.0)

        // Acknowledged mail is deleted: the next login finds none.
        // The ack is fire-and-forget, so allow the delete a moment to commit.
        var pending: UInt32 = 1
        for _ in 0..<50 where pending > 0 {
            pending = try server.session().logIn(name: "carol", password: testPassword).pendingMail
            if pending > 0 { usleep(100_000) }
        }
        #expect(pending == 0)
    }

    @Test func offlineMailSurvivesRestart() throws {
        let directory = makeTempDirectory()
        defer { removeDirectory(directory) }
        var bobID: UInt32 = 0
        do {
            let server = try InProcessServer(directory: directory)
            let alice = try server.user("alice")
            let bob = try server.user("bob")
            try befriend(alice, "alice", bob, "bob")
            bobID = try userID(of: "bob", in: alice)
            bob.connection.close()
            _ = try waitForEvent(alice) { if case .presence(bobID, false) = $0 { return true } else { return false } }
            for i in 1...5 {
                try alice.send(to: bobID, messageID: UInt64(i), body: Array("msg \(i)".utf8))
            }
            for i in 1...5 { #expect(try alice.awaitSendOutcome(UInt64(i)) == .storedOffline) }
            server.stop()
        }
        let server = try InProcessServer(directory: directory)
        defer { server.stop() }
        let bob = try server.loggedIn("bob")
        #expect(bob.login?.pendingMail == 5)
        var texts: [String] = []
        while let event = try bob.nextEvent(timeoutMs: 10_000) {
            if case .mail(_, _, _, _, _, let body) = event { texts.append(String(decoding: body, as: UTF8.self)) }
            if case .mailEnd = event { break }
        }
        #expect(texts == (1...5).map { "msg \($0)" })
    }

    @Test func secondLoginTakesOver() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let first = try server.user("dora")
        let second = try server.loggedIn("dora")
        let event = try waitForEvent(first) { if case .serverError = $0 { return true } else { return false } }
        guard case .serverError(let code, let message)? = event else { Issue.record("old session not told"); return }
        #expect(code == ErrorCode.sessionTakenOver.rawValue)
        #expect(message.contains("logged in from 127.0.0.1:"))
        // The new session works.
        #expect(try second.contacts().isEmpty)
    }

    @Test func duplicatesAreDroppedAndAcknowledged() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let (alice, bob, bobID) = try friendsOn(server)
        try alice.send(to: bobID, messageID: 42, body: Array("once".utf8))
        guard case .message(let seq, _, _, _, _)? = try waitForEvent(bob, isMessage) else {
            Issue.record("no delivery"); return
        }
        try bob.acknowledgeDeliveries(through: seq)
        #expect(try alice.awaitSendOutcome(42) == .delivered)
        // Resend with the same id: acknowledged again, not delivered again.
        try alice.send(to: bobID, messageID: 42, body: Array("once".utf8))
        #expect(try alice.awaitSendOutcome(42) == .delivered)
        let again = try waitForEvent(bob, timeoutMs: 500, isMessage)
        #expect(again == nil)
    }

    @Test func unacknowledgedLiveDeliveryMovesToMailboxWhenReceiverDrops() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let (alice, bob, bobID) = try friendsOn(server)
        try alice.send(to: bobID, messageID: 7, body: Array("are you there?".utf8))
        // Bob receives it but drops without acknowledging.
        #expect(try waitForEvent(bob, isMessage) != nil)
        bob.connection.close()
        #expect(try alice.awaitSendOutcome(7) == .storedOffline)
        let bob2 = try server.loggedIn("bob")
        let mail = try waitForEvent(bob2) { if case .mail = $0 { return true } else { return false } }
        guard case .mail(_, _, "alice", 7, _, let body)? = mail else { Issue.record("no mail: \(String(describing: mail))"); return }
        #expect(String(decoding: body, as: UTF8.self) == "are you there?")
    }

    @Test func mailboxQuotaGivesAClearError() throws {
        let server = try InProcessServer { $0.limits.mailboxMaxMessages = 3 }
        defer { server.stop() }
        let (alice, bob, bobID) = try friendsOn(server)
        bob.connection.close()
        _ = try waitForEvent(alice) { if case .presence(bobID, false) = $0 { return true } else { return false } }
        for i in 1...3 {
            try alice.send(to: bobID, messageID: UInt64(i), body: [1, 2, 3])
            #expect(try alice.awaitSendOutcome(UInt64(i)) == .storedOffline)
        }
        try alice.send(to: bobID, messageID: 4, body: [1, 2, 3])
        guard case .refused(let code, let message) = try alice.awaitSendOutcome(4) else { Issue.record("4th accepted"); return }
        #expect(code == ErrorCode.mailboxFull.rawValue)
        #expect(message.contains("mailbox is full"))
    }

    @Test func messagesOnlyToAcceptedContactsAndSenderFromSession() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let alice = try server.user("alice")
        let mallory = try server.user("mallory")
        try mallory.addContact("alice")   // request only, not accepted
        let aliceID = try #require(try mallory.contacts().first?.userID)
        try mallory.send(to: aliceID, messageID: 1, body: Array("spam".utf8))
        guard case .refused(let code, _) = try mallory.awaitSendOutcome(1) else { Issue.record("sent to a non-contact"); return }
        #expect(code == ErrorCode.notAContact.rawValue)
        #expect(try waitForEvent(alice, timeoutMs: 300, isMessage) == nil)
    }

    @Test func wrongPasswordsLockTheUserOut() throws {
        let server = try InProcessServer { $0.maxFailedLoginsPerUser = 3 }
        defer { server.stop() }
        _ = try server.user("erin")
        let s = try server.session()
        for _ in 0..<3 {
            #expect(throws: ClientError.self) { try s.logIn(name: "erin", password: "wrong password") }
        }
        // Even the right password is refused now, with a clear code.
        let t = try server.session()
        do {
            try t.logIn(name: "erin", password: testPassword)
            Issue.record("login allowed during lockout")
        } catch let error as ClientError {
            #expect(error.code == ErrorCode.lockedOut.rawValue)
        }
    }

    @Test func registrationsPerAddressAreRationed() throws {
        let server = try InProcessServer { $0.maxRegistrationsPerAddress = 2 }
        defer { server.stop() }
        let s = try server.session()
        try s.register(name: "first", password: testPassword)
        try s.register(name: "second", password: testPassword)
        do {
            try s.register(name: "third", password: testPassword)
            Issue.record("a third registration from the same address was accepted")
        } catch let error as ClientError {
            #expect(error.code == ErrorCode.busyRetryLater.rawValue)
            #expect(error.message.contains("too many registrations"))
        }
        // Existing accounts still log in.
        #expect(try server.session().logIn(name: "second", password: testPassword).name == "second")
    }

}
