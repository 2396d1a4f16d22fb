// Backups and checks of a data folder, safe while a server runs on it: the environment is opened read-only
// (MDB_RDONLY: no write transaction, no schema upgrade) by this process, next to the server's. LMDB is
// multi-process safe (reader slots in lock.mdb) and a read transaction is a consistent snapshot, so the copy
// holds exactly the commits made before its transaction began, and the server keeps committing meanwhile.
// Invariants: nothing here writes to the source environment; a backup is written to DEST/data.mdb.partial,
// fsynced, then renamed to DEST/data.mdb (and the folder fsynced), so DEST never holds a half copy under the
// final name; DEST must be empty or absent; `inspect` reads every record and reports every problem it finds
// rather than stopping at the first.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CLMDB

public struct DataReport: Sendable, Equatable, CustomStringConvertible {
    public var schemaVersion: UInt32?
    public var accounts = 0
    public var users = 0
    public var contacts = 0
    public var mail = 0
    public var mailBodyBytes = 0
    public var dedupeRecords = 0
    public var dedupeWindows = 0
    /// Bytes of the data file in use (pages up to the last one written).
    public var usedBytes = 0
    public var problems: [String] = []
    public var notes: [String] = []

    public var description: String {
        var lines = ["schema version \(schemaVersion.map(String.init) ?? "missing") (this build: \(Store.schemaVersion))",
                     "accounts \(accounts), contacts \(contacts) (directed entries), mail \(mail) (\(mailBodyBytes) body bytes), dedupe records \(dedupeRecords), dedupe windows \(dedupeWindows)",
                     "data in use \(usedBytes) bytes"]
        lines += notes.map { "note: " + $0 }
        lines += problems.map { "PROBLEM: " + $0 }
        return lines.joined(separator: "\n")
    }
}

/// An environment opened read-only next to (possibly) a running server.
final class ReadOnlyEnvironment {
    let env: OpaquePointer

    init(directory: String) throws {
        var statBuffer = stat()
        let dataFile = directory.hasSuffix("/") ? directory + "data.mdb" : directory + "/data.mdb"
        guard stat(dataFile, &statBuffer) == 0 else {
            throw StoreError.invalidArgument("no LMDB data file at \(dataFile): \(String(cString: strerror(errno)))")
        }
        var created: OpaquePointer?
        try lmdbCheck(mdb_env_create(&created), "mdb_env_create")
        guard let env = created else { throw lmdbError(EINVAL, "mdb_env_create returned no environment") }
        do {
            try lmdbCheck(mdb_env_set_maxdbs(env, Databases.maxCount), "mdb_env_set_maxdbs")
            try lmdbCheck(mdb_env_set_maxreaders(env, 126), "mdb_env_set_maxreaders")
            try lmdbCheck(mdb_env_open(env, directory, UInt32(MDB_RDONLY) | UInt32(MDB_NOTLS), 0o600),
                          "mdb_env_open(\(directory), read-only)")
            // Adopt the map size the server wrote (it may be larger than what this process would pick).
            try lmdbCheck(mdb_env_set_mapsize(env, 0), "mdb_env_set_mapsize(0)")
        } catch {
            mdb_env_close(env)
            throw error
        }
        self.env = env
    }

    deinit { mdb_env_close(env) }

    func readTransaction() throws -> LMDBTransaction {
        do {
            return try LMDBTransaction.begin(env, readOnly: true)
        } catch let error as StoreError where error.lmdbCode == MDB_MAP_RESIZED {
            // The server grew the map since we opened: adopt its size and try once more.
            try lmdbCheck(mdb_env_set_mapsize(env, 0), "mdb_env_set_mapsize(0)")
            return try LMDBTransaction.begin(env, readOnly: true)
        }
    }
}

