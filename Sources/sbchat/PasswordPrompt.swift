// The password prompt on the terminal: no echo, and keys read one at a time so that Ctrl-C cancels
// at once instead of becoming part of the password (glibc's getpass turns ISIG off, which is how a
// ^C ended up in the password). Backspace deletes a character, Ctrl-U the line, Enter ends it,
// Ctrl-D on an empty line cancels; escape sequences (arrow keys) are skipped.
// Invariants: the terminal's settings are restored on every way out, and the password is never echoed.
import Glibc

/// Thrown when the user cancels at the prompt (exit code 130, as for an interrupted command).
let passwordCancelled = Failure(code: 130, "cancelled at the password prompt")

func promptPassword(_ prompt: String) throws -> String {
    let fd = open("/dev/tty", O_RDWR | O_CLOEXEC)
    guard fd >= 0 else { throw Failure(code: 2, "no terminal to ask for the password: set SWITCHBOARD_PASSWORD") }
    defer { close(fd) }
    var saved = termios()
    guard tcgetattr(fd, &saved) == 0 else { throw Failure(code: 2, "cannot read the terminal's settings") }
    var raw = saved
    raw.c_lflag &= ~tcflag_t(ECHO | ICANON | ISIG | IEXTEN)
    withUnsafeMutableBytes(of: &raw.c_cc) { cc in
        cc[Int(VMIN)] = 1
        cc[Int(VTIME)] = 0
    }
    func say(_ text: String) { let b = Array(text.utf8); _ = b.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
    say(prompt)
    guard tcsetattr(fd, TCSAFLUSH, &raw) == 0 else { throw Failure(code: 2, "cannot turn off echo") }
    defer {
        _ = tcsetattr(fd, TCSAFLUSH, &saved)
        say("\n")
    }
    var bytes: [UInt8] = []
    var inEscape = false
    while true {
        var byte: UInt8 = 0
        let n = read(fd, &byte, 1)
        if n < 0 && errno == EINTR { continue }
        guard n == 1 else { throw passwordCancelled }
        if inEscape {
            // ESC [ ... final byte (0x40-0x7E), or ESC and one character.
            if byte == UInt8(ascii: "[") || byte == UInt8(ascii: "O") || (0x20...0x3F).contains(byte) { continue }
            inEscape = false
            continue
        }
        switch byte {
        case 0x03: throw passwordCancelled                    // Ctrl-C
        case 0x04: if bytes.isEmpty { throw passwordCancelled }  // Ctrl-D on an empty line
        case 0x0D, 0x0A: return String(decoding: bytes, as: UTF8.self)
        case 0x7F, 0x08:
            // One UTF-8 character back.
            while let last = bytes.popLast(), last & 0xC0 == 0x80 {}
        case 0x15: bytes.removeAll()                          // Ctrl-U
        case 0x1B: inEscape = true
        case 0x00..<0x20: continue                            // other controls are not password characters
        default: bytes.append(byte)
        }
    }
}
