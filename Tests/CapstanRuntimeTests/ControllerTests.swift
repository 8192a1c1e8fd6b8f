import Synchronization
import Testing
@testable import CapstanRuntime

/// A reconciler whose behaviour per call is scripted by the test (logic tests only).
final class ScriptedReconciler: Reconciler, Sendable {
    enum Step: Sendable {
        case succeed
        case fail
        case requeue(Duration)
        /// Sleep on the clock (honouring cancellation), then succeed.
        case sleep(Duration)
        /// Wait until released, counting concurrency.
        case block
    }

    private struct State {
        var script: [String: [Step]] = [:]
        var calls: [String] = []
        var running = 0
        var maxRunning = 0
        var released = false
        var cancelled = 0
    }

    private let state = Mutex(State())
    let clock: ManualClock

    init(clock: ManualClock) { self.clock = clock }

    func script(_ key: String, _ steps: [Step]) { state.withLock { $0.script[key] = steps } }
    func release() { state.withLock { $0.released = true } }
    var calls: [String] { state.withLock { $0.calls } }
    var maxRunning: Int { state.withLock { $0.maxRunning } }
    var running: Int { state.withLock { $0.running } }
    var cancelled: Int { state.withLock { $0.cancelled } }

    struct Failure: Error, CustomStringConvertible { var description: String { "scripted failure" } }

    func reconcile(_ key: String) async throws -> ReconcileResult {
        let step = state.withLock { state -> Step in
            state.calls.append(key)
            state.running += 1
            state.maxRunning = max(state.maxRunning, state.running)
            return state.script[key]?.isEmpty == false ? state.script[key]!.removeFirst() : .succeed
        }
        defer { state.withLock { $0.running -= 1 } }
        switch step {
        case .succeed: return .done
        case .fail: throw Failure()
        case .requeue(let delay): return .requeue(after: delay)
        case .sleep(let duration):
            do {
                try await clock.sleep(until: clock.now.advanced(by: duration), tolerance: nil)
            } catch {
                state.withLock { $0.cancelled += 1 }
                throw error
            }
            return .done
        case .block:
            while !state.withLock({ $0.released }) { await Task.yield() }
            return .done
        }
    }
}

/// Outcomes seen by the controller's observer.
final class Outcomes: Sendable {
    private let items = Mutex<[(String, ReconcileOutcome)]>([])
    func append(_ key: String, _ outcome: ReconcileOutcome) { items.withLock { $0.append((key, outcome)) } }
    var all: [ReconcileOutcome] { items.withLock { $0.map(\.1) } }
    var count: Int { items.withLock { $0.count } }
}

/// Waits (yielding, bounded) until `condition` holds.
func eventually(_ condition: () -> Bool) async -> Bool {
    for _ in 0..<50_000 {
        if condition() { return true }
        await Task.yield()
    }
    return condition()
}

