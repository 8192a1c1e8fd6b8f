import CapstanControllers
import CapstanKube
import CapstanModel
import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `capstan run --kube` end to end: the built binary against hack/fake-apiserver, driven as a
/// user and the cluster's own controllers would (kubectl-style writes through the API).
@Suite(.serialized, .timeLimit(.minutes(5))) struct KubeModeTests {
    static var binary: String {
        ProcessInfo.processInfo.environment["CAPSTAN_BIN"] ?? FakeAPIServer.root + "/.build/debug/capstan"
    }

    static let applications = KubeResource.capstan(.application)
    static let deployments = KubeResource.capstan(.deployment)

    struct Failure: Error, CustomStringConvertible { var description: String }

    /// A daemon process with its log.
    final class Daemon: @unchecked Sendable {
        let process = Process()
        let logPath: String

        init(_ arguments: [String], kubeconfig: String, log: String) throws {
            logPath = log
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            process.executableURL = URL(fileURLWithPath: KubeModeTests.binary)
            process.arguments = ["run", "--kube", "--kubeconfig", kubeconfig, "--metrics-addr", "127.0.0.1:0", "--resync", "1h"] + arguments
            process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
            process.standardError = FileHandle(forWritingAtPath: log)
            try process.run()
        }

        var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

        func kill() {
            if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
    }

    static func poll(_ what: String, seconds: Double = 20, log: () -> String = { "" }, _ condition: () async throws -> Bool) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("timed out waiting for \(what); daemon log:\n\(log().suffix(4000))")
        throw Failure(description: "timed out waiting for \(what)")
    }

    static func application(_ name: String = "web", routes: Bool = true) -> SpecNode {
        var spec: [(String, SpecNode)] = [
            ("image", .string("ghcr.io/example/\(name)")),
            ("command", .sequence([.string("/app/server")])),
            ("env", .sequence([.mapping([("name", .string("LOG_LEVEL")), ("value", .string("info"))])])),
            ("ports", .sequence([.mapping([("name", .string("http")), ("containerPort", .int(8080))])])),
            ("healthCheck", .mapping([("http", .mapping([("path", .string("/healthz")), ("port", .string("http"))])), ("interval", .string("5s"))])),
            ("resources", .mapping([("cpu", .string("250m")), ("memory", .string("128Mi"))])),
        ]
        if routes {
            spec.append(("routes", .sequence([.mapping([("host", .string("\(name).example.com")), ("port", .string("http"))])])))
        }
        return .mapping([
            ("apiVersion", .string(capstanAPIVersion)), ("kind", .string("Application")),
            ("metadata", .mapping([("name", .string(name))])), ("spec", .mapping(spec)),
        ])
    }

    static func deployment(_ name: String = "web", application: String = "web", version: String = "1.0.0", replicas: Int = 2) -> SpecNode {
        .mapping([
            ("apiVersion", .string(capstanAPIVersion)), ("kind", .string("Deployment")),
            ("metadata", .mapping([("name", .string(name))])),
            ("spec", .mapping([
                ("application", .string(application)), ("version", .string(version)), ("replicas", .int(replicas)), ("port", .int(80)),
                ("env", .sequence([.mapping([("name", .string("LOG_LEVEL")), ("value", .string("debug"))])])),
                ("strategy", .mapping([("type", .string("RollingUpdate")), ("maxSurge", .int(1)), ("maxUnavailable", .int(0))])),
            ])),
        ])
    }

    /// What the kube-controller-manager's Deployment controller would report once every pod
    /// of the current template is ready.
    static func rolledOut(_ child: SpecNode) -> SpecNode {
        let replicas = Int(child["spec"]?["replicas"]?.scalarText ?? "1") ?? 1
        return .mapping([("status", .mapping([
            ("observedGeneration", .int(Int(child["metadata"]?["generation"]?.scalarText ?? "1") ?? 1)),
            ("replicas", .int(replicas)), ("updatedReplicas", .int(replicas)), ("readyReplicas", .int(replicas)), ("availableReplicas", .int(replicas)),
            ("conditions", .sequence([
                .mapping([("type", .string("Available")), ("status", .string("True")), ("reason", .string("MinimumReplicasAvailable")), ("message", .string("Deployment has minimum availability."))]),
                .mapping([("type", .string("Progressing")), ("status", .string("True")), ("reason", .string("NewReplicaSetAvailable")), ("message", .string("ReplicaSet has successfully progressed."))]),
            ])),
        ]))])
    }

    static func started(_ arguments: [String] = []) async throws -> (FakeAPIServer, KubeClient) {
        let server = try FakeAPIServer(arguments: arguments)
        let client = try server.client()
        for crd in try FakeAPIServer.crds() {
            _ = try await client.create(.customResourceDefinitions, namespace: nil, crd)
        }
        return (server, client)
    }

    /// `capstan run --kube` against the server, logging to its directory.
    static func daemon(on server: FakeAPIServer, _ arguments: [String] = []) throws -> Daemon {
        try Daemon(arguments, kubeconfig: server.kubeconfig, log: server.directory + "/daemon.log")
    }

    /// The `apps/v1` child `web`, once it exists.
    static func child(_ client: KubeClient, log: () -> String) async throws -> SpecNode {
        var child: SpecNode?
        try await poll("the child", log: log) {
            child = try await client.get(.deployments, namespace: "default", name: "web")
            return child != nil
        }
        return child!
    }

    static func events(_ client: KubeClient, about name: String) async throws -> [String] {
        let (items, _) = try await client.list(.events, namespace: "default")
        return items.filter { $0["involvedObject"]?["name"]?.scalarText == name }.compactMap { $0["reason"]?.scalarText }
    }

    static func condition(_ object: SpecNode?, _ type: String) -> SpecNode? {
        guard case .sequence(let items)? = object?["status"]?["conditions"]?.value else { return nil }
        return items.first { $0["type"]?.scalarText == type }
    }

    @Test func deploymentsBecomeOwnedChildrenThatFollowTheSpecAndLeaveNothingBehind() async throws {
        let (server, client) = try await Self.started()
        defer { server.stop() }
        let daemon = try Self.daemon(on: server)
        defer { daemon.kill() }
        let log = { daemon.log }

        _ = try await client.create(Self.applications, namespace: "default", Self.application())
        let owner = try await client.create(Self.deployments, namespace: "default", Self.deployment())
        let uid = try #require(owner["metadata"]?["uid"]?.scalarText)

        // The children exist, owned and labelled.
        var child: SpecNode?
        try await Self.poll("the apps/v1 Deployment, Service and Ingress", log: log) {
            child = try await client.get(.deployments, namespace: "default", name: "web")
            let service = try await client.get(.services, namespace: "default", name: "web")
            let ingress = try await client.get(.ingresses, namespace: "default", name: "web")
            return child != nil && service != nil && ingress != nil
        }
        for resource in [KubeResource.deployments, .services, .ingresses] {
            let object = try #require(try await client.get(resource, namespace: "default", name: "web"))
            #expect(Children.controller(of: object)?.uid == uid, "\(resource.kind) is controlled by the Capstan Deployment")
            #expect(object["metadata"]?["labels"]?["app.kubernetes.io/managed-by"]?.scalarText == "capstan")
            #expect(object["metadata"]?["labels"]?["capstan.dev/owner-name"]?.scalarText == "web")
            #expect(object["metadata"]?["labels"]?["capstan.dev/owner-kind"]?.scalarText == "Deployment")
        }
        let container = child?["spec"]?["template"]?["spec"]?["containers"]?.sequenceItems?.first
        #expect(container?["image"]?.scalarText == "ghcr.io/example/web:1.0.0")
        #expect(container?["env"]?.sequenceItems?.first?["value"]?.scalarText == "debug", "the Deployment's env wins over the Application's")
        #expect(container?["readinessProbe"]?["httpGet"]?["port"]?.scalarText == "http")
        #expect(container?["resources"]?["limits"]?["memory"]?.scalarText == "128Mi")
        #expect(child?["spec"]?["replicas"]?.scalarText == "2")
        #expect(child?["spec"]?["strategy"]?["rollingUpdate"]?["maxUnavailable"]?.scalarText == "0")
        let service = try await client.get(.services, namespace: "default", name: "web")
        #expect(service?["spec"]?["ports"]?.sequenceItems?.first?["port"]?.scalarText == "80")
        #expect(service?["spec"]?["ports"]?.sequenceItems?.first?["targetPort"]?.scalarText == "http")
        let ingress = try await client.get(.ingresses, namespace: "default", name: "web")
        #expect(ingress?["spec"]?["rules"]?.sequenceItems?.first?["host"]?.scalarText == "web.example.com")

        // Status on /status: rolling out until the cluster reports the pods ready.
        try await Self.poll("status Reconciling at generation 1", log: log) {
            let object = try await client.get(Self.deployments, namespace: "default", name: "web")
            return object?["status"]?["observedGeneration"]?.scalarText == "1" && Self.condition(object, "Reconciling")?["reason"]?.scalarText == "RollingOut"
        }
        // No finalizer: the garbage collector removes what the owner reference ties to it.
        let owned = try await client.get(Self.deployments, namespace: "default", name: "web")
        #expect(owned?["metadata"]?["finalizers"] == nil, "\(String(describing: owned?["metadata"]))")
        _ = try await client.patch(.deployments, namespace: "default", name: "web", Self.rolledOut(child!), subresource: "status")
        try await Self.poll("Ready", log: log) {
            let object = try await client.get(Self.deployments, namespace: "default", name: "web")
            return Self.condition(object, "Ready")?["status"]?.scalarText == "True" && object?["status"]?["readyReplicas"]?.scalarText == "2"
                && object?["status"]?["phase"]?.scalarText == "Succeeded"
        }
        try await Self.poll("the Application is Ready and lists its Deployment as ready", log: log) {
            let application = try await client.get(Self.applications, namespace: "default", name: "web")
            return Self.condition(application, "Ready")?["status"]?.scalarText == "True"
                && application?["status"]?["deployments"]?.sequenceItems?.first?["ready"]?.scalarText == "true"
        }
        try await Self.poll("events", log: log) {
            let reasons = try await Self.events(client, about: "web")
            // A first rollout is routine: its outcome is its one event.
            return reasons.contains("RolloutSucceeded") && !reasons.contains("RolloutStarted")
        }

        // A reconcile asked for with the request annotation is done and said.
        let request = SpecNode.mapping([("metadata", .mapping([("annotations", .mapping([(KubeObjectStore.reconcileRequest, .string("2026-11-23T10:00:00Z"))]))]))])
        _ = try await client.patch(Self.deployments, namespace: "default", name: "web", request)
        try await Self.poll("the requested reconcile", log: log) { try await Self.events(client, about: "web").contains("ReconcileRequested") }

        // A new version: the child follows, the status observes generation 2.
        _ = try await client.patch(Self.deployments, namespace: "default", name: "web", .mapping([("spec", .mapping([("version", .string("1.1.0"))]))]))
        try await Self.poll("the new image", log: log) {
            let object = try await client.get(.deployments, namespace: "default", name: "web")
            return object?["spec"]?["template"]?["spec"]?["containers"]?.sequenceItems?.first?["image"]?.scalarText == "ghcr.io/example/web:1.1.0"
        }
        try await Self.poll("generation 2 observed", log: log) {
            let object = try await client.get(Self.deployments, namespace: "default", name: "web")
            return object?["status"]?["observedGeneration"]?.scalarText == "2" && object?["status"]?["currentRevision"]?.scalarText == "2"
        }

        // Edited behind Capstan's back: reverted.
        _ = try await client.patch(.deployments, namespace: "default", name: "web", .mapping([("spec", .mapping([("replicas", .int(7))]))]))
        try await Self.poll("the edit reverted", log: log) {
            try await client.get(.deployments, namespace: "default", name: "web")?["spec"]?["replicas"]?.scalarText == "2"
        }
        // Deleted behind Capstan's back: created again.
        try await client.delete(.services, namespace: "default", name: "web")
        try await Self.poll("the Service recreated", log: log) {
            try await client.get(.services, namespace: "default", name: "web") != nil
        }
        try await Self.poll("DriftCorrected and Recreated events", log: log) {
            let reasons = try await Self.events(client, about: "web")
            return reasons.contains("DriftCorrected") && reasons.contains("Recreated")
        }

        // Routes removed from the Application: the Ingress goes.
        _ = try await client.patch(Self.applications, namespace: "default", name: "web", .mapping([("spec", .mapping([("routes", SpecNode(.null))]))]))
        try await Self.poll("the Ingress removed", log: log) {
            try await client.get(.ingresses, namespace: "default", name: "web") == nil
        }

        // Deleted: the (fake's) garbage collector removes the children, nothing is left.
        try await client.delete(Self.deployments, namespace: "default", name: "web")
        try await Self.poll("everything gone", log: log) {
            let children = [try await client.get(.deployments, namespace: "default", name: "web"),
                            try await client.get(.services, namespace: "default", name: "web")]
            let owner = try await client.get(Self.deployments, namespace: "default", name: "web")
            return children.allSatisfy { $0 == nil } && owner == nil
        }
    }

    static func image(_ client: KubeClient, _ name: String = "web") async throws -> String? {
        try await client.get(.deployments, namespace: "default", name: name)?["spec"]?["template"]?["spec"]?["containers"]?.sequenceItems?.first?["image"]?.scalarText
    }

    @Test func aRevisionPastItsDeadlineIsRolledBackToTheLastGoodOne() async throws {
        let (server, client) = try await Self.started()
        defer { server.stop() }
        let daemon = try Self.daemon(on: server)
        defer { daemon.kill() }
        let log = { daemon.log }
        _ = try await client.create(Self.applications, namespace: "default", Self.application(routes: false))
        // The deadline is Capstan's own clock on every platform (the child's
        // progressDeadlineSeconds is a copy for kubectl readers).
        _ = try await client.create(Self.deployments, namespace: "default", Self.deployment().setting(["spec", "progressDeadline"], .string("2s")))
        let child: SpecNode? = try await Self.child(client, log: log)
        _ = try await client.patch(.deployments, namespace: "default", name: "web", Self.rolledOut(child!), subresource: "status")
        try await Self.poll("revision 1 succeeded", log: log) {
            Self.condition(try await client.get(Self.deployments, namespace: "default", name: "web"), "Ready")?["status"]?.scalarText == "True"
        }

        // Version 2 never becomes available: the cluster's counts stop moving.
        _ = try await client.patch(Self.deployments, namespace: "default", name: "web", .mapping([("spec", .mapping([("version", .string("2.0.0"))]))]))
        try await Self.poll("version 2 applied", log: log) { try await Self.image(client) == "ghcr.io/example/web:2.0.0" }
        let stuck = try #require(try await client.get(.deployments, namespace: "default", name: "web"))
        let deadline = SpecNode.mapping([("status", .mapping([
            ("observedGeneration", .int(Int(stuck["metadata"]?["generation"]?.scalarText ?? "1") ?? 1)),
            ("replicas", .int(3)), ("updatedReplicas", .int(1)), ("readyReplicas", .int(2)), ("availableReplicas", .int(2)), ("unavailableReplicas", .int(1)),
            ("conditions", .sequence([
                .mapping([("type", .string("Available")), ("status", .string("True")), ("reason", .string("MinimumReplicasAvailable"))]),
                .mapping([("type", .string("Progressing")), ("status", .string("False")), ("reason", .string("ProgressDeadlineExceeded")),
                          ("message", .string("ReplicaSet \"web-2\" has timed out progressing."))]),
            ])),
        ]))])
        _ = try await client.patch(.deployments, namespace: "default", name: "web", deadline, subresource: "status")
        try await Self.poll("rolled back to version 1", log: log) { try await Self.image(client) == "ghcr.io/example/web:1.0.0" }
        try await Self.poll("RolledBack events", log: log) {
            let reasons = try await Self.events(client, about: "web")
            return reasons.contains("RolledBack") && reasons.contains("ProgressDeadlineExceeded")
        }
        let back = try #require(try await client.get(.deployments, namespace: "default", name: "web"))
        _ = try await client.patch(.deployments, namespace: "default", name: "web", Self.rolledOut(back), subresource: "status")
        try await Self.poll("the rollback holds", log: log) {
            let object = try await client.get(Self.deployments, namespace: "default", name: "web")
            return object?["status"]?["phase"]?.scalarText == "RolledBack" && Self.condition(object, "Stalled")?["reason"]?.scalarText == "RollbackActive"
                && object?["status"]?["currentRevision"]?.scalarText == "3" && object?["status"]?["rollback"]?["toRevision"]?.scalarText == "3"
        }
        // Capstan keeps the templates in the Deployment's status (no object of their own).
        let kept = try await client.get(Self.deployments, namespace: "default", name: "web")?["status"]?["revisionTemplates"]?.sequenceItems ?? []
        #expect(kept.compactMap { $0["revision"]?.scalarText } == ["2", "3"], "revision 1 came back as 3")
        #expect(try await client.get(.configMaps, namespace: "default", name: "web-capstan-revisions") == nil)

        // A new spec rolls forward again.
        _ = try await client.patch(Self.deployments, namespace: "default", name: "web", .mapping([("spec", .mapping([("version", .string("2.1.0"))]))]))
        try await Self.poll("version 2.1.0 applied", log: log) { try await Self.image(client) == "ghcr.io/example/web:2.1.0" }
        try await Self.poll("the rollback released", log: log) {
            let object = try await client.get(Self.deployments, namespace: "default", name: "web")
            return object?["status"]?["rollback"] == nil && object?["status"]?["currentRevision"]?.scalarText == "4"
        }
    }

    /// Each new version is the next revision, numbered before the store has answered (the
    /// child does not wait for it), and the store keeps what `revisionHistoryLimit` asks.
    @Test func newVersionsAreTheNextRevisionsAndOldOnesArePruned() async throws {
        let (server, client) = try await Self.started()
        defer { server.stop() }
        let daemon = try Self.daemon(on: server)
        defer { daemon.kill() }
        let log = { daemon.log }
        _ = try await client.create(Self.applications, namespace: "default", Self.application(routes: false))
        _ = try await client.create(Self.deployments, namespace: "default",
                                    Self.deployment().setting(["spec", "revisionHistoryLimit"], .int(1)))
        for (index, version) in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"].enumerated() {
            if index > 0 {
                _ = try await client.patch(Self.deployments, namespace: "default", name: "web", .mapping([("spec", .mapping([("version", .string(version))]))]))
            }
            try await Self.poll("version \(version) as revision \(index + 1)", log: log) {
                let child = try await client.get(.deployments, namespace: "default", name: "web")
                let status = try await client.get(Self.deployments, namespace: "default", name: "web")?["status"]
                let image = try await Self.image(client)
                return child?["spec"]?["template"]?["metadata"]?["annotations"]?["capstan.dev/revision"]?.scalarText == String(index + 1)
                    && image == "ghcr.io/example/web:\(version)" && status?["currentRevision"]?.scalarText == String(index + 1)
            }
        }
        try await Self.poll("revisions 3 and 4 kept", log: log) {
            let kept = try await client.get(Self.deployments, namespace: "default", name: "web")?["status"]?["revisionTemplates"]?.sequenceItems ?? []
            return kept.compactMap { $0["revision"]?.scalarText } == ["3", "4"]
        }
        let history = try await client.get(Self.deployments, namespace: "default", name: "web")?["status"]?["history"]?.sequenceItems ?? []
        #expect(history.map { $0["revision"]?.scalarText } == ["3", "4"])
    }

    /// The API server stores a container's quantities in canonical form (`0.5` as `500m`):
    /// Capstan applies them so, or the stored child would never match what it applies and every
    /// reconcile would apply it again and report drift that is not there.
    @Test func quantitiesAreAppliedAsTheServerStoresThem() async throws {
        let (server, client) = try await Self.started()
        defer { server.stop() }
        let daemon = try Self.daemon(on: server)
        defer { daemon.kill() }
        let log = { daemon.log }
        let application = Self.application(routes: false)
            .setting(["spec", "resources", "cpu"], .string("0.5")).setting(["spec", "resources", "memory"], .string("1024Mi"))
        _ = try await client.create(Self.applications, namespace: "default", application)
        _ = try await client.create(Self.deployments, namespace: "default", Self.deployment())
        let child: SpecNode? = try await Self.child(client, log: log)
        let limits = child?["spec"]?["template"]?["spec"]?["containers"]?.sequenceItems?.first?["resources"]?["limits"]
        #expect(limits?["cpu"]?.scalarText == "500m")
        #expect(limits?["memory"]?.scalarText == "1Gi")
        // Reconciles with nothing to change: the cluster reports the rollout done, then a
        // reconcile is requested.
        _ = try await client.patch(.deployments, namespace: "default", name: "web", Self.rolledOut(child!), subresource: "status")
        try await Self.poll("Ready", log: log) {
            Self.condition(try await client.get(Self.deployments, namespace: "default", name: "web"), "Ready")?["status"]?.scalarText == "True"
        }
        _ = try await client.patch(Self.deployments, namespace: "default", name: "web",
                                   .mapping([("metadata", .mapping([("annotations", .mapping([(KubeObjectStore.reconcileRequest, .string("now"))]))]))]))
        try await Self.poll("the requested reconcile", log: log) { try await Self.events(client, about: "web").contains("ReconcileRequested") }
        try await Task.sleep(for: .milliseconds(500))
        #expect(try await Self.events(client, about: "web").contains("DriftCorrected") == false, "nothing drifted")
        #expect(try await client.get(.deployments, namespace: "default", name: "web")?["metadata"]?["generation"]?.scalarText == "1")
    }

    /// `capstan diff --kube`: the files compared with the cluster's custom resources (no daemon
    /// needed): the same, exit 0; a changed field and a new object listed, exit 1.
    @Test func diffComparesFilesWithTheCustomResources() async throws {
        let (server, client) = try await Self.started()
        defer { server.stop() }
        _ = try await client.create(Self.applications, namespace: "default", Self.application(routes: false))
        _ = try await client.create(Self.deployments, namespace: "default", Self.deployment())
        let directory = server.directory + "/diff"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let same = YAMLEmitter.emit(Self.application(routes: false)) + "---\n" + YAMLEmitter.emit(Self.deployment())
        try same.write(toFile: directory + "/specs.yaml", atomically: true, encoding: .utf8)
        let unchanged = try await Self.capstan(["diff", directory, "--kube", "--kubeconfig", server.kubeconfig])
        #expect(unchanged.status == 0 && unchanged.output == "Summary: 2 unchanged\n", "\(unchanged.output)")

        let changed = YAMLEmitter.emit(Self.application(routes: false)) + "---\n" + YAMLEmitter.emit(Self.deployment(version: "1.1.0", replicas: 3))
            + "---\n" + YAMLEmitter.emit(Self.deployment("api"))
        try changed.write(toFile: directory + "/specs.yaml", atomically: true, encoding: .utf8)
        let diff = try await Self.capstan(["diff", directory, "--kube", "--kubeconfig", server.kubeconfig])
        #expect(diff.status == 1, "\(diff.output)")
        let lines = diff.output.split(separator: "\n").map(String.init)
        #expect(lines.contains("Deployment/default/web: changed (generation 1 -> 2)") && lines.contains("  ~ spec.version: \"1.0.0\" -> \"1.1.0\"")
                && lines.contains("  ~ spec.replicas: 2 -> 3"), "\(diff.output)")
        #expect(lines.contains { $0.hasPrefix("Deployment/default/api: created") }, "\(diff.output)")
        #expect(lines.last == "Summary: 1 created, 1 changed, 1 unchanged", "\(diff.output)")
        #expect(try await client.get(Self.deployments, namespace: "default", name: "api") == nil, "nothing applied")
    }

    /// Runs the capstan command line; returns its exit status and output (stdout + stderr).
    static func capstan(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// Rolls a custom resource's child forward to Ready, as the cluster's Deployment controller would.
    static func rollOut(_ client: KubeClient, image: String, log: () -> String) async throws {
        try await Self.poll("\(image) applied", log: log) { try await Self.image(client) == image }
        let child = try #require(try await client.get(.deployments, namespace: "default", name: "web"))
        _ = try await client.patch(.deployments, namespace: "default", name: "web", Self.rolledOut(child), subresource: "status")
    }

    @Test func aRollbackOnRequestRunsAnEarlierRevisionUntilTheSpecChanges() async throws {
        let (server, client) = try await Self.started()
        defer { server.stop() }
        let daemon = try Self.daemon(on: server)
        defer { daemon.kill() }
        let log = { daemon.log }
        let kube = ["--kube", "--kubeconfig", server.kubeconfig]
        func web() async throws -> SpecNode? { try await client.get(Self.deployments, namespace: "default", name: "web") }
        _ = try await client.create(Self.applications, namespace: "default", Self.application(routes: false))
        _ = try await client.create(Self.deployments, namespace: "default", Self.deployment())
        try await Self.rollOut(client, image: "ghcr.io/example/web:1.0.0", log: log)
        _ = try await client.patch(Self.deployments, namespace: "default", name: "web", .mapping([("spec", .mapping([("version", .string("2.0.0"))]))]))
        try await Self.rollOut(client, image: "ghcr.io/example/web:2.0.0", log: log)
        try await Self.poll("revision 2 ready", log: log) {
            let object = try await web()
            return Self.condition(object, "Ready")?["status"]?.scalarText == "True" && object?["status"]?["currentRevision"]?.scalarText == "2"
        }

        // `capstan rollback --kube`: the annotation, taken and removed by the operator.
        let rollback = try await Self.capstan(["rollback", "deployment/web"] + kube)
        #expect(rollback.status == 0, "\(rollback.output)")
        #expect(rollback.output.contains("taken by the operator"), "\(rollback.output)")
        try await Self.rollOut(client, image: "ghcr.io/example/web:1.0.0", log: log)
        try await Self.poll("the requested rollback holds, ready", log: log) {
            let object = try await web()
            return object?["status"]?["phase"]?.scalarText == "RolledBack" && object?["status"]?["rollback"]?["reason"]?.scalarText == "RollbackRequested"
                && object?["status"]?["currentRevision"]?.scalarText == "3" && Self.condition(object, "Ready")?["reason"]?.scalarText == "RollbackActive"
                && Self.condition(object, "Ready")?["status"]?.scalarText == "True"
        }
        #expect(try await web()?["metadata"]?["annotations"]?[RollbackRequest.annotation] == nil)
        #expect(try await Self.events(client, about: "web").contains("RollbackRequested"))

        // A revision that does not exist: refused, on the command line and as an event; nothing changes.
        let refused = try await Self.capstan(["rollback", "deployment/web", "--to-revision", "99"] + kube)
        #expect(refused.status == 1 && refused.output.contains("revision 99 not found"), "\(refused.output)")
        _ = try await client.patch(Self.deployments, namespace: "default", name: "web",
                                   .mapping([("metadata", .mapping([("annotations", .mapping([(RollbackRequest.annotation, .string("soon"))]))]))]))
        try await Self.poll("a bad annotation refused and removed", log: log) {
            try await web()?["metadata"]?["annotations"]?[RollbackRequest.annotation] == nil
        }
        #expect(try await Self.image(client) == "ghcr.io/example/web:1.0.0")
        #expect(try await web()?["status"]?["currentRevision"]?.scalarText == "3")

        // `kubectl annotate ... capstan.dev/rollback-to=2`: revision 2 by number (now 4).
        _ = try await client.patch(Self.deployments, namespace: "default", name: "web",
                                   .mapping([("metadata", .mapping([("annotations", .mapping([(RollbackRequest.annotation, .string("2"))]))]))]))
        try await Self.poll("back to the spec's own version", log: log) { try await Self.image(client) == "ghcr.io/example/web:2.0.0" }
        try await Self.poll("revision 4, no rollback held", log: log) {
            let object = try await web()
            return object?["status"]?["currentRevision"]?.scalarText == "4" && object?["metadata"]?["annotations"]?[RollbackRequest.annotation] == nil
                && object?["status"]?["rollback"] == nil
        }

        // A reconcile on request answers with an event.
        let reconcile = try await Self.capstan(["reconcile", "deployment/web"] + kube)
        #expect(reconcile.status == 0 && reconcile.output.contains("taken by the operator"), "\(reconcile.output)")
        let missing = try await Self.capstan(["rollback", "deployment/nothing"] + kube)
        #expect(missing.status == 1 && missing.output.contains("not found"), "\(missing.output)")
    }

    @Test func badObjectsGetAClearConditionOrEventAndDisturbNothingElse() async throws {
        let (server, client) = try await Self.started()
        defer { server.stop() }
        let daemon = try Self.daemon(on: server)
        defer { daemon.kill() }
        let log = { daemon.log }
        _ = try await client.create(Self.applications, namespace: "default", Self.application(routes: false))
        _ = try await client.create(Self.deployments, namespace: "default", Self.deployment())
        try await Self.poll("the good child", log: log) { try await Self.image(client) == "ghcr.io/example/web:1.0.0" }

        // The schema lets these through; Capstan's own rules do not.
        let both0 = SpecNode.mapping([("spec", .mapping([("version", .string("9.9.9")),
                                                         ("strategy", .mapping([("maxSurge", .int(0)), ("maxUnavailable", .int(0))]))]))])
        _ = try await client.patch(Self.deployments, namespace: "default", name: "web", both0)
        try await Self.poll("Stalled InvalidSpec, the last good version kept", log: log) {
            let object = try await client.get(Self.deployments, namespace: "default", name: "web")
            return Self.condition(object, "Stalled")?["reason"]?.scalarText == "InvalidSpec"
                && Self.condition(object, "Stalled")?["message"]?.scalarText?.contains("must not both be 0") == true
        }
        #expect(try await Self.image(client) == "ghcr.io/example/web:1.0.0", "the child keeps the last good version")

        var hostile = Self.application("broken", routes: false)
        hostile = hostile.setting(["spec", "healthCheck"], .mapping([("tcp", .mapping([("port", .int(8080))])), ("interval", .string("1s")), ("timeout", .string("9s"))]))
        _ = try await client.create(Self.applications, namespace: "default", hostile)
        try await Self.poll("an InvalidSpec event for a new invalid object", log: log) {
            try await Self.events(client, about: "broken").contains("InvalidSpec")
        }

        // A Deployment of a missing Application; one whose version is no image tag; one whose
        // name is taken by an apps/v1 Deployment Capstan did not make.
        _ = try await client.create(Self.deployments, namespace: "default", Self.deployment("orphan", application: "nope"))
        _ = try await client.create(Self.deployments, namespace: "default", Self.deployment("tagless", version: "1.0+build"))
        let foreign = SpecNode.mapping([
            ("apiVersion", .string("apps/v1")), ("kind", .string("Deployment")), ("metadata", .mapping([("name", .string("taken"))])),
            ("spec", .mapping([("replicas", .int(1)), ("selector", .mapping([("matchLabels", .mapping([("app", .string("taken"))]))])),
                               ("template", .mapping([("metadata", .mapping([("labels", .mapping([("app", .string("taken"))]))])),
                                                      ("spec", .mapping([("containers", .sequence([.mapping([("name", .string("x")), ("image", .string("nginx"))])]))]))]))])),
        ])
        _ = try await client.create(.deployments, namespace: "default", foreign)
        _ = try await client.create(Self.deployments, namespace: "default", Self.deployment("taken"))
        for (name, reason) in [("orphan", "ApplicationNotFound"), ("tagless", "InvalidImage"), ("taken", "ChildConflict")] {
            try await Self.poll("\(name): Stalled \(reason)", log: log) {
                Self.condition(try await client.get(Self.deployments, namespace: "default", name: name), "Stalled")?["reason"]?.scalarText == reason
            }
        }
        #expect(try await Self.image(client, "taken") == "nginx", "an object Capstan did not make is left alone")
        #expect(try await client.get(.deployments, namespace: "default", name: "orphan") == nil)
        #expect(daemon.process.isRunning)
    }

    /// CRDs of another version (a binary upgraded, its CRDs not applied) are named at the start:
    /// the API server would drop the fields they do not know. This version's are not.
    @Test func crdsOfAnotherVersionAreNamedAtTheStart() async throws {
        let server = try FakeAPIServer()
        defer { server.stop() }
        let client = try server.client()
        for crd in try FakeAPIServer.crds() {
            var text = JSONEmitter.emit(crd, pretty: false)
            if crd["metadata"]?["name"]?.scalarText == "deployments.capstan.dev" {
                let hash = CRDGenerator.schemaHash(for: .deployment)
                #expect(text.contains(hash), "crds/ carries this binary's hash")
                text = text.replacingOccurrences(of: hash, with: "0123456789abcdef")
            }
            _ = try await client.create(.customResourceDefinitions, namespace: nil, try JSONReader.parse(Data(text.utf8)))
        }
        let daemon = try Self.daemon(on: server)
        defer { daemon.kill() }
        try await Self.poll("the warning", log: { daemon.log }) { daemon.log.contains("are not capstan") }
        #expect(daemon.log.contains("the installed CRDs deployments.capstan.dev are not capstan"), "\(daemon.log)")

        let (current, _) = try await Self.started()
        defer { current.stop() }
        let other = try Self.daemon(on: current)
        defer { other.kill() }
        try await Self.poll("the CRDs checked", log: { other.log }) { other.log.contains("the installed CRDs are capstan") }
        #expect(!other.log.contains("are not capstan") && !other.log.contains("CRDs not installed") && !other.log.contains("cannot read the CRD"), "\(other.log)")
        #expect(!daemon.log.contains("the installed CRDs are capstan"))

        // Not allowed to read CRDs (a ClusterRole from before the check): said, and the daemon
        // works on (a check that ended its service stopped the daemon).
        let (refusing, refusingClient) = try await Self.started()
        defer { refusing.stop() }
        try await refusing.control(refusingClient, "faults", .mapping([("code", .int(403)), ("count", .int(100)),
                                                                       ("match", .string("/customresourcedefinitions/")), ("method", .string("GET"))]))
        let third = try Self.daemon(on: refusing)
        defer { third.kill() }
        try await Self.poll("the refusal said", log: { third.log }) { third.log.contains("cannot read the CRD") }
        _ = try await refusingClient.create(Self.applications, namespace: "default", Self.application())
        _ = try await refusingClient.create(Self.deployments, namespace: "default", Self.deployment())
        _ = try await Self.child(refusingClient, log: { third.log })
        #expect(third.process.isRunning, "\(third.log)")
    }

    @Test func aSpecDirectoryRunsOnTheClusterWithPlatformKube() async throws {
        let (server, client) = try await Self.started()
        defer { server.stop() }
        let specs = server.directory + "/specs", state = server.directory + "/state"
        try FileManager.default.createDirectory(atPath: specs, withIntermediateDirectories: true)
        func write(version: String) throws {
            try """
            apiVersion: capstan.dev/v1alpha1
            kind: Application
            metadata: {name: web}
            spec:
              image: ghcr.io/example/web
              ports: [{name: http, containerPort: 8080}]
            ---
            apiVersion: capstan.dev/v1alpha1
            kind: Deployment
            metadata: {name: web}
            spec: {application: web, version: "\(version)", replicas: 2, port: 80}
            """.write(toFile: specs + "/web.yaml", atomically: true, encoding: .utf8)
        }
        try write(version: "1.0.0")
        try "apiVersion: capstan.dev/v1alpha1\nkind: Application\nmetadata: {name: other}\nspec: {image: ghcr.io/example/other}\n"
            .write(toFile: specs + "/other.yaml", atomically: true, encoding: .utf8)
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: Self.binary)
        daemon.arguments = ["run", "--spec-dir", specs, "--state-dir", state, "--platform", "kube", "--kubeconfig", server.kubeconfig,
                            "--metrics-addr", "127.0.0.1:0", "--resync", "1h"]
        let logPath = server.directory + "/daemon.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        daemon.standardError = FileHandle(forWritingAtPath: logPath)
        daemon.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        try daemon.run()
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) }; daemon.waitUntilExit() }
        let log = { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
        func status() throws -> [String: Any] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Self.binary)
            process.arguments = ["get", "deployment", "web", "-o", "json", "--state-dir", state]
            let out = Pipe()
            process.standardOutput = out
            process.standardError = FileHandle(forWritingAtPath: "/dev/null")
            try process.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { return [:] }
            return ((try JSONSerialization.jsonObject(with: data) as? [String: Any])?["status"] as? [String: Any]) ?? [:]
        }

        var child: SpecNode?
        try await Self.poll("the children on the cluster", log: log) {
            child = try await client.get(.deployments, namespace: "default", name: "web")
            let service = try await client.get(.services, namespace: "default", name: "web")
            return child != nil && service != nil
        }
        #expect(child?["metadata"]?["ownerReferences"] == nil, "an object of a spec directory is not in the cluster to own anything")
        #expect(child?["metadata"]?["labels"]?["capstan.dev/owner-name"]?.scalarText == "web")
        _ = try await client.patch(.deployments, namespace: "default", name: "web", Self.rolledOut(child!), subresource: "status")
        try await Self.poll("Ready in the state store", log: log) {
            let current = try status()
            return current["readyReplicas"] as? Int == 2 && current["phase"] as? String == "Succeeded"
        }
        try write(version: "1.1.0")
        try await Self.poll("the new version on the cluster", log: log) {
            try await client.get(.deployments, namespace: "default", name: "web")?["spec"]?["template"]?["spec"]?["containers"]?
                .sequenceItems?.first?["image"]?.scalarText == "ghcr.io/example/web:1.1.0"
        }
        // `capstan rollback` through the state store, run on the cluster.
        let rollback = try await Self.capstan(["rollback", "deployment/web", "--state-dir", state])
        #expect(rollback.status == 0, "\(rollback.output)")
        try await Self.poll("rolled back to 1.0.0 on the cluster", log: log) { try await Self.image(client) == "ghcr.io/example/web:1.0.0" }
        try await Self.poll("the rollback in the state store", log: log) {
            (try status()["rollback"] as? [String: Any])?["reason"] as? String == "RollbackRequested"
        }
        // An edit on the cluster is reverted here too.
        _ = try await client.patch(.deployments, namespace: "default", name: "web", .mapping([("spec", .mapping([("replicas", .int(9))]))]))
        try await Self.poll("the edit reverted", log: log) {
            try await client.get(.deployments, namespace: "default", name: "web")?["spec"]?["replicas"]?.scalarText == "2"
        }
        // The file removed: what it made on the cluster goes (the inventory says what).
        try FileManager.default.removeItem(atPath: specs + "/web.yaml")
        try await Self.poll("the children removed", log: log) {
            let apps = try await client.get(.deployments, namespace: "default", name: "web")
            let service = try await client.get(.services, namespace: "default", name: "web")
            return apps == nil && service == nil
        }
    }

    @Test func droppedWatchesAndExpiredVersionsLoseNoUpdate() async throws {
        let (server, client) = try await Self.started(["--history", "20"])
        defer { server.stop() }
        let daemon = try Self.daemon(on: server)
        defer { daemon.kill() }
        let log = { daemon.log }
        _ = try await client.create(Self.applications, namespace: "default", Self.application(routes: false))
        _ = try await client.create(Self.deployments, namespace: "default", Self.deployment())
        try await Self.poll("the child", log: log) { try await client.get(.deployments, namespace: "default", name: "web") != nil }

        // The watches drop, and while they reconnect the spec changes.
        try await server.control(client, "drop-watches")
        _ = try await client.patch(Self.deployments, namespace: "default", name: "web", .mapping([("spec", .mapping([("replicas", .int(3))]))]))
        try await Self.poll("replicas 3 after a dropped watch", log: log) {
            try await client.get(.deployments, namespace: "default", name: "web")?["spec"]?["replicas"]?.scalarText == "3"
        }
        // Versions compacted away while the watch is down: a 410 re-lists, the change is seen.
        try await server.control(client, "faults", .mapping([("code", .int(503)), ("count", .int(4)), ("method", .string("GET")),
                                                             ("match", .string("/apis/capstan.dev/v1alpha1/deployments"))]))
        try await server.control(client, "drop-watches")
        _ = try await client.patch(Self.deployments, namespace: "default", name: "web", .mapping([("spec", .mapping([("replicas", .int(4))]))]))
        for index in 0..<25 {
            _ = try await client.create(Self.applications, namespace: "default", Self.application("filler-\(index)", routes: false))
        }
        try await server.control(client, "compact")
        try await Self.poll("replicas 4 after a 410", seconds: 40, log: log) {
            try await client.get(.deployments, namespace: "default", name: "web")?["spec"]?["replicas"]?.scalarText == "4"
        }
    }

    @Test func twoOperatorsElectOneLeaseHolderAndFailOver() async throws {
        let (server, client) = try await Self.started()
        defer { server.stop() }
        let election = ["--leader-elect", "--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "500ms", "--lease-namespace", "default"]
        let a = try Daemon(election + ["--identity", "a"], kubeconfig: server.kubeconfig, log: server.directory + "/a.log")
        defer { a.kill() }
        let b = try Daemon(election + ["--identity", "b"], kubeconfig: server.kubeconfig, log: server.directory + "/b.log")
        defer { b.kill() }
        let log = { "a:\n\(a.log.suffix(2000))\nb:\n\(b.log.suffix(2000))" }
        var holder = ""
        try await Self.poll("one Lease holder", log: log) {
            holder = try await client.get(.leases, namespace: "default", name: "capstan-controller")?["spec"]?["holderIdentity"]?.scalarText ?? ""
            return !holder.isEmpty
        }
        _ = try await client.create(Self.applications, namespace: "default", Self.application(routes: false))
        _ = try await client.create(Self.deployments, namespace: "default", Self.deployment())
        try await Self.poll("the leader acts", log: log) { try await client.get(.deployments, namespace: "default", name: "web") != nil }
        let leaders = [a, b].filter { $0.log.contains("leading: this daemon acts now") }
        #expect(leaders.count == 1, "exactly one leader")
        #expect((holder == "a" ? a : b).log.contains("leading: this daemon acts now"))

        // The holder dies: the other takes the Lease after it expires and acts.
        let (dead, survivor) = holder == "a" ? (a, "b") : (b, "a")
        let killed = Date()
        dead.kill()
        try await Self.poll("the Lease taken over", log: log) {
            try await client.get(.leases, namespace: "default", name: "capstan-controller")?["spec"]?["holderIdentity"]?.scalarText == survivor
        }
        let failover = Date().timeIntervalSince(killed)
        #expect(failover < 8, "failover took \(failover) s with a 3 s lease")
        _ = try await client.create(Self.deployments, namespace: "default", Self.deployment("api"))
        try await Self.poll("the new leader acts", log: log) { try await client.get(.deployments, namespace: "default", name: "api") != nil }
        let (events, _) = try await client.list(.events, namespace: "default")
        #expect(events.contains { $0["reason"]?.scalarText == "LeaderElected" && $0["involvedObject"]?["kind"]?.scalarText == "Lease" })
    }
}

