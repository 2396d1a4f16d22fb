// Process figures that are too slow to read on the loop: counting /proc/self/fd costs ~3-9 µs per
// descriptor (tens of milliseconds at 10 000 connections), so a helper thread samples it, with the
// resident set size, every `intervalMs`; a scrape reads the latest sample under a lock.
// Invariants: the loop never reads /proc/self/fd; the thread starts only with the monitoring
// listener and is joined when it closes.
import Glibc
import SwitchboardIO

final class ProcessSampler: @unchecked Sendable {
    struct Sample {
        var residentBytes: UInt64 = 0
        var openDescriptors: UInt64 = 0
        /// Monotonic ms of the sample (0: none yet).
        var atMs: UInt64 = 0
    }
    private let lock = Lock()
    private let wake = Condition()
    private var latest = Sample()
    private var stopped = false
    private var thread: HelperThread?
    let intervalMs: UInt64

    init(intervalMs: UInt64 = 2_000) throws {
        self.intervalMs = intervalMs
        latest = Self.measure()
        thread = try HelperThread { [self] in self.run() }  // strong: the thread keeps it alive until stop()
    }

    var sample: Sample { lock.withLock { latest } }

    func stop() {
        lock.withLock {
            stopped = true
            wake.signal()
        }
        thread?.join()
        thread = nil
    }

    private func run() {
        while true {
            lock.lock()
            let deadline = Clock.monotonicMs() + intervalMs
            while !stopped && Clock.monotonicMs() < deadline { wake.wait(lock, timeoutMs: 200) }
            let done = stopped
            lock.unlock()
            if done { return }
            let fresh = Self.measure()
            lock.withLock { latest = fresh }
        }
    }

    static func measure() -> Sample {
        Sample(residentBytes: residentBytes(), openDescriptors: openDescriptors(), atMs: Clock.monotonicMs())
    }

    /// RSS from /proc/self/statm (resident pages times the page size).
    static func residentBytes() -> UInt64 {
        let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return 0 }
        let fields = buffer[0..<n].split(separator: UInt8(ascii: " "))
        guard fields.count > 1, let pages = UInt64(String(decoding: fields[1], as: UTF8.self)) else { return 0 }
        return pages * UInt64(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// Entries of /proc/self/fd, minus the directory's own descriptor.
    static func openDescriptors() -> UInt64 {
        guard let dir = opendir("/proc/self/fd") else { return 0 }
        defer { closedir(dir) }
        var count: UInt64 = 0
        while let entry = readdir(dir) {
            let first = withUnsafeBytes(of: entry.pointee.d_name) { $0[0] }
            if first != UInt8(ascii: ".") { count += 1 }
        }
        return count > 0 ? count - 1 : 0
    }
}
