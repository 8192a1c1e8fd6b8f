import CapstanControllers
import CapstanModel
import CapstanRuntime
import Foundation

extension KubeResource {
    public static let configMaps = KubeResource(group: "", version: "v1", plural: "configmaps", kind: "ConfigMap")
}

/// The revision history of a Capstan Deployment on Kubernetes (the templates rollbacks need),
/// kept by Capstan in a ConfigMap `<name>-capstan-revisions` it owns, one key per revision
/// number, as Helm keeps releases in its own objects. Updates are compared and swapped by
/// resourceVersion.
public struct ConfigMapRevisions: RevisionStore {
    let client: KubeClient
    let cache: ObjectCache

    public init(client: KubeClient, cache: ObjectCache) {
        self.client = client
        self.cache = cache
    }

    static func name(_ owner: ObjectKey) -> String { "\(owner.name)-capstan-revisions" }

    typealias Entry = (number: Int, hash: String, template: SpecNode)

    private func read(_ owner: ObjectKey) async throws -> (entries: [Entry], version: String?) {
        guard let map = try await client.get(.configMaps, namespace: owner.namespace, name: Self.name(owner)) else { return ([], nil) }
        var entries: [Entry] = []
        for entry in map["data"]?.entries ?? [] {
            guard let number = Int(entry.key), let text = entry.value.scalarText,
                  let node = try? SpecNode.fromJSON(Data(text.utf8)), let hash = node["hash"]?.scalarText, let template = node["template"] else { continue }
            entries.append((number, hash, template))
        }
        return (entries.sorted { $0.number < $1.number }, map["metadata"]?["resourceVersion"]?.scalarText)
    }

    /// Writes the entries (create, or update at `version`); false on a conflict.
    private func write(_ owner: ObjectKey, _ entries: [Entry], version: String?) async throws -> Bool {
        var metadata: [(String, SpecNode)] = [
            ("name", .string(Self.name(owner))), ("namespace", .string(owner.namespace)),
            ("labels", .mapping([(Children.managedBy, .string("capstan")), (Children.ownerKindLabel, .string(owner.kind.rawValue)),
                                 (Children.ownerNameLabel, .string(owner.name))])),
        ]
        if let uid = cache.get(owner)?.resource.metadata.uid {
            metadata.append(("ownerReferences", .sequence([.mapping([
                ("apiVersion", .string(capstanAPIVersion)), ("kind", .string(owner.kind.rawValue)), ("name", .string(owner.name)),
                ("uid", .string(uid)), ("controller", .bool(true)), ("blockOwnerDeletion", .bool(true)),
            ])])))
        }
        if let version { metadata.append(("resourceVersion", .string(version))) }
        let data = entries.map { entry in
            (String(entry.number), SpecNode.string(JSONEmitter.emit(.mapping([("hash", .string(entry.hash)), ("template", entry.template)]), pretty: false)))
        }
        let map = SpecNode.mapping([
            ("apiVersion", .string("v1")), ("kind", .string("ConfigMap")),
            ("metadata", .mapping(metadata)), ("data", .mapping(data)),
        ])
        do {
            if version == nil {
                _ = try await client.create(.configMaps, namespace: owner.namespace, map)
            } else {
                _ = try await client.update(.configMaps, namespace: owner.namespace, name: Self.name(owner), map)
            }
            return true
        } catch {
            if error.isConflict || error.isAlreadyExists { return false }
            throw error
        }
    }

    /// Whether the owner has never recorded a revision (its status has no history): then
    /// the ConfigMap is created without being read first, and an AlreadyExists (a crash
    /// between its creation and the status write) falls back to reading it.
    private func isNew(_ owner: ObjectKey) -> Bool {
        guard case .deployment(let deployment)? = cache.get(owner)?.resource else { return false }
        return deployment.status.history.isEmpty
    }

    /// Reads, changes and writes, again on a conflict.
    private func modify<T>(_ owner: ObjectKey, _ change: (inout [Entry]) -> T) async throws -> T {
        for attempt in 0..<5 {
            var (entries, version) = attempt == 0 && isNew(owner) ? ([], nil) : try await read(owner)
            let before = entries.map { "\($0.number):\($0.hash)" }
            let result = change(&entries)
            if entries.map({ "\($0.number):\($0.hash)" }) == before { return result }
            if try await write(owner, entries, version: version) { return result }
        }
        throw KubeError(code: 409, reason: "Conflict", message: "the revisions of \(owner) kept changing under Capstan")
    }

    public func recordRevision(of owner: ObjectKey, hash: String, template: SpecNode) async throws -> (number: Int, template: SpecNode) {
        try await modify(owner) { entries in
            if let newest = entries.last, newest.hash == hash { return (newest.number, newest.template) }
            // An older revision with this template comes back as the newest (a rollback is a
            // new revision, as Kubernetes renumbers ReplicaSets).
            let number = (entries.last?.number ?? 0) + 1
            entries.removeAll { $0.hash == hash }
            entries.append((number, hash, template))
            return (number, template)
        }
    }

    public func revisions(of owner: ObjectKey) async throws -> [(number: Int, hash: String, template: SpecNode)] {
        try await read(owner).entries
    }

    public func pruneRevisions(of owner: ObjectKey, keep: Int, inUse: Set<Int>) async throws {
        try await modify(owner) { entries in
            let kept = Set(entries.suffix(max(0, keep)).map(\.number)).union(inUse)
            entries.removeAll { !kept.contains($0.number) }
        }
    }

    public func removeRevisions(of owner: ObjectKey) async throws {
        try await client.delete(.configMaps, namespace: owner.namespace, name: Self.name(owner))
    }
}
