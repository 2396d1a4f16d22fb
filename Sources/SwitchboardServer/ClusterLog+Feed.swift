// The cluster log's feed: follows the stream, strictly in order, into the applier. One ephemeral push consumer at
// a time (deliver subject private to this node and to that consumer's generation), delivering from the next
// entry this replica needs (by_start_sequence), acknowledging with ack_policy "all" once entries are applied, with
// max_ack_pending bounding what is in flight (a slow applier back-pressures the server) and an idle heartbeat
// that tells a live consumer from a dead one.
// Invariants:
// - Entries reach the applier exactly in stream order, each once: a delivery is taken only if its stream sequence
//   is the next one expected; an earlier one (a redelivery) is dropped; a later one, a gap in the consumer's
//   delivery sequence, a heartbeat that counts more deliveries than arrived, a missed heartbeat or a NATS
//   reconnect make a new consumer from the next entry expected (the old one is deleted, its deliver subject
//   unsubscribed, and anything still arriving for it is ignored by generation).
// - A new consumer whose first delivery is beyond its start sequence means the stream lacks entries this
//   replica needs: the replica stops rather than skip them. So does a stream that ends before the replica's
//   applied sequence (recreated, or another cluster's), or that no longer holds the entries after it.
import Logging
import SwitchboardCluster
import SwitchboardIO
import SwitchboardStore

extension ClusterLog {
    func prepareStream() {
        feed = .preparing
        var stream = StreamConfiguration(name: configuration.stream, subjects: [configuration.subject],
                                         replicas: configuration.replicas)
        stream.duplicateWindowMs = configuration.duplicateWindowMs
        stream.storage = .file
        api.ensureStream(stream) { [weak self] result in
            guard let self, !self.closed, self.feed == .preparing else { return }
            switch result {
            case .failure(let error):
                self.feedFailed("cannot create or update stream \(self.configuration.stream): \(error)")
            case .success:
                self.streamEnsured = true
                self.resendAllWaiting()
                self.createConsumer(reason: "start")
            }
        }
    }

    /// Checks the stream against this replica, then makes a consumer from `nextSeq`.
    func createConsumer(reason: String) {
        dropConsumer()
        generation += 1
        let gen = generation
        feed = .creating
        lastConsumerSeq = 0
        freshStart = nil
        let deliverSubject = "_SBLOG.\(subjectToken).\(epoch).\(gen)"
        do {
            deliverSid = try nats.subscribe(deliverSubject) { [weak self] message in
                self?.feedMessage(message, generation: gen)
            }
        } catch {
            feedFailed("cannot subscribe to \(deliverSubject): \(error)")
            return
        }
        api.streamInfo(configuration.stream) { [weak self] result in
            guard let self, gen == self.generation, !self.closed else { return }
            switch result {
            case .failure(let error):
                self.feedFailed("cannot read stream \(self.configuration.stream): \(error)")
            case .success(let info):
                guard self.replicaFits(info) else { return }
                if self.readyTarget == nil {
                    self.readyTarget = info.lastSequence
                    self.logger.info("cluster log: catching up", metadata: [
                        "applied": "\(self.appliedSeq)", "stream last": "\(info.lastSequence)",
                        "stream first": "\(info.firstSequence)", "leader": "\(info.leader ?? "none")"])
                }
                self.streamLastSeq = max(self.streamLastSeq, info.lastSequence)
                self.sendConsumerCreate(gen: gen, deliverSubject: deliverSubject, reason: reason)
            }
        }
    }

    private func sendConsumerCreate(gen: UInt64, deliverSubject: String, reason: String) {
        let start = nextSeq
        var consumer = PushConsumerConfiguration(deliverSubject: deliverSubject, start: start <= 1 ? .all : .sequence(start))
        consumer.ackPolicy = .all
        consumer.maxAckPending = configuration.maxAckPending
        consumer.idleHeartbeatMs = configuration.heartbeatMs
        consumer.inactiveThresholdMs = max(5_000, configuration.heartbeatMs * configuration.missedHeartbeats * 2)
        freshStart = start
        api.createConsumer(stream: configuration.stream, consumer) { [weak self] result in
            guard let self else { return }
            guard gen == self.generation, !self.closed, self.feed == .creating else {
                // Superseded while it was being made: delete it rather than wait for its inactivity threshold.
                if case .success(let info) = result, !self.closed {
                    self.api.deleteConsumer(stream: info.stream, name: info.name) { _ in }
                }
                return
            }
            switch result {
            case .failure(let error):
                self.feedFailed("cannot create a consumer on \(self.configuration.stream): \(error)")
            case .success(let info):
                self.consumerName = info.name
                self.feed = .active
                self.feedAttempts = 0
                if let error = self.feedError {
                    self.logger.notice("cluster log feed recovered", metadata: ["last error": "\(error)", "from": "\(start)"])
                }
                self.feedError = nil
                self.lastFeedActivity = self.loop.now
                self.counters.consumersCreated += 1
                self.logger.debug("cluster log consumer", metadata: ["name": "\(info.name)", "from": "\(start)",
                                                                    "reason": "\(reason)", "pending": "\(info.pending)"])
                self.loop.schedule(at: self.loop.now + self.stallAfterMs, token: self.watchdogToken)
                self.checkReady()
            }
        }
    }

