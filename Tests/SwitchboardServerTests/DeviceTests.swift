// Several devices per user (protocol version 2) through the real server over TLS with a real LMDB:
// a live message reaches every device of the receiver, the sender's other devices get SENT_COPY,
// the first acknowledgement answers the sender once, a message no device acknowledged goes to the
// mailbox exactly once, presence changes only at the first login and the last logout, the device
// limit refuses one more with tooManyDevices, the same device takes over, and version 1 is unchanged.
import Foundation
import Testing
import SwitchboardClient
import SwitchboardIO
import SwitchboardProtocol
@testable import SwitchboardServer

private func device(_ id: String) -> DeviceIdentity { DeviceIdentity(id: id, name: "test \(id)") }

extension InProcessServer {
    func device(_ name: String, _ id: String) throws -> ChatSession {
        let s = try session()
        try s.logIn(name: name, password: testPassword, device: DeviceIdentity(id: id, name: "test \(id)"))
        return s
    }
}

/// Drains events for `ms` and returns them (for "nothing more arrives" checks).
private func events(of session: ChatSession, forMs ms: Int32) throws -> [ChatEvent] {
    var seen: [ChatEvent] = []
    let deadline = Clock.monotonicMs() + UInt64(ms)
    while Clock.monotonicMs() < deadline {
        guard let event = try session.nextEvent(timeoutMs: remainingMs(until: deadline)) else { break }
        seen.append(event)
    }
    return seen
}

private func message(_ session: ChatSession, id: UInt64) throws -> (seq: UInt64, body: String)? {
    guard case .message(let seq, _, _, _, let body)? = try waitForEvent(session, {
        if case .message(_, _, id, _, _) = $0 { return true } else { return false }
    }) else { return nil }
    return (seq, String(decoding: body, as: UTF8.self))
}

@Suite(.serialized) struct DeviceTests {
    @Test func everyDeviceGetsTheMessageAndTheSendersOtherDeviceGetsTheCopy() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let (alice, bob, bobID) = try friendsOn(server)
        let aliceID = try #require(alice.login?.userID)

        // Second devices join: the first ones stay connected and nobody sees presence change.
        let bobPhone = try server.device("bob", "bob-phone")
        let alicePhone = try server.device("alice", "alice-phone")
        #expect(try alice.contacts().first?.online == true)
        #expect(try bob.contacts().first?.online == true)

        try alice.send(to: bobID, messageID: 7, body: Array("to all of bob".utf8))
        let onLaptop = try #require(try message(bob, id: 7))
        let onPhone = try #require(try message(bobPhone, id: 7))
        #expect(onLaptop.body == "to all of bob" && onPhone.body == "to all of bob")
        guard case .sentCopy(bobID, 7, _, let copy)? = try waitForEvent(alicePhone, {
            if case .sentCopy = $0 { return true } else { return false }
        }) else { Issue.record("alice's phone got no copy"); return }
        #expect(String(decoding: copy, as: UTF8.self) == "to all of bob")

        // The first acknowledgement answers the sender (on every device), a second one changes nothing.
        try bobPhone.acknowledgeDeliveries(through: onPhone.seq)
        #expect(try alice.awaitSendOutcome(7) == .delivered)
        #expect(try alicePhone.awaitSendOutcome(7) == .delivered)
        try bob.acknowledgeDeliveries(through: onLaptop.seq)
        let later = try events(of: alice, forMs: 300)
        #expect(!later.contains { if case .sendAck(7, _) = $0 { return true } else { return false } }, "\(later)")

