// Wire formats of the peers sbload can load instead of Switchboard, for side-by-side comparisons with
// the same `relay` scenario: Redis pub/sub (RESP2), MQTT 3.1.1 and NATS core. Only what the scenario
// needs is spoken. The parsers work in place on the bytes read (no copies, no allocation except on
// the error path), every length is bounded, and anything a peer sends that is not well-formed is a
// `.violation` with a readable reason: a parser never traps on input.
import Glibc
import SwitchboardIO

/// Which server the relay scenario talks to.
enum PeerProtocol: String, Sendable {
    case switchboard, redis, mqtt, nats

    var defaultPort: UInt16 {
        switch self { case .switchboard: 7878; case .redis: 6379; case .mqtt: 1883; case .nats: 4222 }
    }
}

/// A range of the buffer being parsed.
struct ByteSlice {
    var start: Int
    var count: Int
    static let empty = ByteSlice(start: 0, count: 0)
}

enum PeerParse<Item> {
    case needMore
    case violation(String)
    case item(Item, consumed: Int)
}

/// Upper bounds on anything a peer may send: the input buffer never holds more than one item plus a read.
enum PeerLimits {
    static let maxPayload = 1 << 20
    static let maxLine = 4096
    /// NATS INFO can carry a long JSON object (cluster URLs); still bounded.
    static let maxControlLine = 64 << 10
}

@inline(__always) func sliceEquals(_ b: UnsafeRawBufferPointer, _ s: ByteSlice, _ expected: UnsafeRawBufferPointer) -> Bool {
    s.count == expected.count && (s.count == 0 || memcmp(b.baseAddress! + s.start, expected.baseAddress!, s.count) == 0)
}

@inline(__always) func sliceEquals(_ b: UnsafeRawBufferPointer, _ s: ByteSlice, _ expected: StaticString) -> Bool {
    s.count == expected.utf8CodeUnitCount && (s.count == 0 || memcmp(b.baseAddress! + s.start, expected.utf8Start, s.count) == 0)
}

/// A printable excerpt of peer bytes for an error message (bounded, non-ASCII escaped).
func printable(_ b: UnsafeRawBufferPointer, _ s: ByteSlice, limit: Int = 120) -> String {
    var out = ""
    let end = s.start + min(s.count, limit)
    var i = s.start
    while i < end {
        let byte = b[i]
        if byte >= 0x20 && byte < 0x7F { out.unicodeScalars.append(Unicode.Scalar(byte)) } else { out += "\\x" + String(byte, radix: 16) }
        i += 1
    }
    if s.count > limit { out += "…" }
    return out
}

/// Parses a decimal integer in b[from..<to] (optional leading '-'), at most 18 digits.
@inline(__always) func parseDecimal(_ b: UnsafeRawBufferPointer, _ from: Int, _ to: Int) -> Int64? {
    var i = from
    var negative = false
    if i < to && b[i] == UInt8(ascii: "-") { negative = true; i += 1 }
    guard i < to, to - i <= 18 else { return nil }
    var v: Int64 = 0
    while i < to {
        let d = b[i] &- UInt8(ascii: "0")
        guard d <= 9 else { return nil }
        v = v * 10 + Int64(d)
        i += 1
    }
    return negative ? -v : v
}

/// Index of the "\r\n" ending the line that starts at `from`, or nil if not there yet; `.violation` past `limit`.
@inline(__always) func findCRLF(_ b: UnsafeRawBufferPointer, from: Int, limit: Int) -> Int?? {
    let available = b.count - from
    let scan = min(available, limit + 2)
    guard scan > 0, let base = b.baseAddress else { return .some(nil) }
    guard let hit = memchr(base + from, 0x0A, scan) else {
        return available > limit + 1 ? .none : .some(nil)
    }
    let lf = base.distance(to: UnsafeRawPointer(hit))
    guard lf > from, b[lf - 1] == 0x0D else { return .none }   // a bare LF is not allowed
    return .some(lf - 1)
}

// MARK: - RESP (Redis serialization protocol, version 2)

enum RESP {
    static let maxArray = 16

    enum Kind: UInt8 { case simple, error, integer, bulk, null, array }

    struct Element {
        var kind: Kind = .null
        var integer: Int64 = 0
        /// Text of a simple string or error, bytes of a bulk string.
        var slice = ByteSlice.empty
    }

