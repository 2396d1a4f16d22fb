// TLS configuration and the SSL_CTX built from it, for the server and for clients.
// Invariants: a TLSContext is complete when its initializer returns (certificate, key and options
// all checked) and is never mutated afterwards, so it may be shared by any number of connections
// on any thread. A reload builds a new context; if that throws, the caller keeps the old one, and
// connections made with the old one keep it alive until they close.
import COpenSSL
import CSwitchboard
import Glibc

public struct TLSServerConfiguration: Sendable, Equatable {
    /// PEM: the server certificate first, then any intermediates.
    public var certificateChainFile: String
    /// PEM private key matching the certificate.
    public var privateKeyFile: String
    /// When set, clients must present a certificate issued by one of these CAs (off by default).
    public var clientCAFile: String?
    /// TLS 1.2 cipher list: forward-secret (ECDHE) and AEAD only. TLS 1.3 suites are OpenSSL's
    /// defaults, all of which are AEAD.
    public var tls12Ciphers: String
    /// New-session tickets sent after each handshake. One is enough for a client that reconnects
    /// with its latest ticket (each resumed handshake hands out the next); OpenSSL's default of two
    /// serves parallel connections we do not make.
    public var ticketsPerHandshake: Int

    public static let defaultTLS12Ciphers = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305",
    ].joined(separator: ":")

    public init(certificateChainFile: String, privateKeyFile: String, clientCAFile: String? = nil,
                tls12Ciphers: String = TLSServerConfiguration.defaultTLS12Ciphers, ticketsPerHandshake: Int = 1) {
        self.certificateChainFile = certificateChainFile
        self.privateKeyFile = privateKeyFile
        self.clientCAFile = clientCAFile
        self.tls12Ciphers = tls12Ciphers
        self.ticketsPerHandshake = ticketsPerHandshake
    }
}

public struct TLSClientConfiguration: Sendable, Equatable {
    public enum ServerVerification: Sendable, Equatable {
        /// Full chain verification against the CAs in this PEM file, plus the host name.
        case certificateAuthority(file: String)
        /// Any certificate completes the handshake (the server still proves it holds the key); the
        /// caller must compare `peerPublicKeyFingerprint` against its pin before sending anything.
        case publicKeyPinning
    }

    public var verification: ServerVerification
    /// Optional client certificate (for servers configured with a client CA).
    public var certificateChainFile: String?
    public var privateKeyFile: String?
    // Test-only overrides, so tests can play an outdated client against the server.
    var minimumVersion: Int32?
    var maximumVersion: Int32?
    var cipherList: String?

    public init(verification: ServerVerification, certificateChainFile: String? = nil, privateKeyFile: String? = nil) {
        self.verification = verification
        self.certificateChainFile = certificateChainFile
        self.privateKeyFile = privateKeyFile
    }
}

public final class TLSContext: @unchecked Sendable {
    // @unchecked: the SSL_CTX is only configured inside the initializers; afterwards OpenSSL allows
    // SSL_new on it from any thread, and nothing here mutates it.

    public enum Role: Sendable, Equatable { case server, client }

    let handle: OpaquePointer
    public let role: Role
    /// Server contexts: the ring that seals and opens session tickets.
    public let ticketKeys: TicketKeyRing?
    /// Client contexts: whether the caller must check the server's key itself.
    public let verifiesByPinning: Bool
    /// Server contexts: expiry of the loaded certificate, seconds since the Unix epoch (for a
    /// start-up or reload warning; an expired certificate still loads, clients refuse it).
    public let certificateNotAfter: Int64?
    /// Server contexts: SHA-256 of the loaded certificate's SubjectPublicKeyInfo (lowercase hex).
    public let certificateFingerprint: String?
    /// Server contexts: OpenSSL reads ahead (whole socket reads into its record buffer, not a header and a
    /// body per record). Off with SWITCHBOARD_TLS_READ_AHEAD=0 in the environment (A/B measurements).
    public let readAhead: Bool

