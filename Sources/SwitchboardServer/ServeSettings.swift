// Every setting of `switchboard serve`, in one table (`ServeSettings.keys`): its config-file key (the flag's
// name without "--"), kind and range, default, help text, whether a reload applies it live, and where it goes
// in ServerConfiguration. The command-line flags, the config file, `config print`, `config check` and SIGHUP
// reloads all go through this table, so a setting has one home.
// Invariants: a value is checked (kind, range) before it is stored, and every refusal names the key and,
// for a file, the line; defaults < file < flags (a flag given on the command line wins, also at reload);
// `serverConfiguration()` is the only place settings become a ServerConfiguration.
import Glibc
import Logging
import SwitchboardCluster
import SwitchboardIO
import SwitchboardTLS

public struct SettingKey: Sendable {
    public enum Kind: Sendable {
        case integer(ClosedRange<Int64>)
        case text
        /// An optional path: unset means "derived from another setting" (the TLS files from `data`).
        case path
        case address
        case choice([String])
        case boolean
    }

    public let name: String
    public let kind: Kind
    /// nil: unset unless given (only for `.path`).
    public let defaultValue: ConfigValue?
    public let help: String
    /// A reload applies a change of this key to the running server; otherwise the change waits for a restart.
    public let live: Bool
    /// Printed as "<redacted>" by `config print`. No key holds a secret today (the TLS key's path is not
    /// one and the key file's content is never part of the configuration); the flag is here so a future
    /// passphrase key is redacted by construction.
    public let secret: Bool
    /// Where the value goes in ServerConfiguration (nil: handled by `serverConfiguration()` itself).
    let apply: (@Sendable (inout ServerConfiguration, ConfigValue) -> Void)?

    init(_ name: String, _ kind: Kind, _ defaultValue: ConfigValue?, live: Bool, secret: Bool = false, _ help: String,
         apply: (@Sendable (inout ServerConfiguration, ConfigValue) -> Void)? = nil) {
        self.name = name
        self.kind = kind
        self.defaultValue = defaultValue
        self.help = help
        self.live = live
        self.secret = secret
        self.apply = apply
    }

    /// Checks a value's kind and range; the message is what follows "key 'x': ".
    func check(_ value: ConfigValue) -> String? {
        switch (kind, value) {
        case (.integer(let range), .integer(let n)):
            return range.contains(n) ? nil : "\(n) is out of range (\(range.lowerBound)...\(range.upperBound))"
        case (.text, .string(let s)), (.path, .string(let s)):
            return s.isEmpty ? "must not be empty" : nil
        case (.address, .string(let s)):
            do { _ = try SocketAddress(parsing: s); return nil } catch {
                return "'\(s)' is not an address (IPv4:PORT or [IPv6]:PORT)"
            }
        case (.choice(let options), .string(let s)):
            return options.contains(s.lowercased()) ? nil : "'\(s)' is not one of \(options.joined(separator: ", "))"
        case (.boolean, .boolean):
            return nil
        default:
            return "expected \(expectedType), found \(value.typeName) (\(value))"
        }
    }

    var expectedType: String {
        switch kind {
        case .integer: return "an integer"
        case .boolean: return "a boolean (true or false)"
        case .text, .path, .address, .choice: return "a string in quotes"
        }
    }
}

// Setters: integers are range-checked before they get here, so the conversions cannot trap.
private func int(_ v: ConfigValue) -> Int { if case .integer(let n) = v { return Int(n) }; return 0 }
private func u32(_ v: ConfigValue) -> UInt32 { UInt32(clamping: int(v)) }
private func u64(_ v: ConfigValue) -> UInt64 { UInt64(clamping: int(v)) }
private func bool(_ v: ConfigValue) -> Bool { if case .boolean(let b) = v { return b }; return false }
private let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

private let u32Max = Int64(UInt32.max)
private let big = Int64(1) << 40

