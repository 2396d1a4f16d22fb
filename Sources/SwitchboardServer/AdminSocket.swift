// The admin socket: a Unix-domain socket in the data folder (DATA/admin.sock, mode 0600, only the
// server's own user or root admitted by SO_PEERCRED), answered by the event loop. `switchboard admin`,
// `switchboard users` and `switchboard top` speak it; so can `socat - UNIX-CONNECT:DATA/admin.sock`.
//
// Protocol: each request is one line (at most 4096 bytes, LF-terminated); each answer is
// `ok <n>\n` or `error <n>\n` followed by exactly n bytes of UTF-8 text. Requests on one connection are
// answered in order; one that waits for a hash or a commit holds the ones behind it.
// Commands: who | talkers N | kick USER [REASON] | stats | users add USER PASSWORD | users passwd USER PASSWORD |
// users delete USER | reload | ping | help (PASSWORD is the rest of the line).
//
// Invariants: nothing here blocks the loop: password hashes run on the hash threads, account writes go
// through the group commit, reads are the loop's in-memory state (`who`, `stats`) or one LMDB point
// lookup. A request's answer is dropped (the write still happens) if its connection closed meanwhile.
import Glibc
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardSession
import SwitchboardStore
import SwitchboardTLS

final class AdminSocket: OpsProtocol {
    static let maxLineBytes = 4096
    static let maxConnections = 16
    static let idleTimeoutMs: UInt64 = 600_000
    unowned let server: RelayServer
    let path: String
    let listener: OpsListener
    private var socketInode: ino_t = 0
    private var nextToken: UInt64 = 1
    private enum Pending {
        case hashForCreate(name: String)
        case hashForPassword(name: String)
        case write(String)
    }
    /// Loop nanoseconds the previous `who` took (it walks every session), shown by `stats`.
    private(set) var lastWhoNs: UInt64 = 0
    private(set) var lastTalkersNs: UInt64 = 0
    private var pending: [UInt64: (connection: OpsConnection, what: Pending)] = [:]

    init(server: RelayServer, path: String, sweepToken: UInt64) throws {
        self.server = server
        self.path = path
        let fd = try UnixSocket.listen(path: path)
        do {
            listener = try OpsListener(name: "admin", fd: fd, loop: server.loop, maxConnections: Self.maxConnections,
                                       maxRequestBytes: 16 * Self.maxLineBytes, idleTimeoutMs: Self.idleTimeoutMs,
                                       sweepToken: sweepToken)
        } catch {
            Sys.close(fd)
            unlink(path)
            throw error
        }
        var info = stat()
        if stat(path, &info) == 0 { socketInode = info.st_ino }
        let me = geteuid()
        listener.admit = { fd in
            guard let uid = UnixSocket.peerUserID(fd) else { return false }
            return uid == me || uid == 0
        }
        listener.proto = self
        listener.deadlineMovesOnRead = true
        server.core.adminEvents = { [unowned self] in self.coreEvent($0) }
    }

    /// Stops listening and removes the socket file if it is still the one we bound.
    func close() {
        listener.close()
        var info = stat()
        if stat(path, &info) == 0 && info.st_ino == socketInode { unlink(path) }
        server.core.adminEvents = nil
    }

    var refusal: [UInt8] { Self.answer(ok: false, "too many admin connections (at most \(Self.maxConnections))\n") }

    func requestTooLarge(_ connection: OpsConnection) {
        connection.queue(Self.answer(ok: false, "request line over \(Self.maxLineBytes) bytes\n"))
    }

    func timedOut(_ connection: OpsConnection) {
        connection.queue(Self.answer(ok: false, "idle for \(Self.idleTimeoutMs / 1000) s\n"))
    }

    static func answer(ok: Bool, _ text: String) -> [UInt8] {
        let body = Array(text.utf8)
        return Array("\(ok ? "ok" : "error") \(body.count)\n".utf8) + body
    }

