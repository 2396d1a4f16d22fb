// The final report: merged counters and histograms of all threads, throughput over the measured
// window, CPU of the generator (getrusage, all threads) and of the server (/proc/PID/stat) over
// the same window, and the verdict. Text for people, JSON (--json) for scripts.
import Foundation
import Glibc
import Histogram
import SwitchboardIO

/// A measured interval with CPU samples at both ends.
struct Window {
    var start: UInt64 = 0
    var end: UInt64 = 0
    var cpuStart: UInt64 = 0
    var cpuEnd: UInt64 = 0
    var serverCPUStart: UInt64?
    var serverCPUEnd: UInt64?
    var sampledStart: UInt64 = 0
    var sampledEnd: UInt64 = 0

    mutating func sample(at now: UInt64, pid: [Int32]) {
        sampledStart = now
        cpuStart = processCPUNs()
        serverCPUStart = ProcInfo.cpuNs(pids: pid)
    }

    mutating func sampleEnd(pid: [Int32]) {
        sampledEnd = Clock.monotonicNs()
        if end == .max || end == 0 { end = sampledEnd }
        cpuEnd = processCPUNs()
        serverCPUEnd = ProcInfo.cpuNs(pids: pid)
    }

    var seconds: Double { Double(end &- start) / 1e9 }
    /// Cores busy (1.0 = one core fully used) over the sampled interval.
    var generatorCores: Double? {
        guard sampledEnd > sampledStart else { return nil }
        return Double(cpuEnd &- cpuStart) / Double(sampledEnd - sampledStart)
    }
    var serverCores: Double? {
        guard sampledEnd > sampledStart, let a = serverCPUStart, let b = serverCPUEnd else { return nil }
        return Double(b &- a) / Double(sampledEnd - sampledStart)
    }
}

enum ProcInfo {
    static func read(_ path: String) -> String? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&chunk, 1, chunk.count, file)
            if n <= 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The sum over several processes (nil when none is given or one cannot be read).
    static func rssBytes(pids: [Int32]) -> UInt64? { sum(pids, rssBytes(pid:)) }
    static func cpuNs(pids: [Int32]) -> UInt64? { sum(pids, cpuNs(pid:)) }

    private static func sum(_ pids: [Int32], _ read: (Int32) -> UInt64?) -> UInt64? {
        guard !pids.isEmpty else { return nil }
        var total: UInt64 = 0
        for pid in pids {
            guard let value = read(pid) else { return nil }
            total += value
        }
        return total
    }

    /// VmRSS of a process, in bytes.
    static func rssBytes(pid: Int32) -> UInt64? {
        guard let status = read("/proc/\(pid)/status") else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count >= 2, let kb = UInt64(fields[1]) { return kb * 1024 }
        }
        return nil
    }

    /// utime + stime of a process, in ns.
    static func cpuNs(pid: Int32) -> UInt64? {
        guard let stat = read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After "pid (comm)": state is field 3; utime and stime are fields 14 and 15.
        guard fields.count > 13, let utime = UInt64(fields[11]), let stime = UInt64(fields[12]) else { return nil }
        let ticks = UInt64(sysconf(Int32(_SC_CLK_TCK)))
        return (utime + stime) * 1_000_000_000 / max(ticks, 1)
    }
}

enum Format {
    static func duration(_ ns: UInt64) -> String {
        if ns < 1_000 { return "\(ns) ns" }
        if ns < 1_000_000 { return String(format: "%.1f µs", Double(ns) / 1e3) }
        if ns < 1_000_000_000 { return String(format: "%.2f ms", Double(ns) / 1e6) }
        return String(format: "%.2f s", Double(ns) / 1e9)
    }

    static func count(_ value: Double) -> String {
        if value >= 1e6 { return String(format: "%.2fM", value / 1e6) }
        if value >= 1e4 { return String(format: "%.1fk", value / 1e3) }
        return String(format: "%.0f", value)
    }
}

struct Percentiles: Codable {
    var count: UInt64
    var p50: UInt64, p90: UInt64, p99: UInt64, p999: UInt64, p9999: UInt64, max: UInt64
    var mean: Double

    init(_ h: Histogram<UInt64>) {
        count = h.totalCount
        if count == 0 { p50 = 0; p90 = 0; p99 = 0; p999 = 0; p9999 = 0; max = 0; mean = 0; return }
        p50 = h.valueAtPercentile(50); p90 = h.valueAtPercentile(90); p99 = h.valueAtPercentile(99)
        p999 = h.valueAtPercentile(99.9); p9999 = h.valueAtPercentile(99.99); max = h.max
        mean = h.mean
    }

