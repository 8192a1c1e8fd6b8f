import CSystemShims
import CapstanControllers
import CapstanIntegrations
import CapstanModel
import CapstanRuntime
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
#if canImport(Glibc)
import Glibc
#endif

/// What both daemons (spec directory, Kubernetes) share: reconcile outcome reporting, the
/// readiness gauges, the HTTP endpoints, the leader election service, the service group.
enum Daemon {
    /// Metrics, a log line and, for failures, a Warning event per reconcile.
    static func outcomeObserver(metrics: RuntimeMetrics, events: any EventRecorder, timeout: String, log: DaemonLog)
        -> @Sendable (ObjectKey, ReconcileOutcome, Duration) async -> Void {
        { key, outcome, duration in
            metrics.reconciled(kind: key.kind.singular, outcome: outcome, duration: duration)
            switch outcome {
            case .success, .requeueAfter: log("reconciled \(key) in \(duration.millisecondsText)")
            case .error(let message):
                log("reconcile of \(key) failed: \(message)", level: "error")
                await events.record(.warning, reason: "ReconcileError", message: message, about: key)
            case .timedOut:
                log("reconcile of \(key) timed out", level: "error")
                await events.record(.warning, reason: "ReconcileTimeout", message: "cancelled after \(timeout)", about: key)
            }
        }
    }

    /// How long an Application waits for more changes of its Deployments before it is
    /// reconciled on a cluster, where its reconcile only checks its image and lists its
    /// Deployments (a burst of a thousand Deployments is one status write a second).
    static let clusterReferrerDelay: Duration = .seconds(1)

    /// `/metrics`, `/healthz` and `/readyz` (ready once `ready` says so; the body says
    /// whether this daemon leads).
    /// The host's CPU, memory and disks (builtin metrics).
    static let host = HostMetrics()

    static func httpServer(host: String, port: Int, address: String, metrics: RuntimeMetrics, builtin: MetricsService, ready: @escaping @Sendable () -> Bool,
                           leader: @escaping @Sendable () -> Bool?, log: DaemonLog) -> HTTPService {
        var quietLogger = Logging.Logger(label: "capstan")
        quietLogger.logLevel = .warning
        let router = Router()
        router.get("metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(string: metrics.render() + (await builtin.exposition()))))
        }
        router.get("healthz") { _, _ in "ok\n" }
        router.get("readyz") { _, _ in
            ready() ? Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: leader().map { $0 ? "ok: leader\n" : "ok: follower\n" } ?? "ok\n")))
                : Response(status: .serviceUnavailable, body: .init(byteBuffer: ByteBuffer(string: "starting\n")))
        }
        let server = Hummingbird.Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "capstan"),
            onServerRunning: { channel in log("serving /metrics, /healthz and /readyz on \(channel.localAddress.map { "\($0)" } ?? address)") },
            logger: quietLogger)
        return HTTPService(server: server, address: address, log: log)
    }

    /// The HTTP server as a service of the group. Unlike a `LoopService` it is not cancelled
    /// on shutdown: the server hears the graceful shutdown itself, stops accepting, lets its
    /// connections finish and returns (cancelling it made it log two errors on every stop).
    struct HTTPService: Service, CustomStringConvertible {
        let server: Hummingbird.Application<RouterResponder<BasicRequestContext>>
        let address: String
        let log: DaemonLog
        var description: String { "metrics server" }

        func run() async throws {
            do {
                try await server.run()
            } catch {
                if Task.isCancelled || Task.isShuttingDownGracefully { return }  // shutting down
                log("cannot serve on \(address): \(error)", level: "error")
                Glibc.exit(3)
            }
        }
    }

    /// Runs the election: `lead` when this daemon wins; on a lost lease, every reconcile stops
    /// at once by exiting (no split brain; a supervisor restarts it as a follower).
    /// `leaseEvent` records LeaderElected, LeaderReleased and LeaderLost.
    static func election<C: Clock>(_ elector: LeaderElector<C>, renewDeadline: String, metrics: RuntimeMetrics, log: DaemonLog,
                                   whileFollowing: (@Sendable () async -> Void)? = nil,
                                   leaseEvent: @escaping @Sendable (EventType, String, String) async -> Void,
                                   lead: @escaping @Sendable () async throws -> Void) -> LoopService where C.Duration == Duration {
        LoopService("leader election") {
            let following = Task { await whileFollowing?() }
            defer { following.cancel() }
            await elector.run(onStartedLeading: {
                following.cancel()
                log("leading: this daemon acts now")
                metrics.leader(true)
                let transitions = elector.lastObserved?.leaseTransitions ?? 0
                await leaseEvent(.normal, "LeaderElected", "\(elector.config.identity) became leader (transition \(transitions))")
                do { try await lead() } catch {
                    log("cannot start leading: \(error)", level: "error")
                    Glibc.exit(1)
                }
            }, onStoppedLeading: { lost in
                metrics.leader(false)
                guard lost else {
                    await leaseEvent(.normal, "LeaderReleased", "\(elector.config.identity) stopped and released the lease")
                    return
                }
                await leaseEvent(.warning, "LeaderLost", "\(elector.config.identity) could not renew within \(renewDeadline): stopped every reconcile and exited")
                log("lost the lease: stopping every reconcile and exiting", level: "error")
                Glibc.exit(1)
            })
        }
    }

    /// Gives the heap's free pages back every second. glibc keeps the pages freed between live
    /// allocations (a burst's parsed watch events, request buffers and task frames, freed
    /// around the caches that stay): after 2,000 new Deployments on a cluster it held 75 MiB
    /// for 37 MiB in use, and `malloc_trim` returned 25 MiB of them. One trim of a quiet heap
    /// costs microseconds. Blocks of 128 KiB and more get their own mappings from the start
    /// (`capstan_tune_heap`).
    static func heapTrim() -> LoopService {
        capstan_tune_heap()
        return LoopService("heap trim") {
            while !Task.isCancelled {
                try await Task.sleep(for: .seconds(1))
                _ = capstan_trim_heap()
            }
        }
    }

    /// Objects per kind that are ready at their generation, and not (the `capstan_resources` gauge).
    static func readiness(_ cache: ObjectCache, _ metrics: RuntimeMetrics) {
        let readiness = cache.readiness()
        for kind in ResourceKind.allCases {
            let counts = readiness[kind] ?? (0, 0)
            metrics.resources(kind: kind.singular, ready: counts.ready, notReady: counts.notReady)
        }
    }

    /// The services in one group. They stop in reverse order on SIGTERM/SIGINT: the
    /// controllers first (no new work; in-flight reconciles finish within `shutdownGrace`),
    /// then the loops, then the HTTP server (so /healthz answers to the end); the election,
    /// first in the list, stops last, releasing the lease after the in-flight work finished.
    static func serviceGroup(_ services: [any Service], shutdownGrace: String) throws -> ServiceGroup {
        var quietLogger = Logging.Logger(label: "capstan")
        quietLogger.logLevel = .warning
        var configuration = ServiceGroupConfiguration(
            services: services.map { .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: quietLogger)
        configuration.maximumGracefulShutdownDuration = try KubeDuration.parse(shutdownGrace).duration
        configuration.maximumCancellationDuration = .seconds(10)
        return ServiceGroup(configuration: configuration)
    }
}
