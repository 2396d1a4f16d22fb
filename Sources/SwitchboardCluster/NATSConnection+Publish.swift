// The caller's side of a NATS connection: subscribe and unsubscribe (recorded, sent when a link is up, replayed
// on every new link), publish and flush into the bounded outbound queue.
// Invariants: a call that throws has queued nothing; PUB/HPUB/PING are checked against `maxOutboundBytes`
// before a byte is written; SUB/UNSUB go to the queue when connected, to the handshake buffer while the
// handshake's PONG is awaited (so a failed handshake drops them with it and the replay sends each once), and
// nowhere while disconnected (the replay sends them).
import SwitchboardIO

extension NATSConnection {
    // MARK: - Subscriptions

    /// Subscribes `handler` to `subject` (wildcards allowed) and returns the subscription id. Recorded at once;
    /// sent now when connected, else with the next handshake (and again after every reconnect).
    @discardableResult
    public func subscribe(_ subject: String, queue: String? = nil,
                          handler: @escaping (NATSMessage) -> Void) throws(NATSError) -> UInt64 {
        guard state != .closed else { throw .closed }
        try NATSSubject.validate(subject, wildcards: true)
        if let queue { try NATSSubject.validateQueue(queue) }
        let sid = nextSid
        nextSid += 1
        subscriptions[sid] = Subscription(subject: subject, queue: queue, handler: handler)
        if let buffer = liveCommandBuffer {
            NATSEncoder.sub(subject: subject, queue: queue, sid: sid, into: buffer)
            wantWrite()
        }
        return sid
    }

    public func unsubscribe(_ sid: UInt64) {
        guard subscriptions.removeValue(forKey: sid) != nil else { return }
        if let buffer = liveCommandBuffer {
            NATSEncoder.unsub(sid: sid, into: buffer)
            wantWrite()
        }
    }

    public var subscriptionCount: Int { subscriptions.count }

    /// Where SUB/UNSUB go now (see the invariants above).
    var liveCommandBuffer: ByteBuffer? {
        switch state {
        case .connected: return out
        case .awaitingPong: return handshake
        default: return nil
        }
    }

    // MARK: - Publishing

    /// Queues a PUB (HPUB with headers). Throws for a bad subject, a payload over the server's max_payload, a
    /// full outbound queue or a closed connection; nothing is queued then.
    public func publish(_ subject: String, replyTo: String? = nil, headers: NATSHeaders? = nil,
                        payload: [UInt8]) throws(NATSError) {
        let result = payload.withUnsafeBytes { p in
            Result { () throws(NATSError) in try publish(subject, replyTo: replyTo, headers: headers, payload: p) }
        }
        try result.get()
    }

    public func publish(_ subject: String, replyTo: String? = nil, headers: NATSHeaders? = nil,
                        payload: UnsafeRawBufferPointer) throws(NATSError) {
        guard state != .closed else { throw .closed }
        try NATSSubject.validate(subject, wildcards: false)
        if let replyTo { try NATSSubject.validate(replyTo, wildcards: false) }
        let headerBytes = headers.map { $0.encoded() }
        let size = payload.count + (headerBytes?.count ?? 0)
        let limit = min(link.maxPayload, configuration.limits.maxPayload)
        guard size <= limit else { throw .payloadTooLarge(size: size, limit: limit) }
        try reserve(size + subject.utf8.count + (replyTo?.utf8.count ?? 0) + 32)
        NATSEncoder.publish(subject: subject, replyTo: replyTo, headers: headerBytes, payload: payload, into: out)
        statistics.messagesOut += 1
        statistics.bytesOut += UInt64(size)
        wantWrite()
    }

    /// Sends a PING and calls `completion(true)` on its PONG: everything sent before has been processed by the
    /// server. `false` when the link breaks first; throws when not connected or the queue is full.
    public func flush(_ completion: @escaping (Bool) -> Void) throws(NATSError) {
        guard state != .closed else { throw .closed }
        guard state == .connected else { throw .notConnected }
        try reserve(6)
        NATSEncoder.ping(into: out)
        pongWaiters.append(.flush(completion))
        wantWrite()
    }

    func reserve(_ bytes: Int) throws(NATSError) {
        guard out.readableBytes + bytes <= configuration.maxOutboundBytes else {
            statistics.publishesRefused += 1
            throw .outboundBufferFull(pending: out.readableBytes, limit: configuration.maxOutboundBytes)
        }
    }

    /// Asks for EPOLLOUT so the next turn writes all that this turn queued.
    func wantWrite() {
        guard let id = link.registration, state == .connected || state == .awaitingPong else { return }
        loop.setInterest(id, [.readable, .writable])
    }

    /// Writes what is queued now instead of at the next turn.
    public func flushOutput() { if state == .connected || state == .awaitingPong { writeQueued() } }
}
