import CapstanModel
import CapstanRuntime
import Foundation

/// An object as a reconciler sees it: the last good desired state, its generation, where it
/// came from, and the problems of the document that holds it now (principle 2).
public struct StoredObject: Sendable, Hashable {
    public var resource: AnyResource
    public var generation: Int
    public var sourceFile: String
    public var problems: [String]
    /// Why it is held at its last good version while `problems` is not empty: `InvalidSpec`
    /// (its document does not parse or validate), `SourceUnreadable` (its file or directory
    /// cannot be read), `SourceEmpty` (its source yielded nothing at all) or `DuplicateObject`
    /// (another file defines it too; the file it came from keeps it) or `SourceFetchFailed`
    /// (a git source cannot be fetched: the last commit fetched is kept).
    public var holdReason: String

    public static let invalidSpec = "InvalidSpec"
    public static let sourceEmpty = "SourceEmpty"
    public static let sourceUnreadable = "SourceUnreadable"
    public static let duplicateObject = "DuplicateObject"
    public static let sourceFetchFailed = "SourceFetchFailed"

    public init(resource: AnyResource, generation: Int, sourceFile: String, problems: [String] = [], holdReason: String = StoredObject.invalidSpec) {
        self.resource = resource
        self.generation = generation
        self.sourceFile = sourceFile
        self.problems = problems
        self.holdReason = holdReason
    }

    public var key: ObjectKey { resource.key }

    /// Why the object is held at its last good version (condition `Stalled`, with this reason
    /// and message), or nil when its spec reads cleanly.
    public var hold: (reason: String, message: String)? {
        guard let first = problems.first else { return nil }
        let kept = holdReason == Self.duplicateObject ? "the definition in the file it came from is used" : "the last good version is kept"
        return (holdReason, first + (problems.count > 1 ? " (and \(problems.count - 1) more)" : "") + " (\(kept))")
    }

    /// `Ready=True` observed at the current generation.
    public var isReady: Bool { resource.resource.status.isReady(generation: generation) }
}

extension StoredObject {
    /// Whether a status change shows in the objects that refer to it, so that a platform's
    /// status write wakes them: a Deployment's readiness and version are listed in its
    /// Application's status, a rotation waits for a Deployment's restart; a rotation's restart
    /// token rolls its dependents and its first version heals those waiting.
    public static func statusShownByReferrers(_ old: StoredObject, _ new: StoredObject) -> Bool {
        switch (old.resource, new.resource) {
        case (.deployment(let before), .deployment(let after)):
            return before.status.isReady(generation: old.generation) != after.status.isReady(generation: new.generation)
                || before.status.version != after.status.version || before.status.secretRestarts != after.status.secretRestarts
        case (.secretRotation(let before), .secretRotation(let after)):
            return before.status.restartToken != after.status.restartToken || before.status.currentVersion != after.status.currentVersion
        default:
            return false
        }
    }
}

/// The cache every source fills and every reconciler reads: the last good object per key,
/// indexed by kind, by the objects it refers to and by label.
public typealias ObjectCache = Cache<ObjectKey, StoredObject>

extension Cache where Key == ObjectKey, Object == StoredObject {
    public enum Index {
        public static let kind = "kind"
        /// An object is found under the keys (`ObjectKey.description`) of the objects it refers to.
        public static let references = "references"
        /// `key=value` for every label.
        public static let label = "label"
    }

    public convenience init() {
        self.init(indexers: [
            Index.kind: { [$0.key.kind.rawValue] },
            Index.references: { $0.resource.references.map(\.description) },
            Index.label: { $0.resource.metadata.labels.values.map { "\($0.key)=\($0.value)" } },
        ])
    }

    /// Every object of a kind, sorted by namespace and name.
    public func objects(kind: ResourceKind) -> [StoredObject] {
        byIndex(Index.kind, kind.rawValue, orderedBy: <)
    }

    /// The objects of `kind` that refer to `key` (a Deployment's Application, ...), sorted.
    public func objects(kind: ResourceKind, referencing key: ObjectKey) -> [StoredObject] {
        byIndex(Index.references, key.description, where: { $0.kind == kind }, orderedBy: <)
    }

    /// Objects per kind that are ready at their generation, and not (the `capstan_resources` gauge).
    public func readiness() -> [ResourceKind: (ready: Int, notReady: Int)] {
        reduce(into: [:]) { result, object in
            var counts = result[object.key.kind] ?? (0, 0)
            if object.isReady { counts.ready += 1 } else { counts.notReady += 1 }
            result[object.key.kind] = counts
        }
    }

    /// The objects carrying a label, sorted.
    public func objects(labelled key: String, _ value: String) -> [StoredObject] {
        byIndex(Index.label, "\(key)=\(value)", orderedBy: <)
    }
}

