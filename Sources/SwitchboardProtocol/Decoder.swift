// Sans-I/O decoding. `FrameDecoder.decodeClient/decodeServer` look at a byte region and return
// one frame and how many bytes it used, `.needMore`, or a protocol error. They never read past a
// frame's declared length, never allocate for a length prefix they have not validated, and give
// the same frames for any split of the stream because they only ever decode whole frames.

public struct ProtocolError: Error, Equatable, CustomStringConvertible, Sendable {
    public var code: ErrorCode
    public var message: String
    public init(_ code: ErrorCode, _ message: String) { self.code = code; self.message = message }
    public var description: String { "\(code) (\(code.rawValue)): \(message)" }
}

public enum DecodeResult<Frame> {
    case frame(Frame, consumed: Int)
    case needMore
    case failure(ProtocolError)
}

/// Reads big-endian fields from one frame's body; every read is bounds-checked against the body.
public struct FieldReader {
    @usableFromInline let bytes: UnsafeRawBufferPointer
    @usableFromInline var offset: Int

    @inlinable public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes; offset = 0 }

    @inlinable public var remaining: Int { bytes.count - offset }

    @inlinable public mutating func integer<T: FixedWidthInteger>(_: T.Type = T.self, _ field: StaticString) throws(ProtocolError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw ProtocolError(.malformedFrame, "field \(field) overruns the frame") }
        var value: T = 0
        withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + size])) }
        offset += size
        return T(bigEndian: value)
    }

    @inlinable public mutating func text(_ field: StaticString, maxBytes: Int = Int(UInt16.max)) throws(ProtocolError) -> TextView {
        let length = Int(try integer(UInt16.self, field))
        guard remaining >= length else { throw ProtocolError(.malformedFrame, "string \(field) overruns the frame") }
        guard length <= maxBytes else { throw ProtocolError(.malformedFrame, "string \(field) longer than \(maxBytes) bytes") }
        let view = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + length])
        guard UTF8Validation.isValid(view) else { throw ProtocolError(.invalidUTF8, "string \(field) is not valid UTF-8") }
        offset += length
        return TextView(validatedBorrowing: view)
    }

    /// The rest of the frame as an opaque body.
    @inlinable public mutating func rest() -> ByteView {
        let view = UnsafeRawBufferPointer(rebasing: bytes[offset...])
        offset = bytes.count
        return ByteView(borrowing: view)
    }

    @inlinable public func expectEnd(_ type: UInt8) throws(ProtocolError) {
        guard remaining == 0 else {
            throw ProtocolError(.malformedFrame, "\(remaining) trailing bytes in a frame of type 0x\(String(type, radix: 16))")
        }
    }
}

public enum UTF8Validation {
    /// Strict UTF-8 (no overlongs, no surrogates, max U+10FFFF), without allocating.
    @inlinable public static func isValid(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var i = 0
        let n = bytes.count
        while i < n {
            let b0 = bytes[i]
            if b0 < 0x80 { i += 1; continue }
            if b0 < 0xC2 { return false }
            if b0 < 0xE0 {
                guard i + 1 < n, bytes[i + 1] & 0xC0 == 0x80 else { return false }
                i += 2; continue
            }
            if b0 < 0xF0 {
                guard i + 2 < n else { return false }
                let b1 = bytes[i + 1], b2 = bytes[i + 2]
                guard b1 & 0xC0 == 0x80, b2 & 0xC0 == 0x80 else { return false }
                if b0 == 0xE0 && b1 < 0xA0 { return false }   // overlong
                if b0 == 0xED && b1 >= 0xA0 { return false }  // surrogate
                i += 3; continue
            }
            if b0 < 0xF5 {
                guard i + 3 < n else { return false }
                let b1 = bytes[i + 1], b2 = bytes[i + 2], b3 = bytes[i + 3]
                guard b1 & 0xC0 == 0x80, b2 & 0xC0 == 0x80, b3 & 0xC0 == 0x80 else { return false }
                if b0 == 0xF0 && b1 < 0x90 { return false }   // overlong
                if b0 == 0xF4 && b1 >= 0x90 { return false }  // > U+10FFFF
                i += 4; continue
            }
            return false
        }
        return true
    }
}

public enum FrameDecoder {
    /// Splits off one frame: its type byte and body. Checks the length before anything else.
    @inlinable
    public static func split(_ input: UnsafeRawBufferPointer, maxFrameBytes: Int)
        -> DecodeResult<(type: UInt8, body: UnsafeRawBufferPointer)> {
        guard input.count >= 4 else { return .needMore }
        let length = Int(UInt32(input[0]) << 24 | UInt32(input[1]) << 16 | UInt32(input[2]) << 8 | UInt32(input[3]))
        if length == 0 { return .failure(ProtocolError(.malformedFrame, "frame length 0 (a frame has at least a type byte)")) }
        if length > maxFrameBytes {
            return .failure(ProtocolError(.frameTooLarge, "frame of \(length) bytes exceeds the limit of \(maxFrameBytes)"))
        }
        guard input.count >= 4 + length else { return .needMore }
        let type = input[4]
        let body = UnsafeRawBufferPointer(rebasing: input[5..<(4 + length)])
        return .frame((type, body), consumed: 4 + length)
    }

