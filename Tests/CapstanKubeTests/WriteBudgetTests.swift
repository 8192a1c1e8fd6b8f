import CapstanKube
import CapstanModel
import Foundation
import Testing

/// What Capstan costs the API server (issue 23): a new Deployment costs its children and its
/// status, no finalizer, no object of Capstan's own; the cluster's status churn on a child costs
/// its owner one reconcile per change of what the reconciler reads, coalesced; deleting it
/// leaves nothing behind (the garbage collector's work) unless it asked to keep its children.
@Suite(.serialized) struct WriteBudgetTests {
    static func stats(_ client: KubeClient) async throws -> [String: Int] {
        let body = try await client.raw(method: "GET", path: "/fake/stats")
        return Dictionary(uniqueKeysWithValues: (body["byResource"]?.entries ?? []).compactMap { entry in
            entry.value.scalarText.flatMap { Int($0) }.map { (entry.key, $0) }
        })
    }

    static func reconciles(_ log: String) -> Int {
        guard let serving = log.range(of: "serving /metrics"),
              let range = log[serving.upperBound...].range(of: #"127\.0\.0\.1:[0-9]+"#, options: .regularExpression),
              let port = Int(log[range].split(separator: ":").last!), let metrics = LoopbackMetrics.get(port: port) else { return -1 }
        return metrics.split(separator: "\n").filter { $0.hasPrefix("capstan_reconcile_total{") && $0.contains("kind=\"deployment\"") }
            .compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }.reduce(0) { $0 + Int($1) }
    }

    @Test func aNewDeploymentCostsItsChildrenAndItsStatusAndChildChurnIsCoalesced() async throws {
        let (server, client) = try await KubeModeTests.started(["--deployment-controller"])
        defer { server.stop() }
        let daemon = try KubeModeTests.daemon(on: server)
        defer { daemon.kill() }
        let log = { daemon.log }
        _ = try await client.create(KubeModeTests.applications, namespace: "default", KubeModeTests.application(routes: false))
        func succeeded(_ name: String) async throws -> Bool {
            let object = try await client.get(KubeModeTests.deployments, namespace: "default", name: name)
            return object?["status"]?["phase"]?.scalarText == "Succeeded" && object?["status"]?["readyReplicas"]?.scalarText == "2"
        }
        // A first one: the caches are synced and the daemon is serving its metrics.
        _ = try await client.create(KubeModeTests.deployments, namespace: "default", KubeModeTests.deployment("warm"))
        try await KubeModeTests.poll("the first Deployment Succeeded", log: log) { try await succeeded("warm") }
        try await Task.sleep(for: .milliseconds(500))
        let before = try await Self.stats(client), reconcilesBefore = Self.reconciles(daemon.log)

        let names = (0..<10).map { "d\($0)" }
        for name in names {
            _ = try await client.create(KubeModeTests.deployments, namespace: "default", KubeModeTests.deployment(name))
        }
        for name in names {
            try await KubeModeTests.poll("\(name) Succeeded", log: log) { try await succeeded(name) }
        }
        try await Task.sleep(for: .milliseconds(500))
        let after = try await Self.stats(client), reconciles = Self.reconciles(daemon.log) - reconcilesBefore
        func count(_ key: String) -> Int { (after[key] ?? 0) - (before[key] ?? 0) }
        let summary = after.keys.sorted().map { "\($0): \(count($0))" }.filter { !$0.hasSuffix(": 0") }.joined(separator: ", ")
        // The test's own requests: 10 creates, and its polls of the custom resources.
        #expect(count("POST deployments.capstan.dev") == 10, "\(summary)")
        // Capstan's: per Deployment its child and Service, its status twice (rolling out, then
        // succeeded: a third when a reconcile falls between the cluster's status writes of one
        // rollout, which a loaded machine can space past the coalescing window) and one Event
        // (the rollout's outcome); nothing else.
        #expect(count("PATCH deployments.apps") == 10, "\(summary)")
        #expect(count("PATCH services") == 10, "\(summary)")
        #expect((20...25).contains(count("PATCH deployments.capstan.dev/status")), "\(summary)")
        #expect(count("POST events") == 10, "\(summary)")
        #expect(count("PATCH deployments.capstan.dev") == 0, "no finalizer: \(summary)")
        #expect(count("POST configmaps") == 0 && count("PUT configmaps") == 0, "no revision ConfigMap: \(summary)")
        #expect(count("GET deployments.apps") == 0 && count("GET services") == 0, "no reads: the watches' caches answer: \(summary)")
        // Each Deployment: its creation, then the cluster's status writes (three per rollout
        // here, one of them changing only condition times) coalesced into one.
        #expect(reconciles >= 10 && reconciles <= 25, "\(reconciles) reconciles for 10 Deployments")
        let owner = try await client.get(KubeModeTests.deployments, namespace: "default", name: "d0")
        #expect(owner?["metadata"]?["finalizers"] == nil)
        let reasons = try await KubeModeTests.events(client, about: "d0")
        #expect(reasons == ["RolloutSucceeded"], "\(reasons)")
    }

