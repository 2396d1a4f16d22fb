// Fuzz target `core`: frame sequences and event schedules fed into the sans-I/O server core
// (SwitchboardSession's ServerCore), with a driver like the simulation's (Tests/SwitchboardSessionTests/
// ServerCoreSimulation.swift) and a real LMDB store on /dev/shm.
//
// The store: three users ("fz0", "fz1", "fz2", password "pw", pbkdf2 iterations 1), mutual contacts, built
// once per process into a template; every input starts from a fresh copy of it (so an input replays the
// same way), in /dev/shm/sbfuzz-core-<pid>/, removed at exit (and by the next process if this one crashed).
//
// The input: one header byte (how much the "socket" takes when the core asks for a flush: 0 = nothing, the
// schedule's own write steps only), then at most 200 steps. Each step is an opcode byte (low 4 bits: what;
// bit 7: more events in the same loop turn) and its operands:
//   connect (user, address; bit: append HELLO + LOGIN with the right password), append one client frame
//   (HELLO, LOGIN right/wrong/unknown, REGISTER, SEND to a user with an id and a small body, DELIVERY_ACK /
//   MAIL_ACK of the last seq the client saw (or near it, or any), OPEN_CHAT, CONTACT_ADD/ACCEPT/REMOVE,
//   LIST_CONTACTS, PING, PONG, raw input bytes), feed a chunk to the core, the socket takes N bytes of a
//   client's output (the client then parses what it got: seqs and ping tokens), complete a hash job,
//   complete (or fail) a commit, advance the clock (firing due timers), disconnect (maybe mid-frame),
//   shutdown.
//
// Invariants (a trap, which libFuzzer records): the core never crashes (ASan, Swift traps); after each turn,
// `endOfTurn` repeated while `hasPendingWork` settles within 64 rounds; each open client holds at most
// hard cap + max frame + 512 bytes of output; no client timer (token < ServerCore.reservedTokens) is ever
// scheduled in the past.

import Glibc
import Logging
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardSession
import SwitchboardStore

// MARK: the store (template per process, fresh copy per input)

private let names = ["fz0", "fz1", "fz2"]
private let password = "pw"

private final class StoreFiles {
    let base: String
    let template: String
    let run: String
    var userIDs: [UserID] = []
    let dummyHash = PasswordHasher.hash(password: Array("dummy".utf8), iterations: 1)

    init() {
        removeStaleDirectories()
        base = "/dev/shm/sbfuzz-core-\(getpid())"
        template = base + "/template"
        run = base + "/run"
        removeTree(base)
        check(mkdir(base, 0o700) == 0, "mkdir \(base): errno \(errno)")
        do {
            let store = try Store(directory: template, mapSizeBytes: 64 << 20)
            let hash = PasswordHasher.hash(password: Array(password.utf8), iterations: 1)
            _ = try store.apply(names.map { .createAccount(name: $0, password: hash) })
            for name in names { if let account = try store.account(named: name) { userIDs.append(account.userID) } }
            var ops: [WriteOp] = []
            for a in 0..<names.count { for b in (a + 1)..<names.count { ops.append(.contactAdd(owner: userIDs[a], contactName: names[b])) } }
            for a in 0..<names.count { for b in (a + 1)..<names.count { ops.append(.contactAccept(owner: userIDs[b], contactName: names[a])) } }
            _ = try store.apply(ops)
            store.close()
        } catch {
            check(false, "template store: \(error)")
        }
        check(userIDs.count == names.count, "template store: accounts missing")
        atexit { files?.removeAll() }
    }

    /// A fresh store for one input: the template's data file copied over the last input's.
    func fresh() -> Store {
        removeTree(run)
        check(mkdir(run, 0o700) == 0, "mkdir \(run): errno \(errno)")
        copyFile(template + "/data.mdb", run + "/data.mdb")
        do { return try Store(directory: run, mapSizeBytes: 64 << 20) } catch {
            check(false, "open store: \(error)")
            fatalError()
        }
    }

