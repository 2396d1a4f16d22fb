// Reloading the configuration while the server runs (SIGHUP, `requestReload()`, or `reload(reply:)` for
// the admin socket). A helper thread re-reads the config file (ReloadSource.load: defaults, file, then
// the command line's flags again), works out which changes apply live (ServeSettings marks each key) and
// builds the new TLS context from the certificate and key files; the loop then swaps it all in between
// events and logs what changed and what waits for a restart.
// Invariants: the loop never reads a file or builds a TLS context; one reload runs at a time (requests
// arriving meanwhile are answered by one more reload after it); a file that does not parse or validate
// changes nothing; a TLS certificate that does not load keeps the one in use (and the TLS keys keep
// their running values) while the other live changes still apply; existing connections keep their TLS
// session; keys that are not live keep their running value until a restart.
import Logging
import SwitchboardIO
import SwitchboardTLS

/// What a reload re-reads: the settings running now and how to load them again.
public struct ReloadSource: Sendable {
    public var running: ServeSettings
    public var load: @Sendable () throws -> ServeSettings

    public init(running: ServeSettings, load: @escaping @Sendable () throws -> ServeSettings) {
        self.running = running
        self.load = load
    }
}

/// The result of one reload, as logged and as answered to the admin socket's `reload`.
public struct ReloadReport: Sendable, CustomStringConvertible {
    public var applied: Bool
    /// "key old -> new" of each change applied live.
    public var changedLive: [String] = []
    /// "key running -> in file" of each change that waits for a restart.
    public var needsRestart: [String] = []
    public var tls: String?
    public var error: String?

    public var description: String {
        guard applied else { return "reload refused, running configuration unchanged: \(error ?? "?")" }
        var lines = ["reload: \(changedLive.count) change(s) applied live, \(needsRestart.count) waiting for a restart"]
        lines += changedLive.map { "  applied: " + $0 }
        lines += needsRestart.map { "  needs a restart: " + $0 }
        if let tls { lines.append("  tls: " + tls) }
        return lines.joined(separator: "\n")
    }
}

struct ReloadOutcome: Sendable {
    struct Failure: Error, Sendable { let description: String }
    /// The merged settings (running values for restart keys, new values for live ones) and the diff.
    var settings: Result<(merged: ServeSettings, live: [String], restart: [String]), Failure>?
    var tls: Result<TLSContext, Failure>?
}

/// The reload's state on the server (loop thread only, except what the helper thread is handed).
final class ReloadState {
    var source: ReloadSource?
    var inFlight = false
    var thread: HelperThread?
    var results: CompletionQueue<ReloadOutcome>?
    /// Replies waiting for the reload in flight, and for the one after it.
    var replies: [(ReloadReport) -> Void] = []
    var nextReplies: [(ReloadReport) -> Void] = []
    var again = false
    var completed = 0
}

extension RelayServer {
    /// Loop thread, before `run`: reloads re-read `source` (without it a reload rebuilds the TLS context from
    /// the same files, for renewed certificates).
    public func enableReload(_ source: ReloadSource) {
        reloadState.source = source
    }

    /// The settings in effect (nil unless `enableReload` was called). Loop thread.
    public var runningSettings: ServeSettings? { reloadState.source?.running }

    /// How many reloads have completed (applied or refused). Loop thread.
    public var reloadsCompleted: Int { reloadState.completed }

    /// Loop thread (e.g. the admin socket's `reload`): starts a reload; `reply` gets the report on the loop thread.
    public func reload(reply: ((ReloadReport) -> Void)? = nil) {
        let state = reloadState
        if state.inFlight {
            state.again = true
            if let reply { state.nextReplies.append(reply) }
            return
        }
        if let reply { state.replies.append(reply) }
        startReload()
    }

    func reloadSignalled() { reload() }

    private func startReload() {
        let state = reloadState
        state.inFlight = true
        if state.results == nil {
            do {
                let queue = try CompletionQueue<ReloadOutcome>()
                try queue.attach(to: loop) { [unowned self] outcomes in
                    for outcome in outcomes { self.finishReload(outcome) }
                }
                state.results = queue
            } catch {
                finishReload(ReloadOutcome(settings: .failure(.init(description: "cannot start the reload: \(error)"))))
                return
            }
        }
        guard let results = state.results else { return }
        let source = state.source
        let ticketKeys = tlsContext?.ticketKeys
        let tlsOn = tlsContext != nil
        let currentTLS = configuration.tls
        do {
            state.thread = try HelperThread {
                results.post(Self.prepareReload(source: source, tlsOn: tlsOn, currentTLS: currentTLS, ticketKeys: ticketKeys))
            }
        } catch {
            finishReload(ReloadOutcome(settings: .failure(.init(description: "cannot start the reload thread: \(error)"))))
        }
    }

