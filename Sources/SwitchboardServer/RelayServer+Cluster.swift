// Cluster mode of the driver: one NATS connection on the server's loop, the replicated write log
// (ClusterLog: the core's group commits go through JetStream and every node applies every entry to its
// LMDB replica) and the router (ClusterRouter: presence and cross-node relay over core NATS). The core
// sees only `ClusterSeam` and its usual commit results; the listener opens once the replica caught up
// with the log, so no client reads a stale store.
import Logging
import SwitchboardCluster
import SwitchboardIO
import SwitchboardSession
import SwitchboardStore

final class ClusterMode {
    let nats: NATSConnection
    let log: ClusterLog
    let router: ClusterRouter
    private unowned let server: RelayServer
    private var everConnected = false
    private var lastAuthorizationLog: UInt64 = 0
    private(set) var ready = false
    /// What the NATS link is doing, for the log and /healthz.
    private(set) var linkState = "connecting"
    static let routerToken = ServerCore.reservedTokens - 8
    static let openToken = ServerCore.reservedTokens - 10
    /// Loop ms when the node joined NATS' subjects; clients are accepted no sooner than `nameCheckMs` after it
    /// (two heartbeat periods: long enough to hear another process that runs under this node's name).
    private var startedAtMs: UInt64 = 0
    private var caughtUp = false
    private(set) var duplicateNameHeard = false
    static let nameCheckMs: UInt64 = 2_000
    static let routerWorkToken = ServerCore.reservedTokens - 9
    static let natsTokenBase: UInt64 = 0x4E41_5453_0000_0000

    init(server: RelayServer, servers: String, node: String) throws {
        self.server = server
        var configuration = NATSConfiguration(servers: try NATSServerList.parse(servers), name: "switchboard-\(node)")
        configuration.timerTokenBase = Self.natsTokenBase
        configuration.credentials = server.configuration.clusterCredentials
        nats = NATSConnection(loop: server.loop, configuration: configuration)
        var logConfiguration = ClusterLogConfiguration()
        logConfiguration.replicas = server.configuration.clusterReplicas
        logConfiguration.commitTimeoutMs = server.configuration.clusterCommitTimeoutMs
        log = try ClusterLog(loop: server.loop, nats: nats, store: server.store, node: node, configuration: logConfiguration,
                             logger: server.driverLogger)
        router = ClusterRouter(configuration: ClusterRouterConfiguration(node: node), nats: nats, loop: server.loop,
                               host: server.core, logger: server.driverLogger, timerToken: Self.routerToken,
                               workToken: Self.routerWorkToken)
        let previous = nats.onEvent
        nats.onEvent = { [unowned self] event in
            previous?(event)
            self.natsEvent(event)
        }
        log.onCommitted = { [unowned server] result in server.core.commitCompleted([result]) }
        log.onForeignApplied = { [unowned server] ops, results in server.core.clusterApplied(ops, results) }
        log.onReady = { [unowned self] in self.becameReady() }
        server.core.cluster = router
        server.core.replicatedStore = true
        router.onDuplicateName = { [unowned self] in
            guard !self.ready, !self.duplicateNameHeard else { return }
            // Not serving yet: this is the second process with the name. It refuses to start; the first goes on.
            self.duplicateNameHeard = true
            self.server.refuseToStart("another cluster node is running with --node \(node) (its heartbeats arrive under this name); give every node a unique --node")
        }
    }

    func start() throws {
        startedAtMs = server.loop.now
        try router.start()
        nats.start()
        log.start()
    }

    private func becameReady() {
        caughtUp = true
        openWhenChecked()
    }

    /// Opens the listener once the replica caught up and the name check had its time.
    private func openWhenChecked() {
        guard caughtUp, !ready, !duplicateNameHeard else { return }
        let due = startedAtMs + Self.nameCheckMs
        guard server.loop.now >= due else {
            server.loop.schedule(at: due, token: Self.openToken)
            return
        }
        ready = true
        server.driverLogger.info("cluster replica caught up; accepting clients", metadata: ["node": "\(router.configuration.node)"])
        server.clusterReady()
    }

    private func natsEvent(_ event: NATSEvent) {
        let logger = server.driverLogger
        switch event {
        case .connected(let address, let name):
            linkState = "connected to \(name) (\(address))"
            logger.info("cluster: NATS connected", metadata: ["server": "\(address)", "name": "\(name)"])
            if everConnected { router.natsReconnected() }
            everConnected = true
        case .disconnected(let address, let reason):
            linkState = "disconnected: \(reason)"
            logger.warning("cluster: NATS link lost; local relaying goes on, messages for other nodes wait or fail",
                           metadata: ["server": "\(address)", "reason": "\(reason)"])
        case .connectFailed(let address, let reason):
            linkState = "connect to \(address) failed: \(reason)"
            logger.debug("cluster: NATS connect failed", metadata: ["server": "\(address)", "reason": "\(reason)"])
        case .serverError(let text):
            if text.lowercased().contains("authorization") || text.lowercased().contains("authentication") {
                // Said once per 10 s: the reconnect loop meets the same refusal every back-off.
                guard server.loop.now &- lastAuthorizationLog > 10_000 || lastAuthorizationLog == 0 else { return }
                lastAuthorizationLog = server.loop.now
                linkState = "refused by NATS: \(text)"
                logger.error("cluster: the NATS server refused this node's credentials; check --cluster-credentials (the node serves its local users meanwhile)",
                             metadata: ["error": "\(text)", "credentials": "\(server.configuration.clusterCredentials == nil ? "none given" : "given")"])
                return
            }
            logger.warning("cluster: NATS server error", metadata: ["error": "\(text)"])
        case .reconnectScheduled, .closed:
            break
        }
    }

    /// Routes the loop's timer tokens that belong to the cluster mode.
    func timerFired(_ token: UInt64) -> Bool {
        if router.handleTimer(token) { return true }
        if token == Self.openToken { openWhenChecked(); return true }
        if nats.handleTimer(token) { return true }
        if log.handleTimer(token) { return true }
        return false
    }

    /// After the loop stopped: the last presence events (every client was closed) go out in one nonblocking
    /// write, so the other nodes see this node's users leave at once rather than after its heartbeats stop.
    func close() {
        router.flush()
        nats.flushOutput()
        log.close()
        nats.close()
    }
}

/// The router's view of the core: local sessions for snapshots and heartbeats, the directory, and the core's
/// cluster calls (Core+Cluster.swift).
extension ServerCore: ClusterRouterHost {
    var localUserCount: Int { core.onlineCount }

    func localUserIDs() -> [UserID] {
        var users: [UserID] = []
        users.reserveCapacity(core.sessions.count)
        for (user, _) in core.sessions { users.append(user) }
        return users
    }

    func localDevices(of user: UserID) -> (devices: [String], contacts: [UserID])? {
        guard let session = core.sessions[user] else { return nil }
        return (session.devices.map(\.deviceID), core.acceptedContacts(of: user))
    }

    func remoteDevices(of user: UserID) -> [(node: UInt16, deviceID: String)] {
        core.remote[user]?.devices ?? []
    }
}
