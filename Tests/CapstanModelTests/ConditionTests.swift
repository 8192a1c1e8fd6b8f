import Foundation
import Testing
@testable import CapstanModel

@Suite struct ConditionTests {
    let t1 = Timestamp(Date(timeIntervalSince1970: 1_800_000_000))
    let t2 = Timestamp(Date(timeIntervalSince1970: 1_800_000_060))
    let t3 = Timestamp(Date(timeIntervalSince1970: 1_800_000_120))

    @Test func transitionTimeMovesOnlyWhenTheStatusFlips() {
        var conditions: [Condition] = []
        do { let changed = conditions.set("Ready", .false, reason: "Progressing", message: "0/3", observedGeneration: 1, now: t1); #expect(changed) }
        do { let changed = conditions.set("Ready", .false, reason: "Progressing", message: "2/3", observedGeneration: 1, now: t2); #expect(changed) }
        #expect(conditions[type: "Ready"]?.lastTransitionTime == t1, "same status: the time stays")
        #expect(conditions[type: "Ready"]?.message == "2/3")
        do { let changed = conditions.set("Ready", .true, reason: "Succeeded", message: "3/3", observedGeneration: 1, now: t3); #expect(changed) }
        #expect(conditions[type: "Ready"]?.lastTransitionTime == t3, "a flip moves it")
    }

    @Test func timesAreWrittenAsKubernetesReadsThem() {
        // metav1.Time: RFC 3339, fraction only when there is one; metav1.MicroTime: always six digits.
        #expect(t1.description == "2027-01-15T08:00:00Z")
        #expect(t1.microTime == "2027-01-15T08:00:00.000000Z")
        let leap = Timestamp(Date(timeIntervalSince1970: 951_782_400.25))  // 2000-02-29, a leap day
        #expect(leap.description == "2000-02-29T00:00:00.25Z")
        #expect(leap.microTime == "2000-02-29T00:00:00.250000Z")
        #expect(Timestamp(rfc3339: leap.microTime) == leap)
        #expect(Timestamp(Date(timeIntervalSince1970: -1.5)).microTime == "1969-12-31T23:59:58.500000Z")
    }

    @Test func settingTheSameConditionAgainChangesNothing() {
        var conditions: [Condition] = []
        conditions.set("Ready", .true, reason: "Succeeded", message: "ok", observedGeneration: 2, now: t1)
        do { let changed = conditions.set("Ready", .true, reason: "Succeeded", message: "ok", observedGeneration: 2, now: t2); #expect(!changed) }
        #expect(conditions.count == 1)
    }

    @Test func aNewGenerationIsAChange() {
        var conditions: [Condition] = []
        conditions.set("Ready", .true, reason: "Succeeded", message: "ok", observedGeneration: 1, now: t1)
        do { let changed = conditions.set("Ready", .true, reason: "Succeeded", message: "ok", observedGeneration: 2, now: t2); #expect(changed) }
        #expect(conditions[type: "Ready"]?.lastTransitionTime == t1)
    }

    @Test func kstatusLifecycle() {
        var status = ApplicationStatus()
        do { let changed = status.markReconciling(reason: "Preparing", message: "building 1.0", generation: 1, now: t1); #expect(changed) }
        #expect(status.condition("Reconciling")?.status == .true)
        #expect(status.condition("Ready")?.status == .unknown)
        #expect(!status.isReady(generation: 1))

        do { let changed = status.markStalled(reason: "InvalidSpec", message: "web.yaml:3:5: bad", generation: 1, now: t2); #expect(changed) }
        #expect(status.condition("Stalled")?.status == .true)
        #expect(status.condition("Ready")?.status == .false)
        #expect(status.condition("Ready")?.reason == "InvalidSpec")
        #expect(status.condition("Reconciling") == nil)

        do { let changed = status.markReady(reason: "Succeeded", message: "ok", generation: 2, now: t3); #expect(changed) }
        #expect(status.conditions.map(\.type) == ["Ready"])
        #expect(status.observedGeneration == 2)
        #expect(status.isReady(generation: 2))
        #expect(!status.isReady(generation: 3), "a newer generation is not ready until observed")
        do { let changed = status.markReady(reason: "Succeeded", message: "ok", generation: 2, now: t3); #expect(!changed, "no change, no write") }
    }

    @Test func reconcilingKeepsAFalseReadyFalse() {
        var status = DeploymentStatus()
        status.markStalled(reason: "BuildFailed", message: "exit 2", generation: 1, now: t1)
        status.markReconciling(reason: "Retrying", message: "building again", generation: 1, now: t2)
        #expect(status.condition("Ready")?.status == .false)
        #expect(status.condition("Ready")?.lastTransitionTime == t1)
    }
}

/// STATUS in `capstan get`: never contradicts the conditions (kstatus' order).
@Suite struct StatusSummaryTests {
    let now = Timestamp(Date(timeIntervalSince1970: 1_800_000_000))

    func conditions(_ entries: [(String, ConditionStatus, String)]) -> [Condition] {
        var conditions: [Condition] = []
        for (type, status, reason) in entries { conditions.set(type, status, reason: reason, message: "\(reason) message", observedGeneration: 1, now: now) }
        return conditions
    }

    @Test func stalledWinsOverAPhaseThatSaysOtherwise() {
        let summary = StatusSummary.of(conditions: conditions([("Ready", .false, "ApplicationNotFound"), ("Stalled", .true, "ApplicationNotFound")]), phase: "Succeeded")
        #expect(summary == StatusSummary(status: "Stalled", reason: "ApplicationNotFound", message: "ApplicationNotFound message"))
        let source = StatusSummary.of(conditions: conditions([("Reconciling", .true, "RollingOut"), ("Stalled", .true, "SourceUnavailable")]), phase: "Progressing")
        #expect(source.status == "Stalled" && source.reason == "SourceUnavailable")
    }

    @Test func aHoldComesFirst() {
        let summary = StatusSummary.of(conditions: conditions([("Ready", .true, "Succeeded")]), phase: "Succeeded", hold: "SourceEmpty")
        #expect(summary.status == "Held" && summary.reason == "SourceEmpty")
    }

    @Test func reconcilingShowsAPhaseOfWorkOrReconciling() {
        #expect(StatusSummary.of(conditions: conditions([("Reconciling", .true, "RollingOut")]), phase: "Progressing").status == "Progressing")
        #expect(StatusSummary.of(conditions: conditions([("Reconciling", .true, "RollingOut")]), phase: "Succeeded").status == "Reconciling")
    }

    @Test func readyShowsThePhaseUnlessItIsAFailure() {
        #expect(StatusSummary.of(conditions: conditions([("Ready", .true, "Succeeded")]), phase: "Succeeded").status == "Succeeded")
        #expect(StatusSummary.of(conditions: conditions([("Ready", .true, "Succeeded")]), phase: nil).status == "Ready")
        #expect(StatusSummary.of(conditions: conditions([("Ready", .true, "Succeeded")]), phase: "Failed").status == "Ready")
        #expect(StatusSummary.of(conditions: conditions([("Ready", .false, "ProgressDeadlineExceeded")]), phase: "Failed").status == "Failed")
        #expect(StatusSummary.of(conditions: conditions([("Ready", .false, "InstancesNotReady")]), phase: "Succeeded").status == "NotReady")
        #expect(StatusSummary.of(conditions: [], phase: nil).status == "Unknown")
    }
}
