// Fuzz target `decoder`: arbitrary bytes into FrameDecoder, as a connection would feed them.
//
// Input layout (every input is usable; missing bytes read as 0):
//   byte 0      bit 0: direction (0 = client frames, decodeClient; 1 = server frames, decodeServer)
//               bits 1-4: index into `limits` (the receiver's max frame length, small ones included)
//   byte 1      k = byte % 8: how many chunk-size bytes follow
//   k bytes     chunk sizes for the chunked feed, used in turn (0 = a read that brought nothing)
//   rest        the byte stream
//
// The stream is decoded three ways: in one piece (an exactly sized copy, so AddressSanitizer sees any
// read past the input), one byte at a time and in the input's chunk sizes (both through a ByteBuffer
// like RelayServer/ChatConnection). All three must give the same frames and the same final error or
// leftover. Every step is checked against the framing rules of WireProtocol.md, every frame is
// re-decoded from an exactly sized copy of its own bytes (a read past the frame's length traps in ASan),
// its views must lie inside its body, and it must re-encode to bytes that decode to an equal frame.

import SwitchboardIO
import SwitchboardProtocol

private let limits: [Int] = [0, 1, 4, 5, 8, 9, 13, 16, 32, 64, 255, 1024, 8192, 65_536, 1 << 20, Int(UInt32.max)]

private enum End: Equatable {
    case needMore(pending: Int)
    case failure(ProtocolError)
}

private struct Trace<Frame: Equatable>: Equatable {
    var frames: [Frame] = []
    var end: End = .needMore(pending: 0)
}

/// The framing rules, written from the spec rather than from Decoder.swift.
private enum Framing {
    case needMore
    case zeroLength
    case tooLarge
    case whole(length: Int)

    init(_ input: UnsafeRawBufferPointer, maxFrameBytes: Int) {
        guard input.count >= 4 else { self = .needMore; return }
        let length = input[0..<4].reduce(0) { $0 << 8 | Int($1) }
        if length == 0 { self = .zeroLength }
        else if length > maxFrameBytes { self = .tooLarge }
        else if input.count < 4 + length { self = .needMore }
        else { self = .whole(length: length) }
    }
}

/// Decodes an exactly sized heap copy of `bytes`, so ASan traps any read outside them; `body` sees the result.
private func withExactCopy<R>(_ bytes: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> R) -> R {
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
    defer { copy.deallocate() }
    if bytes.count > 0 { copy.copyMemory(from: bytes) }
    return body(UnsafeRawBufferPointer(start: copy.baseAddress, count: bytes.count))
}

private func sameResult<D: WireDirection>(_: D.Type, _ a: DecodeResult<D.Frame>, _ b: DecodeResult<D.Frame>) -> Bool {
    switch (a, b) {
    case (.frame(let f, let n), .frame(let g, let m)): return n == m && f == g
    case (.needMore, .needMore): return true
    case (.failure(let e), .failure(let f)): return e == f
    default: return false
    }
}

/// Checks one decoder step at the front of `input`; returns the result in a form the traces can keep.
private func checkStep<D: WireDirection>(_ d: D.Type, _ input: UnsafeRawBufferPointer, _ result: DecodeResult<D.Frame>,
                                         maxFrameBytes: Int) {
    let framing = Framing(input, maxFrameBytes: maxFrameBytes)
    switch result {
    case .needMore:
        guard case .needMore = framing else { fatalError("fuzz invariant: needMore but the framing says \(framing)") }

    case .failure(let error):
        let own: UnsafeRawBufferPointer
        switch framing {
        case .needMore: fatalError("fuzz invariant: failure \(error) before the frame is complete")
        case .zeroLength:
            check(error.code == .malformedFrame, "length 0 gave \(error)")
            own = UnsafeRawBufferPointer(rebasing: input[0..<4])
        case .tooLarge:
            check(error.code == .frameTooLarge, "a length over \(maxFrameBytes) gave \(error)")
            own = UnsafeRawBufferPointer(rebasing: input[0..<4])
        case .whole(let length):
            let type = input[4]
            if D.accepts(type: type) {
                check([.malformedFrame, .invalidUTF8].contains(error.code), "\(D.name) frame type \(type) gave \(error)")
            } else {
                check(error.code == .unknownFrameType, "\(D.name) got type \(type) and gave \(error)")
            }
            own = UnsafeRawBufferPointer(rebasing: input[0..<4 + length])
        }
        // The same error from only the bytes the frame owns: nothing after them was looked at.
        let same = withExactCopy(own) { sameResult(d, result, D.decode($0, maxFrameBytes: maxFrameBytes)) }
        check(same, "failure \(error) changes when the frame's own bytes are decoded alone")

    case .frame(let frame, let consumed):
        guard case .whole(let length) = framing else { fatalError("fuzz invariant: a frame but the framing says \(framing)") }
        check(consumed == 4 + length, "consumed \(consumed) for a frame of length \(length)")
        check(D.accepts(type: input[4]), "\(D.name) decoded type \(input[4])")
        let own = UnsafeRawBufferPointer(rebasing: input[0..<consumed])

        // Views borrow the frame's body and nothing else.
        let body = UnsafeRawBufferPointer(rebasing: own[5...])
        for view in D.views(frame) {
            view.withUnsafeBytes { v in
                guard v.count > 0 else { return }
                let lo = body.baseAddress!, hi = lo + body.count
                check(v.baseAddress! >= lo && v.baseAddress! + v.count <= hi, "a view of \(v.count) bytes lies outside the body")
            }
        }

        // (Compared inside: the copy's frame borrows the copy.)
        let same = withExactCopy(own) { sameResult(d, result, D.decode($0, maxFrameBytes: maxFrameBytes)) }
        check(same, "the frame changes when its own bytes are decoded alone")

        // Re-encoding: the same length, the same bytes unless a bool was not 0/1, and a fixed point after that.
        let out = ByteBuffer()
        D.encode(frame, into: out)
        let encoded = out.readableView
        check(encoded.count == consumed, "re-encoded to \(encoded.count) bytes, decoded from \(consumed)")
        if !D.hasBoolField(frame) { check(encoded.elementsEqual(own), "re-encoded bytes differ from the input") }
        guard case .frame(let again, let n) = D.decode(encoded, maxFrameBytes: Int(UInt32.max)) else {
            fatalError("fuzz invariant: the re-encoded frame does not decode")
        }
        check(n == encoded.count && again == frame, "the re-encoded frame decodes to a different frame")
        let out2 = ByteBuffer()
        D.encode(again, into: out2)
        check(out2.readableView.elementsEqual(encoded), "encoding is not a fixed point after one round")
    }
}

