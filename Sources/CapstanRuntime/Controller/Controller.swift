import ServiceLifecycle
import Synchronization

/// What a reconcile asks for next: nothing (wait for the next change), or to run again after
/// a delay (timers: windows, schedules, pauses, evaluation intervals).
public struct ReconcileResult: Sendable, Equatable {
    public var requeueAfter: Duration?

    public init(requeueAfter: Duration? = nil) {
        self.requeueAfter = requeueAfter
    }

    public static let done = ReconcileResult()
    public static func requeue(after delay: Duration) -> ReconcileResult { ReconcileResult(requeueAfter: delay) }
}

/// The whole contract of a reconciler: read desired and observed state for `key`, move one step
/// closer, say when to look again. Throwing means "retry with backoff". A reconcile must honour
/// task cancellation (it is cancelled at the reconcile timeout and at shutdown).
public protocol Reconciler: Sendable {
    associatedtype Key: Hashable & Sendable
    func reconcile(_ key: Key) async throws -> ReconcileResult
}

/// How one reconcile ended, for metrics and events.
public enum ReconcileOutcome: Sendable, Equatable {
    case success
    case requeueAfter(Duration)
    case error(String)
    case timedOut
}

/// Runs `concurrency` workers that take keys from a work queue and reconcile them: success
/// resets the key's backoff (and honours `requeueAfter`), an error or a timeout retries it with
/// per-key exponential backoff. Never two workers on one key (the queue guarantees it).
public final class Controller<R: Reconciler, C: Clock>: Service, Sendable where C.Duration == Duration {
    public let name: String
    public let queue: WorkQueue<R.Key, C>
    private let reconciler: R
    private let clock: C
    private let concurrency: Int
    private let timeout: Duration
    private let watchdog: Watchdog<C>
    /// Set at once when shutdown begins: a worker ending a reconcile takes no other key, even
    /// before the queue (an actor) has heard of the shutdown.
    private let stopping = Atomic<Bool>(false)
    private let observe: @Sendable (R.Key, ReconcileOutcome, Duration) async -> Void
    private let metrics: RuntimeMetrics?
    private let admit: @Sendable () -> Bool

    /// - Parameters:
    ///   - observe: called after every reconcile with its outcome and duration (metrics, error events).
    ///   - metrics: where the time each key waited in the queue is recorded, under `name`.
    ///   - admit: asked before every reconcile; false puts the key back untouched (a leader
    ///     whose lease may have lapsed must not act: the daemon's answer also stops it).
    public init(
        name: String, reconciler: R, clock: C, concurrency: Int = 4, timeout: Duration = .seconds(300),
        queue: WorkQueue<R.Key, C>? = nil, metrics: RuntimeMetrics? = nil,
        observe: @escaping @Sendable (R.Key, ReconcileOutcome, Duration) async -> Void = { _, _, _ in },
        admit: @escaping @Sendable () -> Bool = { true }
    ) {
        precondition(concurrency > 0, "a controller needs at least one worker")
        precondition(timeout > .zero, "the reconcile timeout must be positive")
        self.name = name
        self.reconciler = reconciler
        self.clock = clock
        self.concurrency = concurrency
        self.timeout = timeout
        self.watchdog = Watchdog(clock: clock)
        self.queue = queue ?? WorkQueue(clock: clock)
        self.observe = observe
        self.metrics = metrics
        self.admit = admit
    }

    /// Runs the workers until the queue shuts down and in-flight reconciles have finished.
    /// In a service group, graceful shutdown stops taking work and lets in-flight reconciles
    /// finish (the group cancels them if its grace period runs out).
    public func run() async {
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<concurrency {
                    group.addTask { await self.work() }
                }
            }
        } onGracefulShutdown: {
            self.stopping.store(true, ordering: .relaxed)
            Task { await self.queue.shutDown() }
        }
        watchdog.stop()
    }

    /// Stops taking work; `run()` returns once in-flight reconciles finish.
    public func shutDown() async {
        stopping.store(true, ordering: .relaxed)
        await queue.shutDown()
    }

    /// Whether shutdown has begun (no key is taken any more).
    var isStopping: Bool { stopping.load(ordering: .relaxed) }

    private func work() async {
        while !stopping.load(ordering: .relaxed), let (key, waited) = await queue.take() {
            // Taken as shutdown began: left for the next start (reconciles are level-based).
            guard !stopping.load(ordering: .relaxed) else { break }
            if let waited { metrics?.queued(kind: name, waited: waited) }
            guard admit() else {
                await queue.addRateLimited(key)
                await queue.done(key)
                continue
            }
            let start = clock.now
            let outcome = await reconcileWithTimeout(key)
            switch outcome {
            case .success:
                await queue.forget(key)
            case .requeueAfter(let delay):
                await queue.forget(key)
                await queue.add(key, after: delay)
            case .error, .timedOut:
                await queue.addRateLimited(key)
            }
            await queue.done(key)
            await observe(key, outcome, start.duration(to: clock.now))
        }
    }

    private func reconcileWithTimeout(_ key: R.Key) async -> ReconcileOutcome {
        let reconciler = self.reconciler
        let reconcile = Task { try await reconciler.reconcile(key) }
        let watched = watchdog.watch(until: clock.now.advanced(by: timeout)) { reconcile.cancel() }
        let result = await withTaskCancellationHandler {
            await reconcile.result
        } onCancel: {
            reconcile.cancel()
        }
        if watchdog.finish(watched) { return .timedOut }
        switch result {
        case .success(let result): return result.requeueAfter.map { .requeueAfter($0) } ?? .success
        case .failure(let error): return .error(String(describing: error))
        }
    }
}
