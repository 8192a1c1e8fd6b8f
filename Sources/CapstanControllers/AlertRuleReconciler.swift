import CapstanModel
import CapstanRuntime
import Foundation

/// Reconciles AlertRules on every platform: evaluates the query on a timer (and exactly when a
/// pending alert's `for` elapses), keeps each label set's state in the status, and tells the
/// receivers through a notification log in the status — each notification is written there
/// **before** it is sent and its answer after, so a daemon killed at any instant (or a leader
/// that changes) resends only what it may have sent without recording the answer, with the
/// same key. Failed deliveries are retried with backoff.
public struct AlertRuleReconciler: Reconciler {
    public typealias Key = ObjectKey

    let store: any ObjectStore
    let events: any EventRecorder
    let metrics: any MetricsPlatform
    let notifier: any Notifier
    let secrets: (any SecretPlatform)?
    let now: @Sendable () -> Date
    let memory: AlertMemory
    /// Enqueues a rule now: a delivery that answers after its reconcile stopped waiting.
    let wake: @Sendable (ObjectKey) async -> Void
    /// Counts each delivery attempt by receiver kind and result (`capstan_notifications_total`).
    let counted: @Sendable (_ receiver: String, _ result: String) -> Void

    /// Notifications shown in the status besides those still to be delivered.
    public static let history = 20
    /// Undelivered notifications kept at most (the oldest are abandoned beyond it).
    static let outstandingCap = 100
    /// A notification not delivered this long after it was written is abandoned.
    public static let abandonAfter: TimeInterval = 86_400
    /// While nothing else changes, the evaluation's time and value are written this often.
    public static let quietWrite: TimeInterval = 60
    /// Alertmanager is told again about what still fires this often (Prometheus' resend delay).
    public static let resendDelay: TimeInterval = 60
    /// How long a reconcile waits for its deliveries' answers (a receiver on the same network
    /// answers well within it); a slower one is written down by a later reconcile the answer
    /// wakes, so a receiver that is down or slow holds neither this rule's evaluations nor,
    /// for long, a worker other rules need.
    public static let deliveryWait: Duration = .milliseconds(200)
    /// Workers of the AlertRule controller: a reconcile may wait up to `deliveryWait` on
    /// Prometheus or a receiver, and a few rules' slow servers must not delay the evaluation
    /// of the others (Prometheus evaluates its rule groups side by side).
    public static let workers = 8

    public init(store: any ObjectStore, events: any EventRecorder, metrics: any MetricsPlatform, notifier: any Notifier, secrets: (any SecretPlatform)?,
                memory: AlertMemory = AlertMemory(), now: @escaping @Sendable () -> Date = Date.init,
                wake: @escaping @Sendable (ObjectKey) async -> Void = { _ in },
                counted: @escaping @Sendable (String, String) -> Void = { _, _ in }) {
        self.store = store
        self.events = events
        self.metrics = metrics
        self.notifier = notifier
        self.secrets = secrets
        self.memory = memory
        self.now = now
        self.wake = wake
        self.counted = counted
    }

    struct Step {
        let key: ObjectKey
        let stored: StoredObject
        let rule: AlertRule
        let time: Date
        var status: AlertRuleStatus
        var events: [WorkloadEvent] = []
        var queryError: MetricQueryError?
        /// Something besides the evaluation's time and values changed (a write is due).
        var changed = false

        var spec: AlertRuleSpec { rule.spec }

        var acknowledged: Bool { status.acknowledgedUntil.map { $0.date > time } ?? false }

        mutating func event(_ type: EventType, _ reason: String, _ message: String) {
            events.append(WorkloadEvent(type, reason, message))
        }
    }

    public func reconcile(_ key: ObjectKey) async throws -> ReconcileResult {
        let stored = try await store.object(key)
        guard let stored, case .alertRule(let rule) = stored.resource, rule.metadata.deletionTimestamp == nil else {
            memory.forget(key)
            return .done
        }
        // Microseconds, as the status keeps them: a key made now reads back the same.
        let time = Self.micro(now())
        let remembered = memory.status(of: key, stored: rule.status)
        var step = Step(key: key, stored: stored, rule: rule, time: time, status: remembered)
        await answerRequests(&step)
        record(memory.takeAnswers(key), &step)
        if let outcome = await queryOutcome(step) { evaluate(outcome, &step) }
        notify(&step)
        expire(&step)
        let sending = memory.inFlight(key)
        let due = step.status.notifications.indices.filter { index in
            let record = step.status.notifications[index]
            return record.outstanding && (record.nextAttempt?.date ?? .distantPast) <= step.time && !sending.contains(Self.id(of: record))
        }
        settle(&step)
        if !due.isEmpty || step.changed || step.status != rule.status && quietWriteDue(step) {
            // The log is written before anything in it is sent.
            try await write(&step)
        }
        if !due.isEmpty {
            await deliver(due, &step)
            settle(&step)
            try await write(&step)
        }
        await repost(&step)
        memory.remember(key, computed: step.status)
        for event in step.events {
            await events.record(event.type, reason: event.reason, message: event.message, about: key)
        }
        return .requeue(after: .milliseconds(Int64(max(1, nextWake(step).timeIntervalSince(now()) * 1000).rounded(.up))))
    }

