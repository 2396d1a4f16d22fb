// The monitoring listener (`serve --metrics HOST:PORT`, off by default): a tiny HTTP/1.1 server on the
// event loop answering GET/HEAD /metrics (Prometheus text format 0.0.4), /healthz, and / (an index).
// One request per connection, answered with `Connection: close`.
// Limits (each tested): a request head of at most 8 KiB (else 431), at most 16 connections at once
// (the 17th gets 503 and is closed), 5 s to send the request (else 408); any method but GET/HEAD gets
// 405, an unknown path 404, a request line that is not HTTP 400.
import Glibc
import SwitchboardIO

final class MetricsHTTP: OpsProtocol {
    static let maxRequestBytes = 8 << 10
    static let maxConnections = 16
    static let requestTimeoutMs: UInt64 = 5_000
    unowned let server: RelayServer
    let listener: OpsListener
    let sampler: ProcessSampler
    private(set) var scrapes: UInt64 = 0
    /// Nanoseconds the previous /metrics render took on the loop.
    private(set) var lastRenderNs: UInt64 = 0

    init(server: RelayServer, address: SocketAddress, sweepToken: UInt64) throws {
        self.server = server
        let fd = try Socket.listen(on: address, backlog: 64)
        do {
            listener = try OpsListener(name: "metrics", fd: fd, loop: server.loop, maxConnections: Self.maxConnections,
                                       maxRequestBytes: Self.maxRequestBytes, idleTimeoutMs: Self.requestTimeoutMs,
                                       sweepToken: sweepToken)
        } catch {
            Sys.close(fd)
            throw error
        }
        do {
            sampler = try ProcessSampler()
        } catch {
            listener.close()
            throw error
        }
        listener.proto = self
    }

    func close() {
        listener.close()
        sampler.stop()
    }

    var boundAddress: SocketAddress? { try? Socket.localAddress(listener.fd) }

    var refusal: [UInt8] {
        Self.response(status: "503 Service Unavailable", body: "too many monitoring connections (at most \(Self.maxConnections))\n")
    }

    func requestTooLarge(_ connection: OpsConnection) {
        connection.queue(Self.response(status: "431 Request Header Fields Too Large",
                                       body: "request head over \(Self.maxRequestBytes) bytes\n"))
    }

    func timedOut(_ connection: OpsConnection) {
        connection.queue(Self.response(status: "408 Request Timeout",
                                       body: "request not received within \(Self.requestTimeoutMs / 1000) s\n"))
    }

    func process(_ connection: OpsConnection) {
        guard !connection.closeAfterWrite else { return }
        guard let headEnd = Self.headEnd(connection.input) else {
            if connection.peerClosed { connection.closeAfterWrite = true }
            return
        }
        let head = connection.input[0..<headEnd]
        connection.input.removeAll()
        connection.closeAfterWrite = true
        let lineEnd = head.firstIndex(of: UInt8(ascii: "\r")) ?? head.endIndex
        let parts = head[head.startIndex..<lineEnd].split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, parts[2].starts(with: Array("HTTP/1.".utf8)) else {
            connection.queue(Self.response(status: "400 Bad Request", body: "expected: GET /metrics HTTP/1.1\n"))
            return
        }
        let method = String(decoding: parts[0], as: UTF8.self)
        var path = String(decoding: parts[1], as: UTF8.self)
        if let query = path.firstIndex(of: "?") { path = String(path[..<query]) }
        guard method == "GET" || method == "HEAD" else {
            connection.queue(Self.response(status: "405 Method Not Allowed", extraHeaders: "Allow: GET, HEAD\r\n",
                                           body: "only GET and HEAD are served\n"))
            return
        }
        let headOnly = method == "HEAD"
        switch path {
        case "/metrics":
            scrapes += 1
            let start = Clock.monotonicNs()
            let body = MetricsText.render(server)
            lastRenderNs = Clock.monotonicNs() &- start
            connection.queue(Self.response(status: "200 OK", contentType: "text/plain; version=0.0.4; charset=utf-8",
                                           body: body, headOnly: headOnly))
        case "/healthz":
            let health = server.health()
            connection.queue(Self.response(status: health.healthy ? "200 OK" : "503 Service Unavailable",
                                           body: health.text, headOnly: headOnly))
        case "/":
            connection.queue(Self.response(status: "200 OK",
                                           body: "switchboard monitoring: /metrics (Prometheus text), /healthz\n",
                                           headOnly: headOnly))
        default:
            connection.queue(Self.response(status: "404 Not Found", body: "no such path; try /metrics or /healthz\n",
                                           headOnly: headOnly))
        }
    }

    /// Index just past the blank line ending the request head, if it has arrived.
    static func headEnd(_ bytes: [UInt8]) -> Int? {
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return i + 4
        }
        return nil
    }

    static func response(status: String, contentType: String = "text/plain; charset=utf-8", extraHeaders: String = "",
                         body: String, headOnly: Bool = false) -> [UInt8] {
        let bodyBytes = Array(body.utf8)
        var out = Array("HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(bodyBytes.count)\r\n\(extraHeaders)Connection: close\r\nCache-Control: no-store\r\n\r\n".utf8)
        if !headOnly { out += bodyBytes }
        return out
    }
}
