// Client-side TLS over a connected socket, for blocking-style callers (ChatConnection, tests,
// tools): `handshake(timeoutMs:)` blocks with poll until done or the deadline; afterwards
// `read`/`write` are nonblocking and the caller polls the fd itself, in the direction
// `needsWritable`/`needsReadable` say, and only when `hasBufferedPlaintext` is false (OpenSSL may
// already hold decrypted bytes that poll will not report).
// Invariants: the socket is switched to nonblocking at init (a blocking SSL_read could wait past
// any deadline for the rest of a record); the stream owns `fd` once init returns and closes it
// exactly once; the name check and SNI are set before the first handshake byte.
import COpenSSL
import CSwitchboard
import Glibc
import SwitchboardIO

public final class TLSClientStream: Transport {
    public let fd: Int32
    public let context: TLSContext
    private var connection: SSLConnection
    private var closed = false

    /// - Parameters:
    ///   - serverName: the host the user asked for. A DNS name is sent as SNI and, when the
    ///     context verifies against a CA, checked against the certificate; an IP literal is
    ///     checked against the certificate's IP SANs (SNI never carries IP addresses, RFC 6066).
    ///   - session: a session from an earlier connection to the same server, to resume.
    /// On throw the caller still owns `fd`.
    public init(fd: Int32, context: TLSContext, serverName: String? = nil, session: TLSSession? = nil) throws(TLSError) {
        precondition(context.role == .client, "TLSClientStream is the client side; servers use TLSTransport")
        self.fd = fd
        self.context = context
        connection = try SSLConnection(context: context, fd: fd)
        SSL_set_connect_state(connection.ssl)
        do throws(TLSError) {
            try configure(serverName: serverName, session: session)
        } catch {
            // Fully initialised, so deinit will run: free the SSL but leave the fd to the caller.
            connection.shutdownAndFree()
            closed = true
            throw error
        }
    }

    private func configure(serverName: String?, session: TLSSession?) throws(TLSError) {
        let ssl = connection.ssl
        do {
            try Sys.setNonBlocking(fd)
        } catch {
            throw TLSError(.io, "cannot make the socket nonblocking: \(error)", errno: (error as? SyscallError)?.errno)
        }
        if let serverName, !serverName.isEmpty {
            let isIPAddress = TLSClientStream.isIPLiteral(serverName)
            if !isIPAddress, csb_SSL_set_tlsext_host_name(ssl, serverName) != 1 {
                throw TLSError.openSSL(.configuration, "cannot send '\(serverName)' as server name (SNI)")
            }
            if !context.verifiesByPinning {
                let ok = isIPAddress ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), serverName)
                                     : SSL_set1_host(ssl, serverName)
                guard ok == 1 else { throw TLSError.openSSL(.configuration, "cannot check the server name '\(serverName)'") }
            }
        }
        if let session, SSL_set_session(ssl, session.handle) != 1 {
            // A session OpenSSL refuses to offer is a caller bug (wrong context, wrong server) worth seeing.
            throw TLSError.openSSL(.configuration, "cannot offer the saved TLS session")
        }
    }

    deinit { close() }

    /// Completes the handshake, waiting at most `timeoutMs` in total.
    public func handshake(timeoutMs: Int32) throws(TLSError) {
        let deadline = Clock.monotonicMs() + UInt64(max(0, timeoutMs))
        while true {
            let events: Int16
            switch try connection.handshakeStep() {
            case .complete: return
            case .wantsReadable: events = Int16(POLLIN)
            case .wantsWritable: events = Int16(POLLOUT)
            }
            let now = Clock.monotonicMs()
            guard now < deadline else {
                let error = TLSError(.timedOut, "the TLS handshake did not finish within \(timeoutMs) ms")
                connection.recordFailure(error)
                throw error
            }
            var pfd = pollfd(fd: fd, events: events, revents: 0)
            if poll(&pfd, 1, Int32(clamping: deadline - now)) < 0 && errno != EINTR {
                throw TLSError.syscall(.io, "poll during the TLS handshake", errno: errno)
            }
        }
    }

    /// One nonblocking handshake step; true when complete. For callers that drive their own loop.
    public func continueHandshake() throws(TLSError) -> Bool {
        try connection.handshakeStep() == .complete
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TLSError) -> IOResult {
        try connection.read(into: buffer)
    }

    public func write(from buffer: UnsafeRawBufferPointer) throws(TLSError) -> IOResult {
        try connection.write(from: buffer)
    }

    public var hasBufferedPlaintext: Bool { connection.pendingPlaintext > 0 }
    public var needsWritable: Bool { connection.readWantsWrite }
    public var needsReadable: Bool { connection.writeWantsRead }

    public var isHandshakeComplete: Bool { connection.isHandshakeComplete }
    public var sessionReused: Bool { connection.sessionReused }
    public var protocolVersion: String { connection.protocolVersion }
    public var cipherName: String { connection.cipherName }
    /// SHA-256 (hex) of the server certificate's SubjectPublicKeyInfo: what pins compare.
    public var peerPublicKeyFingerprint: String? { connection.peerPublicKeyFingerprint }

    /// The session to offer on the next connection, once the server has sent a ticket. TLS 1.3
    /// tickets arrive after the handshake, so this is nil until the first read has processed
    /// them (reading the server's first message is enough).
    public var resumableSession: TLSSession? {
        guard let ssl = connection.ssl, let session = SSL_get1_session(ssl) else { return nil }
        let wrapped = TLSSession(owning: session)
        return wrapped.isResumable && wrapped.hasTicket ? wrapped : nil
    }

    public func close() {
        guard !closed else { return }
        closed = true
        connection.shutdownAndFree()
        Sys.close(fd)
    }

    static func isIPLiteral(_ text: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }
}

/// A TLS session a client can offer to resume. Holds one OpenSSL reference, released on deinit.
public final class TLSSession: @unchecked Sendable {
    // @unchecked: an SSL_SESSION is reference-counted atomically and not modified once OpenSSL
    // hands it out (resumption works on a copy), so sharing it between threads is safe.
    let handle: OpaquePointer

    init(owning handle: OpaquePointer) { self.handle = handle }

    /// Restores a session saved with `derBytes` (e.g. by a client that persists it across runs).
    public convenience init(derBytes: [UInt8]) throws(TLSError) {
        ERR_clear_error()
        let session = derBytes.withUnsafeBufferPointer { buffer -> OpaquePointer? in
            var cursor: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_SSL_SESSION(nil, &cursor, buffer.count)
        }
        guard let session else { throw TLSError.openSSL(.configuration, "cannot decode the saved TLS session") }
        self.init(owning: session)
    }

    deinit { SSL_SESSION_free(handle) }

    public var isResumable: Bool { SSL_SESSION_is_resumable(handle) == 1 }
    /// Servers here resume from tickets only (no server-side cache). A TLS 1.3 session without
    /// one still looks resumable to OpenSSL (it keeps the random legacy session id), but offering
    /// it only wastes bytes.
    public var hasTicket: Bool { SSL_SESSION_has_ticket(handle) == 1 }

    /// DER encoding, including the ticket and the resumption secret: store it like a password.
    public var derBytes: [UInt8] {
        let length = i2d_SSL_SESSION(handle, nil)
        guard length > 0 else { return [] }
        var bytes = [UInt8](repeating: 0, count: Int(length))
        bytes.withUnsafeMutableBufferPointer { buffer in
            var cursor: UnsafeMutablePointer<UInt8>? = buffer.baseAddress
            _ = i2d_SSL_SESSION(handle, &cursor)
        }
        return bytes
    }
}
