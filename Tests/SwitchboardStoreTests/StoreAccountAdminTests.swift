// Account administration on a real LMDB store: setPassword, deleteAccount (nothing of the account is left
// behind, its id is not reused) and listAccounts.
import Testing
@_spi(Testing) import SwitchboardStore

@Suite struct StoreAccountAdminTests {
    @Test func setPasswordReplacesOnlyTheHash() throws {
        try withTemporaryStore { store, _ in
            let ids = try createAccounts(["alice"], in: store)
            let fresh = PasswordHasher.hash(password: Array("new password".utf8), iterations: 1000)
            #expect(try store.apply([.setPassword(name: "alice", password: fresh)]) == [.passwordChanged(ids[0])])
            let account = try #require(try store.account(named: "alice"))
            #expect(account.userID == ids[0])
            #expect(PasswordHasher.verify(password: Array("new password".utf8), against: account.password))
            #expect(!PasswordHasher.verify(password: Array("correct horse".utf8), against: account.password))
            #expect(try store.apply([.setPassword(name: "nobody", password: fresh)]) == [.noSuchUser])
        }
    }

    @Test func deleteAccountLeavesNothingOfItBehind() throws {
        try withTemporaryStore { store, _ in
            let ids = try createAccounts(["alice", "bob", "carol"], in: store)
            let (alice, bob, carol) = (ids[0], ids[1], ids[2])
            _ = try store.apply([.contactAdd(owner: alice, contactName: "bob"), .contactAccept(owner: bob, contactName: "alice"),
                                 .contactAdd(owner: carol, contactName: "bob"),
                                 .putMail(mail(to: bob, seq: 1, from: alice, id: 7)),
                                 .putMail(mail(to: alice, seq: 1, from: bob, id: 8)),
                                 .putDedupeWindow(sender: bob, entries: [DedupeWindowEntry(messageID: 8, status: 2, atMs: 1)])])
            let before = try store.listAccounts()
            #expect(before.map(\.name) == ["alice", "bob", "carol"])
            #expect(before.map(\.contacts) == [1, 2, 1])
            #expect(before.map(\.mailCount) == [1, 1, 0])

            let result = try store.apply([.deleteAccount(name: "bob")])
            guard case .accountDeleted(bob, let contacts) = result[0] else { Issue.record("\(result)"); return }
            #expect(Set(contacts) == [alice, carol])
            #expect(try store.account(named: "bob") == nil)
            #expect(try store.userName(of: bob) == nil)
            #expect(try store.contacts(of: alice).isEmpty)
            #expect(try store.contacts(of: carol).isEmpty)
            #expect(try store.mail(for: bob, afterSeq: 0, limit: 10).isEmpty)
            #expect(try !store.dedupeRecordExists(sender: bob, messageID: 8))
            #expect(try store.dedupeWindow(of: bob, notBeforeMs: 0).isEmpty)
            // Alice's own mail (from bob) is hers and stays.
            #expect(try store.mail(for: alice, afterSeq: 0, limit: 10).count == 1)
            // Alice's dedupe record of what she sent bob is hers (keyed by sender): it stays until pruned by age.
            #expect(try store.dedupeRecordExists(sender: alice, messageID: 7))
            // Mail for the deleted id is refused; the name is free again under a new id.
            #expect(try store.apply([.putMail(mail(to: bob, seq: 2, from: alice, id: 9))]) == [.noSuchUser])
            #expect(try store.apply([.deleteAccount(name: "bob")]) == [.noSuchUser])
            let again = try createAccounts(["bob"], in: store)
            #expect(again[0] > carol)
            #expect(try store.listAccounts().map(\.name) == ["alice", "bob", "carol"])
        }
    }
}
