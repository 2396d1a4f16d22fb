// Codec and buffer hot paths: encode/decode of SEND and DELIVER (64-byte bodies) and ByteBuffer
// append/consume. Each must allocate nothing per iteration once its buffers have grown (warm-up).
import Benchmark
import SwitchboardIO
import SwitchboardProtocol

/// Zero mallocs per iteration, checked at every percentile: one allocation anywhere is a regression.
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

let body64 = [UInt8](repeating: 0x61, count: 64)

let benchmarks: @Sendable () -> Void = {
    Benchmark("Encode_SEND_64B", configuration: hotPath) { benchmark in
        let out = ByteBuffer(capacity: 64 << 10)
        body64.withUnsafeBytes { raw in
            let body = ByteView(borrowing: raw)
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                FrameEncoder.writeSend(into: out, to: 7, messageID: 42, body: body)
                out.moveReaderIndex(forwardBy: out.readableBytes)
            }
            benchmark.stopMeasurement()
        }
    }

    Benchmark("Encode_DELIVER_64B", configuration: hotPath) { benchmark in
        let out = ByteBuffer(capacity: 64 << 10)
        body64.withUnsafeBytes { raw in
            benchmark.startMeasurement()
            for i in benchmark.scaledIterations {
                FrameEncoder.writeDeliver(into: out, seq: UInt64(i), from: 7, messageID: 42, sentAtMs: 1_700_000_000_000, body: raw)
                out.moveReaderIndex(forwardBy: out.readableBytes)
            }
            benchmark.stopMeasurement()
        }
    }

    Benchmark("Decode_SEND_64B", configuration: hotPath) { benchmark in
        let wire = ByteBuffer(capacity: 256)
        body64.withUnsafeBytes { FrameEncoder.writeSend(into: wire, to: 7, messageID: 42, body: ByteView(borrowing: $0)) }
        let view = wire.readableView
        var sum: UInt64 = 0
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            if case .frame(let frame, _) = FrameDecoder.decodeClient(view, maxFrameBytes: 65_536),
               case .send(let to, let id, let body) = frame {
                sum &+= UInt64(to) &+ id &+ UInt64(body.count)
            }
        }
        benchmark.stopMeasurement()
        blackHole(sum)
    }

    Benchmark("Decode_DELIVER_64B", configuration: hotPath) { benchmark in
        let wire = ByteBuffer(capacity: 256)
        body64.withUnsafeBytes {
            FrameEncoder.writeDeliver(into: wire, seq: 1, from: 7, messageID: 42, sentAtMs: 1_700_000_000_000, body: $0)
        }
        let view = wire.readableView
        var sum: UInt64 = 0
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            if case .frame(let frame, _) = FrameDecoder.decodeServer(view, maxFrameBytes: 65_536),
               case .deliver(let seq, _, let id, _, let body) = frame {
                sum &+= seq &+ id &+ UInt64(body.count)
            }
        }
        benchmark.stopMeasurement()
        blackHole(sum)
    }

    Benchmark("ByteBuffer_write69_consume", configuration: hotPath) { benchmark in
        let buffer = ByteBuffer(capacity: 64 << 10)
        body64.withUnsafeBytes { raw in
            benchmark.startMeasurement()
            for i in benchmark.scaledIterations {
                buffer.writeInteger(UInt32(65))
                buffer.writeInteger(UInt8(truncatingIfNeeded: i))
                buffer.writeBytes(raw)
                // Consume in two steps, as a reader of a split frame would.
                buffer.moveReaderIndex(forwardBy: 5)
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            }
            benchmark.stopMeasurement()
        }
    }

    Benchmark("ByteBuffer_retained_output", configuration: hotPath) { benchmark in
        // The server's output pattern: deliveries stay retained until acknowledged, then compaction reclaims them.
        let buffer = ByteBuffer(capacity: 64 << 10)
        body64.withUnsafeBytes { raw in
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                let start = buffer.writerIndex
                buffer.writeBytes(raw)
                buffer.advanceReaderRetaining(by: buffer.readableBytes)
                buffer.retain(from: start)
                buffer.retain(from: buffer.readerIndex)
                buffer.compact()
            }
            benchmark.stopMeasurement()
        }
    }
}
