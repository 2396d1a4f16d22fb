// The client-to-server half of the NATS protocol: CONNECT, PUB, HPUB, SUB, UNSUB, PING, PONG written into a
// ByteBuffer, plus the checks that keep a caller's bad subject or header from breaking the stream.
// Invariants: every command is written whole (control line, payload, CRLF) or not at all; nothing is written
// for a subject, queue group or header that fails validation (the caller gets a NATSError instead), so the
// bytes after any command always start a new command.
import SwitchboardIO

public enum NATSError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalidSubject(String, reason: String)
    case invalidHeader(String)
    case payloadTooLarge(size: Int, limit: Int)
    /// The outbound buffer holds `limit` bytes or more (the server is slow or the cluster unreachable).
    case outboundBufferFull(pending: Int, limit: Int)
    case closed
    /// A call that needs a live link (flush) while there is none.
    case notConnected
    case invalidURL(String)

    public var description: String {
        switch self {
        case .invalidSubject(let s, let reason): return "invalid NATS subject '\(s)': \(reason)"
        case .invalidHeader(let s): return "invalid NATS header: \(s)"
        case .payloadTooLarge(let size, let limit): return "NATS payload of \(size) bytes exceeds the server's max_payload of \(limit) bytes"
        case .outboundBufferFull(let pending, let limit):
            return "NATS outbound buffer full (\(pending) bytes pending, limit \(limit)): the cluster is unreachable or too slow"
        case .closed: return "NATS connection closed"
        case .notConnected: return "not connected to a NATS server (reconnecting)"
        case .invalidURL(let s): return "invalid NATS server URL '\(s)': expected nats://IP:PORT (numeric IPv4, [IPv6] or localhost)"
        }
    }
}

public enum NATSSubject {
    /// Longest subject accepted (nats-server has no hard limit; long subjects cost memory in every server's
    /// interest graph).
    public static let maxLength = 512

    /// Checks a subject: printable ASCII without spaces, dot-separated non-empty tokens; `*` and `>` only as
    /// whole tokens (`>` last) and only where wildcards are allowed (SUB, not PUB).
    public static func validate(_ subject: String, wildcards: Bool) throws(NATSError) {
        let bytes = Array(subject.utf8)
        guard !bytes.isEmpty else { throw .invalidSubject(subject, reason: "empty") }
        guard bytes.count <= maxLength else { throw .invalidSubject(subject, reason: "longer than \(maxLength) bytes") }
        let tokens = bytes.split(separator: 0x2E, omittingEmptySubsequences: false)
        for (i, token) in tokens.enumerated() {
            guard !token.isEmpty else { throw .invalidSubject(subject, reason: "empty token") }
            for c in token where c <= 0x20 || c >= 0x7F {
                throw .invalidSubject(subject, reason: "contains whitespace, control or non-ASCII bytes")
            }
            let hasWildcard = token.contains(0x2A) || token.contains(0x3E)
            guard hasWildcard else { continue }
            guard wildcards else { throw .invalidSubject(subject, reason: "wildcards are not allowed here") }
            guard token.count == 1 else { throw .invalidSubject(subject, reason: "wildcard inside a token") }
            if token.first == 0x3E && i != tokens.count - 1 { throw .invalidSubject(subject, reason: "'>' must be the last token") }
        }
    }

    /// A queue group name: printable ASCII, no spaces.
    public static func validateQueue(_ queue: String) throws(NATSError) {
        guard !queue.isEmpty, queue.utf8.count <= maxLength, queue.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw .invalidSubject(queue, reason: "queue group must be 1...\(maxLength) printable ASCII bytes without spaces")
        }
    }
}

/// Writes client commands. Callers validate subjects first (`NATSSubject.validate`); the encoder itself only
/// writes bytes.
public enum NATSEncoder {
    public static func connect(_ json: String, into out: ByteBuffer) {
        out.writeUTF8("CONNECT ")
        out.writeUTF8(json)
        crlf(out)
    }

    public static func ping(into out: ByteBuffer) { out.writeUTF8("PING\r\n") }
    public static func pong(into out: ByteBuffer) { out.writeUTF8("PONG\r\n") }

    public static func sub(subject: String, queue: String?, sid: UInt64, into out: ByteBuffer) {
        out.writeUTF8("SUB ")
        out.writeUTF8(subject)
        if let queue { space(out); out.writeUTF8(queue) }
        space(out)
        writeDecimal(sid, out)
        crlf(out)
    }

    public static func unsub(sid: UInt64, max: UInt64? = nil, into out: ByteBuffer) {
        out.writeUTF8("UNSUB ")
        writeDecimal(sid, out)
        if let max { space(out); writeDecimal(max, out) }
        crlf(out)
    }

    /// PUB, or HPUB when `headers` (an encoded block from `NATSHeaders.encoded()`) is given.
    public static func publish(subject: String, replyTo: String?, headers: [UInt8]?, payload: UnsafeRawBufferPointer,
                               into out: ByteBuffer) {
        out.writeUTF8(headers == nil ? "PUB " : "HPUB ")
        out.writeUTF8(subject)
        if let replyTo { space(out); out.writeUTF8(replyTo) }
        space(out)
        if let headers {
            writeDecimal(UInt64(headers.count), out)
            space(out)
            writeDecimal(UInt64(headers.count + payload.count), out)
            crlf(out)
            out.writeBytes(headers)
        } else {
            writeDecimal(UInt64(payload.count), out)
            crlf(out)
        }
        out.writeBytes(payload)
        crlf(out)
    }

    @inline(__always) private static func crlf(_ out: ByteBuffer) { out.writeInteger(UInt16(0x0D0A)) }
    @inline(__always) private static func space(_ out: ByteBuffer) { out.writeInteger(UInt8(0x20)) }

    /// ASCII decimal without creating a String.
    static func writeDecimal(_ value: UInt64, _ out: ByteBuffer) {
        var digits: (UInt64, Int) = (value, 0)
        var scratch: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                      UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &scratch) { s in
            repeat {
                s[19 - digits.1] = UInt8(0x30 + digits.0 % 10)
                digits.0 /= 10
                digits.1 += 1
            } while digits.0 > 0
            out.writeBytes(UnsafeRawBufferPointer(rebasing: s[(20 - digits.1)..<20]))
        }
    }
}
