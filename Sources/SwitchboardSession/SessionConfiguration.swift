// Every limit and default of a session, in one place: what the server core decides with. The defaults
// are documented in README.md ("Limits"); `switchboard serve --help` shows the flags that set them.
import SwitchboardProtocol

public struct SessionConfiguration: Sendable {
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
    /// Unwritten output above which the server stops reading a logged-in connection (until half of it
    /// has drained), and the same before login: a peer that does not read cannot make replies pile up.
    public var readPauseAboveBytes = 256 << 10
    public var preLoginReadPauseAboveBytes = 16 << 10
    /// Most bytes written to one connection per loop turn, so one fast peer cannot starve the rest.
    public var maxWriteBytesPerTurn = 256 << 10
    /// Stored mail sent per page at login is at most `mailPageSize` messages and about this many bytes.
    public var mailPageBytes = 128 << 10
    /// Connections from one client address that have not logged in yet; more are refused (serverBusy).
    public var maxPreLoginConnectionsPerAddress = 1024
    /// Password checks: hashes per address at once, attempts queued per address and in all.
    public var maxHashingPerAddress = 2
    public var maxQueuedLoginsPerAddress = 512
    public var maxQueuedLogins = 4096
    /// A closing connection's last bytes (its ERROR) get this long to be read before the socket closes.
    public var closeLingerMs: UInt64 = 2_000
    /// Failed logins allowed per (user name, client address) and per client address within
    /// `lockoutWindowMs`. Past `maxFailedLoginsPerUser` failures of one name from anywhere, attempts
    /// from addresses that name never logged in from wait a growing delay (250 ms doubling, ≤ 4 s).
    public var maxFailedLoginsPerUser = 5
    public var maxFailedLoginsPerAddress = 20
    public var lockoutWindowMs: UInt64 = 15 * 60 * 1000
    /// Accounts one client address may try to register within `lockoutWindowMs`.
    public var maxRegistrationsPerAddress = 20
    public var pbkdf2Iterations: UInt32 = 210_000
    /// Stored mail sent per page at login; the next page follows the client's MAIL_ACK.
    public var mailPageSize = 256
    /// Recent message ids remembered per sender for in-memory duplicate suppression. Must cover
    /// the most messages a client keeps unacknowledged (sbchat: a handful; sbload: its --window):
    /// resends after a reconnect are at most that many. Larger windows cost memory and cache.
    public var dedupeWindow = 256
    /// Devices (sessions) one user may have online at once; a login from one more device gets
    /// ERROR tooManyDevices. A login from the same device takes over its older connection instead.
    public var maxDevicesPerUser = 8
    /// How long (sender, message id) dedupe records of stored mail are kept.
    public var dedupeRetentionMs: UInt64 = 7 * 24 * 3600 * 1000
    /// A TLS handshake not finished within this time closes the connection.
    public var handshakeTimeoutMs: UInt64 = 5_000
    /// Password hashing threads (the loop never hashes).
    public var hashThreads = 1

    public var budgetLimits: OutputBudgetLimits {
        OutputBudgetLimits(pauseAboveBytes: readPauseAboveBytes, preLoginPauseAboveBytes: preLoginReadPauseAboveBytes,
                           congestAboveBytes: outputSoftCapBytes, hardCapBytes: outputHardCapBytes)
    }

    public var authLimits: AuthGateLimits {
        var limits = AuthGateLimits()
        limits.maxFailuresPerUserAddress = maxFailedLoginsPerUser
        limits.userDelayThreshold = maxFailedLoginsPerUser
        limits.maxFailuresPerAddress = maxFailedLoginsPerAddress
        limits.windowMs = lockoutWindowMs
        limits.maxRegistrationsPerAddress = maxRegistrationsPerAddress
        limits.maxHashing = max(1, hashThreads)
        limits.maxHashingPerAddress = maxHashingPerAddress
        limits.maxQueuedPerAddress = maxQueuedLoginsPerAddress
        limits.maxQueued = maxQueuedLogins
        return limits
    }

    /// How often the maintenance sweep runs: lockout tables, idle buffers, and persisting the recent
    /// message ids of senders who went offline (so a resend is still recognised after a restart).
    public var maintenanceIntervalMs: UInt64 = 30_000

    /// Mail bodies waiting for (or in) a commit, in bytes: above this, the senders adding to it are not
    /// read until half of it has committed (the store, not memory, absorbs a burst of offline sends).
    public var maxStoreBacklogBytes = 32 << 20

    public init() {}
}
