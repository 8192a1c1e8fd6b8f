public enum ComparisonOperator: String, SpecEnum {
    case greater = ">", greaterOrEqual = ">=", less = "<", lessOrEqual = "<=", equal = "==", notEqual = "!="

    /// Whether `value op threshold` holds.
    public func holds(_ value: Double, _ threshold: Double) -> Bool {
        switch self {
        case .greater: return value > threshold
        case .greaterOrEqual: return value >= threshold
        case .less: return value < threshold
        case .lessOrEqual: return value <= threshold
        case .equal: return value == threshold
        case .notEqual: return value != threshold
        }
    }
}

public struct AlertCondition: SpecObject, Hashable {
    public var op = ComparisonOperator.greater
    public var threshold = 0.0

    public init() {}

    public static let fields: [Field<AlertCondition>] = [
        .required("op", \.op, "Comparison: > >= < <= == !="),
        .required("threshold", \.threshold, "The value compared against."),
    ]
}

/// A URL given literally or taken from a Secret.
public struct WebhookReceiver: SpecObject, Hashable {
    public var url: String?
    public var urlFrom: SecretSource?

    public init() {}

    public static let fields: [Field<WebhookReceiver>] = [
        .optional("url", \.url, "Receiver URL.", .httpURL),
        .optional("urlFrom", \.urlFrom, "Receiver URL from a Secret (keeps tokens out of git)."),
    ]

    public static let exactlyOneOf = ["url", "urlFrom"]
}

public struct SlackReceiver: SpecObject, Hashable {
    public var url: String?
    public var urlFrom: SecretSource?
    public var channel: String?

    public init() {}

    public static let fields: [Field<SlackReceiver>] = [
        .optional("url", \.url, "Incoming-webhook URL.", .httpURL),
        .optional("urlFrom", \.urlFrom, "Incoming-webhook URL from a Secret."),
        .optional("channel", \.channel, "Channel override."),
    ]

    public static let exactlyOneOf = ["url", "urlFrom"]
}

public struct SMTPSettings: SpecObject, Hashable {
    public var host = ""
    public var port = 587
    public var userFrom: SecretSource?
    public var passwordFrom: SecretSource?
    public var startTLS = true
    /// PEM certificates trusted for the server's (a private CA), instead of the system's.
    public var caFrom: SecretSource?
    public var insecureSkipVerify = false

    public init() {}

    public static let fields: [Field<SMTPSettings>] = [
        .required("host", \.host, "SMTP server.", .nonEmpty),
        .defaulted("port", \.port, 587, "SMTP port.", .port),
        .optional("userFrom", \.userFrom, "User name from a Secret."),
        .optional("passwordFrom", \.passwordFrom, "Password from a Secret."),
        .defaulted("startTLS", \.startTLS, true, "Require STARTTLS (the password is never sent in the clear)."),
        .optional("caFrom", \.caFrom, "PEM certificates of the CA that signed the server's certificate, from a Secret (default: the system's)."),
        .defaulted("insecureSkipVerify", \.insecureSkipVerify, false, "Accept any server certificate (testing only)."),
    ]

    public static func validate(_ value: SMTPSettings, _ node: SpecNode, _ context: inout DecodeContext) {
        if value.passwordFrom != nil && value.userFrom == nil {
            context.fail("passwordFrom needs userFrom", field: "userFrom", at: node.mark)
        }
    }
}

public struct EmailReceiver: SpecObject, Hashable {
    public var to: [String] = []
    public var from: String?
    public var smtp = SMTPSettings()

    public init() {}

    public static let fields: [Field<EmailReceiver>] = [
        .required("to", \.to, "Recipients.", .minItems(1), Rule(check: { list in
            list.first(where: { !$0.contains("@") || $0.contains(" ") }).map { "\"\($0)\" is not an e-mail address" }
        })),
        .optional("from", \.from, "Sender address (default capstan@<host name>)."),
        .required("smtp", \.smtp, "Mail server."),
    ]
}

public struct AlertmanagerReceiver: SpecObject, Hashable {
    public var url = ""

    public init() {}

    public static let fields: [Field<AlertmanagerReceiver>] = [
        .required("url", \.url, "Alertmanager base URL; alerts are POSTed to /api/v2/alerts.", .httpURL),
    ]
}

/// One receiver of notifications: exactly one of webhook, slack, email or alertmanager.
public struct Receiver: SpecObject, Hashable {
    public var webhook: WebhookReceiver?
    public var slack: SlackReceiver?
    public var email: EmailReceiver?
    public var alertmanager: AlertmanagerReceiver?

    public init() {}

