// A data folder a cluster node wrote (it applied log entries) refuses direct writes when a tool opens it as a
// plain store: a write outside the log would make that node's replica differ from the others.
import Foundation
import SwitchboardStore
import Testing

@Suite struct ReplicaFolderTests {
    @Test func aReplicaFolderRefusesDirectWritesFromAPlainOpen() throws {
        let directory = "/tmp/sb-replica-folder-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let hash = PasswordHasher.hash(password: Array("pw".utf8), iterations: 1)
        do {
            let replica = try Store(directory: directory, options: .clusterReplica)
            defer { replica.close() }
            _ = try replica.apply([.createAccount(name: "alice", password: hash)], logSeq: 1)
        }
        let plain = try Store(directory: directory)
        defer { plain.close() }
        #expect(plain.holdsClusterLog)
        #expect(try plain.account(named: "alice") != nil, "reads still work (backup, data check, list)")
        do {
            _ = try plain.apply([.createAccount(name: "bob", password: hash)])
            Issue.record("a direct write to a replica folder was accepted")
        } catch {
            #expect("\(error)".contains("cluster node's replica"), "\(error)")
        }
        #expect(throws: (any Error).self) { _ = try plain.createAccountsBulk(names: ["carol"], password: hash) }
        #expect(try plain.account(named: "bob") == nil && plain.account(named: "carol") == nil)
    }

    @Test func aSingleNodeFolderIsNotAReplica() throws {
        let directory = "/tmp/sb-plain-folder-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try Store(directory: directory)
        defer { store.close() }
        _ = try store.apply([.createAccount(name: "alice", password: PasswordHasher.hash(password: Array("pw".utf8), iterations: 1))])
        #expect(!store.holdsClusterLog)
    }
}