    /// Helper thread: reads, merges, diffs and builds the TLS context.
    private static func prepareReload(source: ReloadSource?, tlsOn: Bool, currentTLS: TLSServerConfiguration?,
                                      ticketKeys: TicketKeyRing?) -> ReloadOutcome {
        var outcome = ReloadOutcome()
        var tlsFiles = currentTLS
        if let source {
            do {
                let fresh = try source.load()
                var merged = source.running
                var live: [String] = []
                var restart: [String] = []
                for key in ServeSettings.keys {
                    let old = source.running[key.name], new = fresh[key.name]
                    guard old != new else { continue }
                    let change = "\(key.name) \(old?.description ?? "unset") -> \(new?.description ?? "unset")"
                    if key.live {
                        merged.adopt(key.name, from: fresh)
                        live.append(change)
                    } else {
                        restart.append(change)
                    }
                }
                try merged.validate()
                outcome.settings = .success((merged, live, restart))
                tlsFiles = merged.tls
            } catch {
                outcome.settings = .failure(.init(description: "\(error)"))
                return outcome
            }
        }
        if tlsOn, let tlsFiles {
            do {
                outcome.tls = .success(try TLSContext(server: tlsFiles, ticketKeys: ticketKeys ?? TicketKeyRing()))
            } catch {
                outcome.tls = .failure(.init(description: "\(error)"))
            }
        }
        return outcome
    }

    /// Loop thread: applies a prepared reload and answers whoever asked.
    private func finishReload(_ outcome: ReloadOutcome) {
        let state = reloadState
        state.thread?.join()
        state.thread = nil
        var report = ReloadReport(applied: true)
        switch outcome.settings {
        case .failure(let failure)?:
            report.applied = false
            report.error = failure.description
            driverLogger.error("reload refused, running configuration unchanged", metadata: ["error": "\(failure.description)"])
        case .success(let (merged, live, restart))?:
            var merged = merged
            var live = live
            if case .failure? = outcome.tls, let running = state.source?.running {
                // Keep the TLS files in use, so the next reload tries the new ones again.
                for name in ["tls-cert", "tls-key", "tls-ca"] { merged.adopt(name, from: running) }
                live.removeAll { $0.hasPrefix("tls-") }
            }
            var effective = configuration
            for key in ServeSettings.keys where key.live { merged.applying(key.name, to: &effective) }
            if tlsContext != nil { effective.tls = merged.tls }
            configuration = effective
            core.applyLive(effective.session)
            if merged.logLevel != state.source?.running.logLevel { LogOutput.level = merged.logLevel }
            state.source?.running = merged
            report.changedLive = live
            report.needsRestart = restart
        case nil:
            break
        }
        if report.applied {
            switch outcome.tls {
            case .success(let fresh)?:
                let before = tlsContext?.certificateFingerprint
                tlsContext = fresh
                let after = fresh.certificateFingerprint ?? "?"
                report.tls = before == after ? "certificate reloaded, unchanged (key-sha256 \(after))"
                    : "new certificate in use for new connections (key-sha256 \(after))"
                reloads += 1
            case .failure(let failure)?:
                report.tls = "new certificate refused, keeping the one in use: \(failure.description)"
                driverLogger.error("TLS reload refused, keeping the certificate in use", metadata: ["error": "\(failure.description)"])
            case nil:
                if tlsContext == nil { report.tls = "off (plaintext): nothing to reload" }
            }
            var metadata: Logger.Metadata = ["applied": "\(report.changedLive.joined(separator: "; "))"]
            if !report.needsRestart.isEmpty { metadata["needs-restart"] = "\(report.needsRestart.joined(separator: "; "))" }
            if let tls = report.tls { metadata["tls"] = "\(tls)" }
            driverLogger.notice("configuration reloaded: \(report.changedLive.count) change(s) applied live, \(report.needsRestart.count) waiting for a restart",
                                metadata: metadata)
        }
        state.completed += 1
        let replies = state.replies
        state.replies = state.nextReplies
        state.nextReplies = []
        state.inFlight = false
        for reply in replies { reply(report) }
        if state.again {
            state.again = false
            startReload()
        }
    }
}
