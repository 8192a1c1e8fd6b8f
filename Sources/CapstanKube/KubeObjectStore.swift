import CapstanControllers
import CapstanModel
import CapstanRuntime
import Foundation
import Synchronization

extension KubeResource {
    /// The custom resource of one of Capstan's kinds.
    public static func capstan(_ kind: ResourceKind) -> KubeResource {
        KubeResource(group: capstanGroup, version: capstanVersion, plural: kind.plural, kind: kind.rawValue)
    }
}

/// Capstan's custom resources as the reconcilers see them in Kubernetes mode: the cache the
/// reflectors fill, status written through the `/status` subresource, and reconcile events
/// written as `core/v1` Events (aggregated like the API server's own recorder).
public final class KubeObjectStore: ObjectStore, EventRecorder, Sendable {
    public let client: KubeClient
    public let cache: ObjectCache
    /// Deployments' revision templates, written with their status.
    public let revisions: StatusRevisions
    /// `reportingInstance` of our Events (the operator's identity).
    let instance: String
    let log: @Sendable (String) -> Void
    /// Deleted objects whose last version carried `capstan.dev/prune: disabled`.
    private let keptOnDelete = Mutex<[ObjectKey: Bool]>([:])
    /// Events written in the last 10 minutes, by what makes them the same event.
    private let recent = Mutex(RecentEvents())
    public static let aggregationWindow: TimeInterval = 600
    /// The annotation asking for a reconcile now (Flux's `reconcile.fluxcd.io/requestedAt`).
    public static let reconcileRequest = "capstan.dev/reconcile-requested-at"

    public init(client: KubeClient, cache: ObjectCache = ObjectCache(), instance: String, log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.client = client
        self.cache = cache
        self.revisions = StatusRevisions(cache: cache)
        self.instance = instance
        self.log = log
    }

    // MARK: - From the reflectors

    /// What a reflector's change means for the reconcilers.
    public enum Effect: Sendable, Equatable {
        /// Reconcile it: it is new, its spec, labels, annotations, finalizers or deletion changed,
        /// or it went away.
        case reconcile(ObjectKey)
        /// Only its status changed, and in a way that objects referring to it show (a
        /// Deployment's readiness or version, listed in its Application's status): reconcile
        /// those, not the object itself.
        case referrers(ObjectKey)
        /// Only its status changed (often our own write): nothing to do.
        case none
    }

    /// Takes a reflector's change of one of Capstan's kinds into the cache.
    public func apply(_ change: Reflector.Change, kind: ResourceKind) -> Effect {
        switch change {
        case .synced:
            return .none
        case .delete(let node):
            guard let key = Self.key(of: node, kind: kind) else { return .none }
            let old = cache.get(key)
            _ = cache.remove(key)
            let metadata = old?.resource.metadata
            keptOnDelete.withLock { $0[key] = metadata.map(Prune.isDisabled) ?? Self.pruneAnnotated(node) }
            return .reconcile(key)
        case .upsert(let node):
            guard let key = Self.key(of: node, kind: kind) else { return .none }
            let old = cache.get(key)
            // The watch's echo of a write whose response the cache took already: the same
            // resourceVersion is the same object, nothing to decode or do.
            if let old, old.problems.isEmpty, let version = old.resource.metadata.resourceVersion,
               node["metadata"]?["resourceVersion"]?.scalarText == version { return .none }
            var context = DecodeContext()
            guard let resource = AnyResource.decode(kind: kind, node, &context) else {
                // The API's schema let it through but our rules did not (cross-field checks):
                // the last good version is kept and the object is Stalled (principle 2).
                let problems = context.problems.map(\.description)
                log("\(key): invalid: \(problems.joined(separator: "; "))")
                guard var kept = old else {
                    Task { await self.record(.warning, reason: "InvalidSpec", message: problems.joined(separator: "; "), about: key) }
                    return .none
                }
                if kept.problems == problems { return .none }
                kept.problems = problems
                _ = cache.upsert(key, kept)
                return .reconcile(key)
            }
            keptOnDelete.withLock { $0[key] = nil }
            if let old, let requested = resource.metadata.annotations[Self.reconcileRequest],
               old.resource.metadata.annotations[Self.reconcileRequest] != requested {
                // `kubectl annotate ... capstan.dev/reconcile-requested-at=$(date -Iseconds) --overwrite`:
                // the change of annotation enqueues it; the event says it was seen.
                Task { await self.record(.normal, reason: "ReconcileRequested", message: "requested at \(requested)", about: key) }
            }
            let stored = StoredObject(resource: resource, generation: resource.metadata.generation ?? 1, sourceFile: "kubernetes:\(key)")
            _ = cache.upsert(key, stored)
            guard let old, old.problems.isEmpty else { return .reconcile(key) }
            guard Self.onlyStatusChanged(old.resource, resource) else { return .reconcile(key) }
            return StoredObject.statusShownByReferrers(old, stored) ? .referrers(key) : .none
        }
    }

