// A minimal OpenSSL socket BIO of our own: SSL reads and writes the connection's socket directly
// (no copy, no per-connection BIO buffers), through recv/send with MSG_NOSIGNAL. The BIO never
// owns the descriptor: the transport that created it closes the fd after freeing the SSL.
//
// Why not SSL_set_fd: OpenSSL's BIO_s_socket writes with write(2), so a peer that went away raises
// SIGPIPE and kills any process that has not ignored it. The server ignores SIGPIPE, but the client
// library runs inside commands such as `sbchat listen | head`, whose SIGPIPE behaviour we must not
// change. send(MSG_NOSIGNAL) turns it into EPIPE for this socket only.
import COpenSSL
import Glibc

enum SocketBIO {
    /// One method table for the process. Created once (static lets are initialised lazily and
    /// thread-safely) and never freed, as OpenSSL expects of BIO_METHODs that live as long as BIOs.
    nonisolated(unsafe) static let method: OpaquePointer = {
        let type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR
        guard let method = BIO_meth_new(type, "switchboard socket") else {
            fatalError("BIO_meth_new failed: out of memory")
        }
        _ = BIO_meth_set_write(method, socketWrite)
        _ = BIO_meth_set_read(method, socketRead)
        _ = BIO_meth_set_ctrl(method, socketControl)
        _ = BIO_meth_set_create(method, { bio in
            BIO_set_init(bio, 0)
            return 1
        })
        _ = BIO_meth_set_destroy(method, { _ in 1 })
        return method
    }()

    /// A BIO over `fd`; the caller hands it to SSL_set_bio, which takes ownership of it.
    static func make(fd: Int32) -> OpaquePointer? {
        guard let bio = BIO_new(method) else { return nil }
        // The descriptor rides in the data pointer (offset by one so fd 0 is not a null pointer):
        // no allocation per connection, nothing to free.
        BIO_set_data(bio, UnsafeMutableRawPointer(bitPattern: Int(fd) + 1))
        BIO_set_init(bio, 1)
        return bio
    }

    @inline(__always)
    static func descriptor(_ bio: OpaquePointer?) -> Int32 {
        Int32(truncatingIfNeeded: Int(bitPattern: BIO_get_data(bio)) - 1)
    }
}

// BIO_FLAGS_RWS is a macro of macros the importer skips; spelled out.
private let retryFlags = Int32(BIO_FLAGS_READ | BIO_FLAGS_WRITE | BIO_FLAGS_IO_SPECIAL | BIO_FLAGS_SHOULD_RETRY)

private func socketWrite(_ bio: OpaquePointer?, _ data: UnsafePointer<CChar>?, _ length: Int32) -> Int32 {
    BIO_clear_flags(bio, retryFlags)
    guard length > 0 else { return 0 }
    let fd = SocketBIO.descriptor(bio)
    while true {
        let sent = send(fd, data, Int(length), Int32(MSG_NOSIGNAL))
        if sent >= 0 { return Int32(sent) }
        switch errno {
        case EINTR: continue
        case EAGAIN, EWOULDBLOCK:
            // Tells SSL_get_error to answer SSL_ERROR_WANT_WRITE.
            BIO_set_flags(bio, Int32(BIO_FLAGS_WRITE | BIO_FLAGS_SHOULD_RETRY))
            return -1
        default:
            // errno stays set: SSL_get_error answers SSL_ERROR_SYSCALL and the caller reads it.
            return -1
        }
    }
}

private func socketRead(_ bio: OpaquePointer?, _ data: UnsafeMutablePointer<CChar>?, _ length: Int32) -> Int32 {
    BIO_clear_flags(bio, retryFlags)
    guard length > 0 else { return 0 }
    let fd = SocketBIO.descriptor(bio)
    while true {
        let received = recv(fd, data, Int(length), 0)
        if received > 0 { return Int32(received) }
        if received == 0 {
            // OpenSSL asks BIO_eof() after a 0 read to tell a TCP close from a retry (ssl3_read_n).
            BIO_set_flags(bio, Int32(BIO_FLAGS_IN_EOF))
            return 0
        }
        switch errno {
        case EINTR: continue
        case EAGAIN, EWOULDBLOCK:
            BIO_set_flags(bio, Int32(BIO_FLAGS_READ | BIO_FLAGS_SHOULD_RETRY))
            return -1
        default:
            return -1
        }
    }
}

private func socketControl(_ bio: OpaquePointer?, _ command: Int32, _ argument: Int, _ pointer: UnsafeMutableRawPointer?) -> Int {
    switch command {
    case BIO_CTRL_FLUSH:
        // Nothing is buffered here: every write went straight to the kernel.
        return 1
    case BIO_CTRL_EOF:
        return BIO_test_flags(bio, Int32(BIO_FLAGS_IN_EOF)) != 0 ? 1 : 0
    case BIO_C_GET_FD:
        let fd = SocketBIO.descriptor(bio)
        pointer?.storeBytes(of: fd, as: Int32.self)
        return Int(fd)
    default:
        // Everything else (kTLS, pending counts, duplication) is unsupported: 0 means "no".
        return 0
    }
}
