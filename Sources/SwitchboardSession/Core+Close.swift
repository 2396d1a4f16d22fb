// Closing: marked during the turn, finalized at its end. Finalizing tells contacts (at the user's last
// device), moves the unacknowledged deliveries no other device holds to the mailbox, cuts the unwritten output at a frame boundary and
// appends the ERROR, then hands the client to the driver to write those last bytes and close.
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

extension ServerCore {
    /// Marks a connection for closing at the end of this turn, after a last attempt to send `code`.
    func close(_ connection: ClientState, code: ErrorCode?, _ reason: String, keepUserForReroute: UserID = 0) {
        guard !connection.isClosing else { return }
        connection.closeCode = code
        connection.closeReason = reason
        logger.debug("closing", metadata: ["peer": "\(connection.peerText)", "reason": "\(reason)"])
        connection.rerouteOwner = keepUserForReroute != 0 ? keepUserForReroute : connection.userID
        connection.phase = .closing
        toClose.append(connection)
    }

    func finalizeClose(_ connection: ClientState) {
        guard connections[connection.id.raw] != nil else { return }
        authGate.cancel(connection: connection.id.raw, address: connection.host)
        leavePreLogin(connection)
        let out = connection.output
        connections[connection.id.raw] = nil
        stats.closed += 1
        // Presence goes offline only with the user's last device.
        let wasSession = connection.session != nil && connection.userID != 0
        for target in core.connectionClosed(connection.id) {
            if let other = connections[target.raw] { send(other, .presence(userID: connection.userID, online: false)) }
        }
        if wasSession { cluster?.deviceLeft(user: connection.userID, deviceID: connection.deviceID) }
        connection.session = nil
        // Live deliveries the receiver never acknowledged move to its mailbox; their frames are
        // still in the retained output bytes.
        let owner = connection.rerouteOwner
        let written = out.streamPosition(ofIndex: out.readerIndex)
        var firstUnwrittenDelivery: UInt64?
        connection.window.drain { delivery in
            if delivery.frameStart >= written && firstUnwrittenDelivery == nil { firstUnwrittenDelivery = delivery.frameStart }
            let frameBytes = out.view(from: out.index(ofStreamPosition: delivery.frameStart),
                                      to: out.index(ofStreamPosition: delivery.frameEnd))
            guard case .frame(let (type, body), _) = FrameDecoder.split(frameBytes, maxFrameBytes: Int.max),
                  case .deliver(_, let from, let messageID, let sentAtMs, let payload)? = try? FrameDecoder.serverFrame(type: type, body: body)
            else {
                logger.error("retained delivery frame unreadable", metadata: ["conn": "\(connection.id)"])
                return
            }
            // Another device of the receiver may still hold (or have acknowledged) the same message.
            if delivery.settled { return }
            switch delivery.inbound ? core.inboundDeliveryLost(sender: from, messageID: messageID)
                                    : core.deliveryLost(sender: from, messageID: messageID) {
            case .othersRemain: return
            case .last:
                if delivery.inbound && delivery.multiCopy && !core.awaitsLocalResend(sender: from, messageID: messageID) {
                    // Other nodes hold copies too: the sending node decides about the mailbox.
                    core.inboundFailed(sender: from, messageID: messageID)
                    cluster?.inboundLost(sender: from, messageID: messageID)
                    return
                }
            case .unknown:
                // Forgotten by the sender's window: another device's unsettled copy still answers for it.
                if let session = core.session(of: owner), session.devices.contains(where: { device in
                    connections[device.connection.raw]?.window.holdsUnsettled(sender: from, messageID: messageID) == true
                }) { return }
            }
            metrics.deliveriesRerouted &+= 1
            let decision = delivery.inbound
                ? core.inboundToMailbox(sender: from, recipient: owner, messageID: messageID, bodyBytes: payload.count)
                : core.rerouteToMailbox(sender: from, recipient: owner, messageID: messageID, bodyBytes: payload.count)
            switch decision {
            case .store(let recipient, let seq):
                let mail = StoredMail(recipient: recipient, seq: seq, sender: from, messageID: messageID, sentAtMs: sentAtMs,
                                      body: payload.array)
                storeBatch.append(.putMail(mail), .mail(mail))
                storeBacklogBytes += mail.body.count
            case .reject(let code, let message):
                if delivery.inbound && delivery.multiCopy && !core.awaitsLocalResend(sender: from, messageID: messageID) {
                    cluster?.inboundLost(sender: from, messageID: messageID)  // refused here: a lost copy
                } else if delivery.inbound {
                    inboundFailedHere(sender: from, messageID: messageID, code: code, message: message)
                } else {
                    if let sender = core.failed(sender: from, messageID: messageID) {
                        sendError(toDevicesOf: sender, messageID: messageID, code: code, message)
                    }
                    localFailed(sender: from, messageID: messageID, code: code, message: message)
                }
            default:
                break
            }
        }
        connection.input.clear()
        connection.input.releaseIfEmpty()
        // The peer's last bytes: what was queued before its first unwritten DELIVER (those went to the
        // mailbox above), at most 64 KiB of it; for a slow consumer only the rest of the frame being
        // written. Then the ERROR. A cut is always at a frame boundary.
        let partialEnd = frameBoundary(connection, atOrBefore: false)
        var cut = firstUnwrittenDelivery ?? out.streamPosition(ofIndex: out.writerIndex)
        if connection.closeCode == .slowConsumer || cut - written > 64 << 10 { cut = partialEnd }
        out.truncate(toIndex: out.index(ofStreamPosition: max(cut, partialEnd)))
        out.retain(from: out.readerIndex)
        if let code = connection.closeCode {
            metrics.framesOut.increment(Int(FrameType.error.rawValue))
            metrics.closesByCode.increment(Int(code.rawValue))
            FrameEncoder.encode(ServerFrame.error(requestID: 0, code: code.rawValue, message: TextView(connection.closeReason)),
                                into: out)
        }
        driver.finalize(connection)
    }
}
