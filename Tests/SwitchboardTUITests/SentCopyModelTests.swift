// A message sent from another device of the same user (SENT_COPY) shows in the dialog as this user's
// own, once, and its SEND_ACK marks it; it never enters the outbox (this device does not resend it).
import SwitchboardClient
import SwitchboardProtocol
import Testing
@testable import SwitchboardTUI

@Suite struct SentCopyModelTests {
    @Test func aCopyShowsAsOwnMessageOnceAndTheAckMarksIt() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        model.apply(.sentCopy(to: 2, messageID: 9_000, sentAtMs: 5, body: bytes("from my laptop")))
        model.apply(.sentCopy(to: 2, messageID: 9_000, sentAtMs: 5, body: bytes("from my laptop")))
        let lines = model.dialog(.chat(2))?.lines ?? []
        #expect(lines.filter { $0.messageID == 9_000 }.count == 1)
        #expect(lines.last?.outgoing == true && lines.last?.text == "from my laptop" && lines.last?.mark == .sending)
        #expect(model.outbox.isEmpty)
        model.apply(.sendAck(messageID: 9_000, status: .delivered))
        #expect(model.dialog(.chat(2))?.lines.last?.mark == .delivered)
    }

    @Test func aCopyToAContactWithoutADialogOpensOneWithoutTakingFocus() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        model.apply(.sentCopy(to: 3, messageID: 9_001, sentAtMs: 5, body: bytes("to carol")))
        #expect(model.dialog(.chat(3))?.lines.map(\.text) == ["to carol"])
        #expect(model.activeDialog == .chat(2))
    }
}
