// Byte and text views used by decoded frames. A decoded view borrows the input buffer and is valid
// only until that buffer is next mutated; `owned()` copies it out. Views built by callers for
// encoding may own their bytes instead. Either way no view ever allocates while decoding.

/// SwitchboardProtocol owns the wire format: frame types, the sans-I/O decoder (bytes in, frames
/// out, any split of the input gives the same frames) and the encoder (frames straight into an
/// output ByteBuffer). No sockets, no clocks. The byte-by-byte spec is the DocC article
/// `WireProtocol.md` in this module's catalog.

public struct ByteView: Equatable, CustomStringConvertible, @unchecked Sendable {
    @usableFromInline enum Storage {
        case borrowed(UnsafeRawBufferPointer)
        case owned([UInt8])
    }
    @usableFromInline let storage: Storage

    @inlinable public init(borrowing bytes: UnsafeRawBufferPointer) { storage = .borrowed(bytes) }
    public init(_ bytes: [UInt8]) { storage = .owned(bytes) }
    public init(_ text: String) { storage = .owned(Array(text.utf8)) }

    @inlinable public var count: Int {
        switch storage {
        case .borrowed(let p): return p.count
        case .owned(let a): return a.count
        }
    }

    @inlinable public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        switch storage {
        case .borrowed(let p): return try body(p)
        case .owned(let a): return try a.withUnsafeBytes(body)
        }
    }

    /// A copy that stays valid after the source buffer changes.
    public func owned() -> ByteView { ByteView(array) }
    public var array: [UInt8] { withUnsafeBytes { Array($0) } }
    /// The bytes as text, with invalid UTF-8 repaired (bodies are opaque to the server).
    public var string: String { withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }

    public static func == (a: ByteView, b: ByteView) -> Bool {
        a.withUnsafeBytes { x in b.withUnsafeBytes { y in x.count == y.count && x.elementsEqual(y) } }
    }

    public var description: String { "\(count) bytes" }
}

/// A UTF-8 string field; the decoder has validated it.
public struct TextView: Equatable, CustomStringConvertible, ExpressibleByStringInterpolation, Sendable {
    public let bytes: ByteView
    @inlinable public init(validatedBorrowing bytes: UnsafeRawBufferPointer) { self.bytes = ByteView(borrowing: bytes) }
    public init(_ string: String) { bytes = ByteView(string) }
    public init(stringLiteral value: String) { self.init(value) }
    public init(stringInterpolation: DefaultStringInterpolation) { self.init(String(stringInterpolation: stringInterpolation)) }
    public var string: String { bytes.string }
    public var utf8Count: Int { bytes.count }
    public func owned() -> TextView { TextView(string) }
    public var description: String { string }
}
