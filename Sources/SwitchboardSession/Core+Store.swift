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
            metrics.commitLatency.record(result.commitNanos)
            metrics.commitBatchSize.record(UInt64(result.batch.ops.count))
            for case .mail(let mail) in result.batch.contexts { storeBacklogBytes -= mail.body.count }
            switch result.results {
            case .success(let writeResults):
                for (context, outcome) in zip(result.batch.contexts, writeResults) { complete(context, outcome) }
            case .failure(let error):
                metrics.commitFailures += 1
                logger.error("store batch failed", metadata: ["error": "\(error)", "ops": "\(result.batch.ops.count)"])
                for context in result.batch.contexts { fail(context, error.description) }
            }
        }
        submitStoreBatch()
        if !storeWaiters.isEmpty && storeBacklogBytes <= configuration.maxStoreBacklogBytes / 2 {
            let waiters = storeWaiters
            storeWaiters.removeAll()
            for connection in waiters {
                connection.storePaused = false
                resumeReading(connection)
            }
        }
    }

    func complete(_ context: StoreContext, _ outcome: WriteResult) {
        switch context {
        case .createAccount(let id, let requestID):
            guard let connection = connections[id], !connection.isClosing else { return }
            switch outcome {
            case .accountCreated:
                metrics.registrations += 1
                send(connection, .ok(requestID: requestID))
            case .nameTaken:
                send(connection, .error(requestID: requestID, code: ErrorCode.nameTaken.rawValue, message: "that name is taken"))
            case .invalidRequest(let why):
                send(connection, .error(requestID: requestID, code: ErrorCode.invalidName.rawValue, message: TextView(why)))
            case .storageFull:
                storageFull("account")
                send(connection, .error(requestID: requestID, code: ErrorCode.storageFull.rawValue,
                                        message: "the server's storage is full; try again later"))
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
            case .storageFull:
                storageFull("contact change")
                if let connection {
                    send(connection, .error(requestID: requestID, code: ErrorCode.storageFull.rawValue,
                                            message: "the server's storage is full; try again later"))
                }
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
                // Every device that finished its login mail gets it; the first MAIL_ACK deletes it.
                if let session = core.session(of: mail.recipient) {
                    for device in session.devices {
                        guard let recipient = connections[device.connection.raw], !recipient.isClosing,
                              recipient.mailPaging == .done else { continue }
                        if replicatedStore {
                            // The replica may have renumbered it: read it back (catchUpMail waits while congested).
                            recipient.mailBehind = true
                            catchUpMail(recipient)
                        } else if recipient.mailBehind || recipient.budget.congested
                            || recipient.output.readableBytes >= configuration.mailPageBytes {
                            recipient.mailBehind = true
                        } else {
                            sendMail(recipient, mail)
                        }
                    }
                }
            case .duplicateMail:
                // Stored before (e.g. acknowledged just before a crash): give the reserved slot back, ack again.
                core.mailRemoved(recipient: mail.recipient, count: 1, bytes: mail.body.count)
                stats.duplicatesDropped += 1
                ackStored(mail)
            case .noSuchUser:
                // The recipient's account was deleted (switchboard users delete) before the mail committed.
                core.mailRemoved(recipient: mail.recipient, count: 1, bytes: mail.body.count)
                failMail(mail, code: .noSuchUser, "the recipient's account was deleted: the message was not stored")
            case .storageFull:
                storageFull("mail")
                core.mailRemoved(recipient: mail.recipient, count: 1, bytes: mail.body.count)
                failMail(mail, code: .storageFull, "the server's storage is full: the message was not stored; try again later")
            default:
                core.mailRemoved(recipient: mail.recipient, count: 1, bytes: mail.body.count)
                failMail(mail, "unexpected store result")
            }
        case .deleteMail(let recipient, let count, let bytes, let throughSeq):
            if let pending = pendingMailDeletes[recipient], pending <= throughSeq { pendingMailDeletes[recipient] = nil }
            core.mailRemoved(recipient: recipient, count: count, bytes: bytes)
        case .prune:
            break
        case .admin(let token):
            adminWriteCompleted(token: token, .success(outcome))
        case .dedupeWindow(let sender, let generation):
            guard pendingWindows[sender]?.generation == generation, let entries = pendingWindows[sender]?.entries else { return }
            pendingWindows[sender] = nil
            if outcome == .storageFull {
                // Not persisted: kept in memory, tried again at the next sweep.
                storageFull("dedupe window")
                core.restoreSenderHistory(sender, entries)
            }
        }
    }

    func ackStored(_ mail: StoredMail) {
        if cluster != nil, core.isInboundInFlight(sender: mail.sender, messageID: mail.messageID),
           core.inboundCompleted(sender: mail.sender, messageID: mail.messageID, status: .storedOffline) {
            inboundSettledHere(sender: mail.sender, messageID: mail.messageID, status: .storedOffline)
            return
        }
        if let sender = core.completed(sender: mail.sender, messageID: mail.messageID, status: .storedOffline) {
            sendAck(toDevicesOf: sender, messageID: mail.messageID, status: .storedOffline)
            localSettled(sender: mail.sender, messageID: mail.messageID, status: .storedOffline)
        }
    }

    func failMail(_ mail: StoredMail, code: ErrorCode = .internalError, _ why: String) {
        if cluster != nil, core.isInboundInFlight(sender: mail.sender, messageID: mail.messageID),
           core.inboundCompleted(sender: mail.sender, messageID: mail.messageID, status: .storedOffline) {
            core.inboundFailed(sender: mail.sender, messageID: mail.messageID)
            let text = code == .internalError ? "could not store the message: \(why)" : why
            inboundFailedHere(sender: mail.sender, messageID: mail.messageID, code: code, message: text)
            return
        }
        let text = code == .internalError ? "could not store the message: \(why)" : why
        if let sender = core.failed(sender: mail.sender, messageID: mail.messageID) {
            sendError(toDevicesOf: sender, messageID: mail.messageID, code: code, text)
        }
        localFailed(sender: mail.sender, messageID: mail.messageID, code: code, message: text)
    }

    /// The store is out of room (LMDB map full or disk full): counted, and logged at most every 10 s.
    func storageFull(_ what: String) {
        stats.storageFull += 1
        let now = driver.now
        if lastStorageFullLog == 0 || now - lastStorageFullLog >= 10_000 {
            lastStorageFullLog = now
            logger.error("store full: writes that need room are refused (SEND_ERROR storageFull); reads and live relay go on. Raise --map-size or free disk space (the store log above names which)",
                         metadata: ["refused": "\(what)", "refused so far": "\(stats.storageFull)"])
        }
    }

    // MARK: dedupe windows

    /// Persists the recent ids of senders who went offline with nothing in flight (every sender's at
    /// shutdown), then forgets them in memory; until the commit lands they stay in `pendingWindows`.
    func persistSenderHistories(all: Bool) {
        let atMs = driver.wallNow
        for (sender, entries) in core.takeSenderHistories(all: all) where !entries.isEmpty {
            windowGeneration &+= 1
            pendingWindows[sender] = (windowGeneration, entries)
            let stored = entries.suffix(Store.maxDedupeWindowEntries).map {
                DedupeWindowEntry(messageID: $0.id, status: $0.status.rawValue, atMs: atMs)
            }
            storeBatch.append(.putDedupeWindow(sender: sender, entries: Array(stored)),
                              .dedupeWindow(sender: sender, generation: windowGeneration))
        }
    }

    /// At login: the sender's recent ids from memory, a pending persist, or the store.
    func restoreSenderHistory(_ sender: UserID) {
        guard !core.hasSenderHistory(sender) else { return }
        if let pending = pendingWindows[sender] {
            core.restoreSenderHistory(sender, pending.entries)
            return
        }
        do {
            let cutoff = driver.wallNow &- configuration.dedupeRetentionMs
            let stored = try store.dedupeWindow(of: sender, notBeforeMs: cutoff < driver.wallNow ? cutoff : 0)
            core.restoreSenderHistory(sender, stored.compactMap { entry in
                SendStatus(rawValue: entry.status).map { (id: entry.messageID, status: $0) }
            })
        } catch {
            logger.error("dedupe window unreadable; resends of this sender's recent messages may be delivered again",
                         metadata: ["user": "\(sender)", "error": "\(error)"])
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
        case .dedupeWindow(let sender, let generation):
            // Kept in memory (pendingWindows) until a later persist succeeds: nothing is forgotten.
            if pendingWindows[sender]?.generation == generation, let entries = pendingWindows[sender]?.entries {
                pendingWindows[sender] = nil
                core.restoreSenderHistory(sender, entries)
            }
        case .deleteMail(let recipient, _, _, _):
            pendingMailDeletes[recipient] = nil  // the mail stays; it is delivered again at the next login
            core.mailDeleteFailed(recipient: recipient)
        case .prune:
            break
        case .admin(let token):
            adminEvents?(.written(token: token, .failure(StoreErrorBox(description: why))))
        }
    }
}
