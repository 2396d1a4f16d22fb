// `switchboard admin`: who, kick, stats and reload, asked of the running server over its admin socket
// (DATA/admin.sock, see SwitchboardServer/AdminSocket.swift for the protocol). Also the client the
// `users` and `top` commands share.
import ArgumentParser
import Glibc
import SwitchboardIO

/// Where the admin socket is: --socket, else DATA/admin.sock.
struct AdminSocketOptions: ParsableArguments {
    @Option(help: "Data folder of the server (its admin socket is DATA/admin.sock).")
    var data = "./data"
    @Option(help: "The admin socket, if the server was started with --admin-socket.")
    var socket: String?

    var path: String { socket ?? Self.path(forData: data) }
    static func path(forData data: String) -> String { data.hasSuffix("/") ? data + "admin.sock" : data + "/admin.sock" }
}

enum AdminClientError: Error, CustomStringConvertible {
    case notRunning(String, String)
    case refused(String)
    case protocolError(String)
    var description: String {
        switch self {
        case .notRunning(let path, let why): return "no server answers at \(path) (\(why)); is it running with this --data?"
        case .refused(let text): return text
        case .protocolError(let text): return "admin socket: \(text)"
        }
    }
}

/// A blocking connection to the admin socket.
final class AdminClient {
    let fd: Int32
    private var buffer: [UInt8] = []

    init(path: String) throws {
        do {
            fd = try UnixSocket.connect(path: path)
        } catch {
            throw AdminClientError.notRunning(path, "\(error)")
        }
    }

    deinit { Sys.close(fd) }

    /// Whether a server answers at `path`.
    static func serverRunning(at path: String) -> Bool { UnixSocket.isAnswered(path: path) }

    /// Sends one request line and returns the answer's text; an `error` answer throws `refused`.
    func request(_ line: String, timeoutMs: Int32 = 30_000) throws -> String {
        let (ok, text) = try exchange(line, timeoutMs: timeoutMs)
        guard ok else { throw AdminClientError.refused(text.hasSuffix("\n") ? String(text.dropLast()) : text) }
        return text
    }

    func exchange(_ line: String, timeoutMs: Int32 = 30_000) throws -> (ok: Bool, text: String) {
        let bytes = Array((line + "\n").utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { throw AdminClientError.protocolError("the server closed the connection") }
            sent += n
        }
        let deadline = Clock.monotonicMs() + UInt64(timeoutMs)
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            if let newline = buffer.firstIndex(of: 10) {
                let header = String(decoding: buffer[0..<newline], as: UTF8.self).split(separator: " ")
                guard header.count == 2, header[0] == "ok" || header[0] == "error", let count = Int(header[1]) else {
                    throw AdminClientError.protocolError("unexpected answer '\(header.joined(separator: " "))'")
                }
                if buffer.count >= newline + 1 + count {
                    let text = String(decoding: buffer[(newline + 1)..<(newline + 1 + count)], as: UTF8.self)
                    buffer.removeSubrange(0..<(newline + 1 + count))
                    return (header[0] == "ok", text)
                }
            }
            let now = Clock.monotonicMs()
            guard now < deadline else { throw AdminClientError.protocolError("no answer within \(timeoutMs / 1000) s") }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, Int32(clamping: deadline - now)) <= 0 { continue }
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { throw AdminClientError.protocolError("the server closed the connection") }
            buffer += chunk[0..<n]
        }
    }
}

/// Tab-separated rows (first row the header) as aligned columns.
func alignedTable(_ tsv: String) -> String {
    let rows = tsv.split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
    guard let columns = rows.map(\.count).max() else { return "" }
    var widths = [Int](repeating: 0, count: columns)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    return rows.map { row in
        row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[i] - cell.count) }
            .joined(separator: "  ")
    }.joined(separator: "\n") + "\n"
}

func printAndFlush(_ text: String) {
    print(text, terminator: "")
    fflushStdout()
}

func runAdmin(_ options: AdminSocketOptions, _ line: String) throws -> String {
    do {
        return try AdminClient(path: options.path).request(line)
    } catch {
        try fail("\(error)")
    }
}

struct Admin: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask the running server (over its admin socket DATA/admin.sock): who is online, kick, stats, reload.",
        subcommands: [Who.self, Kick.self, Stats.self, Reload.self])

    struct Who: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Online users: name, device, address as the server sees it, connected since (UTC), transport, queued output bytes, unacknowledged deliveries, messages sent and received.")
        @OptionGroup var socket: AdminSocketOptions
        @Flag(help: "Print tab-separated values (for scripts) instead of aligned columns.") var tsv = false
        func run() throws {
            let text = try runAdmin(socket, "who")
            printAndFlush(tsv ? text : alignedTable(text))
        }
    }

    struct Kick: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Close USER's session with ERROR kicked; its unacknowledged messages go to its mailbox, as on any disconnect.")
        @OptionGroup var socket: AdminSocketOptions
        @Argument(help: "The user to disconnect.") var user: String
        @Option(help: "The text the client is shown.") var reason = "closed by an administrator"
        func run() throws {
            printAndFlush(try runAdmin(socket, "kick \(user) \(reason)"))
        }
    }

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "The server's counters (name value) and latency histograms (histogram NAME COUNT SUM BOUND:COUNT...).")
        @OptionGroup var socket: AdminSocketOptions
        func run() throws { printAndFlush(try runAdmin(socket, "stats")) }
    }

    struct Reload: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Reload the configuration as SIGHUP does (config file, TLS files, live limits, log level) and print what changed.")
        @OptionGroup var socket: AdminSocketOptions
        func run() throws { printAndFlush(try runAdmin(socket, "reload")) }
    }
}
