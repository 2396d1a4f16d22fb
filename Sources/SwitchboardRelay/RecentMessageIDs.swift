// A bounded memory of one sender's recent message ids and their states. The oldest id is forgotten
// first; an evicted id is no longer recognised as a duplicate (the store's durable dedupe records
// still catch resends of stored mail).
// Invariants: every remembered id has exactly one table entry, owned by the ring slot that last
// inserted it (a removed-then-resent id leaves a stale copy in its old slot; only the owner evicts);
// the table is at most half full; ring and table only grow (doubling, up to `capacity`), so a
// sender's steady state allocates nothing and a light sender holds a few hundred bytes.
//
// Why not a Dictionary: under bulk load this table was ~45% of the server's CPU (perf record):
// SipHash plus Dictionary's separate bitmap/key/value arrays cost several cache misses per lookup
// with 1000 senders' tables live. Here one probe reads one 16-byte entry, hashed by a multiply.
// A final class over raw memory rather than a struct of arrays: a struct reached through its owner
// was copied (retaining both arrays) on every lookup, and every array store paid a uniqueness and a
// bounds check; together ~40 % of this table's instructions (perf/instructions-per-message.sh).
// It has one owner (RelayCore's per-sender history), like ByteBuffer.
import SwitchboardProtocol

public final class RecentMessageIDs {
    public enum State: Equatable { case inFlight, completed(SendStatus) }

    private struct Entry {
        var key: UInt64 = 0
        /// Ring slot that owns this id, or -1 for an empty table slot.
        var owner: Int32 = -1
        /// 0 in flight, otherwise the SendStatus raw value.
        var state: UInt8 = 0
        /// While in flight: live copies (one per receiving device) not yet acknowledged nor lost.
        /// Fits the entry's padding: still 16 bytes.
        var pending: UInt16 = 0
    }

    /// Per-process salt so ids chosen by a client cannot be aimed at one probe chain in advance.
    private static let processSalt = UInt64.random(in: 0...UInt64.max)

    private let capacity: Int
    private let salt: UInt64
    private var ring: UnsafeMutablePointer<UInt64>
    private var ringCount: Int
    private var filled = 0
    private var next = 0
    private var table: UnsafeMutablePointer<Entry>
    private var mask: Int
    private var shift: UInt64
    public private(set) var inFlightCount = 0

    public init(capacity: Int) {
        self.capacity = max(1, capacity)
        salt = RecentMessageIDs.processSalt
        ringCount = min(self.capacity, 32)
        ring = .allocate(capacity: ringCount)
        ring.initialize(repeating: 0, count: ringCount)
        (table, mask, shift) = RecentMessageIDs.makeTable(forRing: ringCount)
    }

    deinit {
        ring.deallocate()
        table.deallocate()
    }

    private static func makeTable(forRing ringCount: Int) -> (UnsafeMutablePointer<Entry>, Int, UInt64) {
        var size = 4
        var bits: UInt64 = 2
        while size < 2 * ringCount { size *= 2; bits += 1 }
        let table = UnsafeMutablePointer<Entry>.allocate(capacity: size)
        table.initialize(repeating: Entry(), count: size)
        return (table, size - 1, 64 - bits)
    }

