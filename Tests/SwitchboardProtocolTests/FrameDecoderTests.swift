// Decoder tests: any split of a stream gives the same frames, bad input fails with the right error code
// (never a crash, never a wait for bytes that cannot make the frame valid), and random bytes are survived.

import SwitchboardIO
import SwitchboardProtocol
import Testing

/// Decodes everything decodable from `buffer` like a connection does after each read, consuming what it used.
private func drainClient(_ buffer: ByteBuffer, into frames: inout [ClientFrame]) {
    while true {
        switch FrameDecoder.decodeClient(buffer.readableView, maxFrameBytes: testMaxFrame) {
        case .frame(let f, let consumed):
            frames.append(f.owned())
            buffer.moveReaderIndex(forwardBy: consumed)
        case .needMore: return
        case .failure(let e): Issue.record("unexpected failure \(e)"); return
        }
    }
}

private func drainServer(_ buffer: ByteBuffer, into frames: inout [ServerFrame]) {
    while true {
        switch FrameDecoder.decodeServer(buffer.readableView, maxFrameBytes: testMaxFrame) {
        case .frame(let f, let consumed):
            frames.append(f.owned())
            buffer.moveReaderIndex(forwardBy: consumed)
        case .needMore: return
        case .failure(let e): Issue.record("unexpected failure \(e)"); return
        }
    }
}

private func feed(_ buffer: ByteBuffer, _ bytes: ArraySlice<UInt8>) {
    bytes.withUnsafeBytes { buffer.writeBytes($0) }
}

@Suite struct FrameDecoderSplitTests {
    let clientStream = clientSamples + clientSamples.reversed()
    let serverStream = serverSamples + serverSamples.reversed()

    @Test func everySplitPointOfAClientStream() {
        let bytes = encode(clientStream)
        for k in 0...bytes.count {
            let buffer = ByteBuffer()
            var frames: [ClientFrame] = []
            feed(buffer, bytes[0..<k]); drainClient(buffer, into: &frames)
            feed(buffer, bytes[k...]); drainClient(buffer, into: &frames)
            #expect(frames == clientStream, "split at \(k)")
            #expect(buffer.readableBytes == 0)
        }
    }

    @Test func everySplitPointOfAServerStream() {
        let bytes = encode(serverStream)
        for k in 0...bytes.count {
            let buffer = ByteBuffer()
            var frames: [ServerFrame] = []
            feed(buffer, bytes[0..<k]); drainServer(buffer, into: &frames)
            feed(buffer, bytes[k...]); drainServer(buffer, into: &frames)
            #expect(frames == serverStream, "split at \(k)")
            #expect(buffer.readableBytes == 0)
        }
    }

    @Test func oneByteAtATime() {
        let client = encode(clientStream)
        let clientBuffer = ByteBuffer()
        var clientFrames: [ClientFrame] = []
        for i in client.indices {
            feed(clientBuffer, client[i...i]); drainClient(clientBuffer, into: &clientFrames)
        }
        #expect(clientFrames == clientStream)

        let server = encode(serverStream)
        let serverBuffer = ByteBuffer()
        var serverFrames: [ServerFrame] = []
        for i in server.indices {
            feed(serverBuffer, server[i...i]); drainServer(serverBuffer, into: &serverFrames)
        }
        #expect(serverFrames == serverStream)
        // Consumed bytes are given back: the buffer never holds more than about one frame, not the whole stream.
        let largest = serverStream.map { encode([$0]).count }.max()!
        #expect(serverBuffer.capacity <= max(256, 2 * largest))
        #expect(clientBuffer.capacity <= 256 * 8)
    }

    @Test(arguments: [11 as UInt64, 12, 13])
    func randomChunksOfALongStream(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var stream: [ServerFrame] = []
        for _ in 0..<2000 { stream.append(serverSamples.randomElement(using: &rng)!) }
        let bytes = encode(stream)
        let buffer = ByteBuffer()
        var frames: [ServerFrame] = []
        var offset = 0
        while offset < bytes.count {
            let n = min(bytes.count - offset, Int.random(in: 1...300, using: &rng))
            feed(buffer, bytes[offset..<offset + n]); offset += n
            drainServer(buffer, into: &frames)
        }
        #expect(frames == stream)
        #expect(buffer.capacity <= 4096, "the input buffer grew with the stream instead of reusing consumed space")
    }
}

