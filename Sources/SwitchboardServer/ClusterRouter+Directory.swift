// The router's upkeep of the presence directory: snapshots sent in chunks across loop turns, reconciliation
// of a node's entries with its snapshot (after a link break, a restart, a first heartbeat, or a heartbeat whose
// user count disagrees with the directory), and a gone node's users dropped in batches.
// Invariants:
// - A snapshot is asked with a request id; its chunks carry that id and their index, and only the chunks of
//   the current request, in order, are applied (a gap asks again). The last chunk ends the reconciliation:
//   users of that node the snapshot and the events since did not confirm leave the directory.
// - Entries stay in the directory while they are reconciled: only a device that really appeared or went
//   produces a core call (so presence pushes), never a drop-and-rebuild of the node.
// - Per loop turn: at most `directoryBatch` users dropped, at most `snapshotBytesPerTurn` of snapshot queued,
//   nothing queued while NATS holds `snapshotMaxQueuedBytes` (the chunk waits, it is never dropped), at most
//   `directoryBatch` users per chunk.
// - `NodeInfo.members` follows the core's directory: every router call that may change a user's entry is
//   followed by `resync(user)`, and a local login (which may take a device over from another node's entry) too.
import Logging
import SwitchboardCluster
import SwitchboardIO
import SwitchboardStore

extension ClusterRouter {
    /// True while directory upkeep or snapshot output waits for the next turn (the loop must not sleep).
    var hasBackgroundWork: Bool {
        !drops.isEmpty || (!snapshotJobs.isEmpty && nats.isConnected && loop.now >= snapshotResumeAt)
    }

    // MARK: reconciling a node's entries

    /// Asks `index` for a snapshot; its entries stay as they are until the snapshot confirms or drops them.
    func startReconcile(_ index: UInt16) {
        let i = Int(index)
        drops[index] = nil  // its users not dropped yet are reconciled instead
        let requestID = nextRequestID
        nextRequestID &+= 1
        reconciles[index] = Reconcile(requestID: requestID, unconfirmed: nodes[i].members,
                                      deadline: loop.now + configuration.snapshotRetryMs)
        nodes[i].lastRequestMs = loop.now
        nodes[i].mismatchSince = 0
        statistics.snapshotsRequested += 1
        var w = ClusterWriter(kind: .snapshotRequest, node: configuration.node, epoch: epoch)
        w.u32(requestID)
        publish("sb.node.\(nodes[i].name)", w.bytes)
    }

    /// `user` is known current on `index` (a "joined" from it): not dropped by a reconciliation or a drop.
    func confirmed(_ user: UserID, on index: UInt16) {
        if reconciles[index] != nil { reconciles[index]!.unconfirmed.remove(user) }
        if drops[index] != nil { drops[index]!.doomed.remove(user) }
    }

    /// Brings every node's `members` in line with the core's directory entry of `user` (O(nodes)).
    func resync(_ user: UserID) {
        let devices = host.remoteDevices(of: user)
        for index in nodes.indices {
            if devices.contains(where: { $0.node == UInt16(index) }) {
                nodes[index].members.insert(user)
            } else if nodes[index].members.contains(user) {
                nodes[index].members.remove(user)
            }
        }
    }

    /// A heartbeat said `index` has `users` online. A count the directory disagrees with on two heartbeats in a
    /// row (one may race a login that moved a device between nodes) asks a snapshot, at most every
    /// `snapshotRetryMs`, never while one is under way.
    func heartbeatCount(_ users: Int, from index: UInt16) {
        let i = Int(index)
        nodes[i].reportedUsers = users
        guard reconciles[index] == nil, drops[index] == nil, nodes[i].members.count != users else {
            nodes[i].mismatchSince = 0
            return
        }
        let now = loop.now
        if nodes[i].mismatchSince == 0 { nodes[i].mismatchSince = now; return }
        guard now &- nodes[i].mismatchSince >= configuration.heartbeatMs / 2,
              now &- nodes[i].lastRequestMs >= configuration.snapshotRetryMs else { return }
        logger.notice("cluster directory disagrees with a node's heartbeat; asking its snapshot",
                      metadata: ["node": "\(nodes[i].name)", "directory": "\(nodes[i].members.count)", "heartbeat": "\(users)"])
        statistics.snapshotRerequests += 1
        startReconcile(index)
    }