    func process(_ connection: OpsConnection) {
        while !connection.awaitingAnswer && !connection.closeAfterWrite {
            guard let newline = connection.input.firstIndex(of: UInt8(ascii: "\n")) else {
                if connection.input.count > Self.maxLineBytes {
                    connection.input.removeAll()
                    requestTooLarge(connection)
                    connection.closeAfterWrite = true
                }
                return
            }
            guard newline <= Self.maxLineBytes else {
                connection.input.removeAll()
                requestTooLarge(connection)
                connection.closeAfterWrite = true
                return
            }
            var line = String(decoding: connection.input[0..<newline], as: UTF8.self)
            connection.input.removeSubrange(0...newline)
            if line.hasSuffix("\r") { line.removeLast() }
            handle(line, on: connection)
        }
    }

    private func reply(_ connection: OpsConnection, ok: Bool, _ text: String) {
        connection.queue(Self.answer(ok: ok, text.hasSuffix("\n") || text.isEmpty ? text : text + "\n"))
    }

    private func handle(_ line: String, on connection: OpsConnection) {
        let words = line.split(separator: " ", omittingEmptySubsequences: true)
        guard let command = words.first else { reply(connection, ok: false, "empty request; try help"); return }
        switch (command, words.count) {
        case ("ping", _):
            reply(connection, ok: true, "pong")
        case ("help", _):
            reply(connection, ok: true, """
                who                           online users: name, device, address, since, transport, queued bytes
                talkers N                     the N sessions that sent+received most since this connection's previous talkers
                kick USER [REASON]            close USER's session (ERROR kicked); unacknowledged messages go to its mailbox
                stats                         counters and latency histograms (what `switchboard top` reads)
                users add USER PASSWORD       create an account (PASSWORD: the rest of the line)
                users passwd USER PASSWORD    set a new password (sessions already open stay open)
                users delete USER             delete an account, its contacts and its mail (its session is closed)
                reload                        reload what can change while running
                ping                          pong
                """)
        case ("who", 1):
            let start = Clock.monotonicNs()
            let text = who()
            lastWhoNs = Clock.monotonicNs() &- start
            reply(connection, ok: true, text)
        case ("talkers", 2):
            guard let count = Int(words[1]), count >= 0, count <= 10_000 else {
                reply(connection, ok: false, "usage: talkers N (0...10000)")
                return
            }
            let start = Clock.monotonicNs()
            let text = talkers(count, for: connection)
            lastTalkersNs = Clock.monotonicNs() &- start
            reply(connection, ok: true, text)
        case ("stats", 1):
            reply(connection, ok: true, AdminStats.render(server))
        case ("kick", 2...):
            let name = String(words[1])
            let reason = words.count > 2 ? words[2...].joined(separator: " ") : "closed by an administrator"
            // Every device of the user: an operator who kicks a user wants the user gone.
            let clients = server.core.sessions(named: name)
            guard !clients.isEmpty else {
                reply(connection, ok: false, "\(name) is not online")
                return
            }
            let addresses = clients.map(\.peerText).joined(separator: ", ")
            for client in clients { server.core.kick(client, reason: reason) }
            reply(connection, ok: true, "kicked \(name) (\(addresses))")
        case ("reload", 1):
            // The same reload as SIGHUP (Reload.swift: the file is re-read off the loop); the answer is its
            // report, sent when it completes. Requests behind it on this connection wait for it.
            connection.awaitingAnswer = true
            server.reload { [weak self, weak connection] report in
                guard let self, let connection else { return }
                self.reply(connection, ok: report.applied, report.description)
                self.listener.answered(connection)
            }
        case ("users", 3...) where words[1] == "add" || words[1] == "passwd":
            usersSetPassword(line, create: words[1] == "add", name: String(words[2]), on: connection)
        case ("users", 3) where words[1] == "delete":
            let name = String(words[2])
            guard Store.isValidUserName(name) else { reply(connection, ok: false, "invalid user name '\(name)'"); return }
            startWrite(.deleteAccount(name: name), describe: name, on: connection)
        case ("users", _):
            reply(connection, ok: false, "usage: users add USER PASSWORD | users passwd USER PASSWORD | users delete USER (users list reads the store directly)")
        default:
            reply(connection, ok: false, "unknown or malformed command '\(line.prefix(64))'; try help")
        }
    }

