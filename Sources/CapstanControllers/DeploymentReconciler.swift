import CapstanModel
import CapstanRuntime
import Foundation
import Synchronization

/// Reconciles Deployments on every platform: picks the revision to run (the spec's, a
/// rolled-back one, or, outside the deployment window, the one running), decides which track
/// runs it and which track receives the traffic, and moves one level-based step per reconcile,
/// so a restarted daemon resumes a half-done rollout from what it observes. The platform only
/// realises tracks (`WorkloadPlatform`) and routes (`TrafficPlatform`); every decision —
/// history, strategy, BlueGreen, windows, progress deadline, rollbacks, requests, status,
/// conditions and events — is made here, the same on this host and on a cluster.
public struct DeploymentReconciler: Reconciler {
    public typealias Key = ObjectKey

    let store: any ObjectStore
    let events: any EventRecorder
    let workload: any WorkloadPlatform
    let traffic: any TrafficPlatform
    let revisions: any RevisionStore
    /// Where `secretKeyRef`s are checked before a revision starts (nil: not checked here).
    let secrets: (any SecretPlatform)?
    let now: @Sendable () -> Date
    /// Whether a deleted Deployment's leftovers are removed (`--prune`).
    let prune: Bool

    /// How often a rollout in progress is looked at without an event (instances and children
    /// report their changes at once; this is the safety net and the deadline clock).
    public static let progressCheck: Duration = .seconds(5)
    /// How soon to try again after a failure outside the spec (a build, a source, a child).
    public static let retry: Duration = .seconds(30)
    /// How soon a router port that could not be opened is tried again.
    public static let portRetry: Duration = .seconds(1)
    /// How long the platform's garbage collector has to remove a deleted Deployment's
    /// children before the reconciler removes what is left itself.
    public static let collectorGrace: Duration = .seconds(30)
    /// When each deleted Deployment was first seen gone with children left.
    let gone = FirstSeen()

    public init(store: any ObjectStore, events: any EventRecorder, workload: any WorkloadPlatform & TrafficPlatform, revisions: any RevisionStore,
                prune: Bool = true, now: @escaping @Sendable () -> Date = Date.init) {
        self.init(store: store, events: events, workload: workload, traffic: workload, revisions: revisions, prune: prune, now: now)
    }

    public init(store: any ObjectStore, events: any EventRecorder, workload: any WorkloadPlatform, traffic: any TrafficPlatform,
                revisions: any RevisionStore, secrets: (any SecretPlatform)? = nil, prune: Bool = true, now: @escaping @Sendable () -> Date = Date.init) {
        self.prune = prune
        self.secrets = secrets
        self.store = store
        self.events = events
        self.workload = workload
        self.traffic = traffic
        self.revisions = revisions
        self.now = now
    }

