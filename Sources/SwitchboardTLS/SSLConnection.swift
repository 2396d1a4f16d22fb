// The SSL object both transports wrap: nonblocking reads, writes and handshake steps, with
// OpenSSL's results mapped to IOResult / TLSError in one place.
// Invariants: `ssl` is freed exactly once (by `shutdownAndFree()` or deinit); after a fatal error no further
// I/O is attempted and no close_notify is sent (OpenSSL forbids SSL_shutdown after SSL_ERROR_SSL
// or SSL_ERROR_SYSCALL); the thread's error queue is cleared before each call, so SSL_get_error
// judges only that call.
import COpenSSL
import CSwitchboard
import Glibc
import SwitchboardIO

struct SSLConnection: ~Copyable {
    enum HandshakeProgress: Equatable { case complete, wantsReadable, wantsWritable }

    private(set) var ssl: OpaquePointer?
    /// The last read stopped because OpenSSL must write first (handshake messages, tickets, alerts).
    private(set) var readWantsWrite = false
    /// The last write stopped because OpenSSL must read first (only during a handshake).
    private(set) var writeWantsRead = false
    /// A fatal error has been reported; the connection is only good for closing.
    private(set) var failure: TLSError?

    init(context: TLSContext, fd: Int32) throws(TLSError) {
        ERR_clear_error()
        guard let ssl = SSL_new(context.handle) else { throw TLSError.openSSL(.configuration, "SSL_new failed") }
        guard let bio = SocketBIO.make(fd: fd) else {
            SSL_free(ssl)
            throw TLSError.openSSL(.configuration, "cannot create the socket BIO")
        }
        // One BIO for both directions; SSL_set_bio takes our single reference.
        SSL_set_bio(ssl, bio, bio)
        self.ssl = ssl
    }

    deinit { if let ssl { SSL_free(ssl) } }

    var isHandshakeComplete: Bool { ssl.map { SSL_is_init_finished($0) == 1 } ?? false }
    var sessionReused: Bool { ssl.map { SSL_session_reused($0) == 1 } ?? false }
    var protocolVersion: String { ssl.map { String(cString: SSL_get_version($0)) } ?? "" }
    var cipherName: String {
        guard let ssl, let cipher = SSL_get_current_cipher(ssl), let name = SSL_CIPHER_get_name(cipher) else { return "" }
        return String(cString: name)
    }
    /// Decrypted bytes held inside OpenSSL. Deliberately not SSL_has_pending: that also counts a
    /// partial record, which only more bytes from the socket can complete; treating it as
    /// readable would spin the loop. Without read-ahead (OpenSSL's default, kept on client contexts)
    /// OpenSSL never holds a complete undecrypted record, so SSL_pending is the whole answer.
    var pendingPlaintext: Int { ssl.map { Int(SSL_pending($0)) } ?? 0 }
    /// With read-ahead (server contexts): decrypted bytes or whole/partial records OpenSSL read from the
    /// socket ahead. A partial record costs the caller one read that answers `.wouldBlock` (one recv
    /// returning EAGAIN), after which it is not reported again until more bytes arrive; no spin.
    var hasPendingInput: Bool { ssl.map { SSL_has_pending($0) == 1 } ?? false }

    var peerPublicKeyFingerprint: String? {
        guard let ssl, let certificate = SSL_get1_peer_certificate(ssl) else { return nil }
        defer { X509_free(certificate) }
        return publicKeyFingerprint(of: certificate)
    }

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws(TLSError) -> IOResult {
        let ssl = try usable()
        // Like read(2): an empty buffer reads nothing (callers never pass one).
        guard buffer.count > 0 else { return .processed(0) }
        ERR_clear_error()
        // A stale errno would be reported for an SSL_ERROR_SYSCALL whose BIO did not set one.
        errno = 0
        var count = 0
        if SSL_read_ex(ssl, buffer.baseAddress, buffer.count, &count) == 1 {
            readWantsWrite = false
            return .processed(count)
        }
        let savedErrno = errno
        switch SSL_get_error(ssl, 0) {
        case SSL_ERROR_WANT_READ:
            readWantsWrite = false
            return .wouldBlock
        case SSL_ERROR_WANT_WRITE:
            readWantsWrite = true
            return .wouldBlock
        case SSL_ERROR_ZERO_RETURN:
            // close_notify, or a bare TCP close (SSL_OP_IGNORE_UNEXPECTED_EOF).
            readWantsWrite = false
            return .processed(0)
        case let code:
            throw fail(code, errno: savedErrno, operation: "read")
        }
    }

