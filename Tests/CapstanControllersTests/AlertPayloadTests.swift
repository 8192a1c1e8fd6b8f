import CapstanModel
import Foundation
import Testing
@testable import CapstanControllers

@Suite struct AlertPayloadTests {
    static let rule = ObjectKey(kind: .alertRule, namespace: "default", name: "web-errors")
    static let start = Date(timeIntervalSince1970: 1_800_000_000)

    static func notice(_ deployment: String, resolved: Bool = false) -> AlertNotice {
        let labels = ["alertname": "web-errors", "severity": "critical", "team": "web", "deployment": deployment]
        let fingerprint = AlertEvaluator.fingerprint(labels)
        return AlertNotice(rule: rule, status: resolved ? .resolved : .firing, labels: labels, annotations: ["summary": "errors on \(deployment)"],
                           startsAt: start, endsAt: resolved ? start.addingTimeInterval(300) : nil, value: 0.25, fingerprint: fingerprint,
                           key: "\(fingerprint)@\(Timestamp(start).description)")
    }

    static func object(_ data: Data) throws -> [String: Any] { try JSONSerialization.jsonObject(with: data) as! [String: Any] }

    @Test func webhookIsAlertmanagersVersion4() throws {
        let payload = try Self.object(AlertPayloads.webhook([Self.notice("web"), Self.notice("api")], receiver: "oncall"))
        #expect(payload["version"] as? String == "4")
        #expect(payload["status"] as? String == "firing")
        #expect(payload["receiver"] as? String == "oncall")
        #expect(payload["groupLabels"] as? [String: String] == ["alertname": "web-errors"])
        #expect(payload["commonLabels"] as? [String: String] == ["alertname": "web-errors", "severity": "critical", "team": "web"])
        #expect(payload["truncatedAlerts"] as? Int == 0)
        let alerts = payload["alerts"] as! [[String: Any]]
        #expect(alerts.count == 2)
        #expect(alerts[0]["endsAt"] as? String == "0001-01-01T00:00:00Z")
        #expect(alerts[0]["startsAt"] as? String == Timestamp(Self.start).description)
        #expect((alerts[0]["capstanKey"] as? String)?.hasPrefix(alerts[0]["fingerprint"] as! String) == true)
        let resolved = try Self.object(AlertPayloads.webhook([Self.notice("web", resolved: true)], receiver: "oncall"))
        #expect(resolved["status"] as? String == "resolved")
        #expect((resolved["alerts"] as! [[String: Any]])[0]["endsAt"] as? String != "0001-01-01T00:00:00Z")
    }

    @Test func slackAlertmanagerAndEmail() throws {
        let slack = try Self.object(AlertPayloads.slack([Self.notice("web")], channel: "#ops"))
        #expect(slack["text"] as? String == "[FIRING:1] web-errors")
        #expect(slack["channel"] as? String == "#ops")
        #expect(((slack["attachments"] as! [[String: Any]])[0]["text"] as! String).contains("errors on web"))

        let posted = try JSONSerialization.jsonObject(with: AlertPayloads.alertmanager([Self.notice("web"), Self.notice("api", resolved: true)])) as! [[String: Any]]
        #expect(posted.count == 2)
        #expect(posted[0]["endsAt"] == nil)
        #expect(posted[1]["endsAt"] as? String != nil)
        #expect((posted[0]["labels"] as? [String: String])?["alertname"] == "web-errors")

        let mail = AlertPayloads.email([Self.notice("web")])
        #expect(mail.subject == "[FIRING:1] web-errors")
        #expect(mail.body.contains("errors on web") && mail.body.contains("deployment = web") && mail.body.contains("Key: "))
    }
}
