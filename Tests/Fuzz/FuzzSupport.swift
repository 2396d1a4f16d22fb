// Shared by the fuzz targets and the seed generator: a reader over the fuzz input, the invariant check
// (a trap, so libFuzzer records the input), owned copies of decoded frames and the frame-type facts
// the targets check against. Built with Tests/Fuzz/build.sh, not by SwiftPM.

import SwitchboardIO
import SwitchboardProtocol

/// Traps with `message` when `condition` is false. A trap is what libFuzzer reports as a crash.
@inline(__always)
func check(_ condition: Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
    if !condition { fatalError("fuzz invariant: \(message())", file: file, line: line) }
}

/// Reads the fuzz input front to back. Past the end every read gives zeros, so any input is usable.
struct FuzzInput {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }

    mutating func byte() -> UInt8 {
        guard offset < bytes.count else { return 0 }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_: T.Type = T.self) -> T {
        var value: T = 0
        for _ in 0..<MemoryLayout<T>.size { value = value << 8 | T(byte()) }
        return value
    }

    mutating func bool() -> Bool { byte() & 1 == 1 }

    /// Up to `count` raw bytes (fewer when the input ends).
    mutating func take(_ count: Int) -> [UInt8] {
        let n = max(0, min(count, remaining))
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }

    /// Everything not read yet.
    mutating func rest() -> UnsafeRawBufferPointer {
        let r = UnsafeRawBufferPointer(rebasing: bytes[offset...])
        offset = bytes.count
        return r
    }
}

/// The input of a fuzz entry point as a raw buffer (libFuzzer may pass a null pointer for an empty input).
func fuzzBytes(_ data: UnsafePointer<UInt8>?, _ size: Int) -> UnsafeRawBufferPointer {
    guard let data, size > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
    return UnsafeRawBufferPointer(start: data, count: size)
}

/// Strict UTF-8 as the standard library sees it: the reference for `UTF8Validation`.
func stdlibValidUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
    String(validating: bytes, as: UTF8.self) != nil
}

// MARK: owned copies (decoded frames borrow the decoder's input)

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

    /// The byte views the frame holds (they must all lie inside the frame's body).
    var views: [ByteView] {
        switch self {
        case .hello(_, let a): return [a.bytes]
        case .register(_, let n, let p), .login(_, let n, let p): return [n.bytes, p.bytes]
        case .loginDevice(_, let n, let p, let d, let dn): return [n.bytes, p.bytes, d.bytes, dn.bytes]
        case .contactAdd(_, let n), .contactAccept(_, let n), .contactRemove(_, let n): return [n.bytes]
        case .send(_, _, let body): return [body]
        case .listContacts, .openChat, .deliveryAck, .mailAck, .ping, .pong: return []
        }
    }

    /// Client frames have no bool fields: re-encoding gives back the exact bytes.
    var hasBoolField: Bool { false }
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

    var views: [ByteView] {
        switch self {
        case .welcome(let w): return [w.serverName.bytes]
        case .error(_, _, let m), .sendError(_, _, let m): return [m.bytes]
        case .loginOK(_, _, let n, let a, _): return [n.bytes, a.bytes]
        case .chatStatus(_, _, _, let t): return [t.bytes]
        case .deliver(_, _, _, _, let b), .sentCopy(_, _, _, let b): return [b]
        case .mail(_, _, let fn, _, _, let b): return [fn.bytes, b]
        case .ok, .contactList, .presence, .contactUpdate, .sendAck, .mailEnd, .ping, .pong: return []
        }
    }

    /// A bool field is read as "non-zero" and written as 0/1, so these frames re-encode to the same
    /// length but not always to the same bytes.
    var hasBoolField: Bool {
        switch self {
        case .contactList, .presence, .contactUpdate, .chatStatus: return true
        default: return false
        }
    }
}

/// What the targets need from either direction, so one generic harness drives both decoders.
protocol WireDirection {
    associatedtype Frame: Equatable
    static var name: String { get }
    static func decode(_ input: UnsafeRawBufferPointer, maxFrameBytes: Int) -> DecodeResult<Frame>
    static func encode(_ frame: Frame, into out: ByteBuffer)
    static func owned(_ frame: Frame) -> Frame
    static func views(_ frame: Frame) -> [ByteView]
    static func hasBoolField(_ frame: Frame) -> Bool
    /// Whether this side accepts frames of type `type` (known and of the right direction).
    static func accepts(type: UInt8) -> Bool
}

enum ClientToServer: WireDirection {
    static let name = "client"
    static func decode(_ input: UnsafeRawBufferPointer, maxFrameBytes: Int) -> DecodeResult<ClientFrame> {
        FrameDecoder.decodeClient(input, maxFrameBytes: maxFrameBytes)
    }
    static func encode(_ frame: ClientFrame, into out: ByteBuffer) { FrameEncoder.encode(frame, into: out) }
    static func owned(_ frame: ClientFrame) -> ClientFrame { frame.owned() }
    static func views(_ frame: ClientFrame) -> [ByteView] { frame.views }
    static func hasBoolField(_ frame: ClientFrame) -> Bool { frame.hasBoolField }
    static func accepts(type: UInt8) -> Bool { FrameType(rawValue: type).map { $0.rawValue < 0x40 } ?? false }
}

enum ServerToClient: WireDirection {
    static let name = "server"
    static func decode(_ input: UnsafeRawBufferPointer, maxFrameBytes: Int) -> DecodeResult<ServerFrame> {
        FrameDecoder.decodeServer(input, maxFrameBytes: maxFrameBytes)
    }
    static func encode(_ frame: ServerFrame, into out: ByteBuffer) { FrameEncoder.encode(frame, into: out) }
    static func owned(_ frame: ServerFrame) -> ServerFrame { frame.owned() }
    static func views(_ frame: ServerFrame) -> [ByteView] { frame.views }
    static func hasBoolField(_ frame: ServerFrame) -> Bool { frame.hasBoolField }
    static func accepts(type: UInt8) -> Bool { FrameType(rawValue: type).map { $0.rawValue >= 0x40 } ?? false }
}
