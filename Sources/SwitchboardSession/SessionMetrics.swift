// The core's counters and histograms beyond `ServerStats`: frames by type, refusals by reason, logins,
// mail, store commits, relay latency. Loop-owned plain integers in memory allocated once: recording is
// an increment (no allocation, no lock, no atomic), so it may sit on the relay's hot path; the
// /metrics scrape and the admin socket read them on the same thread.
// Invariants: every table is allocated in init and never resized; indexes are a frame type byte or an
// error code clamped to the table; only the loop thread touches an instance.
import SwitchboardIO
import SwitchboardProtocol

/// A fixed table of counters indexed by a small integer (frame type byte, error code).
public final class CounterTable {
    public let size: Int
    private let values: UnsafeMutablePointer<UInt64>

    public init(size: Int) {
        self.size = size
        values = .allocate(capacity: size)
        values.initialize(repeating: 0, count: size)
    }

    deinit { values.deallocate() }

    /// Out-of-range indexes count in the last slot ("other").
    @inline(__always) public func increment(_ index: Int) { values[index < size ? index : size - 1] &+= 1 }
    @inline(__always) public subscript(_ index: Int) -> UInt64 { values[index] }
}

public final class SessionMetrics {
    /// Decoded frames received, by frame type byte.
    public let framesIn = CounterTable(size: 256)
    /// Frames queued for clients, by frame type byte (an ERROR queued at close included).
    public let framesOut = CounterTable(size: 256)
    /// SENDs refused with SEND_ERROR, by error code (mailboxFull, notAContact, storageFull, ...).
    public let sendsRejected = CounterTable(size: 256)
    /// Connections closed with an ERROR, by its code (slowConsumer, idleTimeout, kicked, ...).
    public let closesByCode = CounterTable(size: 256)
    public var logins: UInt64 = 0
    public var loginFailures: UInt64 = 0
    public var registrations: UInt64 = 0
    public var registrationFailures: UInt64 = 0
    /// MAIL frames sent (stored messages handed to their recipient) and MAIL_ACKed.
    public var mailDelivered: UInt64 = 0
    public var mailAcknowledged: UInt64 = 0
    /// Live deliveries acknowledged by their receiver (DELIVERY_ACK).
    public var deliveriesAcknowledged: UInt64 = 0
    /// Live deliveries a closing connection never acknowledged, moved to its mailbox.
    public var deliveriesRerouted: UInt64 = 0
    /// Receivers that crossed the congestion mark (new messages for them go to the mailbox meanwhile).
    public var congestions: UInt64 = 0
    /// Connections closed by an administrator (`switchboard admin kick`).
    public var kicks: UInt64 = 0
    /// Store commits: nanoseconds per group-commit transaction, and ops per batch.
    public let commitLatency = FixedHistogram(unit: 1 << 10, octaves: 25)
    public let commitBatchSize = FixedHistogram(unit: 1, octaves: 17)
    public var commitFailures: UInt64 = 0
    /// Nanoseconds from the read that brought a SEND in to the write that put its DELIVER on the socket.
    public let relayLatency = FixedHistogram(unit: 1 << 10, octaves: 25)

    public init() {}
}

extension ServerFrame {
    /// The frame's type byte, without encoding it.
    public var frameType: FrameType {
        switch self {
        case .welcome: return .welcome
        case .ok: return .ok
        case .error: return .error
        case .loginOK: return .loginOK
        case .contactList: return .contactList
        case .presence: return .presence
        case .contactUpdate: return .contactUpdate
        case .chatStatus: return .chatStatus
        case .deliver: return .deliver
        case .sendAck: return .sendAck
        case .sendError: return .sendError
        case .mail: return .mail
        case .mailEnd: return .mailEnd
        case .sentCopy: return .sentCopy
        case .ping: return .serverPing
        case .pong: return .serverPong
        }
    }
}
