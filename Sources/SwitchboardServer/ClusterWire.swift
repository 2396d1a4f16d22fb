// The cluster router's wire format: every message on sb.presence, sb.hb and sb.node.<name> starts with a kind
// byte, the sending node's name and its epoch; fields are little-endian, strings u16 length + UTF-8.
// Invariants: the reader never traps on any input (every read is bounds-checked and returns nil past the end);
// kinds 12 and 13 (the whole-directory snapshot of earlier versions) are retired, never reused.
/// Little-endian fields; strings as u16 length + UTF-8.
struct ClusterWriter {
    var bytes: [UInt8] = []
    init() {}
    init(kind: ClusterWireKind, node: String, epoch: UInt64) {
        bytes.reserveCapacity(64)
        u8(kind.rawValue); string(node); u64(epoch)
    }
    /// Appends fields to `bytes` in place.
    static func append(to bytes: inout [UInt8], _ body: (inout ClusterWriter) -> Void) {
        var w = ClusterWriter()
        swap(&w.bytes, &bytes)
        body(&w)
        swap(&w.bytes, &bytes)
    }
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func string(_ s: String) {
        let utf8 = Array(s.utf8.prefix(Int(UInt16.max)))
        u16(UInt16(utf8.count)); bytes.append(contentsOf: utf8)
    }
}

/// The first byte of every cluster message.
enum ClusterWireKind: UInt8 {
    case joined = 1, left = 2, heartbeat = 3
    case forwards = 14, answers = 15
    /// SENT_COPYs and SEND_ACK/SEND_ERRORs for a sender's devices on the receiving node.
    case deviceNotes = 16
    /// A request for the node's online devices (with the requester's request id) and one chunk of the answer
    /// (request id, chunk index, flags: bit 0 = last chunk, then the users). 12/13 were the one-shot snapshot.
    case snapshotRequest = 18, snapshotChunk = 19
}

struct ClusterReader {
    let bytes: [UInt8]
    var offset = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    mutating func take(_ n: Int) -> ArraySlice<UInt8>? {
        guard n >= 0, bytes.count - offset >= n else { return nil }
        defer { offset += n }
        return bytes[offset..<offset + n]
    }
    mutating func u8() -> UInt8? { take(1)?.first }
    mutating func u16() -> UInt16? { take(2).map { s in s.reversed().reduce(0) { $0 << 8 | UInt16($1) } } }
    mutating func u32() -> UInt32? { take(4).map { s in s.reversed().reduce(0) { $0 << 8 | UInt32($1) } } }
    mutating func u64() -> UInt64? { take(8).map { s in s.reversed().reduce(0) { $0 << 8 | UInt64($1) } } }
    mutating func string() -> String? {
        guard let n = u16(), let s = take(Int(n)) else { return nil }
        return String(validating: s, as: UTF8.self)
    }
}
