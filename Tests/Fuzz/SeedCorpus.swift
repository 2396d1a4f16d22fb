// Writes the committed seed corpus: `fuzz-seeds DIR` fills DIR/decoder and DIR/roundtrip.
// Decoder seeds are small valid frames of every type (and a few streams and classic bad frames) behind
// the target's 2-4 header bytes; roundtrip seeds pick each of the 30 frame kinds once.
// Rebuild with: Tests/Fuzz/build.sh seeds && .build-fuzz/fuzz-seeds Tests/Fuzz/corpus

import Foundation
import SwitchboardIO
import SwitchboardProtocol

private let clientSeeds: [(String, ClientFrame)] = [
    ("hello", .hello(version: 1, agent: "sbchat/1.0")),
    ("register", .register(requestID: 1, name: "alice", password: "correct horse")),
    ("login", .login(requestID: 2, name: "Zoë", password: "héllo wörld 👋")),
    ("contact-add", .contactAdd(requestID: 3, name: "bob")),
    ("contact-accept", .contactAccept(requestID: 4, name: "alice")),
    ("contact-remove", .contactRemove(requestID: 5, name: "")),
    ("open-chat", .openChat(requestID: 7, contact: 42)),
    ("send", .send(to: 7, messageID: 42, body: ByteView("hi 👋"))),
    ("delivery-ack", .deliveryAck(throughSeq: 3)),
    ("mail-ack", .mailAck(throughSeq: 12)),
    ("ping", .ping(token: 0xDEAD_BEEF)),
    ("pong", .pong(token: 1)),
    ("list-contacts", .listContacts(requestID: 6)),
    ("login-device", .loginDevice(requestID: 8, name: "alice", password: "correct horse",
                                  deviceID: "0123456789abcdef0123456789abcdef", deviceName: "laptop")),
]

private let contacts = [
    ContactInfo(userID: 1, name: "alice", relation: .accepted, online: true),
    ContactInfo(userID: 2, name: "Zoë 🦊", relation: .incomingRequest, online: false),
]

private let serverSeeds: [(String, ServerFrame)] = [
    ("welcome", .welcome(Welcome(limits: ServerLimits(), serverName: "switchboard"))),
    ("ok", .ok(requestID: 1)),
    ("error", .error(requestID: 2, code: ErrorCode.nameTaken.rawValue, message: "name taken")),
    ("login-ok", .loginOK(requestID: 3, userID: 17, name: "alice", address: "127.0.0.1:5000", pendingMail: 2)),
    ("contact-list", .contactList(requestID: 4, final: true, contacts: contacts)),
    ("presence", .presence(userID: 17, online: true)),
    ("contact-update", .contactUpdate(contact: contacts[1])),
    ("chat-status", .chatStatus(requestID: 5, userID: 18, online: false, text: TextView(ProtocolConstants.offlineNotice))),
    ("deliver", .deliver(seq: 1, from: 17, messageID: 99, sentAtMs: 1_700_000_000_000, body: ByteView("hello"))),
    ("send-ack", .sendAck(messageID: 99, status: SendStatus.delivered.rawValue)),
    ("mail", .mail(seq: 1, from: 17, fromName: "alice", messageID: 5, sentAtMs: 1_700_000_000_000, body: ByteView("offline"))),
    ("mail-end", .mailEnd(count: 3)),
    ("send-error", .sendError(messageID: 101, code: ErrorCode.notAContact.rawValue, message: "not a contact")),
    ("server-ping", .ping(token: 1)),
    ("server-pong", .pong(token: 2)),
    ("sent-copy", .sentCopy(to: 18, messageID: 42, sentAtMs: 1_700_000_000_000, body: ByteView("from my laptop"))),
]

private func bytes(_ frames: [ClientFrame]) -> [UInt8] {
    let out = ByteBuffer()
    for f in frames { FrameEncoder.encode(f, into: out) }
    return out.readableArray()
}

private func bytes(_ frames: [ServerFrame]) -> [UInt8] {
    let out = ByteBuffer()
    for f in frames { FrameEncoder.encode(f, into: out) }
    return out.readableArray()
}

/// Decoder header: direction bit, limit index 13 (65 536) unless given, two chunk sizes (3 and 5 bytes).
private func decoderInput(server: Bool, _ stream: [UInt8], limitIndex: UInt8 = 13) -> [UInt8] {
    [limitIndex << 1 | (server ? 1 : 0), 2, 3, 5] + stream
}

/// Roundtrip input: an empty buffer state, one frame of `kind`, then field bytes from a fixed generator.
private func roundtripInput(kind: UInt8) -> [UInt8] {
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15 &* UInt64(kind + 1)
    var fields: [UInt8] = []
    for _ in 0..<48 {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        fields.append(UInt8(truncatingIfNeeded: state >> 33) & 0x7F)  // small values: short texts, mostly ASCII
    }
    return [0, 0, 0, 0, 0, 0, 0, kind] + fields
}

@main
struct SeedCorpus {
    static func main() throws {
        let args = CommandLine.arguments
        guard args.count == 2 else { print("usage: fuzz-seeds DIR"); exit(2) }
        let root = URL(fileURLWithPath: args[1])
        func write(_ target: String, _ name: String, _ data: [UInt8]) throws {
            let dir = root.appendingPathComponent(target)
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            try Data(data).write(to: dir.appendingPathComponent(name))
        }
        for (name, f) in clientSeeds { try write("decoder", "client-\(name)", decoderInput(server: false, bytes([f]))) }
        for (name, f) in serverSeeds { try write("decoder", "server-\(name)", decoderInput(server: true, bytes([f]))) }
        try write("decoder", "client-stream", decoderInput(server: false, bytes(clientSeeds.map(\.1))))
        try write("decoder", "server-stream", decoderInput(server: true, bytes(serverSeeds.map(\.1))))
        // A PING (length 9) at exactly the limit (index 5: 9) and one byte over it (index 4: 8).
        try write("decoder", "client-ping-at-limit", decoderInput(server: false, bytes([ClientFrame.ping(token: 7)]), limitIndex: 5))
        try write("decoder", "client-ping-over-limit", decoderInput(server: false, bytes([ClientFrame.ping(token: 7)]), limitIndex: 4))
        try write("decoder", "bad-length-zero", decoderInput(server: false, [0, 0, 0, 0, 0x0B]))
        try write("decoder", "bad-too-large", decoderInput(server: false, [0x06, 0x40, 0x00, 0x00]))
        try write("decoder", "bad-wrong-direction", decoderInput(server: true, bytes([ClientFrame.ping(token: 1)])))
        try write("decoder", "bad-utf8-surrogate", decoderInput(server: false, [0, 0, 0, 10, 0x04, 0, 0, 0, 1, 0, 3, 0xED, 0xA0, 0x80]))
        try write("decoder", "bad-trailing", decoderInput(server: false, [0, 0, 0, 6, 0x0D, 0, 0, 0, 1, 0xFF]))
        try write("decoder", "bad-contact-count", decoderInput(server: true, [0, 0, 0, 8, 0x44, 0, 0, 0, 1, 1, 0xFF, 0xFF]))
        for kind in 0..<30 { try write("roundtrip", String(format: "kind-%02d", kind), roundtripInput(kind: UInt8(kind))) }
    }
}
