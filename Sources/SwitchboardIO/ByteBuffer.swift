// ByteBuffer: a growable byte region owned by exactly one connection (or one codec test), never shared
// across threads. Invariants: 0 <= retainIndex <= readerIndex <= writerIndex <= capacity; bytes before
// retainIndex may be discarded by compaction, bytes from retainIndex on are kept. `streamPosition`
// counts every byte ever discarded so callers can name bytes across compactions.

/// SwitchboardIO owns everything that touches the kernel: syscall wrappers with typed errors,
/// the epoll event loop, timers, eventfd wake-ups and listening/connected sockets, plus the byte
/// buffers the loop reads into and writes from.

/// A reference-type byte buffer: connections own one for input and one for output and reuse them,
/// so steady-state relaying allocates nothing. It is a class (not a CoW struct) on purpose: a single
/// owner mutates it in place and no hidden copy can ever happen on the hot path.
public final class ByteBuffer {
    public private(set) var base: UnsafeMutableRawPointer?
    public private(set) var capacity: Int
    public var readerIndex: Int
    public var writerIndex: Int
    /// Bytes from here on survive compaction even when already read (used for deliveries kept
    /// until the receiver acknowledges them).
    public private(set) var retainIndex: Int
    /// Number of bytes discarded from the front over the buffer's life.
    public private(set) var discardedBytes: UInt64 = 0

    public init(capacity: Int = 0) {
        self.capacity = 0
        self.readerIndex = 0
        self.writerIndex = 0
        self.retainIndex = 0
        if capacity > 0 { grow(toAtLeast: capacity) }
    }

    deinit { base?.deallocate() }

    @inlinable public var readableBytes: Int { writerIndex - readerIndex }
    @inlinable public var writableBytes: Int { capacity - writerIndex }
    @inlinable public var retainedBytes: Int { writerIndex - retainIndex }
    @inlinable public var isEmpty: Bool { writerIndex == readerIndex }

    /// Stream position (bytes ever appended before this index) of a buffer index.
    @inlinable public func streamPosition(ofIndex index: Int) -> UInt64 { discardedBytes + UInt64(index) }
    /// Buffer index of a stream position that has not been discarded yet.
    @inlinable public func index(ofStreamPosition position: UInt64) -> Int { Int(position - discardedBytes) }