    func removeAll() { removeTree(base) }
}

nonisolated(unsafe) private var files: StoreFiles?
nonisolated(unsafe) private var traceEnabled = getenv("SB_FUZZ_TRACE") != nil

private func removeTree(_ path: String) {
    guard let dir = opendir(path) else { unlink(path); return }
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name == "." || name == ".." { continue }
        let child = path + "/" + name
        if entry.pointee.d_type == UInt8(DT_DIR) { removeTree(child) } else { unlink(child) }
    }
    closedir(dir)
    rmdir(path)
}

/// Directories of earlier processes of this target that died without cleaning up (a crash).
private func removeStaleDirectories() {
    guard let dir = opendir("/dev/shm") else { return }
    var stale: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard name.hasPrefix("sbfuzz-core-"), let pid = Int32(name.dropFirst("sbfuzz-core-".count)) else { continue }
        if pid != getpid() && kill(pid, 0) != 0 && errno == ESRCH { stale.append("/dev/shm/" + name) }
    }
    closedir(dir)
    for path in stale { removeTree(path) }
}

private func copyFile(_ from: String, _ to: String) {
    let src = open(from, O_RDONLY)
    check(src >= 0, "open \(from): errno \(errno)")
    let dst = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    check(dst >= 0, "open \(to): errno \(errno)")
    var buffer = [UInt8](repeating: 0, count: 64 << 10)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(src, $0.baseAddress, $0.count) }
        check(n >= 0, "read \(from): errno \(errno)")
        if n == 0 { break }
        let w = buffer.withUnsafeBytes { write(dst, $0.baseAddress, n) }
        check(w == n, "write \(to): errno \(errno)")
    }
    close(src)
    close(dst)
}

// MARK: the driver

private final class FuzzDriver: SessionDriver {
    var clock: UInt64 = 1_000
    var now: UInt64 { clock }
    var wallNow: UInt64 { 1_800_000_000_000 + clock }
    var timers: [(deadline: UInt64, token: UInt64)] = []
    var hashJobs: [HashJob] = []
    var commits: [StoreBatch] = []
    var flushRequests: [ClientState] = []
    var finalized: [ClientState] = []

    func interestChanged(_ client: ClientState) {}
    func flush(_ client: ClientState) { flushRequests.append(client) }
    func finalize(_ client: ClientState) { finalized.append(client) }
    func hasBufferedInput(_ client: ClientState) -> Bool { false }
    func readAgain(_ client: ClientState) {}
    func handshakePending(_ client: ClientState) -> Bool { false }
    func startHash(_ job: HashJob) { hashJobs.append(job) }
    func startCommit(_ batch: StoreBatch) { commits.append(batch) }
    func schedule(at deadline: UInt64, token: UInt64) {
        check(!(deadline < clock && token < ServerCore.reservedTokens),
              "client timer \(token) scheduled at \(deadline), in the past (now \(clock))")
        timers.append((deadline, token))
    }
}

/// One simulated connection: its two byte streams and what its client saw.
private final class Connection {
    let user: Int
    let client: ClientState
    var outbound: [UInt8] = []
    var inbound: [UInt8] = []
    var gone = false
    var closedByServer = false
    var lastDeliverSeq: UInt64 = 0
    var lastMailSeq: UInt64 = 0
    var lastPingToken: UInt64 = 0
    var nextRequestID: UInt32 = 1
    init(user: Int, client: ClientState) { self.user = user; self.client = client }
    var open: Bool { !gone && !closedByServer && !client.isClosing }
}

// MARK: one input

private final class Run {
    let driver = FuzzDriver()
    let store: Store
    let core: ServerCore
    let config: SessionConfiguration
    let userIDs: [UserID]
    var connections: [Connection] = []
    let readBuffer = ByteBuffer(capacity: 16 << 10)
    let flushWrite: Int
    var shutDown = false

