// What the main thread and the load threads share. Each load thread owns its event loop and its
// connections; the only shared state is here: the run plan (immutable), a few atomics that move the
// run through its stages, and mutex-protected slots where threads publish progress and results.
import Glibc
import Histogram
import Synchronization
import SwitchboardIO

enum Scenario: String, Sendable { case relay, connect, offline }

/// How connections are spread over several targets (`--spread`). User u is end u & 1 (0 sender,
/// 1 receiver) of pair u / 2.
enum Spread: String, Sendable, CaseIterable {
    /// Connection u to target u % n: with an even n each pair's ends land on different targets.
    case roundRobin = "round-robin"
    /// Both ends of pair k on target k % n: every message stays on one server (same-node figures).
    case same
    /// Sender of pair k on target k % n, its receiver on (k + 1) % n: every message crosses servers.
    case cross

    /// The target of user `user` among `count`.
    func target(ofUser user: Int, count: Int) -> Int {
        guard count > 1 else { return 0 }
        switch self {
        case .roundRobin: return user % count
        case .same: return (user / 2) % count
        case .cross: return (user / 2 + (user & 1)) % count
        }
    }
}

/// The run plan, identical for every thread.
struct Plan: Sendable {
    var scenario: Scenario
    /// The servers (one, or several spread over by `spread`).
    var targets: [SocketAddress]
    var spread: Spread = .roundRobin
    var sourceAddresses: [SocketAddress]
    var threads: Int
    var prefix: String
    var password: String
    var run: UInt32
    // relay / offline
    var pairs: Int
    var payload: Int
    var window: Int
    /// Open loop: total messages per second over all senders (0: closed loop).
    var rate: Double
    var maxInflight: Int
    var count: UInt64
    var messagesPerSender: Int
    var warmupNs: UInt64
    var durationNs: UInt64
    var drainNs: UInt64
    var busyPoll: Bool
    // connect
    var connections: Int
    var loginConcurrency: Int
    /// TLS: verify the server against this CA file (nil: plaintext).
    var tlsCAFile: String? = nil
    /// Relay only: the server's protocol (Switchboard, or a peer adapter), and how the target was written.
    var peer: PeerProtocol = .switchboard
    var targetLabel: String? = nil
    /// MQTT: QoS of publishes and of the subscription.
    var qos: Int = 0
    /// Peers without an acknowledgement (MQTT QoS 0, NATS): a sender's slot is released when its
    /// receiver (same thread) gets the message.
    var releaseOnReceipt = false
    /// Relay (Switchboard) only: a connection whose server goes away reconnects to the next target
    /// (round robin from its own), logs in again and resends what was not acknowledged (same ids).
    var failover = false
    /// Most reconnect attempts per loss of a server (back-off 50 ms doubling to 1 s between them).
    var failoverAttempts = 10

    /// The target of user `user` (an index into `targets`).
    func targetIndex(ofUser user: Int) -> Int { spread.target(ofUser: user, count: targets.count) }

    /// Connections planned per target.
    var connectionsPerTarget: [Int] {
        var counts = Array(repeating: 0, count: targets.count)
        let users = scenario == .connect ? connections : 2 * pairs
        for user in 0..<users { counts[targetIndex(ofUser: user)] += 1 }
        return counts
    }

    /// Users handled by `thread`: pair k (users 2k, 2k+1) or connection i goes to thread k % threads.
    func units(of thread: Int) -> [Int] {
        let total = scenario == .connect ? connections : pairs
        return Array(stride(from: thread, to: total, by: threads))
    }
}

/// Stages, set by the main thread. Times are monotonic ns; 0 means "not yet".
final class Coordinator: Sendable {
    let ready = Atomic<Int>(0)
    let failedThreads = Atomic<Int>(0)
    /// Senders start (relay: t0 of the schedule; offline: phase A).
    let goNs = Atomic<UInt64>(0)
    let phaseADone = Atomic<Int>(0)
    /// Offline: receivers log in and drain.
    let phaseBNs = Atomic<UInt64>(0)
    /// Stop sending now (interrupt, or end of a connect hold).
    let stop = Atomic<Bool>(false)
    let finished = Atomic<Int>(0)
    let progress: Mutex<[ProgressSnapshot]>
    let results: Mutex<[ThreadResult?]>

