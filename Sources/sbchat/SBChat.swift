// `sbchat`: scriptable chat subcommands (the full-screen client is a separate command). Every
// subcommand logs in, does one thing, prints plain lines and exits 0, or prints one line starting
// "sbchat: " on stderr and exits non-zero. The password never comes from the command line.
import ArgumentParser
import Glibc
import SwitchboardClient
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardTUI

@main
struct SBChat: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sbchat",
        abstract: "Chat through a Switchboard server.",
        discussion: """
            The password is read from SWITCHBOARD_PASSWORD, or else from the first line of standard input \
            (asked for without echo on a terminal; Ctrl-C there cancels).
            Other users' text is printed with control characters made visible (ESC as ^[, a newline as ^J).
            Exit codes: 0 success, 1 refused by the server or failed, 2 usage error (also a malformed --server), \
            3 cannot reach the server, 130 cancelled at the password prompt.
            """,
        subcommands: [Tui.self, Register.self, Contacts.self, Add.self, Accept.self, Remove.self, Send.self, Inbox.self, Listen.self,
                      History.self],
        defaultSubcommand: Tui.self)

    /// As ArgumentParser's main, but usage errors exit with 2 (as documented), not EX_USAGE (64).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            if exitCode(for: error).rawValue == 64 {
                printError(fullMessage(for: error))
                Glibc.exit(2)
            }
            exit(withError: error)
        }
    }
}

struct Common: ParsableArguments {
    @Option(help: ArgumentHelp("""
        Server HOST:PORT, or several as HOST:PORT,HOST:PORT,... (at most \(ServerList.maxEntries); default: \
        $SWITCHBOARD_SERVER or 127.0.0.1:7878). With several, they are tried in order until one answers; the \
        terminal client moves to the next one when its server goes away.
        """, valueName: "servers"))
    var server: String?
    @Option(help: "User name (default: $SWITCHBOARD_USER).")
    var user: String?
    @Option(help: "Verify the server against this CA certificate (PEM) instead of pinning its key on first use.")
    var ca: String?
    @Option(help: "Known-servers file for key pinning (default: ~/.config/switchboard/known_servers).")
    var knownServers: String?
    @Flag(help: "Connect without TLS (only to a server started with --plaintext).")
    var plaintext = false
    @Option(help: "This device's name as other sessions and the server's log show it (default: the host name).")
    var deviceName: String?

    /// The --server text as given (or its default).
    var serverAddress: String { server ?? env("SWITCHBOARD_SERVER") ?? "127.0.0.1:7878" }

    /// The parsed list (valid once `validate()` passed).
    var servers: ServerList {
        do { return try ServerList(parsing: serverAddress) } catch {
            // validate() refused it before any subcommand runs.
            preconditionFailure("--server was not validated: \(error)")
        }
    }

    /// A malformed server address is a usage error (2), not "cannot reach" (3).
    func validate() throws {
        do { _ = try ServerList(parsing: serverAddress) } catch {
            throw ValidationError("--server (or SWITCHBOARD_SERVER): \(error)")
        }
    }

    func userName() throws -> String {
        guard let name = user ?? env("SWITCHBOARD_USER"), !name.isEmpty else {
            throw Failure(code: 2, "no user: give --user or set SWITCHBOARD_USER")
        }
        return name
    }

    func password() throws -> String {
        if let pw = env("SWITCHBOARD_PASSWORD") { return pw }
        if isatty(0) != 0 {
            // Prompt without echo.
            return try promptPassword("password: ")
        }
        guard let line = readLine(strippingNewline: true), !line.isEmpty else {
            throw Failure(code: 2, "no password: set SWITCHBOARD_PASSWORD or pipe it on standard input")
        }
        return line
    }

    var tlsOptions: ClientTLSOptions? {
        if plaintext || env("SWITCHBOARD_PLAINTEXT") == "1" { return nil }
        if let file = ca ?? env("SWITCHBOARD_CA") { return .certificateAuthority(file: file) }
        return .trustOnFirstUse(knownServersFile: knownServers ?? env("SWITCHBOARD_KNOWN_SERVERS"))
    }

    /// Connects to one server (TLS verified for that HOST:PORT: its own pin, or the CA and its name).
    /// Throws the connection's own error (ClientError, TLSError).
    func connect(to server: String) throws -> ChatSession {
        try ChatSession(server: server, agent: "sbchat", tls: tlsOptions)
    }

