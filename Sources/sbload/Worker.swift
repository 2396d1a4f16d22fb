// One load thread: its own EventLoop (epoll), its own share of connections, its own histograms.
// Invariants: only this thread touches its connections and buffers; every connection is written at
// most once per loop turn (a pending list flushed after the turn), so sends and acknowledgements
// queued in one turn leave in one write; a read is issued only when epoll reported the descriptor;
// acknowledgements (DELIVERY_ACK, MAIL_ACK) are batched: one per connection per read.
import Glibc
import Histogram
import SwitchboardIO
import SwitchboardTLS
import SwitchboardProtocol

final class LoadConnection: EventHandler {
    enum State { case waiting, connecting, loggingIn, ready, closed }

    let user: Int
    let name: String
    let partnerName: String
    let pair: Int
    /// Index into `Plan.targets` of the server this connection uses (moves on with --failover).
    var target: Int
    /// Index in the worker's `all` (the failover timer's token).
    var index = 0
    // failover: between losing its server and being logged in again; attempts and back-off so far
    var reconnecting = false
    var attempts = 0
    var backoffMs: UInt64 = 0
    var lostAtNs: UInt64 = 0
    unowned let worker: Worker
    var fd: Int32 = -1
    /// TLS (owns `fd` once set); nil for plaintext.
    var tls: TLSClientStream?
    var registration: RegistrationID?
    var state = State.waiting
    let input = ByteBuffer()
    let output = ByteBuffer()
    var pendingWrite = false
    var userID: UInt32 = 0
    var partnerID: UInt32 = 0
    var gotLoginOK = false
    var contactsDone = false
    var mailDone = false
    var connectStartNs: UInt64 = 0
    // sender: a ring of the last `ringMask + 1` sequence numbers (status, send time)
    var nextSeq: UInt64 = 1
    var base: UInt64 = 1
    var inflight = 0
    var ringMask = 0
    var ringStatus: UnsafeMutablePointer<UInt8>?
    var ringSentNs: UnsafeMutablePointer<UInt64>?
    var needsTopUp = false
    var stored = Set<UInt64>()
    var refused = Set<UInt64>()
    // receiver
    var expect: UInt64 = 1
    var gaps = Set<UInt64>()
    var deliverHigh: UInt64 = 0
    var deliverAcked: UInt64 = 0
    var mailHigh: UInt64 = 0
    var mailAcked: UInt64 = 0
    // peer adapters (PeerAdapters.swift): index in the worker's senders/receivers, channel or topic,
    // pre-encoded publish prefix, whether a publish ends in CRLF, handshake seen (CONNACK, INFO)
    var slot = 0
    var peerChannel: [UInt8] = []
    var peerPrefix: [UInt8] = []
    var peerSuffixCRLF = false
    var peerHandshake = false

    static let inflightStatus: UInt8 = 1, deliveredStatus: UInt8 = 2, storedStatus: UInt8 = 3, refusedStatus: UInt8 = 4

    init(user: Int, prefix: String, pair: Int, worker: Worker) {
        self.user = user
        self.name = "\(prefix)\(user)"
        self.partnerName = "\(prefix)\(user ^ 1)"
        self.pair = pair
        self.worker = worker
        target = worker.plan.targetIndex(ofUser: user)
    }

    deinit {
        ringStatus?.deallocate()
        ringSentNs?.deallocate()
    }

    func makeRing(capacity: Int) {
        var size = 16
        while size < capacity { size *= 2 }
        ringMask = size - 1
        ringStatus = .allocate(capacity: size)
        ringStatus!.initialize(repeating: 0, count: size)
        ringSentNs = .allocate(capacity: size)
        ringSentNs!.initialize(repeating: 0, count: size)
    }

    /// Room for one more message in the ring (open loop: otherwise the schedule stalls).
    @inline(__always) var ringHasRoom: Bool { Int(nextSeq - base) <= ringMask }

    func handle(events: IOEvents, loop: EventLoop) { worker.handle(self, events: events) }
}

struct LoadFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

final class Worker {
    let plan: Plan
    let index: Int
    let coord: Coordinator
    let loop: EventLoop
    let readBuffer = ByteBuffer(capacity: 256 << 10)
    let filler: UnsafeMutableRawBufferPointer
    var pending: [LoadConnection] = []
    var all: [LoadConnection] = []
    var senders: [LoadConnection] = []
    var receivers: [LoadConnection] = []
    var connectQueue: [LoadConnection] = []
    var connectHead = 0
    var inLogin = 0
    var readyCount = 0
    var loginTarget = 0
    let loginConcurrency: Int
    var counters = Counters()
    var result = ThreadResult()
    var interval = Latency.make()
    var lastReadNs: UInt64 = 0
    var measureStartNs: UInt64 = .max
    var sendEndNs: UInt64 = .max
    var nextPublishNs: UInt64 = 0
    var topUp: [LoadConnection] = []
    var acceptDeliveries = true
    var lastAckNs: UInt64 = 0
    let tlsContext: TLSContext?
    let peer: PeerProtocol

