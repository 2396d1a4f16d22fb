// `sbchat tui` (the default subcommand): the full-screen terminal chat client. Logs in before the
// screen opens (so a wrong password or an unreachable server is a plain one-line error), then hands
// the terminal to SwitchboardTUI.ChatApp until Ctrl-C / q.
import ArgumentParser
import Glibc
import SwitchboardClient
import SwitchboardTUI

struct Tui: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tui",
        abstract: "Full-screen terminal chat (the default when no subcommand is given).",
        discussion: """
            Contacts are on the left (online in colour, offline grey, requests to accept in yellow); the open \
            dialog is on the right with the newest message on top; offline messages received at login have \
            their own dialog, grouped by sender.
            Keys: Up/Down + Enter (or double-click) open a dialog; type and press Enter (or click [Send]) to \
            send; a paste is inserted (never sent) and may hold several lines; a accepts a request; + adds a \
            contact; - removes one; Tab switches between the list and typing; Ctrl-N/Ctrl-P switch dialogs; \
            Ctrl-W closes one; PgUp/PgDn scroll a page; Ctrl-R or F5 reconnects now; F1 or ? shows help; \
            Ctrl-C or q quits (asking first while messages are unsent: those are kept and sent at the next start).
            With several servers (--server A,B,C, the nodes of one cluster) the first login uses the first that \
            works, and a lost connection (or Ctrl-R) is retried on the next server after the lost one, round robin, \
            backing off 1 s doubling to 5 s between full passes; unsent messages follow with their original ids.
            Marks: … sending, ✓ delivered, ✉ stored offline, ✗ not sent.
            Conversations are kept locally (see sbchat history --help) unless --no-history is given. A message \
            in another dialog rings the bell (--no-bell to stop) and shows in the window title.
            The password comes from SWITCHBOARD_PASSWORD or is asked for without echo.
            """)

    @OptionGroup var common: Common
    @Flag(help: "Create the account first, then log in.") var register = false
    @Flag(help: "Do not keep conversations in the local history.") var noHistory = false
    @Flag(help: "Do not ring the terminal bell for messages in other dialogs.") var noBell = false

    func run() throws {
        try runReporting {
            guard isatty(0) != 0, isatty(1) != 0 else {
                throw Failure(code: 2, "the terminal client needs a terminal; use the other subcommands in scripts (sbchat --help)")
            }
            let name = try common.userName()
            let pw = try common.password()
            let common = self.common
            var history: HistoryStore?
            // One history per account and server list (the list as written), so it survives a failover.
            if !noHistory, let directory = HistoryStore.directory(server: common.servers.text, user: name) {
                do { history = try HistoryStore(directory: directory) } catch {
                    printError("sbchat: local history off: \(error)")
                }
            }
            var configuration = ChatAppConfiguration(
                servers: common.servers, user: name, password: pw, device: common.stableDevice(),
                connect: { server in try connectForTUI(common, server: server) })
            configuration.history = history
            configuration.bell = !noBell
            let app = ChatApp(configuration: configuration)
            if register {
                do { try app.register() } catch let all as AllServersFailed { throw unreachable(all) } catch {
                    throw Failure(code: 1, "register \(name): \(error)")
                }
            }
            do {
                let passedOver = try app.logIn()
                if let connection = app.connection {
                    warnAboutRefusals(passedOver, using: connection)
                    common.announceNewPin(connection)
                }
            } catch let all as AllServersFailed { throw unreachable(all) } catch {
                throw Failure(code: 1, "login as \(name) failed: \(error)")
            }
            let terminal: Terminal
            do { terminal = try Terminal() } catch { throw Failure(code: 2, "\(error)") }
            do { try app.run(terminal: terminal) } catch { throw Failure(code: 1, "\(error)") }
        }
    }
}

/// The one place the terminal client opens connections (first login and every reconnect, one server
/// of the list at a time): it goes through `Common.connect(to:)`, so switching sbchat to TLS switches
/// the terminal client too. Nothing is printed here (the screen may be up): ChatApp shows notices.
func connectForTUI(_ common: Common, server: String) throws -> ChatSession {
    try common.connect(to: server)
}
