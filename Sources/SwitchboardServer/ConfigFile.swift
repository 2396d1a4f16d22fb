// The configuration file's syntax: a strict subset of TOML 1.0 (every file accepted here is valid TOML
// and means the same to any TOML reader). What `serve` needs is a flat list of `key = value` lines, so the
// subset is: comments (`#`), blank lines, bare keys ([A-Za-z0-9_-]+), and values that are decimal
// integers (with `_` between digits), booleans, basic strings ("..." with TOML's escapes) and literal
// strings ('...'). Tables, dotted or quoted keys, arrays, inline tables, floats, dates and multi-line
// strings are refused with a message saying so, never guessed at.
// Invariants: every entry and every error carries its 1-based line number; a key given twice is an error
// naming both lines (TOML forbids it too); nothing here knows which keys exist (ServeSettings does).

public enum ConfigValue: Equatable, Sendable, CustomStringConvertible {
    case integer(Int64)
    case string(String)
    case boolean(Bool)

    /// The value as a TOML literal.
    public var description: String {
        switch self {
        case .integer(let n): return String(n)
        case .boolean(let b): return b ? "true" : "false"
        case .string(let s): return ConfigValue.quote(s)
        }
    }

    public var typeName: String {
        switch self {
        case .integer: return "an integer"
        case .string: return "a string"
        case .boolean: return "a boolean"
        }
    }

    /// A TOML basic string with the escapes it needs.
    public static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    let hex = String(scalar.value, radix: 16, uppercase: true)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

/// A refused configuration: where (file, line, key) and why. `description` is the one line printed.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var path: String?
    public var line: Int?
    public var key: String?
    public var message: String

    public init(path: String? = nil, line: Int? = nil, key: String? = nil, _ message: String) {
        self.path = path
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        var prefix = ""
        if let path { prefix += path + ":" }
        if let line { prefix += "\(line):" }
        if !prefix.isEmpty { prefix += " " }
        if let key { prefix += "key '\(key)': " }
        return prefix + message
    }
}

public struct ConfigEntry: Equatable, Sendable {
    public var key: String
    public var value: ConfigValue
    public var line: Int
}

public struct ConfigFile: Sendable {
    public var path: String?
    public var entries: [ConfigEntry]

    /// Reads and parses `path` (at most 1 MiB: a configuration is a few kilobytes).
    public static func load(path: String) throws(ConfigError) -> ConfigFile {
        let bytes: [UInt8]
        do {
            bytes = try FileReading.read(path: path, limit: 1 << 20)
        } catch {
            throw ConfigError(path: path, "cannot read: \(error)")
        }
        return try parse(bytes, path: path)
    }

    public static func parse(_ text: String, path: String? = nil) throws(ConfigError) -> ConfigFile {
        try parse(Array(text.utf8), path: path)
    }

    public static func parse(_ bytes: [UInt8], path: String? = nil) throws(ConfigError) -> ConfigFile {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigError(path: path, "the file is not valid UTF-8")
        }
        var entries: [ConfigEntry] = []
        var firstLine: [String: Int] = [:]
        var lineNumber = 0
        // TOML lines end in LF or CRLF; splitting the scalars on LF and dropping a trailing CR handles both
        // (a String would see "\r\n" as one Character and never split it).
        for rawLine in Array(text.unicodeScalars).split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            var line = Array(rawLine)
            if line.last == "\r" { line.removeLast() }
            var parser = LineParser(scalars: line, line: lineNumber, path: path)
            guard let entry = try parser.parseLine() else { continue }
            if let earlier = firstLine[entry.key] {
                throw ConfigError(path: path, line: lineNumber, key: entry.key, "given twice (first on line \(earlier))")
            }
            firstLine[entry.key] = lineNumber
            entries.append(entry)
        }
        return ConfigFile(path: path, entries: entries)
    }
}

/// One line: `key = value [# comment]`, a comment, or blank.
private struct LineParser {
    let scalars: [Unicode.Scalar]
    let line: Int
    let path: String?
    var index = 0

    init(scalars: [Unicode.Scalar], line: Int, path: String?) {
        self.scalars = scalars
        self.line = line
        self.path = path
    }

    func error(_ key: String?, _ message: String) -> ConfigError {
        ConfigError(path: path, line: line, key: key, message)
    }

    var current: Unicode.Scalar? { index < scalars.count ? scalars[index] : nil }

    mutating func skipSpaces() {
        while let c = current, c == " " || c == "\t" { index += 1 }
    }

    static func isBareKey(_ c: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || c == "_" || c == "-"
    }

    mutating func parseLine() throws(ConfigError) -> ConfigEntry? {
        skipSpaces()
        guard let first = current, first != "#" else { return nil }
        if first == "[" {
            throw error(nil, "tables ([...]) are not used: every key of the configuration is at the top level")
        }
        if first == "\"" || first == "'" {
            throw error(nil, "quoted keys are not used: write the key bare, e.g. max-frame = 65536")
        }
        let keyStart = index
        while let c = current, LineParser.isBareKey(c) { index += 1 }
        let key = String(String.UnicodeScalarView(scalars[keyStart..<index]))
        guard !key.isEmpty else { throw error(nil, "expected a key (letters, digits, '-' or '_'), found '\(first)'") }
        skipSpaces()
        if current == "." { throw error(key, "dotted keys are not used: every key is at the top level") }
        guard current == "=" else {
            throw error(key, current == nil ? "expected '=' and a value after the key" : "expected '=' after the key, found '\(current!)'")
        }
        index += 1
        skipSpaces()
        let value = try parseValue(key)
        skipSpaces()
        if let c = current, c != "#" {
            throw error(key, "unexpected text after the value: '\(String(String.UnicodeScalarView(scalars[index...])))'")
        }
        try checkComment(key)
        return ConfigEntry(key: key, value: value, line: line)
    }

