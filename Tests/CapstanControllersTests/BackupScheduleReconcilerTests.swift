import CapstanModel
import CapstanRuntime
import Foundation
import Synchronization
import Testing
@testable import CapstanControllers

/// A backup platform in memory: runs start, and end when the test says.
final class FakeBackups: BackupPlatform, Sendable {
    struct State {
        var running: [String: BackupRun] = [:]
        var finished: [String: BackupOutcome] = [:]
        var started: [String] = []
        var stopped: [(String, String)] = []
        var recovered: [String] = []
        var startError: BackupStartError?
    }
    let state = Mutex(State())

    func start(_ run: BackupRun) async throws(BackupStartError) {
        if let error = state.withLock({ $0.startError }) { throw error }
        state.withLock {
            $0.running[run.id] = run
            $0.started.append(run.id)
        }
    }

    func state(of id: String, owner: ObjectKey) async -> BackupJobState {
        state.withLock { state in
            if let outcome = state.finished.removeValue(forKey: id) { return .finished(outcome) }
            return state.running[id] == nil ? .unknown : .running
        }
    }

    func stop(_ id: String, owner: ObjectKey, reason: String) async {
        state.withLock { state in
            state.stopped.append((id, reason))
            if state.running.removeValue(forKey: id) != nil {
                state.finished[id] = BackupOutcome(succeeded: false, reason: reason, message: "stopped", finishedAt: Date())
            }
        }
    }

    func recover(_ run: BackupRun) async -> BackupOutcome {
        state.withLock { $0.recovered.append(run.id) }
        return BackupOutcome(succeeded: false, reason: "Interrupted", message: "cut off", finishedAt: Date())
    }

    func running(owner: ObjectKey) async -> [String] { state.withLock { Array($0.running.keys) } }

    func finish(_ id: String, succeeded: Bool = true, pruned: [String] = [], at time: Date) {
        state.withLock { state in
            state.running[id] = nil
            state.finished[id] = BackupOutcome(succeeded: succeeded, reason: succeeded ? "Succeeded" : "SourceFailed", message: succeeded ? "ok" : "pg_dump failed",
                                               size: 10, pruned: pruned, finishedAt: time)
        }
    }

    var started: [String] { state.withLock { $0.started } }
    var runningIDs: [String] { state.withLock { $0.running.keys.sorted() } }
}

@Suite struct BackupScheduleReconcilerTests {
    let store = FakeStore()
    let backups = FakeBackups()
    final class Clock: Sendable {
        let now = Mutex(Date())
    }
    let clock = Clock()
    let key = ObjectKey(kind: .backupSchedule, namespace: "default", name: "db")

    static func date(_ text: String) -> Date { ISO8601DateFormatter().date(from: text)! }

    var reconciler: BackupScheduleReconciler {
        let clock = self.clock
        return BackupScheduleReconciler(store: store, events: store, backups: backups, now: { clock.now.withLock { $0 } })
    }

    func set(_ text: String) { clock.now.withLock { $0 = Self.date(text) } }

    func put(policy: String = "Forbid", deadline: String? = nil, timeout: String = "1h", created: String = "2026-11-01T01:00:00Z") throws {
        try store.put("""
            apiVersion: capstan.dev/v1alpha1
            kind: BackupSchedule
            metadata: {name: db, creationTimestamp: "\(created)"}
            spec:
              schedule: "0 2 * * *"
              source: {directory: {path: /data}}
              destination: {local: {path: /backups}}
              concurrencyPolicy: \(policy)
              timeout: \(timeout)
            \(deadline.map { "  startingDeadline: \($0)" } ?? "")
            """)
    }

    var status: BackupScheduleStatus {
        get async throws {
            guard case .backupSchedule(let schedule)? = try await store.object(key)?.resource else { return BackupScheduleStatus() }
            return schedule.status
        }
    }

    @Test func runsAtTheScheduledTimeAndRecordsTheOutcome() async throws {
        try put()
        set("2026-11-01T01:30:00Z")
        var result = try await reconciler.reconcile(key)
        #expect(backups.started.isEmpty)
        #expect(try await status.nextScheduleTime?.description == "2026-11-01T02:00:00Z")
        #expect(result.requeueAfter == .seconds(1800))
        #expect(try await status.conditions[type: "Ready"]?.reason == "Scheduled")

        set("2026-11-01T02:00:01Z")
        result = try await reconciler.reconcile(key)
        #expect(backups.started == ["db-20261101T020001Z"])
        var current = try await status
        #expect(current.active == ["db-20261101T020001Z"])
        #expect(current.lastScheduleTime?.description == "2026-11-01T02:00:00Z")
        #expect(current.conditions[type: "Reconciling"]?.status == .true)
        #expect(result.requeueAfter == BackupScheduleReconciler.runningCheck)

        backups.finish("db-20261101T020001Z", pruned: ["db-20261020T020000Z"], at: Self.date("2026-11-01T02:00:09Z"))
        set("2026-11-01T02:00:10Z")
        _ = try await reconciler.reconcile(key)
        current = try await status
        #expect(current.active.isEmpty)
        #expect(current.backups.first?.outcome == "Succeeded")
        #expect(current.lastSuccessfulTime?.description == "2026-11-01T02:00:09Z")
        #expect(current.conditions[type: "Ready"]?.status == .true)
        #expect(current.conditions[type: "Reconciling"] == nil)
        #expect(current.nextScheduleTime?.description == "2026-11-02T02:00:00Z")
        #expect(store.eventReasons.contains("BackupSucceeded"))
        #expect(store.eventReasons.contains("BackupsPruned"))
    }

