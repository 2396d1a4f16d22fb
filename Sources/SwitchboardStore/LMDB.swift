// Thin throwing wrappers over the LMDB C API, used only inside this module.
// Invariant: a pointer into the map (an MDB_val's data) is only shown to a closure that runs inside its
// transaction; whatever escapes is a copy, because the page may be reused once the transaction ends.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CLMDB

/// A named database handle plus its name, so errors say which database failed.
struct NamedDatabase: Sendable {
    let handle: MDB_dbi
    let name: String
}

/// The seven named databases. Handles are opened once, in the transaction that checks (and if needed upgrades)
/// the schema, and stay valid for every later transaction of the environment.
struct Databases: Sendable {
    static let maxCount: UInt32 = 7

    let meta: NamedDatabase
    let accounts: NamedDatabase
    let users: NamedDatabase
    let contacts: NamedDatabase
    let mail: NamedDatabase
    let dedupe: NamedDatabase
    /// Added in schema version 2.
    let dedupeWindows: NamedDatabase

    func named(_ name: String) -> NamedDatabase? {
        [meta, accounts, users, contacts, mail, dedupe, dedupeWindows].first { $0.name == name }
    }
}

enum ScanStep {
    case proceed
    case stop
    /// Delete the current entry and move to the next one.
    case deleteAndProceed
}

struct LMDBTransaction {
    let raw: OpaquePointer

    static func begin(_ env: OpaquePointer, readOnly: Bool) throws -> LMDBTransaction {
        var txn: OpaquePointer?
        let rc = mdb_txn_begin(env, nil, readOnly ? UInt32(MDB_RDONLY) : 0, &txn)
        try lmdbCheck(rc, readOnly ? "mdb_txn_begin(read-only)" : "mdb_txn_begin(write)")
        guard let txn else { throw lmdbError(EINVAL, "mdb_txn_begin returned no transaction") }
        return LMDBTransaction(raw: txn)
    }

    func abort() { mdb_txn_abort(raw) }

    /// Commits; the transaction is freed whether or not the commit succeeds.
    func commit() throws { try lmdbCheck(mdb_txn_commit(raw), "mdb_txn_commit") }

    func openDatabase(_ name: String?, create: Bool) throws -> MDB_dbi {
        var dbi: MDB_dbi = 0
        let rc = mdb_dbi_open(raw, name, create ? UInt32(MDB_CREATE) : 0, &dbi)
        try lmdbCheck(rc, "mdb_dbi_open(\(name ?? "main"))")
        return dbi
    }

    /// Deletes the database and closes its handle (mdb_drop with del = 1).
    func dropDatabase(_ db: NamedDatabase) throws {
        try lmdbCheck(mdb_drop(raw, db.handle, 1), "mdb_drop(\(db.name))")
    }

    func entryCount(_ handle: MDB_dbi, _ name: String) throws -> Int {
        var stat = MDB_stat()
        try lmdbCheck(mdb_stat(raw, handle, &stat), "mdb_stat(\(name))")
        return stat.ms_entries
    }

    func entryCount(_ db: NamedDatabase) throws -> Int { try entryCount(db.handle, db.name) }

    /// Runs `body` on the value stored under `key`, nil if absent. The buffer is valid only inside `body`.
    func withValue<R>(_ db: NamedDatabase, _ key: [UInt8],
                      _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        var value = MDB_val()
        let rc = key.withUnsafeBytes { keyBytes in
            var keyVal = MDB_val(mv_size: keyBytes.count, mv_data: UnsafeMutableRawPointer(mutating: keyBytes.baseAddress))
            return mdb_get(raw, db.handle, &keyVal, &value)
        }
        if rc == MDB_NOTFOUND { return nil }
        try lmdbCheck(rc, "mdb_get(\(db.name))")
        return try body(UnsafeRawBufferPointer(start: value.mv_data, count: value.mv_size))
    }

    func contains(_ db: NamedDatabase, _ key: [UInt8]) throws -> Bool {
        try withValue(db, key) { _ in true } ?? false
    }

    func put(_ db: NamedDatabase, _ key: [UInt8], _ value: [UInt8]) throws {
        let rc = key.withUnsafeBytes { keyBytes in
            value.withUnsafeBytes { valueBytes in
                // mdb_put only reads through these pointers (no MDB_RESERVE), so casting away const is safe.
                var keyVal = MDB_val(mv_size: keyBytes.count,
                                     mv_data: UnsafeMutableRawPointer(mutating: keyBytes.baseAddress))
                var valueVal = MDB_val(mv_size: valueBytes.count,
                                       mv_data: UnsafeMutableRawPointer(mutating: valueBytes.baseAddress))
                return mdb_put(raw, db.handle, &keyVal, &valueVal, 0)
            }
        }
        try lmdbCheck(rc, "mdb_put(\(db.name))")
    }

    /// Returns false if there was nothing to delete.
    @discardableResult
    func delete(_ db: NamedDatabase, _ key: [UInt8]) throws -> Bool {
        let rc = key.withUnsafeBytes { keyBytes in
            var keyVal = MDB_val(mv_size: keyBytes.count, mv_data: UnsafeMutableRawPointer(mutating: keyBytes.baseAddress))
            return mdb_del(raw, db.handle, &keyVal, nil)
        }
        if rc == MDB_NOTFOUND { return false }
        try lmdbCheck(rc, "mdb_del(\(db.name))")
        return true
    }

    /// Visits entries in key order from the first key >= `start` (from the first entry if `start` is nil)
    /// until `visit` says stop or the database ends. Buffers are valid only inside `visit`.
    func scan(_ db: NamedDatabase, from start: [UInt8]?,
              _ visit: (_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) throws -> ScanStep) throws {
        var cursorPointer: OpaquePointer?
        try lmdbCheck(mdb_cursor_open(raw, db.handle, &cursorPointer), "mdb_cursor_open(\(db.name))")
        guard let cursor = cursorPointer else { throw lmdbError(EINVAL, "mdb_cursor_open returned no cursor") }
        defer { mdb_cursor_close(cursor) }

        var key = MDB_val()
        var value = MDB_val()
        var rc: Int32
        if let start {
            rc = start.withUnsafeBytes { startBytes in
                key = MDB_val(mv_size: startBytes.count, mv_data: UnsafeMutableRawPointer(mutating: startBytes.baseAddress))
                return mdb_cursor_get(cursor, &key, &value, MDB_SET_RANGE)
            }
        } else {
            rc = mdb_cursor_get(cursor, &key, &value, MDB_FIRST)
        }
        while rc == MDB_SUCCESS {
            let step = try visit(UnsafeRawBufferPointer(start: key.mv_data, count: key.mv_size),
                                 UnsafeRawBufferPointer(start: value.mv_data, count: value.mv_size))
            switch step {
            case .stop:
                return
            case .proceed:
                break
            case .deleteAndProceed:
                // After mdb_cursor_del the cursor is flagged C_DEL and MDB_NEXT yields the entry that followed.
                try lmdbCheck(mdb_cursor_del(cursor, 0), "mdb_cursor_del(\(db.name))")
            }
            rc = mdb_cursor_get(cursor, &key, &value, MDB_NEXT)
        }
        if rc != MDB_NOTFOUND { try lmdbCheck(rc, "mdb_cursor_get(\(db.name))") }
    }
}