    /// TOML allows no control characters other than tab in a comment.
    func checkComment(_ key: String?) throws(ConfigError) {
        for c in scalars[index...] where (c.value < 0x20 && c != "\t") || c.value == 0x7F {
            throw error(key, "control character U+\(String(c.value, radix: 16)) in a comment")
        }
    }

    mutating func parseValue(_ key: String) throws(ConfigError) -> ConfigValue {
        guard let c = current, c != "#" else { throw error(key, "missing value after '='") }
        switch c {
        case "\"":
            if index + 2 < scalars.count && scalars[index + 1] == "\"" && scalars[index + 2] == "\"" {
                throw error(key, "multi-line strings (\"\"\") are not used: write the value on one line")
            }
            return .string(try basicString(key))
        case "'":
            if index + 2 < scalars.count && scalars[index + 1] == "'" && scalars[index + 2] == "'" {
                throw error(key, "multi-line strings (''') are not used: write the value on one line")
            }
            return .string(try literalString(key))
        case "[":
            throw error(key, "arrays are not used by any key")
        case "{":
            throw error(key, "inline tables are not used by any key")
        default:
            let start = index
            while let d = current, d != " " && d != "\t" && d != "#" { index += 1 }
            let word = String(String.UnicodeScalarView(scalars[start..<index]))
            if word == "true" { return .boolean(true) }
            if word == "false" { return .boolean(false) }
            return .integer(try integer(word, key))
        }
    }

    func integer(_ word: String, _ key: String) throws(ConfigError) -> Int64 {
        var digits = Substring(word)
        var negative = false
        if digits.first == "+" || digits.first == "-" {
            negative = digits.first == "-"
            digits = digits.dropFirst()
        }
        let looksNumeric = digits.first.map { $0.isNumber } ?? false
        guard looksNumeric else {
            throw error(key, "'\(word)' is not a value: strings need quotes (\"...\"), booleans are true or false")
        }
        if digits.hasPrefix("0x") || digits.hasPrefix("0o") || digits.hasPrefix("0b") {
            throw error(key, "'\(word)': write integers in decimal")
        }
        if digits.contains(".") || digits.contains("e") || digits.contains("E") {
            throw error(key, "'\(word)': no key takes a fraction; write a whole number")
        }
        if digits.contains(":") || (digits.dropFirst().contains("-")) {
            throw error(key, "'\(word)': dates and times are not used by any key")
        }
        // TOML: underscores only between digits; no leading zeros.
        var plain = ""
        var previous: Character = "_"
        for ch in digits {
            if ch == "_" {
                guard previous != "_" else { throw error(key, "'\(word)': '_' must sit between digits") }
            } else if ch.isASCII && ch.isNumber {
                plain.append(ch)
            } else {
                throw error(key, "'\(word)' is not a decimal integer")
            }
            previous = ch
        }
        guard previous != "_" else { throw error(key, "'\(word)': '_' must sit between digits") }
        if plain.count > 1 && plain.hasPrefix("0") { throw error(key, "'\(word)': leading zeros are not allowed in TOML") }
        guard let magnitude = Int64(negative ? "-" + plain : plain) else {
            throw error(key, "'\(word)' does not fit in a 64-bit integer")
        }
        return magnitude
    }

    mutating func basicString(_ key: String) throws(ConfigError) -> String {
        index += 1
        var out = String.UnicodeScalarView()
        while let c = current {
            index += 1
            switch c {
            case "\"":
                return String(out)
            case "\\":
                guard let e = current else { break }
                index += 1
                switch e {
                case "b": out.append("\u{08}")
                case "t": out.append("\t")
                case "n": out.append("\n")
                case "f": out.append("\u{0C}")
                case "r": out.append("\r")
                case "\"": out.append("\"")
                case "\\": out.append("\\")
                case "u", "U":
                    let count = e == "u" ? 4 : 8
                    guard index + count <= scalars.count,
                          let code = UInt32(String(String.UnicodeScalarView(scalars[index..<index + count])), radix: 16),
                          let scalar = Unicode.Scalar(code) else {
                        throw error(key, "bad \\\(e) escape: \(count) hex digits of a Unicode scalar expected")
                    }
                    out.append(scalar)
                    index += count
                default:
                    throw error(key, "unknown escape '\\\(e)' in a string (write '\\\\' for a backslash, or use '...')")
                }
            default:
                if (c.value < 0x20 && c != "\t") || c.value == 0x7F {
                    throw error(key, "control character U+\(String(c.value, radix: 16)) in a string (use an escape)")
                }
                out.append(c)
            }
        }
        throw error(key, "the string has no closing '\"' on this line")
    }

    mutating func literalString(_ key: String) throws(ConfigError) -> String {
        index += 1
        var out = String.UnicodeScalarView()
        while let c = current {
            index += 1
            if c == "'" { return String(out) }
            if (c.value < 0x20 && c != "\t") || c.value == 0x7F {
                throw error(key, "control character U+\(String(c.value, radix: 16)) in a string")
            }
            out.append(c)
        }
        throw error(key, "the string has no closing \"'\" on this line")
    }
}
