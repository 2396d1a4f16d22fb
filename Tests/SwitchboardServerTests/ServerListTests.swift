// The clients' server list: what `sbchat --server` and `sbload --target` accept (good lists, every
// bad form with the entry named, the bound of 16 pushed past), the walk over it (first that
// answers, wrapping from a start, every failure named), and the connect timeout that lets a walk
// pass over a host that drops SYNs (a listener whose accept queue is full) instead of hanging.
import Glibc
import SwitchboardClient
import SwitchboardIO
import Testing

@Suite struct ServerListTests {
    @Test func goodListsKeepTheirEntriesInOrder() throws {
        #expect(try ServerList(parsing: "127.0.0.1:7878").entries == ["127.0.0.1:7878"])
        let three = try ServerList(parsing: "a.example.org:1,[::1]:7878,10.0.0.2:65535")
        #expect(three.entries == ["a.example.org:1", "[::1]:7878", "10.0.0.2:65535"])
        #expect(three.text == "a.example.org:1,[::1]:7878,10.0.0.2:65535")
        // Spaces around entries are dropped; the text is the canonical form.
        let spaced = try ServerList(parsing: " 127.0.0.1:1 , 127.0.0.1:2")
        #expect(spaced.entries == ["127.0.0.1:1", "127.0.0.1:2"] && spaced.text == "127.0.0.1:1,127.0.0.1:2")
        // The same port on different hosts, or the same host on different ports, are different servers.
        #expect(try ServerList(parsing: "127.0.0.1:1,127.0.0.2:1,127.0.0.1:2").count == 3)
        let sixteen = (1...ServerList.maxEntries).map { "127.0.0.1:\(25000 + $0)" }.joined(separator: ",")
        #expect(try ServerList(parsing: sixteen).count == 16)
        #expect(three.index(after: 0) == 1 && three.index(after: 2) == 0)
    }

    private func refusal(_ text: String) -> String {
        do { _ = try ServerList(parsing: text); return "accepted" } catch { return error.message }
    }

    @Test func everyBadFormIsRefusedNamingTheEntry() {
        // One entry: the same words --server always had.
        #expect(refusal("") == "no server given (expected HOST:PORT[,HOST:PORT...])")
        #expect(refusal("nonsense") == "expected HOST:PORT, got 'nonsense'")
        #expect(refusal(":7878") == "no host in ':7878'")
        #expect(refusal("::1:7878") == "an IPv6 address needs brackets: [::1]:7878")
        #expect(refusal("[::1]7878") == "expected [IPv6]:PORT, got '[::1]7878'")
        #expect(refusal("host:0") == "the port must be 1-65535, got '0'")
        #expect(refusal("host:65536") == "the port must be 1-65535, got '65536'")
        #expect(refusal("host:") == "the port must be 1-65535, got ''")
        #expect(refusal("a/b:1") == "'a/b' is not a host name")
        // In a list: which entry, and why.
        #expect(refusal("127.0.0.1:1,nonsense") == "server 2 of 2: expected HOST:PORT, got 'nonsense'")
        #expect(refusal("127.0.0.1:1,,127.0.0.1:2").hasPrefix("server 2 of 3: empty entry in '127.0.0.1:1,,127.0.0.1:2'"))
        #expect(refusal("127.0.0.1:1,").hasPrefix("server 2 of 2: empty entry"))
        #expect(refusal(",127.0.0.1:1").hasPrefix("server 1 of 2: empty entry"))
        #expect(refusal("127.0.0.1:1,h:99999,127.0.0.1:3") == "server 2 of 3: the port must be 1-65535, got '99999'")
        #expect(refusal("127.0.0.1:1,127.0.0.1:2,127.0.0.1:1") == "server 3 '127.0.0.1:1' repeats server 1 '127.0.0.1:1'")
        // Case and brackets do not make a second server.
        #expect(refusal("Chat.Example.org:1,chat.example.org:1") == "server 2 'chat.example.org:1' repeats server 1 'Chat.Example.org:1'")
        #expect(refusal("[::1]:5,[::1]:5") == "server 2 '[::1]:5' repeats server 1 '[::1]:5'")
        // One past the bound.
        let seventeen = (1...(ServerList.maxEntries + 1)).map { "127.0.0.1:\(25000 + $0)" }.joined(separator: ",")
        #expect(refusal(seventeen) == "at most 16 servers, got 17 in '\(seventeen)'")
    }

    @Test func theWalkStopsAtTheFirstThatAnswersAndNamesEveryFailure() throws {
        let list = try ServerList(parsing: "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3")
        var tried: [Int] = []
        let found = try list.firstReachable(startingAt: 2, willTry: { index, _ in tried.append(index) }) { server -> String in
            if server != "127.0.0.1:1" { throw ClientError("down") }
            return server
        }
        #expect(tried == [2, 0] && found.index == 0 && found.value == "127.0.0.1:1")
        #expect(found.failures.map(\.description) == ["127.0.0.1:3: down"])
        do {
            _ = try list.firstReachable { server -> Int in throw ClientError("refused by \(server.suffix(1))") }
            Issue.record("the walk succeeded with every server down")
        } catch {
            #expect(error.description == "none of the 3 servers could be used: 127.0.0.1:1: refused by 1; "
                + "127.0.0.1:2: refused by 2; 127.0.0.1:3: refused by 3")
        }
    }

    /// A listener with a full accept queue drops SYNs, as a host that is gone does: the connect
    /// gives up after the timeout instead of the kernel's two minutes, and a walk moves on.
    @Test(.timeLimit(.minutes(1)))
    func aConnectToAHostThatDropsSYNsTimesOutAndTheWalkMovesOn() throws {
        let listener = try Socket.listen(on: try SocketAddress(parsing: "127.0.0.1:0"), backlog: 0)
        defer { Sys.close(listener) }
        let blackhole = try Socket.localAddress(listener).description
        // Fill the accept queue (never accepted).
        var filler: [Int32] = []
        defer { for fd in filler { Sys.close(fd) } }
        for _ in 0..<2 {
            if let fd = try? Socket.connectNonBlocking(to: try SocketAddress(parsing: blackhole)) { filler.append(fd) }
        }
        usleep(100_000)
        let start = Clock.monotonicMs()
        do {
            _ = try ChatConnection(server: blackhole, timeoutMs: 400)
            Issue.record("connected to a listener whose queue is full")
        } catch let error as ClientError {
            #expect(error.message.contains("connect timed out"), "\(error)")
        }
        let elapsed = Clock.monotonicMs() - start
        #expect(elapsed >= 350 && elapsed < 3_000, "gave up after \(elapsed) ms")

        let live = try InProcessServer(tls: false)
        let list = try ServerList(parsing: "\(blackhole),\(live.address)")
        let found = try list.firstReachable { try ChatConnection(server: $0, timeoutMs: 400) }
        #expect(found.index == 1 && found.value.server == live.address)
        #expect(found.failures.count == 1 && found.failures[0].reason.contains("connect timed out"))
    }
}
