// The sans-I/O NATS protocol core without sockets: the parser at every split point (byte at a time, random
// chunks), its limits pushed past, the encoder's exact bytes, subject and header validation, JSON and base64.
import SwitchboardCluster
import SwitchboardIO
import Testing

/// Feeds chunks into a buffer and parses as the driver does; records each operation as readable text.
struct Feeder {
    var parser: NATSParser
    let buffer = ByteBuffer()
    var ops: [String] = []
    var violation: String?

    init(limits: NATSLimits = NATSLimits()) { parser = NATSParser(limits: limits) }

    mutating func feed(_ bytes: ArraySlice<UInt8>) {
        guard violation == nil else { return }
        buffer.writeBytes(Array(bytes))
        while buffer.readableBytes > 0 {
            let view = buffer.readableView
            switch parser.next(view) {
            case .needMore: return
            case .violation(let reason): violation = reason; return
            case .operation(let op, let consumed):
                #expect(consumed > 0 && consumed <= view.count)
                ops.append(Self.describe(op, view))
                buffer.moveReaderIndex(forwardBy: consumed)
            }
        }
    }

    static func describe(_ op: NATSOperation, _ b: UnsafeRawBufferPointer) -> String {
        func s(_ r: ByteRange) -> String { String(decoding: b[r.start..<r.end], as: UTF8.self) }
        switch op {
        case .ping: return "PING"
        case .pong: return "PONG"
        case .ok: return "+OK"
        case .err(let r): return "ERR[\(s(r))]"
        case .info(let r): return "INFO[\(s(r))]"
        case .message(let f):
            return "MSG[\(s(f.subject))|\(f.sid)|\(s(f.replyTo))|\(f.headers.map(s) ?? "-")|\(s(f.payload))]"
        }
    }
}

private func parseAll(_ text: String, limits: NATSLimits = NATSLimits()) -> Feeder {
    var f = Feeder(limits: limits)
    f.feed(Array(text.utf8)[...])
    return f
}

@Suite struct NATSParserTests {
    static let stream = "INFO {\"server_id\":\"x\",\"max_payload\":1048576,\"headers\":true}\r\n"
        + "PING\r\npong\r\n+OK\r\n-ERR 'Authorization Violation'\r\n"
        + "MSG foo.bar 9 5\r\nhello\r\n"
        + "MSG foo.bar 10 _INBOX.x.1 0\r\n\r\n"
        + "msg\tsp.ace\t11\t\t3\r\na\r\n\r\n"
        + "HMSG _INBOX.x.2 12 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
        + "HMSG s 13 r.1 18 23\r\nNATS/1.0\r\nK: v\r\n\r\nbody!\r\n"
        + "MSG bin 14 4\r\n\r\n\r\n\r\n"

    static let expected = [
        "INFO[{\"server_id\":\"x\",\"max_payload\":1048576,\"headers\":true}]", "PING", "PONG", "+OK",
        "ERR[Authorization Violation]", "MSG[foo.bar|9||-|hello]", "MSG[foo.bar|10|_INBOX.x.1|-|]",
        "MSG[sp.ace|11||-|a\r\n]", "MSG[_INBOX.x.2|12||NATS/1.0 503\r\n\r\n|]",
        "MSG[s|13|r.1|NATS/1.0\r\nK: v\r\n\r\n|body!]", "MSG[bin|14||-|\r\n\r\n]",
    ]

    @Test func wholeStreamParses() {
        let f = parseAll(Self.stream)
        #expect(f.violation == nil)
        #expect(f.ops == Self.expected)
        #expect(f.buffer.readableBytes == 0)
    }

    @Test func byteAtATime() {
        var f = Feeder()
        let bytes = Array(Self.stream.utf8)
        for i in bytes.indices { f.feed(bytes[i...i]) }
        #expect(f.violation == nil)
        #expect(f.ops == Self.expected)
    }

