import Foundation
import PropertyBased
import Testing
@testable import CapstanModel

/// Property-based tests of durations, quantities, cron schedules and timestamps.
@Suite struct PropertyTests {
    @Test func durationFormatParsesBack() async {
        await propertyCheck(count: 500, input: Gen.int64(in: 0...(Int64.max / 2))) { nanos in
            let duration = KubeDuration(nanoseconds: nanos)
            #expect((try? KubeDuration.parse(duration.description)) == duration)
        }
    }

    @Test func durationComponentsAddUp() async {
        await propertyCheck(count: 300, input: Gen.int(in: 0...10_000), Gen.int(in: 0...1_000), Gen.int(in: 0...100_000), Gen.int(in: 0...999)) { h, m, s, ms in
            let text = "\(h)h\(m)m\(s)s\(ms)ms"
            let expected = ((Int64(h) * 3600 + Int64(m) * 60 + Int64(s)) * 1000 + Int64(ms)) * 1_000_000
            #expect((try? KubeDuration.parse(text))?.nanoseconds == expected)
        }
    }

    @Test func durationRejectsGarbage() async {
        await propertyCheck(count: 300, input: Gen.letterOrNumber.string(of: 1...12)) { text in
            // Text without a unit after its last number never parses (except "0").
            if text.last?.isNumber == true && text != "0" {
                #expect(throws: KubeDuration.ParseError.self) { try KubeDuration.parse(text) }
            }
        }
    }

    static let suffixes: [(String, Decimal)] = [
        ("", 1), ("k", 1000), ("M", 1_000_000), ("G", 1_000_000_000), ("m", Decimal(string: "0.001")!),
        ("Ki", 1024), ("Mi", 1_048_576), ("Gi", 1_073_741_824), ("e3", 1000), ("P", Decimal(string: "1000000000000000")!),
    ]

    @Test func quantityValueIsNumberTimesSuffix() async {
        await propertyCheck(count: 500, input: Gen.int(in: 0...9_000), Gen.int(in: 0...(Self.suffixes.count - 1))) { number, index in
            let (suffix, multiplier) = Self.suffixes[index]
            let text = "\(number)\(suffix)"
            guard let quantity = try? Quantity(text) else { Issue.record("\(text) did not parse"); return }
            #expect(quantity.value == Decimal(number) * multiplier, "\(text)")
            #expect(quantity.text == text)
        }
    }

    @Test func quantitiesAreWrittenAsTheAPIServerStoresThem() throws {
        // resource.Quantity's canonical form (apimachinery): the documented examples and more.
        let cases: [(String, String)] = [
            ("1.5", "1500m"), ("0.5", "500m"), ("1000m", "1"), ("250m", "250m"), ("2", "2"), ("1000", "1k"),
            ("1.5Gi", "1536Mi"), ("1024Mi", "1Gi"), ("0.5Gi", "512Mi"), ("128Mi", "128Mi"), ("1536Ki", "1536Ki"),
            ("512", "512"), ("0.5Ki", "512"), ("1.5Ki", "1536"), ("1G", "1G"), ("1.5G", "1500M"), ("100M", "100M"),
            ("1e3", "1e3"), ("1.5e3", "1500"), ("1E", "1E"), ("0", "0"), ("0m", "0"), ("0.1m", "100u"), ("1n", "1n"),
            ("0.0000000001", "1n"), ("2000Mi", "2000Mi"), ("1Ti", "1Ti"),
        ]
        for (text, canonical) in cases {
            #expect(try Quantity(text).canonical == canonical, "\(text)")
        }
        // Digits past Decimal's range are too large, not a NaN that passes every check.
        let huge = String(repeating: "9", count: 200)
        #expect(throws: Quantity.ParseError.tooLarge(huge)) { try Quantity(huge) }
        #expect(throws: Quantity.ParseError.tooLarge(huge + "Mi")) { try Quantity(huge + "Mi") }
    }

