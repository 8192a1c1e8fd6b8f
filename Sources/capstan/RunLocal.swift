import ArgumentParser
import CapstanControllers
import CapstanIntegrations
import CapstanKube
import CapstanLocal
import CapstanModel
import CapstanRuntime
import Foundation
import ServiceLifecycle
import UnixSignals
#if canImport(Glibc)
import Glibc
#endif

/// `capstan run --spec-dir`: a spec directory's objects, the state directory, and the platform
/// that runs them (this host, or a cluster with --platform kube), wired into one manager.
final class LocalDaemon: Sendable {
    let options: Run
    let log: DaemonLog
    let store: StateStore
    let owner: StateOwner
    let identity: StateDirectoryIdentity
    let cache: ObjectCache
    let objects: LocalObjectStore
    let metrics: RuntimeMetrics
    /// The builtin metrics AlertRules read, also exported on `/metrics`.
    let builtinMetrics: MetricsService
    let ready = Synchronized(false)
    let elector: LeaderElector<ContinuousClock>?
    let manager: ObjectManager
    /// The platform: this host's supervisor, or a cluster.
    let local: LocalWorkloadPlatform?
    let cluster: ClusterTarget?
    let source: SpecDirectorySource
    /// The git source, with --git-url: it fetches, and the spec-directory source reads its
    /// checkout (`specDirectory`).
    let git: GitSpecSource?
    let gitLoop: GitLoop?
    let specDirectory: String

    /// Opens the state directory (one acting owner for the daemon's whole life: alone, or
    /// among daemons that elect a leader, never both), reads it, and builds the platform and
    /// the controllers. Exit status 2 when any of it cannot be done.
    init(_ options: Run, log: DaemonLog) throws {
        self.options = options
        self.log = log
        let directory = options.state.resolved
        let cache = ObjectCache(), metrics = RuntimeMetrics()
        self.cache = cache
        self.metrics = metrics
        do {
            store = try StateStore(directory: directory)
            owner = try StateOwner(directory: directory, mode: options.leaderElect ? .electing : .exclusive)
            guard let identity = StateDirectoryIdentity.current(of: directory) else {
                throw UserError("the state directory \(directory) went away while starting")
            }
            self.identity = identity
            try LocalObjectStore.load(store, into: cache)
        } catch {
            log("\(error)", level: "error")
            throw ExitCode(2)
        }
        let objects = LocalObjectStore(store: store, cache: cache, log: { log($0, level: "warning") })
        self.objects = objects
        let elector = options.leaderElect ? LeaderElector(config: options.electionConfig!, store: store, clock: ContinuousClock(), log: { log($0) }) : nil
        self.elector = elector
        let managerOptions = ObjectManager.Options(
            concurrency: options.concurrency, timeout: try KubeDuration.parse(options.reconcileTimeout).duration, metrics: metrics,
            observe: Daemon.outcomeObserver(metrics: metrics, events: objects, timeout: options.reconcileTimeout, log: log),
            admit: Self.fence(elector, log: log))
        let manager = ObjectManager(options: managerOptions)
        self.manager = manager
        objects.statusWatchers.set { key, resource in await manager.notifyWatchers(key, resource) }
        let (local, cluster) = try Self.platform(options, store: store, events: objects, manager: manager, metrics: metrics, admit: managerOptions.admit, log: log)
        (self.local, self.cluster) = (local, cluster)
        var platforms: Platforms
        if let local {
            let backups = LocalBackups(executable: LocalBackups.currentExecutable, stateDirectory: options.state.resolved, vault: local.vault,
                                       version: Capstan.version, enqueue: { key in await manager.add(key) })
            platforms = Platforms(artifacts: local, workload: local, traffic: local, revisions: objects, secrets: local.vault,
                                  actions: ProcessActions(directory: options.state.resolved + "/actions", http: HTTPCheck.get), backups: backups)
        } else {
            let workload = KubeWorkload(client: cluster!.client, children: cluster!.children, ownership: .inventory(StoreChildInventory(store: store)))
            // Secrets go to the cluster; with no custom resource to own them, their labels say whose they are.
            platforms = Platforms(artifacts: KubeArtifacts(), workload: workload, traffic: workload, revisions: objects,
                                  secrets: KubeSecrets(client: cluster!.client, uid: { _ in nil }), actions: KubeDaemon.actions,
                                  backups: KubeBackups(client: cluster!.client, image: options.kube.backupImage, version: Capstan.version, uid: { _ in nil },
                                                       recover: KubeBackupRecovery.recover(client: cluster!.client)))
        }
        let builtinMetrics = MetricsService(source: BuiltinMetricsSource(cache: cache, workload: platforms.workload, probes: local?.probes, host: Daemon.host.samples))
        self.builtinMetrics = builtinMetrics
        platforms.metrics = builtinMetrics
        platforms.notifier = AlertNotifier()
        Controllers.register(on: manager, store: objects, events: objects, cache: cache, platforms: platforms, prune: options.prune,
                             referrerDelay: cluster == nil ? .zero : Daemon.clusterReferrerDelay, metrics: metrics)
        git = options.git.source().map { GitSpecSource($0, stateDirectory: options.state.resolved) }
        specDirectory = git?.specDirectory ?? options.specDirectory
        source = SpecDirectorySource(root: specDirectory, store: store, cache: cache, allowEmpty: options.allowEmpty,
                                     maxFileSize: options.maxFileBytes, log: { log($0, level: $1.rawValue) }) { key, resource in
            await manager.enqueue(key, resource)
        }
        let (source, store) = (source, store)
        let webhook = options.git.webhookSecret().map { GitLoop.Webhook(address: options.git.webhookAddress ?? "", secret: $0) }
        gitLoop = git.map { GitLoop(git: $0, interval: options.git.interval, webhook: webhook, source: source, store: store, metrics: metrics,
                                    log: { log($0, level: $1) }) }
    }

