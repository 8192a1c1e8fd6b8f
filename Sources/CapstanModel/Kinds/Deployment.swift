public enum DeploymentStrategyType: String, SpecEnum {
    case rollingUpdate = "RollingUpdate"
    case recreate = "Recreate"
    case blueGreen = "BlueGreen"
}

public struct BlueGreenStrategy: SpecObject, Hashable {
    public var previewPort: Int?
    public var autoPromote = true
    public var scaleDownDelay = KubeDuration.seconds(30)

    public init() {}

    public static let fields: [Field<BlueGreenStrategy>] = [
        .optional("previewPort", \.previewPort, "Local platform: a port that serves the new colour before the switch.", .port),
        .defaulted("autoPromote", \.autoPromote, true, "Switch traffic as soon as the new colour is healthy."),
        .defaulted("scaleDownDelay", \.scaleDownDelay, .seconds(30), "How long the old colour is kept after the switch."),
    ]
}

public struct DeploymentStrategy: SpecObject, Hashable {
    public var type = DeploymentStrategyType.rollingUpdate
    public var maxSurge: IntOrString?
    public var maxUnavailable: IntOrString?
    public var blueGreen: BlueGreenStrategy?

    /// maxSurge with its default (25%, as Kubernetes).
    public var effectiveMaxSurge: IntOrString { maxSurge ?? .string("25%") }
    /// maxUnavailable with its default (25%, as Kubernetes).
    public var effectiveMaxUnavailable: IntOrString { maxUnavailable ?? .string("25%") }

    public init() {}

    public static let fields: [Field<DeploymentStrategy>] = [
        .defaulted("type", \.type, .rollingUpdate, "RollingUpdate, Recreate or BlueGreen."),
        .optional("maxSurge", \.maxSurge, "RollingUpdate: instances above replicas during a rollout (count or percent, rounded up; default 25%)."),
        .optional("maxUnavailable", \.maxUnavailable, "RollingUpdate: ready instances that may be missing during a rollout (count or percent, rounded down; default 25%)."),
        .optional("blueGreen", \.blueGreen, "BlueGreen settings."),
    ]

    static func countProblem(_ value: IntOrString) -> String? {
        switch value {
        case .int(let count): return count < 0 ? "must not be negative, got \(count)" : nil
        case .string(let text):
            guard text.hasSuffix("%"), let percent = Int(text.dropLast()), String(percent) + "%" == text || text.dropLast().allSatisfy(\.isASCIIDigitCharacter) else {
                return "must be a count (e.g. 1) or a percentage (e.g. \"25%\"), got \"\(text)\""
            }
            return (0...100).contains(percent) ? nil : "percentage must be between 0% and 100%, got \(text)"
        }
    }

    public static func validate(_ value: DeploymentStrategy, _ node: SpecNode, _ context: inout DecodeContext) {
        let surgeProblem = countProblem(value.effectiveMaxSurge)
        let unavailableProblem = countProblem(value.effectiveMaxUnavailable)
        if let surgeProblem { context.fail(surgeProblem, field: "maxSurge", at: node["maxSurge"]?.mark) }
        if let unavailableProblem { context.fail(unavailableProblem, field: "maxUnavailable", at: node["maxUnavailable"]?.mark) }
        if surgeProblem == nil, unavailableProblem == nil, value.type == .rollingUpdate,
           value.effectiveMaxSurge.scaled(total: 100, roundUp: true) == 0, value.effectiveMaxUnavailable.scaled(total: 100, roundUp: false) == 0 {
            context.fail("maxSurge and maxUnavailable must not both be 0: the rollout could never make progress", at: node["maxUnavailable"]?.mark ?? node.mark)
        }
        if value.type != .rollingUpdate {
            for key in ["maxSurge", "maxUnavailable"] where node[key] != nil {
                context.fail("only applies to type RollingUpdate (type is \(value.type.rawValue))", field: key, at: node[key]?.mark)
            }
        }
        if value.blueGreen != nil && value.type != .blueGreen {
            context.fail("only applies to type BlueGreen (type is \(value.type.rawValue))", field: "blueGreen", at: node["blueGreen"]?.mark)
        }
    }
}

/// A window in which rollouts may start: opens at each cron time, stays open for `duration`.
public struct DeploymentWindow: SpecObject, Hashable {
    public var schedule = try! CronSchedule("@daily")
    public var duration = KubeDuration.hours(1)
    public var timeZone = TimeZoneName.utc

    public init() {}

    public static let fields: [Field<DeploymentWindow>] = [
        .required("schedule", \.schedule, "When the window opens (5-field cron or @daily etc.)."),
        .required("duration", \.duration, "How long it stays open.", .positive),
        .defaulted("timeZone", \.timeZone, .utc, "IANA time zone of the schedule."),
    ]
}

