// `switchboard top`: a live view of the running server over its admin socket, like `redis-cli --stat`
// or `nats top`: connections, messages per second (live and stored), server-side relay latency p50/p99,
// store commits and their latency, loop turns, and the top talkers. Each frame is the difference of two
// samples of `stats` taken `--interval` apart, with the server's `talkers` counted since the previous sample; `--once` prints one frame and exits (scripts).
// Percentiles are bucket upper bounds of the server's log-linear histograms: within a factor of 1.5.
import ArgumentParser
import Glibc
import SwitchboardIO

struct StatsSample {
    var atMs: UInt64
    var counters: [String: UInt64] = [:]
    /// Non-cumulative bucket counts by upper bound (UInt64.max: +Inf).
    var histograms: [String: [UInt64: UInt64]] = [:]
    /// `talkers` rows (sent and received since the previous sample) by connection id.
    var sessions: [String: (name: String, address: String, sent: UInt64, received: UInt64, queued: UInt64)] = [:]

    init(stats: String, who: String, atMs: UInt64) {
        self.atMs = atMs
        for line in stats.split(separator: "\n") {
            let words = line.split(separator: " ")
            if words.first == "histogram", words.count >= 4 {
                var buckets: [UInt64: UInt64] = [:]
                for pair in words.dropFirst(4) {
                    let parts = pair.split(separator: ":")
                    guard parts.count == 2, let count = UInt64(parts[1]) else { continue }
                    buckets[parts[0] == "inf" ? .max : UInt64(parts[0]) ?? .max] = count
                }
                histograms[String(words[1])] = buckets
            } else if words.count == 2, let value = UInt64(words[1]) {
                counters[String(words[0])] = value
            }
        }
        for row in who.split(separator: "\n").dropFirst() {
            let cells = row.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard cells.count >= 10 else { continue }
            sessions[cells[9]] = (cells[0], cells[2], UInt64(cells[7]) ?? 0, UInt64(cells[8]) ?? 0, UInt64(cells[5]) ?? 0)
        }
    }

    func delta(_ name: String, since earlier: StatsSample) -> UInt64 {
        (counters[name] ?? 0) &- (earlier.counters[name] ?? 0)
    }

    /// The upper bound of the bucket holding quantile `q` of what was recorded since `earlier`.
    func quantile(_ name: String, _ q: Double, since earlier: StatsSample) -> UInt64? {
        let now = histograms[name] ?? [:]
        let before = earlier.histograms[name] ?? [:]
        let buckets = now.map { ($0.key, $0.value &- (before[$0.key] ?? 0)) }.filter { $0.1 > 0 }.sorted { $0.0 < $1.0 }
        let total = buckets.reduce(0) { $0 + $1.1 }
        guard total > 0 else { return nil }
        let rank = max(1, UInt64((Double(total) * q).rounded(.up)))
        var seen: UInt64 = 0
        for (bound, count) in buckets {
            seen += count
            if seen >= rank { return bound }
        }
        return buckets.last?.0
    }
}

func formatNs(_ ns: UInt64?) -> String {
    guard let ns else { return "-" }
    if ns == .max { return "> 17 s" }
    if ns < 1_000 { return "\(ns) ns" }
    if ns < 1_000_000 { return trimmed(Double(ns) / 1e3) + " µs" }
    if ns < 1_000_000_000 { return trimmed(Double(ns) / 1e6) + " ms" }
    return trimmed(Double(ns) / 1e9) + " s"
}

func trimmed(_ value: Double) -> String {
    let rounded = (value * 10).rounded() / 10
    return rounded == rounded.rounded() ? String(Int64(rounded)) : String(rounded)
}

func rate(_ count: UInt64, _ seconds: Double) -> String { seconds > 0 ? trimmed(Double(count) / seconds) : "-" }

func formatBytes(_ bytes: UInt64) -> String {
    if bytes < 1024 { return "\(bytes) B" }
    if bytes < 1 << 20 { return trimmed(Double(bytes) / 1024) + " KiB" }
    return trimmed(Double(bytes) / 1_048_576) + " MiB"
}

func formatUptime(_ ms: UInt64) -> String {
    let s = ms / 1000
    if s < 3600 { return "\(s / 60)m\(s % 60)s" }
    return "\(s / 3600)h\((s % 3600) / 60)m"
}