/// The whole stream at once, from an exactly sized copy.
private func decodeWhole<D: WireDirection>(_ d: D.Type, _ stream: UnsafeRawBufferPointer, maxFrameBytes: Int) -> Trace<D.Frame> {
    withExactCopy(stream) { input in
        var trace = Trace<D.Frame>()
        var offset = 0
        while true {
            let rest = UnsafeRawBufferPointer(rebasing: input[offset...])
            let result = D.decode(rest, maxFrameBytes: maxFrameBytes)
            checkStep(d, rest, result, maxFrameBytes: maxFrameBytes)
            switch result {
            case .frame(let f, let consumed):
                trace.frames.append(D.owned(f))
                offset += consumed
            case .needMore:
                trace.end = .needMore(pending: rest.count)
                return trace
            case .failure(let e):
                trace.end = .failure(e)
                return trace
            }
        }
    }
}

/// The stream in reads of the given sizes (cycled), through a ByteBuffer the way a connection reads.
private func decodeChunked<D: WireDirection>(_ d: D.Type, _ stream: UnsafeRawBufferPointer, sizes: [Int],
                                             maxFrameBytes: Int) -> Trace<D.Frame> {
    var trace = Trace<D.Frame>()
    let buffer = ByteBuffer()
    var offset = 0
    var turn = 0
    while true {
        let n = min(sizes[turn % sizes.count], stream.count - offset)
        turn += 1
        if n > 0 {
            let region = buffer.writableRegion(minimum: n)
            region.copyMemory(from: UnsafeRawBufferPointer(rebasing: stream[offset..<offset + n]))
            buffer.didWrite(n)
            offset += n
        }
        drain: while true {
            let view = buffer.readableView
            let result = D.decode(view, maxFrameBytes: maxFrameBytes)
            checkStep(d, view, result, maxFrameBytes: maxFrameBytes)
            switch result {
            case .frame(let f, let consumed):
                trace.frames.append(D.owned(f))
                buffer.moveReaderIndex(forwardBy: consumed)
            case .needMore:
                break drain
            case .failure(let e):
                trace.end = .failure(e)
                return trace
            }
        }
        if offset == stream.count {
            trace.end = .needMore(pending: buffer.readableBytes)
            return trace
        }
    }
}

private func run<D: WireDirection>(_ d: D.Type, _ stream: UnsafeRawBufferPointer, sizes: [Int], maxFrameBytes: Int) {
    let whole = decodeWhole(d, stream, maxFrameBytes: maxFrameBytes)
    let bytewise = decodeChunked(d, stream, sizes: [1], maxFrameBytes: maxFrameBytes)
    check(bytewise == whole, "\(D.name): byte by byte \(bytewise) != in one piece \(whole)")
    let chunked = decodeChunked(d, stream, sizes: sizes, maxFrameBytes: maxFrameBytes)
    check(chunked == whole, "\(D.name): in chunks \(sizes) \(chunked) != in one piece \(whole)")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func decoderFuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(fuzzBytes(data, size))
    let flags = input.byte()
    let maxFrameBytes = limits[Int(flags >> 1) & 15]
    var sizes = (0..<Int(input.byte() % 8)).map { _ in Int(input.byte()) }
    if sizes.allSatisfy({ $0 == 0 }) { sizes.append(7) }  // reads that bring nothing, then some progress
    let stream = input.rest()

    check(UTF8Validation.isValid(stream) == stdlibValidUTF8(stream),
          "UTF8Validation says \(UTF8Validation.isValid(stream)) for \(Array(stream.prefix(64)))")

    if flags & 1 == 0 {
        run(ClientToServer.self, stream, sizes: sizes, maxFrameBytes: maxFrameBytes)
    } else {
        run(ServerToClient.self, stream, sizes: sizes, maxFrameBytes: maxFrameBytes)
    }
    return 0
}
