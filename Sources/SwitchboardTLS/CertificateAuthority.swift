// A small certificate authority built on libcrypto: EC P-256 keys, X.509 v3 certificates with the
// extensions browsers and OpenSSL's verifier expect (basicConstraints, keyUsage, extendedKeyUsage,
// subjectAltName, key identifiers), signed with ECDSA-SHA256. Meant for development and tests.
// Invariants: every EVP_PKEY/X509 held by a Swift object is owned by it (one reference) and freed
// in its deinit; PEM text leaves this file only as Swift strings.
import COpenSSL
import Glibc

/// A certificate and its private key, PEM-encoded.
public struct PEMCredentials: Sendable, Equatable {
    public let certificatePEM: String
    public let privateKeyPEM: String
    /// SHA-256 of the SubjectPublicKeyInfo (lowercase hex), as pins record it.
    public let publicKeyFingerprint: String
}

/// What a certificate is for and which names it carries.
public struct CertificateRequest: Sendable, Equatable {
    public enum Usage: Sendable, Equatable { case server, client }

    public var commonName: String
    public var dnsNames: [String]
    public var ipAddresses: [String]
    /// Validity in seconds since the Unix epoch. A window in the past makes an expired certificate.
    public var notBefore: Int64
    public var notAfter: Int64
    public var usage: Usage

    public init(commonName: String, dnsNames: [String] = [], ipAddresses: [String] = [],
                notBefore: Int64, notAfter: Int64, usage: Usage = .server) {
        self.commonName = commonName
        self.dnsNames = dnsNames
        self.ipAddresses = ipAddresses
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.usage = usage
    }

    /// A server certificate for `names` (host names and IP literals, sorted into the right SAN
    /// kinds), valid from an hour ago (clock skew) for `validDays`.
    public static func server(names: [String], validDays: Int = 825, now: Int64 = Int64(time(nil))) -> CertificateRequest {
        var dns: [String] = []
        var ips: [String] = []
        for name in names where !name.isEmpty {
            if TLSClientStream.isIPLiteral(name) {
                if !ips.contains(name) { ips.append(name) }
            } else if !dns.contains(name.lowercased()) {
                dns.append(name.lowercased())
            }
        }
        return CertificateRequest(commonName: dns.first ?? ips.first ?? "switchboard", dnsNames: dns, ipAddresses: ips,
                                  notBefore: now - 3600, notAfter: now + Int64(validDays) * 86_400, usage: .server)
    }
}

public final class CertificateAuthority: @unchecked Sendable {
    // @unchecked: key and certificate are never modified after init; signing only reads them.
    private let key: OpaquePointer
    private let certificate: OpaquePointer

    /// A new self-signed CA: P-256 key, basicConstraints CA:TRUE (pathlen 0: it signs leaf
    /// certificates only), keyUsage keyCertSign + cRLSign.
    public static func generate(commonName: String = "Switchboard Development CA", validDays: Int = 3650,
                                now: Int64 = Int64(time(nil))) throws(TLSError) -> CertificateAuthority {
        let key = try generateP256Key()
        do throws(TLSError) {
            let certificate = try buildCertificate(subject: commonName, publicKey: key, issuer: nil, signingKey: key,
                                                   notBefore: now - 3600, notAfter: now + Int64(validDays) * 86_400,
                                                   extensions: [
                                                       (NID_basic_constraints, "critical,CA:TRUE,pathlen:0"),
                                                       (NID_key_usage, "critical,keyCertSign,cRLSign"),
                                                       (NID_subject_key_identifier, "hash"),
                                                   ])
            return CertificateAuthority(key: key, certificate: certificate)
        } catch {
            EVP_PKEY_free(key)
            throw error
        }
    }

    /// Loads an existing CA from PEM files (e.g. to issue a new server certificate).
    public convenience init(certificateFile: String, privateKeyFile: String) throws(TLSError) {
        let certificate = try readPEM(certificateFile, what: "CA certificate") { bio in PEM_read_bio_X509(bio, nil, nil, nil) }
        do throws(TLSError) {
            let key = try readPEM(privateKeyFile, what: "CA private key") { bio in PEM_read_bio_PrivateKey(bio, nil, nil, nil) }
            guard X509_check_private_key(certificate, key) == 1 else {
                EVP_PKEY_free(key)
                throw TLSError.openSSL(.configuration, "the CA key \(privateKeyFile) does not match \(certificateFile)")
            }
            self.init(key: key, certificate: certificate)
        } catch {
            X509_free(certificate)
            throw error
        }
    }

