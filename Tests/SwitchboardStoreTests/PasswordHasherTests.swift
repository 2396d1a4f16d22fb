import Testing
import SwitchboardStore

@Suite struct PasswordHasherTests {
    @Test func verifiesTheRightPasswordAndRejectsAWrongOne() {
        let stored = PasswordHasher.hash(password: Array("hunter2".utf8), iterations: 1000)
        #expect(PasswordHasher.verify(password: Array("hunter2".utf8), against: stored))
        #expect(!PasswordHasher.verify(password: Array("hunter3".utf8), against: stored))
        #expect(!PasswordHasher.verify(password: Array("Hunter2".utf8), against: stored))
        #expect(!PasswordHasher.verify(password: [], against: stored))
    }

    @Test func recordsItsParametersAndUsesAFreshSaltEachTime() {
        let first = PasswordHasher.hash(password: Array("same".utf8), iterations: 1000)
        let second = PasswordHasher.hash(password: Array("same".utf8), iterations: 1000)
        #expect(first.algorithm == PasswordHash.pbkdf2HMACSHA256)
        #expect(first.iterations == 1000)
        #expect(first.salt.count == 16)
        #expect(first.hash.count == 32)
        #expect(first.salt != second.salt)
        #expect(first.hash != second.hash)
        #expect(PasswordHasher.verify(password: Array("same".utf8), against: second))
    }

    @Test func matchesTheRFC7914PBKDF2SHA256Vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256, P = "passwd", S = "salt", c = 1 (first 32 bytes of dkLen 64).
        let expected: [UInt8] = [
            0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f, 0xec, 0x16, 0x91, 0xc2, 0x25, 0x44, 0xb6, 0x05,
            0xf9, 0x41, 0x85, 0x21, 0x6d, 0xde, 0x04, 0x65, 0xe6, 0x8b, 0x9d, 0x57, 0xc2, 0x0d, 0xac, 0xbc,
        ]
        let stored = PasswordHash(algorithm: 1, iterations: 1, salt: Array("salt".utf8), hash: expected)
        #expect(PasswordHasher.verify(password: Array("passwd".utf8), against: stored))
        var flipped = stored
        flipped.hash[31] ^= 1
        #expect(!PasswordHasher.verify(password: Array("passwd".utf8), against: flipped))
    }

    @Test func rejectsUnusableStoredParametersWithoutTrapping() {
        let good = PasswordHasher.hash(password: Array("pw".utf8), iterations: 1000)
        var unknownAlgorithm = good
        unknownAlgorithm.algorithm = 9
        var zeroIterations = good
        zeroIterations.iterations = 0
        var hugeIterations = good
        hugeIterations.iterations = UInt32.max
        var emptyHash = good
        emptyHash.hash = []
        for stored in [unknownAlgorithm, zeroIterations, hugeIterations, emptyHash] {
            #expect(!PasswordHasher.verify(password: Array("pw".utf8), against: stored))
        }
    }

    @Test func documentsTheOWASPIterationCount() {
        #expect(PasswordHasher.defaultIterations == 210_000)
    }
}
