// The running server's operator surfaces, wired into the driver: the monitoring HTTP listener
// (MetricsHTTP), the admin Unix socket (AdminSocket), loop-turn timing, TLS handshake counts and the
// health verdict /healthz gives.
// Invariants: everything here runs on the loop thread; opening a surface fails the server's start
// (a configured listener that cannot bind is an error, never silently absent); both are closed after
// the loop stops, and the admin socket file is removed only if it is still ours.
import Glibc
import SwitchboardIO
import SwitchboardSession
import SwitchboardTLS

struct TLSHandshakeCounts {
    var full: UInt64 = 0
    var resumed: UInt64 = 0
    /// Connections closed before their handshake completed (bad or no ClientHello, timeout, refusal).
    var failed: UInt64 = 0
}

public struct HealthReport: Sendable {
    public var healthy: Bool
    public var text: String
}

extension RelayServer {
    func startOps() throws {
        loop.turnDurations = FixedHistogram(unit: 1 << 10, octaves: 25)
        if let address = configuration.metricsAddress {
            metricsHTTP = try MetricsHTTP(server: self, address: address, sweepToken: Self.metricsSweepToken)
        }
        if configuration.adminSocketEnabled {
            do {
                admin = try AdminSocket(server: self, path: configuration.effectiveAdminSocketPath, sweepToken: Self.adminSweepToken)
            } catch UnixSocketError.pathTooLong(let path) where configuration.adminSocketPath == nil {
                // The default path inside a deeply nested data folder: run without it rather than not at all.
                logger.warning("no admin socket: the data folder's path is too long for a Unix socket; pass --admin-socket with a shorter path",
                               metadata: ["path": "\(path)"])
            } catch {
                stopOps()  // the monitoring listener and its sampler thread are not left behind
                throw error
            }
        }
    }

    func stopOps() {
        metricsHTTP?.close()
        metricsHTTP = nil
        admin?.close()
        admin = nil
    }

    /// Where the monitoring listener is bound (port 0 resolved), if it is on.
    public var metricsAddress: SocketAddress? { metricsHTTP?.boundAddress }
    public var adminSocketPath: String? { admin?.path }

    func opsTimerFired(_ token: UInt64) -> Bool {
        switch token {
        case Self.metricsSweepToken:
            metricsHTTP?.listener.sweep()
            return true
        case Self.adminSweepToken:
            admin?.listener.sweep()
            return true
        default:
            return false
        }
    }

    func countHandshake(_ connection: Connection) {
        guard let tls = connection.tls, tls.isHandshakeComplete else { return }
        connection.handshakeCounted = true
        if tls.sessionReused { tlsHandshakes.resumed += 1 } else { tlsHandshakes.full += 1 }
    }

    /// 200 while the loop turns (it is answering) and the store thread is alive and not stuck in one
    /// commit for longer than `storeStallMs`; 503 while shutting down.
    func health() -> HealthReport {
        let store = workers.storeHealth.state
        var problems: [String] = []
        var notes = ""
        if let clusterMode {
            // A stopped replica cannot serve correct data: unhealthy. An unreachable NATS is not: local
            // relaying goes on (and a balancer that pulled every node would stop that too); it is said in the body.
            switch clusterMode.log.status.state {
            case .stopped(let why): problems.append("cluster replica stopped: \(why)")
            case .unavailable(let why): notes = ", cluster store unavailable (\(why))"
            case .starting, .catchingUp: notes = ", cluster replica catching up (not accepting clients yet)"
            case .ready: notes = ", cluster ready (\(clusterMode.router.aliveNodes) other nodes)"
            }
        } else if !store.running { problems.append("store thread is not running") }
        if store.busySinceNs != 0 {
            let runningMs = (Clock.monotonicNs() &- store.busySinceNs) / 1_000_000
            if runningMs > configuration.storeStallMs {
                problems.append("store commit running for \(runningMs) ms (limit \(configuration.storeStallMs) ms)")
            }
        }
        if core.shuttingDown { problems.append("shutting down") }
        if problems.isEmpty {
            if clusterMode != nil { return HealthReport(healthy: true, text: "ok: loop turning (\(loop.turns) turns)\(notes)\n") }
            return HealthReport(healthy: true, text: "ok: loop turning (\(loop.turns) turns), store thread alive (\(store.commits) commits)\n")
        }
        return HealthReport(healthy: false, text: "unhealthy: " + problems.joined(separator: "; ") + "\n")
    }

    /// Test hook: the store thread exits as if it had died (Workers.stopStoreThreadForTesting).
    public func stopStoreThreadForTesting() { workers.stopStoreThreadForTesting() }
    /// Test hook: the store thread's next commit first sleeps `ms` (a stalled disk).
    public func delayNextCommitForTesting(ms: UInt32) { workers.storeHealth.update { $0.delayNextCommitMsForTesting = ms } }
}
