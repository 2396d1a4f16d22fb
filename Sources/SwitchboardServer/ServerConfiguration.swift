// How the server is started: where it listens, its data folder, TLS, the store's map size, and the
// session limits (SessionConfiguration, forwarded here under their old names).

/// SwitchboardServer owns the running relay: it accepts connections on the event loop, moves bytes
/// between sockets and per-connection buffers, feeds decoded frames to the relay core, carries out
/// its decisions, and runs the helper threads for password hashing and LMDB group commits.
import SwitchboardCluster
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardSession
import SwitchboardTLS

public struct ServerConfiguration: Sendable {
    public var listenAddress: SocketAddress
    public var dataDirectory: String
    /// LMDB map size: the most the database may grow to.
    public var storeMapSizeBytes = 1 << 34
    /// TLS: certificate chain and key (PEM). nil with `plaintext == false` is a configuration error.
    public var tls: TLSServerConfiguration?
    /// Serve without TLS (benchmarks against plaintext peers only); logged as a warning.
    public var plaintext = false
    /// Everything the session core decides with (limits, caps, auth, mail, dedupe); the properties
    /// below forward to it so each limit has one home.
    public var session = SessionConfiguration()
    /// The monitoring listener (/metrics, /healthz); nil: none (the default).
    public var metricsAddress: SocketAddress?
    /// The admin socket; nil: `DATA/admin.sock`. `adminSocketEnabled = false` opens none.
    public var adminSocketPath: String?
    public var adminSocketEnabled = true
    /// /healthz answers 503 when one store commit has been running longer than this.
    public var storeStallMs: UInt64 = 30_000
    public var effectiveAdminSocketPath: String {
        adminSocketPath ?? (dataDirectory.hasSuffix("/") ? dataDirectory + "admin.sock" : dataDirectory + "/admin.sock")
    }
    /// Accepts + closes after which the heap is trimmed once the churn calms down (malloc_trim on a helper
    /// thread, see HeapTrimmer); 0 turns it off.
    public var heapTrimChurn = 1024
    /// Cluster mode: the NATS servers ("nats://IP:PORT,...") and this node's name; nil: a single node.
    public var clusterServers: String?
    public var clusterNode: String?
    /// What the NATS servers require in CONNECT (--cluster-credentials FILE), if anything.
    public var clusterCredentials: NATSCredentials?
    public var clusterReplicas = 3
    public var clusterCommitTimeoutMs: UInt64 = 15_000

    public var serverName: String { get { session.serverName } set { session.serverName = newValue } }
    public var limits: ServerLimits { get { session.limits } set { session.limits = newValue } }
    public var maxConnections: Int { get { session.maxConnections } set { session.maxConnections = newValue } }
    public var outputSoftCapBytes: Int { get { session.outputSoftCapBytes } set { session.outputSoftCapBytes = newValue } }
    public var outputHardCapBytes: Int { get { session.outputHardCapBytes } set { session.outputHardCapBytes = newValue } }
    public var readPauseAboveBytes: Int { get { session.readPauseAboveBytes } set { session.readPauseAboveBytes = newValue } }
    public var preLoginReadPauseAboveBytes: Int { get { session.preLoginReadPauseAboveBytes } set { session.preLoginReadPauseAboveBytes = newValue } }
    public var maxWriteBytesPerTurn: Int { get { session.maxWriteBytesPerTurn } set { session.maxWriteBytesPerTurn = newValue } }
    public var mailPageBytes: Int { get { session.mailPageBytes } set { session.mailPageBytes = newValue } }
    public var maxPreLoginConnectionsPerAddress: Int { get { session.maxPreLoginConnectionsPerAddress } set { session.maxPreLoginConnectionsPerAddress = newValue } }
    public var maxHashingPerAddress: Int { get { session.maxHashingPerAddress } set { session.maxHashingPerAddress = newValue } }
    public var maxQueuedLoginsPerAddress: Int { get { session.maxQueuedLoginsPerAddress } set { session.maxQueuedLoginsPerAddress = newValue } }
    public var maxQueuedLogins: Int { get { session.maxQueuedLogins } set { session.maxQueuedLogins = newValue } }
    public var closeLingerMs: UInt64 { get { session.closeLingerMs } set { session.closeLingerMs = newValue } }
    public var maxFailedLoginsPerUser: Int { get { session.maxFailedLoginsPerUser } set { session.maxFailedLoginsPerUser = newValue } }
    public var maxFailedLoginsPerAddress: Int { get { session.maxFailedLoginsPerAddress } set { session.maxFailedLoginsPerAddress = newValue } }
    public var lockoutWindowMs: UInt64 { get { session.lockoutWindowMs } set { session.lockoutWindowMs = newValue } }
    public var maxRegistrationsPerAddress: Int { get { session.maxRegistrationsPerAddress } set { session.maxRegistrationsPerAddress = newValue } }
    public var pbkdf2Iterations: UInt32 { get { session.pbkdf2Iterations } set { session.pbkdf2Iterations = newValue } }
    public var hashThreads: Int { get { session.hashThreads } set { session.hashThreads = newValue } }
    public var mailPageSize: Int { get { session.mailPageSize } set { session.mailPageSize = newValue } }
    public var dedupeWindow: Int { get { session.dedupeWindow } set { session.dedupeWindow = newValue } }
    public var maxDevicesPerUser: Int { get { session.maxDevicesPerUser } set { session.maxDevicesPerUser = newValue } }
    public var dedupeRetentionMs: UInt64 { get { session.dedupeRetentionMs } set { session.dedupeRetentionMs = newValue } }
    public var maxStoreBacklogBytes: Int { get { session.maxStoreBacklogBytes } set { session.maxStoreBacklogBytes = newValue } }
    public var maintenanceIntervalMs: UInt64 { get { session.maintenanceIntervalMs } set { session.maintenanceIntervalMs = newValue } }
    public var handshakeTimeoutMs: UInt64 { get { session.handshakeTimeoutMs } set { session.handshakeTimeoutMs = newValue } }

    public init(listenAddress: SocketAddress, dataDirectory: String) {
        self.listenAddress = listenAddress
        self.dataDirectory = dataDirectory
    }
}
