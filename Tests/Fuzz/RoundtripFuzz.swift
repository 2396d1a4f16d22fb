// Fuzz target `roundtrip`: structured frames built from the input, encoded, decoded, compared.
//
// The input picks the output buffer's state (capacity, unread and retained bytes before the frames, so
// the encoder's length patching runs across compactions), then 1-4 frames: a kind byte (30 kinds, client
// and server) and the kind's fields in wire order. Text fields are usually valid UTF-8, sometimes raw
// bytes (often invalid) and sometimes long (around the field's limit or the encoder's 65 535-byte cut).
//
// Checks: each frame's encoding equals an independent byte-by-byte rendering of WireProtocol.md; decoding
// the buffer gives back each frame (with texts as the encoder cut them) or, for the first frame with a bad
// text, exactly the error the spec names (malformedFrame for a string over its limit, invalidUTF8 for
// invalid text, as the standard library's strict validation judges it); every strict prefix of a frame is
// needMore; a limit one below the frame's length is frameTooLarge.

import SwitchboardIO
import SwitchboardProtocol

private enum AnyFrame {
    case client(ClientFrame)
    case server(ServerFrame)
}

/// Keeps raw text bytes alive for TextViews that borrow them (TextView(String) could not hold invalid UTF-8).
private final class Arena {
    var blocks: [UnsafeMutableRawBufferPointer] = []
    func text(_ bytes: [UInt8]) -> TextView {
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
        blocks.append(block)
        bytes.withUnsafeBytes { if $0.count > 0 { block.copyMemory(from: $0) } }
        return TextView(validatedBorrowing: UnsafeRawBufferPointer(start: block.baseAddress, count: bytes.count))
    }
    deinit { for b in blocks { b.deallocate() } }
}

/// One text field as the caller passes it (`sent`) and as it goes on the wire (`wire`: cut at 65 535 bytes).
private struct Text {
    let sent: TextView
    let wire: TextView
    subscript(onWire: Bool) -> TextView { onWire ? wire : sent }
}

private let wireStringMax = Int(UInt16.max)

/// Byte sequences at the edges of strict UTF-8 (WireProtocol.md, "Strings"): each class's first and last
/// scalar, around the surrogates, and the forms that must be rejected, including truncated ones.
private let utf8Edges: [[UInt8]] = [
    [0x00], [0x7F], [0xC2, 0x80], [0xDF, 0xBF], [0xE0, 0xA0, 0x80], [0xED, 0x9F, 0xBF], [0xEE, 0x80, 0x80],
    [0xEF, 0xBF, 0xBF], [0xF0, 0x90, 0x80, 0x80], [0xF4, 0x8F, 0xBF, 0xBF],
    [0x80], [0xBF], [0xC0, 0x80], [0xC1, 0xBF], [0xE0, 0x80, 0x80], [0xE0, 0x9F, 0xBF], [0xED, 0xA0, 0x80],
    [0xED, 0xBF, 0xBF], [0xF0, 0x80, 0x80, 0x80], [0xF0, 0x8F, 0xBF, 0xBF], [0xF4, 0x90, 0x80, 0x80],
    [0xF5, 0x80, 0x80, 0x80], [0xFF], [0xC2], [0xE0, 0xA0], [0xF0, 0x90, 0x80], [0xC2, 0xC2, 0x80], [0xE1, 0x80, 0xC0],
]

private struct Generator {
    var input: FuzzInput
    let arena = Arena()
    /// The error the decoder must report for the frame being built (first bad field in wire order).
    var problem: ErrorCode?

    mutating func u8() -> UInt8 { input.byte() }
    mutating func u16() -> UInt16 { input.integer() }
    mutating func u32() -> UInt32 { input.integer() }
    mutating func u64() -> UInt64 { input.integer() }
    mutating func bool() -> Bool { input.bool() }

    /// A valid scalar from one of the four UTF-8 length classes.
    mutating func scalar() -> Unicode.Scalar {
        let c = u8()
        switch c % 4 {
        case 0: return Unicode.Scalar(c >> 1)
        case 1: return Unicode.Scalar(UInt32(0x80) + UInt32(u16()) % 0x780)!
        case 2:
            let v = UInt32(0x800) + UInt32(u16()) % 0xF800
            return Unicode.Scalar(v) ?? Unicode.Scalar(v + 0x800)!  // surrogates move up into U+E000...
        default: return Unicode.Scalar(UInt32(0x10000) + u32() % 0x10_0000)!
        }
    }