@Suite struct FrameDecoderErrorTests {
    @Test func incompleteHeaderNeedsMore() {
        for n in 0..<4 { #expect(decodeClient(Array(repeating: 0, count: n)) == .needMore) }
        #expect(decodeServer([0, 0, 0]) == .needMore)
        // A valid length with the rest still missing.
        #expect(decodeClient([0, 0, 0, 9, 0x0B]) == .needMore)
    }

    @Test func zeroLength() {
        #expect(decodeClient([0, 0, 0, 0]) == .failure(.malformedFrame))
        #expect(decodeServer([0, 0, 0, 0, 0x41]) == .failure(.malformedFrame))
    }

    @Test func lengthOverTheLimitIsRejectedFromThePrefixAlone() {
        // 100 MB announced, only the prefix present: an error now, not a wait for 100 MB.
        #expect(decodeClient([0x06, 0x40, 0x00, 0x00]) == .failure(.frameTooLarge))
        #expect(decodeServer([0x06, 0x40, 0x00, 0x00]) == .failure(.frameTooLarge))
        #expect(decodeClient([0xFF, 0xFF, 0xFF, 0xFF]) == .failure(.frameTooLarge))
        // The pre-login limit: 8193 with a limit of 8192.
        #expect(decodeClient([0x00, 0x00, 0x20, 0x01], maxFrameBytes: 8192) == .failure(.frameTooLarge))
        #expect(decodeClient([0x00, 0x00, 0x20, 0x00], maxFrameBytes: 8192) == .needMore)
        // Exactly at the limit is a frame.
        let ping = rawFrame(0x0B, be(UInt64(1)))
        #expect(decodeClient(ping, maxFrameBytes: 9) == .frame(.ping(token: 1), consumed: 13))
        #expect(decodeClient(ping, maxFrameBytes: 8) == .failure(.frameTooLarge))
    }

    @Test(arguments: [0x00 as UInt8, 0x0F, 0x3F, 0x99, 0xFF])
    func unknownClientType(_ type: UInt8) {
        #expect(decodeClient(rawFrame(type, [])) == .failure(.unknownFrameType))
        #expect(decodeClient(rawFrame(type, be(UInt64(1)))) == .failure(.unknownFrameType))
    }

    @Test func serverFramesAreNotClientFrames() {
        for frame in serverSamples {
            #expect(decodeClient(encode([frame])) == .failure(.unknownFrameType), "\(frame)")
        }
        for code in FrameType.allCases where code.rawValue >= 0x40 {
            #expect(decodeClient(rawFrame(code.rawValue, [])) == .failure(.unknownFrameType))
        }
    }

    @Test func clientFramesAreNotServerFrames() {
        for frame in clientSamples {
            #expect(decodeServer(encode([frame])) == .failure(.unknownFrameType), "\(frame)")
        }
        for type: UInt8 in [0x00, 0x3F, 0x50, 0x7F, 0x80, 0xFF] {
            #expect(decodeServer(rawFrame(type, [])) == .failure(.unknownFrameType))
        }
    }

    @Test func stringOverrunsTheFrame() {
        // LOGIN: name announces 200 bytes, 3 present.
        #expect(decodeClient(rawFrame(0x03, be(UInt32(1)) + be(UInt16(200)) + Array("bob".utf8))) == .failure(.malformedFrame))
        // Length field itself cut in half.
        #expect(decodeClient(rawFrame(0x04, be(UInt32(1)) + [0x00])) == .failure(.malformedFrame))
        // ERROR message overruns.
        #expect(decodeServer(rawFrame(0x42, be(UInt32(1)) + be(UInt16(5)) + be(UInt16(10)) + [0x41])) == .failure(.malformedFrame))
        // Second string (password) missing entirely.
        #expect(decodeClient(rawFrame(0x02, be(UInt32(1)) + wireString("alice"))) == .failure(.malformedFrame))
    }

    @Test func stringOverItsFieldLimit() {
        let hello = { (agent: Int) in rawFrame(0x01, be(ProtocolConstants.magic) + be(UInt16(1)) + wireString(String(repeating: "a", count: agent))) }
        #expect(decodeClient(hello(256)) == .frame(.hello(version: 1, agent: TextView(String(repeating: "a", count: 256))), consumed: hello(256).count))
        #expect(decodeClient(hello(257)) == .failure(.malformedFrame))
        let add = { (name: Int) in rawFrame(0x04, be(UInt32(1)) + wireString(String(repeating: "n", count: name))) }
        #expect(decodeClient(add(255)) != .failure(.malformedFrame))
        #expect(decodeClient(add(256)) == .failure(.malformedFrame))
        let password = String(repeating: "p", count: ProtocolConstants.maxPasswordBytes + 1)
        #expect(decodeClient(rawFrame(0x03, be(UInt32(1)) + wireString("a") + wireString(password))) == .failure(.malformedFrame))
    }

    @Test func integerFieldOverruns() {
        #expect(decodeClient(rawFrame(0x0B, [1, 2, 3, 4, 5, 6, 7])) == .failure(.malformedFrame))     // PING u64 short
        #expect(decodeClient(rawFrame(0x07, be(UInt32(1)) + [0, 0])) == .failure(.malformedFrame))    // OPEN_CHAT contact
        #expect(decodeClient(rawFrame(0x08, be(UInt32(1)) + [0, 0, 0])) == .failure(.malformedFrame)) // SEND message_id
        #expect(decodeClient(rawFrame(0x0D, [])) == .failure(.malformedFrame))                        // LIST_CONTACTS
        #expect(decodeServer(rawFrame(0x41, [0, 0])) == .failure(.malformedFrame))                     // OK
        #expect(decodeServer(rawFrame(0x49, be(UInt64(1)))) == .failure(.malformedFrame))              // SEND_ACK status
        #expect(decodeServer(rawFrame(0x48, be(UInt64(1)) + be(UInt32(2)))) == .failure(.malformedFrame)) // DELIVER
        #expect(decodeServer(rawFrame(0x40, be(UInt16(1)) + be(UInt32(1)))) == .failure(.malformedFrame)) // WELCOME
    }

    @Test func trailingBytes() {
        #expect(decodeClient(rawFrame(0x0B, be(UInt64(1)) + [0])) == .failure(.malformedFrame))
        #expect(decodeClient(rawFrame(0x0D, be(UInt32(1)) + [0, 0])) == .failure(.malformedFrame))
        #expect(decodeClient(rawFrame(0x04, be(UInt32(1)) + wireString("bob") + [0x62])) == .failure(.malformedFrame))
        #expect(decodeServer(rawFrame(0x4B, be(UInt32(1)) + [0])) == .failure(.malformedFrame))
        #expect(decodeServer(rawFrame(0x45, be(UInt32(1)) + [1, 1])) == .failure(.malformedFrame))
        // Bodies take the rest, so SEND/DELIVER/MAIL never have trailing bytes.
        #expect(decodeClient(rawFrame(0x08, be(UInt32(1)) + be(UInt64(2)) + [9, 9])) == .frame(.send(to: 1, messageID: 2, body: ByteView([9, 9])), consumed: 19))
    }

    static let badUTF8: [[UInt8]] = [
        [0xC0, 0x80],                   // overlong NUL
        [0xC1, 0xBF],                   // overlong
        [0xE0, 0x80, 0x80],             // overlong 3-byte
        [0xE0, 0x9F, 0xBF],             // overlong 3-byte (U+07FF)
        [0xF0, 0x80, 0x80, 0x80],       // overlong 4-byte
        [0xF0, 0x8F, 0xBF, 0xBF],       // overlong 4-byte (U+FFFF)
        [0xED, 0xA0, 0x80],             // surrogate U+D800
        [0xED, 0xBF, 0xBF],             // surrogate U+DFFF
        [0xF4, 0x90, 0x80, 0x80],       // U+110000
        [0xF5, 0x80, 0x80, 0x80],       // lead byte beyond the range
        [0x61, 0xE2, 0x82],             // truncated sequence at the end
        [0xE2, 0x82, 0x61],             // truncated sequence before ASCII
        [0xF0, 0x9F, 0x91],             // truncated emoji
        [0x80],                         // lone continuation byte
        [0xFF],
        [0xFE],
        [0x68, 0x69, 0xFF, 0x68],
    ]

    @Test(arguments: badUTF8)
    func invalidUTF8IsRejected(_ bad: [UInt8]) {
        let hello = rawFrame(0x01, be(ProtocolConstants.magic) + be(UInt16(1)) + wireString(bad))
        #expect(decodeClient(hello) == .failure(.invalidUTF8))
        let login = rawFrame(0x03, be(UInt32(1)) + wireString("alice") + wireString(bad))
        #expect(decodeClient(login) == .failure(.invalidUTF8))
        let error = rawFrame(0x42, be(UInt32(1)) + be(UInt16(5)) + wireString(bad))
        #expect(decodeServer(error) == .failure(.invalidUTF8))
        let contact = rawFrame(0x46, be(UInt32(1)) + wireString(bad) + [3, 1])
        #expect(decodeServer(contact) == .failure(.invalidUTF8))
        let mail = rawFrame(0x4A, be(UInt64(1)) + be(UInt32(2)) + wireString(bad) + be(UInt64(3)) + be(UInt64(4)))
        #expect(decodeServer(mail) == .failure(.invalidUTF8))
    }

    @Test func helloNeedsTheMagic() {
        let agent = be(UInt16(1)) + wireString("x")
        #expect(decodeClient(rawFrame(0x01, be(UInt32(0x5357_4245)) + agent)) == .failure(.malformedFrame))
        #expect(decodeClient(rawFrame(0x01, Array("HTTP".utf8) + agent)) == .failure(.malformedFrame))
        #expect(decodeClient(rawFrame(0x01, agent)) == .failure(.malformedFrame))
        #expect(decodeClient(rawFrame(0x01, [])) == .failure(.malformedFrame))
        // An HTTP request line is not mistaken for a frame either: "GET " is a 1.19 GB length.
        #expect(decodeClient(Array("GET / HTTP/1.1\r\n".utf8)) == .failure(.frameTooLarge))
    }

    @Test func contactListCountOverruns() {
        let header = be(UInt32(1)) + [1]
        let entry = be(UInt32(5)) + wireString("eve") + [3, 0]
        // Count far beyond what the frame holds: rejected before reserving space.
        #expect(decodeServer(rawFrame(0x44, header + be(UInt16(0xFFFF)) + entry)) == .failure(.malformedFrame))
        // Count one more than the entries present.
        #expect(decodeServer(rawFrame(0x44, header + be(UInt16(3)) + entry + entry)) == .failure(.malformedFrame))
        // Count passes the 8-bytes-per-entry check but the entries' names run past the end.
        let longName = be(UInt32(5)) + be(UInt16(40)) + Array("x".utf8) + [3, 0]
        #expect(decodeServer(rawFrame(0x44, header + be(UInt16(1)) + longName)) == .failure(.malformedFrame))
        // Count too small leaves trailing bytes.
        #expect(decodeServer(rawFrame(0x44, header + be(UInt16(1)) + entry + entry)) == .failure(.malformedFrame))
        // The right count decodes.
        let ok = rawFrame(0x44, header + be(UInt16(2)) + entry + entry)
        let eve = ContactInfo(userID: 5, name: "eve", relation: .accepted, online: false)
        #expect(decodeServer(ok) == .frame(.contactList(requestID: 1, final: true, contacts: [eve, eve]), consumed: ok.count))
    }

    @Test func unknownContactRelation() {
        #expect(decodeServer(rawFrame(0x46, be(UInt32(5)) + wireString("eve") + [4, 0])) == .failure(.malformedFrame))
        #expect(decodeServer(rawFrame(0x46, be(UInt32(5)) + wireString("eve") + [0xFF, 0])) == .failure(.malformedFrame))
    }

    @Test func nonZeroFlagsReadAsTrue() {
        let presence = rawFrame(0x45, be(UInt32(1)) + [0x80])
        #expect(decodeServer(presence) == .frame(.presence(userID: 1, online: true), consumed: presence.count))
        let list = rawFrame(0x44, be(UInt32(1)) + [2] + be(UInt16(0)))
        #expect(decodeServer(list) == .frame(.contactList(requestID: 1, final: true, contacts: []), consumed: list.count))
    }

    @Test func decodesOnlyTheFirstFrame() {
        let two = encode([ClientFrame.ping(token: 1), .pong(token: 2)])
        #expect(decodeClient(two) == .frame(.ping(token: 1), consumed: 13))
        #expect(decodeClient(Array(two[13...])) == .frame(.pong(token: 2), consumed: 13))
        // A bad second frame does not affect the first.
        #expect(decodeClient(encode([ClientFrame.ping(token: 1)]) + [0, 0, 0, 0]) == .frame(.ping(token: 1), consumed: 13))
    }
}

@Suite struct FrameDecoderFuzzTests {
    private func checkClient(_ bytes: [UInt8], maxFrameBytes: Int = testMaxFrame) {
        switch decodeClient(bytes, maxFrameBytes: maxFrameBytes) {
        case .frame(let frame, let consumed):
            #expect(consumed >= 5 && consumed <= bytes.count && consumed - 4 <= maxFrameBytes)
            // A decoded frame re-encodes to something that decodes to the same frame.
            let again = encode([frame])
            #expect(decodeClient(again, maxFrameBytes: Int.max) == .frame(frame, consumed: again.count))
        case .needMore:
            #expect(bytes.count < 4 || bytes.count < 4 + Int(UInt32(bytes[0]) << 24 | UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3])))
        case .failure: break
        }
    }