    /// A time as the status keeps it (microseconds).
    static func micro(_ date: Date) -> Date { Timestamp(rfc3339: Timestamp(date).description)?.date ?? date }

    private func quietWriteDue(_ step: Step) -> Bool {
        memory.lastWrite(of: step.key).map { step.time.timeIntervalSince($0) >= Self.quietWrite } ?? true
    }

    private func write(_ step: inout Step) async throws {
        step.status.lastReconcileTime = Timestamp(step.time)
        _ = try await store.writeStatus(step.key, step.status.encode())
        memory.wrote(step.key, step.status, at: step.time)
        step.changed = false
    }

    // MARK: - Requests

    /// `capstan ack alertrule/NAME --for D` (or `capstan.dev/acknowledge: D`): notifications
    /// and escalation are silenced until then or until the alert resolves; `--for 0` ends it.
    private func answerRequests(_ step: inout Step) async {
        for request in await store.requests(for: step.key) where request.type == ObjectRequest.acknowledge {
            guard await store.take(request, of: step.key) else { continue }
            let text = request.value.isEmpty ? "1h" : request.value
            guard let duration = try? KubeDuration.parse(text), duration.seconds >= 0 else {
                step.event(.warning, "AcknowledgeRefused", "acknowledge: \"\(text)\" is not a duration such as 1h or 30m")
                continue
            }
            step.changed = true
            if duration.seconds == 0 {
                step.status.acknowledgedUntil = nil
                step.event(.normal, "AcknowledgementEnded", "acknowledgement withdrawn: notifications and escalation resume")
            } else {
                step.status.acknowledgedUntil = Timestamp(step.time.addingTimeInterval(duration.seconds))
                step.event(.normal, "Acknowledged", "acknowledged for \(duration): notifications and escalation are silenced until \(step.status.acknowledgedUntil!) or until the alert resolves")
            }
        }
    }

    // MARK: - Evaluation

    private func evaluationDue(_ step: Step) -> Bool {
        guard let last = step.status.lastEvaluation?.date, step.status.observedGeneration == step.stored.generation else { return true }
        if step.time >= last.addingTimeInterval(step.spec.interval.seconds - 0.001) { return true }
        return step.status.alerts.contains { $0.state == .pending && step.time >= $0.activeSince.date.addingTimeInterval(step.spec.for.seconds) }
    }

    private func query(_ spec: AlertRuleSpec, namespace: String) async throws(MetricQueryError) -> [AlertSample] {
        switch spec.source {
        case .prometheus:
            // As Prometheus bounds a rule's evaluation by its interval (here 2 to 10 s): a
            // server that does not answer holds this rule's next evaluation no longer.
            let seconds = min(10, max(2, spec.interval.seconds))
            return try await metrics.prometheus(address: spec.address ?? "", query: spec.query, timeout: .milliseconds(Int64(seconds * 1000)))
        default:
            let selector: MetricSelector
            do {
                selector = try memory.selector(spec.query)
            } catch {
                throw MetricQueryError(MetricQueryError.invalidQuery, error.description)
            }
            return try await metrics.builtin(selector, namespace: namespace)
        }
    }