    mutating func write(from buffer: UnsafeRawBufferPointer) throws(TLSError) -> IOResult {
        let ssl = try usable()
        guard buffer.count > 0 else { return .processed(0) }
        ERR_clear_error()
        errno = 0
        var count = 0
        if SSL_write_ex(ssl, buffer.baseAddress, buffer.count, &count) == 1 {
            writeWantsRead = false
            return .processed(count)
        }
        let savedErrno = errno
        switch SSL_get_error(ssl, 0) {
        case SSL_ERROR_WANT_WRITE:
            writeWantsRead = false
            return .wouldBlock
        case SSL_ERROR_WANT_READ:
            writeWantsRead = true
            return .wouldBlock
        case SSL_ERROR_ZERO_RETURN:
            // The peer's close_notify arrived while we were writing: an orderly end, not a failure,
            // so close() may still answer with our own close_notify.
            throw TLSError(.connection, "the peer closed the TLS connection")
        case let code:
            throw fail(code, errno: savedErrno, operation: "write")
        }
    }

    /// One nonblocking step of the handshake (explicit; servers also handshake implicitly in read).
    mutating func handshakeStep() throws(TLSError) -> HandshakeProgress {
        let ssl = try usable()
        ERR_clear_error()
        errno = 0
        if SSL_do_handshake(ssl) == 1 { return .complete }
        let savedErrno = errno
        switch SSL_get_error(ssl, 0) {
        case SSL_ERROR_WANT_READ: return .wantsReadable
        case SSL_ERROR_WANT_WRITE: return .wantsWritable
        case SSL_ERROR_ZERO_RETURN:
            throw record(TLSError(.handshake, "the peer closed the connection during the TLS handshake"))
        case let code:
            throw fail(code, errno: savedErrno, operation: "handshake")
        }
    }

    /// Sends close_notify if the connection is healthy (once, nonblocking: a full socket buffer or
    /// a vanished peer just means no goodbye), then frees the SSL. Idempotent.
    mutating func shutdownAndFree() {
        guard let ssl else { return }
        if failure == nil && SSL_is_init_finished(ssl) == 1 {
            ERR_clear_error()
            _ = SSL_shutdown(ssl)
        }
        ERR_clear_error()
        SSL_free(ssl)
        self.ssl = nil
    }

    mutating func recordFailure(_ error: TLSError) { failure = error }

    private func usable() throws(TLSError) -> OpaquePointer {
        if let failure { throw failure }
        guard let ssl else { throw TLSError(.connection, "the TLS connection is closed") }
        return ssl
    }

    private mutating func record(_ error: TLSError) -> TLSError {
        failure = error
        return error
    }

    private mutating func fail(_ code: Int32, errno savedErrno: Int32, operation: String) -> TLSError {
        guard let ssl else { return TLSError(.connection, "the TLS connection is closed") }
        let inHandshake = SSL_is_init_finished(ssl) != 1
        let stage = inHandshake ? "TLS handshake" : "TLS \(operation)"
        let queue = TLSError.drainErrorQueue()
        let verifyResult = SSL_get_verify_result(ssl)
        let error: TLSError
        // Only meaningful when we asked for verification: a pinning client runs with
        // SSL_VERIFY_NONE and always has a "failed" result it chose to ignore.
        let verifying = SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER != 0
        if verifying && verifyResult != X509_V_OK && inHandshake {
            let reason = String(cString: X509_verify_cert_error_string(verifyResult))
            error = TLSError(.certificateVerification, "\(stage) failed: certificate verification failed: \(reason)",
                             openSSLErrors: queue)
        } else if code == SSL_ERROR_SYSCALL {
            if savedErrno == 0 && queue.isEmpty {
                error = TLSError(inHandshake ? .handshake : .connection, "\(stage) failed: unexpected end of stream",
                                 openSSLErrors: queue)
            } else {
                error = TLSError(.io, "\(stage) failed: \(String(cString: strerror(savedErrno)))",
                                 openSSLErrors: queue, errno: savedErrno)
            }
        } else if code == SSL_ERROR_SSL {
            // The first entry is the root cause ("unsupported protocol", "tlsv1 alert unknown ca");
            // its reason is the text after the last ':' of "error:CODE:LIBRARY:FUNCTION:REASON".
            let reason = queue.first.flatMap { $0.split(separator: ":", omittingEmptySubsequences: false).last }
                .map { ": " + $0 } ?? ""
            error = TLSError(inHandshake ? .handshake : .connection, "\(stage) failed\(reason)", openSSLErrors: queue)
        } else {
            error = TLSError(.connection, "\(stage) failed: unexpected SSL_get_error \(code)", openSSLErrors: queue)
        }
        return record(error)
    }
}
