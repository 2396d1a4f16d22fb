// The body every load message carries: a 32-byte header (sequence number, send time, pair, run id,
// check word over those four) followed by a fixed filler pattern. The receiver verifies the check
// word and compares the filler byte for byte, so a corrupted, misrouted or truncated body is caught.
// Layout (big-endian): seq u64 | sentNs u64 | pair u32 | run u32 | check u64 | filler.
import Glibc
import SwitchboardIO
import SwitchboardProtocol

enum Payload {
    static let headerBytes = 32

    @inline(__always)
    static func check(seq: UInt64, sentNs: UInt64, pair: UInt32, run: UInt32) -> UInt64 {
        // splitmix64-style mixing: cheap, and any single-field change flips about half the bits.
        var h = seq &* 0x9E37_79B9_7F4A_7C15
        h ^= sentNs &+ 0x632B_E59B_D9B4_E019
        h = (h ^ (h >> 29)) &* 0xBF58_476D_1CE4_E5B9
        h ^= UInt64(pair) << 32 | UInt64(run)
        h = (h ^ (h >> 32)) &* 0x94D0_49BB_1331_11EB
        return h ^ (h >> 31)
    }

    /// The filler for a payload of `payloadBytes` total bytes.
    static func filler(payloadBytes: Int) -> UnsafeMutableRawBufferPointer {
        let count = max(0, payloadBytes - headerBytes)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 16)
        for i in 0..<count { buffer[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        return UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
    }

    /// Appends one SEND frame (to, message id = seq, body) straight into `out`: no temporary.
    @inline(__always)
    static func writeSend(into out: ByteBuffer, to: UInt32, seq: UInt64, sentNs: UInt64, pair: UInt32, run: UInt32,
                          filler: UnsafeRawBufferPointer) {
        // Message ids must be unique per sender across runs (the server remembers recent ids and
        // stored-mail ids for days): the run id goes in the high half.
        let messageID = messageID(run: run, seq: seq)
        let frameLength = 1 + 4 + 8 + headerBytes + filler.count
        out.reserveWritable(4 + frameLength)
        let p = out.base! + out.writerIndex
        p.storeBytes(of: UInt32(frameLength).bigEndian, as: UInt32.self)
        p.storeBytes(of: FrameType.send.rawValue, toByteOffset: 4, as: UInt8.self)
        p.storeBytes(of: to.bigEndian, toByteOffset: 5, as: UInt32.self)
        p.storeBytes(of: messageID.bigEndian, toByteOffset: 9, as: UInt64.self)
        p.storeBytes(of: seq.bigEndian, toByteOffset: 17, as: UInt64.self)
        p.storeBytes(of: sentNs.bigEndian, toByteOffset: 25, as: UInt64.self)
        p.storeBytes(of: pair.bigEndian, toByteOffset: 33, as: UInt32.self)
        p.storeBytes(of: run.bigEndian, toByteOffset: 37, as: UInt32.self)
        p.storeBytes(of: check(seq: seq, sentNs: sentNs, pair: pair, run: run).bigEndian, toByteOffset: 41, as: UInt64.self)
        if filler.count > 0 { (p + 49).copyMemory(from: filler.baseAddress!, byteCount: filler.count) }
        out.didWrite(4 + frameLength)
    }

    /// Writes the body alone (header + filler, `headerBytes + filler.count` bytes) at `p`: peer adapters
    /// put it inside their own publish framing.
    @inline(__always)
    static func writeBody(at p: UnsafeMutableRawPointer, seq: UInt64, sentNs: UInt64, pair: UInt32, run: UInt32,
                          filler: UnsafeRawBufferPointer) {
        p.storeBytes(of: seq.bigEndian, as: UInt64.self)
        p.storeBytes(of: sentNs.bigEndian, toByteOffset: 8, as: UInt64.self)
        p.storeBytes(of: pair.bigEndian, toByteOffset: 16, as: UInt32.self)
        p.storeBytes(of: run.bigEndian, toByteOffset: 20, as: UInt32.self)
        p.storeBytes(of: check(seq: seq, sentNs: sentNs, pair: pair, run: run).bigEndian, toByteOffset: 24, as: UInt64.self)
        if filler.count > 0 { (p + headerBytes).copyMemory(from: filler.baseAddress!, byteCount: filler.count) }
    }

    @inline(__always) static func messageID(run: UInt32, seq: UInt64) -> UInt64 { UInt64(run) << 32 | (seq & 0xFFFF_FFFF) }

    struct Header {
        var seq: UInt64
        var sentNs: UInt64
        var pair: UInt32
        var run: UInt32
    }

    enum Verdict { case ok(Header), corrupt, otherRun(Header) }

    /// Checks a received body against the header's check word and the filler.
    @inline(__always)
    static func verify(_ body: UnsafeRawBufferPointer, run: UInt32, filler: UnsafeRawBufferPointer) -> Verdict {
        guard body.count == headerBytes + filler.count else { return .corrupt }
        let h = Header(seq: be(body, 0), sentNs: be(body, 8), pair: be(body, 16), run: be(body, 20))
        let check: UInt64 = be(body, 24)
        guard check == Payload.check(seq: h.seq, sentNs: h.sentNs, pair: h.pair, run: h.run) else { return .corrupt }
        if filler.count > 0 && memcmpRaw(body.baseAddress! + headerBytes, filler.baseAddress!, filler.count) != 0 { return .corrupt }
        return h.run == run ? .ok(h) : .otherRun(h)
    }
}

@inline(__always) func be<T: FixedWidthInteger>(_ bytes: UnsafeRawBufferPointer, _ offset: Int) -> T {
    T(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
}

@inline(__always) func memcmpRaw(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> Int32 {
    memcmp(a, b, n)
}
