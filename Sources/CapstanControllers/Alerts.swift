import CapstanModel
import CapstanRuntime
import Foundation

/// Why a query gave no result: `InvalidQuery` (the expression is wrong, or names a metric
/// nothing reports) or `QueryFailed` (the source did not answer). Either is `Stalled` and
/// changes no alert's state.
public struct MetricQueryError: Error, Sendable, Hashable, CustomStringConvertible {
    public var reason: String
    public var message: String

    public static let invalidQuery = "InvalidQuery"
    public static let queryFailed = "QueryFailed"

    public init(_ reason: String, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { message }
}

/// Where an AlertRule's (and a Canary's) numbers come from.
public protocol MetricsPlatform: Sendable {
    /// The series of a builtin metric in `namespace` (and the host's) that the selector matches.
    func builtin(_ selector: MetricSelector, namespace: String) async throws(MetricQueryError) -> [AlertSample]
    /// A PromQL instant query: one sample per series of a vector (a scalar is one without labels);
    /// no answer within `timeout` is `QueryFailed`.
    func prometheus(address: String, query: String, timeout: Duration) async throws(MetricQueryError) -> [AlertSample]
    /// A builtin metric of one track of a Deployment (a Canary's analysis): one sample per
    /// series (probe_duration_seconds: one per quantile); none when it was not observed.
    func builtin(_ selector: MetricSelector, deployment: ObjectKey, track: Track) async throws(MetricQueryError) -> [AlertSample]
}

/// A receiver with its secrets resolved: what a `Notifier` sends to. Never logged or written
/// to a status (its `description` says what it is without a URL's path or a password).
public enum ReceiverTarget: Sendable, Hashable, CustomStringConvertible {
    public struct Email: Sendable, Hashable {
        public var to: [String]
        public var from: String
        public var host: String
        public var port: Int
        public var user: String?
        public var password: String?
        public var startTLS: Bool
        public var caPEM: String?
        public var insecureSkipVerify: Bool

        public init(to: [String], from: String, host: String, port: Int, user: String? = nil, password: String? = nil, startTLS: Bool = true,
                    caPEM: String? = nil, insecureSkipVerify: Bool = false) {
            self.to = to
            self.from = from
            self.host = host
            self.port = port
            self.user = user
            self.password = password
            self.startTLS = startTLS
            self.caPEM = caPEM
            self.insecureSkipVerify = insecureSkipVerify
        }
    }

    case webhook(url: String)
    case slack(url: String, channel: String?)
    case alertmanager(url: String)
    case email(Email)

    public var kind: String {
        switch self {
        case .webhook: return "webhook"
        case .slack: return "slack"
        case .alertmanager: return "alertmanager"
        case .email: return "email"
        }
    }

    public var description: String {
        switch self {
        case .webhook(let url), .slack(let url, _), .alertmanager(let url): return "\(kind) \(ReceiverTarget.host(of: url))"
        case .email(let email): return "email via \(email.host):\(email.port)"
        }
    }

    /// The host of a URL (a receiver's path may be its token).
    public static func host(of url: String) -> String {
        guard let components = URLComponents(string: url), let host = components.host else { return "(bad URL)" }
        return host + (components.port.map { ":\($0)" } ?? "")
    }
}

/// Why a delivery failed, in words that carry no secret.
public struct DeliveryError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}

/// Sends notices to receivers (the HTTP ones and SMTP).
public protocol Notifier: Sendable {
    /// Sends `notices` (one transition of one label set, or several re-posted) to `target`;
    /// returns when the receiver accepted them.
    func send(_ notices: [AlertNotice], to target: ReceiverTarget, receiver: String) async throws(DeliveryError)
}

/// The last five minutes of a workload's health checks, per Deployment and track: what the
/// builtin `probe_*` metrics are made of (recorded by the local supervisor's prober). Checks
/// before an instance's first success are marked `starting`: an AlertRule counts them (an app
/// that never comes up fails), a Canary's analysis does not (a canary starting is not failing).
public final class ProbeHistory: Sendable {
    struct Probe {
        var time: ContinuousClock.Instant
        var track: Track
        var starting: Bool
        var success: Bool
        var seconds: Double
    }

    public static let window: Duration = .seconds(300)
    private let probes = Synchronized<[ObjectKey: [Probe]]>([:])

    public init() {}

    public func record(_ owner: ObjectKey, track: Track = .stable, starting: Bool = false, success: Bool, duration: Duration) {
        let now = ContinuousClock.now
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        probes.update { probes in
            var list = probes[owner, default: []]
            list.append(Probe(time: now, track: track, starting: starting, success: success, seconds: seconds))
            if let first = list.first, now - first.time > Self.window {
                list.removeAll { now - $0.time > Self.window }
            }
            probes[owner] = list
        }
    }

