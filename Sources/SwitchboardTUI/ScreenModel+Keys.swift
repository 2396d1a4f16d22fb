// Keys and mouse clicks for the ScreenModel: what each does in the contact list, the input line
// and the prompts, and the key help. Invariants: a key that works everywhere (quit, help, dialogs,
// paging, reconnect) is handled before the focused pane sees it; a prompt takes every other key.

extension ScreenModel {
    public var keyHelp: String {
        if case .confirmQuit = prompt { return "y or Enter: quit  any other key: stay" }
        if prompt != nil { return "Enter confirm  Esc cancel" }
        if connection != .online, case .stopped = connection {
            return "^R reconnect  Tab switch  ^N/^P dialog  F1 help  ^C quit"
        }
        switch focus {
        case .contacts:
            return "↑↓ Enter open  a accept  + add  - remove  Tab type  ^N^P dialog  ? help  ^C quit"
        case .input:
            return "Enter send  Tab list  ^N/^P dialog  ^W close  PgUp/PgDn page  F1 help  ^C quit"
        }
    }

    public static let helpText: [String] = [
        "Keys",
        "  ↑/↓ Enter      open the selected contact's dialog",
        "  double-click   open a contact's dialog",
        "  a              accept the selected contact request",
        "  +              add a contact (asks for the name)",
        "  - / Delete     remove the selected contact",
        "  Tab            switch between the list and typing",
        "  Enter, [Send]  send the typed message",
        "  ^N / ^P        next / previous dialog (or click a tab)",
        "  ^W             close the dialog",
        "  PgUp / PgDn    a page newer / older (newest on top)",
        "  ^R or F5       reconnect now (when disconnected)",
        "  F1 or ?        show or hide this help",
        "  ^C or q        quit (asks if messages are unsent)",
        "",
        "Marks: … sending ✓ delivered ✉ stored offline ✗ not sent",
        "Online contacts are in colour, offline ones grey.",
    ]

    // MARK: input

    public mutating func handle(_ event: InputEvent, hits: [HitRegion] = [], nowMs: UInt64 = 0) -> [Effect] {
        switch event {
        case .key(let key): return handle(key: key, nowMs: nowMs)
        case .mouse(let mouse): return handle(mouse: mouse, hits: hits, nowMs: nowMs)
        case .paste(let paste): insertPaste(paste); return []
        }
    }

    mutating func handle(key: Key, nowMs: UInt64) -> [Effect] {
        if case .confirmQuit = prompt {
            prompt = nil
            if key == .char("y") || key == .char("Y") || key == .enter || key == .ctrl("c") || key == .ctrl("q") {
                return [.quit]
            }
            flash = "not quitting"
            return []
        }
        // Keys that work everywhere.
        switch key {
        case .ctrl("c"), .ctrl("q"): return requestQuit()
        case .function(1): showHelp.toggle(); return []
        case .ctrl("n"): cycleDialog(by: 1); return []
        case .ctrl("p"): cycleDialog(by: -1); return []
        case .ctrl("w"): closeActiveDialog(); return []
        case .ctrl("l"): return []
        case .ctrl("r"), .function(5): return requestReconnect()
        case .pageUp: scrollActive(by: -max(1, pageRows - 1)); return []
        case .pageDown: scrollActive(by: max(1, pageRows - 1)); return []
        default: break
        }
        if let prompt { return handlePrompt(prompt, key: key) }
        if key == .escape && showHelp { showHelp = false; return [] }
        switch focus {
        case .contacts: return handleContactsKey(key)
        case .input: return handleInputKey(key, nowMs: nowMs)
        }
    }

    mutating func handlePrompt(_ current: Prompt, key: Key) -> [Effect] {
        switch current {
        case .confirmQuit:
            prompt = nil  // answered in handle(key:)
            return []
        case .confirmRemove(let name):
            prompt = nil
            if key == .char("y") || key == .char("Y") || key == .enter { return [.removeContact(name)] }
            flash = "kept \(name)"
            return []
        case .addContact:
            switch key {
            case .escape:
                prompt = nil; input = ""; cursor = 0
                return []
            case .enter:
                let name = input.trimmingSpaces()
                prompt = nil; input = ""; cursor = 0
                return name.isEmpty ? [] : [.addContact(name)]
            default:
                editInput(key)
                return []
            }
        }
    }