    /// Builds a server context from PEM files. Throws `.configuration` with the path and OpenSSL's
    /// reason when a file is missing, malformed or the key does not match the certificate.
    /// Pass the previous context's `ticketKeys` on reload so issued tickets stay valid.
    public init(server configuration: TLSServerConfiguration, ticketKeys: TicketKeyRing = TicketKeyRing()) throws(TLSError) {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_server_method()) else {
            throw TLSError.openSSL(.configuration, "SSL_CTX_new failed")
        }
        do throws(TLSError) {
            try TLSContext.applyCommonSettings(ctx, minimum: csb_TLS1_2_VERSION(), maximum: nil,
                                               tls12Ciphers: configuration.tls12Ciphers)
            // Server preference picks the AEAD order above rather than the client's (TLS 1.2 only).
            _ = SSL_CTX_set_options(ctx, csb_SSL_OP_CIPHER_SERVER_PREFERENCE())

            try TLSContext.requireReadable(configuration.certificateChainFile, what: "certificate chain")
            try TLSContext.requireReadable(configuration.privateKeyFile, what: "private key")
            guard SSL_CTX_use_certificate_chain_file(ctx, configuration.certificateChainFile) == 1 else {
                throw TLSError.openSSL(.configuration, "cannot load the certificate chain from \(configuration.certificateChainFile)")
            }
            guard SSL_CTX_use_PrivateKey_file(ctx, configuration.privateKeyFile, SSL_FILETYPE_PEM) == 1 else {
                // Loading already compares the key with the certificate; name that case plainly.
                let queue = TLSError.drainErrorQueue()
                let mismatch = queue.contains { $0.contains("key values mismatch") }
                throw TLSError(.configuration, mismatch
                    ? "the private key \(configuration.privateKeyFile) does not match the certificate \(configuration.certificateChainFile)"
                    : "cannot load the private key from \(configuration.privateKeyFile)", openSSLErrors: queue)
            }
            guard SSL_CTX_check_private_key(ctx) == 1 else {
                throw TLSError.openSSL(.configuration,
                                       "the private key \(configuration.privateKeyFile) does not match the certificate \(configuration.certificateChainFile)")
            }

            // Stateless tickets carry the whole session, so the server-side cache would only cost
            // memory (up to 20k sessions by default) during a reconnect storm.
            _ = csb_SSL_CTX_set_session_cache_mode(ctx, Int(SSL_SESS_CACHE_OFF))
            // Required once client certificates are verified, harmless otherwise: OpenSSL refuses
            // to resume a session whose context it cannot tell apart.
            let sessionContext: [UInt8] = Array("switchboard".utf8)
            _ = SSL_CTX_set_session_id_context(ctx, sessionContext, UInt32(sessionContext.count))
            _ = SSL_CTX_set_num_tickets(ctx, max(0, configuration.ticketsPerHandshake))
            // Bulk relay over TLS: ~1 recv per 16 KiB instead of 2 per record. The buffer is still released
            // when empty (RELEASE_BUFFERS), so idle connections hold none.
            let readAheadOn = getenv("SWITCHBOARD_TLS_READ_AHEAD").map { String(cString: $0) != "0" } ?? true
            if readAheadOn { csb_SSL_CTX_set_read_ahead(ctx, 1) }
            readAhead = readAheadOn
            _ = SSL_CTX_set_timeout(ctx, Int(ticketKeys.ticketLifetimeSeconds))
            try ticketKeys.install(on: ctx)

            if let caFile = configuration.clientCAFile {
                try TLSContext.requireReadable(caFile, what: "client CA file")
                guard SSL_CTX_load_verify_file(ctx, caFile) == 1 else {
                    throw TLSError.openSSL(.configuration, "cannot load client CA certificates from \(caFile)")
                }
                // The names sent in CertificateRequest, so a client with several certificates picks the right one.
                guard let names = SSL_load_client_CA_file(caFile) else {
                    throw TLSError.openSSL(.configuration, "cannot read CA names from \(caFile)")
                }
                SSL_CTX_set_client_CA_list(ctx, names)
                SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
            }

            let certificate = SSL_CTX_get0_certificate(ctx)
            certificateNotAfter = certificate.flatMap { X509_get0_notAfter($0) }.flatMap(asn1TimeToUnix)
            certificateFingerprint = certificate.flatMap(publicKeyFingerprint(of:))
        } catch {
            SSL_CTX_free(ctx)
            throw error
        }
        handle = ctx
        role = .server
        self.ticketKeys = ticketKeys
        verifiesByPinning = false
    }

    public init(client configuration: TLSClientConfiguration) throws(TLSError) {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_client_method()) else {
            throw TLSError.openSSL(.configuration, "SSL_CTX_new failed")
        }
        do throws(TLSError) {
            try TLSContext.applyCommonSettings(ctx, minimum: configuration.minimumVersion ?? csb_TLS1_2_VERSION(),
                                               maximum: configuration.maximumVersion,
                                               tls12Ciphers: configuration.cipherList ?? TLSServerConfiguration.defaultTLS12Ciphers)
            switch configuration.verification {
            case .certificateAuthority(let file):
                try TLSContext.requireReadable(file, what: "CA file")
                guard SSL_CTX_load_verify_file(ctx, file) == 1 else {
                    throw TLSError.openSSL(.configuration, "cannot load CA certificates from \(file)")
                }
                SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
            case .publicKeyPinning:
                // The handshake still checks the CertificateVerify signature, so the server proves
                // it holds the private key of the certificate whose key the caller then compares.
                SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
            }
            if let chain = configuration.certificateChainFile, let key = configuration.privateKeyFile {
                try TLSContext.requireReadable(chain, what: "client certificate")
                try TLSContext.requireReadable(key, what: "client private key")
                guard SSL_CTX_use_certificate_chain_file(ctx, chain) == 1,
                      SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1,
                      SSL_CTX_check_private_key(ctx) == 1 else {
                    throw TLSError.openSSL(.configuration, "cannot use the client certificate \(chain) with key \(key)")
                }
            }
        } catch {
            SSL_CTX_free(ctx)
            throw error
        }
        handle = ctx
        role = .client
        ticketKeys = nil
        readAhead = false
        if case .publicKeyPinning = configuration.verification { verifiesByPinning = true } else { verifiesByPinning = false }
        certificateNotAfter = nil
        certificateFingerprint = nil
    }

    deinit { SSL_CTX_free(handle) }

    private static func applyCommonSettings(_ ctx: OpaquePointer, minimum: Int32, maximum: Int32?,
                                            tls12Ciphers: String) throws(TLSError) {
        guard csb_SSL_CTX_set_min_proto_version(ctx, minimum) == 1 else {
            throw TLSError.openSSL(.configuration, "cannot set the minimum TLS version")
        }
        if let maximum, csb_SSL_CTX_set_max_proto_version(ctx, maximum) != 1 {
            throw TLSError.openSSL(.configuration, "cannot set the maximum TLS version")
        }
        // No renegotiation (a DoS lever and a source of state-machine bugs), no compression (CRIME),
        // and a TCP close without close_notify reads as end of stream: the frame codec already
        // detects a truncated frame, and clients that are killed never send close_notify.
        _ = SSL_CTX_set_options(ctx, csb_SSL_OP_NO_RENEGOTIATION() | csb_SSL_OP_NO_COMPRESSION()
                                    | csb_SSL_OP_IGNORE_UNEXPECTED_EOF())
        // RELEASE_BUFFERS: an idle connection gives its 16 KiB+ read and write buffers back.
        // ENABLE_PARTIAL_WRITE: SSL_write returns after each record, like write(2) does.
        // ACCEPT_MOVING_WRITE_BUFFER: the caller's output buffer may be compacted between a write
        // that returned WANT_WRITE and its retry (same bytes, new address).
        _ = csb_SSL_CTX_set_mode(ctx, csb_SSL_MODE_RELEASE_BUFFERS() | csb_SSL_MODE_ENABLE_PARTIAL_WRITE()
                                     | csb_SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER())
        guard SSL_CTX_set_cipher_list(ctx, tls12Ciphers) == 1 else {
            throw TLSError.openSSL(.configuration, "OpenSSL accepts none of the TLS 1.2 ciphers '\(tls12Ciphers)'")
        }
    }

    /// OpenSSL's own message for a missing file is a generic "system lib"; say which file and why.
    private static func requireReadable(_ path: String, what: String) throws(TLSError) {
        if access(path, R_OK) != 0 {
            throw TLSError.syscall(.configuration, "cannot read the \(what) \(path)", errno: errno)
        }
    }
}

