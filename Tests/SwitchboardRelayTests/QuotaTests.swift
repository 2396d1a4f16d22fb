import SwitchboardProtocol
@testable import SwitchboardRelay
import SwitchboardStore
import Testing

@Suite struct MailboxQuotaTests {
    @Test func messageQuotaRejectsTheFourthAndMailRemovedFreesRoom() {
        let f = RelayFixture(limits: RelayLimits(mailboxMaxMessages: 3))
        f.login(Seed.alice, Seed.aliceConn)
        for id: UInt64 in 1...3 {
            #expect(f.route(Seed.alice, Seed.bob, id: id) == .store(recipient: Seed.bob, mailSeq: id))
        }
        let fourth = f.route(Seed.alice, Seed.bob, id: 4)
        #expect(fourth.isMailboxFull)
        #expect(f.core.mailbox(of: Seed.bob) == RelayCore.MailboxState(count: 3, bytes: 15, lastSeq: 3))
        // Still full on retry; a rejected id is not remembered as a duplicate.
        #expect(f.route(Seed.alice, Seed.bob, id: 4).isMailboxFull)

        // bob reads and acknowledges one message.
        f.core.mailRemoved(recipient: Seed.bob, count: 1, bytes: 5)
        #expect(f.route(Seed.alice, Seed.bob, id: 4) == .store(recipient: Seed.bob, mailSeq: 4))
        #expect(f.route(Seed.alice, Seed.bob, id: 5).isMailboxFull)
    }

    /// Cluster mode: another node's mail is applied to the store before its notice reaches the core; a usage read
    /// in between already counts it, and the notice must not count it again (it would fill the quota early).
    @Test func foreignMailReadBeforeItsNoticeIsCountedOnce() {
        let f = RelayFixture(limits: RelayLimits(mailboxMaxMessages: 3),
                             usage: [Seed.bob: MailboxUsage(count: 2, bytes: 20, lastSeq: 7)])
        #expect(f.core.mailbox(of: Seed.bob).count == 2)
        f.core.foreignMailStored(recipient: Seed.bob, seq: 7, bytes: 10)   // applied before the read
        #expect(f.core.mailbox(of: Seed.bob) == RelayCore.MailboxState(count: 2, bytes: 20, lastSeq: 7))
        f.core.foreignMailStored(recipient: Seed.bob, seq: 8, bytes: 5)    // applied after it
        #expect(f.core.mailbox(of: Seed.bob) == RelayCore.MailboxState(count: 3, bytes: 25, lastSeq: 8))
        f.login(Seed.alice, Seed.aliceConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1).isMailboxFull)
        // A refresh at login reads again: what it counted is not counted again either.
        f.core.refreshMailbox(of: Seed.bob, usage: MailboxUsage(count: 2, bytes: 15, lastSeq: 9))
        f.core.foreignMailStored(recipient: Seed.bob, seq: 9, bytes: 5)
        #expect(f.core.mailbox(of: Seed.bob) == RelayCore.MailboxState(count: 2, bytes: 15, lastSeq: 9))
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .store(recipient: Seed.bob, mailSeq: 10))
    }

    @Test func persistedUsageCountsAgainstTheQuota() {
        let f = RelayFixture(limits: RelayLimits(mailboxMaxMessages: 3),
                             usage: [Seed.bob: MailboxUsage(count: 2, bytes: 20, lastSeq: 17)])
        f.login(Seed.alice, Seed.aliceConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .store(recipient: Seed.bob, mailSeq: 18))
        #expect(f.route(Seed.alice, Seed.bob, id: 2).isMailboxFull)
        // Deleting everything (cumulative ack) frees the whole box; seqs keep increasing.
        f.core.mailRemoved(recipient: Seed.bob, count: 3, bytes: 25)
        #expect(f.core.mailbox(of: Seed.bob) == RelayCore.MailboxState(count: 0, bytes: 0, lastSeq: 18))
        #expect(f.route(Seed.alice, Seed.bob, id: 2) == .store(recipient: Seed.bob, mailSeq: 19))
        #expect(f.usage.loads == [Seed.bob])
    }

    @Test func byteQuota() {
        let f = RelayFixture(limits: RelayLimits(mailboxMaxBytes: 100))
        f.login(Seed.alice, Seed.aliceConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1, bytes: 60) == .store(recipient: Seed.bob, mailSeq: 1))
        #expect(f.route(Seed.alice, Seed.bob, id: 2, bytes: 41).isMailboxFull)
        #expect(f.route(Seed.alice, Seed.bob, id: 2, bytes: 40) == .store(recipient: Seed.bob, mailSeq: 2), "exactly at the cap fits")
        #expect(f.route(Seed.alice, Seed.bob, id: 3, bytes: 1).isMailboxFull)
        #expect(f.route(Seed.alice, Seed.bob, id: 3, bytes: 0) == .store(recipient: Seed.bob, mailSeq: 3), "an empty body still fits")
        f.core.mailRemoved(recipient: Seed.bob, count: 1, bytes: 60)
        #expect(f.route(Seed.alice, Seed.bob, id: 4, bytes: 61).isMailboxFull)
        #expect(f.route(Seed.alice, Seed.bob, id: 4, bytes: 60) == .store(recipient: Seed.bob, mailSeq: 4))
        #expect(f.core.mailbox(of: Seed.bob) == RelayCore.MailboxState(count: 3, bytes: 100, lastSeq: 4))
    }

    @Test func mailRemovedClampsAndIgnoresUnloadedMailboxes() {
        let f = RelayFixture(usage: [Seed.bob: MailboxUsage(count: 1, bytes: 10, lastSeq: 5)])
        // Not loaded yet: nothing to adjust (the store's numbers are already current).
        f.core.mailRemoved(recipient: Seed.bob, count: 1, bytes: 10)
        #expect(f.usage.loads == [])
        #expect(f.core.mailbox(of: Seed.bob) == RelayCore.MailboxState(count: 1, bytes: 10, lastSeq: 5))
        f.core.mailRemoved(recipient: Seed.bob, count: 5, bytes: 500)
        #expect(f.core.mailbox(of: Seed.bob) == RelayCore.MailboxState(count: 0, bytes: 0, lastSeq: 5))
    }

    @Test func rerouteToMailboxOverQuotaRejectsAndForgetsTheID() {
        let f = RelayFixture(limits: RelayLimits(mailboxMaxMessages: 1))
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.bob, Seed.bobConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .deliver(Seed.bobConn))
        #expect(f.route(Seed.alice, Seed.bob, id: 2) == .deliver(Seed.bobConn))

        // bob drops with both unacknowledged: the first fits in the mailbox, the second does not.
        #expect(f.core.rerouteToMailbox(sender: Seed.alice, recipient: Seed.bob, messageID: 1, bodyBytes: 5)
            == .store(recipient: Seed.bob, mailSeq: 1))
        #expect(f.core.rerouteToMailbox(sender: Seed.alice, recipient: Seed.bob, messageID: 2, bodyBytes: 5).isMailboxFull)
        _ = f.core.connectionClosed(Seed.bobConn)

        // The stored one is still in flight until the store commits; the rejected one is forgotten.
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .dropInFlightDuplicate)
        f.core.mailRemoved(recipient: Seed.bob, count: 1, bytes: 5)
        #expect(f.route(Seed.alice, Seed.bob, id: 2) == .store(recipient: Seed.bob, mailSeq: 2))
        #expect(f.core.completed(sender: Seed.alice, messageID: 1, status: .storedOffline)?.connection == Seed.aliceConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .acknowledgeDuplicate(.storedOffline))
    }

    @Test func oversizedBodiesAreRejected() {
        let f = RelayFixture(limits: RelayLimits(maxBodyBytes: 100))
        f.login(Seed.alice, Seed.aliceConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1, bytes: 101).rejectCode == .invalidRequest)
        #expect(f.route(Seed.alice, Seed.bob, id: 1, bytes: 100) == .store(recipient: Seed.bob, mailSeq: 1))
        f.login(Seed.bob, Seed.bobConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 2, bytes: 1_000_000).rejectCode == .invalidRequest)
        #expect(f.route(Seed.alice, Seed.bob, id: 2, bytes: 100) == .deliver(Seed.bobConn))
        // Nothing of the rejected attempts reached the mailbox.
        #expect(f.core.mailbox(of: Seed.bob) == RelayCore.MailboxState(count: 1, bytes: 100, lastSeq: 1))
    }

    @Test func defaultLimitsMatchTheAnnouncedServerLimits() {
        let limits = RelayLimits()
        let announced = ServerLimits()
        #expect(limits.maxBodyBytes == announced.maxBodyBytes)
        #expect(limits.mailboxMaxMessages == Int(announced.mailboxMaxMessages))
        #expect(limits.mailboxMaxBytes == Int(announced.mailboxMaxBytes))
    }
}

