import CapstanModel
import CapstanRuntime
import Foundation

/// Reconciles Deployments: picks the revision to run (the spec's, or a rolled-back one), makes
/// it runnable, and moves instances towards it with the strategy, one level-based step per
/// reconcile, so a restarted daemon resumes a half-done rollout from what it observes.
public struct DeploymentReconciler: Reconciler {
    public typealias Key = ObjectKey

    let store: any ObjectStore
    let events: any EventRecorder
    let workload: any WorkloadPlatform
    let revisions: any RevisionStore
    let now: @Sendable () -> Date
    /// Whether a deleted Deployment's leftovers are removed (`--prune`).
    let prune: Bool

    /// How often a rollout in progress is looked at without an event (instances report their
    /// readiness changes at once; this is the safety net and the deadline clock).
    public static let progressCheck: Duration = .seconds(5)
    /// How soon to try again after a failure outside the spec (a build, a port, a source).
    public static let retry: Duration = .seconds(30)
    /// How soon a router port that could not be opened is tried again.
    public static let portRetry: Duration = .seconds(1)

    public init(store: any ObjectStore, events: any EventRecorder, workload: any WorkloadPlatform, revisions: any RevisionStore,
                prune: Bool = true, now: @escaping @Sendable () -> Date = Date.init) {
        self.prune = prune
        self.store = store
        self.events = events
        self.workload = workload
        self.revisions = revisions
        self.now = now
    }

    public func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
        guard let stored = try await store.object(key), case .deployment(let deployment) = stored.resource else {
            // Deleted: everything it had goes (inventory-driven), its history too, unless
            // pruning is off for it.
            let decision = Prune.decide(enabled: prune, annotated: await store.pruneDisabled(key))
            guard decision == .delete else {
                let would = await workload.remove(key, dryRun: true)
                if !would.isEmpty {
                    let (type, reason, message) = Prune.skipped(decision, kind: "deployment", would: would)
                    await events.record(type, reason: reason, message: message, about: key)
                }
                return .done
            }
            let removed = await workload.remove(key, dryRun: false)
            try await revisions.removeRevisions(of: key)
            if !removed.isEmpty {
                await events.record(.normal, reason: "OrphanDeleted", message: "deployment deleted; removed " + removed.joined(separator: ", "), about: key)
            }
            return .done
        }
        var step = Step(key: key, stored: stored, deployment: deployment, time: Timestamp(now()))
        try await takeRequests(&step)
        var result = try await run(&step)
        if let problem = step.portProblem {
            let before = deployment.status.conditions[type: ConditionType.stalled]
            step.stalled(problem.reason, problem.message)
            if before?.status != .true || before?.reason != problem.reason { step.event(.warning, problem.reason, problem.message) }
            result = .requeue(after: min(result.requeueAfter ?? Self.portRetry, Self.portRetry))
        }
        if let hold = stored.hold {
            step.status.markStalled(reason: hold.reason, message: hold.message, generation: stored.generation, now: step.time)
        }
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
        var events: [(EventType, String, String)] = []
        /// The template hash of what the spec asks for.
        var specHash = ""
        /// Instances were stopped: the next step of the rollout can follow at once.
        var stoppedSome = false
        /// The stable port could not be opened: reported, retried within a second, and never a
        /// reason to hold the rollout (the instances run and self-heal without it).
        var portProblem: WorkloadError?

        init(key: ObjectKey, stored: StoredObject, deployment: Deployment, time: Timestamp) {
            self.key = key
            self.stored = stored
            self.deployment = deployment
            self.time = time
            self.status = deployment.status
        }

        var generation: Int { stored.generation }

        mutating func stalled(_ reason: String, _ message: String) {
            status.markStalled(reason: reason, message: message, generation: generation, now: time)
            status.conditions.set(DeploymentConditions.progressing, .false, reason: reason, message: message, observedGeneration: generation, now: time)
        }

        mutating func event(_ type: EventType, _ reason: String, _ message: String) {
            events.append((type, reason, message))
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
        var recorded = Set(step.events.map(\.1))
        for (type, reason, message) in step.events {
            await events.record(type, reason: reason, message: message, about: step.key)
        }
        if let after, after.status != .unknown, before?.status != after.status || before?.reason != after.reason, after.reason != step.stored.hold?.reason,
           !recorded.contains(after.reason) {
            recorded.insert(after.reason)
            await events.record(after.status == .true ? .normal : .warning, reason: after.reason, message: after.message, about: step.key)
        }
    }

