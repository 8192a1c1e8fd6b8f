import CapstanModel
import CapstanRuntime
import Foundation

/// A Canary's run as its Deployment sees it: the Canary decides the steps, the weight and the
/// outcome (`CanaryReconciler`, through its status); the Deployment realises them on its
/// tracks and its port, as it realises every other rollout.
struct CanaryRun {
    let name: String
    let routing: TrafficRouting
    /// Why the Canary stopped the run (its status' message).
    let message: String?
    /// The Canary was deleted during the run: it ends as an abort.
    var deleted = false
    /// The revision the stable track keeps while the canary runs.
    let stable: WorkloadRevision
    /// The Canary's decisions about this target (nil: it has not started a run for it yet).
    var phase: CanaryPhase?
    var weight: Int
}

extension DeploymentReconciler {
    /// The Canary guarding this Deployment (the first by name; the others are refused by
    /// their own reconciler) when its new target goes through it: a RollingUpdate Deployment
    /// whose stable track runs another revision, or a promotion still under way. The first
    /// rollout, a rollback and a BlueGreen Deployment never go through a canary.
    func canaryRun(_ target: WorkloadRevision, _ step: Step) async throws -> CanaryRun? {
        guard step.spec.strategy.type != .blueGreen, step.status.rollback == nil else { return nil }
        let guards = try await store.objects(kind: .canary, referencing: step.key).compactMap { stored -> Canary? in
            guard case .canary(let canary) = stored.resource, canary.metadata.deletionTimestamp == nil, canary.spec.deployment == step.key.name else { return nil }
            return canary
        }
        guard let stableEntry = step.status.tracks.first(where: { $0.role == .active }) else { return nil }
        guard let canary = guards.min(by: { $0.metadata.name < $1.metadata.name }) else {
            // No Canary guards it: a run it was in (a canary track, or the target's entry
            // aborted) ends aborted: the canary goes, the stable track serves on, and the
            // target waits for the next change of the spec.
            let present = step.observed[.canary] != nil || step.status.tracks.contains { $0.name == Track.canary.rawValue }
            let aborted = step.status.history.last.map { $0.revision == target.number && $0.outcome == "Aborted" } ?? false
            guard stableEntry.revision != target.number, present || aborted, let stable = try await revision(stableEntry.revision, step) else { return nil }
            return CanaryRun(name: "", routing: .auto, message: nil, deleted: true, stable: stable, phase: .aborted, weight: 0)
        }
        let forTarget = canary.status.canaryRevision == target.number
        let phase = forTarget ? canary.status.phase : nil
        let canaryPresent = step.observed[.canary] != nil || step.status.tracks.contains { $0.name == Track.canary.rawValue }
        if stableEntry.revision == target.number {
            // The stable track runs the target: only a promotion still moving traffic off the
            // canary goes on here.
            guard phase == .promoting, canaryPresent else { return nil }
            return CanaryRun(name: canary.metadata.name, routing: canary.spec.trafficRouting, message: canary.status.message, stable: target, phase: phase, weight: 100)
        }
        guard let stable = try await revision(stableEntry.revision, step) else { return nil }
        return CanaryRun(name: canary.metadata.name, routing: canary.spec.trafficRouting, message: canary.status.message, stable: stable, phase: phase,
                         weight: forTarget ? canary.status.canaryWeight ?? 0 : 0)
    }

    /// A revision of the history with its template (nil: pruned from the store).
    private func revision(_ number: Int, _ step: Step) async throws -> WorkloadRevision? {
        guard let stored = try await revisions.revisions(of: step.key).first(where: { $0.number == number }) else { return nil }
        return WorkloadRevision(number: number, template: try WorkloadTemplate.decode(stored.template))
    }

