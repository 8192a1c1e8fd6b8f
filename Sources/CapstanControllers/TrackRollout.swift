import CapstanModel
import Foundation

/// One step of a track made of instances towards its spec: what `apps/v1`'s Deployment
/// controller decides for a ReplicaSet pair, as a pure plan. The local platform carries it out
/// on supervised processes (in-memory fakes on pretend ones); a cluster has its own controller.
public enum TrackRollout {
    public struct Plan: Sendable, Equatable {
        /// Instances of the track's revision beyond `replicas`, unready first (stopped first).
        public var scaleDown: [InstanceState] = []
        /// New instances of the track's revision to start.
        public var start = 0
        /// Instances of other revisions to stop, with why (after the starts).
        public var replace: [InstanceState] = []
        public var replaceReason = ""
    }

    /// The plan for `instances` (the track's, of every revision). Paused: a change of revision
    /// waits, scaling the revision that runs goes on. RollingUpdate counts an instance as
    /// available once it is ready: at most `replicas + maxSurge` run, at least
    /// `replicas - maxUnavailable` stay ready. Recreate stops every old instance first.
    public static func plan(_ instances: [InstanceState], _ spec: TrackSpec) -> Plan {
        let target = spec.revision
        let replicas = spec.replicas
        var new = instances.filter { $0.templateHash == target.hash }
        let old = instances.filter { $0.templateHash != target.hash }
        var plan = Plan()
        if spec.paused && !old.isEmpty { return plan }
        if new.count > replicas {
            plan.scaleDown = Array(new.sorted { !$0.ready && $1.ready }.prefix(new.count - replicas))
            new.removeAll { instance in plan.scaleDown.contains { $0.id == instance.id } }
        }
        switch spec.strategy {
        case .recreate:
            if !old.isEmpty {
                plan.replace = old
                plan.replaceReason = "Recreate: replaced by revision \(target.number)"
            } else {
                plan.start = max(0, replicas - new.count)
            }
        case .rollingUpdate:
            let (surge, unavailable) = spec.rollingBounds
            plan.start = max(0, min(replicas - new.count, replicas + surge - new.count - old.count))
            let newCount = new.count + plan.start
            let newUnready = new.filter { !$0.ready }.count + plan.start
            // Scale down the old revisions (Kubernetes' rule): unready instances first, then
            // ready ones while at least replicas - maxUnavailable stay ready.
            let minAvailable = replicas - unavailable
            var budget = newCount + old.count - minAvailable - newUnready
            guard budget > 0 else { break }
            let unreadyOld = old.filter { !$0.ready }.prefix(budget)
            plan.replace = Array(unreadyOld)
            budget -= unreadyOld.count
            let readyOld = old.filter(\.ready)
            let readyTotal = new.filter(\.ready).count + readyOld.count
            let count = min(budget, readyTotal - minAvailable)
            if count > 0 { plan.replace += readyOld.prefix(count) }
            plan.replaceReason = "replaced by revision \(target.number)"
        }
        return plan
    }
}
