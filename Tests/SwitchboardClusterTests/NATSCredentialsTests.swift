// The --cluster-credentials file: what parses, every way it can be wrong (each with its message), and the
// permission check on the file.
import Foundation
import Glibc
import SwitchboardCluster
import Testing

@Suite struct NATSCredentialsTests {
    @Test func tokenAndUserPasswordParse() throws {
        #expect(try NATSCredentials.parse("token: abc") == .token("abc"))
        #expect(try NATSCredentials.parse("# comment\n\n  user:  switchboard \npassword: p:w d\r\n") ==
                .user("switchboard", password: "p:w d"))
    }

    @Test(arguments: [
        ("", "no credentials"), ("token abc", "expected"), ("tokn: abc", "unknown key"), ("token:", "is empty"),
        ("token: a\ntoken: b", "given twice"), ("token: a\nuser: u\npassword: p", "not both"),
        ("user: u", "needs a 'password'"), ("password: p", "needs a 'user'"),
        ("token: \(String(repeating: "x", count: 4_097))", "over 4096"),
    ])
    func badFilesAreRefusedSayingWhy(text: String, expected: String) {
        do {
            let parsed = try NATSCredentials.parse(text)
            Issue.record("parsed \(parsed) from \(text.prefix(40))")
        } catch {
            #expect(error.description.contains(expected), "\(error)")
        }
    }

    @Test func aFileOthersMayReadIsRefused() throws {
        let path = NSTemporaryDirectory() + "sbcreds-\(getpid())"
        defer { unlink(path) }
        try "token: abc\n".write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, 0o640)
        #expect(throws: NATSCredentialsError.self) { try NATSCredentials.load(path: path) }
        do { _ = try NATSCredentials.load(path: path) } catch { #expect(error.description.contains("chmod 600")) }
        chmod(path, 0o600)
        #expect(try NATSCredentials.load(path: path) == .token("abc"))
        #expect(throws: NATSCredentialsError.self) { try NATSCredentials.load(path: path + ".missing") }
    }
}
