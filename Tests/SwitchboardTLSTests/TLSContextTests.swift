// Building server contexts from files, and the reload rule: a broken new certificate throws a clear
// error and the old context keeps serving.

import Foundation
import Glibc
@testable import SwitchboardTLS
import SwitchboardIO
import Testing

@Suite struct TLSContextTests {
    @Test func reloadWithABrokenCertificateThrowsAndTheOldContextKeepsServing() throws {
        let certificates = try Certificates()
        let current = try certificates.serverContext()
        let client = try certificates.verifyingClientContext()

        // The operator replaces server.pem with something that is not a certificate.
        _ = try certificates.directory.write("tls/server.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
        let error = #expect(throws: TLSError.self) {
            _ = try TLSContext(server: certificates.serverConfiguration, ticketKeys: current.ticketKeys!)
        }
        #expect(error?.kind == .configuration)
        #expect(error?.message.contains(certificates.files.serverCertificate) == true)
        #expect(error?.openSSLErrors.isEmpty == false, "OpenSSL's reason travels with the error")

        // The caller kept `current`: new connections still work with it.
        let pair = try TLSPair(server: current, client: client)
        try pair.handshakeOrThrow()
        let message = Array("still serving".utf8)
        #expect(try transfer(message, from: pair.client, to: pair.server) == message)
    }

    @Test func keyThatDoesNotMatchTheCertificateIsRefused() throws {
        let certificates = try Certificates()
        let other = try certificates.issue(.server(names: ["localhost"]), named: "other")
        let configuration = TLSServerConfiguration(certificateChainFile: certificates.files.serverCertificate,
                                                   privateKeyFile: other.key)
        let error = #expect(throws: TLSError.self) { _ = try TLSContext(server: configuration) }
        #expect(error?.kind == .configuration)
        #expect(error?.message.contains("does not match") == true)
        #expect(error?.description.contains("key values mismatch") == true)
    }

    @Test func missingFilesAreNamed() throws {
        let certificates = try Certificates()
        let missing = certificates.directory.file("nope.pem")
        let configuration = TLSServerConfiguration(certificateChainFile: missing, privateKeyFile: certificates.files.serverPrivateKey)
        let error = #expect(throws: TLSError.self) { _ = try TLSContext(server: configuration) }
        #expect(error?.kind == .configuration)
        #expect(error?.errno == ENOENT)
        #expect(error?.description.contains(missing) == true)
        #expect(error?.description.contains("No such file") == true)

        let caError = #expect(throws: TLSError.self) {
            _ = try TLSContext(client: TLSClientConfiguration(verification: .certificateAuthority(file: missing)))
        }
        #expect(caError?.errno == ENOENT)
    }

    @Test func aGarbageKeyFileIsRefused() throws {
        let certificates = try Certificates()
        let key = try certificates.directory.write("garbage.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        let configuration = TLSServerConfiguration(certificateChainFile: certificates.files.serverCertificate, privateKeyFile: key)
        let error = #expect(throws: TLSError.self) { _ = try TLSContext(server: configuration) }
        #expect(error?.message.contains(key) == true)
    }

    @Test func aCipherListWithoutUsableCiphersIsRefused() throws {
        let certificates = try Certificates()
        var configuration = certificates.serverConfiguration
        configuration.tls12Ciphers = "NO-SUCH-CIPHER"
        let error = #expect(throws: TLSError.self) { _ = try TLSContext(server: configuration) }
        #expect(error?.kind == .configuration)
    }

    @Test func serverContextReportsItsCertificate() throws {
        let certificates = try Certificates()
        let context = try certificates.serverContext()
        let notAfter = try #require(context.certificateNotAfter)
        #expect(notAfter == certificates.files.serverNotAfter)
        #expect(context.certificateFingerprint == certificates.files.serverPublicKeyFingerprint)
        #expect(context.role == .server)
    }

    @Test func errorQueueIsDrainedIntoTheError() throws {
        _ = try? TLSContext(server: TLSServerConfiguration(certificateChainFile: "/dev/null", privateKeyFile: "/dev/null"))
        // Nothing left behind for the next, unrelated OpenSSL call on this thread.
        #expect(TLSError.drainErrorQueue().isEmpty)
    }
}