    /// With leader election every action is fenced: a leader frozen past its renew deadline
    /// (SIGSTOP, a paused machine) stops the moment it resumes, before it can act beside the
    /// daemon that leads by then.
    static func fence(_ elector: LeaderElector<ContinuousClock>?, log: DaemonLog) -> @Sendable () -> Bool {
        {
            guard let elector, !elector.holdsValidLease else { return true }
            guard elector.hasLed else { return false }  // a follower acts on nothing
            log("this daemon's lease lapsed (it was frozen, or renewals failed): stopping every reconcile and exiting", level: "error")
            Glibc.exit(1)
        }
    }

    /// Local: supervised processes (readiness changes wake the Deployment's reconcile).
    /// Kube: apps/v1 Deployments on a cluster (GitOps to it).
    static func platform(_ options: Run, store: StateStore, events: LocalObjectStore, manager: ObjectManager, metrics: RuntimeMetrics,
                         admit: @escaping @Sendable () -> Bool, log: DaemonLog) throws -> (LocalWorkloadPlatform?, ClusterTarget?) {
        if options.platform == .kube {
            do {
                return (nil, try ClusterTarget(options: options.kube, log: log))
            } catch {
                log("\(error)", level: "error")
                throw ExitCode(2)
            }
        }
        do {
            return (try LocalWorkloadPlatform(
                stateDirectory: options.state.resolved, store: store, events: events, routerHost: options.routerAddress, logRotation: options.logRotation,
                enqueue: { key in await manager.add(key) }, restarted: { metrics.instanceRestarted() }, admit: admit), nil)
        } catch {
            log("cannot start the process supervisor: \(error)", level: "error")
            throw ExitCode(2)
        }
    }

    // MARK: - Running

    func run() async throws {
        let reading = options.git.url.map { "\(GitSpecSource.safe($0)) (\(options.git.ref), \(options.git.path))" } ?? options.specDirectory
        log("capstan \(Capstan.version) reading \(reading), state in \(options.state.resolved)" + (cluster.map { ", running Deployments on \($0.server)" } ?? ""))
        // Watching starts before the first read: a file changed between the read and the
        // watch would otherwise wait for the resync (a clean-clone CI run lost a deletion so).
        // A git checkout never changes in place (a new commit is a new snapshot): no watch.
        var watcher: DirectoryWatcher?
        if git == nil {
            do {
                watcher = try DirectoryWatcher(root: options.specDirectory, warn: { [log] in log($0, level: "warning") })
            } catch {
                // Out of inotify instances or watches: the daemon still runs, on the resync.
                log("\(error): file changes are seen at the resync (every \(options.resync)) and on SIGHUP", level: "warning")
            }
        }
        if elector == nil {
            try await lead()
            metrics.leader(true)
        } else {
            metrics.leader(false)
            log("leader election on: waiting to lead as \(options.electionConfig!.identity)")
        }
        let group = try Daemon.serviceGroup(try services(watcher), shutdownGrace: options.shutdownGrace)
        ready.update { $0 = true }
        do {
            try await group.run()
        } catch {
            log("stopped on error: \(error)", level: "error")
            watcher?.stop()
            throw ExitCode(1)
        }
        watcher?.stop()
        await finish()
    }

