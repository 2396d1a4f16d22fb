// Numeric socket addresses only: resolving names would block, and the loop never blocks. Clients
// that accept host names resolve them before they reach this type.
import CSwitchboard
import Glibc

public enum AddressError: Error, CustomStringConvertible, Sendable, Equatable {
    case malformed(String)
    public var description: String {
        switch self { case .malformed(let s): return "expected HOST:PORT with a numeric IPv4 or [IPv6] host, got '\(s)'" }
    }
}

public struct SocketAddress: Sendable, Equatable, CustomStringConvertible {
    public enum Family: Sendable, Equatable { case v4(sockaddr_in), v6(sockaddr_in6)
        public static func == (a: Family, b: Family) -> Bool {
            switch (a, b) {
            case (.v4(var x), .v4(var y)): return memcmp(&x, &y, MemoryLayout<sockaddr_in>.size) == 0
            case (.v6(var x), .v6(var y)): return memcmp(&x, &y, MemoryLayout<sockaddr_in6>.size) == 0
            default: return false
            }
        }
    }
    public var family: Family

    /// Parses "127.0.0.1:7878", "[::1]:7878" or "localhost:7878" (as 127.0.0.1).
    public init(parsing text: String) throws {
        var host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw AddressError.malformed(text)
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw AddressError.malformed(text) }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let port = UInt16(portText) else { throw AddressError.malformed(text) }
        if host == "localhost" { host = "127.0.0.1" }
        var v4 = sockaddr_in()
        if inet_pton(AF_INET, String(host), &v4.sin_addr) == 1 {
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = port.bigEndian
            family = .v4(v4)
            return
        }
        var v6 = sockaddr_in6()
        if inet_pton(AF_INET6, String(host), &v6.sin6_addr) == 1 {
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = port.bigEndian
            family = .v6(v6)
            return
        }
        throw AddressError.malformed(text)
    }

    public init(storage: sockaddr_storage) {
        var storage = storage
        if Int32(storage.ss_family) == AF_INET6 {
            family = .v6(withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) })
        } else {
            family = .v4(withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) })
        }
    }

    public var port: UInt16 {
        switch family {
        case .v4(let a): return UInt16(bigEndian: a.sin_port)
        case .v6(let a): return UInt16(bigEndian: a.sin6_port)
        }
    }

    public var isLoopback: Bool {
        switch family {
        case .v4(let a): return UInt32(bigEndian: a.sin_addr.s_addr) >> 24 == 127
        case .v6(var a):
            var loop = in6addr_loopback
            return memcmp(&a.sin6_addr, &loop, MemoryLayout<in6_addr>.size) == 0
        }
    }

    public var host: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch family {
        case .v4(var a): inet_ntop(AF_INET, &a.sin_addr, &buffer, socklen_t(buffer.count))
        case .v6(var a): inet_ntop(AF_INET6, &a.sin6_addr, &buffer, socklen_t(buffer.count))
        }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public var description: String {
        switch family {
        case .v4: return "\(host):\(port)"
        case .v6: return "[\(host)]:\(port)"
        }
    }

    var domain: Int32 { switch family { case .v4: return AF_INET; case .v6: return AF_INET6 } }

    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        switch family {
        case .v4(var a):
            return try withUnsafePointer(to: &a) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        case .v6(var a):
            return try withUnsafePointer(to: &a) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
    }
}

public enum Socket {
    /// A nonblocking listening TCP socket with SO_REUSEADDR.
    public static func listen(on address: SocketAddress, backlog: Int32 = 4096) throws -> Int32 {
        let fd = try Sys.checkInt32("socket") {
            socket(address.domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        do {
            try Sys.setOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
            _ = try Sys.checkInt32("bind") { address.withSockAddr { Glibc.bind(fd, $0, $1) } }
            _ = try Sys.checkInt32("listen") { Glibc.listen(fd, backlog) }
        } catch {
            Sys.close(fd)
            throw error
        }
        return fd
    }

    /// Accepts one connection (nonblocking, close-on-exec) or returns nil when none is waiting.
    public static func accept(_ listenFD: Int32) throws -> (fd: Int32, peer: SocketAddress)? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        while true {
            let fd = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { csb_accept4_nonblocking(listenFD, $0, &length) }
            }
            if fd >= 0 { return (fd, SocketAddress(storage: storage)) }
            let code = Glibc.errno
            switch code {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return nil
            // The peer gave up before we accepted: not an error of ours, try the next one.
            case ECONNABORTED, EPROTO: continue
            default:
                precondition(code != EBADF && code != EFAULT, "accept4: errno \(code)")
                throw SyscallError("accept4", errno: code)
            }
        }
    }

    /// A blocking connect (used by clients, never by the server loop), optionally from a source address
    /// (e.g. 127.0.0.2, to be seen under another loopback address).
    public static func connectBlocking(to address: SocketAddress, from source: SocketAddress? = nil) throws -> Int32 {
        let fd = try Sys.checkInt32("socket") {
            socket(address.domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        do {
            if let source {
                _ = try Sys.checkInt32("bind") { source.withSockAddr { Glibc.bind(fd, $0, $1) } }
            }
            _ = try Sys.checkInt32("connect") { address.withSockAddr { Glibc.connect(fd, $0, $1) } }
            try? Sys.setOption(fd, level: Int32(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
        } catch {
            Sys.close(fd)
            throw error
        }
        return fd
    }

    /// Starts a nonblocking connect from an optional source address; completion shows as EPOLLOUT.
    public static func connectNonBlocking(to address: SocketAddress, from source: SocketAddress? = nil) throws -> Int32 {
        let fd = try Sys.checkInt32("socket") {
            socket(address.domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        do {
            try? Sys.setOption(fd, level: Int32(IPPROTO_TCP), name: TCP_NODELAY, value: 1)
            if let source {
                try? Sys.setOption(fd, level: SOL_SOCKET, name: SO_REUSEADDR, value: 1)
                _ = try Sys.checkInt32("bind") { source.withSockAddr { Glibc.bind(fd, $0, $1) } }
            }
            let rc = address.withSockAddr { Glibc.connect(fd, $0, $1) }
            if rc != 0 && Glibc.errno != EINPROGRESS { throw SyscallError("connect", errno: Glibc.errno) }
        } catch {
            Sys.close(fd)
            throw error
        }
        return fd
    }

    public static func localAddress(_ fd: Int32) throws -> SocketAddress {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try Sys.checkInt32("getsockname") {
            withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        }
        return SocketAddress(storage: storage)
    }

    /// Pending socket error (SO_ERROR), e.g. after a nonblocking connect.
    public static func pendingError(_ fd: Int32) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &length)
        return value
    }
}
