// systemd's readiness protocol without libsystemd: one datagram per state change ("READY=1",
// "STOPPING=1", "STATUS=...") to the Unix socket named in NOTIFY_SOCKET. A name starting with '@' is an
// abstract socket (the '@' becomes a NUL byte and the address length counts only the name).
// Invariants: sending never blocks (MSG_DONTWAIT) and a failure is reported, never fatal: the service
// runs the same without systemd; the socket is opened once, close-on-exec.
import Glibc

public final class ServiceNotifier: @unchecked Sendable {
    public let socketPath: String
    private let fd: Int32
    public private(set) var sent: [String] = []

    /// nil when NOTIFY_SOCKET is unset or empty (not started by systemd with Type=notify).
    public static func fromEnvironment() -> ServiceNotifier? {
        guard let raw = getenv("NOTIFY_SOCKET") else { return nil }
        let path = String(cString: raw)
        guard !path.isEmpty else { return nil }
        return ServiceNotifier(path: path)
    }

    public init?(path: String) {
        guard path.hasPrefix("/") || path.hasPrefix("@"), path.utf8.count < 108 else { return nil }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        self.fd = fd
        self.socketPath = path
    }

    deinit { close(fd) }

    /// Sends one state datagram; returns false (and the errno text) if it could not be sent.
    @discardableResult
    public func notify(_ state: String) -> Bool {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var name = Array(socketPath.utf8)
        if name.first == UInt8(ascii: "@") { name[0] = 0 }
        let length = withUnsafeMutableBytes(of: &address.sun_path) { raw -> Int in
            for (i, byte) in name.enumerated() { raw[i] = byte }
            return name.count
        }
        // Abstract names are not NUL-terminated: the length says where they end.
        let addressLength = socklen_t(MemoryLayout<sa_family_t>.size + length + (name.first == 0 ? 0 : 1))
        let message = Array(state.utf8)
        let rc = message.withUnsafeBytes { bytes in
            withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL), $0, addressLength)
                }
            }
        }
        if rc >= 0 { sent.append(state) }
        return rc >= 0
    }
}
