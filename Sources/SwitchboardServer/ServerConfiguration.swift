// Every limit the server enforces, with its default. The defaults are documented in README.md
// ("Limits"); `switchboard serve --help` shows the flags that set them.

/// SwitchboardServer owns the running relay: it accepts connections on the event loop, moves bytes
/// between sockets and per-connection buffers, feeds decoded frames to the relay core, carries out
/// its decisions, and runs the helper threads for password hashing and LMDB group commits.
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardTLS

public struct ServerConfiguration: Sendable {
    public var listenAddress: SocketAddress
    public var dataDirectory: String
    public var serverName = "switchboard"
    /// Limits announced in WELCOME (frame sizes, timeouts, mailbox quota).
    public var limits = ServerLimits()
    public var maxConnections = 100_000
    /// Above this backlog (bytes queued or kept for unacknowledged deliveries) a receiver is
    /// "congested": new messages for it go to its mailbox instead of its connection.
    public var outputSoftCapBytes = 256 << 10
    /// Above this backlog the receiver is disconnected (ERROR slowConsumer); unacknowledged
    /// deliveries move to its mailbox, so nothing is lost.
    public var outputHardCapBytes = 4 << 20
    /// Most bytes written to one connection per loop turn, so one fast peer cannot starve the rest.
    public var maxWriteBytesPerTurn = 256 << 10
    /// Failed logins allowed per user name and per client address within `lockoutWindowMs`.
    public var maxFailedLoginsPerUser = 5
    public var maxFailedLoginsPerAddress = 20
    public var lockoutWindowMs: UInt64 = 15 * 60 * 1000
    /// Accounts one client address may try to register within `lockoutWindowMs`.
    public var maxRegistrationsPerAddress = 20
    public var pbkdf2Iterations: UInt32 = 210_000
    /// Password hashing threads (the loop never hashes).
    public var hashThreads = 1
    /// Stored mail sent per page at login; the next page follows the client's MAIL_ACK.
    public var mailPageSize = 256
    /// Recent message ids remembered per sender for in-memory duplicate suppression. Must cover
    /// the most messages a client keeps unacknowledged (sbchat: a handful; sbload: its --window):
    /// resends after a reconnect are at most that many. Larger windows cost memory and cache.
    public var dedupeWindow = 256
    /// How long (sender, message id) dedupe records of stored mail are kept.
    public var dedupeRetentionMs: UInt64 = 7 * 24 * 3600 * 1000
    /// LMDB map size: the most the database may grow to.
    public var storeMapSizeBytes = 1 << 34
    /// TLS: certificate chain and key (PEM). nil with `plaintext == false` is a configuration error.
    public var tls: TLSServerConfiguration?
    /// Serve without TLS (benchmarks against plaintext peers only); logged as a warning.
    public var plaintext = false
    /// A TLS handshake not finished within this time closes the connection.
    public var handshakeTimeoutMs: UInt64 = 5_000

    public init(listenAddress: SocketAddress, dataDirectory: String) {
        self.listenAddress = listenAddress
        self.dataDirectory = dataDirectory
    }
}
