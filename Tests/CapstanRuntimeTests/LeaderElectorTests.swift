import Foundation
import Synchronization
import Testing
@testable import CapstanRuntime

/// A lease store in memory, with CAS and a switch to make it fail (unit tests only; the SQLite
/// store has its own tests against real files).
final class MemoryLeaseStore: LeaseStore, Sendable {
    struct Failure: Error {}
    let state = Mutex<(record: LeaseRecord?, version: Int, failing: Bool)>((nil, 0, false))

    func get(_ name: String) async throws -> (record: LeaseRecord, version: String)? {
        try state.withLock { state in
            if state.failing { throw Failure() }
            return state.record.map { ($0, String(state.version)) }
        }
    }
    func create(_ name: String, _ record: LeaseRecord) async throws -> Bool {
        try state.withLock { state in
            if state.failing { throw Failure() }
            guard state.record == nil else { return false }
            state.record = record
            state.version += 1
            return true
        }
    }
    func update(_ name: String, _ record: LeaseRecord, expecting version: String) async throws -> Bool {
        try state.withLock { state in
            if state.failing { throw Failure() }
            guard String(state.version) == version else { return false }
            state.record = record
            state.version += 1
            return true
        }
    }
    var record: LeaseRecord? { state.withLock { $0.record } }
}

@Suite struct LeaderElectorTests {
    let clock = ManualClock()
    let store = MemoryLeaseStore()
    static let base = Date(timeIntervalSince1970: 1_800_000_000)

    /// An elector whose wall clock is the manual clock plus `skew`.
    func elector(_ identity: String, skew: TimeInterval = 0) -> LeaderElector<ManualClock> {
        let clock = clock
        return LeaderElector(config: LeaderElectionConfig(leaseName: "capstan", identity: identity), store: store, clock: clock,
                             now: { Self.base.addingTimeInterval(Double(clock.now.offset.components.seconds) + skew) })
    }

    @Test func theFirstAcquiresTheOtherWaitsAndRenewalsKeepIt() async {
        let a = elector("a"), b = elector("b")
        #expect(await a.tryAcquireOrRenew())
        #expect(await !b.tryAcquireOrRenew())
        #expect(a.isLeader && !b.isLeader)
        let acquired = store.record?.acquireTime
        clock.advance(by: .seconds(10))
        #expect(await a.tryAcquireOrRenew(), "renewal")
        clock.advance(by: .seconds(10))
        #expect(await !b.tryAcquireOrRenew(), "renewed 10 s ago: not expired for b")
        let record = store.record
        #expect(record?.holderIdentity == "a")
        #expect(record?.acquireTime == acquired, "a renewal keeps acquireTime")
        #expect(record?.renewTime == Self.base.addingTimeInterval(10))
        #expect(record?.leaseTransitions == 0)
        #expect(record?.leaseDurationSeconds == 15)
    }

    @Test func anExpiredLeaseIsTakenOver() async {
        let a = elector("a"), b = elector("b")
        #expect(await a.tryAcquireOrRenew())
        #expect(await !b.tryAcquireOrRenew())  // b sees the lease now
        clock.advance(by: .seconds(14))
        #expect(await !b.tryAcquireOrRenew(), "14 s < 15 s")
        clock.advance(by: .seconds(1))
        #expect(await b.tryAcquireOrRenew(), "15 s without a change: expired")
        #expect(store.record?.holderIdentity == "b")
        #expect(store.record?.leaseTransitions == 1)
        #expect(await !a.tryAcquireOrRenew(), "the old leader cannot renew a lease it lost")
    }

    @Test func aReleasedLeaseIsTakenAtOnce() async {
        let a = elector("a"), b = elector("b")
        #expect(await a.tryAcquireOrRenew())
        #expect(await !b.tryAcquireOrRenew())
        await a.release()
        #expect(store.record?.holderIdentity == "")
        #expect(!a.isLeader)
        #expect(await b.tryAcquireOrRenew(), "no waiting for expiry")
        #expect(store.record?.leaseTransitions == 1)
    }

