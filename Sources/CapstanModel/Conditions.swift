/// The condition types every kind carries (kstatus: `Ready`, and the "abnormal-true"
/// `Reconciling` and `Stalled`, present only while true).
public enum ConditionType {
    public static let ready = "Ready"
    public static let reconciling = "Reconciling"
    public static let stalled = "Stalled"
    public static let firing = "Firing"
}

extension Array where Element == Condition {
    /// Sets the condition of `type`. `lastTransitionTime` changes only when the status flips;
    /// reason, message and observedGeneration are updated in place. Returns whether anything
    /// changed, so callers can skip a status write when nothing did.
    @discardableResult
    public mutating func set(
        _ type: String, _ status: ConditionStatus, reason: String, message: String = "",
        observedGeneration: Int?, now: Timestamp
    ) -> Bool {
        if let index = firstIndex(where: { $0.type == type }) {
            var condition = self[index]
            if condition.status != status {
                condition.status = status
                condition.lastTransitionTime = now
            }
            condition.reason = reason
            condition.message = message
            condition.observedGeneration = observedGeneration
            guard condition != self[index] else { return false }
            self[index] = condition
            return true
        }
        append(Condition(type: type, status: status, reason: reason, message: message,
                         observedGeneration: observedGeneration, lastTransitionTime: now))
        return true
    }

    /// Removes the condition of `type`; returns whether it was there.
    @discardableResult
    public mutating func remove(_ type: String) -> Bool {
        let before = count
        removeAll { $0.type == type }
        return count != before
    }

    /// The condition of `type`.
    public subscript(type type: String) -> Condition? { first { $0.type == type } }
}

extension CommonStatus {
    /// Converged and healthy: `Ready=True`; `Reconciling` and `Stalled` removed.
    @discardableResult
    public mutating func markReady(reason: String, message: String, generation: Int?, now: Timestamp) -> Bool {
        var changed = conditions.set(ConditionType.ready, .true, reason: reason, message: message, observedGeneration: generation, now: now)
        changed = conditions.remove(ConditionType.reconciling) || changed
        changed = conditions.remove(ConditionType.stalled) || changed
        return observe(generation) || changed
    }

    /// Work in progress: `Reconciling=True`, `Ready` not true (Unknown unless it is already False).
    @discardableResult
    public mutating func markReconciling(reason: String, message: String, generation: Int?, now: Timestamp) -> Bool {
        var changed = conditions.set(ConditionType.reconciling, .true, reason: reason, message: message, observedGeneration: generation, now: now)
        let readyStatus: ConditionStatus = conditions[type: ConditionType.ready]?.status == .false ? .false : .unknown
        changed = conditions.set(ConditionType.ready, readyStatus, reason: reason, message: message, observedGeneration: generation, now: now) || changed
        changed = conditions.remove(ConditionType.stalled) || changed
        return observe(generation) || changed
    }

    /// No progress possible without a spec change: `Stalled=True`, `Ready=False`, same reason.
    @discardableResult
    public mutating func markStalled(reason: String, message: String, generation: Int?, now: Timestamp) -> Bool {
        var changed = conditions.set(ConditionType.stalled, .true, reason: reason, message: message, observedGeneration: generation, now: now)
        changed = conditions.set(ConditionType.ready, .false, reason: reason, message: message, observedGeneration: generation, now: now) || changed
        changed = conditions.remove(ConditionType.reconciling) || changed
        return observe(generation) || changed
    }

    private mutating func observe(_ generation: Int?) -> Bool {
        guard let generation, observedGeneration != generation else { return false }
        observedGeneration = generation
        return true
    }

    /// Whether the status says the object is ready at its current generation.
    public func isReady(generation: Int?) -> Bool {
        conditions[type: ConditionType.ready]?.status == .true && (generation == nil || observedGeneration == generation)
    }
}

/// What `capstan get` prints in STATUS and REASON: one short word and a reason that never
/// contradict the conditions (kstatus' order: a hold, then `Stalled`, then `Reconciling`,
/// then `Ready`); the message stays for `describe` and `-o wide`.
public struct StatusSummary: Sendable, Equatable {
    public var status: String
    public var reason: String
    public var message: String

    public init(status: String, reason: String, message: String) {
        self.status = status
        self.reason = reason
        self.message = message
    }

    /// Phases of work under way, and phases of failure: shown only when the conditions say
    /// the same (a `Succeeded` phase never shows beside `Stalled`).
    static let inProgressPhases: Set<String> = ["Pending", "Scheduled", "Progressing", "Promoting"]
    static let failedPhases: Set<String> = ["Failed", "Aborted", "RolledBack"]

    /// `hold`: the reason the object is held at its last good version (its source), if it is.
    public static func of(conditions: [Condition], phase: String?, hold: String? = nil) -> StatusSummary {
        let phase = phase.flatMap { $0.isEmpty ? nil : $0 }
        let stalled = conditions[type: ConditionType.stalled].flatMap { $0.status == .true ? $0 : nil }
        if let hold {
            return StatusSummary(status: "Held", reason: hold, message: stalled?.message ?? "")
        }
        if let stalled {
            return StatusSummary(status: "Stalled", reason: stalled.reason, message: stalled.message)
        }
        if let reconciling = conditions[type: ConditionType.reconciling], reconciling.status == .true {
            let status = phase.map { inProgressPhases.contains($0) || $0 == "Paused" } == true ? phase! : "Reconciling"
            return StatusSummary(status: status, reason: reconciling.reason, message: reconciling.message)
        }
        guard let ready = conditions[type: ConditionType.ready], ready.status != .unknown else {
            return StatusSummary(status: phase ?? "Unknown", reason: conditions[type: ConditionType.ready]?.reason ?? "", message: conditions[type: ConditionType.ready]?.message ?? "")
        }
        if ready.status == .true {
            let status = phase.map { failedPhases.contains($0) } == false ? phase! : "Ready"
            return StatusSummary(status: status, reason: ready.reason, message: ready.message)
        }
        let status = phase.map { failedPhases.contains($0) || $0 == "Paused" } == true ? phase! : "NotReady"
        return StatusSummary(status: status, reason: ready.reason, message: ready.message)
    }
}