    private func run(_ step: inout Step) async throws -> ReconcileResult {
        let deployment = step.deployment
        let spec = deployment.spec
        if spec.strategy.type == .blueGreen {
            step.stalled("NotSupported", "strategy BlueGreen is not supported yet; the running revision is kept")
            return .done
        }
        if spec.window != nil {
            step.stalled("NotSupported", "deployment windows are not supported yet; the running revision is kept")
            return .done
        }
        let applicationKey = ObjectKey(kind: .application, namespace: step.key.namespace, name: spec.application)
        guard let applicationObject = try await store.object(applicationKey), case .application(let application) = applicationObject.resource else {
            step.stalled("ApplicationNotFound", "application \(spec.application) does not exist in namespace \(step.key.namespace)")
            return .requeue(after: Self.retry)
        }
        do {
            try await workload.expose(step.key, port: spec.port)
        } catch {
            // The instances still run and self-heal; only the stable port is missing (after a
            // leader handoff, the old leader may hold it for a moment): the rollout goes on.
            step.portProblem = error
        }

        // Which revision runs: the spec's, unless a rollback holds and the spec is unchanged since.
        let template = WorkloadTemplate(deployment: deployment, application: application, applicationFile: applicationObject.sourceFile)
        let specHash = template.hash
        step.specHash = specHash
        if let rollback = step.status.rollback, rollback.specTemplateHash != specHash {
            step.status.rollback = nil  // the spec moved on: roll it out
        }
        let target: WorkloadRevision
        if let rollback = step.status.rollback,
           let held = try await revisions.revisions(of: step.key).first(where: { $0.number == rollback.toRevision }) {
            target = WorkloadRevision(number: held.number, template: try WorkloadTemplate.decode(held.template))
        } else {
            step.status.rollback = nil
            let recorded = try await revisions.recordRevision(of: step.key, hash: specHash, template: template.encode())
            target = WorkloadRevision(number: recorded.number, template: template)
        }
        begin(target, &step)

        do {
            for repair in try await workload.prepare(target, for: step.key, current: true) {
                step.event(.warning, "DriftCorrected", repair)
            }
        } catch {
            step.stalled(error.reason, error.message)
            step.event(.warning, error.reason, error.message)
            await observe(target, &step)
            return .requeue(after: Self.retry)
        }

        if spec.paused && !(step.status.history.last?.outcome == "Succeeded") {
            await observe(target, &step)
            step.status.phase = .paused
            step.status.markReconciling(reason: "Paused", message: "rollout of revision \(target.number) is paused", generation: step.generation, now: step.time)
            step.status.conditions.set(DeploymentConditions.progressing, .unknown, reason: "Paused", message: "paused", observedGeneration: step.generation, now: step.time)
            return .done
        }

        let startProblem = await roll(to: target, &step)
        return try await assess(target, startProblem: startProblem, &step)
    }

    /// A new target revision starts a history entry; the entry it replaces, unfinished, was
    /// superseded.
    private func begin(_ target: WorkloadRevision, _ step: inout Step) {
        step.status.currentRevision = target.number
        step.status.version = target.template.version
        guard step.status.history.last?.templateHash != target.hash || step.status.history.last?.revision != target.number else { return }
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
        let limit = max(step.deployment.spec.revisionHistoryLimit, 1) + 1
        if step.status.history.count > limit { step.status.history.removeFirst(step.status.history.count - limit) }
        step.status.phase = .progressing
        step.event(.normal, "RolloutStarted", "rolling out revision \(target.number) (version \(target.template.version))")
    }

