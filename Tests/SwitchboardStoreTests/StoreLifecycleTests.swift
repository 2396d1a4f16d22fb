import Foundation
import Testing
@_spi(Testing) import SwitchboardStore

@Suite struct StoreLifecycleTests {
    @Test func dataSurvivesCloseAndReopen() throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let store = try Store(directory: directory, mapSizeBytes: 1 << 24)
            let ids = try createAccounts(["alice", "bob"], in: store)
            _ = try store.apply([.contactAdd(owner: ids[0], contactName: "bob"),
                                 .putMail(mail(to: ids[1], seq: 1, from: ids[0], id: 9, body: "kept"))])
            store.close()
            store.close()   // idempotent
        }
        let store = try Store(directory: directory, mapSizeBytes: 1 << 24)
        defer { store.close() }
        #expect(try store.account(named: "alice") == AccountRecord(userID: 1, name: "alice", password: fixturePassword))
        #expect(try store.userCount() == 2)
        #expect(try store.contacts(of: 2) == [ContactEntry(userID: 1, name: "alice", state: .incomingRequest)])
        #expect(try store.mail(for: 2, afterSeq: 0, limit: 10).map(\.body) == [Array("kept".utf8)])
        #expect(try store.dedupeRecordExists(sender: 1, messageID: 9))
        // The id counter is persisted, not recomputed.
        #expect(try store.apply([.createAccount(name: "carol", password: fixturePassword)]) == [.accountCreated(3)])
    }

    @Test func createsMissingDirectoriesPrivately() throws {
        let root = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let nested = root + "/a/b/data"
        let store = try Store(directory: nested, mapSizeBytes: 1 << 20)
        defer { store.close() }
        let attributes = try FileManager.default.attributesOfItem(atPath: nested)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o700)
        #expect(FileManager.default.fileExists(atPath: nested + "/data.mdb"))
    }

    @Test func aDifferentSchemaVersionIsRefusedAndLeftAlone() throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let store = try Store(directory: directory, mapSizeBytes: 1 << 20)
            _ = try createAccounts(["alice"], in: store)
            try store.overwriteSchemaVersionForTesting(7)
            store.close()
        }
        #expect(throws: StoreError.schemaMismatch(found: 7, expected: Store.schemaVersion)) {
            _ = try Store(directory: directory, mapSizeBytes: 1 << 20)
        }
        // Refusing did not rewrite the version: the second attempt sees the same one.
        let error = #expect(throws: StoreError.self) { _ = try Store(directory: directory, mapSizeBytes: 1 << 20) }
        #expect(error == .schemaMismatch(found: 7, expected: Store.schemaVersion))
        #expect(error?.description.contains("version 7") == true)
    }

    @Test func aBatchThatOverflowsTheMapWritesNothingOfItsGrowingOps() throws {
        try withTemporaryStore(mapSizeBytes: 256 * 1024) { store, _ in
            let ids = try createAccounts(["alice", "bob"], in: store)
            let huge = [UInt8](repeating: 0xAB, count: 1 << 20)
            // Every op here can grow the database, so the retry has nothing to apply: all four get storageFull.
            let results = try store.apply([
                .createAccount(name: "carol", password: fixturePassword),
                .contactAdd(owner: ids[0], contactName: "bob"),
                .putMail(mail(to: ids[1], seq: 1, from: ids[0], id: 1, body: "small")),
                .putMail(StoredMail(recipient: ids[1], seq: 2, sender: ids[0], messageID: 2, sentAtMs: 0, body: huge)),
            ])
            #expect(results == [.storageFull, .storageFull, .storageFull, .storageFull])

            #expect(try store.account(named: "carol") == nil)
            #expect(try store.userCount() == 2)
            #expect(try store.contacts(of: ids[0]).isEmpty)
            #expect(try store.mailboxUsage(of: ids[1]) == MailboxUsage(count: 0, bytes: 0, lastSeq: 0))
            #expect(try !store.dedupeRecordExists(sender: ids[0], messageID: 1))

            // The environment stays usable after the rollback, and the id that was rolled back is reused.
            #expect(try store.apply([.createAccount(name: "carol", password: fixturePassword)]) == [.accountCreated(3)])
        }
    }

    @Test func aWriteWithoutRetryReportsMapFullClearly() throws {
        try withTemporaryStore(mapSizeBytes: 256 * 1024) { store, _ in
            // createAccountsBulk is one transaction with no retry: the map-full error is thrown.
            let error = #expect(throws: StoreError.self) {
                _ = try store.createAccountsBulk(names: (0..<10_000).map { "user\($0)" }, password: fixturePassword)
            }
            #expect(error?.isMapFull == true)
            #expect(error?.isStorageFull == true)
            #expect(error?.lmdbCode == -30792)
            #expect(error?.description.hasPrefix("LMDB map full (map size 262144 bytes): raise --map-size") == true)
            #expect(error?.description.contains("MDB_MAP_FULL") == true)
            let users = try store.userCount()
            #expect(users == 0)
        }
    }

    @Test func aClosedStoreThrowsClosed() throws {
        try withTemporaryStore { store, _ in
            store.close()
            #expect(throws: StoreError.closed) { try store.userCount() }
            #expect(throws: StoreError.closed) { try store.apply([.pruneDedupe(olderThanMs: 0)]) }
            #expect(throws: StoreError.closed) { try store.account(named: "alice") }
        }
    }

    @Test func readsOnOtherThreadsRunBesideAWriter() async throws {
        let directory = makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try Store(directory: directory, mapSizeBytes: 1 << 24)
        defer { store.close() }
        let ids = try createAccounts(["alice", "bob"], in: store)
        let (alice, bob) = (ids[0], ids[1])

        // Four readers on other threads while this task writes 200 single-mail batches; each reader must always
        // see a consistent prefix: count == lastSeq, seqs 1...count in order.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    for _ in 0..<200 {
                        let usage = try store.mailboxUsage(of: bob)
                        let mails = try store.mail(for: bob, afterSeq: 0, limit: 1_000)
                        #expect(usage.count == Int(usage.lastSeq))
                        #expect(mails.count >= usage.count)
                        #expect(mails.map(\.seq) == (0..<mails.count).map { UInt64($0 + 1) })
                    }
                }
            }
            for seq: UInt64 in 1...200 {
                _ = try store.apply([.putMail(mail(to: bob, seq: seq, from: alice, id: seq))])
            }
            try await group.waitForAll()
        }
        #expect(try store.mailboxUsage(of: bob).count == 200)
    }
}
