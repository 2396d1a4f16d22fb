// Encoding straight into an output ByteBuffer: the length prefix is reserved first and patched
// when the frame is complete, so no frame is ever built in a temporary. Strings longer than a
// u16 can describe are cut at 65535 bytes (callers validate user input before it gets here).
import SwitchboardIO

public enum FrameEncoder {
    /// Starts a frame; returns where its length prefix is, for `end`. That is a stream position, not a buffer
    /// index: any write of the frame may compact the buffer (`reserveWritable`), which moves the prefix.
    @inlinable public static func begin(_ out: ByteBuffer, _ type: FrameType) -> Int {
        let start = Int(out.streamPosition(ofIndex: out.writerIndex))
        out.writeInteger(UInt32(0))
        out.writeInteger(type.rawValue)
        return start
    }

    @inlinable public static func end(_ out: ByteBuffer, _ start: Int) {
        let index = out.index(ofStreamPosition: UInt64(start))
        out.setInteger(UInt32(out.writerIndex - index - 4), at: index)
    }

    @inlinable static func text(_ out: ByteBuffer, _ text: TextView) {
        text.bytes.withUnsafeBytes { raw in
            let count = min(raw.count, Int(UInt16.max))
            out.writeInteger(UInt16(count))
            out.writeBytes(UnsafeRawBufferPointer(rebasing: raw[0..<count]))
        }
    }

