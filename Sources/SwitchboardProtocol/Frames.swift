// The frame values. Decoded frames hold views into the decoder's input and are valid until that
// input changes; encoders take the same values, so a round trip is `decode(encode(f)) == f`.

public struct Welcome: Equatable, Sendable {
    public var version: UInt16
    public var limits: ServerLimits
    public var serverName: TextView
    public init(version: UInt16 = ProtocolConstants.version, limits: ServerLimits, serverName: TextView) {
        self.version = version; self.limits = limits; self.serverName = serverName
    }
}

/// Frames a client sends.
public enum ClientFrame: Equatable, Sendable {
    case hello(version: UInt16, agent: TextView)
    case register(requestID: UInt32, name: TextView, password: TextView)
    case login(requestID: UInt32, name: TextView, password: TextView)
    /// Version 2: LOGIN that names the device (a stable id the client keeps, and a readable name).
    case loginDevice(requestID: UInt32, name: TextView, password: TextView, deviceID: TextView, deviceName: TextView)
    case contactAdd(requestID: UInt32, name: TextView)
    case contactAccept(requestID: UInt32, name: TextView)
    case contactRemove(requestID: UInt32, name: TextView)
    case listContacts(requestID: UInt32)
    case openChat(requestID: UInt32, contact: UInt32)
    case send(to: UInt32, messageID: UInt64, body: ByteView)
    /// Cumulative: every DELIVER with seq <= throughSeq on this connection was received.
    case deliveryAck(throughSeq: UInt64)
    /// Cumulative: every MAIL with seq <= throughSeq may be deleted.
    case mailAck(throughSeq: UInt64)
    case ping(token: UInt64)
    case pong(token: UInt64)
}

/// Frames the server sends.
public enum ServerFrame: Equatable, Sendable {
    case welcome(Welcome)
    case ok(requestID: UInt32)
    case error(requestID: UInt32, code: UInt16, message: TextView)
    case loginOK(requestID: UInt32, userID: UInt32, name: TextView, address: TextView, pendingMail: UInt32)
    /// Contacts in chunks; `final` marks the last chunk of one listing.
    case contactList(requestID: UInt32, final: Bool, contacts: [ContactInfo])
    case presence(userID: UInt32, online: Bool)
    case contactUpdate(contact: ContactInfo)
    case chatStatus(requestID: UInt32, userID: UInt32, online: Bool, text: TextView)
    case deliver(seq: UInt64, from: UInt32, messageID: UInt64, sentAtMs: UInt64, body: ByteView)
    case sendAck(messageID: UInt64, status: UInt8)
    case sendError(messageID: UInt64, code: UInt16, message: TextView)
    case mail(seq: UInt64, from: UInt32, fromName: TextView, messageID: UInt64, sentAtMs: UInt64, body: ByteView)
    case mailEnd(count: UInt32)
    case ping(token: UInt64)
    case pong(token: UInt64)
    /// Version 2: a message another device of this user sent (not acknowledged, not stored).
    case sentCopy(to: UInt32, messageID: UInt64, sentAtMs: UInt64, body: ByteView)
}
