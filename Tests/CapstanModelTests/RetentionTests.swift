import CapstanModel
import Foundation
import Testing

/// restic's `forget` semantics, over backups taken at irregular times.
@Suite struct RetentionTests {
    static let utc = TimeZone(identifier: "UTC")!

    static func date(_ text: String) -> Date {
        let formatter = ISO8601DateFormatter()
        return formatter.date(from: text)!
    }

    static func policy(last: Int = 0, hourly: Int = 0, daily: Int = 0, weekly: Int = 0, monthly: Int = 0, yearly: Int = 0) -> RetentionPolicy {
        var policy = RetentionPolicy()
        (policy.keepLast, policy.keepHourly, policy.keepDaily, policy.keepWeekly, policy.keepMonthly, policy.keepYearly) = (last, hourly, daily, weekly, monthly, yearly)
        return policy
    }

    /// Twenty simulated days of a backup at 02:00 and 14:00, with day 5 and days 11-12 missed
    /// (the daemon was down): what restic keeps with keepLast 2, keepDaily 5, keepWeekly 2,
    /// keepMonthly 2, worked out by hand from its rules.
    @Test func twentyDays() {
        var backups: [(id: String, time: Date)] = []
        for day in 1...20 where day != 5 && day != 11 && day != 12 {
            for hour in ["02", "14"] {
                let text = String(format: "2026-11-%02dT%@:00:00Z", day, hour)
                backups.append((text, Self.date(text)))
            }
        }
        let kept = Self.policy(last: 2, daily: 5, weekly: 2, monthly: 2).kept(backups, in: Self.utc)
        // last 2: 20T14, 20T02. daily 5 (newest of each day): 20, 19, 18, 17, 16 (at 14:00).
        // weekly 2 (ISO weeks: Nov 16-22 is week 47, Nov 9-15 week 46): 20T14, 15T14.
        // monthly 2: November (20T14); October has none, so the rule keeps nothing more.
        #expect(kept == ["2026-11-20T14:00:00Z", "2026-11-20T02:00:00Z", "2026-11-19T14:00:00Z", "2026-11-18T14:00:00Z",
                         "2026-11-17T14:00:00Z", "2026-11-16T14:00:00Z", "2026-11-15T14:00:00Z"])
    }

    @Test func periodsWithoutBackupsDoNotCount() {
        // Daily 3 over backups on days 1, 4 and 9: all three, though they span nine days.
        let backups = ["2026-01-01T10:00:00Z", "2026-01-04T10:00:00Z", "2026-01-09T10:00:00Z", "2026-01-09T09:00:00Z"].map { ($0, Self.date($0)) }
        #expect(Self.policy(daily: 3).kept(backups, in: Self.utc) == ["2026-01-09T10:00:00Z", "2026-01-04T10:00:00Z", "2026-01-01T10:00:00Z"])
    }

    @Test func newestAlwaysKeptAndTimeZone() {
        let backups = ["2026-03-01T23:30:00Z", "2026-03-01T22:30:00Z"].map { ($0, Self.date($0)) }
        // In UTC both are on March 1; in Tokyo (UTC+9) they are on March 2, both: daily 2 keeps one day's newest.
        #expect(Self.policy(daily: 2).kept(backups, in: Self.utc) == ["2026-03-01T23:30:00Z"])
        #expect(Self.policy(hourly: 2).kept(backups, in: TimeZone(identifier: "Asia/Tokyo")!).count == 2)
        #expect(Self.policy(yearly: 1).kept([(id: String, time: Date)](), in: Self.utc).isEmpty)
    }
}
