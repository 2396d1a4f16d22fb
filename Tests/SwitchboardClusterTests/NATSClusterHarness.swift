// Test support: a real three-server nats-server cluster with JetStream on loopback ports (config files, store
// directories and logs under /tmp/nats/), a loop driver that runs the epoll loop until a condition holds, and
// a tiny blocking HTTP GET for the servers' monitoring endpoints (/varz, /subsz).
// Each server runs under `timeout --signal=KILL 180`, so even a crashed test run leaves no server behind for
// long; `stop()` kills them at once.
import Glibc
import SwitchboardCluster
import SwitchboardIO
import NATSTestHarness
import Testing

/// Runs the loop until `condition` holds or `timeoutMs` passes; returns whether it held.
@discardableResult
func runLoop(_ loop: EventLoop, timeoutMs: UInt64, until condition: () -> Bool) throws -> Bool {
    let deadline = Clock.monotonicMs() + timeoutMs
    while !condition() {
        if Clock.monotonicMs() >= deadline { return false }
        try loop.runOnce(maxWaitMs: 5)
    }
    return true
}

/// One loop with any number of connections whose timers it routes.
final class TestLoop {
    let loop: EventLoop
    private(set) var connections: [NATSConnection] = []
    var events: [String] = []

    init() throws {
        loop = try EventLoop()
        loop.onTimer = { [unowned self] token in
            for c in self.connections where c.handleTimer(token) { return }
        }
    }

    func connect(_ urls: String, name: String, tweak: (inout NATSConfiguration) -> Void = { _ in }) throws -> NATSConnection {
        var configuration = NATSConfiguration(servers: try NATSServerList.parse(urls), name: name)
        configuration.timerTokenBase = 0x4E41_5453_0000_0000 + UInt64(connections.count) * 16
        configuration.seed = UInt64(connections.count + 1)
        tweak(&configuration)
        let c = NATSConnection(loop: loop, configuration: configuration)
        c.onEvent = { [unowned self] in self.events.append("\(name): \($0)") }
        connections.append(c)
        c.start()
        return c
    }

    @discardableResult
    func run(timeoutMs: UInt64 = 5_000, until condition: () -> Bool) throws -> Bool {
        try runLoop(loop, timeoutMs: timeoutMs, until: condition)
    }

    /// Waits for a PONG on `c`: everything it sent before has been processed by its server.
    func flush(_ c: NATSConnection) throws {
        var done = false
        try c.flush { _ in done = true }
        guard try run(until: { done }) else { throw HarnessError(description: "flush timed out") }
    }

    /// A synchronous request for test code.
    func request(_ c: NATSConnection, _ subject: String, _ payload: String, headers: NATSHeaders? = nil,
                 timeoutMs: UInt64 = 2_000) throws -> Result<NATSMessage, NATSRequestError> {
        var result: Result<NATSMessage, NATSRequestError>?
        try c.request(subject, headers: headers, payload: Array(payload.utf8), timeoutMs: timeoutMs) { result = $0 }
        try run(timeoutMs: timeoutMs + 2_000) { result != nil }
        guard let result else { throw HarnessError(description: "request on \(subject) never completed") }
        return result
    }

    func closeAll() { for c in connections { c.close() } }
}

