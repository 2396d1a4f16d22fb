// Several devices per user in the relay core, without sockets: joining and the limit, takeover of the
// same device, presence at the first login and the last logout, fan-out to the devices that are not
// congested, the first acknowledgement, lost copies, and mail acknowledged by more than one device.
import SwitchboardProtocol
import Testing
@testable import SwitchboardRelay
import SwitchboardStore

@Suite struct DeviceSessionTests {
    let bobPhone = ConnectionID(21)
    let bobTablet = ConnectionID(22)

    func login(_ f: RelayFixture, _ user: UserID, _ connection: ConnectionID, device: String) -> LoginOutcome {
        f.core.login(user: user, name: Seed.name(user), connection: connection, address: "127.0.0.1:\(connection.raw)",
                     contacts: f.stored[user] ?? [], deviceID: device, deviceName: "\(device) name", receivesCopies: true)
    }

    @Test func devicesJoinUpToTheLimitAndTheSameDeviceTakesOver() {
        let f = RelayFixture(limits: RelayLimits(maxDevicesPerUser: 2))
        f.login(Seed.alice, Seed.aliceConn)
        #expect(login(f, Seed.bob, Seed.bobConn, device: "laptop").notifyOnline == [Seed.aliceConn])
        let phone = login(f, Seed.bob, bobPhone, device: "phone")
        #expect(phone.takenOver == nil && phone.refusal == nil)
        #expect(phone.notifyOnline == [], "bob was online already")
        let third = login(f, Seed.bob, bobTablet, device: "tablet")
        #expect(third.refusal?.contains("2 devices online (the limit is 2): laptop name, phone name") == true)
        #expect(f.core.user(on: bobTablet) == nil)
        #expect(f.core.session(of: Seed.bob)?.devices.map(\.connection) == [Seed.bobConn, bobPhone])
        // The phone again, on a new connection: takes over only the phone.
        let again = login(f, Seed.bob, bobTablet, device: "phone")
        #expect(again.takenOver == bobPhone)
        #expect(f.core.session(of: Seed.bob)?.devices.map(\.connection) == [Seed.bobConn, bobTablet])
        #expect(f.core.connectionClosed(bobPhone) == [])
    }

    @Test func presenceChangesOnlyAtTheFirstLoginAndTheLastLogout() {
        let f = RelayFixture()
        f.login(Seed.alice, Seed.aliceConn)
        _ = login(f, Seed.bob, Seed.bobConn, device: "laptop")
        _ = login(f, Seed.bob, bobPhone, device: "phone")
        // alice logs in a second device: bob's devices were told once (at her first login).
        #expect(login(f, Seed.alice, ConnectionID(11), device: "phone").notifyOnline == [])
        #expect(f.core.connectionClosed(Seed.bobConn) == [])
        #expect(f.core.openChat(from: Seed.alice, with: Seed.bob) == .online)
        #expect(Set(f.core.connectionClosed(bobPhone)) == [Seed.aliceConn, ConnectionID(11)])
        #expect(f.core.openChat(from: Seed.alice, with: Seed.bob) == .offline)
    }

    @Test func liveMessagesGoToEveryDeviceThatIsNotCongested() {
        let f = RelayFixture()
        f.login(Seed.alice, Seed.aliceConn)
        _ = login(f, Seed.bob, Seed.bobConn, device: "laptop")
        _ = login(f, Seed.bob, bobPhone, device: "phone")
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .deliverToDevices(count: 2))
        f.core.setCongested(bobPhone, true)
        #expect(f.route(Seed.alice, Seed.bob, id: 2) == .deliverToDevices(count: 1))
        f.core.setCongested(Seed.bobConn, true)
        #expect(f.route(Seed.alice, Seed.bob, id: 3) == .store(recipient: Seed.bob, mailSeq: 1))
        f.core.setCongested(Seed.bobConn, false)
        #expect(f.route(Seed.alice, Seed.bob, id: 4) == .deliverToDevices(count: 1))
    }

    @Test func theFirstAcknowledgementCompletesAndTheLastLostCopyStores() {
        let f = RelayFixture()
        f.login(Seed.alice, Seed.aliceConn)
        _ = login(f, Seed.bob, Seed.bobConn, device: "laptop")
        _ = login(f, Seed.bob, bobPhone, device: "phone")
        _ = f.route(Seed.alice, Seed.bob, id: 1)
        #expect(f.core.completed(sender: Seed.alice, messageID: 1, status: .delivered)?.connection == Seed.aliceConn)
        #expect(f.core.completed(sender: Seed.alice, messageID: 1, status: .delivered) == nil, "acknowledged once")
        #expect(f.core.deliveryLost(sender: Seed.alice, messageID: 1) == .othersRemain)
        _ = f.route(Seed.alice, Seed.bob, id: 2)
        #expect(f.core.deliveryLost(sender: Seed.alice, messageID: 2) == .othersRemain)
        #expect(f.core.deliveryLost(sender: Seed.alice, messageID: 2) == .last)
        #expect(f.core.deliveryLost(sender: Seed.alice, messageID: 99) == .unknown)
    }

    @Test func mailAcknowledgedByTwoDevicesIsCountedOnce() {
        let f = RelayFixture(usage: [Seed.bob: MailboxUsage(count: 3, bytes: 30, lastSeq: 3)])
        #expect(f.core.mailAcknowledged(recipient: Seed.bob, throughSeq: 2) == 0)
        #expect(f.core.mailAcknowledged(recipient: Seed.bob, throughSeq: 1) == 2, "below the first device's ack: counted already")
        #expect(f.core.mailAcknowledged(recipient: Seed.bob, throughSeq: 3) == 2)
        #expect(f.core.mailbox(of: Seed.bob).ackedThrough == 3)
        f.core.mailDeleteFailed(recipient: Seed.bob)
        #expect(f.core.mailbox(of: Seed.bob).ackedThrough == 0, "a failed delete sends (and counts) the mail again")
    }
}

@Suite struct DeliveryWindowSettlingTests {
    @Test func aSettledCopyIsMarkedOnceAndNoLongerHeld() {
        var window = DeliveryWindow()
        for seq: UInt64 in 1...3 {
            window.append(PendingDelivery(seq: seq, sender: 7, messageID: 100 + seq, frameStart: seq * 10, frameEnd: seq * 10 + 9))
        }
        #expect(window.holdsUnsettled(sender: 7, messageID: 102))
        let first = window.markSettled(sender: 7, messageID: 102)
        let second = window.markSettled(sender: 7, messageID: 102)
        let otherSender = window.markSettled(sender: 8, messageID: 101)
        #expect(first && !second)
        #expect(!window.holdsUnsettled(sender: 7, messageID: 102))
        #expect(!otherSender, "another sender's id is another message")
        var settled: [UInt64] = []
        window.drain { if $0.settled { settled.append($0.seq) } }
        #expect(settled == [2])
    }
}
