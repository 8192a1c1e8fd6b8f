import Foundation
import Testing
@testable import CapstanModel

/// Deployment windows judged at an instant (virtual time: no clock, no sleeping).
@Suite struct DeploymentWindowTests {
    func window(_ schedule: String, _ duration: String, _ zone: String = "UTC") throws -> DeploymentWindow {
        var window = DeploymentWindow()
        window.schedule = try CronSchedule(schedule)
        window.duration = try KubeDuration.parse(duration)
        window.timeZone = try TimeZoneName(zone)
        return window
    }

    func date(_ text: String) -> Date { ISO8601DateFormatter().date(from: text)! }

    /// UTC by any of its names is an offset of zero (made without ICU's zone tables) and keeps
    /// the name it was written with; other zones keep their rules.
    @Test func utcByAnyNameIsZeroAndOtherZonesKeepTheirRules() throws {
        for name in ["UTC", "Etc/UTC", "GMT", "Zulu"] {
            let zone = try TimeZoneName(name)
            #expect(zone.timeZone.secondsFromGMT(for: date("2026-07-01T12:00:00Z")) == 0, "\(name)")
            #expect(zone.description == name && zone.encode().scalarText == name)
        }
        let amsterdam = try TimeZoneName("Europe/Amsterdam").timeZone
        #expect(amsterdam.secondsFromGMT(for: date("2026-07-01T12:00:00Z")) == 7200)
        #expect(amsterdam.secondsFromGMT(for: date("2026-01-01T12:00:00Z")) == 3600)
        #expect(throws: TimeZoneName.ParseError.self) { try TimeZoneName("Local") }
        #expect(throws: TimeZoneName.ParseError.self) { try TimeZoneName("Mars/Olympus") }
    }

    @Test func openFromTheFiringForTheDuration() throws {
        let nightly = try window("0 2 * * *", "2h")
        let before = nightly.state(at: date("2026-06-01T01:59:00Z"))
        #expect(!before.isOpen && before.opensAt == date("2026-06-01T02:00:00Z"))
        let opening = nightly.state(at: date("2026-06-01T02:00:00Z"))
        #expect(opening.isOpen && opening.closesAt == date("2026-06-01T04:00:00Z"), "an opening at now is open")
        let inside = nightly.state(at: date("2026-06-01T03:59:59Z"))
        #expect(inside.isOpen && inside.opensAt == date("2026-06-02T02:00:00Z"))
        let after = nightly.state(at: date("2026-06-01T04:00:00Z"))
        #expect(!after.isOpen && after.opensAt == date("2026-06-02T02:00:00Z"))
    }

    @Test func aDaemonStartingAfterAWindowPassedWaitsForTheNextOne() throws {
        // The window of 02:00-04:00 passed while no daemon ran: at 05:00 it is closed, not owed.
        let state = try window("0 2 * * *", "2h").state(at: date("2026-06-01T05:00:00Z"))
        #expect(!state.isOpen && state.opensAt == date("2026-06-02T02:00:00Z"))
    }

    @Test func overlappingWindowsMakeOneLongerWindow() throws {
        let hourly = try window("0 * * * *", "90m")
        let state = hourly.state(at: date("2026-06-01T10:30:00Z"))
        #expect(state.isOpen)
        #expect(state.closesAt == nil || state.closesAt! > date("2026-06-02T00:00:00Z"), "each opening extends it: always open")
    }

    @Test func aLocalTimeSkippedByDaylightSavingOpensAtTheJump() throws {
        // 02:30 does not exist in Amsterdam on 2026-03-29 (02:00 CET -> 03:00 CEST, 01:00 UTC).
        let window = try window("30 2 * * *", "1h", "Europe/Amsterdam")
        let state = window.state(at: date("2026-03-29T00:30:00Z"))
        #expect(!state.isOpen && state.opensAt == date("2026-03-29T01:00:00Z"))
        let open = window.state(at: date("2026-03-29T01:10:00Z"))
        #expect(open.isOpen && open.closesAt == date("2026-03-29T02:00:00Z"))
    }

    @Test func aLocalTimeRepeatedByDaylightSavingOpensOnce() throws {
        // 02:30 happens twice in Amsterdam on 2026-10-25 (00:30 and 01:30 UTC): one window.
        let window = try window("30 2 * * *", "30m", "Europe/Amsterdam")
        let first = window.state(at: date("2026-10-25T00:40:00Z"))
        #expect(first.isOpen && first.closesAt == date("2026-10-25T01:00:00Z"))
        let second = window.state(at: date("2026-10-25T01:40:00Z"))
        #expect(!second.isOpen, "the repeated 02:30 opens no second window")
        #expect(second.opensAt == date("2026-10-26T01:30:00Z"))
    }

    @Test func aScheduleThatNeverFiresAgainHasNoOpening() throws {
        // Only on 29 February: the next one is years away but exists; a window is found.
        let leap = try window("0 0 29 2 *", "1h")
        #expect(leap.state(at: date("2026-06-01T00:00:00Z")).opensAt == date("2028-02-29T00:00:00Z"))
    }
}
