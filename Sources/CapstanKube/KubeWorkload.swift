import CapstanControllers
import CapstanModel
import CapstanRuntime
import Foundation

/// A Capstan Deployment's tracks and traffic on Kubernetes: one `apps/v1` Deployment per track
/// (`NAME` for stable, `NAME-<track>` otherwise), the Service `NAME` selecting the active
/// track's pods, `NAME-preview` the preview's, and the Ingress for the Application's routes.
/// Children are applied (server-side apply, field manager `capstan`) when they differ from what
/// is asked, which also reverts edits made behind Capstan's back and recreates deleted ones.
/// Every decision about them is the `DeploymentReconciler`'s; this is platform code only.
public final class KubeWorkload: WorkloadPlatform, TrafficPlatform, Sendable {
    static let appliedHash = "capstan.dev/applied-hash"
    /// The kinds of the children it makes (their watches find drift and wake the owner).
    public static let childResources: [KubeResource] = [.deployments, .services, .ingresses]
    /// Traefik's kinds (K3s ships Traefik): a canary's weighted split and the route to it.
    public static let traefikServices = KubeResource(group: "traefik.io", version: "v1alpha1", plural: "traefikservices", kind: "TraefikService")
    public static let ingressRoutes = KubeResource(group: "traefik.io", version: "v1alpha1", plural: "ingressroutes", kind: "IngressRoute")
    /// Watched once the cluster serves them (`ClusterTarget`): a split through them is offered
    /// only then, so that every one Capstan makes is seen and can be removed.
    public static let traefikResources: [KubeResource] = [traefikServices, ingressRoutes]
    /// The tracks a Deployment may have.
    static let knownTracks: [Track] = [.stable, .blue, .green, .canary]

    let client: KubeClient
    let children: ChildCache
    let ownership: ChildOwnership

    public init(client: KubeClient, children: ChildCache, ownership: ChildOwnership) {
        self.client = client
        self.children = children
        self.ownership = ownership
    }

    var usesOwnerReferences: Bool {
        if case .ownerReference = ownership { return true }
        return false
    }

    // MARK: - WorkloadPlatform

    /// Nothing to build: the revision's image reference must be valid.
    public func prepare(_ revision: WorkloadRevision, for deployment: ObjectKey, current: Bool) async throws(WorkloadError) -> [String] {
        _ = try Self.image(of: revision)
        return []
    }

    static func image(of revision: WorkloadRevision) throws(WorkloadError) -> String {
        guard let repository = revision.template.spec.image else {
            throw WorkloadError("ImageMissing", "application \(revision.template.application) has no image: the Kubernetes platform runs images (spec.image)")
        }
        return try Children.imageReference(repository, version: revision.template.version).get()
    }

    public func ensure(_ track: Track, of deployment: Deployment, _ spec: TrackSpec) async throws -> TrackState {
        let wanted = Children.deployment(deployment, track: track, spec, image: try Self.image(of: spec.revision))
        var events: [WorkloadEvent] = []
        let applied = try await apply(.deployments, wanted, name: Children.name(of: track, deployment.metadata.name), owner: deployment, events: &events)
        var state = applied.flatMap(Self.state(of:)) ?? TrackState(revision: spec.revision.number, templateHash: spec.revision.hash)
        state.events = events
        return state
    }

    /// Where an `apps/v1` Deployment stands, from its template's annotations and its status.
    static func state(of apps: SpecNode) -> TrackState? {
        let annotations = apps["spec"]?["template"]?["metadata"]?["annotations"]
        guard let revision = annotations?["capstan.dev/revision"]?.scalarText.flatMap({ Int($0) }),
              let hash = annotations?["capstan.dev/template-hash"]?.scalarText else { return nil }
        var state = TrackState(revision: revision, templateHash: hash)
        let observed = apps["status"]
        func count(_ field: String) -> Int { observed?[field]?.scalarText.flatMap { Int($0) } ?? 0 }
        state.replicas = count("replicas")
        state.updated = count("updatedReplicas")
        state.ready = count("readyReplicas")
        state.available = count("availableReplicas")
        let generation = apps["metadata"]?["generation"]?.scalarText.flatMap { Int($0) } ?? 1
        state.settled = (observed?["observedGeneration"]?.scalarText.flatMap { Int($0) } ?? 0) >= generation
        guard case .sequence(let conditions)? = observed?["conditions"]?.value else { return state }
        for condition in conditions where isTrouble(condition) {
            if let message = condition["message"]?.scalarText, !message.isEmpty { state.problems.append(message) }
        }
        return state
    }

