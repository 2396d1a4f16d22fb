// JetStream push consumers: create an ephemeral one ($JS.API.CONSUMER.CREATE.<stream>), delete one, and read
// what arrives on its deliver subject: stream messages (whose reply subject, the ack subject, names the stream
// and consumer sequences) and the server's status messages (idle heartbeat, flow-control request).
// Used by the cluster log (SwitchboardServer/ClusterLog.swift), which follows one stream in order.
// Invariants: the ack subject is parsed strictly (both the 2.9 form `$JS.ACK.<stream>.<consumer>.<delivered>.
// <sseq>.<cseq>.<ts>.<pending>` and the 2.10+ form with domain and account hash tokens); anything else is not a
// delivery. Durations go to the server in nanoseconds.
import SwitchboardIO

public struct PushConsumerConfiguration: Sendable, Equatable {
    public enum AckPolicy: String, Sendable { case none, all, explicit }
    public enum Start: Sendable, Equatable {
        case all
        /// From this stream sequence on (the first message at or after it).
        case sequence(UInt64)
    }

    public var deliverSubject: String
    public var start: Start
    public var ackPolicy: AckPolicy = .all
    /// Unacknowledged messages are sent again after this.
    public var ackWaitMs: UInt64 = 30_000
    /// At most this many messages delivered and not yet acknowledged: the server stops pushing beyond it.
    public var maxAckPending = 256
    /// The server sends a heartbeat (status 100) after this long without a message; 0 = none.
    public var idleHeartbeatMs: UInt64 = 1_000
    public var flowControl = false
    /// An ephemeral consumer without interest on its deliver subject for this long is deleted by the server.
    public var inactiveThresholdMs: UInt64 = 5_000
    public var memoryStorage = true

    public init(deliverSubject: String, start: Start) {
        self.deliverSubject = deliverSubject
        self.start = start
    }

    var json: JSON {
        var fields: [(String, JSON)] = [("deliver_subject", .string(deliverSubject))]
        switch start {
        case .all: fields.append(("deliver_policy", .string("all")))
        case .sequence(let seq):
            fields.append(("deliver_policy", .string("by_start_sequence")))
            fields.append(("opt_start_seq", .uint(max(1, seq))))
        }
        fields += [("ack_policy", .string(ackPolicy.rawValue)), ("replay_policy", .string("instant")),
                   ("max_deliver", .int(-1)), ("num_replicas", .int(0))]
        if ackPolicy != .none {
            fields.append(("ack_wait", .uint(ackWaitMs * 1_000_000)))
            fields.append(("max_ack_pending", .int(maxAckPending)))
        }
        if idleHeartbeatMs > 0 { fields.append(("idle_heartbeat", .uint(idleHeartbeatMs * 1_000_000))) }
        if flowControl { fields.append(("flow_control", .bool(true))) }
        fields.append(("inactive_threshold", .uint(inactiveThresholdMs * 1_000_000)))
        if memoryStorage { fields.append(("mem_storage", .bool(true))) }
        return .object(fields)
    }
}

public struct ConsumerInfo: Sendable, Equatable {
    public var stream: String
    public var name: String
    /// Messages of the stream not yet delivered to this consumer.
    public var pending: UInt64
}

/// What a stream message's ack subject says about it.
public struct JetStreamDelivery: Sendable, Equatable {
    public var stream: String
    public var consumer: String
    /// 1 on first delivery, more on redeliveries.
    public var deliveryCount: UInt64
    public var streamSequence: UInt64
    /// Counts every delivery (redeliveries too), from 1, per consumer: a gap means deliveries were lost.
    public var consumerSequence: UInt64
    public var timestampNs: UInt64
    /// Messages left in the stream for this consumer after this one.
    public var pending: UInt64

    /// Parses `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` (nats-server 2.9) or the
    /// 2.10+ form `$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]`.
    public static func parse(_ subject: String) -> JetStreamDelivery? {
        let tokens = subject.split(separator: ".", omittingEmptySubsequences: false)
        guard tokens.count >= 9, tokens[0] == "$JS", tokens[1] == "ACK" else { return nil }
        let base: Int
        switch tokens.count {
        case 9: base = 2
        case 11, 12: base = 4
        default: return nil
        }
        let numbers = tokens[(base + 2)..<(base + 7)].compactMap { UInt64($0) }
        guard numbers.count == 5, !tokens[base].isEmpty, !tokens[base + 1].isEmpty else { return nil }
        return JetStreamDelivery(stream: String(tokens[base]), consumer: String(tokens[base + 1]),
                                 deliveryCount: numbers[0], streamSequence: numbers[1], consumerSequence: numbers[2],
                                 timestampNs: numbers[3], pending: numbers[4])
    }
}

/// A message on a push consumer's deliver subject, classified.
public enum PushConsumerMessage: Sendable, Equatable {
    case delivery(JetStreamDelivery)
    /// Status 100 "Idle Heartbeat": the consumer's last delivered consumer and stream sequences, and the
    /// flow-control subject to answer if the consumer is stalled on one.
    case heartbeat(lastConsumerSequence: UInt64?, lastStreamSequence: UInt64?, stalledFlowControl: String?)
    /// Status 100 "FlowControl Request": answer with an empty publish to the reply subject.
    case flowControl(reply: String)
    case other(String)

    public static func classify(_ message: NATSMessage) -> PushConsumerMessage {
        if let headers = message.headers, let status = headers.status {
            guard status == 100 else { return .other("status \(status) \(headers.statusDescription)") }
            if headers.statusDescription.lowercased().contains("flowcontrol"), let reply = message.replyTo {
                return .flowControl(reply: reply)
            }
            return .heartbeat(lastConsumerSequence: headers["Nats-Last-Consumer"].flatMap { UInt64($0) },
                              lastStreamSequence: headers["Nats-Last-Stream"].flatMap { UInt64($0) },
                              stalledFlowControl: headers["Nats-Consumer-Stalled"])
        }
        guard let reply = message.replyTo, let delivery = JetStreamDelivery.parse(reply) else {
            return .other("a message on the deliver subject without an ack subject")
        }
        return .delivery(delivery)
    }
}

extension JetStream {
    /// Creates an ephemeral push consumer on `stream` (the server names it).
    public func createConsumer(stream: String, _ configuration: PushConsumerConfiguration,
                               completion: @escaping (Result<ConsumerInfo, JetStreamError>) -> Void) {
        let body = JSON.object([("stream_name", .string(stream)), ("config", configuration.json)])
        api("CONSUMER.CREATE.\(stream)", Array(body.serialized.utf8)) { result in
            completion(result.flatMap { json in
                guard let name = json["name"]?.stringValue else {
                    return .failure(.invalidResponse("consumer create without a name: \(json.serialized.prefix(200))"))
                }
                return .success(ConsumerInfo(stream: json["stream_name"]?.stringValue ?? stream, name: name,
                                             pending: json["num_pending"]?.uint64Value ?? 0))
            })
        }
    }

    public func deleteConsumer(stream: String, name: String, completion: @escaping (Result<Void, JetStreamError>) -> Void) {
        api("CONSUMER.DELETE.\(stream).\(name)", []) { completion($0.map { _ in () }) }
    }
}
