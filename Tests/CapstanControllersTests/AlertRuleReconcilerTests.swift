import CapstanModel
import CapstanRuntime
import Foundation
import Synchronization
import Testing
@testable import CapstanControllers

/// Metrics the test sets, or a failure.
final class FakeMetrics: MetricsPlatform, Sendable {
    let samples = Mutex<Result<[AlertSample], MetricQueryError>>(.success([]))

    func set(_ value: Double?, labels: [String: String] = ["deployment": "web"]) {
        samples.withLock { $0 = .success(value.map { [AlertSample(labels: labels, value: $0)] } ?? []) }
    }

    func fail(_ error: MetricQueryError) { samples.withLock { $0 = .failure(error) } }

    func builtin(_ selector: MetricSelector, namespace: String) async throws(MetricQueryError) -> [AlertSample] {
        try samples.withLock { $0 }.get()
    }

    func prometheus(address: String, query: String, timeout: Duration) async throws(MetricQueryError) -> [AlertSample] {
        try samples.withLock { $0 }.get()
    }

    func builtin(_ selector: MetricSelector, deployment: ObjectKey, track: Track) async throws(MetricQueryError) -> [AlertSample] {
        try samples.withLock { $0 }.get()
    }
}

/// A notifier that records what it was given (and what the store held when it was), and
/// fails while told to.
final class FakeNotifier: Notifier, Sendable {
    struct Sent: Sendable {
        var receiver: String
        var key: String
        var status: AlertState
        var loggedBefore: Bool
    }
    let sent = Mutex<[Sent]>([])
    let failures = Mutex<[String: Int]>([:])
    let store: FakeStore
    let rule: ObjectKey

    init(store: FakeStore, rule: ObjectKey) {
        self.store = store
        self.rule = rule
    }

    func send(_ notices: [AlertNotice], to target: ReceiverTarget, receiver: String) async throws(DeliveryError) {
        let logged: [NotificationRecord]
        if case .alertRule(let stored)? = try? await store.object(rule)?.resource { logged = stored.status.notifications } else { logged = [] }
        if failures.withLock({ failures in
            guard let left = failures[receiver], left > 0 else { return false }
            failures[receiver] = left - 1
            return true
        }) {
            throw DeliveryError("\(target) answered 500: boom")
        }
        for notice in notices {
            let before = logged.contains { $0.key == notice.key && $0.receiver == receiver && !$0.delivered }
            sent.withLock { $0.append(Sent(receiver: receiver, key: notice.key, status: notice.status, loggedBefore: before)) }
        }
    }

    var all: [Sent] { sent.withLock { $0 } }
}

@Suite struct AlertRuleReconcilerTests {
    let store = FakeStore()
    let metrics = FakeMetrics()
    let notifier: FakeNotifier
    final class Clock: Sendable {
        let now = Mutex(Date(timeIntervalSince1970: 1_800_000_000))
    }
    let clock = Clock()
    static let key = ObjectKey(kind: .alertRule, namespace: "default", name: "web-down")
    let memory = AlertMemory()

    init() {
        notifier = FakeNotifier(store: store, rule: Self.key)
    }

    var reconciler: AlertRuleReconciler { reconciler(memory: memory) }

    func reconciler(memory: AlertMemory) -> AlertRuleReconciler {
        let clock = self.clock
        return AlertRuleReconciler(store: store, events: store, metrics: metrics, notifier: notifier, secrets: nil, memory: memory,
                                   now: { clock.now.withLock { $0 } })
    }

    func advance(_ seconds: TimeInterval) { clock.now.withLock { $0 += seconds } }

    func put(for holdFor: String = "10s", extra: String = "") throws {
        try store.put("""
            apiVersion: capstan.dev/v1alpha1
            kind: AlertRule
            metadata: {name: web-down}
            spec:
              query: up{deployment="web"}
              condition: {op: "==", threshold: 0}
              for: \(holdFor)
              interval: 5s
              annotations: {summary: "web is down ({{ $value }})"}
              notify:
              - webhook: {url: "http://127.0.0.1:9/hook"}
              - slack: {url: "http://127.0.0.1:9/slack"}
            \(extra)
            """)
    }

