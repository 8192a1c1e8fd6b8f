import CapstanModel
import Foundation

/// What one revision of a Deployment runs: the Application's template, the version and the
/// merged environment. Its hash identifies the revision; replicas and rollout settings are not
/// part of it (changing them is no new revision, as with Kubernetes' pod template).
public struct WorkloadTemplate: Sendable, Hashable {
    public var application: String
    public var version: String
    public var spec: ApplicationSpec
    /// The Application's env with the Deployment's merged over it, by name, in order.
    public var env: [EnvVar]
    /// Where a relative `source.path` is resolved from (the Application's spec file's
    /// directory). Not part of the hash: moving a spec file is no new revision.
    public var sourceRoot: String
    /// Per secret, the rotation restart this revision rolls out with (a SecretRotation's
    /// `restartToken`): a new token is a new revision, so the instances restart with the
    /// Deployment's own strategy. Part of the hash only when there is one.
    public var secretRestarts: [String: String] = [:]

    public init(application: String, version: String, spec: ApplicationSpec, env: [EnvVar], sourceRoot: String, secretRestarts: [String: String] = [:]) {
        self.application = application
        self.version = version
        self.spec = spec
        self.env = env
        self.sourceRoot = sourceRoot
        self.secretRestarts = secretRestarts
    }

    /// The template a Deployment asks of its Application.
    public init(deployment: Deployment, application: Application, applicationFile: String) {
        var env = application.spec.env
        for variable in deployment.spec.env {
            if let index = env.firstIndex(where: { $0.name == variable.name }) { env[index] = variable } else { env.append(variable) }
        }
        self.init(application: application.metadata.name, version: deployment.spec.version, spec: application.spec, env: env,
                  sourceRoot: (applicationFile as NSString).deletingLastPathComponent)
    }

    private var hashedEntries: [(String, SpecNode)] {
        var spec = spec
        spec.env = []  // the merged env below is what counts
        var entries: [(String, SpecNode)] = [("application", .string(application)), ("version", .string(version)), ("spec", spec.encode()), ("env", env.encode())]
        if !secretRestarts.isEmpty {
            entries.append(("secretRestarts", .mapping(secretRestarts.keys.sorted().map { ($0, .string(secretRestarts[$0]!)) })))
        }
        return entries
    }

    /// `name=token,...` (the pod template annotation on a cluster).
    public var secretRestartsText: String {
        secretRestarts.keys.sorted().map { "\($0)=\(secretRestarts[$0]!)" }.joined(separator: ",")
    }

    /// The revision's identity: a hash of everything an instance is made of.
    public var hash: String { String(SpecHash.of(.mapping(hashedEntries)).prefix(16)) }

    /// The form kept in the revision history (for rollbacks).
    public func encode() -> SpecNode {
        .mapping(hashedEntries + [("sourceRoot", .string(sourceRoot))])
    }

    public static func decode(_ node: SpecNode) throws -> WorkloadTemplate {
        guard let application = node["application"]?.scalarText, let version = node["version"]?.scalarText,
              let specNode = node["spec"], let envNode = node["env"] else {
            throw WorkloadError("InvalidRevision", "a stored revision template is incomplete")
        }
        var spec = try ApplicationSpec.decoded(from: specNode)
        let env = try [EnvVar].decodedList(from: envNode)
        spec.env = []
        var restarts: [String: String] = [:]
        for entry in node["secretRestarts"]?.entries ?? [] { restarts[entry.key] = entry.value.scalarText ?? "" }
        return WorkloadTemplate(application: application, version: version, spec: spec, env: env,
                                sourceRoot: node["sourceRoot"]?.scalarText ?? ".", secretRestarts: restarts)
    }
}

extension Array where Element == EnvVar {
    static func decodedList(from node: SpecNode) throws -> [EnvVar] {
        var context = DecodeContext()
        let value = [EnvVar].decode(node, &context)
        if let value, context.problems.isEmpty { return value }
        throw WorkloadError("InvalidRevision", "a stored revision's env is invalid: \(context.problems.map(\.description).joined(separator: "; "))")
    }
}

