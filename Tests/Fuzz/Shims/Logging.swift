// A stand-in for swift-log's `Logging`, used ONLY by the fuzz build (Tests/Fuzz/build.sh, target `core`),
// so that SwitchboardSession compiles with swiftc alone on a clean checkout (no SwiftPM checkouts).
// It provides the subset SwitchboardSession uses: Logger(label:), logLevel, Logger.Metadata with string
// (and interpolated) values, and trace...critical with optional metadata. Messages below `logLevel`
// are never evaluated; the rest go to stderr (the fuzz target sets `.critical`, so nothing is printed).
#if canImport(Glibc)
import Glibc
#endif

public struct Logger: Sendable {
    public enum Level: Int, Sendable, Comparable {
        case trace, debug, info, notice, warning, error, critical
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
    }

    public enum MetadataValue: Sendable, ExpressibleByStringLiteral, ExpressibleByStringInterpolation, CustomStringConvertible {
        case string(String)
        public init(stringLiteral value: String) { self = .string(value) }
        public var description: String { switch self { case .string(let s): return s } }
    }

    public typealias Metadata = [String: MetadataValue]

    public struct Message: Sendable, ExpressibleByStringLiteral, ExpressibleByStringInterpolation, CustomStringConvertible {
        public let description: String
        public init(stringLiteral value: String) { description = value }
    }

    public let label: String
    public var logLevel: Level = .info
    public var metadata: Metadata = [:]

    public init(label: String) { self.label = label }

    public func log(level: Level, _ message: @autoclosure () -> Message, metadata: @autoclosure () -> Metadata? = nil) {
        guard level >= logLevel else { return }
        var line = "\(label) \(level): \(message().description)"
        for (key, value) in (metadata() ?? [:]).sorted(by: { $0.key < $1.key }) { line += " \(key)=\(value)" }
        line += "\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }

    public func trace(_ message: @autoclosure () -> Message, metadata: @autoclosure () -> Metadata? = nil) { log(level: .trace, message(), metadata: metadata()) }
    public func debug(_ message: @autoclosure () -> Message, metadata: @autoclosure () -> Metadata? = nil) { log(level: .debug, message(), metadata: metadata()) }
    public func info(_ message: @autoclosure () -> Message, metadata: @autoclosure () -> Metadata? = nil) { log(level: .info, message(), metadata: metadata()) }
    public func notice(_ message: @autoclosure () -> Message, metadata: @autoclosure () -> Metadata? = nil) { log(level: .notice, message(), metadata: metadata()) }
    public func warning(_ message: @autoclosure () -> Message, metadata: @autoclosure () -> Metadata? = nil) { log(level: .warning, message(), metadata: metadata()) }
    public func error(_ message: @autoclosure () -> Message, metadata: @autoclosure () -> Metadata? = nil) { log(level: .error, message(), metadata: metadata()) }
    public func critical(_ message: @autoclosure () -> Message, metadata: @autoclosure () -> Metadata? = nil) { log(level: .critical, message(), metadata: metadata()) }
}
