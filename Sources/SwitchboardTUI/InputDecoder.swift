// Terminal input bytes to key and mouse events. Escape sequences may arrive split across reads:
// an incomplete one is kept until more bytes come; a lone ESC becomes the Escape key only when
// the caller says the input went quiet (`flush`). Mouse reports are SGR (`ESC [ < b ; x ; y M/m`,
// 1-based) or legacy X10 (`ESC [ M b x y`); left presses at the same place within
// `doubleClickMs` count as a double click. A bracketed paste (`ESC [ 200 ~` ... `ESC [ 201 ~`,
// mode ?2004) becomes one `.paste` event with its text, however many reads it spans.
// Invariants: every input byte is looked at a bounded number of times (a paste's bytes once, plus
// at most five kept for an end marker split across reads), so a paste of N bytes costs O(N); a
// paste keeps at most `maxPasteBytes` bytes (the rest are counted in `droppedBytes`); a paste whose
// end marker never comes ends when the input has been quiet for `pasteQuietMs`.

public enum Key: Equatable, Sendable {
    case char(Character)
    case enter, tab, backTab, backspace, delete, escape, insert
    case up, down, left, right, home, end, pageUp, pageDown
    case function(Int)
    /// Ctrl plus a letter (lowercase), other than the ones with their own case (Tab = Ctrl-I, Enter = Ctrl-M).
    case ctrl(Character)
    case alt(Character)
    /// Ctrl-Left / Ctrl-Right and other modified cursor keys.
    case ctrlLeft, ctrlRight
}

public struct MouseEvent: Equatable, Sendable {
    public enum Button: Equatable, Sendable { case left, middle, right, wheelUp, wheelDown, other(Int) }
    public enum Kind: Equatable, Sendable { case press, release, drag }
    public var button: Button
    public var kind: Kind
    /// 0-based cell coordinates.
    public var column: Int
    public var row: Int
    /// 1 for a single click, 2 for a double click (3 for a triple ...). Presses only.
    public var clicks: Int
    public init(button: Button, kind: Kind, column: Int, row: Int, clicks: Int = 1) {
        self.button = button; self.kind = kind; self.column = column; self.row = row; self.clicks = clicks
    }
}

public struct Paste: Equatable, Sendable {
    /// The pasted text as the terminal sent it (invalid UTF-8 replaced by U+FFFD).
    public var text: String
    /// Bytes beyond `InputDecoder.maxPasteBytes` that were not kept.
    public var droppedBytes: Int
    public init(text: String, droppedBytes: Int = 0) { self.text = text; self.droppedBytes = droppedBytes }
    /// The size of the whole paste in bytes.
    public var byteCount: Int { text.utf8.count + droppedBytes }
}

public enum InputEvent: Equatable, Sendable {
    case key(Key)
    case mouse(MouseEvent)
    case paste(Paste)
}

public struct InputDecoder: Sendable {
    public var doubleClickMs: UInt64 = 400
    /// The most of one paste that is kept (far above any message size: the model refuses it with a
    /// clear message); bytes beyond are only counted.
    public var maxPasteBytes = 4 << 20
    /// A paste whose end marker has not come after this much quiet is taken as ended.
    public var pasteQuietMs: UInt64 = 1000
    private var pending: [UInt8] = []
    private var lastPress: (column: Int, row: Int, atMs: UInt64, clicks: Int)?
    /// Inside a bracketed paste: the bytes so far.
    private var pasting = false
    private var pasteBytes: [UInt8] = []
    private var pasteDropped = 0
    private var lastInputMs: UInt64 = 0

    public init() {}

    /// True while an incomplete sequence (or a lone ESC, or an unfinished paste) waits for more bytes.
    public var hasPending: Bool { !pending.isEmpty || pasting }

    private static let pasteEnd: [UInt8] = [0x1B, 0x5B, 0x32, 0x30, 0x31, 0x7E]  // ESC [ 2 0 1 ~

