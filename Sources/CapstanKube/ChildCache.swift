import CapstanControllers
import CapstanModel
import CapstanRuntime
import Foundation
import Synchronization

/// The children Capstan created, as the child watches see them, by resource, namespace and
/// name. Each is kept as compact JSON and parsed when a reconcile reads it (parsed trees cost
/// 10 MiB more heap per 1,000 Capstan Deployments, for objects read once per change). The watches
/// see every object of the child kinds; of the others (not labelled
/// `app.kubernetes.io/managed-by=capstan`, no Capstan controller) only the names are kept, so
/// that a child absent from a synced cache is known to be absent without asking the server.
public final class ChildCache: Sendable {
    struct Kept: Sendable {
        var resourceVersion: String?
        var json: Data
        init(_ node: SpecNode) {
            resourceVersion = node["metadata"]?["resourceVersion"]?.scalarText
            json = Data(JSONEmitter.emit(node, pretty: false).utf8)
        }
        var node: SpecNode? { try? JSONReader.parse(json) }
    }
    private let objects = Mutex<[String: Kept]>([:])
    /// Objects of the child kinds that are not Capstan's, by key.
    private let foreign = Mutex<Set<String>>([])
    /// The child kinds whose watch has listed once (`group/plural`).
    private let synced = Mutex<Set<String>>([])
    /// Children seen deleted (a reconcile that makes one again says `Recreated`).
    private let deleted = Mutex<Set<String>>([])

    public init() {}

    static func key(_ resource: KubeResource, _ namespace: String, _ name: String) -> String {
        "\(resource.group)/\(resource.plural)/\(namespace)/\(name)"
    }

    static func key(_ resource: KubeResource, _ node: SpecNode) -> String {
        key(resource, node["metadata"]?["namespace"]?.scalarText ?? "", node["metadata"]?["name"]?.scalarText ?? "")
    }

    /// Takes a child watch's change; returns the Capstan object (its owner) to reconcile.
    public func apply(_ change: Reflector.Change, resource: KubeResource) -> ObjectKey? {
        switch change {
        case .synced:
            synced.withLock { _ = $0.insert("\(resource.group)/\(resource.plural)") }
            return nil
        case .upsert(let node):
            let key = Self.key(resource, node)
            guard Self.isCapstans(node) else {
                // Someone else's (or no longer marked as ours: a reconcile reads it and decides).
                foreign.withLock { _ = $0.insert(key) }
                return objects.withLock { $0.removeValue(forKey: key) }.flatMap { $0.node.flatMap(Self.owner(of:)) }
            }
            // The watch's echo of our own write (its response is kept already): nothing new,
            // and no reconcile of the owner for it.
            if let version = node["metadata"]?["resourceVersion"]?.scalarText,
               objects.withLock({ $0[key]?.resourceVersion }) == version { return nil }
            let kept = Kept(Self.trimmed(node))
            objects.withLock { $0[key] = kept }
            foreign.withLock { _ = $0.remove(key) }
            return Self.owner(of: node)
        case .delete(let node):
            let key = Self.key(resource, node)
            foreign.withLock { _ = $0.remove(key) }
            let cached = objects.withLock { $0.removeValue(forKey: key) }
            deleted.withLock { _ = $0.insert(key) }
            // A re-list's tombstone has only the name: the cached copy knows the owner.
            return Self.owner(of: node) ?? cached?.node.flatMap(Self.owner(of:))
        }
    }

    /// Whether Capstan made it: its label, or a Capstan Deployment as its controller.
    static func isCapstans(_ node: SpecNode) -> Bool {
        node["metadata"]?["labels"]?[Children.managedBy]?.scalarText == "capstan" || Children.controller(of: node) != nil
    }

    /// Whether the watch of `resource` has listed once (for Traefik's kinds: that the cluster
    /// serves them and Capstan sees its children of them).
    public func isSynced(_ resource: KubeResource) -> Bool {
        synced.withLock { $0.contains("\(resource.group)/\(resource.plural)") }
    }

