@testable import SwitchboardRelay
import Testing
import SwitchboardIO

private func delivery(_ seq: UInt64) -> PendingDelivery {
    PendingDelivery(seq: seq, sender: UInt32(truncatingIfNeeded: seq % 7 + 1), messageID: seq &* 31,
                    frameStart: seq * 100, frameEnd: seq * 100 + 80)
}

private extension DeliveryWindow {
    mutating func ack(through seq: UInt64) -> [PendingDelivery] {
        var released: [PendingDelivery] = []
        acknowledge(throughSeq: seq) { released.append($0) }
        return released
    }

    mutating func drainAll() -> [PendingDelivery] {
        var released: [PendingDelivery] = []
        drain { released.append($0) }
        return released
    }

    mutating func appendNext() -> UInt64 {
        let seq = nextSeq()
        append(delivery(seq))
        return seq
    }
}

@Suite struct DeliveryWindowTests {
    @Test func nextSeqIncrements() {
        var window = DeliveryWindow()
        #expect(window.lastSeq == 0)
        #expect(window.nextSeq() == 1)
        #expect(window.nextSeq() == 2)
        #expect(window.nextSeq() == 3)
        #expect(window.lastSeq == 3)
        #expect(window.isEmpty, "allocating a seq does not append")
    }

    @Test func emptyWindow() {
        var window = DeliveryWindow()
        #expect(window.isEmpty)
        #expect(window.count == 0)
        #expect(window.oldest == nil)
        #expect(window.ack(through: .max) == [])
        #expect(window.drainAll() == [])
    }

    @Test func appendBeyondInitialCapacityKeepsOrder() {
        var window = DeliveryWindow()
        for _ in 0..<1000 { _ = window.appendNext() }
        #expect(window.count == 1000)
        #expect(window.oldest == delivery(1))
        #expect(window.drainAll() == (1...1000).map(delivery))
        #expect(window.isEmpty)
        #expect(window.oldest == nil)
    }

    @Test func acknowledgeReleasesExactlyThroughSeq() {
        var window = DeliveryWindow()
        for _ in 0..<1000 { _ = window.appendNext() }
        #expect(window.ack(through: 0) == [])
        #expect(window.ack(through: 500) == (1...500).map(delivery))
        #expect(window.count == 500)
        #expect(window.oldest == delivery(501))
        #expect(window.ack(through: 500) == [], "acknowledging again releases nothing")
        #expect(window.ack(through: 250) == [], "a stale acknowledgement releases nothing")
        #expect(window.ack(through: 501) == [delivery(501)])
        #expect(window.ack(through: 999) == (502...999).map(delivery))
        #expect(window.count == 1)
        #expect(window.drainAll() == [delivery(1000)])
        #expect(window.isEmpty)
    }

    @Test func acknowledgeWithGapsInSeqs() {
        var window = DeliveryWindow()
        for seq: UInt64 in [2, 4, 6, 8] { window.append(delivery(seq)) }
        #expect(window.ack(through: 5) == [delivery(2), delivery(4)])
        #expect(window.ack(through: 7) == [delivery(6)])
        #expect(window.oldest == delivery(8))
    }

    @Test func growingWhileWrappedKeepsOrder() {
        var window = DeliveryWindow()
        for _ in 0..<10 { _ = window.appendNext() }        // 1...10
        #expect(window.ack(through: 6) == (1...6).map(delivery))
        // Fill the ring so it wraps around its end, then force a grow while head is in the middle.
        for _ in 0..<40 { _ = window.appendNext() }        // 11...50
        #expect(window.count == 44)
        #expect(window.oldest == delivery(7))
        #expect(window.drainAll() == (7...50).map(delivery))
    }

    @Test func interleavedAppendAndAcknowledgeOverManyWraps() {
        var window = DeliveryWindow()
        var rng = SplitMix64(seed: 42)
        var released: [PendingDelivery] = []
        var acked: UInt64 = 0
        for round in 0..<5_000 {
            let appends = Int(rng.next() % 5)
            for _ in 0..<appends { _ = window.appendNext() }
            // Acknowledge somewhere between what was already acknowledged and the newest seq,
            // keeping the backlog small so the ring wraps many times without growing.
            let backlog = window.lastSeq - acked
            if backlog > 0, round % 2 == 0 || backlog > 12 {
                let through = acked + 1 + rng.next() % backlog
                let batch = window.ack(through: through)
                #expect(batch.map(\.seq) == Array((acked + 1)...through))
                released += batch
                acked = through
            }
            #expect(window.count == Int(window.lastSeq - acked))
            #expect(window.oldest?.seq == (window.isEmpty ? nil : acked + 1))
        }
        released += window.drainAll()
        #expect(window.lastSeq > 5_000, "enough traffic to wrap a 16-slot ring many times")
        #expect(released == (1...window.lastSeq).map(delivery))
        #expect(window.isEmpty)

        // The window is reusable after a drain.
        let seq = window.appendNext()
        #expect(window.oldest == delivery(seq))
        #expect(window.ack(through: seq) == [delivery(seq)])
    }
}
