// `switchboard serve`: the relay server. Every flag is also a key of the config file (`--config FILE`,
// ServeSettings holds the list, their help and defaults); a flag given on the command line overrides the
// file, also when SIGHUP re-reads it. Flags are optional here so "given" can be told from "default".
import ArgumentParser
import Glibc
import Logging
import SwitchboardIO
import SwitchboardServer
import SwitchboardTLS

private func h(_ name: String) -> ArgumentHelp { ArgumentHelp(ServeSettings.help(name)) }

/// The flags of `serve` that are settings (shared by `config print` so it shows what `serve` would run).
struct SettingFlags: ParsableArguments {
    @Option(help: h("listen")) var listen: String?
    @Option(help: h("data")) var data: String?
    @Option(help: h("log-level")) var logLevel: String?
    @Option(help: h("log-format")) var logFormat: String?
    @Option(help: h("max-frame")) var maxFrame: Int64?
    @Option(help: h("max-frame-before-login")) var maxFrameBeforeLogin: Int64?
    @Option(help: h("login-timeout")) var loginTimeout: Int64?
    @Option(help: h("idle-timeout")) var idleTimeout: Int64?
    @Option(help: h("ping-interval")) var pingInterval: Int64?
    @Option(help: h("max-connections")) var maxConnections: Int64?
    @Option(help: h("output-soft-cap")) var outputSoftCap: Int64?
    @Option(help: h("output-hard-cap")) var outputHardCap: Int64?
    @Option(help: h("mailbox-max-messages")) var mailboxMaxMessages: Int64?
    @Option(help: h("mailbox-max-bytes")) var mailboxMaxBytes: Int64?
    @Option(help: h("read-pause-above")) var readPauseAbove: Int64?
    @Option(help: h("read-pause-above-before-login")) var readPauseAboveBeforeLogin: Int64?
    @Option(help: h("max-prelogin-per-address")) var maxPreloginPerAddress: Int64?
    @Option(help: h("max-hashing-per-address")) var maxHashingPerAddress: Int64?
    @Option(help: h("max-queued-logins-per-address")) var maxQueuedLoginsPerAddress: Int64?
    @Option(help: h("max-queued-logins")) var maxQueuedLogins: Int64?
    @Option(help: h("hash-threads")) var hashThreads: Int64?
    @Option(help: h("max-store-backlog")) var maxStoreBacklog: Int64?
    @Option(help: h("mail-page-bytes")) var mailPageBytes: Int64?
    @Option(help: h("map-size")) var mapSize: Int64?
    @Option(help: h("max-failed-logins")) var maxFailedLogins: Int64?
    @Option(help: h("max-failed-logins-per-address")) var maxFailedLoginsPerAddress: Int64?
    @Option(help: h("max-registrations-per-address")) var maxRegistrationsPerAddress: Int64?
    @Option(help: h("lockout-window")) var lockoutWindow: Int64?
    @Option(help: h("pbkdf2-iterations")) var pbkdf2Iterations: Int64?
    @Option(help: h("dedupe-window")) var dedupeWindow: Int64?
    @Option(help: h("max-devices")) var maxDevices: Int64?
    @Option(help: h("tls-cert")) var tlsCert: String?
    @Option(help: h("tls-key")) var tlsKey: String?
    @Option(help: h("tls-ca")) var tlsCa: String?
    @Option(help: h("handshake-timeout")) var handshakeTimeout: Int64?
    @Flag(inversion: .prefixedNo, help: h("plaintext")) var plaintext: Bool?
    @Option(help: h("metrics")) var metrics: String?
    @Flag(inversion: .prefixedNo, help: h("admin")) var admin: Bool?
    @Option(help: h("admin-socket")) var adminSocket: String?
    @Option(help: h("heap-trim-churn")) var heapTrimChurn: Int64?
    @Option(help: h("cluster")) var cluster: String?
    @Option(help: h("node")) var node: String?
    @Option(help: h("cluster-replicas")) var clusterReplicas: Int64?
    @Option(help: h("cluster-commit-timeout")) var clusterCommitTimeout: Int64?
    @Option(help: h("cluster-credentials")) var clusterCredentials: String?