    /// One reply. Arrays (pub/sub pushes) keep their first three elements, which is all the scenario reads.
    struct Reply {
        var top = Element()
        var count = 0
        var e0 = Element(), e1 = Element(), e2 = Element()
    }

    private enum Step { case needMore, violation(String), element(Element, next: Int) }

    /// One element at `i` (arrays not allowed here: pub/sub never nests them).
    private static func element(_ b: UnsafeRawBufferPointer, at i: Int, allowArray: Bool) -> Step {
        guard i < b.count else { return .needMore }
        let type = b[i]
        let lineLimit = (type == UInt8(ascii: "+") || type == UInt8(ascii: "-")) ? PeerLimits.maxLine : 24
        guard let found = findCRLF(b, from: i + 1, limit: lineLimit) else {
            return .violation("RESP line too long or bare LF after type byte '\(printable(b, ByteSlice(start: i, count: 1)))'")
        }
        guard let cr = found else { return .needMore }
        let next = cr + 2
        switch type {
        case UInt8(ascii: "+"):
            return .element(Element(kind: .simple, slice: ByteSlice(start: i + 1, count: cr - i - 1)), next: next)
        case UInt8(ascii: "-"):
            return .element(Element(kind: .error, slice: ByteSlice(start: i + 1, count: cr - i - 1)), next: next)
        case UInt8(ascii: ":"):
            guard let v = parseDecimal(b, i + 1, cr) else { return .violation("RESP integer is not a number: '\(printable(b, ByteSlice(start: i + 1, count: cr - i - 1)))'") }
            return .element(Element(kind: .integer, integer: v), next: next)
        case UInt8(ascii: "$"):
            guard let n = parseDecimal(b, i + 1, cr), n >= -1, n <= Int64(PeerLimits.maxPayload) else {
                return .violation("RESP bulk length invalid or above \(PeerLimits.maxPayload): '\(printable(b, ByteSlice(start: i + 1, count: cr - i - 1)))'")
            }
            if n == -1 { return .element(Element(kind: .null), next: next) }
            let length = Int(n)
            guard b.count >= next + length + 2 else { return .needMore }
            guard b[next + length] == 0x0D, b[next + length + 1] == 0x0A else { return .violation("RESP bulk string of \(length) bytes not followed by CRLF") }
            return .element(Element(kind: .bulk, slice: ByteSlice(start: next, count: length)), next: next + length + 2)
        case UInt8(ascii: "*"), UInt8(ascii: ">"):
            guard allowArray else { return .violation("nested RESP array (not used by pub/sub)") }
            guard let n = parseDecimal(b, i + 1, cr), n >= -1, n <= Int64(maxArray) else {
                return .violation("RESP array length invalid or above \(maxArray): '\(printable(b, ByteSlice(start: i + 1, count: cr - i - 1)))'")
            }
            if n == -1 { return .element(Element(kind: .null), next: next) }
            return .element(Element(kind: .array, integer: n), next: next)
        default:
            return .violation("unexpected RESP type byte 0x\(String(type, radix: 16))")
        }
    }

    static func parse(_ b: UnsafeRawBufferPointer) -> PeerParse<Reply> {
        var reply = Reply()
        switch element(b, at: 0, allowArray: true) {
        case .needMore: return .needMore
        case .violation(let why): return .violation(why)
        case .element(let top, var next):
            reply.top = top
            guard top.kind == .array else { return .item(reply, consumed: next) }
            reply.count = Int(top.integer)
            for k in 0..<reply.count {
                switch element(b, at: next, allowArray: false) {
                case .needMore: return .needMore
                case .violation(let why): return .violation(why)
                case .element(let e, let after):
                    if k == 0 { reply.e0 = e } else if k == 1 { reply.e1 = e } else if k == 2 { reply.e2 = e }
                    next = after
                }
            }
            return .item(reply, consumed: next)
        }
    }

    /// `*N\r\n$len\r\narg\r\n...` for a command.
    static func command(_ args: [[UInt8]]) -> [UInt8] {
        var out = Array("*\(args.count)\r\n".utf8)
        for a in args { out += Array("$\(a.count)\r\n".utf8); out += a; out += [0x0D, 0x0A] }
        return out
    }
}

// MARK: - MQTT 3.1.1

