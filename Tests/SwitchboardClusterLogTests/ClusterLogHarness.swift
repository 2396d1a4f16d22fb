// Test support for the cluster log: a real three-server nats-server JetStream cluster on loopback (config,
// store directories and logs under /tmp/clusterlog/; a copy of SwitchboardClusterTests' harness with start and
// stop of every server), one epoll loop that routes timers to every NATS connection and cluster log, and
// "nodes": a real LMDB replica in a temp folder, its own NATS connection and its own ClusterLog, recording what
// the log reports. `dump` is every record of a replica, raw, for byte-for-byte comparison of replicas.
import Glibc
import Logging
import SwitchboardCluster
import SwitchboardIO
@testable import SwitchboardServer
import SwitchboardSession
@_spi(Testing) import SwitchboardStore
import Testing

struct HarnessError: Error, CustomStringConvertible { var description: String }

func natsServerPath() -> String? {
    for path in ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"] where access(path, X_OK) == 0 {
        return path
    }
    return nil
}

let testRoot = "/tmp/clusterlog"

final class NATSCluster {
    let root: String
    let clientPorts: [Int]
    let monitorPorts: [Int]
    private(set) var alive: [Bool]
    private let binary: String
    private var wrappers: [pid_t] = []

    /// Ports: clients base+1...3, routes base+11...13, monitoring base+21...23.
    init(name: String, basePort: Int) throws {
        guard let binary = natsServerPath() else { throw HarnessError(description: "nats-server not installed") }
        self.binary = binary
        root = "\(testRoot)/\(name)-\(getpid())"
        clientPorts = (1...3).map { basePort + $0 }
        monitorPorts = (1...3).map { basePort + 20 + $0 }
        alive = [false, false, false]
        _ = system("rm -rf '\(root)' && mkdir -p '\(root)'")
        let routes = (1...3).map { "nats-route://127.0.0.1:\(basePort + 10 + $0)" }.joined(separator: ", ")
        for i in 0..<3 {
            let config = """
            server_name: n\(i + 1)
            listen: 127.0.0.1:\(clientPorts[i])
            http: 127.0.0.1:\(monitorPorts[i])
            pid_file: "\(root)/n\(i + 1).pid"
            jetstream { store_dir: "\(root)/n\(i + 1)", max_memory_store: 64MB, max_file_store: 512MB }
            cluster { name: sb, listen: 127.0.0.1:\(basePort + 11 + i), routes: [\(routes)] }
            """
            try writeFile("\(root)/n\(i + 1).conf", config)
        }
        for i in 0..<3 { try start(i) }
    }

    deinit { stop() }

    func start(_ i: Int) throws {
        let args = ["/usr/bin/timeout", "--signal=KILL", "180", binary, "-c", "\(root)/n\(i + 1).conf"]
        wrappers.append(try spawn(args, outputTo: "\(root)/n\(i + 1).log.\(wrappers.count)"))
        alive[i] = true
    }

    var urls: String { clientPorts.map { "nats://127.0.0.1:\($0)" }.joined(separator: ",") }
    /// All three, starting with server i.
    func urls(from i: Int) -> String { (0..<3).map { "nats://127.0.0.1:\(clientPorts[(i + $0) % 3])" }.joined(separator: ",") }

    func pid(_ i: Int) -> pid_t? {
        guard let text = readFile("\(root)/n\(i + 1).pid") else { return nil }
        return pid_t(text.filter { $0.isNumber })
    }

    func kill9(_ i: Int) {
        if let p = pid(i) { Glibc.kill(p, SIGKILL) }
        alive[i] = false
        reap()
    }

    private func reap() {
        var status: Int32 = 0
        var left: [pid_t] = []
        for pid in wrappers {
            var done = false
            for _ in 0..<50 {
                if waitpid(pid, &status, WNOHANG) != 0 { done = true; break }
                if alive.allSatisfy({ $0 }) { break }
                usleep(5_000)
            }
            if !done { left.append(pid) }
        }
        wrappers = left
    }

    func stop() {
        for i in 0..<3 where alive[i] { kill9(i) }
        wrappers = []
    }

    func removeFiles() { _ = system("rm -rf '\(root)'") }
}

/// One loop for every connection and log of a test; timers routed to each.
final class TestLoop {
    let loop: EventLoop
    var connections: [NATSConnection] = []
    var logs: [ClusterLog] = []

