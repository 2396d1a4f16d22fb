// Fixtures for the TLS tests: certificates made with DevelopmentCA in a fresh temporary folder, and
// client/server pairs over a nonblocking socketpair driven step by step on the test's own thread,
// so no test depends on timing. Every loop has an iteration cap and fails loudly instead of hanging.

import Foundation
import CSwitchboard
import Glibc
@testable import SwitchboardTLS
import SwitchboardIO

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A temporary folder removed when the value goes away.
final class TemporaryDirectory {
    let path: String

    init() {
        path = FileManager.default.temporaryDirectory
            .appendingPathComponent("switchboard-tls-tests-\(UUID().uuidString)").path
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String) -> String { path + "/" + name }

    func write(_ name: String, _ text: String) throws -> String {
        let target = file(name)
        try text.write(toFile: target, atomically: true, encoding: .utf8)
        return target
    }
}

/// A development CA and server certificate in a temporary folder, plus contexts built from them.
final class Certificates {
    let directory = TemporaryDirectory()
    let files: DevelopmentCA.Files

    init(extraNames: [String] = []) throws {
        files = try DevelopmentCA.create(in: directory.file("tls"), extraNames: extraNames)
    }

    var serverConfiguration: TLSServerConfiguration {
        TLSServerConfiguration(certificateChainFile: files.serverCertificate, privateKeyFile: files.serverPrivateKey)
    }

    func serverContext(ticketKeys: TicketKeyRing = TicketKeyRing()) throws -> TLSContext {
        try TLSContext(server: serverConfiguration, ticketKeys: ticketKeys)
    }

    func verifyingClientContext() throws -> TLSContext {
        try TLSContext(client: TLSClientConfiguration(verification: .certificateAuthority(file: files.caCertificate)))
    }

    var authority: CertificateAuthority {
        get throws { try CertificateAuthority(certificateFile: files.caCertificate, privateKeyFile: files.caPrivateKey) }
    }

    /// Writes a certificate and key issued by this CA; returns (certificate path, key path).
    func issue(_ request: CertificateRequest, named name: String) throws -> (certificate: String, key: String, fingerprint: String) {
        let credentials = try authority.issue(request)
        let certificate = try directory.write("\(name).pem", credentials.certificatePEM)
        let key = try directory.write("\(name).key", credentials.privateKeyPEM)
        return (certificate, key, credentials.publicKeyFingerprint)
    }

    /// The test helper the issue asks for: a server certificate whose notAfter is in the past.
    func issueExpiredServerCertificate() throws -> TLSServerConfiguration {
        let now = Int64(time(nil))
        let request = CertificateRequest(commonName: "localhost", dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"],
                                         notBefore: now - 30 * 86_400, notAfter: now - 86_400)
        let issued = try issue(request, named: "expired")
        return TLSServerConfiguration(certificateChainFile: issued.certificate, privateKeyFile: issued.key)
    }
}

/// Two connected nonblocking AF_UNIX stream sockets.
func socketPair() throws -> (Int32, Int32) {
    var fds: [Int32] = [-1, -1]
    let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
    guard socketpair(AF_UNIX, type, 0, &fds) == 0 else { throw SyscallError("socketpair", errno: errno) }
    return (fds[0], fds[1])
}

enum Side: Equatable {
    case running, done
    case failed(TLSError)
}

/// A server transport and a client stream on the two ends of a socketpair.
final class TLSPair {
    let server: TLSTransport
    let client: TLSClientStream
    private(set) var serverReads = 0

    /// Per-step hook (e.g. a relay moving bytes between two socketpairs).
    var onStep: () throws -> Void = {}

    convenience init(server serverContext: TLSContext, client clientContext: TLSContext, serverName: String? = "localhost",
                     session: TLSSession? = nil) throws {
        let (serverFD, clientFD) = try socketPair()
        try self.init(serverFD: serverFD, clientFD: clientFD, server: serverContext, client: clientContext,
                      serverName: serverName, session: session)
    }

    init(serverFD: Int32, clientFD: Int32, server serverContext: TLSContext, client clientContext: TLSContext,
         serverName: String? = "localhost", session: TLSSession? = nil) throws {
        server = try TLSTransport(fd: serverFD, context: serverContext)
        client = try TLSClientStream(fd: clientFD, context: clientContext, serverName: serverName, session: session)
    }

    /// Steps both sides until each has finished or failed. After one side fails the other keeps
    /// going, so it sees the alert. The server side finishes when its handshake is complete.
    @discardableResult
    func handshake(maxSteps: Int = 1_000) -> (client: Side, server: Side) {
        var clientSide = Side.running
        var serverSide = Side.running
        var scratch = [UInt8](repeating: 0, count: 64)
        var stepsAfterFailure = 0
        for _ in 0..<maxSteps {
            try? onStep()
            if clientSide == .running {
                do {
                    if try client.continueHandshake() { clientSide = .done }
                } catch {
                    clientSide = .failed(error)
                }
            }
            if serverSide == .running {
                do {
                    _ = try scratch.withUnsafeMutableBytes { try server.read(into: $0) }
                    serverReads += 1
                    if server.isHandshakeComplete { serverSide = .done }
                } catch {
                    serverSide = .failed(error as? TLSError ?? TLSError(.connection, "\(error)"))
                }
            }
            if clientSide != .running && serverSide != .running { break }
            // After one side fails, give the other a few steps to read the alert, then stop: it may
            // be waiting for bytes that will never come.
            if case .failed = clientSide { stepsAfterFailure += 1 }
            if case .failed = serverSide { stepsAfterFailure += 1 }
            if stepsAfterFailure > 20 { break }
        }
        return (clientSide, serverSide)
    }

