import CapstanControllers
import CapstanModel
import Foundation

/// A Deployment's tracks on this host: each a group of supervised instances, rolled by the local
/// counterpart of `apps/v1`'s Deployment controller (surge and unavailability counted on ready
/// instances), and served by the routers.
extension LocalWorkloadPlatform {
    /// Which revision each track is set to run, kept in the inventory (as a cluster keeps it in
    /// the `apps/v1` Deployment's template).
    public static let trackType = "track"

    func trackID(_ deployment: ObjectKey, _ track: Track) -> String { "\(deployment.namespace)/\(deployment.name)/\(track.rawValue)" }

    private func trackRecords(of deployment: ObjectKey) -> [Track: (revision: Int, hash: String)] {
        var records: [Track: (Int, String)] = [:]
        for entry in (try? store.inventory(of: deployment, type: Self.trackType)) ?? [] {
            guard let name = entry.id.split(separator: "/").last, let revision = Int(entry.data["revision"] ?? ""), let hash = entry.data["hash"] else { continue }
            records[Track(String(name))] = (revision, hash)
        }
        return records
    }

    func removeTrackRecords(of deployment: ObjectKey) {
        for entry in (try? store.inventory(of: deployment, type: Self.trackType)) ?? [] {
            _ = try? store.removeInventory(type: Self.trackType, id: entry.id)
        }
    }

    public func ensure(_ track: Track, of deployment: Deployment, _ spec: TrackSpec) async throws(WorkloadError) -> TrackState {
        let key = deployment.key
        let id = trackID(key, track)
        if trackRecords(of: key)[track].map({ $0.revision != spec.revision.number || $0.hash != spec.revision.hash }) ?? true {
            try? store.recordInventory(.init(type: Self.trackType, id: id, owner: key,
                                             data: ["revision": String(spec.revision.number), "hash": spec.revision.hash], createdAt: Date()))
        }
        let before = await instances(of: key).filter { $0.track == track }
        var state = TrackState(revision: spec.revision.number, templateHash: spec.revision.hash)
        await LocalRollout(platform: self, key: key, track: track, spec: spec).step(before, &state)
        count(await instances(of: key).filter { $0.track == track }, into: &state)
        return state
    }

    private func count(_ instances: [InstanceState], into state: inout TrackState) {
        state.replicas = instances.count
        state.updated = instances.filter { $0.templateHash == state.templateHash }.count
        state.ready = instances.filter(\.ready).count
        state.available = state.ready
        state.restarts = instances.reduce(0) { $0 + $1.restarts }
        state.problems = instances.compactMap { instance in instance.problem.map { "instance \(instance.id): \($0)" } }
    }

    public func tracks(of deployment: ObjectKey) async -> [Track: TrackState] {
        let records = trackRecords(of: deployment)
        let instances = await instances(of: deployment)
        var result: [Track: TrackState] = [:]
        for track in Set(records.keys).union(instances.map(\.track)) {
            let own = instances.filter { $0.track == track }
            // A track without a record (instances of an older daemon): its newest revision.
            let newest = own.max { $0.revision < $1.revision }
            guard let (revision, hash) = records[track] ?? newest.map({ ($0.revision, $0.templateHash) }) else { continue }
            var state = TrackState(revision: revision, templateHash: hash)
            count(own, into: &state)
            result[track] = state
        }
        return result
    }

    public func removeTrack(_ track: Track, of deployment: Deployment) async throws(WorkloadError) -> [WorkloadEvent] {
        let key = deployment.key
        let victims = await instances(of: key).filter { $0.track == track }
        await withTaskGroup(of: Void.self) { group in
            for instance in victims { group.addTask { await self.stop(instance: instance.id, of: key) } }
        }
        _ = try? store.removeInventory(type: Self.trackType, id: trackID(key, track))
        return victims.map { WorkloadEvent(.normal, "InstanceStopped", "stopped instance \($0.id) (track \(track) removed)") }
    }

    public func split(_ routing: TrafficRouting, namespace: String) async throws(WorkloadError) -> TrafficSplit {
        switch routing {
        case .auto, .router:
            return .weighted
        case .replicas:
            return .replicas
        case .traefik:
            throw WorkloadError("UnsupportedTrafficRouting", "trafficRouting traefik is Kubernetes': here the router splits the connections (use auto or router)")
        }
    }

    public func route(_ deployment: Deployment, application: Application, _ traffic: Traffic) async throws(WorkloadError) -> [WorkloadEvent] {
        let key = deployment.key
        let previewPort = traffic.preview == nil ? nil : deployment.spec.strategy.blueGreen?.previewPort
        // The preview first: a failure there leaves the main port as it was asked.
        var problem: WorkloadError?
        do {
            try await routers.expose(key, .preview, host: routerHost, port: previewPort, track: (traffic.preview ?? traffic.active).rawValue)
        } catch {
            problem = error
        }
        let weights = traffic.weights
        // By replica ratio: every ready instance of both tracks alike (the reconciler sizes them).
        let perInstance = traffic.split == .replicas && weights.count > 1
        var shares = Dictionary(uniqueKeysWithValues: weights.map { ($0.key.rawValue, $0.value) })
        if perInstance { shares[RouterSet.perInstance] = 1 }
        try await routers.expose(key, .main, host: routerHost, port: deployment.spec.port, weights: shares)
        recordListener(key, port: deployment.spec.port, weights: weights, perInstance: perInstance)
        if let problem { throw problem }
        return []
    }
}

/// One step of a local track towards its spec: `TrackRollout`'s plan carried out on supervised
/// instances (stops side by side: an app that ignores SIGTERM costs one grace period, not one
/// per instance).
struct LocalRollout {
    let platform: LocalWorkloadPlatform
    let key: ObjectKey
    let track: Track
    let spec: TrackSpec

    func step(_ instances: [InstanceState], _ state: inout TrackState) async {
        let target = spec.revision
        let plan = TrackRollout.plan(instances, spec)
        await stop(plan.scaleDown, "scaled down", &state)
        let memory = target.template.spec.resources.memory.map(\.roundedUp)
        for _ in 0..<plan.start {
            do {
                let id = try await platform.start(target, track: track, for: key, memoryLimit: memory)
                state.events.append(WorkloadEvent(.normal, "InstanceStarted", "started instance \(id) of revision \(target.number)\(track == .stable ? "" : " on track \(track)")"))
            } catch {
                state.startProblem = error
                state.events.append(WorkloadEvent(.warning, error.reason, "cannot start an instance of revision \(target.number): \(error.message)"))
                break
            }
        }
        await stop(plan.replace, plan.replaceReason, &state)
    }

    private func stop(_ victims: [InstanceState], _ why: String, _ state: inout TrackState) async {
        guard !victims.isEmpty else { return }
        state.movedOn = true
        let platform = self.platform, key = self.key
        await withTaskGroup(of: Void.self) { group in
            for instance in victims { group.addTask { await platform.stop(instance: instance.id, of: key) } }
        }
        for instance in victims { state.events.append(WorkloadEvent(.normal, "InstanceStopped", "stopped instance \(instance.id) (\(why))")) }
    }
}
