// Draws a ScreenModel into a ScreenBuffer. Layout (80x24 and larger):
//   row 0         title and dialog tabs (click a tab to switch)
//   rows 1..h-4   contacts on the left | the active dialog on the right, newest message on top
//   row h-3       key help for the current focus
//   row h-2       input line with a clickable [Send] button
//   row h-1       status line: connection state and the latest notice
import SwitchboardProtocol

public struct RenderedFrame: Sendable {
    public var buffer: ScreenBuffer
    public var hits: [HitRegion]
    /// Where the terminal cursor goes (row, column), or nil to hide it.
    public var cursor: (row: Int, column: Int)?
    /// The most the active dialog can scroll.
    public var maxScroll: Int
}

public struct Renderer {
    public enum Styles {
        public static let online = CellStyle(foreground: .green, bold: true)
        public static let offline = CellStyle(foreground: .grey)
        public static let request = CellStyle(foreground: .yellow, bold: true)
        public static let asked = CellStyle(foreground: .grey, dim: true)
        public static let bar = CellStyle(reverse: true)
        public static let title = CellStyle(bold: true, reverse: true)
        public static let activeTab = CellStyle(foreground: .cyan, bold: true, underline: true)
        public static let tab = CellStyle(reverse: true)
        public static let unreadTab = CellStyle(foreground: .yellow, bold: true, reverse: true)
        public static let time = CellStyle(foreground: .grey)
        public static let me = CellStyle(foreground: .cyan, bold: true)
        public static let notice = CellStyle(foreground: .yellow, bold: true)
        public static let heading = CellStyle(bold: true)
        public static let help = CellStyle(foreground: .grey)
        public static let error = CellStyle(foreground: .red, bold: true)
        public static let button = CellStyle(foreground: .black, background: .green, bold: true)
    }

    /// Formats a wall-clock time in milliseconds for display ("HH:MM:SS").
    public var formatTime: (UInt64) -> String
    public var nowMs: () -> UInt64

    public init(formatTime: @escaping (UInt64) -> String = Renderer.utcTime, nowMs: @escaping () -> UInt64 = { 0 }) {
        self.formatTime = formatTime
        self.nowMs = nowMs
    }

    public static func utcTime(_ ms: UInt64) -> String {
        let s = (ms / 1000) % 86_400
        func two(_ v: UInt64) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(two(s / 3600)):\(two(s / 60 % 60)):\(two(s % 60))"
    }

    public func contactsWidth(forWidth width: Int) -> Int { min(26, max(14, width / 4)) }

    public func render(_ model: ScreenModel, width: Int, height: Int) -> RenderedFrame {
        var buffer = ScreenBuffer(width: width, height: height)
        var hits: [HitRegion] = []
        guard width >= 20, height >= 8 else {
            buffer.put("Window too small", row: 0, column: 0)
            return RenderedFrame(buffer: buffer, hits: [], cursor: nil, maxScroll: 0)
        }
        drawTitle(model, &buffer, &hits)
        let bodyTop = 1
        let bodyBottom = height - 3  // exclusive
        let left = contactsWidth(forWidth: width)
        for row in bodyTop..<bodyBottom { buffer.put("│", row: row, column: left, style: Styles.help) }
        drawContacts(model, &buffer, &hits, top: bodyTop, bottom: bodyBottom, width: left)
        let maxScroll = drawDialog(model, &buffer, &hits, top: bodyTop, bottom: bodyBottom, left: left + 1, right: width)
        buffer.put(TextWidth.prefix(of: model.keyHelp, fitting: width), row: height - 3, column: 0, style: Styles.help)
        let cursor = drawInput(model, &buffer, &hits, row: height - 2)
        drawStatus(model, &buffer, row: height - 1)
        return RenderedFrame(buffer: buffer, hits: hits, cursor: cursor, maxScroll: maxScroll)
    }

    // MARK: parts

