// Not a benchmark by itself: drives the server core's whole per-message path (SEND read -> route ->
// DELIVER queued -> written -> DELIVERY_ACK read -> SEND_ACK queued -> written) with no sockets, so that
// `valgrind --tool=callgrind` counts the instructions the server spends per relayed message, the same
// number on every run whatever else the machine does. perf/instructions-per-message.sh runs it and
// compares against Benchmarks/Thresholds/instructions-per-message.json.
//
// What is counted: only the server core's side (each call of ServerCore.received / endOfTurn / wrote /
// hashCompleted / commitCompleted, and so the decoder, RelayCore, DeliveryWindow, dedupe, output budget,
// encoder and ByteBuffer), between sb_callgrind_start/stop. The harness's side (encoding SENDs, copying
// output as a socket would, parsing DELIVERs) and the
// kernel's share of a real server (epoll, read, write) are not: the first is not the server's, the
// second is not instructions callgrind can see (perf/README.md gives syscalls per message).
//
// Shape: PAIRS sender/receiver pairs logged in on a real LMDB store in /dev/shm; each round every
// sender's WINDOW messages (BODY bytes each) arrive in one read, the receiver's DELIVERs are written in
// one go, and it answers with one cumulative DELIVERY_ACK per read (as sbload does) or one per message
// (--ack-each); then the sender's SEND_ACKs are written. WARMUP rounds first (not counted), then ROUNDS.
//
//   CoreInstructionProbe [--pairs 100] [--window 64] [--rounds 50] [--warmup 20] [--body 64] [--ack-each]
import CCallgrind
import Glibc
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardSession
import SwitchboardStore

// MARK: options

func printError(_ text: String) {
    let line = Array((text + "\n").utf8)
    _ = line.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
}
func fail(_ text: String) -> Never { printError("CoreInstructionProbe: \(text)"); exit(1) }


var pairs = 100, window = 64, rounds = 50, warmup = 20, bodyBytes = 64, ackEach = false
do {
    var arguments = CommandLine.arguments.dropFirst()
    func number(_ name: String) -> Int {
        guard let text = arguments.popFirst(), let value = Int(text), value > 0 else {
            printError("CoreInstructionProbe: \(name) needs a positive number"); exit(2)
        }
        return value
    }
    while let argument = arguments.popFirst() {
        switch argument {
        case "--pairs": pairs = number(argument)
        case "--window": window = number(argument)
        case "--rounds": rounds = number(argument)
        case "--warmup": warmup = number(argument)
        case "--body": bodyBytes = number(argument)
        case "--ack-each": ackEach = true
        default:
            printError("usage: CoreInstructionProbe [--pairs N] [--window N] [--rounds N] [--warmup N] [--body BYTES] [--ack-each]")
            exit(2)
        }
    }
}


// MARK: the driver: synchronous hashing and commits, writes as a socket that takes everything

final class ProbeDriver: SessionDriver {
    var clock: UInt64 = 1_000
    var now: UInt64 { clock }
    var wallNow: UInt64 { 1_800_000_000_000 + clock }
    var hashJobs: [HashJob] = []
    var commits: [StoreBatch] = []
    var flushRequests: [ClientState] = []
    func interestChanged(_ client: ClientState) {}
    func flush(_ client: ClientState) { flushRequests.append(client) }
    func finalize(_ client: ClientState) { fail("client \(client.id) closed: \(client.closeReason)") }
    func hasBufferedInput(_ client: ClientState) -> Bool { false }
    func readAgain(_ client: ClientState) {}
    func handshakePending(_ client: ClientState) -> Bool { false }
    func startHash(_ job: HashJob) { hashJobs.append(job) }
    func startCommit(_ batch: StoreBatch) { commits.append(batch) }
    func schedule(at deadline: UInt64, token: UInt64) {}
}

let directory = "/dev/shm/sb-core-probe-\(getpid())"
let store: Store
do { store = try Store(directory: directory, mapSizeBytes: 256 << 20) } catch { fail("store: \(error)") }
defer { store.close() }
let password = Array("probe password".utf8)
var names: [String] = (0..<(2 * pairs)).map { "probe\($0)" }
var userIDs: [UserID] = []
do {
    _ = try store.createAccountsBulk(names: names, password: PasswordHasher.hash(password: password, iterations: 1))
    for name in names { guard let account = try store.account(named: name) else { fail("no account \(name)") }; userIDs.append(account.userID) }
    var ops: [WriteOp] = []
    for k in 0..<pairs {
        ops.append(.contactAdd(owner: userIDs[2 * k], contactName: names[2 * k + 1]))
        ops.append(.contactAdd(owner: userIDs[2 * k + 1], contactName: names[2 * k]))
    }
    _ = try store.apply(ops)
} catch { fail("setup: \(error)") }

let driver = ProbeDriver()
var configuration = SessionConfiguration()
configuration.pbkdf2Iterations = 1
var logger = Logger(label: "probe")
logger.logLevel = .critical
let core = ServerCore(configuration: configuration, store: store, driver: driver, logger: logger,
                      dummyHash: PasswordHasher.hash(password: Array("dummy".utf8), iterations: 1))
core.start()

/// One client: its state in the core and the bytes it has been sent (parsed as they arrive).
final class ProbeClient {
    let client: ClientState
    let input = ByteBuffer(capacity: 64 << 10)
    var received = ByteBuffer(capacity: 64 << 10)
    var deliverHigh: UInt64 = 0
    var sendAcks = 0
    var delivers = 0
    var loggedIn = false
    init(_ client: ClientState) { self.client = client }
}

var clients: [ProbeClient] = []
var spareRequests: [ClientState] = []