    /// Refuses (stops the replica) when the stream cannot be this replica's log.
    private func replicaFits(_ info: StreamInfo) -> Bool {
        let stream = configuration.stream
        if appliedSeq > info.lastSequence {
            stop("this replica has applied log entry \(appliedSeq) but stream \(stream) ends at \(info.lastSequence): "
                 + "the stream was recreated or this data folder belongs to another cluster; restore this node's "
                 + "data folder from another node's backup")
            return false
        }
        if info.lastSequence >= nextSeq && info.firstSequence > nextSeq {
            stop("entries \(nextSeq)...\(info.firstSequence - 1) that this replica still needs are no longer in stream "
                 + "\(stream) (it starts at \(info.firstSequence)): restore this node's data folder from another node's backup")
            return false
        }
        return true
    }

    var stallAfterMs: UInt64 { configuration.heartbeatMs * configuration.missedHeartbeats }

    /// A subject token from the node name ([A-Za-z0-9_-], others as '_').
    var subjectToken: String {
        String(node.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") ? $0 : "_" })
    }

    func dropConsumer() {
        if let sid = deliverSid { nats.unsubscribe(sid) }
        deliverSid = nil
        if let name = consumerName { api.deleteConsumer(stream: configuration.stream, name: name) { _ in } }
        consumerName = nil
    }

    /// Setting the feed up failed: try again after a back-off (it never gives up; the state says why).
    func feedFailed(_ why: String) {
        guard !closed, stoppedReason == nil else { return }
        dropConsumer()
        generation += 1
        let retrying = readyTarget == nil ? FeedState.preparing : .creating
        feed = .waiting
        if feedError == nil || feedAttempts % 10 == 0 {
            logger.warning("cluster log feed unavailable; retrying", metadata: ["error": "\(why)", "attempt": "\(feedAttempts + 1)"])
        }
        feedError = why
        feedAttempts += 1
        let delay = min(max(configuration.retryMaxDelayMs, 2_000),
                        configuration.retryBaseDelayMs << UInt64(min(feedAttempts - 1, 20)))
        feedRetryAt = loop.now + delay
        feedRetryStage = retrying
        loop.schedule(at: feedRetryAt, token: feedRetryToken)
    }

    func feedRetryDue() {
        guard feed == .waiting, loop.now >= feedRetryAt else { return }
        if feedRetryStage == .preparing { prepareStream() } else { createConsumer(reason: "retry") }
    }

    /// A gap, a dead consumer or a reconnect: a new consumer from the next entry expected.
    func restartFeed(_ reason: String) {
        guard !closed, stoppedReason == nil, feed == .active || feed == .creating else { return }
        counters.feedRestarts += 1
        logger.notice("cluster log feed restarting", metadata: ["reason": "\(reason)", "from": "\(nextSeq)"])
        createConsumer(reason: reason)
    }

    func watchdog() {
        guard feed == .active else { return }
        let silent = loop.now - lastFeedActivity
        if silent >= stallAfterMs {
            restartFeed("no message or heartbeat for \(silent) ms (its server may be down)")
        } else {
            loop.schedule(at: lastFeedActivity + stallAfterMs, token: watchdogToken)
        }
    }

    func natsEvent(_ event: NATSEvent) {
        guard !closed else { return }
        switch event {
        case .connected:
            guard nats.statistics.connects > 1 else { return }
            resendAllWaiting()
            if feed == .waiting {
                feedRetryAt = loop.now
                feedRetryDue()
            } else {
                restartFeed("reconnected to NATS")
            }
        default:
            break
        }
    }

    func feedMessage(_ message: NATSMessage, generation gen: UInt64) {
        guard gen == generation, !closed, stoppedReason == nil, feed == .creating || feed == .active else { return }
        lastFeedActivity = loop.now
        switch PushConsumerMessage.classify(message) {
        case .heartbeat(let lastConsumer, let lastStream, let stalled):
            if let stalled { try? nats.publish(stalled, payload: []) }
            if let lastStream { streamLastSeq = max(streamLastSeq, lastStream) }
            if let lastConsumer, lastConsumer > lastConsumerSeq {
                restartFeed("the consumer delivered \(lastConsumer) entries, \(lastConsumerSeq) arrived")
            }
        case .flowControl(let reply):
            try? nats.publish(reply, payload: [])
        case .other(let what):
            logger.warning("cluster log feed: unexpected message ignored", metadata: ["what": "\(what)"])
        case .delivery(let delivery):
            guard delivery.consumerSequence == lastConsumerSeq + 1 else {
                restartFeed("delivery \(delivery.consumerSequence) arrived after \(lastConsumerSeq)")
                return
            }
            lastConsumerSeq = delivery.consumerSequence
            let seq = delivery.streamSequence
            streamLastSeq = max(streamLastSeq, seq + delivery.pending)
            if let start = freshStart {
                freshStart = nil
                if seq > start {
                    stop("stream \(configuration.stream) has no entries \(start)...\(seq - 1) (deleted?): this replica "
                         + "cannot skip them; restore this node's data folder from another node's backup")
                    return
                }
            }
            if seq < nextSeq {
                // A redelivery (our ack was lost or late): acknowledge it again once applied, else the next ack
                // covers it (ack_policy "all").
                if seq <= appliedSeq, let reply = message.replyTo { try? nats.publish(reply, payload: Array("+ACK".utf8)) }
                return
            }
            guard seq == nextSeq else {
                restartFeed("entry \(seq) arrived, \(nextSeq) expected")
                return
            }
            if queuedBytes > 0 && queuedBytes + message.payload.count > configuration.maxApplyQueueBytes {
                // Not taken: the feed resumes from this entry once the applier has caught up.
                counters.feedPauses += 1
                dropConsumer()
                generation += 1
                feed = .paused
                return
            }
            guard let ackReply = message.replyTo else { return }
            nextSeq += 1
            queuedEntries += 1
            queuedBytes += message.payload.count
            applier.jobs.push(ApplyJob(seq: seq, msgID: message.headers?["Nats-Msg-Id"], node: message.headers?["Sb-Node"],
                                       payload: message.payload, ackReply: ackReply, generation: gen))
        }
    }

    func applierReported(_ outcomes: [ApplyOutcome]) {
        for outcome in outcomes {
            switch outcome {
            case .applied(let jobs, _):
                for job in jobs {
                    queuedEntries -= 1
                    queuedBytes -= job.payloadBytes
                    appliedSeq = job.entry.seq
                    counters.entriesApplied += 1
                    if let msgID = job.msgID, attachApplied(job.entry, msgID: msgID) { continue }
                    foreignApplied(job.entry)
                }
                // ack_policy "all": acknowledging the last one acknowledges everything before it.
                if !closed, let last = jobs.last(where: { $0.generation == generation }), feed == .active || feed == .creating {
                    try? nats.publish(last.ackReply, payload: Array("+ACK".utf8))
                }
            case .stopped(_, let reason, _):
                queuedEntries = 0
                queuedBytes = 0
                stop(reason)
            }
        }
        // Our batches this completed are reported now, not on a later turn, so other nodes' entries applied after
        // them (held until then) are not delayed.
        deliverCompleted()
        if feed == .paused && queuedBytes <= configuration.maxApplyQueueBytes / 2 && !closed {
            feed = .creating
            restartFeed("the apply queue drained below \(configuration.maxApplyQueueBytes / 2) bytes")
        }
        checkReady()
    }

    func checkReady() {
        guard !announcedReady, let target = readyTarget, appliedSeq >= target, feed == .active else { return }
        announcedReady = true
        logger.info("cluster log ready", metadata: [
            "applied": "\(appliedSeq)", "entries applied": "\(counters.entriesApplied)",
            "ms": "\(loop.now - startedAtMs)"])
        onReady?()
    }

    /// This replica goes no further (see ClusterLogState.stopped): nothing more is applied, pending batches fail.
    func stop(_ reason: String) {
        guard stoppedReason == nil else { return }
        stoppedReason = reason
        logger.critical("cluster log stopped: this node's replica applies nothing more until an operator acts",
                        metadata: ["reason": "\(reason)", "applied": "\(appliedSeq)"])
        dropConsumer()
        generation += 1
        feed = .stopped
        failAllPending("cluster store unavailable: this node's replica stopped: \(reason)")
    }
}
