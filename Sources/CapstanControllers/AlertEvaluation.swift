import CapstanModel
import Foundation

/// One value of an alert's query, with its labels (a series of a vector result).
public struct AlertSample: Sendable, Hashable {
    public var labels: [String: String]
    public var value: Double

    public init(labels: [String: String], value: Double) {
        self.labels = labels
        self.value = value
    }
}

/// The state of one label set of an alert, kept between evaluations (and across restarts).
public struct AlertSeries: Codable, Sendable, Hashable {
    public var labels: [String: String]
    public var state: AlertState
    /// When the condition began to hold (Pending from here).
    public var activeSince: Date
    public var firedAt: Date?
    public var resolvedAt: Date?
    /// The last evaluation at which the condition held (`keepFiringFor` counts from it).
    public var lastTrue: Date
    public var value: Double

    public init(labels: [String: String], state: AlertState, activeSince: Date, firedAt: Date? = nil, resolvedAt: Date? = nil, lastTrue: Date, value: Double) {
        self.labels = labels
        self.state = state
        self.activeSince = activeSince
        self.firedAt = firedAt
        self.resolvedAt = resolvedAt
        self.lastTrue = lastTrue
        self.value = value
    }
}

extension AlertState: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let state = AlertState(rawValue: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "unknown alert state \(text)"))
        }
        self = state
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// A change of state of one label set, at one evaluation.
public struct AlertTransition: Sendable, Hashable {
    public var fingerprint: String
    public var labels: [String: String]
    public var from: AlertState
    public var to: AlertState
    public var value: Double
    public var at: Date

    /// What a receiver deduplicates on: the label set and when it changed state.
    public var key: String { "\(fingerprint)@\(Timestamp(at).description)" }
    /// Whether people are told (Firing and Resolved are; Pending and its end are not).
    public var notifies: Bool { to == .firing || to == .resolved }
}

/// Prometheus' alerting rule semantics, per label set: the condition holding makes a series
/// `Pending`, and `Firing` once it held for `for` (at once when `for` is zero); when it stops
/// holding (or the series is gone) a pending series is dropped and a firing one is `Resolved` —
/// after `keepFiringFor` more, if set; a resolved series is dropped at the next evaluation
/// unless the condition holds again (then it is pending anew). A failed query changes nothing:
/// it is not evaluated at all (it never resolves what fires).
public enum AlertEvaluator {
    /// A stable fingerprint of a label set: FNV-1a 64 of the sorted labels, in hex.
    public static func fingerprint(_ labels: [String: String]) -> String {
        var hash: UInt64 = 0xcbf29ce484222325
        for key in labels.keys.sorted() {
            for byte in key.utf8 + [0xFF] + labels[key]!.utf8 + [0xFF] {
                hash = (hash ^ UInt64(byte)) &* 0x100000001b3
            }
        }
        let text = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - text.count) + text
    }

    public static func evaluate(previous: [String: AlertSeries], samples: [AlertSample], condition: AlertCondition, for holdFor: TimeInterval,
                                keepFiringFor: TimeInterval, now: Date) -> (series: [String: AlertSeries], transitions: [AlertTransition]) {
        var next: [String: AlertSeries] = [:]
        var transitions: [AlertTransition] = []
        var active: [String: AlertSample] = [:]
        for sample in samples where !sample.value.isNaN && condition.op.holds(sample.value, condition.threshold) {
            active[fingerprint(sample.labels)] = sample
        }
        func change(_ fingerprint: String, _ series: AlertSeries, from: AlertState, to: AlertState, value: Double) {
            transitions.append(AlertTransition(fingerprint: fingerprint, labels: series.labels, from: from, to: to, value: value, at: now))
        }
        for (fingerprint, sample) in active.sorted(by: { $0.key < $1.key }) {
            var series: AlertSeries
            if let kept = previous[fingerprint], kept.state != .resolved {
                series = kept
            } else {
                series = AlertSeries(labels: sample.labels, state: .pending, activeSince: now, lastTrue: now, value: sample.value)
                change(fingerprint, series, from: previous[fingerprint]?.state ?? .inactive, to: .pending, value: sample.value)
            }
            series.value = sample.value
            series.lastTrue = now
            if series.state == .pending, now.timeIntervalSince(series.activeSince) >= holdFor {
                series.state = .firing
                series.firedAt = now
                change(fingerprint, series, from: .pending, to: .firing, value: sample.value)
            }
            next[fingerprint] = series
        }
        for (fingerprint, kept) in previous.sorted(by: { $0.key < $1.key }) where active[fingerprint] == nil {
            switch kept.state {
            case .pending:
                change(fingerprint, kept, from: .pending, to: .inactive, value: kept.value)
            case .firing:
                var series = kept
                if keepFiringFor > 0, now.timeIntervalSince(kept.lastTrue) < keepFiringFor {
                    next[fingerprint] = series
                    continue
                }
                series.state = .resolved
                series.resolvedAt = now
                next[fingerprint] = series
                change(fingerprint, series, from: .firing, to: .resolved, value: kept.value)
            case .resolved, .inactive:
                // Told already; gone from the state from now on.
                continue
            }
        }
        return (next, transitions)
    }

    /// The alert's state as one word: Firing if any series fires, else Pending, Resolved, Inactive.
    public static func summary(_ series: [String: AlertSeries]) -> AlertState {
        let states = Set(series.values.map(\.state))
        for state in [AlertState.firing, .pending, .resolved] where states.contains(state) { return state }
        return .inactive
    }
}
