// NATS message headers: the "NATS/1.0[ status[ description]]" line, then "Key: Value" lines, then an empty line.
// Status 503 with no payload is how nats-server says "no responders" to a request.
// Invariants: keys are printable ASCII without ':' or spaces, values hold no CR or LF (checked when set), so
// an encoded block always parses back to the same fields; parsing refuses a block without the NATS/1.0 line
// or the final empty line.

public struct NATSHeaders: Equatable, Sendable {
    public private(set) var fields: [(key: String, value: String)] = []
    /// Inline status of the first line (503 no responders, 404/408 from JetStream pull requests), if any.
    public var status: Int?
    public var statusDescription: String = ""

    public init() {}

    public init(_ pairs: [(String, String)]) throws(NATSError) {
        for (k, v) in pairs { try add(k, v) }
    }

    public static func == (a: NATSHeaders, b: NATSHeaders) -> Bool {
        a.status == b.status && a.statusDescription == b.statusDescription
            && a.fields.map { $0.key } == b.fields.map { $0.key } && a.fields.map { $0.value } == b.fields.map { $0.value }
    }

    public var isEmpty: Bool { fields.isEmpty && status == nil }

    public mutating func add(_ key: String, _ value: String) throws(NATSError) {
        guard !key.isEmpty, key.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != 0x3A }) else {
            throw .invalidHeader("key '\(key)' must be printable ASCII without ':' or spaces")
        }
        guard !value.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A }) else {
            throw .invalidHeader("value of '\(key)' contains CR or LF")
        }
        fields.append((key, value))
    }

    /// First value for `key` (ASCII case-insensitive, as nats-server treats Nats-* keys).
    public subscript(_ key: String) -> String? {
        let wanted = key.lowercased()
        return fields.first { $0.key.lowercased() == wanted }?.value
    }

    public func encoded() -> [UInt8] {
        var out = Array("NATS/1.0".utf8)
        if let status {
            out.append(0x20)
            out += Array(String(status).utf8)
            if !statusDescription.isEmpty { out.append(0x20); out += Array(statusDescription.utf8) }
        }
        out += [0x0D, 0x0A]
        for (k, v) in fields {
            out += Array(k.utf8)
            out += [0x3A, 0x20]
            out += Array(v.utf8)
            out += [0x0D, 0x0A]
        }
        out += [0x0D, 0x0A]
        return out
    }

    /// Parses a header block as it arrives in HMSG.
    public static func parse(_ block: UnsafeRawBufferPointer) throws(NATSError) -> NATSHeaders {
        let text = Array(block)
        guard text.count >= 10, text.starts(with: Array("NATS/1.0".utf8)) else {
            throw .invalidHeader("block does not start with NATS/1.0")
        }
        guard text.suffix(4).elementsEqual([0x0D, 0x0A, 0x0D, 0x0A]) else {
            throw .invalidHeader("block does not end with an empty line")
        }
        var lines: [ArraySlice<UInt8>] = []
        var start = 0
        var i = 0
        while i + 1 < text.count {
            if text[i] == 0x0D && text[i + 1] == 0x0A {
                lines.append(text[start..<i])
                start = i + 2
                i += 2
            } else {
                i += 1
            }
        }
        var headers = NATSHeaders()
        let first = String(decoding: lines.first ?? [], as: UTF8.self)
        let rest = first.dropFirst("NATS/1.0".count).drop { $0 == " " || $0 == "\t" }
        if !rest.isEmpty {
            let code = rest.prefix { $0.isNumber }
            guard let status = Int(code), code.count == 3 else { throw .invalidHeader("bad status line '\(first)'") }
            headers.status = status
            headers.statusDescription = String(rest.dropFirst(code.count).drop { $0 == " " || $0 == "\t" })
        }
        for line in lines.dropFirst() where !line.isEmpty {
            guard let colon = line.firstIndex(of: 0x3A) else { throw .invalidHeader("line without ':'") }
            let key = String(decoding: line[line.startIndex..<colon], as: UTF8.self)
            let value = String(decoding: line[(colon + 1)...], as: UTF8.self).drop { $0 == " " || $0 == "\t" }
            try headers.add(key, String(value))
        }
        return headers
    }
}