    init(plan: Plan, index: Int, coord: Coordinator) throws {
        self.plan = plan
        peer = plan.peer
        tlsContext = try plan.tlsCAFile.map { try TLSContext(client: TLSClientConfiguration(verification: .certificateAuthority(file: $0))) }
        self.index = index
        self.coord = coord
        loop = try EventLoop(maxEventsPerWait: 4096)
        result.loggedInPerTarget = Array(repeating: 0, count: plan.targets.count)
        result.reconnectsPerTarget = Array(repeating: 0, count: plan.targets.count)
        filler = Payload.filler(payloadBytes: plan.payload)
        loginConcurrency = max(1, plan.loginConcurrency / plan.threads)
        let units = plan.units(of: index)
        switch plan.scenario {
        case .connect:
            for i in units { all.append(LoadConnection(user: i, prefix: plan.prefix, pair: i / 2, worker: self)) }
        case .relay, .offline:
            for k in units {
                let s = LoadConnection(user: 2 * k, prefix: plan.prefix, pair: k, worker: self)
                let r = LoadConnection(user: 2 * k + 1, prefix: plan.prefix, pair: k, worker: self)
                s.makeRing(capacity: plan.rate > 0 ? plan.maxInflight : 2 * plan.window)
                s.slot = senders.count
                r.slot = senders.count
                if plan.peer != .switchboard { configurePeer(sender: s, receiver: r, pair: k) }
                senders.append(s)
                receivers.append(r)
                all.append(s)
                all.append(r)
            }
        }
        for (i, c) in all.enumerated() { c.index = i }
        if plan.failover {
            loop.onTimer = { [unowned self] token in self.reconnectDue(Int(truncatingIfNeeded: token)) }
        }
    }

    deinit { filler.deallocate() }

    // MARK: driving

    func run() {
        do {
            switch plan.scenario {
            case .relay: try runRelay()
            case .offline: try runOffline()
            case .connect: try runConnect()
            }
        } catch {
            note("thread \(index): \(error)")
            coord.failedThreads.add(1, ordering: .sequentiallyConsistent)
        }
        for c in all { close(c, byServer: false) }
        publishProgress(force: true)
        result.counters = counters
        let r = result
        coord.results.withLock { $0[index] = r }
        coord.finished.add(1, ordering: .sequentiallyConsistent)
    }

    private func failedElsewhere() -> Bool { coord.failedThreads.load(ordering: .relaxed) > 0 }

    /// Connects and logs in `conns` (bounded concurrency) and waits until all are ready.
    private func logIn(_ conns: [LoadConnection]) throws {
        connectQueue = conns
        connectHead = 0
        readyCount = 0
        loginTarget = conns.count
        result.firstLoginNs = Clock.monotonicNs()
        startConnects()
        let deadline = Clock.monotonicNs() + 120_000_000_000
        while readyCount < loginTarget {
            try turn(maxWaitMs: 10)
            startConnects()
            if counters.connectFailures + counters.disconnects > 0 {
                throw LoadFailure("connections failed during login (\(result.firstErrors.first ?? "see above"))")
            }
            if failedElsewhere() || coord.stop.load(ordering: .relaxed) { throw LoadFailure("stopped during login") }
            if Clock.monotonicNs() > deadline { throw LoadFailure("login did not complete within 120 s (\(readyCount) of \(loginTarget))") }
        }
        result.lastLoginNs = Clock.monotonicNs()
    }

    private func startConnects() {
        while inLogin < loginConcurrency && connectHead < connectQueue.count {
            let c = connectQueue[connectHead]
            connectHead += 1
            startConnect(c)
        }
    }

    private func waitFor(_ condition: () -> Bool) throws {
        while !condition() {
            try turn(maxWaitMs: 5)
            if failedElsewhere() { throw LoadFailure("another thread failed") }
        }
    }

    /// One loop turn, then queued sends and flushes.
    @inline(__always) private func turn(maxWaitMs: Int32) throws {
        try loop.runOnce(maxWaitMs: maxWaitMs)
        if !topUp.isEmpty { topUpSenders() }
        flushPending()
        publishProgress(force: false)
    }

