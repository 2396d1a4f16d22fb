import SwitchboardProtocol
@testable import SwitchboardRelay
import SwitchboardStore
import Testing
import SwitchboardIO

@Suite struct DedupeTests {
    @Test func liveDuplicateIsDroppedThenAcknowledged() {
        let f = RelayFixture()
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.bob, Seed.bobConn)

        #expect(f.route(Seed.alice, Seed.bob, id: 7) == .deliver(Seed.bobConn))
        #expect(f.route(Seed.alice, Seed.bob, id: 7) == .dropInFlightDuplicate)
        #expect(f.core.completed(sender: Seed.alice, messageID: 7, status: .delivered) == Seed.aliceConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 7) == .acknowledgeDuplicate(.delivered))
        // Even after bob went offline, the resend is acknowledged, not stored again.
        _ = f.core.connectionClosed(Seed.bobConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 7) == .acknowledgeDuplicate(.delivered))
        #expect(f.usage.loads == [])
    }

    @Test func storedDuplicateIsDroppedThenAcknowledged() {
        let f = RelayFixture(usage: [Seed.bob: MailboxUsage(count: 0, bytes: 0, lastSeq: 9)])
        f.login(Seed.alice, Seed.aliceConn)

        #expect(f.route(Seed.alice, Seed.bob, id: 7) == .store(recipient: Seed.bob, mailSeq: 10))
        #expect(f.route(Seed.alice, Seed.bob, id: 7) == .dropInFlightDuplicate)
        #expect(f.core.mailbox(of: Seed.bob).count == 1, "a dropped duplicate reserves no mailbox room")
        #expect(f.core.completed(sender: Seed.alice, messageID: 7, status: .storedOffline) == Seed.aliceConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 7) == .acknowledgeDuplicate(.storedOffline))
        // Even if bob is online now.
        f.login(Seed.bob, Seed.bobConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 7) == .acknowledgeDuplicate(.storedOffline))
        // A new id continues the sequence: no seq was consumed by the duplicates.
        _ = f.core.connectionClosed(Seed.bobConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 8) == .store(recipient: Seed.bob, mailSeq: 11))
    }

    @Test func failedForgetsTheIDSoAResendRoutesAgain() {
        let f = RelayFixture()
        f.login(Seed.alice, Seed.aliceConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 3) == .store(recipient: Seed.bob, mailSeq: 1))
        f.core.mailRemoved(recipient: Seed.bob, count: 1, bytes: 5)   // the store refused it
        #expect(f.core.failed(sender: Seed.alice, messageID: 3) == Seed.aliceConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 3) == .store(recipient: Seed.bob, mailSeq: 2))
        #expect(f.route(Seed.alice, Seed.bob, id: 3) == .dropInFlightDuplicate)

        // Same for a live delivery.
        f.login(Seed.bob, Seed.bobConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 4) == .deliver(Seed.bobConn))
        _ = f.core.failed(sender: Seed.alice, messageID: 4)
        #expect(f.route(Seed.alice, Seed.bob, id: 4) == .deliver(Seed.bobConn))
    }

    @Test func completedAndFailedReturnNilWhenTheSenderIsOffline() {
        let f = RelayFixture()
        f.login(Seed.alice, Seed.aliceConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .store(recipient: Seed.bob, mailSeq: 1))
        #expect(f.route(Seed.alice, Seed.bob, id: 2) == .store(recipient: Seed.bob, mailSeq: 2))
        _ = f.core.connectionClosed(Seed.aliceConn)
        #expect(f.core.completed(sender: Seed.alice, messageID: 1, status: .storedOffline) == nil)
        #expect(f.core.failed(sender: Seed.alice, messageID: 2) == nil)
        // The memory survived the disconnect.
        f.login(Seed.alice, Seed.aliceConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .acknowledgeDuplicate(.storedOffline))
        #expect(f.route(Seed.alice, Seed.bob, id: 2) == .store(recipient: Seed.bob, mailSeq: 3))
    }

    @Test func differentSendersWithTheSameIDAreIndependent() {
        let f = RelayFixture(contacts: [
            Seed.alice: [Seed.entry(Seed.bob, .accepted)],
            Seed.carol: [Seed.entry(Seed.bob, .accepted)],
            Seed.bob: [Seed.entry(Seed.alice, .accepted), Seed.entry(Seed.carol, .accepted)],
        ])
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.bob, Seed.bobConn)
        f.login(Seed.carol, Seed.carolConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 42) == .deliver(Seed.bobConn))
        #expect(f.route(Seed.carol, Seed.bob, id: 42) == .deliver(Seed.bobConn))
        _ = f.core.completed(sender: Seed.alice, messageID: 42, status: .delivered)
        #expect(f.route(Seed.alice, Seed.bob, id: 42) == .acknowledgeDuplicate(.delivered))
        #expect(f.route(Seed.carol, Seed.bob, id: 42) == .dropInFlightDuplicate)
        _ = f.core.failed(sender: Seed.carol, messageID: 42)
        #expect(f.route(Seed.carol, Seed.bob, id: 42) == .deliver(Seed.bobConn))
        #expect(f.route(Seed.alice, Seed.bob, id: 42) == .acknowledgeDuplicate(.delivered))
        // And the recipient's own id space is separate from its senders'.
        #expect(f.route(Seed.bob, Seed.alice, id: 42) == .deliver(Seed.aliceConn))
    }

    @Test func rejectedSendsAreNotRemembered() {
        let f = RelayFixture(limits: RelayLimits(maxBodyBytes: 10))
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.bob, Seed.bobConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1, bytes: 11).rejectCode == .invalidRequest)
        #expect(f.route(Seed.alice, Seed.carol, id: 1).rejectCode == .notAContact)
        #expect(f.route(Seed.alice, Seed.bob, id: 1, bytes: 10) == .deliver(Seed.bobConn))
    }

    @Test func dedupeWindowEvictsTheOldestIDs() {
        let f = RelayFixture(limits: RelayLimits(dedupeWindow: 3))
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.bob, Seed.bobConn)
        for id: UInt64 in 1...3 { #expect(f.route(Seed.alice, Seed.bob, id: id) == .deliver(Seed.bobConn)) }
        #expect(f.route(Seed.alice, Seed.bob, id: 4) == .deliver(Seed.bobConn))
        // id 1 fell out of the window: not recognised any more; 2...4 still are.
        #expect(f.route(Seed.alice, Seed.bob, id: 3) == .dropInFlightDuplicate)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .deliver(Seed.bobConn))
    }

    @Test func resendAfterFailureIsNotEvictedEarly() {
        // id 1 fails and is resent: the resend must get a full window like any new id, or a
        // duplicate of the still-in-flight resend would be delivered a second time.
        let f = RelayFixture(limits: RelayLimits(dedupeWindow: 3))
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.bob, Seed.bobConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .deliver(Seed.bobConn))
        _ = f.core.failed(sender: Seed.alice, messageID: 1)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .deliver(Seed.bobConn))
        #expect(f.route(Seed.alice, Seed.bob, id: 2) == .deliver(Seed.bobConn))
        #expect(f.route(Seed.alice, Seed.bob, id: 3) == .deliver(Seed.bobConn))
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .dropInFlightDuplicate)
    }

    @Test func takenHistoriesKeepInFlightSendersAndRestoreSettledOnes() {
        let f = RelayFixture()
        f.stored[Seed.carol] = [Seed.entry(Seed.bob, .accepted)]
        f.stored[Seed.bob] = [Seed.entry(Seed.alice, .accepted), Seed.entry(Seed.carol, .accepted)]
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.carol, Seed.carolConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .store(recipient: Seed.bob, mailSeq: 1))
        #expect(f.route(Seed.alice, Seed.bob, id: 2) == .store(recipient: Seed.bob, mailSeq: 2))
        _ = f.core.completed(sender: Seed.alice, messageID: 1, status: .storedOffline)
        #expect(f.route(Seed.carol, Seed.bob, id: 9) == .store(recipient: Seed.bob, mailSeq: 3))
        _ = f.core.completed(sender: Seed.carol, messageID: 9, status: .storedOffline)

        _ = f.core.connectionClosed(Seed.aliceConn)
        _ = f.core.connectionClosed(Seed.carolConn)
        let taken = f.core.takeSenderHistories()
        // alice still has id 2 in flight: her memory is kept. carol had nothing in flight: handed over.
        #expect(taken.map(\.sender) == [Seed.carol])
        #expect(taken.first?.entries.map(\.id) == [9] && taken.first?.entries.first?.status == .storedOffline)
        #expect(!f.core.hasSenderHistory(Seed.carol) && f.core.hasSenderHistory(Seed.alice))
        f.login(Seed.alice, Seed.aliceConn)
        f.login(Seed.carol, Seed.carolConn)
        #expect(f.route(Seed.alice, Seed.bob, id: 1) == .acknowledgeDuplicate(.storedOffline))
        #expect(f.route(Seed.alice, Seed.bob, id: 2) == .dropInFlightDuplicate)
        // Restored from what was persisted, carol's resend is recognised (issue 8, item 8).
        f.core.restoreSenderHistory(Seed.carol, taken[0].entries)
        #expect(f.route(Seed.carol, Seed.bob, id: 9) == .acknowledgeDuplicate(.storedOffline))

        // Online users are never taken (unless all are asked for, at shutdown).
        #expect(f.core.takeSenderHistories().isEmpty)
        #expect(Set(f.core.takeSenderHistories(all: true).map(\.sender)) == [Seed.alice, Seed.carol])
    }
}

