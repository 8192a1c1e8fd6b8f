import CapstanControllers
import CapstanModel
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Everything needed to start (and restart, and adopt) one instance; kept in the inventory.
public struct InstanceLaunch: Sendable, Hashable, Codable {
    public var id: String
    public var revision: Int
    public var templateHash: String
    public var version: String
    public var port: Int
    public var command: [String]
    public var environment: [String: String]
    public var workingDirectory: String
    public var logPath: String
    public var memoryLimit: UInt64?
    public var probe: ProbeSpec?
    /// The log is rotated by a writer process at exactly this size, `logFiles` files kept
    /// (nil: appended directly, as instances started by older daemons are).
    public var logMaxBytes: Int?
    public var logFiles: Int?
    /// The Deployment's track it belongs to (nil: `stable`, as instances of older daemons).
    public var track: String?
    /// Variables from secrets (and values made of them), resolved from the vault at every
    /// start: their values are never recorded.
    public var deferred: [DeferredEnv]?

    public var trackName: Track { track.map { Track($0) } ?? .stable }

    /// The process; `CAPSTAN_INSTANCE` is always set: it names the instance to a daemon that
    /// must find it without a recorded pid.
    func process(namespace: String, secrets: SecretResolver?) throws(SpawnError) -> ProcessSpec {
        var environment = environment.merging(["CAPSTAN_INSTANCE": id]) { $1 }
        if let deferred, !deferred.isEmpty {
            guard let secrets else { throw SpawnError(description: "its environment takes values from secrets, and no vault is open") }
            do {
                try EnvExpansion.resolve(deferred, into: &environment) { name, key in try secrets(namespace, name, key) }
            } catch {
                throw SpawnError(description: "\(error)")
            }
        }
        var spec = ProcessSpec(command: command, environment: environment,
                               workingDirectory: workingDirectory, logPath: logPath, memoryLimit: memoryLimit)
        if let logMaxBytes { spec.logRotation = LogRotation(maxBytes: logMaxBytes, files: logFiles ?? 3) }
        return spec
    }
}

/// Resolves a secret's key for an instance's environment: namespace, secret, key.
public typealias SecretResolver = @Sendable (String, String, String) throws -> String

