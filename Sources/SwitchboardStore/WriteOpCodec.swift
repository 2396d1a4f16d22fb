// The binary form of a list of `WriteOp`s: what the cluster mode puts in one entry of its replicated log
// (SwitchboardServer/ClusterLog.swift), so that every replica applies the very same ops with `Store.apply`.
//
// Layout (version 1): one version byte, a varint op count, then each op as a tag byte and its fields.
// Unsigned integers are LEB128 varints (user ids, seqs, times, iterations) except message ids, which are
// random 64-bit values and cost 8 fixed big-endian bytes. Byte strings and UTF-8 strings are a varint length and
// the bytes. A `PasswordHash` is algorithm byte, iterations, salt, hash; a `StoredMail` is recipient, seq, sender,
// message id, sentAtMs, body; a dedupe window entry is message id, status byte, atMs.
//
// Invariants: `decode(encode(ops)) == ops` for every op; decode never traps and never allocates more than the
// input can hold: every length and count is checked against the bytes left before anything is reserved, a
// varint longer than its type or with bits beyond it is refused, strings must be valid UTF-8, unknown version
// bytes and tags are refused, trailing bytes are refused. Names are not validated here: the store answers an
// invalid name with `invalidRequest` the same way on every replica.

public struct WriteOpCodecError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Byte offset in the input where decoding failed.
    public let offset: Int
    public let reason: String

    public init(offset: Int, reason: String) {
        self.offset = offset
        self.reason = reason
    }

    public var description: String { "malformed write-op list at byte \(offset): \(reason)" }
}

public enum WriteOpCodec {
    /// The version byte written first. Decoding refuses any other.
    public static let version: UInt8 = 1

    enum Tag: UInt8 {
        case createAccount = 1, contactAdd, contactAccept, contactRemove, putMail, deleteMail, pruneDedupe,
             putDedupeWindow, setPassword, deleteAccount
    }

    /// Version byte, count, ops.
    public static func encode(_ ops: [WriteOp]) -> [UInt8] {
        var out: [UInt8] = [version]
        out.appendVarint(UInt64(ops.count))
        for op in ops { append(op, to: &out) }
        return out
    }

    /// Assembles an entry from ops already encoded one by one with `append(_:to:)` (the cluster log sizes its
    /// entries op by op): the same bytes as `encode` of those ops.
    public static func assemble(count: Int, encodedOps: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [version]
        out.reserveCapacity(encodedOps.count + 11)
        out.appendVarint(UInt64(count))
        out.append(contentsOf: encodedOps)
        return out
    }

    /// Appends one op's tag and fields (no version, no count).
    public static func append(_ op: WriteOp, to out: inout [UInt8]) {
        switch op {
        case let .createAccount(name, password):
            out.append(Tag.createAccount.rawValue)
            out.appendString(name)
            out.appendPassword(password)
        case let .contactAdd(owner, contactName):
            out.append(Tag.contactAdd.rawValue)
            out.appendVarint(UInt64(owner))
            out.appendString(contactName)
        case let .contactAccept(owner, contactName):
            out.append(Tag.contactAccept.rawValue)
            out.appendVarint(UInt64(owner))
            out.appendString(contactName)
        case let .contactRemove(owner, contactName):
            out.append(Tag.contactRemove.rawValue)
            out.appendVarint(UInt64(owner))
            out.appendString(contactName)
        case let .putMail(mail):
            out.append(Tag.putMail.rawValue)
            out.appendVarint(UInt64(mail.recipient))
            out.appendVarint(mail.seq)
            out.appendVarint(UInt64(mail.sender))
            out.appendBigEndian(mail.messageID)
            out.appendVarint(mail.sentAtMs)
            out.appendBytes(mail.body)
        case let .deleteMail(recipient, throughSeq):
            out.append(Tag.deleteMail.rawValue)
            out.appendVarint(UInt64(recipient))
            out.appendVarint(throughSeq)
        case let .pruneDedupe(olderThanMs):
            out.append(Tag.pruneDedupe.rawValue)
            out.appendVarint(olderThanMs)
        case let .putDedupeWindow(sender, entries):
            out.append(Tag.putDedupeWindow.rawValue)
            out.appendVarint(UInt64(sender))
            out.appendVarint(UInt64(entries.count))
            for entry in entries {
                out.appendBigEndian(entry.messageID)
                out.append(entry.status)
                out.appendVarint(entry.atMs)
            }
        case let .setPassword(name, password):
            out.append(Tag.setPassword.rawValue)
            out.appendString(name)
            out.appendPassword(password)
        case let .deleteAccount(name):
            out.append(Tag.deleteAccount.rawValue)
            out.appendString(name)
        }
    }

