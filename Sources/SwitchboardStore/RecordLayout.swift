// Byte layouts of every key and value (schema version 2; version 1 lacked "dedupewin" and is otherwise the same). Integers are big-endian so that LMDB's bytewise key
// order is numeric order: a cursor range scan over owner ++ contact or recipient ++ seq visits one user's entries
// in order. Decoding checks every length and throws `corruptRecord`; it never traps on what it reads.

enum RecordKey {
    static let schemaVersion: [UInt8] = Array("schema_version".utf8)
    static let nextUserID: [UInt8] = Array("next_user_id".utf8)
    /// The last cluster log entry applied to this replica (u64, written in the entry's transaction).
    static let clusterAppliedSeq: [UInt8] = Array("cluster_applied_seq".utf8)
    private static let mailHighWaterPrefix: [UInt8] = Array("mailseq".utf8)

    /// "users": userID -> name.
    static func user(_ id: UserID) -> [UInt8] {
        var key: [UInt8] = []
        key.reserveCapacity(4)
        key.appendBigEndian(id)
        return key
    }

    /// "contacts": owner ++ contact -> state byte.
    static func contact(owner: UserID, contact: UserID) -> [UInt8] {
        var key: [UInt8] = []
        key.reserveCapacity(8)
        key.appendBigEndian(owner)
        key.appendBigEndian(contact)
        return key
    }

    /// "mail": recipient ++ seq -> envelope and body.
    static func mail(recipient: UserID, seq: UInt64) -> [UInt8] {
        var key: [UInt8] = []
        key.reserveCapacity(12)
        key.appendBigEndian(recipient)
        key.appendBigEndian(seq)
        return key
    }

    /// "dedupe": sender ++ messageID -> where the mail went and when.
    static func dedupe(sender: UserID, messageID: UInt64) -> [UInt8] {
        var key: [UInt8] = []
        key.reserveCapacity(12)
        key.appendBigEndian(sender)
        key.appendBigEndian(messageID)
        return key
    }

    /// "dedupewin": sender -> that sender's whole dedupe window (`DedupeWindowLayout`).
    static func dedupeWindow(sender: UserID) -> [UInt8] {
        var key: [UInt8] = []
        key.reserveCapacity(4)
        key.appendBigEndian(sender)
        return key
    }

    /// "meta": "mailseq" ++ recipient -> highest seq ever stored for that recipient (u64).
    static func mailHighWater(recipient: UserID) -> [UInt8] {
        var key = mailHighWaterPrefix
        key.appendBigEndian(recipient)
        return key
    }
}

/// Reads big-endian fields from a value that may be anything (a torn write is impossible with LMDB, but a record
/// from another build or a damaged file is not).
struct RecordReader {
    private let bytes: UnsafeRawBufferPointer
    private var offset = 0
    let database: String

    init(_ bytes: UnsafeRawBufferPointer, database: String) {
        self.bytes = bytes
        self.database = database
    }

    var remainingCount: Int { bytes.count - offset }

    mutating func read<T: FixedWidthInteger & UnsignedInteger>(_: T.Type, _ field: String) throws -> T {
        let size = MemoryLayout<T>.size
        guard remainingCount >= size else {
            throw StoreError.corruptRecord(database: database,
                                           reason: "truncated at \(field): \(remainingCount) of \(size) bytes left")
        }
        var value: T = 0
        for index in offset..<(offset + size) {
            value = (value << 8) | T(bytes[index])
        }
        offset += size
        return value
    }

    mutating func readBytes(count: Int, _ field: String) throws -> [UInt8] {
        guard count >= 0, remainingCount >= count else {
            throw StoreError.corruptRecord(database: database,
                                           reason: "truncated at \(field): \(remainingCount) of \(count) bytes left")
        }
        let slice = Array(bytes[offset..<(offset + count)])
        offset += count
        return slice
    }

    mutating func readRest() -> [UInt8] {
        let rest = Array(bytes[offset...])
        offset = bytes.count
        return rest
    }

    func expectEnd(_ record: String) throws {
        guard remainingCount == 0 else {
            throw StoreError.corruptRecord(database: database,
                                           reason: "\(remainingCount) unexpected trailing bytes after \(record)")
        }
    }
}

extension Array where Element == UInt8 {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        var bigEndian = value.bigEndian
        Swift.withUnsafeBytes(of: &bigEndian) { append(contentsOf: $0) }
    }
}

// MARK: - Values

