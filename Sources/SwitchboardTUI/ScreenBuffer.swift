// A grid of cells the renderer draws into, and the ANSI output that brings a terminal from one
// grid to the next. A wide character occupies its cell and a continuation cell to its right;
// overwriting either half blanks the other, so the grid never holds half a character.

/// Terminal colours used by the client (SGR 30-37 and 90-97).
public enum TermColor: UInt8, Sendable, Equatable {
    case black = 30, red = 31, green = 32, yellow = 33, blue = 34, magenta = 35, cyan = 36, white = 37
    case grey = 90, brightRed = 91, brightGreen = 92, brightYellow = 93, brightBlue = 94, brightMagenta = 95,
         brightCyan = 96, brightWhite = 97
}

public struct CellStyle: Sendable, Equatable {
    public var foreground: TermColor?
    public var background: TermColor?
    public var bold = false
    public var dim = false
    public var underline = false
    public var reverse = false

    public init(foreground: TermColor? = nil, background: TermColor? = nil, bold: Bool = false, dim: Bool = false,
                underline: Bool = false, reverse: Bool = false) {
        self.foreground = foreground; self.background = background
        self.bold = bold; self.dim = dim; self.underline = underline; self.reverse = reverse
    }

    public static let plain = CellStyle()

    /// The full SGR sequence selecting this style from scratch.
    public var sgr: String {
        var codes = ["0"]
        if bold { codes.append("1") }
        if dim { codes.append("2") }
        if underline { codes.append("4") }
        if reverse { codes.append("7") }
        if let foreground { codes.append(String(foreground.rawValue)) }
        if let background { codes.append(String(background.rawValue + 10)) }
        return "\u{1B}[" + codes.joined(separator: ";") + "m"
    }
}

public struct Cell: Sendable, Equatable {
    /// One grapheme cluster; "" marks the right half of a wide character.
    public var text: String
    public var style: CellStyle
    public init(_ text: String = " ", style: CellStyle = .plain) { self.text = text; self.style = style }
    public var isContinuation: Bool { text.isEmpty }
    public static let blank = Cell()
}

public struct ScreenBuffer: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public private(set) var cells: [Cell]

    public init(width: Int, height: Int) {
        self.width = max(0, width)
        self.height = max(0, height)
        cells = Array(repeating: .blank, count: self.width * self.height)
    }

    public subscript(row: Int, column: Int) -> Cell {
        cells[row * width + column]
    }

    /// The text of one row (continuation cells skipped), for tests and debugging.
    public func rowText(_ row: Int) -> String {
        var line = ""
        for column in 0..<width where !self[row, column].isContinuation { line += self[row, column].text }
        return line
    }

    /// All rows, trailing spaces trimmed.
    public var lines: [String] {
        (0..<height).map { row in
            var text = rowText(row)
            while text.hasSuffix(" ") { text.removeLast() }
            return text
        }
    }

    /// The column where `text` first appears in `row` (in cells), or nil.
    public func column(of text: String, inRow row: Int) -> Int? {
        var column = 0
        var rest = Substring(rowText(row))
        while !rest.isEmpty {
            if rest.hasPrefix(text) { return column }
            column += max(1, TextWidth.width(of: rest.first!))
            rest = rest.dropFirst()
        }
        return nil
    }

    /// The first row containing `text`.
    public func row(containing text: String) -> Int? {
        (0..<height).first { rowText($0).contains(text) }
    }

    public mutating func fill(row: Int, from column: Int = 0, to end: Int? = nil, style: CellStyle) {
        guard row >= 0, row < height else { return }
        for c in max(0, column)..<min(width, end ?? width) { set(row: row, column: c, character: " ", style: style) }
    }

    /// Writes one character; returns the cells it took (0 if it did not fit or is zero-width).
    @discardableResult
    public mutating func set(row: Int, column: Int, character: Character, style: CellStyle, limit: Int? = nil) -> Int {
        let end = min(width, limit ?? width)
        guard row >= 0, row < height, column >= 0, column < end else { return 0 }
        var character = character
        if TextWidth.isControl(character) { character = "\u{FFFD}" }
        let w = TextWidth.width(of: character)
        if w == 0 {
            // A combining mark after nothing drawable: ignore.
            return 0
        }
        if w == 2 && column + 1 >= end {
            // Half a wide character does not fit: pad.
            clearHalves(row: row, column: column)
            cells[row * width + column] = Cell(" ", style: style)
            return 1
        }
        clearHalves(row: row, column: column)
        cells[row * width + column] = Cell(String(character), style: style)
        if w == 2 {
            clearHalves(row: row, column: column + 1)
            cells[row * width + column + 1] = Cell("", style: style)
        }
        return w
    }

    /// Writes text from `column`, clipped at `limit` (exclusive); returns the column after it.
    @discardableResult
    public mutating func put(_ text: String, row: Int, column: Int, style: CellStyle = .plain, limit: Int? = nil) -> Int {
        var c = column
        let end = min(width, limit ?? width)
        for character in text {
            if c >= end { break }
            c += set(row: row, column: c, character: character, style: style, limit: end)
        }
        return c
    }

    /// Before overwriting a cell, blank the other half of a wide character it belongs to.
    private mutating func clearHalves(row: Int, column: Int) {
        let index = row * width + column
        let cell = cells[index]
        if cell.isContinuation, column > 0 {
            cells[index - 1] = Cell(" ", style: cells[index - 1].style)
        } else if TextWidth.width(of: Character(cell.text.isEmpty ? " " : cell.text)) == 2, column + 1 < width,
                  cells[index + 1].isContinuation {
            cells[index + 1] = Cell(" ", style: cells[index + 1].style)
        }
    }

    /// ANSI bytes that turn a terminal showing `previous` (nil: unknown) into this grid. Rows that
    /// did not change are skipped; changed rows are redrawn whole.
    public func ansi(from previous: ScreenBuffer?) -> String {
        var out = ""
        let full = previous == nil || previous!.width != width || previous!.height != height
        if full { out += "\u{1B}[0m\u{1B}[2J" }
        for row in 0..<height {
            if !full {
                let start = row * width
                if previous!.cells[start..<start + width] == cells[start..<start + width] { continue }
            }
            out += "\u{1B}[\(row + 1);1H"
            var current: CellStyle? = nil
            for column in 0..<width {
                let cell = self[row, column]
                if cell.isContinuation { continue }
                if cell.style != current {
                    out += cell.style.sgr
                    current = cell.style
                }
                out += cell.text
            }
            out += "\u{1B}[0m"
        }
        return out
    }
}