public struct DeploymentSpec: SpecObject, Hashable {
    public var application = ""
    public var version = ""
    public var replicas = 1
    public var env: [EnvVar] = []
    public var strategy = DeploymentStrategy()
    public var progressDeadline = KubeDuration.minutes(10)
    public var revisionHistoryLimit = 10
    public var autoRollback = true
    public var window: DeploymentWindow?
    public var paused = false
    public var port: Int?

    public init() {}

    public static let fields: [Field<DeploymentSpec>] = [
        .required("application", \.application, "The Application to run (same namespace).", .dnsLabel),
        .required("version", \.version, "Image tag, or git ref / source version label.", .nonEmpty, .maxLength(128)),
        .defaulted("replicas", \.replicas, 1, "Number of instances.", .minimum(0), .maximum(1000)),
        .defaulted("env", \.env, [], "Merged over the Application's env, by name.", .uniqueNames),
        .defaulted("strategy", \.strategy, DeploymentStrategy(), "How a new revision replaces the old one."),
        .defaulted("progressDeadline", \.progressDeadline, .minutes(10), "A rollout without progress for this long has failed.", .positive),
        .defaulted("revisionHistoryLimit", \.revisionHistoryLimit, 10, "Old revisions kept for rollback.", .minimum(0), .maximum(1000)),
        .defaulted("autoRollback", \.autoRollback, true, "Return to the last good revision when a rollout fails."),
        .optional("window", \.window, "Rollouts wait for this window."),
        .defaulted("paused", \.paused, false, "Stop rolling out changes."),
        .optional("port", \.port, "Local platform: the stable router port; Kubernetes: the Service port.", .port),
    ]

    public static func validate(_ value: DeploymentSpec, _ node: SpecNode, _ context: inout DecodeContext) {
        if value.version.contains(where: { $0.isWhitespace }) {
            context.fail("version \"\(value.version)\" must not contain spaces", field: "version", at: node["version"]?.mark)
        }
        ReservedEnv.check(value.env, node, &context)
        if let preview = value.strategy.blueGreen?.previewPort, preview == value.port {
            context.fail("must differ from port \(preview): the preview serves the new colour beside the port, not on it",
                         relative: FieldPath.root.appending("strategy").appending("blueGreen").appending("previewPort"),
                         at: node["strategy"]?["blueGreen"]?["previewPort"]?.mark)
        }
    }
}

public enum DeploymentPhase: String, SpecEnum {
    case pending = "Pending", scheduled = "Scheduled", progressing = "Progressing", succeeded = "Succeeded"
    case failed = "Failed", rolledBack = "RolledBack", paused = "Paused"
}

public struct RevisionRecord: SpecObject, Hashable {
    public var revision = 0
    public var version = ""
    public var templateHash = ""
    public var startedAt: Timestamp?
    public var finishedAt: Timestamp?
    public var outcome: String?
    /// The last time the rollout of this revision made progress (an instance started, became
    /// ready or was replaced); `progressDeadline` counts from here.
    public var progressedAt: Timestamp?

    public init() {}

    public static let fields: [Field<RevisionRecord>] = [
        .required("revision", \.revision, nil, .minimum(1)),
        .required("version", \.version),
        .required("templateHash", \.templateHash),
        .optional("startedAt", \.startedAt),
        .optional("finishedAt", \.finishedAt),
        .optional("outcome", \.outcome, "Succeeded, Failed, RolledBack or Superseded."),
        .optional("progressedAt", \.progressedAt, "Last progress of this revision's rollout."),
    ]
}

/// A revision that runs instead of the one the spec describes: after an automatic rollback
/// (reason `RolledBack`) or a requested one (`RollbackRequested`). It holds until the spec's
/// template changes away from `specTemplateHash`.
public struct DeploymentRollback: SpecObject, Hashable {
    public var toRevision = 0
    public var specTemplateHash = ""
    public var reason = ""
    public var message: String?
    public var request: String?

    public init() {}

    public static let fields: [Field<DeploymentRollback>] = [
        .required("toRevision", \.toRevision, "The revision that runs.", .minimum(1)),
        .required("specTemplateHash", \.specTemplateHash, "The template hash of the spec when the rollback happened."),
        .required("reason", \.reason, "RolledBack or RollbackRequested."),
        .optional("message", \.message),
        .optional("request", \.request, "The `capstan.dev/rollback-to` value this rollback answered."),
    ]
}

/// One of a Deployment's running tracks (platforms.md: a named group of instances running one
/// revision): `stable`, or the colours `blue` and `green` of BlueGreen; its role says whether it
/// receives the Deployment's port (`active`), its preview port (`preview`), or is kept for
/// `scaleDownDelay` after a switch (`retiring`, until `retireAt`).
public struct TrackStatus: SpecObject, Hashable {
    public var name = ""
    public var role = TrackRole.active
    public var revision = 0
    public var version = ""
    public var templateHash = ""
    public var replicas: Int?
    public var readyReplicas: Int?
    public var retireAt: Timestamp?
    public var weight: Int?

