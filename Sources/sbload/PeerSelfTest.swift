// `sbload peer-selftest`: checks the peer parsers without a server. Valid streams parse whole and item
// by item; every strict prefix of one asks for more (never a wrong item); random bytes and mutated
// valid streams end in an item, a request for more or a violation, never a trap or an over-read; an
// oversized length is refused before it is buffered.
import ArgumentParser
import Glibc

struct PeerSelfTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peer-selftest", abstract: "Checks the Redis/MQTT/NATS parsers of the peer adapters (no server needed).")
    @Option(help: "Random and mutated inputs per protocol.") var iterations = 200_000

    func run() throws {
        var failures = 0
        func check(_ ok: Bool, _ what: @autoclosure () -> String) {
            if !ok { failures += 1; if failures <= 20 { print("FAIL: \(what())") } }
        }
        let body = [UInt8](repeating: 0x41, count: 64)
        let resp: [[UInt8]] = [
            Array("*3\r\n$9\r\nsubscribe\r\n$4\r\nsb.7\r\n:1\r\n".utf8),
            Array("*3\r\n$7\r\nmessage\r\n$4\r\nsb.7\r\n$64\r\n".utf8) + body + [13, 10],
            Array(":1\r\n".utf8), Array("+PONG\r\n".utf8), Array("-ERR wrong type\r\n".utf8), Array("$-1\r\n".utf8),
        ]
        let mqtt: [[UInt8]] = [
            [0x20, 2, 0, 0], [0x90, 3, 0, 1, 1], [0x40, 2, 0x12, 0x34], [0xD0, 0],
            MQTT.publishPrefix(topic: Array("sb/7".utf8), qos: 1, payloadBytes: 64) + [0, 9] + body,
            MQTT.publishPrefix(topic: Array("sb/7".utf8), qos: 0, payloadBytes: 64) + body,
        ]
        let nats: [[UInt8]] = [
            Array("INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n".utf8), Array("PING\r\n".utf8), Array("PONG\r\n".utf8),
            Array("+OK\r\n".utf8), Array("-ERR 'Unknown Protocol Operation'\r\n".utf8),
            Array("MSG sb.7 1 64\r\n".utf8) + body + [13, 10], Array("msg sb.7 1 reply.to 64\r\n".utf8) + body + [13, 10],
        ]

        // kind: 0 item (consumed), 1 need more, 2 violation
        func run(_ p: Int, _ bytes: [UInt8]) -> (Int, Int) {
            bytes.withUnsafeBytes { b in
                switch p {
                case 0: switch RESP.parse(b) { case .needMore: return (1, 0); case .violation: return (2, 0); case .item(_, let n): return (0, n) }
                case 1: switch MQTT.parse(b) {
                    case .needMore: return (1, 0); case .violation: return (2, 0)
                    case .item(let pk, let n):
                        if pk.type == MQTT.publish { _ = MQTT.publishFields(b, pk) }
                        return (0, n)
                    }
                default: switch NATS.parse(b) { case .needMore: return (1, 0); case .violation: return (2, 0); case .item(_, let n): return (0, n) }
                }
            }
        }
        let names = ["redis", "mqtt", "nats"]
        for (p, samples) in [resp, mqtt, nats].enumerated() {
            for s in samples {
                let r = run(p, s)
                check(r.0 == 0 && r.1 == s.count, "\(names[p]): \(s.count)-byte item parsed as \(r)")
                for cut in 0..<s.count { check(run(p, Array(s[..<cut])).0 == 1, "\(names[p]): prefix \(cut) of \(s.count) bytes not 'need more'") }
                // Two items back to back: the first is consumed exactly.
                check(run(p, s + s).1 == s.count, "\(names[p]): pipelined item")
            }
            var rng = SystemRandomNumberGenerator()
            for i in 0..<iterations {
                var bytes: [UInt8]
                if i & 1 == 0 {
                    bytes = (0..<Int.random(in: 0...96, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                } else {
                    bytes = samples[i % samples.count]
                    for _ in 0..<Int.random(in: 1...4, using: &rng) where !bytes.isEmpty {
                        bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                    }
                    if Bool.random(using: &rng) { bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &rng))) }
                }
                let r = run(p, bytes)
                check(r.0 != 0 || (r.1 > 0 && r.1 <= bytes.count), "\(names[p]): consumed \(r.1) of \(bytes.count)")
            }
        }
        // Lengths above the limits are violations as soon as the header is seen.
        check(run(0, Array("$99999999\r\n".utf8)).0 == 2, "redis: huge bulk accepted")
        check(run(0, Array("*100\r\n".utf8)).0 == 2, "redis: huge array accepted")
        check(run(0, [UInt8](repeating: 0x2B, count: 5000)).0 == 2, "redis: endless simple string accepted")
        check(run(1, [0x30, 0xFF, 0xFF, 0xFF, 0x7F]).0 == 2, "mqtt: 256 MB packet accepted")
        check(run(1, [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).0 == 2, "mqtt: 5-byte length accepted")
        check(run(2, Array("MSG a 1 99999999\r\n".utf8)).0 == 2, "nats: huge MSG accepted")
        check(run(2, [UInt8](repeating: 0x41, count: 70_000)).0 == 2, "nats: endless control line accepted")
        check(run(2, Array("PING\n".utf8)).0 == 2, "nats: bare LF accepted")
        print(failures == 0 ? "peer-selftest: 0 failures (\(3 * iterations) random/mutated inputs)" : "peer-selftest: \(failures) failures")
        if failures > 0 { throw ExitCode(1) }
    }
}
