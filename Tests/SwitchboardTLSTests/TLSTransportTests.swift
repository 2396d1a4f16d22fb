// The server transport and the client stream against each other over real OpenSSL: handshake,
// data both ways, records split into single bytes, large payloads, the want-read/want-write
// flags, refused protocol versions, plaintext on the TLS port, close_notify.

import Foundation
import Glibc
@testable import SwitchboardTLS
import SwitchboardIO
import CSwitchboard
import Testing

@Suite struct TLSTransportTests {
    @Test func handshakeAndDataBothWays() throws {
        let certificates = try Certificates()
        let pair = try TLSPair(server: try certificates.serverContext(), client: try certificates.verifyingClientContext())
        #expect(!pair.server.isHandshakeComplete)
        try pair.handshakeOrThrow()

        #expect(pair.server.protocolVersion == "TLSv1.3")
        #expect(pair.client.protocolVersion == "TLSv1.3")
        #expect(!pair.server.sessionReused && !pair.client.sessionReused)
        #expect(pair.client.peerPublicKeyFingerprint == certificates.files.serverPublicKeyFingerprint)

        let hello = Array("hello from the client".utf8)
        #expect(try transfer(hello, from: pair.client, to: pair.server) == hello)
        let answer = Array("and hello back from the server".utf8)
        #expect(try transfer(answer, from: pair.server, to: pair.client) == answer)
        #expect(!pair.server.needsWritable && !pair.server.needsReadable)
    }

    @Test func recordsSplitIntoSingleBytesStillDecode() throws {
        let certificates = try Certificates()
        let (relay, clientFD, serverFD) = try SlowRelay.make(bytesPerStep: 1)
        let pair = try TLSPair(serverFD: serverFD, clientFD: clientFD, server: try certificates.serverContext(),
                               client: try certificates.verifyingClientContext())
        pair.onStep = { relay.step() }
        let (client, server) = pair.handshake(maxSteps: 100_000)
        #expect(client == .done)
        #expect(server == .done)
        // The handshake flights are hundreds of bytes; one byte per step means the server's
        // state machine was re-entered at (nearly) every byte boundary.
        #expect(pair.serverReads > 500)
        #expect(relay.forwarded > 1_000)

        // Client → server: every byte its own record (1-byte writes), delivered a byte at a time,
        // read with a 1-byte buffer.
        let message = Array("split into the smallest pieces the wire allows".utf8)
        let atServer = try transfer(message, from: pair.client, to: pair.server, writeChunk: 1, readChunk: 1,
                                    onStep: { relay.step() })
        #expect(atServer == message)

        // Server → client: one record, delivered a byte at a time, read 3 bytes per call.
        let reply = randomBytes(4_000)
        let atClient = try transfer(reply, from: pair.server, to: pair.client, readChunk: 3, onStep: { relay.step() })
        #expect(atClient == reply)
    }

    @Test func payloadOf64KiBCrossesSeveralRecords() throws {
        let certificates = try Certificates()
        let pair = try TLSPair(server: try certificates.serverContext(), client: try certificates.verifyingClientContext())
        try pair.handshakeOrThrow()

        // 64 KiB exceeds the 16 KiB record limit four times over.
        let payload = randomBytes(64 << 10)
        #expect(try transfer(payload, from: pair.client, to: pair.server, readChunk: 5_000) == payload)
        #expect(try transfer(payload, from: pair.server, to: pair.client, readChunk: 16 << 10) == payload)
    }

    @Test func decryptedBytesHeldByOpenSSLAreReported() throws {
        let certificates = try Certificates()
        let pair = try TLSPair(server: try certificates.serverContext(), client: try certificates.verifyingClientContext())
        try pair.handshakeOrThrow()

        // One 10 000-byte record; a 100-byte read decrypts it all and hands out the first 100.
        let payload = randomBytes(10_000)
        try send(payload, to: pair.client)
        var small = [UInt8](repeating: 0, count: 100)
        let first = try small.withUnsafeMutableBytes { try pair.server.read(into: $0) }
        #expect(first == .processed(100))
        #expect(pair.server.hasBufferedPlaintext)

        // The rest comes without any new socket data: the client is not writing anymore.
        var rest: [UInt8] = Array(small)
        while pair.server.hasBufferedPlaintext {
            let result = try small.withUnsafeMutableBytes { try pair.server.read(into: $0) }
            guard case .processed(let n) = result, n > 0 else { Issue.record("expected buffered bytes, got \(result)"); break }
            rest.append(contentsOf: small.prefix(n))
        }
        #expect(rest == payload)
        var one = [UInt8](repeating: 0, count: 1)
        #expect(try one.withUnsafeMutableBytes { try pair.server.read(into: $0) } == .wouldBlock)
    }

