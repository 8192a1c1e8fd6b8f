import ArgumentParser
import CapstanControllers
import CapstanIntegrations
import CapstanKube
import CapstanLocal
import CapstanModel
import CapstanRuntime
import Foundation
import ServiceLifecycle
#if canImport(Glibc)
import Glibc
#endif

/// How a command reaches the cluster: `--kube [--kubeconfig F] [--context C]`.
struct KubeConnection: ParsableArguments {
    @Flag(name: .customLong("kube"), help: "Use the Kubernetes API (Capstan's custom resources) instead of a state directory.")
    var enabled = false

    @Option(name: .customLong("kubeconfig"), help: ArgumentHelp("The kubeconfig (default: $KUBECONFIG, ~/.kube/config, or the pod's service account).", valueName: "file"))
    var kubeconfig: String?

    @Option(name: .customLong("context"), help: ArgumentHelp("The kubeconfig context (default: the current one).", valueName: "name"))
    var context: String?

    /// The kubeconfig given, or in a pod its service account, or the default kubeconfig.
    func config() throws(KubeConfig.Problem) -> KubeConfig {
        let environment = ProcessInfo.processInfo.environment
        if kubeconfig == nil, context == nil, environment["KUBECONFIG"] == nil, environment["KUBERNETES_SERVICE_HOST"] != nil {
            return try KubeConfig.inCluster()
        }
        return try KubeConfig.load(paths: KubeConfig.defaultPaths(explicit: kubeconfig), context: context)
    }
}

/// How `capstan run --kube` reaches the cluster.
struct KubeOptions: ParsableArguments {
    @OptionGroup var connection: KubeConnection

    var enabled: Bool { connection.enabled }

    @Option(name: .customLong("namespace"), help: ArgumentHelp("Watch one namespace only (default: all).", valueName: "name"))
    var namespace: String?

    @Option(name: .customLong("lease-namespace"), help: ArgumentHelp("Where the leader-election Lease lives (default: $POD_NAMESPACE, the pod's namespace, or default).", valueName: "name"))
    var leaseNamespace: String?

    @Option(name: .customLong("backup-image"), help: ArgumentHelp("The image of a BackupSchedule's Jobs on a cluster: capstan with pg_dump, sqlite3 and tar.", valueName: "image"))
    var backupImage: String = KubeBackups.defaultImage

    @Option(name: .customLong("kube-qps"), help: ArgumentHelp("Client-side requests per second to the API server (0: no client-side limit).", valueName: "n"))
    var qps: Double = 50

    @Option(name: .customLong("kube-burst"), help: ArgumentHelp("Client-side burst of requests.", valueName: "n"))
    var burst: Int = 100

    func check() throws {
        guard qps >= 0, qps.isFinite else { throw ValidationError("--kube-qps must be 0 or more") }
        guard burst >= 1 else { throw ValidationError("--kube-burst must be 1 or more") }
        for (flag, value) in [("--namespace", namespace), ("--lease-namespace", leaseNamespace)] {
            if let value, let problem = Names.dns1123LabelProblem(value) { throw ValidationError("\(flag) \(value): \(problem)") }
        }
    }

    func config() throws(KubeConfig.Problem) -> KubeConfig { try connection.config() }
}

enum PlatformName: String, ExpressibleByArgument, CaseIterable {
    case local, kube
}

/// The cluster a daemon runs Deployments on: its client, and the watches of the children
/// Capstan made there (label `app.kubernetes.io/managed-by=capstan`).
struct ClusterTarget: Sendable {
    let client: KubeClient
    let server: String
    let namespace: String?
    /// The kubeconfig context's namespace, or in a pod its own.
    let configNamespace: String
    let children = ChildCache()
    private let synced = Synchronized(Set<String>())
    private let log: DaemonLog

    init(options: KubeOptions, log: DaemonLog) throws {
        let config = try options.config()
        client = try KubeClient(config: config, qps: options.qps, burst: options.burst, userAgent: "capstan/\(Capstan.version)")
        server = config.server
        namespace = options.namespace
        configNamespace = config.namespace
        self.log = log
    }

    /// Every child watch has listed once.
    var caughtUp: Bool { synced.value.count >= KubeWorkload.childResources.count }