    @Test func missedRunsWhileNoDaemonRanAreCountedAndTheLatestRunsWithinTheDeadline() async throws {
        try put(deadline: "1h")
        set("2026-11-01T02:00:30Z")
        _ = try await reconciler.reconcile(key)
        backups.finish(backups.started[0], at: Self.date("2026-11-01T02:01:00Z"))
        set("2026-11-01T02:01:00Z")
        _ = try await reconciler.reconcile(key)
        // Down from the 1st to the 4th, 02:30: the 2nd and 3rd were missed, the 4th runs (30 minutes late, within 1h).
        set("2026-11-04T02:30:00Z")
        _ = try await reconciler.reconcile(key)
        #expect(backups.started.count == 2)
        #expect(try await status.missedRuns == 2)
        #expect(try await status.lastScheduleTime?.description == "2026-11-04T02:00:00Z")
        #expect(store.eventReasons.contains("MissedRuns"))
        backups.finish(backups.started[1], at: Self.date("2026-11-04T02:31:00Z"))
        // Down again until the 6th, 04:00: the 5th missed, the 6th is past its deadline: skipped too.
        set("2026-11-06T04:00:00Z")
        _ = try await reconciler.reconcile(key)
        #expect(backups.started.count == 2)
        #expect(try await status.missedRuns == 4)
        #expect(store.eventReasons.contains("MissedSchedule"))
        #expect(try await status.nextScheduleTime?.description == "2026-11-07T02:00:00Z")
    }

    @Test func concurrencyPolicies() async throws {
        try put(policy: "Forbid", timeout: "96h")
        set("2026-11-01T02:00:00Z")
        _ = try await reconciler.reconcile(key)
        set("2026-11-02T02:00:00Z")
        _ = try await reconciler.reconcile(key)
        #expect(backups.started.count == 1)
        #expect(store.eventReasons.contains("RunSkipped"))
        store.request(ObjectRequest.backupNow, "", for: key)
        _ = try await reconciler.reconcile(key)
        #expect(backups.started.count == 1)
        #expect(store.eventReasons.contains("RunRefused"))

        try put(policy: "Replace", timeout: "96h")
        set("2026-11-03T02:00:00Z")
        _ = try await reconciler.reconcile(key)
        #expect(backups.started.count == 2)
        #expect(backups.state.withLock { $0.stopped.map(\.1) } == ["Replaced"])
        _ = try await reconciler.reconcile(key)
        var current = try await status
        #expect(current.active == [backups.started[1]])
        #expect(current.backups.first?.reason == "Replaced")

        try put(policy: "Allow", timeout: "96h")
        set("2026-11-04T02:00:00Z")
        _ = try await reconciler.reconcile(key)
        current = try await status
        #expect(current.active.count == 2)
        #expect(backups.runningIDs.count == 2)
    }

    @Test func aRunPastItsTimeoutIsStopped() async throws {
        try put()
        set("2026-11-01T02:00:00Z")
        _ = try await reconciler.reconcile(key)
        set("2026-11-01T03:00:30Z")
        _ = try await reconciler.reconcile(key)
        #expect(backups.state.withLock { $0.stopped.isEmpty })
        set("2026-11-01T03:01:01Z")
        _ = try await reconciler.reconcile(key)
        #expect(backups.state.withLock { $0.stopped.map(\.1) } == ["Timeout"])
        _ = try await reconciler.reconcile(key)
        #expect(try await status.backups.first?.reason == "Timeout")
    }

    @Test func aRunCutOffByACrashIsRecoveredAndARunThatCannotStartStalls() async throws {
        try put()
        set("2026-11-01T02:00:00Z")
        _ = try await reconciler.reconcile(key)
        // A new daemon: the platform knows no job.
        backups.state.withLock { $0.running = [:] }
        _ = try await reconciler.reconcile(key)
        var current = try await status
        #expect(backups.state.withLock { $0.recovered } == ["db-20261101T020000Z"])
        #expect(current.active.isEmpty)
        #expect(current.backups.first?.reason == "Interrupted")
        #expect(current.conditions[type: "Ready"]?.status == .false)

        backups.state.withLock { $0.startError = BackupStartError("SecretNotFound", "secret db has no key password") }
        store.request(ObjectRequest.backupNow, "", for: key)
        let result = try await reconciler.reconcile(key)
        current = try await status
        #expect(current.active.isEmpty)
        #expect(current.conditions[type: "Stalled"]?.reason == "SecretNotFound")
        #expect(current.backups.first?.reason == "SecretNotFound")
        #expect(result.requeueAfter == .seconds(30))
    }
}
