// Account administration on the store: listing accounts, changing a password, deleting an account with
// everything that is its own. Used by `switchboard users` (directly on a stopped server's data folder, or
// through the running server's store thread).
// Invariants: a deleted account leaves no contact entry in either direction, no mail and no dedupe
// record or window behind; its user id is not reused (next_user_id only grows); the mail high-water
// mark stays, so a seq is never given out twice for that id either.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CLMDB

public struct AccountSummary: Sendable, Equatable {
    public var userID: UserID
    public var name: String
    public var contacts: Int
    public var mailCount: Int
}

extension Store {
    /// Every account in name order with its number of contacts (any state) and stored mails.
    /// One read transaction; O(accounts + contacts + mail).
    public func listAccounts() throws -> [AccountSummary] {
        try withReadTransaction { txn in
            var accounts: [AccountSummary] = []
            try txn.scan(databases.accounts, from: nil) { key, value in
                guard let name = String(validating: key, as: UTF8.self) else {
                    throw StoreError.corruptRecord(database: "accounts", reason: "an account name is not UTF-8")
                }
                let record = try AccountLayout.decode(name: name, value)
                accounts.append(AccountSummary(userID: record.userID, name: name, contacts: 0, mailCount: 0))
                return .proceed
            }
            var index: [UserID: Int] = [:]
            for (i, account) in accounts.enumerated() { index[account.userID] = i }
            try txn.scan(databases.contacts, from: nil) { key, _ in
                var reader = RecordReader(key, database: "contacts")
                let owner = try reader.read(UInt32.self, "owner")
                if let i = index[owner] { accounts[i].contacts += 1 }
                return .proceed
            }
            try txn.scan(databases.mail, from: nil) { key, _ in
                let (recipient, _) = try MailLayout.decodeKey(key)
                if let i = index[recipient] { accounts[i].mailCount += 1 }
                return .proceed
            }
            return accounts
        }
    }

    func setPassword(name: String, password: PasswordHash, _ txn: LMDBTransaction) throws -> WriteResult {
        guard Store.isValidUserName(name), let account = try lookUpAccount(named: name, txn) else { return .noSuchUser }
        guard AccountLayout.canEncode(password) else {
            return .invalidRequest("password salt and hash must be at most 255 bytes each")
        }
        try txn.put(databases.accounts, Array(name.utf8), AccountLayout.encode(userID: account.userID, password: password))
        return .passwordChanged(account.userID)
    }

    func deleteAccount(name: String, _ txn: LMDBTransaction) throws -> WriteResult {
        guard Store.isValidUserName(name), let account = try lookUpAccount(named: name, txn) else { return .noSuchUser }
        let userID = account.userID
        func ownedBy(_ key: UnsafeRawBufferPointer, _ database: String) throws -> Bool {
            var reader = RecordReader(key, database: database)
            return try reader.read(UInt32.self, "owner") == userID
        }
        var contacts: [UserID] = []
        try txn.scan(databases.contacts, from: RecordKey.contact(owner: userID, contact: 0)) { key, _ in
            guard try ownedBy(key, "contacts") else { return .stop }
            contacts.append(try ContactLayout.contactID(fromKey: key))
            return .deleteAndProceed
        }
        for contact in contacts {
            try txn.delete(databases.contacts, RecordKey.contact(owner: contact, contact: userID))
        }
        try txn.scan(databases.mail, from: RecordKey.mail(recipient: userID, seq: 0)) { key, _ in
            try ownedBy(key, "mail") ? .deleteAndProceed : .stop
        }
        try txn.scan(databases.dedupe, from: RecordKey.dedupe(sender: userID, messageID: 0)) { key, _ in
            try ownedBy(key, "dedupe") ? .deleteAndProceed : .stop
        }
        try txn.delete(databases.dedupeWindows, RecordKey.dedupeWindow(sender: userID))
        try txn.delete(databases.users, RecordKey.user(userID))
        try txn.delete(databases.accounts, Array(name.utf8))
        return .accountDeleted(userID, contacts: contacts)
    }
}
