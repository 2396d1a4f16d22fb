// A pthread read-write lock guarding the store's environment pointer: every read and write batch holds it shared,
// `close()` holds it exclusive, so closing can never free the environment under a running transaction.
// The lock lives in its own allocation because a pthread lock must not move.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

final class ReadWriteLock: @unchecked Sendable {
    private let rwlock: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        rwlock = .allocate(capacity: 1)
        rwlock.initialize(to: pthread_rwlock_t())
        let rc = pthread_rwlock_init(rwlock, nil)
        precondition(rc == 0, "pthread_rwlock_init failed: \(rc)")
    }

    deinit {
        pthread_rwlock_destroy(rwlock)
        rwlock.deinitialize(count: 1)
        rwlock.deallocate()
    }

    func withShared<R>(_ body: () throws -> R) rethrows -> R {
        let rc = pthread_rwlock_rdlock(rwlock)
        // EAGAIN (too many readers) or EDEADLK would be a bug in this module, not a runtime condition.
        precondition(rc == 0, "pthread_rwlock_rdlock failed: \(rc)")
        defer { pthread_rwlock_unlock(rwlock) }
        return try body()
    }

    func withExclusive<R>(_ body: () throws -> R) rethrows -> R {
        let rc = pthread_rwlock_wrlock(rwlock)
        precondition(rc == 0, "pthread_rwlock_wrlock failed: \(rc)")
        defer { pthread_rwlock_unlock(rwlock) }
        return try body()
    }
}
