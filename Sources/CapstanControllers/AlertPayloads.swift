import CapstanModel
import Foundation

/// What a receiver is told about one transition of one label set of an AlertRule.
public struct AlertNotice: Sendable, Hashable {
    public var rule: ObjectKey
    public var status: AlertState
    /// The rule's labels, the series' labels, `alertname` (the rule's name) and `severity`.
    public var labels: [String: String]
    /// The rule's annotations, expanded for this series.
    public var annotations: [String: String]
    public var startsAt: Date
    /// When it resolved (nil while it fires).
    public var endsAt: Date?
    public var value: Double
    public var fingerprint: String
    /// What a receiver deduplicates on: the fingerprint and the transition's time.
    public var key: String

    public init(rule: ObjectKey, status: AlertState, labels: [String: String], annotations: [String: String], startsAt: Date, endsAt: Date?,
                value: Double, fingerprint: String, key: String) {
        self.rule = rule
        self.status = status
        self.labels = labels
        self.annotations = annotations
        self.startsAt = startsAt
        self.endsAt = endsAt
        self.value = value
        self.fingerprint = fingerprint
        self.key = key
    }

    var firing: Bool { status != .resolved }
}

/// The bodies each kind of receiver takes: Alertmanager's webhook JSON (version 4), a Slack
/// incoming-webhook message, Alertmanager's `POST /api/v2/alerts` list, and a plain-text e-mail.
public enum AlertPayloads {
    /// Go's zero time, which Alertmanager writes for an alert that has not ended.
    static let zeroTime = "0001-01-01T00:00:00Z"

    static func time(_ date: Date?) -> String { date.map { Timestamp($0).description } ?? zeroTime }

    static func json(_ object: Any) -> Data {
        (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    }

    /// Labels all notices share (Alertmanager's `commonLabels`).
    static func common(_ maps: [[String: String]]) -> [String: String] {
        guard var shared = maps.first else { return [:] }
        for map in maps.dropFirst() { shared = shared.filter { map[$0.key] == $0.value } }
        return shared
    }

    /// Alertmanager's webhook payload, version 4, with Capstan's dedup key on each alert
    /// (`capstanKey`) beside the standard fields.
    public static func webhook(_ notices: [AlertNotice], receiver: String, externalURL: String = "") -> Data {
        let groupLabels = ["alertname": notices.first?.labels["alertname"] ?? ""]
        let alerts: [[String: Any]] = notices.map { notice in
            [
                "status": notice.firing ? "firing" : "resolved",
                "labels": notice.labels, "annotations": notice.annotations,
                "startsAt": time(notice.startsAt), "endsAt": time(notice.endsAt),
                "generatorURL": "", "fingerprint": notice.fingerprint, "capstanKey": notice.key,
            ]
        }
        let firing = notices.contains { $0.firing }
        return json([
            "version": "4",
            "groupKey": "{}:{alertname=\"\(groupLabels["alertname"]!)\"}",
            "truncatedAlerts": 0,
            "status": firing ? "firing" : "resolved",
            "receiver": receiver,
            "groupLabels": groupLabels,
            "commonLabels": common(notices.map(\.labels)),
            "commonAnnotations": common(notices.map(\.annotations)),
            "externalURL": externalURL,
            "alerts": alerts,
        ])
    }

    /// A Slack incoming-webhook message: one line per alert, coloured by state.
    public static func slack(_ notices: [AlertNotice], channel: String? = nil) -> Data {
        let name = notices.first?.labels["alertname"] ?? ""
        let firing = notices.contains { $0.firing }
        let lines = notices.map { notice -> String in
            let summary = notice.annotations["summary"] ?? notice.annotations["description"] ?? ""
            let labels = notice.labels.filter { $0.key != "alertname" }.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            return "• " + (summary.isEmpty ? labels : "\(summary) (\(labels))")
        }
        var message: [String: Any] = [
            "text": "[\(firing ? "FIRING" : "RESOLVED"):\(notices.count)] \(name)",
            "attachments": [["color": firing ? "danger" : "good", "text": lines.joined(separator: "\n"),
                             "footer": "capstan alertrule/\(notices.first?.rule.name ?? "")"]],
        ]
        if let channel { message["channel"] = channel }
        return json(message)
    }

    /// Alertmanager's `POST /api/v2/alerts` body: a firing alert ends at `validUntil` unless
    /// posted again (as Prometheus sets it, so an alert whose sender died resolves by itself);
    /// a resolved one ends when it resolved.
    public static func alertmanager(_ notices: [AlertNotice], validUntil: Date? = nil) -> Data {
        json(notices.map { notice -> [String: Any] in
            var alert: [String: Any] = ["labels": notice.labels, "annotations": notice.annotations, "startsAt": time(notice.startsAt), "generatorURL": ""]
            if let end = notice.endsAt ?? (notice.firing ? validUntil : nil) { alert["endsAt"] = time(end) }
            return alert
        })
    }

    /// A readable e-mail: the subject says the state and the rule; the body lists each alert
    /// with its value, labels and annotations.
    public static func email(_ notices: [AlertNotice]) -> (subject: String, body: String) {
        let name = notices.first?.labels["alertname"] ?? ""
        let firing = notices.contains { $0.firing }
        let subject = "[\(firing ? "FIRING" : "RESOLVED"):\(notices.count)] \(name)"
        var body = ""
        for notice in notices {
            body += "\(notice.firing ? "Firing" : "Resolved") since \(time(notice.firing ? notice.startsAt : notice.endsAt))\n"
            if let summary = notice.annotations["summary"] { body += "\(summary)\n" }
            body += "Value: \(notice.value)\n"
            for (key, value) in notice.labels.sorted(by: { $0.key < $1.key }) { body += "  \(key) = \(value)\n" }
            for (key, value) in notice.annotations.sorted(by: { $0.key < $1.key }) where key != "summary" { body += "  \(key): \(value)\n" }
            body += "Key: \(notice.key)\n\n"
        }
        body += "-- \ncapstan alertrule/\(notices.first?.rule.name ?? "") in namespace \(notices.first?.rule.namespace ?? "")\n"
        return (subject, body)
    }
}
