import CapstanModel
import CapstanRuntime
import Foundation
import Testing
@testable import CapstanControllers

/// BlueGreen and deployment windows, decided by the one Deployment reconciler (in virtual time,
/// on in-memory tracks; the scenario suite runs them on both real platforms).
@Suite struct BlueGreenWindowTests {
    typealias Base = DeploymentReconcilerTests
    static let key = Base.key

    static func blueGreen(_ version: String, autoPromote: Bool = true, replicas: Int = 2, extra: String = "") -> String {
        Base.deployment(version: version, replicas: replicas,
                        extra: "strategy: {type: BlueGreen, blueGreen: {previewPort: 18081, autoPromote: \(autoPromote), scaleDownDelay: 30s}}\(extra)")
    }

    /// A Deployment at version 1.0, rolled out and ready.
    func running(_ spec: String, _ fake: FakeStore, _ workload: FakeWorkload, _ clock: Base.Clock) async throws -> DeploymentReconciler {
        try fake.put(Base.app)
        try fake.put(spec)
        let reconciler = DeploymentReconciler(store: fake, events: fake, workload: workload, revisions: fake, now: { clock.now })
        for _ in 0..<3 { _ = try await reconciler.reconcile(Self.key) }
        workload.makeReady()
        for _ in 0..<3 { _ = try await reconciler.reconcile(Self.key) }
        #expect(fake.deployment?.status.phase == .succeeded)
        return reconciler
    }

    func roles(_ fake: FakeStore) -> [String: TrackRole] {
        Dictionary(uniqueKeysWithValues: (fake.deployment?.status.tracks ?? []).map { ($0.name, $0.role) })
    }

    @Test func autoPromoteSwitchesAtOnceWhenThePreviewIsReadyAndKeepsTheOldColourForItsDelay() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Base.Clock()
        let reconciler = try await running(Self.blueGreen("1.0"), fake, workload, clock)
        let stable = Set(workload.instances.map(\.id))
        try fake.put(Self.blueGreen("2.0"), generation: 2)
        _ = try await reconciler.reconcile(Self.key)
        // The new colour at full size beside the untouched active one, on the preview port.
        #expect(workload.instances.filter { $0.track == .blue }.count == 2)
        #expect(Set(workload.instances.filter { $0.track == .stable }.map(\.id)) == stable)
        #expect(workload.state.withLock { $0.traffic } == Traffic(active: .stable, preview: .blue))
        #expect(roles(fake) == ["stable": .active, "blue": .preview])
        #expect(fake.deployment?.status.phase == .progressing)

        workload.makeReady()
        _ = try await reconciler.reconcile(Self.key)
        #expect(workload.state.withLock { $0.traffic } == Traffic(active: .blue))
        #expect(roles(fake) == ["blue": .active, "stable": .retiring])
        #expect(fake.eventReasons.contains("TrafficSwitched"))
        let status = try #require(fake.deployment?.status)
        #expect(status.phase == .succeeded && status.isReady(generation: 2) && status.currentRevision == 2)
        let retireAt = try #require(status.tracks.first { $0.name == "stable" }?.retireAt?.date)
        #expect(retireAt == clock.now.addingTimeInterval(30))

        // Kept for scaleDownDelay, then removed; the reconcile asks to be woken at that time.
        let result = try await reconciler.reconcile(Self.key)
        #expect(result.requeueAfter == .seconds(30))
        #expect(workload.instances.count == 4)
        clock.advance(30)
        _ = try await reconciler.reconcile(Self.key)
        #expect(workload.instances.count == 2 && workload.instances.allSatisfy { $0.track == .blue })
        #expect(roles(fake) == ["blue": .active])