    /// A condition of an `apps/v1` Deployment that says something goes wrong: `ReplicaFailure`
    /// True (its pods cannot be made: a quota, an admission webhook) or another condition False
    /// (`Progressing` past its deadline). `Available` False says no more than the ready count
    /// does, and is what every rollout goes through.
    static func isTrouble(_ condition: SpecNode) -> Bool {
        switch (condition["type"]?.scalarText, condition["status"]?.scalarText) {
        case ("ReplicaFailure", "True"): return true
        case ("Available", _), ("ReplicaFailure", _): return false
        case (_, "False"): return true
        default: return false
        }
    }

    public func tracks(of deployment: ObjectKey) async -> [Track: TrackState] {
        var result: [Track: TrackState] = [:]
        for track in Self.knownTracks {
            guard let (owner, state) = children.track(namespace: deployment.namespace, name: Children.name(of: track, deployment.name)),
                  owner == deployment else { continue }
            result[track] = state
        }
        return result
    }

    public func removeTrack(_ track: Track, of deployment: Deployment) async throws -> [WorkloadEvent] {
        var events: [WorkloadEvent] = []
        _ = try await apply(.deployments, nil, name: Children.name(of: track, deployment.metadata.name), owner: deployment, events: &events,
                            why: "track \(track) is no longer needed")
        return events
    }

    public func pruneReleases(of deployment: ObjectKey, keeping revisions: Set<Int>) async {}

    // MARK: - TrafficPlatform

    /// The Service `NAME` selects the active track, `NAME-preview` the preview; a canary's split
    /// is either one Service over both tracks' pods (the replica ratio) or, through Traefik, the
    /// TraefikService `NAME` weighting `NAME` (the active track) against `NAME-canary`, with the
    /// Application's routes on an IngressRoute to it in place of the Ingress while it lasts.
    public func route(_ deployment: Deployment, application: Application, _ traffic: Traffic) async throws -> [WorkloadEvent] {
        let name = deployment.metadata.name
        let previewPort = deployment.spec.strategy.blueGreen?.previewPort
        let weights = traffic.weights
        let traefik = traffic.split == .weighted && traffic.canary != nil && weights[traffic.canary!] != nil
        let mainTrack: Track? = traefik ? selected(traffic.active, of: deployment)
            : weights.count > 1 ? nil : selected(weights.keys.first ?? traffic.active, of: deployment)
        let routes = try Children.ingress(deployment, application: application).get()
        let desired: [(KubeResource, String, SpecNode?)] = [
            (.services, name, Children.service(deployment, application: application, servicePort: deployment.spec.port, track: mainTrack)),
            (.services, Children.previewName(name), traffic.preview.flatMap { preview in
                Children.service(deployment, application: application, name: Children.previewName(name), servicePort: previewPort, track: preview)
            }),
            (.services, Children.name(of: .canary, name), traefik ? traffic.canary.flatMap { canary in
                Children.service(deployment, application: application, name: Children.name(of: canary, name), servicePort: deployment.spec.port, track: canary)
            } : nil),
            (Self.traefikServices, name, traefik ? Children.traefikService(deployment, application: application, weights: weights, active: traffic.active) : nil),
            (Self.ingressRoutes, name, traefik ? try Children.ingressRoute(deployment, application: application).get() : nil),
            (.ingresses, name, traefik ? nil : routes),
        ]
        // Independent children: applied side by side (one round trip, not six); what is wanted
        // first, then what is not, so that a route moving from the Ingress to the IngressRoute
        // and back always has one of them.
        var events: [WorkloadEvent] = []
        for removing in [false, true] {
            events += try await withThrowingTaskGroup(of: [WorkloadEvent].self) { group in
                for (resource, child, wanted) in desired where (wanted == nil) == removing {
                    // Traefik's kinds are looked at only where the cluster serves them.
                    if wanted == nil, Self.traefikResources.contains(resource), !children.isSynced(resource) { continue }
                    group.addTask {
                        var events: [WorkloadEvent] = []
                        _ = try await self.apply(resource, wanted, name: child, owner: deployment, events: &events)
                        return events
                    }
                }
                var events: [WorkloadEvent] = []
                for try await some in group { events += some }
                return events
            }
        }
        return events
    }