/// A revision of a Deployment: its number and template.
public struct WorkloadRevision: Sendable, Hashable {
    public var number: Int
    public var template: WorkloadTemplate
    public var hash: String { template.hash }

    public init(number: Int, template: WorkloadTemplate) {
        self.number = number
        self.template = template
    }
}

/// One instance as the platform sees it.
public struct InstanceState: Sendable, Hashable {
    public var id: String
    /// The template hash of the revision it runs.
    public var templateHash: String
    public var revision: Int
    /// Passing its health check (or running, without one) and receiving traffic.
    public var ready: Bool
    public var restarts: Int
    /// The last thing that went wrong: an exit, a failed probe, a start that failed.
    public var problem: String?
    /// The track it belongs to.
    public var track: Track

    public init(id: String, templateHash: String, revision: Int, ready: Bool, restarts: Int = 0, problem: String? = nil, track: Track = .stable) {
        self.id = id
        self.templateHash = templateHash
        self.revision = revision
        self.ready = ready
        self.restarts = restarts
        self.problem = problem
        self.track = track
    }
}

/// Why a platform could not do what was asked, with the condition reason it maps to.
public struct WorkloadError: Error, Sendable, Hashable, CustomStringConvertible {
    /// `SourceUnavailable`, `BuildFailed`, `StartFailed`, `PortUnavailable`, `SecretUnavailable`,
    /// `ImageMissing`, `ChildConflict`.
    public var reason: String
    public var message: String

    public init(_ reason: String, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { message }
}

/// A named group of a Deployment's instances that runs one revision (platforms.md: `stable`;
/// `blue` and `green` for BlueGreen; `canary` while a Canary runs).
public struct Track: RawRepresentable, Hashable, Sendable, Comparable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ name: String) { rawValue = name }

    public static let stable = Track("stable")
    public static let blue = Track("blue")
    public static let green = Track("green")
    public static let canary = Track("canary")

    /// The colour a BlueGreen preview takes beside this active track.
    public var otherColour: Track { self == .blue ? .green : .blue }
    public var description: String { rawValue }
    public static func < (a: Track, b: Track) -> Bool { a.rawValue < b.rawValue }
}

/// What a track should run: the platform realises it in one level-based step.
public struct TrackSpec: Sendable, Hashable {
    public enum Strategy: Sendable, Hashable {
        /// Stop every instance of other revisions before starting new ones.
        case recreate
        /// Replace instances a few at a time: at most `replicas + maxSurge` running, at least
        /// `replicas - maxUnavailable` ready (both resolved against `replicas`).
        case rollingUpdate(maxSurge: IntOrString, maxUnavailable: IntOrString)
    }

    public var revision: WorkloadRevision
    public var replicas: Int
    public var strategy: Strategy
    /// Changes of revision wait (scaling too, on the local platform: nothing moves).
    public var paused: Bool
    /// Kubernetes copies these onto its `apps/v1` Deployment for `kubectl` readers; Capstan
    /// decides the deadline itself on every platform.
    public var progressDeadline: KubeDuration
    public var revisionHistoryLimit: Int

    public init(revision: WorkloadRevision, replicas: Int, strategy: Strategy, paused: Bool = false,
                progressDeadline: KubeDuration = .minutes(10), revisionHistoryLimit: Int = 10) {
        self.revision = revision
        self.replicas = replicas
        self.strategy = strategy
        self.paused = paused
        self.progressDeadline = progressDeadline
        self.revisionHistoryLimit = revisionHistoryLimit
    }

