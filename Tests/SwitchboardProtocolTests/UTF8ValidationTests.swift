// UTF8Validation must accept exactly what the standard library's strict validator accepts: edge sequences,
// every 1- and 2-byte input, the interesting 3- and 4-byte space, and seeded random strings.

import SwitchboardProtocol
import Testing
import SwitchboardIO

private func ours(_ bytes: [UInt8]) -> Bool { bytes.withUnsafeBytes { UTF8Validation.isValid($0) } }
private func stdlib(_ bytes: [UInt8]) -> Bool { String(validating: bytes, as: UTF8.self) != nil }

@Suite struct UTF8ValidationTests {
    @Test func edgeSequences() {
        let valid: [[UInt8]] = [
            [], [0x00], [0x7F], Array("héllo wörld 👋".utf8),
            [0xC2, 0x80], [0xDF, 0xBF],                         // U+0080, U+07FF
            [0xE0, 0xA0, 0x80], [0xED, 0x9F, 0xBF],             // U+0800, U+D7FF
            [0xEE, 0x80, 0x80], [0xEF, 0xBF, 0xBF],             // U+E000, U+FFFF
            [0xF0, 0x90, 0x80, 0x80], [0xF4, 0x8F, 0xBF, 0xBF], // U+10000, U+10FFFF
            [0xEF, 0xBB, 0xBF],                                 // BOM is a valid scalar
        ]
        for bytes in valid {
            #expect(ours(bytes), "\(bytes)")
            #expect(stdlib(bytes), "\(bytes)")
        }
        for bytes in FrameDecoderErrorTests.badUTF8 + [[0xC2], [0xE0, 0xA0], [0xF0, 0x90, 0x80], [0xC2, 0xC2, 0x80]] {
            #expect(!ours(bytes), "\(bytes)")
            #expect(!stdlib(bytes), "\(bytes)")
        }
    }

    @Test func everyOneAndTwoByteInput() {
        for a in 0...255 {
            #expect(ours([UInt8(a)]) == stdlib([UInt8(a)]), "\(a)")
            for b in 0...255 {
                let bytes = [UInt8(a), UInt8(b)]
                if ours(bytes) != stdlib(bytes) { Issue.record("disagree on \(bytes)") }
            }
        }
    }

    @Test func threeAndFourByteSpace() {
        let tails: [UInt8] = [0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xF0, 0xFF]
        var mismatches = 0
        for a in 0xC0...0xFF {
            for b in 0...255 {
                for c in tails {
                    let three = [UInt8(a), UInt8(b), c]
                    if ours(three) != stdlib(three) { mismatches += 1; Issue.record("disagree on \(three)") }
                    // Four-byte inputs only matter for 4-byte leads (shorter leads were covered by `three`).
                    for d in tails where a >= 0xF0 {
                        let four = three + [d]
                        if ours(four) != stdlib(four) { mismatches += 1; Issue.record("disagree on \(four)") }
                    }
                    if mismatches > 20 { return }
                }
            }
        }
    }

    @Test func randomSequences() {
        var rng = SplitMix64(seed: 0xC0FFEE)
        // Byte classes weighted so that valid multi-byte sequences and near-misses both show up often.
        let classes: [ClosedRange<UInt8>] = [0x00...0x7F, 0x80...0xBF, 0x80...0xBF, 0xC0...0xDF, 0xE0...0xEF, 0xF0...0xF7, 0xF8...0xFF]
        var validCount = 0
        for _ in 0..<20_000 {
            let bytes = (0..<Int.random(in: 0..<12, using: &rng)).map { _ in
                UInt8.random(in: classes.randomElement(using: &rng)!, using: &rng)
            }
            let expected = stdlib(bytes)
            if expected { validCount += 1 }
            if ours(bytes) != expected { Issue.record("disagree on \(bytes)") }
        }
        // Random valid strings (encoded from random scalars) always pass.
        for _ in 0..<2000 {
            var s = String.UnicodeScalarView()
            for _ in 0..<Int.random(in: 0..<10, using: &rng) {
                let value = UInt32.random(in: 0...0x10FFFF, using: &rng)
                if let scalar = Unicode.Scalar(value) { s.append(scalar) }
            }
            #expect(ours(Array(String(s).utf8)))
        }
        #expect(validCount > 1000)
    }

    @Test func validatesOnlyTheGivenRange() {
        // A sequence cut by the end of the view is invalid even if the next byte in memory would complete it.
        let bytes: [UInt8] = [0x61, 0xE2, 0x82, 0xAC]
        bytes.withUnsafeBytes { raw in
            #expect(UTF8Validation.isValid(raw))
            #expect(!UTF8Validation.isValid(UnsafeRawBufferPointer(rebasing: raw[0..<3])))
            #expect(UTF8Validation.isValid(UnsafeRawBufferPointer(rebasing: raw[0..<1])))
        }
    }
}