    /// Decodes one client frame from the front of `input`.
    public static func decodeClient(_ input: UnsafeRawBufferPointer, maxFrameBytes: Int) -> DecodeResult<ClientFrame> {
        switch split(input, maxFrameBytes: maxFrameBytes) {
        case .needMore: return .needMore
        case .failure(let e): return .failure(e)
        case .frame(let (type, body), let consumed):
            do {
                return .frame(try clientFrame(type: type, body: body), consumed: consumed)
            } catch {
                return .failure(error)
            }
        }
    }

    public static func clientFrame(type: UInt8, body: UnsafeRawBufferPointer) throws(ProtocolError) -> ClientFrame {
        var r = FieldReader(body)
        guard let known = FrameType(rawValue: type), known.rawValue < 0x40 else {
            throw ProtocolError(.unknownFrameType, "unknown client frame type 0x\(String(type, radix: 16))")
        }
        let frame: ClientFrame
        switch known {
        case .hello:
            let magic = try r.integer(UInt32.self, "magic")
            guard magic == ProtocolConstants.magic else { throw ProtocolError(.malformedFrame, "HELLO without the SWBD magic: not a Switchboard client") }
            frame = .hello(version: try r.integer(UInt16.self, "version"), agent: try r.text("agent", maxBytes: 256))
        case .register:
            frame = .register(requestID: try r.integer(UInt32.self, "request_id"),
                              name: try r.text("name", maxBytes: 255), password: try r.text("password", maxBytes: ProtocolConstants.maxPasswordBytes))
        case .login:
            frame = .login(requestID: try r.integer(UInt32.self, "request_id"),
                           name: try r.text("name", maxBytes: 255), password: try r.text("password", maxBytes: ProtocolConstants.maxPasswordBytes))
        case .loginDevice:
            frame = .loginDevice(requestID: try r.integer(UInt32.self, "request_id"), name: try r.text("name", maxBytes: 255),
                                 password: try r.text("password", maxBytes: ProtocolConstants.maxPasswordBytes),
                                 deviceID: try r.text("device_id", maxBytes: ProtocolConstants.maxDeviceIDBytes),
                                 deviceName: try r.text("device_name", maxBytes: ProtocolConstants.maxDeviceNameBytes))
        case .contactAdd:
            frame = .contactAdd(requestID: try r.integer(UInt32.self, "request_id"), name: try r.text("name", maxBytes: 255))
        case .contactAccept:
            frame = .contactAccept(requestID: try r.integer(UInt32.self, "request_id"), name: try r.text("name", maxBytes: 255))
        case .contactRemove:
            frame = .contactRemove(requestID: try r.integer(UInt32.self, "request_id"), name: try r.text("name", maxBytes: 255))
        case .listContacts:
            frame = .listContacts(requestID: try r.integer(UInt32.self, "request_id"))
        case .openChat:
            frame = .openChat(requestID: try r.integer(UInt32.self, "request_id"), contact: try r.integer(UInt32.self, "contact"))
        case .send:
            frame = .send(to: try r.integer(UInt32.self, "to"), messageID: try r.integer(UInt64.self, "message_id"), body: r.rest())
        case .deliveryAck:
            frame = .deliveryAck(throughSeq: try r.integer(UInt64.self, "through_seq"))
        case .mailAck:
            frame = .mailAck(throughSeq: try r.integer(UInt64.self, "through_seq"))
        case .ping:
            frame = .ping(token: try r.integer(UInt64.self, "token"))
        case .pong:
            frame = .pong(token: try r.integer(UInt64.self, "token"))
        default:
            throw ProtocolError(.unknownFrameType, "unknown client frame type 0x\(String(type, radix: 16))")
        }
        try r.expectEnd(type)
        return frame
    }

    /// Decodes one server frame from the front of `input` (client side).
    public static func decodeServer(_ input: UnsafeRawBufferPointer, maxFrameBytes: Int) -> DecodeResult<ServerFrame> {
        switch split(input, maxFrameBytes: maxFrameBytes) {
        case .needMore: return .needMore
        case .failure(let e): return .failure(e)
        case .frame(let (type, body), let consumed):
            do {
                return .frame(try serverFrame(type: type, body: body), consumed: consumed)
            } catch {
                return .failure(error)
            }
        }
    }