enum MQTT {
    static let connect: UInt8 = 1, connack: UInt8 = 2, publish: UInt8 = 3, puback: UInt8 = 4
    static let subscribe: UInt8 = 8, suback: UInt8 = 9, pingresp: UInt8 = 13

    struct Packet {
        var type: UInt8
        var flags: UInt8
        var body: ByteSlice
    }

    static func parse(_ b: UnsafeRawBufferPointer) -> PeerParse<Packet> {
        guard b.count >= 2 else { return .needMore }
        var length = 0
        var shift = 0
        var i = 1
        while true {
            guard i < b.count else { return .needMore }
            guard i <= 4 else { return .violation("MQTT remaining length longer than 4 bytes") }
            let byte = b[i]
            length |= Int(byte & 0x7F) << shift
            i += 1
            if byte & 0x80 == 0 { break }
            shift += 7
        }
        guard length <= PeerLimits.maxPayload + 1024 else { return .violation("MQTT packet of \(length) bytes is above the \(PeerLimits.maxPayload + 1024) limit") }
        guard b.count >= i + length else { return .needMore }
        let type = b[0] >> 4, flags = b[0] & 0x0F
        switch type {
        case connack, puback:
            guard flags == 0, length == 2 else { return .violation("MQTT \(type == connack ? "CONNACK" : "PUBACK") with flags \(flags), length \(length)") }
        case suback:
            guard flags == 0, length >= 3 else { return .violation("MQTT SUBACK with flags \(flags), length \(length)") }
        case pingresp:
            guard flags == 0, length == 0 else { return .violation("MQTT PINGRESP with flags \(flags), length \(length)") }
        case publish:
            guard flags & 0x06 != 0x06 else { return .violation("MQTT PUBLISH with QoS 3") }
            guard length >= 2 else { return .violation("MQTT PUBLISH shorter than its topic length") }
        default:
            return .violation("unexpected MQTT packet type \(type) (flags \(flags), length \(length)) from the broker")
        }
        return .item(Packet(type: type, flags: flags, body: ByteSlice(start: i, count: length)), consumed: i + length)
    }

    struct Publish {
        var qos: UInt8
        var packetID: UInt16
        var topic: ByteSlice
        var payload: ByteSlice
    }

    static func publishFields(_ b: UnsafeRawBufferPointer, _ p: Packet) -> Publish? {
        let qos = (p.flags >> 1) & 3
        let s = p.body.start, end = p.body.start + p.body.count
        let topicLength = Int(b[s]) << 8 | Int(b[s + 1])
        var i = s + 2 + topicLength
        guard i <= end else { return nil }
        var id: UInt16 = 0
        if qos > 0 {
            guard i + 2 <= end else { return nil }
            id = UInt16(b[i]) << 8 | UInt16(b[i + 1])
            guard id != 0 else { return nil }
            i += 2
        }
        return Publish(qos: qos, packetID: id, topic: ByteSlice(start: s + 2, count: topicLength), payload: ByteSlice(start: i, count: end - i))
    }

    static func remainingLength(_ n: Int) -> [UInt8] {
        var out: [UInt8] = []
        var v = n
        repeat {
            var byte = UInt8(v & 0x7F)
            v >>= 7
            if v > 0 { byte |= 0x80 }
            out.append(byte)
        } while v > 0
        return out
    }

    static func utf8Field(_ bytes: [UInt8]) -> [UInt8] { [UInt8(bytes.count >> 8), UInt8(bytes.count & 0xFF)] + bytes }

    /// CONNECT: protocol level 4, clean session, keep-alive off (every run is bounded in time).
    static func connectPacket(clientID: [UInt8]) -> [UInt8] {
        let variable: [UInt8] = utf8Field(Array("MQTT".utf8)) + [4, 0x02, 0, 0]
        let body = variable + utf8Field(clientID)
        return [connect << 4] + remainingLength(body.count) + body
    }

    static func subscribePacket(topic: [UInt8], qos: UInt8, packetID: UInt16) -> [UInt8] {
        let body = [UInt8(packetID >> 8), UInt8(packetID & 0xFF)] + utf8Field(topic) + [qos]
        return [subscribe << 4 | 0x02] + remainingLength(body.count) + body
    }

