// Local conversation history of the terminal client: an LMDB environment per (server, user) under
// the user's data dir ($SWITCHBOARD_DATA_HOME, else $XDG_DATA_HOME, else ~/.local/share, then
// switchboard/history/SERVER/USER), so two accounts, or one name on two servers, never mix.
// Databases: lines (peer u32 | seq u64 -> record), index (direction u8 | peer u32 | message id u64 ->
// seq), peers (peer -> last name), unsent (seq -> to u32 | id u64 | body), meta (next seq, open dialogs).
// Invariants: at most `maxLinesPerPeer` lines per conversation (the oldest are dropped with their
// index entries) and at most `mapBytes` in all (LMDB's map size; when it is full, the oldest half of
// the conversation being written is dropped and the write tried once more, else the error is kept
// for the status line); a message id appears at most once per (direction, peer); an outgoing message
// stays in `unsent` until it is settled (delivered, stored offline or refused). Writes use MDB_NOSYNC
// (a crash of the process loses nothing, one of the machine can lose the last writes; `sync()` runs
// at exit), since the client's loop should not wait for the disk on every message.
import CLMDB
import Glibc

public struct HistoryError: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ what: String, _ rc: Int32) { description = "\(what): \(String(cString: mdb_strerror(rc)))" }
    init(_ description: String) { self.description = description }
}

public final class HistoryStore: ConversationHistory {
    public static let defaultMaxLinesPerPeer = 1_000
    public static let defaultMapBytes = 64 << 20

    public let directory: String
    public let maxLinesPerPeer: Int
    private var env: OpaquePointer?
    private var lines: MDB_dbi = 0, index: MDB_dbi = 0, peers: MDB_dbi = 0, unsentDB: MDB_dbi = 0, meta: MDB_dbi = 0
    /// The last write that failed, for the status line (taken once).
    private var lastError: String?
    /// Lines per peer as last counted (so a record does not rescan the conversation); dropped on a
    /// failed write, and recounted by every prune.
    private var counts: [UInt32: Int] = [:]

    /// The history directory for an account: DATA/switchboard/history/SERVER/USER (each escaped).
    /// SERVER is the server, or the whole list as written ("A,B,C"), so a failover keeps one history.
    public static func directory(server: String, user: String, dataHome: String? = nil) -> String? {
        let base: String
        if let dataHome { base = dataHome } else if let d = environment("SWITCHBOARD_DATA_HOME"), !d.isEmpty {
            base = d
        } else if let d = environment("XDG_DATA_HOME"), !d.isEmpty {
            base = d
        } else if let home = environment("HOME"), !home.isEmpty {
            base = home + "/.local/share"
        } else { return nil }
        return base + "/switchboard/history/" + component(server) + "/" + escape(user)
    }

    /// The longest escaped server name kept whole in a path (a file name has at most 255 bytes).
    static let maxComponentBytes = 200

