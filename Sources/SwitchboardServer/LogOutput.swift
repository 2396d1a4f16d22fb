// The server's log output on stderr: the text format (swift-log's StreamLogHandler line) or JSON, one
// object per line ({"ts","level","label","message","metadata"}) for log shippers. The level is one
// process-wide atomic (`LogOutput.level`), so a reload changes it for every logger at once, including
// those already handed out.
// Invariants: a JSON line is one write(2) of a complete object ending in "\n" (lines of concurrent threads
// never interleave below PIPE_BUF); every string is escaped per RFC 8259; reading the level is one relaxed
// atomic load (Logger asks for it before every log call).
import Glibc
import Logging
import Synchronization

public enum LogOutput {
    public enum Format: String, Sendable { case text, json }

    private static let rawLevel = Atomic<UInt8>(2)
    private static let allLevels: [Logger.Level] = Logger.Level.allCases

    /// The level every handler of `bootstrap` filters with; settable at any time from any thread.
    public static var level: Logger.Level {
        get { allLevels[Int(rawLevel.load(ordering: .relaxed))] }
        set { rawLevel.store(UInt8(allLevels.firstIndex(of: newValue) ?? 2), ordering: .relaxed) }
    }

    /// Installs the handlers (once per process, as LoggingSystem allows).
    public static func bootstrap(format: Format, level: Logger.Level) {
        self.level = level
        LoggingSystem.bootstrap { label in
            switch format {
            case .text: return LevelledHandler(inner: StreamLogHandler.standardError(label: label))
            case .json: return LevelledHandler(inner: JSONLogHandler(label: label))
            }
        }
    }
}

/// Forwards to `inner`; its level is the shared one (setting it on one logger sets it for all).
struct LevelledHandler<Inner: LogHandler>: LogHandler {
    var inner: Inner
    init(inner: Inner) {
        var inner = inner
        inner.logLevel = .trace
        self.inner = inner
    }

    var logLevel: Logger.Level {
        get { LogOutput.level }
        set { LogOutput.level = newValue }
    }

    var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue }
    }

    func log(event: LogEvent) { inner.log(event: event) }
}

/// One JSON object per line on stderr.
public struct JSONLogHandler: LogHandler {
    public let label: String
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    private let fd: Int32

    public init(label: String, fd: Int32 = 2) {
        self.label = label
        self.fd = fd
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        if let error = event.error { merged["error"] = "\(error)" }
        let text = Self.line(timestamp: Self.timestamp(), level: event.level, label: label, message: event.message.description,
                             metadata: merged)
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            offset += n
        }
        bytes.removeAll()
    }

    /// The line for one event (public for tests and for tools that want the same format).
    public static func line(timestamp: String, level: Logger.Level, label: String, message: String,
                            metadata: Logger.Metadata) -> String {
        var out = "{\"ts\":" + quote(timestamp) + ",\"level\":" + quote(level.rawValue) + ",\"label\":" + quote(label)
            + ",\"message\":" + quote(message) + ",\"metadata\":"
        appendObject(metadata, to: &out)
        return out + "}\n"
    }

    private static func appendObject(_ metadata: Logger.Metadata, to out: inout String) {
        out += "{"
        var first = true
        for key in metadata.keys.sorted() {
            if !first { out += "," }
            first = false
            out += quote(key) + ":"
            appendValue(metadata[key]!, to: &out)
        }
        out += "}"
    }

    private static func appendValue(_ value: Logger.Metadata.Value, to out: inout String) {
        switch value {
        case .string(let s): out += quote(s)
        case .stringConvertible(let c): out += quote(c.description)
        case .dictionary(let d): appendObject(d, to: &out)
        case .array(let a):
            out += "["
            for (i, element) in a.enumerated() {
                if i > 0 { out += "," }
                appendValue(element, to: &out)
            }
            out += "]"
        }
    }

    /// A JSON string: the escapes of a TOML basic string (ConfigValue.quote) are exactly JSON's too
    /// (\" \\ \n \r \t and \uXXXX for other control characters).
    static func quote(_ text: String) -> String { ConfigValue.quote(text) }

    /// RFC 3339 UTC with milliseconds: 2026-12-03T12:00:00.123Z.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ n: Int32, _ width: Int) -> String {
            let s = String(n)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(now.tv_nsec / 1_000_000), 3))Z"
    }
}
