import CapstanModel
import CapstanRuntime
import Foundation
import Synchronization
import Testing
@testable import CapstanControllers

extension FakeStore: RevisionStore {
    func recordRevision(of owner: ObjectKey, hash: String, template: SpecNode) async throws -> (number: Int, template: SpecNode) {
        state.withLock { state in
            let mine = state.revisions.filter { $0.owner == owner }
            if let newest = mine.max(by: { $0.number < $1.number }), newest.hash == hash { return (newest.number, newest.template) }
            let number = (mine.map(\.number).max() ?? 0) + 1
            state.revisions.removeAll { $0.owner == owner && $0.hash == hash }
            state.revisions.append((owner, number, hash, template))
            return (number, template)
        }
    }
    func revisions(of owner: ObjectKey) async throws -> [(number: Int, hash: String, template: SpecNode)] {
        state.withLock { $0.revisions.filter { $0.owner == owner }.sorted { $0.number < $1.number }.map { ($0.number, $0.hash, $0.template) } }
    }
    func pruneRevisions(of owner: ObjectKey, keep: Int, inUse: Set<Int>) async throws {}
    func removeRevisions(of owner: ObjectKey) async throws {
        state.withLock { $0.revisions.removeAll { $0.owner == owner } }
    }

    var deployment: Deployment? {
        state.withLock { state in
            if case .deployment(let deployment)? = state.objects[DeploymentReconcilerTests.key]?.resource { return deployment }
            return nil
        }
    }
}

/// Tracks of instances in memory, rolled by `TrackRollout`'s plan: instances start unready and
/// the test decides when they become ready.
final class FakeWorkload: WorkloadPlatform, TrafficPlatform, Sendable {
    struct State {
        var instances: [InstanceState] = []
        var tracks: [Track: (revision: Int, hash: String)] = [:]
        var started = 0
        var stopped: [String] = []
        var startFailure: WorkloadError?
        var exposeFailure: WorkloadError?
        /// Stops wait (up to 5 s) until this many are in flight at once: stops made one after
        /// another never get there (an app that ignores SIGTERM waits out the grace period).
        var rendezvous = 0
        var inFlight = 0
        var mostInFlight = 0
        var port: Int?
        var traffic: Traffic?
        var removed = false
        /// As Kubernetes: a garbage collector removes a deleted Deployment's children.
        var collects = false
    }
    let state = Mutex(State())

    var collectsChildrenOfDeleted: Bool { state.withLock { $0.collects } }

    func leftovers(of deployment: ObjectKey) async -> [String] {
        state.withLock { $0.instances.map { "instance \($0.id)" } }
    }

    func prepare(_ revision: WorkloadRevision, for deployment: ObjectKey, current: Bool) async throws(WorkloadError) -> [String] { [] }

    func ensure(_ track: Track, of deployment: Deployment, _ spec: TrackSpec) async throws -> TrackState {
        state.withLock { $0.tracks[track] = (spec.revision.number, spec.revision.hash) }
        let plan = TrackRollout.plan(instances.filter { $0.track == track }, spec)
        var result = TrackState(revision: spec.revision.number, templateHash: spec.revision.hash)
        await stopAll(plan.scaleDown, &result)
        for _ in 0..<plan.start {
            let failure: WorkloadError? = state.withLock { state in
                if let failure = state.startFailure { return failure }
                state.started += 1
                state.instances.append(InstanceState(id: "i\(state.started)", templateHash: spec.revision.hash, revision: spec.revision.number, ready: false, track: track))
                return nil
            }
            if let failure {
                result.startProblem = failure
                result.events.append(WorkloadEvent(.warning, failure.reason, "cannot start an instance: \(failure.message)"))
                break
            }
        }
        await stopAll(plan.replace, &result)
        let counted = await tracks(of: deployment.key)[track]
        result.replicas = counted?.replicas ?? 0
        result.updated = counted?.updated ?? 0
        result.ready = counted?.ready ?? 0
        result.available = counted?.available ?? 0
        return result
    }