enum AccountLayout {
    /// userID u32 | algorithm u8 | iterations u32 | saltLen u8 | salt | hashLen u8 | hash
    static func encode(userID: UserID, password: PasswordHash) -> [UInt8] {
        var value: [UInt8] = []
        value.reserveCapacity(11 + password.salt.count + password.hash.count)
        value.appendBigEndian(userID)
        value.append(password.algorithm)
        value.appendBigEndian(password.iterations)
        value.append(UInt8(password.salt.count))
        value.append(contentsOf: password.salt)
        value.append(UInt8(password.hash.count))
        value.append(contentsOf: password.hash)
        return value
    }

    /// Whether `password` fits the u8 length prefixes.
    static func canEncode(_ password: PasswordHash) -> Bool {
        password.salt.count <= Int(UInt8.max) && password.hash.count <= Int(UInt8.max)
    }

    static func decode(name: String, _ bytes: UnsafeRawBufferPointer) throws -> AccountRecord {
        var reader = RecordReader(bytes, database: "accounts")
        let userID = try reader.read(UInt32.self, "userID")
        guard userID != 0 else {
            throw StoreError.corruptRecord(database: "accounts", reason: "account \(name) has user id 0")
        }
        let algorithm = try reader.read(UInt8.self, "algorithm")
        let iterations = try reader.read(UInt32.self, "iterations")
        let saltLength = try reader.read(UInt8.self, "salt length")
        let salt = try reader.readBytes(count: Int(saltLength), "salt")
        let hashLength = try reader.read(UInt8.self, "hash length")
        let hash = try reader.readBytes(count: Int(hashLength), "hash")
        try reader.expectEnd("account \(name)")
        return AccountRecord(userID: userID, name: name,
                             password: PasswordHash(algorithm: algorithm, iterations: iterations, salt: salt,
                                                    hash: hash))
    }
}

enum UserNameLayout {
    static func decode(_ bytes: UnsafeRawBufferPointer, userID: UserID) throws -> String {
        guard Store.isValidUserNameBytes(bytes), let name = String(validating: bytes, as: UTF8.self) else {
            throw StoreError.corruptRecord(database: "users", reason: "user \(userID) has an invalid name")
        }
        return name
    }
}

enum ContactLayout {
    static func decodeState(_ bytes: UnsafeRawBufferPointer) throws -> ContactState {
        guard bytes.count == 1, let state = ContactState(rawValue: bytes[0]) else {
            throw StoreError.corruptRecord(database: "contacts",
                                           reason: "state must be one byte of 1...3, got \(Array(bytes.prefix(4)))")
        }
        return state
    }

    /// The contact half of an owner ++ contact key.
    static func contactID(fromKey key: UnsafeRawBufferPointer) throws -> UserID {
        var reader = RecordReader(key, database: "contacts")
        _ = try reader.read(UInt32.self, "owner")
        let contact = try reader.read(UInt32.self, "contact")
        try reader.expectEnd("contact key")
        return contact
    }
}

enum MailLayout {
    static let envelopeSize = 20   // sender u32 | messageID u64 | sentAtMs u64, then the body

    static func encode(_ mail: StoredMail) -> [UInt8] {
        var value: [UInt8] = []
        value.reserveCapacity(envelopeSize + mail.body.count)
        value.appendBigEndian(mail.sender)
        value.appendBigEndian(mail.messageID)
        value.appendBigEndian(mail.sentAtMs)
        value.append(contentsOf: mail.body)
        return value
    }

    /// The (recipient, seq) of a mail key.
    static func decodeKey(_ key: UnsafeRawBufferPointer) throws -> (recipient: UserID, seq: UInt64) {
        var reader = RecordReader(key, database: "mail")
        let recipient = try reader.read(UInt32.self, "recipient")
        let seq = try reader.read(UInt64.self, "seq")
        try reader.expectEnd("mail key")
        return (recipient, seq)
    }

    static func decode(recipient: UserID, seq: UInt64, _ value: UnsafeRawBufferPointer) throws -> StoredMail {
        var reader = RecordReader(value, database: "mail")
        let sender = try reader.read(UInt32.self, "sender")
        let messageID = try reader.read(UInt64.self, "messageID")
        let sentAtMs = try reader.read(UInt64.self, "sentAtMs")
        return StoredMail(recipient: recipient, seq: seq, sender: sender, messageID: messageID, sentAtMs: sentAtMs,
                          body: reader.readRest())
    }