    init(threads: Int) {
        progress = Mutex(Array(repeating: ProgressSnapshot(), count: threads))
        results = Mutex(Array(repeating: nil, count: threads))
    }
}

/// Cumulative counters of one thread (published about every 250 ms).
struct Counters: Sendable {
    var sent: UInt64 = 0
    var acked: UInt64 = 0
    var ackedStored: UInt64 = 0
    var refused: UInt64 = 0
    var received: UInt64 = 0
    var receivedInWindow: UInt64 = 0
    var mailReceived: UInt64 = 0
    var staleMail: UInt64 = 0
    var duplicates: UInt64 = 0
    var corrupt: UInt64 = 0
    var outOfOrder: UInt64 = 0
    var unexpectedAcks: UInt64 = 0
    var serverErrors: UInt64 = 0
    var disconnects: UInt64 = 0
    var connectFailures: UInt64 = 0
    var loggedIn: UInt64 = 0
    var stalls: UInt64 = 0
    /// Failover: connections that lost their server, logins again after that, sends repeated.
    var serverLost: UInt64 = 0
    var reconnects: UInt64 = 0
    var resent: UInt64 = 0

    mutating func add(_ o: Counters) {
        sent += o.sent; acked += o.acked; ackedStored += o.ackedStored; refused += o.refused
        received += o.received; receivedInWindow += o.receivedInWindow; mailReceived += o.mailReceived
        staleMail += o.staleMail; duplicates += o.duplicates; corrupt += o.corrupt; outOfOrder += o.outOfOrder
        unexpectedAcks += o.unexpectedAcks; serverErrors += o.serverErrors; disconnects += o.disconnects
        connectFailures += o.connectFailures; loggedIn += o.loggedIn; stalls += o.stalls
        serverLost += o.serverLost; reconnects += o.reconnects; resent += o.resent
    }

    var errors: UInt64 { duplicates + corrupt + unexpectedAcks + serverErrors + disconnects + connectFailures + refused }
}

struct ProgressSnapshot: Sendable {
    var counters = Counters()
    /// Delivery latencies recorded since the previous snapshot was taken by the main thread.
    var interval = Latency.make()
}

struct ThreadResult: Sendable {
    var counters = Counters()
    var latency = Latency.make()
    var ackLatency = Latency.make()
    var loginLatency = Latency.make()
    var lost: UInt64 = 0
    var unacknowledged: UInt64 = 0
    var storedNotDrained: UInt64 = 0
    var phaseAEndNs: UInt64 = 0
    var firstLoginNs: UInt64 = 0
    var lastLoginNs: UInt64 = 0
    var drainEndNs: UInt64 = 0
    var firstErrors: [String] = []
    /// Logins completed per target (index into `Plan.targets`).
    var loggedInPerTarget: [UInt64] = []
    /// Failover: logins again per target, and the time from losing a server to being logged in again.
    var reconnectsPerTarget: [UInt64] = []
    var reconnectLatency = Latency.make()
}

enum Latency {
    /// Nanoseconds, 3 significant digits, up to 100 s.
    static func make() -> Histogram<UInt64> {
        Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 100_000_000_000, numberOfSignificantValueDigits: .three)
    }
}

/// Process CPU time (all threads), for "generator CPU" beside each figure.
func processCPUNs() -> UInt64 {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    let user = UInt64(usage.ru_utime.tv_sec) * 1_000_000_000 + UInt64(usage.ru_utime.tv_usec) * 1000
    let system = UInt64(usage.ru_stime.tv_sec) * 1_000_000_000 + UInt64(usage.ru_stime.tv_usec) * 1000
    return user + system
}