    /// What a daemon does once it acts: read the specs, adopt the instances a previous daemon
    /// left running (not started again), reconcile everything once (level-based: a restart
    /// loses nothing), then open the gate for the rest.
    @Sendable func lead() async throws {
        // A follower's cache is refreshed every 5 s: what the last leader did since (an object
        // it deleted, a status it wrote) is read now, before anything is acted on. (The fault
        // loop caught a new leader starting a Deployment the old one had deleted a second before.)
        if elector != nil { try LocalObjectStore.load(store, into: cache) }
        if let gitLoop {
            await gitLoop.firstCheckout()
        } else {
            Self.recordDirectorySource(store, path: specDirectory, log: log)
        }
        let summary = try await source.sync()
        log("read \(summary.applied) objects (\(summary.problems) problems)")
        await gitLoop?.afterFirstRead()
        if summary.problems > 0 { metrics.sourceError(source: "directory") }
        if let local {
            let (adopted, restarted, unavailable) = await local.adopt()
            if adopted + restarted > 0 { log("adopted \(adopted) running instance(s), restarted \(restarted) that had exited") }
            for problem in unavailable { log("cannot open a router port again: \(problem)", level: "warning") }
        }
        await enqueueAll()
        await manager.leading.open()
    }

    /// Everything known, and every owner of something in the inventory (deleted while no
    /// daemon ran: its reconcile removes what it left).
    @Sendable func enqueueAll() async {
        for object in cache.list() { await manager.add(object.key) }
        let owners = local?.owners() ?? Set(((try? store.inventory(type: StoreChildInventory.type)) ?? []).map(\.owner))
        for owner in owners where cache.get(owner) == nil { await manager.add(owner) }
        guard let local else { return }
        for directory in local.pruneLogs(keeping: Set(cache.list().map(\.key))) {
            log("removed the logs of a Deployment deleted more than a day ago: \(directory)")
        }
        // Instances of this state directory that no inventory knows are stopped (each an
        // OrphanDeleted event): nothing runs that `capstan down` could not find.
        for (owner, line) in await local.stopUnknownInstances() {
            log(line, level: "warning")
            if let owner { await objects.record(.warning, reason: "OrphanDeleted", message: line, about: owner) }
        }
    }

    /// The services in stopping order reversed: the election stops last (the lease is released
    /// after the controllers finished their in-flight work), the controllers first.
    func services(_ watcher: DirectoryWatcher?) throws -> [any Service] {
        let (host, port) = options.metricsHostPort!
        let server = Daemon.httpServer(host: host, port: port, address: options.metricsAddress, metrics: metrics, builtin: builtinMetrics, ready: { [ready] in ready.value },
                                       leader: { [elector] in elector.map { $0.isLeader } }, log: log)
        let watches = cluster?.watches { [manager] owner, delay in
            if await manager.leading.opened { await manager.add(owner, after: delay) }
        } ?? []
        return election() + [stateWatch(), server, manager.gauges { [cache, metrics] in Daemon.readiness(cache, metrics) },
                             try sourceLoops(watcher), requestLoop(), Daemon.heapTrim()] + manager.controllers + watches
    }

    func election() -> [any Service] {
        guard let elector else { return [] }
        let (store, cache, manager, lease) = (store, cache, manager, options.electionConfig!.leaseName)
        let leaseEvent: @Sendable (EventType, String, String) -> Void = { type, reason, message in
            _ = try? store.recordEvent(type, reason: reason, message: message, about: ObjectReference(kind: "Lease", namespace: "default", name: lease), at: Date())
        }
        return [Daemon.election(elector, renewDeadline: "\(KubeDuration(elector.config.renewDeadline))", metrics: metrics, log: log, whileFollowing: {
            // A follower keeps its cache warm from the store the leader writes.
            while !Task.isCancelled, !(await manager.leading.opened) {
                try? await Task.sleep(for: .seconds(5))
                if !Task.isCancelled, !(await manager.leading.opened) { try? LocalObjectStore.load(store, into: cache) }
            }
        }, leaseEvent: leaseEvent, lead: lead)]
    }

    /// The state directory deleted, replaced or unmounted under the daemon: it stops acting at
    /// once (a daemon writing on into an unlinked database while the next one starts a second
    /// set of instances orphans the first for good).
    func stateWatch() -> LoopService {
        let (identity, directory, log) = (identity, options.state.resolved, log)
        return LoopService("state directory watch") {
            while !Task.isCancelled {
                try await Task.sleep(for: .milliseconds(200))
                if let change = identity.change(in: directory) {
                    log("\(change) under the running daemon: stopping at once, without touching anything. The instances it started keep running: put the directory back and start a daemon to adopt them, or stop them with `capstan down --state-dir \(directory)` (it finds them by their environment)", level: "error")
                    Glibc.exit(4)
                }
            }
        }
    }

