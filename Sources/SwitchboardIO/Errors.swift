// Typed errors for syscalls: the call's name plus errno. EBADF/EFAULT mean a bug in this process
// (a stale or wrong descriptor), so the wrappers trap on them instead of throwing.
import Glibc

public struct SyscallError: Error, CustomStringConvertible, Sendable, Equatable {
    public let call: String
    public let errno: Int32

    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String {
        "\(call) failed: \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// Result of a nonblocking read or write: bytes moved, or the kernel asked us to wait.
public enum IOResult: Equatable, Sendable {
    case processed(Int)
    case wouldBlock
}