    /// How many may be missing during a rolling step (Kubernetes' rounding; at least one of
    /// surge and unavailable is positive).
    public var rollingBounds: (surge: Int, unavailable: Int) {
        guard case .rollingUpdate(let maxSurge, let maxUnavailable) = strategy else { return (0, replicas) }
        let surge = maxSurge.scaled(total: replicas, roundUp: true) ?? 1
        var unavailable = maxUnavailable.scaled(total: replicas, roundUp: false) ?? 0
        if surge == 0 && unavailable == 0 { unavailable = 1 }
        return (surge, unavailable)
    }
}

/// Something the platform did or found while realising a track, for the owner's events.
public struct WorkloadEvent: Sendable, Hashable {
    public var type: EventType
    public var reason: String
    public var message: String

    public init(_ type: EventType, _ reason: String, _ message: String) {
        self.type = type
        self.reason = reason
        self.message = message
    }
}

/// Where a track stands, as the platform observes it.
public struct TrackState: Sendable, Hashable {
    /// The revision the track is set to run (the platform's record of its last `ensure`).
    public var revision: Int
    public var templateHash: String
    /// Instances of every revision, of the track's revision, ready, available.
    public var replicas = 0
    public var updated = 0
    public var ready = 0
    public var available = 0
    /// Restarts of its instances after they exited (nil where the platform does not count them).
    public var restarts: Int?
    /// The platform has acted on the track's latest spec (Kubernetes: the `apps/v1`
    /// Deployment's `observedGeneration` caught up); counts of an unsettled track are old.
    public var settled = true
    /// What goes wrong with its instances (an exit, a failing probe), one line each.
    public var problems: [String] = []
    /// An instance could not be started.
    public var startProblem: WorkloadError?
    /// What the platform did in this step (instances started or stopped, children repaired).
    public var events: [WorkloadEvent] = []
    /// The next step can follow at once (instances were stopped and room was made).
    public var movedOn = false

    public init(revision: Int, templateHash: String) {
        self.revision = revision
        self.templateHash = templateHash
    }

    /// Whether a reconcile has to look at the track again after it changed from `previous`:
    /// its ready or available instances, its problems or its revision changed, or it became
    /// complete or stopped being so. The other counts alone (instances made, of the new
    /// revision) decide nothing: the status shows them at the next reconcile that happens
    /// anyway (a readiness change, the platform's `progressCheck`).
    public func matters(after previous: TrackState, replicas wanted: Int) -> Bool {
        ready != previous.ready || available != previous.available || problems != previous.problems
            || revision != previous.revision || templateHash != previous.templateHash
            || complete(replicas: wanted) != previous.complete(replicas: wanted)
    }

    /// Every instance runs the track's revision, all ready, as many as asked.
    public func complete(replicas wanted: Int) -> Bool {
        settled && replicas == wanted && updated == wanted && ready >= wanted && available >= wanted
    }
}

