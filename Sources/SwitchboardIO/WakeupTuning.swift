// Experimental light-load knobs, measured by perf/wakeups.sh (perf/README.md, "Wake-ups and syscalls per
// message"). Read once from the environment at first use, all off by default; they exist so the A/B can be
// repeated on another machine without a rebuild, not as supported settings.
//   SWITCHBOARD_EXPERIMENT_QUICKACK=1          TCP_QUICKACK on each accepted socket
//   SWITCHBOARD_EXPERIMENT_SO_BUSY_POLL=<µs>    SO_BUSY_POLL on each accepted socket (no-op on loopback: no NAPI)
//   SWITCHBOARD_EXPERIMENT_SPIN_US=<µs>         after a turn that had events, poll epoll with timeout 0 for up to
//                                              this long before sleeping (bounded; burns CPU while it spins)
import CSwitchboard
import Glibc

public enum WakeupTuning {
    public static let quickAck: Bool = number("SWITCHBOARD_EXPERIMENT_QUICKACK") > 0
    public static let socketBusyPollUs: Int32 = Int32(clamping: number("SWITCHBOARD_EXPERIMENT_SO_BUSY_POLL"))
    /// Nanoseconds to keep polling with timeout 0 after a turn with events (0: off).
    public static let spinNs: UInt64 = UInt64(min(number("SWITCHBOARD_EXPERIMENT_SPIN_US"), 10_000)) * 1000

    /// Applied to each accepted socket (after TCP_NODELAY); failures are ignored, as for TCP_NODELAY.
    public static func applyAccepted(_ fd: Int32) {
        if quickAck { try? Sys.setOption(fd, level: Int32(IPPROTO_TCP), name: Int32(TCP_QUICKACK), value: 1) }
        if socketBusyPollUs > 0 { try? Sys.setOption(fd, level: SOL_SOCKET, name: SO_BUSY_POLL, value: socketBusyPollUs) }
    }

    private static func number(_ name: String) -> Int {
        guard let raw = getenv(name), let value = Int(String(cString: raw)), value > 0 else { return 0 }
        return value
    }
}
