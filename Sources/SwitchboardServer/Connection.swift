// One client connection as the loop sees it. Invariants: only the loop thread touches it; `input`
// holds only bytes of an incomplete frame, or frames received while reading was paused (complete
// frames are otherwise handled straight from the loop's read buffer); `output` keeps every DELIVER
// frame from the oldest unacknowledged one on (`DeliveryWindow` names them by stream position) so a
// drop can move them to the mailbox, and keeps the frame at `frameCursor` (a frame boundary at or
// before the write position) so a close can cut unwritten output at a frame boundary.
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardSession
import SwitchboardStore

final class Connection: EventHandler {
    enum Phase: Equatable {
        case awaitingHello
        case awaitingAuth
        /// A password hash or an account commit is in flight: input is parked, not read.
        case authenticating
        case active
        case closing
    }

    enum MailPaging: Equatable {
        case notStarted
        /// A page was sent; the next one follows the client's MAIL_ACK for `cursor`.
        case awaitingAck
        /// MAIL_END was sent; newly stored mail is pushed as it commits.
        case done
    }

    let id: ConnectionID
    let transport: Transport
    let peer: SocketAddress
    let peerText: String
    var registration: RegistrationID?
    weak var server: RelayServer?

    var phase: Phase = .awaitingHello
    var userID: UserID = 0
    var userName = ""
    /// Whose mailbox unacknowledged deliveries go to when this connection closes (kept after a takeover).
    var rerouteOwner: UserID = 0
    let input = ByteBuffer()
    let output = ByteBuffer()
    var window = DeliveryWindow()
    var isPendingWrite = false
    /// A password hash or account commit is in flight for this connection.
    var parked = false
    /// What its output backlog means (reading paused, congested); updated only by the output path.
    var budget = OutputBudget()
    var readingPaused: Bool { parked || budget.readingPaused }
    /// Stream position of a frame boundary at or before the write position (see the header).
    var frameCursor: UInt64 = 0
    /// The ERROR the peer gets when the connection is finalized (nil: closed without one).
    var closeCode: ErrorCode?
    var closeReason = ""
    /// Counted in the pre-login connections of its address until it logs in or closes.
    var countedPreLogin = false

    // timers
    var createdAt: UInt64
    var lastActivity: UInt64
    var pingOutstanding = false
    var timerDeadline: UInt64 = 0

    // stored mail
    var mailPaging: MailPaging = .notStarted
    var mailCursor: UInt64 = 0
    var mailSentCount: UInt32 = 0
    /// Mail sent and not yet acknowledged: (seq, body bytes) to release quota on MAIL_ACK.
    var mailInFlight: [(seq: UInt64, bytes: Int)] = []
    /// Mail committed after MAIL_END was not pushed (the receiver was congested): it is sent from the
    /// store, after `mailCursor`, once the receiver drains or acknowledges.
    var mailBehind = false

    init(id: ConnectionID, transport: Transport, peer: SocketAddress, now: UInt64) {
        self.id = id
        self.transport = transport
        self.peer = peer
        self.peerText = peer.description
        self.createdAt = now
        self.lastActivity = now
    }

    var isClosing: Bool { phase == .closing }
    var isLoggedIn: Bool { userID != 0 && phase != .closing }

    func handle(events: IOEvents, loop: EventLoop) {
        server?.handle(self, events: events)
    }
}
