// `sbload`: the Switchboard load generator. Each scenario runs on N threads, each with its own epoll
// loop (SwitchboardIO) and its own share of connections; the main thread only moves the run through
// its stages, prints a progress line every second and writes the report. Targets are loopback only.
import ArgumentParser
import Glibc
import Histogram
import Synchronization
import SwitchboardClient
import SwitchboardIO

extension Spread: ExpressibleByArgument {}

@main
struct SBLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sbload",
        abstract: "Load generator for the Switchboard relay (loopback targets only).",
        discussion: """
        Users come from `switchboard users bulk-create --prefix P --count N --password PW --pair-contacts` \
        (run it while the server is stopped). Pair k is PREFIX(2k) -> PREFIX(2k+1).
        With several targets (--target A,B,...: the nodes of one cluster), connections are spread over them \
        as --spread says, and the report gives each target's connections and logins.
        Exit status: 0 passed, 2 a message was lost, duplicated or corrupted, 3 other failures \
        (disconnects, refused or unacknowledged messages, setup errors).
        """,
        subcommands: [Relay.self, Connect.self, Offline.self, LoginStorm.self, PeerSelfTest.self])
}

struct CommonOptions: ParsableArguments {
    @Option(help: ArgumentHelp("""
        Server address HOST:PORT (loopback only), or several as HOST:PORT,HOST:PORT,... (at most \(ServerList.maxEntries): \
        the nodes of one cluster; see --spread). relay also takes one peer to compare with: redis://HOST[:6379] (pub/sub), \
        mqtt://HOST[:1883] (MQTT 3.1.1, see --qos), nats://HOST[:4222] (core protocol).
        """, valueName: "targets"))
    var target = "127.0.0.1:7878"
    @Option(help: """
        With several targets: round-robin (connection u to target u mod N), same (both ends of pair k on target \
        k mod N: messages stay on one node) or cross (pair k's sender on target k mod N, its receiver on the next: \
        every message crosses nodes; needs two targets or more).
        """)
    var spread = Spread.roundRobin
    @Option(help: "Load threads, each with its own epoll loop and share of connections.")
    var threads = 1
    @Option(help: "User name prefix given to bulk-create.")
    var prefix = "load"
    @Option(help: "Password of the bulk-created users (or SWITCHBOARD_PASSWORD).")
    var password: String?
    @Option(help: "Spread connections over this many source addresses 127.0.0.1, .2, ... (default: one per 28,000 connections).")
    var sourceAddresses: Int?
    @Option(help: "Most connections logging in at the same time (all threads).")
    var loginConcurrency = 256
    @Option(help: """
        The server's pid, to report its CPU use (and, for connect, RSS per connection) from /proc. Repeat it for \
        several servers (--target A,B): their CPU and RSS are added up.
        """)
    var serverPid: [Int32] = []
    @Flag(help: "Print the final report as JSON on stdout (the human report goes to stderr).")
    var json = false
    @Flag(help: "TLS (verified with --ca). relay/offline run TLS inside the epoll engine; connect and login-storm use blocking TLS clients.")
    var tls = false
    @Option(help: "With --tls: the CA certificate to verify the server with (e.g. DATA/tls/ca.pem from `switchboard cert init`).")
    var ca: String?

    func resolvedPassword() throws -> String {
        if let password { return password }
        if let value = getenv("SWITCHBOARD_PASSWORD") { return String(cString: value) }
        throw ValidationError("give --password or set SWITCHBOARD_PASSWORD")
    }

    /// The Switchboard targets as written (HOST:PORT each).
    func targetList() throws -> ServerList {
        if target.contains("://") {
            throw ValidationError("--target \(target): peer adapters (redis://, mqtt://, nats://) only run the relay scenario, with one target")
        }
        let list: ServerList
        do { list = try ServerList(parsing: target) } catch { throw ValidationError("--target: \(error)") }
        if spread == .cross && list.count < 2 {
            throw ValidationError("--spread cross needs at least two targets (--target A,B)")
        }
        return list
    }

    func addresses() throws -> [SocketAddress] {
        try targetList().entries.map(loopbackAddress)
    }

