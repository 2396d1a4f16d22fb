// Memory per idle connection and after a TLS handshake storm, on the real `switchboard` executable (its RSS
// alone, from /proc), with real clients on loopback. Memory, not time: stable on a shared machine.
// Bounds (perf/README.md, "Idle memory"): release builds measure ~1.66 KB per idle plaintext connection and
// ~15.7 KB per idle TLS connection; these tests run the debug build and allow slack above that. After the
// storm closes, the server's heap trim (HeapTrimmer) must give most of it back: before it, glibc kept all of
// it (+76 MiB after 5,000 TLS connections closed), after it +21 MiB (mostly dictionaries' capacity and the
// pages LMDB touched).
import Foundation
import Glibc
import SwitchboardClient
import SwitchboardIO
import Testing

private let memoryUsers = 1500
private let memoryPassword = "idle-memory-pw"

/// A server process whose data folder holds `memoryUsers` accounts (bulk-created, 1 PBKDF2 iteration).
private func memoryServer(tls: Bool, extra: [String] = []) throws -> (ServerProcess, String) {
    _ = Sys.raiseFileLimit()
    let directory = makeTempDirectory("sbidlemem")
    guard let binary = builtProduct("switchboard") else { throw ClientError("switchboard executable not found next to the tests") }
    let create = Process()
    create.executableURL = URL(fileURLWithPath: binary)
    create.arguments = ["users", "bulk-create", "--data", directory, "--prefix", "idle", "--count", "\(memoryUsers)",
                        "--password", memoryPassword, "--pbkdf2-iterations", "1"]
    create.standardOutput = FileHandle.nullDevice
    try create.run()
    create.waitUntilExit()
    guard create.terminationStatus == 0 else { throw ClientError("bulk-create failed") }
    let server = try ServerProcess(directory: directory, extraArguments: (tls ? [] : ["--plaintext"])
                                   + ["--max-prelogin-per-address", "100000"] + extra)
    return (server, directory)
}

/// Polls until `condition` holds or `seconds` passed; returns the last RSS read.
private func settle(pid: Int32, seconds: Double, until condition: (Int) -> Bool) -> Int {
    let deadline = Date().addingTimeInterval(seconds)
    var rss = residentKiB(pid: pid)
    while !condition(rss) && Date() < deadline {
        usleep(200_000)
        rss = residentKiB(pid: pid)
    }
    return rss
}

@Suite(.serialized) struct IdleMemoryTests {
    @Test func idlePlaintextConnectionsStayUnderTheirBound() throws {
        let (server, directory) = try memoryServer(tls: false)
        defer { _ = server.terminate(); removeDirectory(directory) }
        let pid = server.process.processIdentifier
        usleep(300_000)
        let before = residentKiB(pid: pid)
        var sessions: [ChatSession] = []
        for i in 0..<memoryUsers {
            let session = try ChatSession(server: server.address, tls: nil)
            try session.logIn(name: "idle\(i)", password: memoryPassword)
            sessions.append(session)
        }
        usleep(500_000)
        let held = residentKiB(pid: pid)
        let perConnection = Double(held - before) * 1024 / Double(memoryUsers)
        // Release: 1,663 B. Debug code is no larger in data, so 2.5 KiB leaves room for allocator noise.
        #expect(perConnection < 2_560, "RSS \(before) -> \(held) KiB: \(Int(perConnection)) B per idle plaintext connection")
        for session in sessions { session.connection.close() }
    }

    @Test func tlsStormGivesItsMemoryBackAfterClosing() throws {
        let (server, directory) = try memoryServer(tls: true)
        defer { _ = server.terminate(); removeDirectory(directory) }
        let pid = server.process.processIdentifier
        usleep(300_000)
        let before = residentKiB(pid: pid)
        var sessions: [ChatSession] = []
        for i in 0..<memoryUsers {
            let session = try ChatSession(server: server.address, tls: server.clientTLS)
            try session.logIn(name: "idle\(i)", password: memoryPassword)
            sessions.append(session)
        }
        usleep(500_000)
        let held = residentKiB(pid: pid)
        let grown = held - before
        let perConnection = Double(grown) * 1024 / Double(memoryUsers)
        // Release: ~15.7 KB, of which 13.6 KB is OpenSSL's own per-connection state (perf/README.md).
        #expect(perConnection < 20_000, "RSS \(before) -> \(held) KiB: \(Int(perConnection)) B per idle TLS connection")
        for session in sessions { session.connection.close() }
        sessions.removeAll()
        // The trim runs ~1 s after the closes calm down. Without it (--heap-trim-churn 0) RSS stays at `held`.
        let limit = before + grown / 2
        let after = settle(pid: pid, seconds: 8) { $0 < limit }
        #expect(after < limit, "RSS \(before) -> \(held) KiB held -> \(after) KiB after all closed (bound \(limit) KiB)")
    }
}