    /// Everything of a PUBLISH before the packet id (QoS 1) or the payload.
    static func publishPrefix(topic: [UInt8], qos: UInt8, payloadBytes: Int) -> [UInt8] {
        let length = 2 + topic.count + (qos > 0 ? 2 : 0) + payloadBytes
        return [publish << 4 | qos << 1] + remainingLength(length) + utf8Field(topic)
    }

    /// Packet ids run 1...65535; sequence numbers map onto them in order.
    @inline(__always) static func packetID(seq: UInt64) -> UInt16 { UInt16(truncatingIfNeeded: (seq &- 1) % 65535 + 1) }
}

// MARK: - NATS core protocol

enum NATS {
    enum Op {
        case info, ping, pong, ok
        case err(ByteSlice)
        case msg(subject: ByteSlice, sid: ByteSlice, payload: ByteSlice)
    }

    @inline(__always) private static func upper(_ c: UInt8) -> UInt8 { (c >= 0x61 && c <= 0x7A) ? c - 0x20 : c }

    /// Whether the line at `from` starts with `word` (case-insensitive) followed by a space, tab or the line end.
    private static func opIs(_ b: UnsafeRawBufferPointer, _ from: Int, _ lineEnd: Int, _ word: StaticString) -> Bool {
        let n = word.utf8CodeUnitCount
        guard lineEnd - from >= n else { return false }
        for k in 0..<n where upper(b[from + k]) != word.utf8Start[k] { return false }
        if from + n == lineEnd { return true }
        let next = b[from + n]
        return next == 0x20 || next == 0x09
    }

    static func parse(_ b: UnsafeRawBufferPointer) -> PeerParse<Op> {
        guard b.count > 0 else { return .needMore }
        guard let found = findCRLF(b, from: 0, limit: PeerLimits.maxControlLine) else {
            return .violation("NATS control line longer than \(PeerLimits.maxControlLine) bytes or not CRLF-terminated: '\(printable(b, ByteSlice(start: 0, count: min(b.count, 60))))'")
        }
        guard let cr = found else { return .needMore }
        let next = cr + 2
        if opIs(b, 0, cr, "MSG") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            var args: (ByteSlice, ByteSlice, ByteSlice, ByteSlice) = (.empty, .empty, .empty, .empty)
            var n = 0
            var i = 3
            while i < cr {
                while i < cr && (b[i] == 0x20 || b[i] == 0x09) { i += 1 }
                guard i < cr else { break }
                let start = i
                while i < cr && b[i] != 0x20 && b[i] != 0x09 { i += 1 }
                let token = ByteSlice(start: start, count: i - start)
                switch n { case 0: args.0 = token; case 1: args.1 = token; case 2: args.2 = token; case 3: args.3 = token; default: break }
                n += 1
            }
            guard n == 3 || n == 4 else { return .violation("NATS MSG with \(n) arguments: '\(printable(b, ByteSlice(start: 0, count: cr)))'") }
            let sizeToken = n == 3 ? args.2 : args.3
            guard let size = parseDecimal(b, sizeToken.start, sizeToken.start + sizeToken.count), size >= 0, size <= Int64(PeerLimits.maxPayload) else {
                return .violation("NATS MSG size invalid or above \(PeerLimits.maxPayload): '\(printable(b, ByteSlice(start: 0, count: cr)))'")
            }
            let length = Int(size)
            guard b.count >= next + length + 2 else { return .needMore }
            guard b[next + length] == 0x0D, b[next + length + 1] == 0x0A else { return .violation("NATS MSG payload of \(length) bytes not followed by CRLF") }
            return .item(.msg(subject: args.0, sid: args.1, payload: ByteSlice(start: next, count: length)), consumed: next + length + 2)
        }
        if opIs(b, 0, cr, "PING") { return .item(.ping, consumed: next) }
        if opIs(b, 0, cr, "PONG") { return .item(.pong, consumed: next) }
        if opIs(b, 0, cr, "+OK") { return .item(.ok, consumed: next) }
        if opIs(b, 0, cr, "INFO") { return .item(.info, consumed: next) }
        if opIs(b, 0, cr, "-ERR") { return .item(.err(ByteSlice(start: min(5, cr), count: max(0, cr - 5))), consumed: next) }
        return .violation("unexpected NATS operation: '\(printable(b, ByteSlice(start: 0, count: cr)))'")
    }
}