enum TopFrame {
    static func render(_ now: StatsSample, since before: StatsSample, talkers: Int) -> String {
        let seconds = Double(now.atMs - before.atMs) / 1000
        let c = now.counters
        func d(_ name: String) -> UInt64 { now.delta(name, since: before) }
        var lines: [String] = []
        lines.append("switchboard top: up \(formatUptime(c["uptime_ms"] ?? 0)), interval \(trimmed(seconds)) s")
        lines.append("connections  \(c["connections"] ?? 0) (active \(c["connections_active"] ?? 0), pre-login \(c["connections_prelogin"] ?? 0), closing \(c["connections_closing"] ?? 0))  users online \(c["users_online"] ?? 0)  accepted/s \(rate(d("accepted"), seconds))")
        lines.append("messages/s   live \(rate(d("relayed_live"), seconds))  stored \(rate(d("stored_offline"), seconds))  rejected \(rate(d("rejected"), seconds))  duplicates \(rate(d("duplicates_dropped"), seconds))  mail out \(rate(d("mail_delivered"), seconds))")
        lines.append("relay        p50 \(formatNs(now.quantile("relay_latency_ns", 0.5, since: before)))  p99 \(formatNs(now.quantile("relay_latency_ns", 0.99, since: before)))  (server-side: read of SEND to write of DELIVER)")
        let commits = d("store_commits")
        let opsPerCommit = commits > 0 ? trimmed(Double(d("store_ops")) / Double(commits)) : "-"
        lines.append("store        commits/s \(rate(commits, seconds))  ops/commit \(opsPerCommit)  commit p50 \(formatNs(now.quantile("store_commit_ns", 0.5, since: before)))  p99 \(formatNs(now.quantile("store_commit_ns", 0.99, since: before)))  backlog \(formatBytes(c["store_backlog_bytes"] ?? 0))")
        lines.append("loop         turns/s \(rate(d("loop_turns"), seconds))  turn p99 \(formatNs(now.quantile("loop_turn_ns", 0.99, since: before)))")
        lines.append("sessions     logins/s \(rate(d("logins"), seconds))  failed/s \(rate(d("login_failures"), seconds))  lockouts \(c["lockouts"] ?? 0)  slow consumers \(c["slow_consumer_closes"] ?? 0)  kicks \(c["kicks"] ?? 0)")
        lines.append("")
        var rows: [(name: String, sent: UInt64, received: UInt64, address: String, queued: UInt64)] = []
        for (_, session) in now.sessions {
            rows.append((session.name, session.sent, session.received, session.address, session.queued))
        }
        rows.sort { ($0.sent + $0.received, $0.name) > ($1.sent + $1.received, $1.name) }
        var table = ["TOP TALKERS\tSENT\tRECEIVED\tSENT/S\tADDRESS\tQUEUED"]
        for row in rows.prefix(talkers) where row.sent + row.received > 0 {
            table.append("\(row.name)\t\(row.sent)\t\(row.received)\t\(rate(row.sent, seconds))\t\(row.address)\t\(formatBytes(row.queued))")
        }
        if table.count == 1 { table.append("(nobody sent or received in this interval)") }
        return lines.joined(separator: "\n") + "\n" + alignedTable(table.joined(separator: "\n"))
    }
}

struct Top: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Live view of the running server (over its admin socket): connections, msgs/s, relay p50/p99, store commits, top talkers. Ctrl-C quits.")
    @OptionGroup var socket: AdminSocketOptions
    @Option(help: "Seconds between frames.") var interval: Double = 1
    @Option(help: "How many top talkers to show.") var talkers = 10
    @Flag(help: "Print one frame (two samples --interval apart) without clearing the screen, and exit.") var once = false

    func validate() throws {
        guard interval >= 0.05 && interval <= 3600 else { throw ValidationError("--interval must be 0.05...3600 seconds") }
        guard talkers >= 0 && talkers <= 1000 else { throw ValidationError("--talkers must be 0...1000") }
    }

    func run() throws {
        let client: AdminClient
        do { client = try AdminClient(path: socket.path) } catch { try fail("\(error)") }
        func sample() throws -> StatsSample {
            // talkers: the server sends only the busiest sessions, counted since this connection's previous
            // call, so a frame costs the loop O(sessions) integer work and no per-session text.
            let stats = try client.request("stats")
            let talkers = try client.request("talkers \(self.talkers)")
            return StatsSample(stats: stats, who: talkers, atMs: Clock.monotonicMs())
        }
        let clear = isatty(1) == 1 && !once
        var previous = try sample()
        while true {
            usleep(useconds_t(interval * 1_000_000))
            let current: StatsSample
            do { current = try sample() } catch { try fail("\(error)") }
            let frame = TopFrame.render(current, since: previous, talkers: talkers)
            printAndFlush((clear ? "\u{1B}[H\u{1B}[2J" : "") + frame)
            if once { return }
            previous = current
        }
    }
}
