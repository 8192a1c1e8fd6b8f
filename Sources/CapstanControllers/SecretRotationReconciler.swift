import CapstanModel
import CapstanRuntime
import Foundation

/// Reconciles SecretRotations on every platform. A rotation is a sequence of steps — write a
/// new version (it becomes current), run `apply`, roll the `restartDeployments`, run `verify` —
/// and on a failure the same steps back (the previous version current again, `apply` with the
/// previous values, the dependents rolled again). Each step is written to the status before it
/// is taken and taken by the next reconcile, so a daemon killed at any instant resumes the
/// rotation and ends it rotated or rolled back. Every step is idempotent: a version written
/// twice is the same version, `apply` sets the same values again, a restart token already
/// rolled out is done.
public struct SecretRotationReconciler: Reconciler {
    public typealias Key = ObjectKey

    let store: any ObjectStore
    let events: any EventRecorder
    let secrets: any SecretPlatform
    let actions: any ActionRunner
    let prune: Bool
    let now: @Sendable () -> Date

    /// How often the dependents' restart is looked at without an event.
    public static let restartCheck: Duration = .seconds(2)
    /// How soon to try again after a failure outside the spec (the vault, a conflict).
    public static let retry: Duration = .seconds(30)
    /// A dependent's restart fails after its progress deadline and this much more.
    public static let restartGrace: TimeInterval = 60

    public init(store: any ObjectStore, events: any EventRecorder, secrets: any SecretPlatform, actions: any ActionRunner,
                prune: Bool = true, now: @escaping @Sendable () -> Date = Date.init) {
        self.store = store
        self.events = events
        self.secrets = secrets
        self.actions = actions
        self.prune = prune
        self.now = now
    }

    /// What one reconcile works on.
    struct Step {
        let key: ObjectKey
        let stored: StoredObject
        let rotation: SecretRotation
        let time: Timestamp
        var status: SecretRotationStatus
        var events: [WorkloadEvent] = []

        var spec: SecretRotationSpec { rotation.spec }
        var generation: Int { stored.generation }

        mutating func event(_ type: EventType, _ reason: String, _ message: String) {
            events.append(WorkloadEvent(type, reason, message))
        }

        mutating func stalled(_ reason: String, _ message: String) {
            status.markStalled(reason: reason, message: message, generation: generation, now: time)
        }
    }

