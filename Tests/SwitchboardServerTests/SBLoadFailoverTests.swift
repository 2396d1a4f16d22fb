// `sbload relay --failover` against a real cluster: a 3-server NATS cluster, two `switchboard serve
// --cluster` nodes with TLS, users bulk-created through the cluster log, `--spread cross` (every message
// crosses nodes), and node n0 killed with SIGKILL two seconds into the run. Every connection that was on
// n0 (half the senders, half the receivers) must reconnect to n1, log in again (TLS), and its sender must
// resend what was not acknowledged with the same ids; the run must PASS with nothing lost or duplicated.
// Skipped, with a message, only when nats-server is not installed (`make test` installs it).
import Foundation
import Glibc
import NATSTestHarness
import SwitchboardIO
import Testing

@Suite(.serialized) struct SBLoadFailoverTests {
    @Test(.enabled(if: natsServerPath() != nil, "nats-server is not installed (make test installs it)"))
    func relayFailsOverWhenANodeIsKilled() throws {
        let cluster = try TestCluster(name: "sbloadfailover", basePort: 28000, nodes: 2)
        let password = "failover-password-1"
        let created = try runSwitchboard(["users", "bulk-create", "--cluster", cluster.nats.urls, "--prefix", "fo", "--count", "40",
                                          "--password", password, "--pair-contacts"])
        #expect(created.status == 0, "\(created)")
        guard let sbload = builtProduct("sbload") else { throw TestFailure("sbload executable not found") }
        let targets = cluster.nodes.map(\.address).joined(separator: ",")
        let directory = makeTempDirectory("sbload-failover")
        defer { removeDirectory(directory) }
        let errPath = directory + "/stderr.txt"
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        // The accounts reach the nodes through the log within milliseconds: a login failure here would
        // fail the run before the kill, so wait until both nodes know the last account.
        for node in 0..<2 {
            _ = try eventually(5_000) { () -> Bool in
                let session = try cluster.session(node)
                try session.logIn(name: "fo39", password: password)
                session.connection.close()
                return true
            }
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: sbload)
        process.arguments = ["relay", "--target", targets, "--spread", "cross", "--failover", "--pairs", "20", "--window", "16",
                             "--duration", "6", "--warmup", "0.5", "--drain", "8", "--prefix", "fo", "--password", password,
                             "--tls", "--ca", cluster.caFile, "--json"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle(forWritingAtPath: errPath)
        process.standardInput = FileHandle.nullDevice
        let start = Date()
        try process.run()
        // The run starts once 40 connections have logged in (well under a second here): kill n0 about
        // two seconds into the sending.
        usleep(2_500_000)
        cluster.nodes[0].kill9()
        let killedAt = Date().timeIntervalSince(start)
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        let deadline = Date().addingTimeInterval(30)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        let stderr = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        let report = try JSONSerialization.jsonObject(with: outData) as? [String: Any] ?? [:]
        func n(_ key: String) -> Int { (report[key] as? NSNumber)?.intValue ?? -1 }
        let reconnectTime = report["reconnectTimeNs"] as? [String: Any]
        func ms(_ v: Any?) -> String { String(format: "%.1f ms", Double((v as? NSNumber)?.intValue ?? 0) / 1e6) }
        print("sbload failover: n0 killed at \(String(format: "%.1f", killedAt)) s; sent \(n("sent")) received \(n("received"))"
              + " lost \(n("lost")) duplicates \(n("duplicates")) serverLost \(n("serverLost")) reconnects \(n("reconnects"))"
              + " \(report["reconnectsPerTarget"] ?? "-") resent \(n("resent"))"
              + " reconnect time p50 \(ms(reconnectTime?["p50"])) max \(ms(reconnectTime?["max"])); \(report["verdict"] ?? "no report")")
        for line in (report["firstErrors"] as? [String] ?? []) { print("  sbload: \(line)") }
        // The delivery guarantee after a crash is at-least-once (README "Delivery guarantees", "Running a cluster"):
        // deliveries n0 made and that were not acknowledged, or whose answer died with n0, are stored as mail by
        // the senders' node once n0 is declared gone, and the receivers that fail over get them again as MAIL (the
        // client library and sbchat hide a repeat; sbload counts it). At most one window per receiver that was on
        // n0; nothing else may fail the run, and nothing may be lost.
        let duplicates = n("duplicates")
        #expect(duplicates >= 0 && duplicates <= 10 * 16, "more duplicates than the forwards in flight to n0")
        if duplicates == 0 {
            #expect(process.terminationStatus == 0, "\(stderr.suffix(4_000))\n\(cluster.logs())")
            #expect(report["passed"] as? Bool == true, "\(report["verdict"] ?? stderr.suffix(4_000))")
        } else {
            #expect(report["verdict"] as? String == "FAIL: \(duplicates) duplicated", "nothing but the repeats after the crash may fail the run")
        }
        // 10 senders and 10 receivers were on n0 (cross: pair k's sender on k mod 2, its receiver on the other).
        #expect(n("serverLost") == 20)
        #expect(n("reconnects") == 20)
        #expect((report["reconnectsPerTarget"] as? [NSNumber])?.map(\.intValue) == [0, 20])
        #expect(n("lost") == 0)
        #expect(n("corrupt") == 0)
        #expect(n("resent") > 0, "the senders on n0 had messages in flight when it died")
        #expect(n("sent") > 1_000)
    }
}
