/// The bookkeeping of a work queue, with time passed in: no tasks, no clocks, so every rule is
/// testable step by step. `WorkQueue` wraps it in an actor that waits and fires timers.
///
/// Semantics are client-go's workqueue (what controller-runtime builds on):
/// - a key added while it waits is queued once (dedup);
/// - a key being processed is never handed out again until `done`;
/// - a key added while being processed runs again after `done`;
/// - `add(after:)` delays a key; an earlier deadline for the same key wins.
public struct WorkQueueState<Key: Hashable & Sendable, Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    private var ready: [Key] = []
    private var head = 0
    /// Keys that must run (waiting in `ready`, or added again while processing).
    private var dirty = Set<Key>()
    private var processing = Set<Key>()
    /// Delayed keys, sorted by deadline.
    private var delayed: [(at: Instant, key: Key)] = []
    /// When each queued key became ready (`capstan_workqueue_queue_duration_seconds`).
    private var readySince: [Key: Instant] = [:]

    public init() {}

    /// Keys ready to be handed out.
    public var depth: Int { ready.count - head }
    /// Keys handed out and not yet done.
    public var inFlight: Int { processing.count }
    /// Keys waiting for their delay.
    public var delayedCount: Int { delayed.count }
    /// When the next delayed key becomes ready.
    public var nextDeadline: Instant? { delayed.first?.at }

    public func isProcessing(_ key: Key) -> Bool { processing.contains(key) }

    /// Queues `key` now (`now` dates it, for the time it waits). Returns false when it was
    /// already queued (deduplicated).
    @discardableResult
    public mutating func add(_ key: Key, at now: Instant? = nil) -> Bool {
        guard dirty.insert(key).inserted else { return false }
        if let now { readySince[key] = now }
        if !processing.contains(key) { ready.append(key) }
        return true
    }

    /// Queues `key` once `delay` has passed after `now` (at once for a delay of zero or less).
    public mutating func add(_ key: Key, after delay: Duration, now: Instant) {
        guard delay > .zero else {
            add(key, at: now)
            return
        }
        let deadline = now.advanced(by: delay)
        if let index = delayed.firstIndex(where: { $0.key == key }) {
            guard deadline < delayed[index].at else { return }
            delayed.remove(at: index)
        }
        let position = delayed.firstIndex(where: { deadline < $0.at }) ?? delayed.count
        delayed.insert((deadline, key), at: position)
    }

    /// Moves every delayed key whose deadline is at or before `now` into the ready queue.
    public mutating func promote(now: Instant) {
        var count = 0
        while count < delayed.count, delayed[count].at <= now { count += 1 }
        guard count > 0 else { return }
        let due = delayed.prefix(count)
        delayed.removeFirst(count)
        for (at, key) in due { add(key, at: at) }
    }

    /// Hands out the next ready key and marks it processing.
    public mutating func next(now: Instant) -> Key? {
        take(now: now)?.key
    }

    /// Hands out the next ready key, marks it processing, and says how long it waited since it
    /// was added (or since its delay ended; nil when it was added undated). A key added while
    /// it was processed waited from that add, as client-go counts it.
    public mutating func take(now: Instant) -> (key: Key, waited: Duration?)? {
        promote(now: now)
        guard head < ready.count else { return nil }
        let key = ready[head]
        head += 1
        if head > 64 && head * 2 > ready.count {
            ready.removeFirst(head)
            head = 0
        }
        dirty.remove(key)
        processing.insert(key)
        return (key, readySince.removeValue(forKey: key).map { $0.duration(to: now) })
    }

    /// Marks `key` finished; if it was added while processing, it is queued again.
    public mutating func done(_ key: Key) {
        guard processing.remove(key) != nil else { return }
        if dirty.contains(key) { ready.append(key) }
    }
}