    public static let fields: [Field<Receiver>] = [
        .optional("webhook", \.webhook, "Alertmanager-compatible webhook JSON payload."),
        .optional("slack", \.slack, "Slack incoming webhook."),
        .optional("email", \.email, "E-mail over SMTP."),
        .optional("alertmanager", \.alertmanager, "Forward to an Alertmanager."),
    ]

    public static let exactlyOneOf = ["webhook", "slack", "email", "alertmanager"]
}

public struct Escalation: SpecObject, Hashable {
    public var after = KubeDuration.minutes(15)
    public var notify: [Receiver] = []

    public init() {}

    public static let fields: [Field<Escalation>] = [
        .required("after", \.after, "Escalate when still firing and unacknowledged this long after firing.", .positive),
        .required("notify", \.notify, "Extra receivers.", .minItems(1)),
    ]
}

public enum Severity: String, SpecEnum {
    case critical, warning, info
}

public struct AlertRuleSpec: SpecObject, Hashable {
    public var source = MetricSourceType.builtin
    public var address: String?
    public var query = ""
    public var condition = AlertCondition()
    public var `for` = KubeDuration.zero
    public var keepFiringFor = KubeDuration.zero
    public var interval = KubeDuration.minutes(1)
    public var severity = Severity.warning
    public var labels = StringMap()
    public var annotations = StringMap()
    public var notify: [Receiver] = []
    public var repeatInterval = KubeDuration.hours(4)
    public var sendResolved = true
    public var escalation: [Escalation] = []

    public init() {}

    public static let fields: [Field<AlertRuleSpec>] = [
        .defaulted("source", \.source, .builtin, "builtin or prometheus."),
        .optional("address", \.address, "Prometheus base URL (source: prometheus).", .httpURL),
        .required("query", \.query, "Builtin metric (with an optional label selector) or PromQL.", .nonEmpty),
        .required("condition", \.condition, "When the alert condition holds."),
        .defaulted("for", \.for, .zero, "How long the condition must hold before firing."),
        .defaulted("keepFiringFor", \.keepFiringFor, .zero, "Keep firing this long after the condition clears."),
        .defaulted("interval", \.interval, .minutes(1), "Evaluation interval.", .atLeast(.seconds(1))),
        .defaulted("severity", \.severity, .warning, "critical, warning or info."),
        .defaulted("labels", \.labels, StringMap(), "Labels added to notifications."),
        .defaulted("annotations", \.annotations, StringMap(), "Templated annotations ({{ $value }}, {{ $labels.x }})."),
        .required("notify", \.notify, "Receivers.", .minItems(1)),
        .defaulted("repeatInterval", \.repeatInterval, .hours(4), "Re-notify while firing.", .positive),
        .defaulted("sendResolved", \.sendResolved, true, "Notify when the alert resolves."),
        .defaulted("escalation", \.escalation, [], "More receivers when unacknowledged."),
    ]

    public static func validate(_ value: AlertRuleSpec, _ node: SpecNode, _ context: inout DecodeContext) {
        switch value.source {
        case .prometheus where value.address == nil:
            context.fail("required when source is prometheus", field: "address", at: node.mark)
        case .builtin:
            if value.address != nil { context.fail("only applies to source prometheus", field: "address", at: node["address"]?.mark) }
            if let problem = BuiltinMetrics.queryProblem(value.query) { context.fail(problem, field: "query", at: node["query"]?.mark) }
        default: break
        }
        for (key, _) in value.labels.values.sorted(by: { $0.key < $1.key }) where Names.qualifiedNameProblem(key) != nil {
            context.fail("label \(Names.qualifiedNameProblem(key)!)", field: "labels", at: node["labels"]?.mark)
        }
        for (key, text) in value.annotations.values.sorted(by: { $0.key < $1.key }) {
            do {
                _ = try AlertTemplate.expand(text, value: 0, labels: [:])
            } catch {
                context.fail("annotation \(key): \(error.description)", field: "annotations", at: node["annotations"]?.mark)
            }
        }
        var previous = KubeDuration.zero
        for (index, step) in value.escalation.enumerated() {
            if step.after <= previous && index > 0 {
                context.fail("escalation steps must be in increasing order of after", field: "escalation", at: node["escalation"]?.mark)
                break
            }
            previous = step.after
        }
    }
}

public enum AlertState: String, SpecEnum {
    case inactive = "Inactive", pending = "Pending", firing = "Firing", resolved = "Resolved"
}