    /// Read-ahead: one recv takes all three records; the two not yet decrypted must still be reported, or the
    /// loop would wait for an epoll event that never comes (the client sends nothing more).
    @Test func recordsReadAheadButNotDecryptedAreReported() throws {
        let certificates = try Certificates()
        let context = try certificates.serverContext()
        #expect(context.readAhead)
        let pair = try TLSPair(server: context, client: try certificates.verifyingClientContext())
        try pair.handshakeOrThrow()

        let records = [randomBytes(700), randomBytes(900), randomBytes(1_100)]
        for record in records { try send(record, to: pair.client) }
        usleep(50_000)
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        var received: [UInt8] = []
        var reads = 0
        repeat {
            let result = try buffer.withUnsafeMutableBytes { try pair.server.read(into: $0) }
            guard case .processed(let n) = result, n > 0 else { Issue.record("expected buffered records, got \(result)"); break }
            received.append(contentsOf: buffer.prefix(n))
            reads += 1
        } while pair.server.hasBufferedPlaintext && reads < 10
        let expected = records.flatMap { $0 }
        let allThree = received == expected
        #expect(allThree, "read \(received.count) of \(expected.count) bytes in \(reads) reads")
        #expect(!pair.server.hasBufferedPlaintext)
        #expect(try buffer.withUnsafeMutableBytes { try pair.server.read(into: $0) } == .wouldBlock)
    }

    @Test func aReadThatMustWriteAsksForWritable() throws {
        let certificates = try Certificates()
        // A certificate of several KiB and a small send buffer: the server's first flight cannot
        // go out in one piece while the client is not reading.
        let names = (0..<300).map { "host-\($0).switchboard.example" }
        let big = try certificates.issue(.server(names: ["localhost"] + names), named: "big")
        let context = try TLSContext(server: TLSServerConfiguration(certificateChainFile: big.certificate, privateKeyFile: big.key))
        let (serverFD, clientFD) = try socketPair()
        try Sys.setOption(serverFD, level: SOL_SOCKET, name: SO_SNDBUF, value: 4_096)
        let pair = try TLSPair(serverFD: serverFD, clientFD: clientFD, server: context,
                               client: try certificates.verifyingClientContext())

        #expect(try pair.client.continueHandshake() == false)  // ClientHello sent
        var scratch = [UInt8](repeating: 0, count: 64)
        var sawNeedsWritable = false
        for _ in 0..<10 {
            let result = try scratch.withUnsafeMutableBytes { try pair.server.read(into: $0) }
            #expect(result == .wouldBlock)
            if pair.server.needsWritable { sawNeedsWritable = true; break }
        }
        #expect(sawNeedsWritable)

        // Once the client reads, the server's retried read finishes the handshake.
        try pair.handshakeOrThrow()
        #expect(!pair.server.needsWritable)
        let message = Array("after a blocked flight".utf8)
        #expect(try transfer(message, from: pair.client, to: pair.server) == message)
    }

    @Test func aWriteBeforeTheHandshakeAsksForReadable() throws {
        let certificates = try Certificates()
        let pair = try TLSPair(server: try certificates.serverContext(), client: try certificates.verifyingClientContext())
        let early = Array("too early".utf8)
        // No ClientHello yet: the server's write drives the handshake, which must read first.
        #expect(try early.withUnsafeBytes { try pair.server.write(from: $0) } == .wouldBlock)
        #expect(pair.server.needsReadable)

        try pair.handshakeOrThrow()
        #expect(try transfer(early, from: pair.server, to: pair.client) == early)
        #expect(!pair.server.needsReadable)
    }

