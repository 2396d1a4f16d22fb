// The relay scenario against a peer instead of Switchboard: the same Worker, schedule, ring of
// in-flight sequence numbers, payload checks, histograms and report; only the bytes on the wire and
// what releases a slot of the sender's window differ.
//
// Pair k: the receiver subscribes to "sb.k" (Redis channel, NATS subject) or "sb/k" (MQTT topic) and
// the sender publishes to it. What counts as the sender's acknowledgement (the closed-loop window and
// the "ack rtt" line; open loop only uses it to bound in-flight messages):
//  - Redis: the integer reply to PUBLISH (number of subscribers it was handed to; 0 counts as refused).
//    The server accepted it and queued it for the subscriber: weaker than Switchboard's SEND_ACK,
//    which waits for the receiver's DELIVERY_ACK.
//  - MQTT QoS 1: the broker's PUBACK, likewise weaker than end to end. The receiver PUBACKs each QoS 1
//    delivery (batched per read).
//  - MQTT QoS 0 and NATS have no acknowledgement: the slot is released when the receiver, in this same
//    process and thread, gets the message ("receipt"), i.e. the window bounds messages in flight end to end.
// A message that an ack released but that never arrived is lost (exit 2); with receipt release it
// stays unacknowledged after the drain period (exit 3).
import Glibc
import SwitchboardIO

extension Worker {
    // MARK: setup

    /// Channel/topic names and the pre-encoded publish prefix of pair k.
    func configurePeer(sender s: LoadConnection, receiver r: LoadConnection, pair k: Int) {
        let name = Array((peer == .mqtt ? "sb/\(k)" : "sb.\(k)").utf8)
        s.peerChannel = name
        r.peerChannel = name
        let body = plan.payload
        switch peer {
        case .redis:
            s.peerPrefix = Array("*3\r\n$7\r\nPUBLISH\r\n$\(name.count)\r\n".utf8) + name + Array("\r\n$\(body)\r\n".utf8)
            s.peerSuffixCRLF = true
        case .nats:
            s.peerPrefix = Array("PUB ".utf8) + name + Array(" \(body)\r\n".utf8)
            s.peerSuffixCRLF = true
        case .mqtt:
            s.peerPrefix = MQTT.publishPrefix(topic: name, qos: UInt8(plan.qos), payloadBytes: body)
        case .switchboard:
            break
        }
    }

    /// Right after the TCP connect: the handshake (and subscription) that ends in `peerReady`.
    func peerGreet(_ c: LoadConnection) {
        let isReceiver = c.user & 1 == 1
        switch peer {
        case .redis:
            // A sender checks it talks to Redis with PING; a receiver subscribes.
            c.output.writeBytes(isReceiver ? RESP.command([Array("SUBSCRIBE".utf8), c.peerChannel]) : RESP.command([Array("PING".utf8)]))
        case .mqtt:
            let clientID = Array("sbl\(String(plan.run, radix: 16))-\(c.user)".utf8)
            c.output.writeBytes(MQTT.connectPacket(clientID: clientID))
            if isReceiver { c.output.writeBytes(MQTT.subscribePacket(topic: c.peerChannel, qos: UInt8(plan.qos), packetID: 1)) }
        case .nats:
            c.output.writeUTF8("CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"sbload\"}\r\n")
            if isReceiver { c.output.writeBytes(Array("SUB ".utf8) + c.peerChannel + Array(" 1\r\n".utf8)) }
            c.output.writeUTF8("PING\r\n")
        case .switchboard:
            break
        }
        enqueue(c)
    }

    private func peerReady(_ c: LoadConnection) {
        guard c.state == .loggingIn else { return }
        c.state = .ready
        readyCount += 1
        inLogin -= 1
        counters.loggedIn += 1
        result.loggedInPerTarget[c.target] += 1
        result.loginLatency.record(Clock.monotonicNs() &- c.connectStartNs)
    }

    private func violation(_ c: LoadConnection, _ why: String) {
        counters.corrupt += 1
        note("\(c.name): \(peer.rawValue) protocol violation: \(why)")
        close(c, byServer: false)
    }

    private func peerError(_ c: LoadConnection, _ text: String) {
        counters.serverErrors += 1
        note("\(c.name): \(peer.rawValue) error: \(text)")
    }

    // MARK: sending

    /// Appends one publish of message `seq` to the sender's output (prefix, [packet id], body, [CRLF]).
    @inline(__always)
    func writePeerPublish(_ s: LoadConnection, seq: UInt64, sentNs: UInt64) {
        let bodyBytes = Payload.headerBytes + filler.count
        let withID = peer == .mqtt && plan.qos > 0
        s.peerPrefix.withUnsafeBytes { prefix in
            let total = prefix.count + (withID ? 2 : 0) + bodyBytes + (s.peerSuffixCRLF ? 2 : 0)
            let out = s.output
            out.reserveWritable(total)
            var p = out.base! + out.writerIndex
            p.copyMemory(from: prefix.baseAddress!, byteCount: prefix.count)
            p += prefix.count
            if withID {
                p.storeBytes(of: MQTT.packetID(seq: seq).bigEndian, as: UInt16.self)
                p += 2
            }
            Payload.writeBody(at: p, seq: seq, sentNs: sentNs, pair: UInt32(truncatingIfNeeded: s.pair), run: plan.run,
                              filler: UnsafeRawBufferPointer(filler))
            p += bodyBytes
            if s.peerSuffixCRLF {
                p.storeBytes(of: 0x0D, as: UInt8.self)
                (p + 1).storeBytes(of: 0x0A, as: UInt8.self)
            }
            out.didWrite(total)
        }
    }

