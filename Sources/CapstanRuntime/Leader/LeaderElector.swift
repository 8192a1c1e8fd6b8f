import Foundation

/// A lease as Kubernetes' `coordination.k8s.io/v1` Lease spec has it.
public struct LeaseRecord: Sendable, Hashable {
    /// Empty when nobody holds it (released).
    public var holderIdentity: String
    public var leaseDurationSeconds: Int
    public var acquireTime: Date
    public var renewTime: Date
    public var leaseTransitions: Int

    public init(holderIdentity: String, leaseDurationSeconds: Int, acquireTime: Date, renewTime: Date, leaseTransitions: Int) {
        self.holderIdentity = holderIdentity
        self.leaseDurationSeconds = leaseDurationSeconds
        self.acquireTime = acquireTime
        self.renewTime = renewTime
        self.leaseTransitions = leaseTransitions
    }
}

/// Where leases live, with compare-and-swap: the local state store (a row, CAS in a
/// transaction) or the Kubernetes API (a Lease object, CAS by resourceVersion).
public protocol LeaseStore: Sendable {
    /// The lease and an opaque version for `update`; nil when there is none yet.
    func get(_ name: String) async throws -> (record: LeaseRecord, version: String)?
    /// Creates the lease; false when it exists already (someone else was quicker).
    func create(_ name: String, _ record: LeaseRecord) async throws -> Bool
    /// Replaces the lease if it is still at `version`; false when it changed meanwhile.
    func update(_ name: String, _ record: LeaseRecord, expecting version: String) async throws -> Bool
}

/// Timing of an election (client-go's defaults: 15 s, 10 s, 2 s).
public struct LeaderElectionConfig: Sendable {
    public var leaseName: String
    public var identity: String
    /// How long a lease holds without renewal, before another may take it.
    public var leaseDuration: Duration
    /// A leader that could not renew for this long steps down (before the lease can expire).
    public var renewDeadline: Duration
    /// How often to try to acquire or renew.
    public var retryPeriod: Duration
    /// A follower also looks this often whether the lease was released, to take it at once
    /// (a cheap read on the local store; nil: only every retryPeriod, as client-go).
    public var releaseCheck: Duration?

    public init(leaseName: String, identity: String, leaseDuration: Duration = .seconds(15), renewDeadline: Duration = .seconds(10),
                retryPeriod: Duration = .seconds(2), releaseCheck: Duration? = nil) {
        self.leaseName = leaseName
        self.identity = identity
        self.leaseDuration = leaseDuration
        self.renewDeadline = renewDeadline
        self.retryPeriod = retryPeriod
        self.releaseCheck = releaseCheck
    }

    /// The three timings with the ones not given filled in from those given, in client-go's
    /// 15:10:2 ratio (a lease of 6s alone renews within 4s, retrying every 0.8s), so a default
    /// never conflicts with a value the user set: only given values can make `problem` true.
    public static func timings(leaseDuration: Duration?, renewDeadline: Duration?, retryPeriod: Duration?)
        -> (leaseDuration: Duration, renewDeadline: Duration, retryPeriod: Duration) {
        switch (leaseDuration, renewDeadline, retryPeriod) {
        case (nil, nil, nil):
            return (.seconds(15), .seconds(10), .seconds(2))
        case (let lease?, nil, nil):
            return (lease, lease * 2 / 3, lease * 2 / 15)
        case (nil, let renew?, nil):
            return (renew * 3 / 2, renew, renew / 5)
        case (nil, nil, let retry?):
            return (retry * 15 / 2, retry * 5, retry)
        case (let lease?, let renew?, nil):
            return (lease, renew, renew / 5)
        case (nil, let renew?, let retry?):
            return (renew * 3 / 2, renew, retry)
        case (let lease?, nil, let retry?):
            // Two thirds of the lease where that lies between the two, else half way.
            let scaled = lease * 2 / 3
            return (lease, scaled > retry && scaled < lease ? scaled : (lease + retry) / 2, retry)
        case (let lease?, let renew?, let retry?):
            return (lease, renew, retry)
        }
    }