    private init(key: OpaquePointer, certificate: OpaquePointer) {
        self.key = key
        self.certificate = certificate
    }

    deinit {
        X509_free(certificate)
        EVP_PKEY_free(key)
    }

    public var certificatePEM: String { get throws(TLSError) { try pem { PEM_write_bio_X509($0, certificate) } } }
    public var privateKeyPEM: String { get throws(TLSError) { try privateKeyToPEM(key) } }

    /// Issues a certificate with a fresh P-256 key.
    public func issue(_ request: CertificateRequest) throws(TLSError) -> PEMCredentials {
        guard !request.dnsNames.isEmpty || !request.ipAddresses.isEmpty || request.usage == .client else {
            throw TLSError(.certificateGeneration, "a server certificate needs at least one DNS name or IP address")
        }
        for name in request.dnsNames + request.ipAddresses where name.contains(",") || name.contains(where: \.isWhitespace) {
            throw TLSError(.certificateGeneration, "invalid certificate name '\(name)'")
        }
        let leafKey = try generateP256Key()
        defer { EVP_PKEY_free(leafKey) }
        var extensions: [(Int32, String)] = [
            (NID_basic_constraints, "critical,CA:FALSE"),
            // ECDSA keys sign; they never encipher keys.
            (NID_key_usage, "critical,digitalSignature"),
            (NID_ext_key_usage, request.usage == .server ? "serverAuth" : "clientAuth"),
            (NID_subject_key_identifier, "hash"),
            (NID_authority_key_identifier, "keyid:always"),
        ]
        let alternativeNames = request.dnsNames.map { "DNS:\($0)" } + request.ipAddresses.map { "IP:\($0)" }
        if !alternativeNames.isEmpty {
            extensions.append((NID_subject_alt_name, alternativeNames.joined(separator: ",")))
        }
        let leaf = try buildCertificate(subject: request.commonName, publicKey: leafKey, issuer: certificate,
                                        signingKey: key, notBefore: request.notBefore, notAfter: request.notAfter,
                                        extensions: extensions)
        defer { X509_free(leaf) }
        guard let fingerprint = publicKeyFingerprint(of: leaf) else {
            throw TLSError.openSSL(.certificateGeneration, "cannot fingerprint the new certificate")
        }
        return PEMCredentials(certificatePEM: try pem { PEM_write_bio_X509($0, leaf) },
                              privateKeyPEM: try privateKeyToPEM(leafKey), publicKeyFingerprint: fingerprint)
    }
}

/// SHA-256 of the SubjectPublicKeyInfo of the first certificate in a PEM file.
public func publicKeyFingerprint(certificateFile path: String) throws(TLSError) -> String {
    let certificate = try readPEM(path, what: "certificate") { bio in PEM_read_bio_X509(bio, nil, nil, nil) }
    defer { X509_free(certificate) }
    guard let fingerprint = publicKeyFingerprint(of: certificate) else {
        throw TLSError.openSSL(.configuration, "cannot fingerprint \(path)")
    }
    return fingerprint
}

// MARK: libcrypto plumbing

private func generateP256Key() throws(TLSError) -> OpaquePointer {
    ERR_clear_error()
    guard let ctx = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else {
        throw TLSError.openSSL(.certificateGeneration, "EC key generation is unavailable")
    }
    defer { EVP_PKEY_CTX_free(ctx) }
    var key: OpaquePointer?
    guard EVP_PKEY_keygen_init(ctx) == 1,
          EVP_PKEY_CTX_set_group_name(ctx, "P-256") == 1,
          EVP_PKEY_generate(ctx, &key) == 1, let key else {
        throw TLSError.openSSL(.certificateGeneration, "cannot generate a P-256 key")
    }
    return key
}

