import CapstanControllers
import CapstanModel
import CapstanRuntime
import CZlibShims
import Foundation
import Synchronization

/// The children Capstan created, as the child watches see them, by resource, namespace and
/// name. Each is kept as compact JSON, deflated against the first child kept of its resource
/// (children of one kind resemble one another: a 2 KB Deployment keeps under 100 bytes), and
/// parsed when a reconcile reads it (parsed trees cost 10 MiB more heap per 1,000 Capstan
/// Deployments, the plain JSON 2.6 MiB, for objects read once per change). The watches
/// see every object of the child kinds; of the others (not labelled
/// `app.kubernetes.io/managed-by=capstan`, no Capstan controller) only the names are kept, so
/// that a child absent from a synced cache is known to be absent without asking the server.
public final class ChildCache: Sendable {
    struct Kept: Sendable {
        var resourceVersion: String?
        /// The compact JSON, deflated against `dictionary` unless that made it no smaller.
        var packed: Packed
        /// What a reconcile reads of it without its status and resourceVersion, and of its
        /// status (hashes of their JSON).
        var withoutStatus: Int
        var status: Int
        /// An `apps/v1` Deployment's track, as a reconcile reads it.
        var track: TrackState?
        /// An `apps/v1` Deployment's replicas asked for.
        var replicas: Int
        /// The Capstan object it belongs to.
        var owner: ObjectKey?
        init(_ node: SpecNode, resource: KubeResource, dictionary: (Data) -> Data) {
            resourceVersion = node["metadata"]?["resourceVersion"]?.scalarText
            owner = ChildCache.owner(of: node)
            let json = Data(JSONEmitter.emit(node, pretty: false).utf8)
            packed = Packed(json, dictionary: dictionary(json))
            let bare = node.setting(["metadata", "resourceVersion"], SpecNode(.null)).setting(["status"], SpecNode(.null))
            withoutStatus = JSONEmitter.emit(bare, pretty: false).hashValue
            status = node["status"].map { JSONEmitter.emit($0, pretty: false).hashValue } ?? 0
            let isTrack = resource == .deployments
            track = isTrack ? KubeWorkload.state(of: node) : nil
            replicas = isTrack ? node["spec"]?["replicas"]?.scalarText.flatMap { Int($0) } ?? 1 : 0
        }
        func node(dictionary: Data) -> SpecNode? {
            packed.json(dictionary: dictionary).flatMap { try? JSONReader.parse($0) }
        }

        /// Whether the change from `previous` (the same spec) is news for the owner's
        /// reconcile: of a track, what the reconciler says matters; of anything else, any
        /// change of the status it keeps.
        func statusMatters(after previous: Kept) -> Bool {
            guard status != previous.status else { return false }
            guard let track, let before = previous.track else { return true }
            return track.matters(after: before, replicas: replicas)
        }
    }

    /// Bytes deflated against a dictionary (zlib's raw deflate), or kept plain.
    struct Packed: Sendable {
        let bytes: Data
        /// The length of the plain bytes; nil when `bytes` are they.
        let plainLength: Int?

        init(_ plain: Data, dictionary: Data) {
            let capacity = capstan_deflate_bound(plain.count)
            let output = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: capacity)
            defer { output.deallocate() }
            let written = plain.withUnsafeBytes { input in
                dictionary.withUnsafeBytes { dictionary in
                    capstan_deflate(dictionary.baseAddress?.assumingMemoryBound(to: UInt8.self), dictionary.count,
                                    input.baseAddress?.assumingMemoryBound(to: UInt8.self), plain.count, output.baseAddress, capacity)
                }
            }
            if written > 0, written < plain.count {
                bytes = Data(buffer: UnsafeBufferPointer(rebasing: output[..<written]))
                plainLength = plain.count
            } else {
                bytes = plain
                plainLength = nil
            }
        }