    /// One step of the strategy; returns why an instance could not be started, if it could not.
    private func roll(to target: WorkloadRevision, _ step: inout Step) async -> WorkloadError? {
        let spec = step.deployment.spec
        let replicas = spec.replicas
        let instances = await workload.instances(of: step.key)
        var new = instances.filter { $0.templateHash == target.hash }
        let old = instances.filter { $0.templateHash != target.hash }
        let memory = target.template.spec.resources.memory.map(\.roundedUp)
        var problem: WorkloadError?

        func start(_ count: Int) async {
            for _ in 0..<max(0, count) {
                do {
                    let id = try await workload.start(target, for: step.key, memoryLimit: memory)
                    new.append(InstanceState(id: id, templateHash: target.hash, revision: target.number, ready: false))
                    step.event(.normal, "InstanceStarted", "started instance \(id) of revision \(target.number)")
                } catch {
                    problem = error
                    step.event(.warning, error.reason, "cannot start an instance of revision \(target.number): \(error.message)")
                    return
                }
            }
        }
        /// Side by side: an app that ignores SIGTERM costs one grace period, not one per instance.
        func stop(_ victims: some Sequence<InstanceState>, _ why: String) async {
            let victims = Array(victims)
            guard !victims.isEmpty else { return }
            step.stoppedSome = true
            let workload = self.workload, key = step.key
            await withTaskGroup(of: Void.self) { group in
                for instance in victims { group.addTask { await workload.stop(instance: instance.id, of: key) } }
            }
            for instance in victims { step.event(.normal, "InstanceStopped", "stopped instance \(instance.id) (\(why))") }
        }
        // Unready first, then the newest: the instances to let go of.
        func victims(_ candidates: [InstanceState], _ count: Int) -> [InstanceState] {
            Array(candidates.sorted { !$0.ready && $1.ready }.prefix(max(0, count)))
        }

        if new.count > replicas { await stop(victims(new, new.count - replicas), "scaled down") }
        new = Array(new.prefix(replicas))
        switch spec.strategy.type {
        case .recreate:
            if !old.isEmpty {
                await stop(old, "Recreate: replaced by revision \(target.number)")
            } else {
                await start(replicas - new.count)
            }
        case .rollingUpdate, .blueGreen:
            let surge = spec.strategy.effectiveMaxSurge.scaled(total: replicas, roundUp: true) ?? 1
            var unavailable = spec.strategy.effectiveMaxUnavailable.scaled(total: replicas, roundUp: false) ?? 0
            if surge == 0 && unavailable == 0 { unavailable = 1 }
            // Scale up the new revision within replicas + maxSurge.
            let total = new.count + old.count
            await start(min(replicas - new.count, replicas + surge - total))
            // Scale down the old one (Kubernetes' rule): unready instances first, then ready
            // ones while at least replicas - maxUnavailable stay ready.
            let minAvailable = replicas - unavailable
            let newUnready = new.filter { !$0.ready }.count
            var budget = new.count + old.count - minAvailable - newUnready
            guard budget > 0 else { break }
            let unreadyOld = old.filter { !$0.ready }.prefix(budget)
            await stop(unreadyOld, "unready, replaced by revision \(target.number)")
            budget -= unreadyOld.count
            let readyOld = old.filter(\.ready)
            let readyTotal = new.filter(\.ready).count + readyOld.count
            let count = min(budget, readyTotal - minAvailable)
            if count > 0 { await stop(readyOld.prefix(count), "replaced by revision \(target.number)") }
        }
        return problem
    }