    /// `auto` is Traefik's weighted service where the cluster serves it (K3s), else the replica
    /// ratio behind one Service.
    public func split(_ routing: TrafficRouting, namespace: String) async throws(WorkloadError) -> TrafficSplit {
        let traefik = Self.traefikResources.allSatisfy { children.isSynced($0) }
        switch routing {
        case .auto:
            return traefik ? .weighted : .replicas
        case .replicas:
            return .replicas
        case .router:
            throw WorkloadError("UnsupportedTrafficRouting", "trafficRouting router is the local platform's: on Kubernetes use auto, traefik or replicas")
        case .traefik:
            guard traefik else {
                throw WorkloadError("TraefikNotFound", "trafficRouting traefik needs Traefik's CRDs (traefikservices.traefik.io, ingressroutes.traefik.io v1alpha1), which this cluster does not serve: install Traefik, or use replicas (or auto)")
            }
            return .weighted
        }
    }

    /// The track label the Service selects: the active track's, except for a stable track whose
    /// pods do not all carry it yet (children made before tracks existed, while they roll):
    /// then every pod of the owner, so that no upgrade leaves the Service without endpoints.
    /// A child not made yet (it is being made beside this) or still at its first generation is
    /// made with the label: all its pods carry it.
    private func selected(_ active: Track, of deployment: Deployment) -> Track? {
        guard active == .stable else { return active }
        guard let apps = children.get(.deployments, namespace: deployment.metadata.namespace, name: deployment.metadata.name) else {
            return children.mayExist(.deployments, namespace: deployment.metadata.namespace, name: deployment.metadata.name) ? nil : .stable
        }
        guard apps["spec"]?["template"]?["metadata"]?["labels"]?[Children.trackLabel]?.scalarText == Track.stable.rawValue,
              let state = Self.state(of: apps) else { return nil }
        let firstGeneration = apps["metadata"]?["generation"]?.scalarText == "1"
        guard firstGeneration || (state.settled && state.updated == state.replicas) else { return nil }
        return .stable
    }

    // MARK: - Children