    private func stopAll(_ victims: [InstanceState], _ result: inout TrackState) async {
        guard !victims.isEmpty else { return }
        result.movedOn = true
        await withTaskGroup(of: Void.self) { group in
            for victim in victims { group.addTask { await self.stop(victim.id) } }
        }
    }

    func tracks(of deployment: ObjectKey) async -> [Track: TrackState] {
        state.withLock { state in
            var result: [Track: TrackState] = [:]
            for (track, target) in state.tracks {
                let own = state.instances.filter { $0.track == track }
                var counted = TrackState(revision: target.revision, templateHash: target.hash)
                counted.replicas = own.count
                counted.updated = own.filter { $0.templateHash == target.hash }.count
                counted.ready = own.filter(\.ready).count
                counted.available = counted.ready
                result[track] = counted
            }
            return result
        }
    }

    func removeTrack(_ track: Track, of deployment: Deployment) async throws -> [WorkloadEvent] {
        for instance in instances where instance.track == track { await stop(instance.id) }
        state.withLock { _ = $0.tracks.removeValue(forKey: track) }
        return []
    }

    func stop(_ instance: String) async {
        let rendezvous = state.withLock { state in
            state.inFlight += 1
            state.mostInFlight = max(state.mostInFlight, state.inFlight)
            return state.rendezvous
        }
        for _ in 0..<500 where state.withLock({ $0.mostInFlight < rendezvous }) { try? await Task.sleep(for: .milliseconds(10)) }
        state.withLock { state in
            state.inFlight -= 1
            state.instances.removeAll { $0.id == instance }
            state.stopped.append(instance)
        }
    }

    func split(_ routing: TrafficRouting, namespace: String) async throws(WorkloadError) -> TrafficSplit {
        routing == .replicas ? .replicas : .weighted
    }

    func route(_ deployment: Deployment, application: Application, _ traffic: Traffic) async throws -> [WorkloadEvent] {
        try state.withLock { state throws(WorkloadError) in
            if let failure = state.exposeFailure { throw failure }
            state.port = deployment.spec.port
            state.traffic = traffic
        }
        return []
    }

    func pruneReleases(of deployment: ObjectKey, keeping revisions: Set<Int>) async {}

    func remove(_ deployment: ObjectKey, dryRun: Bool) async -> [String] {
        state.withLock { state in
            if dryRun { return state.instances.map { "instance \($0.id)" } }
            state.removed = true
            defer { state.instances = []; state.tracks = [:] }
            return state.instances.map { "instance \($0.id)" }
        }
    }

    /// Marks every instance (of a hash, or all) ready.
    func makeReady(_ hash: String? = nil) {
        state.withLock { state in
            for index in state.instances.indices where hash == nil || state.instances[index].templateHash == hash { state.instances[index].ready = true }
        }
    }
    var instances: [InstanceState] { state.withLock { $0.instances } }
}

@Suite struct DeploymentReconcilerTests {
    static let key = ObjectKey(kind: .deployment, namespace: "default", name: "web")
    static let app = "apiVersion: capstan.dev/v1alpha1\nkind: Application\nmetadata: {name: web}\nspec: {source: {path: ./web}, command: [./web]}\n"
    static func deployment(version: String, replicas: Int = 3, extra: String = "strategy: {maxSurge: 1, maxUnavailable: 0}") -> String {
        "apiVersion: capstan.dev/v1alpha1\nkind: Deployment\nmetadata: {name: web}\nspec: {application: web, version: \"\(version)\", replicas: \(replicas), port: 18080, progressDeadline: 60s, \(extra)}\n"
    }

    final class Clock: Sendable {
        let time = Mutex(Date(timeIntervalSince1970: 1_800_000_000))
        func advance(_ seconds: Double) { time.withLock { $0 = $0.addingTimeInterval(seconds) } }
        var now: Date { time.withLock { $0 } }
    }

