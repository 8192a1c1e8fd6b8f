import CapstanModel
import CapstanRuntime
import Foundation

/// Reconciles BackupSchedules on every platform. A run is a job the platform starts and this
/// reconciler observes (never a reconcile that waits for a backup): each run is written to
/// `status.active` before it starts, so a daemon killed at any instant finds it on restart —
/// finished (its manifest is there) or cut off (`Interrupted`, what it left removed). The
/// schedule follows CronJob's rules: the latest missed time runs when it is within
/// `startingDeadline`, the others are counted in `status.missedRuns`; `concurrencyPolicy`
/// decides about a run still going.
public struct BackupScheduleReconciler: Reconciler {
    public typealias Key = ObjectKey

    let store: any ObjectStore
    let events: any EventRecorder
    let backups: any BackupPlatform
    let now: @Sendable () -> Date
    /// Counts each run that ended, by result (`capstan_backups_total`).
    let counted: @Sendable (String) -> Void

    /// How often a running job is looked at when no notice of its end came (a backstop: the
    /// platform enqueues the schedule when a job ends).
    public static let runningCheck: Duration = .seconds(10)
    /// A job still running this long after its timeout is stopped.
    public static let timeoutGrace: TimeInterval = 60
    /// Past runs shown in the status.
    public static let history = 20
    /// Missed schedule times counted at most (a minutely schedule down for a year).
    static let missedCap = 10_000

    public init(store: any ObjectStore, events: any EventRecorder, backups: any BackupPlatform, now: @escaping @Sendable () -> Date = Date.init,
                counted: @escaping @Sendable (String) -> Void = { _ in }) {
        self.counted = counted
        self.store = store
        self.events = events
        self.backups = backups
        self.now = now
    }

    struct Step {
        let key: ObjectKey
        let stored: StoredObject
        let schedule: BackupSchedule
        let time: Date
        var status: BackupScheduleStatus
        var events: [WorkloadEvent] = []
        var starts: [BackupRun] = []
        /// Runs stopped for a new one (`Replace`): they end failed and are read back later.
        var stops: [String] = []
        /// Why a run could not start (cleared by a run that starts).
        var stalled: BackupStartError?

        var spec: BackupScheduleSpec { schedule.spec }

        mutating func event(_ type: EventType, _ reason: String, _ message: String) {
            events.append(WorkloadEvent(type, reason, message))
        }
    }