    public func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
        let stored = try await store.object(key)
        guard let stored, case .deployment(let deployment) = stored.resource, deployment.metadata.deletionTimestamp == nil else {
            if stored == nil, workload.collectsChildrenOfDeleted { return try await collected(key) }
            gone.forget(key)
            try await cleanUp(key)
            if stored != nil { try await store.release(key) }
            return .done
        }
        gone.forget(key)
        // The claim (Kubernetes: our finalizer) goes alongside the first writes; the status is
        // written after it landed. Where the platform collects a deleted Deployment's children
        // itself, only a Deployment whose children are to be kept needs it.
        let keep = Prune.decide(enabled: prune, annotated: Prune.isDisabled(deployment.metadata)) != .delete
        async let claimed: Void = keep || !workload.collectsChildrenOfDeleted ? store.claim(key) : ()
        var step = Step(key: key, stored: stored, deployment: deployment, time: Timestamp(now()))
        try await takeRequests(&step)
        var result: ReconcileResult
        do {
            result = try await run(&step)
        } catch let error as WorkloadError {
            step.stalled(error.reason, error.message)
            step.event(.warning, error.reason, error.message)
            result = .requeue(after: Self.retry)
        }
        if let problem = step.portProblem {
            let before = deployment.status.conditions[type: ConditionType.stalled]
            step.stalled(problem.reason, problem.message)
            if before?.status != .true || before?.reason != problem.reason { step.event(.warning, problem.reason, problem.message) }
            let again = problem.reason == "PortUnavailable" ? Self.portRetry : Self.retry
            result = .requeue(after: min(result.requeueAfter ?? again, again))
        }
        if let hold = stored.hold {
            step.status.markStalled(reason: hold.reason, message: hold.message, generation: stored.generation, now: step.time)
        }
        try await claimed
        try await finish(step)
        return result
    }

    /// What one reconcile works on and decides.
    struct Step {
        let key: ObjectKey
        let stored: StoredObject
        let deployment: Deployment
        let time: Timestamp
        var status: DeploymentStatus
        var events: [WorkloadEvent] = []
        /// The template hash of what the spec asks for.
        var specHash = ""
        /// The port could not be served: reported, retried soon, and never a reason to hold the
        /// rollout (the instances run and self-heal without it).
        var portProblem: WorkloadError?
        /// The spec's new template waits for the window that opens at this time.
        var scheduled: WindowState?
        /// Requests taken in this reconcile.
        var promote = false
        /// The next step can follow at once.
        var movedOn = false
        /// The earliest time something is due (a retiring track's removal).
        var due: Date?
        /// The tracks as the platform reported them before this reconcile acted (read once).
        var observed: [Track: TrackState] = [:]

        init(key: ObjectKey, stored: StoredObject, deployment: Deployment, time: Timestamp) {
            self.key = key
            self.stored = stored
            self.deployment = deployment
            self.time = time
            self.status = deployment.status
        }

        var generation: Int { stored.generation }
        var spec: DeploymentSpec { deployment.spec }

        /// The track receiving the Deployment's port.
        var active: Track { status.tracks.first { $0.role == .active }.map { Track($0.name) } ?? .stable }

        mutating func stalled(_ reason: String, _ message: String) {
            status.markStalled(reason: reason, message: message, generation: generation, now: time)
            status.conditions.set(DeploymentConditions.progressing, .false, reason: reason, message: message, observedGeneration: generation, now: time)
        }

        mutating func reconciling(_ reason: String, _ message: String) {
            status.markReconciling(reason: reason, message: message, generation: generation, now: time)
        }

        mutating func event(_ type: EventType, _ reason: String, _ message: String) {
            events.append(WorkloadEvent(type, reason, message))
        }

        mutating func wake(at date: Date) {
            due = min(due ?? date, date)
        }

        /// Sets (or adds) a track's entry in the status.
        mutating func setTrack(_ track: Track, role: TrackRole, revision: WorkloadRevision, state: TrackState?) {
            var entry = status.tracks.first { $0.name == track.rawValue }
                ?? TrackStatus(name: track.rawValue, role: role, revision: revision.number, version: revision.template.version, templateHash: revision.hash)
            entry.role = role
            entry.revision = revision.number
            entry.version = revision.template.version
            entry.templateHash = revision.hash
            if role != .retiring { entry.retireAt = nil }
            if let state {
                entry.replicas = state.replicas
                entry.readyReplicas = state.ready
            }
            status.tracks.removeAll { $0.name == track.rawValue }
            status.tracks.append(entry)
            status.tracks.sort { ($0.role.order, $0.name) < ($1.role.order, $1.name) }
        }
    }

    private func finish(_ step: Step) async throws {
        var status = step.status
        if status != step.deployment.status {
            status.lastReconcileTime = step.time
            _ = try await store.writeStatus(step.key, status.encode())
        }
        // Condition changes of Ready are events too (the rest were recorded as decided).
        let before = step.deployment.status.conditions[type: ConditionType.ready]
        let after = status.conditions[type: ConditionType.ready]
        var events = step.events
        // A Ready that turned True with a decision's event beside it (the rollout succeeded)
        // is said by that event.
        if let after, after.status != .unknown, before?.status != after.status || before?.reason != after.reason, after.reason != step.stored.hold?.reason,
           !events.contains(where: { $0.reason == after.reason }), !(after.status == .true && events.contains { $0.type == .normal }) {
            events.append(WorkloadEvent(after.status == .true ? .normal : .warning, after.reason, after.message))
        }
        for event in events {
            await self.events.record(event.type, reason: event.reason, message: event.message, about: step.key)
        }
    }

    // MARK: - Deletion

    /// Everything a deleted Deployment had goes (tracks, ports, releases, children, history),
    /// unless pruning is off for it.
    /// A Deployment gone without a finalizer: the platform's garbage collector removes its
    /// children; what it has not removed after `collectorGrace` (a cluster without one) is
    /// removed here.
    private func collected(_ key: ObjectKey) async throws -> ReconcileResult {
        guard !(await workload.leftovers(of: key)).isEmpty else {
            gone.forget(key)
            return .done
        }
        let since = gone.since(key, now())
        let due = since.addingTimeInterval(TimeInterval(Self.collectorGrace.components.seconds))
        if now() < due { return .requeue(after: .milliseconds(Int64(due.timeIntervalSince(now()) * 1000) + 1)) }
        gone.forget(key)
        try await cleanUp(key)
        return .done
    }

    private func cleanUp(_ key: ObjectKey) async throws {
        let decision = Prune.decide(enabled: prune, annotated: await store.pruneDisabled(key))
        let lines = try await workload.remove(key, dryRun: decision != .delete)
        if decision == .delete { try await revisions.removeRevisions(of: key) }
        guard !lines.isEmpty else { return }
        if decision == .delete {
            await events.record(.normal, reason: "OrphanDeleted", message: "deployment deleted; removed " + lines.joined(separator: ", "), about: key)
        } else {
            let (type, reason, message) = Prune.skipped(decision, kind: "deployment", would: lines)
            await events.record(type, reason: reason, message: message, about: key)
        }
    }

    // MARK: - The rollout

    private func run(_ step: inout Step) async throws -> ReconcileResult {
        let spec = step.spec
        let applicationKey = ObjectKey(kind: .application, namespace: step.key.namespace, name: spec.application)
        guard let applicationObject = try await store.object(applicationKey), case .application(let application) = applicationObject.resource else {
            step.stalled("ApplicationNotFound", "application \(spec.application) does not exist in namespace \(step.key.namespace)")
            return .requeue(after: Self.retry)
        }
        var template = WorkloadTemplate(deployment: step.deployment, application: application, applicationFile: applicationObject.sourceFile)
        template.secretRestarts = try await secretRestarts(step.key)
        step.specHash = template.hash
        if let rollback = step.status.rollback, rollback.specTemplateHash != step.specHash {
            step.status.rollback = nil  // the spec moved on: roll it out
        }
        let target = try await chooseTarget(template, &step)
        if begin(target, &step) {
            // The history dropped its oldest entries: so does the store (its releases go once
            // no instance runs them).
            try await pruneHistory(target, &step)
        }
        step.status.nextWindowTime = step.scheduled?.opensAt.map(Timestamp.init)
        if let missing = await missingSecret(target, namespace: step.key.namespace) {
            // Nothing of the revision starts without its secrets (what runs keeps running); the
            // rotation that makes the secret wakes this reconcile, and it is looked at again soon.
            step.stalled("SecretNotFound", "\(missing): revision \(target.number) waits for it")
            return .requeue(after: Self.progressCheck)
        }

        do {
            for repair in try await workload.prepare(target, for: step.key, current: true) {
                step.event(.warning, "DriftCorrected", repair)
            }
        } catch {
            step.stalled(error.reason, error.message)
            step.event(.warning, error.reason, error.message)
            return .requeue(after: Self.retry)
        }
        step.observed = await workload.tracks(of: step.key)
        if let run = try await canaryRun(target, step) {
            return try await canary(run, target, application: application, &step)
        }
        let state: TrackState?
        if spec.strategy.type == .blueGreen {
            state = try await blueGreen(target, application: application, &step)
        } else {
            state = try await inPlace(target, application: application, &step)
        }
        var result = try await assess(target, state, &step)
        if let due = step.due {
            let wait = Duration.milliseconds(Int64(max(0.001, due.timeIntervalSince(step.time.date)) * 1000))
            result = .requeue(after: min(result.requeueAfter ?? wait, wait))
        }
        return result
    }

    /// The first `secretKeyRef` of the revision's env that cannot be resolved now.
    private func missingSecret(_ target: WorkloadRevision, namespace: String) async -> String? {
        guard let secrets else { return nil }
        for variable in target.template.env {
            guard let ref = variable.valueFrom?.secretKeyRef else { continue }
            if let missing = await secrets.missing(ref.name, key: ref.key, namespace: namespace) { return "env \(variable.name): \(missing)" }
        }
        return nil
    }

    /// The restart tokens of the SecretRotations that name this Deployment in
    /// `restartDeployments` (each rotation's new token rolls it).
    private func secretRestarts(_ key: ObjectKey) async throws -> [String: String] {
        var restarts: [String: String] = [:]
        for object in try await store.objects(kind: .secretRotation, referencing: key) {
            guard case .secretRotation(let rotation) = object.resource, let token = rotation.status.restartToken else { continue }
            restarts[rotation.spec.secretName] = token
        }
        return restarts
    }

    /// Which revision runs: a rollback held until the spec changes; the spec's; or, when the
    /// spec's template is new and the deployment window is closed, the one running now (scaling,
    /// rollbacks and the first rollout never wait for a window).
    private func chooseTarget(_ template: WorkloadTemplate, _ step: inout Step) async throws -> WorkloadRevision {
        if let rollback = step.status.rollback {
            if let held = try await revisions.revisions(of: step.key).first(where: { $0.number == rollback.toRevision }) {
                return WorkloadRevision(number: held.number, template: try WorkloadTemplate.decode(held.template))
            }
            step.status.rollback = nil  // its template is gone from the store: the spec's runs
        }
        if let last = step.status.history.last, last.templateHash == template.hash {
            return WorkloadRevision(number: last.revision, template: template)
        }
        if let window = step.spec.window, let last = step.status.history.last {
            let state = window.state(at: step.time.date)
            if !state.isOpen, let running = try await revisions.revisions(of: step.key).last(where: { $0.hash == last.templateHash }) {
                step.scheduled = state
                return WorkloadRevision(number: last.revision, template: try WorkloadTemplate.decode(running.template))
            }
        }
        let recorded = try await revisions.recordRevision(of: step.key, hash: template.hash, template: template.encode())
        return WorkloadRevision(number: recorded.number, template: template)
    }

    /// A new target revision starts a history entry; the entry it replaces, unfinished, was
    /// superseded. Returns whether the history dropped old entries.
    private func begin(_ target: WorkloadRevision, _ step: inout Step) -> Bool {
        step.status.currentRevision = target.number
        step.status.version = target.template.version
        guard step.status.history.last?.templateHash != target.hash || step.status.history.last?.revision != target.number else { return false }
        if var last = step.status.history.popLast() {
            if last.outcome == nil {
                last.outcome = "Superseded"
                last.finishedAt = step.time
            }
            step.status.history.append(last)
        }
        var record = RevisionRecord()
        record.revision = target.number
        record.version = target.template.version
        record.templateHash = target.hash
        record.startedAt = step.time
        record.progressedAt = step.time
        step.status.history.append(record)
        let limit = max(step.spec.revisionHistoryLimit, 1) + 1
        let trimmed = step.status.history.count > limit
        if trimmed { step.status.history.removeFirst(step.status.history.count - limit) }
        step.status.phase = .progressing
        // A new Deployment's first rollout is routine: its status says it, and one event (its
        // outcome) says it once it is done.
        if step.status.history.count > 1 {
            step.event(.normal, "RolloutStarted", "rolling out revision \(target.number) (version \(target.template.version))")
        }
        return trimmed
    }

    /// What the spec's strategy asks of a track that rolls in place.
    func trackSpec(_ target: WorkloadRevision, _ spec: DeploymentSpec) -> TrackSpec {
        let strategy: TrackSpec.Strategy = spec.strategy.type == .recreate
            ? .recreate : .rollingUpdate(maxSurge: spec.strategy.effectiveMaxSurge, maxUnavailable: spec.strategy.effectiveMaxUnavailable)
        return TrackSpec(revision: target, replicas: spec.replicas, strategy: strategy, paused: spec.paused,
                         progressDeadline: spec.progressDeadline, revisionHistoryLimit: spec.revisionHistoryLimit)
    }

    /// RollingUpdate and Recreate: the active track rolls to the target in place; any other
    /// track (a BlueGreen leftover) goes, a retiring one once its delay has passed.
    func inPlace(_ target: WorkloadRevision, application: Application, _ step: inout Step) async throws -> TrackState {
        let active = step.active
        let deployment = step.deployment
        let workload = self.workload, traffic = self.traffic
        // The port and the track are independent: both in one round trip.
        @Sendable func routeActive() async -> Result<[WorkloadEvent], any Error> {
            do { return .success(try await traffic.route(deployment, application: application, Traffic(active: active))) } catch { return .failure(error) }
        }
        async let routed = routeActive()
        let state = try await workload.ensure(active, of: deployment, trackSpec(target, step.spec))
        switch await routed {
        case .success(let events): step.events += events
        case .failure(let error as WorkloadError): step.portProblem = error
        case .failure(let error): throw error
        }
        step.events += state.events
        step.setTrack(active, role: .active, revision: target, state: state)
        try await retire(except: [active], &step)
        return state
    }

    /// Removes the tracks other than `keep`: at once, or a retiring one at its time.
    func retire(except keep: Set<Track>, _ step: inout Step) async throws {
        var names = Set(step.observed.keys)
        names.formUnion(step.status.tracks.map { Track($0.name) })
        for track in names.subtracting(keep).sorted() {
            if let entry = step.status.tracks.first(where: { $0.name == track.rawValue }), entry.role == .retiring,
               let at = entry.retireAt?.date, at > step.time.date {
                step.wake(at: at)
                continue
            }
            step.events += try await workload.removeTrack(track, of: step.deployment)
            step.status.tracks.removeAll { $0.name == track.rawValue }
            step.observed[track] = nil
        }
    }

    /// Counts every track into the status and sets `Available` (the active track's ready
    /// instances, which receive the traffic).
    func observe(_ target: WorkloadRevision, _ states: [Track: TrackState], _ step: inout Step) {
        let active = states[step.active]
        step.status.replicas = states.values.map(\.replicas).reduce(0, +)
        step.status.updatedReplicas = states.values.filter { $0.templateHash == target.hash }.map(\.updated).reduce(0, +)
        step.status.readyReplicas = states.values.map(\.ready).reduce(0, +)
        step.status.availableReplicas = active?.available ?? 0
        for (track, state) in states {
            if let index = step.status.tracks.firstIndex(where: { $0.name == track.rawValue }) {
                step.status.tracks[index].replicas = state.replicas
                step.status.tracks[index].readyReplicas = state.ready
            }
        }
        let spec = step.spec
        let ready = active?.available ?? 0
        let unavailable = spec.strategy.type == .rollingUpdate ? (spec.strategy.effectiveMaxUnavailable.scaled(total: spec.replicas, roundUp: false) ?? 0) : 0
        let available = ready >= spec.replicas - unavailable
        step.status.conditions.set(DeploymentConditions.available, available ? .true : .false,
                                   reason: available ? "MinimumReplicasAvailable" : "MinimumReplicasUnavailable",
                                   message: "\(ready) of \(spec.replicas) instance(s) available", observedGeneration: step.generation, now: step.time)
    }

    /// Observes where the rollout stands, writes it to the status, and decides on the deadline.
    /// `state` is the track that runs the target (nil: none does, a failed preview was removed).
    private func assess(_ target: WorkloadRevision, _ state: TrackState?, _ step: inout Step) async throws -> ReconcileResult {
        let spec = step.spec
        var states = step.observed
        if let state { states[Track(step.status.tracks.first { $0.templateHash == target.hash && $0.role != .retiring }?.name ?? step.active.rawValue)] = state }
        observe(target, states, &step)
        let onActive = step.status.tracks.first { $0.role == .active }?.templateHash == target.hash
        let complete = onActive && (state?.complete(replicas: spec.replicas) ?? false)
        var entry = step.status.history.removeLast()
        defer { step.status.history.append(entry) }
        let ready = state?.ready ?? 0
        let summary = "\(ready)/\(spec.replicas) ready at version \(target.template.version) (revision \(target.number))"

        if complete {
            // The rotations waiting for this Deployment see their restart done.
            step.status.secretRestarts = StringMap(target.template.secretRestarts)
            if entry.outcome == nil {
                entry.outcome = "Succeeded"
                entry.finishedAt = step.time
                step.event(.normal, "RolloutSucceeded", "revision \(target.number) (version \(target.template.version)) is running: \(summary)")
                try await pruneHistory(target, &step)
            }
            step.status.conditions.set(DeploymentConditions.progressing, .true, reason: "NewRevisionAvailable", message: "revision \(target.number) is available", observedGeneration: step.generation, now: step.time)
            if let rollback = step.status.rollback {
                step.status.phase = .rolledBack
                step.stalled("RollbackActive", "\(rollback.message ?? "rolled back") — running revision \(target.number) (version \(target.template.version)) until the spec changes")
                if rollback.reason == "RollbackRequested" {
                    step.status.markReady(reason: "RollbackActive", message: "rolled back on request to revision \(target.number): \(summary)", generation: step.generation, now: step.time)
                }
            } else if step.scheduled != nil {
                scheduled(target, summary, &step)
            } else {
                step.status.phase = .succeeded
                step.status.markReady(reason: "Succeeded", message: summary, generation: step.generation, now: step.time)
            }
            return .done
        }

        // In progress (or degraded: an instance crashed after the rollout finished).
        let signature = (step.deployment.status.replicas, step.deployment.status.updatedReplicas, step.deployment.status.readyReplicas)
        if signature != (step.status.replicas, step.status.updatedReplicas, step.status.readyReplicas) {
            entry.progressedAt = step.time
        }
        var message = summary + (state.map { $0.replicas > $0.updated ? ", \($0.replicas - $0.updated) instance(s) of older revisions left" : "" } ?? "")
        if let startProblem = state?.startProblem { message += "; cannot start an instance: \(startProblem.message)" }
        if let first = state?.problems.first { message += "; \(first)" }

        if step.scheduled != nil {
            scheduled(target, message, &step)
            return .requeue(after: Self.progressCheck)
        }
        if entry.outcome == "Succeeded" {
            // The revision rolled out; an instance is down and the platform restarts it.
            step.status.phase = step.status.rollback == nil ? .succeeded : .rolledBack
            step.reconciling("InstancesNotReady", message)
            step.status.conditions.set(ConditionType.ready, .false, reason: "InstancesNotReady", message: message, observedGeneration: step.generation, now: step.time)
            return .requeue(after: workload.progressCheck)
        }
        if entry.outcome == "Failed" {
            step.status.phase = .failed
            step.stalled("ProgressDeadlineExceeded", "revision \(target.number) made no progress for \(spec.progressDeadline): \(message)")
            return .requeue(after: Self.retry)
        }
        if let startProblem = state?.startProblem, ["SecretUnavailable", "SecretNotFound"].contains(startProblem.reason) {
            // Heals when the secret appears (its rotation's change wakes this reconcile).
            step.stalled(startProblem.reason, startProblem.message)
            return .requeue(after: Self.progressCheck)
        }
        if spec.paused {
            step.status.phase = .paused
            step.reconciling("Paused", "rollout of revision \(target.number) is paused: \(message)")
            step.status.conditions.set(DeploymentConditions.progressing, .unknown, reason: "Paused", message: "paused", observedGeneration: step.generation, now: step.time)
            return .done
        }
        if onActive == false, let state, state.complete(replicas: spec.replicas) {
            // A BlueGreen preview ready and waiting for `capstan promote`: no deadline.
            step.status.phase = .paused
            let message = "revision \(target.number) (version \(target.template.version)) is ready on the preview; `capstan promote deployment/\(step.key.name)` switches the traffic to it"
            step.reconciling("AwaitingPromotion", message)
            step.status.conditions.set(DeploymentConditions.progressing, .true, reason: "AwaitingPromotion", message: message, observedGeneration: step.generation, now: step.time)
            return .done
        }

        if step.deployment.status.phase == .paused && onActive {
            // No deadline while paused: it counts again from the resume (as Kubernetes).
            entry.progressedAt = step.time
        }
        let progressedAt = entry.progressedAt?.date ?? step.time.date
        let elapsed = step.time.date.timeIntervalSince(progressedAt)
        let deadlineSeconds = spec.progressDeadline.seconds
        if elapsed >= deadlineSeconds {
            entry.outcome = "Failed"
            entry.finishedAt = step.time
            let failure = "revision \(target.number) (version \(target.template.version)) made no progress for \(spec.progressDeadline): \(message)"
            step.event(.warning, "ProgressDeadlineExceeded", failure)
            if !onActive {
                // A BlueGreen preview that failed goes; the active colour was never touched.
                if let preview = step.status.tracks.first(where: { $0.role == .preview }) {
                    step.events += try await workload.removeTrack(Track(preview.name), of: step.deployment)
                    step.status.tracks.removeAll { $0.name == preview.name }
                    step.observed[Track(preview.name)] = nil
                }
            }
            if spec.autoRollback, let good = step.status.history.last(where: { $0.outcome == "Succeeded" && $0.templateHash != target.hash }),
               let goodTemplate = try await revisions.revisions(of: step.key).last(where: { $0.hash == good.templateHash }) {
                let recorded = try await revisions.recordRevision(of: step.key, hash: good.templateHash, template: goodTemplate.template)
                var rollback = DeploymentRollback()
                rollback.toRevision = recorded.number
                rollback.specTemplateHash = step.status.rollback?.specTemplateHash ?? step.specHash
                rollback.reason = "RolledBack"
                rollback.message = "revision \(target.number) (version \(target.template.version)) failed: no progress for \(spec.progressDeadline)"
                step.status.rollback = rollback
                entry.outcome = "RolledBack"
                step.status.phase = .rolledBack
                step.event(.warning, "RolledBack", "rolling back to revision \(recorded.number) (version \(good.version)): \(rollback.message!)")
                step.reconciling("RolledBack", "rolling back to version \(good.version): \(rollback.message!)")
                return .requeue(after: .milliseconds(1))
            }
            step.status.phase = .failed
            step.stalled("ProgressDeadlineExceeded", failure)
            return .requeue(after: Self.retry)
        }

        step.status.phase = step.status.rollback == nil ? .progressing : .rolledBack
        let reason = step.status.rollback == nil ? "RollingOut" : "RollingBack"
        step.reconciling(reason, message)
        step.status.conditions.set(DeploymentConditions.progressing, .true, reason: "ReplicaSetUpdated", message: message, observedGeneration: step.generation, now: step.time)
        if step.movedOn || state?.movedOn == true { return .requeue(after: .milliseconds(10)) }  // room for the next new instance
        let remaining = deadlineSeconds - elapsed
        return .requeue(after: min(workload.progressCheck, .milliseconds(Int64(max(remaining, 0.01) * 1000))))
    }

    /// The spec's new template waits for the deployment window: the running revision is kept
    /// (and scaled), the status says when the window opens, and the reconcile is woken then.
    private func scheduled(_ target: WorkloadRevision, _ summary: String, _ step: inout Step) {
        guard let scheduled = step.scheduled else { return }
        step.status.phase = .scheduled
        let when = scheduled.opensAt.map { "the window opens at \(Timestamp($0).description)" } ?? "the window never opens again"
        let message = "version \(step.spec.version) waits for the deployment window (\(when)); revision \(target.number) runs: \(summary)"
        step.reconciling("Scheduled", message)
        step.status.conditions.set(ConditionType.ready, .false, reason: "Scheduled", message: message, observedGeneration: step.generation, now: step.time)
        if step.deployment.status.phase != .scheduled || step.deployment.status.nextWindowTime != step.status.nextWindowTime {
            step.event(.normal, "RolloutScheduled", message)
        }
        if let opens = scheduled.opensAt { step.wake(at: opens) }
    }

    /// Keeps `revisionHistoryLimit` old revisions (and their releases) besides the current one.
    private func pruneHistory(_ target: WorkloadRevision, _ step: inout Step) async throws {
        let limit = step.spec.revisionHistoryLimit
        let inUse = Set(step.status.tracks.map(\.revision)).union([target.number])
        try await revisions.pruneRevisions(of: step.key, keep: limit + 1, inUse: inUse)
        let kept = Set(try await revisions.revisions(of: step.key).map(\.number))
        await workload.pruneReleases(of: step.key, keeping: kept)
    }
}

extension TrackRole {
    var order: Int {
        switch self {
        case .active: return 0
        case .preview: return 1
        case .canary: return 2
        case .retiring: return 3
        }
    }
}

/// The Deployment-specific condition types (Kubernetes' `apps/v1` ones).
public enum DeploymentConditions {
    public static let available = "Available"
    public static let progressing = "Progressing"
}
