import Testing
@_spi(Testing) import SwitchboardStore

@Suite struct StoreContactTests {
    @Test func requestThenAcceptMakesBothSidesAccepted() throws {
        try withTemporaryStore { store, _ in
            let ids = try createAccounts(["alice", "bob"], in: store)
            let (alice, bob) = (ids[0], ids[1])

            #expect(try store.apply([.contactAdd(owner: alice, contactName: "bob")]) == [
                .contactChanged(owner: ContactEntry(userID: bob, name: "bob", state: .outgoingRequest),
                                other: ContactEntry(userID: alice, name: "alice", state: .incomingRequest),
                                ownerID: alice, otherID: bob),
            ])
            #expect(try store.contacts(of: alice) == [ContactEntry(userID: bob, name: "bob", state: .outgoingRequest)])
            #expect(try store.contacts(of: bob) == [ContactEntry(userID: alice, name: "alice", state: .incomingRequest)])

            // Re-sending the request, or the requester "accepting" its own request, changes nothing.
            #expect(try store.apply([.contactAdd(owner: alice, contactName: "bob")]) == [.alreadyInThatState])
            #expect(try store.apply([.contactAccept(owner: alice, contactName: "bob")])
                == [.invalidRequest("no pending request from bob")])

            #expect(try store.apply([.contactAccept(owner: bob, contactName: "alice")]) == [
                .contactChanged(owner: ContactEntry(userID: alice, name: "alice", state: .accepted),
                                other: ContactEntry(userID: bob, name: "bob", state: .accepted),
                                ownerID: bob, otherID: alice),
            ])
            #expect(try store.contacts(of: alice) == [ContactEntry(userID: bob, name: "bob", state: .accepted)])
            #expect(try store.contacts(of: bob) == [ContactEntry(userID: alice, name: "alice", state: .accepted)])

            // Once accepted, adding again from either side is a no-op, and accepting again is refused.
            #expect(try store.apply([.contactAdd(owner: alice, contactName: "bob"),
                                     .contactAdd(owner: bob, contactName: "alice")])
                == [.alreadyInThatState, .alreadyInThatState])
            #expect(try store.apply([.contactAccept(owner: bob, contactName: "alice")])
                == [.invalidRequest("no pending request from alice")])
        }
    }

    @Test func mutualAddsAutoAccept() throws {
        try withTemporaryStore { store, _ in
            let ids = try createAccounts(["alice", "bob"], in: store)
            let (alice, bob) = (ids[0], ids[1])
            let results = try store.apply([.contactAdd(owner: alice, contactName: "bob"),
                                           .contactAdd(owner: bob, contactName: "alice")])
            #expect(results[1] == .contactChanged(owner: ContactEntry(userID: alice, name: "alice", state: .accepted),
                                                  other: ContactEntry(userID: bob, name: "bob", state: .accepted),
                                                  ownerID: bob, otherID: alice))
            #expect(try store.contacts(of: alice) == [ContactEntry(userID: bob, name: "bob", state: .accepted)])
            #expect(try store.contacts(of: bob) == [ContactEntry(userID: alice, name: "alice", state: .accepted)])
        }
    }

    @Test func acceptWithoutARequestIsRefusedAndWritesNothing() throws {
        try withTemporaryStore { store, _ in
            let ids = try createAccounts(["alice", "bob"], in: store)
            #expect(try store.apply([.contactAccept(owner: ids[0], contactName: "bob")])
                == [.invalidRequest("no pending request from bob")])
            #expect(try store.contacts(of: ids[0]).isEmpty)
            #expect(try store.contacts(of: ids[1]).isEmpty)
        }
    }

    @Test func removeDeletesBothDirectionsWhateverTheState() throws {
        try withTemporaryStore { store, _ in
            let ids = try createAccounts(["alice", "bob", "carol", "dave"], in: store)
            let (alice, bob, carol, dave) = (ids[0], ids[1], ids[2], ids[3])
            _ = try store.apply([
                .contactAdd(owner: alice, contactName: "bob"), .contactAccept(owner: bob, contactName: "alice"),
                .contactAdd(owner: alice, contactName: "carol"),   // pending, outgoing from alice
                .contactAdd(owner: dave, contactName: "alice"),    // pending, incoming to alice
            ])
            #expect(try store.contacts(of: alice).map(\.name) == ["bob", "carol", "dave"])

            let results = try store.apply([
                .contactRemove(owner: bob, contactName: "alice"),     // the other side removes an accepted contact
                .contactRemove(owner: alice, contactName: "carol"),   // cancels an outgoing request
                .contactRemove(owner: alice, contactName: "dave"),    // declines an incoming request
                .contactRemove(owner: alice, contactName: "bob"),     // already gone
            ])
            #expect(results == [
                .contactChanged(owner: nil, other: nil, ownerID: bob, otherID: alice),
                .contactChanged(owner: nil, other: nil, ownerID: alice, otherID: carol),
                .contactChanged(owner: nil, other: nil, ownerID: alice, otherID: dave),
                .alreadyInThatState,
            ])
            for id in ids { #expect(try store.contacts(of: id).isEmpty) }

            // After a decline, a fresh request works again.
            #expect(try store.apply([.contactAdd(owner: dave, contactName: "alice")]).first.map {
                if case .contactChanged = $0 { return true } else { return false }
            } == true)
        }
    }

    @Test func unknownUsersAndSelfAreRefused() throws {
        try withTemporaryStore { store, _ in
            let alice = try createAccounts(["alice"], in: store)[0]
            let results = try store.apply([
                .contactAdd(owner: alice, contactName: "ghost"),
                .contactAccept(owner: alice, contactName: "ghost"),
                .contactRemove(owner: alice, contactName: "ghost"),
                .contactAdd(owner: 99, contactName: "alice"),
                .contactAdd(owner: alice, contactName: "alice"),
                .contactAccept(owner: alice, contactName: "alice"),
                .contactAdd(owner: alice, contactName: "bad name"),
            ])
            #expect(Array(results[0..<4]) == [.noSuchUser, .noSuchUser, .noSuchUser, .noSuchUser])
            #expect(results[4] == .invalidRequest("you cannot be your own contact"))
            #expect(results[5] == .invalidRequest("you cannot be your own contact"))
            guard case .invalidRequest = results[6] else {
                Issue.record("expected invalidRequest for an invalid name, got \(results[6])")
                return
            }
            #expect(try store.contacts(of: alice).isEmpty)
        }
    }

    @Test func contactsAreSortedByNameAndScopedToTheirOwner() throws {
        try withTemporaryStore { store, _ in
            // Ids ascend in a different order than names, so sorting is observable.
            let ids = try createAccounts(["me", "zed", "Bob", "amy", "other"], in: store)
            _ = try store.apply([
                .contactAdd(owner: ids[0], contactName: "zed"),
                .contactAdd(owner: ids[0], contactName: "Bob"),
                .contactAdd(owner: ids[0], contactName: "amy"),
                .contactAdd(owner: ids[4], contactName: "zed"),
            ])
            #expect(try store.contacts(of: ids[0]).map(\.name) == ["Bob", "amy", "zed"])
            #expect(try store.contacts(of: ids[1]).map(\.name) == ["me", "other"])
            #expect(try store.contacts(of: ids[1]).map(\.state) == [.incomingRequest, .incomingRequest])
            #expect(try store.contacts(of: 77).isEmpty)
        }
    }

    @Test func aCorruptStateByteIsATypedError() throws {
        try withTemporaryStore { store, _ in
            let ids = try createAccounts(["alice", "bob"], in: store)
            _ = try store.apply([.contactAdd(owner: ids[0], contactName: "bob")])
            var key: [UInt8] = []
            for id in [ids[0], ids[1]] { key += [UInt8(id >> 24), UInt8((id >> 16) & 0xff), UInt8((id >> 8) & 0xff),
                                                UInt8(id & 0xff)] }
            try store.putRawRecordForTesting(database: "contacts", key: key, value: [9])
            let error = #expect(throws: StoreError.self) { try store.contacts(of: ids[0]) }
            guard case .corruptRecord(let database, _)? = error else {
                Issue.record("expected corruptRecord, got \(String(describing: error))")
                return
            }
            #expect(database == "contacts")
        }
    }
}
