import CapstanModel
import CapstanRuntime
import Foundation

/// Reconciles Canaries on every platform: decides a run's steps, weight, analysis and outcome
/// and keeps them in the Canary's status, which its Deployment realises (the canary track, the
/// split of the port, the promotion or the abort: `DeploymentReconciler.canary`). Every state
/// has a deadline — waiting for the canary, a pause without an end — so no run is stuck in
/// `Progressing`; a metric that cannot be read fails its analysis (fail closed); the step,
/// weight and failures are in the status, so a daemon killed anywhere resumes the same step.
public struct CanaryReconciler: Reconciler {
    public typealias Key = ObjectKey

    let store: any ObjectStore
    let events: any EventRecorder
    let metrics: (any MetricsPlatform)?
    let now: @Sendable () -> Date
    /// Since when each Canary's analysis has waited for a first value of its builtin metrics
    /// (in memory: a restarted daemon waits again, which is the case it is for).
    let waitingSince = FirstSeen()
    /// How long an analysis waits for the first probes of the canary's instances before a
    /// metric without a value fails (closed), at least 3 analysis intervals.
    public static let firstValueGrace: TimeInterval = 30

    /// Analysis runs kept in the status.
    public static let history = 20
    /// How often a run is looked at while it waits on its Deployment (which wakes it at once
    /// when its status changes: this is the deadline clock and the safety net).
    public static let recheck: Duration = .seconds(5)
    /// How long a Prometheus query may take.
    public static let queryTimeout: Duration = .seconds(10)

    public init(store: any ObjectStore, events: any EventRecorder, metrics: (any MetricsPlatform)?, now: @escaping @Sendable () -> Date = Date.init) {
        self.store = store
        self.events = events
        self.metrics = metrics
        self.now = now
    }

    struct Step {
        let key: ObjectKey
        let canary: Canary
        let generation: Int
        let time: Timestamp
        var status: CanaryStatus
        var events: [WorkloadEvent] = []
        var promote = false
        var abort = false
        /// When to look again (nil: on a change only).
        var wake: Date?

        var spec: CanarySpec { canary.spec }

        mutating func event(_ type: EventType, _ reason: String, _ message: String) {
            events.append(WorkloadEvent(type, reason, message))
        }

        mutating func wake(at date: Date) { wake = min(wake ?? date, date) }
    }

