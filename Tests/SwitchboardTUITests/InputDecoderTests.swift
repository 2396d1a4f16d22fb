import Testing
@testable import SwitchboardTUI

@Suite struct InputDecoderTests {
    func keys(_ text: String) -> [InputEvent] {
        var decoder = InputDecoder()
        return decoder.feed(Array(text.utf8)) + decoder.flush()
    }

    @Test func plainKeysAndControls() {
        #expect(keys("a?\r\t\u{7F}\u{3}") == [.key(.char("a")), .key(.char("?")), .key(.enter), .key(.tab), .key(.backspace), .key(.ctrl("c"))])
        #expect(keys("\u{E}\u{10}\u{17}") == [.key(.ctrl("n")), .key(.ctrl("p")), .key(.ctrl("w"))])
    }

    @Test func arrowsFunctionKeysAndNavigation() {
        #expect(keys("\u{1B}[A\u{1B}[B\u{1B}[C\u{1B}[D") == [.key(.up), .key(.down), .key(.right), .key(.left)])
        #expect(keys("\u{1B}OA\u{1B}OP\u{1B}[11~\u{1B}[[A") == [.key(.up), .key(.function(1)), .key(.function(1)), .key(.function(1))])
        #expect(keys("\u{1B}[5~\u{1B}[6~\u{1B}[3~\u{1B}[H\u{1B}[4~\u{1B}[Z") ==
                [.key(.pageUp), .key(.pageDown), .key(.delete), .key(.home), .key(.end), .key(.backTab)])
        #expect(keys("\u{1B}[1;5C\u{1B}[1;5D") == [.key(.ctrlRight), .key(.ctrlLeft)])
    }

    @Test func utf8TextIncludingWideAndFourByteCharacters() {
        #expect(keys("é你😀") == [.key(.char("é")), .key(.char("你")), .key(.char("😀"))])
        // Invalid bytes become U+FFFD instead of being dropped silently.
        var decoder = InputDecoder()
        #expect(decoder.feed([0xFF, 0x41]) == [.key(.char("\u{FFFD}")), .key(.char("A"))])
    }

    @Test func sequencesSplitAcrossReads() {
        var decoder = InputDecoder()
        #expect(decoder.feed([0x1B]).isEmpty)
        #expect(decoder.hasPending)
        #expect(decoder.feed(Array("[".utf8)).isEmpty)
        #expect(decoder.feed(Array("A".utf8)) == [.key(.up)])
        #expect(!decoder.hasPending)
        // A UTF-8 character split in the middle.
        let bytes = Array("你".utf8)
        #expect(decoder.feed(bytes[0..<1]).isEmpty)
        #expect(decoder.feed(bytes[1..<3]) == [.key(.char("你"))])
        // A mouse report split in three.
        #expect(decoder.feed(Array("\u{1B}[<0;1".utf8)).isEmpty)
        #expect(decoder.feed(Array("0;5".utf8)).isEmpty)
        #expect(decoder.feed(Array("M".utf8)) == [.mouse(MouseEvent(button: .left, kind: .press, column: 9, row: 4))])
    }

    @Test func loneEscapeOnlyWhenInputGoesQuiet() {
        var decoder = InputDecoder()
        #expect(decoder.feed([0x1B]).isEmpty)
        #expect(decoder.flush() == [.key(.escape)])
        #expect(decoder.feed([0x1B, 0x1B, 0x5B, 0x42]) == [.key(.escape), .key(.down)])
        #expect(decoder.feed([0x1B, UInt8(ascii: "x")]) == [.key(.alt("x"))])
    }

    @Test func sgrMouseReportsAreZeroBased() {
        #expect(keys("\u{1B}[<0;5;3M\u{1B}[<0;5;3m") == [
            .mouse(MouseEvent(button: .left, kind: .press, column: 4, row: 2)),
            .mouse(MouseEvent(button: .left, kind: .release, column: 4, row: 2)),
        ])
        #expect(keys("\u{1B}[<64;10;10M\u{1B}[<65;10;10M") == [
            .mouse(MouseEvent(button: .wheelUp, kind: .press, column: 9, row: 9)),
            .mouse(MouseEvent(button: .wheelDown, kind: .press, column: 9, row: 9)),
        ])
        // Legacy X10: ESC [ M, button+32, column+33, row+33.
        #expect(keys("\u{1B}[M\u{20}\u{25}\u{23}") == [.mouse(MouseEvent(button: .left, kind: .press, column: 4, row: 2))])
    }

    @Test func doubleClickNeedsSamePlaceAndShortInterval() {
        var decoder = InputDecoder()
        let click = Array("\u{1B}[<0;5;3M\u{1B}[<0;5;3m".utf8)
        let first = decoder.feed(click, nowMs: 1000)
        let second = decoder.feed(click, nowMs: 1200)
        #expect(first.first == .mouse(MouseEvent(button: .left, kind: .press, column: 4, row: 2, clicks: 1)))
        #expect(second.first == .mouse(MouseEvent(button: .left, kind: .press, column: 4, row: 2, clicks: 2)))
        // Too late: a new single click.
        let late = decoder.feed(click, nowMs: 2000)
        #expect(late.first == .mouse(MouseEvent(button: .left, kind: .press, column: 4, row: 2, clicks: 1)))
        // Elsewhere (another row): single.
        let moved = decoder.feed(Array("\u{1B}[<0;5;4M".utf8), nowMs: 2100)
        #expect(moved.first == .mouse(MouseEvent(button: .left, kind: .press, column: 4, row: 3, clicks: 1)))
        // Both presses in one read (as tmux send-keys delivers them) still count as a double click.
        var fresh = InputDecoder()
        let both = fresh.feed(click + click, nowMs: 5000)
        #expect(both.count == 4)
        #expect(both[2] == .mouse(MouseEvent(button: .left, kind: .press, column: 4, row: 2, clicks: 2)))
    }

    @Test func garbageDoesNotWedgeTheDecoder() {
        var decoder = InputDecoder()
        _ = decoder.feed(Array("\u{1B}[999999999999;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;;q".utf8))
        #expect(decoder.feed(Array("z".utf8)) == [.key(.char("z"))])
        _ = decoder.feed([0x1B, UInt8(ascii: "["), 0x01])
        #expect(decoder.feed(Array("y".utf8)).last == .key(.char("y")))
    }
}
