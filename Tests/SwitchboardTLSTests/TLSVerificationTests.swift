// How a client decides to trust a server (CA file and host name, or a pinned public key) and how
// the server checks optional client certificates.

import Foundation
import Glibc
@testable import SwitchboardTLS
import SwitchboardIO
import Testing

@Suite struct TLSVerificationTests {
    @Test func wrongCAIsRefused() throws {
        let certificates = try Certificates()
        let other = try Certificates()  // a different CA, whose server certificate we do not use
        let client = try TLSContext(client: TLSClientConfiguration(verification: .certificateAuthority(file: other.files.caCertificate)))
        let pair = try TLSPair(server: try certificates.serverContext(), client: client)
        let (clientSide, serverSide) = pair.handshake()
        guard case .failed(let error) = clientSide else { Issue.record("client accepted an unknown CA: \(clientSide)"); return }
        #expect(error.kind == .certificateVerification)
        #expect(error.description.contains("unable to get local issuer certificate"))
        // The client says why in an alert; the server fails its handshake instead of hanging.
        guard case .failed(let serverError) = serverSide else { Issue.record("server: \(serverSide)"); return }
        #expect(serverError.description.contains("unknown ca"))
    }

    @Test func expiredCertificateIsRefused() throws {
        let certificates = try Certificates()
        // The server loads an expired certificate (it only warns); clients refuse it.
        let expired = try TLSContext(server: try certificates.issueExpiredServerCertificate())
        let now = Int64(time(nil))
        #expect(try #require(expired.certificateNotAfter) < now)
        let pair = try TLSPair(server: expired, client: try certificates.verifyingClientContext())
        let (clientSide, _) = pair.handshake()
        guard case .failed(let error) = clientSide else { Issue.record("client accepted an expired certificate"); return }
        #expect(error.kind == .certificateVerification)
        #expect(error.description.contains("certificate has expired"))
    }

    @Test(arguments: [("localhost", true), ("127.0.0.1", true), ("::1", true),
                      ("chat.example.test", false), ("10.1.2.3", false)])
    func serverNameIsChecked(name: String, accepted: Bool) throws {
        let certificates = try Certificates()
        let pair = try TLSPair(server: try certificates.serverContext(), client: try certificates.verifyingClientContext(),
                               serverName: name)
        let (clientSide, _) = pair.handshake()
        if accepted {
            #expect(clientSide == .done)
        } else {
            guard case .failed(let error) = clientSide else { Issue.record("\(name) accepted"); return }
            #expect(error.kind == .certificateVerification)
            #expect(error.description.contains("mismatch"))
        }
    }

    @Test func extraNamesFromCertInitAreAccepted() throws {
        let certificates = try Certificates(extraNames: ["chat.example.test", "192.0.2.7"])
        #expect(certificates.files.serverNames.contains("chat.example.test"))
        for name in ["chat.example.test", "192.0.2.7", "localhost"] {
            let pair = try TLSPair(server: try certificates.serverContext(), client: try certificates.verifyingClientContext(),
                                   serverName: name)
            #expect(pair.handshake().client == .done, "\(name)")
        }
    }

    @Test func pinningRecordsFirstThenMatchesThenRefusesAChangedKey() throws {
        let certificates = try Certificates()
        let store = PinStore(path: certificates.directory.file("config/switchboard/known_servers"))
        let pinning = try TLSContext(client: TLSClientConfiguration(verification: .publicKeyPinning))
        let server = PinStore.serverKey(host: "localhost", port: 7878)

        // First contact: any certificate completes the handshake, the caller records the key.
        let first = try TLSPair(server: try certificates.serverContext(), client: pinning)
        try first.handshakeOrThrow()
        let fingerprint = try #require(first.client.peerPublicKeyFingerprint)
        #expect(fingerprint == certificates.files.serverPublicKeyFingerprint)
        #expect(try store.verify(server: server, fingerprint: fingerprint) == .recorded)

        // Same server again.
        let second = try TLSPair(server: try certificates.serverContext(), client: pinning)
        try second.handshakeOrThrow()
        #expect(try store.verify(server: server, fingerprint: try #require(second.client.peerPublicKeyFingerprint)) == .matched)

        // The server now presents a different key (same CA even): refused, both fingerprints shown.
        let replaced = try certificates.issue(.server(names: ["localhost"]), named: "replacement")
        let replacedContext = try TLSContext(server: TLSServerConfiguration(certificateChainFile: replaced.certificate,
                                                                            privateKeyFile: replaced.key))
        let third = try TLSPair(server: replacedContext, client: pinning)
        try third.handshakeOrThrow()
        let presented = try #require(third.client.peerPublicKeyFingerprint)
        #expect(presented == replaced.fingerprint)
        let error = #expect(throws: TLSError.self) { try store.verify(server: server, fingerprint: presented) }
        #expect(error?.kind == .pinMismatch(pinned: fingerprint, presented: presented))
        #expect(error?.description.contains(fingerprint) == true)
        #expect(error?.description.contains(presented) == true)
        // A refusal never rewrites the file.
        #expect(try store.pinnedFingerprint(for: server) == fingerprint)
    }

    @Test func renewedCertificateWithTheSameKeyKeepsTheSameFingerprint() throws {
        let certificates = try Certificates()
        // Re-issuing changes the certificate, not the SubjectPublicKeyInfo the pin follows: the
        // fingerprint is taken from the key, so the same PEM key must give the same value.
        let fromFile = try publicKeyFingerprint(certificateFile: certificates.files.serverCertificate)
        #expect(fromFile == certificates.files.serverPublicKeyFingerprint)
        #expect(fromFile.count == 64)
        #expect(try certificates.serverContext().certificateFingerprint == fromFile)
    }

    @Test func clientCertificatesAreRequiredWhenAClientCAIsConfigured() throws {
        let certificates = try Certificates()
        var configuration = certificates.serverConfiguration
        configuration.clientCAFile = certificates.files.caCertificate
        let serverContext = try TLSContext(server: configuration)

        // Without a certificate: refused (TLS 1.3 clients may finish first and see the alert on read).
        let anonymous = try TLSPair(server: serverContext, client: try certificates.verifyingClientContext())
        let (clientSide, serverSide) = anonymous.handshake()
        guard case .failed(let serverError) = serverSide else { Issue.record("server accepted no certificate"); return }
        #expect(serverError.description.contains("peer did not return a certificate"))
        if clientSide == .done {
            var buffer = [UInt8](repeating: 0, count: 16)
            #expect(throws: TLSError.self) { _ = try buffer.withUnsafeMutableBytes { try anonymous.client.read(into: $0) } }
        }

        // With one issued by the CA: accepted, and the server sees which key it was.
        let issued = try certificates.issue(CertificateRequest(commonName: "alice", notBefore: Int64(time(nil)) - 60,
                                                               notAfter: Int64(time(nil)) + 86_400, usage: .client),
                                            named: "alice")
        let clientContext = try TLSContext(client: TLSClientConfiguration(
            verification: .certificateAuthority(file: certificates.files.caCertificate),
            certificateChainFile: issued.certificate, privateKeyFile: issued.key))
        let authenticated = try TLSPair(server: serverContext, client: clientContext)
        try authenticated.handshakeOrThrow()
        let message = Array("signed in with a certificate".utf8)
        #expect(try transfer(message, from: authenticated.client, to: authenticated.server) == message)
        #expect(authenticated.server.peerPublicKeyFingerprint == issued.fingerprint)
    }
}