    /// `escape(text)`, or when that is longer than `maxComponentBytes` (a long server list): its first
    /// 150 bytes, "~" and a 64-bit FNV-1a hash of the whole text in hex, so it stays unique and stable.
    static func component(_ text: String) -> String {
        let escaped = escape(text)
        guard escaped.utf8.count > maxComponentBytes else { return escaped }
        var cut = Array(escaped.utf8.prefix(150))
        // Never end inside a %XX escape.
        if let percent = cut.suffix(2).lastIndex(of: UInt8(ascii: "%")) { cut.removeSubrange(percent...) }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        let hex = String(hash, radix: 16)
        return String(decoding: cut, as: UTF8.self) + "~" + String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// Opens (creating) the store in `directory`.
    public init(directory: String, maxLinesPerPeer: Int = HistoryStore.defaultMaxLinesPerPeer,
                mapBytes: Int = HistoryStore.defaultMapBytes) throws {
        self.directory = directory
        self.maxLinesPerPeer = max(1, maxLinesPerPeer)
        try Self.makeDirectories(directory)
        var env: OpaquePointer?
        try check(mdb_env_create(&env), "mdb_env_create")
        self.env = env
        try check(mdb_env_set_mapsize(env, mapBytes), "mdb_env_set_mapsize")
        try check(mdb_env_set_maxdbs(env, 5), "mdb_env_set_maxdbs")
        try check(mdb_env_open(env, directory, UInt32(MDB_NOTLS | MDB_NOSYNC), 0o600), "open history in \(directory)")
        try write { txn in
            lines = try open(txn, "lines"); index = try open(txn, "index"); peers = try open(txn, "peers")
            unsentDB = try open(txn, "unsent"); meta = try open(txn, "meta")
        }
    }

    deinit {
        if let env { mdb_env_sync(env, 1); mdb_env_close(env) }
    }

    public func sync() { if let env { mdb_env_sync(env, 1) } }

    /// The last write error (once), e.g. for the status line.
    public func takeError() -> String? { defer { lastError = nil }; return lastError }

    // MARK: ConversationHistory

    public func lines(peer: UInt32) -> [ChatLine] {
        (try? read { txn in
            var out: [ChatLine] = []
            try scan(txn, lines, prefix: be(peer)) { _, value in
                if let line = Self.decode(value) { out.append(line) }
                return true
            }
            return out
        }) ?? []
    }

    public func name(peer: UInt32) -> String? {
        (try? read { txn in try get(txn, peers, be(peer)).map { String(decoding: $0, as: UTF8.self) } }) ?? nil
    }

    /// The peer id for a name seen in the history (the last name each peer had).
    public func peer(named name: String) -> UInt32? {
        (try? read { txn in
            var found: UInt32?
            try scan(txn, peers, prefix: []) { key, value in
                if String(decoding: value, as: UTF8.self) == name, key.count == 4 { found = Self.u32(key, 0) }
                return found == nil
            }
            return found
        }) ?? nil
    }

    public func contains(from: UInt32, messageID: UInt64) -> Bool {
        (try? read { txn in try get(txn, index, [0] + be(from) + be(messageID)) != nil }) ?? false
    }

    public func record(peer: UInt32, name: String, line: ChatLine) {
        attempt("keep a message") { txn in
            let key = [line.outgoing ? 1 : 0] + be(peer) + be(line.messageID)
            guard try get(txn, index, key) == nil else { return }
            let seq = try nextSeq(txn)
            let before = try counts[peer] ?? self.count(txn, peer: peer)
            try put(txn, lines, be(peer) + be(seq), Self.encode(line))
            try put(txn, index, key, be(seq))
            try put(txn, peers, be(peer), Array(name.utf8))
            counts[peer] = before + 1
            if before + 1 > maxLinesPerPeer { try prune(txn, peer: peer, keep: maxLinesPerPeer) }
        } onFull: { txn in
            let count = try self.count(txn, peer: peer)
            try prune(txn, peer: peer, keep: count / 2)
        }
    }

    public func settle(peer: UInt32, messageID: UInt64, mark: MessageMark) {
        attempt("update a message") { txn in
            guard let seqBytes = try get(txn, index, [1] + be(peer) + be(messageID)) else { return }
            let lineKey = be(peer) + seqBytes
            if let value = try get(txn, lines, lineKey), var line = Self.decode(value[...]) {
                line.mark = mark
                try put(txn, lines, lineKey, Self.encode(line))
            }
            try del(txn, unsentDB, seqBytes)
        } onFull: { _ in }
    }

    public func keepUnsent(_ message: OutgoingMessage) {
        attempt("keep an unsent message") { txn in
            guard let seqBytes = try get(txn, index, [1] + be(message.to) + be(message.messageID)) else { return }
            try put(txn, unsentDB, seqBytes, be(message.to) + be(message.messageID) + message.body)
        } onFull: { _ in }
    }

    /// Messages sent but never answered by the server, oldest first.
    public func unsent() -> [OutgoingMessage] {
        (try? read { txn in
            var out: [OutgoingMessage] = []
            try scan(txn, unsentDB, prefix: []) { _, v in
                if v.count >= 12 {
                    out.append(OutgoingMessage(to: Self.u32(v, 0), messageID: Self.u64(v, 4), body: Array(v.dropFirst(12))))
                }
                return true
            }
            return out
        }) ?? []
    }

    /// The chat dialogs open when the client last quit.
    public func openPeers() -> [UInt32] {
        (try? read { txn in
            guard let v = try get(txn, meta, Array("open".utf8)) else { return [] }
            return stride(from: 0, to: v.count - 3, by: 4).map { Self.u32(v[...], $0) }
        }) ?? []
    }

    public func setOpenPeers(_ list: [UInt32]) {
        attempt("remember open dialogs") { txn in
            try put(txn, meta, Array("open".utf8), list.prefix(256).flatMap { be($0) })
        } onFull: { _ in }
    }

    /// Lines kept for `peer`.
    public func count(peer: UInt32) -> Int { (try? read { txn in try count(txn, peer: peer) }) ?? 0 }

    // MARK: records

    static func encode(_ line: ChatLine) -> [UInt8] {
        var out: [UInt8] = [1, (line.outgoing ? 1 : 0) | (line.offline ? 2 : 0)]
        var reason: [UInt8] = []
        switch line.mark {
        case .sending: out.append(0)
        case .delivered: out.append(1)
        case .storedOffline: out.append(2)
        case .failed(let why): out.append(3); reason = Array(why.utf8.prefix(1000))
        case .received: out.append(4)
        }
        out += be(line.atMs) + be(line.messageID) + be(UInt16(reason.count)) + reason
        out += Array(line.text.utf8)
        return out
    }

    static func decode(_ v: ArraySlice<UInt8>) -> ChatLine? {
        let v = Array(v)
        guard v.count >= 21, v[0] == 1 else { return nil }
        let reasonCount = Int(v[19]) << 8 | Int(v[20])
        guard v.count >= 21 + reasonCount else { return nil }
        let mark: MessageMark
        switch v[2] {
        case 0: mark = .sending
        case 1: mark = .delivered
        case 2: mark = .storedOffline
        case 3: mark = .failed(String(decoding: v[21..<(21 + reasonCount)], as: UTF8.self))
        default: mark = .received
        }
        return ChatLine(messageID: u64(v[...], 11), outgoing: v[1] & 1 != 0, atMs: u64(v[...], 3),
                        text: String(decoding: v[(21 + reasonCount)...], as: UTF8.self), mark: mark, offline: v[1] & 2 != 0)
    }

    // MARK: LMDB

    private func check(_ rc: Int32, _ what: String) throws { if rc != 0 { throw HistoryError(what, rc) } }

    private func open(_ txn: OpaquePointer, _ name: String) throws -> MDB_dbi {
        var dbi: MDB_dbi = 0
        try check(mdb_dbi_open(txn, name, UInt32(MDB_CREATE), &dbi), "mdb_dbi_open(\(name))")
        return dbi
    }

    private func read<T>(_ body: (OpaquePointer) throws -> T) throws -> T {
        var txn: OpaquePointer?
        try check(mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn), "mdb_txn_begin")
        defer { mdb_txn_abort(txn) }
        return try body(txn!)
    }

