// Not a benchmark: drives the relay core's per-message path N times after a warm-up so that an
// allocation profiler (valgrind --tool=dhat, ltrace -e malloc) can name the call sites that
// allocate. See ../../../perf/README.md ("Finding an allocation").
import SwitchboardRelay
import SwitchboardStore

let core = RelayCore(limits: RelayLimits(), loadMailboxUsage: { _ in MailboxUsage(count: 0, bytes: 0, lastSeq: 0) })
_ = core.login(user: 1, name: "alice", connection: ConnectionID(1), address: "127.0.0.1:1",
               contacts: [ContactEntry(userID: 2, name: "bob", state: .accepted)])
_ = core.login(user: 2, name: "bob", connection: ConnectionID(2), address: "127.0.0.1:2",
               contacts: [ContactEntry(userID: 1, name: "alice", state: .accepted)])
var window = DeliveryWindow()
let count = CommandLine.arguments.count > 1 ? Int(CommandLine.arguments[1]) ?? 10_000 : 10_000
let part = CommandLine.arguments.count > 2 ? CommandLine.arguments[2] : "all"
var id: UInt64 = 0
var sink = 0
for _ in 0..<(5_000 + count) {
    id += 1
    switch part {
    case "route":
        if case .deliver(let c) = core.route(from: 1, to: 2, messageID: id, bodyBytes: 64) { sink &+= Int(c.raw) }
    case "complete":
        _ = core.route(from: 1, to: 2, messageID: id, bodyBytes: 64)
        if let c = core.completed(sender: 1, messageID: id, status: .delivered) { sink &+= Int(c.raw) }
    default:
        guard case .deliver = core.route(from: 1, to: 2, messageID: id, bodyBytes: 64) else { fatalError() }
        let seq = window.nextSeq()
        window.append(PendingDelivery(seq: seq, sender: 1, messageID: id, frameStart: 0, frameEnd: 0))
        window.acknowledge(throughSeq: seq) { d in
            if core.completed(sender: d.sender, messageID: d.messageID, status: .delivered) != nil { sink &+= 1 }
        }
    }
}
print(sink)
