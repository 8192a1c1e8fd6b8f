import CapstanControllers
import CapstanModel
import Foundation

/// The reconcilers' `ObjectStore` and `EventRecorder` in directory mode: reads come from the
/// cache (no I/O), status writes go to the state store and then to the cache.
public struct LocalObjectStore: ObjectStore, EventRecorder {
    public let store: StateStore
    public let cache: ObjectCache
    let now: @Sendable () -> Date
    let log: @Sendable (String) -> Void

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
        let resource = try cache.get(key)?.resource.withStatus(status)
        if let resource { cache.update(key) { $0.resource = resource } }
        return written
    }

    public func record(_ type: EventType, reason: String, message: String, about key: ObjectKey) async {
        do {
            try store.recordEvent(type, reason: reason, message: message, about: key, at: now())
        } catch {
            log("cannot record event \(reason) for \(key): \(error)")
        }
    }

    static func stored(_ record: StateStore.ObjectRecord) -> StoredObject {
        StoredObject(resource: record.resource, generation: record.generation, sourceFile: record.sourceFile, problems: record.problems)
    }
}

/// Artifacts on this host. For now it checks that an Application's source can be reached;
/// copying, checking out and building come with Deployments.
public struct LocalArtifactPlatform: ArtifactPlatform {
    public init() {}

    public func checkSource(of application: Application, specFile: String) async -> SourceCheck {
        guard let source = application.spec.source else {
            return .ready("image \(application.spec.image ?? "")")
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
