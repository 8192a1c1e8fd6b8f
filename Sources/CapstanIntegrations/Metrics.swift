import AsyncHTTPClient
import CapstanControllers
import CapstanModel
import CapstanRuntime
import Foundation
import NIOCore
import NIOFoundationCompat

#if canImport(Glibc)
import Glibc
#endif

/// The metrics both platforms serve: builtin ones from Capstan's observations and the host's
/// `/proc`, and Prometheus instant queries.
public struct MetricsService: MetricsPlatform {
    let source: BuiltinMetricsSource
    let prometheus: PrometheusClient

    public init(source: BuiltinMetricsSource, prometheus: PrometheusClient = PrometheusClient()) {
        self.source = source
        self.prometheus = prometheus
    }

    public func builtin(_ selector: MetricSelector, namespace: String) async throws(MetricQueryError) -> [AlertSample] {
        if let problem = source.unobserved(selector.metric) { throw MetricQueryError(MetricQueryError.invalidQuery, problem) }
        let paths = selector.matchers.filter { $0.label == "path" && $0.op == .equal }.map(\.value)
        // Matchers on a Deployment's own labels pick the Deployments to observe.
        let picking = MetricSelector(metric: selector.metric, matchers: selector.matchers.filter { BuiltinMetricsSource.deploymentLabels.contains($0.label) })
        return await source.series([selector.metric], namespace: namespace, paths: paths, keep: { picking.matches($0) })
            .filter { selector.matches($0.labels) }
            .map { AlertSample(labels: $0.labels, value: $0.value) }
    }

    public func builtin(_ selector: MetricSelector, deployment: ObjectKey, track: Track) async throws(MetricQueryError) -> [AlertSample] {
        if let problem = source.unobserved(selector.metric) { throw MetricQueryError(MetricQueryError.invalidQuery, problem) }
        return await source.series([selector.metric], of: deployment, track: track)
            .filter { selector.matches($0.labels) }
            .map { AlertSample(labels: $0.labels, value: $0.value) }
    }

    public func prometheus(address: String, query: String, timeout: Duration) async throws(MetricQueryError) -> [AlertSample] {
        try await prometheus.query(address: address, query: query, timeout: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000))
    }

    /// Every builtin series, for `/metrics`.
    public func exposition() async -> String {
        AlertSampleNamed.exposition(await source.series(Set(BuiltinMetrics.names), namespace: nil, remember: false))
    }
}

/// Prometheus' HTTP API: `POST /api/v1/query` (an instant query). A bad expression is
/// `InvalidQuery` with Prometheus' own message; no answer, or an error while executing, is
/// `QueryFailed`.
public struct PrometheusClient: Sendable {
    let http: HTTPClient
    let timeout: TimeAmount

    public init(http: HTTPClient = IntegrationHTTP.client, timeout: TimeAmount = .seconds(10)) {
        self.http = http
        self.timeout = timeout
    }

    public func query(address: String, query: String, timeout: TimeAmount? = nil) async throws(MetricQueryError) -> [AlertSample] {
        let base = address.hasSuffix("/") ? String(address.dropLast()) : address
        var request = HTTPClientRequest(url: base + "/api/v1/query")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        request.body = .bytes(ByteBuffer(string: "query=" + Self.formEncode(query)))
        let status: UInt
        let body: ByteBuffer
        do {
            let response = try await http.execute(request, timeout: timeout ?? self.timeout)
            status = response.status.code
            body = try await response.body.collect(upTo: 32 << 20)
        } catch {
            throw MetricQueryError(MetricQueryError.queryFailed, "Prometheus at \(ReceiverTarget.host(of: address)) did not answer: \(AlertNotifier.describe(error))")
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any] else {
            throw MetricQueryError(MetricQueryError.queryFailed, "Prometheus at \(ReceiverTarget.host(of: address)) answered \(status) without a JSON body")
        }
        if object["status"] as? String != "success" {
            let type = object["errorType"] as? String ?? ""
            let message = "Prometheus: \(object["error"] as? String ?? "HTTP \(status)")"
            throw MetricQueryError(type == "bad_data" ? MetricQueryError.invalidQuery : MetricQueryError.queryFailed, message)
        }
        guard let data = object["data"] as? [String: Any], let type = data["resultType"] as? String else {
            throw MetricQueryError(MetricQueryError.queryFailed, "Prometheus answered without a result")
        }
        switch type {
        case "vector":
            return (data["result"] as? [[String: Any]] ?? []).compactMap { series in
                guard let pair = series["value"] as? [Any], pair.count == 2, let value = Self.number(pair[1]) else { return nil }
                return AlertSample(labels: series["metric"] as? [String: String] ?? [:], value: value)
            }
        case "scalar":
            guard let pair = data["result"] as? [Any], pair.count == 2, let value = Self.number(pair[1]) else { return [] }
            return [AlertSample(labels: [:], value: value)]
        default:
            throw MetricQueryError(MetricQueryError.invalidQuery, "the query gives a \(type), not an instant vector or a scalar (a range selector [5m] needs a function such as rate())")
        }
    }

