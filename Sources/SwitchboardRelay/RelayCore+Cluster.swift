// Cluster mode, sans I/O: the directory of users online on other nodes (fed by the nodes' presence
// events), the presence changes it implies for the users online here, and the routing of messages
// other nodes hand to this one for its local receivers (with their own duplicate suppression).
// Nodes are small integers the driver assigns to node names. A single node never calls any of this:
// `remote` and `inboundIDs` stay empty and every decision is the single-node one.
import SwitchboardProtocol
import SwitchboardStore

/// A user online on other nodes: its devices there and its accepted contacts (from the node's presence
/// event), which are the users here to tell when it comes online or goes offline.
public final class RemoteUser {
    public internal(set) var devices: [(node: UInt16, deviceID: String)]
    public internal(set) var contacts: [UserID]
    init(node: UInt16, deviceID: String, contacts: [UserID]) {
        devices = [(node, deviceID)]
        self.contacts = contacts
    }
    /// Where messages to the user go: the node of its oldest device known here.
    public var homeNode: UInt16 { devices[0].node }
    /// The distinct nodes the user has devices on, oldest first (usually one).
    public var nodes: [UInt16] {
        var result: [UInt16] = []
        for device in devices where !result.contains(device.node) { result.append(device.node) }
        return result
    }
    public var nodeCount: Int {
        var count = 0
        for (i, device) in devices.enumerated() where !devices[..<i].contains(where: { $0.node == device.node }) { count += 1 }
        return count
    }
}

extension RelayCore {
    /// A device of `user` logged in on `node`. Returns the connections here to tell that the user is
    /// now online (empty unless it was offline everywhere until now), and the local device with the
    /// same id to take over (the same device logged in again on another node).
    public func remoteDeviceJoined(user: UserID, node: UInt16, deviceID: String, contacts: [UserID])
        -> (notifyOnline: [ConnectionID], takeOver: ConnectionID?) {
        var takeOver: ConnectionID?
        if let local = sessions[user], let device = local.devices.first(where: { $0.deviceID == deviceID }) {
            takeOver = device.connection
        }
        let wasOnline = sessions[user] != nil || remote[user] != nil
        if let known = remote[user] {
            // The same device id is in one place at a time: a login elsewhere took it over.
            known.devices.removeAll { $0.deviceID == deviceID }
            known.devices.append((node, deviceID))
            known.contacts = contacts
        } else {
            remote[user] = RemoteUser(node: node, deviceID: deviceID, contacts: contacts)
        }
        // A takeover here leaves the user online (on the other node): nobody is told "offline".
        guard !wasOnline else { return ([], takeOver) }
        return (watchers(of: user, among: contacts), takeOver)
    }

    /// A device of `user` on `node` logged out. Returns the connections here to tell that the user
    /// went offline (empty unless it is now offline everywhere).
    /// `contacts`: the user's accepted contacts as the store has them now (they may have changed since it
    /// logged in); nil: those its node sent at login.
    public func remoteDeviceLeft(user: UserID, node: UInt16, deviceID: String, contacts: [UserID]? = nil) -> [ConnectionID] {
        guard let known = remote[user] else { return [] }
        known.devices.removeAll { $0.node == node && $0.deviceID == deviceID }
        guard known.devices.isEmpty else { return [] }
        remote[user] = nil
        if sessions[user] != nil { return [] }
        return watchers(of: user, among: contacts ?? known.contacts)
    }

    /// `node` is gone (its heartbeats stopped) or restarted: every user known only through it goes
    /// offline. Returns, per such user, the connections here to tell.
    public func remoteNodeGone(_ node: UInt16, contactsOf: (UserID) -> [UserID]? = { _ in nil })
        -> [(user: UserID, notify: [ConnectionID])] {
        var gone: [(UserID, RemoteUser)] = []
        for (user, known) in remote where known.devices.contains(where: { $0.node == node }) {
            gone.append((user, known))
        }
        var result: [(user: UserID, notify: [ConnectionID])] = []
        for (user, known) in gone {
            known.devices.removeAll { $0.node == node }
            guard known.devices.isEmpty else { continue }
            remote[user] = nil
            if sessions[user] == nil { result.append((user, watchers(of: user, among: contactsOf(user) ?? known.contacts))) }
        }
        return result
    }