    public init() {}

    public init(name: String, role: TrackRole, revision: Int, version: String, templateHash: String) {
        self.name = name
        self.role = role
        self.revision = revision
        self.version = version
        self.templateHash = templateHash
    }

    public static let fields: [Field<TrackStatus>] = [
        .required("name", \.name, "stable, blue, green or canary."),
        .required("role", \.role, "Active (serves the port), Preview (serves the preview port), Retiring or Canary (a Canary's new version beside the active track)."),
        .required("revision", \.revision, nil, .minimum(1)),
        .required("version", \.version),
        .required("templateHash", \.templateHash),
        .optional("replicas", \.replicas, "Instances of the track."),
        .optional("readyReplicas", \.readyReplicas, "Ready instances of the track."),
        .optional("retireAt", \.retireAt, "A retiring track is removed at this time."),
        .optional("weight", \.weight, "Percent of the port's connections the track receives while a Canary splits them (by replica ratio: what the ratio gives)."),
    ]
}

public enum TrackRole: String, SpecEnum {
    case active = "Active", preview = "Preview", retiring = "Retiring", canary = "Canary"
}

public struct DeploymentStatus: CommonStatus, Hashable {
    public var observedGeneration: Int?
    public var conditions: [Condition] = []
    public var lastReconcileTime: Timestamp?
    public var phase: DeploymentPhase?
    public var version: String?
    public var currentRevision: Int?
    public var replicas: Int?
    public var updatedReplicas: Int?
    public var readyReplicas: Int?
    public var availableReplicas: Int?
    public var nextWindowTime: Timestamp?
    public var history: [RevisionRecord] = []
    public var rollback: DeploymentRollback?
    public var tracks: [TrackStatus] = []
    /// The secrets whose rotation restarted this Deployment, with the restart token its
    /// running revision has rolled out with (a SecretRotation waits for it).
    public var secretRestarts = StringMap()
    /// The templates of the revisions kept (Kubernetes: the rollback targets live in the
    /// status, not in an object per Deployment; locally the state store keeps them).
    public var revisionTemplates: [RevisionTemplate] = []

    public init() {}

    public static let fields: [Field<DeploymentStatus>] = commonFields + [
        .optional("phase", \.phase),
        .optional("version", \.version, "The version the current revision runs."),
        .optional("currentRevision", \.currentRevision),
        .optional("replicas", \.replicas, "Instances running, of every revision."),
        .optional("updatedReplicas", \.updatedReplicas, "Instances of the current revision."),
        .optional("readyReplicas", \.readyReplicas, "Instances passing their health check."),
        .optional("availableReplicas", \.availableReplicas, "Ready instances receiving traffic."),
        .optional("nextWindowTime", \.nextWindowTime, "When the deployment window opens next."),
        .defaulted("history", \.history, [], "Revisions, oldest first."),
        .optional("rollback", \.rollback, "Set while a rolled-back revision runs instead of the spec's."),
        .defaulted("tracks", \.tracks, [], "The running tracks: which revision each runs and whether it serves the port."),
        .defaulted("secretRestarts", \.secretRestarts, StringMap(), "Per secret, the rotation restart the running revision rolled out with."),
        .defaulted("revisionTemplates", \.revisionTemplates, [], "The kept revisions' templates (what a rollback runs), oldest first; on Kubernetes only."),
    ]
}

/// A kept revision's template, as compact JSON.
public struct RevisionTemplate: SpecObject, Hashable {
    public var revision = 0
    public var hash = ""
    public var template = ""

    public init() {}

    public init(revision: Int, hash: String, template: String) {
        self.revision = revision
        self.hash = hash
        self.template = template
    }

    public static let fields: [Field<RevisionTemplate>] = [
        .required("revision", \.revision, nil, .minimum(1)),
        .required("hash", \.hash),
        .required("template", \.template, "The template as compact JSON."),
    ]
}

/// Which version of an Application runs, how many instances, and how it changes.
public struct Deployment: Resource, Hashable {
    public static let kind = ResourceKind.deployment
    public static let fields: [Field<Deployment>] = resourceFields
    public var metadata = ObjectMeta()
    public var spec = DeploymentSpec()
    public var status = DeploymentStatus()

    public init() {}

    public static let columns = [
        PrinterColumn("Version", "string", ".spec.version", "Desired version"),
        PrinterColumn("Ready-Replicas", "string", ".status.readyReplicas", "Ready instances"),
        PrinterColumn("Replicas", "integer", ".spec.replicas", "Desired instances"),
        PrinterColumn("Revision", "integer", ".status.currentRevision", "Current revision"),
        PrinterColumn("Phase", "string", ".status.phase", "Rollout phase"),
    ]
}
