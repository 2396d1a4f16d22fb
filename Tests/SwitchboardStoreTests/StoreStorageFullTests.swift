// Running out of room: a real LMDB map of a few hundred KiB filled with mail (MDB_MAP_FULL), and injected commit
// failures for ENOSPC / EDQUOT / EIO, which a test cannot get from a real disk without filling it.

import Foundation
import Testing
@_spi(Testing) import SwitchboardStore

/// Stores 1 KiB mails from `sender` to `recipient`, one per batch, from seq `firstSeq` on, until the store answers
/// `storageFull`. Returns the last seq stored.
func fillWithMail(_ store: Store, to recipient: UserID, from sender: UserID, firstSeq: UInt64 = 1,
                  messageIDBase: UInt64 = 0) throws -> UInt64 {
    let body = String(repeating: "m", count: 1024)
    var seq = firstSeq
    while seq < firstSeq + 10_000 {
        let result = try store.apply([.putMail(mail(to: recipient, seq: seq, from: sender, id: messageIDBase + seq,
                                                    body: body))])
        if result == [.storageFull] { return seq - 1 }
        guard result == [.mailStored] else { throw FixtureError("unexpected result \(result) at seq \(seq)") }
        seq += 1
    }
    throw FixtureError("the map never filled")
}

@Suite struct StoreStorageFullTests {
    @Test func aFullMapAnswersStorageFullAndStaysReadable() throws {
        try withTemporaryStore(mapSizeBytes: 512 * 1024) { store, _ in
            let ids = try createAccounts(["alice", "bob"], in: store)
            let (alice, bob) = (ids[0], ids[1])
            #expect(try store.apply([.contactAdd(owner: alice, contactName: "bob")]).count == 1)
            let last = try fillWithMail(store, to: bob, from: alice)
            #expect(last > 50)

            // Reads are unaffected.
            #expect(try store.account(named: "alice")?.userID == alice)
            #expect(try store.contacts(of: bob) == [ContactEntry(userID: alice, name: "alice", state: .incomingRequest)])
            #expect(try store.mail(for: bob, afterSeq: 0, limit: 10_000).count == Int(last))
            #expect(try store.mailboxUsage(of: bob) == MailboxUsage(count: Int(last), bytes: Int(last) * 1024,
                                                                    lastSeq: last))
            // Every growing op is refused, and nothing of them lands.
            let refused = try store.apply([
                .createAccount(name: "carol", password: fixturePassword),
                .putMail(mail(to: bob, seq: last + 1, from: alice, id: 90_000,
                              body: String(repeating: "z", count: 64 * 1024))),
            ])
            #expect(refused == [.storageFull, .storageFull])
            #expect(try store.account(named: "carol") == nil)
            #expect(try !store.dedupeRecordExists(sender: alice, messageID: 90_000))
        }
    }

    @Test func deletesInAFullBatchLandAndFreeRoomForLaterMail() throws {
        try withTemporaryStore(mapSizeBytes: 512 * 1024) { store, _ in
            let ids = try createAccounts(["alice", "bob"], in: store)
            let (alice, bob) = (ids[0], ids[1])
            let last = try fillWithMail(store, to: bob, from: alice)
            let half = last / 2

            // The put cannot fit whatever the delete frees; the delete is retried alone and lands.
            let huge = String(repeating: "h", count: 600 * 1024)
            let results = try store.apply([
                .putMail(mail(to: bob, seq: last + 1, from: alice, id: 80_000, body: huge)),
                .deleteMail(recipient: bob, throughSeq: half),
                .contactRemove(owner: alice, contactName: "bob"),
            ])
            #expect(results == [.storageFull, .mailDeleted(count: Int(half)), .alreadyInThatState])
            #expect(try store.mail(for: bob, afterSeq: 0, limit: 1).first?.seq == half + 1)
            #expect(try store.mailboxUsage(of: bob).count == Int(last - half))
            #expect(try !store.dedupeRecordExists(sender: alice, messageID: 80_000))

            // Recovery: the freed pages are reused, new mail is stored again.
            #expect(try store.apply([.putMail(mail(to: bob, seq: last + 1, from: alice, id: 70_000))]) == [.mailStored])
            #expect(try store.apply([.putMail(mail(to: bob, seq: last + 2, from: alice, id: 70_001))]) == [.mailStored])
            // And it fills up again roughly where it did before, rather than failing early.
            let refilled = try fillWithMail(store, to: bob, from: alice, firstSeq: last + 3, messageIDBase: 100_000)
            #expect(refilled - (last + 2) >= half / 2)
        }
    }

    @Test func aStoreThatOnlyReceivesMailRecoversAfterADelete() throws {
        try withTemporaryStore(mapSizeBytes: 512 * 1024) { store, _ in
            let ids = try createAccounts(["alice", "bob"], in: store)
            let (alice, bob) = (ids[0], ids[1])
            let last = try fillWithMail(store, to: bob, from: alice)
            // The delete commits in a batch of its own; from then on only growing batches arrive. LMDB reuses the
            // freed pages only two commits later, and failed batches commit nothing, so without the store's extra
            // commit on storageFull this mail would be refused forever.
            #expect(try store.apply([.deleteMail(recipient: bob, throughSeq: last)]) == [.mailDeleted(count: Int(last))])
            let big = String(repeating: "q", count: 150 * 1024)
            var outcomes: [[WriteResult]] = []
            for attempt: UInt64 in 1...3 {
                outcomes.append(try store.apply([.putMail(mail(to: bob, seq: last + attempt, from: alice,
                                                               id: 60_000 + attempt, body: big))]))
                if outcomes.last == [.mailStored] { break }
            }
            #expect(outcomes.last == [.mailStored])
            #expect(outcomes.count <= 2)
        }
    }

    @Test func reopeningWithALargerMapLetsWritesProceed() throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let last: UInt64
        do {
            let store = try Store(directory: directory, mapSizeBytes: 256 * 1024)
            defer { store.close() }
            let ids = try createAccounts(["alice", "bob"], in: store)
            last = try fillWithMail(store, to: ids[1], from: ids[0])
        }
        let store = try Store(directory: directory, mapSizeBytes: 1 << 20)
        defer { store.close() }
        #expect(try store.mailboxUsage(of: 2).count == Int(last))
        #expect(try store.apply([.putMail(mail(to: 2, seq: last + 1, from: 1, id: 50_000,
                                               body: String(repeating: "n", count: 64 * 1024))),
                                 .createAccount(name: "carol", password: fixturePassword)])
                == [.mailStored, .accountCreated(3)])
        #expect(try store.mailboxUsage(of: 2).count == Int(last) + 1)
    }

    /// A batch with one op of every kind, on a store with alice, bob (contacts) and two mails for bob.
    private func everyKindOfOp(alice: UserID, bob: UserID) -> [WriteOp] {
        [
            .createAccount(name: "carol", password: fixturePassword),
            .deleteMail(recipient: bob, throughSeq: 1),
            .putMail(mail(to: bob, seq: 3, from: alice, id: 3)),
            .contactAdd(owner: alice, contactName: "bob"),
            .contactAccept(owner: bob, contactName: "alice"),
            .contactRemove(owner: alice, contactName: "bob"),
            .putDedupeWindow(sender: alice, entries: [DedupeWindowEntry(messageID: 1, status: 1, atMs: 5)]),
            .putDedupeWindow(sender: bob, entries: []),
            .pruneDedupe(olderThanMs: 0),
        ]
    }

    private func seed(_ store: Store) throws -> (UserID, UserID) {
        let ids = try createAccounts(["alice", "bob"], in: store)
        _ = try store.apply([.contactAdd(owner: ids[0], contactName: "bob"),
                             .putMail(mail(to: ids[1], seq: 1, from: ids[0], id: 1)),
                             .putMail(mail(to: ids[1], seq: 2, from: ids[0], id: 2))])
        return (ids[0], ids[1])
    }

    @Test(arguments: [ENOSPC, EDQUOT])
    func noSpaceRetriesOnlyTheOpsThatDoNotGrow(code: Int32) throws {
        try withTemporaryStore { store, _ in
            let (alice, bob) = try seed(store)
            try store.injectCommitFailuresForTesting([code])
            let results = try store.apply(everyKindOfOp(alice: alice, bob: bob))
            let removed = WriteResult.contactChanged(owner: nil, other: nil, ownerID: alice, otherID: bob)
            #expect(results == [.storageFull, .mailDeleted(count: 1), .storageFull, .storageFull, .storageFull,
                                removed, .storageFull, .dedupeWindowSaved, .pruned(count: 0)])
            #expect(try store.mail(for: bob, afterSeq: 0, limit: 10).map(\.seq) == [2])
            #expect(try store.contacts(of: alice).isEmpty)
            #expect(try store.account(named: "carol") == nil)
            #expect(try store.dedupeWindow(of: alice, notBeforeMs: 0).isEmpty)
            #expect(try !store.dedupeRecordExists(sender: alice, messageID: 3))
        }
    }

    @Test func whenTheRetryFailsTooTheErrorIsThrownAndNothingLands() throws {
        try withTemporaryStore { store, directory in
            let (alice, bob) = try seed(store)
            try store.injectCommitFailuresForTesting([ENOSPC, ENOSPC])
            let error = #expect(throws: StoreError.self) { try store.apply(everyKindOfOp(alice: alice, bob: bob)) }
            #expect(error?.isStorageFull == true)
            #expect(error?.isMapFull == false)
            #expect(error?.lmdbCode == ENOSPC)
            #expect(error?.description.hasPrefix("no space left on device (ENOSPC) writing \(directory)/data.mdb")
                    == true)
            #expect(error?.description.contains("Input/output error") == false)
            #expect(try store.mail(for: bob, afterSeq: 0, limit: 10).map(\.seq) == [1, 2])
            #expect(try store.contacts(of: alice).count == 1)
            // The injected failures are used up: the store writes normally again.
            #expect(try store.apply([.deleteMail(recipient: bob, throughSeq: 2)]) == [.mailDeleted(count: 2)])
        }
    }

    @Test func quotaExceededIsDescribedAsSuch() throws {
        try withTemporaryStore { store, _ in
            try store.injectCommitFailuresForTesting([EDQUOT])
            let error = #expect(throws: StoreError.self) {
                _ = try store.createAccountsBulk(names: ["alice"], password: fixturePassword)
            }
            #expect(error?.isStorageFull == true)
            #expect(error?.description.hasPrefix("disk quota exceeded (EDQUOT) writing ") == true)
        }
    }

    @Test func anIOErrorIsNotStorageFullAndIsNotRetried() throws {
        try withTemporaryStore { store, _ in
            let (alice, bob) = try seed(store)
            try store.injectCommitFailuresForTesting([EIO])
            let error = #expect(throws: StoreError.self) { try store.apply(everyKindOfOp(alice: alice, bob: bob)) }
            // The temporary directory's filesystem is not full, so a short write is not suspected.
            #expect(error == StoreError.lmdb(operation: "mdb_txn_commit (injected)", code: EIO,
                                             message: String(cString: strerror(EIO))))
            #expect(error?.isStorageFull == false)
            #expect(try store.mail(for: bob, afterSeq: 0, limit: 10).map(\.seq) == [1, 2])
        }
    }

    @Test func storageFullErrorsDescribeThemselves() {
        let mapFull = StoreError.mapFull(operation: "mdb_put(mail)", mapSizeBytes: 1 << 20)
        #expect(mapFull.description
                == "LMDB map full (map size 1048576 bytes): raise --map-size (mdb_put(mail) returned MDB_MAP_FULL, "
                    + "code -30792)")
        #expect(mapFull.isMapFull && mapFull.isStorageFull)
        let noSpace = StoreError.noSpace(operation: "mdb_txn_commit", code: ENOSPC, path: "/data/data.mdb")
        #expect(noSpace.description
                == "no space left on device (ENOSPC) writing /data/data.mdb (mdb_txn_commit, errno \(ENOSPC))")
        #expect(noSpace.isStorageFull && !noSpace.isMapFull)
        // Raw LMDB errors with these codes count too; others do not.
        #expect(StoreError.lmdb(operation: "x", code: ENOSPC, message: "").isStorageFull)
        #expect(!StoreError.lmdb(operation: "x", code: EIO, message: "").isStorageFull)
        #expect(!StoreError.corruptRecord(database: "mail", reason: "").isStorageFull)
    }
}
