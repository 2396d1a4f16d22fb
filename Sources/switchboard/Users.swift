// `switchboard users add|passwd|delete|list`: account administration that works with the server running
// (through its admin socket: the hash runs on its hash threads, the write in its group commit, an online
// session of a deleted account is closed) or stopped (straight on the data folder). A direct write is
// refused while a server answers on the admin socket: the running server's in-memory state (sessions,
// contact lists, mailbox quotas) would not know about it.
import ArgumentParser
import Glibc
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardStore

/// The password from --password, SWITCHBOARD_PASSWORD, or one line of standard input (asked for, without
/// echo, when it is a terminal).
func readPassword(_ given: String?, prompt: String) throws -> String {
    if let given { return given }
    if let env = ProcessEnvironment.get("SWITCHBOARD_PASSWORD") { return env }
    let terminal = isatty(0) == 1
    var saved = termios()
    if terminal {
        printAndFlush(prompt)
        tcgetattr(0, &saved)
        var quiet = saved
        quiet.c_lflag &= ~tcflag_t(ECHO)
        tcsetattr(0, TCSANOW, &quiet)
    }
    defer { if terminal { tcsetattr(0, TCSANOW, &saved); printAndFlush("\n") } }
    guard let line = readLine(strippingNewline: true) else { throw ValidationError("no password given (--password, SWITCHBOARD_PASSWORD or standard input)") }
    return line
}

func validatePassword(_ password: String) throws {
    let count = password.utf8.count
    guard count >= ProtocolConstants.minPasswordBytes, count <= ProtocolConstants.maxPasswordBytes else {
        throw ValidationError("passwords need \(ProtocolConstants.minPasswordBytes)-\(ProtocolConstants.maxPasswordBytes) bytes")
    }
    guard !password.contains("\n") else { throw ValidationError("a password cannot contain a newline") }
}

/// Runs `line` on the running server if one answers; otherwise nil (the caller writes directly).
func throughRunningServer(_ options: AdminSocketOptions, _ line: String) throws -> Bool {
    guard AdminClient.serverRunning(at: options.path) else { return false }
    printAndFlush(try runAdmin(options, line))
    return true
}

func openStoreDirectly(_ data: String, create: Bool = false) throws -> Store {
    var info = stat()
    guard create || stat(data + "/data.mdb", &info) == 0 else { try fail("no store in \(data) (no data.mdb); check --data") }
    return try Store(directory: data)
}

func directResult(_ result: WriteResult, _ name: String) throws -> String {
    switch result {
    case .accountCreated(let id): return "created \(name) (user id \(id))\n"
    case .passwordChanged: return "password of \(name) changed\n"
    case .accountDeleted(let id, let contacts): return "deleted \(name) (user id \(id), removed from \(contacts.count) contact lists)\n"
    case .nameTaken: try fail("\(name) already exists")
    case .noSuchUser: try fail("no such user \(name)")
    case .storageFull: try fail("the store is full; nothing was written")
    case .invalidRequest(let why): try fail(why)
    default: try fail("unexpected store result \(result)")
    }
}

struct UserAdd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add",
        abstract: "Create an account: through the running server if one answers on the admin socket, else directly in the data folder.")
    @OptionGroup var socket: AdminSocketOptions
    @Argument(help: "User name (1-32 of A-Z a-z 0-9 _ . -).") var user: String
    @Option(help: "The password (else SWITCHBOARD_PASSWORD, else asked for / read from standard input).") var password: String?
    @Option(help: "PBKDF2 iterations when writing directly (a running server uses its own --pbkdf2-iterations).")
    var pbkdf2Iterations: UInt32 = 210_000

    func run() throws {
        guard Store.isValidUserName(user) else { throw ValidationError("invalid user name '\(user)': 1-32 characters of A-Z a-z 0-9 _ . -") }
        let pw = try readPassword(password, prompt: "password for \(user): ")
        try validatePassword(pw)
        if try throughRunningServer(socket, "users add \(user) \(pw)") { return }
        let store = try openStoreDirectly(socket.data, create: true)
        defer { store.close() }
        let hash = PasswordHasher.hash(password: Array(pw.utf8), iterations: pbkdf2Iterations)
        printAndFlush(try directResult(try store.apply([.createAccount(name: user, password: hash)])[0], user))
    }
}

struct UserPasswd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "passwd",
        abstract: "Set a new password (sessions already open stay open; `admin kick` ends them).")
    @OptionGroup var socket: AdminSocketOptions
    @Argument(help: "User name.") var user: String
    @Option(help: "The new password (else SWITCHBOARD_PASSWORD, else asked for / read from standard input).") var password: String?
    @Option(help: "PBKDF2 iterations when writing directly.") var pbkdf2Iterations: UInt32 = 210_000

    func run() throws {
        let pw = try readPassword(password, prompt: "new password for \(user): ")
        try validatePassword(pw)
        if try throughRunningServer(socket, "users passwd \(user) \(pw)") { return }
        let store = try openStoreDirectly(socket.data)
        defer { store.close() }
        let hash = PasswordHasher.hash(password: Array(pw.utf8), iterations: pbkdf2Iterations)
        printAndFlush(try directResult(try store.apply([.setPassword(name: user, password: hash)])[0], user))
    }
}

struct UserDelete: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete",
        abstract: "Delete an account with its contacts (both directions), its mail and its dedupe records; an online session of it is closed (ERROR kicked).")
    @OptionGroup var socket: AdminSocketOptions
    @Argument(help: "User name.") var user: String

    func run() throws {
        if try throughRunningServer(socket, "users delete \(user)") { return }
        let store = try openStoreDirectly(socket.data)
        defer { store.close() }
        printAndFlush(try directResult(try store.apply([.deleteAccount(name: user)])[0], user))
    }
}

struct UserList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List accounts (id, name, contacts, stored mails, online). Reads the store directly, also while the server runs (LMDB readers never block its writer); the online column comes from the server's `who`.")
    @OptionGroup var socket: AdminSocketOptions
    @Flag(help: "Print tab-separated values.") var tsv = false

    func run() throws {
        var online: Set<String> = []
        let running = AdminClient.serverRunning(at: socket.path)
        if running {
            let who = try runAdmin(socket, "who")
            for row in who.split(separator: "\n").dropFirst() { online.insert(String(row.split(separator: "\t").first ?? "")) }
        }
        let store = try openStoreDirectly(socket.data)
        defer { store.close() }
        var rows = ["ID\tNAME\tCONTACTS\tMAIL\tONLINE"]
        for account in try store.listAccounts() {
            rows.append("\(account.userID)\t\(account.name)\t\(account.contacts)\t\(account.mailCount)\t\(running ? (online.contains(account.name) ? "yes" : "no") : "-")")
        }
        let text = rows.joined(separator: "\n") + "\n"
        printAndFlush(tsv ? text : alignedTable(text))
    }
}
