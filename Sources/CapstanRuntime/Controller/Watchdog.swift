import Synchronization

/// Cancels work that runs past its deadline (a controller's reconcile timeout), with one
/// sleeping timer for all of it rather than one per piece of work.
///
/// A timeout raced as a sleeping child task costs, once the work ends first, a cancelled sleep,
/// and a cancelled sleep keeps its task and its dispatch timer until its deadline: with a
/// 300 s timeout, every reconcile of the last five minutes (2,000 new Deployments: ~8 MB).
/// Here the deadlines come in order (each is its start plus the same timeout), so one timer,
/// armed for the earliest deadline still watched, serves them all; it is never cancelled but
/// at `stop()`.
final class Watchdog<C: Clock>: Sendable where C.Duration == Duration {
    private struct Watched {
        var deadline: C.Instant
        var cancel: @Sendable () -> Void
    }

    private struct State {
        var watched: [Int: Watched] = [:]
        var expired: Set<Int> = []
        var nextID = 0
        var timers = DeadlineTimers<C>()
        var stopped = false
    }

    private let clock: C
    private let state = Mutex(State())

    init(clock: C) {
        self.clock = clock
    }

    /// Watches work until `deadline`: past it, `cancel` is called once. Returns the work's id
    /// for `finish`.
    func watch(until deadline: C.Instant, cancel: @escaping @Sendable () -> Void) -> Int {
        state.withLock { state in
            state.nextID += 1
            state.watched[state.nextID] = Watched(deadline: deadline, cancel: cancel)
            arm(&state, for: deadline)
            return state.nextID
        }
    }

    /// Stops watching the work `id`; returns whether it had been cancelled for its deadline.
    func finish(_ id: Int) -> Bool {
        state.withLock { state in
            state.watched[id] = nil
            return state.expired.remove(id) != nil
        }
    }

    /// Cancels the sleeping timers (the work still watched is not cancelled).
    func stop() {
        state.withLock { state in
            state.stopped = true
            state.timers.cancelAll()
        }
    }

    /// Starts a timer for `deadline` unless one fires at or before it.
    private func arm(_ state: inout State, for deadline: C.Instant) {
        guard !state.stopped else { return }
        state.timers.arm(deadline, on: clock) { [weak self] deadline in self?.fired(deadline) }
    }

    private func fired(_ deadline: C.Instant) {
        let now = clock.now
        let cancels = state.withLock { state -> [@Sendable () -> Void] in
            state.timers.fired(deadline)
            var cancels: [@Sendable () -> Void] = []
            var next: C.Instant?
            for (id, watched) in state.watched where !state.expired.contains(id) {
                if watched.deadline <= now {
                    state.expired.insert(id)
                    cancels.append(watched.cancel)
                } else if next.map({ watched.deadline < $0 }) ?? true {
                    next = watched.deadline
                }
            }
            if let next { arm(&state, for: next) }
            return cancels
        }
        for cancel in cancels { cancel() }
    }
}
