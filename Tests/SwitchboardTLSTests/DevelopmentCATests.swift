// `switchboard cert init`'s engine: files, modes, overwrite protection, and certificates that
// OpenSSL's own verifier accepts for the right names and purposes.

import Foundation
import Glibc
@testable import SwitchboardTLS
import Testing

@Suite struct DevelopmentCATests {
    private func mode(_ path: String) -> mode_t {
        var info = stat()
        return stat(path, &info) == 0 ? info.st_mode & 0o777 : 0
    }

    @Test func writesFourFilesWithTightModes() throws {
        let temporary = TemporaryDirectory()
        // A permissive umask must not leak into key files.
        let previous = umask(0)
        defer { umask(previous) }
        let directory = DevelopmentCA.directory(forDataDirectory: temporary.file("data"))
        #expect(!DevelopmentCA.serverCredentialsExist(in: directory))
        let files = try DevelopmentCA.create(in: directory)
        #expect(files.directory == temporary.file("data") + "/tls")
        #expect(mode(files.directory) == 0o700)
        #expect(mode(files.caPrivateKey) == 0o600)
        #expect(mode(files.serverPrivateKey) == 0o600)
        #expect(mode(files.caCertificate) == 0o644)
        #expect(mode(files.serverCertificate) == 0o644)
        #expect(DevelopmentCA.serverCredentialsExist(in: directory))
        #expect(Set(files.serverNames) == Set(["localhost", "127.0.0.1", "::1"]))
        // No temporary files left behind.
        let entries = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        #expect(entries == ["ca.key", "ca.pem", "server.key", "server.pem"])
        let key = try String(contentsOfFile: files.serverPrivateKey, encoding: .utf8)
        #expect(key.hasPrefix("-----BEGIN PRIVATE KEY-----"))
    }

    @Test func validityPeriodsMatchThePolicy() throws {
        let temporary = TemporaryDirectory()
        let now = Int64(time(nil))
        let files = try DevelopmentCA.create(in: temporary.file("tls"), now: now)
        #expect(files.serverNotAfter == now + 825 * 86_400)
        let context = try TLSContext(server: TLSServerConfiguration(certificateChainFile: files.serverCertificate,
                                                                    privateKeyFile: files.serverPrivateKey))
        #expect(context.certificateNotAfter == now + 825 * 86_400)
    }

    @Test func refusesToOverwriteWithoutForce() throws {
        let temporary = TemporaryDirectory()
        let directory = temporary.file("tls")
        let first = try DevelopmentCA.create(in: directory)
        let before = try String(contentsOfFile: first.serverCertificate, encoding: .utf8)

        let error = #expect(throws: TLSError.self) { _ = try DevelopmentCA.create(in: directory) }
        #expect(error?.kind == .fileExists)
        #expect(error?.message.contains("ca.pem") == true)
        #expect(try String(contentsOfFile: first.serverCertificate, encoding: .utf8) == before)

        let forced = try DevelopmentCA.create(in: directory, force: true)
        #expect(try String(contentsOfFile: forced.serverCertificate, encoding: .utf8) != before)
        #expect(forced.serverPublicKeyFingerprint != first.serverPublicKeyFingerprint)
        #expect(mode(forced.serverPrivateKey) == 0o600)
    }

    @Test func oneExistingFileIsEnoughToRefuse() throws {
        let temporary = TemporaryDirectory()
        let directory = temporary.file("tls")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        _ = try temporary.write("tls/server.key", "precious")
        let error = #expect(throws: TLSError.self) { _ = try DevelopmentCA.create(in: directory) }
        #expect(error?.message.contains("server.key") == true)
        #expect(try String(contentsOfFile: directory + "/server.key", encoding: .utf8) == "precious")
    }

    @Test func looseExistingFolderIsTightened() throws {
        let temporary = TemporaryDirectory()
        let directory = temporary.file("tls")
        #expect(mkdir(directory, 0o755) == 0)
        _ = try DevelopmentCA.create(in: directory)
        #expect(mode(directory) == 0o700)
    }

    @Test func caCertificateIsACAAndSignsTheServerCertificate() throws {
        let temporary = TemporaryDirectory()
        let files = try DevelopmentCA.create(in: temporary.file("tls"))
        // Reload both and issue another certificate with the loaded CA: proves the key matches.
        let authority = try CertificateAuthority(certificateFile: files.caCertificate, privateKeyFile: files.caPrivateKey)
        let issued = try authority.issue(.server(names: ["second.example.test"]))
        #expect(issued.certificatePEM.hasPrefix("-----BEGIN CERTIFICATE-----"))
        #expect(issued.publicKeyFingerprint.count == 64)
        // A CA key that does not belong to the certificate is refused.
        let other = try DevelopmentCA.create(in: temporary.file("other"))
        #expect(throws: TLSError.self) {
            _ = try CertificateAuthority(certificateFile: files.caCertificate, privateKeyFile: other.caPrivateKey)
        }
    }

    @Test func invalidNamesAreRefused() throws {
        let temporary = TemporaryDirectory()
        let error = #expect(throws: TLSError.self) {
            _ = try DevelopmentCA.create(in: temporary.file("tls"), extraNames: ["bad,name"])
        }
        #expect(error?.kind == .certificateGeneration)
        #expect(!FileManager.default.fileExists(atPath: temporary.file("tls/ca.pem")))
    }

    @Test func serverRequestSortsNamesIntoDNSAndIP() {
        let request = CertificateRequest.server(names: ["LocalHost", "127.0.0.1", "::1", "localhost", "chat.example"], now: 0)
        #expect(request.dnsNames == ["localhost", "chat.example"])
        #expect(request.ipAddresses == ["127.0.0.1", "::1"])
        #expect(request.commonName == "localhost")
        #expect(request.notBefore == -3600)
    }
}
