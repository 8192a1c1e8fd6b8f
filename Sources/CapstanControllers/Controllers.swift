import CapstanModel
import CapstanRuntime
import Foundation

/// The manager of Capstan's objects: keys are objects, a change carries the object (nil once deleted).
public typealias ObjectManager = Manager<ObjectKey, AnyResource>

/// The platform services the reconcilers are written against; each platform provides them.
public struct Platforms: Sendable {
    public var artifacts: any ArtifactPlatform
    public var workload: any WorkloadPlatform
    public var traffic: any TrafficPlatform
    public var revisions: any RevisionStore
    /// Versioned secrets and where a rotation's commands run (nil: SecretRotations are read
    /// and stored, not reconciled).
    public var secrets: (any SecretPlatform)?
    public var actions: (any ActionRunner)?
    /// Backup jobs (nil: BackupSchedules are read and stored, not reconciled).
    public var backups: (any BackupPlatform)?
    /// Metrics and notifiers (nil: AlertRules are read and stored, not reconciled).
    public var metrics: (any MetricsPlatform)?
    public var notifier: (any Notifier)?

    public init(artifacts: any ArtifactPlatform, workload: any WorkloadPlatform, traffic: any TrafficPlatform, revisions: any RevisionStore,
                secrets: (any SecretPlatform)? = nil, actions: (any ActionRunner)? = nil, backups: (any BackupPlatform)? = nil,
                metrics: (any MetricsPlatform)? = nil, notifier: (any Notifier)? = nil) {
        self.metrics = metrics
        self.notifier = notifier
        self.artifacts = artifacts
        self.workload = workload
        self.traffic = traffic
        self.revisions = revisions
        self.secrets = secrets
        self.actions = actions
        self.backups = backups
    }
}

/// Every kind's controller, with what it watches: the one list a new kind joins (one line).
public enum Controllers {
    /// - Parameter referrerDelay: how long an Application waits for more changes of its
    ///   Deployments before it is reconciled (its status lists them all: a burst of a thousand
    ///   Deployments is one status write a second). Zero where its reconcile does their work.
    public static func register(on manager: ObjectManager, store: any ObjectStore, events: any EventRecorder, cache: ObjectCache,
                                platforms: Platforms, prune: Bool, referrerDelay: Duration, metrics: RuntimeMetrics? = nil) {
        manager.register("application", ApplicationReconciler(store: store, events: events, artifacts: platforms.artifacts, prune: prune),
                         for: { $0.kind == .application }, watches: ApplicationReconciler.watches(referrerDelay: referrerDelay))
        manager.register("deployment", DeploymentReconciler(store: store, events: events, workload: platforms.workload, traffic: platforms.traffic,
                                                            revisions: platforms.revisions, secrets: platforms.secrets, prune: prune),
                         for: { $0.kind == .deployment }, watches: DeploymentReconciler.watches(cache: cache))
        manager.register("canary", CanaryReconciler(store: store, events: events, metrics: platforms.metrics),
                         for: { $0.kind == .canary }, watches: CanaryReconciler.watches(cache: cache))
        if let secrets = platforms.secrets, let actions = platforms.actions {
            manager.register("secretrotation", SecretRotationReconciler(store: store, events: events, secrets: secrets, actions: actions, prune: prune),
                             for: { $0.kind == .secretRotation }, watches: SecretRotationReconciler.watches(cache: cache))
        }
        if let backups = platforms.backups {
            manager.register("backupschedule", BackupScheduleReconciler(store: store, events: events, backups: backups,
                                                                                counted: { metrics?.backupFinished(result: $0) }),
                             for: { $0.kind == .backupSchedule })
        }
        if let metricsPlatform = platforms.metrics, let notifier = platforms.notifier {
            manager.register("alertrule", AlertRuleReconciler(store: store, events: events, metrics: metricsPlatform, notifier: notifier, secrets: platforms.secrets,
                                                              wake: { [weak manager] key in await manager?.add(key) },
                                                              counted: { metrics?.notification(receiver: $0, result: $1) }),
                             for: { $0.kind == .alertRule }, concurrency: AlertRuleReconciler.workers)
        }
    }
}

extension ApplicationReconciler {
    /// A Deployment's change enqueues its Application: the Application's status lists its
    /// Deployments and their readiness.
    public static func watches(referrerDelay: Duration) -> [ObjectManager.Watch] {
        [ObjectManager.Watch(delay: referrerDelay) { key, object in
            guard case .deployment(let deployment)? = object else { return [] }
            return [ObjectKey(kind: .application, namespace: key.namespace, name: deployment.spec.application)]
        }]
    }
}

extension DeploymentReconciler {
    /// An Application's change enqueues the Deployments that run it (their template is its).
    public static func watches(cache: ObjectCache) -> [ObjectManager.Watch] {
        [ObjectManager.Watch { key, object in
            switch key.kind {
            case .application:
                return cache.objects(kind: .deployment, referencing: key).map(\.key)
            case .canary:
                // Its decisions (weight, promotion, abort) are the Deployment's to realise; a
                // Canary gone leaves a canary track for its Deployment to remove.
                if case .canary(let canary)? = object {
                    return [ObjectKey(kind: .deployment, namespace: key.namespace, name: canary.spec.deployment)]
                }
                return cache.objects(kind: .deployment).filter { stored in
                    stored.key.namespace == key.namespace && stored.resource.deploymentStatus?.tracks.contains { $0.name == Track.canary.rawValue } == true
                }.map(\.key)
            case .secretRotation:
                // Its restart token rolls the dependents; its secret heals those waiting for it.
                var keys = Set(object?.references ?? [])
                for stored in cache.objects(kind: .deployment) where stored.key.namespace == key.namespace {
                    let reason = stored.resource.resource.status.conditions[type: ConditionType.stalled]?.reason
                    if reason == "SecretNotFound" || reason == "SecretUnavailable" { keys.insert(stored.key) }
                }
                return keys.sorted()
            default:
                return []
            }
        }]
    }
}

extension SecretRotationReconciler {
    /// A Deployment's change enqueues the rotations that restart it (they wait for its rollout).
    public static func watches(cache: ObjectCache) -> [ObjectManager.Watch] {
        [ObjectManager.Watch { key, _ in
            guard key.kind == .deployment else { return [] }
            return cache.objects(kind: .secretRotation, referencing: key).map(\.key)
        }]
    }
}

extension AnyResource {
    /// A Deployment's status (nil for any other kind).
    var deploymentStatus: DeploymentStatus? {
        if case .deployment(let deployment) = self { return deployment.status }
        return nil
    }
}