    /// The accepted contacts of `user` online here (for presence events this node publishes).
    public func acceptedContacts(of user: UserID) -> [UserID] {
        guard let session = sessions[user] else { return [] }
        var result: [UserID] = []
        for (contact, state) in session.contacts where state == .accepted { result.append(contact) }
        return result
    }

    /// Connections here of users among `candidates` who accepted `user` (they see its presence).
    private func watchers(of user: UserID, among candidates: [UserID]) -> [ConnectionID] {
        var result: [ConnectionID] = []
        for contact in candidates {
            guard let session = sessions[contact], session.contacts[user] == .accepted else { continue }
            for device in session.devices { result.append(device.connection) }
        }
        return result
    }

    // MARK: messages handed here by other nodes

    /// Where a message another node forwarded for a receiver here goes. The sending node checked the
    /// sender's session, contacts and the body size; here only the receiver's devices and this node's
    /// memory of the sender's recent ids count. `.store` when the receiver is no longer here (it will
    /// find the message in its mailbox on whichever node it is).
    public func routeInbound(from sender: UserID, to recipient: UserID, messageID: UInt64, bodyBytes: Int) -> RouteDecision {
        switch inboundIDs[sender]?.ids.lookup(messageID) {
        case .some(.inFlight): return .dropInFlightDuplicate
        case .some(.completed(let status)): return .acknowledgeDuplicate(status)
        case .none: break
        }
        // The sender resent it from a device here (its previous node's copy was slower than its reconnection).
        switch recentIDs[sender]?.ids.lookup(messageID) {
        case .some(.inFlight):
            // The sending node is answered when the local one settles (`takeInboundResend`).
            if inboundResends.count < Self.maxCrossResends { inboundResends.insert(MessageKey(sender: sender, messageID: messageID)) }
            return .dropInFlightDuplicate
        case .some(.completed(let status)): return .acknowledgeDuplicate(status)
        case .none: break
        }
        if let target = sessions[recipient] {
            if let only = target.soleReachable {
                rememberInbound(sender: sender, messageID: messageID, pendingCopies: 1)
                return .deliver(only)
            }
            var reachable = 0
            for device in target.devices where !device.congested { reachable += 1 }
            if reachable > 0 {
                rememberInbound(sender: sender, messageID: messageID, pendingCopies: reachable)
                return .deliverToDevices(count: reachable)
            }
        }
        rememberInbound(sender: sender, messageID: messageID, pendingCopies: 0)
        return storeDecision(sender: sender, recipient: recipient, messageID: messageID, bodyBytes: bodyBytes,
                             alreadyRemembered: true, inbound: true)
    }

    func rememberInbound(sender: UserID, messageID: UInt64, pendingCopies: Int) {
        let history: SenderHistory
        if let existing = inboundIDs[sender] {
            history = existing
        } else {
            history = SenderHistory(capacity: limits.dedupeWindow)
            inboundIDs[sender] = history
        }
        history.ids.insertInFlight(messageID, pendingCopies: UInt16(clamping: pendingCopies))
    }

    /// An inbound message reached its final state here. True the first time (then the sending node is
    /// told), false for a later device's acknowledgement of the same message.
    public func inboundCompleted(sender: UserID, messageID: UInt64, status: SendStatus) -> Bool {
        guard let history = inboundIDs[sender] else { return false }
        return history.ids.complete(messageID, status: status)
    }

    public func inboundDeliveryLost(sender: UserID, messageID: UInt64) -> RecentMessageIDs.CopyLoss {
        guard let history = inboundIDs[sender] else { return .unknown }
        return history.ids.copyLost(messageID)
    }

    /// An inbound message failed for good here (its mail was refused): forgotten, so a resend is tried again.
    public func inboundFailed(sender: UserID, messageID: UInt64) {
        inboundIDs[sender]?.ids.remove(messageID)
    }

    /// A forwarded message's node never answered (it died) or answered that it could not take it: the
    /// message goes to the recipient's mailbox from here (the sender's id is still in flight).
    public func forwardFailedToMailbox(sender: UserID, recipient: UserID, messageID: UInt64, bodyBytes: Int) -> RouteDecision {
        storeDecision(sender: sender, recipient: recipient, messageID: messageID, bodyBytes: bodyBytes, alreadyRemembered: true)
    }