    @Test(arguments: [1 as UInt64, 2, 3, 4, 5, 6, 7, 8])
    func randomSplits(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let bytes = Array(String(repeating: Self.stream, count: 20).utf8)
        var f = Feeder()
        var i = 0
        while i < bytes.count {
            let n = Int(rng.next() % 40) + 1
            let end = min(bytes.count, i + n)
            f.feed(bytes[i..<end])
            i = end
        }
        #expect(f.violation == nil)
        #expect(f.ops == Array((0..<20).map { _ in Self.expected }.joined()))
    }

    @Test func everySplitPointOfEveryOperation() {
        let bytes = Array(Self.stream.utf8)
        for cut in 1..<bytes.count {
            var f = Feeder()
            f.feed(bytes[..<cut])
            f.feed(bytes[cut...])
            #expect(f.violation == nil && f.ops == Self.expected, "split at \(cut)")
        }
    }

    @Test func controlLineLimit() {
        let limits = NATSLimits(maxControlLine: 64, maxPayload: 1024)
        // Exactly at the limit is fine.
        let info = "INFO {" + String(repeating: "a", count: 64 - 7) + "}\r\n"
        #expect(parseAll(info, limits: limits).ops.count == 1)
        // One past: refused, also before any LF arrives (nothing more is buffered waiting for it).
        let longer = "INFO {" + String(repeating: "a", count: 64 - 6) + "}\r\n"
        #expect(parseAll(longer, limits: limits).violation?.contains("longer than 64") == true)
        let endless = String(repeating: "x", count: 66)
        #expect(parseAll(endless, limits: limits).violation != nil)
        #expect(parseAll(String(repeating: "x", count: 65), limits: limits).violation == nil, "65 bytes may still end in CRLF")
    }

    @Test func payloadLimitRefusedFromTheControlLine() {
        let limits = NATSLimits(maxControlLine: 1024, maxPayload: 100)
        #expect(parseAll("MSG a 1 100\r\n" + String(repeating: "z", count: 100) + "\r\n", limits: limits).ops.count == 1)
        // No payload byte has arrived: refused from the size alone.
        #expect(parseAll("MSG a 1 101\r\n", limits: limits).violation?.contains("above the limit") == true)
        #expect(parseAll("HMSG a 1 12 101\r\n", limits: limits).violation != nil)
        #expect(parseAll("MSG a 1 99999999999999999999\r\n", limits: limits).violation != nil)
    }

    @Test(arguments: [
        "PING\n", "MSG a 1\r\n", "MSG a 1 b c 2\r\n", "MSG a x 1\r\na\r\n", "MSG a 1 -1\r\n", "MSG a 1 3\r\nabcXY",
        "HMSG a 1 20 10\r\n", "HMSG a 1 5 10\r\n", "HMSG a 1 10\r\n", "FOO bar\r\n", "PING x\r\n", "INFO\r\n", "\r\n",
    ])
    func violations(input: String) {
        let f = parseAll(input)
        #expect(f.violation != nil, "accepted: \(input.debugDescription) as \(f.ops)")
    }
}

@Suite struct NATSEncoderTests {
    private func encode(_ body: (ByteBuffer) -> Void) -> String {
        let b = ByteBuffer()
        body(b)
        return String(decoding: b.readableArray(), as: UTF8.self)
    }

