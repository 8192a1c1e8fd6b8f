import Synchronization
import Testing
@testable import CapstanRuntime

/// The queue actor with workers and timers, on a manual clock.
@Suite(.timeLimit(.minutes(1))) struct WorkQueueTests {
    @Test func requeueAfterFiresWhenVirtualTimeArrives() async {
        let clock = ManualClock()
        let queue = WorkQueue<String, ManualClock>(clock: clock)
        await queue.add("a", after: .seconds(30))
        #expect(await queue.depth == 0)
        let worker = Task { await queue.get() }
        await waitForSleepers(clock, count: 1)
        clock.advance(by: .seconds(29))
        #expect(await queue.depth == 0)
        clock.advance(by: .seconds(1))
        #expect(await worker.value == "a")
    }

    @Test func failuresRetryWithGrowingBackoffAndSuccessResetsIt() async {
        let clock = ManualClock()
        let queue = WorkQueue<String, ManualClock>(clock: clock)
        var delays: [Duration] = []
        for _ in 0..<4 {
            delays.append(await queue.addRateLimited("a"))
            await waitForSleepers(clock, count: 1)
            clock.advance(by: delays.last!)
            let key = await queue.get()
            #expect(key == "a")
            await queue.done("a")
        }
        #expect(delays == [.milliseconds(5), .milliseconds(10), .milliseconds(20), .milliseconds(40)])
        #expect(await queue.retries == 4)
        await queue.forget("a")
        #expect(await queue.addRateLimited("a") == .milliseconds(5))
    }

    @Test func neverTheSameKeyOnTwoWorkersAndReAddsRunAfterwards() async {
        let clock = ManualClock()
        let queue = WorkQueue<Int, ManualClock>(clock: clock)
        let tracker = Tracker()
        for key in 0..<20 { await queue.add(key) }
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    while let key = await queue.get() {
                        let run = tracker.start(key)
                        // Re-adding while in flight must not start a parallel run of the key.
                        if run <= 20 { await queue.add(key) }
                        await Task.yield()
                        tracker.finish(key)
                        await queue.done(key)
                        if tracker.runs >= 40, await queue.depth == 0, await queue.inFlight == 0 {
                            await queue.shutDown()
                        }
                    }
                }
            }
        }
        #expect(tracker.overlaps == 0)
        #expect(tracker.runs == 40, "every key ran once, then once more for its re-add")
    }

    @Test func shutDownReleasesWaitingWorkers() async {
        let queue = WorkQueue<String, ManualClock>(clock: ManualClock())
        let workers = (0..<3).map { _ in Task { await queue.get() } }
        for _ in 0..<100 { await Task.yield() }
        await queue.shutDown()
        for worker in workers { #expect(await worker.value == nil) }
        await queue.add("late")
        #expect(await queue.depth == 0, "nothing is queued after shutdown")
    }

    @Test func addsAreCountedOncePerDeduplicatedKey() async {
        let queue = WorkQueue<String, ManualClock>(clock: ManualClock())
        await queue.add("a")
        await queue.add("a")
        await queue.add("b")
        #expect(await queue.adds == 2)
        #expect(await queue.depth == 2)
    }

    @Test func anEarlierDeadlineLeavesTheLaterTimerInsteadOfCancellingIt() async {
        // The pattern of a burst of Deployments: each requeued for its progress check in 60 s,
        // then woken 100 ms after its child's status changed. Cancelling the 60 s timer for
        // each wake (and arming it again after) left a cancelled sleep, holding its task and
        // timer, for a minute per wake.
        let clock = ManualClock()
        let queue = WorkQueue<String, ManualClock>(clock: clock)
        for index in 0..<50 {
            await queue.add("k\(index)", after: .seconds(60))
            await queue.add("k\(index)", after: .milliseconds(100))
            await waitForSleepers(clock, count: 2)
            clock.advance(by: .milliseconds(100))
            #expect(await queue.get() == "k\(index)")
            await queue.done("k\(index)")
            await queue.add("k\(index)", after: .seconds(60))  // its reconcile's requeue
        }
        #expect(clock.sleepsStarted == 51, "one timer per wake and one for the progress checks: \(clock.sleepsStarted)")
        #expect(clock.sleeperCount == 1)
        // The progress checks still come due, on the one timer.
        clock.advance(by: .seconds(61))
        for _ in 0..<50 { #expect(await queue.get() != nil) }
    }

    @Test func manualClockSleepIsCancellable() async {
        let clock = ManualClock()
        let sleeper = Task { try await clock.sleep(until: clock.now.advanced(by: .seconds(5)), tolerance: nil) }
        await waitForSleepers(clock, count: 1)
        sleeper.cancel()
        await #expect(throws: CancellationError.self) { try await sleeper.value }
        #expect(clock.sleeperCount == 0)
    }
}

/// Counts runs per key and overlapping runs of one key, from many tasks.
final class Tracker: Sendable {
    private struct State {
        var running: [Int: Int] = [:]
        var overlaps = 0
        var runs = 0
    }
    private let state = Mutex(State())

    /// Marks a run of `key` started; returns the number of runs so far.
    func start(_ key: Int) -> Int {
        state.withLock { state in
            state.running[key, default: 0] += 1
            if state.running[key]! > 1 { state.overlaps += 1 }
            state.runs += 1
            return state.runs
        }
    }

    func finish(_ key: Int) { state.withLock { $0.running[key]! -= 1 } }
    var overlaps: Int { state.withLock { $0.overlaps } }
    var runs: Int { state.withLock { $0.runs } }
}

/// Waits (in real time, briefly) until `count` tasks sleep on the clock.
func waitForSleepers(_ clock: ManualClock, count: Int) async {
    for _ in 0..<10_000 where clock.sleeperCount < count {
        await Task.yield()
    }
}
