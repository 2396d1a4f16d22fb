// Cluster mode: what the cluster driver (RelayServer's ClusterRouter) tells the core. Presence of users
// on other nodes, messages other nodes hand here for local receivers, the answers to messages this
// node handed on, and the writes of other nodes applied to the local replica of the store. Every call
// runs on the loop thread, inside a turn (the driver ends the turn as after any other event).
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

extension ServerCore {
    // MARK: presence of other nodes' users

    /// The user's accepted contacts as the local replica has them now (its node's event carries them as
    /// they were at its login; an accept since then is in the store). nil when the store cannot say.
    func acceptedContactIDs(of user: UserID) -> [UserID]? {
        guard let entries = try? store.contacts(of: user) else { return nil }
        return entries.compactMap { $0.state == .accepted ? $0.userID : nil }
    }

    public func remoteDeviceJoined(user: UserID, node: UInt16, deviceID: String, contacts: [UserID]) {
        let change = core.remoteDeviceJoined(user: user, node: node, deviceID: deviceID,
                                             contacts: acceptedContactIDs(of: user) ?? contacts)
        for target in change.notifyOnline {
            if let other = connections[target.raw] { send(other, .presence(userID: user, online: true)) }
        }
        if let old = change.takeOver, let oldConnection = connections[old.raw], !oldConnection.isClosing {
            logger.info("session taken over from another node", metadata: ["user": "\(oldConnection.userName)",
                                                                           "old": "\(oldConnection.peerText)"])
            oldConnection.userID = 0  // no longer the session here; its unacknowledged deliveries still go to the mailbox
            oldConnection.session = nil
            close(oldConnection, code: .sessionTakenOver, "logged in on another server", keepUserForReroute: user)
        }
    }

    public func remoteDeviceLeft(user: UserID, node: UInt16, deviceID: String) {
        for target in core.remoteDeviceLeft(user: user, node: node, deviceID: deviceID, contacts: acceptedContactIDs(of: user)) {
            if let other = connections[target.raw] { send(other, .presence(userID: user, online: false)) }
        }
    }

    /// The node stopped answering (or restarted): its users read offline here.
    public func remoteNodeGone(_ node: UInt16) {
        for (user, notify) in core.remoteNodeGone(node, contactsOf: { self.acceptedContactIDs(of: $0) }) {
            for target in notify {
                if let other = connections[target.raw] { send(other, .presence(userID: user, online: false)) }
            }
        }
    }

    // MARK: messages other nodes hand here

    /// A SEND another node accepted for `recipient` here. Delivered like a local one; its acknowledgement
    /// (or its mail commit, if the receiver is gone) is reported back through `cluster.inboundSettled`.
    /// `multiCopy`: the sending node gave copies to the recipient's devices elsewhere too; if every copy here is
    /// lost this node says so instead of storing the message (the sending node stores it once, when all are).
    public func inboundMessage(from sender: UserID, to recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView,
                               multiCopy: Bool = false) {
        switch core.routeInbound(from: sender, to: recipient, messageID: messageID, bodyBytes: body.count) {
        case .deliver(let targetID):
            guard let target = connections[targetID.raw], !target.isClosing else {
                inboundCopyLost(sender: sender, recipient: recipient, messageID: messageID, sentAtMs: sentAtMs, body: body,
                                multiCopy: multiCopy)
                return
            }
            deliver(to: target, sender: sender, messageID: messageID, sentAtMs: sentAtMs, body: body, inbound: true, multiCopy: multiCopy)
            stats.relayedLive += 1
        case .deliverToDevices:
            guard let session = core.session(of: recipient) else { return }
            for index in session.devices.indices where !session.devices[index].congested {
                if let target = connections[session.devices[index].connection.raw], !target.isClosing {
                    deliver(to: target, sender: sender, messageID: messageID, sentAtMs: sentAtMs, body: body, shared: true,
                            inbound: true, multiCopy: multiCopy)
                } else {
                    inboundCopyLost(sender: sender, recipient: recipient, messageID: messageID, sentAtMs: sentAtMs, body: body,
                                    multiCopy: multiCopy)
                }
            }
            stats.relayedLive += 1
        case .store(let recipientID, let seq):
            if multiCopy && !core.awaitsLocalResend(sender: sender, messageID: messageID) {
                // No device here can take it: the sending node counts this copy lost (the quota slot is given back).
                core.mailRemoved(recipient: recipientID, count: 1, bytes: body.count)
                core.inboundFailed(sender: sender, messageID: messageID)
                cluster?.inboundLost(sender: sender, messageID: messageID)
                return
            }
            queueMail(StoredMail(recipient: recipientID, seq: seq, sender: sender, messageID: messageID, sentAtMs: sentAtMs,
                                 body: body.array))
        case .dropInFlightDuplicate:
            stats.duplicatesDropped += 1  // the driver answers the resend when the first copy settles
        case .acknowledgeDuplicate(let status):
            stats.duplicatesDropped += 1
            cluster?.inboundSettled(sender: sender, messageID: messageID, status: status)
        case .reject(let code, let message):
            if multiCopy {
                // Refused here (the mailbox is full) while copies on other nodes may be delivered: a lost copy; the
                // sending node refuses the message only when every copy is lost and its own store refuses it.
                cluster?.inboundLost(sender: sender, messageID: messageID)
                return
            }
            inboundFailedHere(sender: sender, messageID: messageID, code: code, message: message)
        case .forward, .deliverAndForward:
            break  // routeInbound never forwards again
        }
    }