    func handshakeOrThrow() throws {
        let (client, server) = handshake()
        guard client == .done, server == .done else { throw TestFailure("handshake failed: client \(client), server \(server)") }
    }
}

/// Moves `payload` from `writer` to `reader` (both nonblocking, same thread), reading with
/// `readChunk`-byte reads, writing at most `writeChunk` bytes per call. Returns what arrived.
func transfer(_ payload: [UInt8], from writer: Transport, to reader: Transport,
              writeChunk: Int = .max, readChunk: Int = 16 << 10, maxSteps: Int = 1_000_000,
              onStep: () -> Void = {}) throws -> [UInt8] {
    var sent = 0
    var received: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: readChunk)
    var steps = 0
    while received.count < payload.count {
        steps += 1
        if steps > maxSteps { throw TestFailure("transfer stuck: sent \(sent), received \(received.count) of \(payload.count)") }
        onStep()
        if sent < payload.count {
            let end = sent + min(writeChunk, payload.count - sent)
            let result = try payload[sent..<end].withUnsafeBytes { try writer.write(from: $0) }
            if case .processed(let n) = result { sent += n }
        }
        // Drain what can be read now, including plaintext OpenSSL already holds.
        repeat {
            let result = try chunk.withUnsafeMutableBytes { try reader.read(into: $0) }
            guard case .processed(let n) = result else { break }
            if n == 0 { throw TestFailure("peer closed after \(received.count) bytes") }
            received.append(contentsOf: chunk.prefix(n))
        } while reader.hasBufferedPlaintext
    }
    return received
}

/// Reads exactly `count` bytes the peer has already written.
func receive(_ count: Int, from reader: Transport, readChunk: Int = 16 << 10, maxSteps: Int = 100_000) throws -> [UInt8] {
    var received: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: readChunk)
    for _ in 0..<maxSteps where received.count < count {
        let result = try chunk.withUnsafeMutableBytes { try reader.read(into: UnsafeMutableRawBufferPointer(rebasing: $0.prefix(min(readChunk, count - received.count)))) }
        if case .processed(let n) = result {
            if n == 0 { throw TestFailure("peer closed after \(received.count) bytes") }
            received.append(contentsOf: chunk.prefix(n))
        }
    }
    guard received.count == count else { throw TestFailure("received \(received.count) of \(count) bytes") }
    return received
}

/// Writes all of `bytes` (the peer's socket buffer must have room; fine for small messages).
func send(_ bytes: [UInt8], to writer: Transport, maxSteps: Int = 100_000) throws {
    var sent = 0
    for _ in 0..<maxSteps where sent < bytes.count {
        if case .processed(let n) = try bytes[sent...].withUnsafeBytes({ try writer.write(from: $0) }) { sent += n }
    }
    guard sent == bytes.count else { throw TestFailure("sent \(sent) of \(bytes.count) bytes") }
}

func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
}

/// Sits between two socketpairs and forwards at most `bytesPerStep` bytes each way per step, so the
/// endpoints see records split into tiny pieces: client <-> (clientEnd) relay (serverEnd) <-> server.
final class SlowRelay {
    let clientEnd: Int32
    let serverEnd: Int32
    let bytesPerStep: Int
    private(set) var forwarded = 0

    /// Returns the relay and the two descriptors to hand to the client and the server.
    static func make(bytesPerStep: Int = 1) throws -> (relay: SlowRelay, clientFD: Int32, serverFD: Int32) {
        let (clientFD, clientEnd) = try socketPair()
        let (serverEnd, serverFD) = try socketPair()
        return (SlowRelay(clientEnd: clientEnd, serverEnd: serverEnd, bytesPerStep: bytesPerStep), clientFD, serverFD)
    }

    private init(clientEnd: Int32, serverEnd: Int32, bytesPerStep: Int) {
        self.clientEnd = clientEnd
        self.serverEnd = serverEnd
        self.bytesPerStep = bytesPerStep
    }

    deinit {
        Glibc.close(clientEnd)
        Glibc.close(serverEnd)
    }

    /// One step each way; returns whether anything moved.
    @discardableResult
    func step() -> Bool {
        let a = forward(from: clientEnd, to: serverEnd)
        let b = forward(from: serverEnd, to: clientEnd)
        return a || b
    }

    private func forward(from source: Int32, to destination: Int32) -> Bool {
        var buffer = [UInt8](repeating: 0, count: bytesPerStep)
        // Peek first, so a byte is consumed only once the other side has room for it.
        let available = recv(source, &buffer, bytesPerStep, Int32(MSG_PEEK))
        guard available > 0 else { return false }
        let sent = send(destination, buffer, available, Int32(MSG_NOSIGNAL))
        guard sent > 0 else { return false }
        _ = recv(source, &buffer, sent, 0)
        forwarded += sent
        return true
    }
}