    /// The query's answer when an evaluation is due, or when a slow query answered since: the
    /// builtin metrics at once; a Prometheus query in a task of its own, waited for up to
    /// `deliveryWait` — a slower answer wakes the rule and is evaluated by that reconcile, so
    /// a Prometheus that does not answer holds a worker no longer than that, not for the
    /// query's timeout, and other rules are evaluated meanwhile.
    private func queryOutcome(_ step: Step) async -> Result<[AlertSample], MetricQueryError>? {
        let generation = step.stored.generation
        if let answered = memory.takeQuery(step.key, generation: generation) { return answered }
        guard !memory.querying(step.key), evaluationDue(step) else { return nil }
        let (spec, namespace) = (step.spec, step.key.namespace)
        guard spec.source == .prometheus else {
            do { return .success(try await query(spec, namespace: namespace)) } catch { return .failure(error) }
        }
        let (memory, wake, key) = (self.memory, self.wake, step.key)
        let (answered, signal) = AsyncStream<Void>.makeStream()
        memory.startQuery(key, generation: generation)
        Task {
            let result: Result<[AlertSample], MetricQueryError>
            do throws(MetricQueryError) { result = .success(try await query(spec, namespace: namespace)) } catch { result = .failure(error) }
            if memory.finishQuery(key, result) { await wake(key) }
            signal.yield()
            signal.finish()
        }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { for await _ in answered { break } }
            group.addTask { try? await Task.sleep(for: Self.deliveryWait) }
            await group.next()
            group.cancelAll()
        }
        return memory.takeQuery(key, generation: generation)
    }

    private func evaluate(_ outcome: Result<[AlertSample], MetricQueryError>, _ step: inout Step) {
        let samples: [AlertSample]
        switch outcome {
        case .success(let answer):
            samples = answer
        case .failure(let error):
            // A query that fails changes no alert: what fires keeps firing.
            step.queryError = error
            step.status.lastEvaluation = Timestamp(step.time)
            return
        }
        var previous: [String: AlertSeries] = [:]
        var kept: [String: AlertSeriesStatus] = [:]
        for series in step.status.alerts {
            kept[series.fingerprint] = series
            previous[series.fingerprint] = AlertSeries(labels: series.labels.values, state: series.state, activeSince: series.activeSince.date,
                                                       firedAt: series.firedAt?.date, resolvedAt: series.resolvedAt?.date,
                                                       lastTrue: series.lastTrue.date, value: series.value)
        }
        let (next, transitions) = AlertEvaluator.evaluate(previous: previous, samples: samples, condition: step.spec.condition,
                                                          for: step.spec.for.seconds, keepFiringFor: step.spec.keepFiringFor.seconds, now: step.time)
        var alerts: [AlertSeriesStatus] = []
        for (fingerprint, series) in next.sorted(by: { $0.key < $1.key }) {
            var status = kept[fingerprint] ?? AlertSeriesStatus()
            if status.state != series.state || status.fingerprint != fingerprint { step.changed = true }
            if series.state == .pending || series.activeSince != status.activeSince.date && kept[fingerprint]?.state == .resolved {
                status.lastNotified = nil
                status.escalated = 0
            }
            status.fingerprint = fingerprint
            status.labels = StringMap(series.labels)
            status.state = series.state
            status.activeSince = Timestamp(series.activeSince)
            status.firedAt = series.firedAt.map(Timestamp.init)
            status.resolvedAt = series.resolvedAt.map(Timestamp.init)
            status.lastTrue = Timestamp(series.lastTrue)
            status.value = series.value
            alerts.append(status)
        }
        if alerts.count != step.status.alerts.count { step.changed = true }
        for transition in transitions {
            step.changed = true
            let labels = transition.labels.isEmpty ? "" : " " + transition.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\"\($0.value)\"" }.joined(separator: ",")
            switch transition.to {
            case .firing:
                step.event(.warning, "AlertFiring", "\(step.spec.query) \(step.spec.condition.op.rawValue) \(AlertSampleNamed.format(step.spec.condition.threshold)): value \(AlertSampleNamed.format(transition.value))\(labels)")
            case .resolved:
                step.event(.normal, "AlertResolved", "resolved\(labels) (last value \(AlertSampleNamed.format(transition.value)))")
                // Told about its end, if anyone was told it fired.
                if step.spec.sendResolved, let series = kept[transition.fingerprint], series.lastNotified != nil {
                    var resolved = alerts.first { $0.fingerprint == transition.fingerprint } ?? series
                    resolved.resolvedAt = Timestamp(step.time)
                    log(resolved, NotificationRecord.resolved, receivers: receivers(step.spec, escalated: series.escalated),
                        key: "\(transition.fingerprint)@\(Timestamp(step.time))", &step)
                }
            default:
                break
            }
        }
        step.status.alerts = alerts
        step.status.lastEvaluation = Timestamp(step.time)
        let shown = alerts.first { $0.state == .firing } ?? alerts.first { $0.state == .pending }
        let hadValue = step.status.lastValue != nil
        step.status.lastValue = shown?.value ?? samples.min { AlertEvaluator.fingerprint($0.labels) < AlertEvaluator.fingerprint($1.labels) }?.value
        if step.status.lastValue?.isFinite == false { step.status.lastValue = nil }
        // A query that starts or stops returning anything is news; a value that moves is not.
        if hadValue != (step.status.lastValue != nil) { step.changed = true }
        let state = AlertEvaluator.summary(next)
        if state != step.status.state { step.changed = true }
        step.status.state = state
        step.status.activeSince = alerts.filter { $0.state == state && state != .inactive }.map(\.activeSince).min()
        if state != .firing && state != .pending, step.status.acknowledgedUntil != nil {
            step.status.acknowledgedUntil = nil
            step.event(.normal, "AcknowledgementEnded", "the alert resolved: its acknowledgement ends")
        }
    }

    // MARK: - Notifications

    /// The receivers told about a series: `notify`, and the escalation steps taken.
    private func receivers(_ spec: AlertRuleSpec, escalated: Int) -> [String] {
        var names = spec.notify.enumerated().map { "notify[\($0.offset)]/\(Self.kind(of: $0.element))" }
        for (index, step) in spec.escalation.prefix(escalated).enumerated() {
            names += step.notify.enumerated().map { "escalation[\(index)].notify[\($0.offset)]/\(Self.kind(of: $0.element))" }
        }
        return names
    }

    static func kind(of receiver: Receiver) -> String {
        if receiver.webhook != nil { return "webhook" }
        if receiver.slack != nil { return "slack" }
        if receiver.email != nil { return "email" }
        return "alertmanager"
    }

    /// The receiver a log entry names, in the current spec.
    static func receiver(named name: String, in spec: AlertRuleSpec) -> Receiver? {
        let scanner = name.split(separator: "/").first.map(String.init) ?? ""
        func index(_ part: Substring, _ prefix: String) -> Int? {
            guard part.hasPrefix(prefix + "["), part.hasSuffix("]") else { return nil }
            return Int(part.dropFirst(prefix.count + 1).dropLast())
        }
        let parts = scanner.split(separator: ".")
        if parts.count == 1, let i = index(parts[0], "notify"), spec.notify.indices.contains(i) {
            return spec.notify[i]
        }
        if parts.count == 2, let e = index(parts[0], "escalation"), spec.escalation.indices.contains(e), let i = index(parts[1], "notify"),
           spec.escalation[e].notify.indices.contains(i) {
            return spec.escalation[e].notify[i]
        }
        return nil
    }

    private func log(_ series: AlertSeriesStatus, _ transition: String, receivers: [String], key: String, _ step: inout Step) {
        for receiver in receivers {
            var record = NotificationRecord()
            record.time = Timestamp(step.time)
            record.receiver = receiver
            record.transition = transition
            record.key = key
            record.labels = series.labels
            record.value = series.value
            record.startsAt = series.firedAt ?? series.activeSince
            record.endsAt = transition == NotificationRecord.resolved ? (series.resolvedAt ?? Timestamp(step.time)) : nil
            step.status.notifications.append(record)
            step.changed = true
        }
    }

    /// What fires and was not told yet (or not for `repeatInterval`), and the escalation steps
    /// now due — none while acknowledged.
    private func notify(_ step: inout Step) {
        guard !step.acknowledged else { return }
        for index in step.status.alerts.indices where step.status.alerts[index].state == .firing {
            var series = step.status.alerts[index]
            let firedAt = series.firedAt ?? series.activeSince
            let firingKey = "\(series.fingerprint)@\(firedAt)"
            if series.lastNotified == nil {
                log(series, NotificationRecord.firing, receivers: receivers(step.spec, escalated: series.escalated), key: firingKey, &step)
                series.lastNotified = Timestamp(step.time)
            } else if let last = series.lastNotified, step.time >= last.date.addingTimeInterval(step.spec.repeatInterval.seconds) {
                log(series, NotificationRecord.repeated, receivers: receivers(step.spec, escalated: series.escalated),
                    key: "\(series.fingerprint)@\(Timestamp(step.time))", &step)
                series.lastNotified = Timestamp(step.time)
            }
            while series.escalated < step.spec.escalation.count,
                  step.time >= firedAt.date.addingTimeInterval(step.spec.escalation[series.escalated].after.seconds) {
                let level = series.escalated
                let names = step.spec.escalation[level].notify.enumerated().map { "escalation[\(level)].notify[\($0.offset)]/\(Self.kind(of: $0.element))" }
                log(series, NotificationRecord.escalated, receivers: names, key: firingKey, &step)
                step.event(.warning, "AlertEscalated", "not acknowledged \(step.spec.escalation[level].after) after firing: escalated to \(names.joined(separator: ", "))")
                series.escalated += 1
            }
            if series != step.status.alerts[index] { step.changed = true }
            step.status.alerts[index] = series
        }
    }

    /// Ends acknowledgements that ran out; abandons what could not be delivered in a day (or
    /// beyond the cap); keeps the last `history` records besides those still to be sent.
    private func expire(_ step: inout Step) {
        if let until = step.status.acknowledgedUntil, until.date <= step.time {
            step.status.acknowledgedUntil = nil
            step.changed = true
            step.event(.normal, "AcknowledgementEnded", "the acknowledgement expired: notifications and escalation resume")
        }
        var outstanding = 0
        for index in step.status.notifications.indices.reversed() where step.status.notifications[index].outstanding {
            outstanding += 1
            let record = step.status.notifications[index]
            let tooOld = step.time.timeIntervalSince(record.time.date) > Self.abandonAfter
            guard tooOld || outstanding > Self.outstandingCap else { continue }
            step.status.notifications[index].abandoned = true
            step.status.notifications[index].nextAttempt = nil
            step.changed = true
            step.event(.warning, "NotificationAbandoned", "\(record.transition) notification \(record.key) to \(record.receiver) given up after \(record.attempts) attempts: \(record.error ?? "not delivered")")
        }
        let done = step.status.notifications.filter { !$0.outstanding }
        if done.count > Self.history {
            let dropped = Set(done.prefix(done.count - Self.history).map { $0 })
            step.status.notifications.removeAll { dropped.contains($0) }
        }
    }

    /// Identifies a log entry among a rule's: its receiver, key and transition.
    static func id(of record: NotificationRecord) -> String { "\(record.receiver) \(record.key) \(record.transition)" }

    /// Sends the records due side by side, waits up to `deliveryWait` for the answers and
    /// writes down those that came; the rest are written down by the reconcile after they come
    /// (the delivery wakes the rule).
    private func deliver(_ due: [Int], _ step: inout Step) async {
        let spec = step.spec
        let rule = step.rule
        let key = step.key
        var jobs: [(String, NotificationRecord, Result<ReceiverTarget, DeliveryError>)] = []
        for index in due {
            let record = step.status.notifications[index]
            guard let receiver = Self.receiver(named: record.receiver, in: spec) else {
                jobs.append((Self.id(of: record), record, .failure(DeliveryError("receiver \(record.receiver) is no longer in the spec"))))
                continue
            }
            jobs.append((Self.id(of: record), record, await target(receiver, namespace: key.namespace)))
        }
        let (notifier, memory, wake, now) = (self.notifier, self.memory, self.wake, self.now)
        let work = jobs, total = jobs.count
        memory.sending(key, work.map(\.0))
        let (answered, signal) = AsyncStream<Void>.makeStream()
        Task {
            await withTaskGroup(of: Void.self) { group in
                for (id, record, target) in work {
                    group.addTask {
                        var failure: DeliveryError?
                        switch target {
                        case .failure(let error):
                            failure = error
                        case .success(let target):
                            do throws(DeliveryError) {
                                try await notifier.send([Self.notice(record, rule: rule)], to: target, receiver: record.receiver)
                            } catch {
                                failure = error
                            }
                        }
                        if memory.answer(key, id: id, at: Self.micro(now()), failure) { await wake(key) }
                        signal.yield()
                    }
                }
            }
            signal.finish()
        }
        // Every answer, or the end of the wait, whichever comes first.
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                var count = 0
                for await _ in answered {
                    count += 1
                    if count == total { break }
                }
            }
            group.addTask { try? await Task.sleep(for: Self.deliveryWait) }
            await group.next()
            group.cancelAll()
        }
        record(memory.takeAnswers(key), &step)
    }

    /// Writes down the answers of deliveries: delivered, or failed with the next attempt.
    private func record(_ answers: [String: AlertMemory.Answer], _ step: inout Step) {
        guard !answers.isEmpty else { return }
        let spec = step.spec
        for index in step.status.notifications.indices {
            var record = step.status.notifications[index]
            guard record.outstanding, let answer = answers[Self.id(of: record)] else { continue }
            record.attempts += 1
            let kind = String(record.receiver.split(separator: "/").last ?? "")
            if let error = answer.error {
                counted(kind, "failed")
                record.error = error.message
                if Self.receiver(named: record.receiver, in: spec) == nil {
                    record.abandoned = true
                    record.nextAttempt = nil
                } else {
                    record.nextAttempt = Timestamp(answer.time.addingTimeInterval(Self.backoff(attempts: record.attempts)))
                }
                step.event(.warning, "NotificationFailed", "\(record.transition) notification \(record.key) to \(record.receiver) failed (attempt \(record.attempts)): \(error.message)")
            } else {
                counted(kind, "delivered")
                record.delivered = true
                record.error = nil
                record.nextAttempt = nil
                step.status.lastNotification = Timestamp(answer.time)
            }
            step.status.notifications[index] = record
            step.changed = true
        }
    }

    /// 1 s, 2 s, 4 s ... 5 min.
    static func backoff(attempts: Int) -> TimeInterval {
        min(300, pow(2, Double(max(0, attempts - 1))))
    }

    /// The receiver with its secrets read now (a secret that is missing is a failed delivery,
    /// retried: it may be set soon).
    private func target(_ receiver: Receiver, namespace: String) async -> Result<ReceiverTarget, DeliveryError> {
        func secret(_ source: SecretSource, _ what: String) async throws(DeliveryError) -> String {
            guard let secrets else { throw DeliveryError("\(what) comes from a secret, and this platform has no secrets") }
            do {
                let value = try await secrets.value(of: source.secretKeyRef.name, key: source.secretKeyRef.key, namespace: namespace)
                return String(decoding: value, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            } catch {
                throw DeliveryError("\(what): \(error.message)")
            }
        }
        do throws(DeliveryError) {
            if let webhook = receiver.webhook {
                if let url = webhook.url { return .success(.webhook(url: url)) }
                return .success(.webhook(url: try await secret(webhook.urlFrom!, "the webhook URL")))
            }
            if let slack = receiver.slack {
                if let url = slack.url { return .success(.slack(url: url, channel: slack.channel)) }
                return .success(.slack(url: try await secret(slack.urlFrom!, "the Slack URL"), channel: slack.channel))
            }
            if let alertmanager = receiver.alertmanager {
                return .success(.alertmanager(url: alertmanager.url))
            }
            let email = receiver.email!
            let smtp = email.smtp
            var target = ReceiverTarget.Email(to: email.to, from: email.from ?? "capstan@\(ProcessInfo.processInfo.hostName)", host: smtp.host, port: smtp.port,
                                              startTLS: smtp.startTLS, insecureSkipVerify: smtp.insecureSkipVerify)
            if let user = smtp.userFrom { target.user = try await secret(user, "the SMTP user") }
            if let password = smtp.passwordFrom { target.password = try await secret(password, "the SMTP password") }
            if let ca = smtp.caFrom { target.caPEM = try await secret(ca, "the SMTP CA") }
            return .success(.email(target))
        } catch {
            return .failure(error)
        }
    }

    /// What a receiver is told about a log entry.
    static func notice(_ record: NotificationRecord, rule: AlertRule) -> AlertNotice {
        var labels = record.labels.values
        for (key, value) in rule.spec.labels.values { labels[key] = value }
        labels["alertname"] = rule.metadata.name
        labels["severity"] = rule.spec.severity.rawValue
        if labels["namespace"] == nil { labels["namespace"] = rule.metadata.namespace }
        var annotations: [String: String] = [:]
        for (key, text) in rule.spec.annotations.values {
            annotations[key] = (try? AlertTemplate.expand(text, value: record.value, labels: record.labels.values)) ?? text
        }
        let fingerprint = String(record.key.split(separator: "@").first ?? "")
        return AlertNotice(rule: ObjectKey(kind: .alertRule, namespace: rule.metadata.namespace, name: rule.metadata.name),
                           status: record.transition == NotificationRecord.resolved ? .resolved : .firing, labels: labels, annotations: annotations,
                           startsAt: (record.startsAt ?? record.time).date, endsAt: record.endsAt?.date, value: record.value, fingerprint: fingerprint, key: record.key)
    }

    /// Alertmanager forgets an alert it is not told about again (its `endsAt` passes): what
    /// still fires is posted again every `resendDelay`, as Prometheus does (not logged: it is
    /// the same alert, and a failure is counted and retried at the next one).
    private func repost(_ step: inout Step) async {
        let wait = max(Self.resendDelay, step.spec.interval.seconds)
        guard let last = memory.lastRepost(of: step.key) ?? step.status.lastNotification?.date, step.time.timeIntervalSince(last) >= wait else { return }
        let firing = step.status.alerts.filter { $0.state == .firing && $0.lastNotified != nil }
        memory.reposted(step.key, at: step.time)
        guard !firing.isEmpty else { return }
        let escalated = firing.map(\.escalated).max() ?? 0
        for name in receivers(step.spec, escalated: escalated) where name.hasSuffix("/alertmanager") {
            guard let receiver = Self.receiver(named: name, in: step.spec), case .success(let target) = await self.target(receiver, namespace: step.key.namespace) else { continue }
            let notices = firing.map { series -> AlertNotice in
                var record = NotificationRecord()
                record.labels = series.labels
                record.value = series.value
                record.startsAt = series.firedAt ?? series.activeSince
                record.key = "\(series.fingerprint)@\(series.firedAt ?? series.activeSince)"
                record.transition = NotificationRecord.firing
                return Self.notice(record, rule: step.rule)
            }
            do throws(DeliveryError) {
                try await notifier.send(notices, to: target, receiver: name)
                counted("alertmanager", "delivered")
            } catch {
                counted("alertmanager", "failed")
            }
        }
    }

    // MARK: - Status

    private func settle(_ step: inout Step) {
        let generation = step.stored.generation
        let time = Timestamp(step.time)
        var status = step.status
        let firing = status.alerts.filter { $0.state == .firing }
        let pending = status.alerts.filter { $0.state == .pending }
        if let hold = step.stored.hold {
            status.markStalled(reason: hold.reason, message: hold.message, generation: generation, now: time)
        } else if let error = step.queryError {
            let kept = firing.isEmpty ? "" : " (\(firing.count) firing alert\(firing.count == 1 ? "" : "s") kept firing)"
            status.markStalled(reason: error.reason, message: error.message + kept, generation: generation, now: time)
        } else {
            var message = "\(firing.count) firing, \(pending.count) pending"
            if let value = status.lastValue { message += "; last value \(AlertSampleNamed.format(value))" }
            let undelivered = status.notifications.filter { $0.outstanding && $0.attempts > 0 }
            if let first = undelivered.first {
                message += "; \(undelivered.count) notification\(undelivered.count == 1 ? "" : "s") not delivered yet (\(first.receiver): \(first.error ?? ""))"
            }
            status.markReady(reason: "Evaluating", message: message, generation: generation, now: time)
        }
        if let first = firing.first {
            let labels = first.labels.values.sorted { $0.key < $1.key }.map { "\($0.key)=\"\($0.value)\"" }.joined(separator: ",")
            let more = firing.count > 1 ? " and \(firing.count - 1) more" : ""
            let acked = step.acknowledged ? "; acknowledged until \(status.acknowledgedUntil!)" : ""
            status.conditions.set(ConditionType.firing, .true, reason: "AlertFiring",
                                  message: "value \(AlertSampleNamed.format(first.value))\(labels.isEmpty ? "" : " {\(labels)}")\(more)\(acked)",
                                  observedGeneration: generation, now: time)
        } else {
            status.conditions.set(ConditionType.firing, .false, reason: pending.isEmpty ? "NotFiring" : "Pending",
                                  message: pending.isEmpty ? "nothing fires" : "\(pending.count) pending for \(step.spec.for)",
                                  observedGeneration: generation, now: time)
        }
        var before = step.status
        before.lastReconcileTime = status.lastReconcileTime
        if Self.conditionsDiffer(before.conditions, status.conditions) { step.changed = true }
        step.status = status
    }

    static func conditionsDiffer(_ a: [Condition], _ b: [Condition]) -> Bool {
        func plain(_ list: [Condition]) -> [String] { list.map { "\($0.type)|\($0.status)|\($0.reason)|\($0.observedGeneration ?? -1)" }.sorted() }
        return plain(a) != plain(b)
    }

    /// When to look again: the next evaluation, a pending alert's `for`, a retry, a repeat, an
    /// escalation, the end of an acknowledgement, a re-post.
    private func nextWake(_ step: Step) -> Date {
        let status = step.status
        let spec = step.spec
        // A query under way wakes the rule when it answers (it is bounded by 10 s).
        let querying = memory.querying(step.key)
        var next = querying ? step.time.addingTimeInterval(11) : (status.lastEvaluation?.date ?? step.time).addingTimeInterval(spec.interval.seconds)
        if step.queryError != nil, !querying { next = min(next, step.time.addingTimeInterval(min(spec.interval.seconds, 30))) }
        for series in status.alerts {
            if series.state == .pending, !querying { next = min(next, series.activeSince.date.addingTimeInterval(spec.for.seconds)) }
            guard series.state == .firing, !step.acknowledged else { continue }
            if let last = series.lastNotified { next = min(next, last.date.addingTimeInterval(spec.repeatInterval.seconds)) }
            if series.escalated < spec.escalation.count {
                next = min(next, (series.firedAt ?? series.activeSince).date.addingTimeInterval(spec.escalation[series.escalated].after.seconds))
            }
        }
        for record in status.notifications where record.outstanding {
            next = min(next, record.nextAttempt?.date ?? step.time)
        }
        if let until = status.acknowledgedUntil { next = min(next, until.date) }
        if status.alerts.contains(where: { $0.state == .firing }), spec.notify.contains(where: { $0.alertmanager != nil }) {
            next = min(next, (memory.lastRepost(of: step.key) ?? step.time).addingTimeInterval(max(Self.resendDelay, spec.interval.seconds)))
        }
        return next
    }
}