    /// The readable bytes, valid until the next mutation.
    @inlinable public var readableView: UnsafeRawBufferPointer {
        guard let base else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + readerIndex, count: readableBytes)
    }

    /// A view of bytes [from, to) that are still held (from >= retainIndex side is the caller's duty).
    @inlinable public func view(from: Int, to: Int) -> UnsafeRawBufferPointer {
        precondition(from >= 0 && from <= to && to <= writerIndex)
        guard let base else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + from, count: to - from)
    }

    /// Ensures `count` writable bytes, compacting before growing. Inlined: the common case (room left)
    /// is one compare in the caller; every integer the encoder writes goes through here.
    @inlinable public func reserveWritable(_ count: Int) {
        if _fastPath(capacity - writerIndex >= count) { return }
        reserveWritableSlow(count)
    }

    @usableFromInline func reserveWritableSlow(_ count: Int) {
        compact()
        if writableBytes >= count { return }
        grow(toAtLeast: writerIndex + count)
    }

    /// Moves kept bytes (from min(retainIndex, readerIndex)) to the front.
    public func compact() {
        let keepFrom = min(retainIndex, readerIndex)
        guard keepFrom > 0, let base else { return }
        let keep = writerIndex - keepFrom
        if keep > 0 { (base).copyMemory(from: base + keepFrom, byteCount: keep) }
        discardedBytes += UInt64(keepFrom)
        readerIndex -= keepFrom
        retainIndex -= keepFrom
        writerIndex -= keepFrom
    }

    private func grow(toAtLeast needed: Int) {
        var newCapacity = max(capacity, 256)
        while newCapacity < needed { newCapacity *= 2 }
        let newBase = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        if let base {
            if writerIndex > 0 { newBase.copyMemory(from: base, byteCount: writerIndex) }
            base.deallocate()
        }
        base = newBase
        capacity = newCapacity
    }

    /// Frees the storage when nothing is held, so idle connections cost no buffer memory.
    public func releaseIfEmpty() {
        guard writerIndex == readerIndex, retainIndex == readerIndex else { return }
        discardedBytes += UInt64(writerIndex)
        readerIndex = 0; writerIndex = 0; retainIndex = 0
        base?.deallocate()
        base = nil
        capacity = 0
    }

    /// Forgets all bytes (keeps the storage).
    public func clear() {
        discardedBytes += UInt64(writerIndex)
        readerIndex = 0; writerIndex = 0; retainIndex = 0
    }

    /// Marks `count` read bytes consumed, retaining nothing; when nothing remains the indices reset.
    public func moveReaderIndex(forwardBy count: Int) {
        precondition(count >= 0 && count <= readableBytes)
        readerIndex += count
        retainIndex = readerIndex
        if readerIndex == writerIndex {
            discardedBytes += UInt64(writerIndex)
            readerIndex = 0; writerIndex = 0; retainIndex = 0
        }
    }

    /// Sets where retention starts: bytes from `index` on (even already read ones) survive
    /// compaction. Clamped to the reader index; pass `readerIndex` to retain nothing.
    public func retain(from index: Int) {
        precondition(index >= 0)
        retainIndex = min(index, readerIndex)
        if retainIndex == writerIndex {
            discardedBytes += UInt64(writerIndex)
            readerIndex = 0; writerIndex = 0; retainIndex = 0
        }
    }

    /// Advances the reader by `count` bytes without moving the retention start.
    public func advanceReaderRetaining(by count: Int) {
        precondition(count >= 0 && count <= readableBytes)
        readerIndex += count
        if retainIndex == writerIndex {
            discardedBytes += UInt64(writerIndex)
            readerIndex = 0; writerIndex = 0; retainIndex = 0
        }
    }

    /// Drops unread bytes from `index` (a reader-side index, at or after the reader) to the writer:
    /// queued output that will never be sent.
    public func truncate(toIndex index: Int) {
        precondition(index >= readerIndex && index <= writerIndex)
        writerIndex = index
    }

    /// Writable region for a read syscall; call `didWrite` with the bytes produced.
    @inlinable public func writableRegion(minimum: Int) -> UnsafeMutableRawBufferPointer {
        reserveWritable(minimum)
        return UnsafeMutableRawBufferPointer(start: base! + writerIndex, count: writableBytes)
    }

    @inlinable public func didWrite(_ count: Int) {
        precondition(count >= 0 && count <= writableBytes)
        writerIndex += count
    }

    // MARK: writing (big-endian integers)

    @inlinable public func writeInteger<T: FixedWidthInteger>(_ value: T) {
        reserveWritable(MemoryLayout<T>.size)
        (base! + writerIndex).storeBytes(of: value.bigEndian, as: T.self)
        writerIndex += MemoryLayout<T>.size
    }

    @inlinable public func setInteger<T: FixedWidthInteger>(_ value: T, at index: Int) {
        precondition(index >= 0 && index + MemoryLayout<T>.size <= writerIndex)
        (base! + index).storeBytes(of: value.bigEndian, as: T.self)
    }

    @inlinable public func writeBytes(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        reserveWritable(bytes.count)
        (base! + writerIndex).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        writerIndex += bytes.count
    }

    @inlinable public func writeBytes(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { writeBytes($0) }
    }

    /// Writes a string's UTF-8 bytes without creating an intermediate array.
    public func writeUTF8(_ string: String) {
        var copy = string
        copy.withUTF8 { writeBytes(UnsafeRawBufferPointer($0)) }
    }

    /// Copies out the readable bytes (tests and cold paths only).
    public func readableArray() -> [UInt8] { Array(readableView) }
}
