// The renderer's bottom rows: the input line (with the [Send] button and the prompts) and the
// status line. Invariants: the status line is fitted to the width at word boundaries (the state
// first, then the notice, then the unsent count), so it is never cut inside a word; the input line
// costs O(visible cells) around the cursor however long the input is (plus one pass to split it
// into characters), and shows a newline of a pasted text as ↵.

extension Renderer {
    func drawInput(_ model: ScreenModel, _ buffer: inout ScreenBuffer, _ hits: inout [HitRegion],
                   row: Int) -> (row: Int, column: Int)? {
        let width = buffer.width
        let button = "[Send]"
        let buttonStart = width - TextWidth.width(of: button)
        let label: String
        var labelStyle = Styles.me
        switch model.prompt {
        case .addContact: label = "Add contact: "
        case .confirmRemove(let name):
            buffer.put(TextWidth.fit("Remove \(name) from your contacts? (y/n)", cells: width), row: row, column: 0, style: Styles.notice)
            return nil
        case .confirmQuit(let unsent, let typed):
            var parts: [String] = []
            if unsent > 0 {
                let what = "\(unsent) unsent message\(unsent == 1 ? " is" : "s are")"
                parts.append(model.history != nil ? "\(what) kept and sent at the next start." : "\(what) lost (no local history).")
            }
            if typed { parts.append("The typed text is not sent and will be lost.") }
            parts.append("Quit? (y/n)")
            buffer.fill(row: row, style: Styles.notice)
            buffer.put(TextWidth.fit(parts.joined(separator: " "), cells: width, keepingEnd: "Quit? (y/n)"), row: row, column: 0,
                       style: CellStyle(foreground: .black, background: .yellow, bold: true))
            return nil
        case nil:
            if case .chat(let user)? = model.activeDialog {
                let online = (model.contact(user)?.online ?? false) && model.isConnected
                label = online ? "> " : "offline> "
                if !online { labelStyle = Styles.notice }
            } else {
                let hint = model.activeDialog == .mail ? "(offline messages: select a contact to reply)" : "(no dialog open)"
                buffer.put(TextWidth.fit(hint, cells: max(0, buttonStart - 1)), row: row, column: 0, style: Styles.help, limit: buttonStart - 1)
                hits.append(HitRegion(row: row, columns: 0..<buttonStart, target: .input))
                return nil
            }
        }
        if model.focus == .input || model.prompt != nil { labelStyle.reverse = true }
        var column = buffer.put(label, row: row, column: 0, style: labelStyle)
        let room = max(1, buttonStart - 1 - column)
        // Show the part of the input before the cursor that fits, walking back from the cursor.
        let characters = Array(model.input)
        let cursor = min(model.cursor, characters.count)
        var start = cursor
        var widthToCursor = 0
        while start > 0 {
            let w = TextWidth.width(of: shown(characters[start - 1]))
            if widthToCursor + w >= room { break }
            widthToCursor += w
            start -= 1
        }
        let cursorColumn = column + widthToCursor
        var index = start
        while index < characters.count {
            let character = shown(characters[index])
            let w = TextWidth.width(of: character)
            if column + w > buttonStart - 1 { break }
            column += buffer.set(row: row, column: column, character: character,
                                 style: character == "↵" ? Styles.help : .plain, limit: buttonStart - 1)
            index += 1
        }
        hits.append(HitRegion(row: row, columns: 0..<buttonStart, target: .input))
        if model.prompt == nil {
            buffer.put(button, row: row, column: buttonStart, style: Styles.button)
            hits.append(HitRegion(row: row, columns: buttonStart..<width, target: .sendButton))
        }
        return model.focus == .input || model.prompt != nil ? (row, cursorColumn) : nil
    }

    private func shown(_ character: Character) -> Character { character == "\n" ? "↵" : character }

    func drawStatus(_ model: ScreenModel, _ buffer: inout ScreenBuffer, row: Int) {
        buffer.fill(row: row, style: Styles.bar)
        let width = buffer.width
        var style = Styles.bar
        // The state: a fixed head, a reason that may be shortened, a tail that says what happens next.
        var head: String, reason = "", tail = ""
        switch model.connection {
        case .online:
            head = " ● online as \(model.me) at \(model.server)"
            style = CellStyle(foreground: .green, bold: true, reverse: true)
        case .connecting(let attempt):
            head = " ○ connecting to \(model.server)" + (attempt > 1 ? " (attempt \(attempt))…" : "…")
            style = CellStyle(foreground: .yellow, bold: true, reverse: true)
        case .waitingToReconnect(let why, let retryAt, _):
            let now = nowMs()
            let seconds = retryAt > now ? (retryAt - now + 999) / 1000 : 0
            head = " ○ disconnected"
            reason = ": " + why
            tail = " · retry in \(seconds)s · ^R now"
            style = CellStyle(foreground: .red, bold: true, reverse: true)
        case .stopped(let why):
            head = " ✗ disconnected"
            reason = ": " + why
            tail = " · ^R reconnects"
            style = CellStyle(foreground: .red, bold: true, reverse: true)
        }
        let pending = model.outbox.count
        let unsent = pending > 0 && model.connection != .online ? " \(pending) unsent " : ""
        let budget = width - TextWidth.width(of: unsent)
        // A notice gets up to 40 % of the row: the reason is shortened first to make room for it.
        let notice = model.flash.map { "│ " + $0 }
        let reserve = notice.map { min(TextWidth.width(of: $0), max(12, width * 2 / 5)) } ?? 0
        let stateBudget = max(budget - reserve, min(budget, TextWidth.width(of: head) + TextWidth.width(of: tail) + 1))
        let fixed = TextWidth.width(of: head) + TextWidth.width(of: tail) + 1
        if fixed > stateBudget {
            head = TextWidth.fit(head, cells: max(0, stateBudget - 1))
            reason = ""
            tail = ""
        } else if fixed + TextWidth.width(of: reason) > stateBudget {
            reason = TextWidth.fit(reason, cells: stateBudget - fixed)
            if reason == "…" || reason == ":…" { reason = "" }
        }
        let state = head + reason + tail + " "
        var column = buffer.put(state, row: row, column: 0, style: style)
        if let notice, budget - column >= 12 {
            column = buffer.put(TextWidth.fit(notice, cells: budget - column), row: row, column: column, style: Styles.bar)
        }
        if !unsent.isEmpty {
            buffer.put(unsent, row: row, column: width - TextWidth.width(of: unsent), style: Styles.bar)
        }
    }
}
