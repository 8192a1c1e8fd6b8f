import Foundation
import ServiceLifecycle
import Synchronization

/// controller-runtime's `pkg/manager` and its builder: one place that owns the controllers,
/// routes every change to the controller of its kind and to the controllers that watch it,
/// gates them behind leader election, and reports their queues. Each controller is registered
/// with what it reconciles (`for`) and what else enqueues it (`watches`); the executable holds
/// no list of kinds.
public final class Manager<Key: Hashable & Sendable, Object: Sendable>: Sendable {
    /// A change of an object that enqueues other keys: `map` gives them for the changed key and
    /// its object (nil once deleted); they are added after `delay` (coalescing bursts).
    public struct Watch: Sendable {
        public var map: @Sendable (Key, Object?) -> [Key]
        public var delay: Duration

        public init(delay: Duration = .zero, map: @escaping @Sendable (Key, Object?) -> [Key]) {
            self.map = map
            self.delay = delay
        }
    }

    /// How every controller runs.
    public struct Options: Sendable {
        public var concurrency: Int
        public var timeout: Duration
        public var metrics: RuntimeMetrics?
        public var observe: @Sendable (Key, ReconcileOutcome, Duration) async -> Void
        /// Asked before every reconcile (leader fencing).
        public var admit: @Sendable () -> Bool

        public init(concurrency: Int = 4, timeout: Duration = .seconds(300), metrics: RuntimeMetrics? = nil,
                    observe: @escaping @Sendable (Key, ReconcileOutcome, Duration) async -> Void = { _, _, _ in },
                    admit: @escaping @Sendable () -> Bool = { true }) {
            self.concurrency = concurrency
            self.timeout = timeout
            self.metrics = metrics
            self.observe = observe
            self.admit = admit
        }
    }

    struct Registered: Sendable {
        var name: String
        var handles: @Sendable (Key) -> Bool
        var watches: [Watch]
        var queue: WorkQueue<Key, ContinuousClock>
        var service: any Service
    }

    private let registered = Mutex<[Registered]>([])
    private let options: Options
    private let clock = ContinuousClock()
    /// Open while this daemon acts (at once, or once it leads): sources and loops wait on it.
    public let leading = Gate(open: false)

    public init(options: Options) {
        self.options = options
    }

    /// Registers a controller for the keys `handles` accepts; returns its queue. `concurrency`
    /// (the options' when nil) is its number of workers: more for a kind whose reconciles
    /// mostly wait on other servers.
    @discardableResult
    public func register<R: Reconciler>(_ name: String, _ reconciler: R, for handles: @escaping @Sendable (Key) -> Bool,
                                        watches: [Watch] = [], concurrency: Int? = nil) -> WorkQueue<Key, ContinuousClock> where R.Key == Key {
        let queue = WorkQueue<Key, ContinuousClock>(clock: clock)
        let controller = Controller(name: name, reconciler: reconciler, clock: clock, concurrency: max(1, concurrency ?? options.concurrency), timeout: options.timeout,
                                    queue: queue, metrics: options.metrics, observe: options.observe, admit: options.admit)
        registered.withLock { $0.append(Registered(name: name, handles: handles, watches: watches, queue: queue, service: controller)) }
        return queue
    }

    /// The key goes to its controller (after `delay`); nothing else is told.
    public func add(_ key: Key, after delay: Duration = .zero) async {
        for entry in registered.withLock({ $0 }) where entry.handles(key) {
            await entry.queue.add(key, after: delay)
        }
    }

    /// A change of `key`: its controller reconciles it, and every watch maps it to the keys it
    /// enqueues (an Application's change enqueues its Deployments, and so on).
    public func enqueue(_ key: Key, _ object: Object?) async {
        await add(key)
        await notifyWatchers(key, object)
    }

    /// Only the watches of a change (its own controller has nothing to do: its status moved,
    /// and objects that show it must follow).
    public func notifyWatchers(_ key: Key, _ object: Object?) async {
        for entry in registered.withLock({ $0 }) {
            for watch in entry.watches {
                for other in watch.map(key, object) where entry.handles(other) { await entry.queue.add(other, after: watch.delay) }
            }
        }
    }

    /// The controllers, as services (they stop first on a graceful shutdown when listed last).
    public var controllers: [any Service] { registered.withLock { $0.map(\.service) } }

    /// Each controller's queue: depth, adds and retries (the `capstan_queue_*` gauges).
    public func queues() async -> [(name: String, depth: Int, adds: Int, retries: Int)] {
        var result: [(String, Int, Int, Int)] = []
        for entry in registered.withLock({ $0 }) {
            result.append((entry.name, await entry.queue.depth, await entry.queue.adds, await entry.queue.retries))
        }
        return result
    }

    /// Queue gauges every second.
    public func gauges(_ body: @escaping @Sendable () async -> Void = {}) -> LoopService {
        LoopService("gauges") { [self] in
            while !Task.isCancelled {
                for queue in await queues() {
                    options.metrics?.queue(kind: queue.name, depth: queue.depth, adds: queue.adds, retries: queue.retries)
                }
                await body()
                try await Task.sleep(for: .seconds(1))
            }
        }
    }
}
