// The config file's parser and the settings table, in process: what is accepted means what TOML says,
// every refusal names the key and the line, flags override the file. The round trip of every flag of the
// real executable through a file is in OpsBinaryTests.
import Foundation
import Glibc
import Logging
import Testing
@testable import SwitchboardServer

@Suite struct ConfigFileTests {
    func settings(_ text: String, overrides: [(String, ConfigValue)] = []) throws(ConfigError) -> ServeSettings {
        var s = ServeSettings()
        try s.merge(ConfigFile.parse(text, path: "test.toml"))
        for (k, v) in overrides { try s.set(k, v) }
        try s.validate()
        return s
    }

    func refusal(_ text: String) -> ConfigError? {
        do { _ = try settings(text); return nil } catch { return error }
    }

    @Test func acceptsTheTOMLItUses() throws {
        let s = try settings("""
            # a comment\r
            max-frame = 131_072   # trailing comment\r
            listen = "[::1]:7878"
            data = '/srv/sb data\\raw'
            log-level = "DEBUG"
            tls-cert = "/etc/caf\\u00e9/cert.pem"
            plaintext = false

            mailbox-max-bytes = +1000
            """)
        #expect(s.integer("max-frame") == 131_072)
        #expect(s.string("listen") == "[::1]:7878")
        #expect(s.string("data") == "/srv/sb data\\raw")
        #expect(s.string("log-level") == "debug")
        #expect(s.string("tls-cert") == "/etc/café/cert.pem")
        #expect(s.integer("mailbox-max-bytes") == 1000)
        #expect(s.sources["max-frame"] == .file(path: "test.toml", line: 2))
        let config = try s.serverConfiguration()
        #expect(config.limits.maxFrameBytes == 131_072)
        #expect(config.tls?.certificateChainFile == "/etc/café/cert.pem")
        #expect(config.tls?.privateKeyFile == "/srv/sb data\\raw/tls/server.key")
    }

    @Test(arguments: [
        ("max-frame = 65536\nlisten = \"127.0.0.1:1\"\nmax-fram = 3\n", 3, "max-fram", "unknown key (did you mean max-frame"),
        ("\n\nmax-frame = \"big\"\n", 3, "max-frame", "expected an integer, found a string"),
        ("max-frame = 10\n", 1, "max-frame", "10 is out of range (1024...4294967295)"),
        ("max-frame = 2048\n# x\nmax-frame = 4096\n", 3, "max-frame", "given twice (first on line 1)"),
        ("[server]\nmax-frame = 2048\n", 1, nil, "tables ([...]) are not used"),
        ("server.max-frame = 2048\n", 1, "server", "dotted keys are not used"),
        ("max-frame = 1.5\n", 1, "max-frame", "no key takes a fraction"),
        ("max-frame = 0x400\n", 1, "max-frame", "write integers in decimal"),
        ("max-frame = 01024\n", 1, "max-frame", "leading zeros"),
        ("max-frame = 1__024\n", 1, "max-frame", "'_' must sit between digits"),
        ("max-frame = 99999999999999999999\n", 1, "max-frame", "does not fit in a 64-bit integer"),
        ("listen = \"127.0.0.1:7878\n", 1, "listen", "no closing"),
        ("listen = \"a\\qb\"\n", 1, "listen", "unknown escape"),
        ("listen = \"nowhere\"\n", 1, "listen", "is not an address"),
        ("data = \"\"\n", 1, "data", "must not be empty"),
        ("plaintext = yes\n", 1, "plaintext", "strings need quotes"),
        ("plaintext = 1\n", 1, "plaintext", "expected a boolean"),
        ("log-level = \"loud\"\n", 1, "log-level", "is not one of trace, debug"),
        ("max-frame = 2048 extra\n", 1, "max-frame", "unexpected text after the value"),
        ("max-frame\n", 1, "max-frame", "expected '='"),
        ("max-frame =\n", 1, "max-frame", "missing value"),
        ("listen = [\"a\"]\n", 1, "listen", "arrays are not used"),
        ("listen = \"\"\"x\"\"\"\n", 1, "listen", "multi-line strings"),
        ("# ok\noutput-hard-cap = 1000\noutput-soft-cap = 2000\n", 3, "output-soft-cap", "must be below output-hard-cap"),
    ] as [(String, Int, String?, String)])
    func refusesWithKeyAndLine(text: String, line: Int, key: String?, message: String) throws {
        let error = try #require(refusal(text), "accepted: \(text)")
        #expect(error.line == line, "\(error)")
        #expect(error.key == key, "\(error)")
        #expect(error.message.contains(message), "\(error)")
        #expect(error.description.hasPrefix("test.toml:\(line): "), "\(error)")
    }

    @Test func refusesBytesThatAreNotUTF8() {
        #expect(throws: ConfigError.self) { _ = try ConfigFile.parse([0x6B, 0x3D, 0xFF], path: "x") }
    }

    @Test func refusesFilesOverOneMebibyteAndFilesThatCannotBeRead() throws {
        let directory = makeTempDirectory("sbconfigsize")
        defer { removeDirectory(directory) }
        let big = directory + "/big.toml"
        let comment = "# " + String(repeating: "x", count: 1021) + "\n"
        try String(repeating: comment, count: 1025).write(toFile: big, atomically: true, encoding: .utf8)
        do { _ = try ConfigFile.load(path: big); Issue.record("a file over 1 MiB was read") } catch {
            #expect(error.description == "\(big): cannot read: larger than 1048576 bytes")
        }
        let fits = directory + "/fits.toml"
        try (String(repeating: comment, count: 1000) + "max-frame = 2048\n").write(toFile: fits, atomically: true, encoding: .utf8)
        #expect(try ConfigFile.load(path: fits).entries == [ConfigEntry(key: "max-frame", value: .integer(2048), line: 1001)])
        #expect(throws: ConfigError.self) { _ = try ConfigFile.load(path: directory) }
        #expect(throws: ConfigError.self) { _ = try ConfigFile.load(path: directory + "/absent.toml") }
    }

