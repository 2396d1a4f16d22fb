// `sbchat history USER`: prints the conversation with USER that this machine's terminal client kept
// (the local history of the account given by --server and --user; no login, no password needed).
// Other users' text is printed with control characters made visible.
import ArgumentParser
import Glibc
import SwitchboardTUI

struct History: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the conversation with USER kept locally by the terminal client (oldest first).",
        discussion: """
            The terminal client keeps each account's conversations in \
            $SWITCHBOARD_DATA_HOME (else $XDG_DATA_HOME, else ~/.local/share)/switchboard/history/SERVER/USER \
            (with several servers SERVER is the whole list as written, A,B,C: give the same --server list here), \
            at most \(HistoryStore.defaultMaxLinesPerPeer) messages per contact and \(HistoryStore.defaultMapBytes >> 20) MiB in all. \
            Marks: ✓ delivered, ✉ stored offline, … not yet acknowledged, ✗ not sent; incoming mail is marked (offline).
            """)
    @OptionGroup var common: Common
    @Argument(help: "The contact whose conversation to print.") var contact: String
    @Option(help: "Print only the last N messages.") var last: Int?

    func validate() throws {
        if let last, last < 1 { throw ValidationError("--last must be at least 1") }
    }

    func run() throws {
        try runReporting {
            let name = try common.userName()
            guard let directory = HistoryStore.directory(server: common.servers.text, user: name) else {
                throw Failure(code: 1, "no data directory: set HOME, XDG_DATA_HOME or SWITCHBOARD_DATA_HOME")
            }
            guard access(directory + "/data.mdb", F_OK) == 0 else {
                throw Failure(code: 1, "no local history for \(name) at \(common.servers.text) (in \(directory))")
            }
            let store: HistoryStore
            do { store = try HistoryStore(directory: directory) } catch { throw Failure(code: 1, "\(error)") }
            guard let peer = store.peer(named: contact) else {
                throw Failure(code: 1, "no conversation with \(contact) in the local history of \(name)")
            }
            var lines = store.lines(peer: peer)
            if let last { lines = Array(lines.suffix(last)) }
            for line in lines {
                let who = line.outgoing ? "you" : TextWidth.visible(contact)
                var mark = ""
                switch line.mark {
                case .sending: mark = " …"
                case .delivered: mark = " ✓"
                case .storedOffline: mark = " ✉"
                case .failed(let why): mark = " ✗ (not sent: \(TextWidth.visible(why)))"
                case .received: mark = line.offline ? " (offline)" : ""
                }
                out("[\(formatDateTime(line.atMs))] \(who)\(mark): \(TextWidth.visible(line.text))")
            }
        }
    }
}

/// "YYYY-MM-DD HH:MM:SS" in local time.
func formatDateTime(_ ms: UInt64) -> String {
    var seconds = time_t(ms / 1000)
    var parts = tm()
    localtime_r(&seconds, &parts)
    return "\(parts.tm_year + 1900)-" + String(format2: parts.tm_mon + 1) + "-" + String(format2: parts.tm_mday) + " "
        + formatTime(ms)
}
