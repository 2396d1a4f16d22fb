// The loop time a gone node costs the core: 20,000 users online on node 1 in node 0's directory, each an accepted
// contact of one of 50 users online on node 0 (a real LMDB store, the ClusterSim of ClusterCoreTests). Before the
// router's batching (ClusterRouter+Directory.swift) the whole node left in one callback, `remoteNodeGone`; now the
// router calls `remoteDeviceLeft` for 1,000 users per loop turn. Both are timed here on the same directory: the
// longest batch must be a small part of the one-shot callback, and both tell the same users offline.
// The figures are printed (`stall:`) and quoted in the commit that added the batching.
import Glibc
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardRelay
import SwitchboardSession
import SwitchboardStore
import Testing

@Suite(.serialized) struct ClusterDirectoryStallTests {
    @Test func aGoneNodesUsersLeaveInBatchesThatAreAFractionOfTheOneShotStall() throws {
        let remoteCount = 20_000
        let localCount = 50
        let remoteNames = (0..<remoteCount).map { "r\($0)" }
        let localNames = (0..<localCount).map { "l\($0)" }
        let setUp = Clock.monotonicMs()
        let sim = try ClusterSim(nodes: 2, users: localNames + remoteNames,
                                 contacts: (0..<remoteCount).map { (remoteNames[$0], localNames[$0 % localCount]) })
        let clients = localNames.map { sim.connect($0, node: 0) }
        sim.settle(deliverCluster: false)
        #expect(clients.allSatisfy { $0.loggedIn })
        let node = sim.nodes[0]
        let remoteIDs = remoteNames.map { sim.id($0) }

        func fill() {
            for (i, user) in remoteIDs.enumerated() {
                node.core.remoteDeviceJoined(user: user, node: 1, deviceID: "d", contacts: [sim.id(localNames[i % localCount])])
                if i % 1_000 == 999 { node.endOfTurn() }
            }
            node.endOfTurn()
            _ = clients.map { $0.readAll() }
        }
        func offlinePushes() -> Int { clients.reduce(0) { $0 + $1.presence.filter { !$0.1 }.count } }
        fill()
        #expect(node.core.core.remote.count == remoteCount)
        print("stall: set-up (\(remoteCount) accounts and contacts, directory filled) \(Clock.monotonicMs() - setUp) ms")

        // Before: the whole node in one callback.
        var started = Clock.monotonicNs()
        node.core.remoteNodeGone(1)
        let oneShot = Clock.monotonicNs() - started
        node.endOfTurn()
        _ = clients.map { $0.readAll() }
        #expect(node.core.core.remote.isEmpty)
        let offlineBefore = offlinePushes()

        // After: what the router does, 1,000 users per turn.
        fill()
        var longest: UInt64 = 0
        var total: UInt64 = 0
        var batches = 0
        for batch in stride(from: 0, to: remoteCount, by: 1_000) {
            started = Clock.monotonicNs()
            for user in remoteIDs[batch..<min(batch + 1_000, remoteCount)] {
                for entry in node.core.core.remote[user]?.devices ?? [] where entry.node == 1 {
                    node.core.remoteDeviceLeft(user: user, node: 1, deviceID: entry.deviceID)
                }
            }
            let spent = Clock.monotonicNs() - started
            longest = max(longest, spent)
            total += spent
            batches += 1
            node.endOfTurn()
        }
        _ = clients.map { $0.readAll() }
        #expect(node.core.core.remote.isEmpty)
        let offlineAfter = offlinePushes() - offlineBefore
        print("stall: \(remoteCount) remote users of a gone node: one callback \(oneShot / 1_000_000) ms; in \(batches) batches of 1,000 the longest \(Double(longest) / 1e6) ms (all batches \(total / 1_000_000) ms); offline pushes \(offlineBefore) / \(offlineAfter)")
        #expect(offlineBefore == remoteCount && offlineAfter == remoteCount)
        // 20 batches: ideally 1/20 of the one-shot each; a loaded machine may stretch one.
        #expect(longest * 4 < oneShot, "longest batch \(longest) ns vs one callback \(oneShot) ns")
    }
}
