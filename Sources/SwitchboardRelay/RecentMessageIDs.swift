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
    private var states: [UInt64: State]
    public private(set) var inFlightCount = 0

    public init(capacity: Int) {
        let capacity = max(1, capacity)
        ring = Array(repeating: 0, count: capacity)
        occupied = Array(repeating: false, count: capacity)
        states = [:]
        states.reserveCapacity(capacity)
    }

    public func lookup(_ id: UInt64) -> State? { states[id] }

    public mutating func insertInFlight(_ id: UInt64) {
        if let previous = states[id] {
            if case .completed = previous { inFlightCount += 1 }
            states[id] = .inFlight
            return
        }
        if occupied[next] {
            let evicted = ring[next]
            if let state = states.removeValue(forKey: evicted), state == .inFlight { inFlightCount -= 1 }
        }
        ring[next] = id
        occupied[next] = true
        next = (next + 1) % ring.count
        states[id] = .inFlight
        inFlightCount += 1
    }

    public mutating func complete(_ id: UInt64, status: SendStatus) {
        guard let state = states[id] else { return }
        if state == .inFlight { inFlightCount -= 1 }
        states[id] = .completed(status)
    }

    /// Forgets an id (its ring slot is reclaimed lazily when the ring wraps).
    public mutating func remove(_ id: UInt64) {
        if let state = states.removeValue(forKey: id), state == .inFlight { inFlightCount -= 1 }
    }
}
