// The Prometheus text exposition (format 0.0.4) of the running server, rendered at scrape time from
// the loop's own counters (ServerStats, SessionMetrics, the driver's TLS counts, the loop's turn
// histogram). Nothing is collected for a scrape in advance: the hot path only increments integers.
// Rendering walks the connection table once (connections by phase and transport); RSS and open
// descriptors come from ProcessSampler's thread. It allocates, but only here, once per scrape.
import Glibc
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardSession

struct PrometheusWriter {
    private(set) var text = ""

    init() { text.reserveCapacity(32 << 10) }

    mutating func header(_ name: String, _ type: String, _ help: String) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
    }

    mutating func sample(_ name: String, _ labels: String, _ value: UInt64) { text += "\(name){\(labels)} \(value)\n" }
    mutating func sample(_ name: String, _ value: UInt64) { text += "\(name) \(value)\n" }
    mutating func sample(_ name: String, _ value: Double) { text += "\(name) \(PrometheusWriter.format(value))\n" }

    mutating func metric(_ name: String, _ type: String, _ help: String, _ value: UInt64) {
        header(name, type, help)
        sample(name, value)
    }

    /// A histogram whose recorded integers are `scale` units per Prometheus unit (1e9 for ns -> s).
    mutating func histogram(_ name: String, _ help: String, _ histogram: FixedHistogram, scale: Double) {
        header(name, "histogram", help)
        var cumulative: UInt64 = 0
        var previous: UInt64 = 0
        for (index, bound) in histogram.bounds.enumerated() {
            cumulative += histogram.bucket(index)
            if index > 0 && bound == previous { continue }  // the degenerate 1.5 bucket of unit 1
            previous = bound
            sample(name + "_bucket", "le=\"\(Self.format(Double(bound) / scale))\"", cumulative)
        }
        cumulative += histogram.bucket(histogram.bounds.count)
        sample(name + "_bucket", "le=\"+Inf\"", cumulative)
        sample(name + "_sum", Double(histogram.sum) / scale)
        sample(name + "_count", histogram.count)
    }

    static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : "\(value)"
    }
}

