// Thin wrappers over the syscalls the loop uses. Every wrapper retries EINTR, maps EAGAIN to
// `.wouldBlock`, traps on EBADF/EFAULT (a bug here, never a peer's doing) and throws `SyscallError`
// carrying the call's name and errno for everything else.
import CSwitchboard
import Glibc

@inline(__always)
private func isProgrammerError(_ code: Int32) -> Bool { code == EBADF || code == EFAULT }

public enum Sys {
    @inline(__always)
    static func check(_ call: String, _ body: () -> Int) throws -> IOResult {
        while true {
            let result = body()
            if result >= 0 { return .processed(result) }
            let code = Glibc.errno
            switch code {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return .wouldBlock
            default:
                precondition(!isProgrammerError(code), "\(call): \(SyscallError(call, errno: code))")
                throw SyscallError(call, errno: code)
            }
        }
    }

    @inline(__always)
    static func checkInt32(_ call: String, _ body: () -> Int32) throws -> Int32 {
        while true {
            let result = body()
            if result >= 0 { return result }
            let code = Glibc.errno
            if code == EINTR { continue }
            precondition(!isProgrammerError(code), "\(call): \(SyscallError(call, errno: code))")
            throw SyscallError(call, errno: code)
        }
    }

    public static func read(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer) throws -> IOResult {
        try check("read") { Glibc.read(fd, buffer.baseAddress, buffer.count) }
    }

    public static func write(_ fd: Int32, _ buffer: UnsafeRawBufferPointer) throws -> IOResult {
        // send(MSG_NOSIGNAL) so a peer that went away yields EPIPE, never SIGPIPE.
        try check("send") { Glibc.send(fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL)) }
    }

    public static func close(_ fd: Int32) {
        // close(2) must not be retried on EINTR on Linux: the descriptor is already gone.
        _ = Glibc.close(fd)
    }

    /// Half-closes a socket for writing (FIN after what is queued); errors are ignored (the peer may be gone).
    public static func shutdownWrite(_ fd: Int32) {
        _ = Glibc.shutdown(fd, Int32(SHUT_WR))
    }

    /// A spare descriptor (/dev/null) held so that, when the process runs out of descriptors, one can be
    /// freed to accept and refuse a waiting connection. -1 if even that fails.
    public static func openReserveDescriptor() -> Int32 {
        Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC)
    }

    public static func eventfdCreate() throws -> Int32 {
        try checkInt32("eventfd") { eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC)) }
    }

    public static func eventfdSignal(_ fd: Int32) {
        var one: UInt64 = 1
        // EAGAIN means the counter is saturated: a wake-up is pending anyway.
        _ = try? check("eventfd write") { Glibc.write(fd, &one, 8) }
    }

    public static func eventfdDrain(_ fd: Int32) {
        var value: UInt64 = 0
        _ = try? check("eventfd read") { Glibc.read(fd, &value, 8) }
    }

    public static func setNonBlocking(_ fd: Int32) throws {
        let flags = try checkInt32("fcntl(F_GETFL)") { fcntl(fd, F_GETFL) }
        _ = try checkInt32("fcntl(F_SETFL)") { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
    }

    public static func setOption(_ fd: Int32, level: Int32, name: Int32, value: Int32) throws {
        var v = value
        _ = try checkInt32("setsockopt") {
            setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    /// Raises RLIMIT_NOFILE towards `wanted`: the soft limit up to the hard one, and, where the
    /// process may (root, CAP_SYS_RESOURCE), the hard limit too, up to the kernel's fs.nr_open.
    /// Returns the soft limit in force afterwards.
    @discardableResult
    public static func raiseFileLimit(wanted: UInt64 = .max) -> UInt64 {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if UInt64(limit.rlim_max) < wanted {
            let ceiling = kernelFileCeiling()
            var raised = limit
            raised.rlim_max = rlim_t(min(wanted, ceiling))
            raised.rlim_cur = raised.rlim_max
            if raised.rlim_max > limit.rlim_max, setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 {
                return UInt64(raised.rlim_cur)
            }
        }
        let target = min(UInt64(limit.rlim_max), wanted)
        if UInt64(limit.rlim_cur) < target {
            limit.rlim_cur = rlim_t(target)
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        }
        return UInt64(limit.rlim_cur)
    }

    /// /proc/sys/fs/nr_open: the most descriptors one process may ever be allowed.
    private static func kernelFileCeiling() -> UInt64 {
        let fd = Glibc.open("/proc/sys/fs/nr_open", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 1 << 20 }
        defer { Glibc.close(fd) }
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return 1 << 20 }
        let text = String(decoding: buffer[0..<n], as: UTF8.self).trimmingWhitespace
        return UInt64(text) ?? (1 << 20)
    }

    public static func ignoreSIGPIPE() { _ = signal(SIGPIPE, SIG_IGN) }
}

/// Clocks read from the vDSO (no syscall).
public enum Clock {
    /// Coarse monotonic milliseconds: good enough for timeouts, nearly free to read.
    @inline(__always) public static func monotonicMs() -> UInt64 { csb_monotonic_coarse_ms() }
    @inline(__always) public static func monotonicNs() -> UInt64 { csb_monotonic_ns() }
    @inline(__always) public static func wallMs() -> UInt64 { csb_realtime_ms() }
}

extension String {
    fileprivate var trimmingWhitespace: String {
        String(self.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