public struct ServeSettings: Sendable, Equatable {
    /// Where a value came from, for `config print` and error messages.
    public enum Source: Sendable, Equatable {
        case defaultValue
        case file(path: String, line: Int)
        case flag
    }

    public private(set) var values: [String: ConfigValue] = [:]
    public private(set) var sources: [String: Source] = [:]
    /// The config file these settings were read from, if any (re-read at reload).
    public var configPath: String?

    public static func == (a: ServeSettings, b: ServeSettings) -> Bool { a.values == b.values }

    // Order is the order of `serve --help` and `config print`.
    public static let keys: [SettingKey] = [
        SettingKey("listen", .address, .string("127.0.0.1:7878"), live: false,
                   "Address to listen on: IPv4:PORT or [IPv6]:PORT."),
        SettingKey("data", .text, .string("./data"), live: false,
                   "Data folder (LMDB environment; created if missing)."),
        SettingKey("log-level", .choice(logLevels), .string("info"), live: true,
                   "Log level: trace, debug, info, notice, warning, error, critical."),
        SettingKey("log-format", .choice(["text", "json"]), .string("text"), live: false,
                   "Log format on stderr: text (one line per event) or json (one JSON object per line: ts, level, label, message, metadata)."),
        SettingKey("max-frame", .integer(1024...u32Max), .integer(65_536), live: false,
                   "Largest frame after login, in bytes (announced in WELCOME, so a change waits for a restart).") { c, v in
            c.limits.maxFrameBytes = u32(v)
        },
        SettingKey("max-frame-before-login", .integer(256...u32Max), .integer(8_192), live: false,
                   "Largest frame before login, in bytes.") { c, v in c.limits.maxFrameBytesBeforeLogin = u32(v) },
        SettingKey("login-timeout", .integer(1...4_000_000), .integer(10), live: false,
                   "Seconds a new connection has to log in.") { c, v in c.limits.loginTimeoutMs = u32(v) * 1000 },
        SettingKey("idle-timeout", .integer(1...4_000_000), .integer(120), live: false,
                   "Seconds without traffic before a logged-in connection is closed.") { c, v in c.limits.idleTimeoutMs = u32(v) * 1000 },
        SettingKey("ping-interval", .integer(1...4_000_000), .integer(30), live: false,
                   "Seconds of quiet after which the server pings a connection.") { c, v in c.limits.pingIntervalMs = u32(v) * 1000 },
        SettingKey("max-connections", .integer(1...100_000_000), .integer(100_000), live: true,
                   "Most concurrent connections; more are refused with serverBusy.") { c, v in c.maxConnections = int(v) },
        SettingKey("output-soft-cap", .integer(1...big), .integer(256 << 10), live: true,
                   "Bytes queued for one receiver above which new messages go to its mailbox.") { c, v in c.outputSoftCapBytes = int(v) },
        SettingKey("output-hard-cap", .integer(1...big), .integer(4 << 20), live: true,
                   "Bytes queued for one receiver above which it is disconnected (slowConsumer).") { c, v in c.outputHardCapBytes = int(v) },
        SettingKey("mailbox-max-messages", .integer(1...u32Max), .integer(10_000), live: true,
                   "Most stored messages per mailbox.") { c, v in c.limits.mailboxMaxMessages = u32(v) },
        SettingKey("mailbox-max-bytes", .integer(1...big), .integer(64 << 20), live: true,
                   "Most stored body bytes per mailbox.") { c, v in c.limits.mailboxMaxBytes = u64(v) },
        SettingKey("read-pause-above", .integer(4096...big), .integer(256 << 10), live: true,
                   "Unwritten bytes for one connection above which the server stops reading it until half has drained.") { c, v in
            c.readPauseAboveBytes = int(v)
        },
        SettingKey("read-pause-above-before-login", .integer(1024...big), .integer(16 << 10), live: true,
                   "The same before login.") { c, v in c.preLoginReadPauseAboveBytes = int(v) },
        SettingKey("max-prelogin-per-address", .integer(1...100_000_000), .integer(1024), live: true,
                   "Connections from one client address that have not logged in yet; more are refused (serverBusy).") { c, v in
            c.maxPreLoginConnectionsPerAddress = int(v)
        },
        SettingKey("max-hashing-per-address", .integer(1...1024), .integer(2), live: true,
                   "Password checks run at once for one client address (the rest wait their turn).") { c, v in c.maxHashingPerAddress = int(v) },
        SettingKey("max-queued-logins-per-address", .integer(1...100_000_000), .integer(512), live: true,
                   "LOGIN/REGISTER attempts waiting per client address; more get busyRetryLater.") { c, v in c.maxQueuedLoginsPerAddress = int(v) },
        SettingKey("max-queued-logins", .integer(1...100_000_000), .integer(4096), live: true,
                   "LOGIN/REGISTER attempts waiting in all; more get busyRetryLater.") { c, v in c.maxQueuedLogins = int(v) },
        SettingKey("hash-threads", .integer(1...64), .integer(1), live: false,
                   "Password hashing threads.") { c, v in c.hashThreads = int(v) },
        SettingKey("max-store-backlog", .integer(1...16_384), .integer(32), live: true,
                   "Mail bodies waiting for their commit, in MiB, above which the senders adding to it are not read until half has committed.") { c, v in
            c.maxStoreBacklogBytes = int(v) << 20
        },
        SettingKey("mail-page-bytes", .integer(1024...big), .integer(128 << 10), live: true,
                   "Stored mail per page at login: most bytes (a page is also at most 256 messages).") { c, v in c.mailPageBytes = int(v) },
        SettingKey("map-size", .integer(1...(1 << 26)), .integer(16 << 10), live: false,
                   "Largest size the LMDB database may grow to, in MiB (address space; the file grows as needed). When full, sends that would be stored get SEND_ERROR storageFull; raise it and restart.") { c, v in
            c.storeMapSizeBytes = int(v) << 20
        },
        SettingKey("max-failed-logins", .integer(1...1_000_000), .integer(5), live: true,
                   "Failed logins per (user name, client address) within the lockout window before that address is locked out for that name; past this many failures of a name from anywhere, attempts from addresses it never logged in from are delayed (250 ms doubling, at most 4 s).") { c, v in
            c.maxFailedLoginsPerUser = int(v)
        },
        SettingKey("max-failed-logins-per-address", .integer(1...1_000_000), .integer(20), live: true,
                   "Failed logins per client address within the lockout window before it is locked.") { c, v in c.maxFailedLoginsPerAddress = int(v) },
        SettingKey("max-registrations-per-address", .integer(1...1_000_000), .integer(20), live: true,
                   "Accounts one client address may register within the lockout window.") { c, v in c.maxRegistrationsPerAddress = int(v) },
        SettingKey("lockout-window", .integer(1...31_536_000), .integer(900), live: true,
                   "Lockout window in seconds.") { c, v in c.lockoutWindowMs = u64(v) * 1000 },
        SettingKey("pbkdf2-iterations", .integer(1...u32Max), .integer(210_000), live: true,
                   "PBKDF2-HMAC-SHA256 iterations for new passwords.") { c, v in c.pbkdf2Iterations = u32(v) },
        SettingKey("dedupe-window", .integer(1...(1 << 20)), .integer(256), live: false,
                   "Recent message ids remembered per sender to drop resent duplicates; at least the most messages a client keeps unacknowledged.") { c, v in
            c.dedupeWindow = int(v)
        },
        SettingKey("max-devices", .integer(1...1024), .integer(8), live: true,
                   "Devices (sessions) one user may have online at once; a login from one more device is refused with tooManyDevices (a new login of the same device takes over its old one). Lowering it live refuses new devices only.") { c, v in
            c.maxDevicesPerUser = int(v)
        },
        SettingKey("tls-cert", .path, nil, live: true,
                   "TLS certificate chain (PEM). Default: DATA/tls/server.pem from `switchboard cert init`."),
        SettingKey("tls-key", .path, nil, live: true,
                   "TLS private key (PEM). Default: DATA/tls/server.key."),
        SettingKey("tls-ca", .path, nil, live: true,
                   "Require client certificates signed by this CA (PEM). Off by default."),
        SettingKey("handshake-timeout", .integer(1...3600), .integer(5), live: true,
                   "Seconds a client has to finish its TLS handshake.") { c, v in c.handshakeTimeoutMs = u64(v) * 1000 },
        SettingKey("plaintext", .boolean, .boolean(false), live: false,
                   "Serve without TLS (for benchmarks against plaintext peers). Logged as a warning.") { c, v in c.plaintext = bool(v) },
        // Operator surfaces (MetricsHTTP, AdminSocket). `metrics` is a .path key only so it may be unset; its
        // value is parsed as an address by serverConfiguration().
        SettingKey("metrics", .path, nil, live: false,
                   "Serve Prometheus metrics at http://HOST:PORT/metrics and health at /healthz (IPv4:PORT or [IPv6]:PORT; off by default; keep it on loopback or a private network)."),
        SettingKey("admin", .boolean, .boolean(true), live: false,
                   "Open the admin socket (switchboard admin, users, top).") { c, v in c.adminSocketEnabled = bool(v) },
        SettingKey("admin-socket", .path, nil, live: false,
                   "The admin socket's path. Default: DATA/admin.sock (mode 0600).") { c, v in
            if case .string(let path) = v { c.adminSocketPath = path }
        },
        // Cluster mode (ClusterRouter, ClusterLog; README "Running a cluster"). `cluster` and `node` are .path
        // keys only so they may be unset; serverConfiguration() checks them.
        SettingKey("cluster", .path, nil, live: false,
                   "Join a cluster through NATS: nats://IP:PORT[,nats://IP:PORT...] (numeric addresses; every node of the cluster gets the same list). Off by default: one node on its own LMDB."),
        SettingKey("node", .path, nil, live: false,
                   "This node's name in the cluster (1-32 of A-Z a-z 0-9 _ -, unique per node). Required with --cluster."),
        SettingKey("cluster-credentials", .path, nil, live: false,
                   "A file (mode 0600) with the credentials the NATS servers require: 'token: ...', or 'user: ...' and 'password: ...' lines. Read at start."),
        SettingKey("cluster-replicas", .integer(1...5), .integer(3), live: false,
                   "Replicas of the cluster's write log in JetStream (3 survives the loss of one NATS server of three; 1 for a single NATS server).") { c, v in
            c.clusterReplicas = int(v)
        },
        SettingKey("cluster-commit-timeout", .integer(1...600), .integer(15), live: false,
                   "Seconds a write waits for the cluster log (NATS down, a JetStream leader election) before its client gets a clear error.") { c, v in
            c.clusterCommitTimeoutMs = u64(v) * 1000
        },
        SettingKey("heap-trim-churn", .integer(0...1_000_000_000), .integer(1024), live: false,
                   "Accepts + closes after which the server gives freed heap memory back to the system (malloc_trim on a helper thread, once the churn has calmed down: after a storm of TLS handshakes glibc otherwise keeps tens of MB). 0 turns it off.") { c, v in
            c.heapTrimChurn = int(v)
        },
    ]

