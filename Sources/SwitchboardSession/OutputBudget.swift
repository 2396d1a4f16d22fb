// The one place that decides what a connection's output backlog means. Every frame a connection is
// sent goes through the server's single output path, which calls `update` with the bytes not yet
// written (`unwritten`) and the bytes held in all (`retained`: unwritten plus written DELIVER frames
// kept until acknowledged).
//
// Invariants: reading pauses above `pauseAbove` unwritten bytes (a small cap before login) and
// resumes below half of it, so a peer that does not read cannot make the server produce more than
// one read's worth of replies past the mark; a logged-in receiver is congested above `congestAbove`
// retained bytes (its new messages go to its mailbox) until it drops below half; above `hardCap`
// retained bytes the verdict is `.overHardCap` and the caller closes with slowConsumer.

public struct OutputBudgetLimits: Sendable, Equatable {
    public var pauseAboveBytes: Int
    public var preLoginPauseAboveBytes: Int
    public var congestAboveBytes: Int
    public var hardCapBytes: Int

    public init(pauseAboveBytes: Int = 256 << 10, preLoginPauseAboveBytes: Int = 16 << 10,
                congestAboveBytes: Int = 256 << 10, hardCapBytes: Int = 4 << 20) {
        self.pauseAboveBytes = pauseAboveBytes
        self.preLoginPauseAboveBytes = preLoginPauseAboveBytes
        self.congestAboveBytes = congestAboveBytes
        self.hardCapBytes = hardCapBytes
    }
}

public struct OutputBudget: Sendable {
    public struct Change: Sendable, Equatable {
        public var overHardCap = false
        /// Reading must stop (true) or may resume (false); nil: unchanged.
        public var reading: Bool?
        /// The receiver became congested (true) or decongested (false); nil: unchanged.
        public var congested: Bool?
        public var isEmpty: Bool { !overHardCap && reading == nil && congested == nil }
    }

    public private(set) var readingPaused = false
    public private(set) var congested = false

    public init() {}

    public mutating func update(unwritten: Int, retained: Int, loggedIn: Bool, limits: OutputBudgetLimits) -> Change {
        var change = Change()
        if retained > limits.hardCapBytes { change.overHardCap = true }
        let pauseAbove = loggedIn ? limits.pauseAboveBytes : limits.preLoginPauseAboveBytes
        if !readingPaused && unwritten > pauseAbove {
            readingPaused = true
            change.reading = false
        } else if readingPaused && unwritten <= pauseAbove / 2 {
            readingPaused = false
            change.reading = true
        }
        if loggedIn {
            if !congested && retained > limits.congestAboveBytes {
                congested = true
                change.congested = true
            } else if congested && retained < limits.congestAboveBytes / 2 {
                congested = false
                change.congested = false
            }
        }
        return change
    }
}
