// The admin socket's `stats` answer: the loop's counters as `name value` lines and its histograms as
// `histogram NAME COUNT SUM BOUND:COUNT ...` lines (non-cumulative, nonzero buckets only, +Inf as
// `inf`). `switchboard top` computes rates and percentiles from the difference of two answers; the
// same numbers are on /metrics in Prometheus form.
import SwitchboardIO
import SwitchboardSession

enum AdminStats {
    static func render(_ server: RelayServer) -> String {
        let core = server.core!
        let stats = core.stats
        let metrics = core.metrics
        var phases = (prelogin: 0, active: 0, closing: 0)
        for client in core.clients {
            switch client.phase {
            case .active: phases.active += 1
            case .closing: phases.closing += 1
            default: phases.prelogin += 1
            }
        }
        var lines: [(String, UInt64)] = [
            ("uptime_ms", server.loop.wallNow &- server.startedAtWallMs),
            ("connections", UInt64(core.connectionCount)),
            ("connections_prelogin", UInt64(phases.prelogin)),
            ("connections_active", UInt64(phases.active)),
            ("connections_closing", UInt64(phases.closing)),
            ("users_online", UInt64(core.core.onlineCount)),
            ("accepted", stats.accepted),
            ("closed", stats.closed),
            ("refused", stats.refusedConnections),
            ("logins", metrics.logins),
            ("login_failures", metrics.loginFailures),
            ("lockouts", stats.lockouts),
            ("frames_in", stats.framesIn),
            ("relayed_live", stats.relayedLive),
            ("stored_offline", stats.storedOffline),
            ("duplicates_dropped", stats.duplicatesDropped),
            ("deliveries_acknowledged", metrics.deliveriesAcknowledged),
            ("deliveries_rerouted", metrics.deliveriesRerouted),
            ("mail_delivered", metrics.mailDelivered),
            ("mail_acknowledged", metrics.mailAcknowledged),
            ("read_pauses", stats.readPauses),
            ("congestions", metrics.congestions),
            ("slow_consumer_closes", stats.slowConsumerCloses),
            ("kicks", metrics.kicks),
            ("tls_full", server.tlsHandshakes.full),
            ("tls_resumed", server.tlsHandshakes.resumed),
            ("tls_failed", server.tlsHandshakes.failed),
            ("store_commits", stats.storeBatches),
            ("store_ops", stats.storeOps),
            ("store_backlog_bytes", UInt64(core.storeBacklog.bytes)),
            ("loop_turns", server.loop.turns),
            ("admin_last_who_ns", server.admin?.lastWhoNs ?? 0),
            ("admin_last_talkers_ns", server.admin?.lastTalkersNs ?? 0),
        ]
        var rejected: UInt64 = 0
        for code in 0..<metrics.sendsRejected.size { rejected += metrics.sendsRejected[code] }
        lines.append(("rejected", rejected))
        var text = ""
        for (name, value) in lines { text += "\(name) \(value)\n" }
        text += histogramLine("relay_latency_ns", metrics.relayLatency)
        text += histogramLine("store_commit_ns", metrics.commitLatency)
        text += histogramLine("store_batch_ops", metrics.commitBatchSize)
        if let turns = server.loop.turnDurations { text += histogramLine("loop_turn_ns", turns) }
        return text
    }

    static func histogramLine(_ name: String, _ histogram: FixedHistogram) -> String {
        var line = "histogram \(name) \(histogram.count) \(histogram.sum)"
        for index in 0..<histogram.bucketCount where histogram.bucket(index) > 0 {
            let bound = index < histogram.bounds.count ? "\(histogram.bounds[index])" : "inf"
            line += " \(bound):\(histogram.bucket(index))"
        }
        return line + "\n"
    }
}