/// One notification to one receiver: written to the log before it is sent, then its answer.
public struct NotificationRecord: SpecObject, Hashable {
    public var time = Timestamp(.init(timeIntervalSince1970: 0))
    /// Which receiver: `notify[0]/webhook`, `escalation[1].notify[0]/email`.
    public var receiver = ""
    /// `Firing`, `Resolved`, `Repeat` (still firing after repeatInterval) or `Escalated`.
    public var transition = ""
    public var delivered = false
    public var error: String?
    /// What a receiver deduplicates on: the label set's fingerprint and the transition's time.
    public var key = ""
    /// Sends tried so far, and when the next one is due (an undelivered record is retried with
    /// backoff until it is delivered or abandoned).
    public var attempts = 0
    public var nextAttempt: Timestamp?
    public var abandoned = false
    /// The alert told about: its labels, value and times.
    public var labels = StringMap()
    public var value = 0.0
    /// When the alert began firing (absent in records an older version wrote: then `time`).
    public var startsAt: Timestamp?
    public var endsAt: Timestamp?

    public init() {}

    public static let firing = "Firing"
    public static let resolved = "Resolved"
    public static let repeated = "Repeat"
    public static let escalated = "Escalated"

    public static let fields: [Field<NotificationRecord>] = [
        .required("time", \.time), .required("receiver", \.receiver), .required("transition", \.transition),
        .defaulted("delivered", \.delivered, false), .optional("error", \.error),
        .defaulted("key", \.key, ""), .defaulted("attempts", \.attempts, 0), .optional("nextAttempt", \.nextAttempt),
        .defaulted("abandoned", \.abandoned, false),
        .defaulted("labels", \.labels, StringMap()), .defaulted("value", \.value, 0), .optional("startsAt", \.startsAt),
        .optional("endsAt", \.endsAt),
    ]

    /// Still to be sent (written, not delivered, not given up).
    public var outstanding: Bool { !delivered && !abandoned }
}

/// One label set of an AlertRule's query and where it stands.
public struct AlertSeriesStatus: SpecObject, Hashable {
    public var fingerprint = ""
    public var labels = StringMap()
    public var state = AlertState.inactive
    public var activeSince = Timestamp(.init(timeIntervalSince1970: 0))
    public var firedAt: Timestamp?
    public var resolvedAt: Timestamp?
    /// The last evaluation at which the condition held (keepFiringFor counts from it).
    public var lastTrue = Timestamp(.init(timeIntervalSince1970: 0))
    public var value = 0.0
    /// When receivers were last told it fires (repeatInterval counts from it).
    public var lastNotified: Timestamp?
    /// Escalation steps taken.
    public var escalated = 0

    public init() {}

    public static let fields: [Field<AlertSeriesStatus>] = [
        .required("fingerprint", \.fingerprint), .defaulted("labels", \.labels, StringMap()), .required("state", \.state),
        .required("activeSince", \.activeSince), .optional("firedAt", \.firedAt), .optional("resolvedAt", \.resolvedAt),
        .required("lastTrue", \.lastTrue), .defaulted("value", \.value, 0), .optional("lastNotified", \.lastNotified),
        .defaulted("escalated", \.escalated, 0),
    ]
}

public struct AlertRuleStatus: CommonStatus, Hashable {
    public var observedGeneration: Int?
    public var conditions: [Condition] = []
    public var lastReconcileTime: Timestamp?
    public var state: AlertState?
    public var activeSince: Timestamp?
    public var lastEvaluation: Timestamp?
    public var lastValue: Double?
    public var lastNotification: Timestamp?
    public var notifications: [NotificationRecord] = []
    public var acknowledgedUntil: Timestamp?
    /// Every label set pending, firing or just resolved.
    public var alerts: [AlertSeriesStatus] = []

    public init() {}

    public static let fields: [Field<AlertRuleStatus>] = commonFields + [
        .optional("state", \.state), .optional("activeSince", \.activeSince), .optional("lastEvaluation", \.lastEvaluation),
        .optional("lastValue", \.lastValue), .optional("lastNotification", \.lastNotification),
        .defaulted("notifications", \.notifications, [], "The notification log: the last 20, and every one not yet delivered."),
        .optional("acknowledgedUntil", \.acknowledgedUntil),
        .defaulted("alerts", \.alerts, [], "Each label set pending, firing or resolved at the last evaluation."),
    ]
}

/// Watches a metric and notifies people when a condition holds long enough.
public struct AlertRule: Resource, Hashable {
    public static let kind = ResourceKind.alertRule
    public static let fields: [Field<AlertRule>] = resourceFields
    public var metadata = ObjectMeta()
    public var spec = AlertRuleSpec()
    public var status = AlertRuleStatus()

    public init() {}

    public static let statusColumnPath = ".status.state"
    public static let columns = [
        PrinterColumn("State", "string", ".status.state", "Inactive, Pending, Firing or Resolved"),
        PrinterColumn("Value", "number", ".status.lastValue", "Last evaluated value"),
        PrinterColumn("Since", "date", ".status.activeSince", "Pending or firing since"),
    ]
}