    /// relay: Switchboard HOST:PORT[,HOST:PORT...], or one SCHEME://HOST[:PORT][/] for a peer adapter.
    func relayTarget() throws -> (peer: PeerProtocol, addresses: [SocketAddress], label: String) {
        guard let schemeEnd = target.range(of: "://") else {
            return (.switchboard, try addresses(), target)
        }
        if target.contains(",") { throw ValidationError("--target \(target): a peer adapter takes one target") }
        if spread != .roundRobin { throw ValidationError("--spread applies to Switchboard targets only") }
        let scheme = String(target[..<schemeEnd.lowerBound]).lowercased()
        guard let peer = PeerProtocol(rawValue: scheme), peer != .switchboard else {
            throw ValidationError("--target \(target): unknown scheme '\(scheme)' (redis://, mqtt:// or nats://; TLS peers are not supported)")
        }
        var hostPort = String(target[schemeEnd.upperBound...])
        if hostPort.hasSuffix("/") { hostPort.removeLast() }
        guard !hostPort.isEmpty, !hostPort.contains("/"), !hostPort.contains("@") else {
            throw ValidationError("--target \(target): expected \(scheme)://HOST[:PORT] (no user, path or database)")
        }
        let hasPort = hostPort.hasPrefix("[") ? hostPort.contains("]:") : hostPort.contains(":")
        if !hasPort { hostPort += ":\(peer.defaultPort)" }
        let address = try loopbackAddress(hostPort)
        return (peer, [address], "\(scheme)://\(address)")
    }

    private func loopbackAddress(_ text: String) throws -> SocketAddress {
        let address: SocketAddress
        do { address = try SocketAddress(parsing: text) } catch { throw ValidationError("--target: \(error)") }
        guard address.isLoopback else {
            throw ValidationError("--target \(text) is not a loopback address: sbload only loads servers on this machine (127.0.0.0/8 or ::1)")
        }
        return address
    }

    func sources(connections: Int, targets: [SocketAddress]) throws -> [SocketAddress] {
        let wanted = sourceAddresses ?? (connections > 28_000 ? (connections + 27_999) / 28_000 : 0)
        guard wanted > 0 else { return [] }
        guard wanted <= 250 else { throw ValidationError("--source-addresses must be at most 250") }
        for target in targets {
            guard case .v4 = target.family else { throw ValidationError("--source-addresses needs IPv4 targets") }
        }
        return try (1...wanted).map { try SocketAddress(parsing: "127.0.0.\($0):0") }
    }

    /// The CA file when --tls is on; nil for plaintext.
    func tlsCAFile() throws -> String? {
        guard tls else { return nil }
        guard let ca else { throw ValidationError("--tls needs --ca FILE (the server's CA, e.g. DATA/tls/ca.pem)") }
        return ca
    }

    func validateCommon() throws {
        guard threads >= 1 && threads <= 64 else { throw ValidationError("--threads must be 1...64") }
        guard loginConcurrency >= 1 else { throw ValidationError("--login-concurrency must be positive") }
    }
}