/// Runs Deployments' tracks (local: supervised processes; Kubernetes: one `apps/v1` Deployment
/// per track). The reconciler decides which revision each track runs and when; the platform
/// realises one track at a time, a level-based step per call.
public protocol WorkloadPlatform: Sendable {
    /// Makes the revision runnable (local: its artifact and release; Kubernetes: a valid image
    /// reference); idempotent. With `current`, it becomes the Deployment's current one.
    /// Returns the repairs it made (a release or link removed behind Capstan's back).
    func prepare(_ revision: WorkloadRevision, for deployment: ObjectKey, current: Bool) async throws(WorkloadError) -> [String]
    /// One step of the track towards `spec`; returns where it stands after the step. A
    /// `WorkloadError` is a condition to report (a conflict, a missing image); any other error
    /// is a failure to retry (the API server did not answer).
    func ensure(_ track: Track, of deployment: Deployment, _ spec: TrackSpec) async throws -> TrackState
    /// The Deployment's tracks as they stand, without changing them.
    func tracks(of deployment: ObjectKey) async -> [Track: TrackState]
    /// Removes a track: its instances (side by side) or its `apps/v1` Deployment.
    func removeTrack(_ track: Track, of deployment: Deployment) async throws -> [WorkloadEvent]
    /// Keeps only these revisions' releases (the history) for the Deployment.
    func pruneReleases(of deployment: ObjectKey, keeping revisions: Set<Int>) async
    /// Removes everything of a deleted Deployment: tracks, ports, releases, children. Returns
    /// what was removed, one line each (for the `OrphanDeleted` event). With `dryRun`, nothing
    /// is removed: it returns what would be, and lets go of it (Kubernetes: the owner
    /// references are dropped, so the garbage collector keeps it too).
    func remove(_ deployment: ObjectKey, dryRun: Bool) async throws -> [String]
    /// Whether the platform removes a deleted Deployment's children by itself (Kubernetes'
    /// garbage collector, through their owner references): then the Deployment needs no
    /// finalizer unless what it had is to be kept.
    var collectsChildrenOfDeleted: Bool { get }
    /// What of a deleted Deployment is still there (what the garbage collector has not
    /// removed yet), one line each.
    func leftovers(of deployment: ObjectKey) async -> [String]
    /// How often a rollout in progress is looked at without an event: the safety net (and,
    /// shorter, the progress deadline's clock). Where every change of a track wakes its owner
    /// (Kubernetes' watches), it can be long.
    var progressCheck: Duration { get }
}

extension WorkloadPlatform {
    public var collectsChildrenOfDeleted: Bool { false }
    public var progressCheck: Duration { DeploymentReconciler.progressCheck }
    public func leftovers(of deployment: ObjectKey) async -> [String] { [] }
}

/// Who receives a Deployment's traffic.
public struct Traffic: Sendable, Hashable {
    /// The track behind the Deployment's port (the Service on Kubernetes).
    public var active: Track
    /// The track behind `blueGreen.previewPort` (the `NAME-preview` Service), if any.
    public var preview: Track?
    /// The canary beside the active track and its percent of the port's connections (0: none).
    public var canary: Track?
    public var canaryWeight: Int
    /// How the platform splits the port between the tracks (what `TrafficPlatform.split` said).
    public var split: TrafficSplit

    public init(active: Track, preview: Track? = nil, canary: Track? = nil, canaryWeight: Int = 0, split: TrafficSplit = .weighted) {
        self.active = active
        self.preview = preview
        self.canary = canary
        self.canaryWeight = min(100, max(0, canaryWeight))
        self.split = split
    }

    /// Each track's percent of the port's connections.
    public var weights: [Track: Int] {
        guard let canary, canaryWeight > 0, canary != active else { return [active: 100] }
        return canaryWeight >= 100 ? [canary: 100] : [active: 100 - canaryWeight, canary: canaryWeight]
    }
}

/// How a platform gives a canary its share of the traffic.
public enum TrafficSplit: Sendable, Hashable {
    /// The share is exact, whatever the instances (the local router; a Traefik weighted service).
    case weighted
    /// One Service over both tracks: the share is the ratio of their ready instances, which
    /// the reconciler sizes to come near the weight.
    case replicas
}

/// Sends a Deployment's port to its tracks (local: the routers; Kubernetes: the Services and
/// the Ingress).
public protocol TrafficPlatform: Sendable {
    /// Serves `traffic`: the port (`deployment.spec.port`) over the active track's ready
    /// instances, the preview port over the preview track's. The switch is immediate: new
    /// connections go to the new track, open ones finish.
    func route(_ deployment: Deployment, application: Application, _ traffic: Traffic) async throws -> [WorkloadEvent]
    /// How this platform splits a canary's traffic when the Canary asks for `routing`; a
    /// `WorkloadError` when it cannot (a mode of the other platform).
    func split(_ routing: TrafficRouting, namespace: String) async throws(WorkloadError) -> TrafficSplit
}