    public func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
        guard let stored = try await store.object(key), case .canary(let canary) = stored.resource, canary.metadata.deletionTimestamp == nil else {
            // Nothing of a run belongs to the Canary: its Deployment, no longer guarded,
            // removes the canary track and routes its port to the stable track.
            return .done
        }
        var step = Step(key: key, canary: canary, generation: stored.generation, time: Timestamp(now()), status: canary.status)
        await takeRequests(&step)
        await run(&step)
        if step.promote {
            step.event(.normal, "PromoteRefused", "nothing to promote: \(step.status.phase == .paused ? "" : "no pause is under way (phase \(step.status.phase?.rawValue ?? "Idle"))")")
        }
        if step.abort {
            step.event(.normal, "AbortRefused", "nothing to abort: no run is under way (phase \(step.status.phase?.rawValue ?? "Idle"))")
        }
        if let hold = stored.hold {
            step.status.markStalled(reason: hold.reason, message: hold.message, generation: stored.generation, now: step.time)
        }
        var status = step.status
        var before = canary.status
        status.lastReconcileTime = nil
        before.lastReconcileTime = nil
        if status != before {
            status.lastReconcileTime = step.time
            _ = try await store.writeStatus(key, status.encode())
        }
        for event in step.events {
            await events.record(event.type, reason: event.reason, message: event.message, about: key)
        }
        guard let wake = step.wake else { return .done }
        return .requeue(after: .milliseconds(Int64(max(1, (wake.timeIntervalSince(step.time.date) * 1000).rounded(.up)))))
    }

    /// `capstan promote canary/NAME` ends the current pause (or `capstan.dev/promote`);
    /// `capstan abort canary/NAME` aborts the run.
    private func takeRequests(_ step: inout Step) async {
        for request in await store.requests(for: step.key) where request.type == ObjectRequest.promote || request.type == ObjectRequest.abort {
            guard await store.take(request, of: step.key) else { continue }
            if request.type == ObjectRequest.promote { step.promote = true } else { step.abort = true }
        }
    }

    // MARK: - The run

    private func run(_ step: inout Step) async {
        let deploymentKey = ObjectKey(kind: .deployment, namespace: step.key.namespace, name: step.spec.deployment)
        guard let object = try? await store.object(deploymentKey), case .deployment(let deployment) = object.resource,
              deployment.metadata.deletionTimestamp == nil else {
            stall(&step, "DeploymentNotFound", "deployment \(step.spec.deployment) does not exist in namespace \(step.key.namespace): the canary waits for it")
            return
        }
        if deployment.spec.strategy.type == .blueGreen {
            stall(&step, "BlueGreenDeployment", "deployment \(deployment.metadata.name) rolls out BlueGreen (a whole new colour behind a preview port): a Canary guards RollingUpdate Deployments; use one or the other")
            return
        }
        let rivals = ((try? await store.objects(kind: .canary, referencing: deploymentKey)) ?? []).compactMap { stored -> String? in
            guard case .canary(let other) = stored.resource, other.metadata.deletionTimestamp == nil, other.spec.deployment == deployment.metadata.name else { return nil }
            return other.metadata.name
        }
        if let first = rivals.min(), first != step.key.name {
            stall(&step, "DuplicateCanary", "deployment \(deployment.metadata.name) is already guarded by canary \(first): one Canary per Deployment")
            return
        }
        let tracks = deployment.status.tracks
        guard let stable = tracks.first(where: { $0.role == .active }), let target = deployment.status.currentRevision else {
            step.status.phase = step.status.phase ?? .idle
            step.status.markReady(reason: "WaitingForFirstRollout", message: "deployment \(deployment.metadata.name) has not rolled out yet: its first version is not a canary",
                                  generation: step.generation, now: step.time)
            return
        }
        let canaryTrack = tracks.first { $0.name == Track.canary.rawValue }
        step.status.effectiveWeight = canaryTrack?.weight

        // A run for the target: going on, finished, or to start.
        if step.status.canaryRevision != target || step.status.phase == nil {
            guard stable.revision != target else {
                idle(&step, stable: stable, deployment: deployment)
                return
            }
            start(&step, target: target, version: deployment.status.version ?? "", stable: stable)
        } else if stable.revision == target, step.status.phase != .promoting, step.status.phase != .succeeded {
            // The spec went back to what the stable track runs: the run is over.
            if step.status.phase == .progressing || step.status.phase == .paused {
                step.event(.normal, "CanaryEnded", "deployment \(deployment.metadata.name) went back to revision \(target): the run of revision \(target) ended")
            }
            idle(&step, stable: stable, deployment: deployment)
            return
        }

        switch step.status.phase {
        case .aborted, .failed:
            let message = step.status.message ?? "aborted"
            // The reason it was aborted for stays (AnalysisFailed, ProgressDeadlineExceeded...).
            let reason = step.status.conditions[type: ConditionType.stalled]?.reason ?? "Aborted"
            step.status.markStalled(reason: reason, message: "version \(step.status.canaryVersion ?? "") was not promoted: \(message); change the Deployment's spec to start another run",
                                    generation: step.generation, now: step.time)
        case .succeeded:
            step.status.markReady(reason: "Promoted", message: "version \(step.status.canaryVersion ?? "") was promoted", generation: step.generation, now: step.time)
        case .promoting:
            if step.abort {
                step.abort = false
                step.event(.warning, "AbortRefused", "the promotion is under way (the stable track is rolling to the canary's version): it cannot be aborted; roll back the Deployment instead")
            }
            if stable.revision == target, canaryTrack == nil {
                step.status.phase = .succeeded
                step.status.canaryWeight = 0
                step.status.effectiveWeight = nil
                step.status.stableVersion = step.status.canaryVersion
                step.status.message = "promoted"
                step.status.conditions.set("Promoted", .true, reason: "Promoted", message: "version \(step.status.canaryVersion ?? "") is stable", observedGeneration: step.generation, now: step.time)
                step.status.markReady(reason: "Promoted", message: "version \(step.status.canaryVersion ?? "") was promoted", generation: step.generation, now: step.time)
                step.event(.normal, "Promoted", "version \(step.status.canaryVersion ?? "") (revision \(target)) is stable on deployment \(deployment.metadata.name)")
            } else {
                step.status.markReconciling(reason: "Promoting", message: "the stable track rolls to version \(step.status.canaryVersion ?? "") while the canary carries the traffic",
                                            generation: step.generation, now: step.time)
                step.wake(at: step.time.date.addingTimeInterval(Self.recheck.seconds))
            }
        default:
            await progress(&step, deployment: deployment, canary: canaryTrack, target: target)
        }
    }

    private func stall(_ step: inout Step, _ reason: String, _ message: String) {
        let before = step.status.conditions[type: ConditionType.stalled]
        step.status.markStalled(reason: reason, message: message, generation: step.generation, now: step.time)
        if before?.reason != reason { step.event(.warning, reason, message) }
        step.wake(at: step.time.date.addingTimeInterval(30))
    }

    private func idle(_ step: inout Step, stable: TrackStatus, deployment: Deployment) {
        if step.status.phase != .succeeded && step.status.phase != .aborted { step.status.phase = .idle }
        if step.status.phase == .idle {
            step.status.canaryWeight = 0
            step.status.currentStep = nil
            step.status.canaryVersion = nil
            step.status.canaryRevision = nil
            step.status.message = nil
        }
        step.status.effectiveWeight = nil
        step.status.stableVersion = stable.version
        step.status.stableRevision = stable.revision
        step.status.markReady(reason: "Idle", message: "deployment \(deployment.metadata.name) runs version \(stable.version); the next version goes through the steps",
                              generation: step.generation, now: step.time)
    }

    private func start(_ step: inout Step, target: Int, version: String, stable: TrackStatus) {
        if step.status.phase == .progressing || step.status.phase == .paused || step.status.phase == .promoting, let old = step.status.canaryVersion {
            step.event(.normal, "CanarySuperseded", "version \(old) was replaced by version \(version) before its run ended: the run starts again")
        }
        step.status.phase = .progressing
        step.status.currentStep = 0
        step.status.canaryWeight = 0
        step.status.failedAnalyses = 0
        step.status.stableRevision = stable.revision
        step.status.stableVersion = stable.version
        step.status.canaryRevision = target
        step.status.canaryVersion = version
        step.status.stepStartedAt = step.time
        step.status.lastAnalysisTime = nil
        step.status.message = nil
        step.status.conditions.remove("Promoted")
        step.event(.normal, "CanaryStarted", "version \(version) (revision \(target)) starts beside version \(stable.version): \(step.spec.steps.count) step(s)")
    }

    /// Progressing or paused: the canary's instances, the analysis at every interval, then
    /// the steps in order, as far as they go now.
    private func progress(_ step: inout Step, deployment: Deployment, canary: TrackStatus?, target: Int) async {
        let deadline = deployment.spec.progressDeadline
        if step.abort {
            step.abort = false
            abort(&step, "Aborted", "aborted on request")
            return
        }
        let startedAt = step.status.stepStartedAt?.date ?? step.time.date
        let ready = canary.map { $0.revision == target && ($0.readyReplicas ?? 0) >= max(1, $0.replicas ?? 1) } ?? false
        // Once the canary has served (past the first step), the analysis goes on whatever its
        // instances do: an instance that stops answering is what it is there to catch.
        let serving = (step.status.currentStep ?? 0) > 0
        if !ready && !serving {
            if step.time.date.timeIntervalSince(startedAt) >= deadline.seconds {
                abort(&step, "ProgressDeadlineExceeded", "the canary's instances were not ready within the progress deadline (\(deadline)): \(canary.map { "\($0.readyReplicas ?? 0)/\($0.replicas ?? 0) ready" } ?? "none started")")
                return
            }
            step.status.markReconciling(reason: "WaitingForCanary", message: "waiting for the canary's instances (version \(step.status.canaryVersion ?? ""))",
                                        generation: step.generation, now: step.time)
            step.wake(at: min(startedAt.addingTimeInterval(deadline.seconds), step.time.date.addingTimeInterval(Self.recheck.seconds)))
            return
        }
        let analysing = !step.spec.skipAnalysis && !step.spec.analysis.metrics.isEmpty
        let interval = step.spec.analysis.interval.seconds
        if analysing {
            if let last = step.status.lastAnalysisTime?.date, step.time.date < last.addingTimeInterval(interval) {
                step.wake(at: last.addingTimeInterval(interval))
            } else if await !analyse(&step, deployment: deployment) {
                // A failed run within failureLimit: the next one at the interval (nothing else
                // may wake this Canary: a Prometheus that is down changes no Deployment).
                if step.status.phase != .aborted { step.wake(at: step.time.date.addingTimeInterval(interval)) }
                return
            } else {
                step.wake(at: step.time.date.addingTimeInterval(interval))
            }
        }
        let steps = step.spec.steps
        var index = step.status.currentStep ?? 0
        if !ready, step.promote, index < steps.count, steps[index].pause != nil {
            // A pause ended on request while the canary's instances grow to the step's weight:
            // the pause ends now; the next step waits for them.
            step.promote = false
            step.event(.normal, "PromoteRequested", "step \(index + 1) of \(steps.count): the pause ended on request")
            index += 1
            step.status.currentStep = index
            step.status.stepStartedAt = step.time
            step.status.phase = .progressing
        }
        if !ready {
            if step.time.date.timeIntervalSince(startedAt) >= deadline.seconds {
                abort(&step, "ProgressDeadlineExceeded", "the canary's instances were not ready within the progress deadline (\(deadline)) of step \(index + 1): \(canary.map { "\($0.readyReplicas ?? 0)/\($0.replicas ?? 0) ready" } ?? "none left")")
                return
            }
            step.status.markReconciling(reason: "WaitingForCanary", message: "the canary's instances are not all ready (step \(index + 1) of \(steps.count) waits)",
                                        generation: step.generation, now: step.time)
            step.wake(at: min(startedAt.addingTimeInterval(deadline.seconds), step.time.date.addingTimeInterval(Self.recheck.seconds)))
            return
        }
        while index < steps.count {
            let current = steps[index]
            let started = step.status.stepStartedAt?.date ?? step.time.date
            var done = false
            if let weight = current.setWeight {
                if step.status.canaryWeight != weight {
                    step.event(.normal, "WeightSet", "step \(index + 1) of \(steps.count): \(weight)% of the traffic to version \(step.status.canaryVersion ?? "")")
                }
                step.status.canaryWeight = weight
                done = true
            } else if let pause = current.pause {
                if step.promote {
                    step.promote = false
                    step.event(.normal, "PromoteRequested", "step \(index + 1) of \(steps.count): the pause ended on request")
                    done = true
                } else if let duration = pause.duration {
                    let end = started.addingTimeInterval(duration.seconds)
                    done = step.time.date >= end
                    if !done {
                        step.status.phase = .paused
                        step.status.message = "paused until \(Timestamp(end))"
                        step.wake(at: end)
                    }
                } else {
                    let end = started.addingTimeInterval(deadline.seconds)
                    if step.time.date >= end {
                        abort(&step, "ProgressDeadlineExceeded", "step \(index + 1) of \(steps.count) waited for `capstan promote canary/\(step.key.name)` longer than the progress deadline (\(deadline))")
                        return
                    }
                    step.status.phase = .paused
                    step.status.message = "paused until `capstan promote canary/\(step.key.name)` (aborted at \(Timestamp(end)))"
                    step.wake(at: end)
                }
            } else if current.analysis != nil {
                if !analysing {
                    done = true
                } else if step.status.lastAnalysisTime == step.time {
                    // The interval's analysis ran in this very reconcile and passed.
                    done = true
                } else if let last = step.status.lastAnalysisTime?.date, step.time.date < last.addingTimeInterval(min(interval, 1)) {
                    step.wake(at: last.addingTimeInterval(min(interval, 1)))
                } else if await analyse(&step, deployment: deployment) {
                    done = true
                } else {
                    if step.status.phase != .aborted { step.wake(at: step.time.date.addingTimeInterval(interval)) }
                    return
                }
                if !done {
                    step.status.message = "analysing"
                }
            }
            guard done else { break }
            index += 1
            step.status.currentStep = index
            step.status.stepStartedAt = step.time
            step.status.phase = .progressing
        }
        if index >= steps.count {
            step.status.phase = .promoting
            step.status.message = "all \(steps.count) step(s) passed: promoting"
            step.event(.normal, "Promoting", "version \(step.status.canaryVersion ?? "") passed every step: the stable track rolls to it")
            step.status.markReconciling(reason: "Promoting", message: "promoting version \(step.status.canaryVersion ?? "")", generation: step.generation, now: step.time)
            step.wake(at: step.time.date.addingTimeInterval(Self.recheck.seconds))
            return
        }
        let weight = step.status.canaryWeight ?? 0
        let effective = step.status.effectiveWeight.map { $0 == weight ? "" : " (\($0)% by replica ratio)" } ?? ""
        step.status.markReady(reason: step.status.phase == .paused ? "Paused" : "Progressing",
                              message: "step \(index + 1) of \(steps.count) at \(weight)%\(effective): \(step.status.message ?? "version \(step.status.canaryVersion ?? "")")",
                              generation: step.generation, now: step.time)
        step.status.conditions.set(ConditionType.reconciling, .true, reason: "CanaryInProgress", message: "version \(step.status.canaryVersion ?? "") at \(weight)%",
                                   observedGeneration: step.generation, now: step.time)
        if step.status.phase == .progressing { step.status.message = nil }
        step.wake(at: step.time.date.addingTimeInterval(Self.recheck.seconds))
    }

    private func abort(_ step: inout Step, _ reason: String, _ message: String) {
        step.status.phase = .aborted
        step.status.canaryWeight = 0
        step.status.message = message
        step.status.markStalled(reason: reason, message: "version \(step.status.canaryVersion ?? "") was not promoted: \(message)", generation: step.generation, now: step.time)
        step.event(.warning, reason, "version \(step.status.canaryVersion ?? "") aborted: \(message); the traffic is back on version \(step.status.stableVersion ?? "")")
    }

    // MARK: - Analysis

    /// Queries every metric of the analysis now and records the run; a run with a metric out
    /// of bounds or unreadable fails, and more failures than `failureLimit` abort. Returns
    /// whether the run passed.
    private func analyse(_ step: inout Step, deployment: Deployment) async -> Bool {
        var failures: [String] = []
        var runs: [AnalysisRunRecord] = []
        var waiting: [String] = []
        for metric in step.spec.analysis.metrics {
            var record = AnalysisRunRecord()
            record.time = step.time
            record.metric = metric.name
            do {
                let value = try await measure(metric, step: step, deployment: deployment)
                record.value = value
                if value.isNaN {
                    record.message = "the value is NaN"
                } else if let min = metric.min, value < min {
                    record.message = "\(AlertSampleNamed.format(value)) is below the minimum \(AlertSampleNamed.format(min))"
                } else if let max = metric.max, value > max {
                    record.message = "\(AlertSampleNamed.format(value)) is above the maximum \(AlertSampleNamed.format(max))"
                } else {
                    record.passed = true
                }
            } catch {
                // Fail closed: what cannot be read does not pass.
                record.message = "\(error.reason): \(error.message)"
                if error.reason == Self.noValueYet { waiting.append("\(metric.name): \(error.message)") }
            }
            if let message = record.message { failures.append("\(metric.name): \(message)") }
            runs.append(record)
        }
        if !waiting.isEmpty && waiting.count == failures.count {
            // Only builtin metrics without a first sample (the canary's instances not probed
            // yet: just started, or this daemon just restarted): the run waits for them, at
            // the interval, neither passing nor failing, for a grace; then it fails (closed).
            let since = waitingSince.since(step.key, step.time.date)
            let grace = max(Self.firstValueGrace, 3 * step.spec.analysis.interval.seconds)
            if step.time.date.timeIntervalSince(since) < grace {
                step.status.message = "waiting for a first value: " + waiting.joined(separator: "; ")
                return false
            }
        }
        waitingSince.forget(step.key)
        step.status.analysisRuns += runs
        if step.status.analysisRuns.count > Self.history { step.status.analysisRuns.removeFirst(step.status.analysisRuns.count - Self.history) }
        step.status.lastAnalysisTime = step.time
        guard !failures.isEmpty else { return true }
        let failed = (step.status.failedAnalyses ?? 0) + 1
        step.status.failedAnalyses = failed
        let limit = step.spec.analysis.failureLimit
        if failed > limit {
            abort(&step, "AnalysisFailed", "\(failed) failed analysis run(s), more than failureLimit \(limit): " + failures.joined(separator: "; "))
        } else {
            step.event(.warning, "AnalysisRunFailed", "analysis run failed (\(failed) of \(limit) allowed): " + failures.joined(separator: "; "))
        }
        return false
    }

    /// One metric's value for the canary: the worst series where a query gives several.
    /// A builtin metric of the canary's instances that has no sample yet.
    static let noValueYet = "NoValueYet"

    private func measure(_ metric: CanaryMetric, step: Step, deployment: Deployment) async throws(MetricQueryError) -> Double {
        guard let metrics else { throw MetricQueryError(MetricQueryError.queryFailed, "this daemon has no metrics") }
        let samples: [AlertSample]
        switch metric.source {
        case .builtin:
            let selector: MetricSelector
            do {
                selector = try MetricSelector.parse(metric.query, known: BuiltinMetrics.names)
            } catch {
                throw MetricQueryError(MetricQueryError.invalidQuery, error.description)
            }
            samples = try await metrics.builtin(selector, deployment: ObjectKey(kind: .deployment, namespace: step.key.namespace, name: deployment.metadata.name), track: .canary)
            if samples.isEmpty { throw MetricQueryError(Self.noValueYet, "\(selector.metric) has no value for the canary's instances yet") }
        case .prometheus:
            let query = Self.expand(metric.query, canary: step.status.canaryVersion ?? "", stable: step.status.stableVersion ?? "", namespace: step.key.namespace)
            samples = try await metrics.prometheus(address: metric.address ?? "", query: query, timeout: Self.queryTimeout)
            if samples.isEmpty { throw MetricQueryError(MetricQueryError.queryFailed, "the query returned no data (\(query))") }
        }
        let values = samples.map(\.value)
        if values.contains(where: \.isNaN) { return .nan }
        // The worst: the highest against a maximum, else the lowest.
        return metric.max != nil ? values.max()! : values.min()!
    }

    /// `$(CANARY_VERSION)`, `$(STABLE_VERSION)` and `$(NAMESPACE)` in a query.
    static func expand(_ query: String, canary: String, stable: String, namespace: String) -> String {
        query.replacingOccurrences(of: "$(CANARY_VERSION)", with: canary)
            .replacingOccurrences(of: "$(STABLE_VERSION)", with: stable)
            .replacingOccurrences(of: "$(NAMESPACE)", with: namespace)
    }
}

extension CanaryReconciler {
    /// A Deployment's change (its tracks, its status) enqueues the Canaries that name it.
    public static func watches(cache: ObjectCache) -> [ObjectManager.Watch] {
        [ObjectManager.Watch { key, _ in
            guard key.kind == .deployment else { return [] }
            return cache.objects(kind: .canary, referencing: key).map(\.key)
        }]
    }
}