struct Relay: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "P sender/receiver pairs relay messages; closed loop (--window) or open loop (--rate).")
    @OptionGroup var common: CommonOptions
    @Option(help: "Sender/receiver pairs (uses users 0 ..< 2*pairs).") var pairs = 100
    @Option(help: "Message body bytes (at least 32: sequence, timestamp, check).") var payload = 64
    @Option(help: "Closed loop: unacknowledged messages per sender.") var window = 64
    @Option(help: "Open loop: total messages per second (latency from the intended send time).") var rate: Double?
    @Option(help: "Open loop: most unacknowledged messages per sender before the schedule stalls.") var maxInflight = 4096
    @Option(help: "Seconds measured (after the warm-up).") var duration: Double = 5
    @Option(help: "Seconds of warm-up excluded from the figures.") var warmup: Double = 1
    @Option(help: "Stop after this many messages in total (warm-up included).") var count: UInt64?
    @Option(help: "Seconds to wait for outstanding acknowledgements after sending stops.") var drain: Double = 5
    @Flag(help: ArgumentHelp("""
        When a connection's server goes away (EOF, reset, refused), reconnect it to the next target (round robin from \
        its own; back-off 50 ms doubling to 1 s), log in again and resend every unacknowledged message with the same \
        id (the cluster drops what it already delivered). Recovered losses are reported as reconnects, not failures.
        """))
    var failover = false
    @Option(help: "With --failover: most reconnect attempts per lost server before the connection counts as a disconnect.")
    var failoverAttempts = 10
    @Option(help: "Open loop: spin instead of sleeping when the next send is under 2 ms away (precise schedule, 100% CPU).")
    var busyPoll = true
    @Option(help: """
        mqtt:// only: QoS of publishes and subscriptions. 1: the broker's PUBACK releases the sender's window slot \
        (the receiver PUBACKs each delivery); 0: no ack exists, so a slot is released when the receiver (same \
        sbload thread) gets the message.
        """)
    var qos = 0

    func validate() throws {
        try common.validateCommon()
        guard pairs >= 1 else { throw ValidationError("--pairs must be positive") }
        guard payload >= Payload.headerBytes && payload <= 65_000 else { throw ValidationError("--payload must be 32...65000") }
        guard window >= 1 else { throw ValidationError("--window must be positive") }
        guard duration > 0 && duration <= 3600, warmup >= 0 && warmup <= 600, drain >= 0 && drain <= 600 else {
            throw ValidationError("--duration must be in (0, 3600], --warmup and --drain in [0, 600]")
        }
        if let rate { guard rate > 0 && rate <= 50_000_000 else { throw ValidationError("--rate must be in (0, 50M]") } }
        let peer = try common.relayTarget().peer
        if peer != .switchboard {
            guard !common.tls else { throw ValidationError("--tls: the peer adapters speak plaintext only") }
            guard payload <= PeerLimits.maxPayload else { throw ValidationError("--payload above the peer limit") }
        }
        if peer == .mqtt {
            guard qos == 0 || qos == 1 else { throw ValidationError("--qos must be 0 or 1") }
            // PUBACKs name packet ids (1...65535): in-flight messages must map to distinct ids.
            guard window <= 32_767 && maxInflight <= 32_767 else { throw ValidationError("mqtt: --window and --max-inflight must be at most 32767") }
        } else if qos != 0 {
            throw ValidationError("--qos applies to mqtt:// targets only")
        }
        if failover && peer != .switchboard { throw ValidationError("--failover applies to Switchboard targets only") }
        guard failoverAttempts >= 1 && failoverAttempts <= 1000 else { throw ValidationError("--failover-attempts must be in [1, 1000]") }
    }

    func run() throws {
        let (peer, targets, label) = try common.relayTarget()
        let password = peer == .switchboard ? try common.resolvedPassword() : ""
        var plan = Plan(scenario: .relay, targets: targets, sourceAddresses: try common.sources(connections: 2 * pairs, targets: targets),
                        threads: min(common.threads, pairs), prefix: common.prefix, password: password,
                        run: UInt32.random(in: 1...UInt32.max), pairs: pairs, payload: payload, window: window, rate: rate ?? 0,
                        maxInflight: maxInflight, count: count ?? .max, messagesPerSender: 0,
                        warmupNs: UInt64(warmup * 1e9), durationNs: UInt64(duration * 1e9), drainNs: UInt64(drain * 1e9),
                        busyPoll: busyPoll, connections: 2 * pairs, loginConcurrency: common.loginConcurrency)
        plan.tlsCAFile = try common.tlsCAFile()
        plan.spread = common.spread
        plan.peer = peer
        plan.qos = qos
        plan.releaseOnReceipt = peer == .nats || (peer == .mqtt && qos == 0)
        plan.failover = failover
        plan.failoverAttempts = failoverAttempts
        if peer != .switchboard { plan.targetLabel = label }
        throw ExitCode(Runner(plan: plan, common: common).execute())
    }
}