    /// Why the timings cannot work, or nil (the same rules as client-go).
    public var problem: String? {
        if leaseDuration <= renewDeadline { return "the lease duration must be longer than the renew deadline" }
        if renewDeadline <= retryPeriod { return "the renew deadline must be longer than the retry period" }
        if retryPeriod <= .zero { return "the retry period must be positive" }
        if identity.isEmpty { return "the identity must not be empty" }
        return nil
    }
}

/// Leader election with Kubernetes Lease semantics over any `LeaseStore` (client-go's
/// algorithm). Expiry is judged on this process's clock, from when it last saw the lease
/// change, never from the holder's timestamps, so clocks that disagree between hosts do not
/// matter. A leader renews every `retryPeriod`; one that cannot renew within `renewDeadline`
/// calls `onStoppedLeading` before the lease can expire for anyone else.
public final class LeaderElector<C: Clock>: Sendable where C.Duration == Duration {
    public let config: LeaderElectionConfig
    let store: any LeaseStore
    let clock: C
    let now: @Sendable () -> Date
    let log: @Sendable (String) -> Void

    private struct Observed: Sendable {
        var record: LeaseRecord?
        var version: String?
        var at: C.Instant?
    }
    private let observed: Synchronized<Observed>
    /// When this elector last acquired or renewed the lease (nil: not leading).
    private let renewed = Synchronized<C.Instant?>(nil)
    private let led = Synchronized(false)

    /// Whether this elector was ever elected (a follower that never led has nothing to fence).
    public var hasLed: Bool { led.value }

    public init(config: LeaderElectionConfig, store: any LeaseStore, clock: C, now: @escaping @Sendable () -> Date = Date.init,
                log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.config = config
        self.store = store
        self.clock = clock
        self.now = now
        self.log = log
        observed = Synchronized(Observed())
    }

    /// Whether this elector holds the lease as far as it last saw.
    public var isLeader: Bool { observed.value.record?.holderIdentity == config.identity }

    /// Whether this elector may act now: it leads, and renewed within the renew deadline by
    /// its own monotonic clock. A leader that was frozen (SIGSTOP, a paused VM) past the
    /// deadline fails this the moment it resumes, before its renewal loop finds out, so it can
    /// fence every action on it (another daemon may lead by then).
    public var holdsValidLease: Bool {
        guard isLeader, let at = renewed.value else { return false }
        return at.duration(to: clock.now) < config.renewDeadline
    }

    /// The lease as last seen.
    public var lastObserved: LeaseRecord? { observed.value.record }

    /// Campaigns until elected (retrying every `retryPeriod`), then renews until cancelled or
    /// until renewal fails past the deadline. Returns normally after `onStoppedLeading` ran;
    /// on cancellation while leading, the lease is released first.
    public func run(onStartedLeading: @escaping @Sendable () async -> Void, onStoppedLeading: @escaping @Sendable (_ lost: Bool) async -> Void) async {
        // Acquire.
        while !Task.isCancelled {
            if await tryAcquireOrRenew() { break }
            await waitForNextTry()
        }
        guard !Task.isCancelled else { return }
        log("elected: \(config.identity) holds lease \(config.leaseName)")
        renewed.update { $0 = clock.now }
        led.update { $0 = true }
        await onStartedLeading()

        // Renew.
        var lastRenew = clock.now
        while true {
            do {
                try await clock.sleep(for: config.retryPeriod)
            } catch {
                await release()
                await onStoppedLeading(false)
                return
            }
            let attempt = clock.now
            if await tryAcquireOrRenew() {
                // Valid from when the attempt began: a renewal that took long is not credited
                // with its own duration.
                lastRenew = attempt
                renewed.update { $0 = attempt }
                continue
            }
            // Someone else holds it now (we were too slow), or renewals failed too long: step
            // down. renewDeadline < leaseDuration, so this happens before it can expire.
            if isHeldByOther() || lastRenew.duration(to: clock.now) >= config.renewDeadline {
                renewed.update { $0 = nil }
                log("lost lease \(config.leaseName): no renewal for \(lastRenew.duration(to: clock.now))")
                await onStoppedLeading(true)
                return
            }
        }
    }