    public static func decode(_ bytes: [UInt8]) throws(WriteOpCodecError) -> [WriteOp] {
        let result = bytes.withUnsafeBytes { buffer in
            Result { () throws(WriteOpCodecError) -> [WriteOp] in try decode(buffer) }
        }
        return try result.get()
    }

    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(WriteOpCodecError) -> [WriteOp] {
        var reader = OpReader(bytes)
        let found = try reader.byte("version")
        guard found == version else {
            throw WriteOpCodecError(offset: 0, reason: "unknown version \(found) (this build reads \(version))")
        }
        // Every op takes at least two bytes (tag and one field byte): a count beyond that cannot be real.
        let count = try reader.count("op count", minimumBytesEach: 2)
        var ops: [WriteOp] = []
        ops.reserveCapacity(count)
        for index in 0..<count {
            ops.append(try reader.op(index))
        }
        guard reader.remaining == 0 else {
            throw reader.failure("\(reader.remaining) trailing bytes after \(count) ops")
        }
        return ops
    }
}

private struct OpReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }

    func failure(_ reason: String) -> WriteOpCodecError { WriteOpCodecError(offset: offset, reason: reason) }

    mutating func byte(_ field: String) throws(WriteOpCodecError) -> UInt8 {
        guard remaining >= 1 else { throw failure("truncated at \(field)") }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func varint(_ field: String, max: UInt64 = .max) throws(WriteOpCodecError) -> UInt64 {
        let start = offset
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard remaining >= 1 else { offset = start; throw failure("truncated at \(field)") }
            let byte = bytes[offset]
            offset += 1
            let payload = UInt64(byte & 0x7F)
            // The tenth byte may carry only the top bit of a UInt64.
            if shift == 63 && payload > 1 { offset = start; throw failure("\(field) overflows 64 bits") }
            value |= payload << shift
            if byte & 0x80 == 0 {
                // A trailing zero group would make two encodings of one number.
                if byte == 0 && shift > 0 { offset = start; throw failure("\(field) is not minimally encoded") }
                break
            }
            shift += 7
            if shift > 63 { offset = start; throw failure("\(field) is longer than 10 bytes") }
        }
        guard value <= max else { offset = start; throw failure("\(field) \(value) exceeds \(max)") }
        return value
    }

    mutating func u32(_ field: String) throws(WriteOpCodecError) -> UInt32 {
        UInt32(try varint(field, max: UInt64(UInt32.max)))
    }

    mutating func fixed64(_ field: String) throws(WriteOpCodecError) -> UInt64 {
        guard remaining >= 8 else { throw failure("truncated at \(field): \(remaining) of 8 bytes left") }
        var value: UInt64 = 0
        for index in offset..<(offset + 8) { value = value << 8 | UInt64(bytes[index]) }
        offset += 8
        return value
    }

    /// A count of items of at least `minimumBytesEach` bytes each, checked against what is left.
    mutating func count(_ field: String, minimumBytesEach: Int) throws(WriteOpCodecError) -> Int {
        let start = offset
        let value = try varint(field)
        guard value <= UInt64(remaining / minimumBytesEach) else {
            offset = start
            throw failure("\(field) \(value) is more than the \(remaining) bytes left can hold")
        }
        return Int(value)
    }

    mutating func rawBytes(_ field: String) throws(WriteOpCodecError) -> [UInt8] {
        let start = offset
        let length = try varint(field)
        guard length <= UInt64(remaining) else {
            offset = start
            throw failure("\(field) of \(length) bytes but only \(remaining - (offset - start)) left")
        }
        let slice = Array(bytes[offset..<(offset + Int(length))])
        offset += Int(length)
        return slice
    }

    mutating func string(_ field: String) throws(WriteOpCodecError) -> String {
        let start = offset
        let raw = try rawBytes(field)
        guard let text = String(validating: raw, as: UTF8.self) else {
            offset = start
            throw failure("\(field) is not valid UTF-8")
        }
        return text
    }

    mutating func password(_ field: String) throws(WriteOpCodecError) -> PasswordHash {
        let algorithm = try byte("\(field) algorithm")
        let iterations = try u32("\(field) iterations")
        let salt = try rawBytes("\(field) salt")
        let hash = try rawBytes("\(field) hash")
        return PasswordHash(algorithm: algorithm, iterations: iterations, salt: salt, hash: hash)
    }

    mutating func op(_ index: Int) throws(WriteOpCodecError) -> WriteOp {
        let tagOffset = offset
        let raw = try byte("op \(index) tag")
        guard let tag = WriteOpCodec.Tag(rawValue: raw) else {
            offset = tagOffset
            throw failure("op \(index) has unknown tag \(raw)")
        }
        switch tag {
        case .createAccount:
            return .createAccount(name: try string("account name"), password: try password("password"))
        case .contactAdd:
            return .contactAdd(owner: try u32("owner"), contactName: try string("contact name"))
        case .contactAccept:
            return .contactAccept(owner: try u32("owner"), contactName: try string("contact name"))
        case .contactRemove:
            return .contactRemove(owner: try u32("owner"), contactName: try string("contact name"))
        case .putMail:
            let recipient = try u32("recipient")
            let seq = try varint("seq")
            let sender = try u32("sender")
            let messageID = try fixed64("message id")
            let sentAtMs = try varint("sentAtMs")
            let body = try rawBytes("body")
            return .putMail(StoredMail(recipient: recipient, seq: seq, sender: sender, messageID: messageID,
                                       sentAtMs: sentAtMs, body: body))
        case .deleteMail:
            return .deleteMail(recipient: try u32("recipient"), throughSeq: try varint("throughSeq"))
        case .pruneDedupe:
            return .pruneDedupe(olderThanMs: try varint("olderThanMs"))
        case .putDedupeWindow:
            let sender = try u32("sender")
            // An entry is 8 + 1 + at least 1 bytes.
            let count = try self.count("dedupe window entry count", minimumBytesEach: 10)
            var entries: [DedupeWindowEntry] = []
            entries.reserveCapacity(count)
            for _ in 0..<count {
                let messageID = try fixed64("dedupe entry message id")
                let status = try byte("dedupe entry status")
                let atMs = try varint("dedupe entry atMs")
                entries.append(DedupeWindowEntry(messageID: messageID, status: status, atMs: atMs))
            }
            return .putDedupeWindow(sender: sender, entries: entries)
        case .setPassword:
            return .setPassword(name: try string("account name"), password: try password("password"))
        case .deleteAccount:
            return .deleteAccount(name: try string("account name"))
        }
    }
}

extension Array where Element == UInt8 {
    mutating func appendVarint(_ value: UInt64) {
        var rest = value
        while rest >= 0x80 {
            append(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        append(UInt8(rest))
    }

    mutating func appendBytes(_ bytes: [UInt8]) {
        appendVarint(UInt64(bytes.count))
        append(contentsOf: bytes)
    }

    mutating func appendString(_ text: String) {
        appendVarint(UInt64(text.utf8.count))
        append(contentsOf: text.utf8)
    }

    mutating func appendPassword(_ password: PasswordHash) {
        append(password.algorithm)
        appendVarint(UInt64(password.iterations))
        appendBytes(password.salt)
        appendBytes(password.hash)
    }
}
