import ArgumentParser
import CapstanControllers
import CapstanLocal
import CapstanModel
import CapstanRuntime
import Dispatch
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import UnixSignals
#if canImport(Glibc)
import Glibc
#endif

/// Options shared by every command that reads local state.
struct StateOptions: ParsableArguments {
    @Option(name: .customLong("state-dir"), help: ArgumentHelp("The state directory (default: $CAPSTAN_STATE_DIR or ./.capstan).", valueName: "dir"))
    var stateDirectory: String?

    var resolved: String {
        stateDirectory ?? ProcessInfo.processInfo.environment["CAPSTAN_STATE_DIR"] ?? ".capstan"
    }
}

enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

/// One line per decision, on standard error; never a secret value (none reach the logger).
struct DaemonLog: Sendable {
    let format: LogFormat

    func callAsFunction(_ message: String, level: String = "info") {
        let time = Timestamp(Date()).description
        switch format {
        case .text: printError("\(time) \(level) \(message)")
        case .json:
            let node = SpecNode.mapping([("time", .string(time)), ("level", .string(level)), ("msg", .string(message))])
            printError(JSONEmitter.emit(node, pretty: false))
        }
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon: watch a spec directory and reconcile what it declares.",
        discussion: """
            Reads every spec below --spec-dir, keeps status and events in the state directory, reacts to file changes at once (inotify) and re-reads everything every --resync. SIGHUP re-reads now; SIGTERM or SIGINT stop gracefully (in-flight reconciles finish) with exit status 0.

            Reconciled so far: Application and Deployment (artifacts, supervised instances, health checks, a router port per Deployment, rollouts and rollbacks). The other kinds are read, validated and stored; their reconcilers come in later releases.

            Instances belong to the state directory, not to the daemon: they keep running when the daemon stops or dies, and the next daemon adopts them. Routers (the Deployments' ports) only listen while a daemon runs. `capstan down` stops every instance; --down-on-exit does it when the daemon stops.
            """)

    @Option(name: .customLong("spec-dir"), help: ArgumentHelp("The directory of specs.", valueName: "dir"))
    var specDirectory: String

    @OptionGroup var state: StateOptions

    @Option(help: "Reconcile workers per kind.")
    var concurrency: Int = 4

    @Option(help: ArgumentHelp("Full re-read interval, as a duration.", valueName: "duration"))
    var resync: String = "5m"

    @Option(name: .customLong("reconcile-timeout"), help: ArgumentHelp("A reconcile running longer is cancelled and retried.", valueName: "duration"))
    var reconcileTimeout: String = "5m"

    @Flag(name: .customLong("allow-empty"), help: "Allow an emptied spec directory to delete every object.")
    var allowEmpty = false

    @Option(name: .customLong("prune"), help: ArgumentHelp("Remove what deleted objects had (instances, ports, releases, artifacts); false: only Warning events say what would go.", valueName: "true|false"))
    var prune: Bool = true

    @Option(name: .customLong("shutdown-grace"), help: ArgumentHelp("On SIGTERM, how long in-flight reconciles may take to finish before they are cancelled.", valueName: "duration"))
    var shutdownGrace: String = "25s"

    @Option(name: .customLong("log-format"), help: "text or json.")
    var logFormat: LogFormat = .text

    @Option(name: .customLong("router-addr"), help: ArgumentHelp("The address Deployments' router ports listen on.", valueName: "host"))
    var routerAddress: String = "127.0.0.1"

    @Flag(name: .customLong("down-on-exit"), help: "On a graceful stop, stop every instance too (for interactive use).")
    var downOnExit = false

    @Flag(name: .customLong("leader-elect"), help: "Elect one leader among the daemons of this state directory; only the leader acts.")
    var leaderElect = false

    @Option(name: .customLong("lease-duration"), help: ArgumentHelp("Leader election: how long a lease holds without renewal.", valueName: "duration"))
    var leaseDuration: String = "15s"

