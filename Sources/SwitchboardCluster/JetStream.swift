// JetStream over request/reply: only what the cluster mode needs. Streams are made or brought to the wanted
// configuration ($JS.API.STREAM.CREATE, then .UPDATE), publishes carry `Nats-Msg-Id` and wait for the PubAck,
// stored messages are read by sequence or by subject ($JS.API.STREAM.MSG.GET with seq / last_by_subj /
// next_by_subj) and deleted by sequence ($JS.API.STREAM.MSG.DELETE).
// Reading a subject's messages walks next_by_subj one request per message rather than creating a pull
// consumer: no consumer state to create, name and clean up per login (a crashed node leaves none behind), and a
// mailbox read at login is a handful of messages. The price is one round trip per message (measured in the
// README). The 2.10 batch direct get would remove it; Debian ships 2.9.
// Invariants: every call completes exactly once through its completion, on the loop thread; a call that cannot
// even be queued (full outbound buffer, bad subject, closed connection) completes with `.queue` before it
// returns; API errors keep the server's err_code so callers can tell "wrong last sequence" (10071) and
// "no message found" (10037) from real failures.
import SwitchboardIO

public enum JetStreamError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The request could not be queued.
    case queue(NATSError)
    /// No answer: `.noResponders` means no JetStream (or no stream bound to the subject of a publish).
    case request(NATSRequestError)
    /// The JetStream API answered with an error.
    case api(code: Int, errCode: Int, description: String)
    case invalidResponse(String)

    public static let wrongLastSequence = 10071
    public static let noMessageFound = 10037
    public static let streamNotFound = 10059
    public static let streamNameInUse = 10058

    public var errCode: Int? { if case .api(_, let e, _) = self { return e }; return nil }

    /// Worth resending unchanged (with the same Nats-Msg-Id, so a resend of something stored is a duplicate):
    /// the link or the cluster is briefly unavailable — no answer, no responders (no stream leader during an
    /// election: 4-8 s after a kill -9 here), the link broke, the queue is full or reconnecting, or JetStream says
    /// 503 (10008 "temporarily unavailable"). Not for API errors that will repeat (wrong last sequence, bad config).
    public var isTransient: Bool {
        switch self {
        case .request(.timeout), .request(.noResponders), .request(.connectionLost): return true
        case .queue(.outboundBufferFull), .queue(.notConnected): return true
        case .api(let code, let errCode, _): return code == 503 || errCode == 10008
        default: return false
        }
    }

    public var description: String {
        switch self {
        case .queue(let e): return "JetStream request not sent: \(e)"
        case .request(.noResponders): return "JetStream unavailable: no responders (JetStream disabled, no stream for the subject, or no meta leader)"
        case .request(let e): return "JetStream request failed: \(e)"
        case .api(let code, let errCode, let text): return "JetStream error \(code)/\(errCode): \(text)"
        case .invalidResponse(let text): return "invalid JetStream response: \(text)"
        }
    }
}

public struct StreamConfiguration: Equatable, Sendable {
    public enum Storage: String, Sendable { case file, memory }
    public var name: String
    public var subjects: [String]
    public var replicas = 1
    public var storage = Storage.file
    /// Window in which a repeated `Nats-Msg-Id` is recognised as a duplicate.
    public var duplicateWindowMs: UInt64 = 120_000
    /// -1: unlimited. Key-value buckets keep `history` messages per key.
    public var maxMessagesPerSubject = -1
    public var discardNew = false
    public var allowRollup = false
    public var denyDelete = false
    public var allowDirect = false

    public init(name: String, subjects: [String], replicas: Int = 1) {
        self.name = name
        self.subjects = subjects
        self.replicas = replicas
    }

    var json: JSON {
        .object([
            ("name", .string(name)), ("subjects", .array(subjects.map { .string($0) })), ("retention", .string("limits")),
            ("max_consumers", .int(-1)), ("max_msgs", .int(-1)), ("max_bytes", .int(-1)), ("max_age", .int(0)),
            ("max_msgs_per_subject", .int(maxMessagesPerSubject)), ("max_msg_size", .int(-1)),
            ("discard", .string(discardNew ? "new" : "old")), ("storage", .string(storage.rawValue)),
            ("num_replicas", .int(replicas)), ("duplicate_window", .uint(duplicateWindowMs * 1_000_000)),
            ("allow_rollup_hdrs", .bool(allowRollup)), ("deny_delete", .bool(denyDelete)), ("deny_purge", .bool(false)),
            ("allow_direct", .bool(allowDirect)),
        ])
    }
}

public struct StreamInfo: Sendable {
    public var name: String
    public var replicas: Int
    public var messages: UInt64
    public var firstSequence: UInt64
    public var lastSequence: UInt64
    /// Server name of the stream's leader and of its followers (clustered streams only).
    public var leader: String?
    public var followers: [String]
}