    public static func key(of node: SpecNode, kind: ResourceKind) -> ObjectKey? {
        guard let name = node["metadata"]?["name"]?.scalarText else { return nil }
        return ObjectKey(kind: kind, namespace: node["metadata"]?["namespace"]?.scalarText ?? "default", name: name)
    }

    /// Called when our own status write changed what referrers show (the watch event that
    /// follows finds the cache already up to date).
    private let referrersHandler = Mutex<(@Sendable (ObjectKey) async -> Void)?>(nil)

    public func onReferrersChanged(_ handler: @escaping @Sendable (ObjectKey) async -> Void) {
        referrersHandler.withLock { $0 = handler }
    }

    /// Whether a version from one of our own writes is newer than the cached one. A write's
    /// response can arrive after the watch delivered a later change; the cache must not go
    /// back. Versions are compared as the integers every API server uses (etcd revisions);
    /// one that is not an integer is never taken over a cached object.
    public static func isNewer(_ candidate: String?, than current: String?) -> Bool {
        guard let current else { return true }
        guard let candidate, let a = UInt64(candidate), let b = UInt64(current) else { return false }
        return a > b
    }

    /// Takes the response of one of our own writes (a finalizer patch) into the cache, unless
    /// the watch already brought something newer.
    public func took(_ node: SpecNode, kind: ResourceKind) {
        guard let key = Self.key(of: node, kind: kind) else { return }
        let cached = cache.get(key)?.resource.metadata.resourceVersion
        guard Self.isNewer(node["metadata"]?["resourceVersion"]?.scalarText, than: cached) else { return }
        _ = apply(.upsert(node), kind: kind)
    }

    static func pruneAnnotated(_ node: SpecNode) -> Bool {
        node["metadata"]?["annotations"]?[Prune.annotation]?.scalarText?.lowercased() == "disabled"
    }

    /// Whether everything a reconciler acts on is the same (the status is what it writes).
    static func onlyStatusChanged(_ old: AnyResource, _ new: AnyResource) -> Bool {
        let a = old.metadata, b = new.metadata
        return old.specNode == new.specNode && a.generation == b.generation && a.labels == b.labels && a.annotations == b.annotations
            && a.deletionTimestamp == b.deletionTimestamp && a.finalizers == b.finalizers && a.uid == b.uid
    }

    // MARK: - ObjectStore

    public func object(_ key: ObjectKey) async throws -> StoredObject? { cache.get(key) }

    public func objects(kind: ResourceKind) async throws -> [StoredObject] { cache.objects(kind: kind) }

    public func objects(kind: ResourceKind, referencing key: ObjectKey) async throws -> [StoredObject] {
        cache.objects(kind: kind, referencing: key)
    }

    public func pruneDisabled(_ key: ObjectKey) async -> Bool {
        if let object = cache.get(key) { return Prune.isDisabled(object.resource.metadata) }
        return keptOnDelete.withLock { $0[key] ?? false }
    }

    /// Writes the status through `/status` as a JSON merge patch of what changed (removed
    /// fields as null), so fields of other writers are left alone.
    public func writeStatus(_ key: ObjectKey, _ status: SpecNode) async throws -> Bool {
        guard let stored = cache.get(key) else { return false }
        let status = revisions.merged(key, into: status)
        let old = stored.resource.encode()["status"] ?? .mapping([])
        guard let diff = Self.mergePatch(from: old, to: status) else {
            revisions.written(key)
            return false
        }
        let patched: SpecNode
        do {
            patched = try await client.patch(.capstan(key.kind), namespace: key.namespace, name: key.name,
                                             .mapping([("status", diff)]), subresource: "status")
        } catch {
            if error.isNotFound {
                revisions.written(key)
                return false
            }
            throw error
        }
        revisions.written(key)
        // The cache takes what was written (the watch brings the same a moment later).
        var context = DecodeContext()
        // Only while the spec is the one cached: a spec changed meanwhile (a newer generation)
        // has not been seen yet, and taking the response's version with the old spec would make
        // the object at that version look seen (a re-list after a 410 would bring the change
        // and find nothing new). The watch brings it, and its reconcile.
        if let resource = AnyResource.decode(kind: key.kind, patched, &context), let before = cache.get(key),
           (resource.metadata.generation ?? 1) == (before.resource.metadata.generation ?? 1),
           Self.isNewer(resource.metadata.resourceVersion, than: before.resource.metadata.resourceVersion) {
            var current = before
            current.resource = current.resource.withStatus(of: resource)
            current.resource.modifyMetadata { $0.resourceVersion = resource.metadata.resourceVersion }
            _ = cache.upsert(key, current)
            if StoredObject.statusShownByReferrers(before, current), let handler = referrersHandler.withLock({ $0 }) { await handler(key) }
        }
        return true
    }