    mutating func validText(maxScalars: Int) -> [UInt8] {
        var s = String.UnicodeScalarView()
        for _ in 0..<Int(u8()) % (maxScalars + 1) { s.append(scalar()) }
        return Array(String(s).utf8)
    }

    /// Text bytes: mostly valid, sometimes raw, sometimes long around `limit` or the encoder's cut.
    mutating func textBytes(limit: Int) -> [UInt8] {
        let mode = u8()
        switch mode % 64 {
        case 0...47: return validText(maxScalars: 24)
        case 48...55: return input.take(Int(u8()) % 64)
        case 56...62:
            // Pieces at the edges of strict UTF-8, valid and not, between valid scalars.
            var bytes: [UInt8] = []
            for _ in 0..<1 + Int(u8()) % 6 {
                let p = u8()
                if p & 0x80 != 0 { bytes += Array(String(scalar()).utf8) }
                else { bytes += utf8Edges[Int(p) % utf8Edges.count] }
            }
            return bytes
        default:
            let lengths = [limit - 1, limit, limit + 1, wireStringMax - 1, wireStringMax, wireStringMax + 1, wireStringMax + 3]
            let length = lengths[Int(u8()) % lengths.count]
            var unit = Array(String(scalar()).utf8)
            if mode & 0x40 != 0 { unit.insert(0x61, at: 0) }  // shifts where a multi-byte unit is cut
            var bytes: [UInt8] = []
            bytes.reserveCapacity(length + unit.count)
            while bytes.count < length { bytes += unit }
            return Array(bytes.prefix(length))
        }
    }

    /// A text field with the decoder's byte limit for it (client fields have their own; others only the u16).
    mutating func text(limit: Int = wireStringMax) -> Text {
        let bytes = textBytes(limit: limit)
        let wire = Array(bytes.prefix(wireStringMax))
        if problem == nil {
            if wire.count > limit { problem = .malformedFrame }
            else if !wire.withUnsafeBytes({ stdlibValidUTF8($0) }) { problem = .invalidUTF8 }
        }
        let sentView = arena.text(bytes)
        return Text(sent: sentView, wire: bytes.count == wire.count ? sentView : arena.text(wire))
    }

    mutating func body() -> ByteView {
        let mode = u8()
        if mode % 64 == 63 {
            let length = Int(u16()) + Int(u8() % 8) * 1000
            return ByteView([UInt8](repeating: mode, count: length))
        }
        return ByteView(input.take(Int(mode)))
    }

    mutating func contact() -> ContactInfo {
        ContactInfo(userID: u32(), name: String(decoding: validText(maxScalars: 12), as: UTF8.self),
                    relation: ContactRelation(rawValue: u8() % 4)!, online: bool())
    }