    public mutating func feed(_ bytes: some Sequence<UInt8>, nowMs: UInt64 = 0) -> [InputEvent] {
        pending.append(contentsOf: bytes)
        lastInputMs = nowMs
        var events: [InputEvent] = []
        var index = 0
        while index < pending.count {
            if pasting {
                if let end = Self.find(Self.pasteEnd, in: pending, from: index) {
                    keepPasted(pending[index..<end])
                    index = end + Self.pasteEnd.count
                    events.append(.paste(finishPaste()))
                    continue
                }
                // Keep what could be the start of a split end marker.
                let keep = min(Self.pasteEnd.count - 1, pending.count - index)
                keepPasted(pending[index..<(pending.count - keep)])
                pending.removeFirst(pending.count - keep)
                return events
            }
            switch decodeOne(at: index, final: false, nowMs: nowMs) {
            case .event(let event, let used):
                if let event { events.append(event) }
                index += used
            case .incomplete:
                pending.removeFirst(index)
                return events
            }
        }
        pending.removeAll(keepingCapacity: true)
        return events
    }

    /// The input went quiet: whatever is pending is taken as it stands (a lone ESC is Escape). An
    /// unfinished paste ends only after `pasteQuietMs` of quiet.
    public mutating func flush(nowMs: UInt64 = 0) -> [InputEvent] {
        var events: [InputEvent] = []
        if pasting {
            guard nowMs >= lastInputMs + pasteQuietMs else { return [] }
            keepPasted(pending[...])
            pending.removeAll(keepingCapacity: true)
            return [.paste(finishPaste())]
        }
        var index = 0
        while index < pending.count {
            if pasting {
                // A paste started in these last bytes: the rest is its text.
                keepPasted(pending[index...])
                pending.removeAll(keepingCapacity: true)
                return events
            }
            if case .event(let event, let used) = decodeOne(at: index, final: true, nowMs: nowMs) {
                if let event { events.append(event) }
                index += max(1, used)
            } else {
                index += 1
            }
        }
        pending.removeAll(keepingCapacity: true)
        return events
    }

    private enum Step { case event(InputEvent?, Int), incomplete }

    private mutating func keepPasted(_ bytes: ArraySlice<UInt8>) {
        let room = max(0, maxPasteBytes - pasteBytes.count)
        pasteBytes.append(contentsOf: bytes.prefix(room))
        pasteDropped += max(0, bytes.count - room)
    }

    private mutating func finishPaste() -> Paste {
        let paste = Paste(text: String(decoding: pasteBytes, as: UTF8.self), droppedBytes: pasteDropped)
        pasting = false
        pasteBytes = []
        pasteDropped = 0
        return paste
    }

