// The relay core's per-message path, exactly as RelayServer drives it for a live delivery:
// RelayCore.route -> DeliveryWindow.nextSeq/append -> (receiver acks) DeliveryWindow.acknowledge ->
// RelayCore.completed (RecentMessageIDs.complete). Steady state must allocate nothing.
import Benchmark
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardStore

var noMallocs: [BenchmarkMetric: BenchmarkThresholds] { [
    .mallocCountTotal: .init(absolute: [.p0: 0, .p25: 0, .p50: 0, .p75: 0, .p90: 0, .p99: 0, .p100: 0]),
] }

var hotPath: Benchmark.Configuration { .init(
    metrics: [.wallClock, .cpuTotal, .mallocCountTotal, .throughput],
    warmupIterations: 10,
    scalingFactor: .kilo,
    maxDuration: .seconds(2),
    maxIterations: 1_000,
    thresholds: noMallocs) }

/// Two logged-in users who are accepted contacts of each other.
func makeCore() -> RelayCore {
    let core = RelayCore(limits: RelayLimits(), loadMailboxUsage: { _ in MailboxUsage(count: 0, bytes: 0, lastSeq: 0) })
    _ = core.login(user: 1, name: "alice", connection: ConnectionID(1), address: "127.0.0.1:1",
                   contacts: [ContactEntry(userID: 2, name: "bob", state: .accepted)])
    _ = core.login(user: 2, name: "bob", connection: ConnectionID(2), address: "127.0.0.1:2",
                   contacts: [ContactEntry(userID: 1, name: "alice", state: .accepted)])
    return core
}

/// One relayed message; `window` acknowledges every `ackEvery` messages (cumulative DELIVERY_ACK).
@inline(__always)
func relayOne(_ core: RelayCore, _ window: inout DeliveryWindow, id: UInt64, ackEvery: UInt64) -> Int {
    guard case .deliver(let target) = core.route(from: 1, to: 2, messageID: id, bodyBytes: 64) else { fatalError("not routed live") }
    let seq = window.nextSeq()
    window.append(PendingDelivery(seq: seq, sender: 1, messageID: id, frameStart: seq &* 97, frameEnd: seq &* 97 &+ 97))
    var acked = 0
    if seq % ackEvery == 0 {
        window.acknowledge(throughSeq: seq) { delivery in
            if core.completed(sender: delivery.sender, messageID: delivery.messageID, status: .delivered) != nil { acked += 1 }
        }
    }
    return Int(target.raw) + acked
}

let benchmarks: @Sendable () -> Void = {
    Benchmark("Relay_per_message_ack_each", configuration: hotPath) { benchmark in
        let core = makeCore()
        var window = DeliveryWindow()
        var id: UInt64 = 0
        // Warm-up: the dedupe ring wraps and the window reaches its high-water mark.
        for _ in 0..<5_000 { id += 1; _ = relayOne(core, &window, id: id, ackEvery: 1) }
        var sum = 0
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { id += 1; sum &+= relayOne(core, &window, id: id, ackEvery: 1) }
        benchmark.stopMeasurement()
        blackHole(sum)
    }

    Benchmark("Relay_per_message_ack_per_64", configuration: hotPath) { benchmark in
        let core = makeCore()
        var window = DeliveryWindow()
        var id: UInt64 = 0
        for _ in 0..<5_000 { id += 1; _ = relayOne(core, &window, id: id, ackEvery: 64) }
        var sum = 0
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { id += 1; sum &+= relayOne(core, &window, id: id, ackEvery: 64) }
        benchmark.stopMeasurement()
        blackHole(sum)
    }

    Benchmark("RecentMessageIDs_insert_complete", configuration: hotPath) { benchmark in
        let ids = RecentMessageIDs(capacity: 1024)
        var id: UInt64 = 0
        for _ in 0..<5_000 { id += 1; ids.insertInFlight(id); ids.complete(id, status: .delivered) }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { id += 1; ids.insertInFlight(id); ids.complete(id, status: .delivered) }
        benchmark.stopMeasurement()
        blackHole(ids.inFlightCount)
    }

    Benchmark("DeliveryWindow_append_acknowledge", configuration: hotPath) { benchmark in
        var window = DeliveryWindow()
        for _ in 0..<5_000 {
            let seq = window.nextSeq()
            window.append(PendingDelivery(seq: seq, sender: 1, messageID: seq, frameStart: 0, frameEnd: 0))
            window.acknowledge(throughSeq: seq) { _ in }
        }
        var sum: UInt64 = 0
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let seq = window.nextSeq()
            window.append(PendingDelivery(seq: seq, sender: 1, messageID: seq, frameStart: 0, frameEnd: 0))
            window.acknowledge(throughSeq: seq) { sum &+= $0.messageID }
        }
        benchmark.stopMeasurement()
        blackHole(sum)
    }
}