struct Offline: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Receivers offline; senders store M messages each; then receivers log in and drain their mail.")
    @OptionGroup var common: CommonOptions
    @Option(help: "Sender/receiver pairs.") var pairs = 100
    @Option(help: "Messages per sender (at most the server's --mailbox-max-messages, default 10000).") var messages = 1000
    @Option(help: "Message body bytes (at least 32).") var payload = 64
    @Option(help: "Unacknowledged messages per sender while storing.") var window = 64
    @Option(help: "Most seconds for the store phase.") var duration: Double = 60

    func validate() throws {
        try common.validateCommon()
        guard pairs >= 1, messages >= 1, window >= 1 else { throw ValidationError("--pairs, --messages and --window must be positive") }
        guard payload >= Payload.headerBytes && payload <= 65_000 else { throw ValidationError("--payload must be 32...65000") }
        guard duration > 0 && duration <= 3600 else { throw ValidationError("--duration must be in (0, 3600]") }
    }

    func run() throws {
        let targets = try common.addresses()
        var plan = Plan(scenario: .offline, targets: targets, sourceAddresses: try common.sources(connections: 2 * pairs, targets: targets),
                        threads: min(common.threads, pairs), prefix: common.prefix, password: try common.resolvedPassword(),
                        run: UInt32.random(in: 1...UInt32.max), pairs: pairs, payload: payload, window: window, rate: 0,
                        maxInflight: 0, count: .max, messagesPerSender: messages, warmupNs: 0,
                        durationNs: UInt64(duration * 1e9), drainNs: 5_000_000_000, busyPoll: false,
                        connections: 2 * pairs, loginConcurrency: common.loginConcurrency)
        plan.tlsCAFile = try common.tlsCAFile()
        plan.spread = common.spread
        throw ExitCode(Runner(plan: plan, common: common).execute())
    }
}

struct Connect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "N connections log in and idle; with --server-pid, reports the server's RSS growth per connection.")
    @OptionGroup var common: CommonOptions
    @Option(help: "Concurrent connections (users 0 ..< N).") var connections = 1000
    @Option(help: "Seconds to hold the connections after all logged in.") var hold: Double = 2

    func validate() throws {
        try common.validateCommon()
        guard connections >= 1 && connections <= 2_000_000 else { throw ValidationError("--connections must be 1...2000000") }
        guard hold >= 0 && hold <= 3600 else { throw ValidationError("--hold must be 0...3600") }
    }

    func run() throws {
        if common.tls {
            throw ExitCode(try TLSConnectScenario(common: common, connections: connections, holdSeconds: hold).run())
        }
        let targets = try common.addresses()
        var plan = Plan(scenario: .connect, targets: targets, sourceAddresses: try common.sources(connections: connections, targets: targets),
                        threads: min(common.threads, connections), prefix: common.prefix, password: try common.resolvedPassword(),
                        run: 0, pairs: 0, payload: Payload.headerBytes, window: 1, rate: 0, maxInflight: 0, count: 0,
                        messagesPerSender: 0, warmupNs: 0, durationNs: UInt64(hold * 1e9), drainNs: 0, busyPoll: false,
                        connections: connections, loginConcurrency: common.loginConcurrency)
        plan.spread = common.spread
        throw ExitCode(Runner(plan: plan, common: common).execute())
    }
}

struct LoginStorm: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "login-storm",
        abstract: "Connections per second with full TLS handshakes, then with resumed ones (TLS 1.3 tickets).",
        discussion: """
            Each connection: TCP connect, TLS handshake, HELLO/WELCOME, and with --login a LOGIN (the server's \
            PBKDF2 check included), then close. Phase 1 uses full handshakes, phase 2 resumes the session \
            each thread got in phase 1. Needs --tls and --ca.
            """)
    @OptionGroup var common: CommonOptions
    @Option(help: "Connections per phase (all threads).") var connections = 2000
    @Flag(help: "Also log in (measures logins/s, PBKDF2 included).") var login = false

    func validate() throws {
        try common.validateCommon()
        guard common.tls, common.ca != nil else { throw ValidationError("login-storm needs --tls and --ca FILE") }
        guard connections >= 1 && connections <= 10_000_000 else { throw ValidationError("--connections must be 1...10000000") }
    }

    func run() throws {
        throw ExitCode(try LoginStormScenario(common: common, connections: connections, login: login).run())
    }
}

func writeStderr(_ text: String) {
    var line = text
    line.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
}