    /// The child watches as services; a change of a child calls `owner` with its Capstan
    /// Deployment and how long to wait for more changes first.
    func watches(_ owner: @escaping @Sendable (ObjectKey, Duration) async -> Void) -> [any Service] {
        let woken: @Sendable (ChildCache.Wake) async -> Void = { wake in
            switch wake {
            case .now(let key): await owner(key, .zero)
            case .soon(let key): await owner(key, ChildCache.coalescing)
            }
        }
        // A BackupSchedule's Jobs: each change (running, complete, failed, deleted) wakes the
        // schedule at once, instead of its next look.
        let jobs = Reflector(client: client, resource: KubeBackups.jobs, namespace: namespace,
                             labelSelector: "\(Children.ownerKindLabel)=BackupSchedule",
                             log: { [log] in log("jobs.batch: \($0)", level: "warning") })
        let jobWatch = LoopService("jobs watch") {
            await jobs.run { change in
                switch change {
                case .upsert(let node), .delete(let node):
                    if let key = ChildCache.owner(of: node) { await owner(key, .zero) }
                case .synced:
                    break
                }
            }
        }
        // Traefik's kinds, once the cluster serves them (looked for every 30 s until then): a
        // canary is split through them only when their watches have listed.
        let traefikWatch = LoopService("traefik watch") { [client, children, log, namespace] in
            while !Task.isCancelled {
                if await Self.servesTraefik(client) { break }
                try? await Task.sleep(for: .seconds(30))
            }
            await withTaskGroup(of: Void.self) { group in
                for resource in KubeWorkload.traefikResources {
                    let reflector = Reflector(client: client, resource: resource, namespace: namespace,
                                              log: { log("\(resource.plural).\(resource.group): \($0)", level: "warning") })
                    group.addTask {
                        await reflector.run { change in
                            if let wake = children.wake(change, resource: resource) { await woken(wake) }
                        }
                    }
                }
            }
        }
        return [jobWatch, traefikWatch] + KubeWorkload.childResources.map { resource in
            let reflector = Reflector(client: client, resource: resource, namespace: namespace,
                                      log: { [log] in log("\(resource.plural).\(resource.group): \($0)", level: "warning") })
            return LoopService("\(resource.plural) watch") { [children, synced] in
                await reflector.run { change in
                    if change == .synced { synced.update { _ = $0.insert("\(resource.group)/\(resource.plural)") } }
                    if let wake = children.wake(change, resource: resource) { await woken(wake) }
                }
            }
        }
    }
}

extension ClusterTarget {
    /// Whether the cluster serves Traefik's TraefikService and IngressRoute (`traefik.io/v1alpha1`).
    static func servesTraefik(_ client: KubeClient) async -> Bool {
        guard let listing = try? await client.raw(method: "GET", path: "/apis/traefik.io/v1alpha1"),
              case .sequence(let resources)? = listing["resources"]?.value else { return false }
        let served = Set(resources.compactMap { $0["name"]?.scalarText })
        return KubeWorkload.traefikResources.allSatisfy { served.contains($0.plural) }
    }
}

/// Children on a cluster made for a spec directory's objects, in the state store's inventory.
struct StoreChildInventory: ChildInventory {
    static let type = "kube-child"
    let store: StateStore

    func recordChild(_ id: String, owner: ObjectKey) throws {
        guard try !children(of: owner).contains(id) else { return }
        try store.recordInventory(.init(type: Self.type, id: id, owner: owner, createdAt: Date()))
    }

    func removeChild(_ id: String) throws { _ = try store.removeInventory(type: Self.type, id: id) }

    func children(of owner: ObjectKey) throws -> [String] { try store.inventory(of: owner, type: Self.type).map(\.id) }
}

extension Run {
    func runKube(log: DaemonLog) async throws {
        try await KubeDaemon(self, log: log).run()
    }
}

/// `capstan run --kube`: the six custom resources listed and watched into the cache, the
/// children watched to find drift, status and events written to the API, and with
/// --leader-elect a Lease; one manager runs the controllers.
final class KubeDaemon: Sendable {
    let options: Run
    let log: DaemonLog
    let target: ClusterTarget
    let objects: KubeObjectStore
    let metrics = RuntimeMetrics()
    let builtinMetrics: MetricsService
    let manager: ObjectManager
    /// The custom resources whose watch has listed once.
    let synced = Synchronized(Set<String>())

