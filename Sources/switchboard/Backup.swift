// `switchboard backup DEST` and `switchboard data check`: data-folder tools that are safe while the server
// runs. Both open the LMDB environment read-only in this process, next to the server (Store.backup and
// Store.inspect explain why that is consistent). Why not on the server's store thread through the admin
// socket: the copy of a large database takes seconds, and on the store thread it would hold back every group
// commit (every offline send) for that long; in this process the server never waits, the backup works with
// the server stopped too, and it needs no admin socket.
import ArgumentParser
import Glibc
import SwitchboardIO
import SwitchboardStore

struct Backup: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a consistent, compacted copy of the data folder to DEST (safe while the server runs).",
        discussion: """
            The copy is one LMDB read transaction's snapshot (mdb_env_copyfd2 with MDB_CP_COMPACT): it holds every \
            commit made before the backup started and nothing half-written. DEST must be a new or empty folder; it \
            receives data.mdb, which `switchboard serve --data DEST` opens as it is. The copy is checked \
            (`data check`) before the command exits 0. Run it as the server's user (it needs lock.mdb writable).
            """)

    @Argument(help: "Destination folder (created if missing; must be empty).") var destination: String
    @Option(help: "Data folder to copy.") var data = "./data"

    func run() throws {
        let start = Clock.monotonicMs()
        let bytes: Int
        do { bytes = try Store.backup(directory: data, to: destination) } catch {
            try failWith(1, "backup of \(data) failed: \(error)")
        }
        let report: DataReport
        do { report = try Store.inspect(directory: destination) } catch {
            try failWith(1, "backup written to \(destination) but it does not open: \(error)")
        }
        print("backup of \(data) written to \(destination)/data.mdb: \(bytes) bytes in \(Clock.monotonicMs() - start) ms")
        print(report)
        if !report.problems.isEmpty { try failWith(1, "the copy has problems (listed above); so has the source, check it with `switchboard data check`") }
    }
}

struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "data",
        abstract: "Tools for the data folder.",
        subcommands: [Check.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify the schema version and every record, and print the counts (safe while the server runs).",
            discussion: """
                Reads the data folder read-only: schema version, accounts and user ids (each naming the other), \
                contacts, mail, dedupe records and dedupe windows, each record decoded. Exit status: 0 when \
                consistent, 1 with every problem listed (PROBLEM: ...) otherwise.
                """)
        @Option(help: "Data folder.") var data = "./data"

        func run() throws {
            let report: DataReport
            do { report = try Store.inspect(directory: data) } catch { try failWith(1, "cannot check \(data): \(error)") }
            print(report)
            if !report.problems.isEmpty {
                try failWith(1, "\(data): \(report.problems.count) problem(s) found")
            }
            print("\(data): ok")
        }
    }
}