extension SpecNode {
    var sequenceItems: [SpecNode]? {
        if case .sequence(let items) = value { return items }
        return nil
    }
}

/// deploy/ as `kubectl apply -k deploy/` sends it: every object is accepted by the API.
@Suite struct InstallManifestTests {
    static let resources: [String: KubeResource] = [
        "v1/Namespace": .namespaces,
        "v1/ServiceAccount": KubeResource(group: "", version: "v1", plural: "serviceaccounts", kind: "ServiceAccount"),
        "v1/Service": .services,
        "apps/v1/Deployment": .deployments,
        "rbac.authorization.k8s.io/v1/ClusterRole": KubeResource(group: "rbac.authorization.k8s.io", version: "v1", plural: "clusterroles", kind: "ClusterRole", namespaced: false),
        "rbac.authorization.k8s.io/v1/ClusterRoleBinding": KubeResource(group: "rbac.authorization.k8s.io", version: "v1", plural: "clusterrolebindings", kind: "ClusterRoleBinding", namespaced: false),
        "rbac.authorization.k8s.io/v1/Role": KubeResource(group: "rbac.authorization.k8s.io", version: "v1", plural: "roles", kind: "Role"),
        "rbac.authorization.k8s.io/v1/RoleBinding": KubeResource(group: "rbac.authorization.k8s.io", version: "v1", plural: "rolebindings", kind: "RoleBinding"),
    ]