    // MARK: who

    /// One line per logged-in session, sorted by name. O(sessions) on the loop (tens of ms at 10 000:
    /// `admin_last_who_ns` in `stats` says how long the previous one took); `top` uses `talkers`.
    func who() -> String {
        let loop = server.loop
        var text = "NAME\tDEVICE\tADDRESS\tSINCE\tTRANSPORT\tQUEUED\tUNACKED\tSENT\tRECEIVED\tCONN\n"
        var active: [ClientState] = []
        active.reserveCapacity(server.core.connectionCount)
        for client in server.core.clients where client.phase == .active { active.append(client) }
        active.sort { $0.userName < $1.userName }
        text.reserveCapacity(text.utf8.count + active.count * 96)
        var lastSecond: UInt64 = .max
        var lastISO = ""
        for client in active {
            let sinceMs = loop.wallNow &- (loop.now &- client.createdAt)
            if sinceMs / 1000 != lastSecond { lastSecond = sinceMs / 1000; lastISO = Self.isoTime(ms: sinceMs) }
            var transport = "plain"
            if let connection = client.link.map({ unsafeDowncast($0, to: Connection.self) }), let tls = connection.tls {
                transport = tls.protocolVersion.isEmpty ? "tls" : tls.protocolVersion
            }
            // DEVICE: the readable name the client gave at LOGIN_DEVICE, else its id, else "-" (a plain LOGIN).
            // Device names and ids hold no control characters (the server refuses them), so no tab or newline.
            let device = !client.deviceName.isEmpty ? client.deviceName : (!client.deviceID.isEmpty ? client.deviceID : "-")
            text += client.userName; text += "\t"; text += device; text += "\t"; text += client.peerText; text += "\t"; text += lastISO
            text += "\t"; text += transport; text += "\t"; text += String(client.output.readableBytes)
            text += "\t"; text += String(client.window.count); text += "\t"; text += String(client.messagesSent)
            text += "\t"; text += String(client.messagesReceived); text += "\t"; text += String(client.id.raw); text += "\n"
        }
        return text
    }

    /// The `count` sessions with the most messages sent + received since this admin connection's previous
    /// `talkers` (the first call: since they connected). Same columns as `who`, SENT and RECEIVED as those
    /// differences. O(sessions) integer work, no per-session string.
    func talkers(_ count: Int, for admin: OpsConnection) -> String {
        var baseline: [UInt64: (sent: UInt64, received: UInt64)] = [:]
        baseline.reserveCapacity(server.core.connectionCount)
        var ranked: [(score: UInt64, sent: UInt64, received: UInt64, client: ClientState)] = []
        for client in server.core.clients where client.phase == .active {
            let previous = admin.talkerBaseline[client.id.raw] ?? (0, 0)
            let sent = client.messagesSent &- previous.sent, received = client.messagesReceived &- previous.received
            baseline[client.id.raw] = (client.messagesSent, client.messagesReceived)
            if sent + received > 0 { ranked.append((sent + received, sent, received, client)) }
        }
        admin.talkerBaseline = baseline
        ranked.sort { ($0.score, $1.client.userName) > ($1.score, $0.client.userName) }
        var text = "NAME\tDEVICE\tADDRESS\tSINCE\tTRANSPORT\tQUEUED\tUNACKED\tSENT\tRECEIVED\tCONN\n"
        let loop = server.loop
        for entry in ranked.prefix(count) {
            let client = entry.client
            let transport = client.link.flatMap({ unsafeDowncast($0, to: Connection.self).tls }).map { $0.protocolVersion } ?? "plain"
            text += [client.userName, "-", client.peerText, Self.isoTime(ms: loop.wallNow &- (loop.now &- client.createdAt)),
                     transport, String(client.output.readableBytes), String(client.window.count), String(entry.sent),
                     String(entry.received), String(client.id.raw)].joined(separator: "\t") + "\n"
        }
        return text
    }