enum MetricsText {
    static func render(_ server: RelayServer) -> String {
        let core = server.core!
        let stats = core.stats
        let metrics = core.metrics
        var w = PrometheusWriter()

        // Connections.
        let transport = server.tlsContext == nil ? "plain" : "tls"
        var byPhase = [UInt64](repeating: 0, count: phaseNames.count)
        for client in core.clients { byPhase[phaseIndex(client.phase)] += 1 }
        w.header("switchboard_connections", "gauge", "Open client connections by session phase and transport.")
        for (index, phase) in phaseNames.enumerated() {
            for t in ["plain", "tls"] {
                w.sample("switchboard_connections", "phase=\"\(phase)\",transport=\"\(t)\"", t == transport ? byPhase[index] : 0)
            }
        }
        w.metric("switchboard_connections_lingering", "gauge", "Closed connections still writing their last bytes (ERROR) before the socket closes.",
                 UInt64(server.lingering.count))
        w.metric("switchboard_users_online", "gauge", "Logged-in users.", UInt64(core.core.onlineCount))
        w.metric("switchboard_connections_accepted_total", "counter", "Connections accepted.", stats.accepted)
        w.metric("switchboard_connections_closed_total", "counter", "Connections closed (any reason).", stats.closed)
        w.metric("switchboard_connections_refused_total", "counter", "Connections refused at accept (connection limits).", stats.refusedConnections)
        w.metric("switchboard_accept_pauses_total", "counter", "Times accepting paused for 100 ms (out of descriptors).", stats.acceptPauses)
        w.header("switchboard_connection_errors_total", "counter", "Connections closed with an ERROR frame, by its code.")
        for code in ErrorCode.allCases where code.closesConnection {
            w.sample("switchboard_connection_errors_total", "code=\"\(code)\"", metrics.closesByCode[Int(code.rawValue)])
        }

        // Authentication.
        w.metric("switchboard_logins_total", "counter", "Successful logins.", metrics.logins)
        w.metric("switchboard_login_failures_total", "counter", "Logins refused for a wrong user name or password.", metrics.loginFailures)
        w.metric("switchboard_registrations_total", "counter", "Accounts registered by clients.", metrics.registrations)
        w.metric("switchboard_lockouts_total", "counter", "Login attempts refused by the lockout (ERROR lockedOut).", stats.lockouts)
        w.metric("switchboard_auth_busy_total", "counter", "Login attempts answered busyRetryLater (password-check queue full).", stats.authBusy)

        // Frames.
        w.header("switchboard_frames_received_total", "counter", "Frames received from clients, by type.")
        for type in FrameType.allCases where type.rawValue < 0x40 {
            w.sample("switchboard_frames_received_total", "type=\"\(type)\"", metrics.framesIn[Int(type.rawValue)])
        }
        w.header("switchboard_frames_sent_total", "counter", "Frames queued for clients, by type.")
        for type in FrameType.allCases where type.rawValue >= 0x40 {
            w.sample("switchboard_frames_sent_total", "type=\"\(type)\"", metrics.framesOut[Int(type.rawValue)])
        }
        w.metric("switchboard_protocol_errors_total", "counter", "Connections closed for a protocol violation.", stats.protocolErrors)

        // Messages.
        w.metric("switchboard_messages_relayed_live_total", "counter", "Messages written to an online receiver (DELIVER).", stats.relayedLive)
        w.metric("switchboard_messages_stored_total", "counter", "Messages committed to a mailbox (SEND_ACK storedOffline follows).", stats.storedOffline)
        w.header("switchboard_messages_rejected_total", "counter", "SENDs answered SEND_ERROR, by reason.")
        for code in ErrorCode.allCases where !code.closesConnection {
            w.sample("switchboard_messages_rejected_total", "reason=\"\(code)\"", metrics.sendsRejected[Int(code.rawValue)])
        }
        w.metric("switchboard_duplicates_dropped_total", "counter", "Resent messages recognised and not delivered again.", stats.duplicatesDropped)
        w.metric("switchboard_deliveries_acknowledged_total", "counter", "Live deliveries acknowledged by their receiver.", metrics.deliveriesAcknowledged)
        w.metric("switchboard_deliveries_rerouted_total", "counter", "Unacknowledged live deliveries moved to the mailbox when their receiver disconnected.", metrics.deliveriesRerouted)
        w.metric("switchboard_mail_delivered_total", "counter", "Stored messages sent to their recipient (MAIL).", metrics.mailDelivered)
        w.metric("switchboard_mail_acknowledged_total", "counter", "Stored messages acknowledged (MAIL_ACK) and deleted.", metrics.mailAcknowledged)

        // Back pressure.
        w.metric("switchboard_read_pauses_total", "counter", "Times a connection stopped being read because its output backlog passed the high-water mark.", stats.readPauses)
        w.metric("switchboard_congestions_total", "counter", "Times a receiver became congested (new messages for it go to its mailbox).", metrics.congestions)
        w.metric("switchboard_slow_consumer_closes_total", "counter", "Connections closed for an output backlog over the hard cap (ERROR slowConsumer).", stats.slowConsumerCloses)
        w.metric("switchboard_kicks_total", "counter", "Sessions closed by an administrator.", metrics.kicks)

        // TLS.
        w.header("switchboard_tls_handshakes_total", "counter", "TLS handshakes: full, resumed from a ticket, or failed (closed before completing).")
        w.sample("switchboard_tls_handshakes_total", "result=\"full\"", server.tlsHandshakes.full)
        w.sample("switchboard_tls_handshakes_total", "result=\"resumed\"", server.tlsHandshakes.resumed)
        w.sample("switchboard_tls_handshakes_total", "result=\"failed\"", server.tlsHandshakes.failed)

        // Store.
        w.metric("switchboard_store_commits_total", "counter", "Group-commit transactions submitted.", stats.storeBatches)
        w.metric("switchboard_store_ops_total", "counter", "Write operations submitted in those commits.", stats.storeOps)
        w.metric("switchboard_store_commit_failures_total", "counter", "Commits that failed as a whole.", metrics.commitFailures)
        w.metric("switchboard_store_full_total", "counter", "Writes refused because the store was full.", stats.storageFull)
        let backlog = core.storeBacklog
        w.metric("switchboard_store_backlog_bytes", "gauge", "Mail body bytes queued for or in a commit.", UInt64(backlog.bytes))
        w.histogram("switchboard_store_commit_seconds", "Duration of one group-commit transaction (fsync included), on the store thread.",
                    metrics.commitLatency, scale: 1e9)
        w.histogram("switchboard_store_batch_ops", "Write operations per group commit.", metrics.commitBatchSize, scale: 1)

        // Latency and the loop.
        w.histogram("switchboard_relay_latency_seconds", "Server-side relay latency: from the read that brought a SEND in to the write that put its DELIVER on the receiver's socket.",
                    metrics.relayLatency, scale: 1e9)
        if let turns = server.loop.turnDurations {
            w.histogram("switchboard_loop_turn_seconds", "Event-loop turn duration: from epoll_wait's return to the end of the turn's work.",
                        turns, scale: 1e9)
        }
        w.metric("switchboard_loop_turns_total", "counter", "Event-loop turns.", server.loop.turns)
        w.metric("switchboard_socket_reads_total", "counter", "Reads from client sockets.", stats.reads)
        w.metric("switchboard_socket_writes_total", "counter", "Writes to client sockets.", stats.writes)

        // Cluster mode.
        if let cluster = server.clusterMode {
            let log = cluster.log.status
            let router = cluster.router.statistics
            w.header("switchboard_cluster_log_state", "gauge", "The replicated store: 1 for the state it is in (ready, catching_up, starting, unavailable, stopped).")
            for state in ["ready", "catching_up", "starting", "unavailable", "stopped"] {
                w.sample("switchboard_cluster_log_state", "state=\"\(state)\"", state == Self.stateName(log.state) ? 1 : 0)
            }
            w.metric("switchboard_cluster_log_applied_seq", "gauge", "Last cluster-log entry applied to this node's replica.", log.appliedSeq)
            w.metric("switchboard_cluster_log_lag_entries", "gauge", "Entries known to be in the log and not applied here yet.", log.lag)
            w.metric("switchboard_cluster_log_pending_batches", "gauge", "Commits waiting for the log (durable and applied).", UInt64(log.pendingBatches))
            w.metric("switchboard_cluster_log_commits_total", "counter", "Commits durable in the log and applied here.", log.counters.batchesCommitted)
            w.metric("switchboard_cluster_log_commit_failures_total", "counter", "Commits that failed (timed out, refused at a bound, replica stopped).", log.counters.batchesFailed)
            w.metric("switchboard_cluster_log_publish_resends_total", "counter", "Log entries published again (no PubAck in time, no stream leader).", log.counters.publishResends)
            w.metric("switchboard_cluster_log_foreign_entries_total", "counter", "Other nodes' log entries applied here.", log.counters.foreignEntriesApplied)
            w.metric("switchboard_cluster_nats_connected", "gauge", "1 while the NATS link is up.", cluster.nats.isConnected ? 1 : 0)
            w.metric("switchboard_cluster_nodes_alive", "gauge", "Other nodes heard from within the heartbeat timeout.", UInt64(cluster.router.aliveNodes))
            w.metric("switchboard_cluster_remote_users", "gauge", "Users online on other nodes (the directory).", UInt64(core.core.remote.count))
            w.metric("switchboard_cluster_forwards_pending", "gauge", "SENDs handed to another node and not answered yet.", UInt64(cluster.router.pendingForwards))
            w.header("switchboard_cluster_forwards_total", "counter", "SENDs handed to the recipient's node, and how they ended.")
            w.sample("switchboard_cluster_forwards_total", "result=\"sent\"", router.forwardsSent)
            w.sample("switchboard_cluster_forwards_total", "result=\"answered\"", router.forwardsAnswered)
            w.sample("switchboard_cluster_forwards_total", "result=\"mailbox\"", router.forwardsToMailbox)
            w.sample("switchboard_cluster_forwards_total", "result=\"refused\"", router.forwardsRefused)
            w.metric("switchboard_cluster_inbound_total", "counter", "SENDs other nodes handed here for local receivers.", router.inboundReceived)
            w.header("switchboard_cluster_presence_events_total", "counter", "Device logins/logouts published and received.")
            w.sample("switchboard_cluster_presence_events_total", "direction=\"out\"", router.presenceEventsOut)
            w.sample("switchboard_cluster_presence_events_total", "direction=\"in\"", router.presenceEventsIn)
            w.metric("switchboard_cluster_nodes_gone_total", "counter", "Times another node was declared gone (heartbeats stopped, restart).", router.nodesGone)
            w.metric("switchboard_cluster_malformed_total", "counter", "Cluster messages dropped as malformed.", router.malformed)
            w.metric("switchboard_cluster_publishes_skipped_offline_total", "counter", "Router publishes not made while the NATS link was down (rebuilt by epochs and snapshots, never replayed late).", router.publishesSkippedOffline)
            w.metric("switchboard_cluster_publish_failures_total", "counter", "Router publishes NATS refused to queue (its outbound bound) with the link up.", router.publishFailures)
            w.metric("switchboard_cluster_answer_deferrals_total", "counter", "Turns whose answers to other nodes waited for room in the NATS queue (kept, sent later).", router.answerDeferrals)
            w.metric("switchboard_cluster_answers_dropped_total", "counter", "Answers to other nodes dropped past the 8 MiB kept per node (their forwards time out there and are stored).", router.answersDropped)
            w.header("switchboard_cluster_snapshots_total", "counter", "Directory snapshots: asked of other nodes, asked again (incomplete, or a heartbeat's user count disagreed), served whole to others.")
            w.sample("switchboard_cluster_snapshots_total", "kind=\"requested\"", router.snapshotsRequested)
            w.sample("switchboard_cluster_snapshots_total", "kind=\"rerequested\"", router.snapshotRerequests)
            w.sample("switchboard_cluster_snapshots_total", "kind=\"served\"", router.snapshotsServed)
            w.metric("switchboard_cluster_snapshot_chunks_sent_total", "counter", "Snapshot chunks sent to other nodes.", router.snapshotChunksSent)
            w.metric("switchboard_cluster_snapshot_chunk_deferrals_total", "counter", "Times a snapshot chunk waited for the NATS queue to drain (retried, never dropped).", router.snapshotChunkDeferrals)
            w.metric("switchboard_cluster_directory_reconciled_total", "counter", "Directory devices a snapshot added or removed (what really changed while events were missed).", router.directoryEntriesReconciled)
            w.metric("switchboard_cluster_directory_dropped_users_total", "counter", "Users dropped from the directory (their node gone, or no longer in its snapshot), in batches per loop turn.", router.directoryUsersDropped)
            w.header("switchboard_cluster_directory_batch_max_seconds", "gauge", "Longest single batch of directory upkeep on the loop.")
            w.sample("switchboard_cluster_directory_batch_max_seconds", Double(router.longestDirectoryBatchNs) / 1e9)
            w.metric("switchboard_cluster_duplicate_node_name_total", "counter", "Messages seen from another process under this node's --node name (it must be unique).", router.duplicateNodeName)
        }

        // Operator surfaces.
        if let http = server.metricsHTTP {
            w.metric("switchboard_metrics_scrapes_total", "counter", "Scrapes of /metrics answered (this one included).", http.scrapes)
            w.header("switchboard_metrics_render_seconds", "gauge", "Loop time the previous scrape took to render (it grows with connections and descriptors).")
            w.sample("switchboard_metrics_render_seconds", Double(http.lastRenderNs) / 1e9)
            w.metric("switchboard_metrics_connections_refused_total", "counter", "Monitoring connections refused (over the limit).", http.listener.refused)
        }

        // Process.
        // RSS and descriptors come from the sampler thread (at most its interval old): counting
        // /proc/self/fd on the loop would stall it for tens of ms at 10 000 connections.
        let process = server.metricsHTTP?.sampler.sample ?? ProcessSampler.measure()
        w.header("process_resident_memory_bytes", "gauge", "Resident set size (sampled every 2 s off the loop).")
        w.sample("process_resident_memory_bytes", process.residentBytes)
        w.header("process_open_fds", "gauge", "Open file descriptors (sampled every 2 s off the loop).")
        w.sample("process_open_fds", process.openDescriptors)
        w.header("process_max_fds", "gauge", "The descriptor limit (RLIMIT_NOFILE).")
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        w.sample("process_max_fds", UInt64(limit.rlim_cur))
        w.header("process_start_time_seconds", "gauge", "Start time since the Unix epoch.")
        w.sample("process_start_time_seconds", Double(server.startedAtWallMs / 1000))
        return w.text
    }

    static func stateName(_ state: ClusterLogState) -> String {
        switch state {
        case .ready: return "ready"
        case .catchingUp: return "catching_up"
        case .starting: return "starting"
        case .unavailable: return "unavailable"
        case .stopped: return "stopped"
        }
    }

    static let phaseNames = ["awaiting_hello", "awaiting_auth", "authenticating", "active", "closing"]

    static func phaseIndex(_ phase: ClientState.Phase) -> Int {
        switch phase {
        case .awaitingHello: return 0
        case .awaitingAuth: return 1
        case .authenticating: return 2
        case .active: return 3
        case .closing: return 4
        }
    }
}
