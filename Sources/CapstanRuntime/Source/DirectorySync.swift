import CapstanModel

/// What the spec-directory source does after reading the directory once.
public struct SyncPlan: Sendable, Equatable {
    /// Valid objects to store (created, or updated when their spec hash changed).
    public var apply: [DecodedObject] = []
    /// Known objects kept at their last good version because what holds them now cannot be
    /// read, with the problems to report (condition `Stalled`, reason `InvalidSpec`, and a
    /// Warning event naming file:line).
    public var keep: [ObjectKey: [Diagnostic]] = [:]
    /// Known objects no file holds any more.
    public var delete: [ObjectKey] = []
    /// Of `keep`, the objects whose file (or a directory above it) could not be read at all,
    /// rather than read and found invalid.
    public var unreadable: Set<ObjectKey> = []
    /// Deletions not done because the source yielded nothing at all (an emptied directory, a
    /// failed checkout) and `--allow-empty` is off.
    public var withheld: [ObjectKey] = []
    /// Warnings for objects that are used but also defined a second time elsewhere.
    public var duplicates: [ObjectKey: [Diagnostic]] = [:]
    /// Problems tied to no known object (a new object that never was valid, a broken file
    /// that held nothing): reported in logs and by `capstan validate`.
    public var unattached: [Diagnostic] = []

    public init() {}
}

/// Principle 2 of the design, as one function: a file that stops parsing never deletes what it
/// held; a removed file deletes its objects; an emptied source deletes nothing unless allowed.
public enum DirectorySync {
    /// Plans the changes from the objects known before (`previous`, each with the file it came
    /// from) to what reading the source gave (`loaded`).
    public static func plan(previous: [ObjectKey: String], loaded: ManifestResult, allowEmpty: Bool) -> SyncPlan {
        var plan = SyncPlan()
        plan.apply = loaded.objects
        let valid = Set(loaded.objects.map(\.key))

        // An object defined twice keeps the file it came from, whatever the order of paths: a
        // new file with an existing object's name changes nothing running.
        var invalidObjects = loaded.invalidObjects
        for (position, object) in plan.apply.enumerated() {
            guard let file = previous[object.key], object.file != file,
                  let kept = loaded.duplicateObjects.first(where: { $0.key == object.key && $0.file == file }) else { continue }
            plan.apply[position] = kept
            invalidObjects.removeAll { $0.key == object.key && $0.isDuplicate }
            for loser in [object] + loaded.duplicateObjects.filter({ $0.key == object.key && $0.file != file }) {
                let diagnostic = Diagnostic(
                    file: loser.file, mark: loser.mark, object: loser.resource.reference,
                    message: "\(loser.key.kind.rawValue) \(loser.key.namespace)/\(loser.key.name) is defined twice: also at \(kept.location), which defined it first (that one is used; remove one of them)")
                invalidObjects.append(InvalidObject(key: loser.key, file: loser.file, problems: [diagnostic], isDuplicate: true))
            }
        }

        // Problems that belong to an identified object.
        var accounted = Set<Diagnostic>(loaded.invalidObjects.filter(\.isDuplicate).flatMap(\.problems))
        for invalid in invalidObjects {
            accounted.formUnion(invalid.problems)
            if invalid.isDuplicate {
                plan.duplicates[invalid.key, default: []] += invalid.problems
            } else if valid.contains(invalid.key) {
                // Defined validly in one place and invalidly in another: the valid one is used.
                plan.duplicates[invalid.key, default: []] += invalid.problems
            } else if previous[invalid.key] != nil {
                plan.keep[invalid.key, default: []] += invalid.problems
            } else {
                plan.unattached += invalid.problems
            }
        }

        // Files (or directories) with problems not tied to an object could not be read whole:
        // whatever they held before is kept.
        var unreadable: [String: [Diagnostic]] = [:]
        for diagnostic in loaded.diagnostics where diagnostic.severity == .error && !accounted.contains(diagnostic) {
            unreadable[diagnostic.file, default: []].append(diagnostic)
        }
        var attachedToKept = Set<String>()
        for (key, file) in previous.sorted(by: { $0.key < $1.key }) where !valid.contains(key) && plan.keep[key] == nil {
            let problems = unreadable.filter { path, _ in file == path || file.hasPrefix(path.hasSuffix("/") ? path : path + "/") }
            if problems.isEmpty { continue }
            plan.keep[key] = problems.keys.sorted().flatMap { problems[$0]! }
            plan.unreadable.insert(key)
            attachedToKept.formUnion(problems.keys)
        }
        for (path, problems) in unreadable.sorted(by: { $0.key < $1.key }) where !attachedToKept.contains(path) {
            plan.unattached += problems
        }

        // Everything else that is gone, is gone.
        let gone = previous.keys.filter { !valid.contains($0) && plan.keep[$0] == nil }.sorted()
        let yieldedNothing = loaded.objects.isEmpty && loaded.invalidObjects.isEmpty
        if yieldedNothing && !previous.isEmpty && !allowEmpty {
            plan.withheld = gone
        } else {
            plan.delete = gone
        }
        return plan
    }
}