    var status: AlertRuleStatus {
        get async throws {
            guard case .alertRule(let rule)? = try await store.object(Self.key)?.resource else { return AlertRuleStatus() }
            return rule.status
        }
    }

    @Test func pendingThenFiringAtTheForThenResolvedWithOneNotificationPerTransitionPerReceiver() async throws {
        try put()
        metrics.set(1)
        _ = try await reconciler.reconcile(Self.key)
        #expect(try await status.state == .inactive)
        #expect(try await status.conditions[type: "Ready"]?.status == .true)

        advance(5)
        metrics.set(0)
        var result = try await reconciler.reconcile(Self.key)
        #expect(try await status.state == .pending)
        #expect(result.requeueAfter == .seconds(5))
        #expect(notifier.all.isEmpty)

        // Woken exactly at the `for`, not at the next interval.
        advance(10)
        result = try await reconciler.reconcile(Self.key)
        var current = try await status
        #expect(current.state == .firing)
        #expect(current.conditions[type: "Firing"]?.status == .true)
        #expect(notifier.all.map(\.receiver).sorted() == ["notify[0]/webhook", "notify[1]/slack"])
        #expect(notifier.all.allSatisfy { $0.loggedBefore && $0.status == .firing })
        #expect(current.notifications.count == 2 && current.notifications.allSatisfy { $0.delivered })
        #expect(store.eventReasons.contains("AlertFiring"))

        // Still firing: nothing more until repeatInterval.
        for _ in 0..<3 {
            advance(5)
            _ = try await reconciler.reconcile(Self.key)
        }
        #expect(notifier.all.count == 2)

        advance(5)
        metrics.set(1)
        _ = try await reconciler.reconcile(Self.key)
        current = try await status
        #expect(current.state == .resolved)
        #expect(notifier.all.count == 4)
        #expect(notifier.all.suffix(2).allSatisfy { $0.status == .resolved && $0.loggedBefore })
        #expect(Set(notifier.all.map(\.key)).count == 2, "one key per transition, shared by the receivers")

        advance(5)
        _ = try await reconciler.reconcile(Self.key)
        #expect(try await status.state == .inactive)
        #expect(try await status.alerts.isEmpty)
        #expect(notifier.all.count == 4)
    }

    @Test func aFailedDeliveryIsRetriedWithBackoffAndCountedOnce() async throws {
        try put(for: "0s")
        notifier.failures.withLock { $0["notify[0]/webhook"] = 2 }
        metrics.set(0)
        var result = try await reconciler.reconcile(Self.key)
        var current = try await status
        #expect(current.state == .firing)
        let webhook = try #require(current.notifications.first { $0.receiver == "notify[0]/webhook" })
        #expect(!webhook.delivered && webhook.attempts == 1 && webhook.error?.contains("500") == true)
        #expect(result.requeueAfter == .seconds(1))
        #expect(store.eventReasons.contains("NotificationFailed"))
        #expect(current.conditions[type: "Ready"]?.message.contains("not delivered yet") == true)

        advance(1)
        result = try await reconciler.reconcile(Self.key)
        #expect(result.requeueAfter == .seconds(2))
        advance(2)
        _ = try await reconciler.reconcile(Self.key)
        current = try await status
        #expect(current.notifications.allSatisfy { $0.delivered })
        #expect(notifier.all.filter { $0.receiver == "notify[0]/webhook" }.count == 1)
        #expect(notifier.all.filter { $0.receiver == "notify[1]/slack" }.count == 1)
    }

    @Test func aQueryThatFailsKeepsWhatFiresAndIsStalled() async throws {
        try put(for: "0s")
        metrics.set(0)
        _ = try await reconciler.reconcile(Self.key)
        metrics.fail(MetricQueryError(MetricQueryError.queryFailed, "Prometheus at 127.0.0.1:9 did not answer: connection refused"))
        advance(5)
        _ = try await reconciler.reconcile(Self.key)
        let current = try await status
        #expect(current.state == .firing)
        #expect(current.conditions[type: "Stalled"]?.reason == "QueryFailed")
        #expect(current.conditions[type: "Stalled"]?.message.contains("kept firing") == true)
        #expect(notifier.all.count == 2)
    }

