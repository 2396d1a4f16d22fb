// Reload in process, with a reload source (what `serve --config` installs): new TLS files named by the
// reloaded settings are used for new handshakes, a broken certificate keeps the one in use while the other
// live changes still apply.
import Foundation
import Glibc
import SwitchboardClient
import SwitchboardIO
import SwitchboardServer
import SwitchboardTLS
import Testing

final class SettingsBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: ServeSettings
    init(_ value: ServeSettings) { self.value = value }
    var current: ServeSettings {
        get { lock.lock(); defer { lock.unlock() }; return value }
        set { lock.lock(); value = newValue; lock.unlock() }
    }
}

@Suite struct ReloadTests {
    @Test(.timeLimit(.minutes(1)))
    func reloadedTLSFilesServeNewHandshakesAndABrokenOneKeepsTheOld() throws {
        let directory = makeTempDirectory("sbreloadtls")
        defer { removeDirectory(directory) }
        let first = try DevelopmentCA.create(in: directory + "/a", extraNames: [], force: false)
        let second = try DevelopmentCA.create(in: directory + "/b", extraNames: [], force: false)
        var settings = ServeSettings()
        for (key, value) in [("listen", "127.0.0.1:0"), ("data", directory + "/data"),
                             ("tls-cert", first.serverCertificate), ("tls-key", directory + "/a/server.key")] {
            try settings.set(key, .string(value))
        }
        try settings.set("pbkdf2-iterations", .integer(1000))
        let box = SettingsBox(settings)
        let server = try RelayServer(configuration: try settings.serverConfiguration())
        server.logger.logLevel = .critical
        server.enableReload(ReloadSource(running: settings) { box.current })
        let serverBox = UncheckedBox(server)
        let thread = try HelperThread { try? serverBox.value.run() }
        defer { server.requestShutdown(); thread.join() }
        let address = server.boundAddress.description

        let before = try ChatSession(server: address, tls: .certificateAuthority(file: first.caCertificate))
        #expect(before.connection.tls?.serverPublicKeyFingerprint == first.serverPublicKeyFingerprint)

        var next = settings
        try next.set("tls-cert", .string(second.serverCertificate))
        try next.set("tls-key", .string(directory + "/b/server.key"))
        box.current = next
        server.requestReload()
        var switched: ChatSession?
        for _ in 0..<100 where switched == nil {
            switched = try? ChatSession(server: address, tls: .certificateAuthority(file: second.caCertificate))
            if switched == nil { usleep(20_000) }
        }
        #expect(try #require(switched).connection.tls?.serverPublicKeyFingerprint == second.serverPublicKeyFingerprint)
        // The connection made before the reload keeps working.
        try before.register(name: "before", password: testPassword)

        // A broken certificate with a lower connection limit: the limit applies, the certificate does not.
        let broken = directory + "/broken.pem"
        try "not a certificate".write(toFile: broken, atomically: true, encoding: .utf8)
        var bad = next
        try bad.set("tls-cert", .string(broken))
        try bad.set("max-connections", .integer(2))
        box.current = bad
        server.requestReload()
        var refused = false
        for _ in 0..<100 where !refused {
            // before + switched are open: a third connection is over the new limit of 2.
            refused = (try? ChatSession(server: address, tls: .certificateAuthority(file: second.caCertificate))) == nil
            if !refused { usleep(20_000) }
        }
        #expect(refused, "max-connections = 2 was not applied")
        switched?.connection.close()
        usleep(100_000)
        let still = try ChatSession(server: address, tls: .certificateAuthority(file: second.caCertificate))
        #expect(still.connection.tls?.serverPublicKeyFingerprint == second.serverPublicKeyFingerprint)
    }
}
