// Encoder tests: every frame case survives encode -> decode unchanged, the documented hex examples are
// byte-exact, and frames encoded into a buffer that is being drained (and so compacts) stay intact.

import SwitchboardIO
@testable import SwitchboardProtocol
import Testing

@Suite struct FrameEncoderTests {
    @Test func samplesCoverEveryFrameType() {
        let clientTypes = Set(clientSamples.map(\.typeCode))
        let serverTypes = Set(serverSamples.map(\.typeCode))
        #expect(clientTypes == Set(FrameType.allCases.map(\.rawValue).filter { $0 < 0x40 }))
        #expect(serverTypes == Set(FrameType.allCases.map(\.rawValue).filter { $0 >= 0x40 }))
    }

    @Test(arguments: clientSamples)
    func clientRoundTrip(_ frame: ClientFrame) {
        let bytes = encode([frame])
        #expect(Int(UInt32(bytes[0]) << 24 | UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3])) == bytes.count - 4)
        #expect(decodeClient(bytes) == .frame(frame, consumed: bytes.count))
        // A byte short is never a frame.
        #expect(decodeClient(Array(bytes.dropLast())) == .needMore)
    }

    @Test(arguments: serverSamples)
    func serverRoundTrip(_ frame: ServerFrame) {
        let bytes = encode([frame])
        #expect(Int(UInt32(bytes[0]) << 24 | UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3])) == bytes.count - 4)
        #expect(decodeServer(bytes) == .frame(frame, consumed: bytes.count))
        #expect(decodeServer(Array(bytes.dropLast())) == .needMore)
    }

