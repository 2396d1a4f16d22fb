// The one output path: every frame for a client is encoded into its output and passes
// `outputChanged`, the one place its OutputBudget is consulted (reading paused above the high-water
// mark, congestion told to the relay core, slowConsumer above the hard cap).
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

extension ServerCore {
    func updateRetention(_ connection: ClientState) {
        let out = connection.output
        var from = out.index(ofStreamPosition: connection.frameCursor)
        if let oldest = connection.window.oldest { from = min(from, out.index(ofStreamPosition: oldest.frameStart)) }
        out.retain(from: from)
    }

    func send(_ connection: ClientState, _ frame: ServerFrame) {
        guard !connection.isClosing else { return }
        FrameEncoder.encode(frame, into: connection.output)
        metrics.framesOut.increment(Int(frame.frameType.rawValue))
        if case .sendError(_, let code, _) = frame { metrics.sendsRejected.increment(Int(code)) }
        outputChanged(connection)
    }

    func sendAck(_ connection: ClientState, messageID: UInt64, status: SendStatus) {
        guard !connection.isClosing else { return }
        FrameEncoder.writeSendAck(into: connection.output, messageID: messageID, status: status.rawValue)
        metrics.framesOut.increment(Int(FrameType.sendAck.rawValue))
        outputChanged(connection)
    }

    /// The one output path: every frame queued for a connection ends here, once.
    @inline(__always)
    func outputChanged(_ connection: ClientState) {
        if !connection.isPendingWrite {
            connection.isPendingWrite = true
            pendingWrites.append(connection)
        }
        if mayChangeBudget(connection) { applyBudget(connection) }
    }

    /// The one place a connection's backlog is judged (see OutputBudget): over the hard cap it closes
    /// with slowConsumer, above the high-water mark reading stops, and congestion is told to the core.
    /// The fast path of the hot path: below every mark, and neither paused nor congested, nothing can change.
    @inline(__always)
    func mayChangeBudget(_ connection: ClientState) -> Bool {
        connection.output.retainedBytes > quietBelowBytes || connection.budget.readingPaused || connection.budget.congested
    }

    func applyBudget(_ connection: ClientState) {
        guard !connection.isClosing else { return }
        let out = connection.output
        let change = connection.budget.update(unwritten: out.readableBytes, retained: out.retainedBytes,
                                              loggedIn: connection.userID != 0, limits: budgetLimits)
        if change.isEmpty { return }
        if change.overHardCap {
            stats.slowConsumerCloses += 1
            close(connection, code: .slowConsumer,
                  "output backlog over \(configuration.outputHardCapBytes) bytes: read faster (unacknowledged messages go to your mailbox)")
            return
        }
        if let congested = change.congested {
            if congested { metrics.congestions += 1 }
            core.setCongested(connection.id, congested)
            if !congested { catchUpMail(connection) }
        }
        if let reading = change.reading {
            if reading {
                resumeReading(connection)
            } else {
                stats.readPauses += 1
                driver.interestChanged(connection)
            }
        }
    }

    /// Walks frame lengths from `frameCursor` to the write position: the start of the frame being
    /// written (`atOrBefore`), or the end of it (the first boundary at or after the write position).
    func frameBoundary(_ connection: ClientState, atOrBefore: Bool) -> UInt64 {
        let out = connection.output
        let written = out.streamPosition(ofIndex: out.readerIndex)
        var position = connection.frameCursor
        while position < written {
            let view = out.view(from: out.index(ofStreamPosition: position), to: out.writerIndex)
            guard view.count >= 4 else { break }
            let length = UInt64(view[0]) << 24 | UInt64(view[1]) << 16 | UInt64(view[2]) << 8 | UInt64(view[3])
            let next = position + 4 + length
            if atOrBefore && next > written { break }
            position = next
        }
        return position
    }
}