    @Option(name: .customLong("renew-deadline"), help: ArgumentHelp("Leader election: a leader that cannot renew this long steps down and exits.", valueName: "duration"))
    var renewDeadline: String = "10s"

    @Option(name: .customLong("retry-period"), help: ArgumentHelp("Leader election: how often to try to acquire or renew.", valueName: "duration"))
    var retryPeriod: String = "2s"

    @Option(name: .customLong("identity"), help: ArgumentHelp("Leader election: this daemon's name (default: host name and pid).", valueName: "name"))
    var identity: String?

    var electionConfig: LeaderElectionConfig? {
        guard let lease = try? KubeDuration.parse(leaseDuration), let renew = try? KubeDuration.parse(renewDeadline),
              let retry = try? KubeDuration.parse(retryPeriod) else { return nil }
        return LeaderElectionConfig(leaseName: "capstan-controller", identity: identity ?? "\(ProcessInfo.processInfo.hostName)-\(getpid())",
                                    leaseDuration: lease.duration, renewDeadline: renew.duration, retryPeriod: retry.duration,
                                    releaseCheck: .milliseconds(100))
    }

    @Option(name: .customLong("metrics-addr"), help: ArgumentHelp("Where /metrics, /healthz and /readyz are served (port 0: any free port).", valueName: "host:port"))
    var metricsAddress: String = "127.0.0.1:9464"

