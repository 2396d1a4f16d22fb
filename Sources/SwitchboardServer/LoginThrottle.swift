// Failed-login lockout, per user name and per client address, in fixed windows. Entries expire with
// their window, and the table is swept periodically, so an attacker cycling names cannot grow it
// without bound for long.

struct LoginThrottle {
    private struct Window { var failures: Int; var windowStart: UInt64 }
    private var byName: [String: Window] = [:]
    private var byAddress: [String: Window] = [:]
    private var registrationsByAddress: [String: Window] = [:]
    let maxRegistrationsPerAddress: Int
    let maxPerName: Int
    let maxPerAddress: Int
    let windowMs: UInt64

    init(maxPerName: Int, maxPerAddress: Int, maxRegistrationsPerAddress: Int, windowMs: UInt64) {
        self.maxPerName = maxPerName
        self.maxPerAddress = maxPerAddress
        self.maxRegistrationsPerAddress = maxRegistrationsPerAddress
        self.windowMs = windowMs
    }

    func isLocked(name: String, address: String, now: UInt64) -> Bool {
        if let w = byName[name], now - w.windowStart < windowMs, w.failures >= maxPerName { return true }
        if let w = byAddress[address], now - w.windowStart < windowMs, w.failures >= maxPerAddress { return true }
        return false
    }

    mutating func recordFailure(name: String, address: String, now: UInt64) {
        func bump(_ table: inout [String: Window], _ key: String) {
            if var w = table[key], now - w.windowStart < windowMs {
                w.failures += 1
                table[key] = w
            } else {
                table[key] = Window(failures: 1, windowStart: now)
            }
        }
        bump(&byName, name)
        bump(&byAddress, address)
    }

    mutating func recordSuccess(name: String) { byName[name] = nil }

    /// Counts a registration attempt from `address`; false when the address is over its quota for
    /// this window (account creation costs a PBKDF2 hash and disk space, so it is rationed).
    mutating func admitRegistration(address: String, now: UInt64) -> Bool {
        if var w = registrationsByAddress[address], now - w.windowStart < windowMs {
            guard w.failures < maxRegistrationsPerAddress else { return false }
            w.failures += 1
            registrationsByAddress[address] = w
        } else {
            registrationsByAddress[address] = Window(failures: 1, windowStart: now)
        }
        return true
    }

    mutating func sweep(now: UInt64) {
        registrationsByAddress = registrationsByAddress.filter { now - $0.value.windowStart < windowMs }
        byName = byName.filter { now - $0.value.windowStart < windowMs }
        byAddress = byAddress.filter { now - $0.value.windowStart < windowMs }
    }
}