extension Store {
    /// Writes a compacted, consistent copy of the environment in `directory` to `destination`/data.mdb
    /// (mdb_env_copyfd2 with MDB_CP_COMPACT) and returns the copy's size in bytes. Safe while a server
    /// runs on `directory` (see the file's header); never run it in the server's own process.
    public static func backup(directory: String, to destination: String) throws -> Int {
        let source = try ReadOnlyEnvironment(directory: directory)
        // Refuse what the server would refuse: the copy of another schema is no backup of this one.
        let report = try inspect(source, deep: false)
        guard let version = report.schemaVersion, version == 1 || version == schemaVersion else {
            throw StoreError.schemaMismatch(found: report.schemaVersion ?? 0, expected: schemaVersion)
        }
        try createDirectory(destination)
        try checkEmpty(destination)
        let base = destination.hasSuffix("/") ? destination : destination + "/"
        let partial = base + "data.mdb.partial"
        let final = base + "data.mdb"
        let fd = Glibc.open(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw StoreError.invalidArgument("cannot create \(partial): \(String(cString: strerror(errno)))")
        }
        do {
            try lmdbCheck(mdb_env_copyfd2(source.env, fd, UInt32(MDB_CP_COMPACT)), "mdb_env_copyfd2(compact)")
            guard fsync(fd) == 0 else { throw lmdbError(errno, "fsync(\(partial))") }
        } catch {
            Glibc.close(fd)
            unlink(partial)
            throw error
        }
        var info = stat()
        fstat(fd, &info)
        Glibc.close(fd)
        guard rename(partial, final) == 0 else { throw lmdbError(errno, "rename(\(partial), \(final))") }
        let dirFD = Glibc.open(destination, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 {
            fsync(dirFD)
            Glibc.close(dirFD)
        }
        return Int(info.st_size)
    }

    /// Reads every record of the environment in `directory` (read-only, safe while a server runs) and reports
    /// the schema version, the counts and every inconsistency found.
    public static func inspect(directory: String) throws -> DataReport {
        try inspect(try ReadOnlyEnvironment(directory: directory), deep: true)
    }

    static func inspect(_ source: ReadOnlyEnvironment, deep: Bool) throws -> DataReport {
        var report = DataReport()
        let txn = try source.readTransaction()
        defer { txn.abort() }
        var envInfo = MDB_envinfo()
        var envStat = MDB_stat()
        mdb_env_info(source.env, &envInfo)
        mdb_env_stat(source.env, &envStat)
        report.usedBytes = (envInfo.me_last_pgno + 1) * Int(envStat.ms_psize)
        func open(_ name: String) -> NamedDatabase? {
            var dbi: MDB_dbi = 0
            guard mdb_dbi_open(txn.raw, name, 0, &dbi) == MDB_SUCCESS else { return nil }
            return NamedDatabase(handle: dbi, name: name)
        }
        guard let meta = open("meta") else {
            report.problems.append("no \"meta\" database: not a Switchboard data folder (or an empty one)")
            return report
        }
        report.schemaVersion = try txn.withValue(meta, RecordKey.schemaVersion) { try MetaLayout.decodeU32($0, "schema_version") }
        switch report.schemaVersion {
        case nil:
            report.problems.append("no schema version in \"meta\"")
            return report
        case schemaVersion?:
            break
        case 1?:
            report.notes.append("schema version 1: upgraded in place to \(schemaVersion) when a server next opens it")
        case let other?:
            report.problems.append("schema version \(other) is not \(schemaVersion): this build cannot serve it")
            return report
        }
        guard deep else { return report }
        var databases: [String: NamedDatabase] = [:]
        for name in ["accounts", "users", "contacts", "mail", "dedupe"] + (report.schemaVersion == 1 ? [] : ["dedupewin"]) {
            if let db = open(name) { databases[name] = db } else { report.problems.append("database \"\(name)\" is missing") }
        }
        guard report.problems.isEmpty, let accounts = databases["accounts"], let users = databases["users"],
              let contacts = databases["contacts"], let mail = databases["mail"], let dedupe = databases["dedupe"] else {
            return report
        }
        func note(_ problem: String) { if report.problems.count < 50 { report.problems.append(problem) } }
        // users: id -> name; accounts: name -> id + hash. Each must name the other.
        var names: [UserID: String] = [:]
        var highestID: UserID = 0
        try txn.scan(users, from: nil) { key, value in
            guard key.count == 4 else { note("users: key of \(key.count) bytes"); return .proceed }
            let id = UserID(bigEndianBytes: key)
            highestID = max(highestID, id)
            do { names[id] = try UserNameLayout.decode(value, userID: id) } catch { note("users: \(error)") }
            return .proceed
        }
        report.users = names.count
        try txn.scan(accounts, from: nil) { key, value in
            report.accounts += 1
            let name = String(decoding: key, as: UTF8.self)
            do {
                let account = try AccountLayout.decode(name: name, value)
                if names[account.userID] != name { note("account \(name) has user id \(account.userID), which \"users\" does not name \(name)") }
            } catch { note("accounts: \(error)") }
            return .proceed
        }
        if report.accounts != report.users { note("\(report.accounts) accounts but \(report.users) user ids") }
        if let next = try txn.withValue(meta, RecordKey.nextUserID, { try MetaLayout.decodeU32($0, "next_user_id") }),
           highestID >= next {
            note("next_user_id \(next) is not above the highest user id \(highestID)")
        }
        try txn.scan(contacts, from: nil) { key, value in
            report.contacts += 1
            guard key.count == 8 else { note("contacts: key of \(key.count) bytes"); return .proceed }
            let owner = UserID(bigEndianBytes: UnsafeRawBufferPointer(rebasing: key[0..<4]))
            do {
                _ = try ContactLayout.decodeState(value)
                let other = try ContactLayout.contactID(fromKey: key)
                if names[owner] == nil || names[other] == nil { note("contact entry \(owner) -> \(other) names an unknown user") }
            } catch { note("contacts: \(error)") }
            return .proceed
        }
        try txn.scan(mail, from: nil) { key, value in
            report.mail += 1
            do {
                let (recipient, seq) = try MailLayout.decodeKey(key)
                let stored = try MailLayout.decode(recipient: recipient, seq: seq, value)
                report.mailBodyBytes += stored.body.count
                if names[recipient] == nil { note("mail \(seq) for unknown user \(recipient)") }
            } catch { note("mail: \(error)") }
            return .proceed
        }
        report.dedupeRecords = try txn.entryCount(dedupe)
        if let windows = databases["dedupewin"] {
            try txn.scan(windows, from: nil) { key, value in
                report.dedupeWindows += 1
                do {
                    let sender = try DedupeWindowLayout.decodeKey(key)
                    _ = try DedupeWindowLayout.decode(value, sender: sender, notBeforeMs: 0)
                } catch { note("dedupewin: \(error)") }
                return .proceed
            }
        }
        return report
    }

    private static func checkEmpty(_ path: String) throws {
        guard let dir = opendir(path) else {
            throw StoreError.invalidArgument("cannot read \(path): \(String(cString: strerror(errno)))")
        }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." {
                throw StoreError.invalidArgument("backup destination \(path) is not empty (holds \(name)); give a new or empty folder")
            }
        }
    }
}

extension UserID {
    init(bigEndianBytes bytes: UnsafeRawBufferPointer) {
        var value: UInt32 = 0
        for byte in bytes.prefix(4) { value = value << 8 | UInt32(byte) }
        self = value
    }
}