    private func drawTitle(_ model: ScreenModel, _ buffer: inout ScreenBuffer, _ hits: inout [HitRegion]) {
        buffer.fill(row: 0, style: Styles.bar)
        var column = buffer.put(" Switchboard: \(model.me.isEmpty ? "…" : model.me) ", row: 0, column: 0, style: Styles.title)
        column = buffer.put("│", row: 0, column: column, style: Styles.bar)
        for dialog in model.dialogs {
            var label = dialog.id == .mail ? "✉ " + model.title(of: dialog.id) : model.title(of: dialog.id)
            if dialog.unread > 0 { label += " (\(dialog.unread))" }
            let style = dialog.id == model.activeDialog ? Styles.activeTab : (dialog.unread > 0 ? Styles.unreadTab : Styles.tab)
            let start = column
            column = buffer.put(" \(label) ", row: 0, column: column, style: style)
            hits.append(HitRegion(row: 0, columns: start..<column, target: .tab(dialog.id)))
            column = buffer.put("│", row: 0, column: column, style: Styles.bar)
            if column >= buffer.width { break }
        }
    }

    private func drawContacts(_ model: ScreenModel, _ buffer: inout ScreenBuffer, _ hits: inout [HitRegion],
                              top: Int, bottom: Int, width: Int) {
        let online = model.contacts.filter { $0.relation == .accepted && $0.online }.count
        buffer.put(TextWidth.prefix(of: "Contacts \(online)/\(model.contacts.count) online", fitting: width),
                   row: top, column: 0, style: Styles.heading)
        let firstRow = top + 1
        let rows = bottom - firstRow
        guard rows > 0 else { return }
        if model.contacts.isEmpty {
            buffer.put("(no contacts)", row: firstRow, column: 1, style: Styles.help, limit: width)
            buffer.put("press + to add", row: firstRow + 1, column: 1, style: Styles.help, limit: width)
            return
        }
        let selectedIndex = model.selectedContact.flatMap { id in model.contacts.firstIndex { $0.userID == id } } ?? 0
        let offset = max(0, selectedIndex - rows + 1)
        for (i, contact) in model.contacts.enumerated().dropFirst(offset).prefix(rows) {
            let row = firstRow + i - offset
            var style: CellStyle
            let marker: String
            var suffix = ""
            switch contact.relation {
            case .accepted:
                style = contact.online ? Styles.online : Styles.offline
                marker = contact.online ? "●" : "○"
            case .incomingRequest:
                style = Styles.request
                marker = "?"
                suffix = " (a: accept)"
            case .outgoingRequest, .removed:
                style = Styles.asked
                marker = "…"
                suffix = " (asked)"
            }
            if let unread = model.dialog(.chat(contact.userID))?.unread, unread > 0 { suffix = " (\(unread))" + suffix }
            if contact.userID == model.selectedContact {
                if model.focus == .contacts && model.prompt == nil { style.reverse = true } else { style.underline = true }
                buffer.fill(row: row, from: 0, to: width, style: style)
            }
            let nameRoom = width - 2 - TextWidth.width(of: suffix)
            let name = TextWidth.width(of: contact.name) > nameRoom
                ? TextWidth.prefix(of: contact.name, fitting: max(1, nameRoom - 1)) + "…" : contact.name
            buffer.put(marker + " " + name + suffix, row: row, column: 0, style: style, limit: width)
            hits.append(HitRegion(row: row, columns: 0..<width, target: .contact(contact.userID)))
        }
    }