    /// The flags that were given, as (key, value).
    var overrides: [(String, ConfigValue)] {
        var list: [(String, ConfigValue)] = []
        func add(_ key: String, _ value: String?) { if let value { list.append((key, .string(value))) } }
        func add(_ key: String, _ value: Int64?) { if let value { list.append((key, .integer(value))) } }
        add("listen", listen); add("data", data); add("log-level", logLevel); add("log-format", logFormat)
        add("max-frame", maxFrame); add("max-frame-before-login", maxFrameBeforeLogin)
        add("login-timeout", loginTimeout); add("idle-timeout", idleTimeout); add("ping-interval", pingInterval)
        add("max-connections", maxConnections); add("output-soft-cap", outputSoftCap); add("output-hard-cap", outputHardCap)
        add("mailbox-max-messages", mailboxMaxMessages); add("mailbox-max-bytes", mailboxMaxBytes)
        add("read-pause-above", readPauseAbove); add("read-pause-above-before-login", readPauseAboveBeforeLogin)
        add("max-prelogin-per-address", maxPreloginPerAddress); add("max-hashing-per-address", maxHashingPerAddress)
        add("max-queued-logins-per-address", maxQueuedLoginsPerAddress); add("max-queued-logins", maxQueuedLogins)
        add("hash-threads", hashThreads); add("max-store-backlog", maxStoreBacklog); add("mail-page-bytes", mailPageBytes)
        add("map-size", mapSize); add("max-failed-logins", maxFailedLogins)
        add("max-failed-logins-per-address", maxFailedLoginsPerAddress)
        add("max-registrations-per-address", maxRegistrationsPerAddress); add("lockout-window", lockoutWindow)
        add("pbkdf2-iterations", pbkdf2Iterations); add("dedupe-window", dedupeWindow)
        add("max-devices", maxDevices)
        add("tls-cert", tlsCert); add("tls-key", tlsKey); add("tls-ca", tlsCa)
        add("handshake-timeout", handshakeTimeout); add("heap-trim-churn", heapTrimChurn)
        if let plaintext { list.append(("plaintext", .boolean(plaintext))) }
        add("metrics", metrics); add("admin-socket", adminSocket)
        add("cluster", cluster); add("node", node); add("cluster-replicas", clusterReplicas)
        add("cluster-commit-timeout", clusterCommitTimeout); add("cluster-credentials", clusterCredentials)
        if let admin { list.append(("admin", .boolean(admin))) }
        return list
    }
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the relay server (the default subcommand).",
        discussion: """
            Every flag below is also a key of the config file (--config FILE, TOML): `max-frame = 65536`. \
            Flags override the file. SIGHUP re-reads the file and applies what can change live (TLS files, \
            limits, log level); `switchboard config print` shows the effective configuration.
            """)

    @Option(help: "Config file (TOML, one `key = value` per line; keys are the flag names). Flags override it.")
    var config: String?
    @OptionGroup var flags: SettingFlags

    func run() throws {
        let overrides = flags.overrides
        let configPath = config
        let settings: ServeSettings
        do { settings = try ServeSettings.resolve(configPath: configPath, overrides: overrides) } catch {
            try fail("\(error)")
        }
        LogOutput.bootstrap(format: settings.jsonLogs ? .json : .text, level: settings.logLevel)
        let config: ServerConfiguration
        do { config = try settings.serverConfiguration() } catch { try fail("\(error)") }
        if let tls = config.tls {
            guard access(tls.certificateChainFile, R_OK) == 0, access(tls.privateKeyFile, R_OK) == 0 else {
                try fail("""
                    no TLS certificate at \(tls.certificateChainFile) / \(tls.privateKeyFile). Create a development one with \
                    `switchboard cert init --data \(config.dataDirectory)`, pass --tls-cert and --tls-key, or run with --plaintext.
                    """)
            }
        }
        let limit = Sys.raiseFileLimit(wanted: UInt64(config.maxConnections) + 1024)
        if limit < UInt64(config.maxConnections) + 64 {
            Logger(label: "switchboard").warning("file descriptor limit is below --max-connections",
                                                 metadata: ["limit": "\(limit)", "max-connections": "\(config.maxConnections)"])
        }
        let server: RelayServer
        do {
            server = try RelayServer(configuration: config)
        } catch {
            try fail("cannot start: \(error)")
        }
        server.enableReload(ReloadSource(running: settings) {
            try ServeSettings.resolve(configPath: configPath, overrides: overrides)
        })
        server.serviceNotifier = ServiceNotifier.fromEnvironment()
        installSignals(shutdown: server.shutdownEventFD, reload: server.reloadEventFD)
        // One line on stdout that scripts and tests wait for.
        print("switchboard listening on \(server.boundAddress)")
        if let metricsAddress = server.metricsAddress { print("switchboard metrics on http://\(metricsAddress)/metrics") }
        fflushStdout()
        try server.run()
        if let why = server.startRefusal { try fail(why) }
    }
}