    @Test func tls12ClientGetsAnECDHEAEADCipher() throws {
        let certificates = try Certificates()
        var configuration = TLSClientConfiguration(verification: .certificateAuthority(file: certificates.files.caCertificate))
        configuration.maximumVersion = csb_TLS1_2_VERSION()
        let pair = try TLSPair(server: try certificates.serverContext(), client: try TLSContext(client: configuration))
        try pair.handshakeOrThrow()
        #expect(pair.server.protocolVersion == "TLSv1.2")
        // Server preference: the first ECDSA suite of the configured list.
        #expect(pair.server.cipherName == "ECDHE-ECDSA-AES128-GCM-SHA256")
        let message = Array("tls 1.2 still works".utf8)
        #expect(try transfer(message, from: pair.client, to: pair.server) == message)
    }

    @Test func tls11OnlyClientIsRefused() throws {
        let certificates = try Certificates()
        var configuration = TLSClientConfiguration(verification: .certificateAuthority(file: certificates.files.caCertificate))
        configuration.minimumVersion = csb_TLS1_1_VERSION()
        configuration.maximumVersion = csb_TLS1_1_VERSION()
        // OpenSSL 3 disables TLS 1.1 below security level 0; lower it so this client really
        // offers TLS 1.1 and the refusal we see is the server's.
        configuration.cipherList = "DEFAULT:@SECLEVEL=0"
        let pair = try TLSPair(server: try certificates.serverContext(), client: try TLSContext(client: configuration))
        let (client, server) = pair.handshake()
        guard case .failed(let serverError) = server else { Issue.record("server accepted TLS 1.1: \(server)"); return }
        #expect(serverError.kind == .handshake)
        #expect(serverError.description.contains("unsupported protocol"))
        guard case .failed(let clientError) = client else { Issue.record("client: \(client)"); return }
        #expect(clientError.description.contains("protocol version"))
    }

