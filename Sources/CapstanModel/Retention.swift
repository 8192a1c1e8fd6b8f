import Foundation

extension RetentionPolicy {
    /// Which backups to keep, as restic's `forget` decides (restic.readthedocs.io, "Removing
    /// backup snapshots"): newest first, each rule keeps the newest backup of each of its last
    /// N periods that have a backup (hours, days, ISO weeks, months, years in `timeZone`;
    /// `keepLast` keeps the newest N); a backup any rule keeps is kept. The newest backup is
    /// always kept, whatever the policy.
    public func kept<ID: Hashable>(_ backups: [(id: ID, time: Date)], in timeZone: TimeZone) -> Set<ID> {
        let sorted = backups.sorted { $0.time > $1.time }
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = timeZone
        typealias Bucket = (Date) -> [Int]
        let rules: [(count: Int, bucket: Bucket?)] = [
            (keepLast, nil),
            (keepHourly, { let c = calendar.dateComponents([.year, .month, .day, .hour], from: $0); return [c.year!, c.month!, c.day!, c.hour!] }),
            (keepDaily, { let c = calendar.dateComponents([.year, .month, .day], from: $0); return [c.year!, c.month!, c.day!] }),
            (keepWeekly, { let c = calendar.dateComponents([.yearForWeekOfYear, .weekOfYear], from: $0); return [c.yearForWeekOfYear!, c.weekOfYear!] }),
            (keepMonthly, { let c = calendar.dateComponents([.year, .month], from: $0); return [c.year!, c.month!] }),
            (keepYearly, { [calendar.component(.year, from: $0)] }),
        ]
        var keep = Set<ID>()
        if let newest = sorted.first { keep.insert(newest.id) }
        for rule in rules where rule.count > 0 {
            var left = rule.count
            var last: [Int]?
            for (index, backup) in sorted.enumerated() where left > 0 {
                let bucket = rule.bucket?(backup.time) ?? [index]
                if bucket != last {
                    keep.insert(backup.id)
                    left -= 1
                    last = bucket
                }
            }
        }
        return keep
    }
}