    private func inboundCopyLost(sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView,
                                 multiCopy: Bool) {
        guard core.inboundDeliveryLost(sender: sender, messageID: messageID) != .othersRemain else { return }
        // The sender resent it from a device here and waits here: stored here (its old node may be gone).
        if multiCopy && !core.awaitsLocalResend(sender: sender, messageID: messageID) {
            core.inboundFailed(sender: sender, messageID: messageID)
            cluster?.inboundLost(sender: sender, messageID: messageID)
            return
        }
        switch core.inboundToMailbox(sender: sender, recipient: recipient, messageID: messageID, bodyBytes: body.count) {
        case .store(let recipientID, let seq):
            queueMail(StoredMail(recipient: recipientID, seq: seq, sender: sender, messageID: messageID, sentAtMs: sentAtMs,
                                 body: body.array))
        case .reject(let code, let message):
            inboundFailedHere(sender: sender, messageID: messageID, code: code, message: message)
        default:
            break
        }
    }

    /// A message another node handed here settled: that node is told, and so is the sender here if it resent the
    /// message from a device here meanwhile (its old node may be gone, or its device left it).
    func inboundSettledHere(sender: UserID, messageID: UInt64, status: SendStatus) {
        cluster?.inboundSettled(sender: sender, messageID: messageID, status: status)
        if let devices = core.takeLocalResend(sender: sender, messageID: messageID) {
            sendAck(toDevicesOf: devices, messageID: messageID, status: status)
        }
    }

    /// A message another node handed here was refused for good: that node is told, and the sender here if it
    /// resent it from a device here.
    func inboundFailedHere(sender: UserID, messageID: UInt64, code: ErrorCode, message: String) {
        cluster?.inboundFailed(sender: sender, messageID: messageID, code: code, message: message)
        if let devices = core.takeLocalResend(sender: sender, messageID: messageID) {
            sendError(toDevicesOf: devices, messageID: messageID, code: code, message)
        }
    }

    /// A message of a sender here settled (its devices here were answered): its devices on other nodes are
    /// answered too, and the sender's previous node if it handed the same message here meanwhile.
    @inline(__always)
    func localSettled(sender: UserID, messageID: UInt64, status: SendStatus) {
        guard !core.remote.isEmpty || !core.inboundResends.isEmpty else { return }
        answerDevicesElsewhere(of: sender, messageID: messageID, .ack(status))
        if core.takeInboundResend(sender: sender, messageID: messageID) {
            cluster?.inboundSettled(sender: sender, messageID: messageID, status: status)
        }
    }

    /// The same for a message of a sender here refused for good.
    func localFailed(sender: UserID, messageID: UInt64, code: ErrorCode, message: String) {
        answerDevicesElsewhere(of: sender, messageID: messageID, .error(code, message))
        if core.takeInboundResend(sender: sender, messageID: messageID) {
            cluster?.inboundFailed(sender: sender, messageID: messageID, code: code, message: message)
        }
    }

    private func answerDevicesElsewhere(of sender: UserID, messageID: UInt64, _ answer: SenderAnswer) {
        guard !core.remote.isEmpty, let elsewhere = core.remote[sender] else { return }
        for node in elsewhere.nodes { cluster?.senderAnswered(to: node, sender: sender, messageID: messageID, answer: answer) }
    }

    // MARK: the sender's devices here, for a message it sent through another node

    /// SENT_COPY of a SEND another node accepted from a device of `sender`, to its devices here that take copies.
    public func remoteSentCopy(sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView) {
        guard let session = core.session(of: sender) else { return }
        for device in session.devices where device.receivesCopies && !device.congested {
            guard let other = connections[device.connection.raw], !other.isClosing else { continue }
            let out = other.output
            body.withUnsafeBytes { raw in
                FrameEncoder.writeSentCopy(into: out, to: recipient, messageID: messageID, sentAtMs: sentAtMs, body: raw)
            }
            outputChanged(other)
        }
    }