    private func write(_ body: (OpaquePointer) throws -> Void) throws {
        var txn: OpaquePointer?
        try check(mdb_txn_begin(env, nil, 0, &txn), "mdb_txn_begin")
        do { try body(txn!) } catch { mdb_txn_abort(txn); throw error }
        let rc = mdb_txn_commit(txn)
        if rc == MDB_MAP_FULL { throw HistoryError.mapFull }
        try check(rc, "mdb_txn_commit")
    }

    /// A write; when the map is full, `onFull` makes room in its own transaction and the write is tried once more.
    private func attempt(_ what: String, _ body: (OpaquePointer) throws -> Void, onFull: (OpaquePointer) throws -> Void) {
        do {
            try write(body)
        } catch let error as HistoryError where error.full {
            counts.removeAll()
            do {
                try write(onFull)
                counts.removeAll()
                try write(body)
            } catch {
                counts.removeAll()
                lastError = "local history: could not \(what): \(error)"
            }
        } catch {
            counts.removeAll()
            lastError = "local history: could not \(what): \(error)"
        }
    }

    private func get(_ txn: OpaquePointer, _ dbi: MDB_dbi, _ key: [UInt8]) throws -> [UInt8]? {
        var k = key
        return try k.withUnsafeMutableBytes { kb in
            var keyVal = MDB_val(mv_size: kb.count, mv_data: kb.baseAddress)
            var value = MDB_val()
            let rc = mdb_get(txn, dbi, &keyVal, &value)
            if rc == MDB_NOTFOUND { return nil }
            try check(rc, "mdb_get")
            return Array(UnsafeRawBufferPointer(start: value.mv_data, count: value.mv_size))
        }
    }

    private func put(_ txn: OpaquePointer, _ dbi: MDB_dbi, _ key: [UInt8], _ value: [UInt8]) throws {
        var k = key, v = value
        try k.withUnsafeMutableBytes { kb in
            try v.withUnsafeMutableBytes { vb in
                var keyVal = MDB_val(mv_size: kb.count, mv_data: kb.baseAddress)
                var valueVal = MDB_val(mv_size: vb.count, mv_data: vb.baseAddress)
                let rc = mdb_put(txn, dbi, &keyVal, &valueVal, 0)
                if rc == MDB_MAP_FULL { throw HistoryError.mapFull }
                try check(rc, "mdb_put")
            }
        }
    }

    private func del(_ txn: OpaquePointer, _ dbi: MDB_dbi, _ key: [UInt8]) throws {
        var k = key
        try k.withUnsafeMutableBytes { kb in
            var keyVal = MDB_val(mv_size: kb.count, mv_data: kb.baseAddress)
            let rc = mdb_del(txn, dbi, &keyVal, nil)
            if rc != MDB_NOTFOUND { try check(rc, "mdb_del") }
        }
    }

