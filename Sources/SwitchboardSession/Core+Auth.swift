// Registration and login: every password check goes through the AuthGate (counted when submitted,
// bounded per address and in all, served fairly, cancelled on close); a parked client is not read
// until its hash (and, for a registration, its commit) returns; login takes over the same user's
// older session and sends LOGIN_OK, the contact list and the first mail page.
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

extension ServerCore {
    func startRegistration(_ connection: ClientState, requestID: UInt32, name: String, password: [UInt8]) {
        guard Store.isValidUserName(name) else {
            send(connection, .error(requestID: requestID, code: ErrorCode.invalidName.rawValue,
                                    message: "user names are 1-32 characters of A-Z a-z 0-9 _ . -"))
            return
        }
        guard password.count >= ProtocolConstants.minPasswordBytes else {
            send(connection, .error(requestID: requestID, code: ErrorCode.invalidPassword.rawValue,
                                    message: "passwords need at least \(ProtocolConstants.minPasswordBytes) bytes"))
            return
        }
        submitAuth(connection, kind: .register, name: name, AuthRequest(requestID: requestID, password: password))
    }

    /// `deviceID` "" is the implicit device of a LOGIN without one (protocol version 1, or plain LOGIN).
    func startLogin(_ connection: ClientState, requestID: UInt32, name: String, password: [UInt8],
                    deviceID: String = "", deviceName: String = "") {
        connection.deviceID = deviceID
        connection.deviceName = deviceName
        submitAuth(connection, kind: .login, name: name, AuthRequest(requestID: requestID, password: password))
    }

    /// Every password check enters the AuthGate, which decides when (and whether) it is hashed.
    func submitAuth(_ connection: ClientState, kind: AuthKind, name: String, _ request: AuthRequest) {
        let now = driver.now
        let attempt = AuthAttempt(connection: connection.id.raw, address: connection.host, user: name, kind: kind,
                                  payload: request, now: now)
        switch authGate.submit(attempt, now: now) {
        case .queued:
            park(connection)
            pumpAuth()
        case .lockedOut(let why):
            stats.lockouts += 1
            logger.notice("login locked out", metadata: ["user": "\(name)", "peer": "\(connection.peerText)"])
            close(connection, code: .lockedOut, why)
        case .busy(let why):
            stats.authBusy += 1
            send(connection, .error(requestID: request.requestID, code: ErrorCode.busyRetryLater.rawValue, message: TextView(why)))
        }
    }

    /// Hands the gate's ready attempts to the hash threads (at most one per thread is outstanding, so
    /// the rest stay queued where a close can cancel them) and wakes the gate for delayed ones.
    func pumpAuth() {
        let now = driver.now
        while let dispatch = authGate.next(now: now) {
            switch dispatch {
            case .refuse(let attempt, let why):
                stats.lockouts += 1
                if let connection = connections[attempt.connection], !connection.isClosing {
                    close(connection, code: .lockedOut, why)
                }
            case .hash(let attempt):
                guard let connection = connections[attempt.connection], !connection.isClosing else {
                    authGate.finished(attempt, .neutral, now: now)
                    continue
                }
                let request = attempt.payload
                switch attempt.kind {
                case .register:
                    hashingAttempts[attempt.connection] = attempt
                    driver.startHash(.hashForRegistration(connection: attempt.connection, requestID: request.requestID,
                                                               name: attempt.user, password: request.password,
                                                               iterations: configuration.pbkdf2Iterations))
                case .login:
                    let account: AccountRecord?
                    do {
                        account = Store.isValidUserName(attempt.user) ? try store.account(named: attempt.user) : nil
                    } catch {
                        logger.error("account lookup failed", metadata: ["error": "\(error)"])
                        authGate.finished(attempt, .neutral, now: now)
                        send(connection, .error(requestID: request.requestID, code: ErrorCode.internalError.rawValue,
                                                message: "account lookup failed"))
                        unpark(connection, phase: .awaitingAuth)
                        continue
                    }
                    hashingAttempts[attempt.connection] = attempt
                    driver.startHash(.verifyLogin(connection: attempt.connection, requestID: request.requestID,
                                                       name: attempt.user, password: request.password, account: account,
                                                       dummy: dummyHash))
                }
            }
        }
        if let wake = authGate.nextWakeupMs, wake > now, wake < authWakeAt {
            authWakeAt = wake
            driver.schedule(at: wake, token: Self.authWakeToken)
        }
    }

    func finishAttempt(_ connection: UInt64, _ outcome: AuthOutcome) {
        if let attempt = hashingAttempts.removeValue(forKey: connection) {
            authGate.finished(attempt, outcome, now: driver.now)
        }
    }

    /// Stops reading while a helper thread works for this connection; frames already received
    /// wait in its input buffer.
    func park(_ connection: ClientState) {
        connection.phase = .authenticating
        connection.parked = true
        driver.interestChanged(connection)
    }

    func unpark(_ connection: ClientState, phase: ClientState.Phase) {
        connection.phase = phase
        connection.parked = false
        resumeReading(connection)
    }

    /// Reading may go on (unparked, or output drained): frames that arrived meanwhile are handled first.
    func resumeReading(_ connection: ClientState) {
        guard !connection.isClosing, !connection.readingPaused else { return }
        driver.interestChanged(connection)
        if connection.hasInput { process(connection, from: connection.input) }
        if driver.hasBufferedInput(connection) && !connection.isClosing { driver.readAgain(connection) }
    }

