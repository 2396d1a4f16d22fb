// The reactor: one thread, one epoll instance, level-triggered. Registration ids put a generation
// next to the slot in epoll's user data, so an event that was queued for a descriptor closed (and
// maybe reused) earlier in the same turn is recognised and dropped. Timers live in a heap whose
// earliest deadline sets epoll_wait's timeout: no timerfd, no syscall per timer.
import CSwitchboard
import Glibc

/// Readiness flags as delivered to handlers.
public struct IOEvents: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let readable = IOEvents(rawValue: EPOLLIN.rawValue)
    public static let writable = IOEvents(rawValue: EPOLLOUT.rawValue)
    public static let error = IOEvents(rawValue: EPOLLERR.rawValue)
    public static let hangup = IOEvents(rawValue: EPOLLHUP.rawValue)
    public static let readHangup = IOEvents(rawValue: EPOLLRDHUP.rawValue)
}

/// Something that owns a registered descriptor and reacts to its readiness.
public protocol EventHandler: AnyObject {
    func handle(events: IOEvents, loop: EventLoop)
}

/// Identifies one registration: slot in the loop's table plus the slot's generation at the time.
public struct RegistrationID: Hashable, Sendable {
    public let slot: UInt32
    public let generation: UInt32
    var packed: UInt64 { UInt64(generation) << 32 | UInt64(slot) }
    init(slot: UInt32, generation: UInt32) { self.slot = slot; self.generation = generation }
    init(packed: UInt64) { slot = UInt32(truncatingIfNeeded: packed); generation = UInt32(truncatingIfNeeded: packed >> 32) }
}

public final class EventLoop {
    private struct Registration {
        var fd: Int32 = -1
        var generation: UInt32 = 0
        var handler: EventHandler?
        var interest: IOEvents = []
    }

    private let epollFD: Int32
    private var registrations: [Registration] = []
    private var freeSlots: [UInt32] = []
    private var events: UnsafeMutablePointer<epoll_event>
    private let maxEventsPerWait: Int32
    private var running = false
    public private(set) var timers = TimerHeap()
    /// Called for each due timer with the token it was scheduled with.
    public var onTimer: ((UInt64) -> Void)?
    /// Called once per turn after all ready events were handled: flush pending writes, drain TLS
    /// plaintext, close connections at a safe point.
    public var onTurnEnd: (() -> Void)?
    /// Returns true when more work is pending without any fd becoming ready (e.g. TLS plaintext
    /// buffered inside OpenSSL), so the next epoll_wait must not sleep.
    public var hasPendingWork: (() -> Bool)?
    /// Coarse monotonic time of the current turn.
    public private(set) var now: UInt64 = Clock.monotonicMs()
    /// Wall-clock milliseconds of the current turn: one clock read per turn instead of one per
    /// message that needs a timestamp.
    public private(set) var wallNow: UInt64 = Clock.wallMs()
    /// Loop statistics for tests and benchmarks.
    public private(set) var turns: UInt64 = 0

    public init(maxEventsPerWait: Int = 1024) throws {
        epollFD = try Sys.checkInt32("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        self.maxEventsPerWait = Int32(maxEventsPerWait)
        events = .allocate(capacity: maxEventsPerWait)
    }

    deinit {
        events.deallocate()
        Sys.close(epollFD)
    }

    @discardableResult
    public func register(fd: Int32, interest: IOEvents, handler: EventHandler) throws -> RegistrationID {
        let slot: UInt32
        if let reused = freeSlots.popLast() {
            slot = reused
        } else {
            slot = UInt32(registrations.count)
            registrations.append(Registration())
        }
        registrations[Int(slot)].fd = fd
        registrations[Int(slot)].handler = handler
        registrations[Int(slot)].interest = interest
        let id = RegistrationID(slot: slot, generation: registrations[Int(slot)].generation)
        var event = epoll_event()
        event.events = interest.rawValue | EPOLLRDHUP.rawValue
        event.data.u64 = id.packed
        do {
            _ = try Sys.checkInt32("epoll_ctl(ADD)") { epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) }
        } catch {
            release(slot: slot)
            throw error
        }
        return id
    }