    /// The issue's real cluster: a controller manager writing its status churn, no nodes, so
    /// the pods never become ready. None of those writes changes what the reconciler decides
    /// on: each Deployment costs the one reconcile that made it, one status write, no Event.
    @Test func statusChurnWithoutReadinessCostsNoReconcile() async throws {
        let (server, client) = try await KubeModeTests.started(["--deployment-controller", "--pods-never-ready"])
        defer { server.stop() }
        let daemon = try KubeModeTests.daemon(on: server)
        defer { daemon.kill() }
        let log = { daemon.log }
        _ = try await client.create(KubeModeTests.applications, namespace: "default", KubeModeTests.application(routes: false))
        func churned(_ name: String) async throws -> Bool {
            let child = try await client.get(.deployments, namespace: "default", name: name)
            let owner = try await client.get(KubeModeTests.deployments, namespace: "default", name: name)
            return child?["status"]?["updatedReplicas"]?.scalarText == "2" && owner?["status"]?["phase"]?.scalarText == "Progressing"
        }
        _ = try await client.create(KubeModeTests.deployments, namespace: "default", KubeModeTests.deployment("warm"))
        try await KubeModeTests.poll("the first Deployment rolling out", log: log) { try await churned("warm") }
        try await Task.sleep(for: .milliseconds(500))
        let before = try await Self.stats(client), reconcilesBefore = Self.reconciles(log())

        let names = (0..<10).map { "p\($0)" }
        for name in names {
            _ = try await client.create(KubeModeTests.deployments, namespace: "default", KubeModeTests.deployment(name))
        }
        for name in names {
            try await KubeModeTests.poll("\(name) rolling out, its child's status churned", log: log) { try await churned(name) }
        }
        try await Task.sleep(for: .seconds(1))
        let after = try await Self.stats(client), reconciles = Self.reconciles(log()) - reconcilesBefore
        func count(_ key: String) -> Int { (after[key] ?? 0) - (before[key] ?? 0) }
        let summary = after.keys.sorted().map { "\($0): \(count($0))" }.filter { !$0.hasSuffix(": 0") }.joined(separator: ", ")
        #expect(reconciles == 10, "\(reconciles) reconciles for 10 Deployments: \(summary)")
        #expect(count("PATCH deployments.capstan.dev/status") == 10, "\(summary)")
        #expect(count("POST events") == 0, "\(summary)")
        let owner = try await client.get(KubeModeTests.deployments, namespace: "default", name: "p0")
        let message = owner?["status"]?["conditions"]?.sequenceItems?.first { $0["type"]?.scalarText == "Ready" }?["message"]?.scalarText ?? ""
        #expect(!message.contains("minimum availability"), "Available False is no problem: \(message)")
    }

    /// Deleted: the garbage collector takes the children of a Deployment that did not ask to
    /// keep them; one with `capstan.dev/prune: disabled` has a finalizer, and its children are
    /// let go (no owner reference) and stay.
    @Test func deletedDeploymentsLeaveNothingUnlessTheyAskToKeepTheirChildren() async throws {
        let (server, client) = try await KubeModeTests.started()
        defer { server.stop() }
        let daemon = try KubeModeTests.daemon(on: server)
        defer { daemon.kill() }
        let log = { daemon.log }
        _ = try await client.create(KubeModeTests.applications, namespace: "default", KubeModeTests.application(routes: false))
        _ = try await client.create(KubeModeTests.deployments, namespace: "default", KubeModeTests.deployment("gone"))
        _ = try await client.create(KubeModeTests.deployments, namespace: "default",
                                    KubeModeTests.deployment("kept").setting(["metadata", "annotations"], .mapping([("capstan.dev/prune", .string("disabled"))])))
        try await KubeModeTests.poll("both children and the finalizer of the one kept", log: log) {
            let gone = try await client.get(.deployments, namespace: "default", name: "gone")
            let kept = try await client.get(.deployments, namespace: "default", name: "kept")
            let owner = try await client.get(KubeModeTests.deployments, namespace: "default", name: "kept")
            return gone != nil && kept != nil && owner?["metadata"]?["finalizers"]?.sequenceItems?.contains { $0.scalarText == KubeObjectStore.finalizer } == true
        }
        #expect(try await client.get(KubeModeTests.deployments, namespace: "default", name: "gone")?["metadata"]?["finalizers"] == nil)
        try await client.delete(KubeModeTests.deployments, namespace: "default", name: "gone")
        try await client.delete(KubeModeTests.deployments, namespace: "default", name: "kept")
        var left: [String] = []
        try await KubeModeTests.poll("the owners gone, the children of one with them", log: { "left: \(left)\n" + log() }) {
            left = []
            for (resource, name) in [(KubeModeTests.deployments, "kept"), (KubeModeTests.deployments, "gone"), (.deployments, "gone"), (.services, "gone")] {
                if let object = try await client.get(resource, namespace: "default", name: name) {
                    left.append("\(resource.kind) \(name) \(String(describing: object["metadata"]))")
                }
            }
            return left.isEmpty
        }
        let kept = try #require(try await client.get(.deployments, namespace: "default", name: "kept"))
        #expect(kept["metadata"]?["ownerReferences"] == nil, "let go")
        #expect(try await client.get(.services, namespace: "default", name: "kept") != nil)
        #expect(try await KubeModeTests.events(client, about: "kept").contains("PruneSkipped"))
    }
}
