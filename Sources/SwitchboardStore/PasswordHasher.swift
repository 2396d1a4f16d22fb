// Password hashing with PBKDF2-HMAC-SHA256 (OpenSSL's PKCS5_PBKDF2_HMAC): a fresh 16-byte RAND_bytes salt per hash,
// 32-byte output. The parameters travel with the hash, so raising the iteration count later does not invalidate
// stored passwords. Hashing is deliberately slow: run it on a helper thread, never on the event loop.

import COpenSSL

public struct PasswordHash: Sendable, Equatable {
    /// Identifies the KDF; only `PasswordHash.pbkdf2HMACSHA256` exists so far.
    public var algorithm: UInt8
    public var iterations: UInt32
    public var salt: [UInt8]
    public var hash: [UInt8]

    public static let pbkdf2HMACSHA256: UInt8 = 1

    public init(algorithm: UInt8, iterations: UInt32, salt: [UInt8], hash: [UInt8]) {
        self.algorithm = algorithm
        self.iterations = iterations
        self.salt = salt
        self.hash = hash
    }
}

public enum PasswordHasher {
    /// 210,000 iterations: OWASP Password Storage Cheat Sheet (2023) figure for PBKDF2-HMAC-SHA256
    /// (https://cheatsheetseries.owasp.org/cheatsheets/Password_Storage_Cheat_Sheet.html).
    /// Roughly 100-200 ms of one core per hash on current x86; tests use far fewer.
    public static let defaultIterations: UInt32 = 210_000

    public static let saltLength = 16
    public static let hashLength = 32

    /// Hashes `password` with a new random salt.
    ///
    /// `iterations` must be in 1...Int32.max (OpenSSL takes an `int`): anything else is a programming error.
    /// A failure of RAND_bytes or of the KDF traps: carrying on with a predictable salt or an all-zero hash
    /// would silently weaken every account created afterwards.
    public static func hash(password: [UInt8], iterations: UInt32) -> PasswordHash {
        precondition(iterations >= 1 && iterations <= UInt32(Int32.max),
                     "PBKDF2 iteration count \(iterations) outside 1...\(Int32.max)")
        var salt = [UInt8](repeating: 0, count: saltLength)
        let randOK = salt.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32($0.count)) }
        guard randOK == 1 else { fatalError("RAND_bytes failed: the OpenSSL random generator is unusable") }
        guard let derived = derive(password: password, salt: salt, iterations: iterations, length: hashLength) else {
            fatalError("PKCS5_PBKDF2_HMAC failed with valid parameters")
        }
        return PasswordHash(algorithm: PasswordHash.pbkdf2HMACSHA256, iterations: iterations, salt: salt,
                            hash: derived)
    }

    /// True when `password` matches. Stored parameters come from disk, so unusable ones (unknown algorithm,
    /// zero iterations, empty hash) yield `false` rather than a trap. The comparison is constant time.
    public static func verify(password: [UInt8], against stored: PasswordHash) -> Bool {
        guard stored.algorithm == PasswordHash.pbkdf2HMACSHA256,
              stored.iterations >= 1, stored.iterations <= UInt32(Int32.max),
              !stored.hash.isEmpty,
              let derived = derive(password: password, salt: stored.salt, iterations: stored.iterations,
                                   length: stored.hash.count)
        else { return false }
        let difference = derived.withUnsafeBytes { a in
            stored.hash.withUnsafeBytes { b in CRYPTO_memcmp(a.baseAddress, b.baseAddress, a.count) }
        }
        return difference == 0
    }

    private static func derive(password: [UInt8], salt: [UInt8], iterations: UInt32, length: Int) -> [UInt8]? {
        guard password.count <= Int(Int32.max), salt.count <= Int(Int32.max) else { return nil }
        var output = [UInt8](repeating: 0, count: length)
        let ok = password.withUnsafeBytes { pass in
            salt.withUnsafeBufferPointer { saltBytes in
                output.withUnsafeMutableBufferPointer { out in
                    // UInt8 memory may be viewed as CChar (signedness variants alias). A nil base address with
                    // length 0 is fine: OpenSSL substitutes an empty string.
                    PKCS5_PBKDF2_HMAC(pass.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(pass.count),
                                      saltBytes.baseAddress, Int32(saltBytes.count),
                                      Int32(iterations), EVP_sha256(),
                                      Int32(out.count), out.baseAddress)
                }
            }
        }
        return ok == 1 ? output : nil
    }
}
