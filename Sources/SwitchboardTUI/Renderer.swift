// Draws a ScreenModel into a ScreenBuffer. Layout (80x24 and larger):
//   row 0         title and dialog tabs (click a tab to switch)
//   rows 1..h-4   contacts on the left | the active dialog on the right, newest message on top
//   row h-3       key help for the current focus
//   row h-2       input line with a clickable [Send] button
//   row h-1       status line: connection state and the latest notice
// The pane with the keyboard focus has its heading highlighted (contacts: the "Contacts" row;
// dialog and input: the dialog's header and the input prompt). While not connected, contacts and
// the dialog header are grey and say so. A dialog longer than its pane keeps its last row for a
// "more" marker (newer above / older below, with PgUp/PgDn). Text wraps at spaces; only a word
// longer than a whole row is cut. The input line, key help and status line parts are in
// RendererLines.swift; every text they draw is fitted to the width at word boundaries.
import SwitchboardProtocol

public struct RenderedFrame: Sendable {
    public var buffer: ScreenBuffer
    public var hits: [HitRegion]
    /// Where the terminal cursor goes (row, column), or nil to hide it.
    public var cursor: (row: Int, column: Int)?
    /// The most the active dialog can scroll.
    public var maxScroll: Int
    /// Rows of messages one page of the active dialog shows.
    public var pageRows: Int = 1
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
        /// The heading of the pane that has the keyboard focus.
        public static let focused = CellStyle(foreground: .cyan, bold: true, reverse: true)
        public static let more = CellStyle(foreground: .cyan, bold: true)
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
        let (maxScroll, pageRows) = drawDialog(model, &buffer, &hits, top: bodyTop, bottom: bodyBottom, left: left + 1, right: width)
        buffer.put(TextWidth.fitItems(model.keyHelp, cells: width), row: height - 3, column: 0, style: Styles.help)
        let cursor = drawInput(model, &buffer, &hits, row: height - 2)
        drawStatus(model, &buffer, row: height - 1)
        return RenderedFrame(buffer: buffer, hits: hits, cursor: cursor, maxScroll: maxScroll, pageRows: pageRows)
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
        let connected = model.isConnected
        let online = model.contacts.filter { $0.relation == .accepted && $0.online }.count
        let focused = model.focus == .contacts && model.prompt == nil
        let heading = connected ? "Contacts \(online)/\(model.contacts.count) online" : "Contacts (offline)"
        if focused { buffer.fill(row: top, from: 0, to: width, style: Styles.focused) }
        buffer.put(TextWidth.fit(heading, cells: width), row: top, column: 0,
                   style: focused ? Styles.focused : (connected ? Styles.heading : Styles.offline))
        let firstRow = top + 1
        let rows = bottom - firstRow
        guard rows > 0 else { return }
        if model.contacts.isEmpty {
            buffer.put(TextWidth.fit("(no contacts)", cells: width - 1), row: firstRow, column: 1, style: Styles.help, limit: width)
            buffer.put(TextWidth.fit("press + to add", cells: width - 1), row: firstRow + 1, column: 1, style: Styles.help, limit: width)
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
                // Presence is unknown while disconnected: everyone is drawn offline.
                let online = contact.online && connected
                style = online ? Styles.online : Styles.offline
                marker = online ? "●" : "○"
            case .incomingRequest:
                style = Styles.request
                marker = "?"
                suffix = " (a: accept)"
            case .outgoingRequest, .removed:
                style = Styles.asked
                marker = "…"
                suffix = " (asked)"
            }
            if !connected && contact.relation != .accepted { style = Styles.asked }
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

