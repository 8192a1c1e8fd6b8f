import CapstanModel
import CapstanRuntime
import Foundation

extension DeploymentReconciler {
    /// BlueGreen: the target starts as the other colour at full size behind the preview port;
    /// once it is complete the port switches to it at once (`autoPromote`, or a `promote`
    /// request), and the old colour is kept `scaleDownDelay` so that an abort or a rollback
    /// switches back at once. Returns the track that runs the target (nil: none, its preview
    /// failed and was removed).
    func blueGreen(_ target: WorkloadRevision, application: Application, _ step: inout Step) async throws -> TrackState? {
        let spec = step.spec
        let active = step.active
        let states = step.observed
        let activeHash = step.status.tracks.first { $0.role == .active }?.templateHash ?? states[active]?.templateHash
        guard let activeHash, activeHash != target.hash else {
            // The first rollout, or the active colour runs the target: it stays as it is (scaled
            // to the spec); a preview of something else goes.
            return try await inPlace(target, application: application, &step)
        }
        if step.status.history.last?.outcome == "Failed" {
            // The preview missed its deadline and was removed; the active colour serves on.
            try await route(Traffic(active: active), application, &step)
            try await retire(except: [active], &step)
            return nil
        }
        // The colour kept after a switch runs the target (an abort, a rollback in time): it
        // takes the port back as soon as it is complete, without waiting for a promotion.
        let kept = step.status.tracks.first { $0.role == .retiring && $0.templateHash == target.hash }
        let preview = kept.map { Track($0.name) }
            ?? step.status.tracks.first(where: { $0.role == .preview }).map { Track($0.name) }
            ?? active.otherColour
        let previewSpec = TrackSpec(revision: target, replicas: spec.replicas, strategy: .recreate, paused: spec.paused,
                                    progressDeadline: spec.progressDeadline, revisionHistoryLimit: spec.revisionHistoryLimit)
        let state = try await workload.ensure(preview, of: step.deployment, previewSpec)
        step.events += state.events
        step.setTrack(preview, role: .preview, revision: target, state: state)
        try await retire(except: [active, preview], &step)
        let promote = kept != nil || (spec.strategy.blueGreen ?? BlueGreenStrategy()).autoPromote || step.promote
        guard state.complete(replicas: spec.replicas), promote, !spec.paused else {
            try await route(Traffic(active: active, preview: preview), application, &step)
            return state
        }
        try await switchTraffic(to: preview, from: active, target, state, application: application, &step)
        return state
    }

    /// The port goes to `track` at once; the colour that served it is kept `scaleDownDelay`.
    private func switchTraffic(to track: Track, from old: Track, _ target: WorkloadRevision, _ state: TrackState,
                               application: Application, _ step: inout Step) async throws {
        let delay = (step.spec.strategy.blueGreen ?? BlueGreenStrategy()).scaleDownDelay
        let retireAt = step.time.date.addingTimeInterval(delay.seconds)
        if let index = step.status.tracks.firstIndex(where: { $0.name == old.rawValue }) {
            step.status.tracks[index].role = .retiring
            step.status.tracks[index].retireAt = Timestamp(retireAt)
        }
        step.setTrack(track, role: .active, revision: target, state: state)
        try await route(Traffic(active: track), application, &step)
        step.event(.normal, "TrafficSwitched",
                   "track \(track) (revision \(target.number), version \(target.template.version)) now serves the port; track \(old) is kept until \(Timestamp(retireAt)) (scaleDownDelay \(delay))")
        step.wake(at: retireAt)
    }

    func route(_ wanted: Traffic, _ application: Application, _ step: inout Step) async throws {
        do {
            step.events += try await traffic.route(step.deployment, application: application, wanted)
        } catch let error as WorkloadError {
            step.portProblem = error
        }
    }

    // MARK: - Requests

    /// Requests made with the CLI or an annotation, taken inside the reconcile (the reconciler
    /// is the one writer of the status): `rollback` sets `status.rollback`, which this very
    /// reconcile rolls out; `promote` lets a BlueGreen preview take the port; `abort` returns to
    /// what served before. A request that cannot be done is refused with an event.
    func takeRequests(_ step: inout Step) async throws {
        let known: Set<String> = [ObjectRequest.rollback, ObjectRequest.promote, ObjectRequest.abort]
        for request in await store.requests(for: step.key) where known.contains(request.type) {
            guard await store.take(request, of: step.key) else { continue }
            let refusal = request.type == ObjectRequest.rollback ? "RollbackRefused" : request.type == ObjectRequest.promote ? "PromoteRefused" : "AbortRefused"
            do {
                switch request.type {
                case ObjectRequest.promote:
                    guard step.status.conditions[type: ConditionType.reconciling]?.reason == "AwaitingPromotion" else {
                        throw WorkloadError(refusal, "nothing awaits promotion: \(step.status.tracks.contains { $0.role == .preview } ? "the preview is not ready yet" : "no BlueGreen preview runs")")
                    }
                    step.promote = true
                    step.event(.normal, "PromoteRequested", "promotion of revision \(step.status.currentRevision ?? 0) requested")
                case ObjectRequest.abort:
                    let back = step.status.tracks.first { $0.role == .retiring }
                        ?? (step.status.tracks.contains { $0.role == .preview } ? step.status.tracks.first { $0.role == .active } : nil)
                    guard let back else {
                        throw WorkloadError(refusal, "nothing to abort: no BlueGreen preview runs and no colour is kept from a switch")
                    }
                    try await planRollback(to: back.revision, request: request, &step, reason: "Aborted",
                                           message: "aborted: back to revision \(back.revision) (version \(back.version)) on track \(back.name)")
                default:
                    try await planRollback(to: try RollbackRequest.revision(from: request.value), request: request, &step, reason: "RollbackRequested", message: nil)
                }
            } catch let error as WorkloadError {
                step.event(.warning, refusal, error.message)
            }
        }
    }

    private func planRollback(to revision: Int?, request: ObjectRequest, _ step: inout Step, reason: String, message: String?) async throws {
        let applicationKey = ObjectKey(kind: .application, namespace: step.key.namespace, name: step.spec.application)
        guard let applicationObject = try await store.object(applicationKey), case .application(let application) = applicationObject.resource else {
            throw WorkloadError("ApplicationNotFound", "application \(step.spec.application) does not exist")
        }
        let specHash = WorkloadTemplate(deployment: step.deployment, application: application, applicationFile: applicationObject.sourceFile).hash
        let (rollback, planned) = try await RollbackRequest.plan(step.key, to: revision, status: step.status, specTemplateHash: specHash,
                                                                 revisions: revisions, request: request.value)
        step.status.rollback = rollback
        if let message, step.status.rollback != nil { step.status.rollback?.message = message }
        step.event(.normal, reason, message.map { "\($0) (\(planned))" } ?? planned)
    }
}
