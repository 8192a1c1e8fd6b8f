import Logging
import ServiceLifecycle
import Synchronization
import Testing
@testable import CapstanRuntime

/// Graceful shutdown through swift-service-lifecycle, in real time (short sleeps).
@Suite struct ShutdownTests {
    /// Sleeps for real, honouring cancellation; records how each call ended.
    final class SlowReconciler: Reconciler, Sendable {
        let duration: Duration
        let started = Mutex<[String]>([])
        let finished = Mutex<[String]>([])
        let cancelled = Mutex<[String]>([])
        /// While false, a reconcile waits before its sleep (a test holds it in flight).
        let released: Mutex<Bool>
        init(_ duration: Duration, released: Bool = true) {
            self.duration = duration
            self.released = Mutex(released)
        }

        func reconcile(_ key: String) async throws -> ReconcileResult {
            started.withLock { $0.append(key) }
            do {
                while !released.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
                try await Task.sleep(for: duration)
            } catch {
                cancelled.withLock { $0.append(key) }
                throw error
            }
            finished.withLock { $0.append(key) }
            return .done
        }
    }

    func group(_ services: [any Service], grace: Duration) -> ServiceGroup {
        var configuration = ServiceGroupConfiguration(
            services: services.map { .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup) },
            logger: Logger(label: "test"))
        configuration.maximumGracefulShutdownDuration = grace
        return ServiceGroup(configuration: configuration)
    }

    func waitUntil(_ condition: () -> Bool) async throws {
        for _ in 0..<2000 where !condition() { try await Task.sleep(for: .milliseconds(10)) }
        #expect(condition())
    }

    @Test func inFlightReconcilesFinishAndQueuedOnesWait() async throws {
        let reconciler = SlowReconciler(.milliseconds(300), released: false)
        let controller = Controller(name: "slow", reconciler: reconciler, clock: ContinuousClock(), concurrency: 1)
        let loopEnded = Mutex(false)
        let loop = LoopService("loop") {
            defer { loopEnded.withLock { $0 = true } }
            while true { try await Task.sleep(for: .seconds(60)) }
        }
        let group = group([loop, controller], grace: .seconds(10))
        await controller.queue.add("a")
        await controller.queue.add("b")
        let start = ContinuousClock.now
        async let running: Void = group.run()
        try await waitUntil { reconciler.started.withLock { $0 } == ["a"] }
        // The group hands the shutdown to its services when its own task gets to it; "a" stays
        // in flight until the controller has heard (on a loaded machine a 300 ms reconcile
        // could otherwise end first, and "b" would be taken before the shutdown began).
        await group.triggerGracefulShutdown()
        try await waitUntil { controller.isStopping }
        reconciler.released.withLock { $0 = true }
        try await running
        #expect(reconciler.finished.withLock { $0 } == ["a"], "the in-flight reconcile finished")
        #expect(reconciler.cancelled.withLock { $0 }.isEmpty)
        #expect(reconciler.started.withLock { $0 } == ["a"], "no new work after shutdown began")
        #expect(loopEnded.withLock { $0 }, "loops are cancelled by the shutdown")
        #expect(ContinuousClock.now - start < .seconds(50), "the loop sleeping 60 s was cancelled (under a loaded machine the rest takes seconds)")
    }

    @Test func aReconcileOutlastingTheGraceIsCancelled() async throws {
        let reconciler = SlowReconciler(.seconds(30))
        let controller = Controller(name: "slow", reconciler: reconciler, clock: ContinuousClock(), concurrency: 2)
        let group = group([controller], grace: .milliseconds(200))
        await controller.queue.add("a")
        async let running: Void = group.run()
        try await waitUntil { !reconciler.started.withLock { $0 }.isEmpty }
        // Timed from the shutdown, not the start (a loaded machine may be slow to start it).
        let start = ContinuousClock.now
        await group.triggerGracefulShutdown()
        try? await running
        #expect(reconciler.cancelled.withLock { $0 } == ["a"])
        // Uncancelled, the reconcile would run 30 s; a pool starved by the suites beside this
        // one has taken 12 s to get there on a slow machine.
        #expect(ContinuousClock.now - start < .seconds(25))
    }
}
