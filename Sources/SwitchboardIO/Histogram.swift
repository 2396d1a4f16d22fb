// Fixed-bucket histograms and counters for the loop's metrics: allocated once, then recording is an
// index computation and two integer adds (no allocation, no lock, no atomic). They belong to the loop
// thread; readers (the /metrics scrape, the admin `stats` command) run on that thread too.
// Invariants: bucket bounds never change after init; bucket `i` counts values v with
// bound(i-1) < v <= bound(i) (Prometheus `le` semantics once cumulated), the last bucket is +Inf.

/// A log-linear histogram: two buckets per power of two (bounds 1, 1.5, 2, 3, 4, 6, 8, 12, ... times
/// `unit`), so any quantile read from it is within a factor of 1.5 of the truth. Values are integers
/// in the histogram's own unit (nanoseconds for latencies, counts for sizes).
public final class FixedHistogram {
    /// The smallest bound: values at or below it fall in the first bucket.
    public let unit: UInt64
    /// Upper bounds of the finite buckets, ascending; one more bucket (+Inf) follows.
    public let bounds: [UInt64]
    private let counts: UnsafeMutablePointer<UInt64>
    public private(set) var count: UInt64 = 0
    public private(set) var sum: UInt64 = 0
    private let firstExponent: Int

    /// `unit` must be a power of two; `octaves` powers of two are covered above it.
    public init(unit: UInt64, octaves: Int) {
        precondition(unit > 0 && unit & (unit - 1) == 0, "unit must be a power of two")
        self.unit = unit
        firstExponent = unit.trailingZeroBitCount
        var bounds: [UInt64] = [unit]
        for octave in 0..<octaves {
            let base = unit << UInt64(octave)
            bounds.append(base + base / 2)
            bounds.append(base << 1)
        }
        self.bounds = bounds
        counts = .allocate(capacity: bounds.count + 1)
        counts.initialize(repeating: 0, count: bounds.count + 1)
    }

    deinit { counts.deallocate() }

    public var bucketCount: Int { bounds.count + 1 }

    /// Records one value: O(1) (a leading-zero count picks the bucket).
    @inline(__always)
    public func record(_ value: UInt64) {
        counts[bucketIndex(value)] &+= 1
        count &+= 1
        sum &+= value
    }

    @inline(__always)
    func bucketIndex(_ value: UInt64) -> Int {
        if value <= unit { return 0 }
        // v in (2^e, 2^(e+1)]: the buckets (2^e, 1.5*2^e] and (1.5*2^e, 2^(e+1)].
        let below = value &- 1
        let exponent = 63 - below.leadingZeroBitCount          // 2^exponent <= v-1 < 2^(exponent+1)
        let half = (below >> UInt64(max(exponent - 1, 0))) & 1  // the bit after the leading one
        let index = 1 + 2 * (exponent - firstExponent) + Int(half)
        return min(index, bounds.count)
    }

    /// Non-cumulative count of bucket `index` (0..<bucketCount; the last one is +Inf).
    public func bucket(_ index: Int) -> UInt64 { counts[index] }

    /// A copy of the counts (for a scrape or a rate computed later).
    public func snapshot() -> HistogramSnapshot {
        HistogramSnapshot(bounds: bounds, counts: (0..<bucketCount).map { counts[$0] }, count: count, sum: sum)
    }
}

/// Bucket counts at one moment; differences of two snapshots give the histogram of an interval.
public struct HistogramSnapshot: Sendable, Equatable {
    public var bounds: [UInt64]
    /// Non-cumulative, one per bound plus +Inf.
    public var counts: [UInt64]
    public var count: UInt64
    public var sum: UInt64

    public init(bounds: [UInt64], counts: [UInt64], count: UInt64, sum: UInt64) {
        self.bounds = bounds; self.counts = counts; self.count = count; self.sum = sum
    }

    /// What was recorded after `earlier` (same bounds).
    public func since(_ earlier: HistogramSnapshot?) -> HistogramSnapshot {
        guard let earlier, earlier.bounds == bounds, earlier.counts.count == counts.count else { return self }
        return HistogramSnapshot(bounds: bounds, counts: zip(counts, earlier.counts).map { $0 &- $1 },
                                 count: count &- earlier.count, sum: sum &- earlier.sum)
    }

    /// The upper bound of the bucket holding quantile `q` (0...1): an upper estimate within a factor
    /// of 1.5; nil when empty; `UInt64.max` when it falls in the +Inf bucket.
    public func quantileUpperBound(_ q: Double) -> UInt64? {
        guard count > 0 else { return nil }
        let rank = max(1, UInt64((Double(count) * q).rounded(.up)))
        var seen: UInt64 = 0
        for (index, c) in counts.enumerated() {
            seen += c
            if seen >= rank { return index < bounds.count ? bounds[index] : .max }
        }
        return .max
    }
}