/// Revision history of an object (the local state store; Kubernetes: kept by Capstan too).
public protocol RevisionStore: Sendable {
    /// Records the template as the newest revision; an older revision with the same hash is
    /// renumbered as the newest (a rollback is a new revision).
    func recordRevision(of owner: ObjectKey, hash: String, template: SpecNode) async throws -> (number: Int, template: SpecNode)
    /// Revisions, oldest first.
    func revisions(of owner: ObjectKey) async throws -> [(number: Int, hash: String, template: SpecNode)]
    func pruneRevisions(of owner: ObjectKey, keep: Int, inUse: Set<Int>) async throws
    func removeRevisions(of owner: ObjectKey) async throws
}

/// Kubernetes-style `$(VAR)` expansion: `$(NAME)` is replaced by the variable's value when it
/// is defined and left as it is when not; `$$` is a literal `$` (so `$$(NAME)` gives `$(NAME)`).
public enum EnvExpansion {
    public static func expand(_ text: String, _ lookup: (String) -> String?) -> String {
        guard text.contains("$") else { return text }
        var out = ""
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            let next = text.index(after: index)
            guard character == "$", next < text.endIndex else {
                out.append(character)
                index = next
                continue
            }
            if text[next] == "$" {
                out.append("$")
                index = text.index(after: next)
            } else if text[next] == "(", let close = text[next...].firstIndex(of: ")") {
                let name = String(text[text.index(after: next)..<close])
                if let value = lookup(name) { out += value } else { out += text[index...close] }
                index = text.index(after: close)
            } else {
                out.append(character)
                index = next
            }
        }
        return out
    }

    /// The environment of an instance: `base` (PORT, CAPSTAN_*, PATH ...) then the template's
    /// variables in order, each expanded against what is defined before it (as Kubernetes).
    /// A variable from a secret, and one whose value refers to such a variable, is not
    /// resolved here: it is `deferred`, in order, to be resolved when the process starts (its
    /// value is never recorded). `secretNames`: the variables that hold a secret, for a check
    /// that none reaches a command line.
    public static func environment(base: [(String, String)], variables: [EnvVar]) -> (environment: [String: String], deferred: [DeferredEnv], secretNames: Set<String>) {
        var environment: [String: String] = [:]
        var deferred: [DeferredEnv] = []
        var tainted = Set<String>()
        for (name, value) in base { environment[name] = value }
        for variable in variables {
            if let ref = variable.valueFrom?.secretKeyRef {
                tainted.insert(variable.name)
                environment[variable.name] = nil
                deferred.append(DeferredEnv(name: variable.name, secret: ref.name, key: ref.key))
                continue
            }
            let value = variable.value ?? ""
            if !references(value).isDisjoint(with: tainted) {
                tainted.insert(variable.name)
                environment[variable.name] = nil
                deferred.append(DeferredEnv(name: variable.name, value: value))
                continue
            }
            tainted.remove(variable.name)
            deferred.removeAll { $0.name == variable.name }
            environment[variable.name] = expand(value) { environment[$0] }
        }
        return (environment, deferred, tainted)
    }

    /// The `$(NAME)` references in a value.
    public static func references(_ text: String) -> Set<String> {
        var names = Set<String>()
        _ = expand(text) { name in
            names.insert(name)
            return nil
        }
        return names
    }

    /// The deferred variables resolved over `environment`, in order.
    public static func resolve(_ deferred: [DeferredEnv], into environment: inout [String: String], secret: (String, String) throws -> String) rethrows {
        for entry in deferred {
            if let name = entry.secret, let key = entry.key {
                environment[entry.name] = try secret(name, key)
            } else {
                let current = environment
                environment[entry.name] = expand(entry.value ?? "") { current[$0] }
            }
        }
    }
}

/// A variable resolved when its process starts: a secret's key, or a value that refers to one.
public struct DeferredEnv: Sendable, Hashable, Codable {
    public var name: String
    public var secret: String?
    public var key: String?
    public var value: String?

    public init(name: String, secret: String, key: String) {
        self.name = name
        self.secret = secret
        self.key = key
    }

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}