    private func checkServer(_ bytes: [UInt8], maxFrameBytes: Int = testMaxFrame) {
        switch decodeServer(bytes, maxFrameBytes: maxFrameBytes) {
        case .frame(let frame, let consumed):
            #expect(consumed >= 5 && consumed <= bytes.count && consumed - 4 <= maxFrameBytes)
            let again = encode([frame])
            #expect(decodeServer(again, maxFrameBytes: Int.max) == .frame(frame, consumed: again.count))
        case .needMore:
            #expect(bytes.count < 4 || bytes.count < 4 + Int(UInt32(bytes[0]) << 24 | UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3])))
        case .failure: break
        }
    }

    @Test func randomBytes() {
        var rng = SplitMix64(seed: 0x5357_4244)
        for _ in 0..<1000 {
            let bytes = rng.bytes(Int.random(in: 0..<128, using: &rng))
            checkClient(bytes)
            checkServer(bytes)
        }
    }

    /// Random bodies behind a correct header and a known type, so the field decoders see the noise.
    @Test func randomBodiesOfKnownTypes() {
        var rng = SplitMix64(seed: 42)
        let types = FrameType.allCases.map(\.rawValue)
        var decoded = 0
        for _ in 0..<5000 {
            // Short bodies, biased to small values, so some of them parse.
            let body = (0..<Int.random(in: 0..<48, using: &rng)).map { _ in
                Bool.random(using: &rng) ? UInt8.random(in: 0...3, using: &rng) : UInt8.random(in: 0...255, using: &rng)
            }
            let frame = rawFrame(types.randomElement(using: &rng)!, body)
            checkClient(frame)
            checkServer(frame)
            if case .frame = decodeClient(frame) { decoded += 1 }
            if case .frame = decodeServer(frame) { decoded += 1 }
        }
        #expect(decoded > 100, "the generator should reach the success paths too")
    }

