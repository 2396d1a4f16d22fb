// Display width of text in terminal cells: wide (East Asian wide/fullwidth, emoji presentation)
// characters take two cells, combining marks and format characters none, controls are never
// drawn (they are replaced, so text from the network cannot move the cursor or change colours).

public enum TextWidth {
    /// Cells one grapheme cluster takes: 0, 1 or 2.
    public static func width(of character: Character) -> Int {
        var result = 0
        var emoji = false
        var variationSelector16 = false
        for scalar in character.unicodeScalars {
            if scalar.value == 0xFE0F { variationSelector16 = true }
            if scalar.properties.isEmoji { emoji = true }
            result = max(result, width(of: scalar))
        }
        if emoji && variationSelector16 { result = 2 }
        return min(result, 2)
    }

    /// Cells one scalar takes when drawn alone.
    public static func width(of scalar: Unicode.Scalar) -> Int {
        let v = scalar.value
        if v < 0x20 || (v >= 0x7F && v < 0xA0) { return 0 }
        if v < 0x300 { return 1 }
        switch scalar.properties.generalCategory {
        case .nonspacingMark, .enclosingMark, .format: return 0
        default: break
        }
        if v >= 0x1160 && v <= 0x11FF { return 0 }  // Hangul jamo medial vowels and final consonants
        if scalar.properties.isEmojiPresentation { return 2 }
        return isWide(v) ? 2 : 1
    }

    /// Cells a string takes.
    public static func width(of text: some StringProtocol) -> Int {
        var total = 0
        for character in text { total += width(of: character) }
        return total
    }

    /// True for characters a terminal must not receive raw (C0, DEL, C1).
    public static func isControl(_ character: Character) -> Bool {
        character.unicodeScalars.contains { $0.value < 0x20 || ($0.value >= 0x7F && $0.value < 0xA0) }
    }