    init(_ options: Run, log: DaemonLog) throws {
        self.options = options
        self.log = log
        do {
            target = try ClusterTarget(options: options.kube, log: log)
        } catch {
            log("\(error)", level: "error")
            throw ExitCode(2)
        }
        let client = target.client
        objects = KubeObjectStore(client: client, instance: options.electionConfig!.identity, log: { log($0, level: "warning") })
        manager = ObjectManager(options: ObjectManager.Options(
            concurrency: options.concurrency, timeout: try KubeDuration.parse(options.reconcileTimeout).duration, metrics: metrics,
            observe: Daemon.outcomeObserver(metrics: metrics, events: objects, timeout: options.reconcileTimeout, log: log)))
        let workload = KubeWorkload(client: client, children: target.children, ownership: .ownerReference)
        builtinMetrics = MetricsService(source: BuiltinMetricsSource(cache: objects.cache, workload: workload, probes: nil, host: Daemon.host.samples))
        Controllers.register(on: manager, store: objects, events: objects, cache: objects.cache,
                             platforms: Platforms(artifacts: KubeArtifacts(), workload: workload, traffic: workload,
                                                  revisions: objects.revisions,
                                                  secrets: KubeSecrets(client: client, uid: { [cache = objects.cache] key in cache.get(key)?.resource.metadata.uid }),
                                                  actions: Self.actions,
                                                  backups: KubeBackups(client: client, image: options.kube.backupImage, version: Capstan.version,
                                                                       uid: { [cache = objects.cache] key in cache.get(key)?.resource.metadata.uid },
                                                                       recover: KubeBackupRecovery.recover(client: client)),
                                                  metrics: builtinMetrics, notifier: AlertNotifier()),
                             prune: options.prune, referrerDelay: Daemon.clusterReferrerDelay, metrics: metrics)
        // A Deployment's readiness or version shows in its Application's status.
        objects.onReferrersChanged { [manager, objects] key in
            if await manager.leading.opened { await manager.notifyWatchers(key, objects.cache.get(key)?.resource) }
        }
    }

    /// A rotation's apply and verify commands run in the operator's container.
    static let actions = ProcessActions(directory: NSTemporaryDirectory() + "capstan-actions-\(getpid())", http: HTTPCheck.get)

    var caughtUp: Bool { synced.value.count >= ResourceKind.allCases.count && target.caughtUp }

    func run() async throws {
        let scope = options.kube.namespace.map { "namespace \($0)" } ?? "all namespaces"
        log("capstan \(Capstan.version) watching \(scope) on \(target.server)")
        let (host, port) = options.metricsHostPort!
        let elector = try elector()
        let services: [any Service] = leadership(elector) + [
            Daemon.httpServer(host: host, port: port, address: options.metricsAddress, metrics: metrics, builtin: builtinMetrics, ready: { [self] in caughtUp },
                              leader: { elector.map { $0.isLeader } }, log: log),
            manager.gauges { [objects, metrics] in Daemon.readiness(objects.cache, metrics) },
        ] + reflectors() + [try resync(), Daemon.heapTrim(), crdCheck()] + manager.controllers
        do {
            try await Daemon.serviceGroup(services, shutdownGrace: options.shutdownGrace).run()
        } catch {
            log("stopped on error: \(error)", level: "error")
            await target.client.shutdown()
            throw ExitCode(1)
        }
        await target.client.shutdown()
        log("stopped")
    }

    /// Once at the start: whether the installed CRDs are this version's (their schema hash).
    /// The API server drops the fields an older CRD does not know, from specs and statuses
    /// alike, so a binary upgraded without its CRDs would lose what its new fields hold.
    func crdCheck() -> LoopService {
        let (client, log) = (target.client, log)
        return LoopService("CRD check") {
            await Self.checkCRDs(client, log: log)
            // A service that returns ends the group: this one stays until shutdown.
            while !Task.isCancelled { try await Task.sleep(for: .seconds(3600)) }
        }
    }

    static func checkCRDs(_ client: KubeClient, log: DaemonLog) async {
        var other: [String] = [], missing: [String] = []
        for kind in ResourceKind.allCases {
            let name = "\(kind.plural).\(capstanGroup)"
            let installed: SpecNode?
            do {
                installed = try await client.get(.customResourceDefinitions, namespace: nil, name: name)
            } catch {
                // Not allowed to read CRDs (an older ClusterRole), or no answer: not checked.
                log("cannot read the CRD \(name) to check it is this version's: \(error)", level: error.code == 403 ? "info" : "warning")
                return
            }
            guard let installed else {
                missing.append(name)
                continue
            }
            if installed["metadata"]?["annotations"]?[CRDGenerator.schemaAnnotation]?.scalarText != CRDGenerator.schemaHash(for: kind) {
                other.append(name)
            }
        }
        if !missing.isEmpty {
            log("CRDs not installed: \(missing.joined(separator: ", ")); install them with `capstan crds | kubectl apply -f -`", level: "warning")
        }
        if missing.isEmpty && other.isEmpty { log("the installed CRDs are capstan \(Capstan.version)'s") }
        if !other.isEmpty {
            log("the installed CRDs \(other.joined(separator: ", ")) are not capstan \(Capstan.version)'s: the API server drops the fields they do not know from specs and statuses; apply this version's with `capstan crds | kubectl apply -f -` (or crds/ of this release)", level: "warning")
        }
    }

