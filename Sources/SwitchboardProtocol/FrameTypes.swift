// Frame type codes and protocol constants. Client-to-server types are 0x01-0x3F, server-to-client
// 0x40-0x7F, so a byte alone says which side may send it. Codes are never reused.

public enum ProtocolConstants {
    /// The newest version this code speaks (2: devices, LOGIN_DEVICE and SENT_COPY).
    public static let version: UInt16 = 2
    /// The oldest version a server still accepts: a version-1 client is one implicit device.
    public static let minimumVersion: UInt16 = 1
    /// LOGIN_DEVICE's `device_id` (1-64 bytes of A-Z a-z 0-9 _ -) and `device_name` (0-64 bytes).
    public static let maxDeviceIDBytes = 64
    public static let maxDeviceNameBytes = 64
    /// "SWBD": lets the server reject a client of another protocol at its first frame.
    public static let magic: UInt32 = 0x5357_4244
    /// Length prefix (4) + type (1).
    public static let headerSize = 5
    public static let maxNameBytes = 32
    public static let maxPasswordBytes = 1024
    public static let minPasswordBytes = 8
    public static let envelopeOverhead = 64
    /// The text of the offline notice, as the seed words it.
    public static let offlineNotice = "Contact offline at the moment, send offline message"
}

public enum FrameType: UInt8, Sendable, CaseIterable {
    // client -> server
    case hello = 0x01
    case register = 0x02
    case login = 0x03
    case contactAdd = 0x04
    case contactAccept = 0x05
    case contactRemove = 0x06
    case openChat = 0x07
    case send = 0x08
    case deliveryAck = 0x09
    case mailAck = 0x0A
    case ping = 0x0B
    case pong = 0x0C
    case listContacts = 0x0D
    /// Version 2: LOGIN naming the device (see WireProtocol.md, "Devices").
    case loginDevice = 0x0E
    // server -> client
    case welcome = 0x40
    case ok = 0x41
    case error = 0x42
    case loginOK = 0x43
    case contactList = 0x44
    case presence = 0x45
    case contactUpdate = 0x46
    case chatStatus = 0x47
    case deliver = 0x48
    case sendAck = 0x49
    case mail = 0x4A
    case mailEnd = 0x4B
    case sendError = 0x4C
    case serverPing = 0x4D
    case serverPong = 0x4E
    /// Version 2: a copy of a message another device of the same user sent.
    case sentCopy = 0x4F
}

/// Error codes carried by ERROR and SEND_ERROR frames. Codes below 100 close the connection.
public enum ErrorCode: UInt16, Sendable, CaseIterable {
    case malformedFrame = 1
    case frameTooLarge = 2
    case unknownFrameType = 3
    case invalidUTF8 = 4
    case notAllowedNow = 5
    case unsupportedVersion = 6
    case loginTimeout = 7
    case idleTimeout = 8
    case sessionTakenOver = 9
    case serverBusy = 10
    case shuttingDown = 11
    case slowConsumer = 12
    case lockedOut = 13
    /// An administrator closed the session (`switchboard admin kick`, or the account was deleted).
    case kicked = 14
    // request errors: the connection stays open
    case authenticationFailed = 100
    case nameTaken = 101
    case invalidName = 102
    case invalidPassword = 103
    case noSuchUser = 104
    case notAContact = 105
    case mailboxFull = 106
    case invalidRequest = 107
    case alreadyLoggedIn = 108
    case internalError = 109
    case busyRetryLater = 110
    /// The server's storage is full (LMDB map full or disk full): nothing was stored; live relaying goes on.
    case storageFull = 111
    /// LOGIN_DEVICE of a new device while the user already has the maximum number of devices online.
    case tooManyDevices = 112

    public var closesConnection: Bool { rawValue < 100 }
}

/// How a contact relates to the user who receives the frame.
public enum ContactRelation: UInt8, Sendable, CaseIterable {
    case removed = 0
    /// The user asked the contact; waiting for them to accept.
    case outgoingRequest = 1
    /// The contact asked the user; the user may accept.
    case incomingRequest = 2
    case accepted = 3
}

/// Outcome carried by SEND_ACK.
public enum SendStatus: UInt8, Sendable {
    /// The receiving client acknowledged it.
    case delivered = 1
    /// Durable in the receiver's mailbox.
    case storedOffline = 2
}

public struct ContactInfo: Equatable, Sendable {
    public var userID: UInt32
    public var name: String
    public var relation: ContactRelation
    public var online: Bool
    public init(userID: UInt32, name: String, relation: ContactRelation, online: Bool) {
        self.userID = userID; self.name = name; self.relation = relation; self.online = online
    }
}

/// Limits the server announces in WELCOME.
public struct ServerLimits: Equatable, Sendable {
    public var maxFrameBytes: UInt32
    public var maxFrameBytesBeforeLogin: UInt32
    public var loginTimeoutMs: UInt32
    public var idleTimeoutMs: UInt32
    public var pingIntervalMs: UInt32
    public var mailboxMaxMessages: UInt32
    public var mailboxMaxBytes: UInt64
    public init(maxFrameBytes: UInt32 = 65_536, maxFrameBytesBeforeLogin: UInt32 = 8_192, loginTimeoutMs: UInt32 = 10_000,
                idleTimeoutMs: UInt32 = 120_000, pingIntervalMs: UInt32 = 30_000, mailboxMaxMessages: UInt32 = 10_000,
                mailboxMaxBytes: UInt64 = 64 << 20) {
        self.maxFrameBytes = maxFrameBytes; self.maxFrameBytesBeforeLogin = maxFrameBytesBeforeLogin
        self.loginTimeoutMs = loginTimeoutMs; self.idleTimeoutMs = idleTimeoutMs; self.pingIntervalMs = pingIntervalMs
        self.mailboxMaxMessages = mailboxMaxMessages; self.mailboxMaxBytes = mailboxMaxBytes
    }
    /// Largest message body: leaves room for the largest envelope (MAIL: 63 bytes) so every
    /// frame the server builds around a body also fits in `maxFrameBytes`.
    public var maxBodyBytes: Int { Int(maxFrameBytes) - ProtocolConstants.envelopeOverhead }
}
