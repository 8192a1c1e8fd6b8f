import ArgumentParser
import CapstanControllers
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
    static let childResources: [KubeResource] = [.deployments, .services, .ingresses]

    init(options: KubeOptions, log: DaemonLog) throws {
        let config = try options.config()
        client = try KubeClient(config: config, qps: options.qps, burst: options.burst, userAgent: "capstan/\(Capstan.version)")
        server = config.server
        namespace = options.namespace
        configNamespace = config.namespace
        self.log = log
    }

    /// Every child watch has listed once.
    var caughtUp: Bool { synced.value.count >= Self.childResources.count }

    /// The child watches as services; a change of a child calls `owner` with its Capstan Deployment.
    func watches(_ owner: @escaping @Sendable (ObjectKey) async -> Void) -> [any Service] {
        Self.childResources.map { resource in
            let reflector = Reflector(client: client, resource: resource, namespace: namespace,
                                      log: { [log] in log("\(resource.plural).\(resource.group): \($0)", level: "warning") })
            return LoopService("\(resource.plural) watch") { [children, synced] in
                await reflector.run { change in
                    if change == .synced { synced.update { _ = $0.insert("\(resource.group)/\(resource.plural)") } }
                    if let key = children.apply(change, resource: resource) { await owner(key) }
                }
            }
        }
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
    /// The daemon on a cluster: the six custom resources listed and watched into the cache,
    /// the children watched to find drift, status and events written to the API, and with
    /// --leader-elect a Lease.
    func runKube(log: DaemonLog) async throws {
        let target: ClusterTarget
        do {
            target = try ClusterTarget(options: kube, log: log)
        } catch {
            log("\(error)", level: "error")
            throw ExitCode(2)
        }
        let client = target.client
        let identity = electionConfig!.identity
        let objects = KubeObjectStore(client: client, instance: identity, log: { log($0, level: "warning") })
        let cache = objects.cache
        let children = target.children
        let clock = ContinuousClock()
        let metrics = RuntimeMetrics()
        let timeout = try KubeDuration.parse(reconcileTimeout).duration
        let onOutcome = Daemon.outcomeObserver(metrics: metrics, events: objects, timeout: reconcileTimeout, log: log)
        let applications = Controller(
            name: "application",
            reconciler: ApplicationReconciler(store: objects, events: objects, artifacts: KubeArtifacts(), prune: prune),
            clock: clock, concurrency: concurrency, timeout: timeout, metrics: metrics, observe: onOutcome)
        let deployments = Controller(
            name: "deployment",
            reconciler: DeploymentReconciler(store: objects, events: objects,
                                             workload: KubeWorkload(client: client, children: children, ownership: .ownerReference),
                                             revisions: ConfigMapRevisions(client: client, cache: cache), prune: prune),
            clock: clock, concurrency: concurrency, timeout: timeout, metrics: metrics, observe: onOutcome)
        let leading = Gate(open: false)
        @Sendable func enqueue(_ key: ObjectKey, _ resource: AnyResource?) async {
            guard await leading.opened else { return }  // a follower only keeps its cache warm
            await Daemon.enqueue(key, resource, cache: cache, applications: applications.queue, deployments: deployments.queue,
                                 referrerDelay: Daemon.clusterReferrerDelay)
        }
        /// A Deployment's readiness or version shows in its Application's status.
        @Sendable func referrersChanged(_ key: ObjectKey) async {
            if await leading.opened, case .deployment(let deployment)? = cache.get(key)?.resource {
                await applications.queue.add(ObjectKey(kind: .application, namespace: key.namespace, name: deployment.spec.application),
                                             after: Daemon.clusterReferrerDelay)
            }
        }
        objects.onReferrersChanged { await referrersChanged($0) }
        @Sendable func enqueueAll() async {
            for object in cache.objects(kind: .application) { await applications.queue.add(object.key) }
            for object in cache.objects(kind: .deployment) { await deployments.queue.add(object.key) }
        }

        // Reflectors: Capstan's kinds, and the children it made (found by its label).
        let scope = kube.namespace.map { "namespace \($0)" } ?? "all namespaces"
        log("capstan \(Capstan.version) watching \(scope) on \(target.server)")
        let synced = Synchronized(Set<String>())
        let expected = ResourceKind.allCases.count
        var reflectors: [any Service] = []
        for kind in ResourceKind.allCases {
            let reflector = Reflector(client: client, resource: .capstan(kind), namespace: kube.namespace, log: { log("\(kind.plural): \($0)", level: "warning") })
            reflectors.append(LoopService("\(kind.plural) watch") {
                await reflector.run { change in
                    if change == .synced {
                        synced.update { _ = $0.insert(kind.plural) }
                        return
                    }
                    let previous = KubeObjectStore.key(of: change.object, kind: kind).flatMap { cache.get($0)?.resource }
                    switch objects.apply(change, kind: kind) {
                    case .reconcile(let key):
                        await enqueue(key, cache.get(key)?.resource ?? previous)
                    case .referrers(let key):
                        await referrersChanged(key)
                    case .none:
                        break
                    }
                }
            })
        }
        reflectors += target.watches { owner in
            if await leading.opened { await deployments.queue.add(owner) }
        }
        let caughtUp: @Sendable () -> Bool = { synced.value.count >= expected && target.caughtUp }
        let lead: @Sendable () async throws -> Void = {
            // Act on complete caches: a reconcile before the children were listed would take
            // an existing child for a missing one.
            while !caughtUp() { try await Task.sleep(for: .milliseconds(50)) }
            await leading.open()
            await enqueueAll()
        }

        let leaseNamespace = kube.leaseNamespace ?? ProcessInfo.processInfo.environment["POD_NAMESPACE"] ?? target.configNamespace
        let election = {
            var config = electionConfig!
            config.releaseCheck = nil  // an API read: every retry period, as client-go
            return config
        }()
        let elector = leaderElect ? LeaderElector(config: election, store: KubeLeaseStore(client: client, namespace: leaseNamespace), clock: clock, log: { log($0) }) : nil
        let leaseEvent: @Sendable (EventType, String, String) async -> Void = { type, reason, message in
            let lease = SpecNode.mapping([
                ("apiVersion", .string("coordination.k8s.io/v1")), ("kind", .string("Lease")),
                ("namespace", .string(leaseNamespace)), ("name", .string(election.leaseName)),
            ])
            await objects.record(type, reason: reason, message: message, involved: lease, namespace: leaseNamespace)
        }
        var services: [any Service] = []
        if let elector {
            metrics.leader(false)
            log("leader election on: waiting to lead as \(identity) (Lease \(leaseNamespace)/\(election.leaseName))")
            services.append(Daemon.election(elector, renewDeadline: "\(KubeDuration(elector.config.renewDeadline))", metrics: metrics, log: log, leaseEvent: leaseEvent, lead: lead))
        } else {
            metrics.leader(true)
            services.append(LoopService("lead") {
                try await lead()
                // A service that returns ends the group: this one stays until shutdown.
                while !Task.isCancelled { try await Task.sleep(for: .seconds(3600)) }
            })
        }
        let (host, port) = metricsHostPort!
        let resyncInterval = try KubeDuration.parse(resync).duration
        services += [
            Daemon.httpServer(host: host, port: port, address: metricsAddress, metrics: metrics, ready: caughtUp,
                              leader: { elector.map { $0.isLeader } }, log: log),
            Daemon.gauges(metrics: metrics, cache: cache, applications: applications.queue, deployments: deployments.queue),
        ] + reflectors + [
            LoopService("resync") {
                await leading.wait()
                while !Task.isCancelled {
                    try await Task.sleep(for: resyncInterval)
                    await enqueueAll()  // drift the watches missed is found here at the latest
                }
            },
            applications,
            deployments,
        ]
        do {
            try await Daemon.serviceGroup(services, shutdownGrace: shutdownGrace).run()
        } catch {
            log("stopped on error: \(error)", level: "error")
            await client.shutdown()
            throw ExitCode(1)
        }
        await client.shutdown()
        log("stopped")
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
