// The hot path: SEND -> route -> DELIVER into the receiver's output (the body's only copy), and
// DELIVERY_ACK -> SEND_ACK delivered. No allocation per message in steady state.
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

extension ServerCore {
    func relay(from sender: ClientState, to recipient: UInt32, messageID: UInt64, body: ByteView) {
        let bodyBytes = body.count
        sender.messagesSent &+= 1
        let decision = core.route(from: sender.userID, to: recipient, messageID: messageID, bodyBytes: bodyBytes)
        switch decision {
        case .deliver(let targetID):
            guard let target = connections[targetID.raw], !target.isClosing else {
                // The session ended this turn; its close is pending. Store instead.
                storeMail(sender: sender, recipient: recipient, messageID: messageID, body: body, decision: core.rerouteToMailbox(
                    sender: sender.userID, recipient: recipient, messageID: messageID, bodyBytes: bodyBytes))
                return
            }
            deliver(to: target, sender: sender.userID, messageID: messageID, sentAtMs: driver.wallNow, body: body)
            stats.relayedLive += 1
        case .store:
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
    func deliver(to target: ClientState, sender: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView) {
        let seq = target.window.nextSeq()
        let out = target.output
        body.withUnsafeBytes { raw in
            out.reserveWritable(33 + raw.count)
            let start = out.streamPosition(ofIndex: out.writerIndex)
            FrameEncoder.writeDeliver(into: out, seq: seq, from: sender, messageID: messageID, sentAtMs: sentAtMs, body: raw)
            target.window.append(PendingDelivery(seq: seq, sender: sender, messageID: messageID, frameStart: start,
                                                 frameEnd: out.streamPosition(ofIndex: out.writerIndex),
                                                 receivedNs: receiveClockNs))
        }
        target.messagesReceived &+= 1
        metrics.framesOut.increment(Int(FrameType.deliver.rawValue))
        outputChanged(target)
    }

    func acknowledgeDeliveries(_ connection: ClientState, throughSeq: UInt64) {
        connection.window.acknowledge(throughSeq: throughSeq) { delivery in
            metrics.deliveriesAcknowledged &+= 1
            if let senderID = core.completed(sender: delivery.sender, messageID: delivery.messageID, status: .delivered),
               let sender = connections[senderID.raw] {
                sendAck(sender, messageID: delivery.messageID, status: .delivered)
            }
        }
        updateRetention(connection)
        if mayChangeBudget(connection) { applyBudget(connection) }
    }
}
