import HeapModule

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
    /// Delayed keys by deadline (a min-heap; an entry whose key has an earlier deadline in
    /// `deadlines`, or none, is stale and skipped), and each delayed key's deadline: adding
    /// and promoting cost O(log n), not a scan of every delayed key (a thousand AlertRules
    /// requeued every second).
    private var delayed = Heap<Delayed>()
    private var deadlines: [Key: Instant] = [:]
    private var sequence: UInt64 = 0

    struct Delayed: Comparable {
        var at: Instant
        /// Ties keep the order of adds.
        var sequence: UInt64
        var key: Key

        static func < (a: Delayed, b: Delayed) -> Bool { (a.at, a.sequence) < (b.at, b.sequence) }
        static func == (a: Delayed, b: Delayed) -> Bool { a.at == b.at && a.sequence == b.sequence }
    }
    /// When each queued key became ready (`capstan_workqueue_queue_duration_seconds`).
    private var readySince: [Key: Instant] = [:]

    public init() {}

    /// Keys ready to be handed out.
    public var depth: Int { ready.count - head }
    /// Keys handed out and not yet done.
    public var inFlight: Int { processing.count }
    /// Keys waiting for their delay.
    public var delayedCount: Int { deadlines.count }
    /// When the next delayed key becomes ready (possibly earlier: a stale entry's time, after
    /// which `promote` finds nothing due).
    public var nextDeadline: Instant? { delayed.min?.at }

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
        if let existing = deadlines[key], existing <= deadline { return }
        deadlines[key] = deadline
        sequence &+= 1
        delayed.insert(Delayed(at: deadline, sequence: sequence, key: key))
    }

    /// Moves every delayed key whose deadline is at or before `now` into the ready queue.
    public mutating func promote(now: Instant) {
        while let first = delayed.min, first.at <= now {
            _ = delayed.popMin()
            guard deadlines[first.key] == first.at else { continue }  // stale
            deadlines[first.key] = nil
            add(first.key, at: first.at)
        }
        // Stale entries at the top would only make the next timer fire early.
        while let first = delayed.min, deadlines[first.key] != first.at { _ = delayed.popMin() }
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
