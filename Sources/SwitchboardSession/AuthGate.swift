// The admission and lockout bookkeeping for password checks, without sockets, threads or clocks of its
// own: the driver submits a LOGIN or REGISTER, asks which submitted attempt may be hashed next, reports
// each hash's outcome, and wakes the gate at `nextWakeupMs`.
//
// Invariants (each is checked after every step of the seeded simulation in SwitchboardSessionTests):
// - an attempt counts the moment it is submitted: the lock check sees failures plus attempts still
//   queued or hashing, so parallel guesses cannot overtake the limit (at most `maxFailuresPerUserAddress`
//   wrong passwords are ever checked per (user, address) per window);
// - at most `maxHashingPerAddress` hashes per address and one per user name run at once; the lock is
//   checked again when an attempt leaves the queue, so a queue of guesses for many names from one
//   address stops being hashed once that address reaches `maxFailuresPerAddress`;
// - the queue never holds more than `maxQueued` attempts (`maxQueuedPerAddress` per address), it is
//   served round-robin across addresses, and a cancelled (closed) attempt is never hashed;
// - the owner is never locked out by others: locks are per (user, address) and per address; a user
//   name under attack only gets slower (a growing delay, capped) from addresses it has never logged in
//   from, and logins from an address the user logged in from recently skip the delay and the queue.
// Tables are bounded: entries expire with their window and `sweep` removes them; the known-address
// memory is capped at `maxKnownUsers` (user, address) pairs, at most `knownAddressesPerUser` (≤ 16) per user.
// The known addresses live in one flat table of fixed-size entries (keyed hashes of the user and the
// address, no string or per-user table stored): every logged-in user costs a slot of that table, not a
// heap block of its own, so a login storm leaves no small blocks pinning the heap.

public struct AuthGateLimits: Sendable, Equatable {
    /// Wrong passwords checked per (user, address) per window before that address is locked out for that user.
    public var maxFailuresPerUserAddress = 5
    /// Wrong passwords from one address (any user) per window before the address is locked out.
    public var maxFailuresPerAddress = 20
    public var windowMs: UInt64 = 15 * 60 * 1000
    /// Hashes run for one address at once (the rest of its attempts wait their turn).
    public var maxHashingPerAddress = 2
    /// Attempts waiting for a hash thread per address and over all addresses; more get busyRetryLater.
    public var maxQueuedPerAddress = 512
    public var maxQueued = 4096
    /// Attempts waiting per user name from addresses it has not logged in from.
    public var maxQueuedPerUser = 4
    /// Hashes handed to the hash threads at once (one per thread keeps queued work cancellable).
    public var maxHashing = 1
    /// After this many failures of one user name in a window (from any address), further attempts from
    /// addresses it has not logged in from wait `min(delayMaxMs, delayBaseMs << (failures - threshold))`.
    public var userDelayThreshold = 5
    public var userDelayBaseMs: UInt64 = 250
    public var userDelayMaxMs: UInt64 = 4_000
    /// Accounts one address may register per window.
    public var maxRegistrationsPerAddress = 20
    /// How long a successful login's address stays "known" for that user.
    public var knownAddressTTLms: UInt64 = 30 * 24 * 3600 * 1000
    public var knownAddressesPerUser = 8
    public var maxKnownUsers = 100_000

    public init() {}
}

public enum AuthKind: Sendable, Equatable { case login, register }

public struct AuthAttempt<Payload> {
    public let connection: UInt64
    public let address: String
    public let user: String
    public let kind: AuthKind
    public let payload: Payload
    /// When the attempt was submitted and when it may be hashed (later under a per-user delay).
    public let submittedAt: UInt64
    public fileprivate(set) var readyAt: UInt64
    /// Known address: skips the per-user delay and queue cap, and goes first.
    public fileprivate(set) var trusted: Bool

    public init(connection: UInt64, address: String, user: String, kind: AuthKind, payload: Payload, now: UInt64) {
        self.connection = connection
        self.address = address
        self.user = user
        self.kind = kind
        self.payload = payload
        self.submittedAt = now
        self.readyAt = now
        self.trusted = false
    }
}

public enum AuthAdmission: Sendable, Equatable {
    case queued
    /// Locked out for this (user, address) or this address: ERROR lockedOut, and the connection closes.
    case lockedOut(String)
    /// Over an in-flight or queue bound: ERROR busyRetryLater; the client may try again.
    case busy(String)
}

