// TLS scenarios on blocking client connections (SwitchboardClient's ChatConnection), one per
// thread at a time: `login-storm` (full vs resumed handshakes per second) and `connect --tls`
// (idle TLS connections held open, server RSS per connection). Blocking clients keep the TLS
// state machine out of the epoll engine; each thread still drives its connections back to back.
import Glibc
import Synchronization
import SwitchboardClient
import SwitchboardIO
import SwitchboardTLS

/// Totals from all threads.
private final class Tally: Sendable {
    let done = Atomic<Int>(0)
    let failures = Atomic<Int>(0)
    let reused = Atomic<Int>(0)
    let firstError = Mutex<String?>(nil)
    let finished = Atomic<Bool>(false)

    func fail(_ message: String) {
        failures.add(1, ordering: .relaxed)
        firstError.withLock { if $0 == nil { $0 = message } }
    }
}

private func clientOptions(_ common: CommonOptions, session: TLSSession?) -> ClientTLSOptions {
    ClientTLSOptions(trust: .certificateAuthority(file: common.ca ?? ""), serverName: nil, session: session)
}

private func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) throws {
    let threads = try (0..<count).map { index in try HelperThread { body(index) } }
    for thread in threads { thread.join() }
}

/// Every second until `finished`: a progress line with the rate so far.
private func progress(_ label: String, tally: Tally, total: Int, start: UInt64) throws -> HelperThread {
    try HelperThread {
        var last = 0
        while !tally.finished.load(ordering: .relaxed) {
            usleep(1_000_000)
            let done = tally.done.load(ordering: .relaxed)
            let elapsed = Double(Clock.monotonicNs() - start) / 1e9
            writeStderr("\(label): \(done)/\(total) in \(String(format1: elapsed)) s, \(done - last)/s, errors \(tally.failures.load(ordering: .relaxed))\n")
            last = done
        }
    }
}

struct LoginStormScenario {
    let common: CommonOptions
    let connections: Int
    let login: Bool

    func run() throws -> Int32 {
        _ = try common.addresses()
        let servers = try common.targetList().entries
        let spread = common.spread
        let password = login ? try common.resolvedPassword() : ""
        let threads = min(common.threads, connections)
        let prefix = common.prefix
        let tlsCommon = common
        // Phase 1 keeps one resumable session per thread and target (a ticket is its server's) for phase 2.
        let sessions = Mutex<[Int: TLSSession]>([:])
        var results: [(String, Double, Int, Int)] = []
        for phase in ["full", "resumed"] {
            let tally = Tally()
            let start = Clock.monotonicNs()
            let ticker = try progress("login-storm \(phase)", tally: tally, total: connections, start: start)
            let resumed = phase == "resumed"
            try runThreads(threads) { thread in
                let share = connections / threads + (thread < connections % threads ? 1 : 0)
                for i in 0..<share {
                    let target = spread.target(ofUser: thread * share + i, count: servers.count)
                    let server = servers[target]
                    let key = thread * ServerList.maxEntries + target
                    let reuse = resumed ? sessions.withLock { $0[key] } : nil
                    do {
                        let connection = try ChatConnection(server: server, agent: "sbload",
                                                            tls: clientOptions(tlsCommon, session: reuse))
                        if connection.tls?.sessionReused == true { tally.reused.add(1, ordering: .relaxed) }
                        if !resumed, sessions.withLock({ $0[key] == nil }), let ticket = connection.resumableTLSSession {
                            sessions.withLock { $0[key] = ticket }
                        }
                        if login {
                            let user = "\(prefix)\((thread * share + i) % max(1, connections))"
                            let session = ChatSession(connection: connection)
                            try session.logIn(name: user, password: password)
                        }
                        connection.close()
                        tally.done.add(1, ordering: .relaxed)
                    } catch {
                        tally.fail("\(error)")
                    }
                }
            }
            let seconds = Double(Clock.monotonicNs() - start) / 1e9
            tally.finished.store(true, ordering: .relaxed)
            ticker.join()
            let done = tally.done.load(ordering: .relaxed)
            results.append((phase, Double(done) / seconds, tally.reused.load(ordering: .relaxed), tally.failures.load(ordering: .relaxed)))
            if resumed && tally.reused.load(ordering: .relaxed) < done {
                writeStderr("warning: only \(tally.reused.load(ordering: .relaxed)) of \(done) phase-2 connections resumed\n")
            }
            if let error = tally.firstError.withLock({ $0 }) { writeStderr("first error (\(phase)): \(error)\n") }
        }
        let what = login ? "TLS connections with login" : "TLS connections (handshake + HELLO/WELCOME)"
        print("login-storm: \(connections) \(what) per phase, \(threads) thread(s), target \(common.target)")
        for (phase, rate, reused, failures) in results {
            print("  \(phase.padding(toLength: 8, withPad: " ", startingAt: 0)) \(String(format1: rate)) per second, \(reused) resumed, \(failures) failed")
        }
        if results.count == 2, results[0].1 > 0 {
            print("  resumed / full: \(String(format1: results[1].1 / results[0].1))x")
        }
        return results.contains { $0.3 > 0 } ? 3 : 0
    }
}

