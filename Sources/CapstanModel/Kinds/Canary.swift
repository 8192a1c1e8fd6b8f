public struct CanaryPause: SpecObject, Hashable {
    public var duration: KubeDuration?

    public init() {}

    public static let fields: [Field<CanaryPause>] = [
        .optional("duration", \.duration, "Pause length; without it, wait for `capstan promote`."),
    ]
}

/// An empty object: `analysis: {}` as a step.
public struct CanaryAnalysisStep: SpecObject, Hashable {
    public init() {}
    public static let fields: [Field<CanaryAnalysisStep>] = []
}

/// One step of a canary: exactly one of setWeight, pause or analysis.
public struct CanaryStep: SpecObject, Hashable {
    public var setWeight: Int?
    public var pause: CanaryPause?
    public var analysis: CanaryAnalysisStep?

    public init() {}

    public static let fields: [Field<CanaryStep>] = [
        .optional("setWeight", \.setWeight, "Percent of traffic to the canary.", .minimum(0), .maximum(100)),
        .optional("pause", \.pause, "Wait, for a duration or for promotion."),
        .optional("analysis", \.analysis, "Run the analysis now."),
    ]

    public static let exactlyOneOf = ["setWeight", "pause", "analysis"]
}

public enum MetricSourceType: String, SpecEnum {
    case builtin
    case prometheus
}

/// Builtin metrics Capstan computes from its own probes and from /proc.
public enum BuiltinMetrics {
    public static let names = [
        "up", "probe_success", "probe_failure_ratio", "probe_duration_seconds", "restarts_total",
        "host_cpu_ratio", "host_memory_ratio", "host_disk_ratio", "ready_replicas", "desired_replicas",
    ]

    /// nil when `query` names a builtin metric (with an optional `{label="value"}` selector).
    static func queryProblem(_ query: String) -> String? {
        do {
            _ = try MetricSelector.parse(query, known: names)
            return nil
        } catch {
            return error.description
        }
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s = s.dropFirst() }
        while s.last == set { s = s.dropLast() }
        return String(s)
    }
}

public struct CanaryMetric: SpecObject, Hashable {
    public var name = ""
    public var source = MetricSourceType.builtin
    public var address: String?
    public var query = ""
    public var min: Double?
    public var max: Double?

    public init() {}

    public static let documentation = "A metric checked at each analysis; the run passes when min <= value <= max."
    public static let fields: [Field<CanaryMetric>] = [
        .required("name", \.name, nil, .dnsLabel),
        .defaulted("source", \.source, .builtin, "builtin (Capstan's probes) or prometheus."),
        .optional("address", \.address, "Prometheus base URL (source: prometheus).", .httpURL),
        .required("query", \.query, "Builtin metric name or PromQL; $(CANARY_VERSION) and $(STABLE_VERSION) are expanded.", .nonEmpty),
        .optional("min", \.min, "Lowest passing value."),
        .optional("max", \.max, "Highest passing value."),
    ]

    public static func validate(_ value: CanaryMetric, _ node: SpecNode, _ context: inout DecodeContext) {
        if value.min == nil && value.max == nil {
            context.fail("set min, max or both: a metric without bounds checks nothing", at: node.mark)
        }
        if let min = value.min, let max = value.max, min > max {
            context.fail("min \(SpecNode.formatNumber(min)) is greater than max \(SpecNode.formatNumber(max))", at: node["min"]?.mark)
        }
        switch value.source {
        case .prometheus where value.address == nil:
            context.fail("required when source is prometheus", field: "address", at: node.mark)
        case .builtin:
            if value.address != nil { context.fail("only applies to source prometheus", field: "address", at: node["address"]?.mark) }
            if let problem = BuiltinMetrics.queryProblem(value.query) { context.fail(problem, field: "query", at: node["query"]?.mark) }
        default: break
        }
    }
}

public struct CanaryAnalysis: SpecObject, Hashable {
    public var interval = KubeDuration.minutes(1)
    public var failureLimit = 0
    public var metrics: [CanaryMetric] = []

    public init() {}

    public static let fields: [Field<CanaryAnalysis>] = [
        .defaulted("interval", \.interval, .minutes(1), "Time between analysis runs.", .positive),
        .defaulted("failureLimit", \.failureLimit, 0, "Failed runs tolerated before abort (Argo Rollouts' default: 0).", .minimum(0)),
        .defaulted("metrics", \.metrics, [], "Metrics to check."),
    ]

    public static func validate(_ value: CanaryAnalysis, _ node: SpecNode, _ context: inout DecodeContext) {
        var seen = Set<String>()
        for metric in value.metrics where !seen.insert(metric.name).inserted {
            context.fail("metric name \"\(metric.name)\" is used twice", field: "metrics", at: node["metrics"]?.mark)
        }
    }
}

public enum TrafficRouting: String, SpecEnum {
    case auto, router, replicas, traefik
}

public struct CanarySpec: SpecObject, Hashable {
    public var deployment = ""
    public var steps: [CanaryStep] = []
    public var analysis = CanaryAnalysis()
    public var trafficRouting = TrafficRouting.auto
    public var skipAnalysis = false

