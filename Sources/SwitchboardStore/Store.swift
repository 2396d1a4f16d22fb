// SwitchboardStore owns Switchboard's durable state, in one LMDB environment under the data directory:
// accounts (name -> user id and password hash), user ids -> names, the contact graph with its request/accept
// states, offline mail per recipient, the (sender, messageID) dedupe records, each sender's dedupe window, and meta
// (schema version, counters). It also owns password hashing (`PasswordHasher`). It knows nothing of connections,
// frames or the event loop.
//
// Invariants: the schema version is checked at open; the one rewrite is the additive upgrade of a version-1
// environment (create "dedupewin", then write version 2, in one transaction), and any other version than 2 is an
// error and left untouched. Each `apply` batch is one write transaction, so it lands entirely or not at all; when
// that transaction runs out of room (map full, ENOSPC, EDQUOT), the batch's ops that cannot grow the database are
// retried in a second transaction and the others are answered `storageFull`, so results stay one per op, in order.
// Nothing read from disk is force-unwrapped.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CLMDB

public final class Store: @unchecked Sendable {
    /// 2 added the "dedupewin" database; a version-1 environment is upgraded in place when opened.
    public static let schemaVersion: UInt32 = 2
    public static let maxUserNameLength = 32
    /// The most entries one `putDedupeWindow` may store.
    public static let maxDedupeWindowEntries = DedupeWindowLayout.maxEntries

    public let directory: String
    /// How the environment was opened (cluster replica or not, commit durability).
    public let options: Options
    /// Opened without the replica option on a folder that applied cluster log entries (see refuseIfReplica).
    public private(set) var holdsClusterLog = false
    let databases: Databases
    private let lock = ReadWriteLock()
    /// nil once closed. Read under `lock` shared, cleared under `lock` exclusive.
    private var env: OpaquePointer?
    /// The LMDB data file, named in ENOSPC errors.
    private let dataFilePath: String
    /// Return codes that the next write transactions' commits fail with instead of committing (test hook).
    /// Touched only inside a write transaction, which LMDB runs one at a time.
    private var injectedCommitFailures: [Int32] = []

    /// Opens (creating if needed) the environment in `directory`.
    ///
    /// The environment is opened with MDB_NOTLS because read transactions run on a thread other than the writer's
    /// and reader slots must belong to the transaction, not the thread. Durability is LMDB's default (`Options.sync`
    /// `.full`): every commit fsyncs data and meta page before `apply` returns, which is why writes are batched
    /// (group commit) rather than committed one by one. A cluster replica may relax it (`Options.Sync`).
    ///
    /// `mapSizeBytes` is the most the database may ever grow to (address space, not disk: the file grows as
    /// needed). A batch that would exceed it is handled as `apply` describes. Deleted data's pages are reused:
    /// LMDB hands them out from the second commit after the delete, and `apply` adds that commit itself when a
    /// batch runs out of room, so the first write after a delete on a full store may still get `storageFull` and
    /// the next one fits. Reopening with a larger `mapSizeBytes` raises the limit (LMDB never shrinks a map below
    /// what the file already uses). Nothing needs `mdb_env_set_mapsize(env, 0)`: that only adopts a size grown by
    /// another process, and one process owns this environment.
    ///
    /// A version-1 environment is upgraded to version 2 in place (additively: the "dedupewin" database is created,
    /// nothing existing is rewritten); any other version than 2 throws `schemaMismatch` and changes nothing.
    ///
    /// `options` makes the store a cluster replica (see `Store.Options` and Store+Replica.swift) and sets how
    /// commits reach the disk; the defaults are the single-node store described above.
    public init(directory: String, mapSizeBytes: Int = 1 << 32, maxReaders: Int = 126,
                options: Options = Options()) throws {
        guard mapSizeBytes > 0 else { throw StoreError.invalidArgument("mapSizeBytes must be positive") }
        guard maxReaders > 0, maxReaders <= Int(Int32.max) else {
            throw StoreError.invalidArgument("maxReaders must be in 1...\(Int32.max)")
        }
        try Store.createDirectory(directory)
        let opened = try Store.openEnvironment(directory: directory, mapSizeBytes: mapSizeBytes,
                                               maxReaders: maxReaders, sync: options.sync)
        self.directory = directory
        self.options = options
        self.dataFilePath = directory.hasSuffix("/") ? directory + "data.mdb" : directory + "/data.mdb"
        self.env = opened.env
        self.databases = opened.databases
        // A folder a cluster node wrote refuses direct writes even when opened as a plain store (a CLI tool).
        holdsClusterLog = !options.clusterReplica && ((try? clusterAppliedSeq()) ?? 0) > 0
    }

