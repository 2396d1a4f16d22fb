// Request/reply over one wildcard inbox subscription: every request gets the reply subject
// "<inbox prefix><request id>", answers are matched by that id, deadlines run through the loop's timer heap.
// Invariants: each request completes exactly once (answer, no-responders, timeout, connection lost or closed);
// the inbox subscription ("<prefix>*") is made on the first request and replayed on reconnect like any other;
// a late answer to a request that already completed is dropped.
import SwitchboardIO

struct RequestTable {
    struct Pending {
        let deadline: UInt64
        let completion: (Result<NATSMessage, NATSRequestError>) -> Void
    }

    var inboxPrefix = ""
    var inboxSid: UInt64 = 0
    var nextID: UInt64 = 1
    var pending: [UInt64: Pending] = [:]
    var deadlines = TimerHeap()
}

extension NATSConnection {
    /// Publishes `payload` to `subject` with a reply subject of this connection's inbox and calls `completion`
    /// once: with the first answer, `.noResponders` (status 503: nobody subscribes), `.timeout` after
    /// `timeoutMs`, `.connectionLost` or `.closed`. Throws (and never calls `completion`) when the request
    /// cannot even be queued: bad subject, payload too large, outbound queue full, connection closed.
    public func request(_ subject: String, headers: NATSHeaders? = nil, payload: [UInt8], timeoutMs: UInt64,
                        completion: @escaping (Result<NATSMessage, NATSRequestError>) -> Void) throws(NATSError) {
        guard state != .closed else { throw .closed }
        if requests.inboxSid == 0 {
            requests.inboxSid = try subscribe(requests.inboxPrefix + "*") { [unowned self] in self.answerArrived($0) }
        }
        let id = requests.nextID
        try publish(subject, replyTo: requests.inboxPrefix + String(id), headers: headers, payload: payload)
        requests.nextID += 1
        let deadline = loop.now + timeoutMs
        requests.pending[id] = RequestTable.Pending(deadline: deadline, completion: completion)
        requests.deadlines.push(deadline: deadline, token: id)
        loop.schedule(at: deadline, token: requestToken)
    }

    public var requestsInFlight: Int { requests.pending.count }

    func answerArrived(_ message: NATSMessage) {
        guard message.subject.hasPrefix(requests.inboxPrefix),
              let id = UInt64(message.subject.dropFirst(requests.inboxPrefix.count)),
              let request = requests.pending.removeValue(forKey: id) else { return }
        if let status = message.headers?.status, status == 503, message.payload.isEmpty {
            request.completion(.failure(.noResponders))
        } else {
            request.completion(.success(message))
        }
    }

    func expireRequests(now: UInt64) {
        while let id = requests.deadlines.popDue(now: now) {
            if let request = requests.pending.removeValue(forKey: id) { request.completion(.failure(.timeout)) }
        }
        if requests.pending.isEmpty { requests.deadlines = TimerHeap() }
    }

    /// Fails every request and flush in flight (their answers cannot arrive on a new link).
    func failAllInFlight(_ error: NATSRequestError) {
        let all = requests.pending.sorted { $0.key < $1.key }
        requests.pending.removeAll()
        requests.deadlines = TimerHeap()
        for (_, request) in all { request.completion(.failure(error)) }
    }
}
