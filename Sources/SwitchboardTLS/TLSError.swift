// Typed errors for everything TLS: a kind a caller can switch on, one human sentence, and the text
// of OpenSSL's thread-local error queue at the moment of failure (drained, so the next call on this
// thread starts clean). Every failing OpenSSL call in this module goes through `TLSError.openSSL`.
import COpenSSL
import Glibc
import SwitchboardIO

public struct TLSError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// A context could not be built: unreadable or malformed certificate, key or CA file, a key
        /// that does not match its certificate, a cipher list OpenSSL rejects.
        case configuration
        /// The TLS negotiation failed: no common protocol version or cipher, a peer's alert, bytes
        /// that are not TLS at all.
        case handshake
        /// The peer's certificate was rejected: unknown CA, expired, wrong host name.
        case certificateVerification
        /// The server's public key differs from the one recorded on first contact.
        case pinMismatch(pinned: String, presented: String)
        /// A failure after the handshake: a bad record, a fatal alert.
        case connection
        /// The socket failed (see `errno`).
        case io
        case timedOut
        /// The known-servers file could not be read, parsed or written.
        case pinStore
        /// Creating keys or certificates failed.
        case certificateGeneration
        /// Refused to overwrite existing files (the caller may retry with force).
        case fileExists
        /// Reading or writing a file failed (see `errno`).
        case fileSystem
    }

    public let kind: Kind
    public let message: String
    /// OpenSSL's error queue, oldest first, as `ERR_error_string_n` renders it.
    public let openSSLErrors: [String]
    public let errno: Int32?

    public init(_ kind: Kind, _ message: String, openSSLErrors: [String] = [], errno: Int32? = nil) {
        self.kind = kind
        self.message = message
        self.openSSLErrors = openSSLErrors
        self.errno = errno
    }

    /// Builds an error and drains the calling thread's OpenSSL error queue into it.
    static func openSSL(_ kind: Kind, _ message: String, errno: Int32? = nil) -> TLSError {
        TLSError(kind, message, openSSLErrors: drainErrorQueue(), errno: errno)
    }

    static func syscall(_ kind: Kind, _ message: String, errno code: Int32) -> TLSError {
        TLSError(kind, "\(message): \(String(cString: strerror(code)))", errno: code)
    }

    public var description: String {
        var text = message
        if let errno, !message.contains("errno") { text += " (errno \(errno))" }
        if !openSSLErrors.isEmpty { text += " [OpenSSL: " + openSSLErrors.joined(separator: "; ") + "]" }
        return text
    }

    /// Pops every entry of this thread's OpenSSL error queue. The queue is per thread and survives
    /// across calls, so a stale entry left behind would be blamed on the next, unrelated failure.
    static func drainErrorQueue() -> [String] {
        var lines: [String] = []
        var buffer = [CChar](repeating: 0, count: 256)
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            ERR_error_string_n(code, &buffer, buffer.count)
            lines.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
            // A runaway queue would be a bug elsewhere; keep the report readable.
            if lines.count >= 16 { ERR_clear_error(); break }
        }
        return lines
    }
}
