/// Per-key exponential backoff: `base * 2^failures`, capped (controller-runtime's
/// `ItemExponentialFailureRateLimiter`; Capstan's defaults are 5 ms and 5 minutes).
public struct ExponentialBackoff: Sendable, Equatable {
    public var base: Duration
    public var cap: Duration

    public init(base: Duration = .milliseconds(5), cap: Duration = .seconds(300)) {
        precondition(base > .zero && cap >= base, "backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
    }

    /// The delay before retry number `failures + 1` (0 failures so far: `base`).
    public func delay(afterFailures failures: Int) -> Duration {
        var delay = base
        var remaining = failures
        while remaining > 0 && delay < cap {
            delay = delay * 2
            remaining -= 1
        }
        return min(delay, cap)
    }
}

/// A token bucket shared by all keys of a queue: `rate` tokens per second, at most `burst`
/// stored. Reservations may drive the balance negative; the caller waits the returned delay
/// (Go's `rate.Limiter.Reserve`, as controller-runtime's bucket limiter uses it).
public struct TokenBucket<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    public let rate: Double
    public let burst: Double
    private var tokens: Double
    private var last: Instant?

    public init(rate: Double = 10, burst: Int = 100) {
        precondition(rate > 0 && burst > 0, "a token bucket needs a positive rate and burst")
        self.rate = rate
        self.burst = Double(burst)
        self.tokens = Double(burst)
    }

    /// Takes one token at `now`; returns how long the caller must wait before using it.
    public mutating func reserve(at now: Instant) -> Duration {
        if let last {
            let elapsed = last.duration(to: now)
            if elapsed > .zero {
                tokens = min(burst, tokens + elapsed.seconds * rate)
                self.last = now
            }
        } else {
            last = now
        }
        tokens -= 1
        guard tokens < 0 else { return .zero }
        return .nanoseconds(Int64((-tokens / rate * 1e9).rounded(.up)))
    }
}

extension Duration {
    /// The duration in seconds, as a Double.
    public var seconds: Double {
        let (s, attoseconds) = components
        return Double(s) + Double(attoseconds) / 1e18
    }

    /// Whole milliseconds, rounded (`"12 ms"`): for log lines written on every reconcile,
    /// where Foundation's unit formatting would load ICU's data and cost more than the work.
    public var millisecondsText: String {
        "\(Int((seconds * 1000).rounded())) ms"
    }
}

/// The rate limiter of a controller's queue: the larger of per-key backoff and the shared bucket.
public struct ControllerRateLimiter<Key: Hashable & Sendable, Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    public var backoff: ExponentialBackoff
    public var bucket: TokenBucket<Instant>
    private var failures: [Key: Int] = [:]

    public init(backoff: ExponentialBackoff = ExponentialBackoff(), bucket: TokenBucket<Instant> = TokenBucket()) {
        self.backoff = backoff
        self.bucket = bucket
    }

    /// Records a failure of `key` and returns how long to wait before retrying it.
    public mutating func delayAfterFailure(of key: Key, at now: Instant) -> Duration {
        let count = failures[key, default: 0]
        failures[key] = count + 1
        return max(backoff.delay(afterFailures: count), bucket.reserve(at: now))
    }

    /// Forgets the failures of `key` (after a success): its next failure starts at `base` again.
    public mutating func forget(_ key: Key) {
        failures[key] = nil
    }

    /// Failures recorded for `key` since it last succeeded.
    public func failureCount(of key: Key) -> Int { failures[key, default: 0] }
}