/// While true, only the core's own work is counted: each call into it is bracketed by the callgrind
/// toggles, so the harness's socket emulation (copying output, parsing, encoding) is left out.
nonisolated(unsafe) var counting = false
@inline(__always) func measured<T>(_ body: () -> T) -> T {
    if counting { sb_callgrind_start() }
    defer { if counting { sb_callgrind_stop() } }
    return body()
}

/// Pending hash jobs and commits run now; then every flush request writes all the client's output.
@MainActor func settle() {
    var rounds = 0
    repeat {
        rounds += 1
        if rounds > 1_000 { fail("the core does not settle") }
        measured { core.endOfTurn() }
        // As the real driver: the requests are swapped out (no copy, no allocation) and the client's
        // own object is reached through `link`.
        swap(&driver.flushRequests, &spareRequests)
        for client in spareRequests {
            let out = client.output
            guard out.readableBytes > 0, let link = client.link else { continue }
            unsafeDowncast(link, to: ProbeClient.self).received.writeBytes(out.readableView)
            out.advanceReaderRetaining(by: out.readableBytes)
            measured { core.wrote(client) }
        }
        spareRequests.removeAll(keepingCapacity: true)
        if !driver.hashJobs.isEmpty {
            let jobs = driver.hashJobs
            driver.hashJobs.removeAll()
            var results: [HashResult] = []
            for job in jobs {
                if case .verifyLogin(let connection, let requestID, let name, let password, let account, let dummy) = job {
                    let ok = PasswordHasher.verify(password: password, against: account?.password ?? dummy) && account != nil
                    results.append(.verified(connection: connection, requestID: requestID, name: name, account: account, ok: ok))
                }
            }
            measured { core.hashCompleted(results) }
        }
        if !driver.commits.isEmpty {
            let batches = driver.commits
            driver.commits.removeAll()
            for batch in batches {
                let result: Result<[WriteResult], StoreErrorBox>
                do { result = .success(try store.apply(batch.ops)) } catch { result = .failure(StoreErrorBox(description: "\(error)")) }
                measured { core.commitCompleted([StoreBatchResult(batch: batch, results: result, commitNanos: 0)]) }
            }
        }
    } while core.hasPendingWork || !driver.hashJobs.isEmpty || !driver.commits.isEmpty || !driver.flushRequests.isEmpty
}

/// Parses what the client was sent: DELIVERs (highest seq), SEND_ACKs, LOGIN_OK.
@MainActor func parse(_ probe: ProbeClient) {
    let buffer = probe.received
    var offset = 0
    let view = buffer.readableView
    while offset < view.count {
        guard case .frame(let frame, let used) = FrameDecoder.decodeServer(UnsafeRawBufferPointer(rebasing: view[offset...]),
                                                                          maxFrameBytes: 1 << 24) else { break }
        offset += used
        switch frame {
        case .loginOK: probe.loggedIn = true
        case .deliver(let seq, _, _, _, _):
            probe.deliverHigh = seq
            probe.delivers += 1
            if ackEach { FrameEncoder.encode(ClientFrame.deliveryAck(throughSeq: seq), into: probe.input) }
        case .sendAck: probe.sendAcks += 1
        case .error(_, let code, let message): fail("ERROR \(code) \(message)")
        default: break
        }
    }
    buffer.advanceReaderRetaining(by: offset)
    buffer.clear()
}

// Log everyone in.
for (index, name) in names.enumerated() {
    let host = "10.\(index >> 16 & 255).\(index >> 8 & 255).\(index & 255)"
    let client = core.newClient(host: host, peerText: host + ":4000")
    let probe = ProbeClient(client)
    clients.append(probe)
    client.link = probe
    core.opened(client)
    FrameEncoder.encode(ClientFrame.hello(version: ProtocolConstants.version, agent: "probe"), into: probe.input)
    FrameEncoder.encode(ClientFrame.login(requestID: 1, name: TextView(name), password: TextView(String(decoding: password, as: UTF8.self))),
                        into: probe.input)
    core.received(client, from: probe.input)
    probe.input.clear()
    if index % 64 == 63 { settle() }
}
settle()
for probe in clients {
    parse(probe)
    if !probe.loggedIn { fail("\(probe.client.id) did not log in") }
}

// MARK: the measured path

let body = [UInt8](repeating: 0x61, count: bodyBytes)
var nextID = [UInt64](repeating: 1, count: pairs)

@MainActor func round(counted: Bool) {
    for k in 0..<pairs {
        let sender = clients[2 * k]
        for _ in 0..<window {
            body.withUnsafeBytes { raw in
                FrameEncoder.encode(ClientFrame.send(to: userIDs[2 * k + 1], messageID: nextID[k], body: ByteView(borrowing: raw)), into: sender.input)
            }
            nextID[k] += 1
        }
        counting = counted
        measured { core.received(sender.client, from: sender.input) }
        settle()
        sender.input.clear()
        let receiver = clients[2 * k + 1]
        parse(receiver)
        if !ackEach { FrameEncoder.encode(ClientFrame.deliveryAck(throughSeq: receiver.deliverHigh), into: receiver.input) }
        measured { core.received(receiver.client, from: receiver.input) }
        settle()
        counting = false
        receiver.input.clear()
        parse(sender)
    }
}

for _ in 0..<warmup { round(counted: false) }
let before = clients.reduce(0) { $0 + $1.sendAcks }
for _ in 0..<rounds { round(counted: true) }
let acked = clients.reduce(0) { $0 + $1.sendAcks } - before
let expected = pairs * window * rounds
if acked != expected { fail("\(acked) SEND_ACKs for \(expected) messages") }
print("messages \(expected) pairs \(pairs) window \(window) rounds \(rounds) body \(bodyBytes) ack \(ackEach ? "each" : "per-read") valgrind \(sb_running_on_valgrind())")
system("rm -rf '\(directory)'")
