// The seam between a connection and its bytes on the wire. Plain TCP and TLS both move bytes
// between the socket and the connection's buffers through this interface, so the loop, the codec
// and the relay never know which one they talk to.

public protocol Transport: AnyObject {
    var fd: Int32 { get }
    /// Reads plaintext; `.processed(0)` means the peer closed.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> IOResult
    /// Writes plaintext; may accept fewer bytes than offered.
    func write(from buffer: UnsafeRawBufferPointer) throws -> IOResult
    /// Plaintext already decrypted and held inside the transport: epoll will not signal it again,
    /// so the loop must read it this turn.
    var hasBufferedPlaintext: Bool { get }
    /// The transport needs the socket writable to make progress (e.g. a TLS read that must write).
    var needsWritable: Bool { get }
    /// The transport needs to be read before writes can progress.
    var needsReadable: Bool { get }
    /// Best-effort orderly goodbye (TLS close_notify), then close the descriptor.
    func close()
}

/// Plain TCP: straight syscalls.
public final class PlainTransport: Transport {
    public let fd: Int32
    private var closed = false

    public init(fd: Int32) { self.fd = fd }
    deinit { close() }

    @inline(__always) public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> IOResult {
        try Sys.read(fd, buffer)
    }

    @inline(__always) public func write(from buffer: UnsafeRawBufferPointer) throws -> IOResult {
        try Sys.write(fd, buffer)
    }

    public var hasBufferedPlaintext: Bool { false }
    public var needsWritable: Bool { false }
    public var needsReadable: Bool { false }

    public func close() {
        guard !closed else { return }
        closed = true
        Sys.close(fd)
    }
}