    @Test func exactBytes() throws {
        #expect(encode { NATSEncoder.ping(into: $0) } == "PING\r\n")
        #expect(encode { NATSEncoder.pong(into: $0) } == "PONG\r\n")
        #expect(encode { NATSEncoder.connect("{\"verbose\":false}", into: $0) } == "CONNECT {\"verbose\":false}\r\n")
        #expect(encode { NATSEncoder.sub(subject: "a.*", queue: nil, sid: 7, into: $0) } == "SUB a.* 7\r\n")
        #expect(encode { NATSEncoder.sub(subject: "a.>", queue: "q", sid: 12345678901, into: $0) } == "SUB a.> q 12345678901\r\n")
        #expect(encode { NATSEncoder.unsub(sid: 0, into: $0) } == "UNSUB 0\r\n")
        #expect(encode { NATSEncoder.unsub(sid: 3, max: 1, into: $0) } == "UNSUB 3 1\r\n")
        let body = Array("hi".utf8)
        #expect(encode { b in body.withUnsafeBytes { NATSEncoder.publish(subject: "s", replyTo: nil, headers: nil, payload: $0, into: b) } }
                == "PUB s 2\r\nhi\r\n")
        #expect(encode { b in body.withUnsafeBytes { NATSEncoder.publish(subject: "s", replyTo: "r.1", headers: nil, payload: $0, into: b) } }
                == "PUB s r.1 2\r\nhi\r\n")
        let headers = try NATSHeaders([("Nats-Msg-Id", "m1")]).encoded()
        #expect(String(decoding: headers, as: UTF8.self) == "NATS/1.0\r\nNats-Msg-Id: m1\r\n\r\n")
        #expect(encode { b in body.withUnsafeBytes { NATSEncoder.publish(subject: "s", replyTo: "r", headers: headers, payload: $0, into: b) } }
                == "HPUB s r 29 31\r\nNATS/1.0\r\nNats-Msg-Id: m1\r\n\r\nhi\r\n")
        #expect(encode { NATSEncoder.publish(subject: "e", replyTo: nil, headers: nil, payload: UnsafeRawBufferPointer(start: nil, count: 0), into: $0) }
                == "PUB e 0\r\n\r\n")
    }

    @Test func encodedCommandsParseBackAsMessages() throws {
        // What the client sends as HPUB is what the server relays as HMSG: same sizes, same bytes.
        let headers = try NATSHeaders([("A", "1"), ("Nats-Expected-Last-Subject-Sequence", "42")]).encoded()
        let payload = Array("payload with\r\nCRLF".utf8)
        let b = ByteBuffer()
        payload.withUnsafeBytes { NATSEncoder.publish(subject: "x.y", replyTo: "r", headers: headers, payload: $0, into: b) }
        let text = String(decoding: b.readableArray(), as: UTF8.self).replacingFirst("HPUB x.y r", with: "HMSG x.y 5 r")
        let f = parseAll(text)
        #expect(f.ops == ["MSG[x.y|5|r|\(String(decoding: headers, as: UTF8.self))|payload with\r\nCRLF]"])
    }

    @Test(arguments: ["a", "a.b.c", "$JS.API.STREAM.CREATE.MAIL", "_INBOX.abc.1", "sb.user.42"])
    func literalSubjectsAccepted(subject: String) throws {
        try NATSSubject.validate(subject, wildcards: false)
        try NATSSubject.validate(subject, wildcards: true)
    }

    @Test(arguments: ["", "a..b", ".a", "a.", "a b", "a\tb", "a\r\nPUB x 1", "é", String(repeating: "a", count: 513)])
    func badSubjectsRefused(subject: String) {
        #expect(throws: NATSError.self) { try NATSSubject.validate(subject, wildcards: true) }
    }

    @Test func wildcards() throws {
        try NATSSubject.validate("a.*.c", wildcards: true)
        try NATSSubject.validate("a.>", wildcards: true)
        try NATSSubject.validate(">", wildcards: true)
        for bad in ["a.>.c", "a*", "a.b*", "*b", ">x"] {
            #expect(throws: NATSError.self, "\(bad)") { try NATSSubject.validate(bad, wildcards: true) }
        }
        #expect(throws: NATSError.self) { try NATSSubject.validate("a.*", wildcards: false) }
        #expect(throws: NATSError.self) { try NATSSubject.validate("a.>", wildcards: false) }
        #expect(throws: NATSError.self) { try NATSSubject.validateQueue("has space") }
    }

    @Test func headers() throws {
        var h = NATSHeaders()
        try h.add("Nats-Msg-Id", "abc")
        try h.add("X", "with: colon")
        #expect(throws: NATSError.self) { try h.add("bad key", "v") }
        #expect(throws: NATSError.self) { try h.add("k:", "v") }
        #expect(throws: NATSError.self) { try h.add("k", "v\r\nInjected: 1") }
        let encoded = h.encoded()
        let back = try encoded.withUnsafeBytes { try NATSHeaders.parse($0) }
        #expect(back == h)
        #expect(back["nats-msg-id"] == "abc" && back["X"] == "with: colon")
        let noResponders = try Array("NATS/1.0 503\r\n\r\n".utf8).withUnsafeBytes { try NATSHeaders.parse($0) }
        #expect(noResponders.status == 503 && noResponders.fields.isEmpty)
        let described = try Array("NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\n\r\n".utf8).withUnsafeBytes { try NATSHeaders.parse($0) }
        #expect(described.status == 408 && described.statusDescription == "Request Timeout" && described["Nats-Pending-Messages"] == "1")
        for bad in ["HTTP/1.1 200\r\n\r\n", "NATS/1.0\r\n", "NATS/1.0 5x3\r\n\r\n", "NATS/1.0\r\nnocolon\r\n\r\n"] {
            #expect(throws: NATSError.self, "\(bad.debugDescription)") { try Array(bad.utf8).withUnsafeBytes { try NATSHeaders.parse($0) } }
        }
    }

    @Test func serverList() throws {
        let list = try NATSServerList.parse("nats://127.0.0.1:25001, 127.0.0.1:25002,nats://[::1]:25003,localhost")
        #expect(list.map(\.description) == ["127.0.0.1:25001", "127.0.0.1:25002", "[::1]:25003", "127.0.0.1:4222"])
        for bad in ["", "nats://example.com:4222", "nats://user:pw@127.0.0.1:4222", "tls://1.2.3.4:1/x", "127.0.0.1:99999", "a,,b"] {
            #expect(throws: NATSError.self, "\(bad)") { try NATSServerList.parse(bad) }
        }
    }
}