    mutating func handleContactsKey(_ key: Key) -> [Effect] {
        switch key {
        case .up: moveSelection(by: -1)
        case .down: moveSelection(by: 1)
        case .home: selectedContact = contacts.first?.userID
        case .end: selectedContact = contacts.last?.userID
        case .enter, .right:
            if let user = selectedContact { return openDialog(with: user) }
        case .tab, .backTab:
            focus = .input
        case .char("?"): showHelp.toggle()
        case .char("q"): return requestQuit()
        case .char("a"), .char("A"):
            guard let user = selectedContact, let c = contact(user) else { return [] }
            guard c.relation == .incomingRequest else { flash = "no request from \(c.name) to accept"; return [] }
            return [.acceptContact(c.name)]
        case .char("+"):
            prompt = .addContact
            input = ""
            cursor = 0
        case .char("-"), .delete:
            guard let user = selectedContact, let c = contact(user) else { return [] }
            prompt = .confirmRemove(name: c.name)
        case .char(let ch) where !TextWidth.isControl(ch):
            // Typing starts a message in the open dialog.
            if activeDialog != nil { focus = .input; editInput(key) }
        default: break
        }
        return []
    }

    mutating func handleInputKey(_ key: Key, nowMs: UInt64) -> [Effect] {
        switch key {
        case .enter: return sendInput(nowMs: nowMs)
        case .tab, .backTab, .escape: focus = .contacts
        default: editInput(key)
        }
        return []
    }

    mutating func editInput(_ key: Key) {
        cursor = min(cursor, input.count)
        switch key {
        case .char(let ch) where !TextWidth.isControl(ch):
            let at = input.index(input.startIndex, offsetBy: cursor)
            let before = input.count
            input.insert(ch, at: at)
            // A combining mark merges with the character before it.
            cursor += input.count - before
        case .backspace:
            guard cursor > 0 else { return }
            let at = input.index(input.startIndex, offsetBy: cursor - 1)
            input.remove(at: at)
            cursor -= 1
        case .delete:
            guard cursor < input.count else { return }
            input.remove(at: input.index(input.startIndex, offsetBy: cursor))
        case .left: cursor = max(0, cursor - 1)
        case .right: cursor = min(input.count, cursor + 1)
        case .home, .ctrl("a"): cursor = 0
        case .end, .ctrl("e"): cursor = input.count
        case .ctrl("u"): input.removeFirst(cursor); cursor = 0
        default: break
        }
    }

    mutating func handle(mouse: MouseEvent, hits: [HitRegion], nowMs: UInt64) -> [Effect] {
        guard mouse.kind == .press else { return [] }
        let target = hits.first { $0.row == mouse.row && $0.columns.contains(mouse.column) }?.target
        switch mouse.button {
        case .wheelUp: scrollActive(by: -3); return []
        case .wheelDown: scrollActive(by: 3); return []
        case .left: break
        default: return []
        }
        guard let target else { return [] }
        switch target {
        case .contact(let user):
            selectedContact = user
            if mouse.clicks >= 2 { return openDialog(with: user) }
            focus = .contacts
        case .tab(let id):
            activate(id)
        case .sendButton:
            focus = .input
            return sendInput(nowMs: nowMs)
        case .input:
            if activeDialog != nil || prompt != nil { focus = .input }
        case .messages:
            break
        }
        return []
    }

    mutating func moveSelection(by step: Int) {
        guard !contacts.isEmpty else { return }
        let current = selectedContact.flatMap { id in contacts.firstIndex { $0.userID == id } } ?? (step > 0 ? -1 : contacts.count)
        let next = min(max(current + step, 0), contacts.count - 1)
        selectedContact = contacts[next].userID
    }

    mutating func scrollActive(by rows: Int) {
        guard let id = activeDialog, let index = dialogs.firstIndex(where: { $0.id == id }) else { return }
        dialogs[index].scroll = max(0, dialogs[index].scroll + rows)
    }
}
