// `switchboard cert`: certificate tasks. `init` creates a development CA and a server certificate
// signed by it under DATA/tls, refusing to replace existing files unless --force. Production
// deployments bring their own certificate (--tls-cert/--tls-key on `serve`).
import ArgumentParser
import Glibc
import SwitchboardTLS

struct Cert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "TLS certificate tasks.",
        subcommands: [Init.self])

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a development CA and a server certificate under DATA/tls.",
            discussion: """
                Writes ca.pem (give it to clients: sbchat --ca), ca.key, server.pem and server.key. Keys are \
                EC P-256, mode 0600, in a 0700 folder. The server certificate is valid for 825 days for \
                localhost, 127.0.0.1 and ::1, plus every --name.
                """)

        @Option(help: "Data folder; the files go to DATA/tls.")
        var data = "./data"
        @Option(name: .customLong("name"), help: "Extra host name or IP address for the server certificate (repeatable).")
        var names: [String] = []
        @Flag(help: "Replace existing files (a new CA: clients must get the new ca.pem, pinned keys change).")
        var force = false

        func validate() throws {
            for name in names where name.isEmpty || name.contains(",") || name.contains(where: \.isWhitespace) {
                throw ValidationError("--name '\(name)' is not a host name or IP address")
            }
        }

        func run() throws {
            let directory = DevelopmentCA.directory(forDataDirectory: data)
            let files: DevelopmentCA.Files
            do {
                files = try DevelopmentCA.create(in: directory, extraNames: names, force: force)
            } catch {
                printError("switchboard cert init: \(error)")
                throw ExitCode.failure
            }
            print("""
                wrote the development CA certificate  \(files.caCertificate)  (clients verify with it: sbchat --ca \(files.caCertificate))
                wrote the CA private key              \(files.caPrivateKey)  (0600; keep it off servers you do not trust)
                wrote the server certificate          \(files.serverCertificate)  for \(files.serverNames.joined(separator: ", "))
                wrote the server private key          \(files.serverPrivateKey)  (0600)
                server certificate expires            \(formatDate(files.serverNotAfter))
                server public key sha256              \(files.serverPublicKeyFingerprint)  (what pinning clients record)
                """)
        }
    }
}

/// One line on stderr (C's `stderr` is not usable from Swift 6 here; fd 2 is).
private func printError(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
}

private func formatDate(_ seconds: Int64) -> String {
    var time = time_t(seconds)
    var parts = tm()
    gmtime_r(&time, &parts)
    var buffer = [CChar](repeating: 0, count: 64)
    let count = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M:%S UTC", &parts)
    return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