/// ASN1_TIME → seconds since the Unix epoch (UTC).
func asn1TimeToUnix(_ time: UnsafePointer<ASN1_TIME>) -> Int64? {
    var parts = tm()
    guard ASN1_TIME_to_tm(time, &parts) == 1 else { return nil }
    return Int64(timegm(&parts))
}

/// SHA-256 of the certificate's DER SubjectPublicKeyInfo, lowercase hex: stable across
/// re-issued certificates for the same key, which is what a pin should follow.
func publicKeyFingerprint(of certificate: OpaquePointer) -> String? {
    guard let publicKey = X509_get_X509_PUBKEY(certificate) else { return nil }
    let length = i2d_X509_PUBKEY(publicKey, nil)
    guard length > 0 else { return nil }
    var der = [UInt8](repeating: 0, count: Int(length))
    let written = der.withUnsafeMutableBufferPointer { buffer -> Int32 in
        var cursor: UnsafeMutablePointer<UInt8>? = buffer.baseAddress
        return i2d_X509_PUBKEY(publicKey, &cursor)
    }
    guard written == length else { return nil }
    return sha256Hex(der)
}

func sha256Hex(_ bytes: [UInt8]) -> String? {
    var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
    var digestLength: UInt32 = 0
    guard EVP_Digest(bytes, bytes.count, &digest, &digestLength, EVP_sha256(), nil) == 1 else { return nil }
    let hex: [Character] = Array("0123456789abcdef")
    var text = ""
    text.reserveCapacity(Int(digestLength) * 2)
    for byte in digest.prefix(Int(digestLength)) {
        text.append(hex[Int(byte >> 4)])
        text.append(hex[Int(byte & 0x0f)])
    }
    return text
}
