/// Sleeping timers by deadline, each firing once; none is cancelled but all at once (shutdown).
///
/// A cancelled sleep keeps its task and its dispatch timer until its deadline anyway, so
/// cancelling a timer for an earlier deadline saves nothing and, repeated, piles them up; a
/// timer left to fire after its work went costs a look that finds nothing. A new timer starts
/// only when none fires at or before the deadline asked for.
struct DeadlineTimers<C: Clock>: Sendable where C.Duration == Duration {
    private var timers: [C.Instant: Task<Void, Never>] = [:]

    /// Calls `fire(deadline)` at `deadline`, unless a timer already fires at or before it.
    mutating func arm(_ deadline: C.Instant, on clock: C, _ fire: @escaping @Sendable (C.Instant) async -> Void) {
        guard !timers.keys.contains(where: { $0 <= deadline }) else { return }
        timers[deadline] = Task {
            do { try await clock.sleep(until: deadline, tolerance: nil) } catch { return }
            await fire(deadline)
        }
    }

    /// Forgets the timer of `deadline`, which fired.
    mutating func fired(_ deadline: C.Instant) {
        timers[deadline] = nil
    }

    mutating func cancelAll() {
        for timer in timers.values { timer.cancel() }
        timers.removeAll()
    }
}