    /// Failover is armed once every connection has logged in (a failure before that fails the run).
    var failoverArmed = false

    private func runRelay() throws {
        try logIn(all)
        failoverArmed = plan.failover
        coord.ready.add(1, ordering: .sequentiallyConsistent)
        try waitFor { coord.goNs.load(ordering: .acquiring) != 0 }
        let t0 = coord.goNs.load(ordering: .acquiring)
        measureStartNs = t0 + plan.warmupNs
        sendEndNs = measureStartNs + plan.durationNs
        let quota = share(plan.count)
        if plan.rate > 0 {
            try openLoop(t0: t0, quota: quota)
        } else {
            closedQuota = quota
            for s in senders { s.needsTopUp = true; topUp.append(s) }
            while Clock.monotonicNs() < sendEndNs && counters.sent < quota && !coord.stop.load(ordering: .relaxed) {
                try turn(maxWaitMs: 2)
            }
            closedQuota = 0
        }
        // A peer's ack (PUBLISH reply, PUBACK) only says the server took the message: also wait until the
        // receivers got what was sent, so messages still queued in the server are not counted as lost.
        try drain(until: {
            self.senders.allSatisfy { $0.inflight == 0 }
                && (self.peer == .switchboard || self.counters.received + self.counters.refused >= self.counters.sent)
                && (!self.failoverArmed || self.failoverSettled())
        })
        failoverArmed = false
        verifyRelay()
    }

    /// This thread's share of a total, in proportion to its pairs.
    private func share(_ total: UInt64) -> UInt64 {
        guard total != .max, plan.pairs > 0 else { return .max }
        let mine = UInt64(senders.count)
        let base = total * mine / UInt64(plan.pairs)
        // Remainders go to the first threads so the shares add up to `total`.
        let remainder = total - (0..<plan.threads).reduce(UInt64(0)) { acc, t in
            acc + total * UInt64(plan.units(of: t).count) / UInt64(plan.pairs)
        }
        return base + (UInt64(index) < remainder ? 1 : 0)
    }

    var closedQuota: UInt64 = 0

    private func topUpSenders() {
        let list = topUp
        topUp.removeAll(keepingCapacity: true)
        guard closedQuota > 0 else { for s in list { s.needsTopUp = false }; return }
        let now = Clock.monotonicNs()
        for s in list {
            s.needsTopUp = false
            while s.inflight < plan.window && s.ringHasRoom && counters.sent < closedQuota && s.state == .ready {
                if plan.scenario == .offline && s.nextSeq > UInt64(plan.messagesPerSender) { break }
                send(s, sentNs: now)
            }
        }
    }

    private func openLoop(t0: UInt64, quota: UInt64) throws {
        guard !senders.isEmpty else { return }
        let threadRate = plan.rate * Double(senders.count) / Double(plan.pairs)
        let intervalNs = 1e9 / threadRate
        // Threads interleave their schedules so the total stays evenly spaced.
        let offset = intervalNs * Double(index) / Double(plan.threads)
        var n: UInt64 = 0
        let count = senders.count
        while !coord.stop.load(ordering: .relaxed) {
            let now = Clock.monotonicNs()
            var intended = t0 + UInt64(offset + Double(n) * intervalNs)
            if intended >= sendEndNs || n >= quota { break }
            var burst = 0
            while intended <= now && burst < 4096 && n < quota && intended < sendEndNs {
                let s = senders[Int(n % UInt64(count))]
                guard s.ringHasRoom, s.state == .ready else { counters.stalls += 1; break }
                send(s, sentNs: intended)
                n += 1
                burst += 1
                intended = t0 + UInt64(offset + Double(n) * intervalNs)
            }
            let waitNs = intended > now ? intended - now : 0
            if !plan.busyPoll && waitNs > 0 && waitNs < 1_000_000 {
                // epoll_wait counts in milliseconds: sleep the sub-millisecond part instead of
                // spinning, so the generator's CPU figure means something (at ~60 µs timer slack).
                var pause = timespec(tv_sec: 0, tv_nsec: Int(waitNs))
                nanosleep(&pause, nil)
            }
            let waitMs: Int32 = (plan.busyPoll && waitNs < 2_000_000) ? 0 : Int32(clamping: waitNs / 1_000_000)
            try turn(maxWaitMs: min(waitMs, 50))
            if failedElsewhere() { throw LoadFailure("another thread failed") }
        }
    }

