@testable import CapstanLocal
import CapstanModel
import Foundation
import Testing

/// An AlertRule on builtin metrics on both platforms with the built binary: locally the
/// metrics come from the supervised instances, on the fake API server from the `apps/v1`
/// Deployments' status (this test plays their controller); the notification log is the status
/// (the custom resource's on a cluster) and `capstan ack` reaches the rule on both.
@Suite(.serialized, .timeLimit(.minutes(5))) struct AlertScenarioTests {
    typealias Platform = DeploymentScenarioTests.Platform
    typealias Kind = DeploymentScenarioTests.Kind

    static func rule(receiver: Int) -> SpecNode {
        .mapping([
            ("apiVersion", .string(capstanAPIVersion)), ("kind", .string("AlertRule")), ("metadata", .mapping([("name", .string("web"))])),
            ("spec", .mapping([
                ("source", .string("builtin")),
                ("query", .string("ready_replicas{deployment=\"web\"}")),
                ("condition", .mapping([("op", .string(">=")), ("threshold", .int(2))])),
                ("for", .string("1s")), ("interval", .string("1s")),
                ("annotations", .mapping([("summary", .string("{{ $labels.deployment }} has {{ $value }} ready"))])),
                ("notify", .sequence([.mapping([("webhook", .mapping([("url", .string("http://127.0.0.1:\(receiver)/hook/web"))]))])])),
            ])),
        ])
    }

    func rule(_ platform: Platform) async throws -> SpecNode? { try await platform.object(.alertRule) }

    func until(_ platform: Platform, _ what: String, seconds: Double = 40, _ condition: (SpecNode) -> Bool) async throws {
        try await platform.until(.alertRule, what, seconds: seconds, condition)
    }

    static func delivered(_ status: SpecNode, _ transition: String) -> Bool {
        (status["notifications"]?.entriesOrItems ?? []).contains {
            $0["transition"]?.scalarText == transition && $0["delivered"]?.scalarText == "true" && $0["receiver"]?.scalarText == "notify[0]/webhook"
        }
    }

    @Test(arguments: Kind.allCases) func aRuleOnBuiltinMetricsFiresNotifiesResolvesAndIsAcknowledged(_ kind: Kind) async throws {
        let receiverPort = LocalWorkloadPlatform.freePort()!
        let receiver = Process()
        receiver.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        receiver.arguments = ["python3", FakeAPIServer.root + "/hack/testapps/alert_receiver.py", String(receiverPort)]
        receiver.standardInput = Pipe()
        receiver.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        try receiver.run()
        defer { receiver.terminate() }
        try await DeploymentScenarioTests().on(kind) { platform in
            let port = LocalWorkloadPlatform.freePort()!
            let app = DeploymentScenarioTests.application()
            try await platform.put([app, DeploymentScenarioTests.deployment("1", port: port), Self.rule(receiver: receiverPort)])
            try await until(platform, "Firing, told") { $0["state"]?.scalarText == "Firing" && Self.delivered($0, "Firing") }
            var status = try await rule(platform)?["status"]
            let alert = status?["alerts"]?.entriesOrItems.first
            #expect(alert?["labels"]?["deployment"]?.scalarText == "web")
            #expect(alert?["labels"]?["namespace"]?.scalarText == "default")
            #expect(status?["lastValue"]?.scalarText.flatMap(Double.init) == 2)
            #expect(KubeModeTests.condition(try await rule(platform), "Firing")?["status"]?.scalarText == "True")

            let ack = try await platform.cli(["ack", "alertrule/web", "--for", "1h"])
            #expect(ack.status == 0, "\(kind): \(ack.output)")
            try await until(platform, "the acknowledgement") { $0["acknowledgedUntil"] != nil }

            // One ready instance fewer: resolved, told, and the acknowledgement ends with it.
            try await platform.put([app, DeploymentScenarioTests.deployment("1", port: port, replicas: 1), Self.rule(receiver: receiverPort)])
            try await until(platform, "Resolved, told") { $0["state"]?.scalarText != "Firing" && Self.delivered($0, "Resolved") }
            status = try await rule(platform)?["status"]
            #expect(status?["acknowledgedUntil"] == nil)
            let ready = KubeModeTests.condition(try await rule(platform), "Ready")
            #expect(ready?["status"]?.scalarText == "True", "\(String(describing: ready))")
            let reasons: [String]
            if kind == .kube {
                reasons = try await KubeModeTests.events(platform.client!, about: "web")
            } else {
                reasons = try await platform.cli(["events", "alertrule/web"]).output.split(separator: "\n").dropFirst().compactMap { line in
                    let fields = line.split(separator: " ", omittingEmptySubsequences: true)
                    return fields.count > 2 ? String(fields[2]) : nil
                }
            }
            for reason in ["AlertFiring", "Acknowledged", "AlertResolved", "AcknowledgementEnded"] {
                #expect(reasons.contains(reason), "\(kind): \(reason) missing from \(reasons)")
            }
        }
    }
}
