// Test support shared by the test targets that need a real NATS: a three-server nats-server cluster with
// JetStream on loopback ports (config files, store directories and logs under /tmp/nats/), one plain server,
// a blocking HTTP GET for the servers' monitoring endpoints, and small POSIX helpers.
// Each server runs under `timeout --signal=KILL 180`, so even a crashed test run leaves no server behind for
// long; `stop()` kills them at once.
import Glibc
import SwitchboardCluster
import SwitchboardIO

public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(description: String) { self.description = description }
}

public func natsServerPath() -> String? {
    for path in ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"] where access(path, X_OK) == 0 {
        return path
    }
    return nil
}

public final class NATSClusterProcess {
    public let root: String
    public let clientPorts: [Int]
    public let monitorPorts: [Int]
    public private(set) var alive: [Bool]
    private let binary: String
    /// The `timeout` wrappers, reaped by pid (never waitpid(-1): other tests in this process have children).
    private var wrappers: [pid_t] = []

    /// Ports: clients base+1...3, routes base+11...13, monitoring base+21...23.
    /// `clientAuthorization`: an `authorization { ... }` block's body for the client port of every server (routes
    /// stay open between the servers), e.g. `token: "s3cr3t"`.
    public init(name: String, basePort: Int, clientAuthorization: String? = nil) throws {
        guard let binary = natsServerPath() else { throw HarnessError(description: "nats-server not installed") }
        self.binary = binary
        root = "/tmp/nats/\(name)-\(getpid())"
        clientPorts = (1...3).map { basePort + $0 }
        monitorPorts = (1...3).map { basePort + 20 + $0 }
        alive = [false, false, false]
        _ = system("rm -rf '\(root)' && mkdir -p '\(root)'")
        let routes = (1...3).map { "nats-route://127.0.0.1:\(basePort + 10 + $0)" }.joined(separator: ", ")
        for i in 0..<3 {
            let config = """
            server_name: n\(i + 1)
            listen: 127.0.0.1:\(clientPorts[i])
            http: 127.0.0.1:\(monitorPorts[i])
            pid_file: "\(root)/n\(i + 1).pid"
            jetstream { store_dir: "\(root)/n\(i + 1)", max_memory_store: 64MB, max_file_store: 512MB }
            cluster { name: sb, listen: 127.0.0.1:\(basePort + 11 + i), routes: [\(routes)] }
            """ + (clientAuthorization.map { "\nauthorization { \($0) }\n" } ?? "")
            try writeFile("\(root)/n\(i + 1).conf", config)
        }
        for i in 0..<3 { try start(i) }
    }

    deinit { stop() }

    public func start(_ i: Int) throws {
        let args = ["/usr/bin/timeout", "--signal=KILL", "180", binary, "-c", "\(root)/n\(i + 1).conf"]
        wrappers.append(try spawn(args, outputTo: "\(root)/n\(i + 1).log"))
        alive[i] = true
    }

    public var urls: String { clientPorts.map { "nats://127.0.0.1:\($0)" }.joined(separator: ",") }
    /// The three URLs starting with server `i` (a client that connects to server i first).
    public func urls(from i: Int) -> String { (0..<3).map { "nats://127.0.0.1:\(clientPorts[(i + $0) % 3])" }.joined(separator: ",") }
    public func url(_ i: Int) -> String { "nats://127.0.0.1:\(clientPorts[i])" }

    public func pid(_ i: Int) -> pid_t? {
        guard let text = readFile("\(root)/n\(i + 1).pid") else { return nil }
        return pid_t(text.filter { $0.isNumber })
    }

    /// kill -9 of one server; its `timeout` wrapper is reaped (so a restart and many kills leave no zombies).
    public func kill9(_ i: Int) {
        if let p = pid(i) { Glibc.kill(p, SIGKILL) }
        alive[i] = false
        reap()
    }

    /// Reaps the wrappers that exited (each waits up to 250 ms unless every server is alive again).
    private func reap() {
        var status: Int32 = 0
        var left: [pid_t] = []
        for pid in wrappers {
            var done = false
            for _ in 0..<50 {
                if waitpid(pid, &status, WNOHANG) != 0 { done = true; break }
                if alive.allSatisfy({ $0 }) { break }
                usleep(5_000)
            }
            if !done { left.append(pid) }
        }
        wrappers = left
    }

    public func stop() {
        for i in 0..<3 where alive[i] { kill9(i) }
        // Reap the `timeout` wrappers (they exit once their child died).
        var status: Int32 = 0
        for pid in wrappers {
            for _ in 0..<100 where waitpid(pid, &status, WNOHANG) == 0 { usleep(10_000) }
        }
        wrappers = []
    }

