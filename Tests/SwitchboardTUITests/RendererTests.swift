import SwitchboardClient
import SwitchboardProtocol
import Testing
@testable import SwitchboardTUI

@Suite struct RendererTests {
    @Test func layoutIn80x24() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        model.apply(.message(seq: 1, from: 2, messageID: 1, sentAtMs: 45_296_000, body: bytes("hello alice")))
        let frame = Renderer().render(model, width: 80, height: 24)
        let b = frame.buffer
        #expect(b.width == 80 && b.height == 24)
        #expect(b.rowText(0).hasPrefix(" Switchboard: alice "))
        #expect(b.rowText(1).contains("Contacts 1/3 online"))
        #expect(b.rowText(1).contains("Chat with bob  online"))
        #expect(b.lines[2].contains("[12:34:56] bob: hello alice"))
        #expect(b.rowText(22).hasPrefix("> "))
        #expect(b.rowText(22).hasSuffix("[Send]"))
        #expect(b.rowText(23).contains("● online as alice at 127.0.0.1:7878"))
        #expect(b.rowText(21).contains("Enter send"))
        #expect(frame.cursor! == (22, 2))
    }

    @Test func onlineContactsAreColouredAndOfflineGrey() {
        let model = sampleModel()
        let b = Renderer().render(model, width: 80, height: 24).buffer
        let bob = b.row(containing: "● bob")!
        let carol = b.row(containing: "○ carol")!
        let dave = b.row(containing: "? dave")!
        #expect(b[bob, 2].text == "b")
        #expect(b[bob, 2].style.foreground == .green)
        #expect(b[bob, 2].style.bold)
        #expect(b[carol, 2].style.foreground == .grey)
        #expect(b[dave, 2].style.foreground == .yellow)
        // The ANSI output carries the colours.
        let ansi = b.ansi(from: nil)
        #expect(ansi.contains("\u{1B}[0;1;32m● bob"))
        #expect(ansi.contains("\u{1B}[0;90m○ carol"))
    }

    @Test func wideCharactersTakeTwoCells() {
        var buffer = ScreenBuffer(width: 10, height: 2)
        let end = buffer.put("a你好b", row: 0, column: 0)
        #expect(end == 6)
        #expect(buffer[0, 1].text == "你")
        #expect(buffer[0, 2].isContinuation)
        #expect(buffer[0, 5].text == "b")
        #expect(buffer.rowText(0) == "a你好b    ")
        // Overwriting half of a wide character blanks the other half.
        buffer.put("x", row: 0, column: 2)
        #expect(buffer[0, 1].text == " ")
        #expect(buffer[0, 2].text == "x")
        // A wide character that does not fit at the edge is padded, never split.
        let edge = buffer.put("123456789你", row: 1, column: 0)
        #expect(edge == 10)
        #expect(buffer[1, 9].text == " ")
        // Controls from the network are never drawn raw.
        buffer.put("\u{1B}[2J", row: 1, column: 0)
        #expect(buffer[1, 0].text == "\u{FFFD}")
        #expect(!buffer.ansi(from: nil).contains("\u{1B}[2J\u{1B}[2J"))
    }

    @Test func wideMessageTextWrapsByCells() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        let long = String(repeating: "你好", count: 40)  // 160 cells
        model.apply(.message(seq: 1, from: 2, messageID: 1, sentAtMs: 0, body: bytes(long)))
        let b = Renderer().render(model, width: 80, height: 24).buffer
        let first = b.row(containing: "bob: 你好")!
        #expect(b.rowText(first + 1).contains("你好"))
        for row in 0..<24 {
            // No row holds a dangling continuation cell.
            for column in 0..<80 where b[row, column].isContinuation {
                #expect(column > 0 && TextWidth.width(of: Character(b[row, column - 1].text)) == 2)
            }
        }
    }

    @Test func widthTable() {
        #expect(TextWidth.width(of: "a") == 1)
        #expect(TextWidth.width(of: "é") == 1)
        #expect(TextWidth.width(of: "你好") == 4)
        #expect(TextWidth.width(of: "😀") == 2)
        #expect(TextWidth.width(of: "e\u{301}") == 1)
        #expect(TextWidth.wrap("hello world foo", cells: 11) == ["hello world", "foo"])
        #expect(TextWidth.wrap("abcdefghij", cells: 4) == ["abcd", "efgh", "ij"])
    }

    @Test func diffRedrawsOnlyChangedRowsAndResizeRedrawsAll() {
        var model = sampleModel()
        let renderer = Renderer()
        let before = renderer.render(model, width: 80, height: 24).buffer
        model.apply(.presence(userID: 3, online: true))
        let after = renderer.render(model, width: 80, height: 24).buffer
        let diff = after.ansi(from: before)
        #expect(diff.contains("● carol"))
        #expect(!diff.contains("Switchboard"))
        #expect(after.ansi(from: before).count < after.ansi(from: nil).count)
        // A resize: everything again, laid out for the new size.
        let wide = renderer.render(model, width: 120, height: 40)
        #expect(wide.buffer.ansi(from: after).hasPrefix("\u{1B}[0m\u{1B}[2J"))
        #expect(wide.buffer.rowText(39).contains("online as alice"))
        #expect(wide.buffer.rowText(38).hasPrefix("(no dialog open)"))
        #expect(wide.buffer.rowText(37).contains("Enter open"))
        let small = renderer.render(model, width: 10, height: 5)
        #expect(small.buffer.rowText(0).hasPrefix("Window too"))
    }

    @Test func helpAndStatusStates() {
        var model = sampleModel()
        model.showHelp = true
        var b = Renderer().render(model, width: 80, height: 24).buffer
        #expect(b.row(containing: "F1 or ?") != nil)
        model.connectionLost(reason: "the server closed the connection", retryAtMs: 5_000, attempt: 1)
        b = Renderer(nowMs: { 1_000 }).render(model, width: 80, height: 24).buffer
        #expect(b.rowText(23).contains("disconnected: the server closed the connection · retry in 4s · ^R now"))
    }
}