    public static let keysByName: [String: SettingKey] = Dictionary(uniqueKeysWithValues: keys.map { ($0.name, $0) })

    /// Every key at its default.
    public init() {
        for key in Self.keys {
            if let value = key.defaultValue {
                values[key.name] = value
                sources[key.name] = .defaultValue
            }
        }
    }

    /// Help text of a key with its default, for the flags of `serve --help`.
    public static func help(_ name: String) -> String {
        guard let key = keysByName[name] else { return "(unknown setting \(name))" }
        guard let value = key.defaultValue else { return key.help }
        return key.help + " (default: \(value))"
    }

    public subscript(_ name: String) -> ConfigValue? { values[name] }

    public func string(_ name: String) -> String? {
        if case .string(let s)? = values[name] { return s }
        return nil
    }

    public func integer(_ name: String) -> Int64? {
        if case .integer(let n)? = values[name] { return n }
        return nil
    }

    public func boolean(_ name: String) -> Bool {
        if case .boolean(let b)? = values[name] { return b }
        return false
    }

    /// Sets one key from a flag or another source; refuses unknown keys and bad values.
    public mutating func set(_ name: String, _ value: ConfigValue, source: Source = .flag) throws(ConfigError) {
        var path: String?
        var line: Int?
        if case .file(let p, let l) = source { path = p; line = l }
        guard let key = Self.keysByName[name] else {
            throw ConfigError(path: path, line: line, key: name, "unknown key\(Self.suggestion(for: name))")
        }
        var value = value
        if case .choice = key.kind, case .string(let s) = value { value = .string(s.lowercased()) }
        if let problem = key.check(value) {
            throw ConfigError(path: path, line: line, key: name, source == .flag ? "--\(name): " + problem : problem)
        }
        values[name] = value
        sources[name] = source
    }

