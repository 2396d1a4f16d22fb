// Server-side TLS on an accepted nonblocking socket, driven by the level-triggered epoll loop
// through the `Transport` seam. The handshake happens implicitly inside the first reads (and
// writes); the loop never calls a handshake function.
// Invariants: the transport owns `fd` once init returns and closes it exactly once, after freeing
// the SSL; it keeps its TLSContext (and so the SSL_CTX and ticket ring) alive while it exists.
//
// fd-backed, not memory BIOs: OpenSSL reads and writes the socket itself through `SocketBIO`
// (recv/send with MSG_NOSIGNAL). That saves a copy of every byte in each direction, and, with
// SSL_MODE_RELEASE_BUFFERS, an idle connection holds no 16 KiB record buffers at all, where a
// memory-BIO pair would keep its own buffers per connection. Memory BIOs would let the loop batch
// syscalls; the loop does not need that (it already writes each connection once per turn), and
// the one-byte-at-a-time tests drive this transport over a socket relay instead.
// Read-ahead (server contexts, see TLSContext.readAhead): OpenSSL reads up to its 16 KiB+ buffer per
// recv and decrypts record by record from it, where without it each record cost two recv calls (header,
// then body). The records it holds undecrypted are what `hasBufferedPlaintext` reports (SSL_has_pending),
// so the loop reads again this turn instead of waiting for an epoll event that will not come.
//
// Contract for the loop:
// - `read` returning `.wouldBlock` with `needsWritable` set: watch EPOLLOUT and call `read`
//   again when writable (the handshake or a reply needs to go out before reading continues).
// - `write` returning `.wouldBlock` with `needsReadable` set: call `write` again after the next
//   readable event (only possible during the handshake).
// - After `.wouldBlock` from `write`, retry with the same bytes (at the same or a moved address,
//   at least as many): OpenSSL has already sealed the record and will send those bytes.
// - `hasBufferedPlaintext`: read again this turn; epoll will not report those bytes. With read-ahead it
//   is also true for a partial record; that extra read answers `.wouldBlock` and the flag clears.
// - `isHandshakeComplete` false after the handshake timeout: close the connection.
import COpenSSL
import Glibc
import SwitchboardIO

public final class TLSTransport: Transport {
    public let fd: Int32
    public let context: TLSContext
    private var connection: SSLConnection
    private var closed = false

    /// Wraps an accepted socket (already nonblocking). On throw the caller still owns `fd`.
    public init(fd: Int32, context: TLSContext) throws(TLSError) {
        precondition(context.role == .server, "TLSTransport is the server side; clients use TLSClientStream")
        self.fd = fd
        self.context = context
        connection = try SSLConnection(context: context, fd: fd)
        SSL_set_accept_state(connection.ssl)
    }

    deinit { close() }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TLSError) -> IOResult {
        try connection.read(into: buffer)
    }

    public func write(from buffer: UnsafeRawBufferPointer) throws(TLSError) -> IOResult {
        try connection.write(from: buffer)
    }

    public var hasBufferedPlaintext: Bool {
        context.readAhead ? connection.hasPendingInput : connection.pendingPlaintext > 0
    }
    public var needsWritable: Bool { connection.readWantsWrite }
    public var needsReadable: Bool { connection.writeWantsRead }

    public var isHandshakeComplete: Bool { connection.isHandshakeComplete }
    /// True when the client resumed a session from a ticket (abbreviated handshake).
    public var sessionReused: Bool { connection.sessionReused }
    /// "TLSv1.3", "TLSv1.2"; meaningful once the handshake is complete.
    public var protocolVersion: String { connection.protocolVersion }
    public var cipherName: String { connection.cipherName }
    /// The client certificate's key fingerprint, when client certificates are required.
    public var peerPublicKeyFingerprint: String? { connection.peerPublicKeyFingerprint }

    /// close_notify (best effort, never blocks), free the SSL, close the descriptor.
    public func close() {
        guard !closed else { return }
        closed = true
        connection.shutdownAndFree()
        Sys.close(fd)
    }
}
