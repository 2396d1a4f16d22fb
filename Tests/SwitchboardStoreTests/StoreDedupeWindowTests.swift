// Durable per-sender dedupe windows ("dedupewin") and the additive schema upgrade from version 1 that added them.

import Foundation
import Testing
@_spi(Testing) import SwitchboardStore

private func entry(_ messageID: UInt64, at atMs: UInt64, status: UInt8 = 1) -> DedupeWindowEntry {
    DedupeWindowEntry(messageID: messageID, status: status, atMs: atMs)
}

private func senderKey(_ sender: UserID) -> [UInt8] {
    withUnsafeBytes(of: sender.bigEndian) { Array($0) }
}

@Suite struct StoreDedupeWindowTests {
    @Test func roundTripReplaceAndDeleteByEmpty() throws {
        try withTemporaryStore { (store: Store, _: String) throws in
            let window = [entry(7, at: 100, status: 1), entry(8, at: 200, status: 2), entry(UInt64.max, at: 300, status: 255)]
            #expect(try store.apply([.putDedupeWindow(sender: 1, entries: window)]) == [.dedupeWindowSaved])
            #expect(try store.dedupeWindow(of: 1, notBeforeMs: 0) == window)
            #expect(try store.dedupeWindow(of: 2, notBeforeMs: 0).isEmpty)

            // A put replaces the whole window, it does not merge.
            let replacement = [entry(9, at: 400)]
            #expect(try store.apply([.putDedupeWindow(sender: 1, entries: replacement),
                                     .putDedupeWindow(sender: 2, entries: window)])
                    == [.dedupeWindowSaved, .dedupeWindowSaved])
            #expect(try store.dedupeWindow(of: 1, notBeforeMs: 0) == replacement)
            #expect(try store.dedupeWindow(of: 2, notBeforeMs: 0) == window)

            // Empty deletes the record (and deleting a missing one is fine).
            #expect(try store.apply([.putDedupeWindow(sender: 1, entries: []),
                                     .putDedupeWindow(sender: 3, entries: [])])
                    == [.dedupeWindowSaved, .dedupeWindowSaved])
            #expect(try store.dedupeWindow(of: 1, notBeforeMs: 0).isEmpty)
            #expect(try store.dedupeWindow(of: 2, notBeforeMs: 0) == window)
            // The record is really gone: pruning everything finds only sender 2's three entries.
            #expect(try store.apply([.pruneDedupe(olderThanMs: UInt64.max)]) == [.pruned(count: 3)])
        }
    }

    @Test func windowsSurviveReopening() throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let window = (1...300).map { entry(UInt64($0), at: 1_000 + UInt64($0)) }
        do {
            let store = try Store(directory: directory, mapSizeBytes: 1 << 24)
            defer { store.close() }
            _ = try store.apply([.putDedupeWindow(sender: 5, entries: window)])
        }
        let store = try Store(directory: directory, mapSizeBytes: 1 << 24)
        defer { store.close() }
        #expect(try store.dedupeWindow(of: 5, notBeforeMs: 0) == window)
    }

    @Test func notBeforeMsFiltersEachEntryInStoredOrder() throws {
        try withTemporaryStore { (store: Store, _: String) throws in
            // 50 after 100: a wall-clock step backwards. Each entry is tested on its own and order is kept.
            let window = [entry(1, at: 100), entry(2, at: 50), entry(3, at: 200), entry(4, at: 300)]
            _ = try store.apply([.putDedupeWindow(sender: 1, entries: window)])
            #expect(try store.dedupeWindow(of: 1, notBeforeMs: 0) == window)
            #expect(try store.dedupeWindow(of: 1, notBeforeMs: 60).map(\.messageID) == [1, 3, 4])
            #expect(try store.dedupeWindow(of: 1, notBeforeMs: 200).map(\.messageID) == [3, 4])   // >= is kept
            #expect(try store.dedupeWindow(of: 1, notBeforeMs: 300).map(\.messageID) == [4])
            #expect(try store.dedupeWindow(of: 1, notBeforeMs: 301).isEmpty)
        }
    }

    @Test func pruneDropsOldEntriesRewritingOrDeletingWindows() throws {
        try withTemporaryStore { (store: Store, _: String) throws in
            let ids = try createAccounts(["alice", "bob"], in: store)
            let (alice, bob) = (ids[0], ids[1])
            _ = try store.apply([
                .putMail(mail(to: bob, seq: 1, from: alice, id: 1, at: 100)),
                .putMail(mail(to: bob, seq: 2, from: alice, id: 2, at: 500)),
                .putDedupeWindow(sender: alice, entries: [entry(10, at: 100), entry(11, at: 200), entry(12, at: 300)]),
                .putDedupeWindow(sender: bob, entries: [entry(20, at: 50), entry(21, at: 60)]),
                .putDedupeWindow(sender: 77, entries: [entry(30, at: 900)]),
            ])
            // One dedupe record (at 100), alice's first entry and both of bob's.
            #expect(try store.apply([.pruneDedupe(olderThanMs: 150)]) == [.pruned(count: 4)])
            #expect(try !store.dedupeRecordExists(sender: alice, messageID: 1))
            #expect(try store.dedupeRecordExists(sender: alice, messageID: 2))
            #expect(try store.dedupeWindow(of: alice, notBeforeMs: 0) == [entry(11, at: 200), entry(12, at: 300)])
            #expect(try store.dedupeWindow(of: bob, notBeforeMs: 0).isEmpty)
            #expect(try store.dedupeWindow(of: 77, notBeforeMs: 0) == [entry(30, at: 900)])
            // Nothing more to prune at the same cutoff; bob's emptied window was deleted, not left empty.
            #expect(try store.apply([.pruneDedupe(olderThanMs: 150)]) == [.pruned(count: 0)])
            #expect(try store.apply([.pruneDedupe(olderThanMs: 1_000)]) == [.pruned(count: 4)])
            #expect(try store.dedupeWindow(of: alice, notBeforeMs: 0).isEmpty)
            #expect(try store.dedupeWindow(of: 77, notBeforeMs: 0).isEmpty)
        }
    }

    @Test func theCapIsEnforced() throws {
        try withTemporaryStore { (store: Store, _: String) throws in
            let full = (0..<Store.maxDedupeWindowEntries).map { entry(UInt64($0), at: UInt64($0)) }
            #expect(Store.maxDedupeWindowEntries == 4096)
            let over = full + [entry(99_999, at: 99_999)]
            let results = try store.apply([.putDedupeWindow(sender: 1, entries: over),
                                           .putDedupeWindow(sender: 2, entries: full),
                                           .putDedupeWindow(sender: 0, entries: [entry(1, at: 1)])])
            #expect(results == [.invalidRequest("a dedupe window holds at most 4096 entries, got 4097"),
                                .dedupeWindowSaved,
                                .invalidRequest("sender 0 is not a user")])
            #expect(try store.dedupeWindow(of: 1, notBeforeMs: 0).isEmpty)
            #expect(try store.dedupeWindow(of: 2, notBeforeMs: 0) == full)
        }
    }

    @Test(arguments: [
        ([], "truncated at version"),
        ([2, 0, 0, 0, 0], "record version 2, expected 1"),
        ([1, 0, 0], "truncated at count"),
        ([1, 0, 0, 0, 2] + [UInt8](repeating: 0, count: 17), "claims 2 entries but holds 17 bytes"),
        ([1, 0, 0, 0, 1] + [UInt8](repeating: 0, count: 18), "claims 1 entries but holds 18 bytes"),
        ([1, 0, 0, 0x10, 0x01] + [UInt8](repeating: 0, count: 17 * 4097), "claims 4097 entries"),
        ([1, 0xFF, 0xFF, 0xFF, 0xFF], "claims 4294967295 entries"),
    ] as [([UInt8], String)])
    func aCorruptWindowThrowsCorruptRecord(value: [UInt8], reason: String) throws {
        try withTemporaryStore { (store: Store, _: String) throws in
            try store.putRawRecordForTesting(database: "dedupewin", key: senderKey(3), value: value)
            let error = #expect(throws: StoreError.self) { _ = try store.dedupeWindow(of: 3, notBeforeMs: 0) }
            guard case let .corruptRecord(database, found)? = error else {
                Issue.record("expected corruptRecord, got \(String(describing: error))")
                return
            }
            #expect(database == "dedupewin")
            #expect(found.contains(reason), "\(found)")
            // Pruning meets the same record and refuses rather than guessing.
            #expect(throws: StoreError.self) { try store.apply([.pruneDedupe(olderThanMs: 1)]) }
            // Other senders and replacing the bad record still work.
            #expect(try store.dedupeWindow(of: 4, notBeforeMs: 0).isEmpty)
            #expect(try store.apply([.putDedupeWindow(sender: 3, entries: [entry(1, at: 1)])]) == [.dedupeWindowSaved])
            #expect(try store.dedupeWindow(of: 3, notBeforeMs: 0) == [entry(1, at: 1)])
        }
    }

    @Test func aCorruptWindowKeyThrowsDuringPrune() throws {
        try withTemporaryStore { (store: Store, _: String) throws in
            try store.putRawRecordForTesting(database: "dedupewin", key: [1, 2, 3], value: [1, 0, 0, 0, 0])
            let error = #expect(throws: StoreError.self) { try store.apply([.pruneDedupe(olderThanMs: 1)]) }
            #expect(error?.description.contains("dedupewin") == true)
        }
    }

    @Test func aWindowWithEntriesCountsAsGrowingUnderMapFull() throws {
        try withTemporaryStore(mapSizeBytes: 512 * 1024) { (store: Store, _: String) throws in
            let ids = try createAccounts(["alice", "bob"], in: store)
            _ = try store.apply([.putDedupeWindow(sender: ids[1], entries: [entry(1, at: 1)])])
            _ = try fillWithMail(store, to: ids[1], from: ids[0])
            let big = (0..<Store.maxDedupeWindowEntries).map { entry(UInt64($0), at: 10) }
            let results = try store.apply([.putDedupeWindow(sender: ids[0], entries: big),
                                           .putDedupeWindow(sender: ids[1], entries: []),
                                           .pruneDedupe(olderThanMs: 0)])
            #expect(results == [.storageFull, .dedupeWindowSaved, .pruned(count: 0)])
            #expect(try store.dedupeWindow(of: ids[0], notBeforeMs: 0).isEmpty)
            #expect(try store.dedupeWindow(of: ids[1], notBeforeMs: 0).isEmpty)
        }
    }

    // MARK: - Schema upgrade

    /// Builds what the previous release left on disk: schema version 1 and no "dedupewin" database.
    private func makeVersion1Store(in directory: String) throws {
        let store = try Store(directory: directory, mapSizeBytes: 1 << 24)
        defer { store.close() }
        let ids = try createAccounts(["alice", "bob"], in: store)
        _ = try store.apply([.contactAdd(owner: ids[0], contactName: "bob"),
                             .putMail(mail(to: ids[1], seq: 1, from: ids[0], id: 9, body: "from v1"))])
        try store.dropDatabaseForTesting("dedupewin")
        try store.overwriteSchemaVersionForTesting(1)
    }

    @Test func aVersion1StoreIsUpgradedInPlaceAndKeepsItsData() throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try makeVersion1Store(in: directory)
        do {
            let store = try Store(directory: directory, mapSizeBytes: 1 << 24)
            defer { store.close() }
            #expect(try store.storedSchemaVersionForTesting() == 2)
            #expect(try store.account(named: "alice") == AccountRecord(userID: 1, name: "alice",
                                                                        password: fixturePassword))
            #expect(try store.contacts(of: 2) == [ContactEntry(userID: 1, name: "alice", state: .incomingRequest)])
            #expect(try store.mail(for: 2, afterSeq: 0, limit: 10).map(\.body) == [Array("from v1".utf8)])
            #expect(try store.dedupeRecordExists(sender: 1, messageID: 9))
            #expect(try store.dedupeWindow(of: 1, notBeforeMs: 0).isEmpty)
            #expect(try store.apply([.putDedupeWindow(sender: 1, entries: [entry(9, at: 5)]),
                                     .createAccount(name: "carol", password: fixturePassword)])
                    == [.dedupeWindowSaved, .accountCreated(3)])
        }
        // Reopening the upgraded store is a plain version-2 open.
        let store = try Store(directory: directory, mapSizeBytes: 1 << 24)
        defer { store.close() }
        #expect(try store.storedSchemaVersionForTesting() == 2)
        #expect(try store.dedupeWindow(of: 1, notBeforeMs: 0) == [entry(9, at: 5)])
        #expect(try store.userCount() == 3)
    }

    @Test func aNewerVersionIsStillRefusedAndLeftAlone() throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let store = try Store(directory: directory, mapSizeBytes: 1 << 20)
            defer { store.close() }
            try store.overwriteSchemaVersionForTesting(3)
        }
        let error = #expect(throws: StoreError.self) { _ = try Store(directory: directory, mapSizeBytes: 1 << 20) }
        #expect(error == .schemaMismatch(found: 3, expected: 2))
        #expect(error?.description.contains("schema version 3, this build expects 2") == true)
        #expect(throws: StoreError.schemaMismatch(found: 3, expected: 2)) {
            _ = try Store(directory: directory, mapSizeBytes: 1 << 20)
        }
    }

    @Test func versionZeroIsNotUpgraded() throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let store = try Store(directory: directory, mapSizeBytes: 1 << 20)
            defer { store.close() }
            try store.overwriteSchemaVersionForTesting(0)
        }
        #expect(throws: StoreError.schemaMismatch(found: 0, expected: 2)) {
            _ = try Store(directory: directory, mapSizeBytes: 1 << 20)
        }
    }
}