    /// Visits the entries whose key starts with `prefix`, in key order, while `visit` returns true
    /// (values are not copied when `values` is false).
    private func scan(_ txn: OpaquePointer, _ dbi: MDB_dbi, prefix: [UInt8], values: Bool = true,
                      _ visit: (ArraySlice<UInt8>, ArraySlice<UInt8>) throws -> Bool) throws {
        var cursor: OpaquePointer?
        try check(mdb_cursor_open(txn, dbi, &cursor), "mdb_cursor_open")
        defer { mdb_cursor_close(cursor) }
        var start = prefix
        var key = MDB_val(), value = MDB_val()
        var rc = start.withUnsafeMutableBytes { sb -> Int32 in
            if sb.count == 0 { return mdb_cursor_get(cursor, &key, &value, MDB_FIRST) }
            key = MDB_val(mv_size: sb.count, mv_data: sb.baseAddress)
            return mdb_cursor_get(cursor, &key, &value, MDB_SET_RANGE)
        }
        while rc == 0 {
            let k = Array(UnsafeRawBufferPointer(start: key.mv_data, count: key.mv_size))
            guard k.starts(with: prefix) else { return }
            let v = values ? Array(UnsafeRawBufferPointer(start: value.mv_data, count: value.mv_size)) : []
            guard try visit(k[...], v[...]) else { return }
            rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)
        }
        if rc != MDB_NOTFOUND { try check(rc, "mdb_cursor_get") }
    }

    private func count(_ txn: OpaquePointer, peer: UInt32) throws -> Int {
        var n = 0
        try scan(txn, lines, prefix: be(peer), values: false) { _, _ in n += 1; return true }
        return n
    }

    /// Drops the oldest lines of `peer` beyond `keep`, with their index and unsent entries.
    private func prune(_ txn: OpaquePointer, peer: UInt32, keep: Int) throws {
        let total = try counts[peer] ?? count(txn, peer: peer)
        guard total > keep else { return }
        var doomed: [(key: [UInt8], index: [UInt8], seq: [UInt8])] = []
        try scan(txn, lines, prefix: be(peer)) { k, v in
            if let line = Self.decode(v) {
                doomed.append((Array(k), [line.outgoing ? 1 : 0] + be(peer) + be(line.messageID), Array(k.dropFirst(4))))
            } else {
                doomed.append((Array(k), [], Array(k.dropFirst(4))))
            }
            return doomed.count < total - keep
        }
        for d in doomed {
            try del(txn, lines, d.key)
            if !d.index.isEmpty { try del(txn, index, d.index) }
            try del(txn, unsentDB, d.seq)
        }
        counts[peer] = total - doomed.count
    }

    private func nextSeq(_ txn: OpaquePointer) throws -> UInt64 {
        let key = Array("seq".utf8)
        let seq = try get(txn, meta, key).map { Self.u64($0[...], 0) } ?? 1
        try put(txn, meta, key, be(seq + 1))
        return seq
    }

    // MARK: bytes and paths

    static func u32(_ b: ArraySlice<UInt8>, _ at: Int) -> UInt32 {
        let i = b.startIndex + at
        return (i..<(i + 4)).reduce(0) { $0 << 8 | UInt32(b[$1]) }
    }

    static func u64(_ b: ArraySlice<UInt8>, _ at: Int) -> UInt64 {
        let i = b.startIndex + at
        return (i..<(i + 8)).reduce(0) { $0 << 8 | UInt64(b[$1]) }
    }

    static func escape(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            case UInt8(ascii: ".") where !out.isEmpty:
                out.append(".")
            default:
                let hex = Array("0123456789ABCDEF")
                out += "%" + String(hex[Int(byte >> 4)]) + String(hex[Int(byte & 15)])
            }
        }
        return out.isEmpty ? "%" : out
    }

    private static func makeDirectories(_ path: String) throws {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, 0o700) != 0 && errno != EEXIST {
                throw HistoryError("cannot create \(current): \(String(cString: strerror(errno)))")
            }
        }
    }

    private static func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
}

extension HistoryError {
    static let mapFull = HistoryError("the history is full (LMDB map size reached)")
    var full: Bool { description == HistoryError.mapFull.description }
}

private func be(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xFF)] }
private func be(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (24 - 8 * $0)) & 0xFF) } }
private func be(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8((v >> (56 - 8 * UInt64($0))) & 0xFF) } }