        func json(dictionary: Data) -> Data? {
            guard let plainLength else { return bytes }
            var plain = Data(count: plainLength)
            let whole = plain.withUnsafeMutableBytes { output in
                bytes.withUnsafeBytes { input in
                    dictionary.withUnsafeBytes { dictionary in
                        capstan_inflate(dictionary.baseAddress?.assumingMemoryBound(to: UInt8.self), dictionary.count,
                                        input.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count,
                                        output.baseAddress?.assumingMemoryBound(to: UInt8.self), plainLength)
                    }
                }
            }
            return whole == 1 ? plain : nil
        }
    }

    /// How soon a child's change wakes its owner.
    public enum Wake: Sendable, Equatable {
        /// At once: it is new, gone, or something but its status changed (drift, a deletion
        /// under way, someone else's now).
        case now(ObjectKey)
        /// Its status changed in a field a reconcile reads: after `coalescing`, so that the
        /// cluster's several status writes of one rollout step cost one reconcile.
        case soon(ObjectKey)

        public var owner: ObjectKey {
            switch self {
            case .now(let key), .soon(let key): return key
            }
        }
    }
    /// How long status changes of a child wait for the ones that follow (the controller
    /// manager writes a rollout's counts and conditions a few milliseconds apart).
    public static let coalescing: Duration = .milliseconds(100)
    private let objects = Mutex<[String: Kept]>([:])
    /// Per resource (`group/plural`), the compact JSON of the first child kept: what the
    /// others are deflated against. Set once: every kept child of the resource needs it.
    private let dictionaries = Mutex<[String: Data]>([:])
    /// Objects of the child kinds that are not Capstan's, by key.
    private let foreign = Mutex<Set<String>>([])
    /// The child kinds whose watch has listed once (`group/plural`).
    private let synced = Mutex<Set<String>>([])
    /// Children seen deleted (a reconcile that makes one again says `Recreated`).
    private let deleted = Mutex<Set<String>>([])
    /// Children Capstan is writing now: the watch may bring the write before its response
    /// does, and that echo is no news for the owner (whose reconcile is the writer).
    private let writing = Mutex<[String: Int]>([:])

    public init() {}

    static func key(_ resource: KubeResource, _ namespace: String, _ name: String) -> String {
        "\(resource.group)/\(resource.plural)/\(namespace)/\(name)"
    }

    /// The resource's dictionary (the first JSON offered becomes it).
    private func dictionary(_ resource: KubeResource, first json: Data) -> Data {
        dictionaries.withLock { dictionaries in
            let key = "\(resource.group)/\(resource.plural)"
            if let dictionary = dictionaries[key] { return dictionary }
            dictionaries[key] = json
            return json
        }
    }

    private func dictionary(_ resource: KubeResource) -> Data {
        dictionaries.withLock { $0["\(resource.group)/\(resource.plural)"] } ?? Data()
    }

    private func kept(_ node: SpecNode, _ resource: KubeResource) -> Kept {
        Kept(Self.trimmed(node), resource: resource) { self.dictionary(resource, first: $0) }
    }

    private func node(_ kept: Kept, _ resource: KubeResource) -> SpecNode? {
        kept.node(dictionary: dictionary(resource))
    }

    static func key(_ resource: KubeResource, _ node: SpecNode) -> String {
        key(resource, node["metadata"]?["namespace"]?.scalarText ?? "", node["metadata"]?["name"]?.scalarText ?? "")
    }

    /// Takes a child watch's change; returns the Capstan object (its owner) to reconcile.
    public func apply(_ change: Reflector.Change, resource: KubeResource) -> ObjectKey? {
        wake(change, resource: resource)?.owner
    }

    /// Takes a child watch's change; returns whom to reconcile and how soon: nobody for a
    /// change of nothing a reconcile reads (a status write refreshing a condition's time).
    public func wake(_ change: Reflector.Change, resource: KubeResource) -> Wake? {
        switch change {
        case .synced:
            synced.withLock { _ = $0.insert("\(resource.group)/\(resource.plural)") }
            return nil
        case .upsert(let node):
            let key = Self.key(resource, node)
            guard Self.isCapstans(node) else {
                // Someone else's (or no longer marked as ours: a reconcile reads it and decides).
                foreign.withLock { _ = $0.insert(key) }
                return objects.withLock { $0.removeValue(forKey: key) }.flatMap(\.owner).map(Wake.now)
            }
            // The watch's echo of our own write (its response is kept already): nothing new,
            // and no reconcile of the owner for it.
            if let version = node["metadata"]?["resourceVersion"]?.scalarText,
               objects.withLock({ $0[key]?.resourceVersion }) == version { return nil }
            let kept = kept(node, resource)
            let previous = objects.withLock { objects in
                defer { objects[key] = kept }
                return objects[key]
            }
            foreign.withLock { _ = $0.remove(key) }
            guard let owner = Self.owner(of: node) else { return nil }
            if writing.withLock({ $0[key] != nil }) { return nil }
            guard let previous, previous.withoutStatus == kept.withoutStatus else { return .now(owner) }
            return kept.statusMatters(after: previous) ? .soon(owner) : nil
        case .delete(let node):
            let key = Self.key(resource, node)
            foreign.withLock { _ = $0.remove(key) }
            let cached = objects.withLock { $0.removeValue(forKey: key) }
            deleted.withLock { _ = $0.insert(key) }
            // A re-list's tombstone has only the name: the cached copy knows the owner.
            return (Self.owner(of: node) ?? cached?.owner).map(Wake.now)
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

    /// An `apps/v1` Deployment child's track as a reconcile reads it, and its owner, without
    /// reading the object back (what `/metrics` and the readiness of Applications ask of every
    /// Deployment).
    public func track(namespace: String, name: String) -> (owner: ObjectKey?, state: TrackState)? {
        objects.withLock { $0[Self.key(.deployments, namespace, name)] }.flatMap { kept in kept.track.map { (kept.owner, $0) } }
    }

    public func get(_ resource: KubeResource, namespace: String, name: String) -> SpecNode? {
        objects.withLock { $0[Self.key(resource, namespace, name)] }.flatMap { node($0, resource) }
    }

    /// A write of the child starts (its echo wakes nobody until `finished`).
    func writing(_ resource: KubeResource, namespace: String, name: String) {
        writing.withLock { $0[Self.key(resource, namespace, name), default: 0] += 1 }
    }

    /// The write ended (its response, if any, was `set`).
    func finished(_ resource: KubeResource, namespace: String, name: String) {
        writing.withLock { writing in
            let key = Self.key(resource, namespace, name)
            if let count = writing[key], count > 1 { writing[key] = count - 1 } else { writing.removeValue(forKey: key) }
        }
    }

    /// Takes the response of our own write, unless the watch already brought a newer version.
    func set(_ resource: KubeResource, _ node: SpecNode) {
        let kept = kept(node, resource)
        let key = Self.key(resource, node)
        objects.withLock { objects in
            guard KubeObjectStore.isNewer(kept.resourceVersion, than: objects[key]?.resourceVersion) else { return }
            objects[key] = kept
        }
    }

    /// What a reconcile never reads is not kept: `managedFields` (often half of an object),
    /// kubectl's last-applied copy (as controller-runtime's cache transforms drop them), and of
    /// the status all but the counts, the observed generation and the conditions' type,
    /// status, reason and message (not their times, which the controller manager refreshes).
    static func trimmed(_ node: SpecNode) -> SpecNode {
        guard var entries = node.entries, let index = entries.firstIndex(where: { $0.key == "metadata" }),
              var metadata = entries[index].value.entries else { return node }
        metadata.removeAll { $0.key == "managedFields" }
        if let annotations = metadata.firstIndex(where: { $0.key == "annotations" }), var values = metadata[annotations].value.entries {
            values.removeAll { $0.key == "kubectl.kubernetes.io/last-applied-configuration" }
            metadata[annotations].value = SpecNode(.mapping(values))
        }
        entries[index].value = SpecNode(.mapping(metadata))
        if let status = entries.firstIndex(where: { $0.key == "status" }) {
            var read: [(String, SpecNode)] = []
            for entry in entries[status].value.entries ?? [] {
                switch entry.key {
                case "observedGeneration", "replicas", "updatedReplicas", "readyReplicas", "availableReplicas":
                    read.append((entry.key, entry.value))
                case "conditions":
                    guard case .sequence(let items) = entry.value.value else { continue }
                    let conditions = items.map { condition in
                        SpecNode.mapping(["type", "status", "reason", "message"].compactMap { field in condition[field].map { (field, $0) } })
                    }
                    read.append((entry.key, .sequence(conditions)))
                default:
                    break
                }
            }
            if read.isEmpty { entries.remove(at: status) } else { entries[status].value = .mapping(read) }
        }
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

    /// The bytes the kept children take (deflated or plain), without the dictionaries.
    var keptBytes: Int { objects.withLock { $0.values.reduce(0) { $0 + $1.packed.bytes.count } } }
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