    func handleHashResults(_ results: [HashResult]) {
        for result in results {
            switch result {
            case .hashed(let id, let requestID, let name, let hash):
                finishAttempt(id, .neutral)
                guard let connection = connections[id], !connection.isClosing else { continue }
                storeBatch.append(.createAccount(name: name, password: hash), .createAccount(connection: id, requestID: requestID))
            case .verified(let id, let requestID, let name, let account, let ok):
                finishAttempt(id, ok ? .success : .wrongPassword)
                guard let connection = connections[id], !connection.isClosing else { continue }
                // The account was checked before the hash; an administrator may have deleted it (or be deleting
                // it) since: read it again (committed state) so a deleted account never gets a session.
                let stillThere = ok && !isBeingDeleted(name)
                    && account.map { checked in ((try? store.account(named: name)) ?? nil)?.userID == checked.userID } == true
                guard ok, stillThere, let account else {
                    metrics.loginFailures += 1
                    logger.info("login failed", metadata: ["user": "\(name)", "peer": "\(connection.peerText)"])
                    send(connection, .error(requestID: requestID, code: ErrorCode.authenticationFailed.rawValue,
                                            message: "wrong user name or password"))
                    unpark(connection, phase: .awaitingAuth)
                    continue
                }
                completeLogin(connection, requestID: requestID, account: account)
            case .hashedForAdmin(let token, let hash):
                adminEvents?(.hashed(token: token, hash: hash))
            }
        }
        pumpAuth()
    }

    func leavePreLogin(_ connection: ClientState) {
        guard connection.countedPreLogin else { return }
        connection.countedPreLogin = false
        let host = connection.host
        if let count = preLoginByAddress[host], count > 1 { preLoginByAddress[host] = count - 1 } else { preLoginByAddress[host] = nil }
    }

    func completeLogin(_ connection: ClientState, requestID: UInt32, account: AccountRecord) {
        let contacts: [ContactEntry]
        do {
            contacts = try store.contacts(of: account.userID)
        } catch {
            logger.error("contact lookup failed", metadata: ["error": "\(error)"])
            send(connection, .error(requestID: requestID, code: ErrorCode.internalError.rawValue, message: "contact lookup failed"))
            unpark(connection, phase: .awaitingAuth)
            return
        }
        let outcome = core.login(user: account.userID, name: account.name, connection: connection.id,
                                 address: connection.peerText, contacts: contacts, deviceID: connection.deviceID,
                                 deviceName: connection.deviceName, receivesCopies: connection.protocolVersion >= 2)
        if let refusal = outcome.refusal {
            logger.info("login refused: too many devices", metadata: ["user": "\(account.name)", "peer": "\(connection.peerText)"])
            send(connection, .error(requestID: requestID, code: ErrorCode.tooManyDevices.rawValue, message: TextView(refusal)))
            unpark(connection, phase: .awaitingAuth)
            return
        }
        connection.userID = account.userID
        connection.userName = account.name
        connection.session = outcome.session
        leavePreLogin(connection)
        restoreSenderHistory(account.userID)
        if let old = outcome.takenOver, let oldConnection = connections[old.raw] {
            logger.info("session taken over", metadata: ["user": "\(account.name)", "old": "\(oldConnection.peerText)",
                                                         "new": "\(connection.peerText)"])
            oldConnection.userID = 0 // its deliveries still go to the mailbox, but it is no longer the session
            oldConnection.session = nil
            let device = connection.deviceName.isEmpty ? "" : " (device \(connection.deviceName))"
            close(oldConnection, code: .sessionTakenOver, "logged in from \(connection.peerText)\(device)",
                  keepUserForReroute: account.userID)
        }
        if replicatedStore, let usage = try? store.mailboxUsage(of: account.userID) {
            core.refreshMailbox(of: account.userID, usage: usage)
        }
        let box = core.mailbox(of: account.userID)
        send(connection, .loginOK(requestID: requestID, userID: account.userID, name: TextView(account.name),
                                  address: TextView(connection.peerText), pendingMail: UInt32(clamping: box.count)))
        sendContactList(connection, requestID: requestID, contacts: outcome.contacts)
        for target in outcome.notifyOnline {
            if let other = connections[target.raw] { send(other, .presence(userID: account.userID, online: true)) }
        }
        metrics.logins += 1
        if cluster != nil { connection.storedDedupeChecks = configuration.dedupeWindow }
        cluster?.deviceJoined(user: account.userID, deviceID: connection.deviceID, contacts: core.acceptedContacts(of: account.userID))
        logger.info("login", metadata: ["user": "\(account.name)", "peer": "\(connection.peerText)",
                                        "device": "\(connection.deviceName.isEmpty ? connection.deviceID : connection.deviceName)",
                                        "devices": "\(outcome.session?.devices.count ?? 1)"])
        connection.mailPaging = .notStarted
        // Mail acknowledged on an earlier connection whose delete has not committed yet is not sent again.
        // Nor is mail another device acknowledged already.
        connection.mailCursor = max(pendingMailDeletes[account.userID] ?? 0, box.ackedThrough)
        sendMailPage(connection)
        if box.count == 0 { core.forgetEmptyMailbox(of: account.userID) }
        unpark(connection, phase: .active)
        connection.lastActivity = driver.now
        scheduleTimer(connection, at: nextDeadline(connection))
    }
}