    static func number(_ value: Any) -> Double? {
        guard let text = value as? String else { return nil }
        switch text {
        case "NaN": return .nan
        case "+Inf", "Inf": return .infinity
        case "-Inf": return -.infinity
        default: return Double(text)
        }
    }

    static func formEncode(_ text: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }
}

/// The host's CPU, memory and disk use, from `/proc` and `statvfs`.
public final class HostMetrics: Sendable {
    struct CPU: Sendable {
        var busy: Double
        var total: Double
        var ratio: Double
        var at: ContinuousClock.Instant
    }

    private let last = Synchronized<CPU?>(nil)
    /// The last reading of the CPU, memory and mounted disks, and when: rules evaluated within
    /// `fresh` of it share it instead of each reading `/proc` again.
    private let reading = Synchronized<(samples: [AlertSampleNamed], at: ContinuousClock.Instant)?>(nil)
    let root: String
    let fresh: Duration

    public init(root: String = "/proc", fresh: Duration = .milliseconds(500)) {
        self.root = root
        self.fresh = fresh
    }

    /// Filesystems shown as `host_disk_ratio` (others — proc, tmpfs, overlay layers — are not disks).
    static let diskTypes: Set<String> = ["ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "vfat", "exfat", "f2fs", "reiserfs", "jfs", "ntfs", "ntfs3", "fuseblk"]

    public func samples(paths: [String]) -> [AlertSampleNamed] {
        let now = ContinuousClock.now
        var out: [AlertSampleNamed]
        if let last = reading.value, now - last.at < fresh {
            out = last.samples
        } else {
            out = []
            if let cpu = cpuRatio() { out.append(AlertSampleNamed(name: "host_cpu_ratio", labels: [:], value: cpu)) }
            if let memory = memoryRatio() { out.append(AlertSampleNamed(name: "host_memory_ratio", labels: [:], value: memory)) }
            var seen = Set<String>()
            for path in mountPoints() where seen.insert(path).inserted {
                if let ratio = Self.diskRatio(path) { out.append(AlertSampleNamed(name: "host_disk_ratio", labels: ["path": path], value: ratio)) }
            }
            let samples = out
            reading.update { $0 = (samples, now) }
        }
        var seen = Set(out.compactMap { $0.name == "host_disk_ratio" ? $0.labels["path"] : nil })
        for path in paths where seen.insert(path).inserted {
            if let ratio = Self.diskRatio(path) { out.append(AlertSampleNamed(name: "host_disk_ratio", labels: ["path": path], value: ratio)) }
        }
        return out
    }

    /// Busy over total jiffies since the last reading (since boot at the first).
    func cpuRatio() -> Double? {
        guard let text = try? String(contentsOfFile: root + "/stat", encoding: .utf8), let line = text.split(separator: "\n").first, line.hasPrefix("cpu ") else { return nil }
        let fields = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard fields.count >= 4 else { return nil }
        let idle = fields[3] + (fields.count > 4 ? fields[4] : 0)
        let total = fields.prefix(8).reduce(0, +)
        let now = ContinuousClock.now
        return last.update { last -> Double in
            if let previous = last, now - previous.at < .milliseconds(500) { return previous.ratio }
            var ratio = total > 0 ? (total - idle) / total : 0
            if let previous = last, total > previous.total {
                ratio = ((total - idle) - previous.busy) / (total - previous.total)
            }
            ratio = min(1, max(0, ratio))
            last = CPU(busy: total - idle, total: total, ratio: ratio, at: now)
            return ratio
        }
    }

    func memoryRatio() -> Double? {
        guard let text = try? String(contentsOfFile: root + "/meminfo", encoding: .utf8) else { return nil }
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            if parts.count >= 2 { values[String(parts[0].dropLast())] = Double(parts[1]) }
        }
        guard let total = values["MemTotal"], total > 0, let available = values["MemAvailable"] else { return nil }
        return min(1, max(0, 1 - available / total))
    }

    func mountPoints() -> [String] {
        guard let text = try? String(contentsOfFile: root + "/mounts", encoding: .utf8) else { return ["/"] }
        var points: [String] = []
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count >= 3, Self.diskTypes.contains(String(parts[2])) else { continue }
            points.append(String(parts[1]).replacingOccurrences(of: "\\040", with: " "))
        }
        return points.isEmpty ? ["/"] : points
    }

    /// Used over usable blocks, as `df` shows it.
    static func diskRatio(_ path: String) -> Double? {
        var stat = statvfs()
        guard statvfs(path, &stat) == 0 else { return nil }
        let used = Double(stat.f_blocks) - Double(stat.f_bfree)
        let usable = used + Double(stat.f_bavail)
        return usable > 0 ? used / usable : 0
    }
}
