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

    /// Takes a child watch's change; returns the Capstan Deployment to reconcile.
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

    /// Whether an object of that name may exist though the cache has no child of that name:
    /// someone else's is there, or the watch has not listed yet.
    public func mayExist(_ resource: KubeResource, namespace: String, name: String) -> Bool {
        guard synced.withLock({ $0.contains("\(resource.group)/\(resource.plural)") }) else { return true }
        return foreign.withLock { $0.contains(Self.key(resource, namespace, name)) }
    }

    /// The Capstan Deployment a child belongs to: its controller ownerReference, or (children
    /// of a spec directory's objects have none) its owner labels.
    static func owner(of node: SpecNode) -> ObjectKey? {
        let namespace = node["metadata"]?["namespace"]?.scalarText ?? "default"
        if let controller = Children.controller(of: node) {
            return ObjectKey(kind: .deployment, namespace: namespace, name: controller.name)
        }
        let labels = node["metadata"]?["labels"]
        guard labels?[Children.ownerKindLabel]?.scalarText == "Deployment", let name = labels?[Children.ownerNameLabel]?.scalarText else { return nil }
        return ObjectKey(kind: .deployment, namespace: namespace, name: name)
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

/// A new template's revision number was guessed from the status, and the revision store
/// numbered it otherwise.
struct RevisionMispredicted: Error {}

/// Reconciles Capstan Deployments on Kubernetes: the owned `apps/v1` Deployment, Service and
/// Ingress are applied (server-side apply, field manager `capstan`) when they differ from what
/// the spec asks, which also reverts edits made behind Capstan's back and recreates deleted
/// children; the status is read back from the `apps/v1` Deployment. The finalizer
/// `capstan.dev/cleanup` deletes the children before the owner goes (ownerReferences are the
/// second safety net, for a cluster whose garbage collector does not run).
public struct KubeDeploymentReconciler: Reconciler {
    public typealias Key = ObjectKey

    public static let finalizer = "capstan.dev/cleanup"
    static let appliedHash = "capstan.dev/applied-hash"
    /// How often a rollout in progress is looked at without a child event (a safety net).
    public static let progressCheck: Duration = .seconds(30)
    static let childResources: [KubeResource] = [.deployments, .services, .ingresses]

    let store: any ObjectStore
    let events: any EventRecorder
    let cache: ObjectCache
    let client: KubeClient
    let children: ChildCache
    let ownership: ChildOwnership
    /// The templates of past revisions (rollbacks run them again).
    let revisions: any RevisionStore
    let prune: Bool
    let now: @Sendable () -> Date
    /// Takes an object we patched (the finalizer) into the cache at once.
    let patched: @Sendable (SpecNode) -> Void

    /// For the custom resources of the cluster.
    public init(store: KubeObjectStore, children: ChildCache, prune: Bool = true, now: @escaping @Sendable () -> Date = Date.init) {
        self.store = store
        self.events = store
        self.cache = store.cache
        self.client = store.client
        self.children = children
        self.ownership = .ownerReference
        self.revisions = ConfigMapRevisions(client: store.client, cache: store.cache)
        self.prune = prune
        self.now = now
        self.patched = { store.took($0, kind: .deployment) }
    }

    /// For objects of another source (a spec directory) run on the cluster.
    public init(store: any ObjectStore, events: any EventRecorder, cache: ObjectCache, client: KubeClient, children: ChildCache,
                inventory: any ChildInventory, revisions: any RevisionStore, prune: Bool = true, now: @escaping @Sendable () -> Date = Date.init) {
        self.store = store
        self.events = events
        self.cache = cache
        self.client = client
        self.children = children
        self.ownership = .inventory(inventory)
        self.revisions = revisions
        self.prune = prune
        self.now = now
        self.patched = { _ in }
    }

    var usesOwnerReferences: Bool {
        if case .ownerReference = ownership { return true }
        return false
    }

    public func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
        guard let stored = cache.get(key), case .deployment(let deployment) = stored.resource else {
            // Gone without our finalizer (it was removed by hand, or the object went before we
            // added it): what it owned goes here too, not only by the garbage collector.
            try await cleanUp(key, uid: nil)
            return .done
        }
        if usesOwnerReferences {
            if deployment.metadata.deletionTimestamp != nil {
                if deployment.metadata.finalizers.contains(Self.finalizer) {
                    try await cleanUp(key, uid: deployment.metadata.uid)
                    try await setFinalizer(present: false, on: deployment)
                }
                return .done
            }
        }
        // Our finalizer is added alongside the first writes, not before them (one round trip
        // less before a new Deployment's children exist). An owner deleted before it lands is
        // gone without it, and a reconcile of a gone owner deletes what it owned (the
        // ownerReferences are the second net); the status is written after it landed, so the
        // finalizer's resourceVersion precondition does not meet our own status write.
        async let finalizerAdded: Void = addFinalizer(to: deployment)

        let time = Timestamp(now())
        let generation = stored.generation
        var status = deployment.status
        var events: [(EventType, String, String)] = []
        var result: ReconcileResult
        // `capstan.dev/rollback-to` on a custom resource (`capstan rollback --kube` writes it):
        // taken once the status says so, then removed.
        let rollbackRequest = usesOwnerReferences ? deployment.metadata.annotations[RollbackRequest.annotation] : nil
        var requestTaken = false
        do {
            do {
                result = try await converge(deployment, generation: generation, time: time, rollbackRequest: rollbackRequest, predictRevision: true,
                                            requestTaken: &requestTaken, status: &status, events: &events)
            } catch is RevisionMispredicted {
                // The revision store numbered the new template otherwise than the status
                // suggested (a crash between the two writes, a rollback recorded but not yet
                // in the history): again, with the store's number.
                (status, events, requestTaken) = (deployment.status, [], false)
                result = try await converge(deployment, generation: generation, time: time, rollbackRequest: rollbackRequest, predictRevision: false,
                                            requestTaken: &requestTaken, status: &status, events: &events)
            }
        } catch let error as WorkloadError {
            status.markStalled(reason: error.reason, message: error.message, generation: generation, now: time)
            status.conditions.set(DeploymentConditions.progressing, .false, reason: error.reason, message: error.message, observedGeneration: generation, now: time)
            result = .done
        }
        try await finalizerAdded
        if let hold = stored.hold {
            status.markStalled(reason: hold.reason, message: hold.message, generation: generation, now: time)
        }
        let before = deployment.status.conditions[type: ConditionType.ready]
        let after = status.conditions[type: ConditionType.ready]
        if let after, after.status != .unknown, before?.status != after.status || before?.reason != after.reason, after.reason != stored.hold?.reason,
           !events.contains(where: { $0.1 == after.reason }) {
            events.append((after.status == .true ? .normal : .warning, after.reason, after.message))
        }
        // The Events are written alongside the status, not after it (one round trip less);
        // those of one reconcile keep their order.
        let recorder = self.events, happened = events
        @Sendable func recordAll() async {
            for (type, reason, message) in happened { await recorder.record(type, reason: reason, message: message, about: key) }
        }
        async let recorded: Void = recordAll()
        if status != deployment.status {
            status.lastReconcileTime = time
            _ = try await store.writeStatus(key, status.encode())
        }
        await recorded
        if let rollbackRequest, requestTaken { try await removeRequest(RollbackRequest.annotation, value: rollbackRequest, from: deployment) }
        return result
    }

    /// `capstan rollback` in directory mode with `--platform kube` (a request in the state store).
    public func requestRollback(_ key: ObjectKey, toRevision: Int?) async throws -> String {
        try await RollbackRequest.apply(key, to: toRevision, store: store, events: events, revisions: revisions)
    }

    /// Removes a request annotation that was taken, unless it changed since (a JSON patch
    /// `test`: a new request stays for the next reconcile).
    private func removeRequest(_ annotation: String, value: String, from deployment: Deployment) async throws {
        let path = "/metadata/annotations/" + annotation.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
        let operations = SpecNode.sequence([
            .mapping([("op", .string("test")), ("path", .string(path)), ("value", .string(value))]),
            .mapping([("op", .string("remove")), ("path", .string(path))]),
        ])
        do {
            let patched = try await client.patch(.capstan(.deployment), namespace: deployment.metadata.namespace, name: deployment.metadata.name,
                                                 operations, type: .json)
            self.patched(patched)
        } catch {
            if error.isNotFound || error.code == 422 { return }  // gone, or the request changed
            throw error
        }
    }

    /// Applies the children and reads the rollout back into `status`. With `predictRevision`,
    /// a new template is taken to be the revision after the newest in the status (1 for a new
    /// Deployment) and recorded alongside the children; `RevisionMispredicted` when the store
    /// numbers it otherwise.
    private func converge(_ deployment: Deployment, generation: Int, time: Timestamp, rollbackRequest: String?, predictRevision: Bool,
                          requestTaken: inout Bool, status: inout DeploymentStatus,
                          events: inout [(EventType, String, String)]) async throws -> ReconcileResult {
        let spec = deployment.spec
        let namespace = deployment.metadata.namespace
        if spec.strategy.type == .blueGreen {
            throw WorkloadError("NotSupported", "strategy BlueGreen is not supported yet; the running revision is kept")
        }
        if spec.window != nil {
            throw WorkloadError("NotSupported", "deployment windows are not supported yet; the running revision is kept")
        }
        let applicationKey = ObjectKey(kind: .application, namespace: namespace, name: spec.application)
        guard case .application(let application)? = cache.get(applicationKey)?.resource else {
            throw WorkloadError("ApplicationNotFound", "application \(spec.application) does not exist in namespace \(namespace)")
        }
        guard let repository = application.spec.image else {
            throw WorkloadError("ImageMissing", "application \(spec.application) has no image: the Kubernetes platform runs images (spec.image)")
        }
        let key = ObjectKey(kind: .deployment, namespace: namespace, name: deployment.metadata.name)
        _ = try Children.imageReference(repository, version: spec.version).get()
        let specTemplate = WorkloadTemplate(deployment: deployment, application: application, applicationFile: "")

        // Which revision runs: the spec's, unless a rollback holds and the spec is unchanged
        // since. A new template (or a return to an old one, as Kubernetes renumbers
        // ReplicaSets) is the next revision number.
        if let rollback = status.rollback, rollback.specTemplateHash != specTemplate.hash {
            status.rollback = nil  // the spec moved on: roll it out
        }
        if let value = rollbackRequest {
            if status.rollback?.request != value {
                do {
                    let (rollback, message) = try await RollbackRequest.plan(key, to: RollbackRequest.revision(from: value), status: status,
                                                                             specTemplateHash: specTemplate.hash, revisions: revisions, request: value)
                    status.rollback = rollback
                    events.append((.normal, "RollbackRequested", message))
                } catch let error as WorkloadError {
                    events.append((.warning, "RollbackRefused", "\(RollbackRequest.annotation): \(error.message)"))
                }
            }
            requestTaken = true
        }
        var template = specTemplate
        let revision: Int
        var predicted = false
        var pruneTo: (keep: Int, inUse: Set<Int>)?
        if let rollback = status.rollback,
           let held = try await revisions.revisions(of: key).first(where: { $0.number == rollback.toRevision }) {
            template = try WorkloadTemplate.decode(held.template)
            revision = held.number
        } else if status.rollback == nil, let last = status.history.last, last.templateHash == specTemplate.hash {
            revision = last.revision  // recorded when it started: no need to read the store again
        } else if predictRevision, status.rollback == nil {
            // A new template is the next number after the newest the status knows: recorded
            // below, alongside the children (their update does not wait for the store).
            revision = (status.history.map(\.revision).max() ?? 0) + 1
            predicted = true
        } else {
            status.rollback = nil
            revision = try await revisions.recordRevision(of: key, hash: specTemplate.hash, template: specTemplate.encode()).number
        }
        let image = try Children.imageReference(template.spec.image ?? repository, version: template.version).get()
        if status.history.last?.templateHash != template.hash || status.history.last?.revision != revision {
            if let index = status.history.indices.last, status.history[index].finishedAt == nil {
                status.history[index].outcome = "Superseded"
                status.history[index].finishedAt = time
            }
            var record = RevisionRecord()
            record.revision = revision
            record.version = template.version
            record.templateHash = template.hash
            record.startedAt = time
            status.history.append(record)
            let limit = max(spec.revisionHistoryLimit, 1) + 1
            let trimmed = status.history.count > limit
            while status.history.count > limit { status.history.removeFirst() }
            events.append((.normal, "RolloutStarted", "revision \(revision): version \(template.version), image \(image)"))
            if trimmed { pruneTo = (limit, Set(status.history.map(\.revision))) }
        }

        let desired: [(KubeResource, SpecNode?)] = [
            (.deployments, Children.deployment(deployment, template: template, image: image, revision: revision)),
            (.services, Children.service(deployment, application: application)),
            (.ingresses, try Children.ingress(deployment, application: application).get()),
        ]
        // The children are independent: made side by side (one round trip, not three).
        @Sendable func ensured(_ resource: KubeResource, _ wanted: SpecNode?) async throws -> (SpecNode?, [(EventType, String, String)]) {
            var collected: [(EventType, String, String)] = []
            let child = try await ensure(resource, wanted, owner: deployment, events: &collected)
            return (child, collected)
        }
        let revisions = self.revisions, hash = specTemplate.hash, encoded = predicted ? specTemplate.encode() : nil
        @Sendable func recordPredicted() async throws -> Int? {
            guard let encoded else { return nil }
            return try await revisions.recordRevision(of: key, hash: hash, template: encoded).number
        }
        async let recorded = recordPredicted()
        async let appsChild = ensured(desired[0].0, desired[0].1)
        async let serviceChild = ensured(desired[1].0, desired[1].1)
        async let ingressChild = ensured(desired[2].0, desired[2].1)
        let made = try await [appsChild, serviceChild, ingressChild]
        if let number = try await recorded, number != revision { throw RevisionMispredicted() }
        // After the new revision is recorded (the same ConfigMap).
        if let pruneTo { try await revisions.pruneRevisions(of: key, keep: pruneTo.keep, inUse: pruneTo.inUse) }
        events += made.flatMap(\.1)
        guard let apps = made[0].0 else { return .requeue(after: Self.progressCheck) }
        var result = observe(apps, deployment: deployment, template: template, revision: revision, generation: generation, time: time, status: &status)

        // A revision that failed its deadline: back to the last one that succeeded.
        if status.phase == .failed, status.rollback == nil, status.conditions[type: ConditionType.stalled]?.reason == "ProgressDeadlineExceeded" {
            let failure = status.conditions[type: ConditionType.stalled]?.message ?? "no progress"
            if spec.autoRollback, let good = status.history.last(where: { $0.outcome == "Succeeded" && $0.templateHash != template.hash }),
               let goodTemplate = try await revisions.revisions(of: key).first(where: { $0.hash == good.templateHash }) {
                let recorded = try await revisions.recordRevision(of: key, hash: good.templateHash, template: goodTemplate.template)
                var rollback = DeploymentRollback()
                rollback.toRevision = recorded.number
                rollback.specTemplateHash = specTemplate.hash
                rollback.reason = "RolledBack"
                rollback.message = "revision \(revision) (version \(template.version)) failed: no progress within \(spec.progressDeadline)"
                status.rollback = rollback
                if let index = status.history.lastIndex(where: { $0.revision == revision }) { status.history[index].outcome = "RolledBack" }
                status.phase = .rolledBack
                events.append((.warning, "ProgressDeadlineExceeded", failure))
                events.append((.warning, "RolledBack", "rolling back to revision \(recorded.number) (version \(good.version)): \(rollback.message!)"))
                status.markReconciling(reason: "RolledBack", message: "rolling back to version \(good.version): \(rollback.message!)", generation: generation, now: time)
                result = .requeue(after: .milliseconds(1))
            }
        }
        return result
    }

    /// Makes one child what the spec asks (or removes it when nothing is asked); returns it.
    private func ensure(_ resource: KubeResource, _ wanted: SpecNode?, owner: Deployment,
                        events: inout [(EventType, String, String)]) async throws -> SpecNode? {
        let namespace = owner.metadata.namespace, name = owner.metadata.name
        let what = "\(resource.kind) \(name)"
        var observed = children.get(resource, namespace: namespace, name: name)
        // Absent from a synced watch that sees every object of the kind: no read first. The
        // apply is then not forced, so an object someone made since the watch's view and that
        // sets any field differently answers 409 and is read and judged below.
        var unseen = false
        if observed == nil, wanted != nil {
            if children.mayExist(resource, namespace: namespace, name: name) {
                // Not among our children, but something of that name may exist.
                observed = try await client.get(resource, namespace: namespace, name: name)
            } else {
                unseen = true
            }
        }
        let id = ChildCache.key(resource, namespace, name)
        func conflict() -> WorkloadError { WorkloadError("ChildConflict", "\(what) exists and is not owned by this Deployment; Capstan leaves it alone (delete it or rename the Deployment)") }
        if let observed, !isOurs(observed, id: id, owner: owner) {
            guard wanted != nil else { return nil }  // not ours, not wanted: none of our business
            throw conflict()
        }
        guard let wanted else {
            if observed != nil {
                try await client.delete(resource, namespace: namespace, name: name, uid: observed?["metadata"]?["uid"]?.scalarText)
                children.remove(resource, namespace: namespace, name: name)
                if case .inventory(let inventory) = ownership { try inventory.removeChild(id) }
                events.append((.normal, "OrphanDeleted", "\(what) is no longer wanted (the application changed); deleted"))
            }
            return nil
        }
        let hash = String(SpecHash.of(wanted).prefix(16))
        let desired = wanted.setting(["metadata", "annotations", Self.appliedHash], .string(hash))
        if Children.contains(observed, desired) { return observed }
        // Recorded before it is made: a crash in between leaves a record of nothing, never a
        // child nobody knows about.
        if case .inventory(let inventory) = ownership { try inventory.recordChild(id, owner: ObjectKey(kind: .deployment, namespace: namespace, name: name)) }
        var applied: SpecNode
        do {
            applied = try await client.patch(resource, namespace: namespace, name: name, desired, type: .apply, force: !unseen)
        } catch {
            guard unseen, error.code == 409 else { throw error }
            observed = try await client.get(resource, namespace: namespace, name: name)
            if let observed, !isOurs(observed, id: id, owner: owner) {
                throw conflict()
            }
            applied = try await client.patch(resource, namespace: namespace, name: name, desired, type: .apply, force: true)
        }
        children.set(resource, applied)
        if let observed {
            // The same spec applied before: someone changed the child.
            if observed["metadata"]?["annotations"]?[Self.appliedHash]?.scalarText == hash {
                events.append((.normal, "DriftCorrected", "\(what) was changed behind Capstan's back; reverted"))
            }
        } else if children.wasDeleted(resource, namespace: namespace, name: name) {
            events.append((.normal, "Recreated", "\(what) was deleted behind Capstan's back; created again"))
        }
        return applied
    }

    /// Reads the `apps/v1` Deployment's rollout into the status.
    private func observe(_ apps: SpecNode, deployment: Deployment, template: WorkloadTemplate, revision: Int, generation: Int,
                         time: Timestamp, status: inout DeploymentStatus) -> ReconcileResult {
        let spec = deployment.spec
        let observed = apps["status"]
        func count(_ field: String) -> Int { observed?[field]?.scalarText.flatMap { Int($0) } ?? 0 }
        let replicas = count("replicas"), updated = count("updatedReplicas"), ready = count("readyReplicas"), available = count("availableReplicas")
        let childGeneration = apps["metadata"]?["generation"]?.scalarText.flatMap { Int($0) } ?? 1
        let seenGeneration = observed?["observedGeneration"]?.scalarText.flatMap { Int($0) } ?? 0
        func condition(_ type: String) -> SpecNode? {
            guard case .sequence(let items)? = observed?["conditions"]?.value else { return nil }
            return items.first { $0["type"]?.scalarText == type }
        }
        status.replicas = replicas
        status.updatedReplicas = updated
        status.readyReplicas = ready
        status.availableReplicas = available
        status.version = template.version
        status.currentRevision = revision
        for type in [DeploymentConditions.available, DeploymentConditions.progressing] {
            if let mirrored = condition(type) {
                let value = ConditionStatus(rawValue: mirrored["status"]?.scalarText ?? "") ?? .unknown
                status.conditions.set(type, value, reason: mirrored["reason"]?.scalarText ?? "", message: mirrored["message"]?.scalarText ?? "",
                                      observedGeneration: generation, now: time)
            }
        }
        let index = status.history.lastIndex { $0.revision == revision }
        let description = "revision \(revision) (version \(template.version))"
        let progressing = condition(DeploymentConditions.progressing)
        if seenGeneration >= childGeneration, progressing?["reason"]?.scalarText == "ProgressDeadlineExceeded" {
            status.phase = .failed
            status.markStalled(reason: "ProgressDeadlineExceeded",
                               message: "\(description) made no progress within \(spec.progressDeadline): \(ready)/\(spec.replicas) ready",
                               generation: generation, now: time)
            if let index, status.history[index].finishedAt == nil {
                status.history[index].outcome = "Failed"
                status.history[index].finishedAt = time
            }
            return .requeue(after: Self.progressCheck)
        }
        let done = seenGeneration >= childGeneration && updated == spec.replicas && ready >= spec.replicas
            && available >= spec.replicas && replicas == spec.replicas
        if done, let rollback = status.rollback {
            status.phase = .rolledBack
            if rollback.reason == "RollbackRequested" {
                // What was asked for is running: ready, as in directory mode.
                status.markReady(reason: "RollbackActive", message: "rolled back on request to \(description): \(ready)/\(spec.replicas) ready",
                                 generation: generation, now: time)
            } else {
                status.markStalled(reason: "RollbackActive", message: "\(rollback.message ?? "rolled back") — running \(description) until the spec changes",
                                   generation: generation, now: time)
            }
            if let index, status.history[index].finishedAt == nil {
                status.history[index].outcome = "Succeeded"
                status.history[index].finishedAt = time
            }
            return .done
        }
        if done {
            status.phase = spec.paused ? .paused : .succeeded
            status.markReady(reason: "Succeeded", message: "\(description): \(ready)/\(spec.replicas) ready", generation: generation, now: time)
            if let index {
                if status.history[index].finishedAt == nil {
                    status.history[index].outcome = "Succeeded"
                    status.history[index].finishedAt = time
                }
                status.history[index].progressedAt = status.history[index].progressedAt ?? time
            }
            return .done
        }
        if spec.paused {
            status.phase = .paused
            status.markReconciling(reason: "Paused", message: "\(description): paused at \(updated)/\(spec.replicas) updated", generation: generation, now: time)
            return .done
        }
        status.phase = status.rollback == nil ? .progressing : .rolledBack
        status.markReconciling(reason: status.rollback == nil ? "RollingOut" : "RollingBack", message: "\(description): \(ready)/\(spec.replicas) ready, \(updated) updated, \(replicas) running",
                               generation: generation, now: time)
        return .requeue(after: Self.progressCheck)
    }

    /// Whether an existing child is Capstan's for this owner: controlled by it (custom
    /// resources), or recorded in the inventory, or carrying exactly its owner labels and no
    /// controller (made from the same spec directory by an earlier state directory).
    private func isOurs(_ observed: SpecNode, id: String, owner: Deployment) -> Bool {
        switch ownership {
        case .ownerReference:
            return Children.controller(of: observed)?.uid == owner.metadata.uid
        case .inventory(let inventory):
            // The labels first: they answer without reading the store on every reconcile.
            let labels = observed["metadata"]?["labels"]
            if Children.controller(of: observed) == nil, labels?[Children.managedBy]?.scalarText == "capstan",
               labels?[Children.ownerKindLabel]?.scalarText == "Deployment", labels?[Children.ownerNameLabel]?.scalarText == owner.metadata.name {
                return true
            }
            let key = ObjectKey(kind: .deployment, namespace: owner.metadata.namespace, name: owner.metadata.name)
            return (try? inventory.children(of: key))?.contains(id) == true
        }
    }

    private func addFinalizer(to deployment: Deployment) async throws {
        guard usesOwnerReferences, deployment.metadata.deletionTimestamp == nil, !deployment.metadata.finalizers.contains(Self.finalizer) else { return }
        try await setFinalizer(present: true, on: deployment)
    }

    /// Adds or removes our finalizer (a merge patch conditioned on the resourceVersion: a
    /// conflict is retried with the newer object).
    private func setFinalizer(present: Bool, on deployment: Deployment) async throws {
        var finalizers = deployment.metadata.finalizers.filter { $0 != Self.finalizer }
        if present { finalizers.append(Self.finalizer) }
        var metadata: [(String, SpecNode)] = [("finalizers", .sequence(finalizers.map { .string($0) }))]
        if let version = deployment.metadata.resourceVersion { metadata.append(("resourceVersion", .string(version))) }
        do {
            let patched = try await client.patch(.capstan(.deployment), namespace: deployment.metadata.namespace, name: deployment.metadata.name,
                                                 .mapping([("metadata", .mapping(metadata))]))
            self.patched(patched)
        } catch {
            if error.isNotFound { return }
            throw error
        }
    }

    /// Deletes what a deleted Deployment owned (or, with pruning off for it, lets it go: the
    /// ownerReference is removed so the garbage collector keeps it too).
    private func cleanUp(_ key: ObjectKey, uid: String?) async throws {
        var owned: [(KubeResource, SpecNode)] = []
        switch ownership {
        case .ownerReference:
            for resource in Self.childResources {
                guard let child = children.get(resource, namespace: key.namespace, name: key.name),
                      let controller = Children.controller(of: child), controller.name == key.name, uid == nil || controller.uid == uid else { continue }
                owned.append((resource, child))
            }
        case .inventory(let inventory):
            for id in try inventory.children(of: key) {
                guard let resource = Self.childResources.first(where: { id.hasPrefix("\($0.group)/\($0.plural)/") }) else { continue }
                if let child = try await client.get(resource, namespace: key.namespace, name: key.name) {
                    owned.append((resource, child))
                } else {
                    try inventory.removeChild(id)  // gone already
                }
            }
        }
        let decision = Prune.decide(enabled: prune, annotated: await store.pruneDisabled(key))
        if decision == .delete { try await revisions.removeRevisions(of: key) }
        guard !owned.isEmpty else { return }
        let lines = owned.map { "\($0.0.kind) \(key.name)" }
        for (resource, child) in owned {
            let childUID = child["metadata"]?["uid"]?.scalarText
            if decision == .delete {
                try await client.delete(resource, namespace: key.namespace, name: key.name, uid: childUID)
                children.remove(resource, namespace: key.namespace, name: key.name)
                if case .inventory(let inventory) = ownership { try inventory.removeChild(ChildCache.key(resource, key.namespace, key.name)) }
            } else if usesOwnerReferences {
                var metadata: [(String, SpecNode)] = [("ownerReferences", SpecNode(.null))]
                if let version = child["metadata"]?["resourceVersion"]?.scalarText { metadata.append(("resourceVersion", .string(version))) }
                do {
                    _ = try await client.patch(resource, namespace: key.namespace, name: key.name, .mapping([("metadata", .mapping(metadata))]))
                } catch {
                    if !error.isNotFound { throw error }
                }
            }
        }
        if decision == .delete {
            await events.record(.normal, reason: "OrphanDeleted", message: "deployment deleted; removed " + lines.joined(separator: ", "), about: key)
        } else {
            let (type, reason, message) = Prune.skipped(decision, kind: "deployment", would: lines)
            await events.record(type, reason: reason, message: message, about: key)
        }
    }
}

