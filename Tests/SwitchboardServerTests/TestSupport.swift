// Real parts for integration tests: the real server on an ephemeral loopback port with a real LMDB
// in a fresh temp folder, either in this process (on its own thread) or as the real executable.
import Foundation
import Glibc
import SwitchboardClient
import SwitchboardIO
import SwitchboardProtocol
import SwitchboardServer
import SwitchboardTLS

let testPassword = "correct horse battery"

func makeTempDirectory(_ label: String = "sbtest") -> String {
    var template = Array("/tmp/\(label)-XXXXXX".utf8CString)
    let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
    return path
}

func removeDirectory(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

/// Hands the server to its loop thread; after that only the loop thread touches it (plus the
/// thread-safe `requestShutdown`).
struct UncheckedBox<T>: @unchecked Sendable { let value: T; init(_ value: T) { self.value = value } }

/// A server running in this process on its own thread.
final class InProcessServer: @unchecked Sendable {
    let server: RelayServer
    let directory: String
    let ownsDirectory: Bool
    private var thread: HelperThread?
    var address: String { server.boundAddress.description }

    /// The development CA clients verify against (nil for a plaintext server).
    let caFile: String?

    /// TLS by default, as in production; `tls: false` for tests that speak raw frames.
    init(directory: String? = nil, tls: Bool = true, configure: (inout ServerConfiguration) -> Void = { _ in }) throws {
        self.ownsDirectory = directory == nil
        self.directory = directory ?? makeTempDirectory()
        var config = ServerConfiguration(listenAddress: try SocketAddress(parsing: "127.0.0.1:0"), dataDirectory: self.directory)
        config.pbkdf2Iterations = 1000
        if tls {
            let tlsDirectory = DevelopmentCA.directory(forDataDirectory: self.directory)
            let files = DevelopmentCA.serverCredentialsExist(in: tlsDirectory)
                ? nil : try DevelopmentCA.create(in: tlsDirectory, extraNames: [], force: false)
            _ = files
            config.tls = TLSServerConfiguration(certificateChainFile: tlsDirectory + "/server.pem",
                                                privateKeyFile: tlsDirectory + "/server.key")
            caFile = tlsDirectory + "/ca.pem"
        } else {
            config.plaintext = true
            caFile = nil
        }
        configure(&config)
        server = try RelayServer(configuration: config)
        server.logger.logLevel = .critical
        let box = UncheckedBox(self.server)
        thread = try HelperThread { try? box.value.run() }
    }

    /// Clean shutdown (as SIGTERM does) and wait for the loop thread.
    func stop() {
        server.requestShutdown()
        thread?.join()
        thread = nil
    }

    deinit {
        stop()
        if ownsDirectory { removeDirectory(directory) }
    }

    var clientTLS: ClientTLSOptions? { caFile.map { .certificateAuthority(file: $0) } }

    func session() throws -> ChatSession { try ChatSession(server: address, tls: clientTLS) }

    /// Registers `name` and returns a logged-in session.
    func user(_ name: String) throws -> ChatSession {
        let s = try session()
        try s.register(name: name, password: testPassword)
        try s.logIn(name: name, password: testPassword)
        return s
    }

    func loggedIn(_ name: String) throws -> ChatSession {
        let s = try session()
        try s.logIn(name: name, password: testPassword)
        return s
    }
}

/// alice and bob, registered, logged in and accepted contacts of each other.
struct Friends {
    let alice: ChatSession
    let bob: ChatSession
    /// Bob's user id, as alice's contact list gives it.
    let bobID: UInt32

    /// `newSession` opens a fresh connection to the server under test.
    init(_ newSession: () throws -> ChatSession) throws {
        alice = try newSession()
        try alice.register(name: "alice", password: testPassword)
        try alice.logIn(name: "alice", password: testPassword)
        bob = try newSession()
        try bob.register(name: "bob", password: testPassword)
        try bob.logIn(name: "bob", password: testPassword)
        try befriend(alice, "alice", bob, "bob")
        bobID = try userID(of: "bob", in: alice)
    }

    /// Closes bob's connection and waits until alice has seen him go offline.
    func bobGoesOffline() throws {
        bob.connection.close()
        let bobID = self.bobID
        _ = try waitForEvent(alice) { if case .presence(bobID, false) = $0 { return true } else { return false } }
    }
}

func isMessage(_ event: ChatEvent) -> Bool { if case .message = event { return true } else { return false } }

/// Makes `a` and `b` accepted contacts (both must be logged in).
func befriend(_ a: ChatSession, _ aName: String, _ b: ChatSession, _ bName: String) throws {
    try a.addContact(bName)
    try b.acceptContact(aName)
}

func userID(of name: String, in session: ChatSession) throws -> UInt32 {
    guard let c = try session.contacts().first(where: { $0.name == name }) else { throw ClientError("\(name) not a contact") }
    return c.userID
}

/// Waits for the first event matching `predicate`, skipping others; nil on timeout.
func waitForEvent(_ session: ChatSession, timeoutMs: Int32 = 10_000, _ predicate: (ChatEvent) -> Bool) throws -> ChatEvent? {
    let deadline = Clock.monotonicMs() + UInt64(timeoutMs)
    while Clock.monotonicMs() < deadline {
        guard let event = try session.nextEvent(timeoutMs: remainingMs(until: deadline)) else { return nil }
        if predicate(event) { return event }
    }
    return nil
}

/// A raw TCP socket for speaking bytes the client library would never send.
final class RawSocket {
    let fd: Int32
    init(_ address: String) throws {
        fd = try Socket.connectBlocking(to: try SocketAddress(parsing: address))
    }
    deinit { Sys.close(fd) }

    func write(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func write(_ frame: ClientFrame) {
        let buffer = ByteBuffer()
        FrameEncoder.encode(frame, into: buffer)
        write(buffer.readableArray())
    }

    /// Reads until the server closes or `timeoutMs` passes; returns the bytes and whether it closed.
    func readUntilClosed(timeoutMs: Int32 = 10_000) -> (bytes: [UInt8], closed: Bool) {
        var result: [UInt8] = []
        let deadline = Clock.monotonicMs() + UInt64(timeoutMs)
        var chunk = [UInt8](repeating: 0, count: 65536)
        while Clock.monotonicMs() < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let rc = poll(&pfd, 1, remainingMs(until: deadline))
            if rc <= 0 { continue }
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return (result, true) }
            result.append(contentsOf: chunk[0..<n])
        }
        return (result, false)
    }

    static func serverFrames(_ bytes: [UInt8]) -> [ServerFrame] {
        var frames: [ServerFrame] = []
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                guard case .frame(let f, let used) = FrameDecoder.decodeServer(UnsafeRawBufferPointer(rebasing: raw[offset...]),
                                                                               maxFrameBytes: 1 << 20) else { break }
                frames.append(f.ownedCopy())
                offset += used
            }
        }
        return frames
    }
}