    /// The next frame: what the caller encodes, and what must come back (texts as the encoder cuts them).
    mutating func frame() -> (AnyFrame, AnyFrame) {
        problem = nil
        let name = 255  // name in REGISTER, LOGIN and CONTACT_*
        let make: (Bool) -> AnyFrame
        switch u8() % 30 {
        case 0:
            let v = u16(), a = text(limit: 256)
            make = { .client(.hello(version: v, agent: a[$0])) }
        case 1:
            let r = u32(), n = text(limit: name), p = text(limit: ProtocolConstants.maxPasswordBytes)
            make = { .client(.register(requestID: r, name: n[$0], password: p[$0])) }
        case 2:
            let r = u32(), n = text(limit: name), p = text(limit: ProtocolConstants.maxPasswordBytes)
            make = { .client(.login(requestID: r, name: n[$0], password: p[$0])) }
        case 3: let r = u32(), n = text(limit: name); make = { .client(.contactAdd(requestID: r, name: n[$0])) }
        case 4: let r = u32(), n = text(limit: name); make = { .client(.contactAccept(requestID: r, name: n[$0])) }
        case 5: let r = u32(), n = text(limit: name); make = { .client(.contactRemove(requestID: r, name: n[$0])) }
        case 6: let r = u32(); make = { _ in .client(.listContacts(requestID: r)) }
        case 7: let r = u32(), c = u32(); make = { _ in .client(.openChat(requestID: r, contact: c)) }
        case 8: let t = u32(), m = u64(), b = body(); make = { _ in .client(.send(to: t, messageID: m, body: b)) }
        case 9: let s = u64(); make = { _ in .client(.deliveryAck(throughSeq: s)) }
        case 10: let s = u64(); make = { _ in .client(.mailAck(throughSeq: s)) }
        case 11: let t = u64(); make = { _ in .client(.ping(token: t)) }
        case 12: let t = u64(); make = { _ in .client(.pong(token: t)) }
        case 13:
            let v = u16()
            let limits = ServerLimits(maxFrameBytes: u32(), maxFrameBytesBeforeLogin: u32(), loginTimeoutMs: u32(),
                                      idleTimeoutMs: u32(), pingIntervalMs: u32(), mailboxMaxMessages: u32(), mailboxMaxBytes: u64())
            let n = text()
            make = { .server(.welcome(Welcome(version: v, limits: limits, serverName: n[$0]))) }
        case 14: let r = u32(); make = { _ in .server(.ok(requestID: r)) }
        case 15: let r = u32(), c = u16(), m = text(); make = { .server(.error(requestID: r, code: c, message: m[$0])) }
        case 16:
            let r = u32(), u = u32(), n = text(), a = text(), p = u32()
            make = { .server(.loginOK(requestID: r, userID: u, name: n[$0], address: a[$0], pendingMail: p)) }
        case 17:
            let r = u32(), f = bool()
            let contacts = (0..<Int(u8() % 8)).map { _ in contact() }
            make = { _ in .server(.contactList(requestID: r, final: f, contacts: contacts)) }
        case 18: let u = u32(), o = bool(); make = { _ in .server(.presence(userID: u, online: o)) }
        case 19: let c = contact(); make = { _ in .server(.contactUpdate(contact: c)) }
        case 20:
            let r = u32(), u = u32(), o = bool(), t = text()
            make = { .server(.chatStatus(requestID: r, userID: u, online: o, text: t[$0])) }
        case 21:
            let s = u64(), f = u32(), m = u64(), at = u64(), b = body()
            make = { _ in .server(.deliver(seq: s, from: f, messageID: m, sentAtMs: at, body: b)) }
        case 22: let m = u64(), s = u8(); make = { _ in .server(.sendAck(messageID: m, status: s)) }
        case 23: let m = u64(), c = u16(), t = text(); make = { .server(.sendError(messageID: m, code: c, message: t[$0])) }
        case 24:
            let s = u64(), f = u32(), n = text(), m = u64(), at = u64(), b = body()
            make = { .server(.mail(seq: s, from: f, fromName: n[$0], messageID: m, sentAtMs: at, body: b)) }
        case 25: let c = u32(); make = { _ in .server(.mailEnd(count: c)) }
        case 26: let t = u64(); make = { _ in .server(.ping(token: t)) }
        case 27:
            let r = u32(), n = text(limit: name), p = text(limit: ProtocolConstants.maxPasswordBytes)
            let d = text(limit: ProtocolConstants.maxDeviceIDBytes), dn = text(limit: ProtocolConstants.maxDeviceNameBytes)
            make = { .client(.loginDevice(requestID: r, name: n[$0], password: p[$0], deviceID: d[$0], deviceName: dn[$0])) }
        case 28:
            let t = u32(), m = u64(), at = u64(), b = body()
            make = { _ in .server(.sentCopy(to: t, messageID: m, sentAtMs: at, body: b)) }
        default: let t = u64(); make = { _ in .server(.pong(token: t)) }
        }
        return (make(false), make(true))
    }
}

// MARK: the spec, byte by byte (WireProtocol.md's tables, independent of Encoder.swift)

private struct SpecWriter {
    var body: [UInt8] = []
    mutating func u8(_ v: UInt8) { body.append(v) }
    mutating func u16(_ v: UInt16) { body += [UInt8(v >> 8), UInt8(v & 0xFF)] }
    mutating func u32(_ v: UInt32) { for s in stride(from: 24, through: 0, by: -8) { body.append(UInt8((v >> UInt32(s)) & 0xFF)) } }
    mutating func u64(_ v: UInt64) { for s in stride(from: 56, through: 0, by: -8) { body.append(UInt8((v >> UInt64(s)) & 0xFF)) } }
    mutating func bool(_ v: Bool) { u8(v ? 1 : 0) }
    mutating func string(_ bytes: [UInt8]) { u16(UInt16(bytes.count)); body += bytes }
    mutating func string(_ t: TextView) { string(t.bytes.array) }
    mutating func rest(_ b: ByteView) { body += b.array }
    mutating func contact(_ c: ContactInfo) { u32(c.userID); string(Array(c.name.utf8)); u8(c.relation.rawValue); bool(c.online) }

