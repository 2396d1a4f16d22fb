// Timers: one live deadline per client (login, handshake, idle/ping), the auth gate's wake-up and
// the 30 s maintenance. A superseded deadline fires harmlessly; nothing is rescheduled without a
// later deadline, so no client keeps the loop busy.
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

extension ServerCore {
    func scheduleTimer(_ connection: ClientState, at deadline: UInt64) {
        if connection.isClosing || deadline == .max { return }
        if connection.timerDeadline != 0 && connection.timerDeadline <= deadline { return }
        connection.timerDeadline = deadline
        driver.schedule(at: deadline, token: connection.id.raw)
    }

    func nextDeadline(_ connection: ClientState) -> UInt64 {
        let limits = configuration.limits
        switch connection.phase {
        case .awaitingHello, .awaitingAuth, .authenticating:
            let login = connection.createdAt + UInt64(limits.loginTimeoutMs)
            if driver.handshakePending(connection) {
                return min(login, connection.createdAt + configuration.handshakeTimeoutMs)
            }
            return login
        case .active:
            let idle = connection.lastActivity + UInt64(limits.idleTimeoutMs)
            if connection.pingOutstanding { return idle }
            return min(idle, connection.lastActivity + UInt64(limits.pingIntervalMs))
        case .closing:
            return .max
        }
    }

    public func timerFired(_ token: UInt64) {
        switch token {
        case Self.maintenanceToken:
            maintenance()
            return
        case Self.authWakeToken:
            authWakeAt = .max
            pumpAuth()
            return
        default:
            break
        }
        guard let connection = connections[token], !connection.isClosing else { return }
        let now = driver.now
        // A superseded heap entry: the live one (at timerDeadline) is still queued.
        if connection.timerDeadline > now { return }
        connection.timerDeadline = 0
        let deadline = nextDeadline(connection)
        if deadline > now {
            scheduleTimer(connection, at: deadline)
            return
        }
        switch connection.phase {
        case .awaitingHello, .awaitingAuth, .authenticating:
            if driver.handshakePending(connection) {
                logger.debug("TLS handshake timeout", metadata: ["peer": "\(connection.peerText)"])
                close(connection, code: nil, "TLS handshake not completed within \(configuration.handshakeTimeoutMs) ms")
                return
            }
            close(connection, code: .loginTimeout, "login not completed within \(configuration.limits.loginTimeoutMs) ms")
        case .active:
            if now >= connection.lastActivity + UInt64(configuration.limits.idleTimeoutMs) {
                close(connection, code: .idleTimeout, "no traffic for \(configuration.limits.idleTimeoutMs) ms")
            } else {
                connection.pingOutstanding = true
                send(connection, .ping(token: now))
                scheduleTimer(connection, at: nextDeadline(connection))
            }
        case .closing:
            break
        }
    }

    func maintenance() {
        let now = driver.now
        authGate.sweep(now: now)
        persistSenderHistories(all: false)
        if cluster != nil { core.pruneInbound() }
        // Idle connections give their buffer memory back.
        for connection in connections.values where !connection.isClosing && connection.window.isEmpty {
            connection.output.releaseIfEmpty()
            connection.releaseInputIfEmpty()
        }
        if now - lastDedupePrune > 3_600_000 || lastDedupePrune == 0 {
            lastDedupePrune = now
            let cutoff = driver.wallNow &- configuration.dedupeRetentionMs
            if cutoff < driver.wallNow { storeBatch.append(.pruneDedupe(olderThanMs: cutoff), .prune) }
        }
        driver.schedule(at: now + configuration.maintenanceIntervalMs, token: Self.maintenanceToken)
    }
}
