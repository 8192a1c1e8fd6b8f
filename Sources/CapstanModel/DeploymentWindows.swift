import Foundation

/// Where a deployment window stands at an instant: open (and until when), or closed (and when it
/// opens next). Pure: the reconciler of either platform asks it with its clock's time, so a
/// window is judged the same on this host and on a cluster, and a daemon that starts in the
/// middle of a window (or after one passed while it was down) sees what a running one would.
public struct WindowState: Sendable, Equatable {
    /// When the window that is open now closes; nil when it is closed.
    public var closesAt: Date?
    /// When the next window opens (after `now`); nil when the schedule never fires again.
    public var opensAt: Date?

    public var isOpen: Bool { closesAt != nil }

    public init(closesAt: Date?, opensAt: Date?) {
        self.closesAt = closesAt
        self.opensAt = opensAt
    }
}

extension DeploymentWindow {
    /// At most this many firings are walked in either direction (a window open around the
    /// clock is reported open until the last one walked).
    static let searchLimit = 1000

    /// The state at `now`. A window opens at each time the schedule fires (in `timeZone`, with
    /// the schedule's daylight-saving rules: a skipped local time opens at the jump, a repeated
    /// one opens once) and stays open for `duration`; windows that overlap make one longer
    /// window. An opening exactly at `now` is open.
    public func state(at now: Date) -> WindowState {
        let zone = timeZone.timeZone
        let length = duration.seconds
        // Openings in (now - duration, now]: the latest one decides; later overlapping ones
        // extend it. The search starts a minute earlier, as `next(after:)` is exclusive.
        var closes: Date?
        // The latest opening at or before now: searched back from now in growing steps (a
        // window longer than the schedule's period is found without walking every firing).
        var latest: Date?
        var back: TimeInterval = 60
        while true {
            let span = min(back, length + 60)
            var cursor = now.addingTimeInterval(-span)
            var steps = 0
            while let opening = schedule.next(after: cursor, in: zone), opening <= now, steps < Self.searchLimit {
                latest = opening
                cursor = opening
                steps += 1
            }
            if latest != nil || span >= length + 60 { break }
            back *= 4
        }
        if let latest, latest.addingTimeInterval(length) > now { closes = latest.addingTimeInterval(length) }
        if let open = closes {
            // Openings while it is open keep it open (up to a horizon: a schedule that always
            // overlaps itself is open at least until then).
            var until = open
            var next = schedule.next(after: now, in: zone)
            var steps = 0
            while let opening = next, opening < until, steps < Self.searchLimit {
                until = max(until, opening.addingTimeInterval(length))
                next = schedule.next(after: opening, in: zone)
                steps += 1
            }
            return WindowState(closesAt: until, opensAt: next)
        }
        return WindowState(closesAt: nil, opensAt: schedule.next(after: now, in: zone))
    }
}
