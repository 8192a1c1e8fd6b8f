import CapstanModel
import CapstanRuntime
import Foundation

/// Reconciles Applications: the template is valid (it decoded), its source can be reached, and
/// the status lists the Deployments that run it. Building artifacts comes with Deployments.
public struct ApplicationReconciler: Reconciler {
    public typealias Key = ObjectKey

    let store: any ObjectStore
    let events: any EventRecorder
    let artifacts: any ArtifactPlatform
    let now: @Sendable () -> Date

    /// How soon to look again at an Application whose source is missing (it may appear).
    public static let sourceRetry: Duration = .seconds(60)

    public init(store: any ObjectStore, events: any EventRecorder, artifacts: any ArtifactPlatform, now: @escaping @Sendable () -> Date = Date.init) {
        self.store = store
        self.events = events
        self.artifacts = artifacts
        self.now = now
    }

    public func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
        // Observe.
        guard let stored = try await store.object(key), case .application(let application) = stored.resource else {
            return .done  // deleted: nothing of an Application's own to clean up yet
        }
        let generation = stored.generation
        let time = Timestamp(now())
        var status = application.status
        let before = status.condition(ConditionType.ready)

        let deployments = try await store.objects(kind: .deployment, referencing: key).compactMap { object -> ApplicationDeploymentStatus? in
            guard case .deployment(let deployment) = object.resource else { return nil }
            var entry = ApplicationDeploymentStatus()
            entry.name = deployment.metadata.name
            entry.namespace = deployment.metadata.namespace
            entry.version = deployment.spec.version
            entry.ready = deployment.status.isReady(generation: object.generation)
            return entry
        }
        var changed = status.deployments != deployments
        status.deployments = deployments

        // Compare and report.
        var requeue: ReconcileResult = .done
        if let problem = stored.problems.first {
            changed = status.markStalled(reason: "InvalidSpec", message: "\(problem) (the last good version is kept)", generation: generation, now: time) || changed
        } else {
            switch await artifacts.checkSource(of: application, specFile: stored.sourceFile) {
            case .ready(let description):
                changed = status.markReady(reason: "Succeeded", message: "template valid; \(description)", generation: generation, now: time) || changed
            case .unavailable(let message):
                changed = status.markStalled(reason: "SourceUnavailable", message: message, generation: generation, now: time) || changed
                requeue = .requeue(after: Self.sourceRetry)
            }
        }
        guard changed else { return requeue }
        status.lastReconcileTime = time
        _ = try await store.writeStatus(key, status.encode())

        // Every decision that changes what the object says is an event (InvalidSpec's Warning,
        // with file:line, comes from the source that read the file, for every kind).
        let after = status.condition(ConditionType.ready)!
        if (before?.status != after.status || before?.reason != after.reason) && after.reason != "InvalidSpec" {
            let type: EventType = after.status == .true ? .normal : .warning
            await events.record(type, reason: after.reason, message: after.message, about: key)
        }
        return requeue
    }
}