    public static func serverFrame(type: UInt8, body: UnsafeRawBufferPointer) throws(ProtocolError) -> ServerFrame {
        var r = FieldReader(body)
        guard let known = FrameType(rawValue: type), known.rawValue >= 0x40 else {
            throw ProtocolError(.unknownFrameType, "unknown server frame type 0x\(String(type, radix: 16))")
        }
        let frame: ServerFrame
        switch known {
        case .welcome:
            let version = try r.integer(UInt16.self, "version")
            let limits = ServerLimits(
                maxFrameBytes: try r.integer(UInt32.self, "max_frame"),
                maxFrameBytesBeforeLogin: try r.integer(UInt32.self, "max_frame_before_login"),
                loginTimeoutMs: try r.integer(UInt32.self, "login_timeout_ms"),
                idleTimeoutMs: try r.integer(UInt32.self, "idle_timeout_ms"),
                pingIntervalMs: try r.integer(UInt32.self, "ping_interval_ms"),
                mailboxMaxMessages: try r.integer(UInt32.self, "mailbox_max_messages"),
                mailboxMaxBytes: try r.integer(UInt64.self, "mailbox_max_bytes"))
            frame = .welcome(Welcome(version: version, limits: limits, serverName: try r.text("server_name")))
        case .ok:
            frame = .ok(requestID: try r.integer(UInt32.self, "request_id"))
        case .error:
            frame = .error(requestID: try r.integer(UInt32.self, "request_id"), code: try r.integer(UInt16.self, "code"),
                           message: try r.text("message"))
        case .loginOK:
            frame = .loginOK(requestID: try r.integer(UInt32.self, "request_id"), userID: try r.integer(UInt32.self, "user_id"),
                             name: try r.text("name"), address: try r.text("address"),
                             pendingMail: try r.integer(UInt32.self, "pending_mail"))
        case .contactList:
            let requestID = try r.integer(UInt32.self, "request_id")
            let final = try r.integer(UInt8.self, "final")
            let count = Int(try r.integer(UInt16.self, "count"))
            // Each entry takes at least 8 bytes: reject a count the frame cannot hold before reserving.
            guard count * 8 <= r.remaining else { throw ProtocolError(.malformedFrame, "contact count \(count) overruns the frame") }
            var contacts: [ContactInfo] = []
            contacts.reserveCapacity(count)
            for _ in 0..<count { contacts.append(try contactInfo(&r)) }
            frame = .contactList(requestID: requestID, final: final != 0, contacts: contacts)
        case .presence:
            frame = .presence(userID: try r.integer(UInt32.self, "user_id"), online: try r.integer(UInt8.self, "online") != 0)
        case .contactUpdate:
            frame = .contactUpdate(contact: try contactInfo(&r))
        case .chatStatus:
            frame = .chatStatus(requestID: try r.integer(UInt32.self, "request_id"), userID: try r.integer(UInt32.self, "user_id"),
                                online: try r.integer(UInt8.self, "online") != 0, text: try r.text("text"))
        case .deliver:
            frame = .deliver(seq: try r.integer(UInt64.self, "seq"), from: try r.integer(UInt32.self, "from"),
                             messageID: try r.integer(UInt64.self, "message_id"), sentAtMs: try r.integer(UInt64.self, "sent_at_ms"),
                             body: r.rest())
        case .sendAck:
            frame = .sendAck(messageID: try r.integer(UInt64.self, "message_id"), status: try r.integer(UInt8.self, "status"))
        case .sendError:
            frame = .sendError(messageID: try r.integer(UInt64.self, "message_id"), code: try r.integer(UInt16.self, "code"),
                               message: try r.text("message"))
        case .mail:
            frame = .mail(seq: try r.integer(UInt64.self, "seq"), from: try r.integer(UInt32.self, "from"),
                          fromName: try r.text("from_name"), messageID: try r.integer(UInt64.self, "message_id"),
                          sentAtMs: try r.integer(UInt64.self, "sent_at_ms"), body: r.rest())
        case .mailEnd:
            frame = .mailEnd(count: try r.integer(UInt32.self, "count"))
        case .serverPing:
            frame = .ping(token: try r.integer(UInt64.self, "token"))
        case .serverPong:
            frame = .pong(token: try r.integer(UInt64.self, "token"))
        case .sentCopy:
            frame = .sentCopy(to: try r.integer(UInt32.self, "to"), messageID: try r.integer(UInt64.self, "message_id"),
                              sentAtMs: try r.integer(UInt64.self, "sent_at_ms"), body: r.rest())
        default:
            throw ProtocolError(.unknownFrameType, "unknown server frame type 0x\(String(type, radix: 16))")
        }
        try r.expectEnd(type)
        return frame
    }

    static func contactInfo(_ r: inout FieldReader) throws(ProtocolError) -> ContactInfo {
        let id = try r.integer(UInt32.self, "user_id")
        let name = try r.text("name")
        let relationByte = try r.integer(UInt8.self, "relation")
        guard let relation = ContactRelation(rawValue: relationByte) else {
            throw ProtocolError(.malformedFrame, "unknown contact relation \(relationByte)")
        }
        let online = try r.integer(UInt8.self, "online") != 0
        return ContactInfo(userID: id, name: name.string, relation: relation, online: online)
    }
}
