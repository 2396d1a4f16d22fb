// ByteBuffer: big-endian integer writes, growth, compaction that keeps bytes from retainIndex, stream positions
// that survive compaction and release, and the cheap reset when everything was read.

@testable import SwitchboardIO
import Testing

private func readBE<T: FixedWidthInteger>(_ buffer: ByteBuffer, at offset: Int, as: T.Type = T.self) -> T {
    let view = buffer.readableView
    var value: T = 0
    for i in 0..<MemoryLayout<T>.size { value = value << 8 | T(truncatingIfNeeded: view[offset + i]) }
    return value
}

private func fill(_ buffer: ByteBuffer, _ range: Range<Int>) {
    buffer.writeBytes(range.map { UInt8(truncatingIfNeeded: $0) })
}

@Suite struct ByteBufferTests {
    @Test func integersAreBigEndian() {
        let b = ByteBuffer()
        b.writeInteger(UInt8(0xAB))
        b.writeInteger(UInt16(0x0102))
        b.writeInteger(UInt32(0x0304_0506))
        b.writeInteger(UInt64(0x0708_090A_0B0C_0D0E))
        b.writeInteger(Int32(-2))
        #expect(b.readableArray() == [0xAB, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
                                      0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0xFF, 0xFF, 0xFF, 0xFE])
        #expect(readBE(b, at: 1, as: UInt16.self) == 0x0102)
        #expect(readBE(b, at: 3, as: UInt32.self) == 0x0304_0506)
        #expect(readBE(b, at: 7, as: UInt64.self) == 0x0708_090A_0B0C_0D0E)
        #expect(Int32(bitPattern: readBE(b, at: 15, as: UInt32.self)) == -2)
        #expect(b.readableBytes == 19)
    }

    @Test func setIntegerPatchesInPlace() {
        let b = ByteBuffer()
        b.writeInteger(UInt32(0))
        b.writeBytes([9, 9])
        b.setInteger(UInt32(0xDEAD_BEEF), at: 0)
        #expect(b.readableArray() == [0xDE, 0xAD, 0xBE, 0xEF, 9, 9])
    }

    @Test func unalignedWritesAndReads() {
        let b = ByteBuffer()
        b.writeBytes([1])
        b.writeInteger(UInt64.max - 1)
        b.writeBytes([2, 3])
        b.writeInteger(UInt16(0xBEEF))
        #expect(readBE(b, at: 1, as: UInt64.self) == UInt64.max - 1)
        #expect(readBE(b, at: 11, as: UInt16.self) == 0xBEEF)
    }

    @Test func emptyBufferHasNoStorage() {
        let b = ByteBuffer()
        #expect(b.capacity == 0 && b.base == nil && b.isEmpty)
        #expect(b.readableView.count == 0)
        b.writeBytes([UInt8]())
        #expect(b.capacity == 0)
        b.writeUTF8("")
        #expect(b.capacity == 0)
    }

    @Test func reserveAndGrow() {
        let b = ByteBuffer()
        b.reserveWritable(1)
        #expect(b.capacity == 256)
        fill(b, 0..<200)
        b.reserveWritable(1000)
        #expect(b.capacity >= 1200 && b.writableBytes >= 1000)
        #expect(b.capacity == 2048, "growth doubles from 256")
        #expect(b.readableArray() == (0..<200).map { UInt8($0) }, "growing keeps the bytes")
        let before = b.capacity
        b.reserveWritable(b.writableBytes)
        #expect(b.capacity == before, "no growth when there is room")
        #expect(ByteBuffer(capacity: 300).capacity == 512)
    }

    @Test func writeUTF8AndWritableRegion() {
        let b = ByteBuffer()
        b.writeUTF8("héllo 👋")
        #expect(b.readableArray() == Array("héllo 👋".utf8))
        let region = b.writableRegion(minimum: 10)
        #expect(region.count >= 10)
        region[0] = 0x41; region[1] = 0x42
        b.didWrite(2)
        #expect(b.readableArray().suffix(2) == [0x41, 0x42])
    }

    @Test func compactKeepsBytesFromRetainIndex() {
        let b = ByteBuffer()
        fill(b, 0..<100)
        // Read 50 bytes but keep from 30 (e.g. deliveries not yet acknowledged).
        b.moveReaderIndex(forwardBy: 50)
        b.retain(from: 30)
        #expect(b.readerIndex == 50 && b.retainIndex == 30 && b.retainedBytes == 70)
        let readerPosition = b.streamPosition(ofIndex: b.readerIndex)
        let retainPosition = b.streamPosition(ofIndex: b.retainIndex)
        b.compact()
        #expect(b.retainIndex == 0 && b.readerIndex == 20 && b.writerIndex == 70)
        #expect(b.discardedBytes == 30)
        #expect(b.readableArray() == (50..<100).map { UInt8($0) })
        #expect(Array(b.view(from: 0, to: 20)) == (30..<50).map { UInt8($0) }, "retained bytes survive")
        #expect(b.streamPosition(ofIndex: b.readerIndex) == readerPosition)
        #expect(b.streamPosition(ofIndex: b.retainIndex) == retainPosition)
        #expect(b.index(ofStreamPosition: 40) == 10)
        #expect(b.view(from: b.index(ofStreamPosition: 40), to: b.index(ofStreamPosition: 43)).elementsEqual([40, 41, 42]))
        // Nothing more to discard: a second compaction changes nothing.
        b.compact()
        #expect(b.discardedBytes == 30 && b.readerIndex == 20)
    }

    @Test func compactWithoutRetainingDiscardsWhatWasRead() {
        let b = ByteBuffer()
        fill(b, 0..<100)
        b.moveReaderIndex(forwardBy: 60)
        b.compact()
        #expect(b.readerIndex == 0 && b.writerIndex == 40 && b.discardedBytes == 60)
        #expect(b.readableArray() == (60..<100).map { UInt8($0) })
    }

    @Test func reserveCompactsBeforeGrowing() {
        let b = ByteBuffer()
        fill(b, 0..<200)
        #expect(b.capacity == 256)
        b.moveReaderIndex(forwardBy: 150)
        b.reserveWritable(150)
        #expect(b.capacity == 256, "room came from compaction, not growth")
        #expect(b.readableArray() == (150..<200).map { UInt8($0) })
        #expect(b.streamPosition(ofIndex: b.readerIndex) == 150)
    }

    @Test func retainedBytesSurviveGrowthAndCompaction() {
        let b = ByteBuffer()
        fill(b, 0..<250)
        b.moveReaderIndex(forwardBy: 100)
        b.advanceReaderRetaining(by: 100)
        let mark = b.streamPosition(ofIndex: b.retainIndex)
        fill(b, 250..<600)
        #expect(b.index(ofStreamPosition: mark) == b.retainIndex)
        #expect(b.view(from: b.index(ofStreamPosition: mark), to: b.index(ofStreamPosition: mark) + 3).elementsEqual([100, 101, 102]))
        #expect(b.readableArray() == (200..<600).map { UInt8(truncatingIfNeeded: $0) })
    }

    @Test func streamPositionsAreMonotonicAcrossResets() {
        var rng = SplitMix64(seed: 99)
        let b = ByteBuffer()
        var appended: UInt64 = 0
        var consumed: UInt64 = 0
        for _ in 0..<2000 {
            let n = Int.random(in: 0..<300, using: &rng)
            let start = appended
            b.writeBytes((0..<n).map { UInt8(truncatingIfNeeded: Int(start) + $0) })
            appended += UInt64(n)
            #expect(b.streamPosition(ofIndex: b.writerIndex) == appended)
            let take = Int.random(in: 0...b.readableBytes, using: &rng)
            if take > 0 {
                #expect(b.readableView.first == UInt8(truncatingIfNeeded: consumed))
            }
            b.moveReaderIndex(forwardBy: take)
            consumed += UInt64(take)
            #expect(b.streamPosition(ofIndex: b.readerIndex) == consumed)
            if Bool.random(using: &rng) { b.releaseIfEmpty() }
        }
        #expect(b.capacity <= 1024, "consumed bytes are reused, the buffer does not grow with the stream")
    }

    @Test func releaseIfEmpty() {
        let b = ByteBuffer()
        fill(b, 0..<10)
        b.releaseIfEmpty()
        #expect(b.capacity == 256, "bytes still readable: storage kept")
        b.advanceReaderRetaining(by: 10)
        b.releaseIfEmpty()
        #expect(b.capacity == 256, "bytes still retained: storage kept")
        #expect(b.retainedBytes == 10)
        b.retain(from: b.readerIndex)  // retain nothing: resets the indices
        b.releaseIfEmpty()
        #expect(b.capacity == 0 && b.base == nil)
        #expect(b.readerIndex == 0 && b.writerIndex == 0 && b.retainIndex == 0)
        #expect(b.streamPosition(ofIndex: 0) == 10)
        fill(b, 0..<3)
        #expect(b.readableArray() == [0, 1, 2])
        #expect(b.streamPosition(ofIndex: b.writerIndex) == 13)
    }

    @Test func moveReaderIndexResetsWhenEmpty() {
        let b = ByteBuffer()
        fill(b, 0..<10)
        b.moveReaderIndex(forwardBy: 4)
        #expect(b.readerIndex == 4 && b.readableBytes == 6)
        b.moveReaderIndex(forwardBy: 6)
        #expect(b.readerIndex == 0 && b.writerIndex == 0 && b.retainIndex == 0)
        #expect(b.discardedBytes == 10 && b.isEmpty)
        #expect(b.capacity == 256, "storage is kept for the next read")
        b.moveReaderIndex(forwardBy: 0)
        #expect(b.discardedBytes == 10)
    }

    @Test func advanceReaderRetainingKeepsRetainedBytes() {
        let b = ByteBuffer()
        fill(b, 0..<10)
        b.moveReaderIndex(forwardBy: 2)
        b.advanceReaderRetaining(by: 3)
        b.advanceReaderRetaining(by: 5)
        #expect(b.isEmpty)
        #expect(b.retainIndex == 2 && b.writerIndex == 10, "no reset while bytes are retained")
        #expect(Array(b.view(from: b.retainIndex, to: b.writerIndex)) == (2..<10).map { UInt8($0) })
        // Releasing the retention once everything is read resets the buffer.
        b.retain(from: b.readerIndex)
        #expect(b.readerIndex == 0 && b.writerIndex == 0 && b.retainIndex == 0 && b.discardedBytes == 10)
    }

    @Test func moveReaderIndexDropsRetention() {
        let b = ByteBuffer()
        fill(b, 0..<10)
        b.advanceReaderRetaining(by: 4)
        #expect(b.retainIndex == 0)
        b.moveReaderIndex(forwardBy: 2)
        #expect(b.retainIndex == 6 && b.readerIndex == 6)
        b.compact()
        #expect(b.readableArray() == [6, 7, 8, 9] && b.discardedBytes == 6)
    }

    @Test func retainIsClampedToTheReader() {
        let b = ByteBuffer()
        fill(b, 0..<10)
        b.moveReaderIndex(forwardBy: 3)
        b.retain(from: 8)
        #expect(b.retainIndex == 3, "unread bytes are kept anyway; retention cannot start after the reader")
        b.retain(from: 1)
        #expect(b.retainIndex == 1)
    }

    @Test func clearForgetsEverything() {
        let b = ByteBuffer()
        fill(b, 0..<10)
        b.advanceReaderRetaining(by: 3)
        b.clear()
        #expect(b.isEmpty && b.retainedBytes == 0 && b.capacity == 256)
        #expect(b.streamPosition(ofIndex: 0) == 10)
    }
}