    /// Connects to the first server of the list that answers (in order); the failure when none does
    /// names each server and why (exit 3). A TLS refusal of a server passed over is still reported.
    func connect() throws -> ChatSession {
        let (_, session, passedOver) = try withUnreachableReported { try servers.firstReachable(connect(to:)) }
        warnAboutRefusals(passedOver, using: session.connection)
        announceNewPin(session.connection)
        return session
    }

    func announceNewPin(_ connection: ChatConnection) {
        if let tls = connection.tls, case .newlyPinned(let file) = tls.serverKey {
            printError("sbchat: first contact with \(tls.serverEntry): pinned its key sha256:\(tls.serverPublicKeyFingerprint) in \(file)")
        }
    }

    /// The device name: --device-name or the host name, without control characters, at most 64 bytes.
    func readableDeviceName(suffix: String = "") -> String {
        var name = String((deviceName ?? DeviceIdentity.hostName()).unicodeScalars.filter {
            $0.value >= 0x20 && !($0.value >= 0x7F && $0.value < 0xA0)
        }.map(Character.init)) + suffix
        while name.utf8.count > ProtocolConstants.maxDeviceNameBytes { name.removeLast() }
        return name
    }

    /// The terminal client's device: the stable id kept in the config directory
    /// ($XDG_CONFIG_HOME/switchboard/device or ~/.config/switchboard/device), created on first use. A new
    /// login of the same device takes over its old session; other devices of the user stay online.
    func stableDevice() -> DeviceIdentity {
        let base: String?
        if let xdg = env("XDG_CONFIG_HOME"), xdg.hasPrefix("/") { base = xdg } else { base = env("HOME").map { $0 + "/.config" } }
        let name = readableDeviceName()
        guard let base else { return DeviceIdentity(id: DeviceIdentity.randomID(), name: name) }
        do {
            return DeviceIdentity(id: try DeviceIdentity.storedID(in: base + "/switchboard/device"), name: name)
        } catch {
            printError("sbchat: cannot keep a device id (\(error)); this run is a device of its own")
            return DeviceIdentity(id: DeviceIdentity.randomID(), name: name)
        }
    }

    /// A scripted subcommand's device: a fresh id for each run, so it joins alongside a running
    /// terminal client (never takes it over) and is gone when the command exits.
    func scriptDevice() -> DeviceIdentity {
        let names = Set(SBChat.configuration.subcommands.map { $0._commandName })
        let command = CommandLine.arguments.dropFirst().first { names.contains($0) } ?? "sbchat"
        return DeviceIdentity(id: DeviceIdentity.randomID(), name: readableDeviceName(suffix: " (sbchat \(command))"))
    }

    /// Connects and logs in (as a short-lived device of its own).
    func session() throws -> (ChatSession, LoginInfo) {
        let name = try userName()
        let pw = try password()
        let session = try connect()
        do {
            let info = try session.logIn(name: name, password: pw, device: scriptDevice())
            return (session, info)
        } catch {
            throw Failure(code: 1, "login as \(name) failed: \(error)")
        }
    }
}

