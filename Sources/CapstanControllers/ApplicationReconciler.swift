import CapstanModel
import CapstanRuntime
import Foundation

/// Reconciles Applications: the template is valid (it decoded), the artifact of every version a
/// Deployment asks for is prepared (unused ones pruned), and the status lists the Deployments
/// that run it.
public struct ApplicationReconciler: Reconciler {
    public typealias Key = ObjectKey

    let store: any ObjectStore
    let events: any EventRecorder
    let artifacts: any ArtifactPlatform
    let now: @Sendable () -> Date
    /// Whether a deleted Application's artifacts are removed (`--prune`).
    let prune: Bool

    /// How soon to look again at an Application whose source is missing (it may appear) or
    /// whose build failed.
    public static let sourceRetry: Duration = .seconds(60)
    /// Artifacts kept per Application beyond those in use.
    public static let artifactsKept = 5

    public init(store: any ObjectStore, events: any EventRecorder, artifacts: any ArtifactPlatform, prune: Bool = true,
                now: @escaping @Sendable () -> Date = Date.init) {
        self.prune = prune
        self.store = store
        self.events = events
        self.artifacts = artifacts
        self.now = now
    }

    public func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
        // Observe.
        guard let stored = try await store.object(key), case .application(let application) = stored.resource else {
            // Deleted: artifacts no release points at go, unless pruning is off for it.
            let decision = Prune.decide(enabled: prune, annotated: await store.pruneDisabled(key))
            guard decision == .delete else {
                let would = await artifacts.artifacts(of: key).map { "artifact \($0.version)" }
                if !would.isEmpty {
                    let (type, reason, message) = Prune.skipped(decision, kind: "application", would: would)
                    await events.record(type, reason: reason, message: message, about: key)
                }
                return .done
            }
            let removed = await artifacts.prune(key, keep: 0, inUse: [])
            if !removed.isEmpty {
                await events.record(.normal, reason: "OrphanDeleted", message: "application deleted; removed artifacts " + removed.joined(separator: ", "), about: key)
            }
            return .done
        }
        let generation = stored.generation
        let time = Timestamp(now())
        var status = application.status
        let before = status.condition(ConditionType.ready)

        // One pass over the Deployments that run it: the entries of the status, and one
        // Deployment per version it asks for (the artifact's template).
        var entries: [ApplicationDeploymentStatus] = []
        var ready = 0
        var versions: [(version: String, deployment: Deployment)] = []
        for object in try await store.objects(kind: .deployment, referencing: key) {
            guard case .deployment(let deployment) = object.resource else { continue }
            var entry = ApplicationDeploymentStatus()
            entry.name = deployment.metadata.name
            entry.namespace = deployment.metadata.namespace
            entry.version = deployment.spec.version
            entry.ready = deployment.status.isReady(generation: object.generation)
            if entry.ready { ready += 1 }
            entries.append(entry)
            if !versions.contains(where: { $0.version == deployment.spec.version }) {
                versions.append((deployment.spec.version, deployment))
            }
        }
        let listed = ApplicationStatus.listed(entries)
        var changed = status.deployments != listed || status.deploymentCount != entries.count || status.readyDeploymentCount != ready
        status.deployments = listed
        status.deploymentCount = entries.count
        status.readyDeploymentCount = ready

        // Compare and report.
        var requeue: ReconcileResult = .done
        if let hold = stored.hold {
            changed = status.markStalled(reason: hold.reason, message: hold.message, generation: generation, now: time) || changed
        } else if entries.isEmpty {
            switch await artifacts.checkSource(of: application, specFile: stored.sourceFile) {
            case .ready(let description):
                changed = status.markReady(reason: "Succeeded", message: "template valid; \(description)", generation: generation, now: time) || changed
            case .unavailable(let message):
                changed = status.markStalled(reason: "SourceUnavailable", message: message, generation: generation, now: time) || changed
                requeue = .requeue(after: Self.sourceRetry)
            }
        } else {
            // Every version a Deployment asks for is prepared (built once, then reused).
            var failure: WorkloadError?
            for (_, deployment) in versions {
                let template = WorkloadTemplate(deployment: deployment, application: application, applicationFile: stored.sourceFile)
                do {
                    _ = try await artifacts.prepare(template, namespace: key.namespace)
                } catch {
                    if failure == nil { failure = error }
                }
            }
            let removed = await artifacts.prune(key, keep: Self.artifactsKept, inUse: Set(versions.map(\.version)))
            let prepared = await artifacts.artifacts(of: key)
            changed = status.artifacts != prepared || changed
            status.artifacts = prepared
            if let failure {
                changed = status.markStalled(reason: failure.reason, message: failure.message, generation: generation, now: time) || changed
                requeue = .requeue(after: Self.sourceRetry)
            } else {
                let list = versions.map(\.version).joined(separator: ", ")
                changed = status.markReady(reason: "Succeeded", message: "template valid; artifact\(versions.count == 1 ? "" : "s") prepared for \(list)", generation: generation, now: time) || changed
            }
            if !removed.isEmpty {
                await events.record(.normal, reason: "ArtifactsPruned", message: "removed unused artifacts of version(s) \(removed.joined(separator: ", "))", about: key)
            }
        }
        guard changed else { return requeue }
        status.lastReconcileTime = time
        _ = try await store.writeStatus(key, status.encode())

        // Every decision that changes what the object says is an event (InvalidSpec's Warning,
        // with file:line, comes from the source that read the file, for every kind).
        let after = status.condition(ConditionType.ready)!
        if (before?.status != after.status || before?.reason != after.reason) && after.reason != stored.hold?.reason {
            let type: EventType = after.status == .true ? .normal : .warning
            await events.record(type, reason: after.reason, message: after.message, about: key)
        }
        return requeue
    }
}
