// The disconnected state, reconnecting, page scrolling with the "more" marker, word wrap in narrow
// terminals, focus drawn in the panes, removed contacts keeping their names, bell/title, quitting
// with unsent messages, and text made visible for the subcommands.
import SwitchboardClient
import SwitchboardProtocol
import Testing
@testable import SwitchboardTUI

@Suite struct DisconnectedStateTests {
    @Test func disconnectedGreysContactsAndHeaderAndSaysSo() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        model.connectionLost(reason: "connect failed: Connection refused (errno 111)", retryAtMs: 3_000, attempt: 2)
        let frame = Renderer(nowMs: { 1_000 }).render(model, width: 80, height: 24)
        let b = frame.buffer
        #expect(b.rowText(1).contains("Contacts (offline)"))
        let bob = b.row(containing: "○ bob")!
        #expect(b[bob, 2].style.foreground == .grey)
        #expect(b.row(containing: "● ") == nil)
        #expect(b.rowText(1).contains("Chat with bob  (disconnected)"))
        #expect(b.rowText(22).hasPrefix("offline> "))
        #expect(b.rowText(23).contains("disconnected: connect failed: Connection refused… · retry in 2s · ^R now"))
        #expect(model.handle(.key(.ctrl("r"))) == [.reconnectNow])
        #expect(model.handle(.key(.function(5))) == [.reconnectNow])
        model.connection = .online
        #expect(model.handle(.key(.ctrl("r"))) == [])
    }

    @Test func theStatusLineIsNeverCutInsideAWord() {
        var model = sampleModel()
        model.server = "chat.example.org:7878"
        let reason = "connect failed: Connection refused (errno 111) while talking to the relay in the basement"
        for width in [40, 60, 80, 100] {
            model.connectionLost(reason: reason, retryAtMs: 9_000, attempt: 3)
            model.flash = "a notice that is rather long and goes on"
            _ = model.sendInput(nowMs: 0)
            let row = Renderer(nowMs: { 1_000 }).render(model, width: width, height: 24).buffer.rowText(23)
            let words = Set((reason + " disconnected retry in 8s ^R now a notice that is rather long and goes on").split(separator: " ").map(String.init))
            for piece in row.split(whereSeparator: { $0 == " " || $0 == "…" || $0 == "│" || $0 == "·" || $0 == ":" || $0 == ";" }) {
                let word = String(piece)
                if word == "○" { continue }
                #expect(words.contains(word) || words.contains(word + ":") || words.contains(word + ";"), "width \(width): '\(word)' in '\(row)'")
            }
            #expect(TextWidth.width(of: row) == width)
        }
    }

    @Test func backoffStartsAtOneSecondAndIsCappedAtFive() {
        for attempt in 1...20 {
            let ms = ChatApp.backoffMs(attempt: attempt)
            #expect(ms <= ChatApp.maxBackoffMs)
            if attempt == 1 { #expect(ms >= 750 && ms <= 1_000) }
            if attempt >= 4 { #expect(ms >= 3_750) }
        }
    }
}

@Suite struct ScrollAndWrapTests {
    @Test func pageKeysMoveByAPageAndTheMarkerSaysWhatIsLeft() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        for i in 0..<60 { model.apply(.message(seq: UInt64(i + 1), from: 2, messageID: UInt64(i + 1), sentAtMs: 0, body: bytes("m\(i)"))) }
        var frame = Renderer().render(model, width: 80, height: 24)
        model.pageRows = frame.pageRows
        #expect(frame.pageRows == 18)
        #expect(frame.buffer.rowText(20).contains("▼ 42 more (PgDn)"))
        _ = model.handle(.key(.pageDown))
        frame = Renderer().render(model, width: 80, height: 24)
        #expect(model.dialog(.chat(2))?.scroll == 17)
        #expect(frame.buffer.rowText(2).contains("bob: m42"))
        #expect(frame.buffer.rowText(20).contains("▲ 17 newer (PgUp)  ▼ 25 more (PgDn)"))
        _ = model.handle(.key(.pageUp))
        #expect(model.dialog(.chat(2))?.scroll == 0)
    }

    @Test func narrowTerminalsWrapAtWordBoundaries() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        let text = "the screen scrolled by itself when the conversation grew beyond the window"
        model.apply(.message(seq: 1, from: 2, messageID: 1, sentAtMs: 0, body: bytes(text)))
        let frame = Renderer().render(model, width: 40, height: 20)
        let left = Renderer().contactsWidth(forWidth: 40) + 2
        var words: [String] = []
        for row in 2..<16 {
            let part = String(frame.buffer.rowText(row).dropFirst(left))
            words += part.split(separator: " ").map(String.init)
        }
        let expected = text.split(separator: " ").map(String.init)
        #expect(Array(words.drop { !$0.hasPrefix("bob") }.dropFirst()).prefix(expected.count) == ArraySlice(expected))
    }

    @Test func helpWrapsWithoutCuttingWordsAt40Columns() {
        var model = sampleModel()
        model.showHelp = true
        let frame = Renderer().render(model, width: 40, height: 40)
        let left = Renderer().contactsWidth(forWidth: 40) + 2
        let words = Set(ScreenModel.helpText.joined(separator: " ").split(separator: " ").map(String.init))
        var seen = 0
        for row in 1..<37 {
            for word in frame.buffer.rowText(row).dropFirst(left).split(separator: " ") {
                #expect(words.contains(String(word)), "row \(row): '\(word)'")
                seen += 1
            }
        }
        #expect(seen > 60)
    }

    @Test func wrapPrefersTheNextLineAndCutsOnlyOverlongWords() {
        #expect(TextWidth.wrap("scrolled away", cells: 10, firstCells: 4) == ["", "scrolled", "away"])
        #expect(TextWidth.wrap("a scrolled", cells: 10, firstCells: 4) == ["a", "scrolled"])
        #expect(TextWidth.wrap("abcdefghijkl", cells: 5) == ["abcde", "fghij", "kl"])
        #expect(TextWidth.wrap("one\ntwo", cells: 10) == ["one", "two"])
        #expect(TextWidth.fit("connection refused by peer", cells: 20) == "connection refused…")
        #expect(TextWidth.fit("abcdefghij", cells: 5) == "abcd…")
        #expect(TextWidth.fitItems("Enter send  Tab list  ^C quit", cells: 22) == "Enter send  Tab list")
    }
}