    /// Observes where the rollout stands, writes it to the status, and decides on the deadline.
    private func assess(_ target: WorkloadRevision, startProblem: WorkloadError?, _ step: inout Step) async throws -> ReconcileResult {
        let spec = step.deployment.spec
        let (new, old) = await observe(target, &step)
        let readyNew = new.filter(\.ready).count
        let complete = old.isEmpty && new.count == spec.replicas && readyNew == spec.replicas
        var entry = step.status.history.removeLast()
        defer { step.status.history.append(entry) }
        let summary = "\(readyNew)/\(spec.replicas) ready at version \(target.template.version) (revision \(target.number))"

        if complete {
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
        let problems = (new + old).compactMap { instance in instance.problem.map { "instance \(instance.id): \($0)" } }
        var message = summary + (old.isEmpty ? "" : ", \(old.count) instance(s) of older revisions left")
        if let startProblem { message += "; cannot start an instance: \(startProblem.message)" }
        if let first = problems.first { message += "; \(first)" }

        if entry.outcome == "Succeeded" {
            // The revision rolled out; an instance is down and the supervisor restarts it.
            step.status.phase = step.status.rollback == nil ? .succeeded : .rolledBack
            step.status.markReconciling(reason: "InstancesNotReady", message: message, generation: step.generation, now: step.time)
            step.status.conditions.set(ConditionType.ready, .false, reason: "InstancesNotReady", message: message, observedGeneration: step.generation, now: step.time)
            return .requeue(after: Self.progressCheck)
        }
        if entry.outcome == "Failed" {
            step.status.phase = .failed
            step.stalled("ProgressDeadlineExceeded", "revision \(target.number) made no progress for \(spec.progressDeadline): \(message)")
            return .requeue(after: Self.retry)
        }
        if let startProblem, startProblem.reason == "SecretUnavailable" {
            step.stalled(startProblem.reason, startProblem.message)
            return .requeue(after: Self.retry)
        }

        let progressedAt = entry.progressedAt?.date ?? step.time.date
        let elapsed = step.time.date.timeIntervalSince(progressedAt)
        let deadline = spec.progressDeadline.duration
        let deadlineSeconds = Double(deadline.components.seconds) + Double(deadline.components.attoseconds) / 1e18
        if elapsed >= deadlineSeconds {
            entry.outcome = "Failed"
            entry.finishedAt = step.time
            let failure = "revision \(target.number) (version \(target.template.version)) made no progress for \(spec.progressDeadline): \(message)"
            step.event(.warning, "ProgressDeadlineExceeded", failure)
            if spec.autoRollback, let good = step.status.history.last(where: { $0.outcome == "Succeeded" && $0.templateHash != target.hash }),
               let goodTemplate = try await revisions.revisions(of: step.key).first(where: { $0.hash == good.templateHash }) {
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
                step.status.markReconciling(reason: "RolledBack", message: "rolling back to version \(good.version): \(rollback.message!)", generation: step.generation, now: step.time)
                return .requeue(after: .milliseconds(1))
            }
            step.status.phase = .failed
            step.stalled("ProgressDeadlineExceeded", failure)
            return .requeue(after: Self.retry)
        }

        step.status.phase = step.status.rollback == nil ? .progressing : .rolledBack
        let reason = step.status.rollback == nil ? "RollingOut" : "RollingBack"
        step.status.markReconciling(reason: reason, message: message, generation: step.generation, now: step.time)
        step.status.conditions.set(DeploymentConditions.progressing, .true, reason: "ReplicaSetUpdated", message: message, observedGeneration: step.generation, now: step.time)
        if step.stoppedSome { return .requeue(after: .milliseconds(10)) }  // room for the next new instance
        let remaining = deadlineSeconds - elapsed
        return .requeue(after: min(Self.progressCheck, .milliseconds(Int64(max(remaining, 0.01) * 1000))))
    }

    /// Counts instances into the status and sets `Available`; returns the target's and the rest.
    @discardableResult
    private func observe(_ target: WorkloadRevision?, _ step: inout Step) async -> (new: [InstanceState], old: [InstanceState]) {
        let instances = await workload.instances(of: step.key)
        let new = instances.filter { $0.templateHash == target?.hash }
        let old = instances.filter { $0.templateHash != target?.hash }
        let ready = instances.filter(\.ready).count
        step.status.replicas = instances.count
        step.status.updatedReplicas = new.count
        step.status.readyReplicas = ready
        step.status.availableReplicas = ready
        let spec = step.deployment.spec
        let unavailable = spec.strategy.type == .rollingUpdate ? (spec.strategy.effectiveMaxUnavailable.scaled(total: spec.replicas, roundUp: false) ?? 0) : 0
        let available = ready >= spec.replicas - unavailable
        step.status.conditions.set(DeploymentConditions.available, available ? .true : .false,
                                   reason: available ? "MinimumReplicasAvailable" : "MinimumReplicasUnavailable",
                                   message: "\(ready) of \(spec.replicas) instance(s) ready", observedGeneration: step.generation, now: step.time)
        return (new, old)
    }

    /// Keeps `revisionHistoryLimit` old revisions (and their releases) besides the current one.
    private func pruneHistory(_ target: WorkloadRevision, _ step: inout Step) async throws {
        let limit = step.deployment.spec.revisionHistoryLimit
        try await revisions.pruneRevisions(of: step.key, keep: limit + 1, inUse: [target.number])
        let kept = Set(try await revisions.revisions(of: step.key).map(\.number))
        await workload.pruneReleases(of: step.key, keeping: kept)
    }

    // MARK: - Requested rollback

    /// `capstan rollback deployment/NAME [--to-revision N]`: holds revision N (default: the
    /// one before the current) until the spec's template changes. Returns what was done.
    /// Requests made with the CLI, taken inside the reconcile (the reconciler is the one writer
    /// of the status): a rollback sets `status.rollback`, which this very reconcile rolls out,
    /// or is refused with a `RollbackRefused` event.
    private func takeRequests(_ step: inout Step) async throws {
        for request in await store.requests(for: step.key) where request.type == ObjectRequest.rollback {
            guard await store.take(request) else { continue }
            do {
                let requested = try RollbackRequest.revision(from: request.value)
                let applicationKey = ObjectKey(kind: .application, namespace: step.key.namespace, name: step.deployment.spec.application)
                guard let applicationObject = try await store.object(applicationKey), case .application(let application) = applicationObject.resource else {
                    throw WorkloadError("ApplicationNotFound", "application \(step.deployment.spec.application) does not exist")
                }
                let specHash = WorkloadTemplate(deployment: step.deployment, application: application, applicationFile: applicationObject.sourceFile).hash
                let (rollback, message) = try await RollbackRequest.plan(step.key, to: requested, status: step.status, specTemplateHash: specHash, revisions: revisions)
                step.status.rollback = rollback
                step.event(.normal, "RollbackRequested", message)
            } catch let error as WorkloadError {
                step.event(.warning, "RollbackRefused", error.message)
            }
        }
    }
}

/// The Deployment-specific condition types (Kubernetes' `apps/v1` ones).
public enum DeploymentConditions {
    public static let available = "Available"
    public static let progressing = "Progressing"
}
