// Clients for the operator surfaces in tests: a blocking HTTP GET against the monitoring listener,
// Prometheus text parsed into samples, and a blocking admin-socket request.
import Foundation
import Glibc
import SwitchboardIO

struct HTTPAnswer {
    let status: Int
    let head: String
    let body: String
}

/// Sends `request` bytes to `address` and reads until the server closes (or `timeoutMs`).
func rawHTTP(_ address: SocketAddress, _ request: [UInt8], timeoutMs: Int32 = 10_000) throws -> (answer: HTTPAnswer?, closed: Bool) {
    let fd = try Socket.connectBlocking(to: address)
    defer { Sys.close(fd) }
    if !request.isEmpty { _ = request.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    let deadline = Clock.monotonicMs() + UInt64(timeoutMs)
    var closed = false
    while Clock.monotonicMs() < deadline {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if poll(&pfd, 1, remainingMs(until: deadline)) <= 0 { continue }
        let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { closed = true; break }
        bytes += chunk[0..<n]
    }
    let text = String(decoding: bytes, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else { return (nil, closed) }
    let head = String(text[..<split.lowerBound])
    let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
    return (HTTPAnswer(status: status, head: head, body: String(text[split.upperBound...])), closed)
}

func httpGet(_ address: SocketAddress, _ path: String) throws -> HTTPAnswer {
    guard let answer = try rawHTTP(address, Array("GET \(path) HTTP/1.1\r\nHost: test\r\n\r\n".utf8)).answer else {
        throw TestFailure("no HTTP answer for \(path)")
    }
    return answer
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Prometheus samples by their full name with labels ("name{a=\"b\"}").
func scrape(_ address: SocketAddress) throws -> [String: Double] {
    let answer = try httpGet(address, "/metrics")
    guard answer.status == 200 else { throw TestFailure("/metrics answered \(answer.status)") }
    var samples: [String: Double] = [:]
    for line in answer.body.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
        samples[String(line[..<space])] = value
    }
    return samples
}

/// One admin-socket request; returns (ok, text).
func adminRequest(_ path: String, _ line: String) throws -> (ok: Bool, text: String) {
    let fd = try UnixSocket.connect(path: path)
    defer { Sys.close(fd) }
    return try adminRequest(fd: fd, line)
}

func adminRequest(fd: Int32, _ line: String) throws -> (ok: Bool, text: String) {
    let request = Array((line + "\n").utf8)
    _ = request.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    let deadline = Clock.monotonicMs() + 15_000
    while Clock.monotonicMs() < deadline {
        if let newline = bytes.firstIndex(of: 10) {
            let header = String(decoding: bytes[0..<newline], as: UTF8.self).split(separator: " ")
            if header.count == 2, let count = Int(header[1]), bytes.count >= newline + 1 + count {
                return (header[0] == "ok", String(decoding: bytes[(newline + 1)..<(newline + 1 + count)], as: UTF8.self))
            }
        }
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if poll(&pfd, 1, remainingMs(until: deadline)) <= 0 { continue }
        let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        bytes += chunk[0..<n]
    }
    throw TestFailure("no complete admin answer to '\(line)': \(String(decoding: bytes, as: UTF8.self))")
}

/// Polls `condition` every 20 ms for up to `timeoutMs`.
func eventually(timeoutMs: UInt64 = 10_000, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Clock.monotonicMs() + timeoutMs
    repeat {
        if try condition() { return true }
        usleep(20_000)
    } while Clock.monotonicMs() < deadline
    return false
}