    var line: String {
        guard count > 0 else { return "no samples" }
        return "p50 \(Format.duration(p50))  p90 \(Format.duration(p90))  p99 \(Format.duration(p99))  " +
            "p99.9 \(Format.duration(p999))  p99.99 \(Format.duration(p9999))  max \(Format.duration(max))  (n=\(count))"
    }
}

struct Report: Codable {
    var scenario: String
    var target: String
    /// Each target (HOST:PORT), the connections planned for it and the logins it completed.
    var targets: [String] = []
    var connectionsPerTarget: [Int] = []
    var loggedInPerTarget: [UInt64] = []
    var spread: String?
    var threads: Int
    var pairs: Int
    var connections: Int
    var payloadBytes: Int
    var window: Int?
    var rate: Double?
    /// Peer adapters only (nil for Switchboard): protocol, MQTT QoS and what the "ack" is.
    var peer: String?
    var qos: Int?
    var ackMode: String?
    var measuredSeconds: Double = 0
    var sent: UInt64 = 0
    var acknowledgedDelivered: UInt64 = 0
    var acknowledgedStored: UInt64 = 0
    var refused: UInt64 = 0
    var received: UInt64 = 0
    var throughputPerSecond: Double = 0
    var latencyNs: Percentiles?
    var ackRoundTripNs: Percentiles?
    var loginLatencyNs: Percentiles?
    var lost: UInt64 = 0
    var duplicates: UInt64 = 0
    var corrupt: UInt64 = 0
    var outOfOrder: UInt64 = 0
    var unacknowledged: UInt64 = 0
    var storedNotDrained: UInt64 = 0
    var staleMail: UInt64 = 0
    var disconnects: UInt64 = 0
    var serverErrors: UInt64 = 0
    var unexpectedAcks: UInt64 = 0
    var scheduleStalls: UInt64 = 0
    /// --failover: connections that lost their server, logins again (per target and total), the time
    /// from losing a server to being logged in again, and SENDs repeated after a reconnect.
    var failover: Bool?
    var serverLost: UInt64?
    var reconnects: UInt64?
    var reconnectsPerTarget: [UInt64]?
    var reconnectTimeNs: Percentiles?
    var resent: UInt64?
    var generatorCores: Double?
    var serverCores: Double?
    // offline
    var storedPerSecond: Double?
    var drainedPerSecond: Double?
    var mailDrained: UInt64?
    // connect
    var loggedIn: UInt64 = 0
    var loginSeconds: Double?
    var loginsPerSecond: Double?
    var serverRSSBeforeBytes: UInt64?
    var serverRSSAfterBytes: UInt64?
    var serverRSSAfterHoldBytes: UInt64?
    var serverRSSPerConnectionBytes: Double?
    var failedThreads: Int = 0
    var firstErrors: [String] = []
    var passed = false
    var verdict = ""

    // Not encoded: stage windows of the offline scenario.
    var phaseA: Window?
    var phaseB: Window?
    enum CodingKeys: String, CodingKey {
        case scenario, target, targets, connectionsPerTarget, loggedInPerTarget, spread, threads, pairs, connections, payloadBytes, window, rate, peer, qos, ackMode, measuredSeconds, sent,
             acknowledgedDelivered, acknowledgedStored, refused, received, throughputPerSecond, latencyNs, ackRoundTripNs,
             loginLatencyNs, lost, duplicates, corrupt, outOfOrder, unacknowledged, storedNotDrained, staleMail, disconnects,
             serverErrors, unexpectedAcks, scheduleStalls, failover, serverLost, reconnects, reconnectsPerTarget, reconnectTimeNs, resent, generatorCores, serverCores, storedPerSecond, drainedPerSecond,
             mailDrained, loggedIn, loginSeconds, loginsPerSecond, serverRSSBeforeBytes, serverRSSAfterBytes,
             serverRSSAfterHoldBytes, serverRSSPerConnectionBytes, failedThreads, firstErrors, passed, verdict
    }

    init(plan: Plan) {
        scenario = plan.scenario.rawValue
        targets = plan.targets.map(\.description)
        target = plan.targetLabel ?? targets.joined(separator: ",")
        connectionsPerTarget = plan.connectionsPerTarget
        loggedInPerTarget = Array(repeating: 0, count: plan.targets.count)
        if plan.targets.count > 1 { spread = plan.spread.rawValue }
        if plan.failover {
            failover = true
            reconnectsPerTarget = Array(repeating: 0, count: plan.targets.count)
        }
        switch plan.peer {
        case .switchboard: break
        case .redis: peer = "redis"; ackMode = "PUBLISH reply (accepted by the server; weaker than Switchboard's end-to-end SEND_ACK)"
        case .mqtt:
            peer = "mqtt"; qos = plan.qos
            ackMode = plan.qos == 1 ? "broker PUBACK (QoS 1; weaker than Switchboard's end-to-end SEND_ACK)"
                : "receipt by the receiver in this process (QoS 0 has no ack)"
        case .nats: peer = "nats"; ackMode = "receipt by the receiver in this process (NATS core has no ack)"
        }
        threads = plan.threads
        pairs = plan.pairs
        connections = plan.connections
        payloadBytes = plan.payload
        if plan.scenario != .connect {
            if plan.rate > 0 { rate = plan.rate } else { window = plan.window }
        }
    }

