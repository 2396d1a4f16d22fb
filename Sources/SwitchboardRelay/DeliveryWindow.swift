// Live deliveries sent on one connection and not yet acknowledged by the receiving client, oldest
// first. Each entry carries the sequence number, whose message it was (to acknowledge the sender)
// and where its frame sits in the connection's output stream (so, if the connection drops, the
// frame can be re-read from the retained output bytes and moved to the mailbox without ever having
// been copied elsewhere). A ring that grows to its high-water mark and then allocates no more.

public struct PendingDelivery: Equatable, Sendable {
    public var seq: UInt64
    public var sender: UInt32
    public var messageID: UInt64
    /// Stream positions of the DELIVER frame in the connection's output.
    public var frameStart: UInt64
    public var frameEnd: UInt64
    /// Another device of the same receiver acknowledged this message first: this copy completes
    /// nothing when acknowledged and goes nowhere when the connection drops.
    public var settled = false
    /// The same message went to other devices of the receiver too (their copies are settled when this
    /// one is acknowledged first).
    public var shared = false
    /// Cluster mode: another node handed this message here (its sender is not a session of this node);
    /// its acknowledgement or loss is reported to that node.
    public var inbound = false
    /// Cluster mode: other copies of this inbound message went to the receiver's devices on other nodes: if
    /// this node's copies are all lost it tells the sending node ("lost"), which decides about the mailbox.
    public var multiCopy = false
    /// Monotonic nanoseconds of the read that brought the SEND in (for the relay latency metric; 0: unknown).
    public var receivedNs: UInt64
    public init(seq: UInt64, sender: UInt32, messageID: UInt64, frameStart: UInt64, frameEnd: UInt64, receivedNs: UInt64 = 0) {
        self.seq = seq; self.sender = sender; self.messageID = messageID; self.frameStart = frameStart; self.frameEnd = frameEnd
        self.receivedNs = receivedNs
    }
}

public struct DeliveryWindow {
    private var entries: [PendingDelivery] = []
    private var head = 0
    public private(set) var count = 0
    public private(set) var lastSeq: UInt64 = 0

    public init() {}

    public var isEmpty: Bool { count == 0 }
    public var oldest: PendingDelivery? { count == 0 ? nil : entries[head] }

    /// Allocates the next sequence number for a delivery on this connection.
    public mutating func nextSeq() -> UInt64 { lastSeq += 1; return lastSeq }

    public mutating func append(_ delivery: PendingDelivery) {
        if count == entries.count {
            // Grow: unroll the ring into a larger array (amortised; steady state never gets here).
            var grown: [PendingDelivery] = []
            grown.reserveCapacity(max(16, entries.count * 2))
            for i in 0..<count { grown.append(entries[(head + i) % entries.count]) }
            entries = grown
            entries.append(contentsOf: repeatElement(delivery, count: grown.capacity - grown.count))
            head = 0
        }
        entries[(head + count) % entries.count] = delivery
        count += 1
    }

    /// The delivery with sequence number `seq` if it is still in the window: O(1), the window's seqs
    /// are consecutive.
    public func pending(seq: UInt64) -> PendingDelivery? {
        guard count > 0 else { return nil }
        let first = entries[head].seq
        guard seq >= first, seq < first + UInt64(count) else { return nil }
        var index = head + Int(seq - first)
        if index >= entries.count { index -= entries.count }
        return entries[index]
    }

    /// Removes and passes to `body` every delivery with seq <= `throughSeq`, oldest first.
    public mutating func acknowledge(throughSeq: UInt64, _ body: (PendingDelivery) -> Void) {
        while count > 0 && entries[head].seq <= throughSeq {
            body(entries[head])
            head = (head + 1) % entries.count
            count -= 1
        }
    }

    /// Marks the unsettled copy of (sender, messageID) settled, if this window holds one (a scan:
    /// done only for receivers with several devices, whose windows stay short while they read).
    @discardableResult
    public mutating func markSettled(sender: UInt32, messageID: UInt64) -> Bool {
        for i in 0..<count {
            let slot = (head + i) % entries.count
            if entries[slot].messageID == messageID && entries[slot].sender == sender && !entries[slot].settled {
                entries[slot].settled = true
                return true
            }
        }
        return false
    }

    /// True when this window holds an unsettled copy of (sender, messageID).
    public func holdsUnsettled(sender: UInt32, messageID: UInt64) -> Bool {
        for i in 0..<count {
            let entry = entries[(head + i) % entries.count]
            if entry.messageID == messageID && entry.sender == sender && !entry.settled { return true }
        }
        return false
    }

    /// Removes everything (connection closed), oldest first.
    public mutating func drain(_ body: (PendingDelivery) -> Void) {
        acknowledge(throughSeq: .max, body)
    }
}
