// Session-ticket keys for stateless TLS 1.3 (and 1.2) resumption, rotated on a schedule.
// Invariants: keys[0] seals every new ticket; a key seals tickets for `rotationInterval`, then only
// opens them until no ticket it sealed can still be valid (`rotationInterval + ticketLifetime`
// after its creation), then it is wiped. A ticket opened with an older key is accepted and the
// client gets a fresh ticket under the current key (callback returns 2).
//
// Why our own keys: OpenSSL draws one set of ticket keys when an SSL_CTX is created
// (SSL_CTX_new_ex) and never rotates them, so a long-running server would keep one key forever,
// and a certificate reload (a new SSL_CTX) would invalidate every outstanding ticket. With
// SSL_CTX_set_tlsext_ticket_key_evp_cb the ring decides, and one ring is shared by every context
// the server builds, so SIGHUP reloads keep resumption working.
// https://www.openssl.org/docs/man3.0/man3/SSL_CTX_set_tlsext_ticket_key_evp_cb.html
import COpenSSL
import Glibc
import SwitchboardIO

public final class TicketKeyRing: @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `lock`; the OpenSSL callback may run on any
    // thread that drives a server connection.

    public let rotationIntervalSeconds: UInt64
    public let ticketLifetimeSeconds: UInt64
    private let lock = Lock()
    private var keys: [TicketKey] = []
    private let clock: @Sendable () -> UInt64

    /// - Parameters:
    ///   - rotationIntervalSeconds: how long one key seals new tickets.
    ///   - ticketLifetimeSeconds: how long a client may use a ticket (also the lifetime hint
    ///     OpenSSL sends with it and enforces when it opens one).
    public convenience init(rotationIntervalSeconds: UInt64 = 3600, ticketLifetimeSeconds: UInt64 = 7200) {
        self.init(rotationIntervalSeconds: rotationIntervalSeconds, ticketLifetimeSeconds: ticketLifetimeSeconds,
                  clock: { Clock.monotonicMs() })
    }

    init(rotationIntervalSeconds: UInt64, ticketLifetimeSeconds: UInt64, clock: @escaping @Sendable () -> UInt64) {
        precondition(rotationIntervalSeconds > 0 && ticketLifetimeSeconds > 0)
        self.rotationIntervalSeconds = rotationIntervalSeconds
        self.ticketLifetimeSeconds = ticketLifetimeSeconds
        self.clock = clock
        keys = [TicketKey(createdMs: clock())]
    }

    /// Starts sealing with a fresh key now (e.g. on SIGHUP); older keys still open their tickets.
    public func rotateNow() {
        lock.withLock {
            keys.insert(TicketKey(createdMs: clock()), at: 0)
            pruneLocked(now: clock())
        }
    }

    /// Keys currently held (sealing plus opening-only).
    public var keyCount: Int { lock.withLock { keys.count } }

    /// Forgets every key but the current one: outstanding tickets fall back to full handshakes.
    func discardRetiredKeys() {
        lock.withLock { keys.removeSubrange(1...) }
    }

    func sealingKey() -> TicketKey {
        lock.withLock {
            let now = clock()
            if now &- keys[0].createdMs >= rotationIntervalSeconds * 1000 {
                keys.insert(TicketKey(createdMs: now), at: 0)
            }
            pruneLocked(now: now)
            return keys[0]
        }
    }

    func openingKey(named name: UnsafePointer<UInt8>) -> (key: TicketKey, isCurrent: Bool)? {
        lock.withLock {
            pruneLocked(now: clock())
            for (index, key) in keys.enumerated() where memcmp(key.name, name, TicketKey.nameLength) == 0 {
                return (key, index == 0)
            }
            return nil
        }
    }

    private func pruneLocked(now: UInt64) {
        let retireAfterMs = (rotationIntervalSeconds + ticketLifetimeSeconds) * 1000
        // Never drop keys[0]: it is the one sealing.
        while keys.count > 1, now &- keys[keys.count - 1].createdMs >= retireAfterMs {
            keys.removeLast()
        }
    }

    // MARK: wiring into an SSL_CTX

    /// An ex_data slot of our own on SSL_CTX (index 0 is the application's "app_data").
    private static let contextSlot: Int32 = {
        let index = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL_CTX, 0, nil, nil, nil, nil)
        precondition(index > 0, "CRYPTO_get_ex_new_index failed")
        return index
    }()

    /// Points `context` at this ring. The ring is not retained by OpenSSL: `TLSContext` keeps it
    /// alive, and every connection keeps its `TLSContext`, so the ring outlives every SSL that can
    /// call back into it.
    func install(on context: OpaquePointer) throws(TLSError) {
        let pointer = Unmanaged.passUnretained(self).toOpaque()
        guard SSL_CTX_set_ex_data(context, TicketKeyRing.contextSlot, pointer) == 1,
              SSL_CTX_set_tlsext_ticket_key_evp_cb(context, ticketKeyCallback) == 1 else {
            throw TLSError.openSSL(.configuration, "cannot install the session-ticket key callback")
        }
    }

    fileprivate static func ring(for ssl: OpaquePointer?) -> TicketKeyRing? {
        guard let context = SSL_get_SSL_CTX(ssl),
              let pointer = SSL_CTX_get_ex_data(context, contextSlot) else { return nil }
        return Unmanaged<TicketKeyRing>.fromOpaque(pointer).takeUnretainedValue()
    }
}

