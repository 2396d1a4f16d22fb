// A logged-in (or logging-in) client session over a ChatConnection: request/answer pairing by
// request id, pushed frames queued as events, automatic PONG, and a per-process memory of
// (sender, message id) so a delivery the server repeats after a crash is shown once.
import Glibc
import SwitchboardIO
import SwitchboardProtocol

public struct LoginInfo: Sendable, Equatable {
    public var userID: UInt32
    public var name: String
    public var address: String
    public var pendingMail: UInt32
    public var contacts: [ContactInfo]
}

/// Something the server pushed.
public enum ChatEvent: Equatable, Sendable {
    case message(seq: UInt64, from: UInt32, messageID: UInt64, sentAtMs: UInt64, body: [UInt8])
    case mail(seq: UInt64, from: UInt32, fromName: String, messageID: UInt64, sentAtMs: UInt64, body: [UInt8])
    case mailEnd(count: UInt32)
    /// A message this user sent from another device (protocol 2): show it as sent; its SEND_ACK follows.
    case sentCopy(to: UInt32, messageID: UInt64, sentAtMs: UInt64, body: [UInt8])
    case presence(userID: UInt32, online: Bool)
    case contactUpdate(ContactInfo)
    case sendAck(messageID: UInt64, status: SendStatus)
    case sendError(messageID: UInt64, code: UInt16, message: String)
    /// The server closes the connection after this.
    case serverError(code: UInt16, message: String)
}

/// What LOGIN_DEVICE says about this client: a stable id (1-64 of A-Z a-z 0-9 _ -) and a readable name.
public struct DeviceIdentity: Sendable, Equatable {
    public var id: String
    public var name: String
    public init(id: String, name: String) { self.id = id; self.name = name }

    /// A fresh random id (32 hex digits), for a short-lived device such as one scripted command.
    public static func randomID() -> String {
        var hex = ""
        for _ in 0..<2 {
            let v = UInt64.random(in: 0...UInt64.max)
            let digits = String(v, radix: 16)
            hex += String(repeating: "0", count: 16 - digits.count) + digits
        }
        return hex
    }

    /// The stable id kept in `file`: read when it holds a valid one, else created (directories too)
    /// with a fresh random id. Throws when the file can be neither read nor written.
    public static func storedID(in file: String) throws -> String {
        if let text = try? readSmallFile(file) {
            let id = String(text.filter { !$0.isWhitespace })
            if isValidID(id) { return id }
        }
        let id = randomID()
        try writeFile(file, id + "\n")
        return id
    }

    public static func isValidID(_ id: String) -> Bool {
        let utf8 = id.utf8
        guard !utf8.isEmpty && utf8.count <= ProtocolConstants.maxDeviceIDBytes else { return false }
        return utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2D
        }
    }

    /// The machine's host name, or "device".
    public static func hostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "device" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "device" : String(name.utf8.prefix(ProtocolConstants.maxDeviceNameBytes)) ?? "device"
    }

    private static func readSmallFile(_ path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ClientError("cannot open \(path): errno \(errno)") }
        defer { Glibc.close(fd) }
        var bytes = [UInt8](repeating: 0, count: 256)
        let n = read(fd, &bytes, bytes.count)
        guard n >= 0 else { throw ClientError("cannot read \(path): errno \(errno)") }
        return String(decoding: bytes.prefix(n), as: UTF8.self)
    }

    private static func writeFile(_ path: String, _ text: String) throws {
        // Create the parent directories (0700), then the file (0600) atomically via a temp name.
        var prefix = ""
        for part in path.split(separator: "/").dropLast() {
            prefix += "/" + part
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST { throw ClientError("cannot create \(prefix): errno \(errno)") }
        }
        let temp = path + ".tmp\(getpid())"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ClientError("cannot write \(temp): errno \(errno)") }
        let bytes = Array(text.utf8)
        let written = write(fd, bytes, bytes.count)
        Glibc.close(fd)
        guard written == bytes.count, rename(temp, path) == 0 else {
            unlink(temp)
            throw ClientError("cannot write \(path): errno \(errno)")
        }
    }
}

public final class ChatSession {
    public let connection: ChatConnection
    private var nextRequestID: UInt32 = 1
    private var events: [ChatEvent] = []
    private var eventHead = 0
    private var seenDeliveries = Set<DeliveryKey>()
    public private(set) var login: LoginInfo?
    public var defaultTimeoutMs: Int32 = 15_000

    private struct DeliveryKey: Hashable { let from: UInt32; let id: UInt64 }

    public init(connection: ChatConnection) { self.connection = connection }

    public convenience init(server: String, agent: String = "switchboard-client", tls: ClientTLSOptions? = nil) throws {
        self.init(connection: try ChatConnection(server: server, agent: agent, tls: tls))
    }

