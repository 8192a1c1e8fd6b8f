import CapstanControllers
import CapstanModel
import CapstanRuntime
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The routers of every Deployment, by owner and role (its port; its BlueGreen preview port),
/// each serving one track's ready instances; backends may arrive before the port is bound.
actor RouterSet {
    enum Role: Sendable, Hashable, CaseIterable { case main, preview }
    struct Key: Hashable { var owner: ObjectKey; var role: Role }

    private var routers: [Key: TCPRouter] = [:]
    /// The tracks each router serves, with their shares of its connections.
    private var serves: [Key: [String: Int]] = [:]
    private var backends: [ObjectKey: [Backend]] = [:]

    /// Serves `port` over `track`'s ready instances (nil port: closed). Changing only the track
    /// is immediate: new connections go to the new track, open ones finish.
    func expose(_ owner: ObjectKey, _ role: Role = .main, host: String, port: Int?, track: String = Track.stable.rawValue) async throws(WorkloadError) {
        try await expose(owner, role, host: host, port: port, weights: [track: 100])
    }

    /// Serves `port` over the ready instances of the tracks in `weights`, each track receiving
    /// its share of the connections (a canary beside the stable track); a track without ready
    /// instances receives none (its share goes to the others).
    func expose(_ owner: ObjectKey, _ role: Role = .main, host: String, port: Int?, weights: [String: Int]) async throws(WorkloadError) {
        let key = Key(owner: owner, role: role)
        serves[key] = weights
        if let existing = routers[key], existing.port == port, existing.host == host {
            existing.setBackends(served(key))
            return
        }
        if let existing = routers.removeValue(forKey: key) { await existing.close() }
        guard let port else { return }
        do {
            let router = try await TCPRouter(host: host, port: port, backends: served(key))
            // Readiness may have changed while the port was being bound (this actor is
            // re-entered at the await): the router gets what is current now.
            router.setBackends(served(key))
            routers[key] = router
        } catch {
            throw WorkloadError("PortUnavailable", "cannot listen on \(host):\(port): \(Prober.describe(error))")
        }
    }

    private func served(_ key: Key) -> [Backend] {
        Self.weighted(backends[key.owner] ?? [], serves[key] ?? [Track.stable.rawValue: 100])
    }

    /// The backends of the weighted tracks, each weighted so that its track's instances
    /// together receive the track's share: an instance's weight is its track's share times
    /// the number of instances of every other track.
    /// The key among a router's weights that asks for the split by instance count.
    static let perInstance = "*"

    /// With `perInstance` among the weights (a `replicas` split), every instance of the served
    /// tracks is weighted alike: the share is the ratio of ready instances, as one Service over
    /// both tracks gives it.
    static func weighted(_ backends: [Backend], _ weights: [String: Int]) -> [Backend] {
        let served = backends.filter { $0.track != perInstance && (weights[$0.track] ?? 0) > 0 }
        var counts: [String: Int] = [:]
        for backend in served { counts[backend.track, default: 0] += 1 }
        guard counts.count > 1, weights[perInstance] == nil else { return served.map { Backend(port: $0.port, weight: 1, track: $0.track) } }
        return served.map { backend in
            let others = counts.filter { $0.key != backend.track }.values.reduce(1, *)
            return Backend(port: backend.port, weight: weights[backend.track, default: 0] * others, track: backend.track)
        }
    }

    func setBackends(_ owner: ObjectKey, _ list: [Backend]) {
        backends[owner] = list
        for role in Role.allCases {
            let key = Key(owner: owner, role: role)
            routers[key]?.setBackends(served(key))
        }
    }

    /// Waits until no connection to the backend port is open, at most `timeout`.
    func drain(_ owner: ObjectKey, port: Int, timeout: Duration) async {
        let open = Role.allCases.compactMap { routers[Key(owner: owner, role: $0)] }
        let deadline = ContinuousClock.now + timeout
        while open.contains(where: { $0.activeConnections(to: port) > 0 }) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Closes the owner's routers; returns what was closed.
    func close(_ owner: ObjectKey) async -> [String] {
        backends[owner] = nil
        var closed: [String] = []
        for role in Role.allCases {
            let key = Key(owner: owner, role: role)
            serves[key] = nil
            guard let router = routers.removeValue(forKey: key) else { continue }
            await router.close()
            closed.append("listener \(router.host):\(router.port)")
        }
        return closed
    }

    func closeAll() async {
        for owner in Set(routers.keys.map(\.owner)) { _ = await close(owner) }
    }

    func listening(_ owner: ObjectKey, _ role: Role = .main) -> (host: String, port: Int)? {
        routers[Key(owner: owner, role: role)].map { ($0.host, $0.port) }
    }
}

/// The local platform for Applications and Deployments: artifacts, releases, supervised
/// instances and the router, all under the state directory.
public final class LocalWorkloadPlatform: WorkloadPlatform, TrafficPlatform, ArtifactPlatform {
    public static let releaseType = "release"

    public let stateDirectory: String
    public let routerHost: String
    public let artifacts: Artifacts
    public let supervisor: Supervisor
    /// The secrets instances' environments take values from.
    public let vault: Vault
    /// The health checks of the last five minutes (the builtin probe metrics).
    public let probes: ProbeHistory
    let routers = RouterSet()
    let store: StateStore
    /// How long a stopped instance's connections may drain before it gets SIGTERM.
    let drainTimeout: Duration

    /// `enqueue` is called when an instance's readiness changes (its Deployment's reconcile).
    /// How every new instance's log is bounded (the writer rotates at exactly this size).
    let logRotation: LogRotation

    public init(stateDirectory: String, store: StateStore, events: any EventRecorder, routerHost: String = "127.0.0.1",
                grace: Duration = .seconds(10), drainTimeout: Duration = .seconds(2),
                logRotation: LogRotation = LogRotation(maxBytes: 10 << 20, files: 3),
                enqueue: @escaping @Sendable (ObjectKey) async -> Void, restarted: @escaping @Sendable () -> Void = {},
                admit: @escaping @Sendable () -> Bool = { true }) throws(SpawnError) {
        // Every path below it, and every link target written, is absolute: a relative state
        // directory (the default ./.capstan) would make links that resolve from their own folder.
        let stateDirectory = FilePaths.absolute(stateDirectory)
        self.stateDirectory = stateDirectory
        self.routerHost = routerHost
        self.store = store
        self.drainTimeout = drainTimeout
        self.logRotation = logRotation
        artifacts = Artifacts(stateDirectory: stateDirectory, store: store)
        let vault = Vault(store: store, stateDirectory: stateDirectory)
        self.vault = vault
        let routers = routers
        let probes = ProbeHistory()
        self.probes = probes
        supervisor = try Supervisor(store: store, events: events, grace: grace, maxLogBytes: logRotation.maxBytes, logFiles: logRotation.files,
                                    onReady: { key, backends in await routers.setBackends(key, backends) },
                                    onChange: enqueue, restarted: restarted, admit: admit, secrets: Self.resolver(vault), probes: probes)
    }

    static func resolver(_ vault: Vault) -> SecretResolver {
        { namespace, name, key in String(decoding: try vault.value(of: name, key: key, namespace: namespace), as: UTF8.self) }
    }

    func deploymentDirectory(_ key: ObjectKey) -> String { "\(stateDirectory)/deployments/\(key.namespace)/\(key.name)" }

    // MARK: - ArtifactPlatform

    public func checkSource(of application: Application, specFile: String) async -> SourceCheck {
        SourceReachability.check(application, specFile: specFile)
    }

    public func prepare(_ template: WorkloadTemplate, namespace: String) async throws(WorkloadError) -> ArtifactStatus {
        try await artifacts.prepare(template, namespace: namespace).artifact
    }

    public func artifacts(of application: ObjectKey) async -> [ArtifactStatus] {
        await artifacts.artifacts(of: application)
    }

    public func prune(_ application: ObjectKey, keep: Int, inUse: Set<String>) async -> [String] {
        // Versions a release still points at are in use too (rollbacks need them).
        let prefix = "\(stateDirectory)/artifacts/\(application.namespace)/\(application.name)/"
        var used = inUse
        for entry in (try? store.inventory(type: Self.releaseType)) ?? [] where entry.data["artifact"]?.hasPrefix(prefix) ?? false {
            used.insert(String(entry.data["artifact"]!.dropFirst(prefix.count)))
        }
        return await artifacts.prune(application, keep: keep, inUse: used)
    }

    // MARK: - WorkloadPlatform

    public func prepare(_ revision: WorkloadRevision, for deployment: ObjectKey, current: Bool) async throws(WorkloadError) -> [String] {
        let (_, artifact) = try await artifacts.prepare(revision.template, namespace: deployment.namespace)
        let directory = deploymentDirectory(deployment)
        let releases = directory + "/releases"
        var repairs: [String] = []
        do {
            try FileManager.default.createDirectory(atPath: releases, withIntermediateDirectories: true)
        } catch {
            throw WorkloadError("StartFailed", "cannot create \(releases): \(error.localizedDescription)")
        }
        let release = "\(releases)/\(revision.number)"
        let id = "\(deployment.namespace)/\(deployment.name)/\(revision.number)"
        let known = ((try? store.inventory(of: deployment, type: Self.releaseType)) ?? []).first { $0.id == id }
        // Recorded before it is made: a daemon killed in between leaves a record of nothing
        // (made again, or removed with the Deployment), never a release nobody knows about.
        if known?.data["artifact"] != artifact {
            try? store.recordInventory(.init(type: Self.releaseType, id: id, owner: deployment, data: ["artifact": artifact, "path": release], createdAt: Date()))
        }
        // A release link that had to change though the release was known was removed, moved or
        // broken (an older build wrote relative targets that did not resolve): a repair.
        if Self.link(release, to: artifact), known != nil {
            repairs.append("release \(revision.number) restored")
        }
        // The current link changes with a new revision; for a known one it changes only when
        // someone removed or moved it.
        if current, Self.link(directory + "/current", to: "releases/\(revision.number)"), known != nil {
            repairs.append("current symlink restored")
        }
        return repairs
    }

    /// Points `path` at `target` (a new symlink renamed over the old one: atomic); returns
    /// whether it had to change.
    @discardableResult
    static func link(_ path: String, to target: String) -> Bool {
        if (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) == target { return false }
        let temporary = path + ".tmp-\(UUID().uuidString.prefix(8))"
        guard symlink(target, temporary) == 0 else { return false }
        if rename(temporary, path) != 0 {
            // A directory in the way (someone replaced the link): remove it and retry.
            Artifacts.removeTree(path)
            if rename(temporary, path) != 0 { unlink(temporary) }
        }
        return true
    }

    func instances(of deployment: ObjectKey) async -> [InstanceState] {
        await supervisor.instances(of: deployment)
    }

    /// Starts one instance of the revision on a track; returns its id.
    func start(_ revision: WorkloadRevision, track: Track, for deployment: ObjectKey, memoryLimit: Int64?) async throws(WorkloadError) -> String {
        let template = revision.template
        guard !template.spec.command.isEmpty else {
            throw WorkloadError("StartFailed", "application \(template.application) has no command to run on the local platform")
        }
        let directory = "\(deploymentDirectory(deployment))/releases/\(revision.number)"
        let id = "\(deployment.name)-\(revision.hash.prefix(8))-\(Self.randomSuffix())"
        guard let port = Self.freePort() else { throw WorkloadError("StartFailed", "no free port on 127.0.0.1 for instance \(id)") }
        let daemon = ProcessInfo.processInfo.environment
        var base: [(String, String)] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "TMPDIR"].compactMap { name in daemon[name].map { (name, $0) } }
        if daemon["PATH"] == nil { base.append(("PATH", "/usr/local/bin:/usr/bin:/bin")) }
        base += [
            ("PORT", String(port)), ("CAPSTAN_INSTANCE", id), ("CAPSTAN_REVISION", String(revision.number)),
            ("CAPSTAN_VERSION", template.version), ("CAPSTAN_DEPLOYMENT", deployment.name),
            ("CAPSTAN_APPLICATION", template.application), ("CAPSTAN_NAMESPACE", deployment.namespace),
            // The marker that finds the instance without the database (MarkedInstance).
            (MarkedInstance.stateVariable, stateDirectory),
        ]
        let (environment, deferred, secretNames) = EnvExpansion.environment(base: base, variables: template.env)
        if let leak = template.spec.command.lazy.map(EnvExpansion.references).first(where: { !$0.isDisjoint(with: secretNames) }) {
            throw WorkloadError("StartFailed", "the command refers to $(\(leak.intersection(secretNames).sorted().joined(separator: "), $("))), which holds a secret: a secret is never put on a command line (anyone on the host can read it there); let the program read it from its environment")
        }
        // Every secret must be there before an instance starts (each start resolves them again).
        var check = environment
        do {
            try EnvExpansion.resolve(deferred, into: &check) { name, key in try Self.resolver(vault)(deployment.namespace, name, key) }
        } catch let error as SecretError {
            throw WorkloadError(error.reason == "SecretNotFound" ? "SecretNotFound" : "SecretUnavailable", "env: \(error.message)")
        } catch {
            throw WorkloadError("SecretUnavailable", "env: \(error)")
        }
        let command = template.spec.command.map { EnvExpansion.expand($0) { environment[$0] } }
        guard Spawner.resolve(command[0], path: environment["PATH"], workingDirectory: directory) != nil else {
            throw WorkloadError("StartFailed", "command \"\(command[0])\" not found (PATH=\(environment["PATH"] ?? "")) or not executable")
        }
        let logDirectory = "\(stateDirectory)/logs/\(deployment.namespace)/\(deployment.name)"
        try? FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
        let launch = InstanceLaunch(
            id: id, revision: revision.number, templateHash: revision.hash, version: template.version, port: port,
            command: command, environment: environment, workingDirectory: directory, logPath: "\(logDirectory)/\(id).log",
            memoryLimit: memoryLimit.map { UInt64(max(0, $0)) },
            probe: ProbeSpec(template.spec.healthCheck, ports: template.spec.ports, instancePort: port),
            logMaxBytes: logRotation.maxBytes, logFiles: logRotation.files, track: track == .stable ? nil : track.rawValue,
            deferred: deferred.isEmpty ? nil : deferred)
        do {
            try await supervisor.start(launch, owner: deployment)
        } catch {
            throw WorkloadError("StartFailed", error.description)
        }
        return id
    }

    /// Takes the instance out of traffic, lets its connections drain, then stops it (SIGTERM,
    /// SIGKILL after the grace period).
    func stop(instance: String, of deployment: ObjectKey) async {
        let routers = routers
        let timeout = drainTimeout
        await supervisor.stop(instance) { port in await routers.drain(deployment, port: port, timeout: timeout) }
    }

    /// Listeners are in the inventory too, so that a restarted daemon serves a Deployment
    /// whose spec is gone but whose instances were kept (prune disabled).
    public static let listenerType = "listener"

    func recordListener(_ deployment: ObjectKey, port: Int?, weights: [Track: Int] = [.stable: 100], perInstance: Bool = false) {
        let id = port.map { "\(routerHost):\($0)" }
        let served = weights.filter { $0.value > 0 }
        // `track` (the main one) is what an older daemon reads; `weights` a canary's split.
        var data = ["host": routerHost, "track": (served.max { ($0.value, $1.key) < ($1.value, $0.key) }?.key ?? .stable).rawValue]
        if served.count > 1 {
            data["weights"] = ((perInstance ? ["\(RouterSet.perInstance)=1"] : []) + served.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }).joined(separator: ",")
        }
        if let port { data["port"] = String(port) }
        let existing = (try? store.inventory(of: deployment, type: Self.listenerType)) ?? []
        guard existing.map(\.id) != (id.map { [$0] } ?? []) || existing.first?.data != data else { return }
        for entry in existing { _ = try? store.removeInventory(type: Self.listenerType, id: entry.id) }
        if let id {
            _ = try? store.recordInventory(.init(type: Self.listenerType, id: id, owner: deployment, data: data, createdAt: Date()))
        }
    }

    /// The split a listener's record keeps: its tracks' weights, or its one track.
    static func weights(_ data: [String: String]) -> [String: Int] {
        var weights: [String: Int] = [:]
        for part in (data["weights"] ?? "").split(separator: ",") {
            let pair = part.split(separator: "=", maxSplits: 1)
            if pair.count == 2, let weight = Int(pair[1]) { weights[String(pair[0])] = weight }
        }
        return weights.isEmpty ? [data["track"] ?? Track.stable.rawValue: 100] : weights
    }

    public func pruneReleases(of deployment: ObjectKey, keeping revisions: Set<Int>) async {
        let inUse = Set(await supervisor.instances(of: deployment).map(\.revision))
        for entry in (try? store.inventory(of: deployment, type: Self.releaseType)) ?? [] {
            guard let number = Int(entry.id.split(separator: "/").last ?? ""), !revisions.contains(number), !inUse.contains(number) else { continue }
            if let path = entry.data["path"] { unlink(path) }
            _ = try? store.removeInventory(type: Self.releaseType, id: entry.id)
        }
    }

    public func remove(_ deployment: ObjectKey, dryRun: Bool) async -> [String] {
        if dryRun {
            var would: [String] = []
            for role in RouterSet.Role.allCases {
                if let (host, port) = await routers.listening(deployment, role) { would.append("listener \(host):\(port)") }
            }
            would += await supervisor.instances(of: deployment).map { "instance \($0.id)" }
            if FileManager.default.fileExists(atPath: deploymentDirectory(deployment)) { would.append("releases in \(deploymentDirectory(deployment))") }
            return would
        }
        var removed: [String] = []
        removed += await routers.close(deployment)
        recordListener(deployment, port: nil)
        removeTrackRecords(of: deployment)
        let routers = routers
        let timeout = drainTimeout
        let stopped = await supervisor.stopAll(of: deployment) { port in await routers.drain(deployment, port: port, timeout: timeout) }
        removed += stopped.map { "instance \($0)" }
        // The files first, then their records: a daemon killed in between finds the records
        // at its sweep and finishes the job.
        let directory = deploymentDirectory(deployment)
        if FileManager.default.fileExists(atPath: directory) {
            Artifacts.removeTree(directory)
            removed.append("releases in \(directory)")
        }
        let releases = (try? store.inventory(of: deployment, type: Self.releaseType)) ?? []
        for entry in releases { _ = try? store.removeInventory(type: Self.releaseType, id: entry.id) }
        return removed
    }

    /// Adopts the instances a previous daemon left running (restarts the dead ones) and opens
    /// their Deployments' router ports again. Returns the ports it could not open.
    public func adopt() async -> (adopted: Int, restarted: Int, unavailable: [String]) {
        removeInterrupted()
        let (adopted, restarted) = await supervisor.adopt()
        var unavailable: [String] = []
        for entry in (try? store.inventory(type: Self.listenerType)) ?? [] {
            guard let port = Int(entry.data["port"] ?? ""), entry.data["host"] == routerHost else { continue }
            do {
                try await routers.expose(entry.owner, host: routerHost, port: port, weights: Self.weights(entry.data))
            } catch {
                unavailable.append("\(entry.owner): \(error.message)")
            }
        }
        return (adopted, restarted, unavailable)
    }

    /// Removes what a daemon killed mid-step left half-made: temporary links beside `current`
    /// and releases, and artifacts whose copy or build did not finish. (Only the acting daemon
    /// calls this, before it reconciles anything: nothing of its own is in progress.)
    @discardableResult
    func removeInterrupted() -> [String] {
        let manager = FileManager.default
        var removed: [String] = []
        func sweep(_ directory: String, depth: Int) {
            for name in (try? manager.contentsOfDirectory(atPath: directory)) ?? [] {
                let path = directory + "/" + name
                // Temporary names end in ".tmp-" and 8 characters (Artifacts.build, link).
                if let marker = name.range(of: ".tmp-", options: .backwards), name[marker.upperBound...].count == 8 {
                    Artifacts.removeTree(path)
                    removed.append(path)
                } else if depth > 0, (try? manager.destinationOfSymbolicLink(atPath: path)) == nil {
                    sweep(path, depth: depth - 1)
                }
            }
        }
        sweep(stateDirectory + "/artifacts", depth: 2)    // artifacts/NS/APP/.VERSION.tmp-*
        sweep(stateDirectory + "/deployments", depth: 3)  // deployments/NS/NAME/{current,releases/N}.tmp-*
        return removed
    }

    /// The owners that have something in the inventory (for the orphan sweep): Deployments
    /// (instances, releases) and Applications (artifacts).
    public func owners() -> Set<ObjectKey> {
        Set(((try? store.inventory()) ?? []).filter { $0.type != StateStore.pruneDisabledType }.map(\.owner))
    }

    /// Removes the logs of Deployments that no longer exist once nothing was written to them
    /// for `age` (a deleted Deployment's logs stay a day, for the post-mortem).
    public func pruneLogs(keeping existing: Set<ObjectKey>, olderThan age: TimeInterval = 86_400) -> [String] {
        let manager = FileManager.default
        let logs = stateDirectory + "/logs"
        var removed: [String] = []
        for namespace in (try? manager.contentsOfDirectory(atPath: logs)) ?? [] {
            for name in (try? manager.contentsOfDirectory(atPath: "\(logs)/\(namespace)")) ?? [] {
                let key = ObjectKey(kind: .deployment, namespace: namespace, name: name)
                let directory = "\(logs)/\(namespace)/\(name)"
                guard !existing.contains(key), !owners().contains(key) else { continue }
                let files = [""] + ((try? manager.contentsOfDirectory(atPath: directory)) ?? [])
                let newest = files.compactMap { (try? manager.attributesOfItem(atPath: "\(directory)/\($0)"))?[.modificationDate] as? Date }.max()
                if Date().timeIntervalSince(newest ?? .distantPast) > age {
                    try? manager.removeItem(atPath: directory)
                    removed.append(directory)
                }
            }
        }
        return removed
    }

    /// Stops every instance and router (`capstan run --down-on-exit`).
    /// Stops the live instances of this state directory that no inventory row and no
    /// supervised instance knows (started by a daemon that should not have acted, or recorded
    /// in a database that was lost): nothing runs that `capstan down` and the next daemon
    /// could not find. Returns them with their owners.
    public func stopUnknownInstances(grace: Duration = .seconds(10)) async -> [(owner: ObjectKey?, line: String)] {
        let marked = MarkedInstance.all(stateDirectory: stateDirectory)
        guard !marked.isEmpty else { return [] }
        var known = Set(((try? store.inventory(type: Supervisor.inventoryType)) ?? []).map(\.id))
        known.formUnion(await supervisor.knownIDs())
        return await withTaskGroup(of: (ObjectKey?, String).self) { group in
            for instance in marked where !known.contains(instance.id) && instance.identity.isAlive {
                group.addTask {
                    let killed = await Spawner.stop(instance.identity, grace: grace)
                    let owner = instance.deployment.map { ObjectKey(kind: .deployment, namespace: instance.namespace ?? "default", name: $0) }
                    return (owner, "instance \(instance.id) (\(instance.identity)) ran without an inventory record: \(killed ? "killed" : "stopped")")
                }
            }
            var stopped: [(owner: ObjectKey?, line: String)] = []
            for await result in group { stopped.append(result) }
            return stopped.sorted { $0.line < $1.line }
        }
    }

    public func down() async -> [String] {
        await routers.closeAll()
        return await supervisor.stopAll(of: nil)
    }

    public func shutdown() async {
        await routers.closeAll()
        await supervisor.shutdown()
    }

    /// Where a Deployment's router listens.
    public func listening(_ deployment: ObjectKey) async -> (host: String, port: Int)? {
        await routers.listening(deployment)
    }

    static func randomSuffix() -> String {
        let alphabet = Array("bcdfghjklmnpqrstvwxz2456789")
        return String((0..<5).map { _ in alphabet.randomElement()! })
    }

    /// An ephemeral port nothing listens on now (the instance binds it right after).
    static func freePort() -> Int? {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socket >= 0 else { return nil }
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, length) == 0 && getsockname(socket, $0, &length) == 0 }
        }
        return bound ? Int(UInt16(bigEndian: address.sin_port)) : nil
    }
}