    /// RFC 7386: the patch turning `old` into `new`; nil when they are equal. Lists are
    /// replaced whole, as merge patches do.
    public static func mergePatch(from old: SpecNode, to new: SpecNode) -> SpecNode? {
        guard let oldEntries = old.entries, let newEntries = new.entries else {
            return old == new ? nil : new
        }
        var patch: [(String, SpecNode)] = []
        for entry in newEntries {
            if let previous = oldEntries.first(where: { $0.key == entry.key }) {
                if let sub = mergePatch(from: previous.value, to: entry.value) { patch.append((entry.key, sub)) }
            } else {
                patch.append((entry.key, entry.value))
            }
        }
        for entry in oldEntries where !newEntries.contains(where: { $0.key == entry.key }) {
            patch.append((entry.key, SpecNode(.null)))
        }
        return patch.isEmpty ? nil : .mapping(patch)
    }

    // MARK: - Events

    public func record(_ type: EventType, reason: String, message: String, about key: ObjectKey) async {
        let uid = cache.get(key)?.resource.metadata.uid
        var involved: [(String, SpecNode)] = [
            ("apiVersion", .string(capstanAPIVersion)), ("kind", .string(key.kind.rawValue)),
            ("namespace", .string(key.namespace)), ("name", .string(key.name)),
        ]
        if let uid { involved.append(("uid", .string(uid))) }
        await record(type, reason: reason, message: message, involved: .mapping(involved), namespace: key.namespace)
    }

    /// A `core/v1` Event about any object; the same type, reason and message about the same
    /// object within 10 minutes is one Event whose `count` grows.
    public func record(_ type: EventType, reason: String, message: String, involved: SpecNode, namespace: String) async {
        let message = message.count > 1024 ? String(message.prefix(1021)) + "..." : message
        let aggregate = [involved["kind"]?.scalarText, involved["namespace"]?.scalarText, involved["name"]?.scalarText,
                         involved["uid"]?.scalarText, type.rawValue, reason, message].map { $0 ?? "" }.joined(separator: "\u{1}")
        let now = Date()
        let seen = recent.withLock { $0.repeated(aggregate, at: now, window: Self.aggregationWindow) }
        let time = SpecNode.string(Timestamp(now).description)
        if let seen {
            let patch = SpecNode.mapping([("count", .int(seen.count)), ("lastTimestamp", time)])
            do {
                _ = try await client.patch(.events, namespace: seen.namespace, name: seen.name, patch)
                return
            } catch {
                if !error.isNotFound {
                    log("cannot update event \(seen.name): \(error)")
                    return
                }
                // Expired on the server (events live an hour): write it anew.
            }
        }
        let objectName = involved["name"]?.scalarText ?? "object"
        let name = "\(objectName.prefix(200)).\(Self.suffix())"
        let event = SpecNode.mapping([
            ("apiVersion", .string("v1")), ("kind", .string("Event")),
            ("metadata", .mapping([("name", .string(name)), ("namespace", .string(namespace))])),
            ("involvedObject", involved),
            ("reason", .string(reason)), ("message", .string(message)), ("type", .string(type.rawValue)),
            ("source", .mapping([("component", .string("capstan"))])),
            ("reportingComponent", .string("capstan.dev/operator")), ("reportingInstance", .string(String(instance.prefix(128)))),
            ("action", .string(reason)),
            ("firstTimestamp", time), ("lastTimestamp", time), ("count", .int(1)),
        ])
        do {
            _ = try await client.create(.events, namespace: namespace, event)
            recent.withLock { $0.entries[aggregate] = .init(name: name, namespace: namespace, count: 1, last: now) }
        } catch {
            log("cannot record event \(reason) for \(objectName): \(error)")
        }
    }

    /// The Events of the aggregation window. Expired ones are dropped once a minute, not on
    /// every Event (a burst of 1,000 Events copied the whole map 1,000 times).
    struct RecentEvents {
        struct Entry { var name: String, namespace: String, count: Int, last: Date }
        var entries: [String: Entry] = [:]
        var pruned = Date.distantPast

        /// The Event this one repeats within the window, counted once more.
        mutating func repeated(_ key: String, at now: Date, window: TimeInterval) -> Entry? {
            if now.timeIntervalSince(pruned) >= 60 {
                entries = entries.filter { now.timeIntervalSince($0.value.last) < window }
                pruned = now
            }
            guard var entry = entries[key], now.timeIntervalSince(entry.last) < window else { return nil }
            entry.count += 1
            entry.last = now
            entries[key] = entry
            return entry
        }
    }

    /// 16 hex digits, as client-go names Events `<object>.<hex>`.
    static func suffix() -> String {
        let hex = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}
