// `switchboard`: the relay server's command line. `serve` runs it; `users` administers accounts (through
// a running server's admin socket, or straight in LMDB when it is stopped; Users.swift); `admin` and
// `top` talk to the running server (Admin.swift, Top.swift).
import ArgumentParser
import Glibc
import Logging
import SwitchboardCluster
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
        subcommands: [Serve.self, Cert.self, Users.self, Admin.self, Top.self, ConfigCommand.self, Backup.self, DataCommand.self,
                      Service.self],
        defaultSubcommand: Serve.self)
}

/// The signal handler may only do async-signal-safe things: it writes to the server's eventfd.
nonisolated(unsafe) private var shutdownFD: Int32 = -1
nonisolated(unsafe) private var reloadFD: Int32 = -1

func installSignals(shutdown: Int32, reload: Int32) {
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

// `serve` is in Serve.swift (its flags are the config file's keys, ServeSettings).

func fflushStdout() { fflush(nil) }

/// Prints "switchboard: reason" on stderr and exits 1.
func fail(_ message: String) throws -> Never {
    fflush(nil)
    let bytes = Array("switchboard: \(message)\n".utf8)
    _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    throw ExitCode.failure
}

struct Users: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Account administration: add, passwd, delete and list work with the server running (admin socket) or stopped; bulk-create and count need it stopped.",
        subcommands: [UserAdd.self, UserPasswd.self, UserDelete.self, UserList.self, BulkCreate.self, Count.self])

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
        @Option(help: "Write through a running cluster's log instead (nats://IP:PORT,...): every node gets the accounts.")
        var cluster: String?
        @Option(help: "With --cluster: the log's replica count, as the nodes were started with.") var clusterReplicas = 3
        @Option(help: "With --cluster: a file (mode 0600) with the NATS credentials ('token: ...', or 'user: ...' and 'password: ...').")
        var clusterCredentials: String?

        func run() throws {
            guard let pw = password ?? ProcessEnvironment.get("SWITCHBOARD_PASSWORD") else {
                throw ValidationError("give --password or set SWITCHBOARD_PASSWORD")
            }
            guard count > 0, count <= 10_000_000 else { throw ValidationError("--count must be 1...10000000") }
            if let cluster {
                let hash = PasswordHasher.hash(password: Array(pw.utf8), iterations: pbkdf2Iterations)
                do {
                    let credentials = try clusterCredentials.map { path throws in try NATSCredentials.load(path: path) }
                    try ClusterBulk.run(servers: cluster, replicas: clusterReplicas, credentials: credentials, names: (0..<count).map { "\(prefix)\($0)" },
                                        hash: hash, pairContacts: pairContacts)
                } catch {
                    try fail("bulk-create through the cluster: \(error)")
                }
                return
            }
            if AdminClient.serverRunning(at: AdminSocketOptions.path(forData: data)) {
                try fail("a server is running on \(data): stop it first (bulk-create writes the store directly)")
            }
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