    @Test func flagsOverrideTheFile() throws {
        let s = try settings("max-frame = 2048\nlisten = \"127.0.0.1:1\"\n",
                             overrides: [("max-frame", .integer(4096)), ("plaintext", .boolean(true))])
        #expect(s.integer("max-frame") == 4096)
        #expect(s.sources["max-frame"] == .flag)
        #expect(s.string("listen") == "127.0.0.1:1")
        #expect(s.boolean("plaintext"))
        #expect(try s.serverConfiguration().tls == nil)
        // A bad flag value is refused with the flag's name.
        #expect(throws: ConfigError.self) { _ = try settings("", overrides: [("max-frame", .integer(1))]) }
        do { _ = try settings("", overrides: [("max-frame", .integer(1))]) } catch {
            #expect(error.description.contains("--max-frame"))
        }
    }

    @Test func printedSettingsReadBackTheSame() throws {
        let s = try settings("max-frame = 2048\ndata = \"/tmp/a \\\"b\\\"\"\ntls-ca = \"/ca.pem\"\n")
        let printed = s.toml(header: "header\nline two")
        let again = try settings(printed)
        #expect(again == s)
        #expect(again.string("data") == "/tmp/a \"b\"")
        #expect(again["tls-cert"] == nil)
    }

    @Test func everyKeyHasADefaultOrIsAnOptionalPathAndASetterUnlessHandledByName() {
        let handledByName: Set = ["listen", "data", "log-level", "log-format", "tls-cert", "tls-key", "tls-ca", "metrics",
                                  "cluster", "node", "cluster-credentials"]
        for key in ServeSettings.keys {
            #expect(key.defaultValue != nil || { if case .path = key.kind { return true } else { return false } }(), "\(key.name)")
            #expect(key.apply != nil || handledByName.contains(key.name), "\(key.name) has no setter")
            if let value = key.defaultValue { #expect(key.check(value) == nil, "default of \(key.name) out of its own range") }
        }
        // Defaults through the table equal the server's built-in defaults.
        let fromTable = try? ServeSettings().serverConfiguration()
        var builtIn = ServerConfiguration(listenAddress: fromTable!.listenAddress, dataDirectory: "./data")
        builtIn.storeMapSizeBytes = 16 << 30
        #expect(fromTable?.session.limits == builtIn.session.limits)
        #expect(fromTable?.maxConnections == builtIn.maxConnections)
        #expect(fromTable?.outputHardCapBytes == builtIn.outputHardCapBytes)
        #expect(fromTable?.pbkdf2Iterations == builtIn.pbkdf2Iterations)
        #expect(fromTable?.dedupeWindow == builtIn.dedupeWindow)
        #expect(fromTable?.maxStoreBacklogBytes == builtIn.maxStoreBacklogBytes)
        #expect(fromTable?.lockoutWindowMs == builtIn.lockoutWindowMs)
        #expect(fromTable?.storeMapSizeBytes == builtIn.storeMapSizeBytes)
    }

    @Test func jsonLogLinesParse() throws {
        let line = JSONLogHandler.line(timestamp: "2026-12-03T12:00:00.000Z", level: .warning, label: "switchboard",
                                       message: "a \"quoted\"\nmessage\t\u{01}é",
                                       metadata: ["peer": "1.2.3.4:5", "nested": ["a": "1", "list": ["x", "y"]]])
        #expect(line.hasSuffix("}\n"))
        #expect(!line.dropLast().contains("\n"))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["ts"] as? String == "2026-12-03T12:00:00.000Z")
        #expect(object["level"] as? String == "warning")
        #expect(object["label"] as? String == "switchboard")
        #expect(object["message"] as? String == "a \"quoted\"\nmessage\t\u{01}é")
        let metadata = try #require(object["metadata"] as? [String: Any])
        #expect(metadata["peer"] as? String == "1.2.3.4:5")
        #expect((metadata["nested"] as? [String: Any])?["list"] as? [String] == ["x", "y"])
        let stamp = JSONLogHandler.timestamp()
        #expect(stamp.count == 24 && stamp.hasSuffix("Z"), "\(stamp)")
    }

    @Test func serviceNotifierReachesAnAbstractSocket() throws {
        let name = "@switchboard-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let receiver = try UnixDatagramReceiver(path: name)
        let notifier = try #require(ServiceNotifier(path: name))
        #expect(notifier.notify("READY=1"))
        #expect(receiver.receive(timeoutMs: 2000) == "READY=1")
        #expect(ServiceNotifier(path: "relative/path") == nil)
    }
}

/// A bound Unix datagram socket standing in for systemd's notify socket ('@' = abstract name).
final class UnixDatagramReceiver {
    let fd: Int32
    let path: String

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var name = Array(path.utf8)
        let abstract = name.first == UInt8(ascii: "@")
        if abstract { name[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in name.enumerated() { raw[i] = b } }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + name.count + (abstract ? 0 : 1))
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard rc == 0 else { Glibc.close(fd); throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    }

    deinit {
        Glibc.close(fd)
        if !path.hasPrefix("@") { unlink(path) }
    }

    /// One datagram as text, or nil after `timeoutMs`.
    func receive(timeoutMs: Int32) -> String? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, timeoutMs) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        return n >= 0 ? String(decoding: buffer[0..<n], as: UTF8.self) : nil
    }
}