    /// The target on the canary track beside the stable one, with the Canary's share of the
    /// port; on promotion the canary takes the whole port while the stable track rolls to the
    /// target, then the stable track takes it back and the canary goes; on abort the canary
    /// goes and the stable track serves on, the spec's revision reported as not promoted.
    func canary(_ run: CanaryRun, _ target: WorkloadRevision, application: Application, _ step: inout Step) async throws -> ReconcileResult {
        let spec = step.spec
        let active = step.active
        let total = spec.replicas
        let split: TrafficSplit
        do {
            split = try await traffic.split(run.routing, namespace: step.key.namespace)
        } catch {
            step.stalled(error.reason, "canary \(run.name): \(error.message)")
            return .requeue(after: Self.retry)
        }
        var entry = step.status.history.removeLast()
        defer { step.status.history.append(entry) }
        let version = "revision \(target.number) (version \(target.template.version))"

        if run.phase == .aborted || run.phase == .failed {
            let state = try await workload.ensure(active, of: step.deployment, trackSpec(run.stable, spec))
            step.events += state.events
            step.setTrack(active, role: .active, revision: run.stable, state: state)
            try await route(Traffic(active: active), application, &step)
            try await retire(except: [active], &step)
            var states = step.observed
            states[active] = state
            observe(target, states, &step)
            if entry.outcome == nil {
                entry.outcome = "Aborted"
                entry.finishedAt = step.time
                if run.deleted {
                    step.event(.warning, "CanaryAborted", "\(version) was not promoted: its Canary was deleted during the run; the canary track goes and revision \(run.stable.number) serves until the spec changes")
                }
            }
            step.status.phase = .failed
            let why = run.deleted ? "its Canary was deleted during the run" : "canary \(run.name) aborted" + (run.message.map { ": \($0)" } ?? "")
            step.stalled("CanaryAborted", "\(version) was not promoted (\(why)); revision \(run.stable.number) (version \(run.stable.template.version)) serves until the spec changes")
            return .requeue(after: Self.progressCheck)
        }

        let promoting = run.phase == .promoting
        var weight = min(100, max(0, run.weight))
        var canaryReplicas = max(1, Int((Double(total * weight) / 100).rounded(.up)))
        var stableReplicas = total
        if split == .replicas, !promoting {
            // One Service over both tracks: the ratio of ready pods is the split.
            canaryReplicas = weight == 0 ? 1 : min(total, max(1, Int((Double(total * weight) / 100).rounded())))
            stableReplicas = weight >= 100 ? 0 : max(1, total - (weight == 0 ? 0 : canaryReplicas))
        }
        if promoting { canaryReplicas = total }
        let canarySpec = TrackSpec(revision: target, replicas: canaryReplicas, strategy: .rollingUpdate(maxSurge: .int(1), maxUnavailable: .int(0)),
                                   paused: spec.paused, progressDeadline: spec.progressDeadline, revisionHistoryLimit: spec.revisionHistoryLimit)
        let canaryState = try await workload.ensure(.canary, of: step.deployment, canarySpec)
        step.events += canaryState.events
        step.setTrack(.canary, role: .canary, revision: target, state: canaryState)

        var stableRevision = run.stable
        var finishing = false
        if promoting, canaryState.complete(replicas: total) {
            // The canary carries the port while the stable track rolls to the target.
            weight = 100
            stableRevision = target
        }
        let stableState = try await workload.ensure(active, of: step.deployment, TrackSpec(
            revision: stableRevision, replicas: stableReplicas, strategy: trackSpec(stableRevision, spec).strategy, paused: false,
            progressDeadline: spec.progressDeadline, revisionHistoryLimit: spec.revisionHistoryLimit))
        step.events += stableState.events
        step.setTrack(active, role: .active, revision: stableRevision, state: stableState)
        if promoting, stableRevision.number == target.number, stableState.complete(replicas: total) {
            // Promoted: the stable track takes the port back, the canary goes.
            finishing = true
            weight = 0
        }
        try await route(Traffic(active: active, canary: .canary, canaryWeight: weight, split: split), application, &step)
        var states = step.observed
        states[active] = stableState
        states[.canary] = canaryState
        if finishing {
            try await retire(except: [active], &step)
            states[.canary] = nil
        } else if let index = step.status.tracks.firstIndex(where: { $0.name == Track.canary.rawValue }) {
            step.status.tracks[index].weight = effectiveWeight(weight, split: split, stable: stableState, canary: canaryState)
            if let stableIndex = step.status.tracks.firstIndex(where: { $0.role == .active }) {
                step.status.tracks[stableIndex].weight = 100 - (step.status.tracks[index].weight ?? 0)
            }
        }
        observe(target, states, &step)
        if entry.progressedAt == nil { entry.progressedAt = step.time }
        step.status.phase = .progressing
        let where_ = finishing ? "promoted; the canary track goes"
            : promoting ? (weight == 100 ? "promoting: the canary carries the port while the stable track rolls to it" : "promoting: the canary grows to \(total) instance(s)")
            : run.phase == nil ? "on the canary track, waiting for canary \(run.name) to start its run"
            : "on the canary track at \(step.status.tracks.first { $0.name == Track.canary.rawValue }?.weight ?? weight)% of the traffic (canary \(run.name): \(run.phase!.rawValue.lowercased()))"
        step.reconciling("CanaryInProgress", "\(version) \(where_); \(canaryState.ready)/\(canaryReplicas) canary instance(s) ready")
        step.status.conditions.set(DeploymentConditions.progressing, .true, reason: "CanaryInProgress", message: "\(version) is going through canary \(run.name)",
                                   observedGeneration: step.generation, now: step.time)
        // A track that stopped an instance it replaced has room for its next new one now (as a
        // plain rollout: a promotion waited 5 s per instance of the stable track otherwise).
        if finishing { return .requeue(after: .milliseconds(1)) }
        if stableState.movedOn || canaryState.movedOn || step.movedOn { return .requeue(after: .milliseconds(10)) }
        return .requeue(after: Self.progressCheck)
    }

    /// The canary's share as the traffic really has it: the weight asked where the platform
    /// splits exactly; by replica ratio, what the ready pods give.
    private func effectiveWeight(_ weight: Int, split: TrafficSplit, stable: TrackState, canary: TrackState) -> Int {
        guard split == .replicas, weight > 0, weight < 100 else { return weight }
        let ready = stable.ready + canary.ready
        return ready == 0 ? 0 : Int((Double(canary.ready * 100) / Double(ready)).rounded())
    }
}
