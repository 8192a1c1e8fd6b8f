import Testing
@testable import CapstanRuntime

typealias VirtualInstant = ManualClock.Instant

/// A virtual instant `milliseconds` after the start.
func ms(_ milliseconds: Int64) -> VirtualInstant { VirtualInstant(offset: .milliseconds(milliseconds)) }

/// The queue's rules, step by step, with explicit virtual time.
@Suite struct WorkQueueStateTests {
    @Test func aKeyAddedTwiceWhileWaitingRunsOnce() {
        var queue = WorkQueueState<String, VirtualInstant>()
        let first = queue.add("a")
        let second = queue.add("a")
        #expect(first)
        #expect(!second)
        queue.add("b")
        #expect(queue.depth == 2)
        do { let value = queue.next(now: ms(0)); #expect(value == "a") }
        do { let value = queue.next(now: ms(0)); #expect(value == "b") }
        do { let value = queue.next(now: ms(0)); #expect(value == nil) }
    }

    /// `capstan_workqueue_queue_duration_seconds`: from the add that queued a key (a repeated add
    /// does not restart the clock), from the end of its delay, or from an add while it was
    /// processed, until a worker takes it.
    @Test func aTakenKeySaysHowLongItWaited() {
        var queue = WorkQueueState<String, VirtualInstant>()
        queue.add("a", at: ms(0))
        queue.add("a", at: ms(3))
        do { let taken = queue.take(now: ms(5)); #expect(taken?.key == "a" && taken?.waited == .milliseconds(5)) }
        queue.add("a", at: ms(7))
        queue.done("a")
        do { let taken = queue.take(now: ms(12)); #expect(taken?.key == "a" && taken?.waited == .milliseconds(5)) }
        queue.done("a")
        queue.add("b", after: .milliseconds(10), now: ms(20))
        do { let taken = queue.take(now: ms(34)); #expect(taken?.key == "b" && taken?.waited == .milliseconds(4)) }
        queue.add("c")
        do { let taken = queue.take(now: ms(40)); #expect(taken?.key == "c" && taken?.waited == nil, "undated") }
    }

    @Test func aKeyBeingProcessedIsNotHandedOutAgain() {
        var queue = WorkQueueState<String, VirtualInstant>()
        queue.add("a")
        do { let value = queue.next(now: ms(0)); #expect(value == "a") }
        queue.add("a")
        do { let value = queue.next(now: ms(0)); #expect(value == nil, "a second worker must not get a key in flight") }
        #expect(queue.isProcessing("a"))
    }

    @Test func aKeyAddedWhileProcessingRunsAgainAfterDone() {
        var queue = WorkQueueState<String, VirtualInstant>()
        queue.add("a")
        _ = queue.next(now: ms(0))
        queue.add("a")
        queue.add("a")
        queue.done("a")
        do { let value = queue.next(now: ms(0)); #expect(value == "a") }
        queue.done("a")
        do { let value = queue.next(now: ms(0)); #expect(value == nil, "one re-run, not one per add") }
    }

    @Test func doneWithoutReAddForgetsTheKey() {
        var queue = WorkQueueState<String, VirtualInstant>()
        queue.add("a")
        _ = queue.next(now: ms(0))
        queue.done("a")
        #expect(queue.depth == 0 && queue.inFlight == 0)
    }

    @Test func delayedKeysBecomeReadyAtTheirDeadline() {
        var queue = WorkQueueState<String, VirtualInstant>()
        queue.add("late", after: .milliseconds(300), now: ms(0))
        queue.add("soon", after: .milliseconds(100), now: ms(0))
        #expect(queue.nextDeadline == ms(100))
        do { let value = queue.next(now: ms(99)); #expect(value == nil) }
        do { let value = queue.next(now: ms(100)); #expect(value == "soon") }
        do { let value = queue.next(now: ms(250)); #expect(value == nil) }
        do { let value = queue.next(now: ms(300)); #expect(value == "late") }
        #expect(queue.nextDeadline == nil)
    }

    @Test func theEarlierDeadlineOfAKeyWins() {
        var queue = WorkQueueState<String, VirtualInstant>()
        queue.add("a", after: .seconds(10), now: ms(0))
        queue.add("a", after: .seconds(1), now: ms(0))
        queue.add("a", after: .seconds(5), now: ms(0))
        #expect(queue.delayedCount == 1)
        #expect(queue.nextDeadline == ms(1000))
    }

    @Test func manyDelayedKeysComeOutOnceEachInDeadlineOrderWhateverTheirReAdds() {
        var queue = WorkQueueState<Int, VirtualInstant>()
        var generator = SystemRandomNumberGenerator()
        var expected: [Int: Int] = [:]  // key -> deadline in ms (the earliest asked)
        for _ in 0..<5000 {
            let key = Int.random(in: 0..<500, using: &generator)
            let at = Int.random(in: 1...10_000, using: &generator)
            queue.add(key, after: .milliseconds(at), now: ms(0))
            expected[key] = min(expected[key] ?? .max, at)
        }
        #expect(queue.delayedCount == expected.count)
        var seen: [(key: Int, at: Int)] = []
        var now = 0
        while now <= 10_000 {
            while let key = queue.next(now: ms(Int64(now))) {
                seen.append((key, now))
                queue.done(key)
            }
            guard let next = queue.nextDeadline else { break }
            now = Int(next.offset / .milliseconds(1))
        }
        #expect(seen.count == expected.count, "each key once")
        #expect(seen.allSatisfy { expected[$0.key] == $0.at }, "each at its earliest deadline")
        #expect(queue.delayedCount == 0 && queue.nextDeadline == nil)
    }

    @Test func aZeroDelayQueuesAtOnce() {
        var queue = WorkQueueState<String, VirtualInstant>()
        queue.add("a", after: .zero, now: ms(0))
        #expect(queue.depth == 1)
    }

    @Test func aDelayedKeyAlreadyQueuedIsNotDuplicated() {
        var queue = WorkQueueState<String, VirtualInstant>()
        queue.add("a")
        queue.add("a", after: .milliseconds(10), now: ms(0))
        do { let value = queue.next(now: ms(20)); #expect(value == "a") }
        do { let value = queue.next(now: ms(20)); #expect(value == nil) }
    }

    @Test func orderIsFirstInFirstOutOverManyKeys() {
        var queue = WorkQueueState<Int, VirtualInstant>()
        for i in 0..<1000 { queue.add(i) }
        var seen: [Int] = []
        while let key = queue.next(now: ms(0)) {
            seen.append(key)
            queue.done(key)
        }
        #expect(seen == Array(0..<1000))
    }
}

@Suite struct RateLimiterTests {
    @Test func backoffDoublesFromFiveMillisecondsToFiveMinutes() {
        let backoff = ExponentialBackoff()
        #expect(backoff.delay(afterFailures: 0) == .milliseconds(5))
        #expect(backoff.delay(afterFailures: 1) == .milliseconds(10))
        #expect(backoff.delay(afterFailures: 10) == .milliseconds(5120))
        #expect(backoff.delay(afterFailures: 16) == .seconds(300))
        #expect(backoff.delay(afterFailures: 10_000) == .seconds(300))
    }

    @Test func failuresGrowPerKeyAndSuccessResets() {
        var limiter = ControllerRateLimiter<String, VirtualInstant>()
        do { let value = limiter.delayAfterFailure(of: "a", at: ms(0)); #expect(value == .milliseconds(5)) }
        do { let value = limiter.delayAfterFailure(of: "a", at: ms(0)); #expect(value == .milliseconds(10)) }
        do { let value = limiter.delayAfterFailure(of: "a", at: ms(0)); #expect(value == .milliseconds(20)) }
        do { let value = limiter.delayAfterFailure(of: "b", at: ms(0)); #expect(value == .milliseconds(5), "keys back off independently") }
        limiter.forget("a")
        #expect(limiter.failureCount(of: "a") == 0)
        do { let value = limiter.delayAfterFailure(of: "a", at: ms(0)); #expect(value == .milliseconds(5)) }
    }

    @Test func tokenBucketAllowsABurstThenPacesAtItsRate() {
        var bucket = TokenBucket<VirtualInstant>(rate: 10, burst: 100)
        for _ in 0..<100 { let delay = bucket.reserve(at: ms(0)); #expect(delay == .zero) }
        do { let value = bucket.reserve(at: ms(0)); #expect(value == .milliseconds(100)) }
        do { let value = bucket.reserve(at: ms(0)); #expect(value == .milliseconds(200)) }
        // One second later ten tokens have come back: the balance goes from -2 to 8.
        for _ in 0..<8 { let delay = bucket.reserve(at: ms(1000)); #expect(delay == .zero) }
        do { let delay = bucket.reserve(at: ms(1000)); #expect(delay == .milliseconds(100)) }
    }

    @Test func tokenBucketRefillsUpToItsBurstOnly() {
        var bucket = TokenBucket<VirtualInstant>(rate: 10, burst: 5)
        for _ in 0..<5 { _ = bucket.reserve(at: ms(0)) }
        // An hour idle refills to 5, not 36,000.
        for _ in 0..<5 { let delay = bucket.reserve(at: ms(3_600_000)); #expect(delay == .zero) }
        do { let value = bucket.reserve(at: ms(3_600_000)); #expect(value == .milliseconds(100)) }
    }

    @Test func theLargerOfBackoffAndBucketWins() {
        var limiter = ControllerRateLimiter<Int, VirtualInstant>(bucket: TokenBucket(rate: 1, burst: 1))
        do { let value = limiter.delayAfterFailure(of: 1, at: ms(0)); #expect(value == .milliseconds(5)) }
        do { let value = limiter.delayAfterFailure(of: 2, at: ms(0)); #expect(value == .seconds(1), "the bucket is empty: 1 s at 1 qps") }
    }
}