    @Test func decodedViewsBorrowTheInputWithoutCopying() {
        let bytes = encode([ClientFrame.send(to: 1, messageID: 2, body: ByteView("payload"))])
        bytes.withUnsafeBytes { raw in
            guard case .frame(.send(_, _, let body), _) = FrameDecoder.decodeClient(raw, maxFrameBytes: testMaxFrame) else {
                Issue.record("not a SEND"); return
            }
            body.withUnsafeBytes { b in #expect(b.baseAddress == raw.baseAddress! + 17) }
            #expect(body.string == "payload")
        }
    }

    @Test func largestBodyThatFitsTheLimit() {
        var rng = SplitMix64(seed: 7)
        // SEND: type(1) + to(4) + message_id(8) + body = exactly maxFrameBytes.
        let body = rng.bytes(testMaxFrame - 13)
        let send = ClientFrame.send(to: 3, messageID: 4, body: ByteView(body))
        let bytes = encode([send])
        #expect(bytes.count == 4 + testMaxFrame)
        #expect(decodeClient(bytes) == .frame(send, consumed: bytes.count))
        // One more byte is over the limit, reported from the 4-byte prefix alone.
        let tooBig = encode([ClientFrame.send(to: 3, messageID: 4, body: ByteView(body + [0]))])
        #expect(decodeClient(tooBig) == .failure(.frameTooLarge))
        #expect(decodeClient(Array(tooBig.prefix(4))) == .failure(.frameTooLarge))

        // DELIVER and MAIL around the largest body the server accepts still fit the same limit.
        let limits = ServerLimits(maxFrameBytes: UInt32(testMaxFrame))
        let maxBody = ByteView(rng.bytes(limits.maxBodyBytes))
        let longName = TextView(String(repeating: "n", count: ProtocolConstants.maxNameBytes))
        let deliver = ServerFrame.deliver(seq: 1, from: 2, messageID: 3, sentAtMs: 4, body: maxBody)
        let mail = ServerFrame.mail(seq: 1, from: 2, fromName: longName, messageID: 3, sentAtMs: 4, body: maxBody)
        for frame in [deliver, mail] {
            let encoded = encode([frame])
            #expect(encoded.count - 4 <= testMaxFrame)
            #expect(decodeServer(encoded) == .frame(frame, consumed: encoded.count))
        }
    }

    @Test func longestStringsRoundTrip() {
        let long = TextView(String(repeating: "é", count: Int(UInt16.max) / 2))  // 65534 bytes
        let frame = ServerFrame.error(requestID: 1, code: 107, message: long)
        let bytes = encode([frame])
        #expect(decodeServer(bytes, maxFrameBytes: 1 << 20) == .frame(frame, consumed: bytes.count))
    }

    @Test func stringsBeyondU16AreCutAt65535Bytes() {
        let frame = ServerFrame.error(requestID: 1, code: 107, message: TextView(String(repeating: "x", count: 70_000)))
        let bytes = encode([frame])
        #expect(bytes.count == 4 + 1 + 4 + 2 + 2 + 65_535)
        let expected = ServerFrame.error(requestID: 1, code: 107, message: TextView(String(repeating: "x", count: 65_535)))
        #expect(decodeServer(bytes, maxFrameBytes: 1 << 20) == .frame(expected, consumed: bytes.count))
    }

    @Test func booleansAndFlagsEncodeAsZeroOrOne() {
        let list = encode([ServerFrame.contactList(requestID: 9, final: true, contacts: [sampleContacts[0]])])
        // request_id(4) final(1) count(2) | user_id(4) name(2+5) relation(1) online(1)
        #expect(Array(list[5...]) == be(UInt32(9)) + [1] + be(UInt16(1)) + be(UInt32(1)) + wireString("alice") + [3, 1])
        let presence = encode([ServerFrame.presence(userID: 5, online: false)])
        #expect(presence == rawFrame(0x45, be(UInt32(5)) + [0]))
    }

    // The examples printed in WireProtocol.md.
    @Test func documentedHelloExample() {
        let bytes = encode([ClientFrame.hello(version: 1, agent: "sbchat/1.0")])
        #expect(bytes == [0x00, 0x00, 0x00, 0x13, 0x01, 0x53, 0x57, 0x42, 0x44, 0x00, 0x01, 0x00, 0x0A,
                          0x73, 0x62, 0x63, 0x68, 0x61, 0x74, 0x2F, 0x31, 0x2E, 0x30])
    }

    @Test func documentedSendExample() {
        let bytes = encode([ClientFrame.send(to: 7, messageID: 42, body: ByteView("hi 👋"))])
        #expect(bytes == [0x00, 0x00, 0x00, 0x14, 0x08, 0x00, 0x00, 0x00, 0x07,
                          0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2A,
                          0x68, 0x69, 0x20, 0xF0, 0x9F, 0x91, 0x8B])
    }

    @Test func welcomeHas34BytesOfFixedFields() {
        let bytes = encode([ServerFrame.welcome(Welcome(limits: ServerLimits(), serverName: "sb"))])
        // type(1) + 34 fixed bytes (version u16, 6 x u32, u64) + server_name (2 + 2)
        #expect(bytes.count == 4 + 1 + 34 + 4)
        #expect(Array(bytes[5..<7]) == [0x00, 0x01])
    }

    /// An output buffer is drained by partial socket writes while frames are appended; growing it compacts
    /// (moves bytes to the front), which must not move a frame's length prefix away from where `end` patches it.
    @Test(arguments: [1 as UInt64, 2, 3, 4])
    func encodingIntoABufferThatIsBeingDrained(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let out = ByteBuffer()
        var wire: [UInt8] = []
        var sent: [ServerFrame] = []
        for _ in 0..<400 {
            let frame: ServerFrame
            switch Int.random(in: 0..<4, using: &rng) {
            case 0: frame = serverSamples.randomElement(using: &rng)!
            case 1: frame = .error(requestID: 1, code: 101, message: TextView(String(repeating: "e", count: Int.random(in: 0..<600, using: &rng))))
            case 2: frame = .mail(seq: rng.next(), from: 1, fromName: "alice", messageID: 2, sentAtMs: 3,
                                  body: ByteView(rng.bytes(Int.random(in: 0..<900, using: &rng))))
            default: frame = .contactList(requestID: 1, final: false, contacts: Array(repeating: sampleContacts[2], count: Int.random(in: 0..<40, using: &rng)))
            }
            FrameEncoder.encode(frame, into: out)
            sent.append(frame)
            // The "socket" takes part of what is pending.
            let n = Int.random(in: 0...out.readableBytes, using: &rng)
            wire += Array(out.readableView.prefix(n))
            out.moveReaderIndex(forwardBy: n)
        }
        wire += out.readableArray()

        var received: [ServerFrame] = []
        var offset = 0
        while offset < wire.count {
            guard case .frame(let f, let consumed) = decodeServer(Array(wire[offset...]), maxFrameBytes: 1 << 20) else {
                Issue.record("undecodable bytes at offset \(offset) after \(received.count) frames"); return
            }
            received.append(f)
            offset += consumed
        }
        #expect(received == sent)
    }

    @Test func hotPathWritersMatchTheGenericEncoder() {
        let body: [UInt8] = Array("relay me".utf8)
        let generic = encode([ServerFrame.deliver(seq: 5, from: 6, messageID: 7, sentAtMs: 8, body: ByteView(body))])
        let out = ByteBuffer()
        body.withUnsafeBytes { FrameEncoder.writeDeliver(into: out, seq: 5, from: 6, messageID: 7, sentAtMs: 8, body: $0) }
        #expect(out.readableArray() == generic)
        // An empty body, and a buffer that must grow mid-way through the frames.
        let small = ByteBuffer(capacity: 16)
        small.writeBytes(Array(repeating: 0xEE, count: 10))
        small.readerIndex = 10
        FrameEncoder.writeDeliver(into: small, seq: 1, from: 2, messageID: 3, sentAtMs: 4, body: UnsafeRawBufferPointer(start: nil, count: 0))
        body.withUnsafeBytes { FrameEncoder.writeDeliver(into: small, seq: 5, from: 6, messageID: 7, sentAtMs: 8, body: $0) }
        #expect(small.readableArray() == encode([ServerFrame.deliver(seq: 1, from: 2, messageID: 3, sentAtMs: 4, body: ByteView([])),
                                                 ServerFrame.deliver(seq: 5, from: 6, messageID: 7, sentAtMs: 8, body: ByteView(body))]))

        let ack = ByteBuffer()
        FrameEncoder.writeSendAck(into: ack, messageID: 9, status: SendStatus.storedOffline.rawValue)
        #expect(ack.readableArray() == rawFrame(0x49, be(UInt64(9)) + [2]))

        let send = ByteBuffer()
        FrameEncoder.writeSend(into: send, to: 1, messageID: 2, body: ByteView(body))
        #expect(send.readableArray() == encode([ClientFrame.send(to: 1, messageID: 2, body: ByteView(body))]))
    }
}
