import SwitchboardClient
import SwitchboardProtocol
import Testing
@testable import SwitchboardTUI

func sampleModel() -> ScreenModel {
    var ids: UInt64 = 100
    var model = ScreenModel(makeMessageID: { ids += 1; return ids })
    _ = model.loggedIn(name: "alice", contacts: [
        ContactInfo(userID: 2, name: "bob", relation: .accepted, online: true),
        ContactInfo(userID: 3, name: "carol", relation: .accepted, online: false),
        ContactInfo(userID: 4, name: "dave", relation: .incomingRequest, online: false),
    ], pendingMail: 0)
    model.server = "127.0.0.1:7878"
    return model
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

@Suite struct ScreenModelTests {
    @Test func contactsSortRequestsThenOnlineThenOffline() {
        let model = sampleModel()
        #expect(model.contacts.map(\.name) == ["dave", "bob", "carol"])
        #expect(model.selectedContact == 4)
    }

    @Test func presenceUpdateMovesAndRecolours() {
        var model = sampleModel()
        model.apply(.presence(userID: 3, online: true))
        #expect(model.contact(3)?.online == true)
        #expect(model.contacts.map(\.name) == ["dave", "bob", "carol"])
        model.apply(.presence(userID: 2, online: false))
        #expect(model.contacts.map(\.name) == ["dave", "carol", "bob"])
        let frame = Renderer().render(model, width: 80, height: 24)
        let bobRow = frame.buffer.row(containing: "bob")!
        #expect(frame.buffer[bobRow, 2].style.foreground == .grey)
    }

    @Test func openingAContactAsksTheServerAndShowsTheOfflineNotice() {
        var model = sampleModel()
        let effects = model.openDialog(with: 3)
        #expect(effects == [.openChat(userID: 3)])
        #expect(model.activeDialog == .chat(3))
        #expect(model.focus == .input)
        model.chatStatus(userID: 3, online: false, text: ProtocolConstants.offlineNotice)
        #expect(model.dialog(.chat(3))?.notice == "Contact offline at the moment, send offline message")
        // Pending requests do not open.
        #expect(model.openDialog(with: 4).isEmpty)
        #expect(model.flash?.contains("accept") == true)
    }

    @Test func sendShowsAtOnceAndTheMarkFollowsTheAck() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        model.input = "hello"
        model.cursor = 5
        let effects = model.sendInput(nowMs: 1000)
        #expect(effects == [.send(to: 2, messageID: 101, body: bytes("hello"))])
        #expect(model.input.isEmpty)
        #expect(model.dialog(.chat(2))?.lines.last?.mark == .sending)
        #expect(model.outbox.count == 1)
        model.apply(.sendAck(messageID: 101, status: .delivered))
        #expect(model.dialog(.chat(2))?.lines.last?.mark == .delivered)
        #expect(model.outbox.isEmpty)
    }

    @Test func messagesToAnOfflineContactAreMarkedOffline() {
        var model = sampleModel()
        _ = model.openDialog(with: 3)
        model.input = "later"
        _ = model.sendInput(nowMs: 1)
        #expect(model.dialog(.chat(3))?.lines.last?.offline == true)
        model.apply(.sendAck(messageID: 101, status: .storedOffline))
        #expect(model.dialog(.chat(3))?.lines.last?.mark == .storedOffline)
        model.input = "bad"
        _ = model.sendInput(nowMs: 2)
        model.apply(.sendError(messageID: 102, code: 106, message: "mailbox full"))
        #expect(model.dialog(.chat(3))?.lines.last?.mark == .failed("mailbox full"))
    }

    @Test func incomingMessagesAreNewestOnTopAndDeduplicated() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        model.apply(.message(seq: 1, from: 2, messageID: 7, sentAtMs: 1000, body: bytes("first")))
        model.apply(.message(seq: 2, from: 2, messageID: 8, sentAtMs: 2000, body: bytes("second")))
        // A repeat after a reconnect: acknowledged again but not shown twice.
        model.apply(.message(seq: 3, from: 2, messageID: 7, sentAtMs: 1000, body: bytes("first")))
        #expect(model.dialog(.chat(2))?.lines.map(\.text) == ["first", "second"])
        #expect(model.takeAcknowledgements().deliveries == 3)
        #expect(model.takeAcknowledgements().deliveries == nil)
        let frame = Renderer().render(model, width: 80, height: 24)
        let second = frame.buffer.row(containing: "second")!
        let first = frame.buffer.row(containing: "first")!
        #expect(second < first)
    }

    @Test func otherDialogsCountUnread() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        model.apply(.presence(userID: 3, online: true))
        model.apply(.message(seq: 1, from: 3, messageID: 1, sentAtMs: 0, body: bytes("psst")))
        model.apply(.message(seq: 2, from: 3, messageID: 2, sentAtMs: 0, body: bytes("psst again")))
        #expect(model.activeDialog == .chat(2))
        #expect(model.dialog(.chat(3))?.unread == 2)
        let frame = Renderer().render(model, width: 80, height: 24)
        #expect(frame.buffer.rowText(0).contains("carol (2)"))
        model.cycleDialog(by: 1)
        #expect(model.activeDialog == .chat(3))
        #expect(model.dialog(.chat(3))?.unread == 0)
    }

    @Test func offlineMailIsGroupedBySenderAndDeduplicated() {
        var model = sampleModel()
        model.apply(.mail(seq: 1, from: 2, fromName: "bob", messageID: 1, sentAtMs: 3_600_000, body: bytes("b1")))
        model.apply(.mail(seq: 2, from: 3, fromName: "carol", messageID: 1, sentAtMs: 3_660_000, body: bytes("c1")))
        model.apply(.mail(seq: 3, from: 2, fromName: "bob", messageID: 2, sentAtMs: 3_720_000, body: bytes("b2")))
        model.apply(.mail(seq: 4, from: 2, fromName: "bob", messageID: 2, sentAtMs: 3_720_000, body: bytes("b2")))
        model.apply(.mailEnd(count: 4))
        #expect(model.mailGroups.map(\.senderName) == ["bob", "carol"])
        #expect(model.mailGroups[0].items.map(\.text) == ["b1", "b2"])
        #expect(model.activeDialog == .mail)
        #expect(model.takeAcknowledgements().mail == 4)
        // The same message arriving live afterwards is not shown again.
        model.apply(.message(seq: 9, from: 2, messageID: 1, sentAtMs: 0, body: bytes("b1")))
        #expect(model.dialog(.chat(2)) == nil)
        let frame = Renderer().render(model, width: 80, height: 24)
        let lines = frame.buffer.lines
        let bob = lines.firstIndex { $0.contains("From bob (2 messages):") }!
        let carol = lines.firstIndex { $0.contains("From carol (1 message):") }!
        #expect(lines[bob + 1].contains("[01:00:00] b1"))
        #expect(lines[bob + 2].contains("[01:02:00] b2"))
        #expect(carol == bob + 3)
        #expect(lines[carol + 1].contains("[01:01:00] c1"))
    }

    @Test func reconnectResendsUnacknowledgedWithTheSameIDs() {
        var model = sampleModel()
        _ = model.openDialog(with: 2)
        model.input = "one"
        _ = model.sendInput(nowMs: 0)
        model.input = "two"
        _ = model.sendInput(nowMs: 0)
        model.apply(.sendAck(messageID: 101, status: .delivered))
        model.connectionLost(reason: "the server closed the connection", retryAtMs: 10, attempt: 0)
        let effects = model.loggedIn(name: "alice", contacts: [ContactInfo(userID: 2, name: "bob", relation: .accepted, online: true)],
                                     pendingMail: 0)
        #expect(effects == [.send(to: 2, messageID: 102, body: bytes("two"))])
        #expect(model.connection == .online)
        #expect(model.dialog(.chat(2))?.lines.count == 2)
    }

    @Test func keysDriveContactsAndInput() {
        var model = sampleModel()
        #expect(model.handle(.key(.char("a"))) == [.acceptContact("dave")])
        _ = model.handle(.key(.down))
        #expect(model.selectedContact == 2)
        #expect(model.handle(.key(.enter)) == [.openChat(userID: 2)])
        for ch in "hi 你" { _ = model.handle(.key(.char(ch))) }
        _ = model.handle(.key(.backspace))
        #expect(model.input == "hi ")
        #expect(model.handle(.key(.enter)) == [.send(to: 2, messageID: 101, body: bytes("hi"))])
        _ = model.handle(.key(.tab))
        #expect(model.focus == .contacts)
        _ = model.handle(.key(.char("+")))
        for ch in "erin" { _ = model.handle(.key(.char(ch))) }
        #expect(model.handle(.key(.enter)) == [.addContact("erin")])
        _ = model.handle(.key(.char("-")))
        #expect(model.prompt == .confirmRemove(name: "bob"))
        #expect(model.handle(.key(.char("y"))) == [.removeContact("bob")])
        _ = model.handle(.key(.char("?")))
        #expect(model.showHelp)
        _ = model.handle(.key(.function(1)))
        #expect(!model.showHelp)
        // "hi" was never acknowledged: quitting asks first, and only y (or a second ^C) quits.
        #expect(model.handle(.key(.ctrl("c"))) == [])
        #expect(model.prompt == .confirmQuit(unsent: 1, typed: false))
        #expect(model.handle(.key(.char("n"))) == [])
        #expect(model.prompt == nil)
        _ = model.handle(.key(.ctrl("c")))
        #expect(model.handle(.key(.char("y"))) == [.quit])
    }

    @Test func doubleClickOnAContactOpensIt() {
        var model = sampleModel()
        let frame = Renderer().render(model, width: 80, height: 24)
        let row = frame.buffer.row(containing: "● bob")!
        let single = MouseEvent(button: .left, kind: .press, column: 3, row: row, clicks: 1)
        #expect(model.handle(.mouse(single), hits: frame.hits).isEmpty)
        #expect(model.selectedContact == 2)
        let double = MouseEvent(button: .left, kind: .press, column: 3, row: row, clicks: 2)
        #expect(model.handle(.mouse(double), hits: frame.hits) == [.openChat(userID: 2)])
        // The decoder and the model together, from raw bytes.
        var fresh = sampleModel()
        var decoder = InputDecoder()
        let click = "\u{1B}[<0;4;\(row + 1)M\u{1B}[<0;4;\(row + 1)m"
        var effects: [Effect] = []
        for event in decoder.feed(Array((click + click).utf8), nowMs: 50) {
            effects += fresh.handle(event, hits: frame.hits)
        }
        #expect(effects == [.openChat(userID: 2)])
        // Clicking [Send] sends.
        fresh.input = "clicked"
        fresh.cursor = 7
        let sendFrame = Renderer().render(fresh, width: 80, height: 24)
        let send = sendFrame.hits.first { $0.target == .sendButton }!
        let press = MouseEvent(button: .left, kind: .press, column: send.columns.lowerBound, row: send.row)
        #expect(fresh.handle(.mouse(press), hits: sendFrame.hits).count == 1)
    }

    @Test func contactUpdatesAddAndRemove() {
        var model = sampleModel()
        model.apply(.contactUpdate(ContactInfo(userID: 5, name: "erin", relation: .incomingRequest, online: false)))
        #expect(model.contact(5)?.relation == .incomingRequest)
        #expect(model.flash?.contains("erin") == true)
        model.apply(.contactUpdate(ContactInfo(userID: 4, name: "dave", relation: .removed, online: false)))
        #expect(model.contact(4) == nil)
    }
}
