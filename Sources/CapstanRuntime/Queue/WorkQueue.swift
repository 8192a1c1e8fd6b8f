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
    /// For the delayed keys: an earlier deadline starts a timer beside the later one.
    private var timers = DeadlineTimers<C>()
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
        timers.cancelAll()
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
        guard !shuttingDown, let deadline = state.nextDeadline else { return }
        timers.arm(deadline, on: clock) { [weak self] deadline in await self?.timerFired(deadline) }
    }

    private func timerFired(_ deadline: C.Instant) {
        timers.fired(deadline)
        state.promote(now: clock.now)
        dispatch()
    }
}