    public init() {}

    public static let fields: [Field<CanarySpec>] = [
        .required("deployment", \.deployment, "The Deployment this canary guards (same namespace).", .dnsLabel),
        .required("steps", \.steps, "Steps run in order for every new version.", .minItems(1)),
        .defaulted("analysis", \.analysis, CanaryAnalysis(), "Metric analysis."),
        .defaulted("trafficRouting", \.trafficRouting, .auto, "auto, router (local), replicas or traefik (Kubernetes)."),
        .defaulted("skipAnalysis", \.skipAnalysis, false, "Promote without checking metrics."),
    ]

    public static func validate(_ value: CanarySpec, _ node: SpecNode, _ context: inout DecodeContext) {
        if value.steps.contains(where: { $0.analysis != nil }) && value.analysis.metrics.isEmpty && !value.skipAnalysis {
            context.fail("an analysis step needs analysis.metrics", field: "analysis", at: node["analysis"]?.mark ?? node.mark)
        }
        // Weights only go up: a canary that takes traffic back is an abort, not a step.
        var last = 0
        for (index, step) in value.steps.enumerated() {
            guard let weight = step.setWeight else { continue }
            var mark = node.mark
            if case .sequence(let items)? = node["steps"]?.value, index < items.count { mark = items[index]["setWeight"]?.mark ?? items[index].mark }
            let path = FieldPath([.key("steps"), .index(index), .key("setWeight")])
            if weight == 0 {
                context.fail("setWeight 0 sends the canary nothing: start above 0 (to send it nothing, abort with `capstan abort canary/NAME`)", relative: path, at: mark)
            } else if weight < last {
                context.fail("setWeight \(weight) is below the step before it (\(last)): weights only go up", relative: path, at: mark)
            }
            last = max(last, weight)
        }
    }
}

public enum CanaryPhase: String, SpecEnum {
    case idle = "Idle", progressing = "Progressing", paused = "Paused", promoting = "Promoting"
    case succeeded = "Succeeded", aborted = "Aborted", failed = "Failed"
}

public struct AnalysisRunRecord: SpecObject, Hashable {
    public var time = Timestamp(.init(timeIntervalSince1970: 0))
    public var metric = ""
    public var value: Double?
    public var passed = false
    public var message: String?

    public init() {}

    public static let fields: [Field<AnalysisRunRecord>] = [
        .required("time", \.time), .required("metric", \.metric), .optional("value", \.value), .defaulted("passed", \.passed, false),
        .optional("message", \.message, "Why the run failed (out of bounds, or the metric could not be read: a failure too)."),
    ]
}

public struct CanaryStatus: CommonStatus, Hashable {
    public var observedGeneration: Int?
    public var conditions: [Condition] = []
    public var lastReconcileTime: Timestamp?
    public var phase: CanaryPhase?
    public var currentStep: Int?
    public var canaryWeight: Int?
    public var stableVersion: String?
    public var canaryVersion: String?
    public var failedAnalyses: Int?
    public var analysisRuns: [AnalysisRunRecord] = []
    public var stableRevision: Int?
    public var canaryRevision: Int?
    public var stepStartedAt: Timestamp?
    public var lastAnalysisTime: Timestamp?
    public var effectiveWeight: Int?
    public var message: String?

    public init() {}

    public static let fields: [Field<CanaryStatus>] = commonFields + [
        .optional("phase", \.phase), .optional("currentStep", \.currentStep), .optional("canaryWeight", \.canaryWeight),
        .optional("stableVersion", \.stableVersion), .optional("canaryVersion", \.canaryVersion),
        .optional("failedAnalyses", \.failedAnalyses), .defaulted("analysisRuns", \.analysisRuns, [], "The last 20 runs."),
        .optional("stableRevision", \.stableRevision, "The Deployment's revision on its stable track when this run started."),
        .optional("canaryRevision", \.canaryRevision, "The Deployment's revision this run is about."),
        .optional("stepStartedAt", \.stepStartedAt, "When the current step started (pauses and deadlines count from it)."),
        .optional("lastAnalysisTime", \.lastAnalysisTime, "When the metrics were last analysed."),
        .optional("effectiveWeight", \.effectiveWeight, "The weight the traffic really has (a replica ratio may not match canaryWeight exactly)."),
        .optional("message", \.message, "Where the run stands, or why it stopped."),
    ]
}

/// Progressive delivery for one Deployment: new versions go through steps and metric analysis.
public struct Canary: Resource, Hashable {
    public static let kind = ResourceKind.canary
    public static let fields: [Field<Canary>] = resourceFields
    public var metadata = ObjectMeta()
    public var spec = CanarySpec()
    public var status = CanaryStatus()

    public init() {}

    public static let columns = [
        PrinterColumn("Stable", "string", ".status.stableVersion", "Stable version"),
        PrinterColumn("Canary", "string", ".status.canaryVersion", "Canary version"),
        PrinterColumn("Weight", "integer", ".status.canaryWeight", "Percent of traffic to the canary"),
        PrinterColumn("Phase", "string", ".status.phase", "Canary phase", priority: 1),
    ]
}