/// Runs instances as supervised child processes: restarts them when they exit (at once after
/// a run that reached ready, else with exponential backoff), probes their health, tells the
/// router which are ready, and records each in the inventory so a new daemon adopts them.
public actor Supervisor {
    public static let inventoryType = "instance"

    struct Instance {
        var owner: ObjectKey
        var launch: InstanceLaunch
        var identity: ProcessIdentity?
        /// Bumped at every start, so late exits and probe results of an earlier process are ignored.
        var run = 0
        var ready = false
        var successes = 0
        var failures = 0
        var restarts = 0
        var backoffLevel = 0
        var readySince: ContinuousClock.Instant?
        var problem: String?
        /// It was ready in this run: health failing long after that means hung, not starting.
        var everReady = false
        /// Why the supervisor killed it (a liveness failure), for the exit that follows.
        var killedBecause: String?
        var stopping = false
        var tasks: [Task<Void, Never>] = []
    }

    /// Stop grace period (SIGTERM → SIGKILL).
    public let grace: Duration
    /// The first restart after a run that was ready this long is immediate (supervisord's
    /// `startsecs`); quicker crashes back off 1 s, 2 s, ... 5 min.
    public static let stableAfter: Duration = .seconds(1)
    /// Ready this long resets the backoff.
    public static let resetAfter: Duration = .seconds(600)
    /// Logs are rotated at this size: by each instance's log writer, exactly; for instances a
    /// daemon without log writers started (they append directly), by copy and truncate on a timer.
    public let maxLogBytes: Int

    private var instances: [String: Instance] = [:]
    private let watcher: ProcessWatcher
    private let store: StateStore
    private let events: any EventRecorder
    private let clock = ContinuousClock()
    private let now: @Sendable () -> Date
    /// Readiness changed: the owner's ready backends (the router) and its reconcile.
    private let onReady: @Sendable (ObjectKey, [Backend]) async -> Void
    private let onChange: @Sendable (ObjectKey) async -> Void
    private let restarted: @Sendable () -> Void
    /// Asked before a restart of its own accord (an exit): false leaves the instance to the
    /// daemon that leads now (this one's lease may have lapsed while it was frozen).
    private let admit: @Sendable () -> Bool
    private var rotation: Task<Void, Never>?
    /// Secrets for instances' environments (the vault).
    private let secrets: SecretResolver?
    /// Every health check's result and duration, per owner (the builtin `probe_*` metrics).
    private let probes: ProbeHistory?

    /// Files kept per log by the old rotation (instances started without a log writer).
    public let logFiles: Int

    public init(store: StateStore, events: any EventRecorder, grace: Duration = .seconds(10), maxLogBytes: Int = 10 << 20, logFiles: Int = 3,
                now: @escaping @Sendable () -> Date = Date.init,
                onReady: @escaping @Sendable (ObjectKey, [Backend]) async -> Void,
                onChange: @escaping @Sendable (ObjectKey) async -> Void,
                restarted: @escaping @Sendable () -> Void = {},
                admit: @escaping @Sendable () -> Bool = { true }, secrets: SecretResolver? = nil, probes: ProbeHistory? = nil) throws(SpawnError) {
        self.store = store
        self.probes = probes
        self.secrets = secrets
        self.admit = admit
        self.events = events
        self.grace = grace
        self.maxLogBytes = maxLogBytes
        self.logFiles = logFiles
        self.now = now
        self.onReady = onReady
        self.onChange = onChange
        self.restarted = restarted
        watcher = try ProcessWatcher()
    }

    // MARK: - Queries

    public func instances(of owner: ObjectKey) -> [InstanceState] {
        instances.values.filter { $0.owner == owner && !$0.stopping }.map(Self.state).sorted { $0.id < $1.id }
    }

    public func owners() -> Set<ObjectKey> { Set(instances.values.map(\.owner)) }

    /// The process of a running instance (tests, `capstan down`).
    public func identity(of id: String) -> ProcessIdentity? { instances[id]?.identity }

    static func state(_ instance: Instance) -> InstanceState {
        InstanceState(id: instance.launch.id, templateHash: instance.launch.templateHash, revision: instance.launch.revision,
                      ready: instance.ready, restarts: instance.restarts, problem: instance.ready ? nil : instance.problem, track: instance.launch.trackName)
    }

    private func backends(of owner: ObjectKey) -> [Backend] {
        instances.values.filter { $0.owner == owner && $0.ready && !$0.stopping }.map { Backend(port: $0.launch.port, track: $0.launch.trackName.rawValue) }.sorted { $0.port < $1.port }
    }

    // MARK: - Start, stop, adopt

    /// Starts a new instance; throws when the process cannot be started at all.
    public func start(_ launch: InstanceLaunch, owner: ObjectKey) async throws(SpawnError) {
        try record(launch, owner: owner, identity: nil)
        var instance = Instance(owner: owner, launch: launch)
        do {
            try spawn(&instance)
        } catch {
            _ = try? store.removeInventory(type: Self.inventoryType, id: launch.id)
            throw error
        }
        instances[launch.id] = instance
        follow(launch.id)
    }

    /// Takes the instance out of the router, lets its connections drain (`drain`), then stops it.
    public func stop(_ id: String, drain: @Sendable (Int) async -> Void = { _ in }) async {
        guard var instance = instances[id], !instance.stopping else { return }
        instance.stopping = true
        instance.ready = false
        instance.tasks.forEach { $0.cancel() }
        instances[id] = instance
        await onReady(instance.owner, backends(of: instance.owner))
        await drain(instance.launch.port)
        if let identity = instance.identity { await Spawner.stop(identity, grace: grace) }
        instances[id] = nil
        _ = try? store.removeInventory(type: Self.inventoryType, id: id)
    }

    /// Stops every instance of an owner; returns their ids.
    public func stopAll(of owner: ObjectKey?, drain: @escaping @Sendable (Int) async -> Void = { _ in }) async -> [String] {
        let ids = instances.values.filter { owner == nil || $0.owner == owner }.map(\.launch.id).sorted()
        await withTaskGroup(of: Void.self) { group in
            for id in ids { group.addTask { await self.stop(id, drain: drain) } }
        }
        return ids
    }

    /// Takes over the instances recorded in the inventory: live ones are watched and probed
    /// (not restarted); dead ones are restarted. Returns (adopted, restarted).
    public func adopt() async -> (adopted: Int, restarted: Int) {
        var adopted = 0
        var restartedCount = 0
        let entries = (try? store.inventory(type: Self.inventoryType)) ?? []
        // Found once, if needed: processes started but not recorded (a daemon killed between).
        var unrecorded: [String: ProcessIdentity]?
        for entry in entries where instances[entry.id] == nil {
            guard let json = entry.data["launch"], let launch = try? JSONDecoder().decode(InstanceLaunch.self, from: Data(json.utf8)) else {
                _ = try? store.removeInventory(type: Self.inventoryType, id: entry.id)
                continue
            }
            var instance = Instance(owner: entry.owner, launch: launch)
            var identity: ProcessIdentity?
            if let pid = entry.data["pid"].flatMap(Int32.init), let start = entry.data["startTime"].flatMap(UInt64.init),
               ProcessIdentity(pid: pid, startTime: start).isAlive {
                identity = ProcessIdentity(pid: pid, startTime: start)
            } else {
                if unrecorded == nil { unrecorded = ProcessIdentity.instanceProcesses() }
                identity = unrecorded?[launch.id]
                if identity != nil { try? record(launch, owner: entry.owner, identity: identity) }
            }
            if let identity {
                instance.identity = identity
                instance.run = 1
                instance.ready = launch.probe == nil
                instance.readySince = instance.ready ? clock.now : nil
                instances[launch.id] = instance
                follow(launch.id)
                adopted += 1
            } else {
                instance.problem = "exited while no daemon was running"
                if await dropIfReleaseIsGone(instance) { continue }
                do {
                    try spawn(&instance)
                    instance.restarts = 1
                    restartedCount += 1
                    restarted()
                    await events.record(.warning, reason: "InstanceRestarted", message: "instance \(launch.id) exited while no daemon was running; restarted", about: entry.owner)
                    instances[launch.id] = instance
                    follow(launch.id)
                } catch {
                    // No process to watch or probe: as if it had exited at once, it is tried
                    // again with backoff (kept without a process, nothing would ever retry it).
                    instance.problem = error.description
                    instance.run += 1
                    instances[launch.id] = instance
                    await exited(launch.id, run: instance.run, .unknown)
                }
            }
        }
        startRotation()
        return (adopted, restartedCount)
    }

    private func record(_ launch: InstanceLaunch, owner: ObjectKey, identity: ProcessIdentity?) throws(SpawnError) {
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            var data = ["launch": String(decoding: try encoder.encode(launch), as: UTF8.self), "revision": String(launch.revision), "port": String(launch.port)]
            if let identity {
                data["pid"] = String(identity.pid)
                data["startTime"] = String(identity.startTime)
            }
            let time = now()
            try store.recordInventory(.init(type: Self.inventoryType, id: launch.id, owner: owner, data: data, createdAt: time))
        } catch {
            throw SpawnError(description: "cannot record instance \(launch.id): \(error)")
        }
    }

    private func spawn(_ instance: inout Instance) throws(SpawnError) {
        let identity = try Spawner.spawn(try instance.launch.process(namespace: instance.owner.namespace, secrets: secrets))
        instance.identity = identity
        instance.run += 1
        instance.everReady = false
        instance.killedBecause = nil
        instance.ready = instance.launch.probe == nil
        instance.readySince = instance.ready ? clock.now : nil
        instance.successes = 0
        instance.failures = 0
        try? record(instance.launch, owner: instance.owner, identity: identity)
    }

    /// Watches the process and probes it.
    private func follow(_ id: String) {
        watch(id)
        probe(id)
        if let instance = instances[id], instance.ready {
            let owner = instance.owner
            let backends = backends(of: owner)
            Task { await onReady(owner, backends) }
        }
    }

    private func watch(_ id: String) {
        guard let instance = instances[id], let identity = instance.identity else { return }
        let run = instance.run
        watcher.watch(identity) { exit in
            Task { await self.exited(id, run: run, exit) }
        }
    }

    private func probe(_ id: String) {
        guard var instance = instances[id] else { return }
        instance.tasks.forEach { $0.cancel() }
        instance.tasks = []
        guard let probe = instance.launch.probe else {
            instances[id] = instance
            return
        }
        let run = instance.run
        let environment = instance.launch.environment
        let directory = instance.launch.workingDirectory
        let owner = instance.owner
        let track = instance.launch.trackName
        let probes = self.probes
        instance.tasks.append(Task {
            if probe.initialDelay > .zero { try? await Task.sleep(for: probe.initialDelay) }
            // Until the first success, probe quickly: every 10 ms for the first second (most
            // apps start within it), then doubling up to the interval; so a restarted instance
            // is back in the router as soon as it answers.
            let started = ContinuousClock.now
            var pause = Duration.milliseconds(10)
            // Checks before the first success are the instance starting (a Canary's analysis
            // leaves them out; an AlertRule counts them).
            var answered = false
            while !Task.isCancelled {
                let began = ContinuousClock.now
                let failure = await Prober.run(probe, environment: environment, workingDirectory: directory)
                answered = answered || failure == nil
                probes?.record(owner, track: track, starting: !answered, success: failure == nil, duration: ContinuousClock.now - began)
                guard let ready = await self.probed(id, run: run, failure) else { return }
                if !ready && ContinuousClock.now - started > .seconds(1) { pause = min(pause * 2, probe.interval) }
                try? await Task.sleep(for: ready ? probe.interval : min(pause, probe.interval))
            }
        })
        instances[id] = instance
    }

    /// Applies a probe result; returns whether the instance is ready (nil: stop probing).
    private func probed(_ id: String, run: Int, _ failure: String?) async -> Bool? {
        guard var instance = instances[id], instance.run == run, !instance.stopping else { return nil }
        guard let probe = instance.launch.probe else { return nil }
        var changed = false
        if let failure {
            instance.failures += 1
            instance.successes = 0
            if instance.problem != "health check failed: \(failure)" && !instance.ready { changed = instance.problem == nil }
            instance.problem = "health check failed: \(failure)"
            if instance.ready && instance.failures >= probe.failureThreshold {
                instance.ready = false
                instance.readySince = nil
                changed = true
            }
            // Out of the router at the threshold; still failing at twice the threshold after it
            // had been ready, it is hung (stopped, deadlocked): killed, so it is replaced.
            if instance.everReady, instance.failures >= 2 * probe.failureThreshold, instance.killedBecause == nil, let identity = instance.identity {
                instance.killedBecause = "hung: its health check failed \(instance.failures) times in a row after it had been ready (\(failure)); killed"
                kill(-identity.pid, SIGKILL)
            }
        } else {
            instance.successes += 1
            instance.failures = 0
            if !instance.ready && instance.successes >= probe.successThreshold {
                instance.ready = true
                instance.everReady = true
                instance.readySince = clock.now
                instance.problem = nil
                changed = true
            }
        }
        if let since = instance.readySince, clock.now - since >= Self.resetAfter { instance.backoffLevel = 0 }
        instances[id] = instance
        if changed {
            await onReady(instance.owner, backends(of: instance.owner))
            await onChange(instance.owner)
        }
        return instance.ready
    }

    private func exited(_ id: String, run: Int, _ exit: ProcessExit) async {
        guard var instance = instances[id], instance.run == run, !instance.stopping else { return }
        // A process that could not start at all keeps the reason it could not (no log to read).
        let neverStarted = instance.identity == nil && exit == .unknown && instance.problem != nil
        let wasReady = instance.ready
        let stable = instance.readySince.map { clock.now - $0 >= Self.stableAfter } ?? false
        instance.tasks.forEach { $0.cancel() }
        instance.tasks = []
        instance.ready = false
        instance.readySince = nil
        instance.identity = nil
        // Why it exited is usually in its last lines (a traceback, "command not found"): they
        // and the log's path go into the problem (the Deployment's condition) and the event.
        // The log writer may still be writing them: they are read a moment later, off the
        // path of the restart.
        let logPath = instance.launch.logPath
        let killedBecause = instance.killedBecause
        instance.killedBecause = nil
        instance.problem = neverStarted ? instance.problem : (killedBecause ?? "\(exit)") + " (log: \(logPath))"
        let delay: Duration
        if stable {
            delay = .zero
        } else {
            delay = min(.seconds(1) * (1 << min(instance.backoffLevel, 9)), .seconds(300))
            instance.backoffLevel += 1
        }
        instances[id] = instance
        if wasReady { await onReady(instance.owner, backends(of: instance.owner)) }
        await onChange(instance.owner)
        let owner = instance.owner
        let launchID = instance.launch.id
        let when = delay == .zero ? "at once" : "in \(KubeDuration(delay))"
        let events = events
        let cause = instance.problem ?? "\(exit)"
        Task {
            try? await Task.sleep(for: .milliseconds(50))
            let tail = LogTail.lastLines(of: logPath, count: 3)
            let problem = neverStarted ? cause : (killedBecause ?? "\(exit)") + (tail.isEmpty ? "" : "; last output: \(tail.joined(separator: " | "))") + " (log: \(logPath))"
            if !neverStarted { await self.explain(id, run: run, problem) }
            await events.record(.warning, reason: "InstanceRestarted", message: "instance \(launchID) \(problem); restarting \(when)", about: owner)
        }
        let task = Task {
            if delay > .zero { try? await Task.sleep(for: delay) }
            guard !Task.isCancelled else { return }
            await self.restart(id, run: run)
        }
        instances[id]?.tasks.append(task)
    }

    /// An instance whose release (working directory) is gone can never start again: it is
    /// dropped from the supervisor and the inventory, and its owner reconciled, which starts
    /// what the spec asks from a release it prepares (restarting it forever would hold the
    /// rollout until its deadline). Returns whether it was dropped.
    private func dropIfReleaseIsGone(_ instance: Instance) async -> Bool {
        var isDirectory: ObjCBool = false
        guard !FileManager.default.fileExists(atPath: instance.launch.workingDirectory, isDirectory: &isDirectory) || !isDirectory.boolValue else {
            return false
        }
        let id = instance.launch.id
        instances[id]?.tasks.forEach { $0.cancel() }
        instances[id] = nil
        _ = try? store.removeInventory(type: Self.inventoryType, id: id)
        await events.record(.warning, reason: "InstanceDropped",
                            message: "instance \(id) cannot start again: its release \(instance.launch.workingDirectory) is gone (the reconcile starts what the spec asks instead)",
                            about: instance.owner)
        await onReady(instance.owner, backends(of: instance.owner))
        await onChange(instance.owner)
        return true
    }

    /// Sets the problem of run `run` of an instance, unless it moved on since.
    private func explain(_ id: String, run: Int, _ problem: String) async {
        guard let instance = instances[id], instance.run == run, instance.identity == nil, !instance.stopping else { return }
        instances[id]?.problem = problem
        await onChange(instance.owner)
    }

    private func restart(_ id: String, run: Int) async {
        guard var instance = instances[id], instance.run == run, !instance.stopping, admit() else { return }
        if await dropIfReleaseIsGone(instance) { return }
        instance.restarts += 1
        restarted()
        do {
            try spawn(&instance)
            instances[id] = instance
            follow(id)
        } catch {
            instance.problem = error.description
            instance.run += 1
            instances[id] = instance
            // As if it had exited at once: back off and try again.
            await exited(id, run: instance.run, .unknown)
        }
    }

    // MARK: - Logs

    private func startRotation() {
        guard rotation == nil else { return }
        rotation = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(10))
                self.rotateLogs()
            }
        }
    }

    func rotateLogs() {
        for path in Set(instances.values.filter { $0.launch.logMaxBytes == nil }.map(\.launch.logPath)) {
            Self.rotate(path, maxBytes: maxLogBytes, keep: max(1, logFiles - 1))
        }
    }

    /// Copies a log past `maxBytes` to `.1` (older copies shift up to `.keep`) and truncates it
    /// in place: the instance keeps its file descriptor (O_APPEND) and writes on at the start.
    static func rotate(_ path: String, maxBytes: Int, keep: Int) {
        let manager = FileManager.default
        guard let size = (try? manager.attributesOfItem(atPath: path))?[.size] as? Int, size > maxBytes else { return }
        try? manager.removeItem(atPath: "\(path).\(keep)")
        for index in stride(from: keep - 1, through: 1, by: -1) {
            try? manager.moveItem(atPath: "\(path).\(index)", toPath: "\(path).\(index + 1)")
        }
        try? manager.copyItem(atPath: path, toPath: "\(path).1")
        truncate(path, 0)
    }

    public func shutdown() {
        rotation?.cancel()
        for instance in instances.values { instance.tasks.forEach { $0.cancel() } }
        watcher.stop()
    }
}