@Suite struct CongestionTests {
    @Test func congestedRecipientGetsMailUntilCleared() {
        let f = RelayFixture(usage: [Seed.bob: MailboxUsage(count: 0, bytes: 0, lastSeq: 3)])
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.bob, Seed.bobConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .deliver(Seed.bobConn))
        f.core.setCongested(Seed.bob, true)
        #expect(f.core.session(of: Seed.bob)?.congested == true)
        #expect(f.route(Seed.alice, Seed.bob, id: 2) == .store(recipient: Seed.bob, mailSeq: 4))
        #expect(f.route(Seed.alice, Seed.bob, id: 3) == .store(recipient: Seed.bob, mailSeq: 5))
        // Congestion does not change presence or chat status.
        #expect(f.core.openChat(from: Seed.alice, with: Seed.bob) == .online)
        // A congested sender can still send to others.
        #expect(f.route(Seed.bob, Seed.alice, id: 1) == .deliver(Seed.aliceConn))
        f.core.setCongested(Seed.bob, false)
        #expect(f.route(Seed.alice, Seed.bob, id: 4) == .deliver(Seed.bobConn))
        // Duplicates of the stored ones are still recognised.
        #expect(f.route(Seed.alice, Seed.bob, id: 2) == .dropInFlightDuplicate)
    }

    @Test func congestedRecipientStillRespectsQuota() {
        let f = RelayFixture(limits: RelayLimits(mailboxMaxMessages: 1))
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.bob, Seed.bobConn)
        f.core.setCongested(Seed.bob, true)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .store(recipient: Seed.bob, mailSeq: 1))
        #expect(f.route(Seed.alice, Seed.bob, id: 2).isMailboxFull)
    }

    @Test func settingCongestionOfAnOfflineUserIsIgnored() {
        let f = RelayFixture()
        f.core.setCongested(Seed.bob, true)
        #expect(f.core.session(of: Seed.bob) == nil)
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.bob, Seed.bobConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .deliver(Seed.bobConn))
    }
}