public struct PubAck: Equatable, Sendable {
    public var stream: String
    public var sequence: UInt64
    /// The `Nats-Msg-Id` was seen within the duplicate window: nothing was stored, `sequence` is the original's.
    public var duplicate: Bool
}

public struct StoredMessage: Equatable, Sendable {
    public var subject: String
    public var sequence: UInt64
    public var headers: NATSHeaders?
    public var data: [UInt8]
    public var time: String
}

public final class JetStream {
    public let connection: NATSConnection
    public let apiPrefix: String
    public var timeoutMs: UInt64

    public init(connection: NATSConnection, apiPrefix: String = "$JS.API", timeoutMs: UInt64 = 2_000) {
        self.connection = connection
        self.apiPrefix = apiPrefix
        self.timeoutMs = timeoutMs
    }

    // MARK: - Streams

    /// Creates the stream, or updates it when one of that name exists with another configuration.
    public func ensureStream(_ configuration: StreamConfiguration, completion: @escaping (Result<StreamInfo, JetStreamError>) -> Void) {
        let body = Array(configuration.json.serialized.utf8)
        // Strong capture: the call must complete even if the caller dropped its JetStream meanwhile.
        api("STREAM.CREATE.\(configuration.name)", body) { result in
            switch result {
            case .failure(let e) where e.errCode == JetStreamError.streamNameInUse:
                self.api("STREAM.UPDATE.\(configuration.name)", body) { completion($0.flatMap(Self.streamInfo)) }
            default:
                completion(result.flatMap(Self.streamInfo))
            }
        }
    }

    public func streamInfo(_ name: String, completion: @escaping (Result<StreamInfo, JetStreamError>) -> Void) {
        api("STREAM.INFO.\(name)", []) { completion($0.flatMap(Self.streamInfo)) }
    }

    public func deleteStream(_ name: String, completion: @escaping (Result<Void, JetStreamError>) -> Void) {
        api("STREAM.DELETE.\(name)", []) { completion($0.map { _ in () }) }
    }

    static func streamInfo(_ json: JSON) -> Result<StreamInfo, JetStreamError> {
        guard let config = json["config"], let name = config["name"]?.stringValue, let state = json["state"] else {
            return .failure(.invalidResponse("stream info without config/state: \(json.serialized.prefix(200))"))
        }
        let cluster = json["cluster"]
        return .success(StreamInfo(
            name: name, replicas: config["num_replicas"]?.intValue ?? 1, messages: state["messages"]?.uint64Value ?? 0,
            firstSequence: state["first_seq"]?.uint64Value ?? 0, lastSequence: state["last_seq"]?.uint64Value ?? 0,
            leader: cluster?["leader"]?.stringValue,
            followers: cluster?["replicas"]?.arrayValue?.compactMap { $0["name"]?.stringValue } ?? []))
    }

    // MARK: - Publishing

    /// Publishes to a stream's subject and waits for its PubAck. `messageID` (Nats-Msg-Id) makes a resend of
    /// the same message within the duplicate window a no-op that answers `duplicate: true`;
    /// `expectedLastSubjectSequence` (Nats-Expected-Last-Subject-Sequence) makes the publish conditional
    /// (compare-and-set; 0 = the subject must have no message).
    public func publish(_ subject: String, payload: [UInt8], messageID: String? = nil,
                        expectedLastSubjectSequence: UInt64? = nil, headers extra: NATSHeaders? = nil,
                        completion: @escaping (Result<PubAck, JetStreamError>) -> Void) {
        var headers = extra ?? NATSHeaders()
        do {
            if let messageID { try headers.add("Nats-Msg-Id", messageID) }
            if let expectedLastSubjectSequence { try headers.add("Nats-Expected-Last-Subject-Sequence", String(expectedLastSubjectSequence)) }
        } catch {
            completion(.failure(.queue(error)))
            return
        }
        send(subject, headers: headers.isEmpty ? nil : headers, payload) { result in
            completion(result.flatMap { json in
                guard let stream = json["stream"]?.stringValue, let seq = json["seq"]?.uint64Value else {
                    return .failure(.invalidResponse("PubAck without stream/seq: \(json.serialized.prefix(200))"))
                }
                return .success(PubAck(stream: stream, sequence: seq, duplicate: json["duplicate"]?.boolValue ?? false))
            })
        }
    }

    // MARK: - Reading and deleting

    /// The message with this sequence; nil when there is none (deleted or never stored).
    public func getMessage(stream: String, sequence: UInt64, completion: @escaping (Result<StoredMessage?, JetStreamError>) -> Void) {
        get(stream, .object([("seq", .uint(sequence))]), completion)
    }

    /// The newest message on `subject`; nil when there is none.
    public func getLastMessage(stream: String, subject: String, completion: @escaping (Result<StoredMessage?, JetStreamError>) -> Void) {
        get(stream, .object([("last_by_subj", .string(subject))]), completion)
    }