/// What an AlertRule reconciler keeps between reconciles: the last status it computed (the
/// evaluation's time and value are written at most every `quietWrite`), the last one it wrote,
/// and when it last re-posted to Alertmanager. A status someone else wrote since (another
/// daemon that led meanwhile) wins over what is remembered.
public final class AlertMemory: Sendable {
    struct Entry {
        var written: AlertRuleStatus?
        var computed: AlertRuleStatus?
        var lastWrite: Date?
        var lastRepost: Date?
        /// Deliveries under way (their log entries' ids), and answers not yet written down.
        var inFlight: Set<String> = []
        var answers: [String: Answer] = [:]
        /// A reconcile waits for this rule's answers (an answer then wakes nobody).
        var waiting = false
        /// A query under way (of the spec's generation) or its answer, not yet evaluated.
        var query: Query?
    }

    enum Query {
        case running(generation: Int, waited: Bool)
        case answered(generation: Int, Result<[AlertSample], MetricQueryError>)
    }

    /// Builtin queries as parsed (each rule's is parsed once, not at every evaluation).
    private let selectors = Synchronized<[String: MetricSelector]>([:])

    func selector(_ query: String) throws(MetricSelector.ParseError) -> MetricSelector {
        if let known = selectors.value[query] { return known }
        let selector = try MetricSelector.parse(query, known: BuiltinMetrics.names)
        selectors.update { selectors in
            if selectors.count >= 10_000 { selectors = [:] }
            selectors[query] = selector
        }
        return selector
    }

