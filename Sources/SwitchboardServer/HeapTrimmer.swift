// Gives the heap back after connection storms. A TLS handshake holds tens of KiB transiently (record
// buffers, handshake messages, key shares) and each connection some KiB for as long as it lives; after
// thousands of handshakes or closes glibc keeps those pages in its free lists (the heap top is pinned by
// live chunks, so its automatic trim never fires): 5,000 TLS handshakes left RSS ~80-240 MB above the
// baseline for good. The driver counts accepts and closes ("churn"); once `churnThreshold` of them have
// happened, and the churn has calmed down (less than the threshold in the last `settleMs`, or at the
// latest `maxDelayMs` after the first request), one malloc_trim(0) runs here.
// Why a helper thread: malloc_trim walks every free chunk and madvises free pages, milliseconds for
// hundreds of MB. It takes each arena's lock in turn; the loop allocates nothing per relayed message, so
// it rarely waits for that lock, where running the trim on the loop would stall every connection.
import Logging
import Glibc
import SwitchboardIO

final class HeapTrimmer: @unchecked Sendable {
    // @unchecked: `requests` is thread-safe; `thread` is touched only by the owner (init/shutdown).
    struct Request: Sendable { let churn: Int }

    private let requests = WorkQueue<Request>()
    private var thread: HelperThread?

    init(logger: Logger) throws {
        let requests = self.requests
        thread = try HelperThread {
            while let batch = requests.popAll() {
                guard let last = batch.last else { continue }
                let rssBefore = residentBytes()
                let start = Clock.monotonicNs()
                Heap.trim()
                let micros = (Clock.monotonicNs() - start) / 1000
                let rssAfter = residentBytes()
                logger.info("heap trimmed after connection churn", metadata: [
                    "churn": "\(last.churn)", "rss-before-kib": "\(rssBefore / 1024)", "rss-after-kib": "\(rssAfter / 1024)",
                    "trim-us": "\(micros)",
                ])
            }
        }
    }

    func request(churn: Int) { requests.push(Request(churn: churn)) }

    func shutdown() {
        requests.close()
        thread?.join()
        thread = nil
    }
}

/// VmRSS from /proc/self/statm (resident pages × page size); 0 if unreadable. Helper threads only (file I/O).
private func residentBytes() -> Int {
    let fd = open("/proc/self/statm", O_RDONLY)
    guard fd >= 0 else { return 0 }
    defer { Glibc.close(fd) }
    var buffer = [UInt8](repeating: 0, count: 128)
    let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
    guard count > 0 else { return 0 }
    let fields = String(decoding: buffer[0..<count], as: UTF8.self).split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}