    init() throws {
        loop = try EventLoop()
        loop.onTimer = { [unowned self] token in
            for c in self.connections where c.handleTimer(token) { return }
            for l in self.logs where l.handleTimer(token) { return }
        }
    }

    func connect(_ urls: String, name: String) throws -> NATSConnection {
        var configuration = NATSConfiguration(servers: try NATSServerList.parse(urls), name: name)
        configuration.timerTokenBase = 0x4E41_5453_0000_0000 + UInt64(connections.count) * 16
        configuration.seed = UInt64(connections.count + 1)
        configuration.pingIntervalMs = 500
        let c = NATSConnection(loop: loop, configuration: configuration)
        connections.append(c)
        c.start()
        return c
    }

    /// Runs the loop until `condition` holds or `timeoutMs` passes; returns whether it held.
    @discardableResult
    func run(timeoutMs: UInt64 = 10_000, until condition: () -> Bool) throws -> Bool {
        let deadline = Clock.monotonicMs() + timeoutMs
        while !condition() {
            if Clock.monotonicMs() >= deadline { return false }
            try loop.runOnce(maxWaitMs: 5)
        }
        return true
    }

    func sleep(_ ms: UInt64) throws { try run(timeoutMs: ms) { false } }

    /// One callback-style call, run to completion.
    func complete<T>(timeoutMs: UInt64 = 10_000, _ call: (@escaping (T) -> Void) -> Void) throws -> T {
        var result: T?
        call { result = $0 }
        try run(timeoutMs: timeoutMs) { result != nil }
        guard let result else { throw HarnessError(description: "call did not complete within \(timeoutMs) ms") }
        return result
    }
}

/// Waits until JetStream answers with a meta leader (routes up).
func readyCluster(_ name: String, basePort: Int, _ t: TestLoop) throws -> NATSCluster {
    let cluster = try NATSCluster(name: name, basePort: basePort)
    try waitForJetStream(cluster, t)
    return cluster
}

func waitForJetStream(_ cluster: NATSCluster, _ t: TestLoop) throws {
    let probe = try t.connect(cluster.urls, name: "probe")
    defer { probe.close() }
    let started = Clock.monotonicMs()
    while Clock.monotonicMs() - started < 20_000 {
        try t.sleep(50)
        guard probe.isConnected else { continue }
        var answer: Result<NATSMessage, NATSRequestError>?
        try probe.request("$JS.API.INFO", payload: [], timeoutMs: 500) { answer = $0 }
        try t.run(timeoutMs: 1_000) { answer != nil }
        if case .success(let m)? = answer, !String(decoding: m.payload, as: UTF8.self).contains("\"error\"") {
            print("cluster: JetStream ready after \(Clock.monotonicMs() - started) ms")
            return
        }
    }
    throw HarnessError(description: "JetStream not ready within 20 s")
}

let testLogger: Logger = {
    var logger = Logger(label: "clusterlog-test")
    logger.logLevel = .notice
    return logger
}()

/// A Switchboard node as the cluster log sees it: a replica, a NATS connection, a ClusterLog.
final class Node {
    let name: String
    let directory: String
    let t: TestLoop
    let nats: NATSConnection
    let log: ClusterLog
    let store: Store
    var committed: [UInt64: StoreBatchResult] = [:]
    var order: [UInt64] = []
    var foreign: [([WriteOp], [WriteResult])] = []
    var ready = false
    var outOfOrder = 0
    private var nextToken: UInt64 = 1
    private var submittedTokens: [UInt64] = []

    init(_ name: String, _ t: TestLoop, urls: String, directory: String, start: Bool = true, mapSizeBytes: Int = 1 << 28,
         tweak: (inout ClusterLogConfiguration) -> Void = { _ in }) throws {
        self.name = name
        self.t = t
        self.directory = directory
        store = try Store(directory: directory, mapSizeBytes: mapSizeBytes, options: .clusterReplica)
        nats = try t.connect(urls, name: name)
        var configuration = ClusterLogConfiguration()
        configuration.timerTokenBase = 0x434C_4F47_0000_0000 + UInt64(t.logs.count) * 16
        tweak(&configuration)
        var logger = testLogger
        logger[metadataKey: "node"] = "\(name)"
        log = try ClusterLog(loop: t.loop, nats: nats, store: store, node: name, configuration: configuration, logger: logger)
        t.logs.append(log)
        log.onReady = { [unowned self] in self.ready = true }
        log.onCommitted = { [unowned self] result in
            // Batches complete in submission order: the next token submitted is this one's.
            let token = self.submittedTokens[self.order.count]
            if case .admin(let first)? = result.batch.contexts.first, first != token { self.outOfOrder += 1 }
            self.committed[token] = result
            self.order.append(token)
        }
        log.onForeignApplied = { [unowned self] ops, results in self.foreign.append((ops, results)) }
        if start { log.start() }
    }

