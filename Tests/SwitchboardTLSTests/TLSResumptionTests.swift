// Session resumption with stateless tickets, and the rotation of the keys that seal them.

import Foundation
@testable import SwitchboardTLS
import SwitchboardIO
import CSwitchboard
import Testing

@Suite struct TLSResumptionTests {
    /// Connects, lets the server say something (TLS 1.3 tickets travel after the handshake and
    /// are only processed by a client read), and returns the session to resume next time.
    private func connectAndTakeSession(_ server: TLSContext, _ client: TLSContext, session: TLSSession? = nil)
        throws -> (pair: TLSPair, next: TLSSession?) {
        let pair = try TLSPair(server: server, client: client, session: session)
        try pair.handshakeOrThrow()
        if session == nil && pair.client.protocolVersion == "TLSv1.3" {
            // (A resuming client still holds the session it offered until new tickets arrive.)
            #expect(pair.client.resumableSession == nil, "TLS 1.3: no ticket before the first read")
        }
        let welcome = Array("welcome".utf8)
        #expect(try transfer(welcome, from: pair.server, to: pair.client) == welcome)
        return (pair, pair.client.resumableSession)
    }

    @Test func secondConnectionResumesWithTheSavedSession() throws {
        let certificates = try Certificates()
        let server = try certificates.serverContext()
        let client = try certificates.verifyingClientContext()

        let (first, session) = try connectAndTakeSession(server, client)
        #expect(!first.server.sessionReused)
        let saved = try #require(session)
        #expect(saved.isResumable)

        let (second, _) = try connectAndTakeSession(server, client, session: saved)
        #expect(second.client.sessionReused)
        #expect(second.server.sessionReused)
        #expect(second.server.protocolVersion == "TLSv1.3")
        // Resumed or not, the pinning fingerprint is still there (it travels in the session).
        #expect(second.client.peerPublicKeyFingerprint == certificates.files.serverPublicKeyFingerprint)
        let message = Array("resumed and working".utf8)
        #expect(try transfer(message, from: second.client, to: second.server) == message)
    }

    @Test func savedSessionSurvivesSerialization() throws {
        let certificates = try Certificates()
        let server = try certificates.serverContext()
        let client = try certificates.verifyingClientContext()
        let saved = try #require(try connectAndTakeSession(server, client).next)
        let restored = try TLSSession(derBytes: saved.derBytes)
        #expect(try connectAndTakeSession(server, client, session: restored).pair.server.sessionReused)
        #expect(throws: TLSError.self) { _ = try TLSSession(derBytes: [1, 2, 3]) }
    }

    @Test func tls12ResumesWithTickets() throws {
        let certificates = try Certificates()
        var configuration = TLSClientConfiguration(verification: .certificateAuthority(file: certificates.files.caCertificate))
        configuration.maximumVersion = csb_TLS1_2_VERSION()
        let client = try TLSContext(client: configuration)
        let server = try certificates.serverContext()
        let saved = try #require(try connectAndTakeSession(server, client).next)
        let (second, _) = try connectAndTakeSession(server, client, session: saved)
        #expect(second.server.protocolVersion == "TLSv1.2")
        #expect(second.server.sessionReused)
    }

    @Test func ticketsSurviveACertificateReloadThatSharesTheKeyRing() throws {
        let certificates = try Certificates()
        let ring = TicketKeyRing()
        let before = try certificates.serverContext(ticketKeys: ring)
        let client = try certificates.verifyingClientContext()
        let saved = try #require(try connectAndTakeSession(before, client).next)
        // SIGHUP: a new context from the same files, same ring.
        let after = try TLSContext(server: certificates.serverConfiguration, ticketKeys: before.ticketKeys!)
        #expect(try connectAndTakeSession(after, client, session: saved).pair.server.sessionReused)
        // A context with its own ring cannot open the ticket: full handshake, still connected.
        let unrelated = try certificates.serverContext()
        let (pair, _) = try connectAndTakeSession(unrelated, client, session: saved)
        #expect(!pair.server.sessionReused)
    }

    @Test func rotatedKeysStillOpenOldTicketsUntilRetired() throws {
        let certificates = try Certificates()
        let ring = TicketKeyRing()
        let server = try certificates.serverContext(ticketKeys: ring)
        let client = try certificates.verifyingClientContext()
        let saved = try #require(try connectAndTakeSession(server, client).next)

        ring.rotateNow()
        #expect(ring.keyCount == 2)
        let (resumed, fresh) = try connectAndTakeSession(server, client, session: saved)
        #expect(resumed.server.sessionReused, "the previous key still opens its tickets")
        let renewed = try #require(fresh)

        ring.rotateNow()
        ring.discardRetiredKeys()
        let (full, _) = try connectAndTakeSession(server, client, session: saved)
        #expect(!full.server.sessionReused, "a retired key's tickets fall back to a full handshake")
        // The ticket issued after the first rotation was sealed by a key that is now retired too.
        #expect(!(try connectAndTakeSession(server, client, session: renewed).pair.server.sessionReused))
    }

    @Test func keysRotateOnScheduleAndRetireAfterTheTicketLifetime() throws {
        let now = Box<UInt64>(1_000_000)
        let ring = TicketKeyRing(rotationIntervalSeconds: 60, ticketLifetimeSeconds: 120, clock: { now.value })
        let first = ring.sealingKey()
        now.value += 59_000
        #expect(ring.sealingKey() === first)
        now.value += 1_000  // 60 s: time for a new sealing key
        let second = ring.sealingKey()
        #expect(second !== first)
        #expect(ring.keyCount == 2)
        #expect(ring.openingKey(named: first.name)?.isCurrent == false)
        #expect(ring.openingKey(named: second.name)?.isCurrent == true)
        // The first key stops opening tickets 60 + 120 s after it was created.
        now.value += 119_000
        _ = ring.sealingKey()
        #expect(ring.openingKey(named: first.name) != nil)
        now.value += 1_000
        #expect(ring.openingKey(named: first.name) == nil)
        #expect(ring.keyCount >= 1 && ring.keyCount <= 3)
    }
}