    /// Returns the largest useful scroll offset.
    private func drawDialog(_ model: ScreenModel, _ buffer: inout ScreenBuffer, _ hits: inout [HitRegion],
                            top: Int, bottom: Int, left: Int, right: Int) -> Int {
        let x = left + 1
        let width = right - x
        for row in top..<bottom { hits.append(HitRegion(row: row, columns: left..<right, target: .messages)) }
        if model.showHelp {
            for (i, line) in ScreenModel.helpText.enumerated() where top + i < bottom {
                buffer.put(line, row: top + i, column: x, style: i == 0 ? Styles.heading : .plain, limit: right)
            }
            return 0
        }
        guard let id = model.activeDialog, let dialog = model.dialog(id) else {
            buffer.put("Select a contact: Enter or a double-click opens a dialog.", row: top + 1, column: x, style: Styles.help, limit: right)
            buffer.put("F1 or ? shows the keys.", row: top + 2, column: x, style: Styles.help, limit: right)
            return 0
        }
        var row = top
        var lines: [[(String, CellStyle)]] = []
        switch id {
        case .chat(let user):
            let contact = model.contact(user)
            let name = model.title(of: id)
            var header: [(String, CellStyle)] = [("Chat with ", Styles.heading)]
            let isOnline = contact?.online ?? false
            header.append((name, isOnline ? Styles.online : Styles.offline))
            header.append((isOnline ? "  online" : "  offline", isOnline ? Styles.online : Styles.offline))
            draw(header, &buffer, row: row, column: x, limit: right)
            row += 1
            if let notice = dialog.notice {
                buffer.put(notice, row: row, column: x, style: Styles.notice, limit: right)
                row += 1
            }
            for line in dialog.lines.reversed() {
                lines.append(contentsOf: messageRows(line, contactName: name, width: width))
            }
            if dialog.lines.isEmpty {
                lines.append([("No messages yet: type below and press Enter.", Styles.help)])
            }
        case .mail:
            buffer.put("Offline messages received at login, by sender", row: row, column: x, style: Styles.heading, limit: right)
            row += 1
            for group in model.mailGroups {
                let count = group.items.count
                lines.append([("From ", Styles.heading), (group.senderName, Styles.online),
                              (" (\(count) message\(count == 1 ? "" : "s")):", Styles.heading)])
                for item in group.items {
                    let prefix = "  [\(formatTime(item.atMs))] "
                    let wrapped = TextWidth.wrap(item.text, cells: max(1, width - TextWidth.width(of: prefix)))
                    for (i, part) in wrapped.enumerated() {
                        lines.append(i == 0 ? [(prefix, Styles.time), (part, .plain)]
                                            : [(String(repeating: " ", count: TextWidth.width(of: prefix)), .plain), (part, .plain)])
                    }
                }
            }
            if model.mailGroups.isEmpty { lines.append([("No offline messages.", Styles.help)]) }
        }
        let available = max(0, bottom - row)
        let maxScroll = max(0, lines.count - available)
        let scroll = min(dialog.scroll, maxScroll)
        for line in lines.dropFirst(scroll).prefix(available) {
            draw(line, &buffer, row: row, column: x, limit: right)
            row += 1
        }
        return maxScroll
    }

    private func messageRows(_ line: ChatLine, contactName: String, width: Int) -> [[(String, CellStyle)]] {
        var prefix: [(String, CellStyle)] = [("[\(formatTime(line.atMs))] ", Styles.time)]
        if line.outgoing {
            switch line.mark {
            case .sending: prefix.append(("… ", Styles.help))
            case .delivered: prefix.append(("✓ ", Styles.online))
            case .storedOffline: prefix.append(("✉ ", Styles.notice))
            case .failed: prefix.append(("✗ ", Styles.error))
            case .received: break
            }
            prefix.append(("you", Styles.me))
            if line.offline { prefix.append((" (offline)", Styles.notice)) }
            prefix.append((": ", .plain))
        } else {
            prefix.append((contactName, Styles.online))
            prefix.append((": ", .plain))
        }
        var text = line.text
        if case .failed(let reason) = line.mark { text += "  (not sent: \(reason))" }
        let prefixWidth = prefix.reduce(0) { $0 + TextWidth.width(of: $1.0) }
        let indent = prefixWidth <= width / 2 ? prefixWidth : 2
        let firstWidth = max(1, width - prefixWidth)
        let first = TextWidth.wrap(text, cells: firstWidth)
        var rows: [[(String, CellStyle)]] = []
        let textStyle: CellStyle = { if case .failed = line.mark { return Styles.error } else { return .plain } }()
        guard let head = first.first else { return [prefix] }
        rows.append(prefix + [(head, textStyle)])
        let rest = first.dropFirst().joined(separator: " ")
        if !rest.isEmpty {
            for part in TextWidth.wrap(rest, cells: max(1, width - indent)) {
                rows.append([(String(repeating: " ", count: indent), .plain), (part, textStyle)])
            }
        }
        return rows
    }