    func querying(_ key: ObjectKey) -> Bool {
        if case .running = entries.value[key]?.query { return true }
        return false
    }

    /// A query starts; its reconcile waits for it.
    func startQuery(_ key: ObjectKey, generation: Int) {
        entries.update { $0[key, default: Entry()].query = .running(generation: generation, waited: true) }
    }

    /// A query answered; true when no reconcile waits for it (the rule must be woken). An
    /// answer for a rule forgotten meanwhile (deleted) is dropped.
    func finishQuery(_ key: ObjectKey, _ result: Result<[AlertSample], MetricQueryError>) -> Bool {
        entries.update { entries in
            guard case .running(let generation, let waited) = entries[key]?.query else { return false }
            entries[key]!.query = .answered(generation: generation, result)
            return !waited
        }
    }

    /// The answer of the last query when it came for `generation` (taken: the caller
    /// evaluates it); ends a wait, so a later answer wakes the rule. An answer for an older
    /// generation is dropped.
    func takeQuery(_ key: ObjectKey, generation: Int) -> Result<[AlertSample], MetricQueryError>? {
        entries.update { entries in
            switch entries[key]?.query {
            case .running(let running, _):
                entries[key]!.query = .running(generation: running, waited: false)
                return nil
            case .answered(let answered, let result):
                entries[key]!.query = nil
                return answered == generation ? result : nil
            case nil:
                return nil
            }
        }
    }

