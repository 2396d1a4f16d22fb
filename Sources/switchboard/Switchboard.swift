// `switchboard`: the relay server's command line. `serve` runs it; `users` holds admin tasks that
// write straight into LMDB (for load tests) and must not run while a server uses the same data.
import ArgumentParser
import Glibc
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardServer
import SwitchboardStore
import SwitchboardTLS

@main
struct SwitchboardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchboard",
        abstract: "A single-threaded epoll chat relay with offline mail in LMDB.",
        subcommands: [Serve.self, Cert.self, Users.self],
        defaultSubcommand: Serve.self)
}

/// The signal handler may only do async-signal-safe things: it writes to the server's eventfd.
nonisolated(unsafe) private var shutdownFD: Int32 = -1
nonisolated(unsafe) private var reloadFD: Int32 = -1

private func installSignals(shutdown: Int32, reload: Int32) {
    shutdownFD = shutdown
    reloadFD = reload
    var hangup = sigaction()
    hangup.__sigaction_handler.sa_handler = { _ in
        var one: UInt64 = 1
        _ = Glibc.write(reloadFD, &one, 8)
    }
    sigemptyset(&hangup.sa_mask)
    sigaction(SIGHUP, &hangup, nil)
    var action = sigaction()
    action.__sigaction_handler.sa_handler = { _ in
        var one: UInt64 = 1
        _ = Glibc.write(shutdownFD, &one, 8)
    }
    sigemptyset(&action.sa_mask)
    action.sa_flags = 0
    sigaction(SIGINT, &action, nil)
    sigaction(SIGTERM, &action, nil)
    // A parent may have spawned us with these blocked (some process launchers do): unblock them,
    // or a SIGTERM would wait forever.
    var unblock = sigset_t()
    sigemptyset(&unblock)
    sigaddset(&unblock, SIGINT)
    sigaddset(&unblock, SIGTERM)
    sigaddset(&unblock, SIGHUP)
    sigprocmask(SIG_UNBLOCK, &unblock, nil)
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the relay server (the default subcommand).")

    @Option(help: "Address to listen on: IPv4:PORT or [IPv6]:PORT.")
    var listen = "127.0.0.1:7878"
    @Option(help: "Data folder (LMDB environment; created if missing).")
    var data = "./data"
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"
    @Option(help: "Largest frame after login, in bytes.")
    var maxFrame: UInt32 = 65_536
    @Option(help: "Largest frame before login, in bytes.")
    var maxFrameBeforeLogin: UInt32 = 8_192
    @Option(help: "Seconds a new connection has to log in.")
    var loginTimeout: UInt32 = 10
    @Option(help: "Seconds without traffic before a logged-in connection is closed.")
    var idleTimeout: UInt32 = 120
    @Option(help: "Seconds of quiet after which the server pings a connection.")
    var pingInterval: UInt32 = 30
    @Option(help: "Most concurrent connections; more are refused with serverBusy.")
    var maxConnections = 100_000
    @Option(help: "Bytes queued for one receiver above which new messages go to its mailbox.")
    var outputSoftCap = 256 << 10
    @Option(help: "Bytes queued for one receiver above which it is disconnected (slowConsumer).")
    var outputHardCap = 4 << 20
    @Option(help: "Most stored messages per mailbox.")
    var mailboxMaxMessages: UInt32 = 10_000
    @Option(help: "Most stored body bytes per mailbox.")
    var mailboxMaxBytes: UInt64 = 64 << 20
    @Option(help: "Unwritten bytes for one connection above which the server stops reading it until half has drained.")
    var readPauseAbove = 256 << 10
    @Option(help: "The same before login.")
    var readPauseAboveBeforeLogin = 16 << 10
    @Option(help: "Connections from one client address that have not logged in yet; more are refused (serverBusy).")
    var maxPreloginPerAddress = 1024
    @Option(help: "Password checks run at once for one client address (the rest wait their turn).")
    var maxHashingPerAddress = 2
    @Option(help: "LOGIN/REGISTER attempts waiting per client address; more get busyRetryLater.")
    var maxQueuedLoginsPerAddress = 512
    @Option(help: "LOGIN/REGISTER attempts waiting in all; more get busyRetryLater.")
    var maxQueuedLogins = 4096
    @Option(help: "Password hashing threads.")
    var hashThreads = 1
    @Option(help: "Mail bodies waiting for their commit, in MiB, above which the senders adding to it are not read until half has committed.")
    var maxStoreBacklog = 32
    @Option(help: "Stored mail per page at login: most bytes (a page is also at most 256 messages).")
    var mailPageBytes = 128 << 10
    @Option(help: "Largest size the LMDB database may grow to, in MiB (address space; the file grows as needed). When full, sends that would be stored get SEND_ERROR storageFull; raise it and restart.")
    var mapSize = 16 << 10
    @Option(help: "Failed logins per (user name, client address) within the lockout window before that address is locked out for that name; past this many failures of a name from anywhere, attempts from addresses it never logged in from are delayed (250 ms doubling, at most 4 s).")
    var maxFailedLogins = 5
    @Option(help: "Failed logins per client address within the lockout window before it is locked.")
    var maxFailedLoginsPerAddress = 20
    @Option(help: "Accounts one client address may register within the lockout window.")
    var maxRegistrationsPerAddress = 20
    @Option(help: "Lockout window in seconds.")
    var lockoutWindow: UInt64 = 900
    @Option(help: "PBKDF2-HMAC-SHA256 iterations for new passwords.")
    var pbkdf2Iterations: UInt32 = 210_000
    @Option(help: "Recent message ids remembered per sender to drop resent duplicates; at least the most messages a client keeps unacknowledged.")
    var dedupeWindow = 256
    @Option(help: "TLS certificate chain (PEM). Default: DATA/tls/server.pem from `switchboard cert init`.")
    var tlsCert: String?
    @Option(help: "TLS private key (PEM). Default: DATA/tls/server.key.")
    var tlsKey: String?
    @Option(help: "Require client certificates signed by this CA (PEM). Off by default.")
    var tlsCa: String?
    @Option(help: "Seconds a client has to finish its TLS handshake.")
    var handshakeTimeout: UInt64 = 5
    @Flag(help: "Serve without TLS (for benchmarks against plaintext peers). Logged as a warning.")
    var plaintext = false
    @Option(help: "Accepts + closes after which the server gives freed heap memory back to the system (malloc_trim on a helper thread, once the churn has calmed down: after a storm of TLS handshakes glibc otherwise keeps tens of MB). 0 turns it off.")
    var heapTrimChurn = 1024

    func validate() throws {
        guard LogLevelParser.parse(logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
        guard maxFrame >= 1024, maxFrameBeforeLogin >= 256 else { throw ValidationError("frame limits are too small (min 1024 / 256)") }
        guard outputSoftCap < outputHardCap else { throw ValidationError("--output-soft-cap must be below --output-hard-cap") }
        guard pbkdf2Iterations >= 1 else { throw ValidationError("--pbkdf2-iterations must be at least 1") }
        guard heapTrimChurn >= 0 else { throw ValidationError("--heap-trim-churn must be 0 (off) or more") }
        guard dedupeWindow >= 1 && dedupeWindow <= 1 << 20 else { throw ValidationError("--dedupe-window must be 1...1048576") }
        guard readPauseAbove >= 4096, readPauseAboveBeforeLogin >= 1024 else {
            throw ValidationError("--read-pause-above must be at least 4096 and --read-pause-above-before-login at least 1024")
        }
        guard maxPreloginPerAddress >= 1, maxHashingPerAddress >= 1, maxQueuedLoginsPerAddress >= 1, maxQueuedLogins >= 1 else {
            throw ValidationError("--max-prelogin-per-address, --max-hashing-per-address and the login queue limits must be at least 1")
        }
        guard hashThreads >= 1 && hashThreads <= 64 else { throw ValidationError("--hash-threads must be 1...64") }
        guard maxStoreBacklog >= 1 && maxStoreBacklog <= 1 << 14 else { throw ValidationError("--max-store-backlog must be 1...16384 MiB") }
        guard mailPageBytes >= 1024 else { throw ValidationError("--mail-page-bytes must be at least 1024") }
        guard mapSize >= 1 && mapSize <= 1 << 26 else { throw ValidationError("--map-size must be 1...67108864 MiB") }
    }

    func run() throws {
        let level = LogLevelParser.parse(logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let address: SocketAddress
        do { address = try SocketAddress(parsing: listen) } catch { throw ValidationError("--listen: \(error)") }
        var config = ServerConfiguration(listenAddress: address, dataDirectory: data)
        config.limits = ServerLimits(maxFrameBytes: maxFrame, maxFrameBytesBeforeLogin: maxFrameBeforeLogin,
                                     loginTimeoutMs: loginTimeout * 1000, idleTimeoutMs: idleTimeout * 1000,
                                     pingIntervalMs: pingInterval * 1000, mailboxMaxMessages: mailboxMaxMessages,
                                     mailboxMaxBytes: mailboxMaxBytes)
        config.maxConnections = maxConnections
        config.outputSoftCapBytes = outputSoftCap
        config.outputHardCapBytes = outputHardCap
        config.maxFailedLoginsPerUser = maxFailedLogins
        config.maxFailedLoginsPerAddress = maxFailedLoginsPerAddress
        config.lockoutWindowMs = lockoutWindow * 1000
        config.maxRegistrationsPerAddress = maxRegistrationsPerAddress
        config.pbkdf2Iterations = pbkdf2Iterations
        config.dedupeWindow = dedupeWindow
        config.heapTrimChurn = heapTrimChurn
        config.readPauseAboveBytes = readPauseAbove
        config.preLoginReadPauseAboveBytes = readPauseAboveBeforeLogin
        config.maxPreLoginConnectionsPerAddress = maxPreloginPerAddress
        config.maxHashingPerAddress = maxHashingPerAddress
        config.maxQueuedLoginsPerAddress = maxQueuedLoginsPerAddress
        config.maxQueuedLogins = maxQueuedLogins
        config.hashThreads = hashThreads
        config.mailPageBytes = mailPageBytes
        config.maxStoreBacklogBytes = maxStoreBacklog << 20
        config.storeMapSizeBytes = mapSize << 20
        config.plaintext = plaintext
        config.handshakeTimeoutMs = handshakeTimeout * 1000
        if !plaintext {
            let tlsDirectory = DevelopmentCA.directory(forDataDirectory: data)
            let cert = tlsCert ?? tlsDirectory + "/server.pem"
            let key = tlsKey ?? tlsDirectory + "/server.key"
            guard access(cert, R_OK) == 0, access(key, R_OK) == 0 else {
                try fail("""
                    no TLS certificate at \(cert) / \(key). Create a development one with \
                    `switchboard cert init --data \(data)`, pass --tls-cert and --tls-key, or run with --plaintext.
                    """)
            }
            config.tls = TLSServerConfiguration(certificateChainFile: cert, privateKeyFile: key, clientCAFile: tlsCa)
        }
        let limit = Sys.raiseFileLimit(wanted: UInt64(maxConnections) + 1024)
        if limit < UInt64(maxConnections) + 64 {
            Logger(label: "switchboard").warning("file descriptor limit is below --max-connections",
                                                 metadata: ["limit": "\(limit)", "max-connections": "\(maxConnections)"])
        }
        let server: RelayServer
        do {
            server = try RelayServer(configuration: config)
        } catch {
            try fail("cannot start: \(error)")
        }
        installSignals(shutdown: server.shutdownEventFD, reload: server.reloadEventFD)
        // One line on stdout that scripts and tests wait for.
        print("switchboard listening on \(server.boundAddress)")
        fflushStdout()
        try server.run()
    }
}

func fflushStdout() { fflush(nil) }

/// Prints "switchboard: reason" on stderr and exits 1.
func fail(_ message: String) throws -> Never {
    fflush(nil)
    let bytes = Array("switchboard: \(message)\n".utf8)
    _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    throw ExitCode.failure
}

enum LogLevelParser {
    static func parse(_ text: String) -> Logger.Level? { Logger.Level(rawValue: text.lowercased()) }
}

struct Users: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Account administration straight on the data folder (stop the server first).",
        subcommands: [BulkCreate.self, Count.self])

    struct BulkCreate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "bulk-create",
            abstract: "Create PREFIX0..PREFIX(N-1) sharing one password hash (for load tests), and optionally pair them as contacts.")
        @Option(help: "Data folder.") var data = "./data"
        @Option(help: "Name prefix.") var prefix = "load"
        @Option(help: "How many accounts.") var count = 1000
        @Option(help: "Password for all of them (read from SWITCHBOARD_PASSWORD if omitted).") var password: String?
        @Option(help: "PBKDF2 iterations for the shared hash.") var pbkdf2Iterations: UInt32 = 1000
        @Flag(help: "Make accounts 2k and 2k+1 accepted contacts of each other.") var pairContacts = false

        func run() throws {
            guard let pw = password ?? ProcessEnvironment.get("SWITCHBOARD_PASSWORD") else {
                throw ValidationError("give --password or set SWITCHBOARD_PASSWORD")
            }
            guard count > 0, count <= 10_000_000 else { throw ValidationError("--count must be 1...10000000") }
            let store = try Store(directory: data)
            defer { store.close() }
            let hash = PasswordHasher.hash(password: Array(pw.utf8), iterations: pbkdf2Iterations)
            let names = (0..<count).map { "\(prefix)\($0)" }
            var created = 0
            var index = 0
            while index < names.count {
                let end = min(index + 50_000, names.count)
                created += try store.createAccountsBulk(names: Array(names[index..<end]), password: hash)
                index = end
                print("created \(created) of \(count)")
            }
            if pairContacts {
                var ops: [WriteOp] = []
                var pairs = 0
                for k in stride(from: 0, to: count - 1, by: 2) {
                    guard let owner = try store.account(named: names[k]) else { continue }
                    ops.append(.contactAdd(owner: owner.userID, contactName: names[k + 1]))
                    if let other = try store.account(named: names[k + 1]) {
                        ops.append(.contactAdd(owner: other.userID, contactName: names[k]))
                    }
                    pairs += 1
                    if ops.count >= 20_000 { _ = try store.apply(ops); ops.removeAll() }
                }
                if !ops.isEmpty { _ = try store.apply(ops) }
                print("paired \(pairs) contact pairs")
            }
        }
    }

    struct Count: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print how many accounts exist.")
        @Option(help: "Data folder.") var data = "./data"
        func run() throws {
            let store = try Store(directory: data)
            defer { store.close() }
            print(try store.userCount())
        }
    }
}

enum ProcessEnvironment {
    static func get(_ name: String) -> String? {
        guard let value = getenv(name) else { return nil }
        return String(cString: value)
    }
}
