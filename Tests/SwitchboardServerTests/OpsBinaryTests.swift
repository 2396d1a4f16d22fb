// Operating the real executable: every `serve` flag round-trips through a config file (the flag list is
// taken from the binary itself, so a new flag without a config key fails here); SIGHUP changes a limit a
// client can observe and the log says what changed and what waits for a restart; READY=1 / STOPPING=1 reach
// a fake NOTIFY_SOCKET and the JSON log parses; a backup taken during a load of sends holds every mail
// committed before it started; `data check` finds damage; the systemd unit passes `systemd-analyze verify`;
// `make install` stages every file.
import Foundation
import Glibc
import SwitchboardClient
import SwitchboardIO
import SwitchboardProtocol
@_spi(Testing) import SwitchboardStore
import SwitchboardTLS
import Testing

/// Runs `switchboard ARGS`, returning (status, stdout, stderr).
func runSwitchboard(_ arguments: [String], timeout: TimeInterval = 60) throws -> (status: Int32, out: String, err: String) {
    guard let binary = builtProduct("switchboard") else { throw ClientError("switchboard executable not found next to the tests") }
    return try runProgram(binary, arguments, timeout: timeout)
}

func runProgram(_ program: String, _ arguments: [String], timeout: TimeInterval = 60,
                directory: String? = nil) throws -> (status: Int32, out: String, err: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: program)
    process.arguments = arguments
    if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = FileHandle.nullDevice
    try process.run()
    // Read both pipes while it runs (a full pipe would block the child).
    nonisolated(unsafe) var errData = Data()
    let reader = Thread { errData = err.fileHandleForReading.readDataToEndOfFile() }
    reader.start()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning { process.terminate() }
    process.waitUntilExit()
    while reader.isExecuting || !reader.isFinished { usleep(1000) }
    return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
}

/// `switchboard serve ARGS` as a child with extra environment and its stderr in a file.
final class ServeChild {
    let process = Process()
    let stderrPath: String
    private(set) var address = ""
    private let output = Pipe()

    init(_ arguments: [String], environment extra: [String: String] = [:], stderrPath: String) throws {
        guard let binary = builtProduct("switchboard") else { throw ClientError("switchboard executable not found") }
        self.stderrPath = stderrPath
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["serve"] + arguments
        var environment = ProcessInfo.processInfo.environment
        environment.removeValue(forKey: "NOTIFY_SOCKET")
        for (k, v) in extra { environment[k] = v }
        process.environment = environment
        process.standardOutput = output
        _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.standardError = FileHandle(forWritingAtPath: stderrPath)
        try process.run()
        address = try listeningAddress(from: output, log: self.log)
    }

    var log: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    /// Waits until the log contains `text` (or `timeoutMs` passes).
    func waitForLog(_ text: String, timeoutMs: UInt64 = 10_000) -> Bool {
        let deadline = Clock.monotonicMs() + timeoutMs
        while Clock.monotonicMs() < deadline {
            if log.contains(text) { return true }
            usleep(20_000)
        }
        return false
    }

    func signal(_ number: Int32) { Glibc.kill(process.processIdentifier, number) }