    // MARK: receiving

    func peerProcess(_ c: LoadConnection, _ buffer: ByteBuffer) {
        switch peer {
        case .redis: processRedis(c, buffer)
        case .mqtt: processMQTT(c, buffer)
        case .nats: processNATS(c, buffer)
        case .switchboard: break
        }
    }

    /// A delivery to receiver `r`: the same checks as Switchboard's DELIVER, then (receipt mode) the
    /// release of the sender's slot.
    @inline(__always)
    private func peerDelivered(_ r: LoadConnection, _ payload: UnsafeRawBufferPointer) {
        let seq: UInt64 = payload.count >= 8 ? be(payload, 0) : 0
        let rejectedBefore = counters.duplicates &+ counters.corrupt &+ counters.staleMail
        received(r, from: r.partnerID, messageID: Payload.messageID(run: plan.run, seq: seq), payload: payload, mail: false)
        if plan.releaseOnReceipt && counters.duplicates &+ counters.corrupt &+ counters.staleMail == rejectedBefore {
            completed(senders[r.slot], id: seq, status: LoadConnection.deliveredStatus)
        }
    }

    private func processRedis(_ c: LoadConnection, _ buffer: ByteBuffer) {
        let isReceiver = c.user & 1 == 1
        while c.fd >= 0 {
            let b = buffer.readableView
            switch RESP.parse(b) {
            case .needMore:
                return
            case .violation(let why):
                violation(c, why)
                return
            case .item(let reply, let consumed):
                if isReceiver {
                    redisReceiverReply(c, b, reply)
                } else {
                    redisSenderReply(c, b, reply)
                }
                buffer.moveReaderIndex(forwardBy: consumed)
            }
        }
    }

    @inline(__always)
    private func redisSenderReply(_ s: LoadConnection, _ b: UnsafeRawBufferPointer, _ reply: RESP.Reply) {
        switch reply.top.kind {
        case .integer where s.state == .ready:
            // Replies come in command order: this one answers the oldest PUBLISH in flight.
            completed(s, id: s.base, status: reply.top.integer > 0 ? LoadConnection.deliveredStatus : LoadConnection.refusedStatus)
        case .simple where s.state == .loggingIn && sliceEquals(b, reply.top.slice, "PONG"):
            peerReady(s)
        case .error:
            peerError(s, printable(b, reply.top.slice))
            if s.state == .ready { completed(s, id: s.base, status: LoadConnection.refusedStatus) } else { close(s, byServer: true) }
        default:
            violation(s, "unexpected reply of kind \(reply.top.kind) to a \(s.state == .ready ? "PUBLISH" : "PING")")
        }
    }

    @inline(__always)
    private func redisReceiverReply(_ r: LoadConnection, _ b: UnsafeRawBufferPointer, _ reply: RESP.Reply) {
        guard reply.top.kind == .array, reply.count >= 3, reply.e0.kind == .bulk else {
            if reply.top.kind == .error { peerError(r, printable(b, reply.top.slice)); close(r, byServer: true); return }
            violation(r, "expected a pub/sub push (array of 3), got \(reply.top.kind)")
            return
        }
        let channelOK = reply.e1.kind == .bulk && r.peerChannel.withUnsafeBytes { sliceEquals(b, reply.e1.slice, $0) }
        if sliceEquals(b, reply.e0.slice, "message") {
            guard channelOK, reply.e2.kind == .bulk, reply.count == 3 else {
                counters.corrupt += 1
                if counters.corrupt <= 5 { note("\(r.name): message on channel '\(printable(b, reply.e1.slice))', expected \(String(decoding: r.peerChannel, as: UTF8.self))") }
                return
            }
            peerDelivered(r, UnsafeRawBufferPointer(rebasing: b[reply.e2.slice.start..<(reply.e2.slice.start + reply.e2.slice.count)]))
        } else if sliceEquals(b, reply.e0.slice, "subscribe") {
            guard channelOK, r.state == .loggingIn else { violation(r, "unexpected subscribe confirmation"); return }
            peerReady(r)
        } else {
            violation(r, "unexpected pub/sub push '\(printable(b, reply.e0.slice))'")
        }
    }

    private func processMQTT(_ c: LoadConnection, _ buffer: ByteBuffer) {
        let isReceiver = c.user & 1 == 1
        while c.fd >= 0 {
            let b = buffer.readableView
            switch MQTT.parse(b) {
            case .needMore:
                return
            case .violation(let why):
                violation(c, why)
                return
            case .item(let packet, let consumed):
                mqttPacket(c, b, packet, isReceiver: isReceiver)
                buffer.moveReaderIndex(forwardBy: consumed)
            }
        }
    }

