// Test support for the cluster log: a real three-server nats-server JetStream cluster on loopback (config,
// store directories and logs under /tmp/clusterlog/; a copy of SwitchboardClusterTests' harness with start and
// stop of every server), one epoll loop that routes timers to every NATS connection and cluster log, and
// "nodes": a real LMDB replica in a temp folder, its own NATS connection and its own ClusterLog, recording what
// the log reports. `dump` is every record of a replica, raw, for byte-for-byte comparison of replicas.
import Glibc
import Logging
import NATSTestHarness
import SwitchboardCluster
import SwitchboardIO
@testable import SwitchboardServer
import SwitchboardSession
@_spi(Testing) import SwitchboardStore
import Testing

let testRoot = "/tmp/clusterlog"

/// The shared launcher (Tests/NATSTestHarness).
typealias NATSCluster = NATSClusterProcess

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

// writeFile, readFile and spawn come from NATSTestHarness.
