// pthread primitives in their own allocations: a pthread mutex or condition variable must never
// move, and Swift gives no such promise for `&storedProperty` (it may pass a temporary copy), so
// each lives behind a pointer allocated once.
import Glibc

/// A mutex for the few places threads meet (helper queues, ticket keys).
public final class Lock: @unchecked Sendable {
    fileprivate let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let rc = pthread_mutex_init(mutex, nil)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }

    public func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}

/// A condition variable used with one `Lock`.
public final class Condition: @unchecked Sendable {
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    public init() {
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        let rc = pthread_cond_init(condition, nil)
        precondition(rc == 0, "pthread_cond_init failed: \(rc)")
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deinitialize(count: 1)
        condition.deallocate()
    }

    /// Waits with `lock` held; it is held again on return.
    public func wait(_ lock: Lock) { pthread_cond_wait(condition, lock.mutex) }
    /// Waits at most `timeoutMs` (CLOCK_REALTIME deadline, as pthread_cond_timedwait measures it).
    public func wait(_ lock: Lock, timeoutMs: Int) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let total = Int(now.tv_nsec) + (timeoutMs % 1000) * 1_000_000
        var deadline = timespec(tv_sec: now.tv_sec + timeoutMs / 1000 + total / 1_000_000_000, tv_nsec: total % 1_000_000_000)
        pthread_cond_timedwait(condition, lock.mutex, &deadline)
    }
    public func signal() { pthread_cond_signal(condition) }
    public func broadcast() { pthread_cond_broadcast(condition) }
}
