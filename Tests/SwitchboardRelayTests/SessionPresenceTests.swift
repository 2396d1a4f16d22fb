import SwitchboardProtocol
@testable import SwitchboardRelay
import SwitchboardStore
import Testing

@Suite struct SeedScenarioTests {
    @Test func seedScenarioEndToEnd() {
        let f = RelayFixture(usage: [Seed.bob: MailboxUsage(count: 2, bytes: 30, lastSeq: 41)])
        let core = f.core

        // alice logs in first: bob is offline, carol is only a pending request.
        let aliceLogin = f.login(Seed.alice, Seed.aliceConn)
        #expect(aliceLogin.takenOver == nil)
        #expect(aliceLogin.notifyOnline == [])
        #expect(aliceLogin.contacts == [info(Seed.bob, .accepted, online: false),
                                        info(Seed.carol, .outgoingRequest, online: false)])
        #expect(core.onlineCount == 1)
        #expect(core.user(on: Seed.aliceConn) == Seed.alice)
        #expect(core.connection(of: Seed.alice) == Seed.aliceConn)
        #expect(core.openChat(from: Seed.alice, with: Seed.bob) == .offline)

        // bob logs in: alice is told, and bob sees alice online.
        let bobLogin = f.login(Seed.bob, Seed.bobConn)
        #expect(bobLogin.takenOver == nil)
        #expect(bobLogin.notifyOnline == [Seed.aliceConn])
        #expect(bobLogin.contacts == [info(Seed.alice, .accepted, online: true)])
        #expect(core.contactList(of: Seed.alice) == [info(Seed.bob, .accepted, online: true),
                                                      info(Seed.carol, .outgoingRequest, online: false)])
        #expect(core.contactList(of: Seed.bob) == [info(Seed.alice, .accepted, online: true)])

        #expect(core.openChat(from: Seed.alice, with: Seed.bob) == .online)
        #expect(core.openChat(from: Seed.bob, with: Seed.alice) == .online)
        #expect(core.openChat(from: Seed.alice, with: Seed.carol) == .notAContact)
        #expect(core.openChat(from: Seed.carol, with: Seed.alice) == .notAContact, "carol is not logged in")

        // Live delivery to bob.
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .deliver(Seed.bobConn))
        #expect(f.route(Seed.bob, Seed.alice, id: 1) == .deliver(Seed.aliceConn))
        #expect(f.route(Seed.alice, Seed.carol, id: 2).rejectCode == .notAContact)

        // bob's connection closes: alice is told he went offline.
        #expect(core.connectionClosed(Seed.bobConn) == [Seed.aliceConn])
        #expect(core.onlineCount == 1)
        #expect(core.user(on: Seed.bobConn) == nil)
        #expect(core.openChat(from: Seed.alice, with: Seed.bob) == .offline)
        #expect(core.contactList(of: Seed.alice).first == info(Seed.bob, .accepted, online: false))
        #expect(core.contactList(of: Seed.bob) == [], "offline users have no session")

        // Offline: stored as mail, the sequence continuing from the persisted lastSeq.
        #expect(f.usage.loads == [])
        #expect(f.route(Seed.alice, Seed.bob, id: 3) == .store(recipient: Seed.bob, mailSeq: 42))
        #expect(f.route(Seed.alice, Seed.bob, id: 4, bytes: 7) == .store(recipient: Seed.bob, mailSeq: 43))
        #expect(f.usage.loads == [Seed.bob], "usage is loaded once, then kept in memory")
        #expect(core.mailbox(of: Seed.bob) == RelayCore.MailboxState(count: 4, bytes: 30 + 5 + 7, lastSeq: 43))
        #expect(f.route(Seed.alice, Seed.carol, id: 5).rejectCode == .notAContact)

        // Closing a connection that is not a session (or closing twice) tells nobody.
        #expect(core.connectionClosed(ConnectionID(999)) == [])
        #expect(core.connectionClosed(Seed.bobConn) == [])

        // Not logged in: refused, never routed.
        #expect(f.route(Seed.bob, Seed.alice, id: 6).rejectCode == .notAllowedNow)

        // alice leaves with nobody online to tell.
        #expect(core.connectionClosed(Seed.aliceConn) == [])
        #expect(core.onlineCount == 0)
    }

    @Test func carolWithOnlyAPendingRequestGetsNoPresence() {
        let f = RelayFixture()
        f.login(Seed.alice, Seed.aliceConn)
        let carolLogin = f.login(Seed.carol, Seed.carolConn)
        #expect(carolLogin.notifyOnline == [], "a pending request does not see presence")
        #expect(carolLogin.contacts == [info(Seed.alice, .incomingRequest, online: false)])
        #expect(f.core.contactList(of: Seed.alice).last == info(Seed.carol, .outgoingRequest, online: false))
        #expect(f.core.openChat(from: Seed.carol, with: Seed.alice) == .notAContact)
        #expect(f.route(Seed.carol, Seed.alice, id: 1).rejectCode == .notAContact)
        #expect(f.core.connectionClosed(Seed.carolConn) == [])
        // alice leaving is not announced to carol either.
        f.login(Seed.carol, Seed.carolConn)
        #expect(f.core.connectionClosed(Seed.aliceConn) == [])
    }

    @Test func loginContactsAreSortedByName() {
        let f = RelayFixture(contacts: [
            Seed.alice: [Seed.entry(Seed.dave, .incomingRequest), Seed.entry(Seed.carol, .accepted), Seed.entry(Seed.bob, .accepted)],
        ])
        let outcome = f.login(Seed.alice, Seed.aliceConn)
        #expect(outcome.contacts.map(\.name) == ["bob", "carol", "dave"])
        #expect(f.core.contactList(of: Seed.alice).map(\.name) == ["bob", "carol", "dave"])
    }

    @Test func presenceRequiresAcceptanceOnBothSides() {
        // An inconsistent half-accepted pair (the other side still pending) must not leak presence.
        let f = RelayFixture(contacts: [
            Seed.alice: [Seed.entry(Seed.bob, .accepted)],
            Seed.bob: [Seed.entry(Seed.alice, .incomingRequest)],
        ])
        f.login(Seed.alice, Seed.aliceConn)
        let bobLogin = f.login(Seed.bob, Seed.bobConn)
        #expect(bobLogin.notifyOnline == [])
        #expect(bobLogin.contacts == [info(Seed.alice, .incomingRequest, online: false)])
        #expect(f.core.contactList(of: Seed.alice) == [info(Seed.bob, .accepted, online: false)])
        #expect(f.core.connectionClosed(Seed.bobConn) == [])
    }

    @Test func presenceFansOutToEveryOnlineMutualContact() {
        let f = RelayFixture(contacts: [
            Seed.alice: [Seed.entry(Seed.bob, .accepted), Seed.entry(Seed.carol, .accepted), Seed.entry(Seed.dave, .outgoingRequest)],
            Seed.bob: [Seed.entry(Seed.alice, .accepted)],
            Seed.carol: [Seed.entry(Seed.alice, .accepted)],
            Seed.dave: [Seed.entry(Seed.alice, .incomingRequest)],
        ])
        f.login(Seed.bob, Seed.bobConn)
        f.login(Seed.carol, Seed.carolConn)
        f.login(Seed.dave, Seed.daveConn)
        let aliceLogin = f.login(Seed.alice, Seed.aliceConn)
        #expect(Set(aliceLogin.notifyOnline) == [Seed.bobConn, Seed.carolConn])
        #expect(aliceLogin.notifyOnline.count == 2)
        #expect(aliceLogin.contacts == [info(Seed.bob, .accepted, online: true), info(Seed.carol, .accepted, online: true),
                                        info(Seed.dave, .outgoingRequest, online: false)])
        let closed = f.core.connectionClosed(Seed.aliceConn)
        #expect(Set(closed) == [Seed.bobConn, Seed.carolConn])
        #expect(closed.count == 2)
    }
}

