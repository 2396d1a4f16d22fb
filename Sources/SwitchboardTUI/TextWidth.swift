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

    /// Breaks `text` into lines of at most `cells` cells, at spaces where possible.
    public static func wrap(_ text: String, cells: Int) -> [String] {
        guard cells > 0 else { return [] }
        var lines: [String] = []
        for paragraph in text.split(separator: "\n", omittingEmptySubsequences: false) {
            var line = ""
            var lineWidth = 0
            var words = paragraph.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            var index = 0
            while index < words.count {
                let word = words[index]
                let w = width(of: word)
                let needed = lineWidth == 0 ? w : lineWidth + 1 + w
                if needed <= cells {
                    line += (lineWidth == 0 && line.isEmpty ? "" : " ") + word
                    lineWidth = needed
                    index += 1
                } else if lineWidth == 0 {
                    // A word longer than the line: cut it.
                    let head = prefix(of: word, fitting: cells)
                    let cut = head.isEmpty ? String(word.prefix(1)) : head
                    lines.append(cut)
                    words[index] = String(word.dropFirst(cut.count))
                    if words[index].isEmpty { index += 1 }
                } else {
                    lines.append(line)
                    line = ""
                    lineWidth = 0
                }
            }
            lines.append(line)
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