    @Test func everyObjectOfDeployIsAcceptedAndTheKustomizationListsThemAll() async throws {
        let (server, client) = try await KubeModeTests.started()
        defer { server.stop() }
        let directory = FakeAPIServer.root + "/deploy"
        let kustomization = try #require(try YAMLReader().documents(String(contentsOfFile: directory + "/kustomization.yaml", encoding: .utf8)).first?.root)
        let namespace = try #require(kustomization["namespace"]?.scalarText)
        let files = kustomization["resources"]?.sequenceItems?.compactMap(\.scalarText) ?? []
        #expect(files.contains("../crds"))
        var kinds: [String] = []
        for file in files where file.hasSuffix(".yaml") {
            for document in try YAMLReader().documents(String(contentsOfFile: directory + "/" + file, encoding: .utf8)) {
                guard let object = document.root else { continue }
                let type = "\(object["apiVersion"]?.scalarText ?? "")/\(object["kind"]?.scalarText ?? "")"
                let resource = try #require(Self.resources[type], "deploy/\(file): \(type) is not expected in the install")
                kinds.append(type)
                let created = try await client.create(resource, namespace: resource.namespaced ? namespace : nil, object)
                #expect(created["metadata"]?["uid"] != nil)
            }
        }
        for expected in ["v1/Namespace", "v1/ServiceAccount", "apps/v1/Deployment", "v1/Service", "rbac.authorization.k8s.io/v1/ClusterRole"] {
            #expect(kinds.contains(expected), "the install has a \(expected)")
        }
        let installed = try #require(try await client.get(.deployments, namespace: namespace, name: "capstan"))
        let container = installed["spec"]?["template"]?["spec"]?["containers"]?.sequenceItems?.first
        let arguments = container?["args"]?.sequenceItems?.compactMap(\.scalarText) ?? []
        #expect(arguments.contains("--kube") && arguments.contains("--leader-elect"))
        #expect(installed["spec"]?["replicas"]?.scalarText == "2")
    }