    /// Returns the largest useful scroll offset and the rows of a page.
    private func drawDialog(_ model: ScreenModel, _ buffer: inout ScreenBuffer, _ hits: inout [HitRegion],
                            top: Int, bottom: Int, left: Int, right: Int) -> (Int, Int) {
        let x = left + 1
        let width = right - x
        for row in top..<bottom { hits.append(HitRegion(row: row, columns: left..<right, target: .messages)) }
        if model.showHelp {
            // Narrow panes wrap each help line at spaces, continuation rows indented.
            var row = top
            for (i, line) in ScreenModel.helpText.enumerated() {
                let parts = TextWidth.wrap(line, cells: max(1, width - 4), firstCells: width)
                for (j, part) in parts.enumerated() where row < bottom {
                    let text = j == 0 ? part : "    " + part.drop { $0 == " " }
                    buffer.put(text, row: row, column: x, style: i == 0 ? Styles.heading : .plain, limit: right)
                    row += 1
                }
            }
            return (0, 1)
        }
        guard let id = model.activeDialog, let dialog = model.dialog(id) else {
            buffer.put("Select a contact: Enter or a double-click opens a dialog.", row: top + 1, column: x, style: Styles.help, limit: right)
            buffer.put("F1 or ? shows the keys.", row: top + 2, column: x, style: Styles.help, limit: right)
            return (0, 1)
        }
        let focused = model.focus == .input && model.prompt == nil
        if focused { buffer.fill(row: top, from: x, to: right, style: Styles.focused) }
        var row = top
        var lines: [[(String, CellStyle)]] = []
        // The row where each message (each mail row) starts, and messages not wrapped at all because
        // they lie beyond what this frame can show: a long history costs only the rows drawn.
        var starts: [Int] = []
        var notWrapped = 0
        switch id {
        case .chat(let user):
            let contact = model.contact(user)
            let name = model.title(of: id)
            let isOnline = (contact?.online ?? false) && model.isConnected
            let state = contact == nil ? "  (not a contact)" : !model.isConnected ? "  (disconnected)" : isOnline ? "  online" : "  offline"
            // Narrow panes drop "Chat with " before shortening the name; the state is always whole.
            let intro = TextWidth.width(of: "Chat with " + name + state) <= width ? "Chat with " : ""
            let shownName = TextWidth.fit(name, cells: max(1, width - TextWidth.width(of: intro + state)))
            var header: [(String, CellStyle)] = [(intro, focused ? Styles.focused : Styles.heading)]
            var nameStyle = isOnline ? Styles.online : Styles.offline
            if focused { nameStyle.reverse = true }
            header.append((shownName, nameStyle))
            header.append((TextWidth.width(of: shownName + state) <= width ? state : "", nameStyle))
            draw(header, &buffer, row: row, column: x, limit: right)
            row += 1
            if let notice = dialog.notice {
                for part in TextWidth.wrap(notice, cells: max(1, width)).prefix(3) where row < bottom - 1 {
                    buffer.put(part, row: row, column: x, style: Styles.notice, limit: right)
                    row += 1
                }
            }
            let needed = dialog.scroll + max(0, bottom - row) + 1
            for (i, line) in dialog.lines.reversed().enumerated() {
                if lines.count >= needed { notWrapped = dialog.lines.count - i; break }
                starts.append(lines.count)
                lines.append(contentsOf: messageRows(line, contactName: name, width: width))
            }
            if dialog.lines.isEmpty {
                lines.append([("No messages yet: type below and press Enter.", Styles.help)])
            }
        case .mail:
            buffer.put(TextWidth.fit("Offline messages received at login, by sender", cells: width), row: row, column: x,
                       style: focused ? Styles.focused : Styles.heading, limit: right)
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
        if starts.isEmpty { starts = Array(lines.indices) }
        let available = max(0, bottom - row)
        guard lines.count > available || notWrapped > 0 else {
            for line in lines { draw(line, &buffer, row: row, column: x, limit: right); row += 1 }
            return (0, max(1, available))
        }
        // Longer than the pane: the last row is the "more" marker.
        let content = max(1, available - 1)
        // With messages left unwrapped there is more below than this frame knows: no upper clamp yet.
        let maxScroll = notWrapped > 0 ? Int.max / 2 : max(0, lines.count - content)
        let scroll = min(dialog.scroll, maxScroll)
        for line in lines.dropFirst(scroll).prefix(content) {
            draw(line, &buffer, row: row, column: x, limit: right)
            row += 1
        }
        // Counted in messages: those starting above the page, and those starting below it.
        let newer = starts.filter { $0 < scroll }.count
        let older = starts.filter { $0 >= scroll + content }.count + notWrapped
        var parts: [String] = []
        if newer > 0 { parts.append("▲ \(newer) newer (PgUp)") }
        if older > 0 { parts.append("▼ \(older) more (PgDn)") }
        buffer.put(TextWidth.fitItems(parts.joined(separator: "  "), cells: width), row: bottom - 1, column: x,
                   style: Styles.more, limit: right)
        return (maxScroll, content)
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
        let firstWidth = max(0, width - prefixWidth)
        // Word boundaries: a word that does not fit after the prefix starts on the next row.
        let wrapped = TextWidth.wrap(text, cells: max(1, width - indent), firstCells: firstWidth)
        var rows: [[(String, CellStyle)]] = []
        let textStyle: CellStyle = { if case .failed = line.mark { return Styles.error } else { return .plain } }()
        guard let head = wrapped.first else { return [prefix] }
        rows.append(prefix + [(head, textStyle)])
        for part in wrapped.dropFirst() {
            rows.append([(String(repeating: " ", count: indent), .plain), (part, textStyle)])
        }
        return rows
    }

    private func draw(_ segments: [(String, CellStyle)], _ buffer: inout ScreenBuffer, row: Int, column: Int, limit: Int) {
        var c = column
        for (text, style) in segments { c = buffer.put(text, row: row, column: c, style: style, limit: limit) }
    }
}