/// Applications on Kubernetes: nothing to build; the artifact of a version is the image
/// reference it runs.
public final class KubeArtifacts: ArtifactPlatform, Sendable {
    private let prepared = Mutex<[ObjectKey: [ArtifactStatus]]>([:])

    public init() {}

    public func checkSource(of application: Application, specFile: String) async -> SourceCheck {
        guard let image = application.spec.image else {
            return .unavailable("the Kubernetes platform runs images: spec.image is not set")
        }
        return .ready("image \(image)")
    }

    public func prepare(_ template: WorkloadTemplate, namespace: String) async throws(WorkloadError) -> ArtifactStatus {
        guard let image = template.spec.image else {
            throw WorkloadError("ImageMissing", "the Kubernetes platform runs images: spec.image is not set")
        }
        let reference = try Children.imageReference(image, version: template.version).get()
        var artifact = ArtifactStatus()
        artifact.version = template.version
        artifact.digest = reference
        let key = ObjectKey(kind: .application, namespace: namespace, name: template.application)
        prepared.withLock { prepared in
            var list = prepared[key] ?? []
            if !list.contains(artifact) { list.insert(artifact, at: 0) }
            prepared[key] = list
        }
        return artifact
    }

    public func artifacts(of application: ObjectKey) async -> [ArtifactStatus] {
        prepared.withLock { $0[application] ?? [] }
    }

    /// Images are the registry's: nothing is deleted; versions no longer used leave the list.
    public func prune(_ application: ObjectKey, keep: Int, inUse: Set<String>) async -> [String] {
        prepared.withLock { prepared in
            prepared[application] = (prepared[application] ?? []).filter { inUse.contains($0.version) }
            if prepared[application]?.isEmpty ?? false { prepared[application] = nil }
        }
        return []
    }
}