    @Test func expiryIsJudgedOnTheObserversClockNotTheHolders() async {
        // a's wall clock is an hour ahead, b's an hour behind: renewTime means nothing to b.
        let a = elector("a", skew: 3600), b = elector("b", skew: -3600)
        #expect(await a.tryAcquireOrRenew())
        #expect(await !b.tryAcquireOrRenew())
        clock.advance(by: .seconds(5))
        #expect(await a.tryAcquireOrRenew())
        #expect(await !b.tryAcquireOrRenew(), "b sees the renewal now (t=5 on its clock)")
        clock.advance(by: .seconds(14))
        #expect(await !b.tryAcquireOrRenew(), "renewed 14 s ago by b's clock, whatever renewTime says")
        clock.advance(by: .seconds(1))
        #expect(await b.tryAcquireOrRenew())
    }

    /// Advances the manual clock a second at a time, letting the elector's task run between.
    func tick(seconds: Int, until done: () -> Bool = { false }) async throws {
        for _ in 0..<seconds {
            for _ in 0..<1000 where clock.sleeperCount == 0 { try await Task.sleep(for: .milliseconds(1)) }
            if done() { return }
            clock.advance(by: .seconds(1))
        }
    }

    @Test func aLeaderThatCannotRenewStepsDownBeforeItsLeaseExpires() async throws {
        let a = elector("a")
        let events = Mutex<[(String, Duration)]>([])
        let clock = clock
        let task = Task {
            await a.run(onStartedLeading: { events.withLock { $0.append(("started", clock.now.offset)) } },
                        onStoppedLeading: { lost in events.withLock { $0.append((lost ? "lost" : "stopped", clock.now.offset)) } })
        }
        try await tick(seconds: 3) { events.withLock { !$0.isEmpty } }
        #expect(events.withLock { $0.map(\.0) } == ["started"])
        store.state.withLock { $0.failing = true }  // the store becomes unreachable
        let failedAt = clock.now.offset
        try await tick(seconds: 20) { events.withLock { $0.count == 2 } }
        await task.value
        let stopped = try #require(events.withLock { $0.last })
        #expect(stopped.0 == "lost")
        let after = stopped.1 - failedAt
        #expect(after >= .seconds(10), "not before the renew deadline: \(after)")
        #expect(after < .seconds(15), "before the lease could expire for anyone else: \(after)")
    }

    @Test func cancellingALeaderReleasesTheLease() async throws {
        let a = elector("a")
        let stopped = Mutex<Bool?>(nil)
        let task = Task {
            await a.run(onStartedLeading: {}, onStoppedLeading: { lost in stopped.withLock { $0 = lost } })
        }
        try await tick(seconds: 3) { a.isLeader }
        #expect(store.record?.holderIdentity == "a")
        task.cancel()
        await task.value
        #expect(stopped.withLock { $0 } == false, "a graceful stop, not a loss")
        #expect(store.record?.holderIdentity == "")
    }

