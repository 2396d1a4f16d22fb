// Every failure the store reports is a `StoreError`; nothing read from disk is force-unwrapped.
// An LMDB failure carries the call that failed, its return code and mdb_strerror's text, so a log line is enough
// to tell MDB_MAP_FULL from an I/O error without a debugger.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CLMDB

public enum StoreError: Error, Sendable, Equatable, CustomStringConvertible {
    /// An LMDB call failed. `code` is its return value: an errno (EIO, ENOSPC, EACCES...) or an MDB_* code.
    case lmdb(operation: String, code: Int32, message: String)
    /// The environment was written by another schema version. `found` is 0 when the environment holds data
    /// but no version at all. The store never migrates or rewrites on its own.
    case schemaMismatch(found: UInt32, expected: UInt32)
    /// A record does not decode under the current layout (truncated, unknown state byte, bad UTF-8...).
    case corruptRecord(database: String, reason: String)
    /// The data directory could not be created.
    case directoryCreation(path: String, errno: Int32, message: String)
    /// The caller passed something the store cannot accept (outside per-op results, e.g. bulk creation).
    case invalidArgument(String)
    /// The store was used after `close()`.
    case closed

    /// The LMDB return code, if this is an LMDB failure.
    public var lmdbCode: Int32? {
        if case .lmdb(_, let code, _) = self { return code }
        return nil
    }

    /// True when a write failed because the map is full: the batch was rolled back and a larger
    /// `mapSizeBytes` is needed.
    public var isMapFull: Bool {
        lmdbCode == MDB_MAP_FULL
    }

    public var description: String {
        switch self {
        case let .lmdb(operation, code, message):
            return "LMDB \(operation) failed: \(message) (code \(code))"
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
