// What a node presents to NATS in CONNECT when the servers require authorization: a token, or a user and
// password (nats-server's `authorization { token: ... }` or `authorization { user: ..., password: ... }`). Read
// from a file (never from the command line, where `ps` shows it) that only its owner may read:
//
//     # switchboard's NATS credentials
//     token: s3cr3t
// or
//     user: switchboard
//     password: s3cr3t
import Glibc

public enum NATSCredentials: Sendable, Equatable {
    case token(String)
    case user(String, password: String)

    /// The CONNECT fields.
    var connectFields: [(String, JSON)] {
        switch self {
        case .token(let token): [("auth_token", .string(token))]
        case .user(let user, let password): [("user", .string(user)), ("pass", .string(password))]
        }
    }

    /// Parses the file's text: `token: T`, or `user: U` and `password: P`, one per line; blank lines and lines
    /// starting with '#' are skipped; a value runs to the end of its line (spaces around it trimmed).
    public static func parse(_ text: String) throws(NATSCredentialsError) -> NATSCredentials {
        var fields: [String: String] = [:]
        for (number, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = raw.trimmingCharacters
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let colon = line.firstIndex(of: ":") else {
                throw .invalid("line \(number + 1): expected 'token: ...', 'user: ...' or 'password: ...'")
            }
            let key = String(line[..<colon]).trimmingCharacters
            let value = String(line[line.index(after: colon)...]).trimmingCharacters
            guard ["token", "user", "password"].contains(key) else { throw .invalid("line \(number + 1): unknown key '\(key)'") }
            guard !value.isEmpty else { throw .invalid("line \(number + 1): '\(key)' is empty") }
            guard fields[key] == nil else { throw .invalid("line \(number + 1): '\(key)' given twice") }
            guard value.utf8.count <= 4_096, !value.unicodeScalars.contains(where: { $0.value < 0x20 }) else {
                throw .invalid("line \(number + 1): '\(key)' is over 4096 bytes or has control characters")
            }
            fields[key] = value
        }
        switch (fields["token"], fields["user"], fields["password"]) {
        case (let token?, nil, nil): return .token(token)
        case (nil, let user?, let password?): return .user(user, password: password)
        case (nil, nil, nil): throw .invalid("no credentials in it (give 'token: ...', or 'user: ...' and 'password: ...')")
        case (_?, _, _): throw .invalid("give either a token or a user and password, not both")
        case (nil, _?, nil): throw .invalid("'user' needs a 'password' line")
        case (nil, nil, _?): throw .invalid("'password' needs a 'user' line")
        }
    }

    /// Reads and parses `path`. Refuses a file that its group or others may read or write (chmod 600).
    public static func load(path: String) throws(NATSCredentialsError) -> NATSCredentials {
        var info = stat()
        guard stat(path, &info) == 0 else { throw .unreadable("\(path): \(String(cString: strerror(errno)))") }
        guard info.st_mode & S_IFMT == S_IFREG else { throw .unreadable("\(path) is not a regular file") }
        guard info.st_mode & 0o077 == 0 else {
            throw .unreadable("\(path) may be read by others (mode \(String(info.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
        guard info.st_size <= 65_536 else { throw .unreadable("\(path) is over 64 KiB: not a credentials file") }
        guard let file = fopen(path, "r") else { throw .unreadable("\(path): \(String(cString: strerror(errno)))") }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4_096)
        while true {
            let n = fread(&chunk, 1, chunk.count, file)
            if n == 0 { break }
            bytes += chunk[0..<n]
        }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw .invalid("\(path) is not UTF-8") }
        do { return try parse(text) } catch { throw .invalid("\(path): \(error)") }
    }
}

public enum NATSCredentialsError: Error, Equatable, CustomStringConvertible {
    case unreadable(String)
    case invalid(String)
    public var description: String {
        switch self {
        case .unreadable(let why), .invalid(let why): why
        }
    }
}

extension StringProtocol {
    fileprivate var trimmingCharacters: String {
        String(drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed().drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed())
    }
}