    /// The final answer of a message a device of `sender` sent through another node, for its devices here.
    public func remoteSenderAnswered(sender: UserID, messageID: UInt64, answer: SenderAnswer) {
        guard let devices = core.devicesOf(sender) else { return }
        switch answer {
        case .ack(let status): sendAck(toDevicesOf: devices, messageID: messageID, status: status)
        case .error(let code, let message): sendError(toDevicesOf: devices, messageID: messageID, code: code, message)
        }
    }

    /// Mail for the next group commit, with no sender connection to pause (an inbound or forwarded
    /// message: the sender is not read here, or its node already accepted it).
    func queueMail(_ mail: StoredMail) {
        storeBatch.append(.putMail(mail), .mail(mail))
        storeBacklogBytes += mail.body.count
    }

    // MARK: answers to messages this node handed on

    /// The recipient's node says the message was delivered (acknowledged by its client) or stored.
    public func forwardAnswered(sender: UserID, messageID: UInt64, status: SendStatus) {
        if let devices = core.completed(sender: sender, messageID: messageID, status: status) {
            sendAck(toDevicesOf: devices, messageID: messageID, status: status)
            localSettled(sender: sender, messageID: messageID, status: status)
        }
    }

    /// The recipient's node refused the message for good (its mailbox is full...).
    public func forwardRefused(sender: UserID, messageID: UInt64, code: ErrorCode, message: String) {
        if let devices = core.failed(sender: sender, messageID: messageID) {
            sendError(toDevicesOf: devices, messageID: messageID, code: code, message)
        }
        localFailed(sender: sender, messageID: messageID, code: code, message: message)
    }

    /// A copy handed to another node is lost: that node never answered (it died, or the cluster is
    /// unreachable), or it said every copy there was lost. When it was the last copy in flight the message goes
    /// to the recipient's mailbox from here. A node that died after its client acknowledged but before it
    /// answered makes this a second copy (documented in the cluster README).
    public func forwardUndeliverable(sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: [UInt8]) {
        if core.deliveryLost(sender: sender, messageID: messageID) == .othersRemain { return }
        switch core.forwardFailedToMailbox(sender: sender, recipient: recipient, messageID: messageID, bodyBytes: body.count) {
        case .store(let recipientID, let seq):
            queueMail(StoredMail(recipient: recipientID, seq: seq, sender: sender, messageID: messageID, sentAtMs: sentAtMs, body: body))
        case .reject(let code, let message):
            if let devices = core.failed(sender: sender, messageID: messageID) {
                sendError(toDevicesOf: devices, messageID: messageID, code: code, message)
            }
            localFailed(sender: sender, messageID: messageID, code: code, message: message)
        default:
            break
        }
    }

    // MARK: other nodes' writes, applied to the local replica

    /// A batch another node committed to the cluster log, now applied here: mail for users online here
    /// is offered to them, contact changes reach the online parties, mailbox usage stays counted.
    public func clusterApplied(_ ops: [WriteOp], _ results: [WriteResult]) {
        for (op, result) in zip(ops, results) {
            switch (op, result) {
            case (.putMail(let mail), .mailStored):
                core.foreignMailStored(recipient: mail.recipient, seq: mail.seq, bytes: mail.body.count)
                guard let session = core.session(of: mail.recipient) else { continue }
                for device in session.devices {
                    guard let recipient = connections[device.connection.raw], !recipient.isClosing,
                          recipient.mailPaging == .done else { continue }
                    recipient.mailBehind = true
                    catchUpMail(recipient)
                }
            case (.deleteMail(let recipient, _), .mailDeleted):
                core.forgetMailboxUsage(of: recipient)
            case (_, .contactChanged(let ownerView, let otherView, let ownerID, let otherID)):
                for push in core.applyContactChange(owner: ownerID, other: otherID, ownerView: ownerView, otherView: otherView) {
                    if let target = connections[push.connection.raw] { send(target, .contactUpdate(contact: push.info)) }
                }
            case (.deleteAccount, .accountDeleted(let userID, let contacts)):
                if let session = core.session(of: userID) {
                    for device in session.devices {
                        if let client = connections[device.connection.raw] {
                            kick(client, reason: "your account was deleted by an administrator")
                        }
                    }
                }
                for other in contacts {
                    for push in core.applyContactChange(owner: userID, other: other, ownerView: nil, otherView: nil) {
                        if let target = connections[push.connection.raw] { send(target, .contactUpdate(contact: push.info)) }
                    }
                }
                userNameCache[userID] = nil
            default:
                continue
            }
        }
    }
}