    @Test func canonicalQuantitiesKeepTheirValueAndStayCanonical() async {
        await propertyCheck(count: 500, input: Gen.int(in: 0...9_000), Gen.int(in: 0...(Self.suffixes.count - 1))) { number, index in
            let text = "\(number)\(Self.suffixes[index].0)"
            guard let quantity = try? Quantity(text), let canonical = try? Quantity(quantity.canonical) else {
                Issue.record("\(text) or its canonical form did not parse"); return
            }
            #expect(canonical.value == quantity.value, "\(text) -> \(canonical.text)")
            #expect(canonical.canonical == canonical.text, "\(canonical.text) is a fixed point")
        }
    }

    @Test func quantityMilliValueOfMillis() async {
        await propertyCheck(count: 300, input: Gen.int(in: 0...10_000_000)) { millis in
            #expect((try? Quantity("\(millis)m"))?.milliValue == Int64(millis))
        }
    }

    static let minuteFields = ["*", "*/5", "0", "30", "0-29/10", "15,45", "59"]
    static let hourFields = ["*", "2", "*/6", "9-17", "0,12", "23"]
    static let dayFields = ["*", "1", "15", "1-7", "*/10", "30", "29"]
    static let monthFields = ["*", "1-6", "*/3", "JAN,JUL", "2,3", "dec"]
    static let weekdayFields = ["*", "1-5", "0", "SUN,SAT", "7", "mon"]
    static let zones = ["UTC", "Europe/Amsterdam", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham"]

    @Test func cronNextIsTheFirstMatchAfterTheDate() async {
        await propertyCheck(
            count: 150,
            input: Gen.int(in: 0...(Self.minuteFields.count - 1)), Gen.int(in: 0...(Self.hourFields.count - 1)),
            Gen.int(in: 0...(Self.dayFields.count - 1)), Gen.int(in: 0...(Self.monthFields.count - 1)),
            Gen.int(in: 0...(Self.weekdayFields.count - 1)), Gen.int(in: 0...(Self.zones.count - 1)),
            Gen.int(in: 1_577_836_800...1_893_456_000)
        ) { m, h, d, mo, w, z, seconds in
            let expression = [Self.minuteFields[m], Self.hourFields[h], Self.dayFields[d], Self.monthFields[mo], Self.weekdayFields[w]].joined(separator: " ")
            let zone = Self.zones[z]
            guard let schedule = try? CronSchedule(expression) else { Issue.record("\(expression) did not parse"); return }
            let timeZone = TimeZone(identifier: zone)!
            let start = Date(timeIntervalSince1970: Double(seconds))
            #expect(schedule.canFire)
            guard let next = schedule.next(after: start, in: timeZone) else {
                Issue.record("\(expression) in \(zone) never fires after \(start)")
                return
            }
            #expect(next > start)
            #expect(next.timeIntervalSince1970.truncatingRemainder(dividingBy: 60) == 0)
            // The first match, or the instant right after a daylight-saving jump that skipped it.
            let jumped = timeZone.secondsFromGMT(for: next.addingTimeInterval(-1)) != timeZone.secondsFromGMT(for: next)
            #expect(schedule.matches(next, in: timeZone) || jumped, "\(expression) \(zone) \(next)")
            if !jumped { #expect(schedule.next(after: next.addingTimeInterval(-1), in: timeZone) == next) }
            // No earlier minute matches (checked exhaustively when the gap is short).
            let minutes = Int(next.timeIntervalSince(start) / 60)
            if minutes <= 2 * 24 * 60 {
                var probe = Date(timeIntervalSince1970: (start.timeIntervalSince1970 / 60).rounded(.down) * 60 + 60)
                while probe < next {
                    let repeated = schedule.hourRestricted && CronSchedule.isRepeatedWallTime(probe, in: timeZone)
                    #expect(!schedule.matches(probe, in: timeZone) || repeated, "\(expression) matches \(probe) before \(next)")
                    probe = probe.addingTimeInterval(60)
                }
            }
        }
    }

    @Test func cronMacrosEqualTheirExpansion() throws {
        let pairs = [("@hourly", "0 * * * *"), ("@daily", "0 0 * * *"), ("@weekly", "0 0 * * 0"), ("@monthly", "0 0 1 * *"), ("@yearly", "0 0 1 1 *")]
        let utc = TimeZone(identifier: "UTC")!
        for (macro, expansion) in pairs {
            var date = Date(timeIntervalSince1970: 1_767_225_600)
            for _ in 0..<5 {
                let a = try CronSchedule(macro).next(after: date, in: utc)
                let b = try CronSchedule(expansion).next(after: date, in: utc)
                #expect(a == b)
                date = a!
            }
        }
    }

    @Test func cronDayOfMonthOrDayOfWeek() throws {
        // Vixie cron: with both day fields restricted, either one matches.
        let schedule = try CronSchedule("0 0 13 * 5")
        let utc = TimeZone(identifier: "UTC")!
        let next = schedule.next(after: RFC3339.parse("2026-11-01T00:00:00Z")!, in: utc)
        #expect(next.map { RFC3339.format($0) } == "2026-11-06T00:00:00Z")  // Friday the 6th, before the 13th
    }

    @Test func cronImpossibleDatesNeverFire() throws {
        #expect(try !CronSchedule("0 0 31 2 *").canFire)
        #expect(try !CronSchedule("0 0 31 4,6,9,11 *").canFire)
        #expect(try CronSchedule("0 0 29 2 *").canFire)
        #expect(try CronSchedule("0 0 31 2 MON").canFire)
        #expect(try CronSchedule("0 0 31 2 *").next(after: Date(timeIntervalSince1970: 0), in: TimeZone(identifier: "UTC")!) == nil)
        #expect(try CronSchedule("0 0 30 2 *").next(after: Date(timeIntervalSince1970: 0), in: TimeZone(identifier: "UTC")!) == nil)
    }

    @Test func cronDaylightSavingRepeatFiresOnce() throws {
        // 02:30 happens twice in Amsterdam on 2026-10-25; a fixed-time job runs once.
        let schedule = try CronSchedule("30 2 * * *")
        let zone = TimeZone(identifier: "Europe/Amsterdam")!
        let first = schedule.next(after: RFC3339.parse("2026-10-24T12:00:00Z")!, in: zone)!
        #expect(RFC3339.format(first) == "2026-10-25T00:30:00Z")
        #expect(RFC3339.format(schedule.next(after: first, in: zone)!) == "2026-10-26T01:30:00Z")
        // A wildcard-hour job keeps running through the repeated hour.
        let every = try CronSchedule("*/30 * * * *")
        #expect(RFC3339.format(every.next(after: RFC3339.parse("2026-10-25T00:45:00Z")!, in: zone)!) == "2026-10-25T01:00:00Z")
    }

    @Test func cronDaylightSavingGapFiresOnce() throws {
        // 02:30 does not exist in Amsterdam on 2026-03-29; the run happens right after the jump.
        let schedule = try CronSchedule("30 2 * * *")
        let zone = TimeZone(identifier: "Europe/Amsterdam")!
        let next = schedule.next(after: RFC3339.parse("2026-03-28T12:00:00Z")!, in: zone)!
        #expect(RFC3339.format(next) == "2026-03-29T01:00:00Z")  // 03:00 CEST, the instant of the jump
        #expect(RFC3339.format(schedule.next(after: next, in: zone)!) == "2026-03-30T00:30:00Z")
    }

    @Test func timestampsRoundTrip() async {
        await propertyCheck(count: 300, input: Gen.int(in: -2_000_000_000...4_000_000_000)) { seconds in
            let date = Date(timeIntervalSince1970: Double(seconds))
            #expect(RFC3339.parse(RFC3339.format(date)) == date)
        }
    }

    @Test func timestampOffsetsAreApplied() {
        #expect(RFC3339.parse("2026-11-22T11:00:00+01:00") == RFC3339.parse("2026-11-22T10:00:00Z"))
        #expect(RFC3339.parse("2026-02-30T00:00:00Z") == nil)
        #expect(RFC3339.parse("2026-11-22 10:00") == nil)
    }
}
