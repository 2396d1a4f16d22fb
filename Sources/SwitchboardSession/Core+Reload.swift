// A configuration reload, on the loop thread: the new limits replace the old ones, and everything the core
// derived from them (output budget marks, auth gate limits, mailbox quotas) is derived again. The caller
// (RelayServer's reload, driven by ServeSettings) changes only the settings it marks live; those that are
// announced in WELCOME (frame sizes, timeouts) or fixed at start (threads, dedupe window) wait for a restart.
// Invariants: runs between events, never inside one; a connection's backlog is judged again at once
// against the new marks (a lowered hard cap closes, with slowConsumer, whoever is already above it).
extension ServerCore {
    public func applyLive(_ new: SessionConfiguration) {
        configuration = new
        budgetLimits = new.budgetLimits
        quietBelowBytes = min(budgetLimits.preLoginPauseAboveBytes, budgetLimits.pauseAboveBytes,
                              budgetLimits.congestAboveBytes, budgetLimits.hardCapBytes)
        authGate.limits = new.authLimits
        core.limits.mailboxMaxMessages = Int(new.limits.mailboxMaxMessages)
        core.limits.mailboxMaxBytes = Int(new.limits.mailboxMaxBytes)
        for connection in connections.values where !connection.isClosing { applyBudget(connection) }
        if !storeWaiters.isEmpty && storeBacklogBytes <= configuration.maxStoreBacklogBytes / 2 {
            let waiters = storeWaiters
            storeWaiters.removeAll()
            for connection in waiters {
                connection.storePaused = false
                resumeReading(connection)
            }
        }
    }
}
