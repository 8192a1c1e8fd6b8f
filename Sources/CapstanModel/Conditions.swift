/// The condition types every kind carries (kstatus: `Ready`, and the "abnormal-true"
/// `Reconciling` and `Stalled`, present only while true).
public enum ConditionType {
    public static let ready = "Ready"
    public static let reconciling = "Reconciling"
    public static let stalled = "Stalled"
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
