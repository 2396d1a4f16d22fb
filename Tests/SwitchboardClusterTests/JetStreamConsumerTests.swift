// Push-consumer plumbing without a server: the ack subject in its 2.9 and 2.10+ forms (and what is not one),
// heartbeats, flow-control requests, and the consumer configuration sent to the server.
@testable import SwitchboardCluster
import Testing

@Suite struct JetStreamConsumerTests {
    @Test func ackSubjectsParse() {
        let old = JetStreamDelivery.parse("$JS.ACK.SB_LOG.abc123.1.42.7.1733000000000000000.5")
        #expect(old == JetStreamDelivery(stream: "SB_LOG", consumer: "abc123", deliveryCount: 1, streamSequence: 42,
                                         consumerSequence: 7, timestampNs: 1_733_000_000_000_000_000, pending: 5))
        let new = JetStreamDelivery.parse("$JS.ACK.hub.ACCHASH.SB_LOG.abc123.2.43.8.99.0.tok")
        #expect(new?.stream == "SB_LOG" && new?.deliveryCount == 2 && new?.streamSequence == 43 && new?.consumerSequence == 8)
        for bad in ["", "$JS.ACK", "$JS.ACK.SB_LOG.c.1.x.7.1.5", "$JS.NAK.SB_LOG.c.1.2.3.4.5", "$JS.ACK.SB_LOG.c.1.2.3.4.5.6.7.8.9",
                    "$JS.ACK..c.1.2.3.4.5", "$JS.ACK.SB_LOG.c.1.2.3.4.-5"] {
            #expect(JetStreamDelivery.parse(bad) == nil, "\(bad)")
        }
    }

    @Test func statusMessagesAreClassified() throws {
        var heartbeat = try NATSHeaders([("Nats-Last-Consumer", "12"), ("Nats-Last-Stream", "40")])
        heartbeat.status = 100
        heartbeat.statusDescription = "Idle Heartbeat"
        let hb = NATSMessage(subject: "d", replyTo: nil, headers: heartbeat, payload: [], sid: 1)
        #expect(PushConsumerMessage.classify(hb) == .heartbeat(lastConsumerSequence: 12, lastStreamSequence: 40, stalledFlowControl: nil))
        var fc = NATSHeaders()
        fc.status = 100
        fc.statusDescription = "FlowControl Request"
        #expect(PushConsumerMessage.classify(NATSMessage(subject: "d", replyTo: "$JS.FC.x", headers: fc, payload: [], sid: 1))
                == .flowControl(reply: "$JS.FC.x"))
        let data = NATSMessage(subject: "sb.log", replyTo: "$JS.ACK.S.c.1.2.3.4.5", headers: nil, payload: [1], sid: 1)
        if case .delivery(let d) = PushConsumerMessage.classify(data) { #expect(d.streamSequence == 2) } else { Issue.record("not a delivery") }
        if case .other = PushConsumerMessage.classify(NATSMessage(subject: "d", replyTo: nil, headers: nil, payload: [], sid: 1)) {} else {
            Issue.record("a message without an ack subject is not a delivery")
        }
    }
}
