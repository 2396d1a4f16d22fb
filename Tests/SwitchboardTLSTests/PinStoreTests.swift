// The known-servers file: format, first contact, mismatch, strict parsing, default location.

import Foundation
import Glibc
@testable import SwitchboardTLS
import Testing

@Suite struct PinStoreTests {
    private let alpha = String(repeating: "a1", count: 32)
    private let beta = String(repeating: "b2", count: 32)

    @Test func firstContactRecordsThenMatches() throws {
        let temporary = TemporaryDirectory()
        let store = PinStore(path: temporary.file("config/switchboard/known_servers"))
        #expect(try store.pinnedFingerprint(for: "localhost:7878") == nil)
        #expect(try store.verify(server: "localhost:7878", fingerprint: alpha) == .recorded)
        #expect(try store.verify(server: "localhost:7878", fingerprint: alpha.uppercased()) == .matched)
        // Another server is a separate first contact.
        #expect(try store.verify(server: "[::1]:7878", fingerprint: beta) == .recorded)
        #expect(try store.entries() == ["localhost:7878": alpha, "[::1]:7878": beta])

        let text = try String(contentsOfFile: store.path, encoding: .utf8)
        #expect(text.hasPrefix("# "))
        #expect(text.contains("\nlocalhost:7878 \(alpha)\n"))
        var info = stat()
        #expect(stat(store.path, &info) == 0 && info.st_mode & 0o777 == 0o600)
        #expect(stat(temporary.file("config/switchboard"), &info) == 0 && info.st_mode & 0o777 == 0o700)
    }

    @Test func mismatchShowsBothFingerprintsAndKeepsTheFile() throws {
        let temporary = TemporaryDirectory()
        let store = PinStore(path: temporary.file("known_servers"))
        _ = try store.verify(server: "chat.example:7878", fingerprint: alpha)
        let before = try String(contentsOfFile: store.path, encoding: .utf8)
        let error = #expect(throws: TLSError.self) { try store.verify(server: "chat.example:7878", fingerprint: beta) }
        #expect(error?.kind == .pinMismatch(pinned: alpha, presented: beta))
        #expect(error?.description.contains(alpha) == true)
        #expect(error?.description.contains(beta) == true)
        #expect(error?.description.contains(store.path) == true, "tells the user which file to edit")
        #expect(try String(contentsOfFile: store.path, encoding: .utf8) == before)
    }

    @Test func malformedLinesAreErrorsWithLineNumbers() throws {
        let temporary = TemporaryDirectory()
        let path = try temporary.write("known_servers", "# comment\n\nlocalhost:7878 \(alpha)\nlocalhost:7879 nothex\n")
        let error = #expect(throws: TLSError.self) { _ = try PinStore(path: path).entries() }
        #expect(error?.kind == .pinStore)
        #expect(error?.message.contains(":4:") == true)

        let conflicting = try temporary.write("conflict", "a:1 \(alpha)\na:1 \(beta)\n")
        #expect(throws: TLSError.self) { _ = try PinStore(path: conflicting).entries() }
    }

    @Test func commentsBlankLinesAndTabsAreFine() throws {
        let temporary = TemporaryDirectory()
        let path = try temporary.write("known_servers", "# header\n\n  localhost:7878\t\(alpha)  \n# end\n")
        #expect(try PinStore(path: path).entries() == ["localhost:7878": alpha])
    }

    @Test func refusesToRecordNonsense() throws {
        let temporary = TemporaryDirectory()
        let store = PinStore(path: temporary.file("known_servers"))
        #expect(throws: TLSError.self) { try store.record(server: "no-port", fingerprint: alpha) }
        #expect(throws: TLSError.self) { try store.record(server: "host:1", fingerprint: "abc") }
        #expect(!FileManager.default.fileExists(atPath: store.path))
    }

    @Test func serverKeysAreNormalised() {
        #expect(PinStore.serverKey(host: "LocalHost", port: 7878) == "localhost:7878")
        #expect(PinStore.serverKey(host: "::1", port: 7878) == "[::1]:7878")
        #expect(PinStore.serverKey(host: "[::1]", port: 1) == "[::1]:1")
        #expect(PinStore.serverKey(host: "127.0.0.1", port: 80) == "127.0.0.1:80")
    }

    @Test func defaultPathFollowsXDGThenHome() throws {
        #expect(try PinStore.defaultPath(environment: ["XDG_CONFIG_HOME": "/x/config", "HOME": "/home/u"])
                == "/x/config/switchboard/known_servers")
        #expect(try PinStore.defaultPath(environment: ["HOME": "/home/u"]) == "/home/u/.config/switchboard/known_servers")
        // A relative XDG_CONFIG_HOME is invalid per the XDG spec and ignored.
        #expect(try PinStore.defaultPath(environment: ["XDG_CONFIG_HOME": "rel", "HOME": "/home/u"])
                == "/home/u/.config/switchboard/known_servers")
        #expect(throws: TLSError.self) { _ = try PinStore.defaultPath(environment: [:]) }
    }
}