    public func forget(_ owner: ObjectKey) {
        probes.update { $0[owner] = nil }
    }

    /// The last result, the failure ratio over the window and duration quantiles, of every
    /// track or of one (without the checks of starting instances, for a Canary's analysis);
    /// nil when none was probed within the window.
    public func summary(of owner: ObjectKey, track: Track? = nil) -> (last: Bool, failureRatio: Double, quantiles: [(String, Double)])? {
        let now = ContinuousClock.now
        let recent = probes.value[owner, default: []].filter { now - $0.time <= Self.window && (track == nil || ($0.track == track && !$0.starting)) }
        guard let last = recent.last else { return nil }
        let failures = recent.filter { !$0.success }.count
        let sorted = recent.map(\.seconds).sorted()
        func quantile(_ q: Double) -> Double { sorted[min(sorted.count - 1, max(0, Int((q * Double(sorted.count)).rounded(.up)) - 1))] }
        return (last.success, Double(failures) / Double(recent.count), [("0.5", quantile(0.5)), ("0.95", quantile(0.95)), ("0.99", quantile(0.99))])
    }
}

/// The builtin metrics, from what Capstan itself observes: per Deployment (labels `namespace`,
/// `deployment`, `application`) from its tracks' counts and, where the platform probes them
/// (locally), its health checks; the host's from `host`. The same series are exported on
/// `/metrics` with the prefix `capstan_`.
public struct BuiltinMetricsSource: Sendable {
    let cache: ObjectCache
    let workload: any WorkloadPlatform
    let probes: ProbeHistory?
    let host: @Sendable (_ paths: [String]) -> [AlertSampleNamed]

    /// Each Deployment's series as last observed, and when: rules evaluated within `fresh` of
    /// it share it (a thousand rules a second on a few Deployments read their tracks a few
    /// times a second, not a thousand).
    let observed = Synchronized<[ObjectKey: (at: ContinuousClock.Instant, samples: [AlertSampleNamed])]>([:])
    let fresh: Duration

    public init(cache: ObjectCache, workload: any WorkloadPlatform, probes: ProbeHistory?, host: @escaping @Sendable ([String]) -> [AlertSampleNamed],
                fresh: Duration = .milliseconds(250)) {
        self.cache = cache
        self.workload = workload
        self.probes = probes
        self.host = host
        self.fresh = fresh
    }

    static let probeMetrics: Set<String> = ["probe_success", "probe_failure_ratio", "probe_duration_seconds"]
    static let hostMetrics: Set<String> = ["host_cpu_ratio", "host_memory_ratio", "host_disk_ratio"]

    /// The labels every Deployment's series has (a selector on them picks Deployments before
    /// anything about them is observed).
    public static let deploymentLabels: Set<String> = ["namespace", "deployment", "application"]

    /// Every series of `names` in `namespace` (nil: all namespaces) of the Deployments whose
    /// labels `keep` accepts; `paths` are disk paths a selector asks for beside the mounted
    /// filesystems. `remember`: whether what is observed is kept for rules evaluated within
    /// `fresh` (a scrape of `/metrics` reads every Deployment, seconds apart: keeping its
    /// observations would hold a copy of every series between scrapes for nothing).
    public func series(_ names: Set<String>, namespace: String?, paths: [String] = [],
                       keep: ([String: String]) -> Bool = { _ in true }, remember: Bool = true) async -> [AlertSampleNamed] {
        var out: [AlertSampleNamed] = []
        if !names.isDisjoint(with: Self.hostMetrics) {
            out += host(paths).filter { names.contains($0.name) }
        }
        let workloadNames = names.subtracting(Self.hostMetrics)
        guard !workloadNames.isEmpty else { return out }
        let now = ContinuousClock.now
        for stored in cache.objects(kind: .deployment) where namespace == nil || stored.key.namespace == namespace {
            guard case .deployment(let deployment) = stored.resource else { continue }
            let labels = ["namespace": stored.key.namespace, "deployment": stored.key.name, "application": deployment.spec.application]
            guard keep(labels) else { continue }
            let samples: [AlertSampleNamed]
            if let last = observed.value[stored.key], now - last.at < fresh, last.samples.first?.labels["application"] == deployment.spec.application {
                samples = last.samples
            } else {
                samples = await observe(stored.key, deployment: deployment, labels: labels)
                if remember { observed.update { $0[stored.key] = (now, samples) } }
            }
            out += samples.filter { workloadNames.contains($0.name) }
        }
        // Observations past `fresh` serve nobody (and Deployments gone since are forgotten).
        let fresh = self.fresh
        observed.update { $0 = $0.filter { now - $0.value.at < fresh } }
        return out
    }