    /// Keeps the loop running (acks, deliveries) until `done` or the drain period ends.
    private func drain(until done: () -> Bool) throws {
        let deadline = Clock.monotonicNs() + plan.drainNs
        while !done() && Clock.monotonicNs() < deadline {
            try turn(maxWaitMs: 5)
        }
        // One more short round so the last DELIVERY_ACKs and SEND_ACKs cross.
        let settle = Clock.monotonicNs() + 20_000_000
        while Clock.monotonicNs() < settle { try turn(maxWaitMs: 2) }
    }

    private func runOffline() throws {
        acceptDeliveries = false
        try logIn(senders)
        coord.ready.add(1, ordering: .sequentiallyConsistent)
        try waitFor { coord.goNs.load(ordering: .acquiring) != 0 }
        let t0 = coord.goNs.load(ordering: .acquiring)
        measureStartNs = t0
        sendEndNs = t0 + plan.durationNs
        closedQuota = .max
        for s in senders { s.needsTopUp = true; topUp.append(s) }
        let total = UInt64(plan.messagesPerSender)
        try drain0(until: { self.senders.allSatisfy { $0.nextSeq > total && $0.inflight == 0 } }, deadline: sendEndNs)
        closedQuota = 0
        result.phaseAEndNs = lastAckNs
        coord.phaseADone.add(1, ordering: .sequentiallyConsistent)
        try waitFor { coord.phaseBNs.load(ordering: .acquiring) != 0 }
        try logIn(receivers)
        result.drainEndNs = Clock.monotonicNs()
        // Let the last MAIL_ACKs reach the server.
        let settle = Clock.monotonicNs() + 20_000_000
        while Clock.monotonicNs() < settle { try turn(maxWaitMs: 2) }
        verifyOffline()
    }

    private func drain0(until done: () -> Bool, deadline: UInt64) throws {
        while !done() && Clock.monotonicNs() < deadline && !coord.stop.load(ordering: .relaxed) {
            try turn(maxWaitMs: 5)
            if failedElsewhere() { throw LoadFailure("another thread failed") }
        }
    }

    private func runConnect() throws {
        try logIn(all)
        coord.ready.add(1, ordering: .sequentiallyConsistent)
        while !coord.stop.load(ordering: .relaxed) {
            try turn(maxWaitMs: 20)
            if failedElsewhere() { throw LoadFailure("another thread failed") }
        }
    }

    /// Failover: nobody is still reconnecting, and every message stored for an absent receiver has
    /// reached it (as MAIL after its login elsewhere). Only checked while draining.
    private func failoverSettled() -> Bool {
        for c in all where c.reconnecting { return false }
        for (s, r) in zip(senders, receivers) {
            for seq in s.stored where seq >= r.expect || r.gaps.contains(seq) { return false }
            var seq = s.base
            while seq < s.nextSeq {
                if s.ringStatus![Int(truncatingIfNeeded: seq) & s.ringMask] == LoadConnection.storedStatus
                    && (seq >= r.expect || r.gaps.contains(seq)) { return false }
                seq += 1
            }
        }
        return true
    }

    // MARK: failover

    /// `c` lost its server (or a reconnect attempt failed): try the next target after the back-off,
    /// or give up after `failoverAttempts` (then it counts as a disconnect).
    private func failOver(_ c: LoadConnection, _ why: String) {
        let now = Clock.monotonicNs()
        if !c.reconnecting {
            c.reconnecting = true
            c.attempts = 0
            c.backoffMs = 50
            c.lostAtNs = now
            counters.serverLost += 1
            if counters.serverLost <= 3 { note("\(c.name): \(why) (failing over)") }
        }
        if c.attempts >= plan.failoverAttempts {
            c.reconnecting = false
            counters.disconnects += 1
            note("\(c.name): gave up after \(c.attempts) reconnect attempts (\(why))")
            return
        }
        c.target = (c.target + 1) % plan.targets.count
        loop.schedule(at: Clock.monotonicMs() + c.backoffMs, token: UInt64(c.index))
        c.backoffMs = min(c.backoffMs * 2, 1000)
    }

    private func reconnectDue(_ index: Int) {
        guard index < all.count else { return }
        let c = all[index]
        guard c.reconnecting, c.state == .closed, failoverArmed, !coord.stop.load(ordering: .relaxed) else { return }
        c.attempts += 1
        startConnect(c)
    }

    /// Logged in again: send again, with the same ids and send times, every message not acknowledged.
    private func resendUnacknowledged(_ s: LoadConnection) {
        guard s.ringStatus != nil else { return }
        var seq = s.base
        while seq < s.nextSeq {
            let slot = Int(truncatingIfNeeded: seq) & s.ringMask
            if s.ringStatus![slot] == LoadConnection.inflightStatus {
                Payload.writeSend(into: s.output, to: s.partnerID, seq: seq, sentNs: s.ringSentNs![slot],
                                  pair: UInt32(truncatingIfNeeded: s.pair), run: plan.run, filler: UnsafeRawBufferPointer(filler))
                counters.resent += 1
            }
            seq += 1
        }
        enqueue(s)
    }

