// The cluster log's binary form of [WriteOp]: every case round-trips (edge values included), and every malformed
// input (each truncation, each single-byte mutation, forged counts and lengths, overlong varints, bad UTF-8,
// unknown version or tag, trailing bytes) is refused with an error, never a trap or a huge allocation.

import Testing
import SwitchboardStore

/// One op of every case, with edge values: zero and maximal integers, empty and non-ASCII strings, an empty and
/// a 64 KiB body, an empty and a full dedupe window.
func everyWriteOp() -> [WriteOp] {
    let hash = PasswordHash(algorithm: 1, iterations: 210_000, salt: Array(0..<16), hash: Array(100..<132))
    let oddHash = PasswordHash(algorithm: 255, iterations: .max, salt: [], hash: Array(repeating: 0xFF, count: 255))
    let window = (0..<Store.maxDedupeWindowEntries).map {
        DedupeWindowEntry(messageID: UInt64.max - UInt64($0), status: UInt8($0 % 256), atMs: UInt64($0) << 40)
    }
    return [
        .createAccount(name: "alice", password: hash),
        .createAccount(name: "", password: oddHash),
        .contactAdd(owner: 1, contactName: "bob"),
        .contactAccept(owner: .max, contactName: "zoë-名前"),
        .contactRemove(owner: 0, contactName: ""),
        .putMail(StoredMail(recipient: 7, seq: 1, sender: 3, messageID: 0, sentAtMs: 1_733_000_000_000, body: [])),
        .putMail(StoredMail(recipient: .max, seq: .max, sender: .max, messageID: .max, sentAtMs: .max,
                            body: (0..<65_536).map { UInt8(truncatingIfNeeded: $0 &* 31) })),
        .deleteMail(recipient: 7, throughSeq: 0),
        .deleteMail(recipient: 8, throughSeq: .max),
        .pruneDedupe(olderThanMs: 0),
        .pruneDedupe(olderThanMs: 127),
        .pruneDedupe(olderThanMs: 128),
        .putDedupeWindow(sender: 3, entries: []),
        .putDedupeWindow(sender: 4, entries: window),
        .setPassword(name: "alice", password: hash),
        .deleteAccount(name: "bob"),
    ]
}

@Suite struct WriteOpCodecTests {
    @Test func everyCaseRoundTrips() throws {
        let ops = everyWriteOp()
        let encoded = WriteOpCodec.encode(ops)
        #expect(encoded.first == WriteOpCodec.version)
        #expect(try WriteOpCodec.decode(encoded) == ops)
        for op in ops {
            #expect(try WriteOpCodec.decode(WriteOpCodec.encode([op])) == [op], "\(op)")
        }
        #expect(try WriteOpCodec.decode(WriteOpCodec.encode([])) == [])
        // Op by op, assembled: the same bytes.
        var body: [UInt8] = []
        for op in ops { WriteOpCodec.append(op, to: &body) }
        #expect(WriteOpCodec.assemble(count: ops.count, encodedOps: body) == encoded)
    }

    @Test func itIsCompact() {
        let mail = WriteOp.putMail(StoredMail(recipient: 1_000, seq: 12, sender: 2_000, messageID: 0xDEAD_BEEF_0000_0001,
                                              sentAtMs: 1_733_000_000_000, body: Array(repeating: 0x61, count: 100)))
        // tag 1 + recipient 2 + seq 1 + sender 2 + id 8 + time 6 + length 1 + body 100
        #expect(WriteOpCodec.encode([mail]).count == 2 + 121)
        #expect(WriteOpCodec.encode([.deleteMail(recipient: 5, throughSeq: 9)]).count == 2 + 3)
    }

