import CapstanControllers
import CapstanModel
import CapstanRuntime
import Foundation
import Synchronization

extension KubeResource {
    public static let configMaps = KubeResource(group: "", version: "v1", plural: "configmaps", kind: "ConfigMap")
}

/// The revision history of a Capstan Deployment on Kubernetes (the templates rollbacks need),
/// kept in its own status (`status.revisionTemplates`), as Argo Rollouts keeps its revisions
/// in objects it already has: no object of its own per Deployment, and no write of its own —
/// what a reconcile records or prunes goes out with that reconcile's status write, which
/// `KubeObjectStore.writeStatus` merges in. A reconcile that fails before its status write
/// loses only what it recorded itself; the next one records it again.
public final class StatusRevisions: RevisionStore, Sendable {
    typealias Entry = (number: Int, hash: String, template: SpecNode)
    let cache: ObjectCache
    /// What reconciles changed and their status writes have not carried yet, by owner.
    private let pending = Mutex<[ObjectKey: [RevisionTemplate]]>([:])

    public init(cache: ObjectCache) {
        self.cache = cache
    }

    /// The templates as the owner's status (or a reconcile not yet written) has them.
    private func current(_ owner: ObjectKey) -> [RevisionTemplate] {
        if let changed = pending.withLock({ $0[owner] }) { return changed }
        guard case .deployment(let deployment)? = cache.get(owner)?.resource else { return [] }
        return deployment.status.revisionTemplates
    }

    private func modify<T>(_ owner: ObjectKey, _ change: (inout [RevisionTemplate]) -> T) -> T {
        var entries = current(owner)
        let before = entries
        let result = change(&entries)
        if entries != before { pending.withLock { $0[owner] = entries } }
        return result
    }

    private static func entry(_ template: RevisionTemplate) -> Entry? {
        guard let node = try? JSONReader.parse(Data(template.template.utf8)) else { return nil }
        return (template.revision, template.hash, node)
    }

    public func recordRevision(of owner: ObjectKey, hash: String, template: SpecNode) async throws -> (number: Int, template: SpecNode) {
        modify(owner) { entries in
            if let newest = entries.last, newest.hash == hash, let entry = Self.entry(newest) { return (entry.number, entry.template) }
            // An older revision with this template comes back as the newest (a rollback is a
            // new revision, as Kubernetes renumbers ReplicaSets). A Deployment without kept
            // templates continues its history's numbering.
            let history = { () -> Int in
                guard case .deployment(let deployment)? = cache.get(owner)?.resource else { return 0 }
                return deployment.status.history.map(\.revision).max() ?? 0
            }()
            let number = max(entries.last?.revision ?? 0, history) + 1
            entries.removeAll { $0.hash == hash }
            entries.append(RevisionTemplate(revision: number, hash: hash, template: JSONEmitter.emit(template, pretty: false)))
            return (number, template)
        }
    }

    public func revisions(of owner: ObjectKey) async throws -> [(number: Int, hash: String, template: SpecNode)] {
        current(owner).compactMap(Self.entry)
    }

    public func pruneRevisions(of owner: ObjectKey, keep: Int, inUse: Set<Int>) async throws {
        modify(owner) { entries in
            let kept = Set(entries.suffix(max(0, keep)).map(\.revision)).union(inUse)
            entries.removeAll { !kept.contains($0.revision) }
        }
    }

    /// Nothing to delete: they go with the object.
    public func removeRevisions(of owner: ObjectKey) async throws {
        _ = pending.withLock { $0.removeValue(forKey: owner) }
    }

    /// The status a reconcile writes, with what it recorded and pruned.
    func merged(_ owner: ObjectKey, into status: SpecNode) -> SpecNode {
        guard owner.kind == .deployment, let changed = pending.withLock({ $0[owner] }) else { return status }
        var node = DeploymentStatus()
        node.revisionTemplates = changed
        let encoded = node.encode()["revisionTemplates"] ?? .sequence([])
        return status.setting(["revisionTemplates"], encoded)
    }

    /// The status write carried them (or found nothing to change, or the object is gone).
    func written(_ owner: ObjectKey) {
        _ = pending.withLock { $0.removeValue(forKey: owner) }
    }
}
