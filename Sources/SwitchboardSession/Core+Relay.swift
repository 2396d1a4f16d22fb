// The hot path: SEND -> route -> DELIVER into the receiver's output (the body's only copy; one per
// device when the receiver has several), SENT_COPY to the sender's other devices, and DELIVERY_ACK ->
// SEND_ACK delivered at the first device's acknowledgement. No allocation per message in steady state.
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

extension ServerCore {
    func relay(from sender: ClientState, to recipient: UInt32, messageID: UInt64, body: ByteView) {
        let bodyBytes = body.count
        sender.messagesSent &+= 1
        var senderDevices = 1
        if sender.storedDedupeChecks > 0, resendWasStored(sender, messageID: messageID) { return }
        let decision = core.route(from: sender.userID, to: recipient, messageID: messageID, bodyBytes: bodyBytes,
                                  senderDevices: &senderDevices)
        switch decision {
        case .deliver(let targetID):
            let sentAtMs = driver.wallNow
            if senderDevices > 1 {
                copyToOtherDevices(of: sender, to: recipient, messageID: messageID, sentAtMs: sentAtMs, body: body)
            }
            guard let target = connections[targetID.raw], !target.isClosing else {
                // The session ended this turn; its close is pending. Store instead.
                copyLost(sender: sender, recipient: recipient, messageID: messageID, body: body)
                return
            }
            deliver(to: target, sender: sender.userID, messageID: messageID, sentAtMs: sentAtMs, body: body)
            stats.relayedLive += 1
        case .deliverToDevices:
            let sentAtMs = driver.wallNow
            if senderDevices > 1 {
                copyToOtherDevices(of: sender, to: recipient, messageID: messageID, sentAtMs: sentAtMs, body: body)
            }
            guard let session = core.session(of: recipient) else { return }
            // Every device the core counted (not congested) gets a copy; one that closes this turn
            // counts as lost, and the last lost copy sends the message to the mailbox.
            for index in session.devices.indices where !session.devices[index].congested {
                if let target = connections[session.devices[index].connection.raw], !target.isClosing {
                    deliver(to: target, sender: sender.userID, messageID: messageID, sentAtMs: sentAtMs, body: body, shared: true)
                } else {
                    copyLost(sender: sender, recipient: recipient, messageID: messageID, body: body)
                }
            }
            stats.relayedLive += 1
        case .forward(let node):
            let sentAtMs = driver.wallNow
            if senderDevices > 1 {
                copyToOtherDevices(of: sender, to: recipient, messageID: messageID, sentAtMs: sentAtMs, body: body)
            }
            stats.forwarded += 1
            cluster?.forward(to: node, sender: sender.userID, recipient: recipient, messageID: messageID, sentAtMs: sentAtMs,
                             body: body, multiCopy: false)
        case .deliverAndForward:
            let sentAtMs = driver.wallNow
            if senderDevices > 1 {
                copyToOtherDevices(of: sender, to: recipient, messageID: messageID, sentAtMs: sentAtMs, body: body)
            }
            if let session = core.session(of: recipient) {
                for index in session.devices.indices where !session.devices[index].congested {
                    if let target = connections[session.devices[index].connection.raw], !target.isClosing {
                        deliver(to: target, sender: sender.userID, messageID: messageID, sentAtMs: sentAtMs, body: body, shared: true)
                    } else {
                        copyLost(sender: sender, recipient: recipient, messageID: messageID, body: body)
                    }
                }
                stats.relayedLive += 1
            }
            for node in core.remote[recipient]?.nodes ?? [] {
                stats.forwarded += 1
                cluster?.forward(to: node, sender: sender.userID, recipient: recipient, messageID: messageID, sentAtMs: sentAtMs,
                                 body: body, multiCopy: true)
            }
        case .store:
            if senderDevices > 1 {
                copyToOtherDevices(of: sender, to: recipient, messageID: messageID, sentAtMs: driver.wallNow, body: body)
            }
            storeMail(sender: sender, recipient: recipient, messageID: messageID, body: body, decision: decision)
        case .dropInFlightDuplicate:
            stats.duplicatesDropped += 1
        case .acknowledgeDuplicate(let status):
            stats.duplicatesDropped += 1
            sendAck(sender, messageID: messageID, status: status)
        case .reject(let code, let message):
            send(sender, .sendError(messageID: messageID, code: code.rawValue, message: TextView(message)))
        }
    }

    /// Cluster mode, the first sends after a login: a client resends what its previous server (maybe a
    /// node that died) never acknowledged. If that message is in the store as mail, it is acknowledged
    /// as stored instead of being delivered a second time (this node never saw it, so its memory of
    /// recent ids cannot tell). One LMDB read per send, for at most `dedupeWindow` sends per login.
    private func resendWasStored(_ sender: ClientState, messageID: UInt64) -> Bool {
        sender.storedDedupeChecks -= 1
        guard !core.remembers(sender: sender.userID, messageID: messageID),
              (try? store.dedupeRecordExists(sender: sender.userID, messageID: messageID)) == true else { return false }
        stats.duplicatesDropped += 1
        sendAck(sender, messageID: messageID, status: .storedOffline)
        return true
    }

    /// A live copy could not be written (its connection is closing): the last such copy sends the
    /// message to the mailbox.
    private func copyLost(sender: ClientState, recipient: UInt32, messageID: UInt64, body: ByteView) {
        guard core.deliveryLost(sender: sender.userID, messageID: messageID) != .othersRemain else { return }
        storeMail(sender: sender, recipient: recipient, messageID: messageID, body: body, decision: core.rerouteToMailbox(
            sender: sender.userID, recipient: recipient, messageID: messageID, bodyBytes: body.count))
    }

