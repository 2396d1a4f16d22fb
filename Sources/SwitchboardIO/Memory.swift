// The process heap (glibc malloc), for the driver's trim after connection storms.
import CSwitchboard

public enum Heap {
    /// malloc_trim(0): returns the free pages of every arena to the kernel. Takes each arena's lock
    /// in turn while it walks the free chunks (milliseconds for hundreds of MB): helper threads only.
    @discardableResult
    public static func trim() -> Bool { csb_malloc_trim(0) == 1 }

    /// Bytes glibc holds free in its arenas (mallinfo2's fordblks). Walks the free lists: helper threads only.
    public static var freeBytes: Int { Int(csb_malloc_free_bytes()) }
}
