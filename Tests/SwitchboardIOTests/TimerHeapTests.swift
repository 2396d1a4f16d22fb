// TimerHeap: a binary min-heap of (deadline, token); popDue hands out only due timers, earliest first.

import SwitchboardIO
import Testing

@Suite struct TimerHeapTests {
    @Test func emptyHeap() {
        var heap = TimerHeap()
        #expect(heap.count == 0 && heap.earliestDeadline == nil)
        #expect(heap.popDue(now: .max) == nil)
    }

    @Test(arguments: [1 as UInt64, 2, 3, 4, 5])
    func randomPushesPopInDeadlineOrder(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var heap = TimerHeap()
        var deadlineOf: [UInt64: UInt64] = [:]
        for token in 0..<UInt64(1000) {
            // Narrow range so equal deadlines occur.
            let deadline = UInt64.random(in: 0..<300, using: &rng)
            heap.push(deadline: deadline, token: token)
            deadlineOf[token] = deadline
        }
        #expect(heap.count == 1000)
        #expect(heap.earliestDeadline == deadlineOf.values.min())
        var popped: [UInt64] = []
        var last: UInt64 = 0
        while let token = heap.popDue(now: .max) {
            let deadline = deadlineOf[token]!
            #expect(deadline >= last)
            last = deadline
            popped.append(token)
        }
        #expect(popped.count == 1000 && Set(popped).count == 1000)
        #expect(heap.count == 0)
    }

    @Test func popDueRespectsNow() {
        var heap = TimerHeap()
        heap.push(deadline: 50, token: 5)
        heap.push(deadline: 10, token: 1)
        heap.push(deadline: 30, token: 3)
        heap.push(deadline: 20, token: 2)
        #expect(heap.earliestDeadline == 10)
        #expect(heap.popDue(now: 9) == nil)
        #expect(heap.count == 4)
        #expect(heap.popDue(now: 10) == 1, "a deadline equal to now is due")
        #expect(heap.popDue(now: 25) == 2)
        #expect(heap.popDue(now: 25) == nil)
        #expect(heap.earliestDeadline == 30)
        #expect(heap.popDue(now: 1000) == 3)
        #expect(heap.popDue(now: 1000) == 5)
        #expect(heap.popDue(now: 1000) == nil)
    }

    @Test func interleavedPushAndPop() {
        var rng = SplitMix64(seed: 77)
        var heap = TimerHeap()
        var pending: [(deadline: UInt64, token: UInt64)] = []
        var now: UInt64 = 0
        var nextToken: UInt64 = 0
        for _ in 0..<3000 {
            if Bool.random(using: &rng) {
                let deadline = now + UInt64.random(in: 0..<100, using: &rng)
                heap.push(deadline: deadline, token: nextToken)
                pending.append((deadline, nextToken))
                nextToken += 1
            } else {
                now += UInt64.random(in: 0..<20, using: &rng)
                var fired: [UInt64] = []
                while let token = heap.popDue(now: now) { fired.append(token) }
                let due = pending.filter { $0.deadline <= now }
                #expect(Set(fired) == Set(due.map(\.token)))
                let firedDeadlines = fired.map { t in pending.first { $0.token == t }!.deadline }
                #expect(firedDeadlines == firedDeadlines.sorted())
                pending.removeAll { $0.deadline <= now }
            }
            #expect(heap.count == pending.count)
            #expect(heap.earliestDeadline == pending.map(\.deadline).min())
        }
    }
}
