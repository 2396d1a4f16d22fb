// The servers a client may use: `HOST:PORT[,HOST:PORT...]` as given to `sbchat --server` and
// `sbload --target`, parsed once, and the walk over them when connecting (the first that answers
// wins; the caller remembers which and starts the next walk after the one that failed).
// Invariants: a list holds 1...`maxEntries` entries, each a valid HOST:PORT or [IPv6]:PORT with a
// port 1-65535, no two naming the same server (host compared without case and brackets); an
// entry is kept as written (what the user reads in messages and what pins are recorded under),
// and `text` is the entries joined by "," (equal to the input whenever the input had no spaces).
import SwitchboardTLS

public struct ServerListError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public struct ServerList: Sendable, Equatable, CustomStringConvertible {
    /// The most servers a list may name: a client walks the whole list before backing off, so a
    /// longer list mostly means a longer wait before the user learns that none answers.
    public static let maxEntries = 16

    /// The servers in the order given.
    public let entries: [String]

    /// The entries joined by ","; the local history of the terminal client is kept under this name.
    public var text: String { entries.joined(separator: ",") }
    public var description: String { text }
    public var count: Int { entries.count }

    /// Parses `HOST:PORT[,HOST:PORT...]`; spaces around an entry are ignored.
    public init(parsing input: String) throws(ServerListError) {
        let parts = input.split(separator: ",", omittingEmptySubsequences: false).map(ServerList.trimmingSpaces)
        if parts.count == 1 && parts[0].isEmpty { throw ServerListError("no server given (expected HOST:PORT[,HOST:PORT...])") }
        guard parts.count <= ServerList.maxEntries else {
            throw ServerListError("at most \(ServerList.maxEntries) servers, got \(parts.count) in '\(input)'")
        }
        var seen: [String: Int] = [:]
        for (index, entry) in parts.enumerated() {
            let position = parts.count > 1 ? "server \(index + 1) of \(parts.count): " : ""
            if entry.isEmpty { throw ServerListError("\(position)empty entry in '\(input)' (remove the extra comma)") }
            if let problem = ServerList.problem(entry) { throw ServerListError(position + problem) }
            let key = ServerList.identity(entry)
            if let first = seen[key] {
                throw ServerListError("server \(index + 1) '\(entry)' repeats server \(first + 1) '\(parts[first])'")
            }
            seen[key] = index
        }
        entries = parts
    }

    /// Why `address` is not HOST:PORT (or [IPv6]:PORT) with a port 1-65535, or nil when it is.
    public static func problem(_ address: String) -> String? {
        let host: Substring, port: Substring
        if address.hasPrefix("[") {
            guard let close = address.firstIndex(of: "]"), address[address.index(after: close)...].hasPrefix(":") else {
                return "expected [IPv6]:PORT, got '\(address)'"
            }
            host = address[address.index(after: address.startIndex)..<close]
            port = address[address.index(close, offsetBy: 2)...]
        } else {
            guard let colon = address.lastIndex(of: ":") else { return "expected HOST:PORT, got '\(address)'" }
            host = address[..<colon]
            port = address[address.index(after: colon)...]
            if host.contains(":") { return "an IPv6 address needs brackets: [\(host)]:\(port)" }
        }
        if host.isEmpty { return "no host in '\(address)'" }
        if host.contains(where: { $0 == " " || $0 == "/" || $0 == "\t" || $0 == "," }) { return "'\(host)' is not a host name" }
        guard let number = UInt16(port), number > 0 else { return "the port must be 1-65535, got '\(port)'" }
        return nil
    }

    private static func trimmingSpaces(_ text: Substring) -> String {
        var text = text
        while text.first == " " { text.removeFirst() }
        while text.last == " " { text.removeLast() }
        return String(text)
    }

    /// The name two entries share when they are the same server: host without case or brackets, and port.
    static func identity(_ entry: String) -> String {
        let host = ChatConnection.host(of: entry).lowercased()
        let port = entry[entry.index(after: entry.lastIndex(of: ":")!)...]
        return host + " " + port
    }

    /// The index after `index`, wrapping around.
    public func index(after index: Int) -> Int { (index + 1) % entries.count }

    /// Why one server of a walk could not be used.
    public struct Failure: Sendable, CustomStringConvertible {
        public let server: String
        public let reason: String
        /// A TLS refusal (changed key, untrusted certificate, unusable pin store or CA file): worth a
        /// warning even when another server answered.
        public let isSecurityRefusal: Bool
        public var description: String { "\(server): \(reason)" }
    }

    /// Tries the servers in turn, starting at `start` and wrapping around, until `attempt` returns;
    /// `willTry` is told each server before its attempt. Returns the index that worked, its value
    /// and the failures before it; throws `AllServersFailed` when every server failed.
    public func firstReachable<T>(startingAt start: Int = 0, willTry: (Int, String) -> Void = { _, _ in },
                                  _ attempt: (String) throws -> T) throws(AllServersFailed) -> (index: Int, value: T, failures: [Failure]) {
        var failures: [Failure] = []
        for step in 0..<entries.count {
            let index = (start + step) % entries.count
            let server = entries[index]
            willTry(index, server)
            do {
                return (index, try attempt(server), failures)
            } catch {
                let reason = (error as? ClientError)?.message ?? "\(error)"
                failures.append(Failure(server: server, reason: reason, isSecurityRefusal: ServerList.isSecurityRefusal(error)))
            }
        }
        throw AllServersFailed(failures: failures)
    }

    /// TLS said no (key changed, certificate not trusted) or the trust setup is broken, as opposed
    /// to a server that is down or went away mid-handshake.
    static func isSecurityRefusal(_ error: any Error) -> Bool {
        guard let tls = error as? TLSError else { return false }
        switch tls.kind {
        case .certificateVerification, .pinMismatch, .pinStore, .configuration: return true
        default: return false
        }
    }
}

/// Every server of a list failed; the message names each and why.
public struct AllServersFailed: Error, CustomStringConvertible, Sendable {
    public let failures: [ServerList.Failure]
    public var description: String {
        if failures.count == 1 { return failures[0].description }
        return "none of the \(failures.count) servers could be used: " + failures.map(\.description).joined(separator: "; ")
    }
}