    /// SENT_COPY of an accepted SEND to the sender's other devices that speak version 2, are not
    /// closing and not congested (a copy is never acknowledged, retained or stored: a device that
    /// misses it does not get it later). Called only when the sender has other devices.
    func copyToOtherDevices(of sender: ClientState, to recipient: UInt32, messageID: UInt64, sentAtMs: UInt64, body: ByteView) {
        if !core.remote.isEmpty, let elsewhere = core.remote[sender.userID] {
            for node in elsewhere.nodes {
                cluster?.sentCopy(to: node, sender: sender.userID, recipient: recipient, messageID: messageID, sentAtMs: sentAtMs,
                                  body: body)
            }
        }
        guard let session = sender.session, session.devices.count > 1 else { return }
        for device in session.devices where device.connection != sender.id && device.receivesCopies && !device.congested {
            guard let other = connections[device.connection.raw], !other.isClosing else { continue }
            let out = other.output
            body.withUnsafeBytes { raw in
                FrameEncoder.writeSentCopy(into: out, to: recipient, messageID: messageID, sentAtMs: sentAtMs, body: raw)
            }
            outputChanged(other)
        }
    }

    /// SEND_ACK to every online device of the sender: the one that sent the message, and the others,
    /// which got its SENT_COPY (a device that knows neither ignores it).
    func sendAck(toDevicesOf sender: RelayCore.SenderDevices, messageID: UInt64, status: SendStatus) {
        switch sender {
        case .one(let id):
            if let connection = connections[id.raw] { sendAck(connection, messageID: messageID, status: status) }
        case .several(let session):
            for device in session.devices {
                if let connection = connections[device.connection.raw] { sendAck(connection, messageID: messageID, status: status) }
            }
        }
    }

    func sendError(toDevicesOf sender: RelayCore.SenderDevices, messageID: UInt64, code: ErrorCode, _ message: String) {
        let frame = ServerFrame.sendError(messageID: messageID, code: code.rawValue, message: TextView(message))
        switch sender {
        case .one(let id):
            if let connection = connections[id.raw] { send(connection, frame) }
        case .several(let session):
            for device in session.devices {
                if let connection = connections[device.connection.raw] { send(connection, frame) }
            }
        }
    }

    /// Queues a `.store` decision's mail for the next group commit (the body's one copy off the
    /// loop's buffers), or reports a `.reject`.
    func storeMail(sender: ClientState, recipient: UInt32, messageID: UInt64, body: ByteView, decision: RouteDecision) {
        switch decision {
        case .store(let recipientID, let seq):
            let mail = StoredMail(recipient: recipientID, seq: seq, sender: sender.userID, messageID: messageID,
                                  sentAtMs: driver.wallNow, body: body.array)
            storeBatch.append(.putMail(mail), .mail(mail))
            storeBacklogBytes += mail.body.count
            if storeBacklogBytes > configuration.maxStoreBacklogBytes && !sender.storePaused {
                // Mail waiting for its commit is bounded: this sender is not read until the store catches up.
                sender.storePaused = true
                storeWaiters.append(sender)
                driver.interestChanged(sender)
            }
        case .reject(let code, let message):
            send(sender, .sendError(messageID: messageID, code: code.rawValue, message: TextView(message)))
        default:
            break
        }
    }

    /// Writes one DELIVER into the receiver's output (the body's only copy) and remembers it until acknowledged.
    func deliver(to target: ClientState, sender: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView,
                 shared: Bool = false, inbound: Bool = false, multiCopy: Bool = false) {
        let seq = target.window.nextSeq()
        let out = target.output
        body.withUnsafeBytes { raw in
            out.reserveWritable(33 + raw.count)
            let start = out.streamPosition(ofIndex: out.writerIndex)
            FrameEncoder.writeDeliver(into: out, seq: seq, from: sender, messageID: messageID, sentAtMs: sentAtMs, body: raw)
            var pending = PendingDelivery(seq: seq, sender: sender, messageID: messageID, frameStart: start,
                                          frameEnd: out.streamPosition(ofIndex: out.writerIndex),
                                          receivedNs: receiveClockNs)
            pending.shared = shared
            pending.inbound = inbound
            pending.multiCopy = multiCopy
            target.window.append(pending)
        }
        target.messagesReceived &+= 1
        metrics.framesOut.increment(Int(FrameType.deliver.rawValue))
        outputChanged(target)
    }

    func acknowledgeDeliveries(_ connection: ClientState, throughSeq: UInt64) {
        connection.window.acknowledge(throughSeq: throughSeq) { delivery in
            // The first device to acknowledge completes the message; later ones change nothing.
            guard !delivery.settled else { return }
            metrics.deliveriesAcknowledged &+= 1
            if delivery.inbound {
                if core.inboundCompleted(sender: delivery.sender, messageID: delivery.messageID, status: .delivered) {
                    inboundSettledHere(sender: delivery.sender, messageID: delivery.messageID, status: .delivered)
                }
            } else if let sender = core.completed(sender: delivery.sender, messageID: delivery.messageID, status: .delivered) {
                sendAck(toDevicesOf: sender, messageID: delivery.messageID, status: .delivered)
                localSettled(sender: delivery.sender, messageID: delivery.messageID, status: .delivered)
            }
            // The receiver's other devices' copies are settled now, even if the sender's window forgets the id.
            if delivery.shared, let session = connection.session {
                for device in session.devices where device.connection != connection.id {
                    connections[device.connection.raw]?.window.markSettled(sender: delivery.sender, messageID: delivery.messageID)
                }
            }
        }
        updateRetention(connection)
        if mayChangeBudget(connection) { applyBudget(connection) }
    }
}
