// Every failure the store reports is a `StoreError`; nothing read from disk is force-unwrapped.
// An LMDB failure carries the call that failed, its return code and mdb_strerror's text, so a log line is enough
// to tell MDB_MAP_FULL from an I/O error without a debugger. Running out of room is its own case (`mapFull`,
// `noSpace`) whose text says what to do, and `isStorageFull` is true exactly for those (and for a raw `lmdb` error
// carrying MDB_MAP_FULL, ENOSPC or EDQUOT).

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CLMDB

public enum StoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// An LMDB call failed. `code` is its return value: an errno (EIO, ENOSPC, EACCES...) or an MDB_* code.
    case lmdb(operation: String, code: Int32, message: String)
    /// A write needed more room than the memory map allows (MDB_MAP_FULL); the transaction was rolled back.
    /// `mapSizeBytes` is the map size in effect. Deleting data frees pages for reuse; a larger `mapSizeBytes` at the
    /// next open raises the limit.
    case mapFull(operation: String, mapSizeBytes: Int)
    /// The filesystem holding the data file is full (`code` ENOSPC) or the user's quota is exhausted (EDQUOT); the
    /// transaction was rolled back. LMDB reports a short write as EIO: an EIO while the filesystem has (almost) no
    /// free space left is reported here as ENOSPC, with "short write" in `operation`.
    case noSpace(operation: String, code: Int32, path: String)
    /// The environment was written by another schema version. `found` is 0 when the environment holds data
    /// but no version at all. The only change the store makes on its own is the additive upgrade of an older
    /// version it knows (see `Store.init`); anything else is refused and left untouched.
    case schemaMismatch(found: UInt32, expected: UInt32)
    /// A record does not decode under the current layout (truncated, unknown state byte, bad UTF-8...).
    case corruptRecord(database: String, reason: String)
    /// The data directory could not be created.
    case directoryCreation(path: String, errno: Int32, message: String)
    /// The caller passed something the store cannot accept (outside per-op results, e.g. bulk creation).
    case invalidArgument(String)
    /// The store was used after `close()`.
    case closed

    /// The LMDB return code, if this is an LMDB failure (MDB_MAP_FULL for `mapFull`, the errno for `noSpace`).
    public var lmdbCode: Int32? {
        switch self {
        case .lmdb(_, let code, _): return code
        case .mapFull: return MDB_MAP_FULL
        case .noSpace(_, let code, _): return code
        default: return nil
        }
    }

    /// True when a write failed because the map is full: the batch was rolled back and a larger
    /// `mapSizeBytes` is needed (or data must be deleted).
    public var isMapFull: Bool {
        lmdbCode == MDB_MAP_FULL
    }

    /// True when a write failed for lack of room: the map is full, the disk is full (ENOSPC) or the quota is
    /// exhausted (EDQUOT). The transaction was rolled back; writes that free space can still succeed.
    public var isStorageFull: Bool {
        switch self {
        case .mapFull, .noSpace: return true
        case .lmdb(_, let code, _): return code == MDB_MAP_FULL || code == ENOSPC || code == EDQUOT
        default: return false
        }
    }

    public var description: String {
        switch self {
        case let .lmdb(operation, code, message):
            return "LMDB \(operation) failed: \(message) (code \(code))"
        case let .mapFull(operation, mapSizeBytes):
            return "LMDB map full (map size \(mapSizeBytes) bytes): raise --map-size "
                + "(\(operation) returned MDB_MAP_FULL, code \(MDB_MAP_FULL))"
        case let .noSpace(operation, code, path) where code == EDQUOT:
            return "disk quota exceeded (EDQUOT) writing \(path) (\(operation), errno \(code))"
        case let .noSpace(operation, code, path):
            return "no space left on device (ENOSPC) writing \(path) (\(operation), errno \(code))"
        case let .schemaMismatch(found, expected) where found == 0:
            return "store schema mismatch: the environment holds data but no schema version (expected \(expected)); "
                + "refusing to open it rather than rewrite it"
        case let .schemaMismatch(found, expected):
            return "store schema mismatch: the environment has schema version \(found), this build expects "
                + "\(expected); migrate or point the server at another data directory (nothing was changed)"
        case let .corruptRecord(database, reason):
            return "corrupt record in LMDB database \"\(database)\": \(reason)"
        case let .directoryCreation(path, code, message):
            return "cannot create data directory \(path): \(message) (errno \(code))"
        case let .invalidArgument(reason):
            return "invalid argument: \(reason)"
        case .closed:
            return "the store is closed"
        }
    }
}

/// Throws `StoreError.lmdb` unless `rc` is MDB_SUCCESS. The operation name is built only on failure.
@inline(__always)
func lmdbCheck(_ rc: Int32, _ operation: @autoclosure () -> String) throws {
    guard rc == MDB_SUCCESS else { throw lmdbError(rc, operation()) }
}

func lmdbError(_ rc: Int32, _ operation: String) -> StoreError {
    // mdb_strerror covers both MDB_* codes and errno values and returns static storage.
    let message = mdb_strerror(rc).map { String(cString: $0) } ?? "unknown error"
    return .lmdb(operation: operation, code: rc, message: message)
}
