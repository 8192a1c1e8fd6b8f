import Foundation

/// A standard 5-field cron schedule (`minute hour day-of-month month day-of-week`) or one of
/// `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`.
///
/// Semantics are Vixie cron's (as Kubernetes CronJobs): when both day fields are restricted, a
/// day matches if either does; day-of-week 7 is Sunday; names (`JAN`, `MON`) are accepted.
public struct CronSchedule: SpecValue, Hashable, CustomStringConvertible {
    public let text: String
    let minutes: UInt64
    let hours: UInt32
    let daysOfMonth: UInt32
    let months: UInt16
    let daysOfWeek: UInt8
    let dayOfMonthRestricted: Bool
    let dayOfWeekRestricted: Bool

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public let description: String
    }

    private static let macros: [String: String] = [
        "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
        "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
    ]
    private static let monthNames = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    private static let dayNames = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]

    public init(_ text: String) throws(ParseError) {
        self.text = text
        let trimmed = text.trimmingSpaces()
        var expression = trimmed
        if trimmed.hasPrefix("@") {
            guard let expanded = CronSchedule.macros[trimmed.lowercased()] else {
                throw ParseError(description: "unknown cron macro \"\(trimmed)\" (use @yearly, @monthly, @weekly, @daily or @hourly)")
            }
            expression = expanded
        }
        let fields = expression.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard fields.count == 5 else {
            var message = "cron schedule \"\(text)\" has \(fields.count) field\(fields.count == 1 ? "" : "s"); expected 5: minute hour day-of-month month day-of-week"
            if fields.count == 6 { message += " (seconds are not supported)" }
            throw ParseError(description: message)
        }
        minutes = try CronSchedule.parseField(fields[0], name: "minute", range: 0...59, names: [])
        hours = UInt32(try CronSchedule.parseField(fields[1], name: "hour", range: 0...23, names: []))
        daysOfMonth = UInt32(try CronSchedule.parseField(fields[2], name: "day-of-month", range: 1...31, names: []))
        months = UInt16(try CronSchedule.parseField(fields[3], name: "month", range: 1...12, names: CronSchedule.monthNames, nameBase: 1))
        var dow = try CronSchedule.parseField(fields[4], name: "day-of-week", range: 0...7, names: CronSchedule.dayNames)
        if dow & (1 << 7) != 0 { dow = (dow | 1) & 0x7F }
        daysOfWeek = UInt8(dow)
        dayOfMonthRestricted = !(fields[2] == "*" || fields[2] == "?")
        dayOfWeekRestricted = !(fields[4] == "*" || fields[4] == "?")
    }

    private static func parseField(
        _ field: String, name: String, range: ClosedRange<Int>, names: [String], nameBase: Int = 0
    ) throws(ParseError) -> UInt64 {
        func value(_ text: Substring) throws(ParseError) -> Int {
            if let number = Int(text) {
                guard range.contains(number) else {
                    throw ParseError(description: "\(name) field \"\(field)\": \(number) is out of range \(range.lowerBound)-\(range.upperBound)")
                }
                return number
            }
            if let index = names.firstIndex(of: text.uppercased()) { return index + nameBase }
            throw ParseError(description: "\(name) field \"\(field)\": \"\(text)\" is not a number\(names.isEmpty ? "" : " or a name")")
        }
        var bits: UInt64 = 0
        for item in field.split(separator: ",", omittingEmptySubsequences: false) {
            if item.isEmpty { throw ParseError(description: "\(name) field \"\(field)\" has an empty list item") }
            let parts = item.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count <= 2 else { throw ParseError(description: "\(name) field \"\(field)\" has more than one '/'") }
            var step = 1
            if parts.count == 2 {
                guard let parsed = Int(parts[1]), parsed > 0 else {
                    throw ParseError(description: "\(name) field \"\(field)\": step \"\(parts[1])\" must be a positive number")
                }
                step = parsed
            }
            var low: Int, high: Int
            if parts[0] == "*" || parts[0] == "?" {
                low = range.lowerBound
                high = range.upperBound == 7 ? 6 : range.upperBound
            } else if let dash = parts[0].firstIndex(of: "-") {
                low = try value(parts[0][..<dash])
                high = try value(parts[0][parts[0].index(after: dash)...])
                guard low <= high else {
                    throw ParseError(description: "\(name) field \"\(field)\": range \(low)-\(high) is backwards")
                }
            } else {
                low = try value(parts[0])
                high = parts.count == 2 ? (range.upperBound == 7 ? 6 : range.upperBound) : low
            }
            var current = low
            while current <= high {
                bits |= 1 << UInt64(current)
                current += step
            }
        }
        return bits
    }

    /// The first time strictly after `date` at which the schedule fires, in `timeZone`;
    /// nil when it never fires (`0 0 31 2 *`).
    ///
    /// Daylight saving, as Vixie cron: a local time skipped by a jump forward fires at the
    /// instant of the jump; a local time that happens twice (a jump back) fires once for a
    /// job with a fixed hour, while jobs with a wildcard hour keep their rhythm.
    public func next(after date: Date, in timeZone: TimeZone) -> Date? {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        var candidate = Date(timeIntervalSince1970: (date.timeIntervalSince1970 / 60).rounded(.down) * 60 + 60)
        let limit = candidate.addingTimeInterval(86400 * 366 * 9)
        while candidate < limit {
            let parts = calendar.dateComponents([.year, .month, .day, .hour, .minute, .weekday], from: candidate)
            guard let year = parts.year, let month = parts.month, let day = parts.day, let hour = parts.hour,
                  let minute = parts.minute, let weekday = parts.weekday
            else { return nil }
            if months & (1 << UInt16(month)) == 0 {
                guard let firstOfMonth = calendar.date(from: DateComponents(year: year, month: month, day: 1)),
                      let nextMonth = calendar.date(byAdding: .month, value: 1, to: firstOfMonth) else { return nil }
                candidate = calendar.startOfDay(for: nextMonth)
                continue
            }
            if !dayMatches(day: day, weekday: weekday - 1) {
                guard let tomorrow = calendar.date(byAdding: .day, value: 1, to: calendar.startOfDay(for: candidate)) else { return nil }
                candidate = calendar.startOfDay(for: tomorrow)
                continue
            }
            let hourMatches = hours & (1 << UInt32(hour)) != 0
            if !hourMatches || minutes & (1 << UInt64(minute)) == 0 {
                let step = hourMatches ? 60 : 60 * (60 - minute)
                let following = candidate.addingTimeInterval(Double(step))
                // A jump forward: fire at once if a skipped local time was due.
                let after = calendar.dateComponents([.day, .hour, .minute], from: following)
                if after.day == day, let h = after.hour, let m = after.minute {
                    let expected = hour * 60 + minute + step / 60
                    let reached = h * 60 + m
                    if reached > expected,
                       (expected..<reached).contains(where: { hours & (1 << UInt32($0 / 60)) != 0 && minutes & (1 << UInt64($0 % 60)) != 0 }) {
                        return following
                    }
                }
                candidate = following
                continue
            }
            if hourRestricted && CronSchedule.isRepeatedWallTime(candidate, in: timeZone) {
                candidate = candidate.addingTimeInterval(60)
                continue
            }
            return candidate
        }
        return nil
    }

    /// Whether some date matches: a restricted day-of-week always matches some day; otherwise
    /// some named day-of-month must exist in some named month (February has 29 days in leap years).
    public var canFire: Bool {
        if dayOfWeekRestricted && dayOfMonthRestricted { return true }
        if !dayOfMonthRestricted { return true }
        let longest = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        return (1...12).contains { month in
            months & (1 << UInt16(month)) != 0 && (1...longest[month]).contains { daysOfMonth & (1 << UInt32($0)) != 0 }
        }
    }

    /// Whether the hour field names fewer than all 24 hours.
    var hourRestricted: Bool { hours & 0xFFFFFF != 0xFFFFFF }

    /// Whether the local time at `instant` already happened earlier (the second pass of a jump back).
    static func isRepeatedWallTime(_ instant: Date, in timeZone: TimeZone) -> Bool {
        let offset = timeZone.secondsFromGMT(for: instant)
        let shift = timeZone.secondsFromGMT(for: instant.addingTimeInterval(-3 * 3600)) - offset
        guard shift > 0 else { return false }
        return timeZone.secondsFromGMT(for: instant.addingTimeInterval(Double(-shift))) == offset + shift
    }

    /// Whether the schedule fires at the minute containing `date`.
    public func matches(_ date: Date, in timeZone: TimeZone) -> Bool {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        let p = calendar.dateComponents([.month, .day, .hour, .minute, .weekday], from: date)
        return months & (1 << UInt16(p.month!)) != 0 && dayMatches(day: p.day!, weekday: p.weekday! - 1)
            && hours & (1 << UInt32(p.hour!)) != 0 && minutes & (1 << UInt64(p.minute!)) != 0
    }

    private func dayMatches(day: Int, weekday: Int) -> Bool {
        let domMatch = daysOfMonth & (1 << UInt32(day)) != 0
        let dowMatch = daysOfWeek & (1 << UInt8(weekday)) != 0
        if dayOfMonthRestricted && dayOfWeekRestricted { return domMatch || dowMatch }
        return domMatch && dowMatch
    }

    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> CronSchedule? {
        guard case .scalar(let text, _) = node.value else {
            context.fail("expected a cron schedule such as \"0 2 * * *\", got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        do {
            let schedule = try CronSchedule(text)
            if !schedule.canFire {
                context.fail("cron schedule \"\(text)\" never fires (no such date)", at: node.mark)
                return nil
            }
            return schedule
        } catch {
            context.fail(error.description, at: node.mark)
            return nil
        }
    }

    public func encode() -> SpecNode { .string(text) }
    public static var schema: Schema {
        var schema = Schema(type: .string)
        schema.minLength = 1
        return schema
    }
    public var description: String { text }

    public static func == (lhs: CronSchedule, rhs: CronSchedule) -> Bool { lhs.text == rhs.text }
    public func hash(into hasher: inout Hasher) { hasher.combine(text) }
}