@Suite struct JSONTests {
    @Test func roundTrip() throws {
        let text = #"{"a":1,"b":[true,false,null],"c":"q\"\\\n\u0001é","d":{"e":18446744073709551615,"f":-1.5e3}}"#
        let v = try JSON.parse(text)
        #expect(v["d"]?["e"]?.uint64Value == UInt64.max)
        #expect(v["c"]?.stringValue == "q\"\\\n\u{1}é")
        #expect(v["b"]?.arrayValue?.count == 3)
        #expect(try JSON.parse(v.serialized) == v)
        #expect(try JSON.parse(#""\ud83d\ude00""#).stringValue == "😀")
    }

    @Test(arguments: ["", "{", "[1,]", "{\"a\"}", "{\"a\":}", "tru", "\"unterminated", "1 2", "{\"a\":1,}", "-", "\"\u{1}\""])
    func malformed(text: String) {
        #expect(throws: JSON.ParseError.self) { try JSON.parse(text) }
    }

    @Test func depthIsBounded() {
        #expect(throws: JSON.ParseError.self) { try JSON.parse(String(repeating: "[", count: 100) + String(repeating: "]", count: 100)) }
        #expect((try? JSON.parse(String(repeating: "[", count: 60) + String(repeating: "]", count: 60))) != nil)
    }

    @Test func base64() {
        var rng = SplitMix64(seed: 9)
        for n in 0..<40 {
            let bytes = rng.bytes(n)
            #expect(Base64.decode(Base64.encode(bytes)) == bytes)
        }
        #expect(Base64.encode(Array("hello".utf8)) == "aGVsbG8=")
        #expect(Base64.decode("aGVsbG8=") == Array("hello".utf8))
        #expect(Base64.decode("a") == nil && Base64.decode("aGV*") == nil && Base64.decode("aG=V") == nil)
    }
}