    /// Takes `other`'s value (or its absence) and source for one key.
    public mutating func adopt(_ name: String, from other: ServeSettings) {
        values[name] = other.values[name]
        sources[name] = other.sources[name]
    }

    /// Marks every value as a default (for printing an example file without origins).
    public mutating func forgetSources() {
        for name in sources.keys { sources[name] = .defaultValue }
    }

    /// Applies a parsed file (its values replace the defaults; flags are applied afterwards).
    public mutating func merge(_ file: ConfigFile) throws(ConfigError) {
        for entry in file.entries {
            try set(entry.key, entry.value, source: .file(path: file.path ?? "config", line: entry.line))
        }
        configPath = file.path
    }

    /// Defaults, then the file at `path` (if any), then `overrides` (the flags given), then the checks that
    /// involve several keys.
    public static func resolve(configPath: String?, overrides: [(String, ConfigValue)]) throws(ConfigError) -> ServeSettings {
        var settings = ServeSettings()
        if let configPath { try settings.merge(ConfigFile.load(path: configPath)) }
        for (name, value) in overrides { try settings.set(name, value, source: .flag) }
        try settings.validate()
        return settings
    }

    /// Checks between keys; errors name the keys (and the line of the one from the file).
    public func validate() throws(ConfigError) {
        if let soft = integer("output-soft-cap"), let hard = integer("output-hard-cap"), soft >= hard {
            throw located("output-soft-cap", "must be below output-hard-cap (\(soft) >= \(hard))")
        }
    }