    /// Text from other users made safe to print on a terminal line by line: C0 controls in caret
    /// notation (ESC as ^[, BEL as ^G, a newline as ^J unless `keepNewlines`), DEL as ^?, C1
    /// controls (which some terminals obey like ESC sequences) as U+FFFD; tabs stay.
    public static func visible(_ text: String, keepNewlines: Bool = false) -> String {
        var out = ""
        out.unicodeScalars.reserveCapacity(text.unicodeScalars.count)
        for scalar in text.unicodeScalars {
            let v = scalar.value
            if scalar == "\t" || (keepNewlines && scalar == "\n") {
                out.unicodeScalars.append(scalar)
            } else if v < 0x20 {
                out += "^" + String(Unicode.Scalar(UInt8(v) + 0x40))
            } else if v == 0x7F {
                out += "^?"
            } else if v >= 0x80 && v < 0xA0 {
                out += "\u{FFFD}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// The longest prefix of `text` that fits in `cells`.
    public static func prefix(of text: String, fitting cells: Int) -> String {
        var used = 0
        var out = ""
        for character in text {
            let w = width(of: character)
            if used + w > cells { break }
            used += w
            out.append(character)
        }
        return out
    }

    /// `text` if it fits in `cells`; otherwise its longest prefix ending at a word boundary, followed by
    /// "…" (a single word longer than `cells` is cut inside, as nothing else fits). With `keepingEnd`,
    /// that suffix of `text` is always kept whole and the part before it is shortened.
    public static func fit(_ text: String, cells: Int, keepingEnd end: String? = nil) -> String {
        guard cells > 0 else { return "" }
        if width(of: text) <= cells { return text }
        if let end, text.hasSuffix(end), width(of: end) + 2 <= cells {
            let front = String(text.dropLast(end.count))
            return fit(front, cells: cells - width(of: end) - 1) + " " + end
        }
        var used = 0
        var out = ""
        var lastBreak: String.Index?
        for character in text {
            let w = width(of: character)
            if used + w + 1 > cells { break }
            if character == " " { lastBreak = out.endIndex }
            used += w
            out.append(character)
        }
        if let lastBreak {
            var cut = String(out[..<lastBreak])
            while cut.hasSuffix(" ") || cut.hasSuffix(":") || cut.hasSuffix(";") || cut.hasSuffix(",") || cut.hasSuffix("·") { cut.removeLast() }
            // Only punctuation before the first space: no whole word fits.
            return cut.isEmpty ? "…" : cut + "…"
        }
        return out + "…"
    }

    /// The items of `text` (separated by two spaces, as in the key help) that fit in `cells`, in order.
    public static func fitItems(_ text: String, cells: Int) -> String {
        if width(of: text) <= cells { return text }
        var out = ""
        for item in text.split(separator: "  ", omittingEmptySubsequences: true) {
            let next = out.isEmpty ? String(item) : out + "  " + item
            if width(of: next) > cells { break }
            out = next
        }
        return out
    }

    /// Breaks `text` into lines of at most `cells` cells at spaces (and at newlines). The first line
    /// may be narrower (`firstCells`, e.g. after a prefix): a word that does not fit there starts the
    /// second line instead, leaving the first empty. Only a word longer than `cells` is cut.
    public static func wrap(_ text: String, cells: Int, firstCells: Int? = nil) -> [String] {
        guard cells > 0 else { return [] }
        var lines: [String] = []
        var line = ""
        var lineWidth = 0
        var started = false  // the line holds at least one word (possibly empty, from repeated spaces)
        func limit() -> Int { lines.isEmpty ? min(cells, firstCells ?? cells) : cells }
        for paragraph in text.split(separator: "\n", omittingEmptySubsequences: false) {
            for piece in paragraph.split(separator: " ", omittingEmptySubsequences: false) {
                var word = String(piece)
                var w = width(of: word)
                while true {
                    let room = limit()
                    let needed = started ? lineWidth + 1 + w : w
                    if needed <= room {
                        if started { line += " " }
                        line += word
                        lineWidth = needed
                        started = true
                        break
                    }
                    if started || (lines.isEmpty && room < cells && w <= cells) {
                        // Next line (also: the first line is too narrow for a word the others can hold).
                        lines.append(line)
                        line = ""
                        lineWidth = 0
                        started = false
                        continue
                    }
                    // A word longer than a whole line: cut it.
                    var head = prefix(of: word, fitting: room)
                    if head.isEmpty { head = String(word.prefix(1)) }
                    lines.append(head)
                    word = String(word.dropFirst(head.count))
                    w = width(of: word)
                    if word.isEmpty { break }
                }
            }
            lines.append(line)
            line = ""
            lineWidth = 0
            started = false
        }
        return lines
    }

    private static func isWide(_ v: UInt32) -> Bool {
        switch v {
        case 0x1100...0x115F, 0x231A...0x231B, 0x2329...0x232A, 0x23E9...0x23EC, 0x23F0, 0x23F3,
             0x25FD...0x25FE, 0x2614...0x2615, 0x2648...0x2653, 0x267F, 0x2693, 0x26A1, 0x26AA...0x26AB,
             0x26BD...0x26BE, 0x26C4...0x26C5, 0x26CE, 0x26D4, 0x26EA, 0x26F2...0x26F3, 0x26F5, 0x26FA, 0x26FD,
             0x2705, 0x270A...0x270B, 0x2728, 0x274C, 0x274E, 0x2753...0x2755, 0x2757, 0x2795...0x2797,
             0x27B0, 0x27BF, 0x2B1B...0x2B1C, 0x2B50, 0x2B55,
             0x2E80...0x303E, 0x3041...0x33FF, 0x3400...0x4DBF, 0x4E00...0x9FFF, 0xA000...0xA4CF,
             0xA960...0xA97F, 0xAC00...0xD7A3, 0xF900...0xFAFF, 0xFE10...0xFE19, 0xFE30...0xFE6F,
             0xFF00...0xFF60, 0xFFE0...0xFFE6, 0x16FE0...0x16FE4, 0x17000...0x18AFF, 0x1B000...0x1B2FF,
             0x1F004, 0x1F0CF, 0x1F18E, 0x1F191...0x1F19A, 0x1F200...0x1F251, 0x1F300...0x1F320,
             0x1F32D...0x1F335, 0x1F337...0x1F37C, 0x1F37E...0x1F393, 0x1F3A0...0x1F3CA, 0x1F3CF...0x1F3D3,
             0x1F3E0...0x1F3F0, 0x1F3F4, 0x1F3F8...0x1F43E, 0x1F440, 0x1F442...0x1F4FC, 0x1F4FF...0x1F53D,
             0x1F54B...0x1F54E, 0x1F550...0x1F567, 0x1F57A, 0x1F595...0x1F596, 0x1F5A4, 0x1F5FB...0x1F64F,
             0x1F680...0x1F6C5, 0x1F6CC, 0x1F6D0...0x1F6D2, 0x1F6D5...0x1F6D7, 0x1F6EB...0x1F6EC,
             0x1F6F4...0x1F6FC, 0x1F7E0...0x1F7EB, 0x1F90C...0x1F93A, 0x1F93C...0x1F945, 0x1F947...0x1F9FF,
             0x1FA70...0x1FAFF, 0x20000...0x2FFFD, 0x30000...0x3FFFD:
            return true
        default:
            return false
        }
    }
}