/// Where desired state and status live (the local state store; the Kubernetes API).
public protocol ObjectStore: Sendable {
    func object(_ key: ObjectKey) async throws -> StoredObject?
    func objects(kind: ResourceKind) async throws -> [StoredObject]
    /// The objects of `kind` that refer to `key` by name (the Deployments of an Application).
    func objects(kind: ResourceKind, referencing key: ObjectKey) async throws -> [StoredObject]
    /// Writes the status; returns false when it was unchanged (nothing written).
    func writeStatus(_ key: ObjectKey, _ status: SpecNode) async throws -> Bool
    /// Whether a deleted object's last version carried `capstan.dev/prune: disabled` (what it
    /// had is kept). Local: recorded when the object was read; Kubernetes: the annotation on
    /// the object being deleted.
    func pruneDisabled(_ key: ObjectKey) async -> Bool
    /// Requests for `key` waiting for its reconcile (`capstan rollback`, `promote`, `abort` ...),
    /// oldest first: read inside the reconcile, so the reconciler is the one writer of the
    /// status (local: the state store's request table; Kubernetes: `capstan.dev/...` annotations).
    func requests(for key: ObjectKey) async -> [ObjectRequest]
    /// Takes a request before acting on it: false when it is no longer waiting (withdrawn by
    /// the CLI that gave up, expired, changed, or taken already).
    func take(_ request: ObjectRequest, of key: ObjectKey) async -> Bool
    /// Makes sure a live object is not deleted before its reconciler cleaned up after it
    /// (Kubernetes: the finalizer `capstan.dev/cleanup`; locally the inventory does that).
    func claim(_ key: ObjectKey) async throws
    /// Lets a deleted object go once its reconciler cleaned up (removes the finalizer).
    func release(_ key: ObjectKey) async throws
}

extension ObjectStore {
    public func requests(for key: ObjectKey) async -> [ObjectRequest] { [] }
    public func take(_ request: ObjectRequest, of key: ObjectKey) async -> Bool { false }
    public func claim(_ key: ObjectKey) async throws {}
    public func release(_ key: ObjectKey) async throws {}
}

/// A request for an object's reconciler, made with the CLI.
public struct ObjectRequest: Sendable, Hashable {
    public var id: Int64
    public var type: String
    public var value: String

    public init(id: Int64, type: String, value: String) {
        self.id = id
        self.type = type
        self.value = value
    }

    /// `capstan rollback`: the value is the revision, or empty for the previous one.
    public static let rollback = "rollback"
    /// `capstan promote`: a BlueGreen preview takes the traffic.
    public static let promote = "promote"
    /// `capstan abort`: back to the revision that ran before (a BlueGreen preview is removed, or
    /// the traffic goes back to the colour kept for `scaleDownDelay`).
    public static let abort = "abort"
    /// `capstan rotate`: a SecretRotation rotates now.
    public static let rotate = "rotate"

    /// The annotation carrying each request on a custom resource (`kubectl annotate` or
    /// `capstan ... --kube` writes it; the operator removes it when it takes it).
    public static let annotations: [(type: String, annotation: String)] = [
        (rollback, "capstan.dev/rollback-to"), (promote, "capstan.dev/promote"), (abort, "capstan.dev/abort"), (rotate, "capstan.dev/rotate-now"),
        (backupNow, "capstan.dev/backup-now"), (acknowledge, "capstan.dev/acknowledge"),
    ]

    public static func annotation(of type: String) -> String? {
        annotations.first { $0.type == type }?.annotation
    }
}

/// Orphan cleanup settings (runtime.md). What a deleted object had (instances, ports,
/// releases, artifacts) is removed unless the object asked otherwise with the annotation
/// `capstan.dev/prune: disabled`, or the daemon runs with `--prune=false` (a dry run: Warning
/// events say what would go).
public enum Prune {
    public static let annotation = "capstan.dev/prune"

    public static func isDisabled(_ metadata: ObjectMeta) -> Bool {
        metadata.annotations[annotation]?.lowercased() == "disabled"
    }

    /// What to do with the leftovers of a deleted object.
    public enum Decision: Sendable, Equatable {
        /// Remove them.
        case delete
        /// Keep them: the object carried the annotation (a Normal event says so).
        case keepAnnotated
        /// Keep them and warn: `--prune=false`.
        case dryRun
    }

    public static func decide(enabled: Bool, annotated: Bool) -> Decision {
        annotated ? .keepAnnotated : (enabled ? .delete : .dryRun)
    }

    /// The event for leftovers that were not removed.
    public static func skipped(_ decision: Decision, kind: String, would lines: [String]) -> (EventType, String, String) {
        let what = lines.joined(separator: ", ")
        switch decision {
        case .keepAnnotated: return (.normal, "PruneSkipped", "\(kind) deleted; kept (\(annotation): disabled): \(what)")
        default: return (.warning, "PruneSkipped", "\(kind) deleted; --prune=false, so not removed: \(what)")
        }
    }
}

/// Records reconcile events (aggregated by the implementation).
public protocol EventRecorder: Sendable {
    func record(_ type: EventType, reason: String, message: String, about key: ObjectKey) async
}

/// Whether an Application's code can be reached.
public enum SourceCheck: Sendable, Equatable {
    case ready(String)
    case unavailable(String)
}

/// Prepares Applications' artifacts (the local platform copies or checks out and builds;
/// Kubernetes pulls images and has nothing to prepare).
public protocol ArtifactPlatform: Sendable {
    /// Checks that the Application's source exists and can be read.
    func checkSource(of application: Application, specFile: String) async -> SourceCheck
    /// Prepares (or reuses) the artifact of a version.
    func prepare(_ template: WorkloadTemplate, namespace: String) async throws(WorkloadError) -> ArtifactStatus
    /// The prepared artifacts of an Application, newest first.
    func artifacts(of application: ObjectKey) async -> [ArtifactStatus]
    /// Removes artifacts beyond the newest `keep` not in use; returns the versions removed.
    func prune(_ application: ObjectKey, keep: Int, inUse: Set<String>) async -> [String]
}