    func frame(_ type: UInt8) -> [UInt8] {
        var w = SpecWriter()
        w.u32(UInt32(1 + body.count)); w.u8(type)
        return w.body + body
    }
}

private func spec(_ frame: AnyFrame) -> [UInt8] {
    var w = SpecWriter()
    switch frame {
    case .client(let f):
        switch f {
        case .hello(let v, let a): w.u32(0x5357_4244); w.u16(v); w.string(a); return w.frame(0x01)
        case .register(let r, let n, let p): w.u32(r); w.string(n); w.string(p); return w.frame(0x02)
        case .login(let r, let n, let p): w.u32(r); w.string(n); w.string(p); return w.frame(0x03)
        case .contactAdd(let r, let n): w.u32(r); w.string(n); return w.frame(0x04)
        case .contactAccept(let r, let n): w.u32(r); w.string(n); return w.frame(0x05)
        case .contactRemove(let r, let n): w.u32(r); w.string(n); return w.frame(0x06)
        case .openChat(let r, let c): w.u32(r); w.u32(c); return w.frame(0x07)
        case .send(let t, let m, let b): w.u32(t); w.u64(m); w.rest(b); return w.frame(0x08)
        case .deliveryAck(let s): w.u64(s); return w.frame(0x09)
        case .mailAck(let s): w.u64(s); return w.frame(0x0A)
        case .ping(let t): w.u64(t); return w.frame(0x0B)
        case .pong(let t): w.u64(t); return w.frame(0x0C)
        case .listContacts(let r): w.u32(r); return w.frame(0x0D)
        case .loginDevice(let r, let n, let p, let d, let dn):
            w.u32(r); w.string(n); w.string(p); w.string(d); w.string(dn); return w.frame(0x0E)
        }
    case .server(let f):
        switch f {
        case .welcome(let x):
            w.u16(x.version); w.u32(x.limits.maxFrameBytes); w.u32(x.limits.maxFrameBytesBeforeLogin)
            w.u32(x.limits.loginTimeoutMs); w.u32(x.limits.idleTimeoutMs); w.u32(x.limits.pingIntervalMs)
            w.u32(x.limits.mailboxMaxMessages); w.u64(x.limits.mailboxMaxBytes)
            check(w.body.count == 34, "WELCOME has 34 bytes of fixed fields")
            w.string(x.serverName); return w.frame(0x40)
        case .ok(let r): w.u32(r); return w.frame(0x41)
        case .error(let r, let c, let m): w.u32(r); w.u16(c); w.string(m); return w.frame(0x42)
        case .loginOK(let r, let u, let n, let a, let p): w.u32(r); w.u32(u); w.string(n); w.string(a); w.u32(p); return w.frame(0x43)
        case .contactList(let r, let fin, let cs):
            w.u32(r); w.bool(fin); w.u16(UInt16(cs.count)); for c in cs { w.contact(c) }; return w.frame(0x44)
        case .presence(let u, let o): w.u32(u); w.bool(o); return w.frame(0x45)
        case .contactUpdate(let c): w.contact(c); return w.frame(0x46)
        case .chatStatus(let r, let u, let o, let t): w.u32(r); w.u32(u); w.bool(o); w.string(t); return w.frame(0x47)
        case .deliver(let s, let fr, let m, let at, let b): w.u64(s); w.u32(fr); w.u64(m); w.u64(at); w.rest(b); return w.frame(0x48)
        case .sendAck(let m, let s): w.u64(m); w.u8(s); return w.frame(0x49)
        case .mail(let s, let fr, let n, let m, let at, let b):
            w.u64(s); w.u32(fr); w.string(n); w.u64(m); w.u64(at); w.rest(b); return w.frame(0x4A)
        case .mailEnd(let c): w.u32(c); return w.frame(0x4B)
        case .sendError(let m, let c, let t): w.u64(m); w.u16(c); w.string(t); return w.frame(0x4C)
        case .ping(let t): w.u64(t); return w.frame(0x4D)
        case .pong(let t): w.u64(t); return w.frame(0x4E)
        case .sentCopy(let t, let m, let at, let b): w.u32(t); w.u64(m); w.u64(at); w.rest(b); return w.frame(0x4F)
        }
    }
}

// MARK: decoding and comparing