/// Key name (16 bytes, sent in the clear inside the ticket), AES-256-CBC key, HMAC-SHA256 key:
/// the layout RFC 5077 recommends and OpenSSL's callback interface expects.
final class TicketKey: @unchecked Sendable {
    // @unchecked: immutable after init; the bytes are only read.
    static let nameLength = 16
    static let cipherKeyLength = 32
    static let macKeyLength = 32
    let createdMs: UInt64
    private let material: UnsafeMutableRawBufferPointer

    init(createdMs: UInt64) {
        self.createdMs = createdMs
        material = .allocate(byteCount: TicketKey.nameLength + TicketKey.cipherKeyLength + TicketKey.macKeyLength,
                             alignment: 16)
        // RAND_priv_bytes: OpenSSL's separate DRBG for long-term secrets.
        let ok = RAND_priv_bytes(material.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(material.count))
        precondition(ok == 1, "RAND_priv_bytes failed: \(TLSError.drainErrorQueue())")
    }

    deinit {
        // Retired keys could decrypt recorded sessions' tickets: wipe them, not just free them.
        OPENSSL_cleanse(material.baseAddress, material.count)
        material.deallocate()
    }

    var name: UnsafePointer<UInt8> { UnsafePointer(material.baseAddress!.assumingMemoryBound(to: UInt8.self)) }
    var cipherKey: UnsafePointer<UInt8> { name + TicketKey.nameLength }
    var macKey: UnsafePointer<UInt8> { cipherKey + TicketKey.cipherKeyLength }
}

// Stable C strings for OSSL_PARAM keys: a Swift String argument's pointer dies when the call that
// built the parameter returns, but EVP_MAC_CTX_set_params reads them later.
private let macKeyParameter: StaticString = "key"
private let macDigestParameter: StaticString = "digest"
private let macDigestName: StaticString = "SHA256"

private func cString(_ text: StaticString) -> UnsafeMutablePointer<CChar> {
    UnsafeMutableRawPointer(mutating: text.utf8Start).assumingMemoryBound(to: CChar.self)
}

private func configureMAC(_ mac: OpaquePointer?, key: TicketKey) -> Bool {
    var parameters = [
        OSSL_PARAM_construct_octet_string(cString(macKeyParameter), UnsafeMutableRawPointer(mutating: key.macKey),
                                          TicketKey.macKeyLength),
        OSSL_PARAM_construct_utf8_string(cString(macDigestParameter), cString(macDigestName), 0),
        OSSL_PARAM_construct_end(),
    ]
    return EVP_MAC_CTX_set_params(mac, &parameters) == 1
}

/// Return values per the OpenSSL contract: 1 ok, 2 ok but issue a new ticket (opened with an old
/// key), 0 no ticket / unknown key (full handshake), -1 fatal error.
private func ticketKeyCallback(_ ssl: OpaquePointer?, _ keyName: UnsafeMutablePointer<UInt8>?,
                               _ iv: UnsafeMutablePointer<UInt8>?, _ cipher: OpaquePointer?,
                               _ mac: OpaquePointer?, _ encrypt: Int32) -> Int32 {
    guard let ring = TicketKeyRing.ring(for: ssl), let keyName, let iv else { return -1 }
    if encrypt == 1 {
        let key = ring.sealingKey()
        memcpy(keyName, key.name, TicketKey.nameLength)
        guard RAND_bytes(iv, 16) == 1,
              EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), nil, key.cipherKey, iv) == 1,
              configureMAC(mac, key: key) else { return -1 }
        return 1
    }
    guard let (key, isCurrent) = ring.openingKey(named: keyName) else { return 0 }
    guard configureMAC(mac, key: key),
          EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), nil, key.cipherKey, iv) == 1 else { return -1 }
    return isCurrent ? 1 : 2
}