    /// The series of `names` of one track of a Deployment, observed now.
    public func series(_ names: Set<String>, of key: ObjectKey, track: Track) async -> [AlertSampleNamed] {
        guard case .deployment(let deployment)? = cache.get(key)?.resource else { return [] }
        let labels = ["namespace": key.namespace, "deployment": key.name, "application": deployment.spec.application, "track": track.rawValue]
        var out: [AlertSampleNamed] = []
        func add(_ name: String, _ value: Double, _ extra: [String: String] = [:]) {
            if names.contains(name) { out.append(AlertSampleNamed(name: name, labels: labels.merging(extra) { a, _ in a }, value: value)) }
        }
        if let state = await workload.tracks(of: key)[track] {
            add("up", state.ready > 0 ? 1 : 0)
            add("ready_replicas", Double(state.ready))
            add("desired_replicas", Double(state.replicas))
            if let restarts = state.restarts { add("restarts_total", Double(restarts)) }
        }
        if let summary = probes?.summary(of: key, track: track) {
            add("probe_success", summary.last ? 1 : 0)
            add("probe_failure_ratio", summary.failureRatio)
            for (quantile, seconds) in summary.quantiles { add("probe_duration_seconds", seconds, ["quantile": quantile]) }
        }
        return out
    }

    /// Every series of one Deployment, observed now.
    private func observe(_ key: ObjectKey, deployment: Deployment, labels: [String: String]) async -> [AlertSampleNamed] {
        var out: [AlertSampleNamed] = []
        func add(_ name: String, _ value: Double, _ extra: [String: String] = [:]) {
            out.append(AlertSampleNamed(name: name, labels: labels.merging(extra) { a, _ in a }, value: value))
        }
        let tracks = await workload.tracks(of: key)
        let ready = tracks.values.reduce(0) { $0 + $1.ready }
        add("up", ready > 0 ? 1 : 0)
        add("ready_replicas", Double(ready))
        add("desired_replicas", Double(deployment.spec.replicas))
        let restarts = tracks.values.compactMap(\.restarts)
        if !restarts.isEmpty { add("restarts_total", Double(restarts.reduce(0, +))) }
        if let summary = probes?.summary(of: key) {
            add("probe_success", summary.last ? 1 : 0)
            add("probe_failure_ratio", summary.failureRatio)
            for (quantile, seconds) in summary.quantiles { add("probe_duration_seconds", seconds, ["quantile": quantile]) }
        }
        return out
    }

    /// The metric names this platform cannot observe, with why.
    public func unobserved(_ name: String) -> String? {
        if probes == nil, Self.probeMetrics.contains(name) {
            return "\(name) is not observed on this platform (Capstan probes instances it supervises; on Kubernetes the kubelet probes pods): use source: prometheus"
        }
        return nil
    }
}

/// A sample with its metric name (what `/metrics` exports).
public struct AlertSampleNamed: Sendable, Hashable {
    public var name: String
    public var labels: [String: String]
    public var value: Double

    public init(name: String, labels: [String: String], value: Double) {
        self.name = name
        self.labels = labels
        self.value = value
    }

    /// The text exposition format, one line per sample, with `prefix` on each name.
    /// Sorted by name, then labels; each sample's line is written once (sorting by a
    /// dictionary's description made two strings per comparison: at 2,000 Deployments, ~150,000
    /// for one scrape).
    public static func exposition(_ samples: [AlertSampleNamed], prefix: String = "capstan_") -> String {
        let lines = samples.map { sample -> (name: String, line: String) in
            let labels = sample.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\"\(escape($0.value))\"" }.joined(separator: ",")
            return (sample.name, "\(prefix)\(sample.name)\(labels.isEmpty ? "" : "{\(labels)}") \(format(sample.value))\n")
        }.sorted { $0.name != $1.name ? $0.name < $1.name : $0.line < $1.line }
        var out = ""
        out.reserveCapacity(lines.reduce(0) { $0 + $1.line.utf8.count } + 64 * Set(lines.map(\.name)).count)
        var typed = Set<String>()
        for (name, line) in lines {
            if typed.insert(name).inserted {
                out += "# TYPE \(prefix)\(name) \(name.hasSuffix("_total") ? "counter" : "gauge")\n"
            }
            out += line
        }
        return out
    }

    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }

    static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        return value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }
}