    /// One chunk of a snapshot from `index`: each user's devices there become exactly those listed.
    func snapshotChunk(_ r: inout ClusterReader, from index: UInt16) {
        guard let requestID = r.u32(), let chunk = r.u32(), let flags = r.u8(), let count = r.u32() else { return malformed() }
        guard reconciles[index]?.requestID == requestID, var reconcile = reconciles.removeValue(forKey: index) else {
            return  // an answer to an earlier request (or to none): the current one is complete or coming
        }
        guard chunk == reconcile.nextChunk else {
            logger.notice("cluster snapshot chunk missing; asking again", metadata: ["node": "\(nodes[Int(index)].name)"])
            statistics.snapshotRerequests += 1
            startReconcile(index)
            return
        }
        reconcile.nextChunk += 1
        reconcile.deadline = loop.now + configuration.snapshotRetryMs  // it measures silence: a large snapshot takes longer
        for _ in 0..<count {
            guard let user = r.u32(), let contactCount = r.u32(), contactCount <= 1_000_000 else {
                reconciles[index] = reconcile
                return malformed()
            }
            var contacts: [UserID] = []
            contacts.reserveCapacity(Int(contactCount))
            for _ in 0..<contactCount {
                guard let c = r.u32() else { reconciles[index] = reconcile; return malformed() }
                contacts.append(c)
            }
            guard let deviceCount = r.u16() else { reconciles[index] = reconcile; return malformed() }
            var devices: [String] = []
            for _ in 0..<deviceCount {
                guard let d = r.string() else { reconciles[index] = reconcile; return malformed() }
                devices.append(d)
            }
            reconcileUser(user, on: index, devices: devices, contacts: contacts)
            reconcile.unconfirmed.remove(user)
        }
        if flags & 1 == 0 {
            reconciles[index] = reconcile
            return
        }
        // The last chunk: whoever is still unconfirmed is no longer on that node.
        if !reconcile.unconfirmed.isEmpty {
            logger.info("cluster snapshot complete; dropping users it no longer has",
                        metadata: ["node": "\(nodes[Int(index)].name)", "count": "\(reconcile.unconfirmed.count)"])
            drops[index] = DropJob(order: Array(reconcile.unconfirmed), doomed: reconcile.unconfirmed)
        }
    }

    /// Sets `user`'s devices on `index` to `devices`: only the differences reach the core (new devices first, so a
    /// user who only changed devices never reads offline).
    private func reconcileUser(_ user: UserID, on index: UInt16, devices: [String], contacts: [UserID]) {
        let known = host.remoteDevices(of: user)
        var local: [String]?
        for device in devices where !known.contains(where: { $0.node == index && $0.deviceID == device }) {
            // The same device logged in here since the snapshot was made: the login is newer (that node closes
            // its copy when it hears of it); the snapshot must not take it over.
            if local == nil { local = host.localDevices(of: user)?.devices ?? [] }
            if local!.contains(device) { continue }
            host.remoteDeviceJoined(user: user, node: index, deviceID: device, contacts: contacts)
            statistics.directoryEntriesReconciled += 1
        }
        for entry in known where entry.node == index && !devices.contains(entry.deviceID) {
            host.remoteDeviceLeft(user: user, node: index, deviceID: entry.deviceID)
            statistics.directoryEntriesReconciled += 1
        }
        resync(user)
    }

    // MARK: dropping a node's users

    /// Every user the directory has on `index` leaves it over the next turns (`directoryBatch` per turn).
    func startDrop(_ index: UInt16) {
        let members = nodes[Int(index)].members
        guard !members.isEmpty else { drops[index] = nil; return }
        drops[index] = DropJob(order: Array(members), doomed: members)
    }

    /// One batch: up to `directoryBatch` users, over the nodes with a drop under way.
    func dropBatch() {
        let started = Clock.monotonicNs()
        var budget = configuration.directoryBatch
        for index in Array(drops.keys) where budget > 0 {
            guard var job = drops.removeValue(forKey: index) else { continue }
            while budget > 0 && job.position < job.order.count {
                let user = job.order[job.position]
                job.position += 1
                guard job.doomed.contains(user) else { continue }
                var had = false
                for entry in host.remoteDevices(of: user) where entry.node == index {
                    host.remoteDeviceLeft(user: user, node: index, deviceID: entry.deviceID)
                    had = true
                }
                nodes[Int(index)].members.remove(user)
                if had { statistics.directoryUsersDropped += 1 }
                budget -= 1
            }
            if job.position < job.order.count { drops[index] = job }
        }
        statistics.longestDirectoryBatchNs = max(statistics.longestDirectoryBatchNs, Clock.monotonicNs() &- started)
    }

