import CapstanKube
@testable import CapstanLocal
import CapstanModel
import Foundation
import Testing

/// A Canary on both platforms with the built binary: the same `CanaryReconciler` decides the
/// steps and the same `DeploymentReconciler` realises them, locally on supervised instances and
/// the router, on the fake API server on `apps/v1` Deployments (this test plays their
/// controller) behind one Service (the replica ratio).
@Suite(.serialized, .timeLimit(.minutes(6))) struct CanaryScenarioTests {
    typealias Platform = DeploymentScenarioTests.Platform
    typealias Kind = DeploymentScenarioTests.Kind

    static func canary(_ name: String = "web", steps: [SpecNode], metrics: [SpecNode] = [], failureLimit: Int = 0) -> SpecNode {
        var spec: [(String, SpecNode)] = [("deployment", .string("web")), ("steps", .sequence(steps))]
        if !metrics.isEmpty {
            spec.append(("analysis", .mapping([("interval", .string("1s")), ("failureLimit", .int(failureLimit)), ("metrics", .sequence(metrics))])))
        }
        return .mapping([
            ("apiVersion", .string(capstanAPIVersion)), ("kind", .string("Canary")), ("metadata", .mapping([("name", .string(name))])),
            ("spec", .mapping(spec)),
        ])
    }

    static func weight(_ value: Int) -> SpecNode { .mapping([("setWeight", .int(value))]) }
    static let pause: SpecNode = .mapping([("pause", .mapping([]))])
    static func metric(_ name: String, _ query: String, min: Double? = nil, max: Double? = nil) -> SpecNode {
        var fields: [(String, SpecNode)] = [("name", .string(name)), ("source", .string("builtin")), ("query", .string(query))]
        if let min { fields.append(("min", .double(min))) }
        if let max { fields.append(("max", .double(max))) }
        return .mapping(fields)
    }

    func fetch(_ platform: Platform) async throws -> SpecNode? { try await platform.object(.canary) }

    func until(_ platform: Platform, _ what: String, seconds: Double = 40, _ condition: (SpecNode) -> Bool) async throws {
        try await platform.until(.canary, what, seconds: seconds, condition)
    }

    /// Version 1 rolled out under `canary`, then version 2 asked for (`extra` on it).
    func started(_ platform: Platform, _ canary: SpecNode, extra: [(String, SpecNode)] = [],
                 app: SpecNode = DeploymentScenarioTests.application()) async throws -> (app: SpecNode, port: Int) {
        let port = LocalWorkloadPlatform.freePort()!
        try await platform.put([app, DeploymentScenarioTests.deployment("1", port: port), canary])
        try await DeploymentScenarioTests().expect(platform, phase: "Succeeded", version: "1")
        try await until(platform, "Idle at version 1") { $0["phase"]?.scalarText == "Idle" && $0["stableVersion"]?.scalarText == "1" }
        try await platform.put([app, DeploymentScenarioTests.deployment("2", port: port, extra: extra), canary])
        return (app, port)
    }

    func track(_ platform: Platform, _ name: String) async throws -> SpecNode? {
        try await platform.deployment()?["status"]?["tracks"]?.entriesOrItems.first { $0["name"]?.scalarText == name }
    }

    /// The Service's selector on a cluster (nil locally).
    func selectsTrack(_ platform: Platform) async throws -> String? {
        guard platform.kind == .kube else { return nil }
        let service = try await platform.client!.get(.services, namespace: "default", name: "web")
        return service?["spec"]?["selector"]?["capstan.dev/track"]?.scalarText ?? "every track"
    }

    /// Waits (up to 10 s) until the Service selects `wanted`: it follows the Deployment's
    /// status, and a stable track scaled back up selects every pod of the owner until it is
    /// whole again.
    func expectSelected(_ platform: Platform, _ wanted: String) async throws {
        var selected: String?
        for _ in 0..<100 where selected != wanted {
            selected = try await selectsTrack(platform)
            if selected != wanted { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(selected == wanted, "\(platform.kind): the Service selects \(selected ?? "nothing"), not \(wanted)")
    }

    /// On a cluster with Traefik (K3s): the weights on a TraefikService, the routes on an
    /// IngressRoute to it while the run lasts.
    @Test(arguments: Kind.allCases) func aNewVersionGoesThroughTheStepsAndIsPromoted(_ kind: Kind) async throws {
        try await DeploymentScenarioTests().on(kind, traefik: true) { platform in try await promoted(platform) }
    }

    static let traefikServices = KubeResource(group: "traefik.io", version: "v1alpha1", plural: "traefikservices", kind: "TraefikService")
    static let ingressRoutes = KubeResource(group: "traefik.io", version: "v1alpha1", plural: "ingressroutes", kind: "IngressRoute")

    /// The TraefikService's weights by Service name (nil: there is none).
    func traefikWeights(_ platform: Platform) async throws -> [String: Int]? {
        guard let service = try await platform.client!.get(Self.traefikServices, namespace: "default", name: "web") else { return nil }
        var weights: [String: Int] = [:]
        for entry in service["spec"]?["weighted"]?["services"]?.entriesOrItems ?? [] {
            weights[entry["name"]?.scalarText ?? "?"] = Int(entry["weight"]?.scalarText ?? "") ?? -1
        }
        return weights
    }

    /// Waits (up to 10 s) for the TraefikService's weights.
    func expectWeights(_ platform: Platform, _ wanted: [String: Int]?) async throws {
        var weights: [String: Int]?
        for _ in 0..<100 {
            weights = try await traefikWeights(platform)
            if weights == wanted { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(weights == wanted, "the TraefikService's weights")
    }

    func promoted(_ platform: Platform) async throws {
        let kind = platform.kind
        let canary = Self.canary(steps: [Self.weight(50), Self.pause, Self.weight(80), Self.pause],
                                 metrics: [Self.metric("up", "up", min: 1)])
        let routes: [SpecNode] = [.mapping([("host", .string("web.example.com")), ("port", .string("http"))])]
        // Version 2 goes to the canary track, not to the stable one.
        _ = try await started(platform, canary, app: DeploymentScenarioTests.application(routes: routes))
        try await until(platform, "paused at 50%") { $0["phase"]?.scalarText == "Paused" && $0["canaryWeight"]?.scalarText == "50" }
        let status = try await fetch(platform)?["status"]
        #expect(status?["canaryVersion"]?.scalarText == "2")
        #expect(status?["currentStep"]?.scalarText == "1")
        let runs: [SpecNode] = status?["analysisRuns"]?.entriesOrItems ?? []
        let passed = runs.contains { (run: SpecNode) -> Bool in run["metric"]?.scalarText == "up" && run["passed"]?.scalarText == "true" }
        #expect(passed, "\(runs)")
        let deployment = try await platform.deployment()
        #expect(KubeModeTests.condition(deployment, "Reconciling")?["reason"]?.scalarText == "CanaryInProgress", "\(kind): \(String(describing: deployment))")
        #expect(try await track(platform, "stable")?["version"]?.scalarText == "1")
        #expect(try await track(platform, "canary")?["version"]?.scalarText == "2")
        #expect(try await track(platform, "canary")?["role"]?.scalarText == "Canary")
        if kind == .kube {
            // Traefik weighs the tracks' Services; the routes go to it; `NAME` is the stable's.
            try await expectWeights(platform, ["web": 50, "web-canary": 50])
            try await expectSelected(platform, "stable")
            let client = platform.client!
            let canaryService = try await client.get(.services, namespace: "default", name: "web-canary")
            #expect(canaryService?["spec"]?["selector"]?["capstan.dev/track"]?.scalarText == "canary")
            let route = try await client.get(Self.ingressRoutes, namespace: "default", name: "web")
            let service = route?["spec"]?["routes"]?.entriesOrItems.first?["services"]?.entriesOrItems.first
            #expect(route?["spec"]?["routes"]?.entriesOrItems.first?["match"]?.scalarText == "Host(`web.example.com`) && PathPrefix(`/`)")
            #expect(service?["kind"]?.scalarText == "TraefikService" && service?["name"]?.scalarText == "web")
            #expect(try await client.get(.ingresses, namespace: "default", name: "web") == nil, "the IngressRoute replaces the Ingress")
            // With an exact split, the canary needs only its share of the instances.
            let apps = try await client.get(.deployments, namespace: "default", name: "web-canary")
            #expect(apps?["spec"]?["replicas"]?.scalarText == "1", "half of 2 replicas")
        }

        // Promote ends the pause; the next weight.
        var promote = try await platform.cli(["promote", "canary/web"])
        #expect(promote.status == 0, "\(kind): \(promote.output)")
        try await until(platform, "paused at 80%") { $0["phase"]?.scalarText == "Paused" && $0["canaryWeight"]?.scalarText == "80" }
        if kind == .kube {
            try await expectWeights(platform, ["web": 20, "web-canary": 80])
        }
        promote = try await platform.cli(["promote", "canary/web"])
        #expect(promote.status == 0, "\(kind): \(promote.output)")
        try await until(platform, "Succeeded") { $0["phase"]?.scalarText == "Succeeded" }
        try await DeploymentScenarioTests().expect(platform, phase: "Succeeded", version: "2")
        #expect(try await track(platform, "canary") == nil)
        #expect(try await track(platform, "stable")?["version"]?.scalarText == "2")
        #expect(KubeModeTests.condition(try await fetch(platform), "Promoted")?["status"]?.scalarText == "True")
        if kind == .kube {
            try await expectSelected(platform, "stable")
            let client = platform.client!
            #expect(try await client.get(.deployments, namespace: "default", name: "web-canary") == nil)
            // The run's children go; the Ingress is back.
            try await expectWeights(platform, nil)
            #expect(try await client.get(Self.ingressRoutes, namespace: "default", name: "web") == nil)
            #expect(try await client.get(.services, namespace: "default", name: "web-canary") == nil)
            #expect(try await client.get(.ingresses, namespace: "default", name: "web") != nil)
        }
    }

    @Test(arguments: Kind.allCases) func anAbortSendsNothingToTheCanaryAndTheDeploymentSaysSo(_ kind: Kind) async throws {
        try await DeploymentScenarioTests().on(kind) { platform in try await aborted(platform) }
    }

    func aborted(_ platform: Platform) async throws {
        let kind = platform.kind
        let canary = Self.canary(steps: [Self.weight(50), Self.pause])
        let (app, port) = try await started(platform, canary)
        try await until(platform, "paused at 50%") { $0["phase"]?.scalarText == "Paused" }

        if kind == .kube {
            // Without Traefik: one Service over both tracks, the ratio of ready pods the split.
            try await expectSelected(platform, "every track")
            let apps = try await platform.client!.get(.deployments, namespace: "default", name: "web-canary")
            #expect(apps?["spec"]?["replicas"]?.scalarText == "1", "half of 2 replicas")
            #expect(try await platform.client!.get(.deployments, namespace: "default", name: "web")?["spec"]?["replicas"]?.scalarText == "1")
        }

        let abort = try await platform.cli(["abort", "canary/web"])
        #expect(abort.status == 0, "\(kind): \(abort.output)")
        try await until(platform, "Aborted") { $0["phase"]?.scalarText == "Aborted" && $0["canaryWeight"]?.scalarText == "0" }
        try await DeploymentScenarioTests().expect(platform, phase: "Failed", conditions: ["Stalled": ("True", "CanaryAborted")])
        #expect(try await track(platform, "canary") == nil)
        #expect(try await track(platform, "stable")?["version"]?.scalarText == "1")
        if kind == .kube {
            try await expectSelected(platform, "stable")
        }

        // A pause without an end is bounded by the Deployment's progress deadline.
        try await platform.put([app, DeploymentScenarioTests.deployment("3", port: port, extra: [("progressDeadline", .string("3s"))]), canary])
        try await until(platform, "the next run") { $0["canaryVersion"]?.scalarText == "3" }
        try await until(platform, "aborted at the deadline", seconds: 30) {
            $0["phase"]?.scalarText == "Aborted" && KubeModeTests.condition(.mapping([("status", $0)]), "Stalled")?["reason"]?.scalarText == "ProgressDeadlineExceeded"
        }

        // The Canary deleted mid-run: the run ends as an abort, and the version waits for the
        // next change of the spec; that one rolls out unguarded.
        try await platform.put([app, DeploymentScenarioTests.deployment("4", port: port), canary])
        try await until(platform, "the run of version 4 paused") { $0["canaryVersion"]?.scalarText == "4" && $0["phase"]?.scalarText == "Paused" }
        if kind == .kube {
            _ = try await platform.client!.delete(.capstan(.canary), namespace: "default", name: "web")
        } else {
            try await platform.put([app, DeploymentScenarioTests.deployment("4", port: port)])
        }
        try await DeploymentScenarioTests().expect(platform, phase: "Failed", conditions: ["Stalled": ("True", "CanaryAborted")])
        let message = KubeModeTests.condition(try await platform.deployment(), "Stalled")?["message"]?.scalarText ?? ""
        #expect(message.contains("deleted"), "\(kind): \(message)")
        try await Task.sleep(for: .seconds(1))
        #expect(try await track(platform, "canary") == nil)
        #expect(try await track(platform, "stable")?["version"]?.scalarText == "1", "\(kind): the stable track serves on")
        try await platform.put([app, DeploymentScenarioTests.deployment("5", port: port)])
        try await DeploymentScenarioTests().expect(platform, phase: "Succeeded", version: "5")
    }

    @Test(arguments: Kind.allCases) func aMetricThatCannotBeReadFailsTheAnalysis(_ kind: Kind) async throws {
        try await DeploymentScenarioTests().on(kind) { platform in try await unreadable(platform) }
    }

    func unreadable(_ platform: Platform) async throws {
        let kind = platform.kind
        // A bound no canary meets locally; on a cluster the probe metrics cannot be read at
        // all (the kubelet probes): either way a failure, never a pass.
        let canary = Self.canary(steps: [Self.weight(20), .mapping([("analysis", .mapping([]))]), Self.pause],
                                 metrics: [Self.metric("probes", "probe_failure_ratio", max: kind == .local ? -1 : 0.5)])
        _ = try await started(platform, canary)
        try await until(platform, "aborted by the analysis") { $0["phase"]?.scalarText == "Aborted" }
        let status = try await fetch(platform)?["status"]
        let run = status?["analysisRuns"]?.entriesOrItems.last
        #expect(run?["passed"]?.scalarText == "false")
        #expect(KubeModeTests.condition(.mapping([("status", status ?? .null)]), "Stalled")?["reason"]?.scalarText == "AnalysisFailed")
        if kind == .kube {
            #expect(run?["message"]?.scalarText?.contains("kubelet") == true, "\(String(describing: run))")
        }
        try await DeploymentScenarioTests().expect(platform, phase: "Failed", conditions: ["Stalled": ("True", "CanaryAborted")])
    }

    @Test(arguments: Kind.allCases) func aCanaryThatCannotGuardItsDeploymentSaysWhy(_ kind: Kind) async throws {
        try await DeploymentScenarioTests().on(kind) { platform in try await refused(platform) }
    }

    /// Whether the Canary `name`'s Stalled condition is True with `reason`.
    static func stalled(_ status: SpecNode, _ reason: String) -> Bool {
        let condition = KubeModeTests.condition(.mapping([("status", status)]), "Stalled")
        return condition?["status"]?.scalarText == "True" && condition?["reason"]?.scalarText == reason
    }

    func refused(_ platform: Platform) async throws {
        let port = LocalWorkloadPlatform.freePort()!
        let app = DeploymentScenarioTests.application()
        let canary = Self.canary(steps: [Self.weight(50), Self.pause])
        // No Deployment yet: it waits, and heals when the Deployment appears.
        try await platform.put([app, canary])
        try await until(platform, "DeploymentNotFound") { Self.stalled($0, "DeploymentNotFound") }
        // A BlueGreen Deployment rolls out a whole colour: refused, and the rollout goes on.
        let blueGreen = DeploymentScenarioTests.deployment("1", port: port, extra: [DeploymentScenarioTests.blueGreen(previewPort: LocalWorkloadPlatform.freePort()!)])
        try await platform.put([app, blueGreen, canary])
        try await until(platform, "BlueGreenDeployment") { Self.stalled($0, "BlueGreenDeployment") }
        try await DeploymentScenarioTests().expect(platform, phase: "Succeeded", version: "1")
        // RollingUpdate: the Canary guards it; a second one on the same Deployment is refused
        // and the first goes on guarding.
        try await platform.put([app, DeploymentScenarioTests.deployment("1", port: port), canary, Self.canary("web-b", steps: [Self.weight(20)])])
        try await until(platform, "the first Canary idle") { $0["phase"]?.scalarText == "Idle" && KubeModeTests.condition(.mapping([("status", $0)]), "Stalled")?["status"]?.scalarText != "True" }
        try await platform.until(.canary, named: "web-b", "DuplicateCanary") { Self.stalled($0, "DuplicateCanary") }
        let message = KubeModeTests.condition(try await platform.object(.canary, named: "web-b"), "Stalled")?["message"]?.scalarText ?? ""
        #expect(message.contains("canary web"), "names the Canary that guards it: \(message)")
        try await platform.put([app, DeploymentScenarioTests.deployment("2", port: port), canary, Self.canary("web-b", steps: [Self.weight(20)])])
        try await until(platform, "the first Canary's run at 50%") { $0["phase"]?.scalarText == "Paused" && $0["canaryWeight"]?.scalarText == "50" }
    }
}
