// The NATS client protocol, server-to-client half, as a sans-I/O parser: it is handed the unconsumed input
// bytes and says what the next operation is (INFO, MSG, HMSG, PING, PONG, +OK, -ERR), how many bytes it
// used, that it needs more, or that the server broke the protocol. No sockets, no allocation: operations
// name their fields as slices of the bytes it was given.
// Invariants: a control line longer than `limits.maxControlLine` or ended by a bare LF is a violation; a
// MSG/HMSG size above `limits.maxPayload` is refused from its control line, before any of its payload is
// buffered, so the input buffer never holds more than one control line plus one payload (plus the CRLF);
// between calls that returned `.needMore` the caller may only append bytes (the parser remembers how far
// it scanned and the control line of a MSG whose payload is still arriving).

/// Byte range inside the buffer handed to the parser.
public struct ByteRange: Equatable, Sendable {
    public var start: Int
    public var count: Int
    public init(start: Int, count: Int) { self.start = start; self.count = count }
    public static let empty = ByteRange(start: 0, count: 0)
    public var end: Int { start + count }
}

/// Bounds on what the server may send (the client refuses the connection beyond them).
public struct NATSLimits: Equatable, Sendable {
    /// Longest control line accepted. INFO is the long one (it lists the cluster's client URLs).
    public var maxControlLine: Int
    /// Largest MSG/HMSG payload (headers included) accepted; nats-server's own default max_payload is 1 MiB.
    public var maxPayload: Int

    public init(maxControlLine: Int = 16 * 1024, maxPayload: Int = 8 * 1024 * 1024) {
        self.maxControlLine = maxControlLine
        self.maxPayload = maxPayload
    }
}

/// One MSG or HMSG: subject, subscription id, optional reply subject, optional header block, payload.
public struct NATSMessageFrame: Equatable, Sendable {
    public var subject: ByteRange
    public var sid: UInt64
    /// `count == 0`: no reply subject.
    public var replyTo: ByteRange
    /// The raw header block ("NATS/1.0 ...\r\n...\r\n\r\n"), nil for MSG.
    public var headers: ByteRange?
    public var payload: ByteRange
}

public enum NATSOperation: Equatable, Sendable {
    /// INFO's JSON object.
    case info(ByteRange)
    case message(NATSMessageFrame)
    case ping
    case pong
    case ok
    /// The server's error text, without the quotes.
    case err(ByteRange)
}

public enum NATSParseResult: Equatable, Sendable {
    case needMore
    case operation(NATSOperation, consumed: Int)
    /// The server broke the protocol; the connection must be dropped.
    case violation(String)
}

public struct NATSParser: Sendable {
    public let limits: NATSLimits
    /// Bytes already searched for the control line's LF (resumes there when more bytes arrive).
    private var scanned = 0
    /// A MSG/HMSG whose control line is parsed and whose payload is still arriving.
    private var pending: (frame: NATSMessageFrame, bodyStart: Int, total: Int)?

    public init(limits: NATSLimits = NATSLimits()) { self.limits = limits }

    /// Forgets partial state (after a reconnect the input starts afresh).
    public mutating func reset() { scanned = 0; pending = nil }

    public mutating func next(_ b: UnsafeRawBufferPointer) -> NATSParseResult {
        if let p = pending {
            let end = p.bodyStart + p.total
            guard b.count >= end + 2 else { return .needMore }
            guard b[end] == 0x0D, b[end + 1] == 0x0A else {
                return .violation("payload of \(p.total) bytes not followed by CRLF")
            }
            pending = nil
            scanned = 0
            return .operation(.message(p.frame), consumed: end + 2)
        }
        var lf = -1
        var i = scanned
        let searchEnd = min(b.count, limits.maxControlLine + 2)
        while i < searchEnd {
            if b[i] == 0x0A { lf = i; break }
            i += 1
        }
        if lf < 0 {
            if b.count >= limits.maxControlLine + 2 {
                return .violation("control line longer than \(limits.maxControlLine) bytes: '\(printable(b, ByteRange(start: 0, count: 60)))'")
            }
            scanned = b.count
            return .needMore
        }
        guard lf > 0, b[lf - 1] == 0x0D else { return .violation("control line ended by a bare LF: '\(printable(b, ByteRange(start: 0, count: lf)))'") }
        let lineEnd = lf - 1
        let next = lf + 1
        scanned = 0
        var tokens = Tokens()
        tokens.split(b, 0, lineEnd)
        guard tokens.count > 0 else { return .violation("empty control line") }
        let op = tokens[0]
        if matches(b, op, "MSG") || matches(b, op, "HMSG") {
            return parseMessage(b, tokens, isHeaders: op.count == 4, line: ByteRange(start: 0, count: lineEnd), bodyStart: next)
        }
        if matches(b, op, "PING") || matches(b, op, "PONG") || matches(b, op, "+OK") {
            guard tokens.count == 1 else { return .violation("unexpected arguments: '\(printable(b, ByteRange(start: 0, count: lineEnd)))'") }
            let result: NATSOperation = matches(b, op, "+OK") ? .ok : (upper(b[op.start + 1]) == 0x49 ? .ping : .pong)
            return .operation(result, consumed: next)
        }
        if matches(b, op, "INFO") {
            guard tokens.count > 1 else { return .violation("INFO without a body") }
            let start = tokens[1].start
            return .operation(.info(ByteRange(start: start, count: lineEnd - start)), consumed: next)
        }
        if matches(b, op, "-ERR") {
            var start = tokens.count > 1 ? tokens[1].start : lineEnd
            var end = lineEnd
            while end > start && (b[end - 1] == 0x20 || b[end - 1] == 0x09) { end -= 1 }
            if end - start >= 2 && b[start] == 0x27 && b[end - 1] == 0x27 { start += 1; end -= 1 }
            return .operation(.err(ByteRange(start: start, count: end - start)), consumed: next)
        }
        return .violation("unknown operation: '\(printable(b, ByteRange(start: 0, count: lineEnd)))'")
    }

