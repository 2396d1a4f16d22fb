// The terminal client's run loop: one thread polls the terminal, the server socket and the resize
// pipe; input and server events go through the ScreenModel, whose effects become requests here;
// the screen is redrawn (changed rows only) after every change, and deliveries and offline mail
// are acknowledged only after the frame that shows them was written. A lost connection is retried
// with capped exponential back-off (1 s doubling to at most 5 s, with jitter below the cap), or at
// once on Ctrl-R / F5; after the new login, messages the server never acknowledged are sent again
// with their original ids, which the server and the model both use to drop duplicates. A message
// arriving in a dialog other than the one shown rings the bell once per frame, and the window title
// counts unread messages. With a history store, conversations and unsent messages survive a restart.
// With several servers, every (re)connect is one pass over the list that stops at the first server
// where the login works: the first login starts with the first server, a reconnect after a lost
// connection with the server after the one that was lost (round robin), and the back-off applies
// between full passes; the status line names the server in use or being tried. A server that
// refuses the login itself (wrong password, locked out) ends the pass: another would answer the same.
import Glibc
import SwitchboardClient
import SwitchboardIO
import SwitchboardProtocol

public struct ChatAppConfiguration {
    /// The servers to use, tried in order.
    public var servers: ServerList
    public var user: String
    public var password: String
    /// Opens a new connection to one server of the list (plain or TLS: the caller decides).
    public var connect: (String) throws -> ChatSession
    /// Where conversations are kept between runs (nil: not kept).
    public var history: HistoryStore?
    /// Ring the terminal bell for messages in other dialogs.
    public var bell = true
    /// The device this client logs in as (protocol 2): its other devices stay online. nil: plain LOGIN.
    public var device: DeviceIdentity?

    public init(servers: ServerList, user: String, password: String, device: DeviceIdentity? = nil,
                connect: @escaping (String) throws -> ChatSession) {
        self.servers = servers; self.user = user; self.password = password; self.device = device; self.connect = connect
    }
}

public final class ChatApp {
    public private(set) var model = ScreenModel()
    private let configuration: ChatAppConfiguration
    private var session: ChatSession?
    private var decoder = InputDecoder()
    private let renderer: Renderer
    private var quitting = false
    private var flashShown: String?
    private var flashSince: UInt64 = 0
    private var titleShown: String?
    private var reconnectRequested = false
    /// The index of the server in use, or the one tried last.
    public private(set) var serverIndex = 0
    /// The connection in use (nil while disconnected).
    public var connection: ChatConnection? { session?.connection }

    public init(configuration: ChatAppConfiguration) {
        self.configuration = configuration
        renderer = Renderer(formatTime: ChatApp.localTime, nowMs: { Clock.monotonicMs() })
        model.server = configuration.servers.entries[0]
        model.me = configuration.user
        if let history = configuration.history {
            model.history = history
            model.restoreUnsent(history.unsent())
            for peer in history.openPeers() { model.reopenDialog(peer) }
        }
    }

    /// Creates the account (before `logIn`) on the first server that answers.
    /// Throws `AllServersFailed` when none does.
    public func register() throws {
        let (_, session, _) = try configuration.servers.firstReachable(configuration.connect)
        defer { session.connection.close() }
        try session.register(name: configuration.user, password: configuration.password)
    }

    /// The first login, before the screen opens, so that a wrong password or an unreachable server
    /// is reported as a plain error: `AllServersFailed` when no server could be used, the server's
    /// refusal otherwise. Returns the servers passed over on the way.
    @discardableResult
    public func logIn() throws -> [ServerList.Failure] {
        let (session, info, passedOver) = try connectAndLogIn(startingAt: 0)
        adopt(session, info: info)
        return passedOver
    }

    /// One pass over the servers from `start`: connect and log in, moving on when a server cannot be
    /// reached (or drops the connection before answering); a login the server refuses ends the pass.
    private func connectAndLogIn(startingAt start: Int, willTry: (String) -> Void = { _ in }) throws
        -> (ChatSession, LoginInfo, [ServerList.Failure]) {
        let configuration = self.configuration
        let (index, outcome, passedOver) = try configuration.servers.firstReachable(startingAt: start, willTry: { index, server in
            self.serverIndex = index
            self.model.server = server
            willTry(server)
        }) { server -> Result<(ChatSession, LoginInfo), any Error> in
            let session = try configuration.connect(server)
            do {
                let info = try session.logIn(name: configuration.user, password: configuration.password, device: configuration.device)
                return .success((session, info))
            } catch let refusal as ClientError where refusal.code != nil {
                session.connection.close()
                return .failure(refusal)
            } catch {
                session.connection.close()
                throw error
            }
        }
        serverIndex = index
        let (session, info) = try outcome.get()
        return (session, info, passedOver)
    }

    private func adopt(_ session: ChatSession, info: LoginInfo) {
        self.session = session
        model.maxBodyBytes = session.connection.welcome.limits.maxBodyBytes
        model.server = session.connection.server
        let resend = model.loggedIn(name: info.name, contacts: info.contacts, pendingMail: info.pendingMail)
        perform(resend)
        // Refresh the offline notice of open dialogs.
        for dialog in model.dialogs {
            if case .chat(let user) = dialog.id { perform([.openChat(userID: user)]) }
        }
        // Offline mail and presence often arrive with the login answer: they are buffered in the
        // session already and will not make the socket readable again.
        drainSession()
    }