    // MARK: verification

    private func verifyRelay() {
        for (s, r) in zip(senders, receivers) {
            var missing: [UInt64] = Array(r.gaps)
            if r.expect < s.nextSeq { missing.append(contentsOf: r.expect..<s.nextSeq) }
            for seq in missing {
                if seq >= s.base {
                    let status = s.ringStatus![Int(seq) & s.ringMask]
                    if status == LoadConnection.inflightStatus { result.unacknowledged += 1; continue }
                    if status == LoadConnection.storedStatus { result.storedNotDrained += 1; continue }
                    if status == LoadConnection.refusedStatus { continue }
                } else if s.stored.contains(seq) {
                    result.storedNotDrained += 1; continue
                } else if s.refused.contains(seq) {
                    continue
                }
                result.lost += 1
                if result.lost <= 5 { note("LOST: pair \(s.pair) seq \(seq) was acknowledged as delivered but never received") }
            }
        }
    }

    private func verifyOffline() {
        for (s, r) in zip(senders, receivers) {
            for seq in s.stored where seq >= r.expect || r.gaps.contains(seq) {
                result.lost += 1
                if result.lost <= 5 { note("LOST: pair \(s.pair) seq \(seq) was acknowledged as stored but never drained") }
            }
            result.unacknowledged += UInt64(s.inflight)
        }
    }

    // MARK: connections

    private func startConnect(_ c: LoadConnection) {
        let sources = plan.sourceAddresses
        let source = sources.isEmpty ? nil : sources[c.user % sources.count]
        c.connectStartNs = Clock.monotonicNs()
        // A new session: the server numbers deliveries and mail afresh.
        c.gotLoginOK = false; c.contactsDone = false; c.mailDone = false
        c.deliverHigh = 0; c.deliverAcked = 0; c.mailHigh = 0; c.mailAcked = 0
        do {
            c.fd = try Socket.connectNonBlocking(to: plan.targets[c.target], from: source)
            c.registration = try loop.register(fd: c.fd, interest: [.readable, .writable], handler: c)
        } catch {
            if c.fd >= 0 { Sys.close(c.fd); c.fd = -1 }
            c.state = .closed
            if c.reconnecting { failOver(c, "connect to \(plan.targets[c.target]): \(error)"); return }
            counters.connectFailures += 1
            note("connect \(c.name): \(error)")
            return
        }
        c.state = .connecting
        inLogin += 1
    }

    func handle(_ c: LoadConnection, events: IOEvents) {
        if c.state == .connecting {
            let err = Socket.pendingError(c.fd)
            if err != 0 || events.contains(.error) {
                let why = "connect \(c.name) to \(plan.targets[c.target]): \(String(cString: strerror(err)))"
                close(c, byServer: false)
                if c.reconnecting { failOver(c, why); return }
                counters.connectFailures += 1
                note(why)
                return
            }
            guard events.contains(.writable) || events.contains(.readable) else { return }
            if let tlsContext {
                do {
                    c.tls = try TLSClientStream(fd: c.fd, context: tlsContext)
                } catch {
                    close(c, byServer: false)
                    if c.reconnecting { failOver(c, "TLS setup: \(error)"); return }
                    counters.connectFailures += 1
                    note("TLS setup \(c.name): \(error)")
                    return
                }
            }
            c.state = .loggingIn
            if peer != .switchboard {
                peerGreet(c)
                return
            }
            FrameEncoder.encode(ClientFrame.hello(version: ProtocolConstants.version, agent: "sbload/1"), into: c.output)
            FrameEncoder.encode(ClientFrame.login(requestID: 1, name: TextView(c.name), password: TextView(plan.password)), into: c.output)
            enqueue(c)
            return
        }
        if events.contains(.readable) || events.contains(.hangup) || events.contains(.error) || events.contains(.readHangup) {
            read(c)
            // A TLS write that had to read first (handshake) can go on.
            if c.fd >= 0, let tls = c.tls, tls.needsReadable { flush(c) }
        }
        if events.contains(.writable) && c.fd >= 0 {
            flush(c)
            // A TLS read that had to write first can go on.
            if c.fd >= 0, let tls = c.tls, tls.needsWritable { read(c) }
        }
    }