    func reconciler(_ fake: FakeStore, _ workload: FakeWorkload, _ clock: Clock, prune: Bool = true) -> DeploymentReconciler {
        DeploymentReconciler(store: fake, events: fake, workload: workload, revisions: fake, prune: prune, now: { clock.now })
    }

    /// Reconciles until nothing changes (the queue would do the same on each event).
    @discardableResult
    func settle(_ reconciler: DeploymentReconciler, times: Int = 4) async throws -> ReconcileResult {
        var result = ReconcileResult.done
        for _ in 0..<times { result = try await reconciler.reconcile(Self.key) }
        return result
    }

    @Test func aFirstRolloutStartsReplicasAndSucceedsWhenTheyAreReady() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Clock()
        try fake.put(Self.app)
        try fake.put(Self.deployment(version: "1.0"))
        let reconciler = reconciler(fake, workload, clock)
        try await settle(reconciler)
        // maxSurge 1 over 0 running: Kubernetes' rule allows replicas + surge at once.
        #expect(workload.instances.count == 3)
        #expect(fake.deployment?.status.phase == .progressing)
        #expect(workload.state.withLock { $0.port } == 18080)
        workload.makeReady()
        try await settle(reconciler)
        let status = try #require(fake.deployment?.status)
        #expect(status.phase == .succeeded)
        #expect(status.readyReplicas == 3)
        #expect(status.currentRevision == 1)
        #expect(status.isReady(generation: 1))
        #expect(status.history.map(\.outcome) == ["Succeeded"])
        // A new Deployment's first rollout is routine: one event, its outcome.
        #expect(!fake.eventReasons.contains("RolloutStarted") && fake.eventReasons.contains("RolloutSucceeded"))
    }

    @Test func scalingDownStopsInstancesSideBySide() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Clock()
        try fake.put(Self.app)
        try fake.put(Self.deployment(version: "1.0", replicas: 4))
        let reconciler = reconciler(fake, workload, clock)
        try await settle(reconciler)
        workload.makeReady()
        try await settle(reconciler)
        workload.state.withLock { $0.rendezvous = 3 }
        try fake.put(Self.deployment(version: "1.0", replicas: 1), generation: 2)
        _ = try await reconciler.reconcile(Self.key)
        #expect(workload.instances.count == 1)
        #expect(workload.state.withLock { $0.mostInFlight } == 3, "the three stops side by side, not one after another")
    }

    @Test func aRouterPortThatCannotBeOpenedHoldsNoRolloutAndIsRetriedWithinASecond() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Clock()
        workload.state.withLock { $0.exposeFailure = WorkloadError("PortUnavailable", "cannot listen on 127.0.0.1:18080: address already in use") }
        try fake.put(Self.app)
        try fake.put(Self.deployment(version: "1.0"))
        let reconciler = reconciler(fake, workload, clock)
        let result = try await settle(reconciler)
        #expect(workload.instances.count == 3, "the rollout went on without its port")
        #expect((result.requeueAfter ?? .seconds(60)) <= .seconds(1))
        #expect(fake.deployment?.status.conditions[type: ConditionType.stalled]?.reason == "PortUnavailable")
        #expect(fake.eventReasons.filter { $0 == "PortUnavailable" }.count == 1, "one event while it lasts")
        workload.state.withLock { $0.exposeFailure = nil }
        workload.makeReady()
        try await settle(reconciler)
        #expect(workload.state.withLock { $0.port } == 18080)
        #expect(fake.deployment?.status.conditions[type: ConditionType.stalled] == nil)
        #expect(fake.deployment?.status.phase == .succeeded)
    }

    @Test func aRollingUpdateNeverDropsBelowReplicasMinusMaxUnavailable() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Clock()
        try fake.put(Self.app)
        try fake.put(Self.deployment(version: "1.0"))
        let reconciler = reconciler(fake, workload, clock)
        try await settle(reconciler)
        workload.makeReady()
        try await settle(reconciler)
        try fake.put(Self.deployment(version: "2.0"), generation: 2)
        var steps = 0
        repeat {
            _ = try await reconciler.reconcile(Self.key)
            let instances = workload.instances
            #expect(instances.filter(\.ready).count >= 3, "maxUnavailable 0: three ready at every step")
            #expect(instances.count <= 4, "maxSurge 1: at most four instances")
            workload.makeReady()  // the new instance passes its health check
            steps += 1
        } while fake.deployment?.status.phase != .succeeded && steps < 20
        let status = try #require(fake.deployment?.status)
        #expect(status.phase == .succeeded)
        #expect(status.currentRevision == 2)
        #expect(status.version == "2.0")
        #expect(workload.instances.count == 3)
        #expect(Set(workload.instances.map(\.revision)) == [2])
        #expect(status.history.map(\.outcome) == ["Succeeded", "Succeeded"])
    }

    @Test func aRevisionThatNeverGetsReadyIsRolledBackAtItsDeadline() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Clock()
        try fake.put(Self.app)
        try fake.put(Self.deployment(version: "1.0"))
        let reconciler = reconciler(fake, workload, clock)
        try await settle(reconciler)
        workload.makeReady()
        try await settle(reconciler)
        let goodHash = try #require(workload.instances.first?.templateHash)
        try fake.put(Self.deployment(version: "2.0-broken"), generation: 2)
        try await settle(reconciler)
        // One surge instance that never gets ready; the three old ones keep serving.
        #expect(workload.instances.count == 4)
        #expect(workload.instances.filter { $0.templateHash == goodHash && $0.ready }.count == 3)
        clock.advance(61)
        try await settle(reconciler)
        let status = try #require(fake.deployment?.status)
        #expect(fake.eventReasons.contains("ProgressDeadlineExceeded"))
        #expect(fake.eventReasons.contains("RolledBack"))
        #expect(workload.instances.allSatisfy { $0.templateHash == goodHash }, "the broken instance is stopped")
        #expect(workload.instances.count == 3)
        #expect(status.phase == .rolledBack)
        #expect(status.currentRevision == 3, "the rollback is a new revision")
        #expect(status.version == "1.0")
        #expect(status.condition("Stalled")?.reason == "RollbackActive")
        #expect(status.history.map(\.outcome) == ["Succeeded", "RolledBack", "Succeeded"])
        // It holds until the spec changes.
        try await settle(reconciler)
        #expect(fake.deployment?.status.currentRevision == 3)
        try fake.put(Self.deployment(version: "2.1"), generation: 3)
        _ = try await reconciler.reconcile(Self.key)
        #expect(fake.deployment?.status.rollback == nil)
        #expect(fake.deployment?.status.version == "2.1")
        #expect(fake.deployment?.status.currentRevision == 4)
    }

    @Test func withoutAutoRollbackADeadlineFails() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Clock()
        try fake.put(Self.app)
        try fake.put(Self.deployment(version: "1.0", replicas: 1, extra: "autoRollback: false"))
        let reconciler = reconciler(fake, workload, clock)
        try await settle(reconciler)
        clock.advance(61)
        try await settle(reconciler)
        let status = try #require(fake.deployment?.status)
        #expect(status.phase == .failed)
        #expect(status.condition("Stalled")?.reason == "ProgressDeadlineExceeded")
    }

    @Test func recreateStopsEverythingBeforeStarting() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Clock()
        try fake.put(Self.app)
        try fake.put(Self.deployment(version: "1.0", replicas: 2, extra: "strategy: {type: Recreate}"))
        let reconciler = reconciler(fake, workload, clock)
        try await settle(reconciler)
        workload.makeReady()
        try await settle(reconciler)
        try fake.put(Self.deployment(version: "2.0", replicas: 2, extra: "strategy: {type: Recreate}"), generation: 2)
        _ = try await reconciler.reconcile(Self.key)
        #expect(workload.instances.isEmpty, "old ones stopped first")
        _ = try await reconciler.reconcile(Self.key)
        #expect(workload.instances.count == 2)
        #expect(Set(workload.instances.map(\.revision)) == [2])
    }

    @Test func aRequestedRollbackIsANewRevisionThatHoldsUntilTheSpecChanges() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Clock()
        try fake.put(Self.app)
        try fake.put(Self.deployment(version: "1.0", replicas: 1))
        let reconciler = reconciler(fake, workload, clock)
        for version in ["1.0", "2.0"] {
            try fake.put(Self.deployment(version: version, replicas: 1), generation: version == "1.0" ? 1 : 2)
            for _ in 0..<4 {
                _ = try await reconciler.reconcile(Self.key)
                workload.makeReady()
            }
        }
        #expect(fake.deployment?.status.currentRevision == 2)
        // Taken inside the reconcile, the one writer of the status.
        fake.request(ObjectRequest.rollback, "1", for: Self.key)
        for _ in 0..<4 {
            _ = try await reconciler.reconcile(Self.key)
            workload.makeReady()
        }
        let status = try #require(fake.deployment?.status)
        #expect(status.currentRevision == 3)
        #expect(status.version == "1.0")
        #expect(status.rollback?.reason == "RollbackRequested")
        #expect(status.isReady(generation: 2))
        #expect(fake.eventReasons.contains("RollbackRequested"))
        #expect(await fake.requests(for: Self.key).isEmpty, "taken")
        fake.request(ObjectRequest.rollback, "42", for: Self.key)
        _ = try await reconciler.reconcile(Self.key)
        #expect(fake.eventReasons.contains("RollbackRefused"))
        #expect(fake.deployment?.status.currentRevision == 3, "a refused request changes nothing")
    }

    @Test func aMissingApplicationSaysWhy() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Clock()
        try fake.put(Self.deployment(version: "1.0"))
        let reconciler = reconciler(fake, workload, clock)
        let result = try await reconciler.reconcile(Self.key)
        #expect(fake.deployment?.status.condition("Stalled")?.reason == "ApplicationNotFound")
        #expect(result.requeueAfter == DeploymentReconciler.retry, "looked at again, as on every platform")
        #expect(workload.instances.isEmpty)
    }

    @Test func aStartFailureIsReportedAndTheDeadlineStillApplies() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Clock()
        workload.state.withLock { $0.startFailure = WorkloadError("StartFailed", "command \"nope\" not found") }
        try fake.put(Self.app)
        try fake.put(Self.deployment(version: "1.0", replicas: 1))
        let reconciler = reconciler(fake, workload, clock)
        _ = try await reconciler.reconcile(Self.key)
        #expect(fake.eventReasons.contains("StartFailed"))
        #expect(fake.deployment?.status.condition("Ready")?.message.contains("command \"nope\" not found") == true)
    }

    @Test func aDeletedDeploymentIsRemoved() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Clock()
        workload.state.withLock { $0.instances = [InstanceState(id: "i1", templateHash: "h", revision: 1, ready: true)] }
        _ = try await reconciler(fake, workload, clock).reconcile(Self.key)
        #expect(workload.state.withLock { $0.removed })
        #expect(fake.eventReasons == ["OrphanDeleted"])
    }

    /// `capstan.dev/prune: disabled` keeps a deleted Deployment's instances (a Normal event);
    /// `--prune=false` keeps them too, with a Warning saying what would go.
    @Test(arguments: [(annotated: true, prune: true), (annotated: false, prune: false), (annotated: true, prune: false)])
    func aDeletedDeploymentIsKeptWhenPruningIsOff(annotated: Bool, prune: Bool) async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Clock()
        workload.state.withLock { $0.instances = [InstanceState(id: "i1", templateHash: "h", revision: 1, ready: true)] }
        if annotated { fake.state.withLock { _ = $0.pruneDisabled.insert(Self.key) } }
        _ = try await reconciler(fake, workload, clock, prune: prune).reconcile(Self.key)
        #expect(!workload.state.withLock { $0.removed })
        #expect(workload.state.withLock { $0.instances.count } == 1)
        let event = try #require(fake.state.withLock { $0.events.last })
        #expect(event.1 == "PruneSkipped")
        #expect(event.0 == (annotated ? .normal : .warning))
        #expect(event.2.contains("instance i1"))
    }

    /// Where the platform collects a deleted Deployment's children, the reconciler leaves them
    /// to it, and removes what is still there after the grace (a cluster without a collector).
    @Test func whatTheCollectorLeavesIsRemovedAfterTheGrace() async throws {
        let fake = FakeStore(), workload = FakeWorkload(), clock = Clock()
        workload.state.withLock {
            $0.collects = true
            $0.instances = [InstanceState(id: "i1", templateHash: "h", revision: 1, ready: true)]
        }
        let reconciler = reconciler(fake, workload, clock)
        let first = try await reconciler.reconcile(Self.key)
        #expect(first.requeueAfter != nil && !workload.state.withLock { $0.removed }, "the collector's turn first")
        clock.advance(10)
        #expect(try await reconciler.reconcile(Self.key).requeueAfter != nil && !workload.state.withLock { $0.removed })
        clock.advance(21)
        #expect(try await reconciler.reconcile(Self.key).requeueAfter == nil)
        #expect(workload.state.withLock { $0.removed }, "left after 30 s: removed")
        #expect(fake.state.withLock { $0.events.last?.1 } == "OrphanDeleted")

        // Collected in time: nothing to do.
        let other = FakeWorkload()
        other.state.withLock { $0.collects = true }
        #expect(try await self.reconciler(fake, other, clock).reconcile(Self.key).requeueAfter == nil)
        #expect(!other.state.withLock { $0.removed })
    }

    @Test func envIsMergedByNameAndExpandedLikeKubernetes() {
        let environment = EnvExpansion.environment(base: [("PORT", "8080")], variables: [
            EnvVar(name: "URL", value: "http://127.0.0.1:$(PORT)/"),
            EnvVar(name: "LITERAL", value: "$$(PORT) and $(MISSING)"),
            EnvVar(name: "LATER", value: "$(URL)x"),
        ])
        #expect(environment.environment["URL"] == "http://127.0.0.1:8080/")
        #expect(environment.environment["LITERAL"] == "$(PORT) and $(MISSING)")
        #expect(environment.environment["LATER"] == "http://127.0.0.1:8080/x")
        #expect(environment.deferred.isEmpty)
        #expect(EnvExpansion.expand("a$b$(", { _ in "x" }) == "a$b$(")
    }

    @Test func secretVariablesAndTheValuesMadeOfThemAreResolvedOnlyAtStart() throws {
        var secret = EnvVar()
        secret.name = "PASSWORD"
        secret.valueFrom = SecretSource(SecretKeySelector(name: "db", key: "password"))
        let result = EnvExpansion.environment(base: [("PORT", "8080")], variables: [
            secret,
            EnvVar(name: "URL", value: "postgres://app:$(PASSWORD)@127.0.0.1:$(PORT)/app"),
            EnvVar(name: "PLAIN", value: "port $(PORT)"),
        ])
        #expect(result.environment["PASSWORD"] == nil && result.environment["URL"] == nil)
        #expect(result.environment["PLAIN"] == "port 8080")
        #expect(result.secretNames == ["PASSWORD", "URL"])
        var environment = result.environment
        EnvExpansion.resolve(result.deferred, into: &environment) { name, key in "\(name).\(key).s3cret" }
        #expect(environment["PASSWORD"] == "db.password.s3cret")
        #expect(environment["URL"] == "postgres://app:db.password.s3cret@127.0.0.1:8080/app")
    }
}
