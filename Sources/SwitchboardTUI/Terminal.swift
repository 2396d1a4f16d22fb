// The real terminal: raw mode through termios, the alternate screen, mouse reporting, bracketed
// paste, the window title, window size, and restoring all of it on exit, on SIGTERM/SIGHUP/SIGINT/
// SIGQUIT and on crash signals (the handlers only call async-signal-safe functions: write,
// tcsetattr, signal, raise). SIGWINCH writes a byte to a self-pipe the run loop polls.
// Invariants: `enterSequence` never resets a mouse mode (a `?1002l` after `?1000h` is what
// terminals like tmux took as "mouse off"), and `leaveSequence` turns off every mode it turned on,
// in reverse order, and pops the window title pushed at start.
import Glibc

/// Signal-handler state: plain globals, set up before any handler is installed.
nonisolated(unsafe) private var savedTermios = termios()
nonisolated(unsafe) private var terminalActive: Int32 = 0
nonisolated(unsafe) private var restoreBytes: UnsafeMutablePointer<UInt8>?
nonisolated(unsafe) private var restoreCount = 0
nonisolated(unsafe) private var winchWriteFD: Int32 = -1

/// Modes the client turns on: alternate screen (1049), mouse button tracking (1000: press and
/// release, wheel; 1002: also motion while a button is held), SGR mouse encoding (1006: no 223-column
/// limit), bracketed paste (2004), no auto-wrap (7l), hidden cursor; the window title is pushed
/// (22;0t) so that leaving can restore it.
public let terminalEnterSequence = "\u{1B}[22;0t\u{1B}[?1049h\u{1B}[?1000h\u{1B}[?1002h\u{1B}[?1006h\u{1B}[?2004h\u{1B}[?7l\u{1B}[?25l\u{1B}[2J"
/// Every mode of `terminalEnterSequence` back off, in reverse order, then the title popped.
public let terminalLeaveSequence = "\u{1B}[0m\u{1B}[?2004l\u{1B}[?1006l\u{1B}[?1002l\u{1B}[?1000l\u{1B}[?7h\u{1B}[?25h\u{1B}[?1049l\u{1B}[23;0t"
private let enterSequence = terminalEnterSequence
private let leaveSequence = terminalLeaveSequence

private func restoreFromSignal() {
    guard terminalActive != 0 else { return }
    terminalActive = 0
    if let restoreBytes { _ = Glibc.write(1, restoreBytes, restoreCount) }
    _ = tcsetattr(0, TCSAFLUSH, &savedTermios)
}

private let fatalSignals: [Int32] = [SIGTERM, SIGHUP, SIGINT, SIGQUIT, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP]

public final class Terminal {
    public private(set) var active = false
    /// Readable when the window size changed.
    public let resizeFD: Int32
    private let resizeWriteFD: Int32

    public init() throws {
        guard isatty(0) != 0, isatty(1) != 0 else { throw TerminalError("standard input and output must be a terminal") }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw TerminalError("pipe failed: errno \(errno)") }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        resizeFD = fds[0]
        resizeWriteFD = fds[1]
    }

    deinit {
        leave()
        close(resizeFD)
        close(resizeWriteFD)
    }

    /// Raw mode, alternate screen, mouse reporting; installs the restoring signal handlers.
    public func enter() throws {
        guard !active else { return }
        guard tcgetattr(0, &savedTermios) == 0 else { throw TerminalError("tcgetattr failed: errno \(errno)") }
        let bytes = Array(leaveSequence.utf8)
        if restoreBytes == nil {
            restoreBytes = .allocate(capacity: bytes.count)
            restoreBytes!.initialize(from: bytes, count: bytes.count)
            restoreCount = bytes.count
        }
        var raw = savedTermios
        raw.c_iflag &= ~tcflag_t(BRKINT | ICRNL | INPCK | ISTRIP | IXON)
        raw.c_oflag &= ~tcflag_t(OPOST)
        raw.c_cflag |= tcflag_t(CS8)
        raw.c_lflag &= ~tcflag_t(ECHO | ICANON | IEXTEN | ISIG)
        withUnsafeMutableBytes(of: &raw.c_cc) { cc in
            cc[Int(VMIN)] = 1
            cc[Int(VTIME)] = 0
        }
        winchWriteFD = resizeWriteFD
        installHandlers()
        terminalActive = 1
        guard tcsetattr(0, TCSAFLUSH, &raw) == 0 else {
            terminalActive = 0
            throw TerminalError("tcsetattr failed: errno \(errno)")
        }
        active = true
        write(enterSequence)
    }

    /// Restores the terminal as it was. Safe to call twice.
    public func leave() {
        guard active else { return }
        active = false
        terminalActive = 0
        write(leaveSequence)
        _ = tcsetattr(0, TCSAFLUSH, &savedTermios)
        for sig in fatalSignals { signal(sig, SIG_DFL) }
        signal(SIGWINCH, SIG_DFL)
    }

    private func installHandlers() {
        for sig in fatalSignals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { sig in
                restoreFromSignal()
                signal(sig, SIG_DFL)
                raise(sig)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = 0  // the handler resets the action itself
            sigaction(sig, &action, nil)
        }
        var winch = sigaction()
        winch.__sigaction_handler.sa_handler = { _ in
            var byte: UInt8 = 1
            let saved = errno
            _ = Glibc.write(winchWriteFD, &byte, 1)
            errno = saved
        }
        sigemptyset(&winch.sa_mask)
        winch.sa_flags = Int32(SA_RESTART)
        sigaction(SIGWINCH, &winch, nil)
    }

    /// Sets the window title (OSC 2); controls in `title` are dropped.
    public func setTitle(_ title: String) {
        write("\u{1B}]2;" + String(title.filter { !TextWidth.isControl($0) }) + "\u{07}")
    }

    /// Rings the terminal bell.
    public func bell() { write("\u{07}") }

    public func drainResize() {
        var scratch = [UInt8](repeating: 0, count: 64)
        while read(resizeFD, &scratch, scratch.count) > 0 {}
    }

    /// Columns and rows; 80x24 when the terminal does not say.
    public func size() -> (width: Int, height: Int) {
        var ws = winsize()
        if ioctl(1, UInt(TIOCGWINSZ), &ws) == 0, ws.ws_col > 0, ws.ws_row > 0 {
            return (Int(ws.ws_col), Int(ws.ws_row))
        }
        return (80, 24)
    }

    /// Writes everything (retrying short writes and EINTR/EAGAIN).
    public func write(_ text: String) {
        var bytes = Array(text.utf8)
        var offset = 0
        bytes.withUnsafeMutableBytes { raw in
            while offset < raw.count {
                let n = Glibc.write(1, raw.baseAddress! + offset, raw.count - offset)
                if n > 0 { offset += n; continue }
                if n < 0 && (errno == EINTR || errno == EAGAIN) {
                    var pfd = pollfd(fd: 1, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&pfd, 1, 100)
                    continue
                }
                return
            }
        }
    }

    /// Reads what stdin has (after poll said readable); nil at end of input.
    public func readInput() -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(0, &buffer, buffer.count)
            if n > 0 { return Array(buffer[0..<n]) }
            if n == 0 { return nil }
            if errno == EINTR { continue }
            if errno == EAGAIN { return [] }
            return nil
        }
    }
}

public struct TerminalError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
