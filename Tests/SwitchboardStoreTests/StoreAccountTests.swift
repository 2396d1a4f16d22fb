import Testing
@_spi(Testing) import SwitchboardStore

@Suite struct StoreAccountTests {
    @Test func createsAccountsWithIncreasingIDsAndLooksThemUp() throws {
        try withTemporaryStore { store, _ in
            #expect(try store.userCount() == 0)
            let results = try store.apply([
                .createAccount(name: "alice", password: fixturePassword),
                .createAccount(name: "bob", password: fixturePassword),
            ])
            #expect(results == [.accountCreated(1), .accountCreated(2)])

            let alice = try #require(try store.account(named: "alice"))
            #expect(alice == AccountRecord(userID: 1, name: "alice", password: fixturePassword))
            #expect(PasswordHasher.verify(password: Array("correct horse".utf8), against: alice.password))
            #expect(try store.userName(of: 2) == "bob")
            #expect(try store.userName(of: 3) == nil)
            #expect(try store.userName(of: 0) == nil)
            #expect(try store.account(named: "carol") == nil)
            #expect(try store.userCount() == 2)
        }
    }

    @Test func reportsATakenNameWithoutAbortingTheRestOfTheBatch() throws {
        try withTemporaryStore { store, _ in
            _ = try createAccounts(["alice"], in: store)
            let other = PasswordHasher.hash(password: Array("other".utf8), iterations: 1000)
            let results = try store.apply([
                .createAccount(name: "alice", password: other),
                .createAccount(name: "dave", password: fixturePassword),
                .createAccount(name: "dave", password: fixturePassword),
            ])
            #expect(results == [.nameTaken, .accountCreated(2), .nameTaken])
            // The taken name keeps its original password.
            #expect(try store.account(named: "alice")?.password == fixturePassword)
            #expect(try store.userCount() == 2)
        }
    }

    @Test func namesAreCaseSensitive() throws {
        try withTemporaryStore { store, _ in
            let ids = try createAccounts(["alice", "Alice", "ALICE"], in: store)
            #expect(ids == [1, 2, 3])
            #expect(try store.account(named: "Alice")?.userID == 2)
        }
    }

    @Test(arguments: ["", String(repeating: "a", count: 33), "has space", "caf\u{e9}", "a/b", "semi;colon", "tab\t",
                      "\u{0}"])
    func rejectsInvalidNames(name: String) throws {
        #expect(!Store.isValidUserName(name))
        try withTemporaryStore { store, _ in
            let results = try store.apply([.createAccount(name: name, password: fixturePassword)])
            guard case .invalidRequest = try #require(results.first) else {
                Issue.record("expected invalidRequest, got \(results)")
                return
            }
            #expect(try store.userCount() == 0)
            #expect(try store.account(named: name) == nil)
        }
    }

    @Test func acceptsEveryAllowedCharacterUpToThirtyTwoBytes() {
        #expect(Store.isValidUserName("a"))
        #expect(Store.isValidUserName(String(repeating: "z", count: 32)))
        #expect(Store.isValidUserName("Az09_.-"))
    }

    @Test func bulkCreationSkipsExistingNamesAndContinuesTheIDCounter() throws {
        try withTemporaryStore { store, _ in
            _ = try createAccounts(["user5"], in: store)
            let names = (0..<1000).map { "user\($0)" }
            #expect(try store.createAccountsBulk(names: names, password: fixturePassword) == 999)
            #expect(try store.userCount() == 1000)
            #expect(try store.account(named: "user5")?.userID == 1)
            #expect(try store.account(named: "user0")?.userID == 2)
            #expect(try store.account(named: "user999")?.userID == 1000)
            #expect(try store.account(named: "user42")?.password == fixturePassword)
            #expect(try store.userName(of: 1000) == "user999")

            // Running it again creates nothing; the next regular account gets the next id.
            #expect(try store.createAccountsBulk(names: names, password: fixturePassword) == 0)
            #expect(try store.apply([.createAccount(name: "late", password: fixturePassword)]) == [.accountCreated(1001)])
        }
    }

    @Test func bulkCreationWithAnInvalidNameWritesNothing() throws {
        try withTemporaryStore { store, _ throws in
            #expect(throws: StoreError.invalidArgument("invalid user name at index 1")) {
                try store.createAccountsBulk(names: ["ok1", "not ok", "ok2"], password: fixturePassword)
            }
            #expect(try store.userCount() == 0)
            #expect(try store.account(named: "ok1") == nil)
        }
    }

    @Test func aCorruptAccountRecordIsATypedError() throws {
        try withTemporaryStore { store, _ in
            _ = try createAccounts(["alice"], in: store)
            try store.putRawRecordForTesting(database: "accounts", key: Array("alice".utf8), value: [0, 0, 0, 1, 1])
            let error = #expect(throws: StoreError.self) { try store.account(named: "alice") }
            guard case .corruptRecord(let database, _)? = error else {
                Issue.record("expected corruptRecord, got \(String(describing: error))")
                return
            }
            #expect(database == "accounts")
            // A corrupt record met inside a batch aborts the batch, rather than writing around it.
            #expect(throws: StoreError.self) {
                try store.apply([.createAccount(name: "bob", password: fixturePassword),
                                 .contactAdd(owner: 1, contactName: "alice")])
            }
            #expect(try store.account(named: "bob") == nil)
        }
    }
}