    func located(_ name: String, _ message: String) -> ConfigError {
        if case .file(let path, let line)? = sources[name] { return ConfigError(path: path, line: line, key: name, message) }
        if sources[name] == .flag { return ConfigError(key: name, "--\(name) " + message) }
        return ConfigError(key: name, message)
    }

    public var logLevel: Logger.Level { Logger.Level(rawValue: string("log-level") ?? "info") ?? .info }
    public var jsonLogs: Bool { string("log-format") == "json" }
    public var dataDirectory: String { string("data") ?? "./data" }

    /// The TLS files in effect (defaults under DATA/tls), nil with plaintext.
    public var tls: TLSServerConfiguration? {
        guard !boolean("plaintext") else { return nil }
        let directory = DevelopmentCA.directory(forDataDirectory: dataDirectory)
        return TLSServerConfiguration(certificateChainFile: string("tls-cert") ?? directory + "/server.pem",
                                      privateKeyFile: string("tls-key") ?? directory + "/server.key",
                                      clientCAFile: string("tls-ca"))
    }

    /// The server's configuration for these settings. Throws only for an address that does not parse, which
    /// `set` already refused.
    public func serverConfiguration() throws(ConfigError) -> ServerConfiguration {
        let address: SocketAddress
        do { address = try SocketAddress(parsing: string("listen") ?? "") } catch {
            throw located("listen", "\(error)")
        }
        var config = ServerConfiguration(listenAddress: address, dataDirectory: dataDirectory)
        for key in Self.keys {
            if let apply = key.apply, let value = values[key.name] { apply(&config, value) }
        }
        config.tls = tls
        if let metrics = string("metrics") {
            do { config.metricsAddress = try SocketAddress(parsing: metrics) } catch {
                throw located("metrics", "'\(metrics)' is not an address (IPv4:PORT or [IPv6]:PORT)")
            }
        }
        if let cluster = string("cluster") {
            do { _ = try NATSServerList.parse(cluster) } catch {
                throw located("cluster", "'\(cluster)' is not a NATS server list (\(error))")
            }
            guard let node = string("node") else {
                throw located("cluster", "needs --node NAME too (this node's unique name in the cluster)")
            }
            guard ClusterRouterConfiguration.validNodeName(node) else {
                throw located("node", "'\(node)' is not a node name (1-32 of A-Z a-z 0-9 _ -)")
            }
            config.clusterServers = cluster
            config.clusterNode = node
            if let path = string("cluster-credentials") {
                do { config.clusterCredentials = try NATSCredentials.load(path: path) } catch {
                    throw located("cluster-credentials", "\(error)")
                }
            }
        } else if string("node") != nil {
            throw located("node", "is only meaningful with --cluster")
        } else if string("cluster-credentials") != nil {
            throw located("cluster-credentials", "is only meaningful with --cluster")
        }
        return config
    }