extension String {
    fileprivate func replacingFirst(_ target: String, with replacement: String) -> String {
        guard let r = firstRange(of: target) else { return self }
        var copy = self
        copy.replaceSubrange(r, with: replacement)
        return copy
    }
}

@Suite struct BackoffAndKeyTests {
    @Test func backoffFirstPassImmediateThenCappedAndJittered() throws {
        var configuration = NATSConfiguration(servers: try NATSServerList.parse("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"))
        configuration.reconnectBaseDelayMs = 50
        configuration.maxReconnectDelayMs = 2_000
        configuration.seed = 42
        var b = NATSReconnectBackoff(configuration)
        #expect(b.nextDelay() == 0 && b.nextDelay() == 0, "the other two servers are tried at once")
        var delays: [UInt64] = []
        for _ in 0..<20 { delays.append(b.nextDelay()) }
        for (k, d) in delays.enumerated() {
            let full = min(2_000, UInt64(50) << UInt64(min(k, 30)))
            #expect(d >= full / 2 && d <= full, "attempt \(k + 3): \(d) outside [\(full / 2), \(full)]")
        }
        #expect(delays.suffix(10).allSatisfy { $0 >= 1_000 && $0 <= 2_000 })
        #expect(Set(delays.suffix(10)).count > 1, "jittered")
        b.reset()
        #expect(b.attempt == 0 && b.nextDelay() == 0)
        // Another seed, other delays: nodes do not retry in step.
        configuration.seed = 43
        var other = NATSReconnectBackoff(configuration)
        var otherDelays: [UInt64] = []
        for _ in 0..<22 { otherDelays.append(other.nextDelay()) }
        #expect(Array(otherDelays.dropFirst(2)) != delays)
    }

    @Test func keyValueKeys() {
        #expect(KeyValueBucket.isValidKey("alice") && KeyValueBucket.isValidKey("user.42/contacts=x-y_z"))
        #expect(KeyValueBucket.isValidKey(String(repeating: "k", count: 256)))
        #expect(!KeyValueBucket.isValidKey(String(repeating: "k", count: 257)))
        for bad in ["", ".a", "a.", "a..b", "a b", "a*", "a>", "é", "a\r\n"] {
            #expect(!KeyValueBucket.isValidKey(bad), "\(bad.debugDescription)")
        }
    }
}

@Suite struct NATSParserRobustnessTests {
    /// Random bytes and random mutations of a valid stream: the parser never traps, never consumes more than it
    /// was given, and ends each input with operations, a request for more, or a violation.
    @Test(arguments: [11 as UInt64, 12, 13, 14])
    func garbageAndMutations(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let valid = Array(NATSParserTests.stream.utf8)
        let alphabet = Array("MSG HMSG PING PONG INFO -ERR +OK 0123456789 \r\n\t.*>".utf8)
        for round in 0..<400 {
            var input: [UInt8]
            switch round % 3 {
            case 0: input = rng.bytes(Int(rng.next() % 300))
            case 1: input = (0..<Int(rng.next() % 300)).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
            default:
                input = valid
                for _ in 0..<Int(rng.next() % 8) + 1 {
                    input[Int(rng.next() % UInt64(input.count))] = UInt8(truncatingIfNeeded: rng.next())
                }
            }
            var f = Feeder(limits: NATSLimits(maxControlLine: 128, maxPayload: 256))
            var i = 0
            while i < input.count && f.violation == nil {
                let end = min(input.count, i + Int(rng.next() % 17) + 1)
                f.feed(input[i..<end])
                i = end
            }
            // Bounded buffering: never more than one control line plus one payload waits in the buffer.
            #expect(f.buffer.readableBytes <= 128 + 2 + 256 + 2, "round \(round)")
        }
    }
}