@Suite struct ContactChangeTests {
    @Test func addThenAcceptWhileBothOnline() {
        let f = RelayFixture(contacts: [Seed.alice: [], Seed.dave: []])
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.dave, Seed.daveConn)

        // alice asks dave: both are told, neither sees the other online.
        let add = f.change(owner: Seed.alice, other: Seed.dave, ownerState: .outgoingRequest, otherState: .incomingRequest)
        #expect(add == [push(Seed.aliceConn, Seed.dave, .outgoingRequest, online: false),
                        push(Seed.daveConn, Seed.alice, .incomingRequest, online: false)])
        #expect(f.core.openChat(from: Seed.alice, with: Seed.dave) == .notAContact)
        #expect(f.core.contactList(of: Seed.dave) == [info(Seed.alice, .incomingRequest, online: false)])
        #expect(f.route(Seed.alice, Seed.dave, id: 1).rejectCode == .notAContact)

        // dave accepts: now mutual, both online, so both pushes say online.
        let accept = f.change(owner: Seed.dave, other: Seed.alice, ownerState: .accepted, otherState: .accepted)
        #expect(accept == [push(Seed.daveConn, Seed.alice, .accepted, online: true),
                           push(Seed.aliceConn, Seed.dave, .accepted, online: true)])
        #expect(f.core.openChat(from: Seed.alice, with: Seed.dave) == .online)
        #expect(f.core.contactList(of: Seed.alice) == [info(Seed.dave, .accepted, online: true)])
        #expect(f.core.contactList(of: Seed.dave) == [info(Seed.alice, .accepted, online: true)])
        #expect(f.route(Seed.alice, Seed.dave, id: 1) == .deliver(Seed.daveConn))
        #expect(f.core.connectionClosed(Seed.daveConn) == [Seed.aliceConn])
    }

    @Test func acceptWhileTheOtherIsOfflinePushesOnlyToTheOnlineSide() {
        let f = RelayFixture()
        f.login(Seed.carol, Seed.carolConn)

        // carol accepts alice's request while alice is offline.
        let accept = f.change(owner: Seed.carol, other: Seed.alice, ownerState: .accepted, otherState: .accepted)
        #expect(accept == [push(Seed.carolConn, Seed.alice, .accepted, online: false)])
        #expect(f.core.openChat(from: Seed.carol, with: Seed.alice) == .offline)
        #expect(f.route(Seed.carol, Seed.alice, id: 1) == .store(recipient: Seed.alice, mailSeq: 1))

        // alice logs in with the committed contacts: carol is told, alice sees carol online.
        let aliceLogin = f.login(Seed.alice, Seed.aliceConn)
        #expect(aliceLogin.notifyOnline == [Seed.carolConn])
        #expect(aliceLogin.contacts == [info(Seed.bob, .accepted, online: false), info(Seed.carol, .accepted, online: true)])
    }

    @Test func mutualAddWhileOnlyOwnerOnline() {
        let f = RelayFixture(contacts: [Seed.alice: [], Seed.dave: []])
        f.login(Seed.alice, Seed.aliceConn)
        let add = f.change(owner: Seed.alice, other: Seed.dave, ownerState: .outgoingRequest, otherState: .incomingRequest)
        #expect(add == [push(Seed.aliceConn, Seed.dave, .outgoingRequest, online: false)])
    }

    @Test func removeWhileBothOnlinePushesRemovedAndStopsPresence() {
        let f = RelayFixture()
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.bob, Seed.bobConn)

        let remove = f.change(owner: Seed.bob, other: Seed.alice, ownerState: nil, otherState: nil)
        #expect(remove.count == 2)
        #expect(remove.map(\.connection) == [Seed.bobConn, Seed.aliceConn])
        #expect(remove.map(\.info.relation) == [.removed, .removed])
        #expect(remove.map(\.info.online) == [false, false])
        #expect(remove.map(\.info.userID) == [Seed.alice, Seed.bob])
        // The removed contact is still named, so the client can say who went away.
        #expect(remove.map(\.info.name) == ["alice", "bob"])

        #expect(f.core.contactList(of: Seed.bob) == [])
        #expect(f.core.contactList(of: Seed.alice) == [info(Seed.carol, .outgoingRequest, online: false)])
        #expect(f.core.openChat(from: Seed.alice, with: Seed.bob) == .notAContact)
        #expect(f.route(Seed.alice, Seed.bob, id: 1).rejectCode == .notAContact)
        #expect(f.core.connectionClosed(Seed.bobConn) == [], "no presence after removal")
    }

    @Test func removeWhileOtherOffline() {
        let f = RelayFixture()
        f.login(Seed.alice, Seed.aliceConn)
        let remove = f.change(owner: Seed.alice, other: Seed.carol, ownerState: nil, otherState: nil)
        #expect(remove == [push(Seed.aliceConn, Seed.carol, .removed, online: false)])
        #expect(f.core.contactList(of: Seed.alice) == [info(Seed.bob, .accepted, online: false)])
        // carol logs in later with no contacts.
        let carolLogin = f.login(Seed.carol, Seed.carolConn)
        #expect(carolLogin.contacts == [])
    }

    @Test func changeBetweenTwoOfflineUsersPushesNothing() {
        let f = RelayFixture()
        #expect(f.change(owner: Seed.bob, other: Seed.carol, ownerState: .outgoingRequest, otherState: .incomingRequest) == [])
        #expect(f.core.onlineCount == 0)
    }
}

