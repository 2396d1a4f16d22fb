// Shared helpers for the codec tests: a seeded PRNG so every randomized failure reproduces, sample frames
// covering every frame type, and decode helpers that copy decoded views out of the input before it goes away.

import SwitchboardIO
import SwitchboardProtocol
import Testing


let testMaxFrame = 65_536

// MARK: building raw frames

/// `u32 length | type | body` with the length computed from the body.
func rawFrame(_ type: UInt8, _ body: [UInt8]) -> [UInt8] {
    let length = UInt32(1 + body.count)
    return be(length) + [type] + body
}

func be<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
}

/// A wire string: u16 length + bytes (no validation, so tests can build bad ones).
func wireString(_ bytes: [UInt8]) -> [UInt8] { be(UInt16(bytes.count)) + bytes }
func wireString(_ text: String) -> [UInt8] { wireString(Array(text.utf8)) }

// MARK: encoding

func encode(_ frames: [ClientFrame]) -> [UInt8] {
    let out = ByteBuffer()
    for f in frames { FrameEncoder.encode(f, into: out) }
    return out.readableArray()
}

func encode(_ frames: [ServerFrame]) -> [UInt8] {
    let out = ByteBuffer()
    for f in frames { FrameEncoder.encode(f, into: out) }
    return out.readableArray()
}

// MARK: owned copies (decoded frames borrow the input)

extension ClientFrame {
    func owned() -> ClientFrame {
        switch self {
        case .hello(let v, let a): return .hello(version: v, agent: a.owned())
        case .register(let r, let n, let p): return .register(requestID: r, name: n.owned(), password: p.owned())
        case .login(let r, let n, let p): return .login(requestID: r, name: n.owned(), password: p.owned())
        case .loginDevice(let r, let n, let p, let d, let dn):
            return .loginDevice(requestID: r, name: n.owned(), password: p.owned(), deviceID: d.owned(), deviceName: dn.owned())
        case .contactAdd(let r, let n): return .contactAdd(requestID: r, name: n.owned())
        case .contactAccept(let r, let n): return .contactAccept(requestID: r, name: n.owned())
        case .contactRemove(let r, let n): return .contactRemove(requestID: r, name: n.owned())
        case .send(let to, let id, let body): return .send(to: to, messageID: id, body: body.owned())
        case .listContacts, .openChat, .deliveryAck, .mailAck, .ping, .pong: return self
        }
    }

    /// The frame type byte this case encodes to.
    var typeCode: UInt8 { encode([self])[4] }
}

extension ServerFrame {
    func owned() -> ServerFrame {
        switch self {
        case .welcome(let w): return .welcome(Welcome(version: w.version, limits: w.limits, serverName: w.serverName.owned()))
        case .error(let r, let c, let m): return .error(requestID: r, code: c, message: m.owned())
        case .loginOK(let r, let u, let n, let a, let p):
            return .loginOK(requestID: r, userID: u, name: n.owned(), address: a.owned(), pendingMail: p)
        case .chatStatus(let r, let u, let o, let t): return .chatStatus(requestID: r, userID: u, online: o, text: t.owned())
        case .deliver(let s, let f, let id, let at, let b): return .deliver(seq: s, from: f, messageID: id, sentAtMs: at, body: b.owned())
        case .sendError(let id, let c, let m): return .sendError(messageID: id, code: c, message: m.owned())
        case .mail(let s, let f, let fn, let id, let at, let b):
            return .mail(seq: s, from: f, fromName: fn.owned(), messageID: id, sentAtMs: at, body: b.owned())
        case .sentCopy(let to, let id, let at, let b): return .sentCopy(to: to, messageID: id, sentAtMs: at, body: b.owned())
        case .ok, .contactList, .presence, .contactUpdate, .sendAck, .mailEnd, .ping, .pong: return self
        }
    }

    var typeCode: UInt8 { encode([self])[4] }
}

// MARK: decoding into owned results

enum Decoded<Frame: Equatable>: Equatable {
    case frame(Frame, consumed: Int)
    case needMore
    case failure(ErrorCode)
}

func decodeClient(_ bytes: [UInt8], maxFrameBytes: Int = testMaxFrame) -> Decoded<ClientFrame> {
    bytes.withUnsafeBytes { raw in
        switch FrameDecoder.decodeClient(raw, maxFrameBytes: maxFrameBytes) {
        case .frame(let f, let consumed): return .frame(f.owned(), consumed: consumed)
        case .needMore: return .needMore
        case .failure(let e): return .failure(e.code)
        }
    }
}

func decodeServer(_ bytes: [UInt8], maxFrameBytes: Int = testMaxFrame) -> Decoded<ServerFrame> {
    bytes.withUnsafeBytes { raw in
        switch FrameDecoder.decodeServer(raw, maxFrameBytes: maxFrameBytes) {
        case .frame(let f, let consumed): return .frame(f.owned(), consumed: consumed)
        case .needMore: return .needMore
        case .failure(let e): return .failure(e.code)
        }
    }
}

// MARK: sample frames: every case, with edge-case strings and bodies

let nonASCII = "héllo wörld 👋"
let nonASCIIName = "Zoë 🦊"