    private func draw(_ segments: [(String, CellStyle)], _ buffer: inout ScreenBuffer, row: Int, column: Int, limit: Int) {
        var c = column
        for (text, style) in segments { c = buffer.put(text, row: row, column: c, style: style, limit: limit) }
    }

    private func drawInput(_ model: ScreenModel, _ buffer: inout ScreenBuffer, _ hits: inout [HitRegion],
                           row: Int) -> (row: Int, column: Int)? {
        let width = buffer.width
        let button = "[Send]"
        let buttonStart = width - TextWidth.width(of: button)
        let label: String
        var labelStyle = Styles.me
        switch model.prompt {
        case .addContact: label = "Add contact: "
        case .confirmRemove(let name):
            buffer.put("Remove \(name) from your contacts? (y/n) ", row: row, column: 0, style: Styles.notice)
            return nil
        case nil:
            if case .chat(let user)? = model.activeDialog {
                let online = model.contact(user)?.online ?? false
                label = online ? "> " : "offline> "
                if !online { labelStyle = Styles.notice }
            } else {
                let hint = model.activeDialog == .mail ? "(offline messages: select a contact to reply)" : "(no dialog open)"
                buffer.put(hint, row: row, column: 0, style: Styles.help, limit: buttonStart - 1)
                hits.append(HitRegion(row: row, columns: 0..<buttonStart, target: .input))
                return nil
            }
        }
        var column = buffer.put(label, row: row, column: 0, style: labelStyle)
        let room = max(1, buttonStart - 1 - column)
        // Show the part of the input around the cursor.
        let characters = Array(model.input)
        let cursor = min(model.cursor, characters.count)
        var start = 0
        var widthToCursor = characters[0..<cursor].reduce(0) { $0 + TextWidth.width(of: $1) }
        while widthToCursor >= room && start < cursor {
            widthToCursor -= TextWidth.width(of: characters[start])
            start += 1
        }
        let cursorColumn = column + widthToCursor
        for character in characters[start...] {
            let w = TextWidth.width(of: character)
            if column + w > buttonStart - 1 { break }
            column += buffer.set(row: row, column: column, character: character, style: .plain, limit: buttonStart - 1)
        }
        hits.append(HitRegion(row: row, columns: 0..<buttonStart, target: .input))
        if model.prompt == nil {
            buffer.put(button, row: row, column: buttonStart, style: Styles.button)
            hits.append(HitRegion(row: row, columns: buttonStart..<width, target: .sendButton))
        }
        return model.focus == .input || model.prompt != nil ? (row, cursorColumn) : nil
    }

    private func drawStatus(_ model: ScreenModel, _ buffer: inout ScreenBuffer, row: Int) {
        buffer.fill(row: row, style: Styles.bar)
        let state: String
        var style = Styles.bar
        switch model.connection {
        case .online:
            state = " ● online as \(model.me) at \(model.server) "
            style = CellStyle(foreground: .green, bold: true, reverse: true)
        case .connecting(let attempt):
            state = attempt > 1 ? " ○ connecting to \(model.server) (attempt \(attempt))… " : " ○ connecting to \(model.server)… "
            style = CellStyle(foreground: .yellow, bold: true, reverse: true)
        case .waitingToReconnect(let reason, let retryAt, _):
            let now = nowMs()
            let seconds = retryAt > now ? (retryAt - now + 999) / 1000 : 0
            state = " ○ offline: \(reason); retrying in \(seconds)s "
            style = CellStyle(foreground: .red, bold: true, reverse: true)
        case .stopped(let reason):
            state = " ✗ disconnected: \(reason) "
            style = CellStyle(foreground: .red, bold: true, reverse: true)
        }
        var column = buffer.put(state, row: row, column: 0, style: style)
        if let flash = model.flash {
            column = buffer.put("│ " + flash, row: row, column: column, style: Styles.bar)
        }
        let pending = model.outbox.count
        if pending > 0 && model.connection != .online {
            let text = " \(pending) unsent "
            let start = buffer.width - TextWidth.width(of: text)
            if start > column { buffer.put(text, row: row, column: start, style: Styles.bar) }
        }
    }
}