    @Test func everyTruncationIsRefused() throws {
        // The big body and the full window left out: O(n²) in debug builds for nothing more.
        let encoded = WriteOpCodec.encode(everyWriteOp().filter {
            if case .putMail(let m) = $0 { return m.body.count < 1000 }
            if case .putDedupeWindow(_, let entries) = $0 { return entries.count < 10 }
            return true
        } + [.putDedupeWindow(sender: 9, entries: [DedupeWindowEntry(messageID: 1, status: 2, atMs: 300)])])
        for length in 0..<encoded.count {
            #expect(throws: WriteOpCodecError.self, "prefix of \(length) bytes") {
                try WriteOpCodec.decode(Array(encoded[0..<length]))
            }
        }
    }

    @Test func everySingleByteMutationDecodesOrIsRefusedWithoutTrapping() throws {
        let ops: [WriteOp] = [
            .createAccount(name: "alice", password: PasswordHash(algorithm: 1, iterations: 1000, salt: [1, 2], hash: [3])),
            .putMail(StoredMail(recipient: 2, seq: 3, sender: 1, messageID: 42, sentAtMs: 99, body: Array("hi".utf8))),
            .putDedupeWindow(sender: 1, entries: [DedupeWindowEntry(messageID: 5, status: 1, atMs: 7)]),
            .deleteAccount(name: "bob"),
        ]
        let encoded = WriteOpCodec.encode(ops)
        var refused = 0, decoded = 0
        for index in encoded.indices {
            for value in [UInt8(0x00), 0x01, 0x7F, 0x80, 0xC3, 0xFF, encoded[index] ^ 0x01] {
                var mutated = encoded
                mutated[index] = value
                do {
                    let back = try WriteOpCodec.decode(mutated)
                    decoded += 1
                    // What decodes re-encodes to exactly the mutated bytes: one encoding per list.
                    #expect(WriteOpCodec.encode(back) == mutated, "index \(index) value \(value)")
                } catch {
                    refused += 1
                    #expect(error.offset >= 0 && error.offset <= mutated.count)
                }
            }
        }
        #expect(refused > 0 && decoded > 0)
    }

    @Test func malformedInputsGetClearErrors() throws {
        func reason(_ bytes: [UInt8]) -> String {
            do {
                _ = try WriteOpCodec.decode(bytes)
                return "decoded"
            } catch {
                return error.description
            }
        }
        #expect(reason([]).contains("truncated at version"))
        #expect(reason([2, 0]).contains("unknown version 2"))
        #expect(reason([1, 1, 99, 0]).contains("unknown tag 99"))
        #expect(reason([1, 0, 0]).contains("1 trailing bytes"))
        // A count far beyond what the bytes can hold is refused before anything is reserved.
        #expect(reason([1, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 10, 0]).contains("more than the"))
        // A body length beyond the input.
        var mail: [UInt8] = [1, 1, 5, 1, 1, 1] + [UInt8](repeating: 0, count: 8) + [1]
        mail += [0xFF, 0xFF, 0xFF, 0xFF, 0x07]
        #expect(reason(mail).contains("body of"))
        // A user id above UInt32.max.
        #expect(reason([1, 1, 2, 0x80, 0x80, 0x80, 0x80, 0x10, 0]).contains("owner 4294967296 exceeds"))
        // Overlong and overflowing varints.
        #expect(reason([1, 1, 7] + [UInt8](repeating: 0x80, count: 10) + [1]).contains("longer than 10 bytes"))
        #expect(reason([1, 1, 7] + [UInt8](repeating: 0xFF, count: 9) + [0x02]).contains("overflows 64 bits"))
        #expect(reason([1, 1, 7, 0x80, 0x00]).contains("not minimally encoded"))
        // Not UTF-8.
        #expect(reason([1, 1, 10, 2, 0xC3, 0x28]).contains("not valid UTF-8"))
        // A dedupe window count beyond the bytes left.
        #expect(reason([1, 1, 8, 1, 100] + [UInt8](repeating: 0, count: 20)).contains("dedupe window entry count 100"))
        // The largest UInt64 in ten bytes is accepted.
        #expect(reason([1, 1, 7] + [UInt8](repeating: 0xFF, count: 9) + [0x01]) == "decoded")
    }
}