    /// Body size without copying the body.
    static func bodySize(_ value: UnsafeRawBufferPointer) throws -> Int {
        guard value.count >= envelopeSize else {
            throw StoreError.corruptRecord(database: "mail",
                                           reason: "value of \(value.count) bytes is shorter than the envelope")
        }
        return value.count - envelopeSize
    }
}

enum DedupeLayout {
    /// recipient u32 | seq u64 | storedAtMs u64
    static func encode(recipient: UserID, seq: UInt64, storedAtMs: UInt64) -> [UInt8] {
        var value: [UInt8] = []
        value.reserveCapacity(20)
        value.appendBigEndian(recipient)
        value.appendBigEndian(seq)
        value.appendBigEndian(storedAtMs)
        return value
    }

    static func storedAtMs(_ value: UnsafeRawBufferPointer) throws -> UInt64 {
        var reader = RecordReader(value, database: "dedupe")
        _ = try reader.read(UInt32.self, "recipient")
        _ = try reader.read(UInt64.self, "seq")
        let storedAt = try reader.read(UInt64.self, "storedAtMs")
        try reader.expectEnd("dedupe record")
        return storedAt
    }
}

enum DedupeWindowLayout {
    static let version: UInt8 = 1
    static let headerSize = 5      // version u8 | count u32
    static let entrySize = 17      // messageID u64 | status u8 | atMs u64
    static let maxEntries = 4096

    /// version u8 | count u32 | count x (messageID u64 | status u8 | atMs u64), in the order given (oldest first).
    static func encode(_ entries: [DedupeWindowEntry]) -> [UInt8] {
        var value: [UInt8] = []
        value.reserveCapacity(headerSize + entries.count * entrySize)
        value.append(version)
        value.appendBigEndian(UInt32(truncatingIfNeeded: entries.count))
        for entry in entries {
            value.appendBigEndian(entry.messageID)
            value.append(entry.status)
            value.appendBigEndian(entry.atMs)
        }
        return value
    }

    /// Every entry with atMs >= `notBeforeMs`, in stored order. Each entry is tested on its own, so one stamped
    /// before a wall-clock step backwards does not hide the ones after it.
    static func decode(_ bytes: UnsafeRawBufferPointer, sender: UserID,
                       notBeforeMs: UInt64 = 0) throws -> [DedupeWindowEntry] {
        var reader = RecordReader(bytes, database: "dedupewin")
        let found = try reader.read(UInt8.self, "version")
        guard found == version else {
            throw StoreError.corruptRecord(database: "dedupewin",
                                           reason: "window of sender \(sender) has record version \(found), "
                                               + "expected \(version)")
        }
        let count = try reader.read(UInt32.self, "count")
        guard count <= UInt32(maxEntries), reader.remainingCount == Int(count) * entrySize else {
            throw StoreError.corruptRecord(database: "dedupewin",
                                           reason: "window of sender \(sender) claims \(count) entries but holds "
                                               + "\(reader.remainingCount) bytes of entries (\(entrySize) each, "
                                               + "at most \(maxEntries))")
        }
        var entries: [DedupeWindowEntry] = []
        entries.reserveCapacity(Int(count))
        for _ in 0..<count {
            let messageID = try reader.read(UInt64.self, "messageID")
            let status = try reader.read(UInt8.self, "status")
            let atMs = try reader.read(UInt64.self, "atMs")
            if atMs >= notBeforeMs { entries.append(DedupeWindowEntry(messageID: messageID, status: status, atMs: atMs)) }
        }
        try reader.expectEnd("dedupe window of sender \(sender)")
        return entries
    }

    /// The sender of a "dedupewin" key.
    static func decodeKey(_ key: UnsafeRawBufferPointer) throws -> UserID {
        var reader = RecordReader(key, database: "dedupewin")
        let sender = try reader.read(UInt32.self, "sender")
        try reader.expectEnd("dedupe window key")
        return sender
    }
}

enum MetaLayout {
    static func decodeU32(_ value: UnsafeRawBufferPointer, _ field: String) throws -> UInt32 {
        var reader = RecordReader(value, database: "meta")
        let number = try reader.read(UInt32.self, field)
        try reader.expectEnd(field)
        return number
    }

    static func decodeU64(_ value: UnsafeRawBufferPointer, _ field: String) throws -> UInt64 {
        var reader = RecordReader(value, database: "meta")
        let number = try reader.read(UInt64.self, field)
        try reader.expectEnd(field)
        return number
    }

    static func encode<T: FixedWidthInteger>(_ number: T) -> [UInt8] {
        var value: [UInt8] = []
        value.appendBigEndian(number)
        return value
    }
}