    /// Act on complete caches: a reconcile before the children were listed would take an
    /// existing child for a missing one.
    @Sendable func lead() async throws {
        while !caughtUp { try await Task.sleep(for: .milliseconds(50)) }
        await manager.leading.open()
        await enqueueAll()
    }

    @Sendable func enqueueAll() async {
        for object in objects.cache.list() { await manager.add(object.key) }
    }

    var leaseNamespace: String {
        options.kube.leaseNamespace ?? ProcessInfo.processInfo.environment["POD_NAMESPACE"] ?? target.configNamespace
    }

    func elector() throws -> LeaderElector<ContinuousClock>? {
        guard options.leaderElect else { return nil }
        var config = options.electionConfig!
        config.releaseCheck = nil  // an API read: every retry period, as client-go
        return LeaderElector(config: config, store: KubeLeaseStore(client: target.client, namespace: leaseNamespace), clock: ContinuousClock(), log: { [log] in log($0) })
    }

    /// The election (a follower only keeps its cache warm), or leading at once.
    func leadership(_ elector: LeaderElector<ContinuousClock>?) -> [any Service] {
        guard let elector else {
            metrics.leader(true)
            return [LoopService("lead") { [self] in
                try await lead()
                // A service that returns ends the group: this one stays until shutdown.
                while !Task.isCancelled { try await Task.sleep(for: .seconds(3600)) }
            }]
        }
        metrics.leader(false)
        let (objects, namespace, name) = (objects, leaseNamespace, elector.config.leaseName)
        log("leader election on: waiting to lead as \(elector.config.identity) (Lease \(namespace)/\(name))")
        let leaseEvent: @Sendable (EventType, String, String) async -> Void = { type, reason, message in
            let lease = SpecNode.mapping([
                ("apiVersion", .string("coordination.k8s.io/v1")), ("kind", .string("Lease")), ("namespace", .string(namespace)), ("name", .string(name)),
            ])
            await objects.record(type, reason: reason, message: message, involved: lease, namespace: namespace)
        }
        return [Daemon.election(elector, renewDeadline: "\(KubeDuration(elector.config.renewDeadline))", metrics: metrics, log: log,
                                leaseEvent: leaseEvent, lead: lead)]
    }

    /// Reflectors: Capstan's kinds, and the children it made (found by its label).
    func reflectors() -> [any Service] {
        let (objects, manager, synced, log, client) = (objects, manager, synced, log, target.client)
        let services: [any Service] = ResourceKind.allCases.map { kind in
            let reflector = Reflector(client: client, resource: .capstan(kind), namespace: options.kube.namespace, log: { log("\(kind.plural): \($0)", level: "warning") })
            return LoopService("\(kind.plural) watch") {
                await reflector.run { change in
                    if change == .synced {
                        synced.update { _ = $0.insert(kind.plural) }
                        return
                    }
                    let previous = KubeObjectStore.key(of: change.object, kind: kind).flatMap { objects.cache.get($0)?.resource }
                    guard await manager.leading.opened else {
                        _ = objects.apply(change, kind: kind)  // a follower only keeps its cache warm
                        return
                    }
                    switch objects.apply(change, kind: kind) {
                    case .reconcile(let key): await manager.enqueue(key, objects.cache.get(key)?.resource ?? previous)
                    case .referrers(let key): await manager.notifyWatchers(key, objects.cache.get(key)?.resource)
                    case .none: break
                    }
                }
            }
        }
        return services + target.watches { owner, delay in
            if await manager.leading.opened { await manager.add(owner, after: delay) }
        }
    }

    /// Drift the watches missed is found here at the latest.
    func resync() throws -> LoopService {
        let interval = try KubeDuration.parse(options.resync).duration
        return LoopService("resync") { [self] in
            await manager.leading.wait()
            while !Task.isCancelled {
                try await Task.sleep(for: interval)
                await enqueueAll()
            }
        }
    }
}

extension Reflector.Change {
    /// The object of an upsert or delete (an empty mapping for `synced`).
    var object: SpecNode {
        switch self {
        case .upsert(let node), .delete(let node): return node
        case .synced: return .mapping([])
        }
    }
}
