// The clients with several servers, against ordinary single-node servers on loopback (no cluster):
// `sbchat SUBCOMMAND --server DEAD,LIVE` works through the second and says nothing about the first,
// a server passed over for a TLS refusal is still reported, all dead is exit 3 naming each server;
// `sbload --target A,B` spreads connections as --spread says, checked against each server's own
// `who` (cross: each pair's ends on different servers) and by a relay run that can only pass when
// both ends of every pair share a server (same). The terminal client's first login walks the list
// the same way, but a server that refuses the login itself ends the walk.
import Foundation
import Glibc
import SwitchboardClient
import SwitchboardIO
import SwitchboardTUI
import Testing

/// Runs a built product with `environment` added to this process's, stdin from /dev/null.
private func runProduct(_ name: String, _ arguments: [String], environment extra: [String: String] = [:],
                        timeout: TimeInterval = 60) throws -> (status: Int32, out: String, err: String) {
    guard let binary = builtProduct(name) else { throw TestFailure("\(name) executable not found next to the tests") }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = arguments
    var environment = ProcessInfo.processInfo.environment
    for key in environment.keys where key.hasPrefix("SWITCHBOARD_") { environment.removeValue(forKey: key) }
    for (k, v) in extra { environment[k] = v }
    process.environment = environment
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    try process.run()
    nonisolated(unsafe) var errData = Data()
    let reader = Thread { errData = err.fileHandleForReading.readDataToEndOfFile() }
    reader.start()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning { process.terminate() }
    process.waitUntilExit()
    while !reader.isFinished { usleep(1000) }
    return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
}

/// A loopback HOST:PORT nobody listens on (bound once for a free port, then closed).
private func deadAddress() throws -> String {
    let fd = try Socket.listen(on: try SocketAddress(parsing: "127.0.0.1:0"))
    let address = try Socket.localAddress(fd).description
    Sys.close(fd)
    return address
}

/// The user names a server's admin socket lists as online.
private func online(_ dataDirectory: String) throws -> Set<String> {
    let answer = try adminRequest(dataDirectory + "/admin.sock", "who")
    guard answer.ok else { throw TestFailure("who: \(answer.text)") }
    return Set(answer.text.split(separator: "\n").dropFirst().compactMap { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }).first.map(String.init) })
}

@Suite(.serialized) struct MultiServerClientTests {
    @Test(.timeLimit(.minutes(2)))
    func sbchatUsesTheFirstServerThatAnswersAndNamesEveryServerWhenNoneDoes() throws {
        let live = try InProcessServer()
        let other = try InProcessServer()  // its own development CA: fails verification against live's
        let home = makeTempDirectory("sb-multiserver")
        defer { removeDirectory(home) }
        let dead = try deadAddress(), dead2 = try deadAddress()
        let env = ["SWITCHBOARD_PASSWORD": testPassword, "SWITCHBOARD_CA": live.caFile!, "XDG_CONFIG_HOME": home + "/config",
                   "SWITCHBOARD_DATA_HOME": home + "/data", "HOME": home]

        let registered = try runProduct("sbchat", ["register", "--user", "alice", "--server", "\(dead),\(live.address)"], environment: env)
        #expect(registered.status == 0 && registered.out == "registered alice\n", "\(registered)")
        #expect(registered.err.isEmpty, "a dead first server is not worth a word: \(registered.err)")
        let contacts = try runProduct("sbchat", ["contacts", "--user", "alice"], environment: env.merging(
            ["SWITCHBOARD_SERVER": "\(dead), \(live.address)"]) { $1 })
        #expect(contacts.status == 0 && contacts.out.hasPrefix("logged in as alice from 127.0.0.1"), "\(contacts)")
        #expect(contacts.err.isEmpty, "\(contacts.err)")

        // A server that fails TLS verification is passed over too, but that is reported.
        let refused = try runProduct("sbchat", ["contacts", "--user", "alice", "--server", "\(other.address),\(live.address)"],
                                     environment: env)
        #expect(refused.status == 0, "\(refused)")
        #expect(refused.err.hasPrefix("sbchat: warning: passed over \(other.address): ") && refused.err.contains("(used \(live.address))"),
                "\(refused.err)")

