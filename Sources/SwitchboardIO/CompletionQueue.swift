// Hands results from helper threads to the loop thread: a mutex-protected array plus an eventfd.
// Helpers append and signal; the loop swaps the array out in one lock and handles the items
// without holding the lock. At most one eventfd write is outstanding per drain.
import CSwitchboard
import Glibc

public final class CompletionQueue<Item: Sendable>: EventHandler, @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var items: [Item] = []
    private var spare: [Item] = []
    private var signalled = false
    public let eventFD: Int32
    private var onItems: (([Item]) -> Void)?
    private var registration: RegistrationID?

    public init() throws {
        eventFD = try Sys.eventfdCreate()
        pthread_mutex_init(&mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(&mutex)
        Sys.close(eventFD)
    }

    /// Registers with the loop; `handler` runs on the loop thread with each drained batch.
    public func attach(to loop: EventLoop, handler: @escaping ([Item]) -> Void) throws {
        onItems = handler
        registration = try loop.register(fd: eventFD, interest: .readable, handler: self)
    }

    public func detach(from loop: EventLoop) {
        if let registration { loop.deregister(registration) }
        registration = nil
    }

    /// Thread-safe.
    public func post(_ item: Item) {
        pthread_mutex_lock(&mutex)
        items.append(item)
        let needsSignal = !signalled
        signalled = true
        pthread_mutex_unlock(&mutex)
        if needsSignal { Sys.eventfdSignal(eventFD) }
    }

    public func handle(events: IOEvents, loop: EventLoop) {
        Sys.eventfdDrain(eventFD)
        drain()
    }

    /// Delivers everything posted so far (also used at shutdown).
    public func drain() {
        pthread_mutex_lock(&mutex)
        swap(&items, &spare)
        signalled = false
        pthread_mutex_unlock(&mutex)
        if !spare.isEmpty {
            onItems?(spare)
            spare.removeAll(keepingCapacity: true)
        }
    }
}

/// A FIFO of work items consumed by one helper thread, which blocks on a condition variable.
public final class WorkQueue<Item: Sendable>: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var items: [Item] = []
    private var closed = false

    public init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    public func push(_ item: Item) {
        pthread_mutex_lock(&mutex)
        items.append(item)
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
    }

    /// Blocks until items are available; returns all of them (nil once closed and empty).
    public func popAll() -> [Item]? {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        while items.isEmpty && !closed { pthread_cond_wait(&condition, &mutex) }
        if items.isEmpty { return nil }
        let batch = items
        items.removeAll(keepingCapacity: true)
        return batch
    }

    public func close() {
        pthread_mutex_lock(&mutex)
        closed = true
        pthread_cond_broadcast(&condition)
        pthread_mutex_unlock(&mutex)
    }
}

/// Starts a detached-from-Swift-concurrency pthread running `body`; joinable with `join()`.
public final class HelperThread: @unchecked Sendable {
    private var thread = pthread_t()
    private final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }

    public init(_ body: @escaping @Sendable () -> Void) throws {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        let rc = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SyscallError("pthread_create", errno: rc)
        }
    }

    public func join() { pthread_join(thread, nil) }
}