    private func read(_ c: LoadConnection) {
        let target = c.input.isEmpty ? readBuffer : c.input
        let region = target.writableRegion(minimum: c.input.isEmpty ? 64 << 10 : 16 << 10)
        let result: IOResult
        do {
            if let tls = c.tls { result = try tls.read(into: region) } else { result = try Sys.read(c.fd, region) }
        } catch {
            serverClosed(c, "read: \(error)")
            return
        }
        switch result {
        case .wouldBlock:
            if let tls = c.tls, tls.needsWritable, let registration = c.registration {
                loop.setInterest(registration, [.readable, .writable])
            }
            return
        case .processed(0):
            serverClosed(c, "server closed the connection")
            return
        case .processed(let n):
            target.didWrite(n)
            lastReadNs = Clock.monotonicNs()
            if peer == .switchboard { process(c, target) } else { peerProcess(c, target) }
            if target === readBuffer {
                if readBuffer.readableBytes > 0 && c.fd >= 0 { c.input.writeBytes(readBuffer.readableView) }
                readBuffer.clear()
            }
            if c.fd < 0 { return }
            // One cumulative acknowledgement per read.
            if c.deliverHigh > c.deliverAcked {
                c.deliverAcked = c.deliverHigh
                FrameEncoder.encode(ClientFrame.deliveryAck(throughSeq: c.deliverHigh), into: c.output)
                enqueue(c)
            }
            if c.mailHigh > c.mailAcked {
                c.mailAcked = c.mailHigh
                FrameEncoder.encode(ClientFrame.mailAck(throughSeq: c.mailHigh), into: c.output)
                enqueue(c)
            }
            // Decrypted bytes OpenSSL holds will not be reported by epoll again.
            if let tls = c.tls, tls.hasBufferedPlaintext { read(c) }
        }
    }

    private func process(_ c: LoadConnection, _ buffer: ByteBuffer) {
        while c.fd >= 0 {
            switch FrameDecoder.split(buffer.readableView, maxFrameBytes: 1 << 24) {
            case .needMore:
                return
            case .failure(let error):
                note("\(c.name): bad frame from server: \(error)")
                counters.corrupt += 1
                close(c, byServer: false)
                return
            case .frame(let (type, body), let consumed):
                handleFrame(c, type: type, body: body)
                buffer.moveReaderIndex(forwardBy: consumed)
            }
        }
    }

    @inline(__always)
    private func handleFrame(_ c: LoadConnection, type: UInt8, body: UnsafeRawBufferPointer) {
        switch type {
        case FrameType.deliver.rawValue:
            guard body.count >= 28 else { counters.corrupt += 1; return }
            let seq: UInt64 = be(body, 0)
            let from: UInt32 = be(body, 8)
            let messageID: UInt64 = be(body, 12)
            if seq > c.deliverHigh { c.deliverHigh = seq }
            received(c, from: from, messageID: messageID, payload: UnsafeRawBufferPointer(rebasing: body[28...]), mail: false)
        case FrameType.sendAck.rawValue:
            guard body.count == 9 else { counters.corrupt += 1; return }
            let messageID: UInt64 = be(body, 0)
            guard messageID >> 32 == UInt64(plan.run) else { counters.unexpectedAcks += 1; return }
            completed(c, id: messageID & 0xFFFF_FFFF, status: body[8] == SendStatus.delivered.rawValue ? LoadConnection.deliveredStatus : LoadConnection.storedStatus)
        case FrameType.mail.rawValue:
            var r = FieldReader(body)
            do {
                let seq = try r.integer(UInt64.self, "seq")
                let from = try r.integer(UInt32.self, "from")
                _ = try r.text("from_name")
                let messageID = try r.integer(UInt64.self, "message_id")
                _ = try r.integer(UInt64.self, "sent_at_ms")
                let payload = r.rest()
                if seq > c.mailHigh { c.mailHigh = seq }
                payload.withUnsafeBytes { received(c, from: from, messageID: messageID, payload: $0, mail: true) }
            } catch {
                counters.corrupt += 1
                note("\(c.name): bad MAIL: \(error)")
            }
        case FrameType.serverPing.rawValue:
            guard body.count == 8 else { return }
            FrameEncoder.encode(ClientFrame.pong(token: be(body, 0)), into: c.output)
            enqueue(c)
        default:
            let frame: ServerFrame
            do { frame = try FrameDecoder.serverFrame(type: type, body: body) } catch {
                counters.corrupt += 1
                note("\(c.name): bad frame: \(error)")
                return
            }
            control(c, frame)
        }
    }

