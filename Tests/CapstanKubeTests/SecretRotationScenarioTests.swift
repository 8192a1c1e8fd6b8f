import CapstanKube
@testable import CapstanLocal
import CapstanModel
import Foundation
import Testing

/// SecretRotation scenarios, the same on both platforms (the built binary; a spec directory
/// with the vault, or custom resources on the fake API server with `v1` Secrets): a first
/// version, a rotation that rolls the dependent Deployment, a rotation whose verify fails and
/// is rolled back, a version restored on request.
@Suite(.serialized, .timeLimit(.minutes(5))) struct SecretRotationScenarioTests {
    typealias Platform = DeploymentScenarioTests.Platform
    typealias Kind = DeploymentScenarioTests.Kind

    static func application() -> SpecNode {
        var application = DeploymentScenarioTests.application()
        let env: SpecNode = .sequence([.mapping([
            ("name", .string("DB_PASSWORD")),
            ("valueFrom", .mapping([("secretKeyRef", .mapping([("name", .string("web-credentials")), ("key", .string("password"))]))])),
        ])])
        application = application.setting(["spec", "env"], env)
        return application
    }

    static func rotation(verifies: Bool = true) -> SpecNode {
        .mapping([
            ("apiVersion", .string(capstanAPIVersion)), ("kind", .string("SecretRotation")), ("metadata", .mapping([("name", .string("web"))])),
            ("spec", .mapping([
                ("secretName", .string("web-credentials")),
                ("keys", .sequence([.mapping([("name", .string("password")), ("generator", .mapping([("type", .string("random")), ("length", .int(20))]))])])),
                ("keepVersions", .int(2)),
                ("restartDeployments", .sequence([.string("web")])),
                ("verify", .mapping([("exec", .mapping([("command", .sequence(
                    verifies ? [.string("sh"), .string("-c"), .string("test ${#NEW_PASSWORD} -eq 20")] : [.string("sh"), .string("-c"), .string("echo no such login; exit 3")]))]))])),
            ])),
        ])
    }

    func rotationObject(_ platform: Platform) async throws -> SpecNode? {
        if platform.kind == .kube { return try await platform.client!.get(.capstan(.secretRotation), namespace: "default", name: "web") }
        let result = try await KubeModeTests.capstan(["get", "secretrotation/web", "-o", "json", "--state-dir", platform.state])
        guard result.status == 0, let start = result.output.firstIndex(of: "{") else { return nil }
        return try? JSONReader.parse(Data(result.output[start...].utf8))
    }

    /// Waits until the rotation's status satisfies `condition`.
    func expect(_ platform: Platform, _ what: String, seconds: Double = 40, _ condition: (SpecNode?) -> Bool) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        var last: SpecNode?
        while Date() < deadline {
            last = try await rotationObject(platform)
            if condition(last?["status"]) { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        let status = last?["status"].map { JSONEmitter.emit($0, pretty: true) } ?? "none"
        throw KubeModeTests.Failure(description: "\(platform.kind): not \(what) after \(seconds) s; status: \(status)")
    }

    static func reason(_ status: SpecNode?, _ type: String) -> String? {
        status?["conditions"]?.entriesOrItems.first { $0["type"]?.scalarText == type && $0["status"]?.scalarText == "True" }?["reason"]?.scalarText
    }

    func restarted(_ platform: Platform, token: String) async throws {
        let deadline = Date().addingTimeInterval(40)
        while Date() < deadline {
            let status = try await platform.deployment()?["status"]
            if status?["secretRestarts"]?["web-credentials"]?.scalarText == token, status?["phase"]?.scalarText == "Succeeded" { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw KubeModeTests.Failure(description: "\(platform.kind): the Deployment did not roll out for \(token)")
    }

    /// The Secrets on the fake API server: name -> version annotation (or label).
    func secrets(_ platform: Platform) async throws -> [String: String] {
        let items = try await platform.client!.list(KubeSecrets.secrets, namespace: "default").items
        return Dictionary(uniqueKeysWithValues: items.compactMap { item in
            item["metadata"]?["name"]?.scalarText.map { name in
                (name, item["metadata"]?["annotations"]?["capstan.dev/version"]?.scalarText ?? item["metadata"]?["labels"]?["capstan.dev/version"]?.scalarText ?? "")
            }
        })
    }

    @Test(arguments: Kind.allCases) func rotateRollTheDependentsRollBackAFailedVerifyAndRestoreOnRequest(_ kind: Kind) async throws {
        try await DeploymentScenarioTests().on(kind) { platform in
            let port = LocalWorkloadPlatform.freePort()!
            try await platform.put([Self.application(), DeploymentScenarioTests.deployment("1", port: port), Self.rotation()])
            try await expect(platform, "version 1") { $0?["currentVersion"]?.scalarText == "1" && Self.reason($0, "Ready") != nil }
            try await DeploymentScenarioTests().expect(platform, phase: "Succeeded", version: "1")
            if kind == .kube {
                let secrets = try await secrets(platform)
                #expect(secrets["web-credentials"] == "1" && secrets["web-credentials-v1"] == "1", "\(secrets)")
                let pod = try await platform.client!.get(.deployments, namespace: "default", name: "web")
                let env = pod?["spec"]?["template"]?["spec"]?["containers"]?.entriesOrItems.first?["env"]?.entriesOrItems ?? []
                #expect(env.contains { $0["valueFrom"]?["secretKeyRef"]?["name"]?.scalarText == "web-credentials" }, "a native secretKeyRef")
            }

            // A rotation rolls the Deployment with its own strategy.
            let rotate = try await platform.cli(["rotate", "secretrotation/web"])
            #expect(rotate.status == 0, "\(kind): \(rotate.output)")
            try await expect(platform, "version 2") { $0?["currentVersion"]?.scalarText == "2" && $0?["rotation"] == nil && Self.reason($0, "Ready") != nil }
            try await restarted(platform, token: "v2")
            if kind == .kube {
                let apps = try await platform.client!.get(.deployments, namespace: "default", name: "web")
                #expect(apps?["spec"]?["template"]?["metadata"]?["annotations"]?["capstan.dev/secret-restarts"]?.scalarText == "web-credentials=v2")
                #expect(try await secrets(platform)["web-credentials"] == "2")
            }

            // A verify that fails: version 3 is rolled back, the Deployment rolled again.
            try await platform.put([Self.application(), DeploymentScenarioTests.deployment("1", port: port), Self.rotation(verifies: false)])
            try await Task.sleep(for: .seconds(1))
            #expect(try await platform.cli(["rotate", "secretrotation/web"]).status == 0)
            try await expect(platform, "rolled back") { Self.reason($0, "Stalled") == "VerificationFailed" && $0?["rotation"] == nil }
            try await restarted(platform, token: "v2-after-v3")
            let status = try await rotationObject(platform)?["status"]
            #expect(status?["currentVersion"]?.scalarText == "2")
            #expect(status?["versions"]?.entriesOrItems.map { $0["version"]?.scalarText ?? "" } == ["1", "2"])
            if kind == .kube {
                let secrets = try await secrets(platform)
                #expect(secrets["web-credentials"] == "2" && secrets["web-credentials-v3"] == nil, "\(secrets)")
            }

            // Version 1 restored on request.
            try await platform.put([Self.application(), DeploymentScenarioTests.deployment("1", port: port), Self.rotation()])
            try await Task.sleep(for: .seconds(1))
            let rollback = try await platform.cli(["rollback", "secretrotation/web", "--to-version", "1"])
            #expect(rollback.status == 0, "\(kind): \(rollback.output)")
            try await expect(platform, "version 1 restored") { $0?["currentVersion"]?.scalarText == "1" && $0?["rotation"] == nil && Self.reason($0, "Ready") != nil }
            try await restarted(platform, token: "v1")
            let refused = try await platform.cli(["rollback", "secretrotation/web", "--to-version", "7"])
            #expect(refused.status != 0, "\(kind): a version that is not kept is refused")
            try await noValueShows(platform)
        }
    }

    @Test(arguments: Kind.allCases) func aMissingSecretIsSecretNotFoundAndHealsWhenItAppears(_ kind: Kind) async throws {
        try await DeploymentScenarioTests().on(kind) { platform in
            let port = LocalWorkloadPlatform.freePort()!
            try await platform.put([Self.application(), DeploymentScenarioTests.deployment("1", port: port)])
            try await DeploymentScenarioTests().expect(platform, phase: "Progressing", conditions: ["Stalled": ("True", "SecretNotFound")])
            let message = try await platform.deployment()?["status"]?["conditions"]?.entriesOrItems.first { $0["type"]?.scalarText == "Stalled" }?["message"]?.scalarText ?? ""
            #expect(message.contains("web-credentials"), "\(kind): \(message)")
            try await platform.put([Self.application(), DeploymentScenarioTests.deployment("1", port: port), Self.rotation()])
            try await DeploymentScenarioTests().expect(platform, phase: "Succeeded", version: "1", conditions: DeploymentScenarioTests.succeeded)
        }
    }

    @Test(arguments: Kind.allCases) func aSecretCapstanDidNotMakeIsLeftAlone(_ kind: Kind) async throws {
        try await DeploymentScenarioTests().on(kind) { platform in
            // Made by someone else first: a Secret on the cluster; `capstan secret set` here.
            if kind == .kube {
                _ = try await platform.client!.create(KubeSecrets.secrets, namespace: "default", .mapping([
                    ("apiVersion", .string("v1")), ("kind", .string("Secret")), ("metadata", .mapping([("name", .string("web-credentials"))])),
                    ("data", .mapping([("password", .string(Data("theirs-12345".utf8).base64EncodedString()))])),
                ]))
            } else {
                try await platform.put([Self.application()])
                try await Task.sleep(for: .milliseconds(500))
                let set = try await KubeModeTests.capstan(["secret", "set", "web-credentials", "--from-literal", "password=theirs-12345", "--state-dir", platform.state])
                #expect(set.status == 0, "\(set.output)")
            }
            try await platform.put([Self.application(), Self.rotation()])
            try await expect(platform, "ChildConflict") { Self.reason($0, "Stalled") == "ChildConflict" }
            if kind == .kube {
                let secret = try await platform.client!.get(KubeSecrets.secrets, namespace: "default", name: "web-credentials")
                #expect(KubeSecrets.values(of: secret!)["password"] == Data("theirs-12345".utf8), "left alone")
            } else {
                let value = try await KubeModeTests.capstan(["secret", "get", "web-credentials", "--key", "password", "--reveal", "--state-dir", platform.state])
                #expect(value.output == "theirs-12345", "left alone")
            }
        }
    }

    /// No generated value in anything the run showed: the daemon's log, events, statuses,
    /// `get`/`describe`, `/metrics`, the instances' command lines.
    func noValueShows(_ platform: Platform) async throws {
        var values: [String] = []
        var outputs = [platform.log]
        if platform.kind == .kube {
            for item in try await platform.client!.list(KubeSecrets.secrets, namespace: "default").items {
                values += KubeSecrets.values(of: item).values.map { String(decoding: $0, as: UTF8.self) }
            }
            for resource in [KubeResource.events, .capstan(.secretRotation), .capstan(.deployment), .deployments] {
                outputs += try await platform.client!.list(resource, namespace: "default").items.map { JSONEmitter.emit($0, pretty: false) }
            }
        } else {
            for version in ["1", "2"] {
                values.append(try await KubeModeTests.capstan(["secret", "get", "web-credentials", "--key", "password", "--reveal", "--version", version, "--state-dir", platform.state]).output)
            }
            for arguments in [["events"], ["get", "all", "-o", "yaml"], ["get", "all", "-o", "json"], ["describe", "secretrotation/web"], ["describe", "deployment/web"], ["secret", "get", "web-credentials"]] {
                outputs.append(try await KubeModeTests.capstan(arguments + ["--state-dir", platform.state]).output)
            }
            outputs += ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter { $0.allSatisfy(\.isNumber) }.compactMap { pid in
                (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))).map { String(decoding: $0, as: UTF8.self) }
            }
        }
        if let serving = platform.log.range(of: "serving /metrics"),
           let range = platform.log[serving.upperBound...].range(of: #"127\.0\.0\.1:[0-9]+"#, options: .regularExpression),
           let port = Int(platform.log[range].split(separator: ":").last!) {
            let metrics = LoopbackMetrics.get(port: port) ?? ""
            #expect(metrics.contains("capstan_"), "\(platform.kind): /metrics was read")
            outputs.append(metrics)
        }
        values = values.filter { $0.count >= 8 }
        #expect(values.count >= 2, "\(platform.kind): the values to look for")
        for (index, output) in outputs.enumerated() {
            for value in values { #expect(!output.contains(value), "\(platform.kind): output \(index) shows a generated value") }
        }
    }
}

/// GET /metrics from the daemon's listener.
enum LoopbackMetrics {
    static func get(port: Int) -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:\(port)/metrics', timeout=5).read().decode())"]
        let output = Pipe()
        process.standardOutput = output
        guard (try? process.run()) != nil else { return nil }
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
}
