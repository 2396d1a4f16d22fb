// Failed-login lockout, per user name and per client address, in fixed windows. Entries expire with
// their window, and the table is swept periodically, so an attacker cycling names cannot grow it
// without bound for long.

struct LoginThrottle {
    private struct Window { var failures: Int; var windowStart: UInt64 }
    private var byName: [String: Window] = [:]
    private var byAddress: [String: Window] = [:]
    let maxPerName: Int
    let maxPerAddress: Int
    let windowMs: UInt64

    init(maxPerName: Int, maxPerAddress: Int, windowMs: UInt64) {
        self.maxPerName = maxPerName
        self.maxPerAddress = maxPerAddress
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

    mutating func sweep(now: UInt64) {
        byName = byName.filter { now - $0.value.windowStart < windowMs }
        byAddress = byAddress.filter { now - $0.value.windowStart < windowMs }
    }
}
