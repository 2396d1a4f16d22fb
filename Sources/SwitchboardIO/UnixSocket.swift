// Unix-domain stream sockets for the local admin channel: a listener bound to a path with mode 0600
// (stale socket files of a dead server are replaced; a live one is never taken over), a blocking
// connect for the command-line client, and the peer's credentials.
// Invariants: the listener is nonblocking and close-on-exec; it is created under umask 077, so the
// path never exists with a wider mode, and chmod'ed 0600 again after bind.
import CSwitchboard
import Glibc

public enum UnixSocketError: Error, CustomStringConvertible {
    case pathTooLong(String)
    case inUse(String)
    public var description: String {
        switch self {
        case .pathTooLong(let path): return "socket path too long (at most 107 bytes): \(path)"
        case .inUse(let path): return "\(path) is answered by a running server (another server uses this data folder)"
        }
    }
}

public enum UnixSocket {
    static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) throws -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { throw UnixSocketError.pathTooLong(path) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
        return try withUnsafePointer(to: &address) {
            try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, length) }
        }
    }

    /// A blocking connection to the socket at `path` (for clients).
    public static func connect(path: String) throws -> Int32 {
        let fd = try Sys.checkInt32("socket") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        do {
            _ = try withAddress(path) { address, length in
                try Sys.checkInt32("connect(\(path))") { Glibc.connect(fd, address, length) }
            }
        } catch {
            Sys.close(fd)
            throw error
        }
        return fd
    }

    /// Whether a server answers at `path` (a connect succeeds).
    public static func isAnswered(path: String) -> Bool {
        guard let fd = try? connect(path: path) else { return false }
        Sys.close(fd)
        return true
    }

    /// A nonblocking listener at `path`, mode 0600. A socket file nobody answers is removed first; one
    /// a live process answers is refused (`inUse`), as is any path that exists and is not a socket.
    public static func listen(path: String, backlog: Int32 = 64) throws -> Int32 {
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK else {
                throw SyscallError("\(path) exists and is not a socket; refusing to replace it", errno: EEXIST)
            }
            if isAnswered(path: path) { throw UnixSocketError.inUse(path) }
            unlink(path)
        }
        let fd = try Sys.checkInt32("socket") {
            socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        do {
            let previous = umask(0o077)
            defer { umask(previous) }
            _ = try withAddress(path) { address, length in
                try Sys.checkInt32("bind(\(path))") { Glibc.bind(fd, address, length) }
            }
            _ = try Sys.checkInt32("chmod(\(path))") { chmod(path, 0o600) }
            _ = try Sys.checkInt32("listen") { Glibc.listen(fd, backlog) }
        } catch {
            Sys.close(fd)
            throw error
        }
        return fd
    }

    /// Accepts one connection (nonblocking, close-on-exec) or nil when none is waiting.
    public static func accept(_ listenFD: Int32) throws -> Int32? {
        while true {
            let fd = csb_accept4_nonblocking(listenFD, nil, nil)
            if fd >= 0 { return fd }
            switch Glibc.errno {
            case EINTR, ECONNABORTED, EPROTO: continue
            case EAGAIN, EWOULDBLOCK: return nil
            case let code: throw SyscallError("accept4", errno: code)
            }
        }
    }

    /// The connected peer's user id (SO_PEERCRED), nil if the kernel does not say.
    public static func peerUserID(_ fd: Int32) -> uid_t? {
        var uid: UInt32 = 0
        guard csb_peer_uid(fd, &uid) == 0 else { return nil }
        return uid_t(uid)
    }
}