    /// `capstan source` for a spec directory: which one, watched.
    static func recordDirectorySource(_ store: StateStore, path: String, log: DaemonLog) {
        let fields: [String: Any] = ["type": "directory", "path": path]
        guard let data = try? JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys]) else { return }
        do {
            try store.keepSourceStatuses(["directory"])
            try store.setSourceStatus("directory", document: String(decoding: data, as: UTF8.self))
        } catch {
            log("cannot record the source's status: \(error)", level: "warning")
        }
    }

    /// File changes (at once), the resync (drift behind Capstan's back is found there at the
    /// latest) and SIGHUP.
    func sourceLoops(_ watcher: DirectoryWatcher?) throws -> LoopService {
        let resync = try KubeDuration.parse(options.resync).duration
        let (source, manager, metrics, log, specDirectory, gitLoop) = (source, manager, metrics, log, specDirectory, gitLoop)
        return LoopService("spec directory") { [self] in
            await manager.leading.wait()
            await withTaskGroup(of: Void.self) { group in
                if let gitLoop { group.addTask { await gitLoop.run() } }
                if let gitLoop, let (host, port) = options.git.webhookHostPort {
                    group.addTask { await GitWebhooks.serve(gitLoop, host: host, port: port, log: log) }
                }
                if let watcher { group.addTask {
                    for await batch in watcher.changes {
                        do {
                            let summary = try await source.sync(changed: batch.overflowed ? nil : batch.paths)
                            if summary.problems > 0 { metrics.sourceError(source: "directory") }
                            log("change in \(batch.paths.count) path(s)\(summary.partial ? "" : " (full read)"): \(summary.changed) object(s) changed, \(summary.deleted) deleted, \(summary.kept + summary.withheld) held at their last good version")
                        } catch {
                            // Read again in a second, with whatever changes meanwhile: a change
                            // is not left to the resync.
                            log("sync failed (again in 1 s): \(error)", level: "error")
                            try? await Task.sleep(for: .seconds(1))
                            watcher.redo(batch)
                        }
                    }
                } }
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: resync)
                        if Task.isCancelled { break }
                        _ = try? await source.sync()
                        await self.enqueueAll()
                    }
                }
                group.addTask {
                    for await _ in await UnixSignalsSequence(trapping: .sighup) {
                        log("SIGHUP: re-reading \(specDirectory)")
                        _ = try? await source.sync()
                    }
                }
                await group.waitForAll()
            }
        }
    }

    /// Requests from the CLI, checked twice a second. A request past its end never runs (the
    /// CLI that made it gave up or said when); an object's own requests are taken by its
    /// reconcile (the reconciler writes the status, no one else), which only needs waking.
    func requestLoop() -> LoopService {
        let (store, objects, manager, cache, log) = (store, objects, manager, cache, log)
        return LoopService("requests") {
            await manager.leading.wait()
            while !Task.isCancelled {
                try await Task.sleep(for: .milliseconds(500))
                let now = Date()
                for request in (try? store.expireRequests(now: now)) ?? [] {
                    let message = "request \(request.id) (\(request.type)\(request.value.isEmpty ? "" : " \(request.value)")) expired at \(Timestamp(request.expiresAt)) before a daemon took it: not done"
                    log("\(request.key): \(message)", level: "warning")
                    await objects.record(.warning, reason: "RequestExpired", message: message, about: request.key)
                }
                let pending = (try? store.pendingRequests(now: now)) ?? []
                objects.noticePending(Set(pending.map(\.key)))
                for request in pending {
                    guard request.type == "reconcile" else {
                        await manager.add(request.key)
                        continue
                    }
                    // Taken first: a request the CLI withdraws at this moment is not acted on.
                    guard (try? store.claimRequest(request.id, at: now)) == true else { continue }
                    log("reconcile of \(request.key) requested")
                    await objects.record(.normal, reason: "ReconcileRequested", message: "requested at \(request.value)", about: request.key)
                    await manager.enqueue(request.key, cache.get(request.key)?.resource)
                }
            }
        }
    }

    /// After a graceful stop: --down-on-exit stops the instances; otherwise say which keep running.
    func finish() async {
        if let local {
            if options.downOnExit, await manager.leading.opened {
                let stopped = await local.down()
                log("stopped \(stopped.count) instance(s) (--down-on-exit)")
            } else {
                let running = local.owners().count
                if running > 0 {
                    log("instances of \(running) deployment(s) keep running (their router ports are closed until a daemon runs); stop them with: capstan down --state-dir \(options.state.resolved)")
                }
            }
            await local.shutdown()
        }
        await cluster?.client.shutdown()
        withExtendedLifetime(owner) {}
        log("stopped")
    }
}