    // MARK: run loop

    public func run(terminal: Terminal) throws {
        try terminal.enter()
        defer {
            terminal.leave()
            session?.connection.close()
            if let history = configuration.history {
                history.setOpenPeers(model.dialogs.compactMap { if case .chat(let u) = $0.id { return u } else { return nil } })
                history.sync()
            }
        }
        var previous: ScreenBuffer?
        var lastSize = (width: 0, height: 0)
        var hits: [HitRegion] = []
        var dirty = true
        while !quitting {
            let now = Clock.monotonicMs()
            if session == nil, case .waitingToReconnect(_, let retryAt, let attempt) = model.connection,
               now >= retryAt || reconnectRequested {
                reconnectRequested = false
                // Round robin: the pass starts after the server that was lost (or tried last).
                reconnect(attempt: attempt + 1, startingAt: configuration.servers.index(after: serverIndex), terminal: terminal,
                          previous: &previous)
                dirty = true
            } else if session == nil, reconnectRequested, case .stopped = model.connection {
                reconnectRequested = false
                // Stopped by the server's word (e.g. taken over), not by its absence: the same server first.
                reconnect(attempt: 1, startingAt: serverIndex, terminal: terminal, previous: &previous)
                dirty = true
            }
            if let problem = configuration.history?.takeError() { model.flash = problem }
            if let flash = model.flash {
                if flash != flashShown { flashShown = flash; flashSince = now } else if now - flashSince > 10_000 {
                    model.flash = nil; flashShown = nil; dirty = true
                }
            }
            let size = terminal.size()
            if size != lastSize { lastSize = size; previous = nil; dirty = true }
            if dirty {
                hits = draw(terminal, size: size, previous: &previous)
                dirty = false
                acknowledgeShown()
                if model.takeBells() > 0 && configuration.bell { terminal.bell() }
                if model.windowTitle != titleShown { titleShown = model.windowTitle; terminal.setTitle(model.windowTitle) }
            }

            var fds = [pollfd(fd: 0, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: terminal.resizeFD, events: Int16(POLLIN), revents: 0)]
            if let session { fds.append(pollfd(fd: session.connection.fd, events: Int16(POLLIN), revents: 0)) }
            var timeout: Int32 = decoder.hasPending ? 30 : 1000
            if session == nil, case .waitingToReconnect(_, let retryAt, _) = model.connection {
                timeout = Int32(clamping: min(UInt64(timeout), retryAt > now ? retryAt - now : 0))
            }
            let rc = poll(&fds, nfds_t(fds.count), timeout)
            if rc < 0 {
                if errno == EINTR { continue }
                throw TerminalError("poll failed: errno \(errno)")
            }
            if rc == 0 {
                if decoder.hasPending { handle(decoder.flush(nowMs: Clock.monotonicMs()), hits: hits) }
                dirty = true  // status countdowns and flash expiry
                continue
            }
            if fds[1].revents != 0 { terminal.drainResize(); dirty = true }
            if fds[0].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                guard let bytes = terminal.readInput() else { quitting = true; break }
                handle(decoder.feed(bytes, nowMs: Clock.monotonicMs()), hits: hits)
                dirty = true
            }
            if session != nil {
                // Also after input: requests made for it may have left events in the session's buffers.
                drainSession()
                dirty = true
            }
        }
    }

    private func draw(_ terminal: Terminal, size: (width: Int, height: Int), previous: inout ScreenBuffer?) -> [HitRegion] {
        var frame = renderer.render(model, width: size.width, height: size.height)
        if let id = model.activeDialog, (model.dialog(id)?.scroll ?? 0) > frame.maxScroll {
            model.clampScroll(id, maximum: frame.maxScroll)
            frame = renderer.render(model, width: size.width, height: size.height)
        }
        model.pageRows = frame.pageRows
        var out = frame.buffer.ansi(from: previous)
        if let cursor = frame.cursor {
            out += "\u{1B}[\(cursor.row + 1);\(cursor.column + 1)H\u{1B}[?25h"
        } else {
            out += "\u{1B}[?25l"
        }
        terminal.write(out)
        previous = frame.buffer
        return frame.hits
    }

    private func handle(_ events: [InputEvent], hits: [HitRegion]) {
        // One batch: typed characters and pastes are inserted with one edit each.
        perform(model.handle(events, hits: hits, nowMs: Clock.wallMs()))
    }

    // MARK: effects

    private func perform(_ effects: [Effect]) {
        for effect in effects {
            if case .quit = effect { quitting = true; return }
            if case .reconnectNow = effect {
                if session == nil { reconnectRequested = true }
                continue
            }
            guard let session else {
                // Sends stay in the outbox and go out after the reconnect; other requests need a connection.
                if case .send = effect { continue }
                model.flash = "not connected: try again when online"
                continue
            }
            do {
                switch effect {
                case .quit, .reconnectNow:
                    return
                case .openChat(let user):
                    let status = try session.openChat(with: user)
                    model.chatStatus(userID: user, online: status.online, text: status.text)
                case .send(let to, let messageID, let body):
                    try session.send(to: to, messageID: messageID, body: body)
                case .addContact(let name):
                    try session.addContact(name)
                    let list = try session.contacts()
                    model.replaceContacts(list)
                    let now = list.first { $0.name == name }
                    model.flash = now?.relation == .accepted ? "\(name) is now a contact" : "request sent to \(name)"
                case .acceptContact(let name):
                    try session.acceptContact(name)
                    model.replaceContacts(try session.contacts())
                    model.flash = "\(name) is now a contact"
                case .removeContact(let name):
                    try session.removeContact(name)
                    model.replaceContacts(try session.contacts())
                    model.flash = "removed \(name)"
                }
                // Requests wait for their answers; events that came meanwhile are queued in the session.
                drainQueued()
            } catch let error as ClientError where (error.code ?? 0) >= 100 {
                model.flash = "\(describe(effect)): \(error.message)"
            } catch {
                connectionLost(error)
                return
            }
        }
    }

    private func describe(_ effect: Effect) -> String {
        switch effect {
        case .addContact(let name): return "add \(name)"
        case .acceptContact(let name): return "accept \(name)"
        case .removeContact(let name): return "remove \(name)"
        case .openChat: return "open dialog"
        case .send: return "send"
        case .quit: return "quit"
        case .reconnectNow: return "reconnect"
        }
    }

    /// Events the session already holds (no waiting on the socket).
    private func drainQueued() {
        drainSession()
    }

    private func drainSession() {
        guard let session else { return }
        do {
            // nextEvent reads frames already buffered before it polls, so this also empties TLS buffers.
            for _ in 0..<2000 {
                guard let event = try session.nextEvent(timeoutMs: 1) else { break }
                model.apply(event)
                if case .serverError(let code, let message) = event {
                    connectionLost(ClientError(message, code: code))
                    return
                }
            }
        } catch {
            connectionLost(error)
        }
    }

    private func acknowledgeShown() {
        let (deliveries, mail) = model.takeAcknowledgements()
        guard let session else { return }
        do {
            if let deliveries { try session.acknowledgeDeliveries(through: deliveries) }
            if let mail { try session.acknowledgeMail(through: mail) }
        } catch {
            connectionLost(error)
        }
    }

    // MARK: reconnecting

    private func connectionLost(_ error: Error, attempt: Int = 0) {
        session?.connection.close()
        session = nil
        var reason = (error as? ClientError)?.message ?? "\(error)"
        if let all = error as? AllServersFailed {
            // One server: its reason, as before lists existed; several: each server and its reason.
            reason = all.failures.count == 1 ? all.failures[0].reason : all.description
        }
        if let code = (error as? ClientError)?.code,
           code == ErrorCode.sessionTakenOver.rawValue || code == ErrorCode.lockedOut.rawValue
            || code == ErrorCode.authenticationFailed.rawValue {
            model.connection = .stopped(reason: reason)
            return
        }
        model.connectionLost(reason: reason, retryAtMs: Clock.monotonicMs() + ChatApp.backoffMs(attempt: attempt + 1),
                             attempt: attempt)
    }

    /// The most a reconnect waits.
    public static let maxBackoffMs: UInt64 = 5_000

    /// Delay before attempt `n` (1-based): 1 s doubling to at most 5 s, each delay drawn from
    /// 75-100 % of that (jitter spreads clients that lost the same server, and never passes the cap).
    public static func backoffMs(attempt: Int) -> UInt64 {
        let base = min(maxBackoffMs, UInt64(1_000) << UInt64(min(max(attempt - 1, 0), 8)))
        return UInt64(Double(base) * Double.random(in: 0.75...1.0))
    }

    private func reconnect(attempt: Int, startingAt start: Int, terminal: Terminal, previous: inout ScreenBuffer?) {
        model.connection = .connecting(attempt: attempt)
        let lost = model.server
        var screen = previous
        do {
            // Show "connecting to SERVER" before blocking on each connect.
            let (session, info, passedOver) = try connectAndLogIn(startingAt: start) { _ in
                _ = self.draw(terminal, size: terminal.size(), previous: &screen)
            }
            previous = screen
            adopt(session, info: info)
            model.flash = session.connection.server == lost ? "reconnected" : "reconnected to \(session.connection.server)"
            if let tls = session.connection.tls, case .newlyPinned = tls.serverKey {
                model.flash = "first contact with \(tls.serverEntry): pinned its key sha256:\(tls.serverPublicKeyFingerprint)"
            }
            if let refusal = passedOver.last(where: \.isSecurityRefusal) { model.flash = "passed over \(refusal)" }
        } catch {
            previous = screen
            connectionLost(error, attempt: attempt)
        }
    }

    /// "HH:MM:SS" in local time.
    public static func localTime(_ ms: UInt64) -> String {
        var seconds = time_t(ms / 1000)
        var parts = tm()
        localtime_r(&seconds, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))"
    }
}
