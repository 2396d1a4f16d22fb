// The cost of drawing a long dialog (a full history of 1,000 messages is what a restart shows).
import SwitchboardClient
import SwitchboardProtocol
import Testing
@testable import SwitchboardTUI

@Suite struct RenderCostTests {
    @Test func aThousandMessageDialogDrawsQuickly() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        let text = String(repeating: "some words of a message ", count: 5)
        for i in 0..<1_000 { model.apply(.message(seq: UInt64(i + 1), from: 2, messageID: UInt64(i + 1), sentAtMs: 0, body: bytes(text))) }
        let renderer = Renderer()
        let ms = elapsedMs { for _ in 0..<10 { _ = renderer.render(model, width: 80, height: 24) } }
        print("10 frames of a 1,000-message dialog: \(ms) ms")
        // Only the rows on screen are wrapped (~4 ms a frame in a debug build; ~53 ms when every
        // message was wrapped for every frame).
        #expect(ms < 2_000)
        let frame = renderer.render(model, width: 80, height: 24)
        #expect(frame.buffer.rowText(2).contains("bob: some words"))
        // 18 rows hold 6 three-row messages; the rest are counted without being wrapped.
        #expect(frame.buffer.rowText(20).contains("▼ 994 more (PgDn)"))
    }
}