public enum AuthDispatch<Payload> {
    /// Hand it to a hash thread; report the result with `finished`.
    case hash(AuthAttempt<Payload>)
    /// Its (user, address) or address became locked while it waited: answer lockedOut, do not hash.
    case refuse(AuthAttempt<Payload>, String)
}

public enum AuthOutcome: Sendable, Equatable {
    case success
    case wrongPassword
    /// A registration finished (either way) or the check could not run: no lockout bookkeeping.
    case neutral
}

public struct AuthGate<Payload> {
    private struct Window { var count: Int; var start: UInt64 }
    private struct UserState { var failures = Window(count: 0, start: 0); var hashing = false; var lastFailureAt: UInt64 = 0 }
    private struct PairKey: Hashable { let user: String; let address: String }

    /// Replaced by a configuration reload; checked again at each new attempt.
    public internal(set) var limits: AuthGateLimits
    /// Per-address FIFO queues (only non-empty ones). The address served least recently goes next.
    private struct AddressQueue {
        var attempts: [AuthAttempt<Payload>] = []
        /// When it was last served (0: never), then when it appeared: the order of turns.
        var servedAt: UInt64 = 0
        let arrival: UInt64
    }
    private var queues: [String: AddressQueue] = [:]
    private var ticks: UInt64 = 0
    public private(set) var queuedCount = 0
    private var hashingByAddress: [String: Int] = [:]
    private var pendingByPair: [PairKey: Int] = [:]
    private var pendingLoginsByAddress: [String: Int] = [:]
    private var failuresByPair: [PairKey: Window] = [:]
    private var failuresByAddress: [String: Window] = [:]
    private var registrationsByAddress: [String: Window] = [:]
    private var users: [String: UserState] = [:]
    /// (hash of the user) | slot 0..<16  ->  (hash of the address, last successful login from it).
    /// Hashes are keyed per process (Swift's Hasher), so nobody can aim a user name at another's slots.
    private struct KnownAddress { var address: UInt64; var at: UInt64 }
    private var known: [UInt64: KnownAddress] = [:]
    private static var knownSlotBits: UInt64 { 4 }
    public private(set) var hashing = 0

    public init(limits: AuthGateLimits) { self.limits = limits }

    public func hashing(address: String) -> Int { hashingByAddress[address] ?? 0 }
    public func queued(address: String) -> Int { queues[address]?.attempts.count ?? 0 }
    /// (user, address) pairs remembered as known.
    public var knownAddressCount: Int { known.count }
    /// Table sizes, for the memory-bound tests.
    public var tableEntries: Int {
        queues.count + hashingByAddress.count + pendingByPair.count + pendingLoginsByAddress.count + failuresByPair.count
            + failuresByAddress.count + registrationsByAddress.count + users.count + known.count
    }

    // MARK: submitting

    public mutating func submit(_ attempt: AuthAttempt<Payload>, now: UInt64) -> AuthAdmission {
        var attempt = attempt
        let address = attempt.address
        if attempt.kind == .login {
            let pair = PairKey(user: attempt.user, address: address)
            if let why = lockReason(pair: pair, pendingCountsFor: pendingByPair[pair] ?? 0, now: now) { return .lockedOut(why) }
        }
        if queued(address: address) >= limits.maxQueuedPerAddress {
            return .busy("\(queued(address: address)) logins already waiting from \(address); wait for their answers")
        }
        if queuedCount >= limits.maxQueued {
            return .busy("the server is busy checking passwords; try again later")
        }
        attempt.trusted = attempt.kind == .login && isKnown(user: attempt.user, address: address, now: now)
        if attempt.kind == .login && !attempt.trusted {
            var waiting = 0
            for (_, list) in queues { for other in list.attempts where other.user == attempt.user && !other.trusted { waiting += 1 } }
            if waiting >= limits.maxQueuedPerUser {
                return .busy("too many logins in progress for \(attempt.user); try again later")
            }
            let state = users[attempt.user] ?? UserState()
            let failures = count(state.failures, now)
            if failures >= limits.userDelayThreshold {
                let shift = UInt64(min(failures - limits.userDelayThreshold, 16))
                let delay = min(limits.userDelayMaxMs, limits.userDelayBaseMs << shift)
                attempt.readyAt = max(now, state.lastFailureAt + delay)
            }
        }
        if attempt.kind == .register {
            let used = count(registrationsByAddress[address], now)
            guard used < limits.maxRegistrationsPerAddress else {
                return .busy("too many registrations from \(address); try again later")
            }
            bump(&registrationsByAddress, address, now)
        }
        if attempt.kind == .login {
            pendingByPair[PairKey(user: attempt.user, address: address), default: 0] += 1
            pendingLoginsByAddress[address, default: 0] += 1
        }
        if queues[address] == nil {
            ticks += 1
            queues[address] = AddressQueue(arrival: ticks)
        }
        queues[address]?.attempts.append(attempt)
        queuedCount += 1
        return .queued
    }