extension Supervisor {
    /// The ids of the instances this supervisor runs or is starting.
    func knownIDs() -> Set<String> { Set(instances.keys) }

    /// Stops the live instances marked as belonging to `stateDirectory` (see `MarkedInstance`)
    /// that `except` does not name: what `capstan down` stops when the inventory cannot tell.
    public static func stopMarked(stateDirectory: String, except: Set<String> = [], grace: Duration) async -> [String] {
        let marked = MarkedInstance.all(stateDirectory: stateDirectory).filter { !except.contains($0.id) }
        return await withTaskGroup(of: String.self) { group in
            for instance in marked {
                group.addTask {
                    let killed = await Spawner.stop(instance.identity, grace: grace)
                    return "\(instance.name): " + (killed ? "killed (SIGKILL after the grace period)" : "stopped") + " (found by its marker, in no inventory)"
                }
            }
            var lines: [String] = []
            for await line in group { lines.append(line) }
            return lines.sorted()
        }
    }

    /// Stops every instance recorded in the store's inventory, without a supervisor running
    /// (`capstan down`); returns one line per instance.
    public static func stopRecorded(in store: StateStore, grace: Duration) async -> [String] {
        let entries = (try? store.inventory(type: inventoryType)) ?? []
        return await withTaskGroup(of: String.self) { group in
            for entry in entries {
                group.addTask {
                    var line = "\(entry.owner.namespace)/\(entry.owner.name) \(entry.id): "
                    if let pid = entry.data["pid"].flatMap(Int32.init), let start = entry.data["startTime"].flatMap(UInt64.init),
                       ProcessIdentity(pid: pid, startTime: start).isAlive {
                        let killed = await Spawner.stop(ProcessIdentity(pid: pid, startTime: start), grace: grace)
                        line += killed ? "killed (SIGKILL after the grace period)" : "stopped"
                    } else {
                        line += "was not running"
                    }
                    _ = try? store.removeInventory(type: inventoryType, id: entry.id)
                    return line
                }
            }
            var lines: [String] = []
            for await line in group { lines.append(line) }
            return lines.sorted()
        }
    }
}
