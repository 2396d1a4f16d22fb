// One client connection as the server core sees it (no socket: the driver keeps that, reachable through
// `link`). Invariants: only the loop thread touches it; `input`
// holds only bytes of an incomplete frame, or frames received while reading was paused (complete
// frames are otherwise handled straight from the loop's read buffer); `output` keeps every DELIVER
// frame from the oldest unacknowledged one on (`DeliveryWindow` names them by stream position) so a
// drop can move them to the mailbox, and keeps the frame at `frameCursor` (a frame boundary at or
// before the write position) so a close can cut unwritten output at a frame boundary.
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

public final class ClientState {
    public enum Phase: Equatable {
        case awaitingHello
        case awaitingAuth
        /// A password hash or an account commit is in flight: input is parked, not read.
        case authenticating
        case active
        case closing
    }

    public enum MailPaging: Equatable {
        case notStarted
        /// A page was sent; the next one follows the client's MAIL_ACK for `cursor`.
        case awaitingAck
        /// MAIL_END was sent; newly stored mail is pushed as it commits.
        case done
    }

    public let id: ConnectionID
    /// The peer's address (the unit of per-address limits) and "address:port" as shown to users.
    public let host: String
    public let peerText: String
    /// The driver's object for this client (its socket); cleared when the driver is done with it.
    public var link: AnyObject?

    public var phase: Phase = .awaitingHello
    public var userID: UserID = 0
    public var userName = ""
    /// The HELLO's protocol version (1 or 2); version 2 gets SENT_COPY frames.
    public var protocolVersion: UInt16 = 0
    /// The device named by LOGIN_DEVICE ("" for a LOGIN without one: the user's implicit device).
    public var deviceID = ""
    public var deviceName = ""
    /// The user's relay session, shared by all its devices (nil before login, after a takeover and
    /// once closed). Read on the hot path to find the sender's other devices without a lookup.
    public var session: Session?
    /// Whose mailbox unacknowledged deliveries go to when this connection closes (kept after a takeover).
    public var rerouteOwner: UserID = 0
    /// Bytes of an incomplete frame, or frames held while reading was paused. The object exists only once a
    /// connection needed it (most never do: whole frames are handled from the loop's read buffer) and is given
    /// back by the periodic maintenance when empty: an idle connection holds none (112 B each).
    public private(set) var pendingInput: ByteBuffer?
    public var input: ByteBuffer {
        if let buffer = pendingInput { return buffer }
        let buffer = ByteBuffer()
        pendingInput = buffer
        return buffer
    }
    /// Whether bytes wait in `input` (false without allocating it).
    @inline(__always) public var hasInput: Bool {
        guard let buffer = pendingInput else { return false }
        return !buffer.isEmpty
    }
    /// Gives the input buffer (object and storage) back when it holds nothing.
    public func releaseInputIfEmpty() {
        if let buffer = pendingInput, buffer.isEmpty { pendingInput = nil }
    }
    public let output = ByteBuffer()
    public var window = DeliveryWindow()
    public var isPendingWrite = false
    /// Deliveries on this connection up to this seq have been timed for the relay latency metric.
    public var latencyTimedSeq: UInt64 = 0
    /// SENDs received from this client and DELIVERs queued for it (for `who` and `top`'s top talkers).
    public var messagesSent: UInt64 = 0
    public var messagesReceived: UInt64 = 0
    /// A password hash or account commit is in flight for this connection.
    public var parked = false
    /// What its output backlog means (reading paused, congested); updated only by the output path.
    public var budget = OutputBudget()
    /// Its sends filled the store's commit backlog: not read until the store catches up.
    public var storePaused = false
    public var readingPaused: Bool { parked || budget.readingPaused || storePaused }
    /// Stream position of a frame boundary at or before the write position (see the header).
    public var frameCursor: UInt64 = 0
    /// The ERROR the peer gets when the connection is finalized (nil: closed without one).
    public var closeCode: ErrorCode?
    public var closeReason = ""
    /// Counted in the pre-login connections of its address until it logs in or closes.
    public var countedPreLogin = false

    // timers
    public var createdAt: UInt64
    public var lastActivity: UInt64
    public var pingOutstanding = false
    public var timerDeadline: UInt64 = 0

    // stored mail
    public var mailPaging: MailPaging = .notStarted
    public var mailCursor: UInt64 = 0
    public var mailSentCount: UInt32 = 0
    /// Mail sent and not yet acknowledged: (seq, body bytes) to release quota on MAIL_ACK.
    public var mailInFlight: [(seq: UInt64, bytes: Int)] = []
    /// Mail committed after MAIL_END was not pushed (the receiver was congested): it is sent from the
    /// store, after `mailCursor`, once the receiver drains or acknowledges.
    public var mailBehind = false
    /// Cluster mode: how many more SENDs of this login are checked against the store's mail dedupe
    /// records (resends of what a previous node stored but never acknowledged).
    var storedDedupeChecks = 0

    public init(id: ConnectionID, host: String, peerText: String, now: UInt64) {
        self.id = id
        self.host = host
        self.peerText = peerText
        self.createdAt = now
        self.lastActivity = now
    }

    public var isClosing: Bool { phase == .closing }
}