    @Test func mutationsOfValidFrames() {
        var rng = SplitMix64(seed: 1234)
        let clientBytes = clientSamples.map { encode([$0]) }
        let serverBytes = serverSamples.map { encode([$0]) }
        for round in 0..<3000 {
            let useClient = round % 2 == 0
            var bytes = useClient ? clientBytes.randomElement(using: &rng)! : serverBytes.randomElement(using: &rng)!
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                switch Int.random(in: 0..<5, using: &rng) {
                case 0: // flip a byte
                    if !bytes.isEmpty {
                        let i = Int.random(in: 0..<bytes.count, using: &rng)
                        bytes[i] = UInt8.random(in: 0...255, using: &rng)
                    }
                case 1: // truncate
                    bytes.removeLast(Int.random(in: 0...bytes.count, using: &rng))
                case 2: // insert
                    bytes.insert(UInt8.random(in: 0...255, using: &rng), at: Int.random(in: 0...bytes.count, using: &rng))
                case 3: // delete a byte and fix the length prefix so the body decoder sees it
                    if bytes.count > 5 {
                        bytes.remove(at: Int.random(in: 5..<bytes.count, using: &rng))
                        bytes.replaceSubrange(0..<4, with: be(UInt32(bytes.count - 4)))
                    }
                default: // bump a byte of the body and keep the length right
                    if bytes.count > 5 {
                        let i = Int.random(in: 5..<bytes.count, using: &rng)
                        bytes[i] &+= UInt8.random(in: 1...3, using: &rng)
                    }
                }
            }
            checkClient(bytes)
            checkServer(bytes)
            checkClient(bytes, maxFrameBytes: 16)
        }
    }
}