    // MARK: sending snapshots

    /// `name` asks for this node's devices: the users online now are walked a chunk at a time. A newer request
    /// from the same node replaces its older one.
    func snapshotRequested(by name: String, requestID: UInt32) {
        let job = SnapshotJob(requester: name, requestID: requestID, users: host.localUserIDs())
        if let existing = snapshotJobs.firstIndex(where: { $0.requester == name }) {
            snapshotJobs[existing] = job
        } else {
            snapshotJobs.append(job)
        }
    }

    /// Queues chunks, round-robin over the requesters, up to `snapshotBytesPerTurn`. A chunk that cannot be
    /// queued (NATS too full) is made again later from the same position: nothing is skipped.
    func sendSnapshotChunks() {
        guard nats.isConnected, loop.now >= snapshotResumeAt else { return }
        var budget = configuration.snapshotBytesPerTurn
        var next = 0
        while budget > 0 && !snapshotJobs.isEmpty {
            guard nats.pendingBytes <= snapshotRoom else { return deferSnapshots() }
            let k = next % snapshotJobs.count
            var job = snapshotJobs[k]
            var w = ClusterWriter(kind: .snapshotChunk, node: configuration.node, epoch: epoch)
            w.u32(job.requestID); w.u32(job.chunk)
            let flagsAt = w.bytes.count
            w.u8(0); w.u32(0)
            var count: UInt32 = 0
            var end = job.position
            let limit = min(configuration.snapshotChunkBytes, nats.maxPayload - 256)
            while end < job.users.count && Int(count) < configuration.directoryBatch {
                let user = job.users[end]
                guard let local = host.localDevices(of: user), !local.devices.isEmpty else { end += 1; continue }
                let before = w.bytes.count
                w.u32(user); w.u32(UInt32(local.contacts.count)); for c in local.contacts { w.u32(c) }
                w.u16(UInt16(clamping: local.devices.count))
                for device in local.devices.prefix(Int(UInt16.max)) { w.string(device) }
                if w.bytes.count > limit {
                    if count > 0 { w.bytes.removeLast(w.bytes.count - before); break }
                    // One user larger than a chunk may be: left out, loudly (its presence events still go out).
                    logger.error("cluster snapshot: a user's entry is larger than a NATS message; left out",
                                 metadata: ["user": "\(user)", "bytes": "\(w.bytes.count - before)"])
                    w.bytes.removeLast(w.bytes.count - before)
                    end += 1
                    continue
                }
                count += 1
                end += 1
            }
            let last = end >= job.users.count
            w.bytes[flagsAt] = last ? 1 : 0
            withUnsafeBytes(of: count.littleEndian) { raw in for (n, b) in raw.enumerated() { w.bytes[flagsAt + 1 + n] = b } }
            do {
                try nats.publish("sb.node.\(job.requester)", payload: w.bytes)
            } catch .outboundBufferFull {
                return deferSnapshots()
            } catch {
                statistics.publishFailures += 1
                return deferSnapshots()
            }
            statistics.snapshotChunksSent += 1
            budget -= w.bytes.count
            job.position = end
            job.chunk += 1
            if last {
                snapshotJobs.remove(at: k)
                statistics.snapshotsServed += 1
            } else {
                snapshotJobs[k] = job
                next = k + 1
            }
        }
    }

    /// How much NATS may hold unwritten before a chunk waits: a quarter of its bound at most, so forwards and
    /// presence always find room.
    private var snapshotRoom: Int { min(configuration.snapshotMaxQueuedBytes, nats.configuration.maxOutboundBytes / 4) }

    /// The NATS queue is too full for the next chunk: try again in a few ms (a timer wakes the loop).
    private func deferSnapshots() {
        statistics.snapshotChunkDeferrals += 1
        snapshotResumeAt = loop.now + 5
        loop.schedule(at: snapshotResumeAt, token: workToken)
    }
}
