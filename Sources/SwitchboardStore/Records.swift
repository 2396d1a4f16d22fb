// The values the store hands in and out. They are plain copies: nothing here points into the LMDB map,
// so they outlive the transaction that read them and cross threads freely. `WriteOp` and `WriteResult` pair up
// positionally: `Store.apply` returns exactly one result per op, in the batch's order.

public typealias UserID = UInt32   // 0 is never a valid user: ids are allocated from 1.

public struct AccountRecord: Sendable, Equatable {
    public var userID: UserID
    public var name: String
    public var password: PasswordHash

    public init(userID: UserID, name: String, password: PasswordHash) {
        self.userID = userID
        self.name = name
        self.password = password
    }
}

/// How the owner of a contact entry sees the other user. The raw values are the stored byte.
public enum ContactState: UInt8, Sendable {
    case outgoingRequest = 1
    case incomingRequest = 2
    case accepted = 3
}

public struct ContactEntry: Sendable, Equatable {
    public var userID: UserID
    public var name: String
    public var state: ContactState

    public init(userID: UserID, name: String, state: ContactState) {
        self.userID = userID
        self.name = name
        self.state = state
    }
}

public struct StoredMail: Sendable, Equatable {
    public var recipient: UserID
    /// Per-recipient mailbox sequence, assigned by the caller, strictly increasing (starting at 1).
    public var seq: UInt64
    public var sender: UserID
    /// Sender-chosen id, the dedupe key together with `sender`.
    public var messageID: UInt64
    public var sentAtMs: UInt64
    public var body: [UInt8]

    public init(recipient: UserID, seq: UInt64, sender: UserID, messageID: UInt64, sentAtMs: UInt64, body: [UInt8]) {
        self.recipient = recipient
        self.seq = seq
        self.sender = sender
        self.messageID = messageID
        self.sentAtMs = sentAtMs
        self.body = body
    }
}

public struct MailboxUsage: Sendable, Equatable {
    public var count: Int
    /// Sum of the stored bodies' sizes (envelopes not counted).
    public var bytes: Int
    /// Highest seq ever stored for the recipient, even if since deleted; 0 if none ever was.
    public var lastSeq: UInt64

    public init(count: Int, bytes: Int, lastSeq: UInt64) {
        self.count = count
        self.bytes = bytes
        self.lastSeq = lastSeq
    }
}

/// One completed send in a sender's durable dedupe window (see `WriteOp.putDedupeWindow`).
public struct DedupeWindowEntry: Sendable, Equatable {
    public var messageID: UInt64
    /// The SendStatus raw value as the server gives it; the store does not interpret it.
    public var status: UInt8
    /// Wall-clock ms when the send completed.
    public var atMs: UInt64

    public init(messageID: UInt64, status: UInt8, atMs: UInt64) {
        self.messageID = messageID
        self.status = status
        self.atMs = atMs
    }
}

public enum WriteOp: Sendable, Equatable {
    case createAccount(name: String, password: PasswordHash)
    case contactAdd(owner: UserID, contactName: String)
    case contactAccept(owner: UserID, contactName: String)
    case contactRemove(owner: UserID, contactName: String)
    /// Also writes a dedupe record (sender, messageID) -> (recipient, seq, storedAtMs = sentAtMs).
    case putMail(StoredMail)
    /// Deletes all mail of `recipient` with seq <= `throughSeq` (cumulative ack). Dedupe records stay.
    case deleteMail(recipient: UserID, throughSeq: UInt64)
    /// Removes dedupe records whose storedAtMs < `olderThanMs`, and dedupe-window entries whose atMs <
    /// `olderThanMs` (a window left empty is deleted).
    case pruneDedupe(olderThanMs: UInt64)
    /// Replaces `sender`'s whole dedupe window with `entries` (kept in the given order, oldest first); empty
    /// `entries` deletes it. At most `Store.maxDedupeWindowEntries` entries, else `invalidRequest`.
    case putDedupeWindow(sender: UserID, entries: [DedupeWindowEntry])
    /// Replaces an account's password hash (`passwordChanged` or `noSuchUser`).
    case setPassword(name: String, password: PasswordHash)
    /// Removes an account with everything that is its own: both directions of its contacts, its mail, its
    /// dedupe records and window (`accountDeleted` with the former contacts, or `noSuchUser`). Its user id is
    /// never given out again.
    case deleteAccount(name: String)

    /// Whether the op can make the database bigger. Under MDB_MAP_FULL / ENOSPC, `Store.apply` retries the batch
    /// with only the ops for which this is false, and answers the others `storageFull`.
    var growsDatabase: Bool {
        switch self {
        case .createAccount, .contactAdd, .contactAccept, .putMail, .setPassword:
            return true
        case .putDedupeWindow(_, let entries):
            return !entries.isEmpty
        case .contactRemove, .deleteMail, .pruneDedupe, .deleteAccount:
            return false
        }
    }
}

public enum WriteResult: Sendable, Equatable {
    case accountCreated(UserID)
    case nameTaken
    case noSuchUser
    /// The request cannot be honoured as asked (adding yourself, invalid name, non-increasing seq...).
    case invalidRequest(String)
    /// `owner`: how the owner now sees the other (nil = removed);
    /// `other`: how the other now sees the owner (nil = removed).
    case contactChanged(owner: ContactEntry?, other: ContactEntry?, ownerID: UserID, otherID: UserID)
    /// Nothing to do: e.g. adding an accepted contact again, re-sending a request, removing a non-contact.
    case alreadyInThatState
    case mailStored
    /// A dedupe record for (sender, messageID) exists: nothing was written.
    case duplicateMail
    case mailDeleted(count: Int)
    /// Dedupe records plus dedupe-window entries removed.
    case pruned(count: Int)
    case dedupeWindowSaved
    case passwordChanged(UserID)
    /// The account is gone; `contacts` are the users that had it in their contact list (either direction).
    case accountDeleted(UserID, contacts: [UserID])
    /// Not applied: the batch hit MDB_MAP_FULL, ENOSPC or EDQUOT and this op could grow the database. The ops
    /// that cannot (deletes, removes, prunes) were applied in a retry and carry their own results.
    case storageFull
}