    private func control(_ c: LoadConnection, _ frame: ServerFrame) {
        switch frame {
        case .loginOK(_, let userID, _, _, _):
            c.userID = userID
            c.gotLoginOK = true
        case .contactList(_, let final, let contacts):
            if let partner = contacts.first(where: { $0.name == c.partnerName }) { c.partnerID = partner.userID }
            if final { c.contactsDone = true }
        case .mailEnd:
            c.mailDone = true
        case .error(_, let code, let message):
            counters.serverErrors += 1
            let hint = code == ErrorCode.authenticationFailed.rawValue
                ? " (create the users first: switchboard users bulk-create --prefix \(plan.prefix) --password ... --pair-contacts, server stopped)" : ""
            note("\(c.name): server ERROR \(code): \(message.string)\(hint)")
            if code == ErrorCode.authenticationFailed.rawValue { close(c, byServer: true) }
        case .sendError(let id, let code, let message):
            if counters.refused < 5 { note("\(c.name): SEND_ERROR \(code) for \(id): \(message.string)") }
            completed(c, id: id >> 32 == UInt64(plan.run) ? id & 0xFFFF_FFFF : 0, status: LoadConnection.refusedStatus)
        default:
            break
        }
        if c.state == .loggingIn && c.gotLoginOK && c.contactsDone && c.mailDone {
            if plan.scenario != .connect && c.partnerID == 0 {
                counters.serverErrors += 1
                note("\(c.name): \(c.partnerName) is not in its contact list (bulk-create with --pair-contacts)")
                close(c, byServer: false)
                return
            }
            c.state = .ready
            inLogin -= 1
            if c.reconnecting {
                c.reconnecting = false
                counters.reconnects += 1
                result.reconnectsPerTarget[c.target] += 1
                result.reconnectLatency.record(Clock.monotonicNs() &- c.lostAtNs)
                if c.user & 1 == 0 {
                    resendUnacknowledged(c)
                    if !c.needsTopUp && closedQuota > 0 { c.needsTopUp = true; topUp.append(c) }
                }
                return
            }
            readyCount += 1
            counters.loggedIn += 1
            result.loggedInPerTarget[c.target] += 1
            result.loginLatency.record(Clock.monotonicNs() &- c.connectStartNs)
        }
    }

    // MARK: messages

    @inline(__always)
    private func send(_ s: LoadConnection, sentNs: UInt64) {
        let seq = s.nextSeq
        if peer == .switchboard {
            Payload.writeSend(into: s.output, to: s.partnerID, seq: seq, sentNs: sentNs, pair: UInt32(truncatingIfNeeded: s.pair),
                              run: plan.run, filler: UnsafeRawBufferPointer(filler))
        } else {
            writePeerPublish(s, seq: seq, sentNs: sentNs)
        }
        let slot = Int(truncatingIfNeeded: seq) & s.ringMask
        s.ringStatus![slot] = LoadConnection.inflightStatus
        s.ringSentNs![slot] = sentNs
        s.nextSeq = seq + 1
        s.inflight += 1
        counters.sent += 1
        enqueue(s)
    }

    @inline(__always)
    func completed(_ s: LoadConnection, id: UInt64, status: UInt8) {
        let slot = Int(truncatingIfNeeded: id) & s.ringMask
        guard s.ringStatus != nil, id >= s.base, id < s.nextSeq, s.ringStatus![slot] == LoadConnection.inflightStatus else {
            counters.unexpectedAcks += 1
            if counters.unexpectedAcks <= 5 { note("\(s.name): acknowledgement for message \(id) that is not in flight") }
            return
        }
        s.ringStatus![slot] = status
        s.inflight -= 1
        lastAckNs = lastReadNs
        switch status {
        case LoadConnection.deliveredStatus: counters.acked += 1
        case LoadConnection.storedStatus: counters.ackedStored += 1; s.stored.insert(id)
        default: counters.refused += 1; s.refused.insert(id)
        }
        let sentNs = s.ringSentNs![slot]
        if sentNs >= measureStartNs && sentNs < sendEndNs { result.ackLatency.record(lastReadNs &- sentNs) }
        while s.base < s.nextSeq && s.ringStatus![Int(truncatingIfNeeded: s.base) & s.ringMask] != LoadConnection.inflightStatus {
            s.ringStatus![Int(truncatingIfNeeded: s.base) & s.ringMask] = 0
            s.base += 1
        }
        if !s.needsTopUp && closedQuota > 0 {
            s.needsTopUp = true
            topUp.append(s)
        }
    }