    /// Submits ops; the first op's context is `.admin(token)`, a later putMail's is `.mail`. Returns the token.
    @discardableResult
    func submit(_ ops: [WriteOp]) -> UInt64 {
        let token = nextToken
        nextToken += 1
        var batch = StoreBatch()
        for (index, op) in ops.enumerated() {
            if index > 0, case .putMail(let mail) = op {
                batch.append(op, .mail(mail))
            } else {
                batch.append(op, .admin(token: token))
            }
        }
        submittedTokens.append(token)
        log.submit(batch)
        return token
    }

    /// Submits and waits for the result.
    func commit(_ ops: [WriteOp], timeoutMs: UInt64 = 20_000) throws -> Result<[WriteResult], StoreErrorBox> {
        let token = submit(ops)
        try t.run(timeoutMs: timeoutMs) { committed[token] != nil }
        guard let result = committed[token] else { throw HarnessError(description: "\(name): batch \(token) did not complete") }
        return result.results
    }

    func close() {
        log.close()
        nats.close()
        store.close()
    }
}

/// Every record of a replica, readable.
func dump(_ store: Store) throws -> [String] {
    try store.rawContentsForTesting().map { record in
        "\(record.database) \(hex(record.key)) = \(hex(record.value))"
    }
}

func hex(_ bytes: [UInt8]) -> String { bytes.map { String($0, radix: 16) }.joined(separator: ".") }

/// Expects the replicas to hold the same bytes; reports the first differences.
func expectEqualReplicas(_ nodes: [Node], sourceLocation: SourceLocation = #_sourceLocation) throws {
    let first = try dump(nodes[0].store)
    for node in nodes.dropFirst() {
        let other = try dump(node.store)
        let onlyFirst = Set(first).subtracting(other).sorted().prefix(5)
        let onlyOther = Set(other).subtracting(first).sorted().prefix(5)
        #expect(first == other, "\(nodes[0].name) vs \(node.name): \(first.count) vs \(other.count) records; only in \(nodes[0].name): \(Array(onlyFirst)); only in \(node.name): \(Array(onlyOther))",
                sourceLocation: sourceLocation)
    }
}

/// Runs until every node has applied everything any of them knows of and nothing is pending.
func quiesce(_ nodes: [Node], _ t: TestLoop, timeoutMs: UInt64 = 20_000) throws -> Bool {
    try t.run(timeoutMs: timeoutMs) {
        let known = nodes.map { $0.log.status.streamLastSeq }.max() ?? 0
        return nodes.allSatisfy { $0.log.status.appliedSeq == known && $0.log.status.pendingBatches == 0 }
    }
}

func scratchDirectory(_ test: String) -> String {
    let path = "\(testRoot)/\(test)-\(getpid())-data"
    _ = system("rm -rf '\(path)' && mkdir -p '\(path)'")
    return path
}

let testPassword = PasswordHash(algorithm: 1, iterations: 1000, salt: Array(0..<16), hash: Array(0..<32))

// MARK: - small POSIX helpers

func writeFile(_ path: String, _ text: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw HarnessError(description: "cannot write \(path)") }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

func readFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += chunk[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

/// Starts a program with stdout+stderr to `outputTo` and stdin from /dev/null, signals reset; returns its pid.
func spawn(_ args: [String], outputTo path: String) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var emptyMask = sigset_t()
    sigemptyset(&emptyMask)
    posix_spawnattr_setsigmask(&attributes, &emptyMask)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for s in [SIGPIPE, SIGHUP, SIGINT, SIGTERM] { sigaddset(&defaults, s) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
    argv.append(nil)
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, args[0], &actions, &attributes, argv, environ)
    guard rc == 0 else { throw HarnessError(description: "posix_spawn \(args[0]) failed: \(rc)") }
    return pid
}
