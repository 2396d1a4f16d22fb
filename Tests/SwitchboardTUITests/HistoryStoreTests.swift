// The local history in a real LMDB environment (in a temporary folder): round trips, the bounds
// (lines per conversation, map size), accounts kept apart, unsent messages surviving a restart, and
// the model reading it when a dialog opens.
import Glibc
import SwitchboardClient
import SwitchboardProtocol
import Testing
@testable import SwitchboardTUI

private func tempDir(_ name: String) -> String {
    var template = Array("/tmp/sb-history-\(name)-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
}

private func removeTree(_ path: String) {
    for file in ["data.mdb", "lock.mdb"] { unlink(path + "/" + file) }
    rmdir(path)
}

private func line(_ id: UInt64, _ text: String, outgoing: Bool = false, mark: MessageMark = .received) -> ChatLine {
    ChatLine(messageID: id, outgoing: outgoing, atMs: 1_000 * id, text: text, mark: mark, offline: false)
}

@Suite struct HistoryStoreTests {
    @Test func linesMarksAndUnsentSurviveReopening() throws {
        let dir = tempDir("roundtrip")
        defer { removeTree(dir) }
        do {
            let store = try HistoryStore(directory: dir)
            store.record(peer: 2, name: "bob", line: line(1, "hi alice"))
            store.record(peer: 2, name: "bob", line: line(7, "hello bob\nsecond line", outgoing: true, mark: .sending))
            store.keepUnsent(OutgoingMessage(to: 2, messageID: 7, body: bytes("hello bob\nsecond line")))
            store.record(peer: 2, name: "bob", line: line(8, "not yet", outgoing: true, mark: .sending))
            store.keepUnsent(OutgoingMessage(to: 2, messageID: 8, body: bytes("not yet")))
            store.settle(peer: 2, messageID: 7, mark: .delivered)
            store.record(peer: 2, name: "bob", line: line(1, "hi alice"))  // a repeat is kept once
            store.setOpenPeers([2, 3])
        }
        let store = try HistoryStore(directory: dir)
        #expect(store.lines(peer: 2).map(\.text) == ["hi alice", "hello bob\nsecond line", "not yet"])
        #expect(store.lines(peer: 2).map(\.mark) == [.received, .delivered, .sending])
        #expect(store.unsent() == [OutgoingMessage(to: 2, messageID: 8, body: bytes("not yet"))])
        #expect(store.contains(from: 2, messageID: 1))
        #expect(!store.contains(from: 2, messageID: 7))  // outgoing ids are another direction
        #expect(store.peer(named: "bob") == 2)
        #expect(store.name(peer: 2) == "bob")
        #expect(store.openPeers() == [2, 3])
        #expect(store.takeError() == nil)
    }

    @Test func aConversationKeepsAtMostItsBound() throws {
        let dir = tempDir("bound")
        defer { removeTree(dir) }
        let store = try HistoryStore(directory: dir, maxLinesPerPeer: 50)
        for i in 1...65 { store.record(peer: 9, name: "erin", line: line(UInt64(i), "n\(i)")) }
        store.record(peer: 10, name: "frank", line: line(1, "other"))
        #expect(store.count(peer: 9) == 50)
        #expect(store.lines(peer: 9).first?.text == "n16")
        #expect(store.lines(peer: 9).last?.text == "n65")
        #expect(!store.contains(from: 9, messageID: 15))  // dropped with its index entry
        #expect(store.contains(from: 9, messageID: 16))
        #expect(store.lines(peer: 10).map(\.text) == ["other"])
    }

    @Test func recordingPastTheDefaultBoundStaysCheap() throws {
        let dir = tempDir("cost")
        defer { removeTree(dir) }
        let store = try HistoryStore(directory: dir)
        let ms = elapsedMs {
            for i in 1...3_000 { store.record(peer: 5, name: "eve", line: line(UInt64(i), "message number \(i)")) }
        }
        print("3,000 records into a conversation bounded at 1,000: \(ms) ms")
        #expect(store.count(peer: 5) == HistoryStore.defaultMaxLinesPerPeer)
        #expect(store.lines(peer: 5).first?.text == "message number 2001")
        #expect(ms < 5_000)  // ~0.5 s in a debug build; 5.3 s when every record recounted the conversation
    }

    @Test func aFullMapDropsTheOldestHalfAndGoesOn() throws {
        let dir = tempDir("full")
        defer { removeTree(dir) }
        // 256 KiB map; 2 KiB messages: far more than fit.
        let store = try HistoryStore(directory: dir, maxLinesPerPeer: 100_000, mapBytes: 256 << 10)
        let body = String(repeating: "x", count: 2_000)
        for i in 1...400 { store.record(peer: 4, name: "dan", line: line(UInt64(i), body + "\(i)")) }
        let kept = store.lines(peer: 4)
        #expect(kept.count > 10 && kept.count < 400)
        #expect(kept.last?.text.hasSuffix("400") == true)
        #expect(store.takeError() == nil)
    }

    @Test func accountsAndServersAreKeptApart() {
        let a = HistoryStore.directory(server: "127.0.0.1:7878", user: "alice", dataHome: "/d")!
        let b = HistoryStore.directory(server: "127.0.0.1:7878", user: "bob", dataHome: "/d")!
        let c = HistoryStore.directory(server: "example.org:7878", user: "alice", dataHome: "/d")!
        let evil = HistoryStore.directory(server: "../../etc", user: "../x", dataHome: "/d")!
        #expect(Set([a, b, c]).count == 3)
        #expect(a == "/d/switchboard/history/127.0.0.1%3A7878/alice")
        #expect(!evil.contains("/../") && !evil.hasSuffix("/.."))
    }

    /// A server list is one history (the list as written); the longest list (16 long names) still
    /// makes a folder name under 255 bytes, unique per list, and the store opens there.
    @Test func aServerListIsOneHistoryAndALongListStillMakesAValidFolder() throws {
        let pair = HistoryStore.directory(server: "127.0.0.1:7001,127.0.0.1:7002", user: "alice", dataHome: "/d")!
        #expect(pair == "/d/switchboard/history/127.0.0.1%3A7001%2C127.0.0.1%3A7002/alice")
        let names = (1...16).map { "chat-node-\($0).eu-west.example.org:7878" }
        let long = names.joined(separator: ",")
        let otherLast = (names.dropLast() + ["chat-node-99.eu-west.example.org:7878"]).joined(separator: ",")
        let base = tempDir("longlist")
        defer { rmdir(base + "/switchboard/history"); rmdir(base + "/switchboard"); rmdir(base) }
        let a = HistoryStore.directory(server: long, user: "alice", dataHome: base)!
        let b = HistoryStore.directory(server: otherLast, user: "alice", dataHome: base)!
        #expect(a != b)
        #expect(a == HistoryStore.directory(server: long, user: "alice", dataHome: base)!)
        let component = a.split(separator: "/").dropLast().last!
        #expect(component.utf8.count <= HistoryStore.maxComponentBytes)
        #expect(component.hasPrefix("chat-node-1.eu-west.example.org%3A7878%2C") && component.contains("~"))
        do {
            let store = try HistoryStore(directory: a)
            store.record(peer: 2, name: "bob", line: line(1, "kept"))
        }
        #expect(try HistoryStore(directory: a).lines(peer: 2).map(\.text) == ["kept"])
        removeTree(a)
        rmdir(String(a[..<a.lastIndex(of: "/")!]))
    }

    @Test func theModelShowsEarlierMessagesOnceAndResendsUnsent() throws {
        let dir = tempDir("model")
        defer { removeTree(dir) }
        let store = try HistoryStore(directory: dir)
        var first = sampleModel()
        first.history = store
        _ = first.openDialog(with: 2)
        first.apply(.message(seq: 1, from: 2, messageID: 50, sentAtMs: 5, body: bytes("from before")))
        first.input = "unanswered"
        _ = first.sendInput(nowMs: 6)
        #expect(store.unsent().count == 1)
        // A new run: the dialog comes back with both lines, the unsent message is sent again (same id),
        // and the old message arriving again (redelivered) is not shown twice.
        var ids: UInt64 = 500
        var second = ScreenModel(makeMessageID: { ids += 1; return ids })
        second.history = store
        second.restoreUnsent(store.unsent())
        for peer in store.openPeers() { second.reopenDialog(peer) }
        second.reopenDialog(2)
        let resend = second.loggedIn(name: "alice", contacts: [ContactInfo(userID: 2, name: "bob", relation: .accepted, online: true)], pendingMail: 0)
        #expect(resend == [.send(to: 2, messageID: 101, body: bytes("unanswered"))])
        #expect(second.dialog(.chat(2))?.lines.map(\.text) == ["from before", "unanswered"])
        second.apply(.message(seq: 2, from: 2, messageID: 50, sentAtMs: 5, body: bytes("from before")))
        #expect(second.dialog(.chat(2))?.lines.count == 2)
        second.apply(.sendAck(messageID: 101, status: .delivered))
        #expect(store.unsent().isEmpty)
        #expect(store.lines(peer: 2).last?.mark == .delivered)
    }
}
