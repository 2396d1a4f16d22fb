// `switchboard users bulk-create --cluster URLS`: load-test accounts for a running cluster. The writes go
// through the cluster's log like any node's (every node applies them), from a throwaway replica of this
// process: it catches up with the log (to learn the ids the accounts get), then submits the accounts and,
// with --pair-contacts, the contact pairs, and waits until each batch is durable and applied.
import Foundation
import Logging
import SwitchboardCluster
import SwitchboardIO
import SwitchboardServer
import SwitchboardSession
import SwitchboardStore

enum ClusterBulk {
    struct Failure: Error, CustomStringConvertible { let description: String }

    static func run(servers: String, replicas: Int, credentials: NATSCredentials?, names: [String], hash: PasswordHash,
                    pairContacts: Bool) throws {
        let directory = NSTemporaryDirectory() + "switchboard-bulk-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try Store(directory: directory, mapSizeBytes: 8 << 30, options: .clusterReplica)
        defer { store.close() }
        let loop = try EventLoop()
        var natsConfiguration = NATSConfiguration(servers: try NATSServerList.parse(servers), name: "switchboard-bulk")
        natsConfiguration.timerTokenBase = 0x4E41_5453_0000_0000
        natsConfiguration.credentials = credentials
        let nats = NATSConnection(loop: loop, configuration: natsConfiguration)
        var configuration = ClusterLogConfiguration()
        configuration.replicas = replicas
        configuration.commitTimeoutMs = 60_000
        var logger = Logger(label: "switchboard-bulk")
        logger.logLevel = .warning
        let log = try ClusterLog(loop: loop, nats: nats, store: store, node: "bulk-\(getpid())", configuration: configuration,
                                 logger: logger)
        loop.onTimer = { token in if !nats.handleTimer(token) { log.handleTimer(token) } }
        var ready = false
        var outcomes: [StoreBatchResult] = []
        log.onReady = { ready = true }
        log.onCommitted = { outcomes.append($0) }
        // A refusal of our credentials comes again at every reconnect: fail at once, saying so.
        var refused: String?
        let previous = nats.onEvent
        nats.onEvent = { event in
            previous?(event)
            if case .serverError(let text) = event, text.lowercased().contains("authorization") { refused = text }
        }
        nats.start()
        log.start()
        defer { log.close(); nats.close() }
        func run(_ what: String, timeoutMs: UInt64, until done: () -> Bool) throws {
            let deadline = Clock.monotonicMs() + timeoutMs
            while !done() {
                if let refused {
                    throw Failure(description: "the NATS server refused the credentials (\(refused)); check --cluster-credentials")
                }
                guard Clock.monotonicMs() < deadline else { throw Failure(description: "\(what): no answer from the cluster within \(timeoutMs / 1000) s (\(log.status))") }
                try loop.runOnce(maxWaitMs: 20)
            }
        }
        try run("catching up with the cluster log", timeoutMs: 120_000) { ready }
        /// Submits `ops` in batches of `size`, waits for all, and returns the results in order.
        func submit(_ ops: [WriteOp], size: Int, label: String) throws -> [WriteResult] {
            outcomes.removeAll()
            var submitted = 0
            var index = 0
            while index < ops.count {
                let end = min(index + size, ops.count)
                var batch = StoreBatch()
                for op in ops[index..<end] { batch.append(op, .admin(token: UInt64(submitted))) }
                log.submit(batch)
                submitted += 1
                index = end
            }
            try run(label, timeoutMs: 300_000) { outcomes.count == submitted }
            var results: [WriteResult] = []
            for outcome in outcomes {
                switch outcome.results {
                case .success(let r): results += r
                case .failure(let error): throw Failure(description: "\(label): \(error)")
                }
            }
            print("\(label): \(ops.count) done")
            return results
        }
        let created = try submit(names.map { .createAccount(name: $0, password: hash) }, size: 5_000, label: "accounts")
        print("created \(created.filter { if case .accountCreated = $0 { return true } else { return false } }.count) of \(names.count) (the others existed)")
        guard pairContacts else { return }
        var ops: [WriteOp] = []
        for k in stride(from: 0, to: names.count - 1, by: 2) {
            guard let a = try store.account(named: names[k]), let b = try store.account(named: names[k + 1]) else { continue }
            ops.append(.contactAdd(owner: a.userID, contactName: names[k + 1]))
            ops.append(.contactAdd(owner: b.userID, contactName: names[k]))
        }
        _ = try submit(ops, size: 10_000, label: "contact pairs")
    }
}
