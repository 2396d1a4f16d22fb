// A bounded memory of one sender's recent message ids and their states. Capacity is fixed at
// creation (ring + dictionary with reserved room), so steady-state inserts and evictions allocate
// nothing. The oldest entry is forgotten first; an evicted id is no longer recognised as a duplicate
// (the store's durable dedupe records still catch resends of stored mail).
import SwitchboardProtocol

public struct RecentMessageIDs {
    public enum State: Equatable { case inFlight, completed(SendStatus) }

    private var ring: [UInt64]
    private var occupied: [Bool]
    private var next = 0
    /// Each remembered id with its state and the ring slot that owns it (a removed id leaves a
    /// stale copy in its old slot; only the owning slot may evict it).
    private var states: [UInt64: (state: State, slot: Int)]
    public private(set) var inFlightCount = 0

    public init(capacity: Int) {
        let capacity = max(1, capacity)
        ring = Array(repeating: 0, count: capacity)
        occupied = Array(repeating: false, count: capacity)
        states = [:]
        states.reserveCapacity(capacity)
    }

    public func lookup(_ id: UInt64) -> State? { states[id]?.state }

    public mutating func insertInFlight(_ id: UInt64) {
        if let previous = states[id] {
            if case .completed = previous.state { inFlightCount += 1 }
            states[id]!.state = .inFlight
            return
        }
        if occupied[next] {
            let evicted = ring[next]
            if let entry = states[evicted], entry.slot == next {
                states[evicted] = nil
                if entry.state == .inFlight { inFlightCount -= 1 }
            }
        }
        ring[next] = id
        occupied[next] = true
        states[id] = (.inFlight, next)
        next = (next + 1) % ring.count
        inFlightCount += 1
    }

    public mutating func complete(_ id: UInt64, status: SendStatus) {
        guard let entry = states[id] else { return }
        if entry.state == .inFlight { inFlightCount -= 1 }
        states[id]!.state = .completed(status)
    }

    /// Forgets an id (its ring slot is reclaimed lazily when the ring wraps).
    public mutating func remove(_ id: UInt64) {
        if let entry = states.removeValue(forKey: id), entry.state == .inFlight { inFlightCount -= 1 }
    }
}