        // All dead: one line naming each and why, exit 3.
        let none = try runProduct("sbchat", ["contacts", "--user", "alice", "--server", "\(dead),\(dead2)"], environment: env)
        #expect(none.status == 3 && none.out.isEmpty, "\(none)")
        #expect(none.err == "sbchat: cannot reach any of the 2 servers: \(dead): connect failed: Connection refused; "
            + "\(dead2): connect failed: Connection refused\n", "\(none.err)")
        // A bad list is a usage error (2) naming the entry.
        let bad = try runProduct("sbchat", ["contacts", "--user", "alice", "--server", "\(live.address),\(live.address)"], environment: env)
        #expect(bad.status == 2 && bad.err.contains("server 2 '\(live.address)' repeats server 1"), "\(bad)")
    }

    @Test(.timeLimit(.minutes(1)))
    func theTerminalClientsLoginPassesOverDeadServersButStopsAtARefusal() throws {
        let a = try InProcessServer(tls: false), b = try InProcessServer(tls: false)
        _ = try a.user("alice")
        let onB = try b.session()
        try onB.register(name: "alice", password: "another password")
        let dead = try deadAddress()
        func app(_ list: String, password: String) throws -> ChatApp {
            ChatApp(configuration: ChatAppConfiguration(servers: try ServerList(parsing: list), user: "alice", password: password) {
                try ChatSession(server: $0)
            })
        }
        // Dead first: the login lands on the second, and the dead one is reported as passed over.
        let first = try app("\(dead),\(a.address)", password: testPassword)
        let passedOver = try first.logIn()
        #expect(first.serverIndex == 1 && first.connection?.server == a.address && first.model.server == a.address)
        #expect(passedOver.map(\.server) == [dead] && !passedOver[0].isSecurityRefusal)
        first.connection?.close()
        // A wrong password on A is the account's answer, not A's absence: B (where it would work) is not tried.
        let refused = try app("\(a.address),\(b.address)", password: "another password")
        do {
            try refused.logIn()
            Issue.record("logged in on \(refused.connection?.server ?? "?") after A refused the password")
        } catch let error as ClientError {
            #expect(error.code != nil && refused.serverIndex == 0 && refused.connection == nil, "\(error)")
        }
        // Every server dead: AllServersFailed naming each.
        let none = try app("\(dead),\(try deadAddress())", password: testPassword)
        #expect(throws: AllServersFailed.self) { try none.logIn() }
    }

    @Test(.timeLimit(.minutes(2)))
    func sbloadSpreadsConnectionsOverItsTargets() throws {
        let password = "load-password-1"
        var directories: [String] = []
        var servers: [ServerProcess] = []
        defer { for d in directories { removeDirectory(d) } }
        for _ in 0..<2 {
            let directory = makeTempDirectory("sb-multiserver-load")
            directories.append(directory)
            let created = try runSwitchboard(["users", "bulk-create", "--data", directory, "--prefix", "load", "--count", "8",
                                              "--password", password, "--pair-contacts"])
            #expect(created.status == 0, "\(created)")
            servers.append(try ServerProcess(directory: directory, extraArguments: ["--plaintext"]))
        }
        let targets = servers.map(\.address).joined(separator: ",")

        guard let sbload = builtProduct("sbload") else { throw TestFailure("sbload executable not found") }
        /// Runs `sbload connect` with `spread`, reads each server's `who` while the connections are held.
        func connectRun(_ spread: String) throws -> (online: [Set<String>], report: [String: Any], status: Int32) {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: sbload)
            process.arguments = ["connect", "--target", targets, "--connections", "8", "--hold", "1.5",
                                 "--password", password, "--json"] + (spread.isEmpty ? [] : ["--spread", spread])
            let out = Pipe()
            process.standardOutput = out
            process.standardError = FileHandle.nullDevice
            try process.run()
            let seen = try eventually(timeoutMs: 10_000) { try online(directories[0]).count == 4 && online(directories[1]).count == 4 }
            #expect(seen, "not every connection showed up in the servers' who")
            let sets = [try online(directories[0]), try online(directories[1])]
            let json = out.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            let report = try JSONSerialization.jsonObject(with: json) as? [String: Any] ?? [:]
            // Gone before the next run (its who must not see these).
            _ = eventually(timeoutMs: 5_000) { ((try? online(directories[0]).isEmpty) ?? false) && ((try? online(directories[1]).isEmpty) ?? false) }
            return (sets, report, process.terminationStatus)
        }

        // cross: pair k's sender on server k % 2, its receiver on the other.
        let cross = try connectRun("cross")
        #expect(cross.status == 0)
        #expect(cross.online == [["load0", "load3", "load4", "load7"], ["load1", "load2", "load5", "load6"]])
        #expect(cross.report["targets"] as? [String] == servers.map(\.address))
        #expect(cross.report["connectionsPerTarget"] as? [Int] == [4, 4] && cross.report["loggedInPerTarget"] as? [Int] == [4, 4],
                "\(cross.report)")
        #expect(cross.report["spread"] as? String == "cross")
        // The default, round-robin: connection u on server u % 2.
        let roundRobin = try connectRun("")
        #expect(roundRobin.status == 0 && roundRobin.report["spread"] as? String == "round-robin")
        #expect(roundRobin.online == [["load0", "load2", "load4", "load6"], ["load1", "load3", "load5", "load7"]])

        // same: both ends of each pair on one server. Independent servers deliver live only then, so a
        // passing relay run (everything delivered and acknowledged) shows it.
        let relay = try runProduct("sbload", ["relay", "--target", targets, "--spread", "same", "--pairs", "4", "--duration", "0.5",
                                              "--warmup", "0", "--password", password, "--json"])
        #expect(relay.status == 0, "\(relay.err)")
        let relayReport = try JSONSerialization.jsonObject(with: Data(relay.out.utf8)) as? [String: Any] ?? [:]
        #expect(relayReport["loggedInPerTarget"] as? [Int] == [4, 4] && relayReport["verdict"] as? String == "PASS")
        #expect((relayReport["received"] as? Int ?? 0) > 0)
        #expect(relay.err.contains("targets      spread same:  \(servers[0].address) 4 connections (4 logged in)  "
            + "\(servers[1].address) 4 connections (4 logged in)"), "\(relay.err)")

        // cross needs two targets.
        let one = try runProduct("sbload", ["connect", "--target", servers[0].address, "--spread", "cross", "--password", password])
        #expect(one.status != 0 && one.err.contains("--spread cross needs at least two targets"), "\(one)")
    }
}
