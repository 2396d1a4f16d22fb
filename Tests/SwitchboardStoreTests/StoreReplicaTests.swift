// The store as a cluster replica: the applied log sequence lands in the entry's own transaction, entries at or
// below it are refused, colliding mail seqs are renumbered identically, a full replica throws instead of
// answering storageFull, plain writes are refused, and applying is deterministic (two replicas fed the same
// entries hold the same bytes).

import Foundation
import Testing
@_spi(Testing) import SwitchboardStore

func withTemporaryReplica(mapSizeBytes: Int = 1 << 26, sync: Store.Options.Sync = .noMetaSync,
                          _ body: (Store, String) throws -> Void) throws {
    let directory = makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let store = try Store(directory: directory, mapSizeBytes: mapSizeBytes,
                          options: Store.Options(clusterReplica: true, sync: sync))
    defer { store.close() }
    try body(store, directory)
}

/// Every record of a store as comparable strings (database, key hex, value hex).
func rawDump(_ store: Store) throws -> [String] {
    try store.rawContentsForTesting().map { record in
        "\(record.database) \(record.key.map { String($0, radix: 16) }.joined(separator: ",")) = "
            + record.value.map { String($0, radix: 16) }.joined(separator: ",")
    }
}

@Suite struct StoreReplicaTests {
    @Test func theAppliedSequenceLandsWithTheEntry() throws {
        try withTemporaryReplica { store, directory in
            #expect(try store.clusterAppliedSeq() == 0)
            let results = try store.apply([.createAccount(name: "alice", password: fixturePassword),
                                           .createAccount(name: "alice", password: fixturePassword)], logSeq: 5)
            #expect(results == [.accountCreated(1), .nameTaken])
            #expect(try store.clusterAppliedSeq() == 5)

            // At or below the applied sequence: refused, nothing written.
            for seq: UInt64 in [0, 4, 5] {
                #expect(throws: StoreError.self) {
                    try store.apply([.createAccount(name: "bob", password: fixturePassword)], logSeq: seq)
                }
            }
            #expect(try store.account(named: "bob") == nil)
            // Not increasing within one call: refused before anything is written.
            #expect(throws: StoreError.self) {
                try store.applyLogEntries([Store.LogEntry(seq: 7, ops: [.createAccount(name: "bob", password: fixturePassword)]),
                                           Store.LogEntry(seq: 7, ops: [])])
            }
            #expect(try store.account(named: "bob") == nil && store.clusterAppliedSeq() == 5)

