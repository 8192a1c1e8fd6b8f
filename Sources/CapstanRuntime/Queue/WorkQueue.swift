/// A rate-limited, deduplicating work queue for one controller's keys.
///
/// Workers call `get()` (which waits for work) and `done(_:)`; reconcilers' outcomes go back
/// through `add`, `add(_:after:)` (a `requeueAfter`), `addRateLimited` (a failure: per-key
/// exponential backoff under a shared token bucket) and `forget` (a success resets backoff).
/// Time comes from an injected clock, so tests run it in virtual time.
public actor WorkQueue<Key: Hashable & Sendable, C: Clock>: Sendable where C.Duration == Duration {
    private let clock: C
    private var state = WorkQueueState<Key, C.Instant>()
    private var limiter: ControllerRateLimiter<Key, C.Instant>
    private var waiters: [CheckedContinuation<(key: Key, waited: Duration?)?, Never>] = []
    /// Sleeping timers by deadline. A timer is never cancelled but at shutdown: a cancelled
    /// sleep keeps its task until its deadline anyway, and one left to fire costs a promote
    /// that finds nothing. A new one starts only when none fires at or before the next deadline.
    private var timers: [C.Instant: Task<Void, Never>] = [:]
    private var shuttingDown = false

    /// Counters for metrics (`capstan_workqueue_adds_total`, `..._retries_total`).
    public private(set) var adds = 0
    public private(set) var retries = 0

    public init(clock: C, backoff: ExponentialBackoff = ExponentialBackoff(), bucket: TokenBucket<C.Instant> = TokenBucket()) {
        self.clock = clock
        self.limiter = ControllerRateLimiter(backoff: backoff, bucket: bucket)
    }

    /// Keys ready to be handed out (`capstan_workqueue_depth`).
    public var depth: Int { state.depth }
    public var inFlight: Int { state.inFlight }
    public var delayedCount: Int { state.delayedCount }

    /// Queues `key` now.
    public func add(_ key: Key) {
        guard !shuttingDown else { return }
        if state.add(key, at: clock.now) { adds += 1 }
        dispatch()
    }

    /// Queues `key` after `delay` (a reconciler's `requeueAfter`).
    public func add(_ key: Key, after delay: Duration) {
        guard !shuttingDown else { return }
        state.add(key, after: delay, now: clock.now)
        dispatch()
    }

    /// Queues `key` after its backoff (a failed reconcile); returns the delay chosen.
    @discardableResult
    public func addRateLimited(_ key: Key) -> Duration {
        let delay = limiter.delayAfterFailure(of: key, at: clock.now)
        retries += 1
        add(key, after: delay)
        return delay
    }

    /// Resets `key`'s backoff (a successful reconcile).
    public func forget(_ key: Key) {
        limiter.forget(key)
    }

    public func failureCount(of key: Key) -> Int { limiter.failureCount(of: key) }

    /// The next key to work on, waiting until one is ready; nil once the queue shuts down
    /// (queued keys are left: reconciles are level-based, the next start picks them up).
    public func get() async -> Key? {
        await take()?.key
    }

    /// As `get()`, with how long the key waited in the queue since it was added (or since its
    /// delay ended).
    public func take() async -> (key: Key, waited: Duration?)? {
        if shuttingDown { return nil }
        if let taken = state.take(now: clock.now) {
            scheduleTimer()
            return taken
        }
        if shuttingDown { return nil }
        return await withCheckedContinuation { continuation in
            waiters.append(continuation)
            scheduleTimer()
        }
    }

    /// Marks `key` finished (it runs again if it was added meanwhile).
    public func done(_ key: Key) {
        state.done(key)
        dispatch()
    }

    /// Stops handing out work: waiting workers get nil; keys in flight may still call `done`.
    public func shutDown() {
        shuttingDown = true
        for timer in timers.values { timer.cancel() }
        timers.removeAll()
        let waiting = waiters
        waiters.removeAll()
        for waiter in waiting { waiter.resume(returning: nil) }
    }

    /// Hands ready keys to waiting workers, then arms the timer for the next delayed key.
    private func dispatch() {
        while !shuttingDown, !waiters.isEmpty, let taken = state.take(now: clock.now) {
            waiters.removeFirst().resume(returning: taken)
        }
        scheduleTimer()
    }

    private func scheduleTimer() {
        guard !shuttingDown, let deadline = state.nextDeadline, !timers.keys.contains(where: { $0 <= deadline }) else { return }
        let clock = self.clock
        timers[deadline] = Task { [weak self] in
            do { try await clock.sleep(until: deadline, tolerance: nil) } catch { return }
            await self?.timerFired(deadline)
        }
    }

    private func timerFired(_ deadline: C.Instant) {
        timers[deadline] = nil
        state.promote(now: clock.now)
        dispatch()
    }
}
