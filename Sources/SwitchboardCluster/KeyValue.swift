// A JetStream key-value bucket, laid out as nats-server and the official clients do: stream "KV_<bucket>" on
// subjects "$KV.<bucket>.>", one subject per key, the message's stream sequence is the entry's revision.
// Accounts and contacts use it with compare-and-set: `create` succeeds only for an absent key, `update` only
// when the key's last revision is the one the caller read (Nats-Expected-Last-Subject-Sequence).
// Invariants: a key is 1...256 bytes of [A-Za-z0-9_=/-] and dots between non-empty tokens, so it is always
// one valid literal subject; a delete is a marker message (KV-Operation: DEL) that `get` reports as absent
// and `create` may overwrite (compare-and-set on the marker's revision).
import SwitchboardIO

public struct KeyValueEntry: Equatable, Sendable {
    public var key: String
    public var value: [UInt8]
    public var revision: UInt64

    public init(key: String, value: [UInt8], revision: UInt64) {
        self.key = key
        self.value = value
        self.revision = revision
    }
}

public enum KeyValueError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidKey(String)
    /// `create` of a key that exists.
    case exists(String)
    /// `update` whose expected revision is not the key's last one (someone else wrote first).
    case wrongRevision(key: String, expected: UInt64)
    case jetStream(JetStreamError)

    public var description: String {
        switch self {
        case .invalidKey(let k): return "invalid key '\(k)': 1...256 bytes of A-Z a-z 0-9 _ = / - and inner dots"
        case .exists(let k): return "key '\(k)' already exists"
        case .wrongRevision(let k, let r): return "key '\(k)' changed since revision \(r)"
        case .jetStream(let e): return "\(e)"
        }
    }
}

public final class KeyValueBucket {
    public let jetStream: JetStream
    public let bucket: String
    public var streamName: String { "KV_" + bucket }
    private var prefix: String { "$KV." + bucket + "." }

    public init(jetStream: JetStream, bucket: String) {
        self.jetStream = jetStream
        self.bucket = bucket
    }

    /// The bucket's stream configuration (history 1 unless asked: only the latest value per key is kept).
    public static func configuration(bucket: String, replicas: Int, history: Int = 1) -> StreamConfiguration {
        var c = StreamConfiguration(name: "KV_" + bucket, subjects: ["$KV." + bucket + ".>"], replicas: replicas)
        c.maxMessagesPerSubject = history
        c.discardNew = true
        c.allowRollup = true
        c.denyDelete = true
        c.allowDirect = true
        return c
    }

    /// Makes (or updates) the bucket's stream.
    public static func ensure(jetStream: JetStream, bucket: String, replicas: Int, history: Int = 1,
                              completion: @escaping (Result<KeyValueBucket, JetStreamError>) -> Void) {
        jetStream.ensureStream(configuration(bucket: bucket, replicas: replicas, history: history)) { result in
            completion(result.map { _ in KeyValueBucket(jetStream: jetStream, bucket: bucket) })
        }
    }

    public static func isValidKey(_ key: String) -> Bool {
        let bytes = Array(key.utf8)
        guard !bytes.isEmpty, bytes.count <= 256, bytes.first != 0x2E, bytes.last != 0x2E else { return false }
        var previousDot = false
        for c in bytes {
            let ok = (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                || c == 0x5F || c == 0x3D || c == 0x2F || c == 0x2D || c == 0x2E
            guard ok, !(previousDot && c == 0x2E) else { return false }
            previousDot = c == 0x2E
        }
        return true
    }

    /// The current value; nil when the key is absent or deleted.
    public func get(_ key: String, completion: @escaping (Result<KeyValueEntry?, KeyValueError>) -> Void) {
        guard Self.isValidKey(key) else { completion(.failure(.invalidKey(key))); return }
        jetStream.getLastMessage(stream: streamName, subject: prefix + key) { result in
            switch result {
            case .failure(let e): completion(.failure(.jetStream(e)))
            case .success(let m?) where !Self.isMarker(m): completion(.success(KeyValueEntry(key: key, value: m.data, revision: m.sequence)))
            case .success: completion(.success(nil))
            }
        }
    }

    /// Writes unconditionally; returns the new revision.
    public func put(_ key: String, _ value: [UInt8], completion: @escaping (Result<UInt64, KeyValueError>) -> Void) {
        write(key, value, expected: nil, headers: nil, completion)
    }

    /// Writes only if the key is absent (or deleted); `.exists` otherwise.
    public func create(_ key: String, _ value: [UInt8], completion: @escaping (Result<UInt64, KeyValueError>) -> Void) {
        write(key, value, expected: 0, headers: nil) { result in
            guard case .failure(.wrongRevision) = result else { completion(result); return }
            // A delete marker counts as absent: replace it with compare-and-set on its revision.
            self.jetStream.getLastMessage(stream: self.streamName, subject: self.prefix + key) { last in
                switch last {
                case .success(let m?) where Self.isMarker(m):
                    self.write(key, value, expected: m.sequence, headers: nil) { retried in
                        if case .failure(.wrongRevision) = retried { completion(.failure(.exists(key))) } else { completion(retried) }
                    }
                case .failure(let e): completion(.failure(.jetStream(e)))
                default: completion(.failure(.exists(key)))
                }
            }
        }
    }

    /// Writes only if `revision` is still the key's last revision; `.wrongRevision` otherwise.
    public func update(_ key: String, _ value: [UInt8], revision: UInt64, completion: @escaping (Result<UInt64, KeyValueError>) -> Void) {
        write(key, value, expected: revision, headers: nil, completion)
    }

    /// Deletes by writing a marker (history keeps the bucket's limits); returns the marker's revision.
    public func delete(_ key: String, completion: @escaping (Result<UInt64, KeyValueError>) -> Void) {
        var headers = NATSHeaders()
        try? headers.add("KV-Operation", "DEL")
        write(key, [], expected: nil, headers: headers, completion)
    }

    private func write(_ key: String, _ value: [UInt8], expected: UInt64?, headers: NATSHeaders?,
                       _ completion: @escaping (Result<UInt64, KeyValueError>) -> Void) {
        guard Self.isValidKey(key) else { completion(.failure(.invalidKey(key))); return }
        jetStream.publish(prefix + key, payload: value, expectedLastSubjectSequence: expected, headers: headers) { result in
            switch result {
            case .success(let ack): completion(.success(ack.sequence))
            case .failure(let e) where e.errCode == JetStreamError.wrongLastSequence:
                completion(.failure(.wrongRevision(key: key, expected: expected ?? 0)))
            case .failure(let e): completion(.failure(.jetStream(e)))
            }
        }
    }

    private static func isMarker(_ m: StoredMessage) -> Bool {
        guard let op = m.headers?["KV-Operation"] else { return false }
        return op == "DEL" || op == "PURGE"
    }
}