            // A failed transaction moves neither the data nor the applied sequence.
            try store.injectCommitFailuresForTesting([EIO])
            #expect(throws: StoreError.self) {
                try store.apply([.createAccount(name: "bob", password: fixturePassword)], logSeq: 6)
            }
            #expect(try store.account(named: "bob") == nil && store.clusterAppliedSeq() == 5)

            // Several entries in one transaction: the last sequence is recorded; gaps are allowed.
            let applied = try store.applyLogEntries([
                Store.LogEntry(seq: 6, ops: [.createAccount(name: "bob", password: fixturePassword)]),
                Store.LogEntry(seq: 9, ops: [.contactAdd(owner: 1, contactName: "bob")]),
            ])
            #expect(applied.map(\.seq) == [6, 9])
            #expect(applied[0].results == [.accountCreated(2)])
            #expect(try store.clusterAppliedSeq() == 9)

            // Survives a reopen.
            store.close()
            let reopened = try Store(directory: directory, mapSizeBytes: 1 << 26, options: .clusterReplica)
            defer { reopened.close() }
            #expect(try reopened.clusterAppliedSeq() == 9)
            #expect(try reopened.contacts(of: 1).map(\.name) == ["bob"])
        }
    }

    @Test func collidingMailSeqsAreRenumberedAndReported() throws {
        try withTemporaryReplica { store, _ in
            _ = try store.apply([.createAccount(name: "alice", password: fixturePassword),
                                 .createAccount(name: "bob", password: fixturePassword),
                                 .createAccount(name: "carol", password: fixturePassword)], logSeq: 1)
            // Two nodes both chose seq 1 for bob, a third chose 0.
            let applied = try store.applyLogEntries([
                Store.LogEntry(seq: 2, ops: [.putMail(mail(to: 2, seq: 1, from: 1, id: 10))]),
                Store.LogEntry(seq: 3, ops: [.putMail(mail(to: 2, seq: 1, from: 3, id: 20)),
                                             .putMail(mail(to: 2, seq: 1, from: 3, id: 20)),
                                             .putMail(mail(to: 2, seq: 0, from: 3, id: 21)),
                                             .putMail(mail(to: 2, seq: 9, from: 1, id: 11))]),
            ])
            #expect(applied[0].results == [.mailStored])
            #expect(applied[0].ops == [.putMail(mail(to: 2, seq: 1, from: 1, id: 10))])
            #expect(applied[1].results == [.mailStored, .duplicateMail, .mailStored, .mailStored])
            // As applied: the renumbered seqs; the duplicate and the one above the mark unchanged.
            #expect(applied[1].ops == [.putMail(mail(to: 2, seq: 2, from: 3, id: 20)),
                                       .putMail(mail(to: 2, seq: 1, from: 3, id: 20)),
                                       .putMail(mail(to: 2, seq: 3, from: 3, id: 21)),
                                       .putMail(mail(to: 2, seq: 9, from: 1, id: 11))])
            #expect(try store.mail(for: 2, afterSeq: 0, limit: 10).map { [$0.seq, UInt64($0.sender), $0.messageID] }
                    == [[1, 1, 10], [2, 3, 20], [3, 3, 21], [9, 1, 11]])
        }
        // The single-node store still refuses a stale seq.
        try withTemporaryStore { store, _ in
            _ = try createAccounts(["alice", "bob"], in: store)
            #expect(try store.apply([.putMail(mail(to: 2, seq: 1, from: 1, id: 10))]) == [.mailStored])
            #expect(try store.apply([.putMail(mail(to: 2, seq: 1, from: 1, id: 11))])
                    == [.invalidRequest("seq 1 is not above the mailbox's last seq 1")])
        }
    }

    @Test func aReplicaIsWrittenOnlyThroughTheLog() throws {
        try withTemporaryReplica { store, _ in
            #expect(throws: StoreError.invalidArgument("this store is a cluster replica: its writes come from the cluster log only")) {
                try store.apply([.createAccount(name: "alice", password: fixturePassword)])
            }
            #expect(throws: StoreError.self) { try store.createAccountsBulk(names: ["a"], password: fixturePassword) }
            let users = try store.userCount()
            #expect(users == 0)
        }
        try withTemporaryStore { store, _ in
            #expect(throws: StoreError.self) { try store.apply([], logSeq: 1) }
            let applied = try store.clusterAppliedSeq()
            #expect(applied == 0)
        }
    }

    @Test func aFullReplicaThrowsInsteadOfApplyingPart() throws {
        try withTemporaryReplica(mapSizeBytes: 512 * 1024) { store, _ in
            _ = try store.apply([.createAccount(name: "alice", password: fixturePassword),
                                 .createAccount(name: "bob", password: fixturePassword)], logSeq: 1)
            let body = String(repeating: "m", count: 1024)
            var seq: UInt64 = 2
            var full: StoreError?
            while seq < 5_000 && full == nil {
                do {
                    _ = try store.apply([.putMail(mail(to: 2, seq: seq, from: 1, id: seq, body: body))], logSeq: seq)
                    seq += 1
                } catch let error as StoreError {
                    full = error
                }
            }
            #expect(full?.isStorageFull == true, "\(String(describing: full))")
            let before = try rawDump(store)
            // A mixed entry (a delete that frees room plus a mail that needs it): a single node would apply the
            // delete and answer storageFull for the mail; a replica applies neither and says why.
            #expect(throws: StoreError.self) {
                try store.apply([.deleteMail(recipient: 2, throughSeq: 1),
                                 .putMail(mail(to: 2, seq: seq + 1, from: 1, id: 99_999,
                                               body: String(repeating: "z", count: 256 * 1024)))], logSeq: seq)
            }
            #expect(try rawDump(store) == before)
            #expect(try store.clusterAppliedSeq() == seq - 1)
        }
    }

    @Test(arguments: [Store.Options.Sync.full, .noMetaSync, .noSync])
    func everySyncModeOpensAndKeepsCommits(sync: Store.Options.Sync) throws {
        try withTemporaryReplica(sync: sync) { store, directory in
            _ = try store.apply([.createAccount(name: "alice", password: fixturePassword)], logSeq: 1)
            #expect(store.options.sync == sync)
            store.close()
            let reopened = try Store(directory: directory, mapSizeBytes: 1 << 26,
                                     options: Store.Options(clusterReplica: true, sync: sync))
            defer { reopened.close() }
            #expect(try reopened.account(named: "alice")?.userID == 1)
        }
    }

    /// Applying is deterministic: two replicas fed the same pseudo-random entries (accounts that collide,
    /// contact changes in every order, mail with colliding seqs and resends, deletes, prunes, windows, password
    /// changes, account deletions) hold exactly the same bytes and gave the same results.
    @Test func twoReplicasFedTheSameEntriesAreIdentical() throws {
        var rng = SystemRandomNumberGenerator()
        let seed = UInt64.random(in: 0...UInt64.max, using: &rng)
        var gen = SplitMix(seed)
        let names = (0..<12).map { "user\($0)" }
        var entries: [Store.LogEntry] = []
        var seq: UInt64 = 0
        for _ in 0..<300 {
            var ops: [WriteOp] = []
            for _ in 0..<(1 + gen.next() % 4) {
                let name = names[Int(gen.next() % 12)]
                let owner = UserID(1 + gen.next() % 14)
                switch gen.next() % 10 {
                case 0: ops.append(.createAccount(name: name, password: fixturePassword))
                case 1: ops.append(.contactAdd(owner: owner, contactName: name))
                case 2: ops.append(.contactAccept(owner: owner, contactName: name))
                case 3: ops.append(.contactRemove(owner: owner, contactName: name))
                case 4, 5: ops.append(.putMail(mail(to: owner, seq: gen.next() % 6, from: UserID(1 + gen.next() % 12),
                                                    id: gen.next() % 40, at: gen.next() % 1000)))
                case 6: ops.append(.deleteMail(recipient: owner, throughSeq: gen.next() % 8))
                case 7: ops.append(.pruneDedupe(olderThanMs: gen.next() % 500))
                case 8: ops.append(.putDedupeWindow(sender: owner, entries: (0..<gen.next() % 3).map {
                    DedupeWindowEntry(messageID: $0, status: 1, atMs: gen.next() % 1000)
                }))
                default: ops.append(gen.next() % 2 == 0 ? .deleteAccount(name: name)
                                                        : .setPassword(name: name, password: fixturePassword))
                }
            }
            seq += 1 + gen.next() % 2
            entries.append(Store.LogEntry(seq: seq, ops: ops))
        }
        try withTemporaryReplica { a, _ in
            try withTemporaryReplica(sync: .noSync) { b, _ in
                // Same entries, different grouping into transactions.
                var resultsA: [Store.AppliedLogEntry] = []
                for entry in entries { resultsA += try a.applyLogEntries([entry]) }
                var resultsB: [Store.AppliedLogEntry] = []
                var index = 0
                while index < entries.count {
                    let count = 1 + Int(gen.next() % 7)
                    resultsB += try b.applyLogEntries(Array(entries[index..<min(entries.count, index + count)]))
                    index += count
                }
                #expect(resultsA == resultsB, "seed \(seed)")
                let dumpA = try rawDump(a), dumpB = try rawDump(b)
                #expect(dumpA == dumpB, "seed \(seed)")
                #expect(dumpA.count > 20, "the entries wrote something: \(dumpA.count) records")
                let stored = resultsA.flatMap(\.results).filter { $0 == .mailStored }.count
                #expect(stored > 10, "seed \(seed)")
            }
        }
    }
}

struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE5_E9B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
