import Prometheus

/// The daemon's Prometheus metrics (names follow controller-runtime's where it has one, with
/// the `capstan_` prefix), rendered in the text exposition format for `/metrics`.
public final class RuntimeMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()

    public init() {}

    /// Seconds buckets for reconcile durations: 1 ms to 60 s.
    static let buckets: [Duration] = [.milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(50), .milliseconds(100),
                                      .milliseconds(500), .seconds(1), .seconds(5), .seconds(10), .seconds(60)]

    /// Records one reconcile's outcome and duration.
    public func reconciled(kind: String, outcome: ReconcileOutcome, duration: Duration) {
        let result: String
        switch outcome {
        case .success: result = "success"
        case .requeueAfter: result = "requeue_after"
        case .error: result = "error"
        case .timedOut: result = "timeout"
        }
        registry.makeCounter(descriptor: .init(namespace: "capstan", metricName: "reconcile", unitName: "total", helpText: "Reconciles by kind and result."),
                             labels: [("kind", kind), ("result", result)]).increment()
        if result == "error" || result == "timeout" {
            registry.makeCounter(descriptor: .init(namespace: "capstan", metricName: "reconcile_errors", unitName: "total", helpText: "Reconciles that failed or timed out."),
                                 labels: [("kind", kind)]).increment()
        }
        registry.makeDurationHistogram(descriptor: .init(namespace: "capstan", metricName: "reconcile_duration", unitName: "seconds", helpText: "Time spent in reconciles."), labels: [("kind", kind)], buckets: Self.buckets).recordNanoseconds(duration.nanosecondsClamped)
    }

    /// Seconds buckets for the time keys wait in a queue: 100 µs to 60 s.
    static let waitBuckets: [Duration] = [.microseconds(100), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
                                          .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
                                          .milliseconds(500), .seconds(1), .seconds(5), .seconds(10), .seconds(60)]

    /// Records how long a key waited in a queue before a worker took it (from the change that
    /// queued it to the reconcile's start).
    public func queued(kind: String, waited: Duration) {
        registry.makeDurationHistogram(descriptor: .init(namespace: "capstan", metricName: "workqueue_queue_duration", unitName: "seconds",
                                                         helpText: "Time a key waits in the work queue before a reconcile starts."),
                                       labels: [("kind", kind)], buckets: Self.waitBuckets).recordNanoseconds(waited.nanosecondsClamped)
    }

    /// Publishes a work queue's state: depth now, adds and retries so far (cumulative).
    public func queue(kind: String, depth: Int, adds: Int, retries: Int) {
        registry.makeGauge(descriptor: .init(namespace: "capstan", metricName: "workqueue_depth", unitName: "", helpText: "Keys waiting in the work queue."), labels: [("kind", kind)]).set(Double(depth))
        setCounter("capstan_workqueue_adds_total", labels: [("kind", kind)], help: "Keys added to the work queue.", to: adds)
        setCounter("capstan_workqueue_retries_total", labels: [("kind", kind)], help: "Rate-limited re-adds after failures.", to: retries)
    }

    /// Publishes how many objects of a kind are ready and not.
    public func resources(kind: String, ready: Int, notReady: Int) {
        registry.makeGauge(descriptor: .init(namespace: "capstan", metricName: "resources", unitName: "", helpText: "Objects by kind and readiness."), labels: [("kind", kind), ("ready", "true")]).set(Double(ready))
        registry.makeGauge(descriptor: .init(namespace: "capstan", metricName: "resources", unitName: "", helpText: "Objects by kind and readiness."), labels: [("kind", kind), ("ready", "false")]).set(Double(notReady))
    }

    /// Counts a source read that met problems.
    public func sourceError(source: String) {
        registry.makeCounter(descriptor: .init(namespace: "capstan", metricName: "source_errors", unitName: "total", helpText: "Source reads with problems."), labels: [("source", source)]).increment()
    }

    /// Counts a fetch of a git source, by what asked for it (`interval`, `webhook`) and result
    /// (`moved`, `unchanged`, `failed`).
    public func sourceFetch(trigger: String, result: String) {
        registry.makeCounter(descriptor: .init(namespace: "capstan", metricName: "source_fetches", unitName: "total", helpText: "Fetches of the git source, by trigger and result."),
                             labels: [("trigger", trigger), ("result", result)]).increment()
    }

    /// Counts a webhook delivery, by outcome (`fetch`, `ignored`, `refused`).
    public func webhookDelivery(outcome: String) {
        registry.makeCounter(descriptor: .init(namespace: "capstan", metricName: "webhook_deliveries", unitName: "total", helpText: "Git webhook deliveries, by outcome."),
                             labels: [("outcome", outcome)]).increment()
    }

    /// Counts a backup run that ended, by result (`Succeeded`, or the reason it failed).
    public func backupFinished(result: String) {
        registry.makeCounter(descriptor: .init(namespace: "capstan", metricName: "backups", unitName: "total", helpText: "Backup runs that ended, by result."),
                             labels: [("result", result)]).increment()
    }

    /// Counts a notification's delivery attempt, by receiver kind and result (`delivered`, `failed`).
    public func notification(receiver: String, result: String) {
        registry.makeCounter(descriptor: .init(namespace: "capstan", metricName: "notifications", unitName: "total", helpText: "Alert notifications sent, by receiver and result."),
                             labels: [("receiver", receiver), ("result", result)]).increment()
    }

    /// Counts an instance restarted by the supervisor.
    public func instanceRestarted() {
        registry.makeCounter(descriptor: .init(namespace: "capstan", metricName: "instance_restarts", unitName: "total", helpText: "Instances restarted after they exited.")).increment()
    }

    /// 1 while this daemon leads (every daemon leads until leader election arrives).
    public func leader(_ isLeader: Bool) {
        registry.makeGauge(descriptor: .init(namespace: "capstan", metricName: "leader", unitName: "", helpText: "1 when this daemon is the leader.")).set(isLeader ? 1.0 : 0.0)
    }

    /// The text exposition format.
    public func render() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }

    private let totals = Synchronized<[String: Int]>([:])

    /// Moves a counter to a cumulative total kept elsewhere (counters only grow).
    private func setCounter(_ name: String, labels: [(String, String)], help: String, to total: Int) {
        let id = name + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
        let delta = totals.update { totals -> Int in
            let delta = max(0, total - totals[id, default: 0])
            totals[id] = max(total, totals[id, default: 0])
            return delta
        }
        let base = String(name.dropFirst("capstan_".count).dropLast("_total".count))
        let counter = registry.makeCounter(
            descriptor: .init(namespace: "capstan", metricName: base, unitName: "total", helpText: help), labels: labels)
        if delta > 0 { counter.increment(by: Int64(delta)) }
    }
}

extension Duration {
    var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