    public func removeFiles() { _ = system("rm -rf '\(root)'") }

    public func log(_ i: Int) -> String { readFile("\(root)/n\(i + 1).log") ?? "" }

    /// GET http://127.0.0.1:<monitor port of i><path> and parse the JSON body.
    public func monitor(_ i: Int, _ path: String) throws -> JSON {
        let fd = try Socket.connectBlocking(to: SocketAddress(parsing: "127.0.0.1:\(monitorPorts[i])"))
        defer { Glibc.close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let request = Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while response.count < 16 << 20 {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            response += chunk[0..<n]
        }
        guard let split = response.firstRange(of: [0x0D, 0x0A, 0x0D, 0x0A]) else {
            throw HarnessError(description: "no HTTP response from monitor port \(monitorPorts[i])")
        }
        return try JSON.parse(String(decoding: response[split.upperBound...], as: UTF8.self))
    }
}


// MARK: - small POSIX helpers

public func writeFile(_ path: String, _ text: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw HarnessError(description: "cannot write \(path)") }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

public func readFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += chunk[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

/// Starts a program with stdout+stderr to `outputTo` and stdin from /dev/null, signals reset; returns its pid.
public func spawn(_ args: [String], outputTo path: String) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var emptyMask = sigset_t()
    sigemptyset(&emptyMask)
    posix_spawnattr_setsigmask(&attributes, &emptyMask)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for s in [SIGPIPE, SIGHUP, SIGINT, SIGTERM] { sigaddset(&defaults, s) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
    argv.append(nil)
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, args[0], &actions, &attributes, argv, environ)
    guard rc == 0 else { throw HarnessError(description: "posix_spawn \(args[0]) failed: \(rc)") }
    return pid
}

/// One plain nats-server (no JetStream) for link-level tests: `nats-server -a 127.0.0.1 -p PORT`.
public final class SingleNATSServer {
    public let port: Int
    public let root: String
    private var wrapper: pid_t = 0

    public init(name: String, port: Int) {
        self.port = port
        root = "/tmp/nats/\(name)-\(getpid())"
        _ = system("rm -rf '\(root)' && mkdir -p '\(root)'")
    }

    deinit { stop() }

    public func start() throws {
        guard let binary = natsServerPath() else { throw HarnessError(description: "nats-server not installed") }
        wrapper = try spawn(["/usr/bin/timeout", "--signal=KILL", "120", binary, "-a", "127.0.0.1", "-p", String(port),
                             "-P", "\(root)/pid"], outputTo: "\(root)/log")
    }

    public var pid: pid_t? { readFile("\(root)/pid").flatMap { pid_t($0.filter { $0.isNumber }) } }

    public func signal(_ s: Int32) { if let p = pid { Glibc.kill(p, s) } }

    public func stop() {
        guard wrapper != 0 else { return }
        signal(SIGCONT)
        signal(SIGKILL)
        var status: Int32 = 0
        for _ in 0..<100 where waitpid(wrapper, &status, WNOHANG) == 0 { usleep(10_000) }
        wrapper = 0
        _ = system("rm -rf '\(root)'")
    }
}

extension NATSClusterProcess {
    /// Waits until every live server's /healthz says JetStream is current (routes up, a meta leader elected).
    public func waitUntilReady(timeoutMs: UInt64 = 30_000) throws {
        let deadline = Clock.monotonicMs() + timeoutMs
        while Clock.monotonicMs() < deadline {
            let ready = (0..<3).filter { alive[$0] }.allSatisfy { i in
                (try? monitor(i, "/healthz?js-enabled-only=true"))?["status"]?.stringValue == "ok"
            }
            if ready, (try? monitor(firstAlive, "/jsz"))?["meta_cluster"]?["leader"]?.stringValue != nil { return }
            usleep(50_000)
        }
        throw HarnessError(description: "JetStream not ready within \(timeoutMs) ms")
    }

    var firstAlive: Int { (0..<3).first { alive[$0] } ?? 0 }

    /// The index of the server that leads `stream` (from /jsz of a live server).
    public func streamLeader(_ stream: String) throws -> Int {
        let jsz = try monitor(firstAlive, "/jsz?streams=true")
        for account in jsz["account_details"]?.arrayValue ?? [] {
            for detail in account["stream_detail"]?.arrayValue ?? [] where detail["name"]?.stringValue == stream {
                if let leader = detail["cluster"]?["leader"]?.stringValue, let n = Int(leader.dropFirst()) { return n - 1 }
            }
        }
        throw HarnessError(description: "no leader for stream \(stream) in /jsz")
    }
}