struct TLSConnectScenario {
    let common: CommonOptions
    let connections: Int
    let holdSeconds: Double

    func run() throws -> Int32 {
        _ = try common.addresses()
        let servers = try common.targetList().entries
        let spread = common.spread
        guard common.ca != nil else { throw ValidationErrorText("connect --tls needs --ca FILE") }
        let password = try common.resolvedPassword()
        let limit = Sys.raiseFileLimit()
        guard UInt64(connections) + 64 <= limit else {
            throw ValidationErrorText("--connections \(connections) exceeds this process's file limit \(limit)")
        }
        let threads = min(common.threads, connections)
        let prefix = common.prefix, tlsCommon = common
        let rssBefore = ProcInfo.rssBytes(pids: common.serverPid)
        let held = Mutex<HeldConnections>(HeldConnections())
        let tally = Tally()
        let start = Clock.monotonicNs()
        let ticker = try progress("connect --tls", tally: tally, total: connections, start: start)
        try runThreads(threads) { thread in
            var mine: [ChatConnection] = []
            var i = thread
            while i < connections {
                do {
                    let server = servers[spread.target(ofUser: i, count: servers.count)]
                    let connection = try ChatConnection(server: server, agent: "sbload", tls: clientOptions(tlsCommon, session: nil))
                    try ChatSession(connection: connection).logIn(name: "\(prefix)\(i)", password: password)
                    mine.append(connection)
                    tally.done.add(1, ordering: .relaxed)
                } catch {
                    tally.fail("\(prefix)\(i): \(error)")
                }
                i += threads
            }
            let keep = HeldConnections(list: mine)
            held.withLock { $0.list.append(contentsOf: keep.list) }
        }
        let seconds = Double(Clock.monotonicNs() - start) / 1e9
        tally.finished.store(true, ordering: .relaxed)
        ticker.join()
        let rssAfter = ProcInfo.rssBytes(pids: common.serverPid)
        usleep(useconds_t(holdSeconds * 1_000_000))
        let rssHeld = ProcInfo.rssBytes(pids: common.serverPid)
        let open = tally.done.load(ordering: .relaxed)
        print("connect --tls: \(open) of \(connections) TLS connections logged in and idle, \(String(format1: Double(open) / seconds)) per second")
        if let before = rssBefore, let after = rssHeld ?? rssAfter, open > 0 {
            let perConnection = Double(Int64(after) - Int64(before)) / Double(open)
            print("  server RSS \(before / 1024) KiB -> \(after / 1024) KiB after \(String(format1: holdSeconds)) s: \(Int(perConnection)) bytes per idle TLS connection")
        }
        if let error = tally.firstError.withLock({ $0 }) { writeStderr("first error: \(error)\n") }
        held.withLock { for c in $0.list { c.close() } }
        return tally.failures.load(ordering: .relaxed) > 0 ? 3 : 0
    }
}

/// Connections a thread opened, handed to the main thread once that thread is done with them.
struct HeldConnections: @unchecked Sendable {
    var list: [ChatConnection] = []
}

struct ValidationErrorText: Error, CustomStringConvertible {
    let description: String
    init(_ text: String) { description = text }
}

extension String {
    init(format1 value: Double) {
        let scaled = (value * 10).rounded() / 10
        self = "\(scaled)"
    }
}