func env(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

/// Runs a walk over the server list; when every server failed, the failure (exit 3) names each and why.
func withUnreachableReported<T>(_ walk: () throws -> T) throws -> T {
    do { return try walk() } catch let all as AllServersFailed { throw unreachable(all) }
}

func unreachable(_ all: AllServersFailed) -> Failure {
    guard all.failures.count > 1 else {
        let only = all.failures[0]
        // TLS refusals (changed key, bad certificate) say what to do in their own words.
        return Failure(code: 3, only.isSecurityRefusal ? only.description : "cannot reach \(only)")
    }
    return Failure(code: 3, "cannot reach any of the \(all.failures.count) servers: "
                   + all.failures.map(\.description).joined(separator: "; "))
}

/// A server passed over for a TLS refusal is worth a line even though another one answered; one
/// that was merely down is not.
func warnAboutRefusals(_ passedOver: [ServerList.Failure], using connection: ChatConnection) {
    for failure in passedOver where failure.isSecurityRefusal {
        printError("sbchat: warning: passed over \(failure) (used \(connection.server))")
    }
}

/// A one-line failure with an exit code.
struct Failure: Error, CustomStringConvertible {
    let code: Int32
    let description: String
    init(code: Int32, _ message: String) { self.code = code; self.description = message }
}

/// Runs a subcommand body, turning failures into "sbchat: reason" and the exit code.
func runReporting(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let failure as Failure {
        printError("sbchat: \(failure.description)")
        throw ExitCode(failure.code)
    } catch let error as ClientError {
        printError("sbchat: \(error.message)")
        throw ExitCode(1)
    }
}

/// Writes straight to fd 2 (Swift 6 rejects C's `stderr` global), after flushing stdout so lines stay in order.
/// Controls in the text (a server's or another user's words quoted in an error) are made visible.
func printError(_ line: String) {
    fflush(nil)
    let bytes = Array((TextWidth.visible(line, keepNewlines: true) + "\n").utf8)
    _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
}

func out(_ line: String) {
    print(line)
    fflush(nil)
}

func formatTime(_ ms: UInt64) -> String {
    var seconds = time_t(ms / 1000)
    var parts = tm()
    localtime_r(&seconds, &parts)
    return String(format2: parts.tm_hour) + ":" + String(format2: parts.tm_min) + ":" + String(format2: parts.tm_sec)
}

extension String {
    init(format2 value: Int32) { self = value < 10 ? "0\(value)" : "\(value)" }
}

func contactNamed(_ name: String, in info: LoginInfo) throws -> ContactInfo {
    guard let contact = info.contacts.first(where: { $0.name == name }) else {
        throw Failure(code: 1, "\(name) is not in your contacts (add them with: sbchat add \(name))")
    }
    return contact
}

func randomMessageID() -> UInt64 {
    UInt64.random(in: 1...UInt64.max)
}

struct Register: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create an account.")
    @OptionGroup var common: Common
    func run() throws {
        try runReporting {
            let name = try common.userName()
            let pw = try common.password()
            let session = try common.connect()
            do { try session.register(name: name, password: pw) } catch { throw Failure(code: 1, "register \(name): \(error)") }
            out("registered \(name)")
        }
    }
}

struct Contacts: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List contacts with their status.")
    @OptionGroup var common: Common
    func run() throws {
        try runReporting {
            let (_, info) = try common.session()
            out("logged in as \(info.name) from \(info.address); \(info.pendingMail) offline message(s) waiting")
            if info.contacts.isEmpty { out("(no contacts)") }
            for c in info.contacts {
                let state: String
                switch c.relation {
                case .accepted: state = c.online ? "online" : "offline"
                case .incomingRequest: state = "wants to add you (sbchat accept \(c.name))"
                case .outgoingRequest: state = "request sent"
                case .removed: state = "removed"
                }
                out("\(TextWidth.visible(c.name))\t\(state)")
            }
        }
    }
}

struct Add: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Ask USER to become a contact (or accept their request).")
    @OptionGroup var common: Common
    @Argument(help: "The user to add.") var contact: String
    func run() throws {
        try runReporting {
            let (session, _) = try common.session()
            do { try session.addContact(contact) } catch { throw Failure(code: 1, "add \(contact): \(error)") }
            let now = try session.contacts().first { $0.name == contact }
            out(now?.relation == .accepted ? "\(contact) is now a contact" : "request sent to \(contact)")
        }
    }
}

struct Accept: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Accept USER's contact request.")
    @OptionGroup var common: Common
    @Argument(help: "The user whose request to accept.") var contact: String
    func run() throws {
        try runReporting {
            let (session, _) = try common.session()
            do { try session.acceptContact(contact) } catch { throw Failure(code: 1, "accept \(contact): \(error)") }
            out("\(contact) is now a contact")
        }
    }
}

struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove USER from contacts (also declines or cancels requests).")
    @OptionGroup var common: Common
    @Argument(help: "The user to remove.") var contact: String
    func run() throws {
        try runReporting {
            let (session, _) = try common.session()
            do { try session.removeContact(contact) } catch { throw Failure(code: 1, "remove \(contact): \(error)") }
            out("removed \(contact)")
        }
    }
}

struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send TEXT to USER: prints 'delivered', or the offline notice and 'stored offline'.")
    @OptionGroup var common: Common
    @Argument(help: "The contact to send to.") var contact: String
    @Argument(help: "The message text.") var text: String
    @Option(help: "Seconds to wait for the acknowledgement.") var timeout: Int32 = 15
    @Option(help: "Message id (default random): resending with the same id never shows the message twice.")
    var id: UInt64?

    func validate() throws {
        if text.allSatisfy({ $0.isWhitespace }) {
            throw ValidationError("refusing to send a blank message (TEXT is empty or only spaces)")
        }
    }

    func run() throws {
        try runReporting {
            let (session, info) = try common.session()
            let target = try contactNamed(contact, in: info)
            guard target.relation == .accepted else {
                throw Failure(code: 1, "\(contact) has not accepted you as a contact yet")
            }
            let status = try session.openChat(with: target.userID)
            if !status.online { out(status.text) }
            let messageID = id ?? randomMessageID()
            try session.send(to: target.userID, messageID: messageID, body: Array(text.utf8))
            switch try session.awaitSendOutcome(messageID, timeoutMs: timeout * 1000) {
            case .delivered: out("delivered")
            case .storedOffline: out("stored offline")
            case .refused(_, let message): throw Failure(code: 1, "not sent: \(message)")
            }
        }
    }
}

