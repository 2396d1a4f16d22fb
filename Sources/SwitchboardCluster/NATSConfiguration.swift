// What a NATS connection is told: the servers (numeric addresses only), timeouts, keepalive, reconnect
// back-off and the bound on bytes waiting to be sent; plus the events and statistics it reports.
// Invariants: no DNS anywhere in this module. `NATSServerList.parse` accepts numeric IPv4, [IPv6] and
// `localhost` (as 127.0.0.1) only, so nothing can block the loop resolving a name; an operator with host names
// resolves them before start (e.g. in a start script or with getaddrinfo on a helper thread) and passes IPs.
import SwitchboardIO

public enum NATSServerList {
    /// Parses "nats://IP:PORT[,nats://IP:PORT...]"; the scheme may be left out, the port defaults to 4222.
    public static func parse(_ text: String) throws(NATSError) -> [SocketAddress] {
        var out: [SocketAddress] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            var s = part.trimmingSpaces
            if s.hasPrefix("nats://") { s = String(s.dropFirst(7)) }
            if s.hasSuffix("/") { s = String(s.dropLast()) }
            guard !s.isEmpty, !s.contains("@"), !s.contains("/") else { throw .invalidURL(String(part)) }
            let hasPort = s.hasPrefix("[") ? s.contains("]:") : s.contains(":") && s.split(separator: ":").count == 2
            if !hasPort { s += ":4222" }
            guard let address = try? SocketAddress(parsing: s) else { throw .invalidURL(String(part)) }
            out.append(address)
        }
        guard !out.isEmpty else { throw .invalidURL(text) }
        return out
    }
}

extension Substring {
    fileprivate var trimmingSpaces: String { String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed()) }
}

public struct NATSConfiguration: Sendable {
    public var servers: [SocketAddress]
    /// The `name` in CONNECT (shown by nats-server's /connz), e.g. the Switchboard node name.
    public var name: String
    /// TCP connect plus INFO/CONNECT/PONG handshake must finish within this.
    public var connectTimeoutMs: UInt64 = 2_000
    /// A PING every interval while connected; `maxPingsOutstanding` unanswered ones mean a stale link.
    public var pingIntervalMs: UInt64 = 2_000
    public var maxPingsOutstanding = 2
    /// Reconnect back-off: the first pass over the server list is immediate, then base·2^k capped at
    /// `maxReconnectDelayMs`, each drawn uniformly from [delay/2, delay] (jitter spreads a node storm).
    public var reconnectBaseDelayMs: UInt64 = 50
    public var maxReconnectDelayMs: UInt64 = 2_000
    /// Bound on bytes queued for the server (while disconnected, or while the server reads slowly). A publish,
    /// request or flush that would pass it fails with `NATSError.outboundBufferFull`; SUB/UNSUB never fail
    /// (they are tiny and a subscription is replayed from its record on reconnect anyway).
    public var maxOutboundBytes = 8 * 1024 * 1024
    public var limits = NATSLimits()
    /// Timer tokens used on the shared loop: `timerTokenBase + 0...3`. The loop's owner routes tokens to
    /// `NATSConnection.handleTimer(_:)` (which says whether the token was its own).
    public var timerTokenBase: UInt64 = 0x4E41_5453_0000_0000
    /// Presented in CONNECT when the servers require authorization (nil: none).
    public var credentials: NATSCredentials?
    /// Seed for back-off jitter and the inbox name.
    public var seed: UInt64 = Clock.monotonicNs()

    public init(servers: [SocketAddress], name: String = "switchboard") {
        self.servers = servers
        self.name = name
    }
}

public enum NATSEvent: Equatable, Sendable {
    /// Handshake done (INFO, CONNECT, subscriptions replayed, PONG).
    case connected(SocketAddress, serverName: String)
    case disconnected(SocketAddress, reason: String)
    /// One attempt failed (connect refused, timeout, handshake error).
    case connectFailed(SocketAddress, reason: String)
    case reconnectScheduled(attempt: Int, server: SocketAddress, delayMs: UInt64)
    /// -ERR from the server (the server usually closes after it), or a malformed message that was dropped.
    case serverError(String)
    case closed
}

public struct NATSStatistics: Equatable, Sendable {
    public var messagesIn: UInt64 = 0
    public var bytesIn: UInt64 = 0
    public var messagesOut: UInt64 = 0
    public var bytesOut: UInt64 = 0
    public var connects: UInt64 = 0
    /// Queued-but-unwritten bytes dropped when a live connection broke (NATS core is at-most-once).
    public var bytesDroppedOnDisconnect: UInt64 = 0
    public var publishesRefused: UInt64 = 0
}

/// A received message, copied out of the input buffer.
public struct NATSMessage: Sendable {
    public var subject: String
    public var replyTo: String?
    public var headers: NATSHeaders?
    public var payload: [UInt8]
    public var sid: UInt64
}

public enum NATSRequestError: Error, Equatable, Sendable, CustomStringConvertible {
    case timeout
    /// Nobody subscribes to the subject (status 503): for a per-user subject, "the user is offline".
    case noResponders
    /// The connection broke after the request may have been sent; the answer can no longer arrive.
    case connectionLost
    case closed

    public var description: String {
        switch self {
        case .timeout: return "NATS request timed out"
        case .noResponders: return "no responders for the NATS request subject"
        case .connectionLost: return "NATS connection lost before the answer arrived"
        case .closed: return "NATS connection closed"
        }
    }
}

/// Reconnect delays: the first pass over the server list is immediate (another server is likely up), then
/// base·2^k capped at the maximum, each drawn uniformly from [d/2, d] so many nodes do not retry in step.
public struct NATSReconnectBackoff: Sendable {
    public private(set) var attempt = 0
    private let servers: Int
    private let base: UInt64
    private let cap: UInt64
    private var rng: SplitMix64

    public init(_ configuration: NATSConfiguration) {
        servers = configuration.servers.count
        base = max(1, configuration.reconnectBaseDelayMs)
        cap = max(base, configuration.maxReconnectDelayMs)
        rng = SplitMix64(seed: configuration.seed)
    }

    /// After a successful handshake.
    public mutating func reset() { attempt = 0 }

    /// The delay before the next attempt (counting it).
    public mutating func nextDelay() -> UInt64 {
        attempt += 1
        guard attempt >= servers else { return 0 }
        let exponent = UInt64(min(attempt - servers, 30))
        let full = min(cap, base << exponent)
        return full - rng.next() % (full / 2 + 1)
    }
}