    /// The first message on `subject` (wildcards allowed) at or after `sequence`; nil when there is none.
    public func getNextMessage(stream: String, subject: String, from sequence: UInt64,
                               completion: @escaping (Result<StoredMessage?, JetStreamError>) -> Void) {
        get(stream, .object([("seq", .uint(max(1, sequence))), ("next_by_subj", .string(subject))]), completion)
    }

    /// Up to `limit` messages on `subject` from `sequence` on, oldest first (one request per message).
    public func fetchMessages(stream: String, subject: String, from sequence: UInt64 = 1, limit: Int,
                              completion: @escaping (Result<[StoredMessage], JetStreamError>) -> Void) {
        var collected: [StoredMessage] = []
        func step(_ from: UInt64) {
            guard collected.count < limit else { completion(.success(collected)); return }
            getNextMessage(stream: stream, subject: subject, from: from) { result in
                switch result {
                case .failure(let e): completion(.failure(e))
                case .success(nil): completion(.success(collected))
                case .success(let message?):
                    collected.append(message)
                    step(message.sequence + 1)
                }
            }
        }
        step(sequence)
    }

    /// Deletes one message by sequence (without overwriting its bytes on disk: fast; the stream is not
    /// meant to protect deleted mail from someone reading the store files).
    public func deleteMessage(stream: String, sequence: UInt64, completion: @escaping (Result<Void, JetStreamError>) -> Void) {
        let body = Array(JSON.object([("seq", .uint(sequence)), ("no_erase", .bool(true))]).serialized.utf8)
        api("STREAM.MSG.DELETE.\(stream)", body) { result in
            completion(result.flatMap { json in
                json["success"]?.boolValue == true ? .success(()) : .failure(.invalidResponse("delete answered \(json.serialized.prefix(200))"))
            })
        }
    }

    private func get(_ stream: String, _ request: JSON, _ completion: @escaping (Result<StoredMessage?, JetStreamError>) -> Void) {
        api("STREAM.MSG.GET.\(stream)", Array(request.serialized.utf8)) { result in
            switch result {
            case .failure(let e) where e.errCode == JetStreamError.noMessageFound: completion(.success(nil))
            case .failure(let e): completion(.failure(e))
            case .success(let json): completion(Self.storedMessage(json).map { $0 })
            }
        }
    }

    static func storedMessage(_ json: JSON) -> Result<StoredMessage, JetStreamError> {
        guard let m = json["message"], let subject = m["subject"]?.stringValue, let seq = m["seq"]?.uint64Value else {
            return .failure(.invalidResponse("message get without message: \(json.serialized.prefix(200))"))
        }
        let data = m["data"]?.stringValue.map { Base64.decode($0) } ?? []
        guard let data else { return .failure(.invalidResponse("message \(seq): data is not base64")) }
        var headers: NATSHeaders?
        if let h = m["hdrs"]?.stringValue {
            guard let raw = Base64.decode(h) else { return .failure(.invalidResponse("message \(seq): hdrs is not base64")) }
            do {
                headers = try raw.withUnsafeBytes { (b) throws(NATSError) -> NATSHeaders in try NATSHeaders.parse(b) }
            } catch {
                return .failure(.invalidResponse("message \(seq): \(error)"))
            }
        }
        return .success(StoredMessage(subject: subject, sequence: seq, headers: headers, data: data, time: m["time"]?.stringValue ?? ""))
    }

    // MARK: - Plumbing

    func api(_ path: String, _ body: [UInt8], _ completion: @escaping (Result<JSON, JetStreamError>) -> Void) {
        send(apiPrefix + "." + path, headers: nil, body, completion)
    }

    /// One request whose answer is JSON that may carry {"error":{code, err_code, description}}.
    private func send(_ subject: String, headers: NATSHeaders?, _ body: [UInt8],
                      _ completion: @escaping (Result<JSON, JetStreamError>) -> Void) {
        do {
            try connection.request(subject, headers: headers, payload: body, timeoutMs: timeoutMs) { result in
                switch result {
                case .failure(let e): completion(.failure(.request(e)))
                case .success(let message): completion(Self.decode(message))
                }
            }
        } catch {
            completion(.failure(.queue(error)))
        }
    }

    static func decode(_ message: NATSMessage) -> Result<JSON, JetStreamError> {
        let json: JSON
        do {
            json = try message.payload.withUnsafeBytes { (b) throws(JSON.ParseError) -> JSON in try JSON.parse(b) }
        } catch {
            let text = String(decoding: message.payload.prefix(200), as: UTF8.self)
            return .failure(.invalidResponse("\(error): '\(text)'"))
        }
        if let error = json["error"] {
            return .failure(.api(code: error["code"]?.intValue ?? 0, errCode: error["err_code"]?.intValue ?? 0,
                                 description: error["description"]?.stringValue ?? error.serialized))
        }
        return .success(json)
    }
}