func helloFrame() -> ClientFrame { .hello(version: ProtocolConstants.version, agent: "test") }

func errorCodes(in frames: [ServerFrame]) -> [UInt16] {
    frames.compactMap { if case .error(_, let code, _) = $0 { return code } else { return nil } }
}

/// Resident set size of a process in KiB (from /proc).
func residentKiB(pid: Int32 = getpid()) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? 0
    }
    return 0
}

/// Path of a product built next to this test bundle.
func builtProduct(_ name: String) -> String? {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent(name).path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return nil
}

/// The real `switchboard` executable as a child process.
final class ServerProcess {
    let process = Process()
    let directory: String
    private(set) var address = ""
    private let output = Pipe()

    var caFile: String { DevelopmentCA.directory(forDataDirectory: directory) + "/ca.pem" }
    var clientTLS: ClientTLSOptions { .certificateAuthority(file: caFile) }
    func session() throws -> ChatSession { try ChatSession(server: address, tls: clientTLS) }

    /// `launcher` runs the server through another program (e.g. `prlimit --nofile=64`); `stderrPath`
    /// keeps its log in a file.
    init(directory: String, extraArguments: [String] = [], launcher: [String] = [], stderrPath: String? = nil,
         logLevel: String = "error") throws {
        self.directory = directory
        guard let binary = builtProduct("switchboard") else { throw ClientError("switchboard executable not found next to the tests") }
        let tlsDirectory = DevelopmentCA.directory(forDataDirectory: directory)
        if !DevelopmentCA.serverCredentialsExist(in: tlsDirectory) {
            _ = try DevelopmentCA.create(in: tlsDirectory, extraNames: [], force: false)
        }
        let serveArguments = ["serve", "--listen", "127.0.0.1:0", "--data", directory, "--pbkdf2-iterations", "1000",
                              "--log-level", logLevel] + extraArguments
        if let program = launcher.first {
            process.executableURL = URL(fileURLWithPath: program)
            process.arguments = Array(launcher.dropFirst()) + [binary] + serveArguments
        } else {
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = serveArguments
        }
        process.standardOutput = output
        if let stderrPath {
            _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
            process.standardError = FileHandle(forWritingAtPath: stderrPath)
        } else {
            process.standardError = FileHandle.nullDevice
        }
        try process.run()
        address = try listeningAddress(from: output)
    }

    func kill9() {
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func terminate() -> Int32 {
        Glibc.kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { kill9() }
    }
}

func remainingMs(until deadline: UInt64) -> Int32 {
    let now = Clock.monotonicMs()
    return deadline > now ? Int32(clamping: deadline - now) : 0
}

/// alice and bob as accepted contacts on an in-process server.
func friendsOn(_ server: InProcessServer) throws -> (alice: ChatSession, bob: ChatSession, bobID: UInt32) {
    let friends = try Friends(server.session)
    return (friends.alice, friends.bob, friends.bobID)
}

/// The address a starting `switchboard serve` prints on stdout ("switchboard listening on ADDRESS") once it
/// accepts connections; waits up to 30 s. `log` is added to the error when it did not start.
func listeningAddress(from output: Pipe, log: @autoclosure () -> String = "") throws -> String {
    var line = ""
    let handle = output.fileHandleForReading
    let deadline = Date().addingTimeInterval(30)
    while !line.contains("\n") && Date() < deadline {
        let data = handle.availableData
        if data.isEmpty { break }
        line += String(decoding: data, as: UTF8.self)
    }
    guard let range = line.range(of: "listening on ") else { throw ClientError("server did not start: \(line) \(log())") }
    return String(line[range.upperBound...].prefix { !$0.isWhitespace })
}