    @Test func aRestartResendsOnlyWhatWasLoggedAndNotAnsweredWithTheSameKey() async throws {
        try put(for: "0s")
        metrics.set(0)
        // The daemon died after logging the webhook's notification and before its answer.
        notifier.failures.withLock { $0["notify[0]/webhook"] = 1 }
        _ = try await reconciler.reconcile(Self.key)
        let current = try await status
        let logged = try #require(current.notifications.first { $0.receiver == "notify[0]/webhook" })
        advance(1)
        _ = try await reconciler(memory: AlertMemory()).reconcile(Self.key)
        let webhook = notifier.all.filter { $0.receiver == "notify[0]/webhook" }
        #expect(webhook.count == 1 && webhook[0].key == logged.key)
        #expect(notifier.all.filter { $0.receiver == "notify[1]/slack" }.count == 1, "the delivered one is not sent again")
        advance(5)
        _ = try await reconciler(memory: AlertMemory()).reconcile(Self.key)
        #expect(notifier.all.count == 2)
    }

    @Test func escalationFiresAfterItsDelayUnlessAcknowledgedAndAnAckExpires() async throws {
        try put(for: "0s", extra: """
              repeatInterval: 1h
              escalation:
              - after: 30s
                notify: [{webhook: {url: "http://127.0.0.1:9/pager"}}]
            """)
        metrics.set(0)
        _ = try await reconciler.reconcile(Self.key)
        advance(10)
        store.request(ObjectRequest.acknowledge, "1m", for: Self.key)
        _ = try await reconciler.reconcile(Self.key)
        #expect(try await status.acknowledgedUntil != nil)
        #expect(store.eventReasons.contains("Acknowledged"))
        advance(25)
        _ = try await reconciler.reconcile(Self.key)
        #expect(!notifier.all.contains { $0.receiver.hasPrefix("escalation") }, "acknowledged: no escalation")
        advance(35)  // the acknowledgement ran from 10 s to 70 s
        let result = try await reconciler.reconcile(Self.key)
        #expect(try await status.acknowledgedUntil == nil)
        #expect(store.eventReasons.contains("AcknowledgementEnded"))
        let paged = notifier.all.filter { $0.receiver == "escalation[0].notify[0]/webhook" }
        #expect(paged.count == 1)
        #expect(store.eventReasons.contains("AlertEscalated"))
        #expect(result.requeueAfter! <= .seconds(5))

        // Resolved: every receiver told about the alert hears of its end, the pager too.
        advance(5)
        metrics.set(1)
        _ = try await reconciler.reconcile(Self.key)
        #expect(notifier.all.filter { $0.status == .resolved }.map(\.receiver).sorted() == ["escalation[0].notify[0]/webhook", "notify[0]/webhook", "notify[1]/slack"])
    }

    @Test func firingRepeatsAfterRepeatIntervalWithANewKey() async throws {
        try put(for: "0s", extra: "  repeatInterval: 20s")
        metrics.set(0)
        _ = try await reconciler.reconcile(Self.key)
        advance(20)
        _ = try await reconciler.reconcile(Self.key)
        #expect(notifier.all.count == 4)
        #expect(Set(notifier.all.map(\.key)).count == 2)
        #expect(try await status.notifications.contains { $0.transition == "Repeat" })
    }

    @Test func quietEvaluationsDoNotWriteTheStatusEachTime() async throws {
        try put()
        metrics.set(1)
        _ = try await reconciler.reconcile(Self.key)
        let writes = store.statusWrites
        for _ in 0..<6 {
            advance(5)
            _ = try await reconciler.reconcile(Self.key)
        }
        #expect(store.statusWrites == writes, "nothing changed: written at most every minute")
        advance(35)
        _ = try await reconciler.reconcile(Self.key)
        #expect(store.statusWrites == writes + 1)
    }

    @Test func anAcknowledgementWithABadDurationIsRefused() async throws {
        try put()
        store.request(ObjectRequest.acknowledge, "soon", for: Self.key)
        _ = try await reconciler.reconcile(Self.key)
        #expect(store.eventReasons.contains("AcknowledgeRefused"))
        #expect(try await status.acknowledgedUntil == nil)
    }
}