@Suite struct FocusNamesAndAttentionTests {
    @Test func focusIsDrawnInThePane() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        model.focus = .contacts
        var b = Renderer().render(model, width: 80, height: 24).buffer
        #expect(b[1, 0].style == Renderer.Styles.focused)
        #expect(b[1, 30].style != Renderer.Styles.focused)
        model.focus = .input
        b = Renderer().render(model, width: 80, height: 24).buffer
        #expect(b[1, 0].style != Renderer.Styles.focused)
        let x = Renderer().contactsWidth(forWidth: 80) + 2
        #expect(b[1, x].style == Renderer.Styles.focused)
        #expect(b[22, 0].style.reverse)
    }

    @Test func removingAContactWithItsDialogOpenKeepsTheName() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        model.apply(.message(seq: 1, from: 2, messageID: 1, sentAtMs: 0, body: bytes("bye")))
        model.apply(.contactUpdate(ContactInfo(userID: 2, name: "bob", relation: .removed, online: false)))
        #expect(model.contact(2) == nil)
        #expect(model.title(of: .chat(2)) == "bob")
        let b = Renderer().render(model, width: 80, height: 24).buffer
        #expect(b.row(containing: "user 2") == nil)
        #expect(b.rowText(1).contains("Chat with bob  (not a contact)"))
        #expect(b.row(containing: "bob: bye") != nil)
    }

    @Test func otherDialogsRingTheBellAndCountInTheTitle() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        model.apply(.message(seq: 1, from: 2, messageID: 1, sentAtMs: 0, body: bytes("shown")))
        #expect(model.takeBells() == 0)
        model.apply(.presence(userID: 3, online: true))
        model.apply(.message(seq: 2, from: 3, messageID: 1, sentAtMs: 0, body: bytes("elsewhere")))
        model.apply(.message(seq: 3, from: 3, messageID: 2, sentAtMs: 0, body: bytes("again")))
        #expect(model.takeBells() == 2)
        #expect(model.takeBells() == 0)
        #expect(model.windowTitle == "Switchboard: alice (2 unread)")
        model.activate(.chat(3))
        #expect(model.windowTitle == "Switchboard: alice")
    }

    @Test func quittingWithTypedTextAsksAndSaysItWillBeLost() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        _ = model.handle([.key(.char("d")), .key(.char("r"))])
        #expect(model.handle(.key(.ctrl("c"))) == [])
        #expect(model.prompt == .confirmQuit(unsent: 0, typed: true))
        let row = Renderer().render(model, width: 80, height: 24).buffer.rowText(22)
        #expect(row.contains("typed text is not sent") && row.contains("Quit? (y/n)"))
        #expect(model.handle(.key(.enter)) == [.quit])
        var idle = sampleModel()
        #expect(idle.handle(.key(.ctrl("c"))) == [.quit])
    }
}

@Suite struct VisibleTextTests {
    @Test func controlsBecomeVisible() {
        #expect(TextWidth.visible("a\u{1B}[2Jb\u{07}c\u{7F}\u{9B}d\ne\tf") == "a^[[2Jb^Gc^?\u{FFFD}d^Je\tf")
        #expect(TextWidth.visible("x\ny", keepNewlines: true) == "x\ny")
        #expect(TextWidth.visible("\u{1B}]2;pwned\u{07}") == "^[]2;pwned^G")
    }
}