    @Test(arguments: [
        "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "\u{0}\u{0}\u{0}\u{5}\u{1}hello",
        String(repeating: "x", count: 600),
    ])
    func plaintextOnTheTLSPortIsAnErrorNotACrash(_ text: String) throws {
        let certificates = try Certificates()
        let (serverFD, clientFD) = try socketPair()
        defer { Glibc.close(clientFD) }
        let server = try TLSTransport(fd: serverFD, context: try certificates.serverContext())
        let bytes = Array(text.utf8)
        #expect(send(clientFD, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count)

        var buffer = [UInt8](repeating: 0, count: 4096)
        let error = #expect(throws: TLSError.self) {
            // The first bytes are enough for OpenSSL to see this is no TLS record.
            for _ in 0..<10 { _ = try buffer.withUnsafeMutableBytes { try server.read(into: $0) } }
        }
        #expect(error?.kind == .handshake)
        #expect(error?.openSSLErrors.isEmpty == false)
        // The transport stays failed, and closing it is clean.
        #expect(throws: TLSError.self) { _ = try buffer.withUnsafeMutableBytes { try server.read(into: $0) } }
        server.close()
        // No close_notify after a fatal error: at most an alert, never a hang or a crash.
        var tail = [UInt8](repeating: 0, count: 64)
        _ = recv(clientFD, &tail, tail.count, 0)
    }

    @Test func closeSendsCloseNotify() throws {
        let certificates = try Certificates()
        let pair = try TLSPair(server: try certificates.serverContext(), client: try certificates.verifyingClientContext())
        try pair.handshakeOrThrow()
        pair.server.close()
        pair.server.close()  // idempotent
        var buffer = [UInt8](repeating: 0, count: 64)
        var result = IOResult.wouldBlock
        for _ in 0..<10 where result == .wouldBlock {
            result = try buffer.withUnsafeMutableBytes { try pair.client.read(into: $0) }
        }
        #expect(result == .processed(0))
    }

    @Test func abruptCloseReadsAsEndOfStream() throws {
        let certificates = try Certificates()
        let (serverFD, clientFD) = try socketPair()
        let server = try TLSTransport(fd: serverFD, context: try certificates.serverContext())
        let client = try TLSClientStream(fd: clientFD, context: try certificates.verifyingClientContext(), serverName: "localhost")
        var done = false
        var scratch = [UInt8](repeating: 0, count: 16)
        for _ in 0..<100 where !done {
            done = try client.continueHandshake()
            _ = try scratch.withUnsafeMutableBytes { try server.read(into: $0) }
        }
        #expect(done)
        // The client process dies: no close_notify, just a TCP close.
        Glibc.shutdown(clientFD, Int32(SHUT_RDWR))
        var result = IOResult.wouldBlock
        for _ in 0..<10 where result == .wouldBlock {
            result = try scratch.withUnsafeMutableBytes { try server.read(into: $0) }
        }
        #expect(result == .processed(0))
        client.close()
    }

    @Test func clientHandshakeTimesOutAgainstASilentServer() throws {
        let certificates = try Certificates()
        let (silentFD, clientFD) = try socketPair()
        defer { Glibc.close(silentFD) }
        let client = try TLSClientStream(fd: clientFD, context: try certificates.verifyingClientContext(), serverName: "localhost")
        let started = Clock.monotonicMs()
        let error = #expect(throws: TLSError.self) { try client.handshake(timeoutMs: 150) }
        #expect(error?.kind == .timedOut)
        // A lower bound only: a slow machine may take longer, never shorter.
        #expect(Clock.monotonicMs() - started >= 140)
    }

    /// The whole path over real TCP on loopback: a blocking client with `handshake(timeoutMs:)`,
    /// and a server thread that drives its transport with poll the way the epoll loop must
    /// (EPOLLOUT when `needsWritable`, drain `hasBufferedPlaintext`). The server echoes.
    @Test func loopbackEchoWithBlockingClient() throws {
        let certificates = try Certificates()
        let serverContext = try certificates.serverContext()
        let listener = try Socket.listen(on: try SocketAddress(parsing: "127.0.0.1:0"))
        let port = try Socket.localAddress(listener).port
        let done = DispatchSemaphore(value: 0)
        let failure = Box<String?>(nil)
        Thread.detachNewThread { [listener] in
            defer { Glibc.close(listener); done.signal() }
            do { try echoServer(listener: listener, context: serverContext) } catch { failure.value = "\(error)" }
        }

        let fd = try Socket.connectBlocking(to: try SocketAddress(parsing: "127.0.0.1:\(port)"))
        let client = try TLSClientStream(fd: fd, context: try certificates.verifyingClientContext(), serverName: "127.0.0.1")
        try client.handshake(timeoutMs: 30_000)
        let payload = randomBytes(100_000)
        var echoed: [UInt8] = []
        var sent = 0
        var buffer = [UInt8](repeating: 0, count: 8192)
        while echoed.count < payload.count {
            if sent < payload.count {
                if case .processed(let n) = try payload[sent...].withUnsafeBytes({ try client.write(from: $0) }) { sent += n }
            }
            if !client.hasBufferedPlaintext {
                var pfd = pollfd(fd: fd, events: Int16(client.needsWritable ? POLLOUT : POLLIN) | Int16(sent < payload.count ? POLLOUT : 0), revents: 0)
                guard poll(&pfd, 1, 30_000) > 0 else { throw TestFailure("no echo within 30 s") }
            }
            if case .processed(let n) = try buffer.withUnsafeMutableBytes({ try client.read(into: $0) }) {
                if n == 0 { throw TestFailure("server closed early") }
                echoed.append(contentsOf: buffer.prefix(n))
            }
        }
        #expect(echoed == payload)
        client.close()
        done.wait()
        #expect(failure.value == nil)
    }
}

final class Box<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

/// Accepts one connection and echoes it until the peer closes, honouring the transport's flags.
private func echoServer(listener: Int32, context: TLSContext) throws {
    var pfd = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
    guard poll(&pfd, 1, 30_000) > 0, let (fd, _) = try Socket.accept(listener) else { throw TestFailure("no client") }
    let transport = try TLSTransport(fd: fd, context: context)
    defer { transport.close() }
    let pending = ByteBuffer(capacity: 1 << 16)
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        if !transport.hasBufferedPlaintext {
            var events = Int16(POLLIN)
            if pending.readableBytes > 0 || transport.needsWritable { events |= Int16(POLLOUT) }
            var p = pollfd(fd: fd, events: events, revents: 0)
            guard poll(&p, 1, 30_000) > 0 else { throw TestFailure("server idle for 30 s") }
        }
        // Read (also when only writable and the transport asked for it: the handshake continues).
        switch try buffer.withUnsafeMutableBytes({ try transport.read(into: $0) }) {
        case .processed(0): return
        case .processed(let n): pending.writeBytes(Array(buffer.prefix(n)))
        case .wouldBlock: break
        }
        while pending.readableBytes > 0 {
            guard case .processed(let n) = try transport.write(from: pending.readableView) else { break }
            pending.moveReaderIndex(forwardBy: n)
        }
    }
}