    /// kubectl on this machine, if any.
    static let kubectl = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        .map { "\($0)/kubectl" }.first { FileManager.default.isExecutableFile(atPath: $0) }

    /// What `kubectl apply -k deploy/` sends: the kustomization rendered by kubectl itself
    /// (namespaces set, CRDs from crds/ included), every object accepted by a bare API server in
    /// the rendered order. Skipped where kubectl is not installed (the test above reads the
    /// same files without it).
    @Test(.enabled(if: kubectl != nil)) func kubectlKustomizeRendersWhatTheServerAccepts() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(Self.kubectl))
        process.arguments = ["kustomize", FakeAPIServer.root + "/deploy"]
        let out = Pipe(), errors = Pipe()
        process.standardOutput = out
        process.standardError = errors
        try process.run()
        let rendered = out.fileHandleForReading.readDataToEndOfFile()
        let complaints = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(String(decoding: complaints, as: UTF8.self))")
        let server = try FakeAPIServer()
        defer { server.stop() }
        let client = try server.client()
        defer { Task { await client.shutdown() } }
        var resources = Self.resources
        resources["apiextensions.k8s.io/v1/CustomResourceDefinition"] = .customResourceDefinitions
        var created: [String] = []
        for document in try YAMLReader().documents(String(decoding: rendered, as: UTF8.self)) {
            guard let object = document.root else { continue }
            let type = "\(object["apiVersion"]?.scalarText ?? "")/\(object["kind"]?.scalarText ?? "")"
            let resource = try #require(resources[type], "\(type) is not expected in the install")
            let namespace = object["metadata"]?["namespace"]?.scalarText
            #expect(resource.namespaced == (namespace != nil), "\(type) \(object["metadata"]?["name"]?.scalarText ?? ""): namespace \(namespace ?? "none")")
            _ = try await client.create(resource, namespace: namespace, object)
            created.append(type)
        }
        #expect(created.filter { $0.hasSuffix("/CustomResourceDefinition") }.count == ResourceKind.allCases.count)
        #expect(created.first == "v1/Namespace" || created.first?.hasSuffix("/CustomResourceDefinition") == true, "\(created)")
        #expect(created.contains("apps/v1/Deployment"))
    }
}