@Suite struct LayoutFitTests {
    @Test func keyHelpFitsIn80Columns() {
        var model = sampleModel()
        #expect(TextWidth.width(of: model.keyHelp) <= 80)
        model.focus = .input
        #expect(TextWidth.width(of: model.keyHelp) <= 80)
        model.prompt = .addContact
        #expect(TextWidth.width(of: model.keyHelp) <= 80)
        for line in ScreenModel.helpText { #expect(TextWidth.width(of: line) <= 80 - 22) }
    }

    @Test func clickingATabSwitchesDialogsAndTheWheelScrolls() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        model.apply(.presence(userID: 3, online: true))
        for i in 0..<40 {
            model.apply(.message(seq: UInt64(i + 1), from: 3, messageID: UInt64(i + 1), sentAtMs: 0, body: bytes("line \(i)")))
        }
        var frame = Renderer().render(model, width: 80, height: 24)
        let tab = frame.hits.first { $0.target == .tab(.chat(3)) }!
        #expect(frame.buffer.rowText(0).contains("carol (40)"))
        _ = model.handle(.mouse(MouseEvent(button: .left, kind: .press, column: tab.columns.lowerBound + 1, row: 0)), hits: frame.hits)
        #expect(model.activeDialog == .chat(3))
        frame = Renderer().render(model, width: 80, height: 24)
        #expect(frame.buffer.lines[2].contains("carol: line 39"))
        _ = model.handle(.mouse(MouseEvent(button: .wheelDown, kind: .press, column: 40, row: 10)), hits: frame.hits)
        frame = Renderer().render(model, width: 80, height: 24)
        #expect(frame.buffer.lines[2].contains("carol: line 36"))
        // 19 rows, the last of them the "more" marker. Messages beyond the page are not wrapped, so
        // the exact end is known only once the view reaches it.
        #expect(frame.maxScroll >= 40 - 18)
        var far = model
        for _ in 0..<10 { _ = far.handle(.key(.pageDown)) }
        #expect(Renderer().render(far, width: 80, height: 24).maxScroll == 40 - 18)
        #expect(frame.buffer.lines[20].contains("▲ 3 newer (PgUp)  ▼ 19 more (PgDn)"))
    }
}
