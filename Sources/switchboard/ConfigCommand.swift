// `switchboard config check FILE` and `switchboard config print`: the config file as `serve` reads it.
import ArgumentParser
import Glibc
import SwitchboardServer
import SwitchboardTLS

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Check a config file, or print the effective configuration.",
        discussion: """
            The config file is TOML (a strict subset: `key = value` lines, comments with #). Its keys are the \
            names of `serve`'s flags without the dashes, e.g. `max-frame = 65536`, `listen = "0.0.0.0:7878"`, \
            `plaintext = false`. Unknown keys, wrong types and values out of range are refused with the key \
            and the line.
            """,
        subcommands: [Check.self, Print.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check FILE as `serve --config FILE` would read it, including loading its TLS certificate and key.",
            discussion: "Exit status: 0 when the file is valid, 2 with the first problem (file:line: key 'name': why) on stderr.")

        @Argument(help: "The config file.") var file: String
        @Flag(help: "Skip loading the TLS certificate and key (check the file's syntax and values only).")
        var skipTLS = false

        func run() throws {
            let settings: ServeSettings
            do { settings = try ServeSettings.resolve(configPath: file, overrides: []) } catch {
                try failWith(2, "\(error)")
            }
            if !skipTLS, let tls = settings.tls {
                do { _ = try TLSContext(server: tls) } catch {
                    let key = settings["tls-cert"] == nil ? "tls-cert (default \(tls.certificateChainFile))" : "tls-cert"
                    try failWith(2, "\(file): \(key) / tls-key: cannot load the TLS certificate and key: \(error)")
                }
            }
            print("\(file): ok (\(settings.sources.values.filter { if case .file = $0 { return true } else { return false } }.count) keys set)")
        }
    }

    struct Print: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the effective configuration of `serve` (defaults, then --config FILE, then the flags) as TOML.",
            discussion: "Every key is printed with its help; keys that hold secrets (none today) would be printed as <redacted>.")

        @Option(help: "Config file to read first.") var config: String?
        @Flag(help: "Leave out the comments saying where each value came from (for an example file).")
        var noOrigin = false
        @OptionGroup var flags: SettingFlags

        func run() throws {
            var settings: ServeSettings
            do { settings = try ServeSettings.resolve(configPath: config, overrides: flags.overrides) } catch {
                try failWith(2, "\(error)")
            }
            if noOrigin { settings.forgetSources() }
            print(settings.toml(header: "switchboard serve configuration (TOML). Flags given to `serve` override these values."),
                  terminator: "")
        }
    }
}

/// Prints "switchboard: reason" on stderr and exits with `code`.
func failWith(_ code: Int32, _ message: String) throws -> Never {
    fflush(nil)
    let bytes = Array("switchboard: \(message)\n".utf8)
    _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    throw ExitCode(code)
}
