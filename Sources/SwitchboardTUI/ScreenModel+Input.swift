// Typing, pasting, quitting and reconnecting for the ScreenModel, and the interface of the local
// conversation history it reads and tells about changes.
// Invariants: a run of typed characters and a paste are each inserted with one String edit, so the
// cost of a paste of N characters is O(N + input), never O(N * input) (the per-character insert was
// what froze the client for ~45 s on a 70,000-character paste); a paste is inserted, never sent, and
// is refused whole (input unchanged, with a notice) when the input would exceed one message.

/// A conversation store the model uses (LMDB in `HistoryStore`; in memory in tests). Calls happen on
/// the client's one thread.
public protocol ConversationHistory: AnyObject {
    /// The most recent lines with `peer`, oldest first (bounded by the store).
    func lines(peer: UInt32) -> [ChatLine]
    /// The last name seen for `peer`.
    func name(peer: UInt32) -> String?
    /// True if a message from `from` with this id is already kept (shown before).
    func contains(from: UInt32, messageID: UInt64) -> Bool
    func record(peer: UInt32, name: String, line: ChatLine)
    /// An outgoing message's final mark (delivered, stored offline, failed): it is no longer unsent.
    func settle(peer: UInt32, messageID: UInt64, mark: MessageMark)
    /// An outgoing message to send again at the next start if the server never answers.
    func keepUnsent(_ message: OutgoingMessage)
}

extension ScreenModel {
    /// True when typed characters go into the input line (not to the contact list's keys).
    var isTyping: Bool {
        if case .confirmQuit? = prompt { return false }
        if case .confirmRemove? = prompt { return false }
        return prompt == .addContact || focus == .input
    }

    /// Handles a batch of input events; runs of printable characters typed into the input line are
    /// inserted at once (a terminal without bracketed paste delivers a paste as keys).
    public mutating func handle(_ events: [InputEvent], hits: [HitRegion] = [], nowMs: UInt64 = 0) -> [Effect] {
        var effects: [Effect] = []
        var index = 0
        while index < events.count {
            if isTyping, case .key(.char(let first)) = events[index], !TextWidth.isControl(first) {
                var run = String(first)
                index += 1
                while index < events.count, case .key(.char(let ch)) = events[index], !TextWidth.isControl(ch) {
                    run.append(ch)
                    index += 1
                }
                insertText(run)
                continue
            }
            effects += handle(events[index], hits: hits, nowMs: nowMs)
            index += 1
            if effects.contains(.quit) { break }
        }
        return effects
    }

    /// Inserts text at the cursor with one edit.
    mutating func insertText(_ text: String) {
        guard !text.isEmpty else { return }
        cursor = min(max(0, cursor), input.count)
        let at = input.index(input.startIndex, offsetBy: cursor)
        let tail = input.distance(from: at, to: input.endIndex)
        input.insert(contentsOf: text, at: at)
        // A combining mark at either edge may merge with its neighbour: count from the end.
        cursor = input.count - tail
    }

    /// A bracketed paste: normalised (CR LF and CR become LF, tabs four spaces, other controls
    /// dropped), inserted at the cursor if the input then still fits in one message.
    public mutating func insertPaste(_ paste: Paste) {
        guard prompt == nil || prompt == .addContact else { return }
        if prompt == nil && focus != .input {
            guard case .chat? = activeDialog else {
                flash = "paste ignored: open a dialog first (select a contact and press Enter)"
                return
            }
            focus = .input
        }
        let limit = prompt == .addContact ? 64 : maxBodyBytes
        let room = limit - input.utf8.count
        if paste.byteCount > room {
            flash = "paste not inserted: \(paste.byteCount) bytes, but a message holds at most \(limit) bytes"
                + (input.isEmpty ? "" : " (\(input.utf8.count) already typed)")
            return
        }
        var text = ""
        text.reserveCapacity(paste.text.utf8.count)
        var previousCR = false
        for scalar in paste.text.unicodeScalars {
            defer { previousCR = scalar == "\r" }
            switch scalar {
            case "\r": text.unicodeScalars.append("\n")
            case "\n": if !previousCR { text.unicodeScalars.append("\n") }
            case "\t": text += "    "
            default:
                if scalar.value < 0x20 || (scalar.value >= 0x7F && scalar.value < 0xA0) { continue }
                text.unicodeScalars.append(scalar)
            }
        }
        if prompt == .addContact { text = String(text.filter { $0 != "\n" }) }
        insertText(text)
        if text.contains("\n") { flash = "pasted \(text.split(separator: "\n", omittingEmptySubsequences: false).count) lines: Enter sends them as one message" }
    }

    /// Quit, or ask first while messages are unsent or text is typed.
    mutating func requestQuit() -> [Effect] {
        let typed = prompt == nil && !input.trimmingSpaces().isEmpty
        guard !outbox.isEmpty || typed else { return [.quit] }
        prompt = .confirmQuit(unsent: outbox.count, typed: typed)
        return []
    }

    mutating func requestReconnect() -> [Effect] {
        switch connection {
        case .online:
            flash = "already connected"
            return []
        case .connecting:
            return []
        case .waitingToReconnect, .stopped:
            return [.reconnectNow]
        }
    }

    /// Messages a previous run sent but never saw answered: shown as sending and sent again (same
    /// ids, so the server and the receiver drop duplicates) after the login.
    public mutating func restoreUnsent(_ messages: [OutgoingMessage]) {
        for message in messages where !outbox.contains(where: { $0.messageID == message.messageID }) {
            outbox.append(message)
        }
    }
}

extension ScreenModel {
    /// A dialog that was open when the client last quit (its lines come from the history).
    public mutating func reopenDialog(_ peer: UInt32) {
        _ = ensureDialog(.chat(peer))
        if activeDialog == nil { activeDialog = .chat(peer) }
    }

    /// True while the server's view of contacts (presence) is known.
    public var isConnected: Bool { connection == .online }
}