    @Test func aFollowerCheckingForReleasesTakesAReleasedLeaseBeforeItsRetry() async throws {
        let a = elector("a")
        let clock = clock
        let b = LeaderElector(config: LeaderElectionConfig(leaseName: "capstan", identity: "b", releaseCheck: .milliseconds(100)),
                              store: store, clock: clock, now: { Self.base })
        #expect(await a.tryAcquireOrRenew())
        let led = Mutex<Duration?>(nil)
        let task = Task { await b.run(onStartedLeading: { led.withLock { $0 = clock.now.offset } }, onStoppedLeading: { _ in }) }
        defer { task.cancel() }
        for _ in 0..<1000 where clock.sleeperCount == 0 { try await Task.sleep(for: .milliseconds(1)) }
        await a.release()
        let releasedAt = clock.now.offset
        for _ in 0..<30 {
            for _ in 0..<1000 where clock.sleeperCount == 0 && led.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(1)) }
            if led.withLock({ $0 }) != nil { break }
            clock.advance(by: .milliseconds(100))
        }
        let at = try #require(led.withLock { $0 })
        #expect(at - releasedAt <= .milliseconds(200), "taken within a release check, not a 2 s retry: \(at - releasedAt)")
    }

    /// A leader renews at t=1 s and dies. A follower that polls every 2 s (client-go) would first
    /// see that renewal at t=2 and take the lease at t=17 or later; reading it every 100 ms and
    /// waking at the observed expiry, it takes it at t=16, plus at most one check.
    @Test(arguments: [Duration.milliseconds(100), nil])
    func aDeadLeadersLeaseIsTakenSoonAfterItExpires(releaseCheck: Duration?) async throws {
        let a = elector("a")
        let clock = clock
        let b = LeaderElector(config: LeaderElectionConfig(leaseName: "capstan", identity: "b", releaseCheck: releaseCheck),
                              store: store, clock: clock, now: { Self.base })
        #expect(await a.tryAcquireOrRenew())
        let led = Mutex<Duration?>(nil)
        let task = Task { await b.run(onStartedLeading: { led.withLock { $0 = clock.now.offset } }, onStoppedLeading: { _ in }) }
        defer { task.cancel() }
        for step in 1...200 {
            for _ in 0..<1000 where clock.sleeperCount == 0 && led.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(1)) }
            if led.withLock({ $0 }) != nil { break }
            clock.advance(by: .milliseconds(100))
            if step == 10 { #expect(await a.tryAcquireOrRenew(), "a renews at t=1 s, then dies") }
        }
        let at = try #require(led.withLock { $0 })
        // Polling every 2 s, b sees the renewal at t=2 and so judges expiry from there (17 s);
        // what it saves is the wait for its next retry after that.
        let expected: Duration = releaseCheck == nil ? .seconds(17) : .seconds(16)
        #expect(at >= expected && at <= expected + .milliseconds(200), "taken at \(at)")
    }

    @Test func impossibleTimingsAreRefused() {
        #expect(LeaderElectionConfig(leaseName: "l", identity: "a", leaseDuration: .seconds(10), renewDeadline: .seconds(10)).problem != nil)
        #expect(LeaderElectionConfig(leaseName: "l", identity: "a", renewDeadline: .seconds(2), retryPeriod: .seconds(2)).problem != nil)
        #expect(LeaderElectionConfig(leaseName: "l", identity: "a").problem == nil)
    }
}

/// The timings not given follow those given (15:10:2), so a default never conflicts.
@Suite struct LeaderElectionTimingTests {
    func check(_ lease: Duration?, _ renew: Duration?, _ retry: Duration?) -> (Duration, Duration, Duration) {
        let timings = LeaderElectionConfig.timings(leaseDuration: lease, renewDeadline: renew, retryPeriod: retry)
        let config = LeaderElectionConfig(leaseName: "l", identity: "i", leaseDuration: timings.leaseDuration,
                                          renewDeadline: timings.renewDeadline, retryPeriod: timings.retryPeriod)
        #expect(config.problem == nil, "\(timings)")
        return (timings.leaseDuration, timings.renewDeadline, timings.retryPeriod)
    }

    @Test func theDefaultsAreClientGos() {
        #expect(check(nil, nil, nil) == (.seconds(15), .seconds(10), .seconds(2)))
        #expect(check(.seconds(15), nil, nil) == (.seconds(15), .seconds(10), .seconds(2)))
    }

    @Test func anyOneOrTwoGivenNeverConflictWithTheDefaults() {
        let four = check(.seconds(4), nil, nil)
        let (renew, retry): (Duration, Duration) = (.seconds(4) * 2 / 3, .seconds(4) * 2 / 15)
        #expect(four.1 == renew && four.2 == retry)
        #expect(check(.seconds(6), nil, nil) == (.seconds(6), .seconds(4), .milliseconds(800)))
        #expect(check(nil, .seconds(30), nil) == (.seconds(45), .seconds(30), .seconds(6)))
        #expect(check(nil, nil, .seconds(5)) == (.milliseconds(37_500), .seconds(25), .seconds(5)))
        #expect(check(.seconds(6), nil, .seconds(5)).1 == .milliseconds(5500))
        #expect(check(.seconds(60), .seconds(40), nil).2 == .seconds(8))
        #expect(check(nil, .seconds(3), .seconds(1)).0 == .milliseconds(4500))
    }

    @Test func conflictingGivenValuesStillConflict() {
        let timings = LeaderElectionConfig.timings(leaseDuration: .seconds(4), renewDeadline: .seconds(5), retryPeriod: nil)
        let config = LeaderElectionConfig(leaseName: "l", identity: "i", leaseDuration: timings.leaseDuration,
                                          renewDeadline: timings.renewDeadline, retryPeriod: timings.retryPeriod)
        #expect(config.problem != nil)
    }
}
