import CapstanModel
import Foundation
import Testing
@testable import CapstanControllers

/// Prometheus' rule semantics per label set, in virtual time.
@Suite struct AlertEvaluationTests {
    static let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    static func at(_ seconds: Double) -> Date { t0.addingTimeInterval(seconds) }

    static var above: AlertCondition {
        var condition = AlertCondition()
        condition.op = .greater
        condition.threshold = 0.05
        return condition
    }

    struct Run {
        var series: [String: AlertSeries] = [:]
        var log: [String] = []
        let holdFor: TimeInterval
        let keep: TimeInterval

        init(for holdFor: TimeInterval, keep: TimeInterval = 0) {
            self.holdFor = holdFor
            self.keep = keep
        }

        mutating func step(_ seconds: Double, _ samples: [AlertSample]) {
            let result = AlertEvaluator.evaluate(previous: series, samples: samples, condition: AlertEvaluationTests.above, for: holdFor,
                                                 keepFiringFor: keep, now: AlertEvaluationTests.at(seconds))
            series = result.series
            log += result.transitions.map { "\(Int(seconds)) \($0.labels["d"] ?? "") \($0.from.rawValue)->\($0.to.rawValue)" }
        }
    }

    static func web(_ value: Double) -> AlertSample { AlertSample(labels: ["d": "web"], value: value) }
    static func api(_ value: Double) -> AlertSample { AlertSample(labels: ["d": "api"], value: value) }

    @Test func pendingThenFiringAfterForThenResolvedThenGone() {
        var run = Run(for: 60)
        run.step(0, [Self.web(0.01)])
        run.step(10, [Self.web(0.2)])
        run.step(40, [Self.web(0.3)])
        run.step(70, [Self.web(0.3)])
        run.step(80, [Self.web(0.3)])
        run.step(90, [Self.web(0.0)])
        #expect(AlertEvaluator.summary(run.series) == .resolved)
        run.step(100, [Self.web(0.0)])
        #expect(run.log == ["10 web Inactive->Pending", "70 web Pending->Firing", "90 web Firing->Resolved"])
        #expect(run.series.isEmpty)
        #expect(AlertEvaluator.summary(run.series) == .inactive)
    }

    @Test func aConditionThatClearsBeforeForNeverFires() {
        var run = Run(for: 60)
        run.step(0, [Self.web(0.2)])
        run.step(30, [Self.web(0.0)])
        run.step(60, [Self.web(0.2)])
        run.step(90, [Self.web(0.2)])
        run.step(120, [Self.web(0.2)])
        #expect(run.log == ["0 web Inactive->Pending", "30 web Pending->Inactive", "60 web Inactive->Pending", "120 web Pending->Firing"])
    }

    @Test func forZeroFiresAtOnceAndKeepFiringForHoldsIt() {
        var run = Run(for: 0, keep: 30)
        run.step(0, [Self.web(0.2)])
        run.step(10, [Self.web(0.2)])
        run.step(20, [])
        run.step(39, [Self.web(0.0)])
        #expect(AlertEvaluator.summary(run.series) == .firing, "30 s after it last held (at 10)")
        run.step(41, [Self.web(0.0)])
        #expect(run.log == ["0 web Inactive->Pending", "0 web Pending->Firing", "41 web Firing->Resolved"])
    }

    @Test func eachLabelSetHasItsOwnStateAndFingerprint() {
        var run = Run(for: 10)
        run.step(0, [Self.web(0.2), Self.api(0.0)])
        run.step(5, [Self.web(0.2), Self.api(0.5)])
        run.step(10, [Self.web(0.2), Self.api(0.5)])
        run.step(15, [Self.web(0.2), Self.api(0.5)])
        #expect(run.log.filter { $0.hasSuffix("->Firing") } == ["10 web Pending->Firing", "15 api Pending->Firing"])
        let fingerprints = Set(run.series.keys)
        #expect(fingerprints == [AlertEvaluator.fingerprint(["d": "web"]), AlertEvaluator.fingerprint(["d": "api"])])
        #expect(AlertEvaluator.fingerprint(["a": "1", "b": "2"]) == AlertEvaluator.fingerprint(["b": "2", "a": "1"]))
        #expect(AlertEvaluator.fingerprint(["a": "1b"]) != AlertEvaluator.fingerprint(["a1": "b"]))
        #expect(AlertEvaluator.fingerprint([:]).count == 16)
    }

    @Test func aResolvedSeriesThatHoldsAgainIsPendingAnewAndKeysDiffer() {
        var run = Run(for: 0)
        run.step(0, [Self.web(0.2)])
        let firstKey = AlertTransition(fingerprint: AlertEvaluator.fingerprint(["d": "web"]), labels: [:], from: .pending, to: .firing, value: 0, at: Self.at(0)).key
        run.step(10, [Self.web(0.0)])
        run.step(20, [Self.web(0.3)])
        #expect(run.log == ["0 web Inactive->Pending", "0 web Pending->Firing", "10 web Firing->Resolved", "20 web Resolved->Pending", "20 web Pending->Firing"])
        let secondKey = AlertTransition(fingerprint: AlertEvaluator.fingerprint(["d": "web"]), labels: [:], from: .pending, to: .firing, value: 0, at: Self.at(20)).key
        #expect(firstKey != secondKey)
        // NaN (no data) never holds.
        var quiet = Run(for: 0)
        quiet.step(0, [Self.web(.nan)])
        #expect(quiet.log.isEmpty)
    }

    @Test func seriesSurviveACodableRoundTrip() throws {
        var run = Run(for: 60)
        run.step(0, [Self.web(0.2)])
        let data = try JSONEncoder().encode(run.series)
        #expect(try JSONDecoder().decode([String: AlertSeries].self, from: data) == run.series)
    }

    @Test func templates() throws {
        #expect(try AlertTemplate.expand("ratio {{ $value }} on {{$labels.d}}", value: 0.25, labels: ["d": "web"]) == "ratio 0.25 on web")
        #expect(try AlertTemplate.expand("{{ $value }} {{ $labels.missing }}|{{ $labels }}", value: 3, labels: ["b": "2", "a": "1"]) == "3 |a=1, b=2")
        #expect(try AlertTemplate.expand("no templates", value: 1, labels: [:]) == "no templates")
        #expect(throws: AlertTemplate.Problem.self) { try AlertTemplate.expand("{{ humanize $value }}", value: 1, labels: [:]) }
        #expect(throws: AlertTemplate.Problem.self) { try AlertTemplate.expand("{{ $value ", value: 1, labels: [:]) }
    }
}