    struct Answer {
        var time: Date
        var error: DeliveryError?
    }

    private let entries = Synchronized<[ObjectKey: Entry]>([:])

    public init() {}

    func status(of key: ObjectKey, stored: AlertRuleStatus) -> AlertRuleStatus {
        guard let entry = entries.value[key], let written = entry.written, let computed = entry.computed, written == stored else { return stored }
        return computed
    }

    func remember(_ key: ObjectKey, computed: AlertRuleStatus) {
        entries.update { $0[key, default: Entry()].computed = computed }
    }

    func wrote(_ key: ObjectKey, _ status: AlertRuleStatus, at time: Date) {
        entries.update { entries in
            entries[key, default: Entry()].written = status
            entries[key, default: Entry()].lastWrite = time
        }
    }

    func lastWrite(of key: ObjectKey) -> Date? { entries.value[key]?.lastWrite }
    func lastRepost(of key: ObjectKey) -> Date? { entries.value[key]?.lastRepost }
    func reposted(_ key: ObjectKey, at time: Date) { entries.update { $0[key, default: Entry()].lastRepost = time } }
    func forget(_ key: ObjectKey) { _ = entries.update { $0.removeValue(forKey: key) } }

    func inFlight(_ key: ObjectKey) -> Set<String> { entries.value[key]?.inFlight ?? [] }

    /// Deliveries start; a reconcile waits for their answers.
    func sending(_ key: ObjectKey, _ ids: [String]) {
        entries.update { entries in
            entries[key, default: Entry()].inFlight.formUnion(ids)
            entries[key, default: Entry()].waiting = true
        }
    }

    /// A delivery answered; true when no reconcile waits for it (the rule must be woken).
    /// An answer for a rule forgotten meanwhile (deleted) is dropped.
    func answer(_ key: ObjectKey, id: String, at time: Date, _ error: DeliveryError?) -> Bool {
        entries.update { entries in
            guard entries[key]?.inFlight.remove(id) != nil else { return false }
            entries[key]!.answers[id] = Answer(time: time, error: error)
            return !entries[key]!.waiting
        }
    }

    /// The answers not yet written down (taken: the caller writes them); ends a wait.
    func takeAnswers(_ key: ObjectKey) -> [String: Answer] {
        entries.update { entries in
            guard entries[key] != nil else { return [:] }
            entries[key]!.waiting = false
            defer { entries[key]!.answers = [:] }
            return entries[key]!.answers
        }
    }
}

extension ObjectRequest {
    /// `capstan ack`: an AlertRule's notifications are silenced for the value (a duration).
    public static let acknowledge = "acknowledge"
}
