// Group commit: everything queued during a turn goes in one store batch; while one is in flight the
// next keeps growing. Each op's context says what its result means for the clients.
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

extension ServerCore {
    /// Group commit: everything queued since the last commit goes in one transaction; while one is
    /// in flight the next batch keeps growing.
    func submitStoreBatch() {
        guard !storeInFlight, !storeBatch.isEmpty else { return }
        storeInFlight = true
        stats.storeBatches += 1
        stats.storeOps += UInt64(storeBatch.ops.count)
        driver.startCommit(storeBatch)
        storeBatch = StoreBatch()
    }

    func handleStoreResults(_ results: [StoreBatchResult]) {
        for result in results {
            storeInFlight = false
            switch result.results {
            case .success(let writeResults):
                for (context, outcome) in zip(result.batch.contexts, writeResults) { complete(context, outcome) }
            case .failure(let error):
                logger.error("store batch failed", metadata: ["error": "\(error)", "ops": "\(result.batch.ops.count)"])
                for context in result.batch.contexts { fail(context, error.description) }
            }
        }
        submitStoreBatch()
    }

    func complete(_ context: StoreContext, _ outcome: WriteResult) {
        switch context {
        case .createAccount(let id, let requestID):
            guard let connection = connections[id], !connection.isClosing else { return }
            switch outcome {
            case .accountCreated:
                send(connection, .ok(requestID: requestID))
            case .nameTaken:
                send(connection, .error(requestID: requestID, code: ErrorCode.nameTaken.rawValue, message: "that name is taken"))
            case .invalidRequest(let why):
                send(connection, .error(requestID: requestID, code: ErrorCode.invalidName.rawValue, message: TextView(why)))
            default:
                send(connection, .error(requestID: requestID, code: ErrorCode.internalError.rawValue, message: "unexpected store result"))
            }
            unpark(connection, phase: .awaitingAuth)
        case .contact(let id, let requestID):
            let connection = connections[id].flatMap { $0.isClosing ? nil : $0 }
            switch outcome {
            case .contactChanged(let ownerView, let otherView, let ownerID, let otherID):
                for push in core.applyContactChange(owner: ownerID, other: otherID, ownerView: ownerView, otherView: otherView) {
                    if let target = connections[push.connection.raw] { send(target, .contactUpdate(contact: push.info)) }
                }
                if let connection { send(connection, .ok(requestID: requestID)) }
            case .alreadyInThatState:
                if let connection { send(connection, .ok(requestID: requestID)) }
            case .noSuchUser:
                if let connection { send(connection, .error(requestID: requestID, code: ErrorCode.noSuchUser.rawValue, message: "no such user")) }
            case .invalidRequest(let why):
                if let connection { send(connection, .error(requestID: requestID, code: ErrorCode.invalidRequest.rawValue, message: TextView(why))) }
            default:
                if let connection { send(connection, .error(requestID: requestID, code: ErrorCode.internalError.rawValue, message: "unexpected store result")) }
            }
        case .mail(let mail):
            switch outcome {
            case .mailStored:
                stats.storedOffline += 1
                ackStored(mail)
                // The recipient may have come online meanwhile: push it once its login backlog is done.
                // Never into a congested receiver: then it follows from the store once drained.
                if let recipientID = core.connection(of: mail.recipient), let recipient = connections[recipientID.raw],
                   !recipient.isClosing, recipient.mailPaging == .done {
                    if recipient.mailBehind || recipient.budget.congested
                        || recipient.output.readableBytes >= configuration.mailPageBytes {
                        recipient.mailBehind = true
                    } else {
                        sendMail(recipient, mail)
                    }
                }
            case .duplicateMail:
                // Stored before (e.g. acknowledged just before a crash): give the reserved slot back, ack again.
                core.mailRemoved(recipient: mail.recipient, count: 1, bytes: mail.body.count)
                stats.duplicatesDropped += 1
                ackStored(mail)
            default:
                core.mailRemoved(recipient: mail.recipient, count: 1, bytes: mail.body.count)
                failMail(mail, "unexpected store result")
            }
        case .deleteMail(let recipient, let count, let bytes):
            core.mailRemoved(recipient: recipient, count: count, bytes: bytes)
        case .prune:
            break
        }
    }

    func ackStored(_ mail: StoredMail) {
        if let senderID = core.completed(sender: mail.sender, messageID: mail.messageID, status: .storedOffline),
           let sender = connections[senderID.raw] {
            sendAck(sender, messageID: mail.messageID, status: .storedOffline)
        }
    }

    func failMail(_ mail: StoredMail, _ why: String) {
        if let senderID = core.failed(sender: mail.sender, messageID: mail.messageID), let sender = connections[senderID.raw] {
            send(sender, .sendError(messageID: mail.messageID, code: ErrorCode.internalError.rawValue,
                                    message: TextView("could not store the message: \(why)")))
        }
    }

    func fail(_ context: StoreContext, _ why: String) {
        switch context {
        case .createAccount(let id, let requestID):
            if let connection = connections[id], !connection.isClosing {
                send(connection, .error(requestID: requestID, code: ErrorCode.internalError.rawValue, message: "could not create the account"))
                unpark(connection, phase: .awaitingAuth)
            }
        case .contact(let id, let requestID):
            if let connection = connections[id], !connection.isClosing {
                send(connection, .error(requestID: requestID, code: ErrorCode.internalError.rawValue, message: "could not change contacts"))
            }
        case .mail(let mail):
            core.mailRemoved(recipient: mail.recipient, count: 1, bytes: mail.body.count)
            failMail(mail, why)
        case .deleteMail, .prune:
            break // the mail stays; it is delivered again at the next login
        }
    }
}
