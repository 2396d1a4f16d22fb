// IDMap: a hash map from ids the server assigns (user ids, connection ids) to values, for the lookups
// on the per-message path (sessions by user, a session's contacts, senders' recent ids, connections).
//
// Why not Dictionary: every Dictionary lookup hashes its key with SipHash-1-3 (~60-80 instructions
// for a UInt32 or UInt64, plus the probe): ~9 such lookups per relayed message were a third of the
// server core's instructions (perf/instructions-per-message.sh). Here the hash is one multiply
// (Fibonacci hashing of the key xor a per-process salt) and a probe reads one entry, key beside value.
//
// Why that hash is enough: the keys stored are ids the server hands out (sequential user and
// connection ids), never values a client picks, so no client can fill one probe chain; a client only
// chooses keys to *look up* (a SEND's recipient), and a lookup stops at the first empty slot of a table
// kept at most half full. The salt makes the layout differ from process to process anyway.
//
// Invariants: `entries.count` is 0 or a power of two >= 4; at most half the slots are used; every
// key is in the probe chain from its home slot (linear probing, deletion by backward shift, so no
// tombstones). A value type with the semantics of Dictionary (copies are independent, copy on write).
public struct IDMap<Key: FixedWidthInteger & UnsignedInteger, Value> {
    @usableFromInline struct Entry {
        @usableFromInline var key: Key
        @usableFromInline var value: Value?
        @inlinable init(key: Key, value: Value?) { self.key = key; self.value = value }
    }

    @usableFromInline var entries: [Entry] = []
    @usableFromInline var shift: UInt64 = 64
    @usableFromInline var mask = 0
    /// The process's salt, copied so a lookup does not go through a global's lazy initialization.
    @usableFromInline let salt: UInt64
    @usableFromInline var storedCount = 0
    @inlinable public var count: Int { storedCount }

    @inlinable public init() { salt = idMapSalt }

    @inlinable public var isEmpty: Bool { storedCount == 0 }

    @inlinable @inline(__always) func home(_ key: Key) -> Int {
        Int(truncatingIfNeeded: ((UInt64(truncatingIfNeeded: key) ^ salt) &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    /// The slot holding `key`, or nil.
    @inlinable @inline(__always) func slot(of key: Key) -> Int? {
        guard count > 0 else { return nil }
        var i = home(key)
        while entries[i].value != nil {
            if entries[i].key == key { return i }
            i = (i + 1) & mask
        }
        return nil
    }

    @inlinable public subscript(key: Key) -> Value? {
        @inline(__always) get {
            guard let i = slot(of: key) else { return nil }
            return entries[i].value
        }
        set {
            if let newValue { updateValue(newValue, forKey: key) } else { removeValue(forKey: key) }
        }
    }

    @inlinable public func contains(_ key: Key) -> Bool { slot(of: key) != nil }

    /// Sets the value; returns the one it replaced.
    @inlinable @discardableResult
    public mutating func updateValue(_ value: Value, forKey key: Key) -> Value? {
        if let i = slot(of: key) {
            let old = entries[i].value
            entries[i].value = value
            return old
        }
        if 2 * (count + 1) > entries.count { grow() }
        var i = home(key)
        while entries[i].value != nil { i = (i + 1) & mask }
        entries[i] = Entry(key: key, value: value)
        storedCount += 1
        return nil
    }

    @inlinable @discardableResult
    public mutating func removeValue(forKey key: Key) -> Value? {
        guard let index = slot(of: key) else { return nil }
        let old = entries[index].value
        // Backward shift: move later members of the chain into the hole when that keeps them reachable.
        var hole = index
        var j = (index + 1) & mask
        while entries[j].value != nil {
            let distance = (j - home(entries[j].key)) & mask
            if distance >= (j - hole) & mask {
                entries[hole] = entries[j]
                hole = j
            }
            j = (j + 1) & mask
        }
        entries[hole].value = nil
        storedCount -= 1
        return old
    }

    @inlinable public mutating func removeAll() {
        entries = []
        shift = 64
        mask = 0
        storedCount = 0
    }

    @usableFromInline mutating func grow() {
        let size = Swift.max(4, entries.count * 2)
        var bits: UInt64 = 0
        while (1 << bits) < size { bits += 1 }
        let old = entries
        entries = Array(repeating: Entry(key: 0, value: nil), count: size)
        shift = 64 - bits
        mask = size - 1
        for entry in old {
            guard let value = entry.value else { continue }
            var i = home(entry.key)
            while entries[i].value != nil { i = (i + 1) & mask }
            entries[i] = Entry(key: entry.key, value: value)
        }
    }

    /// The values, in slot order (as unordered as Dictionary's).
    @inlinable public var values: LazyMapSequence<IDMap, Value> { lazy.map { $0.value } }
    @inlinable public var keys: LazyMapSequence<IDMap, Key> { lazy.map { $0.key } }
}

/// One salt per process for every IDMap (see the header).
@usableFromInline let idMapSalt = UInt64.random(in: 0...UInt64.max)

extension IDMap: Sequence {
    public struct Iterator: IteratorProtocol {
        @usableFromInline let entries: [Entry]
        @usableFromInline var index = 0
        @inlinable init(entries: [Entry]) { self.entries = entries }
        @inlinable public mutating func next() -> (key: Key, value: Value)? {
            while index < entries.count {
                let entry = entries[index]
                index += 1
                if let value = entry.value { return (entry.key, value) }
            }
            return nil
        }
    }

    @inlinable public func makeIterator() -> Iterator { Iterator(entries: entries) }
    @inlinable public var underestimatedCount: Int { count }
}

extension IDMap: ExpressibleByDictionaryLiteral {
    @inlinable public init(dictionaryLiteral elements: (Key, Value)...) {
        self.init()
        for (key, value) in elements { self[key] = value }
    }
}

extension IDMap {
    /// The map of a Dictionary's pairs (building a session from what the store returned).
    @inlinable public init(_ dictionary: [Key: Value]) {
        self.init()
        for (key, value) in dictionary { updateValue(value, forKey: key) }
    }
}