    /// nil, or why a login for `pair` may not be checked now. `pendingCountsFor` attempts of the pair
    /// (queued or hashing) count as failures already; the address counts its checked failures plus
    /// its running hashes.
    private func lockReason(pair: PairKey, pendingCountsFor pending: Int, now: UInt64) -> String? {
        if count(failuresByAddress[pair.address], now) + hashing(address: pair.address) >= limits.maxFailuresPerAddress {
            return "too many failed logins from \(pair.address); try again later"
        }
        if count(failuresByPair[pair], now) + pending >= limits.maxFailuresPerUserAddress {
            return "too many failed logins for \(pair.user) from \(pair.address); try again later"
        }
        return nil
    }

    /// Removes the queued attempts of a closed connection (they are never hashed). Returns how many.
    @discardableResult
    public mutating func cancel(connection: UInt64, address: String) -> Int {
        guard var list = queues[address]?.attempts else { return 0 }
        var removed = 0
        var index = 0
        while index < list.count {
            if list[index].connection == connection {
                releasePending(list.remove(at: index))
                removed += 1
            } else {
                index += 1
            }
        }
        queuedCount -= removed
        store(list, for: address)
        return removed
    }

    // MARK: hashing

    /// What to do with the next queued attempt, or nil (none ready, or `maxHashing` busy). Attempts from
    /// an address the user logged in from go first; otherwise addresses take turns, each serving its
    /// oldest ready attempt whose user is not being hashed already.
    public mutating func next(now: UInt64) -> AuthDispatch<Payload>? {
        guard hashing < limits.maxHashing, queuedCount > 0 else { return nil }
        var pick: (address: String, index: Int)?
        var best: (servedAt: UInt64, arrival: UInt64) = (.max, .max)
        var trustedFound = false
        for (address, queue) in queues where hashing(address: address) < limits.maxHashingPerAddress {
            if !trustedFound, let index = queue.attempts.firstIndex(where: { $0.trusted && isReady($0, now) }) {
                pick = (address, index)
                trustedFound = true
                best = (queue.servedAt, queue.arrival)
                continue
            }
            if trustedFound { continue }
            let rank = (queue.servedAt, queue.arrival)
            if rank < best, let index = queue.attempts.firstIndex(where: { isReady($0, now) }) {
                pick = (address, index)
                best = rank
            }
        }
        guard let (address, index) = pick, var list = queues[address]?.attempts else { return nil }
        let attempt = list.remove(at: index)
        queuedCount -= 1
        ticks += 1
        queues[address]?.servedAt = ticks
        store(list, for: address)
        if attempt.kind == .login {
            let pair = PairKey(user: attempt.user, address: address)
            // Pending attempts of this pair other than this one count as failures already.
            if let why = lockReason(pair: pair, pendingCountsFor: (pendingByPair[pair] ?? 1) - 1, now: now) {
                releasePending(attempt)
                return .refuse(attempt, why)
            }
        }
        hashing += 1
        hashingByAddress[address, default: 0] += 1
        users[attempt.user, default: UserState()].hashing = true
        return .hash(attempt)
    }

    /// Reports a hashed attempt's outcome (also when its connection closed meanwhile).
    public mutating func finished(_ attempt: AuthAttempt<Payload>, _ outcome: AuthOutcome, now: UInt64) {
        hashing -= 1
        decrement(&hashingByAddress, attempt.address)
        users[attempt.user, default: UserState()].hashing = false
        // A user with no failures to remember needs no entry (every successful login would otherwise keep one
        // until the window's sweep).
        if let state = users[attempt.user], state.failures.count == 0, state.lastFailureAt == 0 { users[attempt.user] = nil }
        releasePending(attempt)
        guard attempt.kind == .login else { return }
        let pair = PairKey(user: attempt.user, address: attempt.address)
        switch outcome {
        case .success:
            failuresByPair[pair] = nil
            remember(user: attempt.user, address: attempt.address, now: now)
        case .wrongPassword:
            bump(&failuresByPair, pair, now)
            bump(&failuresByAddress, attempt.address, now)
            var state = users[attempt.user] ?? UserState()
            if now - state.failures.start >= limits.windowMs { state.failures = Window(count: 0, start: now) }
            state.failures.count += 1
            state.lastFailureAt = now
            users[attempt.user] = state
        case .neutral:
            break
        }
    }

