// The cluster router's configuration, its statistics (metrics and `admin stats`), and the seam to the server
// core it drives (`ClusterRouterHost`). The router itself is ClusterRouter.swift.
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardSession
import SwitchboardStore

public struct ClusterRouterConfiguration: Sendable {
    public var node: String
    public var heartbeatMs: UInt64 = 1_000
    public var nodeTimeoutMs: UInt64 = 3_500
    public var forwardTimeoutMs: UInt64 = 30_000
    public var maxForwardBytes = 64 << 20
    /// Snapshot bytes queued per loop turn (every requester together) and the size of one chunk; a chunk also
    /// holds at most `directoryBatch` users, so the receiver's work per chunk is bounded too.
    public var snapshotBytesPerTurn = 256 << 10
    public var snapshotChunkBytes = 64 << 10
    /// Snapshot chunks wait while NATS holds more than this unwritten (room is left for forwards and presence).
    public var snapshotMaxQueuedBytes = 2 << 20
    /// Users of a gone node dropped from the directory per loop turn (each may read its contacts in LMDB and
    /// push presence to its online contacts here).
    public var directoryBatch = 1_000
    /// A snapshot that sends no chunk for this long (after it was asked for, or since its last chunk) is asked again; a heartbeat whose user count
    /// disagrees with the directory (on two heartbeats in a row) asks one at most this often per node.
    public var snapshotRetryMs: UInt64 = 10_000
    public init(node: String) { self.node = node }

    /// Node names are NATS subject tokens: 1-32 of A-Z a-z 0-9 _ -.
    public static func validNodeName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 32
            && name.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x5F || $0 == 0x2D }
    }
}

public struct ClusterRouterStatistics: Sendable {
    public var forwardsSent: UInt64 = 0
    public var forwardsAnswered: UInt64 = 0
    public var forwardsToMailbox: UInt64 = 0
    public var forwardsRefused: UInt64 = 0
    public var inboundReceived: UInt64 = 0
    public var presenceEventsIn: UInt64 = 0
    public var presenceEventsOut: UInt64 = 0
    public var nodesGone: UInt64 = 0
    public var publishFailures: UInt64 = 0
    /// Turns whose answers NATS could not queue (kept, tried again 5 ms later), and answers dropped past the bound.
    public var answerDeferrals: UInt64 = 0
    public var answersDropped: UInt64 = 0
    public var malformed: UInt64 = 0
    /// Heartbeats or events under this node's own name from another process.
    public var duplicateNodeName: UInt64 = 0
    /// Publishes not made because the NATS link was down (rebuilt by the epoch and snapshot logic).
    public var publishesSkippedOffline: UInt64 = 0
    /// Snapshots this node asked for, and those asked again (incomplete, or a heartbeat's count disagreed).
    public var snapshotsRequested: UInt64 = 0
    public var snapshotRerequests: UInt64 = 0
    /// Snapshots this node sent whole, their chunks, and chunks that could not be queued yet (retried).
    public var snapshotsServed: UInt64 = 0
    public var snapshotChunksSent: UInt64 = 0
    public var snapshotChunkDeferrals: UInt64 = 0
    /// Directory entries (devices) a snapshot added or removed: what really changed while events were missed.
    public var directoryEntriesReconciled: UInt64 = 0
    /// Users dropped from the directory because their node was gone or its snapshot no longer had them.
    public var directoryUsersDropped: UInt64 = 0
    /// The longest single batch of directory upkeep (loop time, ns).
    public var longestDirectoryBatchNs: UInt64 = 0
}

/// What the router needs of the server core: its local sessions (for snapshots and heartbeats), the directory
/// (read), and the calls that change presence and settle messages. `ServerCore` conforms
/// (RelayServer+Cluster.swift); the router's tests use a recording double.
protocol ClusterRouterHost: AnyObject {
    /// Users with a session here (the heartbeat's count).
    var localUserCount: Int { get }
    /// The users online here now (a snapshot walks this list, reading each user's devices when its chunk is made).
    func localUserIDs() -> [UserID]
    /// `user`'s devices online here and its accepted contacts; nil when it has no session here.
    func localDevices(of user: UserID) -> (devices: [String], contacts: [UserID])?
    /// `user`'s devices on other nodes, as the directory has them.
    func remoteDevices(of user: UserID) -> [(node: UInt16, deviceID: String)]
    func remoteDeviceJoined(user: UserID, node: UInt16, deviceID: String, contacts: [UserID])
    func remoteDeviceLeft(user: UserID, node: UInt16, deviceID: String)
    func inboundMessage(from sender: UserID, to recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView,
                        multiCopy: Bool)
    func forwardAnswered(sender: UserID, messageID: UInt64, status: SendStatus)
    func forwardRefused(sender: UserID, messageID: UInt64, code: ErrorCode, message: String)
    func forwardUndeliverable(sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: [UInt8])
    func remoteSentCopy(sender: UserID, recipient: UserID, messageID: UInt64, sentAtMs: UInt64, body: ByteView)
    func remoteSenderAnswered(sender: UserID, messageID: UInt64, answer: SenderAnswer)
}
