// Trust on first use, like ssh's known_hosts: one line per server, "HOST:PORT SHA256-HEX", where
// the hex is the SHA-256 of the server certificate's SubjectPublicKeyInfo (so a renewed
// certificate for the same key still matches). '#' starts a comment line.
// Invariants: an entry is never replaced silently: a different key is a hard error showing both
// fingerprints, and the user edits the file to accept it; a malformed line is an error too
// (skipping it could turn a pinned server back into a "first contact"). The file is 0600 in a
// 0700 folder; new entries are appended with one write(2) on an O_APPEND descriptor, so two
// clients recording at once cannot interleave within a line.
import Glibc

public struct PinStore: Sendable, Equatable {
    public enum Outcome: Sendable, Equatable {
        /// The server presented the key recorded earlier.
        case matched
        /// First contact: the key was recorded now. Tell the user (and show the fingerprint).
        case recorded
    }

    public let path: String

    public init(path: String) { self.path = path }

    /// `$XDG_CONFIG_HOME/switchboard/known_servers`, else `$HOME/.config/switchboard/known_servers`.
    public static func defaultPath(environment: [String: String] = PinStore.processEnvironment()) throws(TLSError) -> String {
        if let xdg = environment["XDG_CONFIG_HOME"], xdg.hasPrefix("/") {
            return joinPath(joinPath(xdg, "switchboard"), "known_servers")
        }
        if let home = environment["HOME"], !home.isEmpty {
            return joinPath(joinPath(joinPath(home, ".config"), "switchboard"), "known_servers")
        }
        throw TLSError(.pinStore, "cannot find a place for known servers: neither XDG_CONFIG_HOME nor HOME is set")
    }

    /// The entry name for a server: lowercase host, IPv6 literals in brackets, then ":port".
    public static func serverKey(host: String, port: UInt16) -> String {
        var host = host.lowercased()
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The fingerprint recorded for `server`, if any.
    public func pinnedFingerprint(for server: String) throws(TLSError) -> String? {
        try entries()[server]
    }

    /// Compares `fingerprint` with the pin for `server`; records it on first contact.
    /// Throws `.pinMismatch` (both fingerprints in kind and message) when they differ.
    public func verify(server: String, fingerprint: String) throws(TLSError) -> Outcome {
        let fingerprint = fingerprint.lowercased()
        if let pinned = try pinnedFingerprint(for: server) {
            guard pinned == fingerprint else {
                throw TLSError(.pinMismatch(pinned: pinned, presented: fingerprint), """
                    the key of \(server) has CHANGED: recorded sha256 \(pinned), presented sha256 \(fingerprint). \
                    Someone may be intercepting the connection, or the server got a new key. If you know the \
                    server's key was changed on purpose, delete the line for \(server) from \(path).
                    """)
            }
            return .matched
        }
        try record(server: server, fingerprint: fingerprint)
        return .recorded
    }

    /// Appends an entry (no check for an existing one: `verify` does that).
    public func record(server: String, fingerprint: String) throws(TLSError) {
        guard PinStore.isValidServer(server) else { throw TLSError(.pinStore, "invalid server name '\(server)'") }
        guard PinStore.isValidFingerprint(fingerprint) else {
            throw TLSError(.pinStore, "invalid fingerprint '\(fingerprint)' (expected 64 hex digits)")
        }
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            try makeDirectories(String(path[..<slash]), mode: 0o700)
        }
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw TLSError.syscall(.pinStore, "cannot open \(path)", errno: errno) }
        defer { Glibc.close(fd) }
        var info = stat()
        var text = ""
        if fstat(fd, &info) == 0 && info.st_size == 0 {
            text += "# Switchboard known servers: HOST:PORT SHA256-OF-SUBJECT-PUBLIC-KEY-INFO\n"
        }
        text += "\(server) \(fingerprint.lowercased())\n"
        let bytes = Array(text.utf8)
        while true {
            let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if written == bytes.count { return }
            if written < 0 && errno == EINTR { continue }
            throw TLSError.syscall(.pinStore, "cannot write \(path)", errno: written < 0 ? errno : EIO)
        }
    }

    /// Every entry; a server listed twice must have the same key both times.
    public func entries() throws(TLSError) -> [String: String] {
        guard let text = try readFile() else { return [:] }
        var result: [String: String] = [:]
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingWhitespace()
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count == 2, PinStore.isValidServer(String(fields[0])),
                  PinStore.isValidFingerprint(String(fields[1])) else {
                throw TLSError(.pinStore, "\(path):\(index + 1): expected 'HOST:PORT SHA256-HEX', got '\(line)'")
            }
            let server = String(fields[0])
            let fingerprint = fields[1].lowercased()
            if let earlier = result[server], earlier != fingerprint {
                throw TLSError(.pinStore, "\(path):\(index + 1): \(server) is listed with two different keys")
            }
            result[server] = fingerprint
        }
        return result
    }

    private func readFile() throws(TLSError) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw TLSError.syscall(.pinStore, "cannot open \(path)", errno: errno)
        }
        defer { Glibc.close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 8192)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count == 0 { break }
            if count < 0 {
                if errno == EINTR { continue }
                throw TLSError.syscall(.pinStore, "cannot read \(path)", errno: errno)
            }
            bytes.append(contentsOf: chunk.prefix(count))
            if bytes.count > 16 << 20 { throw TLSError(.pinStore, "\(path) is larger than 16 MiB; is it the right file?") }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func isValidFingerprint(_ text: String) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) || ($0 >= 65 && $0 <= 70) }
    }

    static func isValidServer(_ text: String) -> Bool {
        guard let colon = text.lastIndex(of: ":"), UInt16(text[text.index(after: colon)...]) != nil,
              colon != text.startIndex else { return false }
        return !text.contains(where: { $0.isWhitespace || $0 == "#" })
    }

    public static func processEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        for name in ["XDG_CONFIG_HOME", "HOME"] {
            if let value = getenv(name) { result[name] = String(cString: value) }
        }
        return result
    }
}

extension Substring {
    fileprivate func trimmingWhitespace() -> Substring {
        var slice = self
        while let first = slice.first, first.isWhitespace { slice = slice.dropFirst() }
        while let last = slice.last, last.isWhitespace { slice = slice.dropLast() }
        return slice
    }
}