    /// When a delayed attempt becomes ready (schedule a wake-up then), or nil.
    public var nextWakeupMs: UInt64? {
        var earliest: UInt64?
        for (address, list) in queues where hashing(address: address) < limits.maxHashingPerAddress {
            for attempt in list.attempts where users[attempt.user]?.hashing != true {
                earliest = min(earliest ?? .max, attempt.readyAt)
            }
        }
        return earliest
    }

    // MARK: upkeep

    public mutating func sweep(now: UInt64) {
        let window = limits.windowMs
        failuresByPair = failuresByPair.filter { now - $0.value.start < window }
        failuresByAddress = failuresByAddress.filter { now - $0.value.start < window }
        registrationsByAddress = registrationsByAddress.filter { now - $0.value.start < window }
        users = users.filter { $0.value.hashing || now - $0.value.failures.start < window }
        let ttl = limits.knownAddressTTLms
        if known.contains(where: { now - $0.value.at >= ttl }) { known = known.filter { now - $0.value.at < ttl } }
        if known.count > limits.maxKnownUsers {
            // Forget the oldest logins.
            let ordered = known.map { ($0.key, $0.value.at) }.sorted { $0.1 < $1.1 }
            for (key, _) in ordered.prefix(known.count - limits.maxKnownUsers) { known[key] = nil }
        }
    }

    // MARK: private

    private func count(_ window: Window?, _ now: UInt64) -> Int {
        guard let window, now - window.start < limits.windowMs else { return 0 }
        return window.count
    }

    private func bump<Key: Hashable>(_ table: inout [Key: Window], _ key: Key, _ now: UInt64) {
        if var w = table[key], now - w.start < limits.windowMs {
            w.count += 1
            table[key] = w
        } else {
            table[key] = Window(count: 1, start: now)
        }
    }

    private func isReady(_ attempt: AuthAttempt<Payload>, _ now: UInt64) -> Bool {
        attempt.readyAt <= now && users[attempt.user]?.hashing != true
    }

    private mutating func store(_ list: [AuthAttempt<Payload>], for address: String) {
        if list.isEmpty { queues[address] = nil } else { queues[address]?.attempts = list }
    }

    private mutating func releasePending(_ attempt: AuthAttempt<Payload>) {
        if attempt.kind == .login {
            decrement(&pendingByPair, PairKey(user: attempt.user, address: attempt.address))
            decrement(&pendingLoginsByAddress, attempt.address)
        }
    }

    private func decrement<Key: Hashable>(_ table: inout [Key: Int], _ key: Key) {
        guard let value = table[key] else { return }
        table[key] = value > 1 ? value - 1 : nil
    }

    private func isKnown(user: String, address: String, now: UInt64) -> Bool {
        let base = Self.knownBase(user), target = Self.knownHash(address)
        for slot in 0..<knownSlots {
            if let entry = known[base | UInt64(slot)], entry.address == target { return now - entry.at < limits.knownAddressTTLms }
        }
        return false
    }

    private mutating func remember(user: String, address: String, now: UInt64) {
        let base = Self.knownBase(user), target = Self.knownHash(address)
        var free: UInt64?
        var oldest: (key: UInt64, at: UInt64)?
        for slot in 0..<knownSlots {
            let key = base | UInt64(slot)
            guard let entry = known[key] else {
                if free == nil { free = key }
                continue
            }
            if entry.address == target {
                known[key]!.at = now
                return
            }
            if oldest == nil || entry.at < oldest!.at { oldest = (key, entry.at) }
        }
        // A new address: an empty slot, or the user's oldest one (at most `knownAddressesPerUser` per user).
        guard let key = free ?? oldest?.key else { return }
        known[key] = KnownAddress(address: target, at: now)
    }

    private var knownSlots: Int { max(1, min(limits.knownAddressesPerUser, 1 << Int(Self.knownSlotBits))) }

    private static func knownBase(_ user: String) -> UInt64 {
        var hasher = Hasher()
        hasher.combine(0x75 as UInt8)
        hasher.combine(user)
        return UInt64(UInt(bitPattern: hasher.finalize())) << knownSlotBits
    }

    private static func knownHash(_ address: String) -> UInt64 {
        var hasher = Hasher()
        hasher.combine(0x61 as UInt8)
        hasher.combine(address)
        return UInt64(UInt(bitPattern: hasher.finalize()))
    }
}
