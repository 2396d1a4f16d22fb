import Foundation
import Testing
@_spi(Testing) import SwitchboardStore

@Suite struct StoreMailTests {
    @Test func scansOldestFirstWithLimitAndAfterSeq() throws {
        try withTemporaryStore { store, _ in
            let ids = try createAccounts(["alice", "bob", "carol"], in: store)
            let (alice, bob, carol) = (ids[0], ids[1], ids[2])
            // Bob's mailbox sits between Alice's and Carol's in key order; scans must not leak across.
            var batch: [WriteOp] = [.putMail(mail(to: alice, seq: 1, from: carol, id: 500, body: "for alice")),
                                    .putMail(mail(to: carol, seq: 1, from: alice, id: 501, body: "for carol"))]
            // Seqs with gaps, plus two that go backwards and must be refused.
            for seq: UInt64 in [3, 1, 2, 5, 10] {
                batch.append(.putMail(mail(to: bob, seq: seq, from: alice, id: 100 + seq, at: 7_000 + seq,
                                           body: String(repeating: "x", count: Int(seq)))))
            }
            let results = try store.apply(batch)
            // 1 and 2 come after 3 in the batch, so the high-water mark refuses them.
            #expect(results == [.mailStored, .mailStored, .mailStored,
                                .invalidRequest("seq 1 is not above the mailbox's last seq 3"),
                                .invalidRequest("seq 2 is not above the mailbox's last seq 3"),
                                .mailStored, .mailStored])
            _ = try store.apply([])