    /// Another node stored mail for `recipient` (applied from the cluster log): counted toward its quota
    /// here, and later seqs assigned here stay above it.
    public func foreignMailStored(recipient: UserID, seq: UInt64, bytes: Int) {
        guard var box = mailboxes[recipient], seq > box.loadedThrough else { return }
        box.count += 1
        box.bytes += bytes
        box.lastSeq = max(box.lastSeq, seq)
        mailboxes[recipient] = box
    }

    /// The mailbox usage as the store has it now (cluster mode, at login: writes of other nodes may have been
    /// applied between the cached read and their notice). Keeps what devices acknowledged.
    public func refreshMailbox(of user: UserID, usage: MailboxUsage) {
        var box = mailboxes[user] ?? MailboxState(count: 0, bytes: 0, lastSeq: 0)
        box.count = usage.count
        box.bytes = usage.bytes
        box.lastSeq = max(box.lastSeq, usage.lastSeq)
        box.loadedThrough = usage.lastSeq
        mailboxes[user] = box
    }

    /// Another node deleted mail of `recipient`: the usage is read again from the store when next needed.
    public func forgetMailboxUsage(of recipient: UserID) {
        guard let box = mailboxes[recipient], box.ackedThrough == 0 || sessions[recipient] == nil else { return }
        mailboxes[recipient] = nil
    }

    /// The sender resent this inbound message from a device here while it was in flight: its devices here, to
    /// answer now that it settled (once).
    public func takeLocalResend(sender: UserID, messageID: UInt64) -> SenderDevices? {
        guard !localResends.isEmpty, localResends.remove(MessageKey(sender: sender, messageID: messageID)) != nil else { return nil }
        return devices(of: sender)
    }

    /// Where `user`'s answers go here (nil when it has no device here).
    public func devicesOf(_ user: UserID) -> SenderDevices? { devices(of: user) }

    /// Whether the sender resent this inbound message from a device here and waits for its answer here.
    public func awaitsLocalResend(sender: UserID, messageID: UInt64) -> Bool {
        !localResends.isEmpty && localResends.contains(MessageKey(sender: sender, messageID: messageID))
    }

    /// The sender's previous node handed this message here while the sender's resend from here was in flight:
    /// true once, when that node is to be answered too.
    @inline(__always)
    public func takeInboundResend(sender: UserID, messageID: UInt64) -> Bool {
        !inboundResends.isEmpty && inboundResends.remove(MessageKey(sender: sender, messageID: messageID)) != nil
    }

    /// Drops inbound ids of senders with nothing in flight here (called by the periodic maintenance:
    /// the memory is only for resends that arrive while a message is still fresh).
    public func pruneInbound() {
        var idle: [UserID] = []
        for (sender, history) in inboundIDs where history.ids.inFlightCount == 0 { idle.append(sender) }
        if idle.count > 4_096 { for sender in idle.prefix(idle.count - 4_096) { inboundIDs[sender] = nil } }
        // Waiters whose first copy is no longer in flight here (it settled without a word, or was forgotten).
        if !localResends.isEmpty {
            localResends = localResends.filter { key in
                if case .inFlight? = inboundIDs[key.sender]?.ids.lookup(key.messageID) { return true }
                return false
            }
        }
        if !inboundResends.isEmpty {
            inboundResends = inboundResends.filter { key in
                if case .inFlight? = recentIDs[key.sender]?.ids.lookup(key.messageID) { return true }
                return false
            }
        }
    }
}

extension RelayCore {
    /// An inbound message delivered here but never acknowledged (its receiver dropped): to the mailbox.
    public func inboundToMailbox(sender: UserID, recipient: UserID, messageID: UInt64, bodyBytes: Int) -> RouteDecision {
        storeDecision(sender: sender, recipient: recipient, messageID: messageID, bodyBytes: bodyBytes,
                      alreadyRemembered: true, inbound: true)
    }
}

extension RelayCore {
    /// The core remembers `messageID` of `sender` (its own window or as an inbound message).
    public func remembers(sender: UserID, messageID: UInt64) -> Bool {
        recentIDs[sender]?.ids.lookup(messageID) != nil || inboundIDs[sender]?.ids.lookup(messageID) != nil
    }
}

extension RelayCore {
    /// `messageID` of `sender` came here from another node and has not reached its final state.
    public func isInboundInFlight(sender: UserID, messageID: UInt64) -> Bool {
        guard let history = inboundIDs[sender], case .inFlight? = history.ids.lookup(messageID) else { return false }
        return true
    }
}