    static func isoTime(ms: UInt64) -> String {
        var seconds = time_t(ms / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))Z"
    }

    // MARK: account writes

    private func usersSetPassword(_ line: String, create: Bool, name: String, on connection: OpsConnection) {
        guard Store.isValidUserName(name) else {
            reply(connection, ok: false, "invalid user name '\(name)': 1-32 characters of A-Z a-z 0-9 _ . -")
            return
        }
        // The password is the rest of the line after "users add NAME " (spaces in it kept).
        let password = Self.rest(of: Array(line.utf8), afterWords: 3)
        guard password.count >= ProtocolConstants.minPasswordBytes, password.count <= ProtocolConstants.maxPasswordBytes else {
            reply(connection, ok: false, "passwords need \(ProtocolConstants.minPasswordBytes)-\(ProtocolConstants.maxPasswordBytes) bytes")
            return
        }
        do {
            let existing = try server.store.account(named: name)
            if create && existing != nil { reply(connection, ok: false, "\(name) already exists"); return }
            if !create && existing == nil { reply(connection, ok: false, "no such user \(name)"); return }
        } catch {
            reply(connection, ok: false, "account lookup failed: \(error)")
            return
        }
        let token = takeToken()
        pending[token] = (connection, create ? .hashForCreate(name: name) : .hashForPassword(name: name))
        connection.awaitingAnswer = true
        server.core.adminHash(token: token, password: password)
    }

    /// The bytes after the first `count` space-separated words and the one space that follows them.
    static func rest(of line: [UInt8], afterWords count: Int) -> [UInt8] {
        var index = 0
        for _ in 0..<count {
            while index < line.count && line[index] == UInt8(ascii: " ") { index += 1 }
            while index < line.count && line[index] != UInt8(ascii: " ") { index += 1 }
        }
        if index < line.count { index += 1 }
        return Array(line[index...])
    }

    private func startWrite(_ op: WriteOp, describe: String, on connection: OpsConnection) {
        let token = takeToken()
        pending[token] = (connection, .write(describe))
        connection.awaitingAnswer = true
        server.core.adminWrite(op, token: token)
    }

    private func takeToken() -> UInt64 {
        defer { nextToken += 1 }
        return nextToken
    }

    private func coreEvent(_ event: AdminEvent) {
        switch event {
        case .hashed(let token, let hash):
            guard let (connection, what) = pending.removeValue(forKey: token) else { return }
            let token = takeToken()
            switch what {
            case .hashForCreate(let name):
                pending[token] = (connection, .write(name))
                server.core.adminWrite(.createAccount(name: name, password: hash), token: token)
            case .hashForPassword(let name):
                pending[token] = (connection, .write(name))
                server.core.adminWrite(.setPassword(name: name, password: hash), token: token)
            case .write:
                break
            }
        case .written(let token, let result):
            guard let (connection, what) = pending.removeValue(forKey: token), case .write(let name) = what else { return }
            switch result {
            case .success(.accountCreated(let id)):
                reply(connection, ok: true, "created \(name) (user id \(id))")
            case .success(.passwordChanged):
                reply(connection, ok: true, "password of \(name) changed (sessions already open stay open; kick to end them)")
            case .success(.accountDeleted(let id, let contacts)):
                reply(connection, ok: true, "deleted \(name) (user id \(id), \(contacts.count) contacts told)")
            case .success(.nameTaken):
                reply(connection, ok: false, "\(name) already exists")
            case .success(.noSuchUser):
                reply(connection, ok: false, "no such user \(name)")
            case .success(.storageFull):
                reply(connection, ok: false, "the store is full; nothing was written")
            case .success(.invalidRequest(let why)):
                reply(connection, ok: false, why)
            case .success(let other):
                reply(connection, ok: false, "unexpected store result \(other)")
            case .failure(let error):
                reply(connection, ok: false, "store write failed: \(error)")
            }
            listener.answered(connection)
        }
    }
}