            let all = try store.mail(for: bob, afterSeq: 0, limit: 100)
            #expect(all.map(\.seq) == [3, 5, 10])
            #expect(all[0] == StoredMail(recipient: bob, seq: 3, sender: alice, messageID: 103, sentAtMs: 7_003,
                                         body: Array("xxx".utf8)))
            #expect(try store.mail(for: bob, afterSeq: 0, limit: 2).map(\.seq) == [3, 5])
            #expect(try store.mail(for: bob, afterSeq: 3, limit: 100).map(\.seq) == [5, 10])
            #expect(try store.mail(for: bob, afterSeq: 4, limit: 1).map(\.seq) == [5])
            #expect(try store.mail(for: bob, afterSeq: 10, limit: 100).isEmpty)
            #expect(try store.mail(for: bob, afterSeq: UInt64.max, limit: 100).isEmpty)
            #expect(try store.mail(for: bob, afterSeq: 0, limit: 0).isEmpty)
            #expect(try store.mail(for: alice, afterSeq: 0, limit: 100).map(\.body) == [Array("for alice".utf8)])
            #expect(try store.mail(for: carol, afterSeq: 0, limit: 100).map(\.messageID) == [501])
        }
    }

    @Test func deleteThroughSeqIsCumulativeAndUsageFollows() throws {
        try withTemporaryStore { store, _ in
            let ids = try createAccounts(["alice", "bob", "carol"], in: store)
            let (alice, bob, carol) = (ids[0], ids[1], ids[2])
            var batch: [WriteOp] = []
            for seq: UInt64 in 1...6 {
                batch.append(.putMail(mail(to: bob, seq: seq, from: alice, id: seq, body: String(repeating: "b",
                                                                                               count: 10 * Int(seq)))))
            }
            batch.append(.putMail(mail(to: carol, seq: 1, from: alice, id: 99, body: "carol's")))
            batch.append(.putMail(mail(to: alice, seq: 1, from: carol, id: 1, body: "")))
            _ = try store.apply(batch)
            #expect(try store.mailboxUsage(of: bob) == MailboxUsage(count: 6, bytes: 210, lastSeq: 6))
            #expect(try store.mailboxUsage(of: alice) == MailboxUsage(count: 1, bytes: 0, lastSeq: 1))
            #expect(try store.mailboxUsage(of: 42) == MailboxUsage(count: 0, bytes: 0, lastSeq: 0))

            #expect(try store.apply([.deleteMail(recipient: bob, throughSeq: 4)]) == [.mailDeleted(count: 4)])
            #expect(try store.mail(for: bob, afterSeq: 0, limit: 100).map(\.seq) == [5, 6])
            #expect(try store.mailboxUsage(of: bob) == MailboxUsage(count: 2, bytes: 110, lastSeq: 6))
            // An older ack again deletes nothing; other mailboxes are untouched.
            #expect(try store.apply([.deleteMail(recipient: bob, throughSeq: 2)]) == [.mailDeleted(count: 0)])
            #expect(try store.mailboxUsage(of: carol).count == 1)
            #expect(try store.mailboxUsage(of: alice).count == 1)

            #expect(try store.apply([.deleteMail(recipient: bob, throughSeq: UInt64.max)]) == [.mailDeleted(count: 2)])
            #expect(try store.mail(for: bob, afterSeq: 0, limit: 100).isEmpty)
            #expect(try store.mailboxUsage(of: carol) == MailboxUsage(count: 1, bytes: 7, lastSeq: 1))
        }
    }

    @Test func deletingManyMailsAcrossPagesKeepsNeighbours() throws {
        try withTemporaryStore { store, _ in
            let ids = try createAccounts(["a", "b", "c"], in: store)
            var batch: [WriteOp] = []
            for seq: UInt64 in 1...2_000 {
                for recipient in ids {
                    batch.append(.putMail(mail(to: recipient, seq: seq, from: ids[0],
                                               id: UInt64(recipient) << 32 | seq, body: String(repeating: "m", count: 100))))
                }
            }
            #expect(try store.apply(batch).allSatisfy { $0 == .mailStored })
            #expect(try store.apply([.deleteMail(recipient: ids[1], throughSeq: 1_500)]) == [.mailDeleted(count: 1_500)])
            #expect(try store.mailboxUsage(of: ids[0]).count == 2_000)
            #expect(try store.mailboxUsage(of: ids[1]) == MailboxUsage(count: 500, bytes: 50_000, lastSeq: 2_000))
            #expect(try store.mailboxUsage(of: ids[2]).count == 2_000)
            #expect(try store.mail(for: ids[1], afterSeq: 0, limit: 3).map(\.seq) == [1_501, 1_502, 1_503])
        }
    }

    @Test func lastSeqSurvivesDeleteAndReopen() throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let store = try Store(directory: directory, mapSizeBytes: 1 << 24)
            let ids = try createAccounts(["alice", "bob"], in: store)
            _ = try store.apply([.putMail(mail(to: ids[1], seq: 1, from: ids[0], id: 1)),
                                 .putMail(mail(to: ids[1], seq: 2, from: ids[0], id: 2)),
                                 .deleteMail(recipient: ids[1], throughSeq: 2)])
            #expect(try store.mailboxUsage(of: ids[1]) == MailboxUsage(count: 0, bytes: 0, lastSeq: 2))
            store.close()
        }
        let reopened = try Store(directory: directory, mapSizeBytes: 1 << 24)
        defer { reopened.close() }
        #expect(try reopened.mailboxUsage(of: 2) == MailboxUsage(count: 0, bytes: 0, lastSeq: 2))
        // The mark is enforced: a reused seq is refused, the next one accepted.
        #expect(try reopened.apply([.putMail(mail(to: 2, seq: 2, from: 1, id: 3))])
            == [.invalidRequest("seq 2 is not above the mailbox's last seq 2")])
        #expect(try reopened.apply([.putMail(mail(to: 2, seq: 3, from: 1, id: 3))]) == [.mailStored])
        #expect(try reopened.mailboxUsage(of: 2) == MailboxUsage(count: 1, bytes: 5, lastSeq: 3))
    }

    @Test func mailToAnUnknownRecipientOrFromSenderZeroIsRefused() throws {
        try withTemporaryStore { store, _ in
            let alice = try createAccounts(["alice"], in: store)[0]
            #expect(try store.apply([.putMail(mail(to: 77, seq: 1, from: alice, id: 1)),
                                     .putMail(mail(to: 0, seq: 1, from: alice, id: 2)),
                                     .putMail(mail(to: alice, seq: 1, from: 0, id: 3))])
                == [.noSuchUser, .noSuchUser, .invalidRequest("sender 0 is not a user")])
            #expect(try !store.dedupeRecordExists(sender: alice, messageID: 1))
            #expect(try store.mailboxUsage(of: 77) == MailboxUsage(count: 0, bytes: 0, lastSeq: 0))
        }
    }

    @Test func aDuplicateMessageIsRecognisedAndWritesNothing() throws {
        try withTemporaryStore { store, _ in
            let ids = try createAccounts(["alice", "bob"], in: store)
            let (alice, bob) = (ids[0], ids[1])
            #expect(try !store.dedupeRecordExists(sender: alice, messageID: 42))
            #expect(try store.apply([.putMail(mail(to: bob, seq: 1, from: alice, id: 42, body: "first"))])
                == [.mailStored])
            #expect(try store.dedupeRecordExists(sender: alice, messageID: 42))
            // Same (sender, messageID) with a new seq, even after the original was acked: still a duplicate.
            _ = try store.apply([.deleteMail(recipient: bob, throughSeq: 1)])
            #expect(try store.apply([.putMail(mail(to: bob, seq: 2, from: alice, id: 42, body: "again")),
                                     .putMail(mail(to: bob, seq: 2, from: bob, id: 42, body: "other sender"))])
                == [.duplicateMail, .mailStored])
            #expect(try store.mail(for: bob, afterSeq: 0, limit: 10).map(\.body) == [Array("other sender".utf8)])
            #expect(try store.mailboxUsage(of: bob).lastSeq == 2)
        }
    }

    @Test func pruneRemovesOnlyOlderDedupeRecords() throws {
        try withTemporaryStore { store, _ in
            let ids = try createAccounts(["alice", "bob"], in: store)
            let (alice, bob) = (ids[0], ids[1])
            var batch: [WriteOp] = []
            for index: UInt64 in 1...10 {
                // Alternate senders so old and new records interleave in key order.
                let sender = index % 2 == 0 ? alice : bob
                let recipient = index % 2 == 0 ? bob : alice
                batch.append(.putMail(mail(to: recipient, seq: index, from: sender, id: index, at: index * 100)))
            }
            _ = try store.apply(batch)
            #expect(try store.apply([.pruneDedupe(olderThanMs: 600)]) == [.pruned(count: 5)])
            for index: UInt64 in 1...10 {
                let sender = index % 2 == 0 ? alice : bob
                #expect(try store.dedupeRecordExists(sender: sender, messageID: index) == (index >= 6))
            }
            // Pruning drops only dedupe records, never mail.
            #expect(try store.mailboxUsage(of: alice).count + store.mailboxUsage(of: bob).count == 10)
            #expect(try store.apply([.pruneDedupe(olderThanMs: 600)]) == [.pruned(count: 0)])
            // Once pruned, the same id is accepted again.
            #expect(try store.apply([.putMail(mail(to: bob, seq: 11, from: alice, id: 2))]) == [.mailStored])
        }
    }
}