    static let maxConnections = 6

    init(store: Store, userIDs: [UserID], dummyHash: PasswordHash, flushWrite: Int) {
        self.store = store
        self.userIDs = userIDs
        self.flushWrite = flushWrite
        var config = SessionConfiguration()
        config.pbkdf2Iterations = 1
        config.outputSoftCapBytes = 4 << 10
        config.outputHardCapBytes = 16 << 10
        config.readPauseAboveBytes = 4 << 10
        config.preLoginReadPauseAboveBytes = 2 << 10
        config.maxWriteBytesPerTurn = 8 << 10
        config.mailPageBytes = 4 << 10
        config.mailPageSize = 8
        config.maintenanceIntervalMs = 5_000
        config.dedupeWindow = 16
        config.maxStoreBacklogBytes = 16 << 10
        config.closeLingerMs = 500
        config.maxFailedLoginsPerUser = 3
        config.maxFailedLoginsPerAddress = 6
        config.lockoutWindowMs = 20_000
        config.maxRegistrationsPerAddress = 3
        config.maxHashingPerAddress = 1
        config.maxQueuedLoginsPerAddress = 4
        config.maxQueuedLogins = 8
        config.maxPreLoginConnectionsPerAddress = 4
        config.dedupeRetentionMs = 60_000
        config.limits = ServerLimits(maxFrameBytes: 8_192, maxFrameBytesBeforeLogin: 1_024, loginTimeoutMs: 3_000,
                                     idleTimeoutMs: 20_000, pingIntervalMs: 4_000, mailboxMaxMessages: 24,
                                     mailboxMaxBytes: 24 << 10)
        self.config = config
        var logger = Logger(label: "fuzz")
        logger.logLevel = .critical
        core = ServerCore(configuration: config, store: store, driver: driver, logger: logger, dummyHash: dummyHash)
        core.start()
    }

    /// Raw text bytes (maybe invalid UTF-8) for a TextView, kept until the input ends.
    var arena: [UnsafeMutableRawBufferPointer] = []
    func rawText(_ bytes: [UInt8]) -> TextView {
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
        arena.append(block)
        bytes.withUnsafeBytes { if $0.count > 0 { block.copyMemory(from: $0) } }
        return TextView(validatedBorrowing: UnsafeRawBufferPointer(start: block.baseAddress, count: bytes.count))
    }

    /// Breaks the client <-> connection cycles (LeakSanitizer would report them).
    func tearDown() {
        for block in arena { block.deallocate() }
        arena.removeAll()
        for connection in connections { connection.client.link = nil }
        connections.removeAll()
        store.close()
    }

    func pick(_ input: inout FuzzInput) -> Connection? {
        guard !connections.isEmpty else { return nil }
        return connections[Int(input.byte()) % connections.count]
    }

    func encode(_ frame: ClientFrame, into connection: Connection) {
        let buffer = ByteBuffer()
        FrameEncoder.encode(frame, into: buffer)
        connection.outbound.append(contentsOf: buffer.readableArray())
    }

    // MARK: events

    func connect(_ input: inout FuzzInput) {
        let user = Int(input.byte()) % names.count
        let flags = input.byte()
        guard !shutDown, connections.count < Self.maxConnections else { return }
        let host = "10.0.0.\(flags & 1)"
        guard core.admission(host: host) == nil else { return }
        let client = core.newClient(host: host, peerText: "\(host):\(1000 + connections.count)")
        let connection = Connection(user: user, client: client)
        client.link = connection
        connections.append(connection)
        core.opened(client)
        if flags & 2 == 0 {
            encode(.hello(version: ProtocolConstants.version, agent: "fuzz"), into: connection)
            encode(.login(requestID: 1, name: TextView(names[user]), password: TextView(password)), into: connection)
            connection.nextRequestID = 2
        }
    }