    @inline(__always)
    private func mqttPacket(_ c: LoadConnection, _ b: UnsafeRawBufferPointer, _ p: MQTT.Packet, isReceiver: Bool) {
        switch p.type {
        case MQTT.publish:
            guard isReceiver, c.state == .ready, let f = MQTT.publishFields(b, p) else {
                violation(c, isReceiver && c.state == .ready ? "malformed PUBLISH" : "PUBLISH to a connection that did not subscribe")
                return
            }
            if f.qos == 1 {
                // PUBACK; all of a read's PUBACKs leave in one write after the turn.
                let out = c.output
                out.reserveWritable(4)
                let q = out.base! + out.writerIndex
                q.storeBytes(of: (UInt32(MQTT.puback) << 28 | 2 << 16 | UInt32(f.packetID)).bigEndian, as: UInt32.self)
                out.didWrite(4)
                enqueue(c)
            } else if f.qos == 2 {
                violation(c, "QoS 2 delivery (subscribed with QoS \(plan.qos))")
                return
            }
            guard c.peerChannel.withUnsafeBytes({ sliceEquals(b, f.topic, $0) }) else {
                counters.corrupt += 1
                if counters.corrupt <= 5 { note("\(c.name): PUBLISH on topic '\(printable(b, f.topic))', expected \(String(decoding: c.peerChannel, as: UTF8.self))") }
                return
            }
            peerDelivered(c, UnsafeRawBufferPointer(rebasing: b[f.payload.start..<(f.payload.start + f.payload.count)]))
        case MQTT.puback:
            guard !isReceiver, c.state == .ready else { violation(c, "unexpected PUBACK"); return }
            let id = UInt16(b[p.body.start]) << 8 | UInt16(b[p.body.start + 1])
            // The one in-flight sequence number with this packet id (ids run over 65535 in order).
            let baseID = Int(MQTT.packetID(seq: c.base))
            let delta = (Int(id) - baseID + 65535) % 65535
            completed(c, id: id == 0 ? 0 : c.base + UInt64(delta), status: LoadConnection.deliveredStatus)
        case MQTT.connack:
            let code = b[p.body.start + 1]
            guard code == 0 else {
                peerError(c, "CONNACK return code \(code)")
                close(c, byServer: true)
                return
            }
            guard c.state == .loggingIn, !c.peerHandshake else { violation(c, "unexpected CONNACK"); return }
            c.peerHandshake = true
            if !isReceiver { peerReady(c) }
        case MQTT.suback:
            let id = UInt16(b[p.body.start]) << 8 | UInt16(b[p.body.start + 1])
            let granted = b[p.body.start + 2]
            guard isReceiver, c.state == .loggingIn, c.peerHandshake, id == 1 else { violation(c, "unexpected SUBACK"); return }
            guard granted == UInt8(plan.qos) else {
                peerError(c, granted == 0x80 ? "subscription refused" : "granted QoS \(granted) instead of \(plan.qos)")
                close(c, byServer: true)
                return
            }
            peerReady(c)
        default:
            break   // PINGRESP: keep-alive is off, nothing to do
        }
    }

    private func processNATS(_ c: LoadConnection, _ buffer: ByteBuffer) {
        let isReceiver = c.user & 1 == 1
        while c.fd >= 0 {
            let b = buffer.readableView
            switch NATS.parse(b) {
            case .needMore:
                return
            case .violation(let why):
                violation(c, why)
                return
            case .item(let op, let consumed):
                natsOp(c, b, op, isReceiver: isReceiver)
                buffer.moveReaderIndex(forwardBy: consumed)
            }
        }
    }

    @inline(__always)
    private func natsOp(_ c: LoadConnection, _ b: UnsafeRawBufferPointer, _ op: NATS.Op, isReceiver: Bool) {
        switch op {
        case .msg(let subject, let sid, let payload):
            guard isReceiver, c.state == .ready else { violation(c, "MSG to a connection that did not subscribe"); return }
            guard sliceEquals(b, sid, "1"), c.peerChannel.withUnsafeBytes({ sliceEquals(b, subject, $0) }) else {
                counters.corrupt += 1
                if counters.corrupt <= 5 { note("\(c.name): MSG on '\(printable(b, subject))' sid \(printable(b, sid)), expected \(String(decoding: c.peerChannel, as: UTF8.self))") }
                return
            }
            peerDelivered(c, UnsafeRawBufferPointer(rebasing: b[payload.start..<(payload.start + payload.count)]))
        case .ping:
            c.output.writeUTF8("PONG\r\n")
            enqueue(c)
        case .pong:
            // The answer to the PING after CONNECT (and SUB): the server has processed both.
            if c.state == .loggingIn {
                guard c.peerHandshake else { violation(c, "PONG before INFO"); return }
                peerReady(c)
            }
        case .info:
            c.peerHandshake = true
        case .ok:
            break
        case .err(let text):
            peerError(c, printable(b, text))
        }
    }
}
