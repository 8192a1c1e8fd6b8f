import CapstanModel
import Foundation

/// Reconcile events, aggregated and retained the way Kubernetes does it:
/// an event identical to a recent one (same object, type, reason and message within
/// `aggregationWindow`) increments that one's `count` and `lastTimestamp` instead of adding a
/// row; events older than `retention` are dropped, and at most `perObjectLimit` are kept per
/// object (the oldest go first).
///
/// This is the rule; the local state store persists it and Kubernetes mode writes core Events.
public struct EventLog: Sendable {
    public var aggregationWindow: TimeInterval
    public var retention: TimeInterval
    public var perObjectLimit: Int
    private var byObject: [ObjectReference: [Event]] = [:]

    public init(aggregationWindow: TimeInterval = 600, retention: TimeInterval = 86_400, perObjectLimit: Int = 1_000) {
        precondition(aggregationWindow >= 0 && retention > 0 && perObjectLimit > 0)
        self.aggregationWindow = aggregationWindow
        self.retention = retention
        self.perObjectLimit = perObjectLimit
    }

    /// Records an event at `now`; returns the stored event and whether it is a new one.
    @discardableResult
    public mutating func record(
        _ type: EventType, reason: String, message: String, about object: ObjectReference, at now: Date
    ) -> (event: Event, isNew: Bool) {
        var events = byObject[object, default: []]
        if let index = events.lastIndex(where: {
            $0.type == type && $0.reason == reason && $0.message == message
                && now.timeIntervalSince($0.lastTimestamp.date) <= aggregationWindow
        }) {
            events[index].count += 1
            events[index].lastTimestamp = Timestamp(now)
            let event = events.remove(at: index)
            events.append(event)  // newest last
            byObject[object] = events
            return (event, false)
        }
        var event = Event()
        event.type = type
        event.reason = reason
        event.message = message
        event.involvedObject = object
        event.firstTimestamp = Timestamp(now)
        event.lastTimestamp = Timestamp(now)
        events.append(event)
        if events.count > perObjectLimit { events.removeFirst(events.count - perObjectLimit) }
        byObject[object] = events
        return (event, true)
    }

    /// Drops events last seen more than `retention` before `now`.
    public mutating func prune(now: Date) {
        for (object, events) in byObject {
            let kept = events.filter { now.timeIntervalSince($0.lastTimestamp.date) <= retention }
            byObject[object] = kept.isEmpty ? nil : kept
        }
    }

    /// The events of one object, oldest first.
    public func events(for object: ObjectReference) -> [Event] { byObject[object] ?? [] }

    /// Every event, ordered by last occurrence (newest last).
    public var all: [Event] {
        byObject.values.flatMap { $0 }.sorted { ($0.lastTimestamp, $0.reason) < ($1.lastTimestamp, $1.reason) }
    }
}