    var exitCode: Int32 = 3

    mutating func merge(_ results: [ThreadResult], window w: Window, failedThreads: Int) {
        var c = Counters()
        var latency = Latency.make(), ack = Latency.make(), login = Latency.make(), reconnect = Latency.make()
        var firstLogin = UInt64.max, lastLogin: UInt64 = 0, phaseAEnd: UInt64 = 0
        for r in results {
            c.add(r.counters)
            latency.add(r.latency); ack.add(r.ackLatency); login.add(r.loginLatency)
            lost += r.lost; unacknowledged += r.unacknowledged; storedNotDrained += r.storedNotDrained
            firstLogin = min(firstLogin, r.firstLoginNs); lastLogin = max(lastLogin, r.lastLoginNs)
            phaseAEnd = max(phaseAEnd, r.phaseAEndNs)
            for e in r.firstErrors where firstErrors.count < 20 { firstErrors.append(e) }
            for (i, n) in r.loggedInPerTarget.enumerated() where i < loggedInPerTarget.count { loggedInPerTarget[i] += n }
            reconnect.add(r.reconnectLatency)
            if reconnectsPerTarget != nil {
                for (i, n) in r.reconnectsPerTarget.enumerated() where i < reconnectsPerTarget!.count { reconnectsPerTarget![i] += n }
            }
        }
        self.failedThreads = failedThreads
        sent = c.sent; acknowledgedDelivered = c.acked; acknowledgedStored = c.ackedStored; refused = c.refused
        received = c.received; duplicates = c.duplicates; corrupt = c.corrupt; outOfOrder = c.outOfOrder
        staleMail = c.staleMail; disconnects = c.disconnects + c.connectFailures; serverErrors = c.serverErrors
        unexpectedAcks = c.unexpectedAcks; scheduleStalls = c.stalls; loggedIn = c.loggedIn
        loginLatencyNs = Percentiles(login)
        if failover == true {
            serverLost = c.serverLost; reconnects = c.reconnects; resent = c.resent
            reconnectTimeNs = reconnect.totalCount > 0 ? Percentiles(reconnect) : nil
        }
        switch scenario {
        case Scenario.relay.rawValue:
            measuredSeconds = w.seconds
            throughputPerSecond = measuredSeconds > 0 ? Double(c.receivedInWindow) / measuredSeconds : 0
            latencyNs = Percentiles(latency)
            ackRoundTripNs = Percentiles(ack)
            generatorCores = w.generatorCores
            serverCores = w.serverCores
        case Scenario.offline.rawValue:
            ackRoundTripNs = Percentiles(ack)
            mailDrained = c.mailReceived
            if let a = phaseA, phaseAEnd > a.start {
                storedPerSecond = Double(c.ackedStored) / (Double(phaseAEnd - a.start) / 1e9)
                measuredSeconds = Double(phaseAEnd - a.start) / 1e9
                generatorCores = a.generatorCores
                serverCores = a.serverCores
            }
            if let b = phaseB, b.end > b.start { drainedPerSecond = Double(c.mailReceived) / b.seconds }
        default:
            if lastLogin > firstLogin { loginsPerSecond = Double(c.loggedIn) / (Double(lastLogin - firstLogin) / 1e9) }
            if let before = serverRSSBeforeBytes, let after = serverRSSAfterBytes, c.loggedIn > 0 {
                serverRSSPerConnectionBytes = (Double(after) - Double(before)) / Double(c.loggedIn)
            }
        }
        // Verdict.
        var problems: [String] = []
        var integrity = false
        if lost > 0 { problems.append("\(lost) lost"); integrity = true }
        if duplicates > 0 { problems.append("\(duplicates) duplicated"); integrity = true }
        if corrupt > 0 { problems.append("\(corrupt) corrupted or misrouted"); integrity = true }
        if unexpectedAcks > 0 { problems.append("\(unexpectedAcks) unexpected acknowledgements"); integrity = true }
        if disconnects > 0 { problems.append("\(disconnects) disconnects or failed connects") }
        if serverErrors > 0 { problems.append("\(serverErrors) server errors") }
        if refused > 0 { problems.append("\(refused) refused (SEND_ERROR)") }
        if unacknowledged > 0 { problems.append("\(unacknowledged) still unacknowledged after the drain period") }
        if failedThreads > 0 { problems.append("\(failedThreads) load threads failed") }
        if scenario == Scenario.connect.rawValue && c.loggedIn < UInt64(connections) {
            problems.append("only \(c.loggedIn) of \(connections) logged in")
        }
        if scenario == Scenario.offline.rawValue {
            if c.mailReceived < c.ackedStored { problems.append("drained fewer mails than were stored") }
            if c.acked > 0 { problems.append("\(c.acked) messages were delivered live: a receiver was online (someone else logged in as it?)") }
            if c.ackedStored == 0 { problems.append("nothing was stored") }
        }
        if scenario != Scenario.connect.rawValue && sent == 0 { problems.append("nothing was sent") }
        passed = problems.isEmpty
        verdict = passed ? "PASS" : "FAIL: " + problems.joined(separator: ", ")
        exitCode = passed ? 0 : (integrity ? 2 : 3)
    }