    public func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
        let stored = try await store.object(key)
        guard let stored, case .secretRotation(let rotation) = stored.resource, rotation.metadata.deletionTimestamp == nil else {
            // No finalizer is needed: a custom resource owns its Secrets (the garbage collector
            // removes them); the local vault and a spec directory's Secrets go here, by owner.
            if stored == nil { try await cleanUp(key) }
            return .done
        }
        var step = Step(key: key, stored: stored, rotation: rotation, time: Timestamp(now()), status: rotation.status)
        var result: ReconcileResult
        do {
            result = try await run(&step)
        } catch {
            step.stalled(error.reason, error.message)
            if rotation.status.conditions[type: ConditionType.stalled]?.reason != error.reason { step.event(.warning, error.reason, error.message) }
            result = .requeue(after: Self.retry)
        }
        if let hold = stored.hold {
            step.status.markStalled(reason: hold.reason, message: hold.message, generation: stored.generation, now: step.time)
        }
        if step.status != rotation.status {
            step.status.lastReconcileTime = step.time
            _ = try await store.writeStatus(key, step.status.encode())
        }
        for event in step.events {
            await events.record(event.type, reason: event.reason, message: event.message, about: key)
        }
        return result
    }

    /// A deleted rotation's secret goes with it (Kubernetes: its Secrets are owned and
    /// collected; here they are removed), unless pruning is off for it.
    private func cleanUp(_ key: ObjectKey) async throws {
        let decision = Prune.decide(enabled: prune, annotated: await store.pruneDisabled(key))
        let lines = try await secrets.remove(ownedBy: key, dryRun: decision != .delete)
        guard !lines.isEmpty else { return }
        if decision == .delete {
            await events.record(.normal, reason: "OrphanDeleted", message: "secretrotation deleted; removed " + lines.joined(separator: ", "), about: key)
        } else {
            let (type, reason, message) = Prune.skipped(decision, kind: "secretrotation", would: lines)
            await events.record(type, reason: reason, message: message, about: key)
        }
    }

    private func run(_ step: inout Step) async throws(SecretError) -> ReconcileResult {
        let name = step.spec.secretName, namespace = step.key.namespace
        var state = try await secrets.state(of: name, namespace: namespace, owner: step.key)
        if step.status.rotation == nil {
            await answerRequests(state, &step)
        }
        if step.status.rotation == nil, state == nil {
            begin(from: nil, to: 1, reason: "Initial", &step)
        }
        if step.status.rotation == nil, let state, !step.spec.suspend, let due = nextRotation(state, step), due <= step.time.date {
            begin(from: state.current, to: state.latest + 1, reason: "Scheduled", &step)
        }
        var result = ReconcileResult.done
        if step.status.rotation != nil, step.rotation.status.rotation == nil {
            // Begun here: written first (with the request it answers), taken by the next
            // reconcile. A daemon killed before that write did nothing; after it, the next
            // one resumes — never a version written that no status knows of.
            return .requeue(after: .milliseconds(1))
        }
        if step.status.rotation != nil {
            guard await takeRequest(&step) else { return .requeue(after: .milliseconds(1)) }
            result = try await advance(&step)
            state = try await secrets.state(of: name, namespace: namespace, owner: step.key)
        }
        record(state, &step)
        if step.status.rotation == nil, let state {
            let next = step.spec.suspend ? nil : nextRotation(state, step)
            step.status.nextRotationTime = next.map(Timestamp.init)
            if let next, result.requeueAfter == nil {
                let wait = max(0.001, next.timeIntervalSince(step.time.date))
                // A timer, not a poll: woken when the next rotation is due (capped, so a clock
                // change is noticed within a day).
                result = .requeue(after: .milliseconds(Int64(min(wait, 86_400) * 1000)))
            }
            settle(state, &step)
        }
        return result
    }

    /// When the next rotation is due: `interval` after the current version was made, or the
    /// first `schedule` time after it (a time missed while no daemon ran is due at once).
    func nextRotation(_ state: SecretState, _ step: Step) -> Date? {
        // From the current version's making, or the last rotation (one rolled back, or a
        // version restored on request: the next try waits a whole interval).
        let made = [state.versions.first { $0.version == state.current }?.createdAt, step.status.lastRotationTime?.date].compactMap { $0 }.max() ?? step.time.date
        if let schedule = step.spec.schedule {
            return schedule.next(after: made, in: step.spec.timeZone.timeZone)
        }
        return made.addingTimeInterval(step.spec.effectiveInterval.seconds)
    }

    /// `capstan rotate` (or `capstan.dev/rotate-now`) and `capstan rollback --to-version N`
    /// (or `capstan.dev/rollback-to`), answered while no rotation runs: a refusal takes the
    /// request at once; a rotation begins naming the request, which is taken once that is
    /// written (`takeRequest`).
    private func answerRequests(_ state: SecretState?, _ step: inout Step) async {
        for request in await store.requests(for: step.key) {
            switch request.type {
            case ObjectRequest.rotate:
                begin(from: state?.current, to: (state?.latest ?? 0) + 1, reason: "Requested", &step)
                step.status.rotation?.request = Self.tag(request)
                return
            case ObjectRequest.rollback:
                let trimmed = request.value.trimmingCharacters(in: .whitespaces)
                let older = state.map { state in state.versions.map(\.version).filter { $0 < state.current } } ?? []
                let wanted = trimmed.isEmpty || trimmed == "previous" ? older.max() : Int(trimmed)
                guard let state, let wanted, wanted != state.current, state.versions.contains(where: { $0.version == wanted }) else {
                    guard await store.take(request, of: step.key) else { continue }
                    let kept = state.map { "kept versions are \($0.versions.map { String($0.version) }.joined(separator: ", ")), \($0.current) is current" } ?? "it has no versions yet"
                    step.event(.warning, "RollbackRefused", "cannot roll secret \(step.spec.secretName) back to version \(trimmed.isEmpty ? "previous" : trimmed): \(kept)")
                    continue
                }
                begin(from: state.current, to: wanted, reason: "RollbackRequested", &step)
                step.status.rotation?.request = Self.tag(request)
                return
            default:
                continue
            }
        }
    }

    static func tag(_ request: ObjectRequest) -> String { "\(request.id):\(request.type):\(request.value)" }

    /// Takes the request the rotation under way answers (it was written with it). False when
    /// it can no longer be taken before anything was done (withdrawn by the CLI that gave up,
    /// expired): the rotation is dropped, as a request past its end never runs.
    private func takeRequest(_ step: inout Step) async -> Bool {
        guard let tag = step.status.rotation?.request else { return true }
        step.status.rotation?.request = nil
        let request = await store.requests(for: step.key).first { Self.tag($0) == tag }
        if let request, await store.take(request, of: step.key) {
            if request.type == ObjectRequest.rotate {
                step.event(.normal, "RotationRequested", "rotation requested")
            } else {
                step.event(.normal, "RollbackRequested", "restoring version \(step.status.rotation?.toVersion ?? 0) of secret \(step.spec.secretName) (version \(step.status.rotation?.fromVersion ?? 0) is current)")
            }
            return true
        }
        if step.status.rotation?.step == .write, step.status.rotation?.stepStartedAt == step.status.rotation?.startedAt, request != nil {
            step.status.rotation = nil  // withdrawn or expired before anything was done
            return false
        }
        return true  // taken before a crash: the rotation goes on
    }

    private func begin(from: Int?, to: Int, reason: String, _ step: inout Step) {
        var progress = RotationProgress()
        progress.step = .write
        progress.fromVersion = from
        progress.toVersion = to
        progress.reason = reason
        progress.startedAt = step.time
        progress.stepStartedAt = step.time
        step.status.rotation = progress
        let what = reason == "RollbackRequested" ? "restoring version \(to)" : from == nil ? "generating version 1" : "rotating to version \(to)"
        step.status.markReconciling(reason: "Rotating", message: "\(what) of secret \(step.spec.secretName)", generation: step.generation, now: step.time)
    }

    /// Takes the step the status names, then writes the next one (taken by the next reconcile).
    private func advance(_ step: inout Step) async throws(SecretError) -> ReconcileResult {
        guard var progress = step.status.rotation else { return .done }
        let name = step.spec.secretName, namespace = step.key.namespace
        func move(to next: RotationStep?, _ step: inout Step) -> ReconcileResult {
            if let next {
                progress.step = next
                progress.stepStartedAt = step.time
                step.status.rotation = progress
                step.status.markReconciling(reason: "Rotating", message: "\(describe(progress)) of secret \(name): \(next.rawValue)", generation: step.generation, now: step.time)
            } else {
                step.status.rotation = nil
            }
            return .requeue(after: .milliseconds(1))
        }
        func fail(_ reason: String, _ message: String, _ step: inout Step) -> ReconcileResult {
            progress.failureReason = reason
            progress.failure = message
            step.event(.warning, reason, "\(describe(progress)) of secret \(name) failed: \(message)")
            guard let from = progress.fromVersion else {
                // The first version has nothing before it to go back to: it stays current, and
                // apply and verify are tried again until they pass.
                progress.step = .apply
                progress.stepStartedAt = step.time
                step.status.rotation = progress
                step.stalled(reason, "version 1 of secret \(name) is kept (there is no earlier one) and apply and verify are tried again every \(Self.retry): \(message)")
                return .requeue(after: Self.retry)
            }
            step.event(.warning, "RotationRollingBack", "restoring version \(from) of secret \(name)")
            return move(to: .rollbackApply, &step)
        }

        switch progress.step {
        case .write:
            if progress.reason == "RollbackRequested" {
                try await secrets.makeCurrent(name, namespace: namespace, version: progress.toVersion, owner: step.key)
            } else {
                let existing = try await secrets.state(of: name, namespace: namespace, owner: step.key)
                if existing?.versions.contains(where: { $0.version == progress.toVersion }) == true {
                    // Written before a crash: the same version is made current, never regenerated.
                    try await secrets.makeCurrent(name, namespace: namespace, version: progress.toVersion, owner: step.key)
                } else {
                    let values = try generate(step)
                    try await secrets.write(name, namespace: namespace, version: progress.toVersion, values: values, createdAt: step.time.date, owner: step.key)
                }
            }
            return move(to: .apply, &step)

        case .apply:
            if let apply = step.spec.apply, let failure = try await runApply(apply, new: progress.toVersion, old: progress.fromVersion, step) {
                return fail("ApplyFailed", failure, &step)
            }
            if progress.fromVersion == nil {
                // A first version: nothing ran with an earlier one, nothing restarts.
                return move(to: .verify, &step)
            }
            step.status.restartToken = "v\(progress.toVersion)"
            try await warnMissingDependents(&step)
            return move(to: .restart, &step)

        case .restart, .rollbackRestart:
            switch try await restartState(progress, step) {
            case .waiting(let message):
                step.status.markReconciling(reason: "Rotating", message: "\(describe(progress)) of secret \(name): \(message)", generation: step.generation, now: step.time)
                return .requeue(after: Self.restartCheck)
            case .failed(let message):
                if progress.step == .restart { return fail("RestartFailed", message, &step) }
                step.event(.warning, "RestartFailed", message)
                return try await finishRollback(progress, &step)
            case .done:
                if progress.step == .restart { return move(to: .verify, &step) }
                return try await finishRollback(progress, &step)
            }

        case .verify:
            if let verify = step.spec.verify, let failure = try await runVerify(verify, new: progress.toVersion, old: progress.fromVersion, step) {
                return fail("VerificationFailed", failure, &step)
            }
            try await succeed(progress, &step)
            return move(to: nil, &step)

        case .rollbackApply:
            guard let from = progress.fromVersion else { return move(to: nil, &step) }
            try await secrets.makeCurrent(name, namespace: namespace, version: from, owner: step.key)
            if let apply = step.spec.apply, progress.failureReason != nil || progress.reason == "RollbackRequested",
               let failure = try await runApply(apply, new: from, old: progress.toVersion, step) {
                // The previous values could not be applied again: tried until they are (a
                // database left on values no version holds is worse than a retry).
                step.stalled("RollbackFailed", "restoring version \(from) of secret \(name): the apply command failed: \(failure)")
                step.event(.warning, "RollbackFailed", "restoring version \(from) of secret \(name): the apply command failed: \(failure)")
                return .requeue(after: Self.retry)
            }
            step.status.restartToken = "v\(from)-after-v\(progress.toVersion)"
            return move(to: .rollbackRestart, &step)
        }
    }

    private func describe(_ progress: RotationProgress) -> String {
        if progress.reason == "RollbackRequested" { return "restoring version \(progress.toVersion)" }
        return progress.fromVersion == nil ? "generating version 1" : "rotating to version \(progress.toVersion)"
    }

    /// The new values, one generator per key.
    private func generate(_ step: Step) throws(SecretError) -> [String: Data] {
        var values: [String: Data] = [:]
        for key in step.spec.keys {
            do {
                for (name, value) in try SecretGenerators.generate(key, comment: "\(step.spec.secretName)@capstan") {
                    values[name] = Data(value.utf8)
                }
            } catch {
                throw SecretError(error.reason, "key \(key.name): \(error.message)")
            }
        }
        return values
    }

    /// `NEW_<KEY>` and `OLD_<KEY>` for the apply and verify commands.
    private func environment(new: Int, old: Int?, _ step: Step) async throws(SecretError) -> [String: String] {
        let name = step.spec.secretName, namespace = step.key.namespace
        var environment: [String: String] = [:]
        for (key, value) in try await secrets.values(of: name, namespace: namespace, version: new) {
            environment["NEW_" + SecretEnvName.of(key)] = String(decoding: value, as: UTF8.self)
        }
        if let old, let values = try? await secrets.values(of: name, namespace: namespace, version: old) {
            for (key, value) in values { environment["OLD_" + SecretEnvName.of(key)] = String(decoding: value, as: UTF8.self) }
        }
        return environment
    }

    private func runApply(_ apply: ApplySpec, new: Int, old: Int?, _ step: Step) async throws(SecretError) -> String? {
        let environment = try await environment(new: new, old: old, step)
        return await actions.run(apply.exec.command, environment: environment, timeout: apply.timeout.duration)
    }

    private func runVerify(_ verify: VerifySpec, new: Int, old: Int?, _ step: Step) async throws(SecretError) -> String? {
        if let http = verify.http {
            return await actions.check(url: http.url, timeout: verify.timeout.duration)
        }
        guard let exec = verify.exec else { return nil }
        let environment = try await environment(new: new, old: old, step)
        return await actions.run(exec.command, environment: environment, timeout: verify.timeout.duration)
    }

    enum RestartState {
        case waiting(String)
        case failed(String)
        case done
    }

    /// Whether every `restartDeployments` entry has rolled out with the status's restart token.
    /// One that does not exist is skipped (with a Warning event once); one whose rollout failed,
    /// or that is not done within its progress deadline (and a grace), fails the step.
    private func restartState(_ progress: RotationProgress, _ step: Step) async throws(SecretError) -> RestartState {
        guard let token = step.status.restartToken else { return .done }
        let secret = step.spec.secretName
        var waiting: [String] = []
        var deadline: TimeInterval = 0
        for name in step.spec.restartDeployments {
            let key = ObjectKey(kind: .deployment, namespace: step.key.namespace, name: name)
            let object: StoredObject?
            do { object = try await store.object(key) } catch { throw SecretError("StoreError", "cannot read deployment \(name): \(error)") }
            guard case .deployment(let deployment)? = object?.resource else { continue }  // warned when the restart began
            deadline = max(deadline, deployment.spec.progressDeadline.seconds)
            if deployment.status.secretRestarts[secret] == token, deployment.status.isReady(generation: object!.generation) { continue }
            let last = deployment.status.history.last
            if let last, let started = last.startedAt?.date, started >= progress.stepStartedAt.date,
               last.outcome == "Failed" || last.outcome == "RolledBack" {
                return .failed("deployment \(name) did not roll out with the new values: \(deployment.status.conditions[type: ConditionType.ready]?.message ?? last.outcome!)")
            }
            waiting.append(name)
        }
        if waiting.isEmpty { return .done }
        if step.time.date.timeIntervalSince(progress.stepStartedAt.date) > deadline + Self.restartGrace {
            return .failed("deployment(s) \(waiting.joined(separator: ", ")) did not roll out with the new values within \(Int(deadline + Self.restartGrace)) s")
        }
        return .waiting("waiting for deployment(s) \(waiting.joined(separator: ", ")) to roll out")
    }

    /// A `restartDeployments` entry that does not exist is skipped, with a Warning event.
    private func warnMissingDependents(_ step: inout Step) async throws(SecretError) {
        for name in step.spec.restartDeployments {
            let key = ObjectKey(kind: .deployment, namespace: step.key.namespace, name: name)
            let object: StoredObject?
            do { object = try await store.object(key) } catch { throw SecretError("StoreError", "cannot read deployment \(name): \(error)") }
            if object == nil {
                step.event(.warning, "DeploymentNotFound", "restartDeployments names deployment \(name), which does not exist in namespace \(step.key.namespace): not restarted")
            }
        }
    }

    /// The rotation worked: versions beyond `keepVersions` go, the status says so.
    private func succeed(_ progress: RotationProgress, _ step: inout Step) async throws(SecretError) {
        let name = step.spec.secretName, namespace = step.key.namespace
        if let state = try await secrets.state(of: name, namespace: namespace, owner: step.key) {
            let older = state.versions.map(\.version).filter { $0 != state.current }.sorted(by: >)
            for version in older.dropFirst(step.spec.keepVersions) {
                try await secrets.removeVersion(name, namespace: namespace, version: version, owner: step.key)
            }
        }
        step.status.lastRotationTime = step.time
        let message: String
        switch progress.reason {
        case "RollbackRequested": message = "version \(progress.toVersion) of secret \(name) restored on request"
        case "Initial": message = "version 1 of secret \(name) generated"
        default: message = "secret \(name) rotated to version \(progress.toVersion)"
        }
        step.event(.normal, progress.reason == "RollbackRequested" ? "RolledBack" : "Rotated", message)
        step.status.markReady(reason: progress.reason == "RollbackRequested" ? "RolledBack" : "Rotated", message: message, generation: step.generation, now: step.time)
    }

    /// The rollback is done: the failed version goes (nothing runs with it any more).
    private func finishRollback(_ progress: RotationProgress, _ step: inout Step) async throws(SecretError) -> ReconcileResult {
        let name = step.spec.secretName, namespace = step.key.namespace
        let from = progress.fromVersion ?? progress.toVersion
        if progress.reason != "RollbackRequested" {
            try await secrets.removeVersion(name, namespace: namespace, version: progress.toVersion, owner: step.key)
        }
        step.status.rotation = nil
        let reason = progress.failureReason ?? "RolledBack"
        let message = "version \(progress.toVersion) of secret \(name) was rolled back to version \(from): \(progress.failure ?? "")"
        step.event(.warning, "RotationRolledBack", message)
        step.stalled(reason, message)
        step.status.lastRotationTime = step.time
        return .requeue(after: .milliseconds(1))
    }

    /// Versions and the current one into the status (names and fingerprints only).
    private func record(_ state: SecretState?, _ step: inout Step) {
        step.status.currentVersion = state?.current
        step.status.versions = (state?.versions ?? []).map { info in
            var record = SecretVersionRecord()
            record.version = info.version
            record.createdAt = Timestamp(info.createdAt)
            record.keys = info.keys
            record.fingerprint = info.fingerprint
            return record
        }
    }

    /// Idle: Ready, unless a failure or a hold says otherwise.
    private func settle(_ state: SecretState?, _ step: inout Step) {
        guard let state else { return }
        let stalled = step.status.conditions[type: ConditionType.stalled]
        let failed = stalled?.status == .true && ["ApplyFailed", "VerificationFailed", "RestartFailed", "RollbackFailed"].contains(stalled?.reason ?? "")
        if failed, step.status.conditions[type: ConditionType.ready]?.observedGeneration == step.generation { return }
        let next = step.status.nextRotationTime.map { "next rotation \($0.description)" } ?? (step.spec.suspend ? "suspended" : "no rotation scheduled")
        step.status.markReady(reason: "Current", message: "version \(state.current) is current; \(next)", generation: step.generation, now: step.time)
    }
}