    /// `configuration` with this key's value applied (what a live reload does for each changed key).
    public func applying(_ name: String, to configuration: inout ServerConfiguration) {
        guard let key = Self.keysByName[name], let value = values[name], let apply = key.apply else { return }
        apply(&configuration, value)
    }

    /// The effective settings as a TOML file: every key, with its help as a comment and where its value came
    /// from; unset optional keys are written commented out.
    public func toml(header: String? = nil) -> String {
        var out = ""
        if let header { out += header.split(separator: "\n", omittingEmptySubsequences: false).map { "# " + $0 }.joined(separator: "\n") + "\n\n" }
        for key in Self.keys {
            out += "# " + key.help + (key.live ? " [reloads live]" : " [restart to change]") + "\n"
            guard let value = values[key.name] else {
                out += "# \(key.name) = \"\"\n\n"
                continue
            }
            let text = key.secret ? ConfigValue.quote("<redacted>") : value.description
            var origin = ""
            switch sources[key.name] {
            case .file(let path, let line)?: origin = "  # from \(path):\(line)"
            case .flag?: origin = "  # from the command line"
            default: break
            }
            out += "\(key.name) = \(text)\(origin)\n\n"
        }
        return out
    }

    static func suggestion(for name: String) -> String {
        let close = keys.map(\.name).filter { candidate in
            candidate.hasPrefix(name) || name.hasPrefix(candidate) || editDistance(candidate, name) <= 2
        }
        return close.isEmpty ? " (see `switchboard config print` for every key)" : " (did you mean \(close.joined(separator: " or "))?)"
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8), b = Array(b.utf8)
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var row = Array(0...b.count)
        for i in 1...a.count {
            var previous = row[0]
            row[0] = i
            for j in 1...b.count {
                let saved = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = saved
            }
        }
        return row[b.count]
    }
}

/// Bounded whole-file reads (configuration files, certificates are read by OpenSSL itself).
enum FileReading {
    struct Failure: Error, CustomStringConvertible { let description: String }

    static func read(path: String, limit: Int) throws -> [UInt8] {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(description: String(cString: strerror(errno))) }
        defer { Glibc.close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(description: String(cString: strerror(errno)))
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
            if bytes.count > limit { throw Failure(description: "larger than \(limit) bytes") }
        }
        return bytes
    }
}