let sampleContacts: [ContactInfo] = [
    ContactInfo(userID: 1, name: "alice", relation: .accepted, online: true),
    ContactInfo(userID: 2, name: "", relation: .removed, online: false),
    ContactInfo(userID: 0xFFFF_FFFF, name: nonASCIIName, relation: .outgoingRequest, online: false),
    ContactInfo(userID: 40_000, name: "bob", relation: .incomingRequest, online: true),
]

let clientSamples: [ClientFrame] = [
    .hello(version: 1, agent: "sbchat/1.0"),
    .hello(version: 0xFFFF, agent: ""),
    .hello(version: 1, agent: TextView(nonASCII)),
    .register(requestID: 1, name: "alice", password: "correct horse"),
    .register(requestID: 0xFFFF_FFFF, name: "", password: ""),
    .login(requestID: 2, name: TextView(nonASCIIName), password: TextView(nonASCII)),
    .login(requestID: 0, name: "a", password: TextView(String(repeating: "p", count: ProtocolConstants.maxPasswordBytes))),
    .loginDevice(requestID: 8, name: "alice", password: "correct horse", deviceID: "0123456789abcdef0123456789abcdef",
                 deviceName: TextView(nonASCIIName)),
    .loginDevice(requestID: 0, name: "", password: "", deviceID: TextView(String(repeating: "d", count: ProtocolConstants.maxDeviceIDBytes)),
                 deviceName: TextView(String(repeating: "n", count: ProtocolConstants.maxDeviceNameBytes))),
    .contactAdd(requestID: 3, name: "bob"),
    .contactAccept(requestID: 4, name: TextView(nonASCIIName)),
    .contactRemove(requestID: 5, name: ""),
    .listContacts(requestID: 6),
    .openChat(requestID: 7, contact: 42),
    .send(to: 42, messageID: 0x0102_0304_0506_0708, body: ByteView("hi")),
    .send(to: 0, messageID: 0, body: ByteView([])),
    .send(to: 9, messageID: .max, body: ByteView(nonASCII)),
    .send(to: 9, messageID: 77, body: ByteView([0x00, 0xFF, 0xC0, 0x80, 0xED, 0xA0, 0x80])),  // bodies are opaque
    .deliveryAck(throughSeq: 0),
    .deliveryAck(throughSeq: .max),
    .mailAck(throughSeq: 12),
    .ping(token: 0xDEAD_BEEF),
    .pong(token: .max),
]

let sampleLimits = ServerLimits(maxFrameBytes: 1 << 20, maxFrameBytesBeforeLogin: 4096, loginTimeoutMs: 5000,
                                idleTimeoutMs: 60_000, pingIntervalMs: 20_000, mailboxMaxMessages: 100,
                                mailboxMaxBytes: 0x0102_0304_0506_0708)

let serverSamples: [ServerFrame] = [
    .welcome(Welcome(limits: ServerLimits(), serverName: "switchboard")),
    .welcome(Welcome(version: 7, limits: sampleLimits, serverName: TextView(nonASCII))),
    .ok(requestID: 1),
    .error(requestID: 2, code: ErrorCode.nameTaken.rawValue, message: "name taken"),
    .error(requestID: 0, code: 0xFFFF, message: ""),
    .loginOK(requestID: 3, userID: 17, name: "alice", address: "127.0.0.1:5000", pendingMail: 2),
    .loginOK(requestID: 3, userID: 0, name: TextView(nonASCIIName), address: "", pendingMail: .max),
    .contactList(requestID: 4, final: true, contacts: []),
    .contactList(requestID: 4, final: false, contacts: sampleContacts),
    .contactList(requestID: 4, final: true, contacts: [sampleContacts[2]]),
    .presence(userID: 17, online: true),
    .presence(userID: 18, online: false),
    .contactUpdate(contact: sampleContacts[0]),
    .contactUpdate(contact: sampleContacts[2]),
    .chatStatus(requestID: 5, userID: 18, online: false, text: TextView(ProtocolConstants.offlineNotice)),
    .chatStatus(requestID: 6, userID: 17, online: true, text: ""),
    .deliver(seq: 1, from: 17, messageID: 99, sentAtMs: 1_700_000_000_000, body: ByteView("hello")),
    .deliver(seq: .max, from: 0, messageID: 0, sentAtMs: 0, body: ByteView([])),
    .deliver(seq: 2, from: 17, messageID: 100, sentAtMs: 1, body: ByteView(nonASCII)),
    .sendAck(messageID: 99, status: SendStatus.delivered.rawValue),
    .sendAck(messageID: 100, status: SendStatus.storedOffline.rawValue),
    .sendError(messageID: 101, code: ErrorCode.notAContact.rawValue, message: "not a contact"),
    .mail(seq: 1, from: 17, fromName: "alice", messageID: 5, sentAtMs: 1_700_000_000_000, body: ByteView("offline hi")),
    .mail(seq: 2, from: 18, fromName: TextView(nonASCIIName), messageID: 6, sentAtMs: 2, body: ByteView([])),
    .mail(seq: 3, from: 18, fromName: "", messageID: 7, sentAtMs: 3, body: ByteView(nonASCII)),
    .mailEnd(count: 0),
    .mailEnd(count: 3),
    .sentCopy(to: 18, messageID: 0x0102_0304_0506_0708, sentAtMs: 1_700_000_000_000, body: ByteView("from my laptop")),
    .sentCopy(to: 0, messageID: 0, sentAtMs: 0, body: ByteView([])),
    .ping(token: 1),
    .pong(token: .max),
]