    func name(_ selector: UInt8, _ input: inout FuzzInput) -> TextView {
        switch selector % 8 {
        case 0..<5: return TextView(names[Int(selector) % names.count])
        case 5: return TextView("nobody")
        case 6: return rawText(input.take(Int(input.byte() % 24)))  // any bytes, maybe invalid UTF-8
        default: return TextView("fz\(input.byte())")
        }
    }

    func userID(_ selector: UInt8, _ input: inout FuzzInput) -> UInt32 {
        switch selector % 6 {
        case 0..<4: return userIDs[Int(selector) % userIDs.count]
        case 4: return 0
        default: return input.integer(UInt32.self)
        }
    }

    func seq(_ last: UInt64, _ input: inout FuzzInput) -> UInt64 {
        switch input.byte() % 6 {
        case 0..<3: return last
        case 3: return last &+ 1
        case 4: return last > 0 ? last - 1 : 0
        default: return input.integer(UInt64.self)
        }
    }

    func appendFrame(_ input: inout FuzzInput) {
        guard let connection = pick(&input) else { return }
        let kind = input.byte()
        let rid = connection.nextRequestID
        connection.nextRequestID &+= 1
        switch kind % 16 {
        case 0:
            let version = input.byte() < 224 ? ProtocolConstants.version : UInt16(input.byte())
            encode(.hello(version: version, agent: "fuzz"), into: connection)
        case 1, 2:
            let how = input.byte()
            let name = how % 4 == 3 ? self.name(input.byte(), &input) : TextView(names[connection.user])
            let pass: TextView = how & 4 == 0 ? TextView(password) : rawText(input.take(Int(input.byte() % 12)))
            encode(.login(requestID: rid, name: name, password: pass), into: connection)
        case 3:
            encode(.register(requestID: rid, name: name(input.byte(), &input), password: TextView(password)), into: connection)
        case 4, 5, 6:
            let to = userID(input.byte(), &input)
            let idByte = input.byte()
            let id = idByte < 240 ? UInt64(idByte % 40) : input.integer(UInt64.self)
            let sizeByte = input.byte()
            // Small bodies mostly; sometimes up to and past the max body (8 192 - envelope).
            let size = sizeByte < 200 ? Int(sizeByte) : Int(sizeByte - 199) * 160
            let fill = input.byte()
            encode(.send(to: to, messageID: id, body: ByteView([UInt8](repeating: fill, count: size))), into: connection)
        case 7:
            encode(.deliveryAck(throughSeq: seq(connection.lastDeliverSeq, &input)), into: connection)
        case 8:
            encode(.mailAck(throughSeq: seq(connection.lastMailSeq, &input)), into: connection)
        case 9:
            encode(.openChat(requestID: rid, contact: userID(input.byte(), &input)), into: connection)
        case 10:
            encode(.contactAdd(requestID: rid, name: name(input.byte(), &input)), into: connection)
        case 11:
            encode(.contactAccept(requestID: rid, name: name(input.byte(), &input)), into: connection)
        case 12:
            encode(.contactRemove(requestID: rid, name: name(input.byte(), &input)), into: connection)
        case 13:
            encode(.listContacts(requestID: rid), into: connection)
        case 14:
            if input.bool() {
                encode(.ping(token: UInt64(input.byte())), into: connection)
            } else {
                encode(.pong(token: input.bool() ? connection.lastPingToken : UInt64(input.byte())), into: connection)
            }
        default:
            connection.outbound.append(contentsOf: input.take(Int(input.byte() % 64)))
        }
    }

