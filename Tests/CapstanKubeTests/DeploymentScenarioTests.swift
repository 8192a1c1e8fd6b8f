import CapstanKube
@testable import CapstanLocal
import CapstanModel
import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// One list of Deployment scenarios, run against both platforms by the same built binary: the
/// local platform (a spec directory, real processes behind the router) and the Kubernetes
/// platform (custom resources on the fake API server, whose apps/v1 Deployments a small
/// stand-in for the cluster's Deployment controller rolls). Each scenario asserts the same
/// phases, conditions (type, status, reason) and events on both: the decisions are one
/// reconciler's.
@Suite(.serialized, .timeLimit(.minutes(5))) struct DeploymentScenarioTests {
    enum Kind: String, CaseIterable, Sendable, CustomStringConvertible {
        case local, kube
        var description: String { rawValue }
    }

    // MARK: - The objects

    static func application(routes: [SpecNode] = []) -> SpecNode {
        var spec: [(String, SpecNode)] = [
            ("image", .string("ghcr.io/example/web")),
            ("source", .mapping([("path", .string("web"))])),
            ("command", .sequence([.string("python3"), .string("server.py")])),
            ("ports", .sequence([.mapping([("name", .string("http")), ("containerPort", .int(8080))])])),
            ("healthCheck", .mapping([("http", .mapping([("path", .string("/healthz")), ("port", .string("http"))])), ("interval", .string("1s")),
                                      ("timeout", .string("1s")), ("failureThreshold", .int(2))])),
        ]
        if !routes.isEmpty { spec.append(("routes", .sequence(routes))) }
        return .mapping([
            ("apiVersion", .string(capstanAPIVersion)), ("kind", .string("Application")), ("metadata", .mapping([("name", .string("web"))])),
            ("spec", .mapping(spec)),
        ])
    }

    /// A Deployment; `broken` versions never pass their health check (locally the app listens
    /// on another address; the stand-in controller reports their pods unready).
    static func deployment(_ version: String, port: Int, replicas: Int = 2, broken: Bool = false, extra: [(String, SpecNode)] = []) -> SpecNode {
        var env: [SpecNode] = [.mapping([("name", .string("APP_VERSION")), ("value", .string(version))])]
        if broken { env.append(.mapping([("name", .string("BIND_ADDR")), ("value", .string("127.0.0.2"))])) }
        var spec: [(String, SpecNode)] = [
            ("application", .string("web")), ("version", .string(version)), ("replicas", .int(replicas)), ("port", .int(port)),
            ("env", .sequence(env)), ("progressDeadline", .string("30s")),
            ("strategy", .mapping([("type", .string("RollingUpdate")), ("maxSurge", .int(1)), ("maxUnavailable", .int(0))])),
        ]
        for (key, value) in extra {
            if let index = spec.firstIndex(where: { $0.0 == key }) { spec[index].1 = value } else { spec.append((key, value)) }
        }
        return .mapping([
            ("apiVersion", .string(capstanAPIVersion)), ("kind", .string("Deployment")), ("metadata", .mapping([("name", .string("web"))])),
            ("spec", .mapping(spec)),
        ])
    }

    static func blueGreen(autoPromote: Bool = true, previewPort: Int, delay: String = "3s") -> (String, SpecNode) {
        ("strategy", .mapping([("type", .string("BlueGreen")), ("blueGreen", .mapping([
            ("previewPort", .int(previewPort)), ("autoPromote", .bool(autoPromote)), ("scaleDownDelay", .string(delay)),
        ]))]))
    }

    // MARK: - The platforms

    /// A platform under test: where the objects go and where their status is read.
    final class Platform: @unchecked Sendable {
        let kind: Kind
        let root = NSTemporaryDirectory() + "capstan-scenario-" + UUID().uuidString
        var daemon: Process?
        var server: FakeAPIServer?
        var client: KubeClient?
        var controller: Task<Void, Never>?
        /// The fake API server serves Traefik's CRDs (as K3s).
        let traefik: Bool

        init(_ kind: Kind, traefik: Bool = false) throws {
            self.kind = kind
            self.traefik = traefik
            try FileManager.default.createDirectory(atPath: root + "/specs/web", withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: FakeAPIServer.root + "/manifests/examples/apps/hello/server.py", toPath: root + "/specs/web/server.py")
        }

        var log: String { (try? String(contentsOfFile: root + "/daemon.log", encoding: .utf8)) ?? "" }
        var state: String { root + "/state" }
        /// The CLI's flags that reach this platform's objects.
        var target: [String] { kind == .local ? ["--state-dir", state] : ["--kube", "--kubeconfig", server!.kubeconfig] }

        func start() async throws {
            _ = FileManager.default.createFile(atPath: root + "/daemon.log", contents: nil)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: KubeModeTests.binary)
            var arguments = ["run", "--resync", "1h", "--metrics-addr", "127.0.0.1:0"]
            if kind == .local {
                arguments += ["--spec-dir", root + "/specs", "--state-dir", state]
            } else {
                let (server, client) = try await KubeModeTests.started(traefik ? ["--traefik"] : [])
                self.server = server
                self.client = client
                arguments += ["--kube", "--kubeconfig", server.kubeconfig]
                controller = Task { await Self.rollApps(client) }
            }
            process.arguments = arguments
            process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
            process.standardError = FileHandle(forWritingAtPath: root + "/daemon.log")
            try process.run()
            daemon = process
        }

        func stop() async {
            controller?.cancel()
            if let daemon, daemon.isRunning {
                kill(daemon.processIdentifier, SIGKILL)
                daemon.waitUntilExit()
            }
            if kind == .local { _ = try? await KubeModeTests.capstan(["down", "--grace", "2s", "--state-dir", state]) }
            await client?.shutdown()
            server?.stop()
            try? FileManager.default.removeItem(atPath: root)
        }

        /// Creates or replaces the objects (a spec file; custom resources).
        func put(_ objects: [SpecNode]) async throws {
            if kind == .local {
                let text = objects.map { JSONEmitter.emit($0, pretty: true) }.joined(separator: "\n---\n")
                try text.write(toFile: root + "/specs/web.yaml", atomically: true, encoding: .utf8)
                return
            }
            for object in objects {
                let kind = ResourceKind(rawValue: object["kind"]?.scalarText ?? "")!
                let resource = KubeResource.capstan(kind)
                let name = object["metadata"]?["name"]?.scalarText ?? "web"
                // The whole spec replaced, as a spec file's change (a merge patch would keep
                // fields the new spec leaves out); read again when the daemon wrote between.
                try await replace(resource, name: name, object)
            }
        }

        private func replace(_ resource: KubeResource, name: String, _ object: SpecNode) async throws {
            for attempt in 1...10 {
                if try await replaceOnce(resource, name: name, object, lastAttempt: attempt == 10) { return }
            }
        }

        /// One write; false on a conflict (the daemon wrote the status since the read).
        private func replaceOnce(_ resource: KubeResource, name: String, _ object: SpecNode, lastAttempt: Bool) async throws(KubeError) -> Bool {
            do {
                if let existing = try await client!.get(resource, namespace: "default", name: name) {
                    _ = try await client!.update(resource, namespace: "default", name: name, existing.setting(["spec"], object["spec"]!))
                } else {
                    _ = try await client!.create(resource, namespace: "default", object)
                }
                return true
            } catch {
                if error.code == 409, !lastAttempt { return false }
                throw error
            }
        }

        /// The Deployment as its platform shows it (with status).
        func deployment() async throws -> SpecNode? {
            if kind == .kube { return try await client!.get(.capstan(.deployment), namespace: "default", name: "web") }
            let result = try await KubeModeTests.capstan(["get", "deployment/web", "-o", "json", "--state-dir", state])
            guard result.status == 0, let start = result.output.firstIndex(of: "{") else { return nil }
            return try? JSONReader.parse(Data(result.output[start...].utf8))
        }

        /// An object named `name` of `kind` as its platform shows it (with status).
        func object(_ kind: ResourceKind, named name: String = "web") async throws -> SpecNode? {
            if self.kind == .kube { return try await client!.get(.capstan(kind), namespace: "default", name: name) }
            let result = try await KubeModeTests.capstan(["get", "\(kind.singular)/\(name)", "-o", "json", "--state-dir", state])
            guard result.status == 0, let start = result.output.firstIndex(of: "{") else { return nil }
            return try? JSONReader.parse(Data(result.output[start...].utf8))
        }

        /// Waits until the status of `kind`/web satisfies `condition`; the failure shows it,
        /// the Deployment's status and the log's end.
        func until(_ kind: ResourceKind, named name: String = "web", _ what: String, seconds: Double = 40, _ condition: (SpecNode) -> Bool) async throws {
            let deadline = Date().addingTimeInterval(seconds)
            var last: SpecNode?
            while Date() < deadline {
                last = try await object(kind, named: name)?["status"]
                if let last, condition(last) { return }
                try await Task.sleep(for: .milliseconds(150))
            }
            let deployment = kind == .deployment ? "" : "\ndeployment: " + (try await self.deployment()?["status"].map { JSONEmitter.emit($0, pretty: true) } ?? "none")
            throw KubeModeTests.Failure(description: "\(self.kind): no \(what) after \(seconds) s; \(kind.singular): \(last.map { JSONEmitter.emit($0, pretty: true) } ?? "none")\(deployment)\n\(log.suffix(2000))")
        }

        /// The reasons of the Deployment's events.
        func reasons() async throws -> [String] {
            if kind == .kube { return try await KubeModeTests.events(client!, about: "web") }
            let result = try await KubeModeTests.capstan(["events", "deployment/web", "--state-dir", state])
            return result.output.split(separator: "\n").dropFirst().compactMap { line in
                let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                return fields.count > 2 ? String(fields[2]) : nil
            }
        }

        /// Runs the CLI against this platform.
        func cli(_ arguments: [String]) async throws -> (status: Int32, output: String) {
            try await KubeModeTests.capstan(arguments + target)
        }

        /// The cluster's Deployment controller, as far as these scenarios need it: every
        /// apps/v1 Deployment's pods of its template become ready (all at once), except those of
        /// a broken version (BIND_ADDR set), which never do; a paused one does not roll.
        static func rollApps(_ client: KubeClient) async {
            while !Task.isCancelled {
                if let (items, _) = try? await client.list(.deployments, namespace: "default") {
                    for apps in items {
                        guard let status = Self.status(of: apps), status != apps["status"] else { continue }
                        let name = apps["metadata"]?["name"]?.scalarText ?? ""
                        _ = try? await client.patch(.deployments, namespace: "default", name: name, .mapping([("status", status)]), subresource: "status")
                    }
                }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }

        static func status(of apps: SpecNode) -> SpecNode? {
            func number(_ node: SpecNode?) -> Int? { node?.scalarText.flatMap { Int($0) } }
            let generation = number(apps["metadata"]?["generation"]) ?? 1
            let replicas = number(apps["spec"]?["replicas"]) ?? 1
            let previous = apps["status"]
            let hash = apps["spec"]?["template"]?["metadata"]?["annotations"]?["capstan.dev/template-hash"]?.scalarText
            let container = apps["spec"]?["template"]?["spec"]?["containers"]?.entriesOrItems.first
            let broken = container?["env"]?.entriesOrItems.contains { $0["name"]?.scalarText == "BIND_ADDR" } ?? false
            let oldReady = number(previous?["readyReplicas"]) ?? 0
            let paused = apps["spec"]?["paused"]?.scalarText == "true"
            // What the last status was about (the stand-in's own note).
            let rolledHash = previous?["capstanTestHash"]?.scalarText
            var fields: [(String, SpecNode)] = [("observedGeneration", .int(generation))]
            if paused && rolledHash != hash {
                fields += [("replicas", .int(oldReady)), ("updatedReplicas", .int(0)), ("readyReplicas", .int(oldReady)), ("availableReplicas", .int(oldReady))]
                fields.append(("capstanTestHash", .string(rolledHash ?? "")))
            } else if broken {
                // One surge pod that never gets ready; the old ones keep serving.
                let old = rolledHash == hash ? 0 : min(oldReady, replicas)
                fields += [("replicas", .int(old + 1)), ("updatedReplicas", .int(1)), ("readyReplicas", .int(old)), ("availableReplicas", .int(old))]
                fields.append(("capstanTestHash", .string(rolledHash ?? "")))
            } else {
                fields += [("replicas", .int(replicas)), ("updatedReplicas", .int(replicas)), ("readyReplicas", .int(replicas)), ("availableReplicas", .int(replicas))]
                fields.append(("capstanTestHash", .string(hash ?? "")))
            }
            return .mapping(fields)
        }
    }

    /// Runs a scenario on a fresh platform.
    func on(_ kind: Kind, traefik: Bool = false, _ body: (Platform) async throws -> Void) async throws {
        let platform = try Platform(kind, traefik: traefik)
        do {
            try await platform.start()
            try await body(platform)
        } catch {
            Issue.record("\(kind): \(error); daemon log:\n\(platform.log.suffix(4000))")
        }
        await platform.stop()
    }

    // MARK: - Checks

    static func condition(_ object: SpecNode?, _ type: String) -> (status: String, reason: String)? {
        guard case .sequence(let items)? = object?["status"]?["conditions"]?.value,
              let found = items.first(where: { $0["type"]?.scalarText == type }) else { return nil }
        return (found["status"]?.scalarText ?? "", found["reason"]?.scalarText ?? "")
    }

    /// Waits until the Deployment is in `phase` with every condition given (type: (status, reason)).
    func expect(_ platform: Platform, phase: String, version: String? = nil, conditions: [String: (String, String)] = [:],
                seconds: Double = 30) async throws {
        var last: SpecNode?
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            last = try await platform.deployment()
            let matches = last?["status"]?["phase"]?.scalarText == phase
                && (version == nil || last?["status"]?["version"]?.scalarText == version)
                && conditions.allSatisfy { type, wanted in
                    Self.condition(last, type).map { $0.status == wanted.0 && $0.reason == wanted.1 } ?? false
                }
            if matches { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        let status = last?["status"].map { JSONEmitter.emit($0, pretty: true) } ?? "none"
        throw KubeModeTests.Failure(description: "\(platform.kind): not \(phase) \(version ?? "") \(conditions) after \(seconds) s; status: \(status)")
    }

    func expectEvents(_ platform: Platform, _ wanted: [String]) async throws {
        let deadline = Date().addingTimeInterval(10)
        var reasons: [String] = []
        while Date() < deadline {
            reasons = try await platform.reasons()
            if Set(wanted).isSubset(of: reasons) { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw KubeModeTests.Failure(description: "\(platform.kind): events \(wanted) not all recorded; got \(reasons)")
    }

    func tracks(_ platform: Platform) async throws -> [String: String] {
        let items = try await platform.deployment()?["status"]?["tracks"]?.entriesOrItems ?? []
        return Dictionary(uniqueKeysWithValues: items.compactMap { item in
            item["name"]?.scalarText.flatMap { name in item["role"]?.scalarText.map { (name, $0) } }
        })
    }

    static let succeeded = ["Ready": ("True", "Succeeded"), "Available": ("True", "MinimumReplicasAvailable")]

    /// The first rollout, then a RollingUpdate to a new version.
    func rolledOut(_ platform: Platform, port: Int, extra: [(String, SpecNode)] = []) async throws {
        try await platform.put([Self.application(), Self.deployment("1", port: port, extra: extra)])
        try await expect(platform, phase: "Succeeded", version: "1", conditions: Self.succeeded)
        try await expectEvents(platform, ["RolloutSucceeded"])
    }

    // MARK: - Scenarios

    @Test(arguments: Kind.allCases) func firstRolloutThenRollingUpdate(_ kind: Kind) async throws {
        try await on(kind) { platform in
            let port = LocalWorkloadPlatform.freePort()!
            try await rolledOut(platform, port: port)
            try await platform.put([Self.application(), Self.deployment("2", port: port)])
            try await expect(platform, phase: "Succeeded", version: "2", conditions: Self.succeeded)
            let status = try await platform.deployment()?["status"]
            #expect(status?["currentRevision"]?.scalarText == "2", "\(kind)")
            #expect(status?["history"]?.entriesOrItems.map { $0["outcome"]?.scalarText } == ["Succeeded", "Succeeded"], "\(kind)")
        }
    }

    @Test(arguments: Kind.allCases) func recreate(_ kind: Kind) async throws {
        try await on(kind) { platform in
            let port = LocalWorkloadPlatform.freePort()!
            let recreate: (String, SpecNode) = ("strategy", .mapping([("type", .string("Recreate"))]))
            try await rolledOut(platform, port: port, extra: [recreate])
            try await platform.put([Self.application(), Self.deployment("2", port: port, extra: [recreate])])
            try await expect(platform, phase: "Succeeded", version: "2", conditions: Self.succeeded)
        }
    }

    @Test(arguments: Kind.allCases) func pausedHoldsARolloutUntilResumed(_ kind: Kind) async throws {
        try await on(kind) { platform in
            let port = LocalWorkloadPlatform.freePort()!
            try await rolledOut(platform, port: port)
            // A short deadline, waited out while paused: a paused rollout has none.
            let deadline: (String, SpecNode) = ("progressDeadline", .string("4s"))
            try await platform.put([Self.application(), Self.deployment("2", port: port, extra: [("paused", .bool(true)), deadline])])
            try await expect(platform, phase: "Paused", conditions: ["Reconciling": ("True", "Paused"), "Progressing": ("Unknown", "Paused")])
            try await Task.sleep(for: .seconds(5))
            try await expect(platform, phase: "Paused", seconds: 1)
            try await platform.put([Self.application(), Self.deployment("2", port: port, extra: [("paused", .bool(false))])])
            try await expect(platform, phase: "Succeeded", version: "2", conditions: Self.succeeded)
        }
    }

    @Test(arguments: Kind.allCases) func aDeadlineRollsBackToTheLastGoodRevision(_ kind: Kind) async throws {
        try await on(kind) { platform in
            let port = LocalWorkloadPlatform.freePort()!
            try await rolledOut(platform, port: port)
            try await platform.put([Self.application(), Self.deployment("2", port: port, broken: true, extra: [("progressDeadline", .string("6s"))])])
            try await expect(platform, phase: "RolledBack", version: "1", conditions: ["Stalled": ("True", "RollbackActive"), "Ready": ("False", "RollbackActive")],
                             seconds: 40)
            try await expectEvents(platform, ["ProgressDeadlineExceeded", "RolledBack"])
            let status = try await platform.deployment()?["status"]
            #expect(status?["currentRevision"]?.scalarText == "3", "\(kind): the rollback is a new revision")
        }
    }

    @Test(arguments: Kind.allCases) func aRollbackOnRequestHoldsAndABadOneIsRefused(_ kind: Kind) async throws {
        try await on(kind) { platform in
            let port = LocalWorkloadPlatform.freePort()!
            try await rolledOut(platform, port: port)
            try await platform.put([Self.application(), Self.deployment("2", port: port)])
            try await expect(platform, phase: "Succeeded", version: "2")
            let rollback = try await platform.cli(["rollback", "deployment/web"])
            #expect(rollback.status == 0, "\(kind): \(rollback.output)")
            try await expect(platform, phase: "RolledBack", version: "1", conditions: ["Ready": ("True", "RollbackActive")])
            try await expectEvents(platform, ["RollbackRequested"])
            let refused = try await platform.cli(["rollback", "deployment/web", "--to-revision", "99"])
            #expect(refused.status == 1 && refused.output.contains("99"), "\(kind): \(refused.output)")
            try await expect(platform, phase: "RolledBack", version: "1", seconds: 1)
        }
    }

    @Test(arguments: Kind.allCases) func blueGreenSwitchesWhenThePreviewIsReady(_ kind: Kind) async throws {
        try await on(kind) { platform in
            let port = LocalWorkloadPlatform.freePort()!, preview = LocalWorkloadPlatform.freePort()!
            let strategy = Self.blueGreen(previewPort: preview)
            try await rolledOut(platform, port: port, extra: [strategy])
            try await platform.put([Self.application(), Self.deployment("2", port: port, extra: [strategy])])
            try await expect(platform, phase: "Succeeded", version: "2", conditions: Self.succeeded)
            try await expectEvents(platform, ["TrafficSwitched"])
            #expect(try await tracks(platform) == ["blue": "Active", "stable": "Retiring"], "\(kind)")
            // The old colour goes after scaleDownDelay.
            let deadline = Date().addingTimeInterval(10)
            while try await tracks(platform) != ["blue": "Active"], Date() < deadline { try await Task.sleep(for: .milliseconds(100)) }
            #expect(try await tracks(platform) == ["blue": "Active"], "\(kind)")
            if kind == .kube {
                let client = platform.client!
                try await KubeModeTests.poll("the stable apps/v1 Deployment removed") {
                    try await client.get(.deployments, namespace: "default", name: "web") == nil
                }
                let service = try await client.get(.services, namespace: "default", name: "web")
                #expect(service?["spec"]?["selector"]?[Children.trackLabel]?.scalarText == "blue")
                #expect(try await client.get(.services, namespace: "default", name: "web-preview") == nil, "no preview Service without a preview")
            }
        }
    }

    @Test(arguments: Kind.allCases) func blueGreenWaitsForPromote(_ kind: Kind) async throws {
        try await on(kind) { platform in
            let port = LocalWorkloadPlatform.freePort()!, preview = LocalWorkloadPlatform.freePort()!
            let strategy = Self.blueGreen(autoPromote: false, previewPort: preview)
            try await rolledOut(platform, port: port, extra: [strategy])
            try await platform.put([Self.application(), Self.deployment("2", port: port, extra: [strategy])])
            try await expect(platform, phase: "Paused", conditions: ["Reconciling": ("True", "AwaitingPromotion")])
            #expect(try await tracks(platform) == ["stable": "Active", "blue": "Preview"], "\(kind)")
            if kind == .kube {
                let service = try await platform.client!.get(.services, namespace: "default", name: "web-preview")
                #expect(service?["spec"]?["selector"]?[Children.trackLabel]?.scalarText == "blue", "\(kind): the preview Service")
            }
            let promote = try await platform.cli(["promote", "deployment/web"])
            #expect(promote.status == 0, "\(kind): \(promote.output)")
            try await expect(platform, phase: "Succeeded", version: "2", conditions: Self.succeeded)
            try await expectEvents(platform, ["PromoteRequested", "TrafficSwitched"])
            let again = try await platform.cli(["promote", "deployment/web"])
            #expect(again.status == 1, "\(kind): nothing awaits promotion: \(again.output)")
        }
    }

    @Test(arguments: Kind.allCases) func abortDuringScaleDownDelaySwitchesBack(_ kind: Kind) async throws {
        try await on(kind) { platform in
            let port = LocalWorkloadPlatform.freePort()!, preview = LocalWorkloadPlatform.freePort()!
            let strategy = Self.blueGreen(previewPort: preview, delay: "60s")
            try await rolledOut(platform, port: port, extra: [strategy])
            try await platform.put([Self.application(), Self.deployment("2", port: port, extra: [strategy])])
            try await expect(platform, phase: "Succeeded", version: "2")
            let abort = try await platform.cli(["abort", "deployment/web"])
            #expect(abort.status == 0, "\(kind): \(abort.output)")
            try await expect(platform, phase: "RolledBack", version: "1", conditions: ["Ready": ("True", "RollbackActive")])
            try await expectEvents(platform, ["Aborted"])
            #expect(try await tracks(platform)["stable"] == "Active", "\(kind): the kept colour serves again")
        }
    }

    /// A window that opens at the next minute: the new version waits (Scheduled) and starts
    /// within a second of the opening. Both platforms at once (the wait is a minute).
    @Test func aWindowHoldsANewVersionUntilItOpens() async throws {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        // The next minute at least 15 s away (the version must be seen waiting first).
        // A whole minute (status carries whole seconds; Calendar keeps a fraction of the second).
        var opens = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 / 60).rounded(.down) * 60 + 60)
        if opens.timeIntervalSinceNow < 15 { opens = opens.addingTimeInterval(60) }
        async let local: Void = window(.local, opens: opens, calendar)
        async let kube: Void = window(.kube, opens: opens, calendar)
        _ = try await (local, kube)
    }

    func window(_ kind: Kind, opens: Date, _ calendar: Calendar) async throws {
        try await on(kind) { platform in
            let port = LocalWorkloadPlatform.freePort()!
            try await rolledOut(platform, port: port)
            let minute = calendar.component(.minute, from: opens), hour = calendar.component(.hour, from: opens)
            let window: (String, SpecNode) = ("window", .mapping([("schedule", .string("\(minute) \(hour) * * *")), ("duration", .string("1m")), ("timeZone", .string("UTC"))]))
            try await platform.put([Self.application(), Self.deployment("1", port: port, extra: [window])])
            try await Task.sleep(for: .seconds(1))
            try await platform.put([Self.application(), Self.deployment("2", port: port, extra: [window])])
            try await expect(platform, phase: "Scheduled", version: "1", conditions: ["Reconciling": ("True", "Scheduled")])
            try await expectEvents(platform, ["RolloutScheduled"])
            let next = try await platform.deployment()?["status"]?["nextWindowTime"]?.scalarText.flatMap { Timestamp(rfc3339: $0)?.date }
            #expect(next == opens, "\(kind): nextWindowTime")
            // Started within a second of the opening.
            while Date() < opens.addingTimeInterval(-0.5) { try await Task.sleep(for: .milliseconds(200)) }
            var started: Date?
            while Date() < opens.addingTimeInterval(5) {
                if try await platform.deployment()?["status"]?["currentRevision"]?.scalarText == "2" { started = Date(); break }
                try await Task.sleep(for: .milliseconds(50))
            }
            let late = started.map { $0.timeIntervalSince(opens) }
            #expect(late.map { $0 < 1 } == true, "\(kind): the rollout started \(late.map { "\($0) s" } ?? "not at all") after the window opened")
            try await expect(platform, phase: "Succeeded", version: "2")
        }
    }
}

extension SpecNode {
    /// A sequence's items (empty for anything else).
    var entriesOrItems: [SpecNode] {
        if case .sequence(let items) = value { return items }
        return []
    }
}