private func buildCertificate(subject commonName: String, publicKey: OpaquePointer, issuer: OpaquePointer?,
                              signingKey: OpaquePointer, notBefore: Int64, notAfter: Int64,
                              extensions: [(Int32, String)]) throws(TLSError) -> OpaquePointer {
    ERR_clear_error()
    guard let certificate = X509_new() else { throw TLSError.openSSL(.certificateGeneration, "X509_new failed") }
    do throws(TLSError) {
        guard X509_set_version(certificate, Int(X509_VERSION_3)) == 1 else {
            throw TLSError.openSSL(.certificateGeneration, "cannot set the certificate version")
        }
        try setRandomSerial(certificate)
        guard ASN1_TIME_set(X509_getm_notBefore(certificate), time_t(notBefore)) != nil,
              ASN1_TIME_set(X509_getm_notAfter(certificate), time_t(notAfter)) != nil else {
            throw TLSError.openSSL(.certificateGeneration, "cannot set the validity period")
        }
        guard let name = X509_get_subject_name(certificate),
              X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, commonName, -1, -1, 0) == 1,
              X509_set_issuer_name(certificate, issuer.map { X509_get_subject_name($0) } ?? name) == 1,
              X509_set_pubkey(certificate, publicKey) == 1 else {
            throw TLSError.openSSL(.certificateGeneration, "cannot set the certificate's names or key")
        }
        // The extension context names issuer and subject so "hash" and "keyid:always" can be computed.
        var extensionContext = X509V3_CTX()
        X509V3_set_ctx(&extensionContext, issuer ?? certificate, certificate, nil, nil, 0)
        for (nid, value) in extensions {
            guard let ext = X509V3_EXT_nconf_nid(nil, &extensionContext, nid, value) else {
                throw TLSError.openSSL(.certificateGeneration, "invalid certificate extension '\(value)'")
            }
            defer { X509_EXTENSION_free(ext) }
            guard X509_add_ext(certificate, ext, -1) == 1 else {
                throw TLSError.openSSL(.certificateGeneration, "cannot add the extension '\(value)'")
            }
        }
        guard X509_sign(certificate, signingKey, EVP_sha256()) > 0 else {
            throw TLSError.openSSL(.certificateGeneration, "cannot sign the certificate")
        }
        return certificate
    } catch {
        X509_free(certificate)
        throw error
    }
}

/// 159 random bits, positive: RFC 5280 allows up to 20 octets and wants serials unpredictable.
private func setRandomSerial(_ certificate: OpaquePointer) throws(TLSError) {
    guard let number = BN_new() else { throw TLSError.openSSL(.certificateGeneration, "BN_new failed") }
    defer { BN_free(number) }
    guard BN_rand(number, 159, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1,
          BN_to_ASN1_INTEGER(number, X509_get_serialNumber(certificate)) != nil else {
        throw TLSError.openSSL(.certificateGeneration, "cannot set a serial number")
    }
}

private func pem(_ write: (OpaquePointer) -> Int32) throws(TLSError) -> String {
    guard let bio = BIO_new(BIO_s_mem()) else { throw TLSError.openSSL(.certificateGeneration, "BIO_new failed") }
    defer { BIO_free(bio) }
    guard write(bio) == 1 else { throw TLSError.openSSL(.certificateGeneration, "cannot encode PEM") }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = BIO_read(bio, &chunk, Int32(chunk.count))
        if count <= 0 { break }
        bytes.append(contentsOf: chunk.prefix(Int(count)))
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Unencrypted PKCS#8 ("BEGIN PRIVATE KEY"): the files are protected by their 0600 mode instead.
private func privateKeyToPEM(_ key: OpaquePointer) throws(TLSError) -> String {
    try pem { PEM_write_bio_PrivateKey($0, key, nil, nil, 0, nil, nil) }
}

private func readPEM(_ path: String, what: String,
                     _ parse: (OpaquePointer) -> OpaquePointer?) throws(TLSError) -> OpaquePointer {
    ERR_clear_error()
    guard let bio = BIO_new_file(path, "r") else {
        throw TLSError.openSSL(.configuration, "cannot open the \(what) \(path)")
    }
    defer { BIO_free(bio) }
    guard let object = parse(bio) else {
        throw TLSError.openSSL(.configuration, "cannot parse the \(what) \(path)")
    }
    return object
}