/// An IANA time zone name (`Europe/Amsterdam`, `UTC`).
public struct TimeZoneName: SpecValue, Hashable, CustomStringConvertible {
    public let identifier: String
    public let timeZone: TimeZone

    public static let utc = try! TimeZoneName("UTC")

    /// Names of UTC, made without ICU's zone tables (an offset of zero is the same zone).
    private static let utcNames: Set<String> = ["UTC", "Etc/UTC", "GMT", "Etc/GMT", "UCT", "Etc/UCT", "Zulu", "Etc/Zulu", "Universal", "Etc/Universal"]

    public init(_ identifier: String) throws(ParseError) {
        let utc = Self.utcNames.contains(identifier) ? TimeZone(secondsFromGMT: 0) : nil
        guard identifier != "Local", !identifier.isEmpty, let zone = utc ?? TimeZone(identifier: identifier) else {
            throw ParseError(description: "unknown time zone \"\(identifier)\" (use an IANA name such as \"UTC\" or \"Europe/Amsterdam\")")
        }
        self.identifier = identifier
        self.timeZone = zone
    }

    public struct ParseError: Error, CustomStringConvertible { public let description: String }

    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> TimeZoneName? {
        guard case .scalar(let text, _) = node.value else {
            context.fail("expected a time zone name, got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        do { return try TimeZoneName(text) } catch {
            context.fail(error.description, at: node.mark)
            return nil
        }
    }

    public func encode() -> SpecNode { .string(identifier) }
    public static var schema: Schema { Schema(type: .string) }
    public var description: String { identifier }
    public static func == (lhs: TimeZoneName, rhs: TimeZoneName) -> Bool { lhs.identifier == rhs.identifier }
    public func hash(into hasher: inout Hasher) { hasher.combine(identifier) }
}