@Suite struct RecentMessageIDsTests {
    @Test func completedEntriesAreOldestFirstAcrossGrowthAndWrap() {
        let ids = RecentMessageIDs(capacity: 40)
        for id: UInt64 in 1...100 {
            ids.insertInFlight(id)
            if id != 97 { ids.complete(id, status: id % 2 == 0 ? .delivered : .storedOffline) }
        }
        let entries = ids.completedEntries()
        #expect(entries.map(\.id) == Array(61...100).filter { $0 != 97 })
        #expect(entries.allSatisfy { $0.status == ($0.id % 2 == 0 ? .delivered : .storedOffline) })
        let restored = RecentMessageIDs(capacity: 40)
        for entry in entries { restored.restoreCompleted(entry.id, status: entry.status) }
        #expect(restored.completedEntries().map(\.id) == entries.map(\.id) && restored.inFlightCount == 0)
        #expect(restored.lookup(98) == .completed(.delivered) && restored.lookup(60) == nil)
    }

    @Test func capacityPlusOneEvictsTheOldest() {
        let ids = RecentMessageIDs(capacity: 3)
        #expect(ids.lookup(1) == nil)
        for id: UInt64 in 1...3 { ids.insertInFlight(id) }
        #expect(ids.inFlightCount == 3)
        for id: UInt64 in 1...3 { #expect(ids.lookup(id) == .inFlight) }
        ids.insertInFlight(4)
        #expect(ids.lookup(1) == nil)
        #expect(ids.lookup(2) == .inFlight && ids.lookup(3) == .inFlight && ids.lookup(4) == .inFlight)
        #expect(ids.inFlightCount == 3)
        ids.insertInFlight(5)
        #expect(ids.lookup(2) == nil)
        #expect(ids.inFlightCount == 3)
    }

    @Test func inFlightCountThroughCompleteRemoveAndEvict() {
        let ids = RecentMessageIDs(capacity: 3)
        ids.insertInFlight(1); ids.insertInFlight(2); ids.insertInFlight(3)
        ids.complete(2, status: .delivered)
        #expect(ids.inFlightCount == 2)
        #expect(ids.lookup(2) == .completed(.delivered))
        ids.complete(2, status: .delivered)                 // twice: no double count
        #expect(ids.inFlightCount == 2)
        ids.complete(99, status: .delivered)                // unknown: ignored
        #expect(ids.inFlightCount == 2)
        #expect(ids.lookup(99) == nil)
        ids.insertInFlight(3)                               // already in flight: no change
        #expect(ids.inFlightCount == 2)

        ids.insertInFlight(4)                               // evicts 1 (in flight)
        #expect(ids.lookup(1) == nil)
        #expect(ids.inFlightCount == 2)                     // {3, 4}
        ids.insertInFlight(5)                               // evicts 2 (completed)
        #expect(ids.lookup(2) == nil)
        #expect(ids.inFlightCount == 3)                     // {3, 4, 5}

        ids.remove(4)
        #expect(ids.lookup(4) == nil)
        #expect(ids.inFlightCount == 2)
        ids.remove(4)                                       // twice: no double count
        #expect(ids.inFlightCount == 2)

        ids.complete(5, status: .storedOffline)
        ids.remove(5)                                       // removing a completed id: count unchanged
        #expect(ids.inFlightCount == 1)                     // {3}

        ids.complete(3, status: .storedOffline)
        ids.insertInFlight(3)                               // completed -> in flight again
        #expect(ids.lookup(3) == .inFlight)
        #expect(ids.inFlightCount == 1)
    }

    @Test func removedIDReinsertedKeepsAFullWindow() {
        let ids = RecentMessageIDs(capacity: 3)
        ids.insertInFlight(1)
        ids.remove(1)
        ids.insertInFlight(1)
        ids.insertInFlight(2)
        ids.insertInFlight(3)
        // Only three ids are live: nothing should have been evicted.
        #expect(ids.lookup(1) == .inFlight)
        #expect(ids.lookup(2) == .inFlight)
        #expect(ids.lookup(3) == .inFlight)
        #expect(ids.inFlightCount == 3)
        ids.insertInFlight(4)
        ids.insertInFlight(5)
        // Now the window is {3, 4, 5} or at least still bounded with a consistent count.
        #expect(ids.lookup(5) == .inFlight && ids.lookup(4) == .inFlight)
        let live = (1...5).filter { ids.lookup(UInt64($0)) != nil }.count
        #expect(live <= 3)
        #expect(ids.inFlightCount == live)
    }

    @Test func longRunMatchesAModelOfTheWindow() {
        // Deterministic pseudo-random workload (including resends of removed ids) checked against
        // a model: any id among the last `capacity` insertions that was not removed since must be
        // remembered with its latest state, never more than `capacity` ids are remembered, and
        // inFlightCount agrees with the lookups.
        let capacity = 8
        let ids = RecentMessageIDs(capacity: capacity)
        var rng = SplitMix64(seed: 0x9E37_79B9_7F4A_7C15)
        var nextID: UInt64 = 1
        var insertions: [UInt64] = []                       // every insertion of a new slot, in order
        var expected: [UInt64: RecentMessageIDs.State] = [:] // model: ids that may be remembered
        var removed: [UInt64] = []
        for _ in 0..<20_000 {
            switch rng.next() % 6 {
            case 0, 1:
                ids.insertInFlight(nextID); insertions.append(nextID); expected[nextID] = .inFlight; nextID += 1
            case 2:
                if let id = removed.randomElement(using: &rng) {  // resend after a failure
                    removed.removeAll { $0 == id }
                    ids.insertInFlight(id); insertions.append(id); expected[id] = .inFlight
                }
            case 3:
                if let id = expected.keys.randomElement(using: &rng) {
                    let status: SendStatus = rng.next() % 2 == 0 ? .delivered : .storedOffline
                    ids.complete(id, status: status); expected[id] = .completed(status)
                }
            default:
                if let id = expected.keys.randomElement(using: &rng) {
                    ids.remove(id); expected[id] = nil; removed.append(id)
                }
            }
            // Ids the window may have evicted by now drop out of the model.
            for id in Array(expected.keys) where ids.lookup(id) == nil {
                let recent = insertions.suffix(capacity)
                #expect(!recent.contains(id), "id \(id) is among the last \(capacity) insertions yet was forgotten")
                expected[id] = nil
            }
            for (id, state) in expected { #expect(ids.lookup(id) == state) }
            #expect(expected.count <= capacity)
            #expect(ids.inFlightCount == expected.values.filter { $0 == .inFlight }.count)
            if insertions.count > 64 { insertions.removeFirst(insertions.count - 64) }
        }
    }

    @Test func zeroCapacityIsTreatedAsOne() {
        let ids = RecentMessageIDs(capacity: 0)
        ids.insertInFlight(1)
        #expect(ids.lookup(1) == .inFlight)
        ids.insertInFlight(2)
        #expect(ids.lookup(1) == nil)
        #expect(ids.lookup(2) == .inFlight)
        #expect(ids.inFlightCount == 1)
    }
}

