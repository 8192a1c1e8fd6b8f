import CapstanControllers
import CapstanModel
import Foundation
import CapstanRuntime
import Synchronization

/// Where status writes are reported (the manager's watches).
public final class StatusWatchers: Sendable {
    private let handler = Mutex<(@Sendable (ObjectKey, AnyResource) async -> Void)?>(nil)

    public init() {}

    public func set(_ handler: @escaping @Sendable (ObjectKey, AnyResource) async -> Void) {
        self.handler.withLock { $0 = handler }
    }

    func notify(_ key: ObjectKey, _ resource: AnyResource) async {
        if let handler = handler.withLock({ $0 }) { await handler(key, resource) }
    }
}

/// The reconcilers' `ObjectStore` and `EventRecorder` in directory mode: reads come from the
/// cache (no I/O), status writes go to the state store and then to the cache.
public struct LocalObjectStore: ObjectStore, EventRecorder {
    public let store: StateStore
    public let cache: ObjectCache
    let now: @Sendable () -> Date
    let log: @Sendable (String) -> Void
    /// Told of status writes that other objects' reconciles wait for (set once the manager exists).
    public let statusWatchers = StatusWatchers()
    /// The objects with requests pending, as the daemon's request loop last found them (nil:
    /// not known, the table is read): a reconcile of any other object reads no table (a
    /// thousand AlertRules evaluated every second). A request the loop has not seen yet is
    /// taken by the reconcile the loop then wakes.
    let pending = Synchronized<Set<ObjectKey>?>(nil)

    public init(store: StateStore, cache: ObjectCache, now: @escaping @Sendable () -> Date = Date.init, log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.store = store
        self.cache = cache
        self.now = now
        self.log = log
    }

    /// Fills the cache from the store (start-up: every object with its status).
    public static func load(_ store: StateStore, into cache: ObjectCache) throws {
        cache.replaceAll(try store.objects().map { ($0.key, stored($0)) })
    }

    public func object(_ key: ObjectKey) async throws -> StoredObject? {
        cache.get(key)
    }

    public func objects(kind: ResourceKind) async throws -> [StoredObject] {
        cache.objects(kind: kind)
    }

    public func objects(kind: ResourceKind, referencing key: ObjectKey) async throws -> [StoredObject] {
        cache.objects(kind: kind, referencing: key)
    }

    public func writeStatus(_ key: ObjectKey, _ status: SpecNode) async throws -> Bool {
        let written = try store.writeStatus(key, status: status)
        let before = cache.get(key)
        let resource = try before?.resource.withStatus(status)
        if let resource { cache.update(key) { $0.resource = resource } }
        // A status others wait for wakes them: a rotation's (its restart token, its secret),
        // a Canary's (its Deployment realises its decisions), a Deployment's that a rotation
        // restarts or a Canary guards, and any change its referrers show (a Deployment's
        // readiness in its Application's status), as on a cluster.
        guard written, let resource else { return written }
        let shown = before.map { before in
            var after = before
            after.resource = resource
            return StoredObject.statusShownByReferrers(before, after)
        } ?? false
        if shown || key.kind == .secretRotation || key.kind == .canary
            || (key.kind == .deployment && (!cache.objects(kind: .secretRotation, referencing: key).isEmpty || !cache.objects(kind: .canary, referencing: key).isEmpty)) {
            await statusWatchers.notify(key, resource)
        }
        return written
    }

    public func requests(for key: ObjectKey) async -> [ObjectRequest] {
        if let pending = pending.value, !pending.contains(key) { return [] }
        return ((try? store.pendingRequests(now: now())) ?? []).filter { $0.key == key }.map { ObjectRequest(id: $0.id, type: $0.type, value: $0.value) }
    }

    /// The request loop found requests pending for these objects (and none for others).
    public func noticePending(_ keys: Set<ObjectKey>) {
        pending.update { $0 = keys }
    }

    public func take(_ request: ObjectRequest, of key: ObjectKey) async -> Bool {
        (try? store.claimRequest(request.id, at: now())) ?? false
    }

    public func pruneDisabled(_ key: ObjectKey) async -> Bool {
        (try? store.isPruneDisabled(key)) ?? false
    }

    public func record(_ type: EventType, reason: String, message: String, about key: ObjectKey) async {
        do {
            try store.recordEvent(type, reason: reason, message: message, about: key, at: now())
        } catch {
            log("cannot record event \(reason) for \(key): \(error)")
        }
    }

    static func stored(_ record: StateStore.ObjectRecord) -> StoredObject {
        StoredObject(resource: record.resource, generation: record.generation, sourceFile: record.sourceFile, problems: record.problems,
                     holdReason: record.holdReason)
    }
}

/// Whether an Application's source can be reached from this host.
enum SourceReachability {
    static func check(_ application: Application, specFile: String) -> SourceCheck {
        guard let source = application.spec.source else {
            return .ready(application.spec.command.isEmpty ? "image \(application.spec.image ?? "")" : "no source: runs from an empty directory")
        }
        if let git = source.git {
            return .ready("git \(git.url)")
        }
        let path = source.path ?? ""
        let resolved = path.hasPrefix("/") ? path : ((specFile as NSString).deletingLastPathComponent as NSString).appendingPathComponent(path)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: resolved, isDirectory: &isDirectory) else {
            return .unavailable("source path \(resolved) does not exist")
        }
        guard isDirectory.boolValue else {
            return .unavailable("source path \(resolved) is not a directory")
        }
        return .ready("source \(resolved)")
    }
}

extension LocalObjectStore: RevisionStore {
    public func recordRevision(of owner: ObjectKey, hash: String, template: SpecNode) async throws -> (number: Int, template: SpecNode) {
        let revision = try store.recordRevision(of: owner, hash: hash, template: template, at: now())
        return (revision.number, revision.template)
    }

    public func revisions(of owner: ObjectKey) async throws -> [(number: Int, hash: String, template: SpecNode)] {
        try store.revisions(of: owner).map { ($0.number, $0.hash, $0.template) }
    }

    public func pruneRevisions(of owner: ObjectKey, keep: Int, inUse: Set<Int>) async throws {
        try store.pruneRevisions(of: owner, keep: keep, inUse: inUse)
    }

    public func removeRevisions(of owner: ObjectKey) async throws {
        try store.removeRevisions(of: owner)
    }
}
