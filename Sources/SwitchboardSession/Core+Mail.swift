// Stored mail: every device of the user pages it from the store; the first MAIL_ACK deletes it. Pages of at most `mailPageSize` messages and about `mailPageBytes` bytes, the next
// page after the client's MAIL_ACK of the last one; MAIL_END once; mail committed afterwards is
// pushed only to a receiver that is not congested, otherwise it follows from the store once drained.
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

extension ServerCore {
    func userName(_ id: UserID) -> String {
        // An online user's name is in its session (not copied into the cache at every login: memory per idle user).
        if let session = core.session(of: id) { return session.name }
        if let name = userNameCache[id] { return name }
        let name = (try? store.userName(of: id)) ?? nil
        if let name {
            if userNameCache.count > 100_000 { userNameCache.removeAll(keepingCapacity: true) }
            userNameCache[id] = name
        }
        return name ?? "user\(id)"
    }

    /// One page of stored mail after the cursor: at most `mailPageSize` messages and about
    /// `mailPageBytes` bytes (one message more than that only if it alone is larger), read from the
    /// store a few at a time so a page of large mails is never all in memory at once.
    /// Returns true when the mailbox had nothing more after the page.
    func sendStoredMail(_ connection: ClientState) -> Bool {
        var count = 0
        var bytes = 0
        while count < configuration.mailPageSize && bytes < configuration.mailPageBytes {
            let limit = min(8, configuration.mailPageSize - count)
            let mails: [StoredMail]
            do {
                mails = try store.mail(for: connection.userID, afterSeq: connection.mailCursor, limit: limit)
            } catch {
                logger.error("mail read failed", metadata: ["error": "\(error)", "user": "\(connection.userName)"])
                return false
            }
            for (index, mail) in mails.enumerated() {
                if bytes >= configuration.mailPageBytes { return false }
                sendMail(connection, mail)
                count += 1
                bytes += mail.body.count + 64
                if index == mails.count - 1 && mails.count < limit { return true }
            }
            if mails.isEmpty { return true }
        }
        return false
    }

    func sendMailPage(_ connection: ClientState) {
        if sendStoredMail(connection) {
            connection.mailPaging = .done
            send(connection, .mailEnd(count: connection.mailSentCount))
        } else {
            connection.mailPaging = .awaitingAck
        }
    }

    /// After MAIL_END, mail committed while the receiver was congested waits in the store; it follows
    /// in pages once the receiver has drained (never into a congested connection).
    func catchUpMail(_ connection: ClientState) {
        guard connection.mailBehind, connection.mailPaging == .done, !connection.isClosing, !connection.budget.congested,
              connection.output.readableBytes < configuration.mailPageBytes else { return }
        if sendStoredMail(connection) { connection.mailBehind = false }
    }

    func sendMail(_ connection: ClientState, _ mail: StoredMail) {
        send(connection, .mail(seq: mail.seq, from: mail.sender, fromName: TextView(userName(mail.sender)),
                               messageID: mail.messageID, sentAtMs: mail.sentAtMs, body: ByteView(mail.body)))
        connection.mailCursor = max(connection.mailCursor, mail.seq)
        connection.mailSentCount &+= 1
        metrics.mailDelivered &+= 1
        connection.mailInFlight.append((mail.seq, mail.body.count))
    }

    func acknowledgeMail(_ connection: ClientState, throughSeq requested: UInt64) {
        // A client cannot acknowledge (and so delete) mail it was never sent.
        let throughSeq = min(requested, connection.mailCursor)
        // Several devices may have been sent the same mail: the first acknowledgement deletes and
        // counts it, a later one of the same mail only moves this connection's paging on.
        let countedThrough = core.mailAcknowledged(recipient: connection.userID, throughSeq: throughSeq)
        var count = 0
        var bytes = 0
        while let first = connection.mailInFlight.first, first.seq <= throughSeq {
            if first.seq > countedThrough {
                count += 1
                bytes += first.bytes
            }
            connection.mailInFlight.removeFirst()
        }
        if count > 0 {
            metrics.mailAcknowledged &+= UInt64(count)
            storeBatch.append(.deleteMail(recipient: connection.userID, throughSeq: throughSeq),
                              .deleteMail(recipient: connection.userID, count: count, bytes: bytes, throughSeq: throughSeq))
            pendingMailDeletes[connection.userID] = max(pendingMailDeletes[connection.userID] ?? 0, throughSeq)
        }
        if connection.mailPaging == .awaitingAck && throughSeq >= connection.mailCursor {
            sendMailPage(connection)
        } else if connection.mailBehind && throughSeq >= connection.mailCursor {
            catchUpMail(connection)
        }
    }
}