    private func requestID() -> UInt32 {
        defer { nextRequestID &+= 1 }
        return nextRequestID
    }

    // MARK: requests

    public func register(name: String, password: String) throws {
        let id = requestID()
        try connection.sendFrame(.register(requestID: id, name: TextView(name), password: TextView(password)))
        _ = try awaitAnswer(id)
    }

    /// Logs in; with `device` (protocol 2) as that device: the same device's older session is taken
    /// over, other devices of the user stay online.
    @discardableResult
    public func logIn(name: String, password: String, device: DeviceIdentity? = nil) throws -> LoginInfo {
        let id = requestID()
        if let device {
            try connection.sendFrame(.loginDevice(requestID: id, name: TextView(name), password: TextView(password),
                                                  deviceID: TextView(device.id), deviceName: TextView(device.name)))
        } else {
            try connection.sendFrame(.login(requestID: id, name: TextView(name), password: TextView(password)))
        }
        guard case .loginOK(_, let userID, let loggedName, let address, let pending) = try awaitAnswer(id) else {
            throw ClientError("unexpected answer to LOGIN")
        }
        let contacts = try awaitContactList(id)
        let info = LoginInfo(userID: userID, name: loggedName.string, address: address.string, pendingMail: pending, contacts: contacts)
        login = info
        return info
    }

    public func contacts() throws -> [ContactInfo] {
        let id = requestID()
        try connection.sendFrame(.listContacts(requestID: id))
        return try awaitContactList(id)
    }

    public func addContact(_ name: String) throws {
        let id = requestID()
        try connection.sendFrame(.contactAdd(requestID: id, name: TextView(name)))
        _ = try awaitAnswer(id)
    }

    public func acceptContact(_ name: String) throws {
        let id = requestID()
        try connection.sendFrame(.contactAccept(requestID: id, name: TextView(name)))
        _ = try awaitAnswer(id)
    }

    public func removeContact(_ name: String) throws {
        let id = requestID()
        try connection.sendFrame(.contactRemove(requestID: id, name: TextView(name)))
        _ = try awaitAnswer(id)
    }

    public struct ChatStatus: Equatable, Sendable { public var online: Bool; public var text: String }

    /// Opens a dialog with a contact: the server says whether it is online, or gives its offline notice.
    public func openChat(with userID: UInt32) throws -> ChatStatus {
        let id = requestID()
        try connection.sendFrame(.openChat(requestID: id, contact: userID))
        guard case .chatStatus(_, _, let online, let text) = try awaitAnswer(id) else { throw ClientError("unexpected answer to OPEN_CHAT") }
        return ChatStatus(online: online, text: text.string)
    }

    /// Sends a message; the outcome arrives later as `.sendAck` or `.sendError` (see `awaitSendOutcome`).
    public func send(to userID: UInt32, messageID: UInt64, body: [UInt8]) throws {
        try connection.sendFrame(.send(to: userID, messageID: messageID, body: ByteView(body)))
    }

    /// Queues a SEND without writing (batching); call `flush()`.
    public func queueSend(to userID: UInt32, messageID: UInt64, body: [UInt8]) {
        connection.queueFrame(.send(to: userID, messageID: messageID, body: ByteView(body)))
    }

    public func flush() throws { try connection.flush() }

    public enum SendOutcome: Equatable, Sendable { case delivered, storedOffline, refused(code: UInt16, message: String) }

    /// Waits for the SEND_ACK or SEND_ERROR of one message; other events stay queued.
    public func awaitSendOutcome(_ messageID: UInt64, timeoutMs: Int32? = nil) throws -> SendOutcome {
        let deadline = Clock.monotonicMs() + UInt64(timeoutMs ?? defaultTimeoutMs)
        while true {
            for index in eventHead..<events.count {
                switch events[index] {
                case .sendAck(let id, let status) where id == messageID:
                    events.remove(at: index)
                    return status == .delivered ? .delivered : .storedOffline
                case .sendError(let id, let code, let message) where id == messageID:
                    events.remove(at: index)
                    return .refused(code: code, message: message)
                case .serverError(let code, let message):
                    throw ClientError("server closed the session: \(message)", code: code)
                default:
                    continue
                }
            }
            let now = Clock.monotonicMs()
            guard now < deadline else { throw ClientError("no acknowledgement for message \(messageID) within the timeout") }
            try pump(timeoutMs: Int32(deadline - now))
        }
    }

    public func acknowledgeDeliveries(through seq: UInt64) throws { try connection.sendFrame(.deliveryAck(throughSeq: seq)) }
    public func acknowledgeMail(through seq: UInt64) throws { try connection.sendFrame(.mailAck(throughSeq: seq)) }