        // The next revision goes to the other colour.
        try fake.put(Self.blueGreen("3.0"), generation: 3)
        _ = try await reconciler.reconcile(Self.key)
        #expect(workload.instances.filter { $0.track == .green }.count == 2)
        #expect(roles(fake) == ["blue": .active, "green": .preview])
    }

    @Test func withoutAutoPromoteThePreviewWaitsForPromote() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Base.Clock()
        let reconciler = try await running(Self.blueGreen("1.0", autoPromote: false), fake, workload, clock)
        try fake.put(Self.blueGreen("2.0", autoPromote: false), generation: 2)
        _ = try await reconciler.reconcile(Self.key)
        fake.request(ObjectRequest.promote, "", for: Self.key)
        _ = try await reconciler.reconcile(Self.key)
        #expect(fake.eventReasons.contains("PromoteRefused"), "not ready yet: refused, not kept for later")
        workload.makeReady()
        for _ in 0..<2 { _ = try await reconciler.reconcile(Self.key) }
        let waiting = try #require(fake.deployment?.status)
        #expect(waiting.phase == .paused)
        #expect(waiting.condition("Reconciling")?.reason == "AwaitingPromotion")
        #expect(workload.state.withLock { $0.traffic } == Traffic(active: .stable, preview: .blue))
        // No deadline while it waits for a person.
        clock.advance(3600)
        _ = try await reconciler.reconcile(Self.key)
        #expect(fake.deployment?.status.phase == .paused)

        fake.request(ObjectRequest.promote, "", for: Self.key)
        _ = try await reconciler.reconcile(Self.key)
        #expect(fake.eventReasons.contains("PromoteRequested") && fake.eventReasons.contains("TrafficSwitched"))
        #expect(workload.state.withLock { $0.traffic } == Traffic(active: .blue))
        #expect(fake.deployment?.status.phase == .succeeded)
    }

    @Test func abortWithinScaleDownDelaySwitchesBackAtOnce() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Base.Clock()
        let reconciler = try await running(Self.blueGreen("1.0"), fake, workload, clock)
        let stable = Set(workload.instances.map(\.id))
        try fake.put(Self.blueGreen("2.0"), generation: 2)
        _ = try await reconciler.reconcile(Self.key)
        workload.makeReady()
        _ = try await reconciler.reconcile(Self.key)
        #expect(workload.state.withLock { $0.traffic } == Traffic(active: .blue))

        clock.advance(10)
        fake.request(ObjectRequest.abort, "", for: Self.key)
        _ = try await reconciler.reconcile(Self.key)
        #expect(workload.state.withLock { $0.traffic } == Traffic(active: .stable), "the kept colour serves again, in the same reconcile")
        #expect(Set(workload.instances.filter { $0.track == .stable }.map(\.id)) == stable, "the same instances, not new ones")
        let status = try #require(fake.deployment?.status)
        #expect(status.version == "1.0" && status.rollback != nil)
        #expect(status.isReady(generation: 2) && status.phase == .rolledBack)
        #expect(fake.eventReasons.contains("Aborted"))
        // Nothing left to abort once the other colour is gone.
        clock.advance(31)
        _ = try await reconciler.reconcile(Self.key)
        #expect(workload.instances.allSatisfy { $0.track == .stable })
        fake.request(ObjectRequest.abort, "", for: Self.key)
        _ = try await reconciler.reconcile(Self.key)
        #expect(fake.eventReasons.contains("AbortRefused"))
    }

    @Test func aPreviewThatMissesItsDeadlineIsRemovedAndTheActiveColourWasNeverTouched() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Base.Clock()
        let reconciler = try await running(Self.blueGreen("1.0"), fake, workload, clock)
        let stable = Set(workload.instances.map(\.id))
        try fake.put(Self.blueGreen("2.0-broken"), generation: 2)
        _ = try await reconciler.reconcile(Self.key)
        #expect(workload.instances.count == 4)
        clock.advance(61)
        for _ in 0..<3 { _ = try await reconciler.reconcile(Self.key) }
        #expect(Set(workload.instances.map(\.id)) == stable)
        #expect(workload.state.withLock { $0.traffic } == Traffic(active: .stable))
        let status = try #require(fake.deployment?.status)
        #expect(status.phase == .rolledBack && status.version == "1.0")
        #expect(fake.eventReasons.contains("ProgressDeadlineExceeded") && fake.eventReasons.contains("RolledBack"))
        #expect(!fake.eventReasons.contains("TrafficSwitched"))
    }

    @Test func switchingStrategiesOnARunningDeploymentKeepsServing() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Base.Clock()
        let reconciler = try await running(Base.deployment(version: "1.0", replicas: 2), fake, workload, clock)
        // RollingUpdate to BlueGreen with a new version: the new colour beside stable.
        try fake.put(Self.blueGreen("2.0"), generation: 2)
        _ = try await reconciler.reconcile(Self.key)
        workload.makeReady()
        for _ in 0..<2 { _ = try await reconciler.reconcile(Self.key) }
        #expect(roles(fake) == ["blue": .active, "stable": .retiring])
        // Back to RollingUpdate: the active colour rolls in place; the kept one goes at its time.
        try fake.put(Base.deployment(version: "3.0", replicas: 2), generation: 3)
        for _ in 0..<6 {
            _ = try await reconciler.reconcile(Self.key)
            workload.makeReady()
        }
        #expect(workload.instances.filter { $0.track == .blue && $0.revision == 3 }.count == 2)
        #expect(workload.state.withLock { $0.traffic } == Traffic(active: .blue))
        clock.advance(31)
        _ = try await reconciler.reconcile(Self.key)
        #expect(workload.instances.allSatisfy { $0.track == .blue })
        #expect(fake.deployment?.status.phase == .succeeded)
    }

    // MARK: - Windows

    /// Opens daily at 02:00 UTC for 30 seconds; the clock starts at 08:00 UTC.
    static let window = ", window: {schedule: \"0 2 * * *\", duration: 30s, timeZone: UTC}"
    static let opens = Date(timeIntervalSince1970: 1_800_000_000 + 18 * 3600)

    @Test func aNewVersionOutsideTheWindowWaitsAndStartsWhenItOpens() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Base.Clock()
        // The first rollout does not wait.
        let reconciler = try await running(Base.deployment(version: "1.0", replicas: 2, extra: "strategy: {maxSurge: 1, maxUnavailable: 0}" + Self.window),
                                           fake, workload, clock)
        try fake.put(Base.deployment(version: "2.0", replicas: 3, extra: "strategy: {maxSurge: 1, maxUnavailable: 0}" + Self.window), generation: 2)
        let result = try await reconciler.reconcile(Self.key)
        var status = try #require(fake.deployment?.status)
        #expect(status.phase == .scheduled)
        #expect(status.nextWindowTime?.date == Self.opens)
        #expect(status.condition("Reconciling")?.reason == "Scheduled")
        #expect(status.currentRevision == 1 && status.version == "1.0")
        #expect(workload.instances.count == 3 && workload.instances.allSatisfy { $0.revision == 1 }, "scaling is never held")
        #expect(result.requeueAfter != nil)
        workload.makeReady()
        let wake = try await reconciler.reconcile(Self.key)
        #expect(wake.requeueAfter == .seconds(18 * 3600), "woken when the window opens, not polled")
        #expect(fake.eventReasons.filter { $0 == "RolloutScheduled" }.count == 1)

        clock.advance(18 * 3600)
        _ = try await reconciler.reconcile(Self.key)
        status = try #require(fake.deployment?.status)
        #expect(status.currentRevision == 2 && status.phase == .progressing && status.nextWindowTime == nil)
        // The window closes while it rolls: the rollout finishes.
        clock.advance(31)
        for _ in 0..<8 {
            _ = try await reconciler.reconcile(Self.key)
            workload.makeReady()
        }
        #expect(fake.deployment?.status.phase == .succeeded && fake.deployment?.status.version == "2.0")
    }

    @Test func rollbacksAreNeverHeldByTheWindow() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Base.Clock()
        let spec = { (version: String) in Base.deployment(version: version, replicas: 1, extra: "strategy: {maxSurge: 1, maxUnavailable: 0}" + Self.window) }
        let reconciler = try await running(spec("1.0"), fake, workload, clock)
        clock.advance(18 * 3600)  // in the window
        try fake.put(spec("2.0"), generation: 2)
        for _ in 0..<4 {
            _ = try await reconciler.reconcile(Self.key)
            workload.makeReady()
        }
        #expect(fake.deployment?.status.version == "2.0")
        clock.advance(40)  // closed again
        fake.request(ObjectRequest.rollback, "", for: Self.key)
        for _ in 0..<4 {
            _ = try await reconciler.reconcile(Self.key)
            workload.makeReady()
        }
        let status = try #require(fake.deployment?.status)
        #expect(status.version == "1.0" && status.rollback?.reason == "RollbackRequested")
        #expect(workload.instances.allSatisfy { $0.revision == 3 })
    }
}