    /// Makes one child what is asked (or removes it when nothing is asked); returns it.
    private func apply(_ resource: KubeResource, _ wanted: SpecNode?, name: String, owner: Deployment,
                       events: inout [WorkloadEvent], why: String = "the application changed") async throws -> SpecNode? {
        let namespace = owner.metadata.namespace
        let what = "\(resource.kind) \(name)"
        var observed = children.get(resource, namespace: namespace, name: name)
        // Absent from a synced watch that sees every object of the kind: no read first. The
        // apply is then not forced, so an object someone made since the watch's view and that
        // sets any field differently answers 409 and is read and judged below.
        var unseen = false
        if observed == nil, wanted != nil {
            if children.mayExist(resource, namespace: namespace, name: name) {
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
                events.append(WorkloadEvent(.normal, "OrphanDeleted", "\(what) is no longer wanted (\(why)); deleted"))
            }
            return nil
        }
        let hash = String(SpecHash.of(wanted).prefix(16))
        let desired = wanted.setting(["metadata", "annotations", Self.appliedHash], .string(hash))
        if Children.contains(observed, desired) { return observed }
        // Recorded before it is made: a crash in between leaves a record of nothing, never a
        // child nobody knows about.
        if case .inventory(let inventory) = ownership { try inventory.recordChild(id, owner: owner.key) }
        var applied: SpecNode
        children.writing(resource, namespace: namespace, name: name)
        defer { children.finished(resource, namespace: namespace, name: name) }
        do {
            applied = try await client.patch(resource, namespace: namespace, name: name, desired, type: .apply, force: !unseen)
        } catch {
            guard unseen, error.code == 409 else { throw error }
            observed = try await client.get(resource, namespace: namespace, name: name)
            if let observed, !isOurs(observed, id: id, owner: owner) { throw conflict() }
            applied = try await client.patch(resource, namespace: namespace, name: name, desired, type: .apply, force: true)
        }
        children.set(resource, applied)
        if let observed {
            // The same spec applied before: someone changed the child.
            if observed["metadata"]?["annotations"]?[Self.appliedHash]?.scalarText == hash {
                events.append(WorkloadEvent(.normal, "DriftCorrected", "\(what) was changed behind Capstan's back; reverted"))
            }
        } else if children.wasDeleted(resource, namespace: namespace, name: name) {
            events.append(WorkloadEvent(.normal, "Recreated", "\(what) was deleted behind Capstan's back; created again"))
        }
        return applied
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
            return (try? inventory.children(of: owner.key))?.contains(id) == true
        }
    }

    /// Every child a Deployment may have, by resource and name.
    static func childNames(of key: ObjectKey) -> [(KubeResource, String)] {
        knownTracks.map { (.deployments, Children.name(of: $0, key.name)) }
            + [(.services, key.name), (.services, Children.previewName(key.name)), (.services, Children.name(of: .canary, key.name)),
               (.ingresses, key.name), (traefikServices, key.name), (ingressRoutes, key.name)]
    }

    /// The child watches wake the owner on every change of its tracks that a reconcile reads:
    /// looking again without one is only the safety net (the progress deadline keeps its own
    /// time).
    public var progressCheck: Duration { .seconds(60) }

    /// Children owned by reference (custom resources) go with their owner: the garbage
    /// collector deletes them.
    public var collectsChildrenOfDeleted: Bool { usesOwnerReferences }

    public func leftovers(of key: ObjectKey) async -> [String] {
        guard usesOwnerReferences else { return [] }
        return owned(by: key).map { "\($0.0.kind) \($0.1)" }
    }

    /// The cached children a Deployment controls.
    private func owned(by key: ObjectKey) -> [(KubeResource, String, SpecNode)] {
        Self.childNames(of: key).compactMap { resource, name in
            guard let child = children.get(resource, namespace: key.namespace, name: name),
                  let controller = Children.controller(of: child), controller.kind == .deployment, controller.name == key.name else { return nil }
            return (resource, name, child)
        }
    }

    /// Deletes what a deleted Deployment owned; with `dryRun`, lets it go instead (the
    /// ownerReference is removed so the garbage collector keeps it too) and says what it was.
    public func remove(_ key: ObjectKey, dryRun: Bool) async throws -> [String] {
        var owned: [(KubeResource, String, SpecNode)] = []
        switch ownership {
        case .ownerReference:
            owned = self.owned(by: key)
        case .inventory(let inventory):
            for id in try inventory.children(of: key) {
                guard let (resource, name) = Self.childNames(of: key).first(where: { ChildCache.key($0.0, key.namespace, $0.1) == id }) else { continue }
                if let child = try await client.get(resource, namespace: key.namespace, name: name) {
                    owned.append((resource, name, child))
                } else if !dryRun {
                    try inventory.removeChild(id)  // gone already
                }
            }
        }
        for (resource, name, child) in owned {
            if !dryRun {
                try await client.delete(resource, namespace: key.namespace, name: name, uid: child["metadata"]?["uid"]?.scalarText)
                children.remove(resource, namespace: key.namespace, name: name)
                if case .inventory(let inventory) = ownership { try inventory.removeChild(ChildCache.key(resource, key.namespace, name)) }
            } else if usesOwnerReferences {
                var metadata: [(String, SpecNode)] = [("ownerReferences", SpecNode(.null))]
                if let version = child["metadata"]?["resourceVersion"]?.scalarText { metadata.append(("resourceVersion", .string(version))) }
                do {
                    _ = try await client.patch(resource, namespace: key.namespace, name: name, .mapping([("metadata", .mapping(metadata))]))
                } catch {
                    if !error.isNotFound { throw error }
                }
            }
        }
        return owned.map { "\($0.0.kind) \($0.1)" }
    }
}