    /// The next pushed event, or nil after `timeoutMs` without one.
    public func nextEvent(timeoutMs: Int32) throws -> ChatEvent? {
        let deadline = Clock.monotonicMs() + UInt64(max(0, timeoutMs))
        while eventHead >= events.count {
            let now = Clock.monotonicMs()
            if now >= deadline { return nil }
            try pump(timeoutMs: Int32(deadline - now))
        }
        let event = events[eventHead]
        eventHead += 1
        if eventHead > 1024 && eventHead * 2 > events.count {
            events.removeFirst(eventHead)
            eventHead = 0
        }
        return event
    }

    // MARK: plumbing

    /// Reads one frame (or times out) and files it as an event. Returns the frame when it answers a request.
    @discardableResult
    private func pump(timeoutMs: Int32) throws -> ServerFrame? {
        guard let frame = try connection.nextFrame(timeoutMs: timeoutMs) else { return nil }
        switch frame {
        case .deliver(let seq, let from, let messageID, let sentAtMs, let body):
            if seenDeliveries.insert(DeliveryKey(from: from, id: messageID)).inserted {
                events.append(.message(seq: seq, from: from, messageID: messageID, sentAtMs: sentAtMs, body: body.array))
            } else {
                // Shown already: acknowledge so the server stops holding it.
                try connection.sendFrame(.deliveryAck(throughSeq: seq))
            }
            return nil
        case .mail(let seq, let from, let name, let messageID, let sentAtMs, let body):
            // A live delivery this process already showed can come back as mail (its connection
            // dropped before the acknowledgement). Skip it; the next cumulative MAIL_ACK covers it.
            if seenDeliveries.insert(DeliveryKey(from: from, id: messageID)).inserted {
                events.append(.mail(seq: seq, from: from, fromName: name.string, messageID: messageID, sentAtMs: sentAtMs,
                                    body: body.array))
            }
            return nil
        case .mailEnd(let count): events.append(.mailEnd(count: count)); return nil
        case .sentCopy(let to, let messageID, let sentAtMs, let body):
            events.append(.sentCopy(to: to, messageID: messageID, sentAtMs: sentAtMs, body: body.array)); return nil
        case .presence(let user, let online): events.append(.presence(userID: user, online: online)); return nil
        case .contactUpdate(let info): events.append(.contactUpdate(info)); return nil
        case .sendAck(let id, let status):
            events.append(.sendAck(messageID: id, status: SendStatus(rawValue: status) ?? .delivered)); return nil
        case .sendError(let id, let code, let message):
            events.append(.sendError(messageID: id, code: code, message: message.string)); return nil
        case .ping(let token):
            try connection.sendFrame(.pong(token: token)); return nil
        case .error(0, let code, let message):
            events.append(.serverError(code: code, message: message.string)); return nil
        default:
            return frame
        }
    }

    private var answers: [UInt32: [ServerFrame]] = [:]

    private func awaitAnswer(_ id: UInt32) throws -> ServerFrame {
        let frame = try awaitFrame(for: id)
        if case .error(_, let code, let message) = frame { throw ClientError(message.string, code: code) }
        return frame
    }

    private func awaitFrame(for id: UInt32) throws -> ServerFrame {
        let deadline = Clock.monotonicMs() + UInt64(defaultTimeoutMs)
        while true {
            if var queued = answers[id], !queued.isEmpty {
                let first = queued.removeFirst()
                answers[id] = queued.isEmpty ? nil : queued
                return first
            }
            if let fatal = events[eventHead...].first(where: { if case .serverError = $0 { return true } else { return false } }),
               case .serverError(let code, let message) = fatal {
                throw ClientError(message, code: code)
            }
            let now = Clock.monotonicMs()
            guard now < deadline else { throw ClientError("no answer from the server within \(defaultTimeoutMs) ms") }
            if let frame = try pump(timeoutMs: Int32(deadline - now)) {
                answers[frame.requestID ?? 0, default: []].append(frame)
            }
        }
    }

    private func awaitContactList(_ id: UInt32) throws -> [ContactInfo] {
        var all: [ContactInfo] = []
        while true {
            guard case .contactList(_, let final, let contacts) = try awaitAnswer(id) else { throw ClientError("expected CONTACT_LIST") }
            all.append(contentsOf: contacts)
            if final { return all }
        }
    }
}

extension ServerFrame {
    var requestID: UInt32? {
        switch self {
        case .ok(let id), .error(let id, _, _), .loginOK(let id, _, _, _, _), .contactList(let id, _, _), .chatStatus(let id, _, _, _):
            return id
        default:
            return nil
        }
    }
}