    public func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
        let stored = try await store.object(key)
        guard let stored, case .backupSchedule(let schedule) = stored.resource, schedule.metadata.deletionTimestamp == nil else {
            // Deleted: its runs stop (what they left is removed by the job itself); the
            // backups taken stay where they are — they are the point.
            for id in await backups.running(owner: key) { await backups.stop(id, owner: key, reason: "ScheduleDeleted") }
            return .done
        }
        var step = Step(key: key, stored: stored, schedule: schedule, time: now(), status: schedule.status)
        await observe(&step)
        await answerRequests(&step)
        scheduleRuns(&step)
        for id in step.stops { await backups.stop(id, owner: key, reason: "Replaced") }
        if !step.starts.isEmpty {
            // Written before the jobs start: a daemon killed between the two finds the runs
            // in `active` with no job, and records them `Interrupted`.
            _ = settle(&step)
            step.status.lastReconcileTime = Timestamp(step.time)
            _ = try await store.writeStatus(key, step.status.encode())
            for run in step.starts {
                do {
                    try await backups.start(run)
                    step.event(.normal, "BackupStarted", "backup \(run.id) started")
                } catch {
                    step.status.active.removeAll { $0 == run.id }
                    record(run.id, BackupOutcome(succeeded: false, reason: error.reason, message: error.message, finishedAt: step.time), &step)
                    step.stalled = error
                }
            }
        }
        let result = settle(&step)
        if let hold = stored.hold {
            step.status.markStalled(reason: hold.reason, message: hold.message, generation: stored.generation, now: Timestamp(step.time))
        }
        var written = step.status
        written.lastReconcileTime = schedule.status.lastReconcileTime
        if written != schedule.status || !step.starts.isEmpty {
            step.status.lastReconcileTime = Timestamp(step.time)
            _ = try await store.writeStatus(key, step.status.encode())
        }
        for event in step.events {
            await events.record(event.type, reason: event.reason, message: event.message, about: key)
        }
        return result
    }

    /// Reads back every active run: finished ones are recorded; one the platform does not
    /// know was cut off (recovered: `Interrupted`, or finished after all); one past its
    /// timeout is stopped.
    private func observe(_ step: inout Step) async {
        for id in step.status.active {
            let run = BackupRun(id: id, owner: step.key, spec: step.spec, sourceFile: step.stored.sourceFile)
            switch await backups.state(of: id, owner: step.key) {
            case .running:
                if let started = Self.time(ofID: id, schedule: step.key.name), step.time.timeIntervalSince(started) > step.spec.timeout.seconds + Self.timeoutGrace {
                    await backups.stop(id, owner: step.key, reason: "Timeout")
                }
            case .finished(let outcome):
                step.status.active.removeAll { $0 == id }
                record(id, outcome, &step)
            case .unknown:
                let outcome = await backups.recover(run)
                step.status.active.removeAll { $0 == id }
                record(id, outcome, &step)
            }
        }
    }

    private func record(_ id: String, _ outcome: BackupOutcome, _ step: inout Step) {
        counted(outcome.succeeded ? BackupRecord.succeeded : outcome.reason)
        var record = BackupRecord()
        record.id = id
        record.time = Timestamp(outcome.finishedAt)
        record.outcome = outcome.succeeded ? BackupRecord.succeeded : BackupRecord.failed
        record.size = outcome.size
        record.sha256 = outcome.sha256
        record.verified = outcome.verified
        if !outcome.succeeded {
            record.reason = outcome.reason
            record.message = outcome.message
        }
        step.status.backups.removeAll { $0.id == id }
        step.status.backups.insert(record, at: 0)
        step.status.backups = Array(step.status.backups.prefix(Self.history))
        for index in step.status.backups.indices where outcome.pruned.contains(step.status.backups[index].id) {
            step.status.backups[index].outcome = BackupRecord.pruned
        }
        if outcome.succeeded {
            step.status.lastSuccessfulTime = Timestamp(outcome.finishedAt)
            step.event(.normal, "BackupSucceeded", outcome.message)
            if !outcome.pruned.isEmpty {
                step.event(.normal, "BackupsPruned", "retention deleted \(outcome.pruned.count) backup\(outcome.pruned.count == 1 ? "" : "s"): \(outcome.pruned.joined(separator: ", "))")
            }
            if let problem = outcome.pruneError {
                step.event(.warning, "PruneFailed", "retention did not run after \(id): \(problem)")
            }
        } else {
            step.event(.warning, outcome.reason == "Succeeded" ? "BackupFailed" : outcome.reason, "backup \(id) failed: \(outcome.message)")
        }
    }

    /// `capstan backup run` (or `capstan.dev/backup-now`): a run now, unless the policy forbids
    /// one beside a run still going.
    private func answerRequests(_ step: inout Step) async {
        for request in await store.requests(for: step.key) where request.type == ObjectRequest.backupNow {
            guard await store.take(request, of: step.key) else { continue }
            if step.spec.concurrencyPolicy == .forbid, let running = step.status.active.first {
                step.event(.warning, "RunRefused", "backup requested while \(running) is still running (concurrencyPolicy Forbid)")
                continue
            }
            if step.spec.concurrencyPolicy == .replace { replace(&step) }
            begin(&step)
            step.event(.normal, "BackupRequested", "backup requested")
        }
    }

    /// The schedule: the latest time due since the last one runs (within `startingDeadline`),
    /// the times before it are missed.
    private func scheduleRuns(_ step: inout Step) {
        guard !step.spec.suspend else { return }
        let timeZone = step.spec.timeZone.timeZone
        let since = step.status.lastScheduleTime?.date ?? step.schedule.metadata.creationTimestamp?.date ?? step.time
        var due: [Date] = []
        var cursor = since
        while due.count < Self.missedCap, let next = step.spec.schedule.next(after: cursor, in: timeZone), next <= step.time {
            due.append(next)
            cursor = next
        }
        guard let latest = due.last else { return }
        step.status.lastScheduleTime = Timestamp(latest)
        var missed = due.count - 1
        if let deadline = step.spec.startingDeadline, step.time.timeIntervalSince(latest) > deadline.seconds {
            missed += 1
            step.event(.warning, "MissedSchedule", "the run due at \(Timestamp(latest)) was not started within startingDeadline \(deadline) (no daemon ran); it is skipped")
        } else if step.spec.concurrencyPolicy == .forbid, let running = step.status.active.first {
            step.event(.warning, "RunSkipped", "the run due at \(Timestamp(latest)) is skipped: \(running) is still running (concurrencyPolicy Forbid)")
        } else {
            if step.spec.concurrencyPolicy == .replace { replace(&step) }
            begin(&step)
        }
        if due.count > 1 {
            let more = due.count >= Self.missedCap ? "more than \(Self.missedCap - 1)" : "\(due.count - 1)"
            step.event(.warning, "MissedRuns", "\(more) scheduled run\(due.count == 2 ? "" : "s") missed while no daemon ran (the last was due at \(Timestamp(due[due.count - 2])))")
        }
        if missed > 0 { step.status.missedRuns = (step.status.missedRuns ?? 0) + missed }
    }

    private func replace(_ step: inout Step) {
        for id in step.status.active {
            step.event(.normal, "BackupReplaced", "backup \(id) is stopped for a new run (concurrencyPolicy Replace)")
            step.stops.append(id)
        }
    }

    private func begin(_ step: inout Step) {
        let base = Self.id(schedule: step.key.name, at: step.time)
        let taken = Set(step.status.active + step.status.backups.map(\.id) + step.starts.map(\.id))
        var id = base
        var suffix = 2
        while taken.contains(id) {
            id = base + "-\(suffix)"
            suffix += 1
        }
        step.status.active.append(id)
        step.starts.append(BackupRun(id: id, owner: step.key, spec: step.spec, sourceFile: step.stored.sourceFile))
    }

    static func idFormatter() -> ISO8601DateFormatter {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withYear, .withMonth, .withDay, .withTime, .withTimeZone]
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter
    }

    /// A run's id: `SCHEDULE-20261204T020000Z` (`-N` added when two runs begin in one second).
    public static func id(schedule: String, at date: Date) -> String {
        "\(schedule)-\(idFormatter().string(from: date))"
    }

    /// When the run `id` of `schedule` began; nil for a name that is not such an id.
    public static func time(ofID id: String, schedule: String) -> Date? {
        guard id.hasPrefix(schedule + "-") else { return nil }
        let rest = id.dropFirst(schedule.count + 1)
        let stamp = rest.prefix(16), tail = rest.dropFirst(16)
        guard stamp.count == 16, tail.isEmpty || (tail.first == "-" && Int(tail.dropFirst()) != nil) else { return nil }
        return idFormatter().date(from: String(stamp))
    }

    /// Conditions and the next time; returns when to look again.
    private func settle(_ step: inout Step) -> ReconcileResult {
        let generation = step.stored.generation
        let time = Timestamp(step.time)
        let next = step.spec.suspend ? nil : step.spec.schedule.next(after: max(step.status.lastScheduleTime?.date ?? step.time, step.time), in: step.spec.timeZone.timeZone)
        step.status.nextScheduleTime = next.map(Timestamp.init)
        let nextText = step.spec.suspend ? "suspended" : next.map { "next run at \(Timestamp($0))" } ?? "no next run"
        if let stalled = step.stalled {
            step.status.markStalled(reason: stalled.reason, message: stalled.message, generation: generation, now: time)
        } else if let running = step.status.active.first {
            step.status.conditions.remove(ConditionType.stalled)
            step.status.conditions.set(ConditionType.reconciling, .true, reason: "BackupRunning", message: "backup \(running) is running",
                                       observedGeneration: generation, now: time)
            if step.status.conditions[type: ConditionType.ready] == nil {
                step.status.conditions.set(ConditionType.ready, .unknown, reason: "BackupRunning", message: "the first backup is running",
                                           observedGeneration: generation, now: time)
            }
            step.status.observedGeneration = generation
        } else if let last = step.status.backups.first, last.outcome != BackupRecord.succeeded {
            // A failed run is not a stalled schedule: the next run may succeed.
            step.status.conditions.remove(ConditionType.stalled)
            step.status.conditions.remove(ConditionType.reconciling)
            step.status.conditions.set(ConditionType.ready, .false, reason: last.reason ?? "BackupFailed",
                                       message: "backup \(last.id) failed: \(last.message ?? ""); \(nextText)", observedGeneration: generation, now: time)
            step.status.observedGeneration = generation
        } else if let last = step.status.backups.first {
            step.status.markReady(reason: "BackupSucceeded", message: "last backup \(last.id) succeeded; \(nextText)", generation: generation, now: time)
        } else {
            step.status.markReady(reason: "Scheduled", message: "no backup yet; \(nextText)", generation: generation, now: time)
        }
        var wait: TimeInterval = 86_400
        if let next { wait = min(wait, max(0.001, next.timeIntervalSince(step.time))) }
        if !step.status.active.isEmpty { wait = min(wait, Double(Self.runningCheck.components.seconds)) }
        if step.stalled != nil { wait = min(wait, 30) }
        return .requeue(after: .milliseconds(Int64(wait * 1000)))
    }
}

extension ObjectRequest {
    /// `capstan backup run`: a BackupSchedule takes a backup now.
    public static let backupNow = "backup-now"
}