struct Inbox: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print stored offline messages grouped by sender, then acknowledge (delete) them.")
    @OptionGroup var common: Common
    @Option(help: "Seconds to wait for the server.") var timeout: Int32 = 15

    func run() throws {
        try runReporting {
            let (session, info) = try common.session()
            var page: [(seq: UInt64, from: String, at: UInt64, text: String)] = []
            var total = 0
            func printPage() throws {
                guard !page.isEmpty else { return }
                var order: [String] = []
                var groups: [String: [(UInt64, String)]] = [:]
                for m in page {
                    if groups[m.from] == nil { order.append(m.from) }
                    groups[m.from, default: []].append((m.at, m.text))
                }
                for sender in order {
                    out("from \(TextWidth.visible(sender)):")
                    for (at, text) in groups[sender]! {
                        // Other users' text: controls visible; a multi-line message continues indented.
                        let shown = TextWidth.visible(text, keepNewlines: true).split(separator: "\n", omittingEmptySubsequences: false)
                        out("  [\(formatTime(at))] " + shown.joined(separator: "\n             "))
                    }
                }
                // Acknowledge only after printing: a crash before this shows them again, never loses them.
                try session.acknowledgeMail(through: page.map(\.seq).max()!)
                total += page.count
                page.removeAll()
            }
            if info.pendingMail == 0 {
                out("no offline messages")
            }
            while true {
                guard let event = try session.nextEvent(timeoutMs: timeout * 1000) else {
                    throw Failure(code: 1, "the server did not finish sending mail within \(timeout) s")
                }
                switch event {
                case .mail(let seq, _, let fromName, _, let at, let body):
                    page.append((seq, fromName, at, String(decoding: body, as: UTF8.self)))
                    // Pages end when the server waits for our acknowledgement.
                    if page.count >= 256 { try printPage() }
                case .mailEnd:
                    try printPage()
                    if total > 0 { out("\(total) offline message(s)") }
                    return
                case .serverError(_, let message):
                    throw Failure(code: 1, "server closed the session: \(message)")
                default:
                    continue
                }
            }
        }
    }
}

struct Listen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print incoming messages, one line each: TIME SENDER: TEXT (offline mail marked), acknowledging each.")
    @OptionGroup var common: Common
    @Option(help: "Stop after this many messages.") var count: Int?
    @Option(help: "Stop after this many seconds.") var timeout: Int?

    func run() throws {
        try runReporting {
            let (session, info) = try common.session()
            var names: [UInt32: String] = [:]
            for c in info.contacts { names[c.userID] = c.name }
            out("listening as \(info.name)")
            let deadline = timeout.map { Clock.monotonicMs() + UInt64($0) * 1000 }
            var received = 0
            while count.map({ received < $0 }) ?? true {
                var wait: Int32 = 1000
                if let deadline {
                    let now = Clock.monotonicMs()
                    if now >= deadline { break }
                    wait = Int32(min(1000, deadline - now))
                }
                guard let event = try session.nextEvent(timeoutMs: wait) else { continue }
                switch event {
                case .message(let seq, let from, _, let at, let body):
                    out("[\(formatTime(at))] \(TextWidth.visible(names[from] ?? "user\(from)")): "
                        + TextWidth.visible(String(decoding: body, as: UTF8.self)))
                    try session.acknowledgeDeliveries(through: seq)
                    received += 1
                case .mail(let seq, _, let fromName, _, let at, let body):
                    out("[\(formatTime(at))] \(TextWidth.visible(fromName)) (offline): "
                        + TextWidth.visible(String(decoding: body, as: UTF8.self)))
                    try session.acknowledgeMail(through: seq)
                    received += 1
                case .presence(let user, let online):
                    out("* \(TextWidth.visible(names[user] ?? "user\(user)")) is \(online ? "online" : "offline")")
                case .contactUpdate(let c):
                    names[c.userID] = c.name
                case .serverError(_, let message):
                    throw Failure(code: 1, "server closed the session: \(message)")
                default:
                    continue
                }
            }
        }
    }
}