@Suite(.timeLimit(.minutes(1))) struct ControllerTests {
    func make(concurrency: Int = 2, timeout: Duration = .seconds(300)) -> (ManualClock, ScriptedReconciler, Outcomes, Controller<ScriptedReconciler, ManualClock>) {
        let clock = ManualClock()
        let reconciler = ScriptedReconciler(clock: clock)
        let outcomes = Outcomes()
        let controller = Controller(name: "test", reconciler: reconciler, clock: clock, concurrency: concurrency, timeout: timeout) { key, outcome, _ in
            outcomes.append(key, outcome)
        }
        return (clock, reconciler, outcomes, controller)
    }

    @Test func aSuccessfulReconcileRunsOnce() async {
        let (_, reconciler, outcomes, controller) = make()
        let running = Task { await controller.run() }
        await controller.queue.add("web")
        #expect(await eventually { outcomes.count == 1 })
        #expect(outcomes.all == [.success])
        #expect(reconciler.calls == ["web"])
        await controller.shutDown()
        await running.value
    }

    @Test func errorsRetryWithBackoffUntilSuccess() async {
        let (clock, reconciler, outcomes, controller) = make()
        reconciler.script("web", [.fail, .fail, .succeed])
        let running = Task { await controller.run() }
        await controller.queue.add("web")
        #expect(await eventually { outcomes.count == 1 })
        await waitForSleepers(clock, count: 1)
        clock.advance(by: .milliseconds(4))
        #expect(outcomes.count == 1, "not before its 5 ms backoff")
        clock.advance(by: .milliseconds(1))
        #expect(await eventually { outcomes.count == 2 })
        await waitForSleepers(clock, count: 1)
        clock.advance(by: .milliseconds(10))
        #expect(await eventually { outcomes.count == 3 })
        #expect(outcomes.all == [.error("scripted failure"), .error("scripted failure"), .success])
        #expect(await controller.queue.failureCount(of: "web") == 0, "success resets the backoff")
        await controller.shutDown()
        await running.value
    }

    @Test func requeueAfterRunsAgainAtThatTime() async {
        let (clock, reconciler, outcomes, controller) = make()
        reconciler.script("window", [.requeue(.seconds(60)), .succeed])
        let running = Task { await controller.run() }
        await controller.queue.add("window")
        #expect(await eventually { outcomes.count == 1 })
        await waitForSleepers(clock, count: 1)
        clock.advance(by: .seconds(59))
        #expect(reconciler.calls.count == 1)
        clock.advance(by: .seconds(1))
        #expect(await eventually { outcomes.count == 2 })
        #expect(outcomes.all == [.requeueAfter(.seconds(60)), .success])
        await controller.shutDown()
        await running.value
    }

    @Test func reconcilesThatEndInTimeCostOneTimerNotOneSleepEach() async {
        let (clock, reconciler, outcomes, controller) = make(concurrency: 4)
        let running = Task { await controller.run() }
        for index in 0..<100 { await controller.queue.add("k\(index)") }
        #expect(await eventually { outcomes.count == 100 })
        #expect(reconciler.calls.count == 100)
        // A cancelled sleep on a real clock holds its task and timer until its deadline: 100
        // reconciles once left 100 of them for the timeout's 300 s.
        #expect(clock.sleepsStarted == 1, "one watchdog timer for all the timeouts: \(clock.sleepsStarted) sleeps")

        // The timer fires at the first reconcile's deadline, finds nothing late and rests; a
        // reconcile that hangs later still times out at its own deadline.
        clock.advance(by: .seconds(200))
        reconciler.script("late", [.sleep(.seconds(3600)), .succeed])
        await controller.queue.add("late")
        #expect(await eventually { reconciler.calls.count == 101 })
        await waitForSleepers(clock, count: 2)
        clock.advance(by: .seconds(100))
        #expect(await eventually { clock.sleeperCount == 2 }, "the timer re-armed for the late reconcile's deadline")
        #expect(outcomes.count == 100, "not before its own deadline")
        clock.advance(by: .seconds(200))
        #expect(await eventually { outcomes.count == 101 })
        #expect(outcomes.all.last == .timedOut)
        #expect(reconciler.cancelled == 1)
        await controller.shutDown()
        await running.value
    }

    @Test func aHangingReconcileIsCancelledAtTheTimeoutAndRetried() async {
        let (clock, reconciler, outcomes, controller) = make(timeout: .seconds(300))
        reconciler.script("slow", [.sleep(.seconds(3600)), .succeed])
        let running = Task { await controller.run() }
        await controller.queue.add("slow")
        // The reconcile and the timeout both sleep on the clock.
        await waitForSleepers(clock, count: 2)
        clock.advance(by: .seconds(300))
        #expect(await eventually { outcomes.count == 1 })
        #expect(outcomes.all == [.timedOut])
        #expect(reconciler.cancelled == 1, "the reconcile saw its cancellation")
        await waitForSleepers(clock, count: 1)
        clock.advance(by: .milliseconds(5))
        #expect(await eventually { outcomes.count == 2 })
        #expect(outcomes.all.last == .success)
        await controller.shutDown()
        await running.value
    }

    @Test func concurrencyIsBoundedByTheWorkerCount() async {
        let (_, reconciler, outcomes, controller) = make(concurrency: 3)
        for i in 0..<10 { reconciler.script("k\(i)", [.block]) }
        let running = Task { await controller.run() }
        for i in 0..<10 { await controller.queue.add("k\(i)") }
        #expect(await eventually { reconciler.running == 3 })
        for _ in 0..<1000 { await Task.yield() }
        #expect(reconciler.maxRunning == 3)
        reconciler.release()
        #expect(await eventually { outcomes.count == 10 })
        #expect(reconciler.maxRunning == 3)
        await controller.shutDown()
        await running.value
    }

    @Test func shutdownLetsInFlightReconcilesFinish() async {
        let (_, reconciler, outcomes, controller) = make(concurrency: 1)
        reconciler.script("web", [.block])
        let running = Task { await controller.run() }
        await controller.queue.add("web")
        await controller.queue.add("api")
        #expect(await eventually { reconciler.running == 1 })
        await controller.shutDown()
        reconciler.release()
        await running.value
        #expect(outcomes.all == [.success], "the in-flight reconcile finished; the queued one was not started")
        #expect(reconciler.calls == ["web"])
    }
}
