// Shared fixtures: every test gets its own store in a fresh temporary directory, removed afterwards, and
// passwords are hashed with 1000 iterations so the suite stays fast.

import Foundation
@_spi(Testing) import SwitchboardStore

/// One hash for every fixture account: hashing is the slow part, and tests of hashing itself build their own.
let fixturePassword = PasswordHasher.hash(password: Array("correct horse".utf8), iterations: 1000)

func makeTemporaryDirectory() -> String {
    FileManager.default.temporaryDirectory
        .appendingPathComponent("switchboard-store-tests-\(UUID().uuidString)").path
}

/// Runs `body` with a store in a fresh directory and removes the directory afterwards. The directory path is
/// passed too, for tests that close and reopen.
func withTemporaryStore(mapSizeBytes: Int = 1 << 26,
                        _ body: (Store, String) throws -> Void) throws {
    let directory = makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let store = try Store(directory: directory, mapSizeBytes: mapSizeBytes)
    defer { store.close() }
    try body(store, directory)
}

/// Creates accounts in one batch and returns their ids in order.
func createAccounts(_ names: [String], in store: Store) throws -> [UserID] {
    let results = try store.apply(names.map { .createAccount(name: $0, password: fixturePassword) })
    return try results.map { result in
        guard case .accountCreated(let id) = result else { throw FixtureError("account not created: \(result)") }
        return id
    }
}

struct FixtureError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func mail(to recipient: UserID, seq: UInt64, from sender: UserID, id messageID: UInt64,
          at sentAtMs: UInt64 = 1_000, body: String = "hello") -> StoredMail {
    StoredMail(recipient: recipient, seq: seq, sender: sender, messageID: messageID, sentAtMs: sentAtMs,
               body: Array(body.utf8))
}