    /// Feeds up to `limit` outbound bytes to the core, as reads do, while it may be read.
    func feed(_ connection: Connection, upTo limit: Int, chunk: Int) {
        let client = connection.client
        guard connection.open else { return }
        var remaining = min(limit, connection.outbound.count)
        while remaining > 0 && !client.readingPaused && !client.isClosing {
            let n = min(remaining, chunk)
            let target = client.input.isEmpty ? readBuffer : client.input
            connection.outbound.withUnsafeBytes { target.writeBytes(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            connection.outbound.removeFirst(n)
            remaining -= n
            core.received(client, from: target)
            if target === readBuffer {
                if readBuffer.readableBytes > 0 && !client.isClosing { client.input.writeBytes(readBuffer.readableView) }
                readBuffer.clear()
            }
        }
    }

    /// The socket takes up to `limit` bytes of the client's output; the client parses what arrived.
    func write(_ connection: Connection, limit: Int) {
        let client = connection.client
        guard connection.open else { return }
        let out = client.output
        let count = min(out.readableBytes, limit)
        guard count > 0 else { return }
        connection.inbound.append(contentsOf: out.view(from: out.readerIndex, to: out.readerIndex + count))
        out.advanceReaderRetaining(by: count)
        core.wrote(client)
        clientReads(connection)
    }

    func clientReads(_ connection: Connection) {
        var offset = 0
        connection.inbound.withUnsafeBytes { raw in
            while offset < raw.count {
                guard case .frame(let frame, let used) = FrameDecoder.decodeServer(
                    UnsafeRawBufferPointer(rebasing: raw[offset...]), maxFrameBytes: 1 << 24) else { break }
                offset += used
                switch frame {
                case .deliver(let seq, _, _, _, _): connection.lastDeliverSeq = seq
                case .mail(let seq, _, _, _, _, _): connection.lastMailSeq = seq
                case .ping(let token): connection.lastPingToken = token
                default: break
                }
            }
        }
        connection.inbound.removeFirst(offset)
        if connection.inbound.count > 1 << 16 { connection.inbound.removeAll() }  // garbage: drop it
    }

    func disconnect(_ connection: Connection, keep: UInt8) {
        guard !connection.gone else { return }
        if keep < 128 && !connection.outbound.isEmpty {
            // Goes away in the middle of what it was writing.
            let n = Int(keep) % connection.outbound.count
            connection.outbound.removeLast(connection.outbound.count - n)
            feed(connection, upTo: n, chunk: 4_096)
        }
        connection.gone = true
        if !connection.client.isClosing && !connection.closedByServer { core.peerGone(connection.client, "fuzz peer closed") }
    }

    func completeHash(_ selector: UInt8) {
        guard !driver.hashJobs.isEmpty else { return }
        let job = driver.hashJobs.remove(at: Int(selector) % driver.hashJobs.count)
        switch job {
        case .hashForRegistration(let connection, let requestID, let name, let password, let iterations):
            core.hashCompleted([.hashed(connection: connection, requestID: requestID, name: name,
                                        hash: PasswordHasher.hash(password: password, iterations: iterations))])
        case .verifyLogin(let connection, let requestID, let name, let password, let account, let dummy):
            let ok = PasswordHasher.verify(password: password, against: account?.password ?? dummy) && account != nil
            core.hashCompleted([.verified(connection: connection, requestID: requestID, name: name, account: account, ok: ok)])
        case .hashForAdmin(let token, let password, let iterations):
            core.hashCompleted([.hashedForAdmin(token: token, hash: PasswordHasher.hash(password: password, iterations: iterations))])
        }
    }

    func completeCommit(_ selector: UInt8) {
        guard !driver.commits.isEmpty else { return }
        let batch = driver.commits.removeFirst()
        let result: Result<[WriteResult], StoreErrorBox>
        if selector >= 248 {
            result = .failure(StoreErrorBox(description: "fuzz: commit failed"))  // as when apply throws
        } else {
            do { result = .success(try store.apply(batch.ops)) } catch { result = .failure(StoreErrorBox(description: "\(error)")) }
        }
        core.commitCompleted([StoreBatchResult(batch: batch, results: result, commitNanos: 0)])
    }

    func advanceClock(by ms: UInt64) {
        driver.clock += ms
        let due = driver.timers.filter { $0.deadline <= driver.clock }
        driver.timers.removeAll { $0.deadline <= driver.clock }
        for timer in due.sorted(by: { $0.deadline < $1.deadline }) { core.timerFired(timer.token) }
    }

    /// The loop turn's end, repeated while the core has work (the event loop does not block then).
    func endOfTurn() {
        var rounds = 0
        repeat {
            rounds += 1
            check(rounds <= 64, "the core still has pending work after 64 end-of-turn rounds: a busy loop")
            core.endOfTurn()
            let requests = driver.flushRequests
            driver.flushRequests.removeAll()
            if flushWrite > 0 {
                for client in requests { if let connection = client.link as? Connection { write(connection, limit: flushWrite) } }
            }
            for client in driver.finalized {
                guard let connection = client.link as? Connection else { continue }
                connection.closedByServer = true
                if !connection.gone { connection.inbound.append(contentsOf: client.output.readableView); clientReads(connection) }
                client.output.clear()
            }
            driver.finalized.removeAll()
        } while core.hasPendingWork
        check(!core.hasPendingWork, "pending work after end of turn")
        let bound = config.outputHardCapBytes + Int(config.limits.maxFrameBytes) + 512
        for connection in connections where !connection.client.isClosing && !connection.closedByServer {
            let held = connection.client.output.retainedBytes
            check(held <= bound, "client \(connection.client.id) holds \(held) bytes of output > \(bound)")
        }
    }

    func step(_ op: UInt8, _ input: inout FuzzInput) {
        switch op & 15 {
        case 0, 1:
            connect(&input)
        case 2, 3, 4, 5:
            appendFrame(&input)
        case 6, 7:
            guard let c = pick(&input) else { return }
            let amount = input.byte()
            let chunk = input.byte()
            feed(c, upTo: amount == 255 ? .max : (Int(amount) + 1) * 32, chunk: (Int(chunk) + 1) * 16)
        case 8, 9:
            guard let c = pick(&input) else { return }
            let amount = input.byte()
            write(c, limit: amount == 255 ? .max : Int(amount) * 64)
        case 10:
            completeHash(input.byte())
        case 11:
            completeCommit(input.byte())
        case 12, 13:
            let ms = input.byte()
            advanceClock(by: ms < 200 ? UInt64(ms) * 10 : UInt64(ms - 199) * 1_000)
        case 14:
            guard let c = pick(&input) else { return }
            disconnect(c, keep: input.byte())
        default:
            if input.byte() == 0xA5 && !shutDown { shutDown = true; core.beginShutdown() }
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func coreFuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    if files == nil { files = StoreFiles() }
    guard let files else { return 0 }
    var input = FuzzInput(fuzzBytes(data, size))
    let header = input.byte()
    let run = Run(store: files.fresh(), userIDs: files.userIDs, dummyHash: files.dummyHash,
                  flushWrite: Int(header % 16) * 1_024)
    var steps = 0
    var sameTurn = 0
    while input.remaining > 0 && steps < 200 {
        steps += 1
        let op = input.byte()
        run.step(op, &input)
        if op & 0x80 != 0 && sameTurn < 8 { sameTurn += 1; continue }
        sameTurn = 0
        run.endOfTurn()
    }
    run.endOfTurn()
    if traceEnabled {
        // SB_FUZZ_TRACE=1: what the input made the core do (to check that a seed does what it means to).
        let s = run.core.stats
        print("core: \(steps) steps, \(s.accepted) accepted, \(s.closed) closed, \(s.framesIn) frames in, \(s.relayedLive) live, "
              + "\(s.storedOffline) stored, \(s.duplicatesDropped) dups, \(s.protocolErrors) protocol errors, "
              + "\(s.slowConsumerCloses) slow closes, \(s.lockouts) lockouts, \(s.storeBatches) batches")
    }
    run.tearDown()
    return 0
}