    @inline(__always)
    func received(_ r: LoadConnection, from: UInt32, messageID: UInt64, payload: UnsafeRawBufferPointer, mail: Bool) {
        switch Payload.verify(payload, run: plan.run, filler: UnsafeRawBufferPointer(filler)) {
        case .corrupt:
            counters.corrupt += 1
            if counters.corrupt <= 5 { note("\(r.name): corrupted body (message id \(messageID), \(payload.count) bytes)") }
            return
        case .otherRun:
            // Mail left over from an earlier run: acknowledged (deleted) but not counted.
            counters.staleMail += 1
            return
        case .ok(let h):
            guard from == r.partnerID, Int(h.pair) == r.pair, messageID == Payload.messageID(run: plan.run, seq: h.seq), r.user & 1 == 1 else {
                counters.corrupt += 1
                if counters.corrupt <= 5 { note("\(r.name): misrouted message from \(from) (pair \(h.pair), id \(messageID))") }
                return
            }
            if mail { counters.mailReceived += 1 }
            // relay (mail only comes after a failover): mail counts like a delivery.
            if !mail || plan.scenario == .relay {
                counters.received += 1
                let latency = lastReadNs &- h.sentNs
                interval.record(latency)
                if h.sentNs >= measureStartNs && h.sentNs < sendEndNs { result.latency.record(latency) }
                if lastReadNs >= measureStartNs && lastReadNs < sendEndNs { counters.receivedInWindow += 1 }
            }
            let seq = h.seq
            if seq == r.expect {
                r.expect += 1
            } else if seq > r.expect {
                if seq - r.expect > 10_000_000 { counters.corrupt += 1; return }
                counters.outOfOrder += 1
                for missing in r.expect..<seq { r.gaps.insert(missing) }
                r.expect = seq + 1
            } else if r.gaps.remove(seq) != nil {
                counters.outOfOrder += 1
            } else {
                counters.duplicates += 1
                if counters.duplicates <= 5 { note("\(r.name): DUPLICATE seq \(seq) (\(mail ? "mail" : "deliver"))") }
            }
        }
    }

    // MARK: writing and closing

    @inline(__always) func enqueue(_ c: LoadConnection) {
        if !c.pendingWrite {
            c.pendingWrite = true
            pending.append(c)
        }
    }

    private func flushPending() {
        guard !pending.isEmpty else { return }
        for c in pending {
            c.pendingWrite = false
            if c.fd >= 0 { flush(c) }
        }
        pending.removeAll(keepingCapacity: true)
    }

    private func flush(_ c: LoadConnection) {
        let out = c.output
        while out.readableBytes > 0 {
            do {
                let written = if let tls = c.tls { try tls.write(from: out.readableView) } else { try Sys.write(c.fd, out.readableView) }
                switch written {
                case .processed(let n):
                    let all = n == out.readableBytes
                    out.moveReaderIndex(forwardBy: n)
                    if !all { break }
                    continue
                case .wouldBlock:
                    break
                }
            } catch {
                serverClosed(c, "write: \(error)")
                return
            }
            break
        }
        if let registration = c.registration {
            let wantsWrite = out.readableBytes > 0 || (c.tls?.needsWritable ?? false)
            loop.setInterest(registration, wantsWrite ? [.readable, .writable] : [.readable])
        }
    }

    private func serverClosed(_ c: LoadConnection, _ why: String) {
        let wasOpen = c.state != .closed
        let canFailOver = failoverArmed && (c.state == .ready || c.reconnecting)
        close(c, byServer: true)
        guard wasOpen && !coord.stop.load(ordering: .relaxed) else { return }
        if canFailOver { failOver(c, why); return }
        counters.disconnects += 1
        note("\(c.name): \(why)")
    }

    func close(_ c: LoadConnection, byServer: Bool) {
        if c.state == .connecting || c.state == .loggingIn { inLogin -= 1 }
        if let registration = c.registration { loop.deregister(registration) }
        c.registration = nil
        if let tls = c.tls {
            tls.close()   // sends close_notify and closes the descriptor it owns
            c.tls = nil
        } else if c.fd >= 0 {
            Sys.close(c.fd)
        }
        c.fd = -1
        c.state = .closed
        c.input.clear()
        c.output.clear()
    }

    func note(_ message: String) {
        if result.firstErrors.count < 20 { result.firstErrors.append(message) }
    }

    // MARK: progress

    private func publishProgress(force: Bool) {
        let now = Clock.monotonicNs()
        guard force || now >= nextPublishNs else { return }
        nextPublishNs = now + 250_000_000
        let snapshot = counters
        coord.progress.withLock { slots in
            slots[index].counters = snapshot
            slots[index].interval.add(interval)
        }
        interval.reset()
    }
}
