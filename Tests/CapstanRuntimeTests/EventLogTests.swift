import CapstanModel
import Foundation
import Testing
@testable import CapstanRuntime

@Suite struct EventLogTests {
    let web = ObjectReference(kind: "Application", namespace: "default", name: "web")
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func identicalEventsWithinTenMinutesAggregate() {
        var log = EventLog()
        #expect(log.record(.warning, reason: "InvalidSpec", message: "web.yaml:3:5: bad", about: web, at: t0).isNew)
        let again = log.record(.warning, reason: "InvalidSpec", message: "web.yaml:3:5: bad", about: web, at: t0 + 599)
        #expect(!again.isNew)
        #expect(again.event.count == 2)
        #expect(again.event.firstTimestamp.date == t0)
        #expect(again.event.lastTimestamp.date == t0 + 599)
        #expect(log.events(for: web).count == 1)
    }

    @Test func aGapOfMoreThanTenMinutesStartsANewEvent() {
        var log = EventLog()
        log.record(.normal, reason: "Reconciled", message: "ok", about: web, at: t0)
        #expect(log.record(.normal, reason: "Reconciled", message: "ok", about: web, at: t0 + 601).isNew)
        #expect(log.events(for: web).count == 2)
    }

    @Test func aDifferentMessageTypeOrObjectIsADifferentEvent() {
        var log = EventLog()
        let api = ObjectReference(kind: "Application", namespace: "default", name: "api")
        log.record(.normal, reason: "Reconciled", message: "ok", about: web, at: t0)
        #expect(log.record(.normal, reason: "Reconciled", message: "ok, again", about: web, at: t0).isNew)
        #expect(log.record(.warning, reason: "Reconciled", message: "ok", about: web, at: t0).isNew)
        #expect(log.record(.normal, reason: "Reconciled", message: "ok", about: api, at: t0).isNew)
    }

    @Test func eventsExpireAfterADay() {
        var log = EventLog()
        log.record(.normal, reason: "Old", message: "", about: web, at: t0)
        log.record(.normal, reason: "New", message: "", about: web, at: t0 + 80_000)
        log.prune(now: t0 + 86_401)
        #expect(log.events(for: web).map(\.reason) == ["New"])
    }

    @Test func atMostAThousandPerObjectOldestDropped() {
        var log = EventLog()
        for i in 0..<1_050 {
            log.record(.normal, reason: "Step", message: "step \(i)", about: web, at: t0 + Double(i))
        }
        let events = log.events(for: web)
        #expect(events.count == 1_000)
        #expect(events.first?.message == "step 50")
        #expect(events.last?.message == "step 1049")
    }
}