    @inlinable static func text(_ out: ByteBuffer, _ string: String) {
        var s = string
        s.withUTF8 { utf8 in
            let count = min(utf8.count, Int(UInt16.max))
            out.writeInteger(UInt16(count))
            out.writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(utf8)[0..<count]))
        }
    }

    @inlinable static func body(_ out: ByteBuffer, _ body: ByteView) {
        body.withUnsafeBytes { out.writeBytes($0) }
    }

    public static func encode(_ frame: ClientFrame, into out: ByteBuffer) {
        switch frame {
        case .hello(let version, let agent):
            let s = begin(out, .hello)
            out.writeInteger(ProtocolConstants.magic); out.writeInteger(version); text(out, agent)
            end(out, s)
        case .register(let requestID, let name, let password):
            let s = begin(out, .register)
            out.writeInteger(requestID); text(out, name); text(out, password)
            end(out, s)
        case .login(let requestID, let name, let password):
            let s = begin(out, .login)
            out.writeInteger(requestID); text(out, name); text(out, password)
            end(out, s)
        case .contactAdd(let requestID, let name):
            let s = begin(out, .contactAdd); out.writeInteger(requestID); text(out, name); end(out, s)
        case .contactAccept(let requestID, let name):
            let s = begin(out, .contactAccept); out.writeInteger(requestID); text(out, name); end(out, s)
        case .contactRemove(let requestID, let name):
            let s = begin(out, .contactRemove); out.writeInteger(requestID); text(out, name); end(out, s)
        case .listContacts(let requestID):
            let s = begin(out, .listContacts); out.writeInteger(requestID); end(out, s)
        case .openChat(let requestID, let contact):
            let s = begin(out, .openChat); out.writeInteger(requestID); out.writeInteger(contact); end(out, s)
        case .send(let to, let messageID, let payload):
            writeSend(into: out, to: to, messageID: messageID, body: payload)
        case .deliveryAck(let seq):
            let s = begin(out, .deliveryAck); out.writeInteger(seq); end(out, s)
        case .mailAck(let seq):
            let s = begin(out, .mailAck); out.writeInteger(seq); end(out, s)
        case .ping(let token):
            let s = begin(out, .ping); out.writeInteger(token); end(out, s)
        case .pong(let token):
            let s = begin(out, .pong); out.writeInteger(token); end(out, s)
        }
    }

    @inlinable public static func writeSend(into out: ByteBuffer, to: UInt32, messageID: UInt64, body payload: ByteView) {
        out.reserveWritable(17 + payload.count)
        let s = begin(out, .send)
        out.writeInteger(to); out.writeInteger(messageID); body(out, payload)
        end(out, s)
    }

    public static func encode(_ frame: ServerFrame, into out: ByteBuffer) {
        switch frame {
        case .welcome(let w):
            let s = begin(out, .welcome)
            out.writeInteger(w.version)
            out.writeInteger(w.limits.maxFrameBytes); out.writeInteger(w.limits.maxFrameBytesBeforeLogin)
            out.writeInteger(w.limits.loginTimeoutMs); out.writeInteger(w.limits.idleTimeoutMs)
            out.writeInteger(w.limits.pingIntervalMs); out.writeInteger(w.limits.mailboxMaxMessages)
            out.writeInteger(w.limits.mailboxMaxBytes)
            text(out, w.serverName)
            end(out, s)
        case .ok(let requestID):
            let s = begin(out, .ok); out.writeInteger(requestID); end(out, s)
        case .error(let requestID, let code, let message):
            let s = begin(out, .error); out.writeInteger(requestID); out.writeInteger(code); text(out, message); end(out, s)
        case .loginOK(let requestID, let userID, let name, let address, let pendingMail):
            let s = begin(out, .loginOK)
            out.writeInteger(requestID); out.writeInteger(userID); text(out, name); text(out, address); out.writeInteger(pendingMail)
            end(out, s)
        case .contactList(let requestID, let final, let contacts):
            let s = begin(out, .contactList)
            out.writeInteger(requestID); out.writeInteger(UInt8(final ? 1 : 0)); out.writeInteger(UInt16(contacts.count))
            for c in contacts { contactInfo(out, c) }
            end(out, s)
        case .presence(let userID, let online):
            let s = begin(out, .presence); out.writeInteger(userID); out.writeInteger(UInt8(online ? 1 : 0)); end(out, s)
        case .contactUpdate(let contact):
            let s = begin(out, .contactUpdate); contactInfo(out, contact); end(out, s)
        case .chatStatus(let requestID, let userID, let online, let message):
            let s = begin(out, .chatStatus)
            out.writeInteger(requestID); out.writeInteger(userID); out.writeInteger(UInt8(online ? 1 : 0)); text(out, message)
            end(out, s)
        case .deliver(let seq, let from, let messageID, let sentAtMs, let payload):
            payload.withUnsafeBytes { writeDeliver(into: out, seq: seq, from: from, messageID: messageID, sentAtMs: sentAtMs, body: $0) }
        case .sendAck(let messageID, let status):
            writeSendAck(into: out, messageID: messageID, status: status)
        case .sendError(let messageID, let code, let message):
            let s = begin(out, .sendError); out.writeInteger(messageID); out.writeInteger(code); text(out, message); end(out, s)
        case .mail(let seq, let from, let fromName, let messageID, let sentAtMs, let payload):
            let s = begin(out, .mail)
            out.writeInteger(seq); out.writeInteger(from); text(out, fromName); out.writeInteger(messageID); out.writeInteger(sentAtMs)
            body(out, payload)
            end(out, s)
        case .mailEnd(let count):
            let s = begin(out, .mailEnd); out.writeInteger(count); end(out, s)
        case .ping(let token):
            let s = begin(out, .serverPing); out.writeInteger(token); end(out, s)
        case .pong(let token):
            let s = begin(out, .serverPong); out.writeInteger(token); end(out, s)
        }
    }

    static func contactInfo(_ out: ByteBuffer, _ c: ContactInfo) {
        out.writeInteger(c.userID); text(out, c.name); out.writeInteger(c.relation.rawValue); out.writeInteger(UInt8(c.online ? 1 : 0))
    }

    /// The relay's hot path: one copy of the body from the sender's input into the receiver's output.
    @inlinable public static func writeDeliver(into out: ByteBuffer, seq: UInt64, from: UInt32, messageID: UInt64,
                                               sentAtMs: UInt64, body payload: UnsafeRawBufferPointer) {
        // The two frames of every relayed message are written with one reserve and direct stores
        // (the general path above checks room once per field): same bytes, checked by the round-trip
        // tests and the fuzzer. Layout: length (type + fields + body), type, seq, from, id, sentAt, body.
        let total = 33 + payload.count
        out.reserveWritable(total)
        let p = out.base! + out.writerIndex
        p.storeBytes(of: UInt32(total - 4).bigEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: FrameType.deliver.rawValue, toByteOffset: 4, as: UInt8.self)
        p.storeBytes(of: seq.bigEndian, toByteOffset: 5, as: UInt64.self)
        p.storeBytes(of: from.bigEndian, toByteOffset: 13, as: UInt32.self)
        p.storeBytes(of: messageID.bigEndian, toByteOffset: 17, as: UInt64.self)
        p.storeBytes(of: sentAtMs.bigEndian, toByteOffset: 25, as: UInt64.self)
        if let source = payload.baseAddress, payload.count > 0 { (p + 33).copyMemory(from: source, byteCount: payload.count) }
        out.writerIndex += total
    }

    @inlinable public static func writeSendAck(into out: ByteBuffer, messageID: UInt64, status: UInt8) {
        out.reserveWritable(14)
        let p = out.base! + out.writerIndex
        p.storeBytes(of: UInt32(10).bigEndian, toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: FrameType.sendAck.rawValue, toByteOffset: 4, as: UInt8.self)
        p.storeBytes(of: messageID.bigEndian, toByteOffset: 5, as: UInt64.self)
        p.storeBytes(of: status, toByteOffset: 13, as: UInt8.self)
        out.writerIndex += 14
    }
}