    /// Changes the interest set; a no-op (and no syscall) when it is unchanged.
    public func setInterest(_ id: RegistrationID, _ interest: IOEvents) {
        let index = Int(id.slot)
        guard index < registrations.count, registrations[index].generation == id.generation,
              registrations[index].interest != interest else { return }
        registrations[index].interest = interest
        var event = epoll_event()
        event.events = interest.rawValue | EPOLLRDHUP.rawValue
        event.data.u64 = id.packed
        _ = try? Sys.checkInt32("epoll_ctl(MOD)") { epoll_ctl(epollFD, EPOLL_CTL_MOD, registrations[index].fd, &event) }
    }

    /// Removes the registration; the caller closes the descriptor afterwards.
    public func deregister(_ id: RegistrationID) {
        let index = Int(id.slot)
        guard index < registrations.count, registrations[index].generation == id.generation else { return }
        var event = epoll_event()
        _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, registrations[index].fd, &event)
        release(slot: id.slot)
    }

    private func release(slot: UInt32) {
        registrations[Int(slot)].fd = -1
        registrations[Int(slot)].handler = nil
        registrations[Int(slot)].interest = []
        registrations[Int(slot)].generation &+= 1
        freeSlots.append(slot)
    }

    public func schedule(at deadline: UInt64, token: UInt64) {
        timers.push(deadline: deadline, token: token)
    }

    public func stop() { running = false }

    /// Runs until `stop()`; each turn: wait, dispatch, end-of-turn work, due timers.
    public func run() throws {
        running = true
        while running {
            try runOnce(maxWaitMs: nil)
        }
    }

    /// One turn. `maxWaitMs` caps the sleep (tests drive the loop step by step with it).
    public func runOnce(maxWaitMs: Int32?) throws {
        var timeout: Int32 = -1
        if let pending = hasPendingWork, pending() {
            timeout = 0
        } else if let next = timers.earliestDeadline {
            let current = Clock.monotonicMs()
            // +1: the coarse clock could otherwise wake us a tick early and spin.
            timeout = next <= current ? 0 : Int32(clamping: next - current + 1)
        }
        if let cap = maxWaitMs { timeout = timeout < 0 ? cap : min(timeout, cap) }
        let count = epoll_wait(epollFD, events, maxEventsPerWait, timeout)
        turns &+= 1
        now = Clock.monotonicMs()
        wallNow = Clock.wallMs()
        if count < 0 {
            let code = Glibc.errno
            if code == EINTR { return }
            throw SyscallError("epoll_wait", errno: code)
        }
        for i in 0..<Int(count) {
            let event = events[i]
            let id = RegistrationID(packed: event.data.u64)
            let index = Int(id.slot)
            guard index < registrations.count, registrations[index].generation == id.generation,
                  let handler = registrations[index].handler else { continue }  // stale: closed this turn
            handler.handle(events: IOEvents(rawValue: event.events), loop: self)
        }
        onTurnEnd?()
        if let onTimer {
            while let token = timers.popDue(now: now) { onTimer(token) }
        }
    }
}

/// Min-heap of (deadline, token). Entries are never removed early: owners re-check their real
/// deadline when a token fires and reschedule if it moved (lazy deletion), so refreshing an idle
/// deadline on every message costs one store, not a heap operation.
public struct TimerHeap {
    private var deadlines: [UInt64] = []
    private var tokens: [UInt64] = []

    public init() {}

    public var count: Int { deadlines.count }
    public var earliestDeadline: UInt64? { deadlines.first }

    public mutating func push(deadline: UInt64, token: UInt64) {
        deadlines.append(deadline)
        tokens.append(token)
        var child = deadlines.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if deadlines[parent] <= deadlines[child] { break }
            deadlines.swapAt(parent, child)
            tokens.swapAt(parent, child)
            child = parent
        }
    }

    public mutating func popDue(now: UInt64) -> UInt64? {
        guard let first = deadlines.first, first <= now else { return nil }
        let token = tokens[0]
        let last = deadlines.count - 1
        deadlines.swapAt(0, last)
        tokens.swapAt(0, last)
        deadlines.removeLast()
        tokens.removeLast()
        var parent = 0
        let n = deadlines.count
        while true {
            let left = 2 * parent + 1
            if left >= n { break }
            var smallest = left
            if left + 1 < n && deadlines[left + 1] < deadlines[left] { smallest = left + 1 }
            if deadlines[parent] <= deadlines[smallest] { break }
            deadlines.swapAt(parent, smallest)
            tokens.swapAt(parent, smallest)
            parent = smallest
        }
        return token
    }
}