    func terminate() -> Int32 {
        signal(SIGTERM)
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            signal(SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// A TOML value as `config print` writes it.
private func literal(_ value: String) -> String { "\"" + value + "\"" }

/// `key = value` lines of `config print` (commented-out keys map to nil).
private func printedKeys(_ text: String) -> [String: String?] {
    var keys: [String: String?] = [:]
    for line in text.split(separator: "\n") {
        if line.hasPrefix("# "), let eq = line.range(of: " = ") {
            let key = String(line.dropFirst(2)[..<eq.lowerBound])
            if !key.contains(" ") { keys[key] = .some(nil) }
            continue
        }
        guard !line.hasPrefix("#"), let eq = line.range(of: " = ") else { continue }
        var value = String(line[eq.upperBound...])
        if let comment = value.range(of: "  # ") { value = String(value[..<comment.lowerBound]) }
        keys[String(line[..<eq.lowerBound])] = .some(value)
    }
    return keys
}

@Suite(.serialized) struct OpsBinaryTests {
    /// Every option and flag of `serve` (from its --experimental-dump-help), as config keys.
    func serveFlags() throws -> [String] {
        let dump = try runSwitchboard(["serve", "--experimental-dump-help"])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(dump.out.utf8)) as? [String: Any])
        let command = try #require(json["command"] as? [String: Any])
        let arguments = try #require(command["arguments"] as? [[String: Any]])
        var names: [String] = []
        for argument in arguments {
            guard let preferred = argument["preferredName"] as? [String: Any], preferred["kind"] as? String == "long",
                  let name = preferred["name"] as? String else { continue }
            if name == "help" || name == "config" || name.hasPrefix("no-") { continue }
            names.append(name)
        }
        return names
    }

    @Test func everyServeFlagRoundTripsThroughAConfigFileAndFlagsOverrideIt() throws {
        let flags = try serveFlags()
        #expect(flags.count >= 34, "\(flags)")
        let defaults = printedKeys(try runSwitchboard(["config", "print"]).out)
        for flag in flags { #expect(defaults[flag] != nil, "--\(flag) has no config key (add it to ServeSettings.keys)") }
        for key in defaults.keys { #expect(flags.contains(key), "config key \(key) has no serve flag") }

        // Two values per key, each different from the default: A in the file, B on the command line.
        func values(_ key: String) -> (a: String, b: String, flagB: [String]) {
            switch key {
            case "listen": return (literal("127.0.0.1:24101"), literal("127.0.0.1:24102"), ["--listen", "127.0.0.1:24102"])
            case "data": return (literal("/tmp/opsconfig/rt-a"), literal("/tmp/opsconfig/rt-b"), ["--data", "/tmp/opsconfig/rt-b"])
            case "log-level": return (literal("debug"), literal("warning"), ["--log-level", "warning"])
            case "log-format": return (literal("json"), literal("text"), ["--log-format", "text"])
            case "plaintext": return ("true", "false", ["--no-plaintext"])
            case "admin": return ("false", "true", ["--admin"])
            case "metrics": return (literal("127.0.0.1:24103"), literal("127.0.0.1:24104"), ["--metrics", "127.0.0.1:24104"])
            case "cluster": return (literal("nats://127.0.0.1:24105"), literal("nats://127.0.0.1:24106"), ["--cluster", "nats://127.0.0.1:24106"])
            case "node": return (literal("node-a"), literal("node-b"), ["--node", "node-b"])
            case "cluster-replicas": return ("2", "1", ["--cluster-replicas", "1"])
            default:
                if let text = defaults[key] ?? nil, let number = Int64(text) {
                    return (String(number * 2), String(number * 3), ["--\(key)", String(number * 3)])
                }
                // Unset optional keys (paths) and any other string.
                return (literal("/tmp/opsconfig/\(key)-a"), literal("/tmp/opsconfig/\(key)-b"), ["--\(key)", "/tmp/opsconfig/\(key)-b"])
            }
        }
        let directory = makeTempDirectory("sbconfig")
        defer { removeDirectory(directory) }
        let file = directory + "/all.toml"
        var text = "# every key of serve, generated from its flags\n"
        var flagArguments: [String] = []
        for flag in flags {
            let v = values(flag)
            text += "\(flag) = \(v.a)\n"
            flagArguments += v.flagB
        }
        try text.write(toFile: file, atomically: true, encoding: .utf8)

        let fromFile = try runSwitchboard(["config", "print", "--config", file])
        #expect(fromFile.status == 0, "\(fromFile.err)")
        let fileKeys = printedKeys(fromFile.out)
        for flag in flags { #expect(fileKeys[flag] == .some(values(flag).a), "\(flag): file said \(values(flag).a), print says \(String(describing: fileKeys[flag]))") }

        let overridden = try runSwitchboard(["config", "print", "--config", file] + flagArguments)
        #expect(overridden.status == 0, "\(overridden.err)")
        let flagKeys = printedKeys(overridden.out)
        for flag in flags { #expect(flagKeys[flag] == .some(values(flag).b), "\(flag): flag said \(values(flag).b), print says \(String(describing: flagKeys[flag]))") }

        // The printed configuration is itself a valid config file meaning the same.
        let printed = directory + "/printed.toml"
        try overridden.out.write(toFile: printed, atomically: true, encoding: .utf8)
        let again = try runSwitchboard(["config", "print", "--config", printed])
        #expect(printedKeys(again.out) == flagKeys)
        #expect(try runSwitchboard(["config", "check", "--skip-tls", printed]).status == 0)
    }

    @Test func configCheckNamesKeyAndLineAndExits2() throws {
        let directory = makeTempDirectory("sbconfig")
        defer { removeDirectory(directory) }
        let file = directory + "/bad.toml"
        try "# comment\nplaintext = true\n\nmax-prelogin-per-address = -3\n".write(toFile: file, atomically: true, encoding: .utf8)
        let result = try runSwitchboard(["config", "check", file])
        #expect(result.status == 2)
        #expect(result.err.contains("\(file):4: key 'max-prelogin-per-address': -3 is out of range"), "\(result.err)")
        // serve refuses the same file with the same message and does not start.
        let serve = try runSwitchboard(["serve", "--config", file, "--data", directory + "/data"], timeout: 20)
        #expect(serve.status != 0)
        #expect(serve.err.contains("\(file):4: key 'max-prelogin-per-address'"), "\(serve.err)")
        // A certificate that does not load is caught by check, naming the TLS keys.
        try "tls-cert = \"\(file)\"\ntls-key = \"\(file)\"\n".write(toFile: file, atomically: true, encoding: .utf8)
        let tls = try runSwitchboard(["config", "check", file])
        #expect(tls.status == 2)
        #expect(tls.err.contains("tls-cert"), "\(tls.err)")
    }

    /// Opens `count` connections that do not log in; returns them and the error codes of each (nil = accepted).
    func preLoginConnections(_ address: String, count: Int) throws -> (sockets: [RawSocket], refusals: Int) {
        var sockets: [RawSocket] = []
        var refusals = 0
        for _ in 0..<count {
            let socket = try RawSocket(address)
            // A refused connection gets one ERROR frame and a close at once; an accepted one stays open.
            let (bytes, closed) = socket.readUntilClosed(timeoutMs: 300)
            if closed {
                if errorCodes(in: RawSocket.serverFrames(bytes)) == [ErrorCode.serverBusy.rawValue] { refusals += 1 }
            } else {
                sockets.append(socket)
            }
        }
        return (sockets, refusals)
    }

    @Test(.timeLimit(.minutes(2)))
    func sighupChangesALimitLiveAndLogsWhatChangedAndWhatNeedsARestart() throws {
        let directory = makeTempDirectory("sbreload")
        defer { removeDirectory(directory) }
        let file = directory + "/switchboard.toml"
        func write(_ body: String) throws {
            try ("listen = \"127.0.0.1:0\"\ndata = \"\(directory)/data\"\nplaintext = true\npbkdf2-iterations = 1000\n" + body)
                .write(toFile: file, atomically: true, encoding: .utf8)
        }
        try write("max-prelogin-per-address = 3\n")
        // log-level comes from a flag: a reload keeps flags over the file.
        let server = try ServeChild(["--config", file, "--log-level", "notice"], stderrPath: directory + "/server.log")
        do {
            let before = try preLoginConnections(server.address, count: 4)
            #expect(before.sockets.count == 3 && before.refusals == 1)
        }
        usleep(200_000)  // the server sees the three close

        try write("max-prelogin-per-address = 1\nmax-frame = 4096\nlog-level = \"debug\"\n")
        server.signal(SIGHUP)
        #expect(server.waitForLog("configuration reloaded"), "\(server.log)")
        let log = server.log
        #expect(log.contains("max-prelogin-per-address 3 -> 1"), "\(log)")
        #expect(log.contains("needs-restart=max-frame 65536 -> 4096"), "\(log)")
        #expect(!log.contains("log-level"), "the --log-level flag overrides the file, also at reload: \(log)")

        do {
            let after = try preLoginConnections(server.address, count: 3)
            #expect(after.sockets.count == 1 && after.refusals == 2, "the new per-address limit is in force")
            // max-frame waits for a restart: WELCOME still announces the running value.
            let first = try #require(after.sockets.first)
            first.write(helloFrame())
            let (bytes, _) = first.readUntilClosed(timeoutMs: 500)
            let welcome = RawSocket.serverFrames(bytes).compactMap { frame -> ServerLimits? in
                if case .welcome(let w) = frame { return w.limits } else { return nil }
            }.first
            #expect(welcome?.maxFrameBytes == 65_536)
        }

        // A broken file changes nothing and says where it is broken.
        try write("max-prelogin-per-address = \"many\"\n")
        server.signal(SIGHUP)
        #expect(server.waitForLog("reload refused"), "\(server.log)")
        #expect(server.log.contains("switchboard.toml:5: key 'max-prelogin-per-address': expected an integer"), "\(server.log)")
        usleep(200_000)
        do {
            let still = try preLoginConnections(server.address, count: 2)
            #expect(still.sockets.count == 1 && still.refusals == 1)
        }
        #expect(server.terminate() == 0)
    }

    @Test(.timeLimit(.minutes(1)))
    func sighupChangesTheLogLevelFromTheFile() throws {
        let directory = makeTempDirectory("sbloglevel")
        defer { removeDirectory(directory) }
        let file = directory + "/switchboard.toml"
        func write(_ level: String) throws {
            try "listen = \"127.0.0.1:0\"\ndata = \"\(directory)/data\"\nplaintext = true\nlog-level = \"\(level)\"\n"
                .write(toFile: file, atomically: true, encoding: .utf8)
        }
        func sendGarbage() {
            let socket = try? RawSocket(server.address)
            socket?.write([0xFF, 0xFF, 0xFF, 0xFF, 0x01])
            _ = socket?.readUntilClosed(timeoutMs: 2000)
        }
        try write("notice")
        let server = try ServeChild(["--config", file], stderrPath: directory + "/server.log")
        sendGarbage()
        usleep(100_000)
        #expect(!server.log.contains("protocol error"), "debug logged at notice: \(server.log)")
        try write("debug")
        server.signal(SIGHUP)
        #expect(server.waitForLog("configuration reloaded"), "\(server.log)")
        #expect(server.log.contains("applied=log-level \"notice\" -> \"debug\""), "\(server.log)")
        sendGarbage()
        #expect(server.waitForLog("protocol error"), "debug not logged after the reload: \(server.log)")
        #expect(server.terminate() == 0)
    }

    @Test(.timeLimit(.minutes(2)))
    func notifySocketGetsReadyAfterListenAndStoppingAtShutdownWithJSONLogs() throws {
        let directory = makeTempDirectory("sbnotify")
        defer { removeDirectory(directory) }
        let socketPath = directory + "/notify.sock"
        let receiver = try UnixDatagramReceiver(path: socketPath)
        let server = try ServeChild(["--listen", "127.0.0.1:0", "--data", directory + "/data", "--plaintext",
                                     "--log-format", "json", "--log-level", "info"],
                                    environment: ["NOTIFY_SOCKET": socketPath], stderrPath: directory + "/server.log")
        let ready = receiver.receive(timeoutMs: 10_000)
        #expect(ready?.hasPrefix("READY=1\n") == true, "\(ready ?? "nothing")")
        #expect(ready?.contains("STATUS=listening on \(server.address)") == true)
        // Listening by then: a client gets in at once.
        let session = try ChatSession(server: server.address, tls: nil)
        try session.register(name: "ready", password: testPassword)
        session.connection.close()
        server.signal(SIGTERM)
        #expect(receiver.receive(timeoutMs: 10_000) == "STOPPING=1")
        server.process.waitUntilExit()
        #expect(server.process.terminationStatus == 0)

        let lines = server.log.split(separator: "\n")
        #expect(lines.count >= 3, "\(server.log)")
        var messages: [String] = []
        for line in lines {
            let object = try #require(try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not JSON: \(line)")
            #expect(object["ts"] is String && object["level"] is String && object["label"] as? String == "switchboard")
            #expect(object["metadata"] is [String: Any])
            messages.append(object["message"] as? String ?? "")
        }
        #expect(messages.contains { $0.hasPrefix("listening WITHOUT TLS") })
        #expect(messages.contains("stopped"))
    }

    @Test(.timeLimit(.minutes(3)))
    func backupDuringSendsHoldsEveryMailCommittedBeforeItStarted() throws {
        let directory = makeTempDirectory("sbbackup")
        defer { removeDirectory(directory) }
        let server = try ServerProcess(directory: directory + "/data")
        let friends = try Friends(server.session)
        try friends.bobGoesOffline()
        let aliceBox = UncheckedBox(friends.alice), bobID = friends.bobID

        // Load: alice keeps sending to offline bob (stored mail) from a thread, 16 in flight; each id is
        // recorded with the time its SEND_ACK (= its commit) arrived.
        final class Record: @unchecked Sendable {
            let lock = NSLock()
            var acked: [(id: UInt64, atMs: UInt64)] = []
            var stop = false
            var failure: String?
        }
        let record = Record()
        let body = [UInt8](repeating: 0x61, count: 512)
        let sender = Thread {
            let alice = aliceBox.value
            var next: UInt64 = 1
            var inFlight: [UInt64] = []
            while next <= 20_000 {
                record.lock.lock(); let stop = record.stop; record.lock.unlock()
                if stop { break }
                do {
                    while inFlight.count < 16 {
                        alice.queueSend(to: bobID, messageID: next, body: body)
                        inFlight.append(next)
                        next += 1
                    }
                    try alice.flush()
                    let id = inFlight.removeFirst()
                    guard try alice.awaitSendOutcome(id) == .storedOffline else { record.failure = "message \(id) not stored"; break }
                    record.lock.lock(); record.acked.append((id, Clock.monotonicMs())); record.lock.unlock()
                } catch {
                    record.failure = "\(error)"
                    break
                }
            }
            record.lock.lock(); record.stop = true; record.lock.unlock()
        }
        sender.start()
        // Let some mail commit first.
        while true {
            record.lock.lock(); let n = record.acked.count, done = record.stop; record.lock.unlock()
            if n >= 300 || done { break }
            usleep(10_000)
        }
        let destination = directory + "/backup"
        let startedAt = Clock.monotonicMs()
        let backup = try runSwitchboard(["backup", destination, "--data", directory + "/data"])
        record.lock.lock(); let ackedWhileCopying = record.acked.filter { $0.atMs > startedAt }.count; record.stop = true; record.lock.unlock()
        while !sender.isFinished { usleep(10_000) }
        #expect(record.failure == nil, "\(record.failure ?? "")")
        #expect(backup.status == 0, "\(backup.out)\n\(backup.err)")
        #expect(backup.out.contains("schema version 2"), "\(backup.out)")
        let committedBefore = Set(record.acked.filter { $0.atMs <= startedAt }.map(\.id))
        #expect(committedBefore.count >= 300)
        #expect(ackedWhileCopying > 0 || record.acked.count < 300, "the server kept committing during the backup")

        // The copy opens as a store (in this process: it is another environment) and holds them all.
        let copy = try Store(directory: destination)
        let stored = try copy.mail(for: bobID, afterSeq: 0, limit: 100_000)
        copy.close()
        let storedIDs = Set(stored.map(\.messageID))
        let missing = committedBefore.subtracting(storedIDs)
        #expect(missing.isEmpty, "\(missing.count) mails committed before the backup are missing from it")
        #expect(storedIDs.count <= record.acked.count + 16)
        #expect(try runSwitchboard(["data", "check", "--data", destination]).status == 0)
        // A non-empty destination is refused.
        let again = try runSwitchboard(["backup", destination, "--data", directory + "/data"])
        #expect(again.status == 1 && again.err.contains("not empty"), "\(again.err)")
        #expect(server.terminate() == 0)
    }

    @Test func dataCheckCountsAndFindsDamage() throws {
        let directory = makeTempDirectory("sbdata")
        defer { removeDirectory(directory) }
        do {
            let store = try Store(directory: directory)
            _ = try store.createAccountsBulk(names: ["a1", "a2", "a3"], password: PasswordHasher.hash(password: [1], iterations: 1))
            store.close()
        }
        let good = try runSwitchboard(["data", "check", "--data", directory])
        #expect(good.status == 0, "\(good.out)\(good.err)")
        #expect(good.out.contains("accounts 3,"), "\(good.out)")
        do {
            let store = try Store(directory: directory)
            try store.putRawRecordForTesting(database: "mail", key: [0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1], value: [1, 2, 3])
            store.close()
        }
        let damaged = try runSwitchboard(["data", "check", "--data", directory])
        #expect(damaged.status == 1)
        #expect(damaged.out.contains("PROBLEM: mail"), "\(damaged.out)")
        do {
            let store = try Store(directory: directory)
            try store.overwriteSchemaVersionForTesting(9)
            store.close()
        }
        let wrongSchema = try runSwitchboard(["data", "check", "--data", directory])
        #expect(wrongSchema.status == 1)
        #expect(wrongSchema.out.contains("schema version 9 is not 2"), "\(wrongSchema.out)")
        let absent = try runSwitchboard(["data", "check", "--data", directory + "/nothing"])
        #expect(absent.status == 1 && absent.err.contains("no LMDB data file"), "\(absent.err)")
    }

    @Test func serviceUnitPassesSystemdAnalyzeVerify() throws {
        guard let binary = builtProduct("switchboard") else { throw ClientError("switchboard executable not found") }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") else {
            try Test.cancel("systemd-analyze is not installed (package systemd, in TEST_PACKAGES)")
        }
        let directory = makeTempDirectory("sbunit")
        defer { removeDirectory(directory) }
        for (listen, capability) in [("0.0.0.0:443", "CAP_NET_BIND_SERVICE"), ("[::]:7878", "")] {
            let unit = try runSwitchboard(["service", "unit", "--binary", binary, "--data", "/var/lib/switchboard-test",
                                           "--listen", listen, "--user", "sbtest"])
            #expect(unit.status == 0, "\(unit.err)")
            let text = unit.out
            for line in ["Type=notify", "User=sbtest", "ProtectSystem=strict", "ReadWritePaths=/var/lib/switchboard-test",
                         "NoNewPrivileges=yes", "LimitNOFILE=101024", "CapabilityBoundingSet=\(capability)\n",
                         "AmbientCapabilities=\(capability)\n", "ExecReload=/bin/kill -HUP $MAINPID"] {
                #expect(text.contains(line), "\(listen): missing \(line)")
            }
            let path = directory + "/switchboard.service"
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            let verify = try runProgram("/usr/bin/systemd-analyze", ["verify", path])
            #expect(verify.status == 0, "systemd-analyze verify: \(verify.out)\(verify.err)\n\(text)")
        }
    }

    @Test func makeInstallStagesBinariesUnitAndExampleConfig() throws {
        guard let binary = builtProduct("switchboard") else { throw ClientError("switchboard executable not found") }
        let binDir = String(binary.dropLast("/switchboard".count))
        let repository = String(#filePath.dropLast("Tests/SwitchboardServerTests/OpsBinaryTests.swift".count))
        let stage = makeTempDirectory("sbinstall")
        defer { removeDirectory(stage) }
        let make = try runProgram("/usr/bin/make", ["-C", repository, "--no-print-directory", "install", "BIN_DIR=\(binDir)",
                                                    "DESTDIR=\(stage)", "PREFIX=/usr"])
        #expect(make.status == 0, "\(make.out)\(make.err)")
        for file in ["/usr/bin/switchboard", "/usr/bin/sbchat", "/usr/bin/sbload", "/usr/lib/systemd/system/switchboard.service",
                     "/usr/lib/sysusers.d/switchboard.conf", "/etc/switchboard/switchboard.toml",
                     "/etc/switchboard/switchboard.toml.example"] {
            #expect(FileManager.default.fileExists(atPath: stage + file), "\(file) not installed")
        }
        let unit = (try? String(contentsOfFile: stage + "/usr/lib/systemd/system/switchboard.service", encoding: .utf8)) ?? ""
        #expect(unit.contains("ExecStart=/usr/bin/switchboard serve --config /etc/switchboard/switchboard.toml\n"))
        #expect(unit.contains("ReadWritePaths=/var/lib/switchboard\n"))
        let check = try runSwitchboard(["config", "check", "--skip-tls", stage + "/etc/switchboard/switchboard.toml"])
        #expect(check.status == 0, "\(check.err)")
    }
}