    /// Sleeps a retryPeriod, or less: until the lease as observed expires, or (with
    /// `releaseCheck`) until it is seen released. Reading it every `releaseCheck` also dates
    /// each renewal closely, so a dead leader's lease is taken soon after it really expires
    /// rather than up to a retryPeriod later.
    private func waitForNextTry() async {
        let until = clock.now.advanced(by: config.retryPeriod)
        while !Task.isCancelled {
            var wake = until
            if let expiry = observedExpiry(), expiry < wake { wake = expiry }
            if let check = config.releaseCheck, clock.now.advanced(by: check) < wake { wake = clock.now.advanced(by: check) }
            guard clock.now < wake else { return }
            try? await clock.sleep(until: wake, tolerance: nil)
            if clock.now >= until { return }
            guard config.releaseCheck != nil, let (current, version) = try? await store.get(config.leaseName) else {
                if let expiry = observedExpiry(), clock.now >= expiry { return }
                continue
            }
            observe(current, version: version)
            if current.holderIdentity.isEmpty { return }
            if let expiry = observedExpiry(), clock.now >= expiry { return }
        }
    }

    /// When the lease as last observed expires on our clock (nil: not observed, or ours).
    private func observedExpiry() -> C.Instant? {
        let seen = observed.value
        guard let record = seen.record, let at = seen.at, record.holderIdentity != config.identity else { return nil }
        return at.advanced(by: .seconds(record.leaseDurationSeconds))
    }

    /// Notes the record; the expiry clock restarts only when it changed.
    private func observe(_ current: LeaseRecord, version: String) {
        let now = clock.now
        observed.update { seen in
            if seen.record != current || seen.version != version { seen = Observed(record: current, version: version, at: now) }
        }
    }

    private func isHeldByOther() -> Bool {
        guard let holder = observed.value.record?.holderIdentity else { return false }
        return !holder.isEmpty && holder != config.identity
    }

    /// One attempt: creates the lease, renews our own, or takes an expired or released one.
    public func tryAcquireOrRenew() async -> Bool {
        let time = now()
        do {
            guard let (current, version) = try await store.get(config.leaseName) else {
                let record = LeaseRecord(holderIdentity: config.identity, leaseDurationSeconds: leaseSeconds, acquireTime: time, renewTime: time, leaseTransitions: 0)
                guard try await store.create(config.leaseName, record) else { return false }
                remember(record, version: nil)
                return true
            }
            // Expiry by our own clock: from when we saw this record change.
            observe(current, version: version)
            let observedAt = observed.value.at ?? clock.now
            let expired = observedAt.advanced(by: .seconds(current.leaseDurationSeconds)) <= clock.now
            let mine = current.holderIdentity == config.identity
            if !current.holderIdentity.isEmpty && !mine && !expired { return false }
            let record = LeaseRecord(
                holderIdentity: config.identity, leaseDurationSeconds: leaseSeconds,
                acquireTime: mine ? current.acquireTime : time, renewTime: time,
                leaseTransitions: mine ? current.leaseTransitions : current.leaseTransitions + 1)
            guard try await store.update(config.leaseName, record, expecting: version) else { return false }
            remember(record, version: nil)
            return true
        } catch {
            log("lease \(config.leaseName): \(error)")
            return false
        }
    }

    /// Gives the lease up at once (graceful stop): holder empty, so a follower takes it on its
    /// next try instead of waiting for expiry.
    public func release() async {
        // Often called from a cancelled task (a graceful stop): the store calls must not see
        // that cancellation, so they run in a task of their own.
        await Task { await self.releaseNow() }.value
    }

    private func releaseNow() async {
        guard isLeader, let (current, version) = try? await store.get(config.leaseName), current.holderIdentity == config.identity else { return }
        var record = current
        record.holderIdentity = ""
        record.leaseDurationSeconds = 1
        record.renewTime = now()
        if (try? await store.update(config.leaseName, record, expecting: version)) == true {
            remember(record, version: nil)
            log("released lease \(config.leaseName)")
        }
    }

    private var leaseSeconds: Int { max(1, Int(config.leaseDuration.components.seconds)) }

    private func remember(_ record: LeaseRecord, version: String?) {
        observed.update { $0 = Observed(record: record, version: version, at: clock.now) }
    }
}
