import ArgumentParser
import CapstanControllers
import CapstanKube
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

    /// The directory as given (flag, `$CAPSTAN_STATE_DIR`, or `.capstan`), made absolute: what
    /// the daemon stores and links must not depend on the directory it was started from.
    var resolved: String {
        FilePaths.absolute(given)
    }

    /// The directory as the user wrote it, for messages.
    var given: String {
        let value = stateDirectory ?? ProcessInfo.processInfo.environment["CAPSTAN_STATE_DIR"] ?? ""
        return value.isEmpty ? ".capstan" : value
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
        abstract: "Run the daemon: watch a spec directory (or, with --kube, a cluster's custom resources) and reconcile what it declares.",
        discussion: """
            Reads every spec below --spec-dir, keeps status and events in the state directory, reacts to file changes at once (inotify) and re-reads everything every --resync. SIGHUP re-reads now; SIGTERM or SIGINT stop gracefully (in-flight reconciles finish) with exit status 0.

            Reconciled so far: Application and Deployment (artifacts, supervised instances, health checks, a router port per Deployment, rollouts and rollbacks). The other kinds are read, validated and stored; their reconcilers come in later releases.

            With --kube, the six custom resources are listed and watched through the Kubernetes API (--kubeconfig, --context, or the pod's service account); each Capstan Deployment becomes an owned apps/v1 Deployment, Service and (for routes) Ingress; status goes to /status and events are core/v1 Events; --leader-elect uses a coordination.k8s.io/v1 Lease.

            One daemon acts on a state directory: a second one is refused (exit status 2) unless every daemon of it runs with --leader-elect. A daemon whose state directory is deleted or replaced under it stops at once (exit status 4); a busy --metrics-addr is exit status 3.

            Instances belong to the state directory, not to the daemon: they keep running when the daemon stops or dies, and the next daemon adopts them. Routers (the Deployments' ports) only listen while a daemon runs. `capstan down` stops every instance; --down-on-exit does it when the daemon stops.
            """)

    @Option(name: .customLong("spec-dir"), help: ArgumentHelp("The directory of specs.", valueName: "dir"))
    var specDirectoryOption: String?

    var specDirectory: String { specDirectoryOption ?? "" }

    @OptionGroup var kube: KubeOptions

    @Option(name: .customLong("platform"), help: ArgumentHelp("Where a spec directory's Deployments run: local (processes on this host) or kube (apps/v1 Deployments on the cluster of --kubeconfig).", valueName: "local|kube"))
    var platform: PlatformName = .local

    @OptionGroup var state: StateOptions

    @Option(help: "Reconcile workers per kind.")
    var concurrency: Int = 4

    @Option(help: ArgumentHelp("Full re-read interval, as a duration.", valueName: "duration"))
    var resync: String = "5m"

    @Option(name: .customLong("reconcile-timeout"), help: ArgumentHelp("A reconcile running longer is cancelled and retried.", valueName: "duration"))
    var reconcileTimeout: String = "5m"

    @Option(name: .customLong("max-file-size"), help: ArgumentHelp("Largest spec file read, as a quantity (1Mi, 512Ki); a larger file is skipped with a Warning event, and what it held is kept.", valueName: "size"))
    var maxFileSize: String = "1Mi"

    var maxFileBytes: Int { (try? parseMaxFileSize(maxFileSize)) ?? ManifestDecoder.defaultMaxFileSize }

    @Option(name: .customLong("log-max-size"), help: ArgumentHelp("An instance's log is rotated at exactly this size (a quantity: 10Mi).", valueName: "size"))
    var logMaxSize: String = "10Mi"

    @Option(name: .customLong("log-max-files"), help: ArgumentHelp("Log files kept per instance, the current one included: its output costs at most --log-max-size times this.", valueName: "n"))
    var logMaxFiles: Int = 3

    var logRotation: LogRotation {
        LogRotation(maxBytes: (try? Quantity(logMaxSize)).map { Int($0.roundedUp) } ?? 10 << 20, files: logMaxFiles)
    }

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

    @Option(name: .customLong("lease-duration"), help: ArgumentHelp("Leader election: how long a lease holds without renewal (default 15s; the two below scale with it, 15:10:2).", valueName: "duration"))
    var leaseDuration: String?

    @Option(name: .customLong("renew-deadline"), help: ArgumentHelp("Leader election: a leader that cannot renew this long steps down and exits (default 10s, or 2/3 of --lease-duration).", valueName: "duration"))
    var renewDeadline: String?

    @Option(name: .customLong("retry-period"), help: ArgumentHelp("Leader election: how often to try to acquire or renew (default 2s, or 2/15 of --lease-duration).", valueName: "duration"))
    var retryPeriod: String?

    @Option(name: .customLong("identity"), help: ArgumentHelp("Leader election: this daemon's name (default: host name and pid).", valueName: "name"))
    var identity: String?

    /// The election's timings: those given, the others scaled from them (never a conflict
    /// made by a default). Throws for a value that is not a duration or for given values that
    /// conflict, naming both flags.
    func electionTimings() throws -> (leaseDuration: Duration, renewDeadline: Duration, retryPeriod: Duration) {
        func parse(_ flag: String, _ text: String?) throws -> Duration? {
            guard let text else { return nil }
            guard let value = try? KubeDuration.parse(text), value.nanoseconds > 0 else {
                throw ValidationError("\(flag) \"\(text)\" is not a positive duration such as 15s")
            }
            return value.duration
        }
        let given = (try parse("--lease-duration", leaseDuration), try parse("--renew-deadline", renewDeadline), try parse("--retry-period", retryPeriod))
        let timings = LeaderElectionConfig.timings(leaseDuration: given.0, renewDeadline: given.1, retryPeriod: given.2)
        func text(_ flag: String, _ value: Duration, _ written: String?) -> String {
            "\(flag) \(written ?? "\(KubeDuration(value)) (its default)")"
        }
        if timings.leaseDuration <= timings.renewDeadline {
            throw ValidationError("leader election: \(text("--lease-duration", timings.leaseDuration, leaseDuration)) must be longer than \(text("--renew-deadline", timings.renewDeadline, renewDeadline))")
        }
        if timings.renewDeadline <= timings.retryPeriod {
            throw ValidationError("leader election: \(text("--renew-deadline", timings.renewDeadline, renewDeadline)) must be longer than \(text("--retry-period", timings.retryPeriod, retryPeriod))")
        }
        return timings
    }

    var electionConfig: LeaderElectionConfig? {
        guard let timings = try? electionTimings() else { return nil }
        return LeaderElectionConfig(leaseName: "capstan-controller", identity: identity ?? "\(ProcessInfo.processInfo.hostName)-\(getpid())",
                                    leaseDuration: timings.leaseDuration, renewDeadline: timings.renewDeadline, retryPeriod: timings.retryPeriod,
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
        _ = try parseMaxFileSize(maxFileSize)
        guard let size = try? Quantity(logMaxSize), size.roundedUp >= 1024, size.roundedUp < Int64(1) << 40 else {
            throw ValidationError("--log-max-size \"\(logMaxSize)\" is not a size of at least 1Ki, such as 10Mi")
        }
        guard (1...100).contains(logMaxFiles) else { throw ValidationError("--log-max-files must be between 1 and 100") }
        _ = try electionTimings()
        if leaderElect, let problem = electionConfig?.problem { throw ValidationError("leader election: \(problem)") }
        guard metricsHostPort != nil else {
            throw ValidationError("--metrics-addr \"\(metricsAddress)\" is not host:port, such as 127.0.0.1:9464")
        }
        if kube.enabled {
            guard specDirectoryOption == nil else {
                throw ValidationError("--kube reads the cluster's custom resources: leave out --spec-dir (or use --spec-dir with --platform kube)")
            }
            try kube.check()
            return
        }
        if platform == .kube { try kube.check() }
        guard specDirectoryOption != nil else { throw ValidationError("give --spec-dir DIR (a directory of specs) or --kube (the cluster's custom resources)") }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: specDirectory, isDirectory: &isDirectory) else {
            throw ValidationError("--spec-dir \(specDirectory) does not exist (relative paths start at \(FilePaths.currentDirectory()))")
        }
        guard isDirectory.boolValue else {
            throw ValidationError("--spec-dir \(specDirectory) is a file, not a directory: name the directory that holds it")
        }
    }

    func run() async throws {
        let log = DaemonLog(format: logFormat)
        unblockSignals()
        if kube.enabled {
            try await runKube(log: log)
            return
        }
        let store: StateStore
        do {
            store = try StateStore(directory: state.resolved)
        } catch {
            log("\(error)", level: "error")
            throw ExitCode(2)
        }
        // One acting owner per state directory, for the daemon's whole life: alone, or among
        // daemons that elect a leader, never both.
        let owner: StateOwner
        do {
            owner = try StateOwner(directory: state.resolved, mode: leaderElect ? .electing : .exclusive)
        } catch {
            log("\(error)", level: "error")
            throw ExitCode(2)
        }
        guard let identity = StateDirectoryIdentity.current(of: state.resolved) else {
            log("the state directory \(state.resolved) went away while starting", level: "error")
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
        let onOutcome = Daemon.outcomeObserver(metrics: metrics, events: objects, timeout: reconcileTimeout, log: log)
        // The platform tells the Deployment controller when an instance's readiness changes;
        // the controller exists only after the platform, hence the late binding.
        let deploymentQueue = WorkQueue<ObjectKey, ContinuousClock>(clock: clock)
        let elector = leaderElect ? LeaderElector(config: electionConfig!, store: store, clock: clock, log: { log($0) }) : nil
        // With leader election every action is fenced: a leader frozen past its renew deadline
        // (SIGSTOP, a paused machine) stops the moment it resumes, before it can act beside the
        // daemon that leads by then.
        let admit: @Sendable () -> Bool = {
            guard let elector, !elector.holdsValidLease else { return true }
            guard elector.hasLed else { return false }  // a follower acts on nothing
            log("this daemon's lease lapsed (it was frozen, or renewals failed): stopping every reconcile and exiting", level: "error")
            Glibc.exit(1)
        }
        // Local: supervised processes. Kube: apps/v1 Deployments on a cluster (GitOps to it).
        var local: LocalWorkloadPlatform?
        var cluster: ClusterTarget?
        let artifacts: any ArtifactPlatform
        let deploymentService: any Service
        if platform == .kube {
            do {
                let target = try ClusterTarget(options: kube, log: log)
                cluster = target
                artifacts = KubeArtifacts()
                let workload = KubeWorkload(client: target.client, children: target.children, ownership: .inventory(StoreChildInventory(store: store)))
                let reconciler = DeploymentReconciler(store: objects, events: objects, workload: workload, revisions: objects, prune: prune)
                deploymentService = Controller(
                    name: "deployment", reconciler: reconciler,
                    clock: clock, concurrency: concurrency, timeout: timeout, queue: deploymentQueue, metrics: metrics, observe: onOutcome, admit: admit)
            } catch {
                log("\(error)", level: "error")
                throw ExitCode(2)
            }
        } else {
            do {
                let platform = try LocalWorkloadPlatform(
                    stateDirectory: state.resolved, store: store, events: objects, routerHost: routerAddress, logRotation: logRotation,
                    enqueue: { key in await deploymentQueue.add(key) }, restarted: { metrics.instanceRestarted() }, admit: admit)
                local = platform
                artifacts = platform
                let reconciler = DeploymentReconciler(store: objects, events: objects, workload: platform, revisions: objects, prune: prune)
                deploymentService = Controller(
                    name: "deployment", reconciler: reconciler,
                    clock: clock, concurrency: concurrency, timeout: timeout, queue: deploymentQueue, metrics: metrics, observe: onOutcome, admit: admit)
            } catch {
                log("cannot start the process supervisor: \(error)", level: "error")
                throw ExitCode(2)
            }
        }
        let applications = Controller(
            name: "application",
            reconciler: ApplicationReconciler(store: objects, events: objects, artifacts: artifacts, prune: prune),
            clock: clock, concurrency: concurrency, timeout: timeout, metrics: metrics, observe: onOutcome, admit: admit)
        let (platformLocal, platformCluster) = (local, cluster)

        @Sendable func enqueue(_ key: ObjectKey, _ resource: AnyResource?) async {
            await Daemon.enqueue(key, resource, cache: cache, applications: applications.queue, deployments: deploymentQueue,
                                 referrerDelay: platformCluster == nil ? .zero : Daemon.clusterReferrerDelay)
        }
        /// Everything known, and every owner of something in the inventory (deleted while no
        /// daemon ran: its reconcile removes what it left).
        @Sendable func enqueueAll() async {
            for object in cache.objects(kind: .application) { await applications.queue.add(object.key) }
            for object in cache.objects(kind: .deployment) { await deploymentQueue.add(object.key) }
            let owners = platformLocal?.owners() ?? Set(((try? store.inventory(type: StoreChildInventory.type)) ?? []).map(\.owner))
            for owner in owners where cache.get(owner) == nil {
                switch owner.kind {
                case .application: await applications.queue.add(owner)
                case .deployment: await deploymentQueue.add(owner)
                default: break
                }
            }
            for directory in platformLocal?.pruneLogs(keeping: Set(cache.objects(kind: .deployment).map(\.key))) ?? [] {
                log("removed the logs of a Deployment deleted more than a day ago: \(directory)")
            }
            await stopUnknownInstances()
        }
        /// Instances of this state directory that no inventory knows are stopped (each an
        /// OrphanDeleted event): nothing runs that `capstan down` could not find.
        @Sendable func stopUnknownInstances() async {
            for (owner, line) in await platformLocal?.stopUnknownInstances() ?? [] {
                log(line, level: "warning")
                if let owner { await objects.record(.warning, reason: "OrphanDeleted", message: line, about: owner) }
            }
        }
        let source = SpecDirectorySource(root: specDirectory, store: store, cache: cache, allowEmpty: allowEmpty, maxFileSize: maxFileBytes, log: { log($0, level: $1.rawValue) }) { key, resource in
            await enqueue(key, resource)
        }
        log("capstan \(Capstan.version) reading \(specDirectory), state in \(state.resolved)" + (platformCluster.map { ", running Deployments on \($0.server)" } ?? ""))
        // Everything that acts (the source writing the store, adoption, reconciles, requests)
        // waits behind this gate: open at once without leader election, on election with it.
        let leading = Gate(open: false)
        let lead: @Sendable () async throws -> Void = {
            let summary = try await source.sync()
            log("read \(summary.applied) objects (\(summary.problems) problems)")
            if summary.problems > 0 { metrics.sourceError(source: "directory") }
            // Instances a previous daemon left running are adopted, not started again.
            if let platformLocal {
                let (adopted, restarted, unavailable) = await platformLocal.adopt()
                if adopted + restarted > 0 { log("adopted \(adopted) running instance(s), restarted \(restarted) that had exited") }
                for problem in unavailable { log("cannot open a router port again: \(problem)", level: "warning") }
            }
            // Everything known is reconciled once at start-up (level-based: a restart loses nothing).
            await enqueueAll()
            await leading.open()
        }
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
        let server = Daemon.httpServer(host: host, port: port, address: metricsAddress, metrics: metrics, ready: { ready.value },
                                       leader: { elector.map { $0.isLeader } }, log: log)

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
            [Daemon.election(elector, renewDeadline: "\(KubeDuration(elector.config.renewDeadline))", metrics: metrics, log: log, whileFollowing: {
                // A follower keeps its cache warm from the store the leader writes.
                while !Task.isCancelled, !(await leading.opened) {
                    try? await Task.sleep(for: .seconds(5))
                    if !Task.isCancelled, !(await leading.opened) { try? LocalObjectStore.load(store, into: cache) }
                }
            }, leaseEvent: leaseEvent, lead: lead)]
        } ?? []
        // The state directory deleted, replaced or unmounted under the daemon: it stops acting
        // at once (a daemon writing on into an unlinked database while the next one starts a
        // second set of instances orphans the first for good).
        let stateDirectory = state.resolved
        let stateWatch = LoopService("state directory watch") {
            while !Task.isCancelled {
                try await Task.sleep(for: .milliseconds(200))
                if let change = identity.change(in: stateDirectory) {
                    log("\(change) under the running daemon: stopping at once, without touching anything. The instances it started keep running: put the directory back and start a daemon to adopt them, or stop them with `capstan down --state-dir \(stateDirectory)` (it finds them by their environment)", level: "error")
                    Glibc.exit(4)
                }
            }
        }
        let services: [any Service] = election + [
            stateWatch,
            server,
            Daemon.gauges(metrics: metrics, cache: cache, applications: applications.queue, deployments: deploymentQueue),
            LoopService("directory watch") {
                await leading.wait()
                for await batch in watcher.changes {
                    do {
                        let summary = try await source.sync(changed: batch.overflowed ? nil : batch.paths)
                        if summary.problems > 0 { metrics.sourceError(source: "directory") }
                        log("change in \(batch.paths.count) path(s)\(summary.partial ? "" : " (full read)"): \(summary.changed) object(s) changed, \(summary.deleted) deleted, \(summary.kept + summary.withheld) held at their last good version")
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
                    let now = Date()
                    // A request past its end never runs (the CLI that made it gave up or said when).
                    for request in (try? store.expireRequests(now: now)) ?? [] {
                        let message = "request \(request.id) (\(request.type)\(request.value.isEmpty ? "" : " \(request.value)")) expired at \(Timestamp(request.expiresAt)) before a daemon took it: not done"
                        log("\(request.key): \(message)", level: "warning")
                        await objects.record(.warning, reason: "RequestExpired", message: message, about: request.key)
                    }
                    guard let requests = try? store.pendingRequests(now: now) else { continue }
                    for request in requests {
                        // A Deployment's requests are taken by its own reconcile (the reconciler
                        // writes the status, no one else): it only needs waking.
                        if [ObjectRequest.rollback, ObjectRequest.promote, ObjectRequest.abort].contains(request.type) {
                            await deploymentQueue.add(request.key)
                            continue
                        }
                        // Taken first: a request the CLI withdraws at this moment is not acted on.
                        guard (try? store.claimRequest(request.id, at: now)) == true else { continue }
                        switch request.type {
                        case "reconcile":
                            log("reconcile of \(request.key) requested")
                            await objects.record(.normal, reason: "ReconcileRequested", message: "requested at \(request.value)", about: request.key)
                            await enqueue(request.key, cache.get(request.key)?.resource)
                        default:
                            break
                        }
                    }
                }
            },
            applications,
            deploymentService,
        ] + (platformCluster?.watches { owner in
            if await leading.opened { await deploymentQueue.add(owner) }
        } ?? [])
        let group = try Daemon.serviceGroup(services, shutdownGrace: shutdownGrace)
        ready.update { $0 = true }
        do {
            try await group.run()
        } catch {
            log("stopped on error: \(error)", level: "error")
            watcher.stop()
            throw ExitCode(1)
        }
        watcher.stop()
        if let platformLocal {
            if downOnExit, await leading.opened {
                let stopped = await platformLocal.down()
                log("stopped \(stopped.count) instance(s) (--down-on-exit)")
            } else {
                let running = platformLocal.owners().filter { $0.kind == .deployment }.count
                if running > 0 {
                    log("instances of \(running) deployment(s) keep running (their router ports are closed until a daemon runs); stop them with: capstan down --state-dir \(state.resolved)")
                }
            }
            await platformLocal.shutdown()
        }
        await platformCluster?.client.shutdown()
        withExtendedLifetime(owner) {}
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