        // The other direction: bob's laptop sends, his phone gets the copy, alice's devices both get it.
        try bob.send(to: aliceID, messageID: 8, body: Array("back".utf8))
        #expect(try message(alice, id: 8)?.body == "back")
        #expect(try message(alicePhone, id: 8)?.body == "back")
        #expect(try waitForEvent(bobPhone, { if case .sentCopy(aliceID, 8, _, _) = $0 { return true } else { return false } }) != nil)
        #expect(try waitForEvent(bob, timeoutMs: 200) { if case .sentCopy = $0 { return true } else { return false } } == nil,
                "the sending device does not get its own copy")

        // Presence: one of bob's devices leaving changes nothing; the last one does.
        bobPhone.connection.close()
        #expect(try waitForEvent(alice, timeoutMs: 300) { if case .presence = $0 { return true } else { return false } } == nil)
        #expect(try alice.openChat(with: bobID).online)
        bob.connection.close()
        #expect(try waitForEvent(alice) { if case .presence(bobID, false) = $0 { return true } else { return false } } != nil)
        #expect(try waitForEvent(alicePhone) { if case .presence(bobID, false) = $0 { return true } else { return false } } != nil)
    }

    @Test func oneMoreThanTheLimitIsRefusedAndTheSameDeviceTakesOver() throws {
        let server = try InProcessServer { $0.maxDevicesPerUser = 3 }
        defer { server.stop() }
        let (alice, bob, bobID) = try friendsOn(server)   // alice's implicit device is the first
        defer { bob.connection.close() }
        let second = try server.device("alice", "d2")
        let third = try server.device("alice", "d3")
        let fourth = try server.session()
        do {
            try fourth.logIn(name: "alice", password: testPassword, device: device("d4"))
            Issue.record("a fourth device was let in")
        } catch let error as ClientError {
            #expect(error.code == ErrorCode.tooManyDevices.rawValue)
            #expect(error.message.contains("3 devices online") && error.message.contains("test d2"), "\(error.message)")
        }
        // The refused connection stays open and may log in later; the others were not disturbed.
        for session in [alice, second, third] { #expect(try session.openChat(with: bobID).online) }

        // The same device logging in again takes over its old session (and only that one).
        let thirdAgain = try server.device("alice", "d3")
        guard case .serverError(let code, let text)? = try waitForEvent(third, {
            if case .serverError = $0 { return true } else { return false }
        }) else { Issue.record("the old d3 session was not told"); return }
        #expect(code == ErrorCode.sessionTakenOver.rawValue)
        #expect(text.contains("device test d3"), "\(text)")
        for session in [alice, second, thirdAgain] { #expect(try session.openChat(with: bobID).online) }

        // A freed place can be taken by the refused connection.
        second.connection.close()
        var admitted = false
        for _ in 0..<50 where !admitted {
            do {
                try fourth.logIn(name: "alice", password: testPassword, device: device("d4"))
                admitted = true
            } catch let error as ClientError where error.code == ErrorCode.tooManyDevices.rawValue {
                usleep(20_000)
            }
        }
        #expect(admitted)
    }

    @Test func everyDeviceDroppingBeforeAcknowledgingStoresTheMessageOnce() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let (alice, bob, bobID) = try friendsOn(server)
        let bobPhone = try server.device("bob", "bob-phone")

        try alice.send(to: bobID, messageID: 21, body: Array("nobody acks".utf8))
        #expect(try message(bob, id: 21) != nil)
        #expect(try message(bobPhone, id: 21) != nil)
        // One device drops: the other still holds it, so nothing is stored yet.
        bobPhone.connection.close()
        #expect(try waitForEvent(alice, timeoutMs: 300) { if case .sendAck(21, _) = $0 { return true } else { return false } } == nil)
        bob.connection.close()
        #expect(try alice.awaitSendOutcome(21) == .storedOffline)
        let more = try events(of: alice, forMs: 300)
        #expect(!more.contains { if case .sendAck(21, _) = $0 { return true } else { return false } }, "acknowledged twice: \(more)")

        // Two devices log in: each is offered the mail; the first MAIL_ACK deletes it.
        let laptop = try server.device("bob", "bob-laptop")
        let phone = try server.device("bob", "bob-phone")
        #expect(laptop.login?.pendingMail == 1)
        var mailSeq: UInt64 = 0
        for session in [laptop, phone] {
            var bodies: [String] = []
            while true {
                guard let event = try session.nextEvent(timeoutMs: 10_000) else { Issue.record("no MAIL_END"); return }
                if case .mail(let seq, _, _, 21, _, let body) = event { bodies.append(String(decoding: body, as: UTF8.self)); mailSeq = seq }
                if case .mailEnd = event { break }
            }
            #expect(bodies == ["nobody acks"], "exactly once per device")
        }
        try phone.acknowledgeMail(through: mailSeq)
        try laptop.acknowledgeMail(through: mailSeq)
        var pending: UInt32 = 1
        for _ in 0..<50 where pending > 0 {
            usleep(20_000)
            pending = try server.device("bob", "bob-tablet").login?.pendingMail ?? 1
        }
        #expect(pending == 0)
    }

    @Test func oneDeviceAcknowledgingIsEnoughWhenTheOtherDrops() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let (alice, bob, bobID) = try friendsOn(server)
        let bobPhone = try server.device("bob", "bob-phone")
        try alice.send(to: bobID, messageID: 31, body: Array("phone acks".utf8))
        _ = try #require(try message(bob, id: 31))
        let onPhone = try #require(try message(bobPhone, id: 31))
        try bobPhone.acknowledgeDeliveries(through: onPhone.seq)
        #expect(try alice.awaitSendOutcome(31) == .delivered)
        bob.connection.close()   // never acknowledged on the laptop: not stored, it was delivered
        bobPhone.connection.close()
        let again = try server.device("bob", "bob-laptop")
        #expect(again.login?.pendingMail == 0)
        #expect(try events(of: alice, forMs: 300).allSatisfy { if case .sendAck = $0 { return false } else { return true } })
    }

    @Test func versionOneBehavesAsBefore() throws {
        let server = try InProcessServer()
        defer { server.stop() }
        let (alice, _, bobID) = try friendsOn(server)
        let aliceID = try #require(alice.login?.userID)

        // A version-1 client: WELCOME says 1, LOGIN is the implicit device, no SENT_COPY ever.
        let old = ChatSession(connection: try ChatConnection(server: server.address, tls: server.clientTLS, protocolVersion: 1))
        #expect(old.connection.welcome.version == 1)
        try old.logIn(name: "bob", password: testPassword)
        // The implicit device took over bob's other implicit-device session, as a second login always did.
        try alice.send(to: bobID, messageID: 41, body: Array("to v1".utf8))
        let got = try #require(try message(old, id: 41))
        try old.acknowledgeDeliveries(through: got.seq)
        #expect(try alice.awaitSendOutcome(41) == .delivered)
        let v1Second = try server.session()
        try v1Second.logIn(name: "bob", password: testPassword, device: device("bob-v2"))
        try v1Second.send(to: aliceID, messageID: 42, body: Array("from v2".utf8))
        #expect(try message(alice, id: 42) != nil)
        let seenByOld = try events(of: old, forMs: 300)
        #expect(!seenByOld.contains { if case .sentCopy = $0 { return true } else { return false } })

        // LOGIN_DEVICE on a version-1 connection is refused and closes it.
        let raw = ChatSession(connection: try ChatConnection(server: server.address, tls: server.clientTLS, protocolVersion: 1))
        #expect(throws: ClientError.self) { try raw.logIn(name: "bob", password: testPassword, device: device("x")) }

        // Bad device ids and names get a clear error; the connection stays open.
        let bad = try server.session()
        do {
            try bad.logIn(name: "bob", password: testPassword, device: DeviceIdentity(id: "no spaces", name: "n"))
            Issue.record("a device id with a space was accepted")
        } catch let error as ClientError { #expect(error.code == ErrorCode.invalidRequest.rawValue) }
        do {
            try bad.logIn(name: "bob", password: testPassword, device: DeviceIdentity(id: "ok", name: "bell\u{7}"))
            Issue.record("a device name with a control character was accepted")
        } catch let error as ClientError { #expect(error.code == ErrorCode.invalidRequest.rawValue) }
        try bad.logIn(name: "bob", password: testPassword, device: device("ok"))
    }

    @Test func mailAcknowledgedByTwoDevicesFreesTheQuotaOnce() throws {
        let server = try InProcessServer { $0.limits.mailboxMaxMessages = 3 }
        defer { server.stop() }
        let (alice, bob, bobID) = try friendsOn(server)
        bob.connection.close()
        _ = try waitForEvent(alice) { if case .presence(bobID, false) = $0 { return true } else { return false } }
        for id: UInt64 in 1...3 {
            try alice.send(to: bobID, messageID: id, body: Array("mail \(id)".utf8))
            #expect(try alice.awaitSendOutcome(id) == .storedOffline)
        }
        // Two devices are sent the same three mails; both acknowledge the first one.
        let laptop = try server.device("bob", "laptop")
        let phone = try server.device("bob", "phone")
        var firstSeq: UInt64 = 0
        for session in [laptop, phone] {
            guard case .mail(let seq, _, _, 1, _, _)? = try waitForEvent(session, {
                if case .mail(_, _, _, 1, _, _) = $0 { return true } else { return false }
            }) else { Issue.record("no mail 1"); return }
            firstSeq = seq
        }
        try laptop.acknowledgeMail(through: firstSeq)
        try phone.acknowledgeMail(through: firstSeq)
        laptop.connection.close()
        phone.connection.close()
        _ = try waitForEvent(alice) { if case .presence(bobID, false) = $0 { return true } else { return false } }
        // The acknowledgements are fire-and-forget: wait until the delete has committed.
        var pending: UInt32 = 0
        for _ in 0..<50 {
            let probe = try server.device("bob", "probe")
            pending = probe.login?.pendingMail ?? 0
            probe.connection.close()
            _ = try waitForEvent(alice) { if case .presence(bobID, false) = $0 { return true } else { return false } }
            if pending == 2 { break }
            usleep(20_000)
        }
        #expect(pending == 2, "the mail both devices acknowledged is counted once")
        // Two mails are left: one more fits, the next is over the quota (counted twice it would fit).
        try alice.send(to: bobID, messageID: 4, body: Array("mail 4".utf8))
        #expect(try alice.awaitSendOutcome(4) == .storedOffline)
        try alice.send(to: bobID, messageID: 5, body: Array("mail 5".utf8))
        guard case .refused(let code, _) = try alice.awaitSendOutcome(5) else { Issue.record("mail 5 fit a full mailbox"); return }
        #expect(code == ErrorCode.mailboxFull.rawValue)
    }

    @Test func theDeviceIDIsCreatedOnceAndKept() throws {
        let directory = makeTempDirectory("sbdevice")
        defer { removeDirectory(directory) }
        let file = directory + "/config/switchboard/device"
        let id = try DeviceIdentity.storedID(in: file)
        #expect(DeviceIdentity.isValidID(id) && id.count == 32)
        #expect(try DeviceIdentity.storedID(in: file) == id, "the same id every run")
        #expect(DeviceIdentity.randomID() != DeviceIdentity.randomID())
        // A damaged file gets a fresh valid id.
        try "not a device id!\n".write(toFile: file, atomically: true, encoding: .utf8)
        let fresh = try DeviceIdentity.storedID(in: file)
        #expect(fresh != id && DeviceIdentity.isValidID(fresh))
        #expect(try DeviceIdentity.storedID(in: file) == fresh)
    }
}
