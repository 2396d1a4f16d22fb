// The `switchboard admin`, `users` and `top` commands as an operator runs them: the real executable
// against the real server process (TLS, LMDB, loopback).
import Foundation
import Glibc
import Testing
import SwitchboardClient
import SwitchboardIO
import SwitchboardProtocol

/// Runs the switchboard executable; returns its exit status, stdout and stderr.
func runSwitchboardCLI(_ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, out: String, err: String) {
    guard let binary = builtProduct("switchboard") else { throw TestFailure("switchboard executable not found") }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    env.removeValue(forKey: "SWITCHBOARD_PASSWORD")
    for (k, v) in environment { env[k] = v }
    process.environment = env
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
}

@Suite(.serialized) struct AdminCLITests {
    @Test func usersAdminAndTopAgainstARunningAndAStoppedServer() throws {
        let directory = makeTempDirectory("sbcli")
        defer { removeDirectory(directory) }
        // Stopped: accounts are written directly.
        let direct = try runSwitchboardCLI(["users", "add", "alice", "--data", directory, "--password", testPassword,
                                         "--pbkdf2-iterations", "1000"])
        #expect(direct.status == 0, "\(direct.err)")
        #expect(direct.out.contains("created alice"))
        #expect(try runSwitchboardCLI(["users", "add", "bob", "--data", directory, "--pbkdf2-iterations", "1000"],
                                   environment: ["SWITCHBOARD_PASSWORD": testPassword]).status == 0)
        let noServer = try runSwitchboardCLI(["admin", "who", "--data", directory])
        #expect(noServer.status != 0)
        #expect(noServer.err.contains("no server answers"))

        let server = try ServerProcess(directory: directory)
        defer { _ = server.terminate() }
        // Running: through the admin socket (a direct write would be refused; this one goes to the server).
        let carol = try runSwitchboardCLI(["users", "add", "carol", "--data", directory, "--password", "carol's password"])
        #expect(carol.status == 0, "\(carol.err)")
        #expect(carol.out.contains("created carol"))
        let bulk = try runSwitchboardCLI(["users", "bulk-create", "--data", directory, "--count", "2", "--password", testPassword])
        #expect(bulk.status != 0)
        #expect(bulk.err.contains("a server is running"))
        let alice = try server.session()
        try alice.logIn(name: "alice", password: testPassword)
        let bob = try server.session()
        try bob.logIn(name: "bob", password: testPassword)
        let carolSession = try server.session()
        try carolSession.logIn(name: "carol", password: "carol's password")
        try befriend(alice, "alice", bob, "bob")
        let bobID = try userID(of: "bob", in: alice)

        let who = try runSwitchboardCLI(["admin", "who", "--data", directory])
        #expect(who.status == 0, "\(who.err)")
        let whoLines = who.out.split(separator: "\n")
        #expect(whoLines.first?.hasPrefix("NAME") == true)
        #expect(whoLines.dropFirst().map { String($0.prefix { $0 != " " }) } == ["alice", "bob", "carol"])
        #expect(who.out.contains(try Socket.localAddress(alice.connection.fd).description))
        let list = try runSwitchboardCLI(["users", "list", "--data", directory, "--tsv"])
        #expect(list.status == 0, "\(list.err)")
        #expect(list.out.contains("\talice\t1\t0\tyes\n"))

        // top --once over an interval in which alice sends bob exactly 60 messages.
        let topProcess = Process()
        topProcess.executableURL = URL(fileURLWithPath: builtProduct("switchboard")!)
        topProcess.arguments = ["top", "--once", "--interval", "2", "--data", directory]
        let topOut = Pipe()
        topProcess.standardOutput = topOut
        try topProcess.run()
        usleep(400_000)
        for i in 1...60 { try alice.send(to: bobID, messageID: UInt64(i), body: Array("m\(i)".utf8)) }
        var last: UInt64 = 0
        for _ in 1...60 {
            guard case .message(let seq, _, _, _, _)? = try waitForEvent(bob, isMessage) else { Issue.record("lost"); return }
            last = seq
        }
        try bob.acknowledgeDeliveries(through: last)
        let frame = String(decoding: topOut.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        topProcess.waitUntilExit()
        #expect(topProcess.terminationStatus == 0)
        #expect(frame.contains("connections  3 (active 3"), "\(frame)")
        #expect(!frame.contains("\u{1B}["))
        let rows = frame.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        let aliceRow = rows.first { $0.first == "alice" }
        let bobRow = rows.first { $0.first == "bob" }
        #expect(aliceRow?[1] == "60", "\(frame)")
        #expect(bobRow?[2] == "60", "\(frame)")
        #expect(rows.firstIndex { $0.first == "carol" } == nil)  // sent and received nothing
        #expect(frame.contains("relay        p50 ") && !frame.contains("relay        p50 -"), "\(frame)")

        // kick and stats from the command line.
        let kick = try runSwitchboardCLI(["admin", "kick", "carol", "--data", directory, "--reason", "bye"])
        #expect(kick.status == 0 && kick.out.contains("kicked carol"), "\(kick.err)")
        let stats = try runSwitchboardCLI(["admin", "stats", "--data", directory])
        #expect(stats.out.contains("\nrelayed_live 60\n"))
        #expect(stats.out.contains("\nkicks 1\n"))
        let reload = try runSwitchboardCLI(["admin", "reload", "--data", directory])
        #expect(reload.status == 0 && reload.out.hasPrefix("reload: "), "\(reload.out) \(reload.err)")
        // Delete through the server; then stopped, passwd and delete work directly.
        #expect(try runSwitchboardCLI(["users", "delete", "carol", "--data", directory]).out.contains("deleted carol"))
        #expect(server.terminate() == 0)
        #expect(!FileManager.default.fileExists(atPath: directory + "/admin.sock"))
        let passwd = try runSwitchboardCLI(["users", "passwd", "bob", "--data", directory, "--password", "new password", "--pbkdf2-iterations", "1000"])
        #expect(passwd.status == 0 && passwd.out.contains("password of bob changed"), "\(passwd.err)")
        let missing = try runSwitchboardCLI(["users", "delete", "carol", "--data", directory])
        #expect(missing.status != 0 && missing.err.contains("no such user carol"))
        let final = try runSwitchboardCLI(["users", "list", "--data", directory, "--tsv"])
        #expect(final.out.split(separator: "\n").dropFirst().map { $0.split(separator: "\t")[1] } == ["alice", "bob"])
    }
}