    // MSG <subject> <sid> [reply-to] <#bytes>; HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>
    private mutating func parseMessage(_ b: UnsafeRawBufferPointer, _ t: Tokens, isHeaders: Bool, line: ByteRange,
                                       bodyStart: Int) -> NATSParseResult {
        let sizes = isHeaders ? 2 : 1
        guard t.count == 3 + sizes || t.count == 4 + sizes else {
            return .violation("\(isHeaders ? "HMSG" : "MSG") with \(t.count - 1) arguments: '\(printable(b, line))'")
        }
        guard let sid = decimal(b, t[2]) else { return .violation("subscription id is not a number: '\(printable(b, line))'") }
        let hasReply = t.count == 4 + sizes
        guard let total = decimal(b, t[t.count - 1]), total <= UInt64(limits.maxPayload) else {
            return .violation("payload size missing or above the limit of \(limits.maxPayload) bytes: '\(printable(b, line))'")
        }
        var headers: ByteRange?
        if isHeaders {
            guard let h = decimal(b, t[t.count - 2]), h <= total, h >= 10 else {
                return .violation("header size missing, below 10 or above the total size: '\(printable(b, line))'")
            }
            headers = ByteRange(start: bodyStart, count: Int(h))
        }
        let headerCount = headers?.count ?? 0
        let frame = NATSMessageFrame(subject: t[1], sid: sid, replyTo: hasReply ? t[3] : .empty, headers: headers,
                                     payload: ByteRange(start: bodyStart + headerCount, count: Int(total) - headerCount))
        pending = (frame, bodyStart, Int(total))
        return next(b)
    }
}

/// Up to 7 whitespace-separated tokens of a control line, without allocating.
struct Tokens {
    private var storage: (ByteRange, ByteRange, ByteRange, ByteRange, ByteRange, ByteRange, ByteRange) =
        (.empty, .empty, .empty, .empty, .empty, .empty, .empty)
    /// Tokens seen (may exceed 7; only the first 7 are kept).
    private(set) var count = 0

    subscript(_ i: Int) -> ByteRange {
        switch i {
        case 0: storage.0
        case 1: storage.1
        case 2: storage.2
        case 3: storage.3
        case 4: storage.4
        case 5: storage.5
        default: storage.6
        }
    }

    mutating func split(_ b: UnsafeRawBufferPointer, _ from: Int, _ to: Int) {
        var i = from
        while i < to {
            while i < to && (b[i] == 0x20 || b[i] == 0x09) { i += 1 }
            guard i < to else { break }
            let start = i
            while i < to && b[i] != 0x20 && b[i] != 0x09 { i += 1 }
            let r = ByteRange(start: start, count: i - start)
            switch count {
            case 0: storage.0 = r
            case 1: storage.1 = r
            case 2: storage.2 = r
            case 3: storage.3 = r
            case 4: storage.4 = r
            case 5: storage.5 = r
            case 6: storage.6 = r
            default: break
            }
            count += 1
        }
    }
}

@inline(__always) func upper(_ c: UInt8) -> UInt8 { (c >= 0x61 && c <= 0x7A) ? c - 0x20 : c }

/// Whether the token is `word`, ASCII case-insensitively.
func matches(_ b: UnsafeRawBufferPointer, _ token: ByteRange, _ word: StaticString) -> Bool {
    guard token.count == word.utf8CodeUnitCount else { return false }
    for k in 0..<token.count where upper(b[token.start + k]) != word.utf8Start[k] { return false }
    return true
}

/// A non-negative decimal of at most 19 digits (no sign, no overflow).
func decimal(_ b: UnsafeRawBufferPointer, _ token: ByteRange) -> UInt64? {
    guard token.count > 0, token.count <= 19 else { return nil }
    var value: UInt64 = 0
    for k in token.start..<token.end {
        let c = b[k]
        guard c >= 0x30 && c <= 0x39 else { return nil }
        value = value * 10 + UInt64(c - 0x30)
    }
    return value
}

/// Bytes for an error message: printable ASCII kept, others as '.', cut at `range.count` (and the buffer).
func printable(_ b: UnsafeRawBufferPointer, _ range: ByteRange) -> String {
    let end = min(b.count, range.end)
    guard range.start < end else { return "" }
    return String(decoding: b[range.start..<end].map { $0 >= 0x20 && $0 < 0x7F ? $0 : 0x2E }, as: UTF8.self)
}

extension UnsafeRawBufferPointer {
    /// The bytes of `range` as a String (UTF-8, invalid sequences repaired).
    func string(_ range: ByteRange) -> String {
        String(decoding: UnsafeRawBufferPointer(rebasing: self[range.start..<range.end]), as: UTF8.self)
    }

    func bytes(_ range: ByteRange) -> [UInt8] { Array(self[range.start..<range.end]) }
}
