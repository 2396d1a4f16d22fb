// Bracketed paste through the decoder and into the input line, and the cost of large pastes: the
// old per-character insert took ~45 s for 70,000 characters; these bounds are loose for slow CI
// (the measured times are printed) but far below anything quadratic.
import Glibc
import SwitchboardClient
import SwitchboardProtocol
import Testing
@testable import SwitchboardTUI

private func paste(_ text: String) -> [UInt8] { Array("\u{1B}[200~".utf8) + Array(text.utf8) + Array("\u{1B}[201~".utf8) }

func monotonicMs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
}

func elapsedMs(_ body: () -> Void) -> UInt64 {
    let start = monotonicMs()
    body()
    return monotonicMs() - start
}

@Suite struct PasteDecoderTests {
    @Test func aPasteIsOneEventAndKeysAroundItStayKeys() {
        var decoder = InputDecoder()
        let events = decoder.feed(Array("a".utf8) + paste("line 1\rline 2\u{1B}[A\n") + Array("b".utf8))
        #expect(events == [.key(.char("a")), .paste(Paste(text: "line 1\rline 2\u{1B}[A\n")), .key(.char("b"))])
        #expect(!decoder.hasPending)
    }

    @Test func markersSplitAtEveryByte() {
        let bytes = Array("x".utf8) + paste("héllo\nwörld") + Array("y".utf8)
        for split in 0...bytes.count {
            var decoder = InputDecoder()
            var events = decoder.feed(bytes[0..<split])
            events += decoder.feed(bytes[split...])
            #expect(events == [.key(.char("x")), .paste(Paste(text: "héllo\nwörld")), .key(.char("y"))], "split at \(split)")
        }
    }

    @Test func aPasteOverManyReadsCostsLinearTime() {
        let text = String(repeating: "0123456789 ", count: 100_000 / 11 + 1).prefix(100_000)
        let bytes = paste(String(text))
        var decoder = InputDecoder()
        var events: [InputEvent] = []
        let ms = elapsedMs {
            var offset = 0
            while offset < bytes.count {
                let end = min(bytes.count, offset + 4096)
                events += decoder.feed(bytes[offset..<end])
                offset = end
            }
        }
        print("decoding a 100,000-character paste in 4 KiB reads: \(ms) ms")
        #expect(events == [.paste(Paste(text: String(text)))])
        #expect(ms < 5_000)
    }

    @Test func aPasteKeepsAtMostItsLimitAndCountsTheRest() {
        var decoder = InputDecoder()
        decoder.maxPasteBytes = 10
        let events = decoder.feed(paste(String(repeating: "z", count: 25)))
        #expect(events == [.paste(Paste(text: String(repeating: "z", count: 10), droppedBytes: 15))])
        if case .paste(let p) = events.first { #expect(p.byteCount == 25) }
    }

    @Test func aPasteWithoutEndMarkerEndsAfterQuiet() {
        var decoder = InputDecoder()
        #expect(decoder.feed(Array("\u{1B}[200~half".utf8), nowMs: 1_000).isEmpty)
        #expect(decoder.hasPending)
        #expect(decoder.flush(nowMs: 1_500).isEmpty)
        #expect(decoder.flush(nowMs: 2_000) == [.paste(Paste(text: "half"))])
        #expect(decoder.feed(Array("k".utf8)) == [.key(.char("k"))])
    }
}

@Suite struct PasteIntoModelTests {
    func chatting() -> ScreenModel {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        return model
    }

    @Test func aMultiLinePasteIsInsertedNotSentAndEnterSendsItOnce() {
        var model = chatting()
        var decoder = InputDecoder()
        let effects = model.handle(decoder.feed(Array("> ".utf8) + paste("one\r\ntwo\rthree\tfour\u{07}")))
        #expect(effects.isEmpty)
        #expect(model.input == "> one\ntwo\nthree    four")
        #expect(model.cursor == model.input.count)
        #expect(model.outbox.isEmpty)
        let sent = model.handle([.key(.enter)])
        #expect(sent == [.send(to: 2, messageID: 101, body: bytes("> one\ntwo\nthree    four"))])
        // The receiving side draws the lines as lines.
        var bob = sampleModel()
        bob.apply(.message(seq: 1, from: 2, messageID: 5, sentAtMs: 0, body: bytes("one\ntwo")))
        let frame = Renderer().render(bob, width: 80, height: 24)
        let one = frame.buffer.row(containing: "bob: one")!
        #expect(frame.buffer.rowText(one + 1).contains("two"))
    }

    @Test func aPastePastOneMessageIsRefusedWholeWithANotice() {
        var model = chatting()
        model.maxBodyBytes = 1_000
        model.input = "kept"
        model.cursor = 4
        model.insertPaste(Paste(text: String(repeating: "x", count: 997)))
        #expect(model.input == "kept")
        #expect(model.flash?.contains("paste not inserted: 997 bytes") == true)
        model.insertPaste(Paste(text: String(repeating: "x", count: 996)))
        #expect(model.input.utf8.count == 1_000)
        #expect(model.input.hasPrefix("keptxx"))
    }

    @Test func aPasteGoesToTheCursor() {
        var model = chatting()
        model.input = "ad"
        model.cursor = 1
        model.insertPaste(Paste(text: "bc"))
        #expect(model.input == "abcd")
        #expect(model.cursor == 3)
    }

    @Test func aPasteIntoTheContactListOpensTyping() {
        var model = chatting()
        model.focus = .contacts
        model.insertPaste(Paste(text: "q+-"))
        #expect(model.focus == .input)
        #expect(model.input == "q+-")
    }

    @Test func largePastesAndLongTypedRunsStayFast() {
        var model = chatting()
        // 60,000 characters: inserted (under the 65,000-byte message limit), and drawn.
        let text = String(repeating: "word ", count: 12_000)
        var decoder = InputDecoder()
        var ms = elapsedMs { _ = model.handle(decoder.feed(paste(text))) }
        ms += elapsedMs { _ = Renderer().render(model, width: 80, height: 24) }
        print("60,000-character paste inserted and drawn: \(ms) ms")
        #expect(model.input.count == 60_000)
        #expect(ms < 5_000)
        // A terminal without bracketed paste: 70,000 characters as keys in 4 KiB reads.
        var plain = chatting()
        let keys = Array(String(repeating: "abcdefg ", count: 8_750).utf8)
        var decoder2 = InputDecoder()
        let typed = elapsedMs {
            var offset = 0
            while offset < keys.count {
                let end = min(keys.count, offset + 4096)
                _ = plain.handle(decoder2.feed(keys[offset..<end]))
                offset = end
            }
        }
        print("70,000 characters as key events: \(typed) ms")
        #expect(plain.input.count == 70_000)
        #expect(typed < 5_000)
        // 100,000 characters: refused at once, the input untouched.
        var big = chatting()
        let refused = elapsedMs { _ = big.handle(InputDecoder().withFeed(paste(String(repeating: "y", count: 100_000)))) }
        print("100,000-character paste refused: \(refused) ms")
        #expect(big.input.isEmpty)
        #expect(big.flash?.contains("100000 bytes") == true)
        #expect(refused < 5_000)
    }
}

extension InputDecoder {
    func withFeed(_ bytes: [UInt8]) -> [InputEvent] { var copy = self; return copy.feed(bytes) }
}