    /// Whether an object of that name may exist though the cache has no child of that name:
    /// someone else's is there, or the watch has not listed yet.
    public func mayExist(_ resource: KubeResource, namespace: String, name: String) -> Bool {
        guard synced.withLock({ $0.contains("\(resource.group)/\(resource.plural)") }) else { return true }
        return foreign.withLock { $0.contains(Self.key(resource, namespace, name)) }
    }

    /// The Capstan object a child belongs to, of any kind: its controller ownerReference, or
    /// (children of a spec directory's objects have none) its owner labels.
    public static func owner(of node: SpecNode) -> ObjectKey? {
        let namespace = node["metadata"]?["namespace"]?.scalarText ?? "default"
        if let controller = Children.controller(of: node) {
            return ObjectKey(kind: controller.kind, namespace: namespace, name: controller.name)
        }
        let labels = node["metadata"]?["labels"]
        guard let kind = labels?[Children.ownerKindLabel]?.scalarText.flatMap(ResourceKind.init(rawValue:)),
              let name = labels?[Children.ownerNameLabel]?.scalarText else { return nil }
        return ObjectKey(kind: kind, namespace: namespace, name: name)
    }

    public func get(_ resource: KubeResource, namespace: String, name: String) -> SpecNode? {
        objects.withLock { $0[Self.key(resource, namespace, name)] }?.node
    }

    /// Takes the response of our own write, unless the watch already brought a newer version.
    func set(_ resource: KubeResource, _ node: SpecNode) {
        let kept = Kept(Self.trimmed(node))
        let key = Self.key(resource, node)
        objects.withLock { objects in
            guard KubeObjectStore.isNewer(kept.resourceVersion, than: objects[key]?.resourceVersion) else { return }
            objects[key] = kept
        }
    }

    /// What a reconcile never reads is not kept: `managedFields` (often half of an object)
    /// and kubectl's last-applied copy, as controller-runtime's cache transforms drop them.
    static func trimmed(_ node: SpecNode) -> SpecNode {
        guard var entries = node.entries, let index = entries.firstIndex(where: { $0.key == "metadata" }),
              var metadata = entries[index].value.entries else { return node }
        metadata.removeAll { $0.key == "managedFields" }
        if let annotations = metadata.firstIndex(where: { $0.key == "annotations" }), var values = metadata[annotations].value.entries {
            values.removeAll { $0.key == "kubectl.kubernetes.io/last-applied-configuration" }
            metadata[annotations].value = SpecNode(.mapping(values))
        }
        entries[index].value = SpecNode(.mapping(metadata))
        return SpecNode(.mapping(entries))
    }

    func remove(_ resource: KubeResource, namespace: String, name: String) {
        _ = objects.withLock { $0.removeValue(forKey: Self.key(resource, namespace, name)) }
    }

    /// Whether the child was seen deleted since it was last made (and forgets it).
    func wasDeleted(_ resource: KubeResource, namespace: String, name: String) -> Bool {
        deleted.withLock { $0.remove(Self.key(resource, namespace, name)) != nil }
    }

    public var count: Int { objects.withLock { $0.count } }
}

/// What Capstan made on the cluster for owners that are not cluster objects (a spec directory's),
/// recorded before it is made, as the local platform's inventory: only what is recorded is
/// ever deleted as garbage.
public protocol ChildInventory: Sendable {
    func recordChild(_ id: String, owner: ObjectKey) throws
    func removeChild(_ id: String) throws
    func children(of owner: ObjectKey) throws -> [String]
}

/// How Capstan knows a child is its own.
public enum ChildOwnership: Sendable {
    /// The owner is a custom resource: children carry its controller ownerReference, and the
    /// finalizer `capstan.dev/cleanup` removes them before it goes.
    case ownerReference
    /// The owner comes from a spec directory (`--platform kube`): children carry the owner
    /// labels and are recorded in the state store's inventory.
    case inventory(any ChildInventory)
}