private enum Outcome: Equatable {
    case client(ClientFrame, consumed: Int)
    case server(ServerFrame, consumed: Int)
    case needMore
    case failure(ErrorCode)
}

private func decode(_ bytes: UnsafeRawBufferPointer, asClient: Bool, maxFrameBytes: Int = Int(UInt32.max)) -> Outcome {
    if asClient {
        switch FrameDecoder.decodeClient(bytes, maxFrameBytes: maxFrameBytes) {
        case .frame(let f, let n): return .client(f.owned(), consumed: n)
        case .needMore: return .needMore
        case .failure(let e): return .failure(e.code)
        }
    }
    switch FrameDecoder.decodeServer(bytes, maxFrameBytes: maxFrameBytes) {
    case .frame(let f, let n): return .server(f.owned(), consumed: n)
    case .needMore: return .needMore
    case .failure(let e): return .failure(e.code)
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func roundtripFuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var g = Generator(input: FuzzInput(fuzzBytes(data, size)))

    // The output buffer's state before the frames: capacity, bytes already there, some read, some retained.
    let out = ByteBuffer(capacity: Int(g.u8()) * 4)
    let junk = Int(g.u16() % 600)
    out.writeBytes([UInt8](repeating: 0xEE, count: junk))
    let read = min(junk, Int(g.u16() % 600))
    out.moveReaderIndex(forwardBy: read)
    let retainFlags = g.u8()
    if retainFlags & 1 == 1 { out.retain(from: out.readerIndex - min(out.readerIndex, Int(retainFlags >> 1))) }

    var frames: [(expected: AnyFrame, problem: ErrorCode?, start: UInt64, end: UInt64)] = []
    for _ in 0...Int(g.u8() % 4) {
        let (sent, expected) = g.frame()
        let start = out.streamPosition(ofIndex: out.writerIndex)
        switch sent {
        case .client(let f): FrameEncoder.encode(f, into: out)
        case .server(let f): FrameEncoder.encode(f, into: out)
        }
        frames.append((expected, g.problem, start, out.streamPosition(ofIndex: out.writerIndex)))
    }

    for (expected, problem, start, end) in frames {
        let bytes = out.view(from: out.index(ofStreamPosition: start), to: out.index(ofStreamPosition: end))
        check(bytes.elementsEqual(spec(expected)), "encoding of \(expected) differs from the spec's bytes")
        let asClient: Bool
        let want: Outcome
        switch expected {
        case .client(let f): asClient = true; want = problem.map { .failure($0) } ?? .client(f, consumed: bytes.count)
        case .server(let f): asClient = false; want = problem.map { .failure($0) } ?? .server(f, consumed: bytes.count)
        }
        let got = decode(bytes, asClient: asClient)
        check(got == want, "decoded \(got), expected \(want)")

        // Not one byte early: every strict prefix waits for more (all of them for small frames).
        let prefixes = bytes.count <= 4096 ? Array(0..<bytes.count) : [0, 3, 4, 5, bytes.count / 2, bytes.count - 1]
        for k in prefixes {
            check(decode(UnsafeRawBufferPointer(rebasing: bytes[0..<k]), asClient: asClient) == .needMore, "prefix of \(k) bytes")
        }
        let length = bytes.count - 4
        check(decode(bytes, asClient: asClient, maxFrameBytes: length - 1) == .failure(.frameTooLarge), "limit length - 1")
        check(decode(bytes, asClient: asClient, maxFrameBytes: length) == want, "limit = length")
        // The other direction never accepts the frame.
        check(decode(bytes, asClient: !asClient) == .failure(.unknownFrameType), "the other direction's decoder")
    }

    // The whole buffer decodes as the sequence of frames (up to the first bad one), as a stream would.
    if let first = frames.first {
        var offset = out.index(ofStreamPosition: first.start)
        for (expected, problem, start, end) in frames {
            check(out.index(ofStreamPosition: start) == offset, "frames are contiguous")
            let rest = out.view(from: offset, to: out.writerIndex)
            let asClient: Bool
            if case .client = expected { asClient = true } else { asClient = false }
            let got = decode(rest, asClient: asClient)
            if let problem { check(got == .failure(problem), "stream: \(got)"); break }
            switch got {
            case .client(_, let n), .server(_, let n): check(n == Int(end - start), "stream: consumed \(n)")
            default: fatalError("fuzz invariant: stream: \(got)")
            }
            offset += Int(end - start)
        }
    }
    return 0
}