    func text() -> String {
        var s = "\n== sbload \(scenario) -> \(target)\(qos.map { " QoS \($0)" } ?? "")  threads \(threads)"
        if scenario == "connect" { s += "  connections \(connections)\n" } else {
            s += "  pairs \(pairs)  payload \(payloadBytes) B  "
            s += rate.map { "open loop \(Format.count($0)) msg/s" } ?? "closed loop window \(window ?? 0)"
            s += "\n"
        }
        if targets.count > 1 {
            s += "targets      spread \(spread ?? "-"):"
            for i in targets.indices {
                s += "  \(targets[i]) \(connectionsPerTarget[i]) connections (\(loggedInPerTarget[i]) logged in)"
            }
            s += "\n"
        }
        let cpu = { (v: Double?) in v.map { String(format: "%.2f cores", $0) } ?? "n/a" }
        switch scenario {
        case "relay":
            s += String(format: "throughput   %@ msg/s over %.1f s (received in window)\n", Format.count(throughputPerSecond), measuredSeconds)
            s += "latency      \(latencyNs?.line ?? "-")\n"
            s += "ack rtt      \(ackRoundTripNs?.line ?? "-")\n"
            if let ackMode { s += "ack is       \(ackMode)\n" }
            s += "messages     sent \(sent)  delivered+acked \(acknowledgedDelivered)  received \(received)  stored-offline \(acknowledgedStored)  refused \(refused)\n"
        case "offline":
            s += "stored       \(acknowledgedStored) msgs  \(storedPerSecond.map { Format.count($0) } ?? "-") msg/s (SEND_ACK storedOffline)\n"
            s += "drained      \(mailDrained ?? 0) mails  \(drainedPerSecond.map { Format.count($0) } ?? "-") msg/s (login to last MAIL_END)\n"
            s += "store ack    \(ackRoundTripNs?.line ?? "-")\n"
            if staleMail > 0 { s += "stale mail   \(staleMail) from earlier runs (acknowledged, not counted)\n" }
        default:
            s += "logged in    \(loggedIn)  \(loginsPerSecond.map { Format.count($0) } ?? "-") logins/s\n"
            s += "login time   \(loginLatencyNs?.line ?? "-")\n"
            if let before = serverRSSBeforeBytes, let after = serverRSSAfterBytes {
                s += String(format: "server RSS   %.1f MiB -> %.1f MiB: %.0f bytes per connection", Double(before) / 1048576,
                            Double(after) / 1048576, serverRSSPerConnectionBytes ?? 0)
                if let hold = serverRSSAfterHoldBytes { s += String(format: " (%.1f MiB after the hold)", Double(hold) / 1048576) }
                s += "\n"
            }
        }
        if scenario != "connect" {
            s += "integrity    lost \(lost)  duplicated \(duplicates)  corrupt \(corrupt)  out-of-order \(outOfOrder)  unacknowledged \(unacknowledged)  stored-not-drained \(storedNotDrained)\n"
            s += "cpu          generator \(cpu(generatorCores))  server \(cpu(serverCores))  (over the measured window)\n"
        }
        if failover == true {
            s += "failover     \(serverLost ?? 0) connections lost their server, \(reconnects ?? 0) reconnected"
            if let per = reconnectsPerTarget, targets.count > 1 {
                s += " (" + targets.indices.map { "\(targets[$0]) \(per[$0])" }.joined(separator: ", ") + ")"
            }
            s += ", \(resent ?? 0) sends repeated\n"
            if let t = reconnectTimeNs { s += "reconnect    \(t.line)\n" }
        }
        if scheduleStalls > 0 { s += "stalls       open-loop schedule stalled \(scheduleStalls) times (per-sender in-flight cap reached)\n" }
        for e in firstErrors.prefix(10) { s += "  ! \(e)\n" }
        s += "verdict      \(verdict)\n"
        return s
    }

    func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(self) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}