@Suite struct TakeoverTests {
    @Test func secondLoginTakesOverWithoutFalsePresence() {
        let f = RelayFixture()
        let core = f.core
        f.login(Seed.alice, Seed.aliceConn)
        #expect(f.login(Seed.bob, Seed.bobConn).notifyOnline == [Seed.aliceConn])

        let newBobConn = ConnectionID(21)
        let second = f.login(Seed.bob, newBobConn)
        #expect(second.takenOver == Seed.bobConn)
        #expect(second.notifyOnline == [], "contacts already know bob is online")
        #expect(second.contacts == [info(Seed.alice, .accepted, online: true)])
        #expect(core.onlineCount == 2)
        #expect(core.connection(of: Seed.bob) == newBobConn)
        #expect(core.session(of: Seed.bob)?.connection == newBobConn)
        #expect(core.user(on: newBobConn) == Seed.bob)
        #expect(core.user(on: Seed.bobConn) == nil)

        // The old connection now closes: nobody is told bob went offline.
        #expect(core.connectionClosed(Seed.bobConn) == [])
        #expect(core.connection(of: Seed.bob) == newBobConn)
        #expect(core.openChat(from: Seed.alice, with: Seed.bob) == .online)
        #expect(core.contactList(of: Seed.alice).first == info(Seed.bob, .accepted, online: true))
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .deliver(newBobConn))

        // The new connection closing is a real departure.
        #expect(core.connectionClosed(newBobConn) == [Seed.aliceConn])
        #expect(core.openChat(from: Seed.alice, with: Seed.bob) == .offline)
    }

    @Test func takeoverOnTheSameConnectionIDIsHarmless() {
        // Defensive: a re-login on the same connection keeps the session mapped to it.
        let f = RelayFixture()
        f.login(Seed.alice, Seed.aliceConn)
        let again = f.login(Seed.alice, Seed.aliceConn)
        #expect(again.takenOver == Seed.aliceConn)
        #expect(f.core.user(on: Seed.aliceConn) == Seed.alice)
        #expect(f.core.onlineCount == 1)
    }

    @Test func takeoverResetsCongestion() {
        let f = RelayFixture()
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.bob, Seed.bobConn)
        f.core.setCongested(Seed.bob, true)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .store(recipient: Seed.bob, mailSeq: 1))
        let newBobConn = ConnectionID(21)
        f.login(Seed.bob, newBobConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 2) == .deliver(newBobConn))
    }
}
