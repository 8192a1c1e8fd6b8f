/// A one-way gate: tasks wait until it opens (a follower's work waits for leadership).
public actor Gate {
    private var isOpen = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    public init(open: Bool = false) { isOpen = open }

    public var opened: Bool { isOpen }

    public func open() {
        isOpen = true
        waiters.forEach { $0.resume() }
        waiters = []
    }

    /// Returns once the gate is open (at once when it is).
    public func wait() async {
        if isOpen { return }
        await withCheckedContinuation { waiters.append($0) }
    }
}