    @inline(__always) private func home(_ id: UInt64) -> Int {
        Int(truncatingIfNeeded: ((id ^ salt) &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    @inline(__always) private func find(_ id: UInt64) -> Int? {
        var i = home(id)
        while table[i].owner >= 0 {
            if table[i].key == id { return i }
            i = (i + 1) & mask
        }
        return nil
    }

    @inline(__always) private func insertEntry(_ entry: Entry) {
        var i = home(entry.key)
        while table[i].owner >= 0 { i = (i + 1) & mask }
        table[i] = entry
    }

    /// Linear-probing deletion by backward shift: no tombstones, probe chains stay short.
    private func deleteEntry(at index: Int) {
        var hole = index
        var j = (index + 1) & mask
        while table[j].owner >= 0 {
            let probeDistance = (j - home(table[j].key)) & mask
            if probeDistance >= (j - hole) & mask {
                table[hole] = table[j]
                hole = j
            }
            j = (j + 1) & mask
        }
        table[hole].owner = -1
    }

    public func lookup(_ id: UInt64) -> State? {
        guard let i = find(id) else { return nil }
        let state = table[i].state
        return state == 0 ? .inFlight : .completed(SendStatus(rawValue: state) ?? .delivered)
    }

    /// Remembers `id` as in flight, with `pendingCopies` live copies out (0 when it is being stored).
    public func insertInFlight(_ id: UInt64, pendingCopies: UInt16 = 0) {
        if let i = find(id) {
            if table[i].state != 0 { inFlightCount += 1 }
            table[i].state = 0
            table[i].pending = pendingCopies
            return
        }
        insertAbsentInFlight(id, pendingCopies: pendingCopies)
    }

    /// `insertInFlight` of an id the caller just looked up and found absent (the relay's route: one probe
    /// fewer per message).
    @inline(__always)
    public func insertAbsentInFlight(_ id: UInt64, pendingCopies: UInt16 = 0) {
        assert(find(id) == nil, "insertAbsentInFlight of a remembered id")
        if next == 0 && filled == ringCount && ringCount < capacity { grow() }
        if next < filled {
            let evicted = ring[next]
            if let i = find(evicted), table[i].owner == Int32(next) {
                if table[i].state == 0 { inFlightCount -= 1 }
                deleteEntry(at: i)
            }
        } else {
            filled += 1
        }
        ring[next] = id
        insertEntry(Entry(key: id, owner: Int32(next), state: 0, pending: pendingCopies))
        next += 1
        if next == ringCount { next = 0 }
        inFlightCount += 1
    }

    /// Doubles the ring (up to capacity) when it is full and about to wrap: the oldest id stays at
    /// slot 0, so eviction order is unchanged. The table is rebuilt at twice the ring size.
    private func grow() {
        let newCount = min(capacity, ringCount * 2)
        let newRing = UnsafeMutablePointer<UInt64>.allocate(capacity: newCount)
        newRing.initialize(repeating: 0, count: newCount)
        newRing.update(from: ring, count: ringCount)
        ring.deallocate()
        ring = newRing
        ringCount = newCount
        next = filled
        let old = table
        let oldSize = mask + 1
        (table, mask, shift) = RecentMessageIDs.makeTable(forRing: newCount)
        for k in 0..<oldSize where old[k].owner >= 0 { insertEntry(old[k]) }
        old.deallocate()
    }

    /// Settles `id`. Returns false when it had completed already (nothing changes then), true when
    /// it was in flight or is not remembered.
    @discardableResult
    public func complete(_ id: UInt64, status: SendStatus) -> Bool {
        guard let i = find(id) else { return true }
        guard table[i].state == 0 else { return false }
        inFlightCount -= 1
        table[i].state = status.rawValue
        table[i].pending = 0
        return true
    }

    public enum CopyLoss: Equatable { case othersRemain, last, unknown }

    /// One live copy of `id` will never be acknowledged: `.last` when the message is still in flight
    /// and no copy is left (it must be stored), `.othersRemain` while other copies are out or once it
    /// completed, `.unknown` when `id` is no longer remembered (evicted).
    public func copyLost(_ id: UInt64) -> CopyLoss {
        guard let i = find(id) else { return .unknown }
        guard table[i].state == 0 else { return .othersRemain }
        if table[i].pending > 0 { table[i].pending -= 1 }
        return table[i].pending == 0 ? .last : .othersRemain
    }

    /// The completed ids remembered, oldest first, with their outcome (in-flight ones are left out:
    /// they are not settled yet). What the server persists when the sender goes offline.
    public func completedEntries() -> [(id: UInt64, status: SendStatus)] {
        var result: [(id: UInt64, status: SendStatus)] = []
        result.reserveCapacity(filled)
        // Until the ring wraps the oldest id is in slot 0; afterwards it is the one `next` overwrites.
        let start = filled < ringCount ? 0 : next
        for k in 0..<filled {
            let slot = (start + k) % ringCount
            let id = ring[slot]
            if let i = find(id), table[i].owner == Int32(slot), table[i].state != 0,
               let status = SendStatus(rawValue: table[i].state) {
                result.append((id, status))
            }
        }
        return result
    }

    /// Remembers a settled id again (from a persisted window), as the newest.
    public func restoreCompleted(_ id: UInt64, status: SendStatus) {
        insertInFlight(id)
        complete(id, status: status)
    }

    /// Forgets an id (its ring slot is reclaimed lazily when the ring wraps).
    public func remove(_ id: UInt64) {
        guard let i = find(id) else { return }
        if table[i].state == 0 { inFlightCount -= 1 }
        deleteEntry(at: i)
    }
}
