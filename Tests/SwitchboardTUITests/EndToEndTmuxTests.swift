// Runs e2e-tmux.sh (next to this file): the real server and two `sbchat tui` sessions in tmux;
// e2e-xterm.sh: `sbchat tui` in a real xterm under Xvfb, driven by xdotool's mouse and keyboard;
// e2e-devices.sh: two devices of one user and another user in tmux; and e2e-failover.sh:
// `sbchat tui --server A,B` moving to B when A is killed, its unsent message following it.
// The binaries are taken from the folder of this test executable (where SwiftPM puts `sbchat`
// and `switchboard`), or from SWITCHBOARD_BIN_DIR. Set SWITCHBOARD_SKIP_E2E=1 to skip, and
// SWITCHBOARD_E2E_OUT=DIR to keep the screen captures (alice.txt, bob.txt, *.ansi).
import Glibc
import Testing

@Suite struct EndToEndTmuxTests {
    @Test(.timeLimit(.minutes(5)))
    func twoTerminalClientsChatThroughTheServer() throws {
        try runScript("e2e-tmux.sh", missing: "tmux is missing and could not be installed")
    }

    @Test(.timeLimit(.minutes(5)))
    func realMouseInARealXterm() throws {
        try runScript("e2e-xterm.sh", missing: "Xvfb, xterm, xdotool, ImageMagick or tmux is missing and could not be installed")
    }

    /// Two `sbchat tui` of one user (two devices) and one of another user, plus `sbchat contacts` meanwhile.
    @Test(.timeLimit(.minutes(5)))
    func twoDevicesOfOneUserStayConnectedAndShowTheWholeConversation() throws {
        try runScript("e2e-devices.sh", missing: "tmux is missing and could not be installed")
    }

    /// Two single-node servers; the terminal client with both fails over when its server is killed.
    @Test(.timeLimit(.minutes(5)))
    func theTerminalClientFailsOverToTheNextServerAndResendsWhatWasUnsent() throws {
        try runScript("e2e-failover.sh", missing: "tmux is missing and could not be installed")
    }

    private func runScript(_ name: String, missing: String) throws {
        if environment("SWITCHBOARD_SKIP_E2E") == "1" { try Test.cancel("SWITCHBOARD_SKIP_E2E=1") }
        let script = String(#filePath.dropLast("EndToEndTmuxTests.swift".count)) + name
        let binDir = environment("SWITCHBOARD_BIN_DIR") ?? executableDirectory()
        let log = "/tmp/sb-e2e-log-\(getpid())-\(name).txt"
        defer { unlink(log) }
        var args = ["/usr/bin/timeout", "300", "/bin/bash", script, binDir]
        if let out = environment("SWITCHBOARD_E2E_OUT") { args.append(out) }
        let status = try run(args, outputTo: log)
        let output = readFile(log)
        print(output)
        if status == 77 { try Test.cancel(Comment(rawValue: missing)) }
        #expect(status == 0, "\(name) exited with \(status):\n\(output)")
        #expect(output.contains(String(name.dropLast(3)) + ": PASS"))
    }
}

private func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

private func executableDirectory() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { return ".build/debug" }
    let path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return String(path[..<slash])
}

private struct SpawnError: Error, CustomStringConvertible { var description: String }

/// Runs a program with stdout and stderr to `outputTo`, stdin from /dev/null; returns the exit status.
private func run(_ args: [String], outputTo path: String) throws -> Int32 {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
    argv.append(nil)
    defer { for p in argv { free(p) } }
    // The test runner may block or ignore signals; a child inheriting that would keep tmux panes
    // alive through `tmux kill-server` (SIGHUP) and leak them. Start it with a clean mask and the
    // default handlers.
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var emptyMask = sigset_t()
    sigemptyset(&emptyMask)
    posix_spawnattr_setsigmask(&attributes, &emptyMask)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for signal in [SIGHUP, SIGINT, SIGTERM, SIGPIPE, SIGQUIT] { sigaddset(&defaults, signal) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, args[0], &actions, &attributes, argv, environ)
    guard rc == 0 else { throw SpawnError(description: "posix_spawn \(args[0]) failed: \(rc)") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    // WIFEXITED / WEXITSTATUS by hand (macros are not imported).
    if status & 0x7F == 0 { return (status >> 8) & 0xFF }
    return 128 + (status & 0x7F)
}

private func readFile(_ path: String) -> String {
    guard let file = fopen(path, "r") else { return "" }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n <= 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}
