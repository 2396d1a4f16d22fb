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
                guard version == ProtocolConstants.version else {
                    close(connection, code: .unsupportedVersion,
                          "protocol version \(version) is not supported; this server speaks \(ProtocolConstants.version)")
                    return
                }
                connection.phase = .awaitingAuth
                send(connection, .welcome(Welcome(limits: configuration.limits, serverName: TextView(configuration.serverName))))
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
        case .register(let requestID, _, _), .login(let requestID, _, _):
            send(connection, .error(requestID: requestID, code: ErrorCode.alreadyLoggedIn.rawValue,
                                    message: "already logged in as \(connection.userName)"))
        case .hello:
            close(connection, code: .notAllowedNow, "HELLO was already received")
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
