// Decoding and dispatch: each complete frame of a client, by phase. Invariants: frames are handled
// only while the client is being read (not parked, not paused for output); a decode error closes
// the connection with the error's code; nothing here touches a socket.
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

extension ServerCore {
    func maxFrameBytes(_ connection: ClientState) -> Int {
        Int(connection.phase == .active ? configuration.limits.maxFrameBytes : configuration.limits.maxFrameBytesBeforeLogin)
    }

    /// Handles every complete frame in `buffer`, stopping early while authentication is in flight.
    func process(_ connection: ClientState, from buffer: ByteBuffer) {
        while !connection.isClosing && !connection.readingPaused {
            switch FrameDecoder.split(buffer.readableView, maxFrameBytes: maxFrameBytes(connection)) {
            case .needMore:
                return
            case .failure(let error):
                protocolFailure(connection, error)
                return
            case .frame(let (type, body), let consumed):
                stats.framesIn += 1
                metrics.framesIn.increment(Int(type))
                // The two frames of every relayed message, read in place: the same fields and checks as
                // FrameDecoder.clientFrame (a frame of the wrong size takes the general path below and
                // gets its error there), without building a ClientFrame (~10 % of the per-message
                // instructions, perf/instructions-per-message.sh).
                if connection.phase == .active {
                    if type == FrameType.send.rawValue && body.count >= 12 {
                        let to = UInt32(bigEndian: body.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
                        let messageID = UInt64(bigEndian: body.loadUnaligned(fromByteOffset: 4, as: UInt64.self))
                        relay(from: connection, to: to, messageID: messageID,
                              body: ByteView(borrowing: UnsafeRawBufferPointer(rebasing: body[12...])))
                        buffer.moveReaderIndex(forwardBy: consumed)
                        continue
                    }
                    if type == FrameType.deliveryAck.rawValue && body.count == 8 {
                        acknowledgeDeliveries(connection, throughSeq: UInt64(bigEndian: body.loadUnaligned(as: UInt64.self)))
                        buffer.moveReaderIndex(forwardBy: consumed)
                        continue
                    }
                }
                do {
                    let frame = try FrameDecoder.clientFrame(type: type, body: body)
                    handleFrame(connection, frame)
                } catch {
                    protocolFailure(connection, error)
                    return
                }
                buffer.moveReaderIndex(forwardBy: consumed)
            }
        }
    }

    func protocolFailure(_ connection: ClientState, _ error: ProtocolError) {
        stats.protocolErrors += 1
        logger.debug("protocol error", metadata: ["peer": "\(connection.peerText)", "error": "\(error)"])
        close(connection, code: error.code, error.message)
    }

    func handleFrame(_ connection: ClientState, _ frame: ClientFrame) {
        switch connection.phase {
        case .awaitingHello:
            switch frame {
            case .hello(let version, _):
                guard version >= ProtocolConstants.minimumVersion && version <= ProtocolConstants.version else {
                    close(connection, code: .unsupportedVersion,
                          "protocol version \(version) is not supported; this server speaks \(ProtocolConstants.minimumVersion) to \(ProtocolConstants.version)")
                    return
                }
                connection.protocolVersion = version
                connection.phase = .awaitingAuth
                // WELCOME answers with the version the connection speaks from now on.
                send(connection, .welcome(Welcome(version: version, limits: configuration.limits,
                                                  serverName: TextView(configuration.serverName))))
            case .ping(let token):
                send(connection, .pong(token: token))
            default:
                close(connection, code: .notAllowedNow, "send HELLO first")
            }
        case .awaitingAuth:
            switch frame {
            case .register(let requestID, let name, let password):
                startRegistration(connection, requestID: requestID, name: name.string, password: password.bytes.array)
            case .login(let requestID, let name, let password):
                startLogin(connection, requestID: requestID, name: name.string, password: password.bytes.array)
            case .loginDevice(let requestID, let name, let password, let deviceID, let deviceName):
                guard connection.protocolVersion >= 2 else {
                    close(connection, code: .notAllowedNow, "LOGIN_DEVICE needs protocol version 2 (this connection said 1 in HELLO)")
                    return
                }
                let id = deviceID.string
                guard Self.isValidDeviceID(id) else {
                    send(connection, .error(requestID: requestID, code: ErrorCode.invalidRequest.rawValue,
                                            message: "a device id is 1-\(ProtocolConstants.maxDeviceIDBytes) characters of A-Z a-z 0-9 _ -"))
                    return
                }
                let deviceName = deviceName.string
                guard !deviceName.unicodeScalars.contains(where: { $0.value < 0x20 || ($0.value >= 0x7F && $0.value < 0xA0) }) else {
                    send(connection, .error(requestID: requestID, code: ErrorCode.invalidRequest.rawValue,
                                            message: "a device name must not contain control characters"))
                    return
                }
                startLogin(connection, requestID: requestID, name: name.string, password: password.bytes.array,
                           deviceID: id, deviceName: deviceName)
            case .ping(let token):
                send(connection, .pong(token: token))
            case .pong:
                break
            default:
                close(connection, code: .notAllowedNow, "only REGISTER, LOGIN and PING are allowed before login")
            }
        case .active:
            handleActiveFrame(connection, frame)
        case .authenticating, .closing:
            break
        }
    }

    func handleActiveFrame(_ connection: ClientState, _ frame: ClientFrame) {
        switch frame {
        case .send(let to, let messageID, let body):
            relay(from: connection, to: to, messageID: messageID, body: body)
        case .deliveryAck(let throughSeq):
            acknowledgeDeliveries(connection, throughSeq: throughSeq)
        case .mailAck(let throughSeq):
            acknowledgeMail(connection, throughSeq: throughSeq)
        case .ping(let token):
            send(connection, .pong(token: token))
        case .pong:
            break
        case .openChat(let requestID, let contact):
            switch core.openChat(from: connection.userID, with: contact) {
            case .online:
                send(connection, .chatStatus(requestID: requestID, userID: contact, online: true, text: "Contact online"))
            case .offline:
                send(connection, .chatStatus(requestID: requestID, userID: contact, online: false,
                                             text: TextView(ProtocolConstants.offlineNotice)))
            case .notAContact:
                send(connection, .error(requestID: requestID, code: ErrorCode.notAContact.rawValue,
                                        message: "user \(contact) is not an accepted contact"))
            }
        case .listContacts(let requestID):
            sendContactList(connection, requestID: requestID, contacts: core.contactList(of: connection.userID))
        case .contactAdd(let requestID, let name):
            contactChange(connection, requestID: requestID, name: name.string) { .contactAdd(owner: $0, contactName: $1) }
        case .contactAccept(let requestID, let name):
            contactChange(connection, requestID: requestID, name: name.string) { .contactAccept(owner: $0, contactName: $1) }
        case .contactRemove(let requestID, let name):
            contactChange(connection, requestID: requestID, name: name.string) { .contactRemove(owner: $0, contactName: $1) }
        case .register(let requestID, _, _), .login(let requestID, _, _), .loginDevice(let requestID, _, _, _, _):
            send(connection, .error(requestID: requestID, code: ErrorCode.alreadyLoggedIn.rawValue,
                                    message: "already logged in as \(connection.userName)"))
        case .hello:
            close(connection, code: .notAllowedNow, "HELLO was already received")
        }
    }

    /// 1-64 characters of A-Z a-z 0-9 _ - (what sbchat writes: 32 hex digits).
    static func isValidDeviceID(_ id: String) -> Bool {
        let utf8 = id.utf8
        guard !utf8.isEmpty && utf8.count <= ProtocolConstants.maxDeviceIDBytes else { return false }
        return utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2D
        }
    }

    func sendContactList(_ connection: ClientState, requestID: UInt32, contacts: [ContactInfo]) {
        let chunk = 500
        var start = 0
        repeat {
            let end = min(start + chunk, contacts.count)
            send(connection, .contactList(requestID: requestID, final: end == contacts.count, contacts: Array(contacts[start..<end])))
            start = end
        } while start < contacts.count
    }

    func contactChange(_ connection: ClientState, requestID: UInt32, name: String, _ op: (UserID, String) -> WriteOp) {
        guard Store.isValidUserName(name) else {
            send(connection, .error(requestID: requestID, code: ErrorCode.invalidName.rawValue, message: "'\(name)' is not a valid user name"))
            return
        }
        storeBatch.append(op(connection.userID, name), .contact(connection: connection.id.raw, requestID: requestID))
    }
}