    var metricsHostPort: (String, Int)? {
        guard let colon = metricsAddress.lastIndex(of: ":"), let port = Int(metricsAddress[metricsAddress.index(after: colon)...]),
              (0...65535).contains(port) else { return nil }
        let host = String(metricsAddress[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return host.isEmpty ? nil : (host, port)
    }

    func validate() throws {
        guard concurrency >= 1 && concurrency <= 256 else { throw ValidationError("--concurrency must be between 1 and 256") }
        for (name, value) in [("--resync", resync), ("--reconcile-timeout", reconcileTimeout), ("--shutdown-grace", shutdownGrace)] {
            guard let duration = try? KubeDuration.parse(value), duration.nanoseconds > 0 else {
                throw ValidationError("\(name) \"\(value)\" is not a positive duration such as 30s or 5m")
            }
        }
        guard let election = electionConfig else {
            throw ValidationError("--lease-duration, --renew-deadline and --retry-period must be durations such as 15s")
        }
        if leaderElect, let problem = election.problem { throw ValidationError("leader election: \(problem)") }
        guard metricsHostPort != nil else {
            throw ValidationError("--metrics-addr \"\(metricsAddress)\" is not host:port, such as 127.0.0.1:9464")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: specDirectory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ValidationError("--spec-dir \(specDirectory) is not a directory")
        }
    }

    func run() async throws {
        let log = DaemonLog(format: logFormat)
        unblockSignals()
        let store: StateStore
        do {
            store = try StateStore(directory: state.resolved)
        } catch {
            log("\(error)", level: "error")
            throw ExitCode(2)
        }
        let cache = ObjectCache()
        do {
            try LocalObjectStore.load(store, into: cache)
        } catch {
            log("cannot read the state store: \(error)", level: "error")
            throw ExitCode(2)
        }
        let objects = LocalObjectStore(store: store, cache: cache, log: { log($0, level: "warning") })
        let clock = ContinuousClock()
        let metrics = RuntimeMetrics()
        let ready = Synchronized(false)
        let timeout = try KubeDuration.parse(reconcileTimeout).duration
        let onOutcome: @Sendable (ObjectKey, ReconcileOutcome, Duration) async -> Void = { key, outcome, duration in
            metrics.reconciled(kind: key.kind.singular, outcome: outcome, duration: duration)
            switch outcome {
            case .success, .requeueAfter: log("reconciled \(key) in \(duration.formatted(.units(allowed: [.milliseconds])))")
            case .error(let message):
                log("reconcile of \(key) failed: \(message)", level: "error")
                await objects.record(.warning, reason: "ReconcileError", message: message, about: key)
            case .timedOut:
                log("reconcile of \(key) timed out", level: "error")
                await objects.record(.warning, reason: "ReconcileTimeout", message: "cancelled after \(reconcileTimeout)", about: key)
            }
        }
        // The platform tells the Deployment controller when an instance's readiness changes;
        // the controller exists only after the platform, hence the late binding.
        let enqueueDeployment = Synchronized<(@Sendable (ObjectKey) async -> Void)?>(nil)
        let platform: LocalWorkloadPlatform
        do {
            platform = try LocalWorkloadPlatform(
                stateDirectory: state.resolved, store: store, events: objects, routerHost: routerAddress,
                enqueue: { key in await enqueueDeployment.value?(key) }, restarted: { metrics.instanceRestarted() })
        } catch {
            log("cannot start the process supervisor: \(error)", level: "error")
            throw ExitCode(2)
        }
        let applications = Controller(
            name: "application",
            reconciler: ApplicationReconciler(store: objects, events: objects, artifacts: platform, prune: prune),
            clock: clock, concurrency: concurrency, timeout: timeout, observe: onOutcome)
        let deploymentReconciler = DeploymentReconciler(store: objects, events: objects, workload: platform, revisions: objects, prune: prune)
        let deployments = Controller(
            name: "deployment", reconciler: deploymentReconciler,
            clock: clock, concurrency: concurrency, timeout: timeout, observe: onOutcome)
        enqueueDeployment.update { $0 = { key in await deployments.queue.add(key) } }

        /// Queues an object and what depends on it: an Application's Deployments run its
        /// template; a Deployment is listed in its Application's status.
        @Sendable func enqueue(_ key: ObjectKey, _ resource: AnyResource?) async {
            switch key.kind {
            case .application:
                await applications.queue.add(key)
                for deployment in cache.objects(kind: .deployment, referencing: key) { await deployments.queue.add(deployment.key) }
            case .deployment:
                await deployments.queue.add(key)
                if case .deployment(let deployment)? = resource {
                    await applications.queue.add(ObjectKey(kind: .application, namespace: key.namespace, name: deployment.spec.application))
                }
            default:
                break
            }
        }
        /// Everything known, and every owner of something in the inventory (deleted while no
        /// daemon ran: its reconcile removes what it left).
        @Sendable func enqueueAll() async {
            for object in cache.objects(kind: .application) { await applications.queue.add(object.key) }
            for object in cache.objects(kind: .deployment) { await deployments.queue.add(object.key) }
            for owner in platform.owners() where cache.get(owner) == nil {
                switch owner.kind {
                case .application: await applications.queue.add(owner)
                case .deployment: await deployments.queue.add(owner)
                default: break
                }
            }
            for directory in platform.pruneLogs(keeping: Set(cache.objects(kind: .deployment).map(\.key))) {
                log("removed the logs of a Deployment deleted more than a day ago: \(directory)")
            }
        }
        let source = SpecDirectorySource(root: specDirectory, store: store, cache: cache, allowEmpty: allowEmpty, log: { log($0) }) { key, resource in
            await enqueue(key, resource)
        }
        log("capstan \(Capstan.version) reading \(specDirectory), state in \(state.resolved)")
        // Everything that acts (the source writing the store, adoption, reconciles, requests)
        // waits behind this gate: open at once without leader election, on election with it.
        let leading = Gate(open: false)
        let lead: @Sendable () async throws -> Void = {
            let summary = try await source.sync()
            log("read \(summary.applied) objects (\(summary.problems) problems)")
            if summary.problems > 0 { metrics.sourceError(source: "directory") }
            // Instances a previous daemon left running are adopted, not started again.
            let (adopted, restarted, unavailable) = await platform.adopt()
            if adopted + restarted > 0 { log("adopted \(adopted) running instance(s), restarted \(restarted) that had exited") }
            for problem in unavailable { log("cannot open a router port again: \(problem)", level: "warning") }
            // Everything known is reconciled once at start-up (level-based: a restart loses nothing).
            await enqueueAll()
            await leading.open()
        }
        let elector = leaderElect ? LeaderElector(config: electionConfig!, store: store, clock: clock, log: { log($0) }) : nil
        if elector == nil {
            try await lead()
            metrics.leader(true)
        } else {
            metrics.leader(false)
            log("leader election on: waiting to lead as \(electionConfig!.identity)")
        }

        let watcher = try DirectoryWatcher(root: specDirectory)
        let resyncInterval = try KubeDuration.parse(resync).duration

        let (host, port) = metricsHostPort!
        var quietLogger = Logging.Logger(label: "capstan")
        quietLogger.logLevel = .warning
        let router = Router()
        router.get("metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(string: metrics.render())))
        }
        router.get("healthz") { _, _ in "ok\n" }
        router.get("readyz") { _, _ in
            ready.value ? Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: elector.map { $0.isLeader ? "ok: leader\n" : "ok: follower\n" } ?? "ok\n")))
                : Response(status: .serviceUnavailable, body: .init(byteBuffer: ByteBuffer(string: "starting\n")))
        }
        let server = Hummingbird.Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "capstan"),
            onServerRunning: { channel in log("serving /metrics, /healthz and /readyz on \(channel.localAddress.map { "\($0)" } ?? metricsAddress)") },
            logger: quietLogger)

        // Services stop in reverse order on SIGTERM/SIGINT: the controllers first (no new work,
        // in-flight reconciles finish within --shutdown-grace), then the source loops, then the
        // HTTP server, so /healthz answers to the end.
        // The election stops last (it is first): the lease is released only after the
        // controllers finished their in-flight work.
        let leaseEvent: @Sendable (EventType, String, String) -> Void = { type, reason, message in
            let lease = ObjectReference(kind: "Lease", namespace: "default", name: electionConfig!.leaseName)
            _ = try? store.recordEvent(type, reason: reason, message: message, about: lease, at: Date())
        }
        let election: [any Service] = elector.map { elector in
            [LoopService("leader election") {
                let cacheRefresh = Task {
                    // A follower keeps its cache warm from the store the leader writes.
                    while !Task.isCancelled, !(await leading.opened) {
                        try? await Task.sleep(for: .seconds(5))
                        if !(await leading.opened) { try? LocalObjectStore.load(store, into: cache) }
                    }
                }
                defer { cacheRefresh.cancel() }
                await elector.run(onStartedLeading: {
                    log("leading: this daemon acts now")
                    metrics.leader(true)
                    let transitions = elector.lastObserved?.leaseTransitions ?? 0
                    leaseEvent(.normal, "LeaderElected", "\(elector.config.identity) became leader (transition \(transitions))")
                    do { try await lead() } catch {
                        log("cannot start leading: \(error)", level: "error")
                        Glibc.exit(1)
                    }
                }, onStoppedLeading: { lost in
                    metrics.leader(false)
                    guard lost else {
                        leaseEvent(.normal, "LeaderReleased", "\(elector.config.identity) stopped and released the lease")
                        return
                    }
                    leaseEvent(.warning, "LeaderLost", "\(elector.config.identity) could not renew within \(renewDeadline): stopped every reconcile and exited")
                    // No split brain: stop every reconcile now, before the lease can expire for
                    // another daemon, by exiting; a supervisor restarts this one as a follower.
                    log("lost the lease: stopping every reconcile and exiting", level: "error")
                    Glibc.exit(1)
                })
            }]
        } ?? []
        let services: [any Service] = election + [
            LoopService("metrics server") {
                do {
                    try await server.run()
                } catch {
                    if Task.isCancelled { return }  // shutting down
                    log("cannot serve on \(metricsAddress): \(error)", level: "error")
                    Glibc.exit(3)
                }
            },
            LoopService("gauges") {
                // Queue gauges and object readiness (from the cache) every second.
                while !Task.isCancelled {
                    for (kind, queue) in [("application", applications.queue), ("deployment", deployments.queue)] {
                        metrics.queue(kind: kind, depth: await queue.depth, adds: await queue.adds, retries: await queue.retries)
                    }
                    let readiness = cache.readiness()
                    for kind in ResourceKind.allCases {
                        let counts = readiness[kind] ?? (0, 0)
                        metrics.resources(kind: kind.singular, ready: counts.ready, notReady: counts.notReady)
                    }
                    try await Task.sleep(for: .seconds(1))
                }
            },
            LoopService("directory watch") {
                await leading.wait()
                for await batch in watcher.changes {
                    do {
                        let summary = try await source.sync(changed: batch.overflowed ? nil : batch.paths)
                        if summary.problems > 0 { metrics.sourceError(source: "directory") }
                        log("change in \(batch.paths.count) path(s)\(summary.partial ? "" : " (full read)"): \(summary.changed) object(s) changed, \(summary.deleted) deleted, \(summary.kept) kept at their last good version")
                    } catch {
                        log("sync failed: \(error)", level: "error")
                    }
                }
            },
            LoopService("resync") {
                await leading.wait()
                while !Task.isCancelled {
                    try await Task.sleep(for: resyncInterval)
                    _ = try? await source.sync()
                    await enqueueAll()  // drift behind Capstan's back is found here at the latest
                }
            },
            LoopService("SIGHUP") {
                for await _ in await UnixSignalsSequence(trapping: .sighup) {
                    guard await leading.opened else { continue }
                    log("SIGHUP: re-reading \(specDirectory)")
                    _ = try? await source.sync()
                }
            },
            LoopService("requests") {
                // Requests from the CLI (`capstan reconcile`), checked twice a second.
                await leading.wait()
                while !Task.isCancelled {
                    try await Task.sleep(for: .milliseconds(500))
                    guard let requests = try? store.pendingRequests() else { continue }
                    for request in requests {
                        switch request.type {
                        case "reconcile":
                            log("reconcile of \(request.key) requested")
                            await objects.record(.normal, reason: "ReconcileRequested", message: "requested at \(request.value)", about: request.key)
                            await enqueue(request.key, cache.get(request.key)?.resource)
                        case "rollback":
                            do {
                                let message = try await deploymentReconciler.requestRollback(request.key, toRevision: Int(request.value))
                                log("\(request.key): \(message)")
                            } catch {
                                log("rollback of \(request.key) refused: \(error)", level: "warning")
                                await objects.record(.warning, reason: "RollbackRefused", message: "\(error)", about: request.key)
                            }
                            await deployments.queue.add(request.key)
                        default:
                            break
                        }
                        try? store.markHandled(request.id, at: Date())
                    }
                }
            },
            applications,
            deployments,
        ]
        var configuration = ServiceGroupConfiguration(
            services: services.map { .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: quietLogger)
        configuration.maximumGracefulShutdownDuration = try KubeDuration.parse(shutdownGrace).duration
        configuration.maximumCancellationDuration = .seconds(10)
        ready.update { $0 = true }
        do {
            try await ServiceGroup(configuration: configuration).run()
        } catch {
            log("stopped on error: \(error)", level: "error")
            watcher.stop()
            throw ExitCode(1)
        }
        watcher.stop()
        if downOnExit, await leading.opened {
            let stopped = await platform.down()
            log("stopped \(stopped.count) instance(s) (--down-on-exit)")
        } else {
            let running = platform.owners().filter { $0.kind == .deployment }.count
            if running > 0 {
                log("instances of \(running) deployment(s) keep running (their router ports are closed until a daemon runs); stop them with: capstan down --state-dir \(state.resolved)")
            }
        }
        await platform.shutdown()
        log("stopped")
    }
}

/// Children started from async code can inherit a blocked mask (swift-corelibs-foundation
/// #4772): make sure the signals we handle are deliverable.
func unblockSignals() {
    var set = sigset_t()
    sigemptyset(&set)
    for signal in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, signal) }
    pthread_sigmask(SIG_UNBLOCK, &set, nil)
}
