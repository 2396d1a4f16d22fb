// Hands results from helper threads to the loop thread: a mutex-protected array plus an eventfd.
// Helpers append and signal; the loop swaps the array out in one lock and handles the items
// without holding the lock. At most one eventfd write is outstanding per drain.
import CSwitchboard
import Glibc

public final class CompletionQueue<Item: Sendable>: EventHandler, @unchecked Sendable {
    private let lock = Lock()
    private var items: [Item] = []
    private var spare: [Item] = []
    private var signalled = false
    public let eventFD: Int32
    private var onItems: (([Item]) -> Void)?
    private var registration: RegistrationID?

    public init() throws {
        eventFD = try Sys.eventfdCreate()
    }

    deinit {
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
        lock.lock()
        items.append(item)
        let needsSignal = !signalled
        signalled = true
        lock.unlock()
        if needsSignal { Sys.eventfdSignal(eventFD) }
    }

    public func handle(events: IOEvents, loop: EventLoop) {
        Sys.eventfdDrain(eventFD)
        drain()
    }

    /// Delivers everything posted so far (also used at shutdown).
    public func drain() {
        lock.lock()
        swap(&items, &spare)
        signalled = false
        lock.unlock()
        if !spare.isEmpty {
            onItems?(spare)
            spare.removeAll(keepingCapacity: true)
        }
    }
}

/// A FIFO of work items consumed by one helper thread, which blocks on a condition variable.
public final class WorkQueue<Item: Sendable>: @unchecked Sendable {
    private let lock = Lock()
    private let nonEmpty = Condition()
    private var items: [Item] = []
    private var closed = false

    public init() {}

    public func push(_ item: Item) {
        lock.withLock {
            items.append(item)
            nonEmpty.signal()
        }
    }

    /// Blocks until items are available; returns all of them (nil once closed and empty).
    public func popAll() -> [Item]? {
        lock.lock()
        defer { lock.unlock() }
        while items.isEmpty && !closed { nonEmpty.wait(lock) }
        if items.isEmpty { return nil }
        let batch = items
        items.removeAll(keepingCapacity: true)
        return batch
    }

    public func close() {
        lock.withLock {
            closed = true
            nonEmpty.broadcast()
        }
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
