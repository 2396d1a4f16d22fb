// Mouse modes the terminal is put in, and clicks on the rendered screen (as a real terminal sends them).
import SwitchboardClient
import SwitchboardProtocol
import Testing
@testable import SwitchboardTUI

@Suite struct MouseAndTerminalTests {
    @Test func enterTurnsMouseAndPasteOnAndNeverOff() {
        let enter = terminalEnterSequence
        for mode in ["?1000h", "?1002h", "?1006h", "?2004h", "?1049h"] { #expect(enter.contains(mode), "\(mode)") }
        // A mouse-mode reset at start is what turned the mouse off in tmux.
        for mode in ["?1000l", "?1002l", "?1003l", "?1005l", "?1006l", "?1015l", "?2004l"] { #expect(!enter.contains(mode), "\(mode)") }
    }

    @Test func leaveTurnsOffEverythingEnterTurnedOn() {
        let enter = terminalEnterSequence, leave = terminalLeaveSequence
        var modes: [String] = []
        var rest = Substring(enter)
        while let r = rest.firstRange(of: "\u{1B}[?") {
            let tail = rest[r.upperBound...]
            guard let end = tail.firstIndex(where: { $0 == "h" || $0 == "l" }) else { break }
            if tail[end] == "h" { modes.append(String(tail[..<end])) }
            rest = tail[tail.index(after: end)...]
        }
        #expect(modes.count >= 5)
        for mode in modes { #expect(leave.contains("\u{1B}[?\(mode)l"), "leave lacks ?\(mode)l") }
        #expect(leave.contains("\u{1B}[?7h"))
        #expect(enter.contains("\u{1B}[22;0t") && leave.hasSuffix("\u{1B}[23;0t"))
    }

    @Test func aClickOnSendSendsTheTypedText() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        for ch in "hi there" { _ = model.handle(.key(.char(ch))) }
        let frame = Renderer().render(model, width: 80, height: 24)
        var decoder = InputDecoder()
        let events = decoder.feed(Array("\u{1B}[<0;77;23M\u{1B}[<0;77;23m".utf8), nowMs: 5000)
        var effects: [Effect] = []
        for e in events { effects += model.handle(e, hits: frame.hits, nowMs: 5000) }
        #expect(effects.count == 1)
        #expect(model.input.isEmpty)
    }
}