    /// The first index of `needle` in `haystack` at or after `from`.
    private static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
        guard haystack.count - from >= needle.count else { return nil }
        var i = from
        let last = haystack.count - needle.count
        while i <= last {
            if haystack[i] == needle[0] {
                var j = 1
                while j < needle.count && haystack[i + j] == needle[j] { j += 1 }
                if j == needle.count { return i }
            }
            i += 1
        }
        return nil
    }

    private mutating func decodeOne(at start: Int, final: Bool, nowMs: UInt64) -> Step {
        let b = pending[start]
        switch b {
        case 0x1B:
            return decodeEscape(at: start, final: final, nowMs: nowMs)
        case 0x0D, 0x0A: return .event(.key(.enter), 1)
        case 0x09: return .event(.key(.tab), 1)
        case 0x7F, 0x08: return .event(.key(.backspace), 1)
        case 0x00: return .event(.key(.ctrl(" ")), 1)
        case 0x01...0x1A: return .event(.key(.ctrl(Character(Unicode.Scalar(b + 0x60)))), 1)
        case 0x1C...0x1F: return .event(nil, 1)
        case 0x20...0x7E: return .event(.key(.char(Character(Unicode.Scalar(b)))), 1)
        default:
            return decodeUTF8(at: start, final: final)
        }
    }

    private func decodeUTF8(at start: Int, final: Bool) -> Step {
        let b = pending[start]
        let length: Int
        switch b {
        case 0xC2...0xDF: length = 2
        case 0xE0...0xEF: length = 3
        case 0xF0...0xF4: length = 4
        default: return .event(.key(.char("\u{FFFD}")), 1)
        }
        var value = UInt32(b) & (length == 2 ? 0x1F : length == 3 ? 0x0F : 0x07)
        for offset in 1..<length {
            guard start + offset < pending.count else {
                return final ? .event(.key(.char("\u{FFFD}")), offset) : .incomplete
            }
            let next = pending[start + offset]
            guard next & 0xC0 == 0x80 else { return .event(.key(.char("\u{FFFD}")), offset) }
            value = value << 6 | UInt32(next & 0x3F)
        }
        guard let scalar = Unicode.Scalar(value), value >= [0, 0, 0x80, 0x800, 0x10000][length] else {
            return .event(.key(.char("\u{FFFD}")), length)
        }
        return .event(.key(.char(Character(scalar))), length)
    }

    private mutating func decodeEscape(at start: Int, final: Bool, nowMs: UInt64) -> Step {
        guard start + 1 < pending.count else { return final ? .event(.key(.escape), 1) : .incomplete }
        let second = pending[start + 1]
        switch second {
        case UInt8(ascii: "["):
            return decodeCSI(at: start, final: final, nowMs: nowMs)
        case UInt8(ascii: "O"):
            guard start + 2 < pending.count else { return final ? .event(.key(.alt("O")), 2) : .incomplete }
            let key: Key?
            switch pending[start + 2] {
            case UInt8(ascii: "A"): key = .up
            case UInt8(ascii: "B"): key = .down
            case UInt8(ascii: "C"): key = .right
            case UInt8(ascii: "D"): key = .left
            case UInt8(ascii: "H"): key = .home
            case UInt8(ascii: "F"): key = .end
            case UInt8(ascii: "M"): key = .enter
            case UInt8(ascii: "P"): key = .function(1)
            case UInt8(ascii: "Q"): key = .function(2)
            case UInt8(ascii: "R"): key = .function(3)
            case UInt8(ascii: "S"): key = .function(4)
            default: key = nil
            }
            return .event(key.map { .key($0) }, 3)
        case 0x1B:
            // ESC ESC: the first is a lone Escape.
            return .event(.key(.escape), 1)
        case 0x20...0x7E:
            return .event(.key(.alt(Character(Unicode.Scalar(second)))), 2)
        default:
            return .event(.key(.escape), 1)
        }
    }

    private mutating func decodeCSI(at start: Int, final: Bool, nowMs: UInt64) -> Step {
        var index = start + 2
        // Legacy X10 mouse: ESC [ M b x y (three raw bytes).
        if index < pending.count, pending[index] == UInt8(ascii: "M") {
            guard index + 3 < pending.count else { return final ? .event(nil, pending.count - start) : .incomplete }
            let b = Int(pending[index + 1]) - 32
            let x = Int(pending[index + 2]) - 33
            let y = Int(pending[index + 3]) - 33
            let release = b & 3 == 3
            return .event(mouse(code: b, column: x, row: y, released: release, nowMs: nowMs), index + 4 - start)
        }
        // Linux console F1-F5: ESC [ [ A..E
        if index < pending.count, pending[index] == UInt8(ascii: "[") {
            guard index + 1 < pending.count else { return final ? .event(nil, pending.count - start) : .incomplete }
            let f = Int(pending[index + 1]) - Int(UInt8(ascii: "A")) + 1
            return .event((1...5).contains(f) ? .key(.function(f)) : nil, index + 2 - start)
        }
        // Parameters and intermediates, then a final byte 0x40-0x7E.
        while index < pending.count, !(0x40...0x7E).contains(pending[index]) {
            guard (0x20...0x3F).contains(pending[index]) else {
                // Not a CSI after all: drop the introducer.
                return .event(nil, index - start)
            }
            index += 1
            if index - start > 64 { return .event(nil, index - start) }
        }
        guard index < pending.count else { return final ? .event(nil, pending.count - start) : .incomplete }
        let finalByte = pending[index]
        let paramBytes = pending[(start + 2)..<index]
        let used = index + 1 - start
        if paramBytes.first == UInt8(ascii: "<") {
            let numbers = parseNumbers(paramBytes.dropFirst())
            guard numbers.count == 3, finalByte == UInt8(ascii: "M") || finalByte == UInt8(ascii: "m") else { return .event(nil, used) }
            return .event(mouse(code: numbers[0], column: numbers[1] - 1, row: numbers[2] - 1,
                                released: finalByte == UInt8(ascii: "m"), nowMs: nowMs), used)
        }
        let numbers = parseNumbers(paramBytes)
        let modifier = numbers.count > 1 ? numbers[1] : 1
        let ctrl = modifier >= 5 && modifier <= 8
        let key: Key?
        switch finalByte {
        case UInt8(ascii: "A"): key = .up
        case UInt8(ascii: "B"): key = .down
        case UInt8(ascii: "C"): key = ctrl ? .ctrlRight : .right
        case UInt8(ascii: "D"): key = ctrl ? .ctrlLeft : .left
        case UInt8(ascii: "H"): key = .home
        case UInt8(ascii: "F"): key = .end
        case UInt8(ascii: "Z"): key = .backTab
        case UInt8(ascii: "P"): key = .function(1)
        case UInt8(ascii: "Q"): key = .function(2)
        case UInt8(ascii: "R"): key = .function(3)
        case UInt8(ascii: "S"): key = .function(4)
        case UInt8(ascii: "~"):
            switch numbers.first ?? 0 {
            case 1, 7: key = .home
            case 2: key = .insert
            case 3: key = .delete
            case 4, 8: key = .end
            case 5: key = .pageUp
            case 6: key = .pageDown
            case 200:
                // Bracketed paste starts: everything up to ESC [ 201 ~ is text.
                pasting = true
                pasteBytes = []
                pasteDropped = 0
                key = nil
            case 201: key = nil  // an end marker without a start
            case 11...15: key = .function(numbers[0] - 10)
            case 17...21: key = .function(numbers[0] - 11)
            case 23, 24: key = .function(numbers[0] - 12)
            default: key = nil
            }
        default: key = nil
        }
        return .event(key.map { .key($0) }, used)
    }

    private func parseNumbers(_ bytes: ArraySlice<UInt8>) -> [Int] {
        var numbers: [Int] = []
        var current = 0
        var any = false
        for b in bytes {
            if b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") {
                current = min(current * 10 + Int(b - UInt8(ascii: "0")), 1_000_000)
                any = true
            } else if b == UInt8(ascii: ";") {
                numbers.append(any ? current : 0)
                current = 0
                any = false
            }
        }
        if any || !numbers.isEmpty { numbers.append(current) }
        return numbers
    }

    private mutating func mouse(code: Int, column: Int, row: Int, released: Bool, nowMs: UInt64) -> InputEvent? {
        let base = code & ~(4 | 8 | 16 | 32)  // strip shift/meta/ctrl and motion
        let motion = code & 32 != 0
        let button: MouseEvent.Button
        switch base {
        case 0: button = .left
        case 1: button = .middle
        case 2: button = .right
        case 3: button = .left  // X10 release
        case 64: button = .wheelUp
        case 65: button = .wheelDown
        default: button = .other(base)
        }
        let kind: MouseEvent.Kind = released ? .release : (motion ? .drag : .press)
        var clicks = 1
        if kind == .press && button == .left {
            if let last = lastPress, last.row == row, abs(last.column - column) <= 1,
               nowMs >= last.atMs, nowMs - last.atMs <= doubleClickMs {
                clicks = last.clicks + 1
            }
            lastPress = (column, row, nowMs, clicks)
        } else if kind == .press {
            lastPress = nil
        }
        return .mouse(MouseEvent(button: button, kind: kind, column: max(0, column), row: max(0, row), clicks: clicks))
    }
}