    deinit { close() }

    /// Closes the environment; idempotent. Waits for in-flight reads and batches on other threads; any call made
    /// afterwards throws `StoreError.closed`.
    public func close() {
        lock.withExclusive {
            if let env {
                mdb_env_close(env)
                self.env = nil
            }
        }
    }

    /// 1-32 bytes of [A-Za-z0-9_.-]. Names are case-sensitive.
    public static func isValidUserName(_ name: String) -> Bool {
        isValidUserNameBytes(name.utf8)
    }

    static func isValidUserNameBytes<Bytes: Collection>(_ bytes: Bytes) -> Bool where Bytes.Element == UInt8 {
        guard !bytes.isEmpty, bytes.count <= maxUserNameLength else { return false }
        return bytes.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "-"):
                return true
            default:
                return false
            }
        }
    }

    // MARK: - Reads (any thread, each in its own read-only transaction)

    public func account(named name: String) throws -> AccountRecord? {
        guard Store.isValidUserName(name) else { return nil }
        return try withReadTransaction { txn in try lookUpAccount(named: name, txn) }
    }

    public func userName(of userID: UserID) throws -> String? {
        try withReadTransaction { txn in try lookUpUserName(userID, txn) }
    }

    /// The user's contacts in every state, sorted by name.
    public func contacts(of userID: UserID) throws -> [ContactEntry] {
        try withReadTransaction { txn in
            var found: [(UserID, ContactState)] = []
            try txn.scan(databases.contacts, from: RecordKey.contact(owner: userID, contact: 0)) { key, value in
                var reader = RecordReader(key, database: "contacts")
                guard try reader.read(UInt32.self, "owner") == userID else { return .stop }
                found.append((try ContactLayout.contactID(fromKey: key), try ContactLayout.decodeState(value)))
                return .proceed
            }
            var entries: [ContactEntry] = []
            entries.reserveCapacity(found.count)
            for (contactID, state) in found {
                // Deleting an account removes both directions of its contacts, so a contact without a user means
                // the file is inconsistent.
                guard let name = try lookUpUserName(contactID, txn) else {
                    throw StoreError.corruptRecord(database: "contacts",
                                                   reason: "user \(userID) lists unknown user \(contactID)")
                }
                entries.append(ContactEntry(userID: contactID, name: name, state: state))
            }
            entries.sort { $0.name < $1.name }
            return entries
        }
    }

    /// Up to `limit` mails with seq > `afterSeq`, oldest first.
    public func mail(for recipient: UserID, afterSeq: UInt64, limit: Int) throws -> [StoredMail] {
        guard limit > 0, afterSeq < UInt64.max else { return [] }
        return try withReadTransaction { txn in
            var mails: [StoredMail] = []
            try txn.scan(databases.mail, from: RecordKey.mail(recipient: recipient, seq: afterSeq + 1)) { key, value in
                let (keyRecipient, seq) = try MailLayout.decodeKey(key)
                guard keyRecipient == recipient else { return .stop }
                mails.append(try MailLayout.decode(recipient: recipient, seq: seq, value))
                return mails.count < limit ? .proceed : .stop
            }
            return mails
        }
    }

    /// Count and body bytes of the stored mail, and the highest seq ever stored, which survives deletes and
    /// restarts (it is the max of the mailbox's last key and the persisted high-water mark).
    public func mailboxUsage(of recipient: UserID) throws -> MailboxUsage {
        try withReadTransaction { txn in
            var usage = MailboxUsage(count: 0, bytes: 0, lastSeq: try mailHighWater(recipient, txn))
            try txn.scan(databases.mail, from: RecordKey.mail(recipient: recipient, seq: 0)) { key, value in
                let (keyRecipient, seq) = try MailLayout.decodeKey(key)
                guard keyRecipient == recipient else { return .stop }
                usage.count += 1
                usage.bytes += try MailLayout.bodySize(value)
                usage.lastSeq = max(usage.lastSeq, seq)
                return .proceed
            }
            return usage
        }
    }

    public func dedupeRecordExists(sender: UserID, messageID: UInt64) throws -> Bool {
        try withReadTransaction { txn in
            try txn.contains(databases.dedupe, RecordKey.dedupe(sender: sender, messageID: messageID))
        }
    }

    /// `sender`'s stored dedupe window: the entries with atMs >= `notBeforeMs`, in stored order (oldest first);
    /// [] if the sender has none. A record that does not decode throws `corruptRecord`.
    public func dedupeWindow(of sender: UserID, notBeforeMs: UInt64) throws -> [DedupeWindowEntry] {
        try withReadTransaction { txn in
            try txn.withValue(databases.dedupeWindows, RecordKey.dedupeWindow(sender: sender)) {
                try DedupeWindowLayout.decode($0, sender: sender, notBeforeMs: notBeforeMs)
            } ?? []
        }
    }

    public func userCount() throws -> Int {
        try withReadTransaction { txn in try txn.entryCount(databases.users) }
    }

    // MARK: - Writes

    /// Applies the whole batch in one write transaction (group commit: one fsync for the batch) and returns one
    /// result per op, in order. Logical refusals (`nameTaken`, `noSuchUser`...) are results and the rest of the
    /// batch still applies.
    ///
    /// Out of room (MDB_MAP_FULL, ENOSPC or EDQUOT from a put or the commit): the transaction is aborted and the
    /// batch is retried once, in a new transaction, with only the ops that cannot grow the database (`deleteMail`,
    /// `contactRemove`, `pruneDedupe`, `putDedupeWindow` with no entries); every other op gets `storageFull` in
    /// its slot, so freeing space still works when the store is full. If the retry fails too, its error is thrown
    /// and nothing of the batch is written.
    ///
    /// Any other LMDB error (EIO...) or a corrupt record aborts the transaction and is thrown: nothing of the batch
    /// is written.
    ///
    /// A cluster replica refuses this (`invalidArgument`): its writes come from the cluster log only
    /// (`apply(_:logSeq:)`), or it would diverge from the other replicas.
    public func apply(_ batch: [WriteOp]) throws -> [WriteResult] {
        try refuseIfReplica()
        guard !batch.isEmpty else { return [] }
        do {
            return try applyInOneTransaction(batch)
        } catch let error as StoreError where error.isStorageFull {
            // Whatever happens next, make the pages freed so far reusable by the next batch.
            defer { releaseFreedPages() }
            let kept = batch.indices.filter { !batch[$0].growsDatabase }
            var results = [WriteResult](repeating: .storageFull, count: batch.count)
            guard !kept.isEmpty else { return results }
            let retried = try applyInOneTransaction(kept.map { batch[$0] })
            for (index, result) in zip(kept, retried) { results[index] = result }
            return results
        }
    }

    /// LMDB reuses the pages a commit freed only from the second write transaction after it (the previous
    /// snapshot stays intact until then), and a failed transaction commits nothing. So on a full store, mail
    /// deleted by one batch would stay unusable for as long as every later batch failed: a store that only
    /// receives new mail would never recover. Committing one tiny write (the schema version rewritten unchanged)
    /// moves LMDB past that snapshot. Best effort: if even that does not fit, the next full batch tries again.
    private func releaseFreedPages() {
        _ = try? withWriteTransaction { txn in
            try txn.put(databases.meta, RecordKey.schemaVersion, MetaLayout.encode(Store.schemaVersion))
        }
    }

    private func applyInOneTransaction(_ batch: [WriteOp]) throws -> [WriteResult] {
        try withWriteTransaction { txn in
            var results: [WriteResult] = []
            results.reserveCapacity(batch.count)
            for op in batch {
                results.append(try perform(op, txn))
            }
            return results
        }
    }

    /// Creates accounts for load tests in one transaction, all sharing `password` so the slow hash runs once.
    /// Existing names are skipped; returns how many were created. Throws `invalidArgument` (writing nothing) if
    /// any name is invalid.
    public func createAccountsBulk(names: [String], password: PasswordHash) throws -> Int {
        try refuseIfReplica()
        if let index = names.firstIndex(where: { !Store.isValidUserName($0) }) {
            throw StoreError.invalidArgument("invalid user name at index \(index)")
        }
        guard AccountLayout.canEncode(password) else {
            throw StoreError.invalidArgument("password salt and hash must be at most 255 bytes each")
        }
        guard !names.isEmpty else { return 0 }
        return try withWriteTransaction { txn in
            var nextID = try nextUserID(txn)
            var created = 0
            for name in names {
                let key = Array(name.utf8)
                if try txn.contains(databases.accounts, key) { continue }
                guard nextID < UInt32.max else { throw StoreError.invalidArgument("user id space exhausted") }
                try insertAccount(userID: nextID, nameKey: key, password: password, txn)
                nextID += 1
                created += 1
            }
            if created > 0 { try txn.put(databases.meta, RecordKey.nextUserID, MetaLayout.encode(nextID)) }
            return created
        }
    }

    // MARK: - Test hooks

    /// Overwrites the stored schema version, to test the mismatch path on the next open.
    @_spi(Testing)
    public func overwriteSchemaVersionForTesting(_ version: UInt32) throws {
        try withWriteTransaction { txn in
            try txn.put(databases.meta, RecordKey.schemaVersion, MetaLayout.encode(version))
        }
    }

    /// Deletes a named database, to rebuild an environment of an older schema (e.g. version 1 had no "dedupewin").
    /// Close the store afterwards: the dropped database's handle is no longer valid.
    @_spi(Testing)
    public func dropDatabaseForTesting(_ name: String) throws {
        guard let database = databases.named(name) else {
            throw StoreError.invalidArgument("no database named \(name)")
        }
        try withWriteTransaction { txn in try txn.dropDatabase(database) }
    }

    /// Makes the commits of the next `codes.count` write transactions fail, one code each (e.g. ENOSPC), as if
    /// mdb_txn_commit had returned it: the transaction is aborted and the error is reported as a real one would be.
    @_spi(Testing)
    public func injectCommitFailuresForTesting(_ codes: [Int32]) throws {
        try withWriteTransaction { _ in injectedCommitFailures = codes }
    }

    /// The schema version stored in meta, nil if none.
    @_spi(Testing)
    public func storedSchemaVersionForTesting() throws -> UInt32? {
        try withReadTransaction { txn in
            try txn.withValue(databases.meta, RecordKey.schemaVersion) { try MetaLayout.decodeU32($0, "schema_version") }
        }
    }

    /// Writes raw bytes into a named database, to test how corrupt records are reported.
    @_spi(Testing)
    public func putRawRecordForTesting(database name: String, key: [UInt8], value: [UInt8]) throws {
        guard let database = databases.named(name) else {
            throw StoreError.invalidArgument("no database named \(name)")
        }
        try withWriteTransaction { txn in try txn.put(database, key, value) }
    }

    // MARK: - Transactions

    func withReadTransaction<R>(_ body: (LMDBTransaction) throws -> R) throws -> R {
        try lock.withShared {
            guard let env else { throw StoreError.closed }
            let txn = try LMDBTransaction.begin(env, readOnly: true)
            // A read-only transaction has nothing to commit; aborting releases its reader slot.
            defer { txn.abort() }
            return try body(txn)
        }
    }

    func withWriteTransaction<R>(_ body: (LMDBTransaction) throws -> R) throws -> R {
        try lock.withShared {
            guard let env else { throw StoreError.closed }
            // mdb_txn_begin blocks while another thread holds the write transaction: LMDB serializes writers.
            let txn = try LMDBTransaction.begin(env, readOnly: false)
            let injectedFailure = injectedCommitFailures.isEmpty ? nil : injectedCommitFailures.removeFirst()
            let result: R
            do {
                result = try body(txn)
                if let injectedFailure { throw lmdbError(injectedFailure, "mdb_txn_commit (injected)") }
            } catch {
                txn.abort()
                throw classifyWriteFailure(error)
            }
            // Not inside the do: a failed commit has already freed the transaction, aborting it would double-free.
            do {
                try txn.commit()
            } catch {
                throw classifyWriteFailure(error)
            }
            return result
        }
    }

    /// Turns an LMDB "out of room" return code into `mapFull` / `noSpace`, whose text says what to do. Called with
    /// the shared lock held and the environment open.
    private func classifyWriteFailure(_ error: any Error) -> any Error {
        guard case let .lmdb(operation, code, _)? = error as? StoreError else { return error }
        switch code {
        case MDB_MAP_FULL:
            var info = MDB_envinfo()
            let mapSize = env.map { mdb_env_info($0, &info) == MDB_SUCCESS ? info.me_mapsize : 0 } ?? 0
            return StoreError.mapFull(operation: operation, mapSizeBytes: mapSize)
        case ENOSPC, EDQUOT:
            return StoreError.noSpace(operation: operation, code: code, path: dataFilePath)
        case EIO where filesystemIsNearlyFull():
            // LMDB returns EIO for a short write ("filesystem full?"); with no room left that is what it was.
            return StoreError.noSpace(operation: "\(operation) (short write: EIO)", code: ENOSPC, path: dataFilePath)
        default:
            return error
        }
    }

    /// Less than 1 MiB left for unprivileged writers on the data directory's filesystem.
    private func filesystemIsNearlyFull() -> Bool {
        var info = statvfs()
        guard statvfs(directory, &info) == 0 else { return false }
        return UInt64(info.f_bavail) * UInt64(info.f_frsize) < 1 << 20
    }

    // MARK: - Operations (inside a write transaction)

    func perform(_ op: WriteOp, _ txn: LMDBTransaction) throws -> WriteResult {
        switch op {
        case let .createAccount(name, password):
            return try createAccount(name: name, password: password, txn)
        case let .contactAdd(owner, contactName):
            return try addContact(owner: owner, contactName: contactName, txn)
        case let .contactAccept(owner, contactName):
            return try acceptContact(owner: owner, contactName: contactName, txn)
        case let .contactRemove(owner, contactName):
            return try removeContact(owner: owner, contactName: contactName, txn)
        case let .putMail(mail):
            return try putMail(mail, txn)
        case let .deleteMail(recipient, throughSeq):
            return try deleteMail(recipient: recipient, throughSeq: throughSeq, txn)
        case let .pruneDedupe(olderThanMs):
            return try pruneDedupe(olderThanMs: olderThanMs, txn)
        case let .putDedupeWindow(sender, entries):
            return try putDedupeWindow(sender: sender, entries: entries, txn)
        case let .setPassword(name, password):
            return try setPassword(name: name, password: password, txn)
        case let .deleteAccount(name):
            return try deleteAccount(name: name, txn)
        }
    }

    private static let invalidNameReason = "invalid user name: use 1-32 bytes of A-Z, a-z, 0-9, '_', '.', '-'"

    private func createAccount(name: String, password: PasswordHash, _ txn: LMDBTransaction) throws -> WriteResult {
        guard Store.isValidUserName(name) else { return .invalidRequest(Store.invalidNameReason) }
        guard AccountLayout.canEncode(password) else {
            return .invalidRequest("password salt and hash must be at most 255 bytes each")
        }
        let key = Array(name.utf8)
        if try txn.contains(databases.accounts, key) { return .nameTaken }
        let userID = try nextUserID(txn)
        guard userID < UInt32.max else { return .invalidRequest("user id space exhausted") }
        try insertAccount(userID: userID, nameKey: key, password: password, txn)
        try txn.put(databases.meta, RecordKey.nextUserID, MetaLayout.encode(userID + 1))
        return .accountCreated(userID)
    }

    private func insertAccount(userID: UserID, nameKey: [UInt8], password: PasswordHash,
                               _ txn: LMDBTransaction) throws {
        try txn.put(databases.accounts, nameKey, AccountLayout.encode(userID: userID, password: password))
        try txn.put(databases.users, RecordKey.user(userID), nameKey)
    }

    // Contacts are stored once per direction under owner ++ contact -> state, in a plain (not dupsort) database:
    // a cursor range scan over the owner prefix lists them, and changing one pair is a direct put or delete of a
    // known key instead of finding and replacing one duplicate among many.

    private struct ContactPair {
        let ownerID: UserID
        let ownerName: String
        let otherID: UserID
        let otherName: String
    }

    private enum PairResolution {
        case resolved(ContactPair)
        case rejected(WriteResult)
    }

    /// An unknown owner is reported as `noSuchUser` too: owners come from authenticated sessions, so it only
    /// happens for a stale id.
    private func resolvePair(owner: UserID, contactName: String, _ txn: LMDBTransaction) throws -> PairResolution {
        guard Store.isValidUserName(contactName) else { return .rejected(.invalidRequest(Store.invalidNameReason)) }
        guard let ownerName = try lookUpUserName(owner, txn),
              let other = try lookUpAccount(named: contactName, txn)
        else { return .rejected(.noSuchUser) }
        guard other.userID != owner else { return .rejected(.invalidRequest("you cannot be your own contact")) }
        return .resolved(ContactPair(ownerID: owner, ownerName: ownerName, otherID: other.userID,
                                     otherName: contactName))
    }

    private func contactState(of pair: ContactPair, _ txn: LMDBTransaction) throws -> ContactState? {
        try txn.withValue(databases.contacts, RecordKey.contact(owner: pair.ownerID, contact: pair.otherID)) {
            try ContactLayout.decodeState($0)
        }
    }

    /// Writes both directions and reports both views.
    private func link(_ pair: ContactPair, ownerState: ContactState, otherState: ContactState,
                      _ txn: LMDBTransaction) throws -> WriteResult {
        try txn.put(databases.contacts, RecordKey.contact(owner: pair.ownerID, contact: pair.otherID),
                    [ownerState.rawValue])
        try txn.put(databases.contacts, RecordKey.contact(owner: pair.otherID, contact: pair.ownerID),
                    [otherState.rawValue])
        return .contactChanged(owner: ContactEntry(userID: pair.otherID, name: pair.otherName, state: ownerState),
                               other: ContactEntry(userID: pair.ownerID, name: pair.ownerName, state: otherState),
                               ownerID: pair.ownerID, otherID: pair.otherID)
    }

    private func addContact(owner: UserID, contactName: String, _ txn: LMDBTransaction) throws -> WriteResult {
        let pair: ContactPair
        switch try resolvePair(owner: owner, contactName: contactName, txn) {
        case .rejected(let result): return result
        case .resolved(let resolved): pair = resolved
        }
        switch try contactState(of: pair, txn) {
        case .accepted?, .outgoingRequest?:
            return .alreadyInThatState
        case .incomingRequest?:
            // Both asked: adding someone who already asked you is accepting them.
            return try link(pair, ownerState: .accepted, otherState: .accepted, txn)
        case nil:
            return try link(pair, ownerState: .outgoingRequest, otherState: .incomingRequest, txn)
        }
    }

    private func acceptContact(owner: UserID, contactName: String, _ txn: LMDBTransaction) throws -> WriteResult {
        let pair: ContactPair
        switch try resolvePair(owner: owner, contactName: contactName, txn) {
        case .rejected(let result): return result
        case .resolved(let resolved): pair = resolved
        }
        guard try contactState(of: pair, txn) == .incomingRequest else {
            return .invalidRequest("no pending request from \(contactName)")
        }
        return try link(pair, ownerState: .accepted, otherState: .accepted, txn)
    }

    /// Removes both directions whatever the state, so it also declines an incoming or cancels an outgoing request.
    private func removeContact(owner: UserID, contactName: String, _ txn: LMDBTransaction) throws -> WriteResult {
        let pair: ContactPair
        switch try resolvePair(owner: owner, contactName: contactName, txn) {
        case .rejected(let result): return result
        case .resolved(let resolved): pair = resolved
        }
        let removedOwnerView = try txn.delete(databases.contacts,
                                              RecordKey.contact(owner: pair.ownerID, contact: pair.otherID))
        let removedOtherView = try txn.delete(databases.contacts,
                                              RecordKey.contact(owner: pair.otherID, contact: pair.ownerID))
        guard removedOwnerView || removedOtherView else { return .alreadyInThatState }
        return .contactChanged(owner: nil, other: nil, ownerID: pair.ownerID, otherID: pair.otherID)
    }

    private func putMail(_ mail: StoredMail, _ txn: LMDBTransaction) throws -> WriteResult {
        guard mail.sender != 0 else { return .invalidRequest("sender 0 is not a user") }
        let dedupeKey = RecordKey.dedupe(sender: mail.sender, messageID: mail.messageID)
        // Checked before anything else so that a resend is recognised even if its seq is stale.
        if try txn.contains(databases.dedupe, dedupeKey) { return .duplicateMail }
        guard try lookUpUserName(mail.recipient, txn) != nil else { return .noSuchUser }
        let highWater = try mailHighWater(mail.recipient, txn)
        var mail = mail
        if mail.seq <= highWater {
            // Two cluster nodes may give one recipient the same seq; every replica applies the log in the same
            // order, so every replica renumbers the later one identically (Store+Replica.swift).
            guard options.clusterReplica, highWater < UInt64.max else {
                return .invalidRequest("seq \(mail.seq) is not above the mailbox's last seq \(highWater)")
            }
            mail.seq = highWater + 1
        }
        try txn.put(databases.mail, RecordKey.mail(recipient: mail.recipient, seq: mail.seq), MailLayout.encode(mail))
        try txn.put(databases.dedupe, dedupeKey,
                    DedupeLayout.encode(recipient: mail.recipient, seq: mail.seq, storedAtMs: mail.sentAtMs))
        try txn.put(databases.meta, RecordKey.mailHighWater(recipient: mail.recipient), MetaLayout.encode(mail.seq))
        return .mailStored
    }

    /// Dedupe records are kept on purpose: a sender that resends after the ack must still get `duplicateMail`
    /// until `pruneDedupe` ages the record out.
    private func deleteMail(recipient: UserID, throughSeq: UInt64, _ txn: LMDBTransaction) throws -> WriteResult {
        var deleted = 0
        try txn.scan(databases.mail, from: RecordKey.mail(recipient: recipient, seq: 0)) { key, _ in
            let (keyRecipient, seq) = try MailLayout.decodeKey(key)
            guard keyRecipient == recipient, seq <= throughSeq else { return .stop }
            deleted += 1
            return .deleteAndProceed
        }
        return .mailDeleted(count: deleted)
    }

    /// A full scan: the table is keyed by sender for the hot-path lookup, and pruning runs rarely with the table
    /// bounded by the retention window, so a time index is not worth its write cost. Dedupe windows are pruned
    /// entry by entry: a window left empty is deleted, one that lost some entries is rewritten after the scan.
    private func pruneDedupe(olderThanMs: UInt64, _ txn: LMDBTransaction) throws -> WriteResult {
        var pruned = 0
        try txn.scan(databases.dedupe, from: nil) { _, value in
            guard try DedupeLayout.storedAtMs(value) < olderThanMs else { return .proceed }
            pruned += 1
            return .deleteAndProceed
        }
        var rewrites: [(key: [UInt8], entries: [DedupeWindowEntry])] = []
        try txn.scan(databases.dedupeWindows, from: nil) { key, value in
            let sender = try DedupeWindowLayout.decodeKey(key)
            let all = try DedupeWindowLayout.decode(value, sender: sender)
            let kept = all.filter { $0.atMs >= olderThanMs }
            guard kept.count < all.count else { return .proceed }
            pruned += all.count - kept.count
            if kept.isEmpty { return .deleteAndProceed }
            rewrites.append((Array(key), kept))
            return .proceed
        }
        for rewrite in rewrites {
            try txn.put(databases.dedupeWindows, rewrite.key, DedupeWindowLayout.encode(rewrite.entries))
        }
        return .pruned(count: pruned)
    }

    private func putDedupeWindow(sender: UserID, entries: [DedupeWindowEntry],
                                 _ txn: LMDBTransaction) throws -> WriteResult {
        guard sender != 0 else { return .invalidRequest("sender 0 is not a user") }
        guard entries.count <= Store.maxDedupeWindowEntries else {
            return .invalidRequest("a dedupe window holds at most \(Store.maxDedupeWindowEntries) entries, "
                                   + "got \(entries.count)")
        }
        let key = RecordKey.dedupeWindow(sender: sender)
        if entries.isEmpty {
            try txn.delete(databases.dedupeWindows, key)
        } else {
            try txn.put(databases.dedupeWindows, key, DedupeWindowLayout.encode(entries))
        }
        return .dedupeWindowSaved
    }

    // MARK: - Lookups shared by reads and writes

    func lookUpAccount(named name: String, _ txn: LMDBTransaction) throws -> AccountRecord? {
        try txn.withValue(databases.accounts, Array(name.utf8)) { try AccountLayout.decode(name: name, $0) }
    }

    func lookUpUserName(_ userID: UserID, _ txn: LMDBTransaction) throws -> String? {
        guard userID != 0 else { return nil }
        return try txn.withValue(databases.users, RecordKey.user(userID)) {
            try UserNameLayout.decode($0, userID: userID)
        }
    }

    private func nextUserID(_ txn: LMDBTransaction) throws -> UserID {
        let stored = try txn.withValue(databases.meta, RecordKey.nextUserID) {
            try MetaLayout.decodeU32($0, "next_user_id")
        }
        guard let stored else { return 1 }
        guard stored != 0 else {
            throw StoreError.corruptRecord(database: "meta", reason: "next_user_id is 0")
        }
        return stored
    }

    func mailHighWater(_ recipient: UserID, _ txn: LMDBTransaction) throws -> UInt64 {
        try txn.withValue(databases.meta, RecordKey.mailHighWater(recipient: recipient)) {
            try MetaLayout.decodeU64($0, "mailseq")
        } ?? 0
    }

    // MARK: - Opening

    static func createDirectory(_ path: String) throws {
        guard !path.isEmpty else { throw StoreError.invalidArgument("empty data directory path") }
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            prefix += component
            if mkdir(prefix, 0o700) != 0 {
                let code = errno
                if code != EEXIST {
                    throw StoreError.directoryCreation(path: prefix, errno: code,
                                                       message: String(cString: strerror(code)))
                }
            }
            prefix += "/"
        }
    }

    private static func openEnvironment(directory: String, mapSizeBytes: Int, maxReaders: Int,
                                        sync: Options.Sync) throws -> (env: OpaquePointer, databases: Databases) {
        var created: OpaquePointer?
        try lmdbCheck(mdb_env_create(&created), "mdb_env_create")
        guard let env = created else { throw lmdbError(EINVAL, "mdb_env_create returned no environment") }
        do {
            try lmdbCheck(mdb_env_set_mapsize(env, mapSizeBytes), "mdb_env_set_mapsize")
            try lmdbCheck(mdb_env_set_maxreaders(env, UInt32(maxReaders)), "mdb_env_set_maxreaders")
            try lmdbCheck(mdb_env_set_maxdbs(env, Databases.maxCount), "mdb_env_set_maxdbs")
            var flags = UInt32(MDB_NOTLS)
            switch sync {
            case .full: break
            case .noMetaSync: flags |= UInt32(MDB_NOMETASYNC)
            case .noSync: flags |= UInt32(MDB_NOSYNC)
            }
            try lmdbCheck(mdb_env_open(env, directory, flags, 0o600), "mdb_env_open(\(directory))")
            // Free reader slots left behind by a crashed process, which would otherwise pin old pages forever.
            var staleReaders: Int32 = 0
            try lmdbCheck(mdb_reader_check(env, &staleReaders), "mdb_reader_check")
            return (env, try openDatabases(env))
        } catch {
            mdb_env_close(env)
            throw error
        }
    }

    /// Checks the schema version and opens the named databases in one write transaction: on a mismatch it aborts,
    /// so an environment of another version is left exactly as it was. Version 1 is upgraded in the same
    /// transaction (create "dedupewin", write version 2), so an upgrade lands entirely or not at all.
    private static func openDatabases(_ env: OpaquePointer) throws -> Databases {
        let txn = try LMDBTransaction.begin(env, readOnly: false)
        let databases: Databases
        do {
            // Named databases are entries of the main database: an empty main database is a brand-new env.
            let main = try txn.openDatabase(nil, create: false)
            let isNew = try txn.entryCount(main, "main") == 0
            let metaHandle: MDB_dbi
            do {
                metaHandle = try txn.openDatabase("meta", create: isNew)
            } catch let error as StoreError where error.lmdbCode == MDB_NOTFOUND {
                // Data but no "meta" database: not an environment this store wrote.
                throw StoreError.schemaMismatch(found: 0, expected: schemaVersion)
            }
            let meta = NamedDatabase(handle: metaHandle, name: "meta")
            let found = try txn.withValue(meta, RecordKey.schemaVersion) {
                try MetaLayout.decodeU32($0, "schema_version")
            }
            let upgradeFromV1 = !isNew && found == 1
            if isNew || upgradeFromV1 {
                try txn.put(meta, RecordKey.schemaVersion, MetaLayout.encode(schemaVersion))
            } else if found != schemaVersion {
                throw StoreError.schemaMismatch(found: found ?? 0, expected: schemaVersion)
            }
            func open(_ name: String, create: Bool = isNew) throws -> NamedDatabase {
                NamedDatabase(handle: try txn.openDatabase(name, create: create), name: name)
            }
            databases = Databases(meta: meta, accounts: try open("accounts"), users: try open("users"),
                                  contacts: try open("contacts"), mail: try open("mail"), dedupe: try open("dedupe"),
                                  dedupeWindows: try open("dedupewin", create: isNew || upgradeFromV1))
        } catch {
            txn.abort()
            throw error
        }
        try txn.commit()
        return databases
    }
}
