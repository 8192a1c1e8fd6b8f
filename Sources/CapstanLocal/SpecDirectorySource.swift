import CapstanControllers
import CapstanModel
import CapstanRuntime
import Foundation

/// The spec-directory source of directory mode: reads the directory, plans the change with
/// `DirectorySync` (principle 2), applies it to the state store, records what it decided as
/// events, and hands every key whose desired state changed to `enqueue`.
public actor SpecDirectorySource {
    public let root: String
    private let store: StateStore
    private let cache: ObjectCache
    private let loader: ManifestLoader
    private let allowEmpty: Bool
    private let now: @Sendable () -> Date
    private let log: @Sendable (String, LogLevel) -> Void

    /// How loud a line of the source is: `warning` for what was refused or held.
    public enum LogLevel: String, Sendable {
        case info, warning
    }
    private let enqueue: @Sendable (ObjectKey, AnyResource?) async -> Void

    /// What one sync did.
    public struct Summary: Sendable, Equatable {
        public var applied = 0
        public var changed = 0
        public var kept = 0
        public var deleted = 0
        public var withheld = 0
        public var problems = 0
        /// Whether only changed files were read (not the whole directory).
        public var partial = false
    }

    public init(
        root: String, store: StateStore, cache: ObjectCache, allowEmpty: Bool = false, maxFileSize: Int = ManifestDecoder.defaultMaxFileSize,
        now: @escaping @Sendable () -> Date = Date.init, log: @escaping @Sendable (String, LogLevel) -> Void = { _, _ in },
        enqueue: @escaping @Sendable (ObjectKey, AnyResource?) async -> Void
    ) {
        self.root = root
        self.store = store
        self.cache = cache
        self.loader = ManifestLoader(maxFileSize: maxFileSize)
        self.allowEmpty = allowEmpty
        self.now = now
        self.log = log
        self.enqueue = enqueue
    }

    /// The commit the directory holds (a git source's checkout): recorded on each object whose
    /// spec a sync creates or changes, and named in the event saying so.
    private var revision: String? = nil

    public func setRevision(_ commit: String?) {
        revision = commit
    }

    /// Holds every object that reads cleanly at its last good version because of its source
    /// (`reason`: a git fetch that failed): the hold is visible where holds are (STATUS Held,
    /// a condition, one Warning event each). Objects held for their own spec keep that hold.
    public func holdAll(reason: String, message: String) async throws {
        let time = now()
        for stored in cache.list() where stored.problems.isEmpty || stored.holdReason == reason {
            let key = stored.resource.key
            if try store.setProblems(key, [message], reason: reason) {
                cache.update(key) { $0.problems = [message]; $0.holdReason = reason }
                try store.recordEvent(.warning, reason: reason, message: message + "; the last good version is kept", about: key, at: time)
                await enqueue(key, cache.get(key)?.resource)
            }
        }
    }

    /// Ends the holds `holdAll` made for `reason` (the source answers again); returns how many.
    @discardableResult
    public func releaseAll(reason: String) async throws -> Int {
        var released = 0
        for stored in cache.list() where !stored.problems.isEmpty && stored.holdReason == reason {
            let key = stored.resource.key
            if try store.setProblems(key, [], reason: reason) {
                cache.update(key) { $0.problems = []; $0.holdReason = StoredObject.invalidSpec }
                released += 1
                await enqueue(key, cache.get(key)?.resource)
            }
        }
        return released
    }

    /// Whether the last read found an object defined twice: while it lasts, every change is a
    /// full read (which copy wins depends on files a partial read would not see).
    private var sawDuplicates = false
    /// Whether the last read was an emptied directory, its deletions withheld: the next change
    /// is a full read, so that what was withheld is deleted once the directory holds
    /// something again.
    private var withheldDeletions = false
    /// The file each known object came from, and the directories holding them (kept up to
    /// date by every sync, so a partial read costs what the change costs).
    private var heldFiles: [ObjectKey: String]? = nil
    private var directories: Set<String>? = nil

    /// Reads the directory and applies what changed: only the files among `changed` when that
    /// is enough to know (an edited, added or removed spec file), else the whole directory.
    @discardableResult
    public func sync(changed: Set<String>? = nil) async throws -> Summary {
        var plan: SyncPlan? = nil
        var loaded = ManifestResult()
        var readFiles: Set<String>? = nil
        if let changed, !sawDuplicates, !withheldDeletions,
           let files = SpecFileCollector.changedFiles(root: root, paths: changed, knownDirectories: knownDirectories()) {
            (plan, loaded, readFiles) = partialPlan(files)
        }
        let partial = plan != nil
        if plan == nil {
            readFiles = nil
            loaded = loader.load([root]).manifests
            plan = DirectorySync.plan(previous: try store.sourceFiles(), loaded: loaded, allowEmpty: allowEmpty)
        }
        var summary = try await apply(plan!, loaded: loaded, readFiles: readFiles)
        summary.partial = partial
        return summary
    }

    /// Every directory that holds a known object's file, up to the root.
    private func knownDirectories() -> Set<String> {
        if let directories { return directories }
        var directories = Set<String>()
        for file in Set(held().values) {
            var path = file
            while let slash = path.lastIndex(of: "/"), path.count > root.count {
                path = String(path[..<slash])
                if !directories.insert(path).inserted { break }
            }
        }
        self.directories = directories
        return directories
    }

    private func held() -> [ObjectKey: String] {
        if let heldFiles { return heldFiles }
        let files = Dictionary(cache.list().map { ($0.key, $0.sourceFile) }, uniquingKeysWith: { first, _ in first })
        heldFiles = files
        return files
    }

    private func hold(_ key: ObjectKey, in file: String?) {
        guard heldFiles != nil, heldFiles?[key] != file else { return }
        heldFiles?[key] = file
        directories = nil
    }

    /// Plans from the changed files alone, plus the files that hold any object they define (so
    /// that duplicates are seen). Nil when the change would delete every object (the
    /// `--allow-empty` guard needs the whole directory).
    private func partialPlan(_ files: [String]) -> (SyncPlan?, ManifestResult, Set<String>) {
        let held = held()
        var scope = Set(files)
        // A removed file is in scope (what it held goes) but not read (it would be "cannot read").
        let existing = files.filter { FileManager.default.fileExists(atPath: $0) }
        var loaded = loader.load(existing).manifests
        let others = Set((loaded.objects.map(\.key) + loaded.invalidObjects.map(\.key)).compactMap { held[$0] }).subtracting(scope)
        if !others.isEmpty {
            scope.formUnion(others)
            loaded = loader.load(scope.filter { FileManager.default.fileExists(atPath: $0) }.sorted { $0.split(separator: "/").lexicographicallyPrecedes($1.split(separator: "/")) }).manifests
        }
        let previous = held.filter { scope.contains($0.value) }
        let plan = DirectorySync.plan(previous: previous, loaded: loaded, allowEmpty: true)
        if !held.isEmpty && plan.delete.count == held.count { return (nil, loaded, scope) }
        return (plan, loaded, scope)
    }

    /// Problems tied to no known object (a new object that does not validate, a file skipped
    /// for its size or type), by file, as last reported: each is logged and recorded as a
    /// Warning event about the file once, not again on every read.
    private var reportedUnattached: [String: Set<String>] = [:]

    /// Logs what is new among `problems` (a warning when something was not applied) and records
    /// an event about the file (`capstan events specfile/PATH`). `read`: the files this sync
    /// read (nil: all of them), whose earlier problems are forgotten.
    private func reportUnattached(_ problems: [Diagnostic], read: Set<String>?, at time: Date) throws {
        let previous = reportedUnattached
        // What this read saw replaces what earlier reads saw of the same files.
        var next = previous
        if let read {
            for file in read { next[file] = nil }
        } else {
            next = [:]
        }
        for (file, problems) in Dictionary(grouping: problems, by: \.file).sorted(by: { $0.key < $1.key }) {
            for problem in problems {
                let text = problem.description
                next[file, default: []].insert(text)
                if previous[file]?.contains(text) == true { continue }  // reported already
                guard problem.severity == .error else {
                    log(text, .info)
                    continue
                }
                log(text + " (not applied)", .warning)
                let reference = ObjectReference(kind: "SpecFile", namespace: "", name: file)
                try store.recordEvent(.warning, reason: problem.mark == nil ? "SpecFileSkipped" : StoredObject.invalidSpec,
                                      message: text + " (not applied)", about: reference, at: time)
            }
        }
        reportedUnattached = next.filter { !$0.value.isEmpty }
    }

    private func apply(_ plan: SyncPlan, loaded: ManifestResult, readFiles: Set<String>?) async throws -> Summary {
        sawDuplicates = !plan.duplicates.isEmpty
        withheldDeletions = !plan.withheld.isEmpty
        var summary = Summary()
        let time = now()
        // Objects defined twice are held (DuplicateObject) for as long as the second definition
        // lasts; what they were held for before this read tells whether that is news.
        let duplicateKeys = Set(plan.duplicates.keys)
        let heldBefore = Dictionary(duplicateKeys.compactMap { key in cache.get(key).map { (key, $0.problems.isEmpty ? "" : $0.holdReason + "\n" + $0.problems.joined(separator: "\n")) } },
                                    uniquingKeysWith: { first, _ in first })

        for applied in try store.applyAll(plan.apply, now: time, revision: revision) {
            summary.applied += 1
            let key = applied.object.key
            try store.setPruneDisabled(key, Prune.isDisabled(applied.resource.metadata), at: time)
            // The cache follows the store: labels, annotations or the file may change without
            // a new generation (nothing to reconcile, but the indexes must know).
            let previous = cache.get(key)
            var resource = applied.resource
            if let previous { resource = resource.withStatus(of: previous.resource) }
            let stored = StoredObject(resource: resource, generation: applied.generation, sourceFile: applied.object.file)
            if previous != stored {
                cache.upsert(key, stored)
                hold(key, in: applied.object.file)
            }
            let cleared = applied.problemsCleared && !duplicateKeys.contains(key)
            if applied.outcome != .unchanged || cleared || previous == nil {
                summary.changed += 1
                if applied.outcome == .specChanged { log("\(key): spec changed, generation \(applied.generation)", .info) }
                if applied.outcome == .created { log("\(key): created from \(applied.object.location)", .info) }
                if let revision, applied.outcome != .unchanged {
                    let file = GitSpecSource.repositoryPath(of: applied.object.file) ?? applied.object.file
                    try store.recordEvent(.normal, reason: applied.outcome == .created ? "Created" : "SpecChanged",
                                          message: "generation \(applied.generation) from commit \(revision.prefix(12)) (\(file))", about: key, at: time)
                }
                if cleared { log("\(key): its spec reads again; no longer held", .info) }
                await enqueue(key, applied.object.resource)
            }
        }
        for (key, problems) in plan.keep.sorted(by: { $0.key < $1.key }) {
            summary.kept += 1
            let lines = problems.map(\.description)
            let reason = plan.unreadable.contains(key) ? StoredObject.sourceUnreadable : StoredObject.invalidSpec
            if try store.setProblems(key, lines, reason: reason) {
                cache.update(key) { $0.problems = lines; $0.holdReason = reason }
                try store.recordEvent(.warning, reason: reason, message: "\(lines[0])" + (lines.count > 1 ? " (and \(lines.count - 1) more)" : "") + "; the last good version is kept", about: key, at: time)
                log("\(key): \(lines[0]); keeping the last good version", .warning)
                await enqueue(key, cache.get(key)?.resource)
            }
        }
        // An emptied directory deletes nothing (principle 2), and says so on every object it
        // keeps: a held condition, one Warning event, a warning in the log.
        let emptied = ["\(root) yielded no objects: nothing is deleted unless the daemon runs with --allow-empty (or put the spec files back)"]
        for key in plan.withheld {
            if try store.setProblems(key, emptied, reason: StoredObject.sourceEmpty) {
                cache.update(key) { $0.problems = emptied; $0.holdReason = StoredObject.sourceEmpty }
                try store.recordEvent(.warning, reason: StoredObject.sourceEmpty, message: emptied[0] + "; the last good version is kept", about: key, at: time)
                await enqueue(key, cache.get(key)?.resource)
            }
        }
        for key in plan.delete {
            let removed = cache.remove(key) != nil
            hold(key, in: nil)
            if try store.delete(key) || removed {
                summary.deleted += 1
                try store.recordEvent(.normal, reason: "Deleted", message: "no spec file holds it any more", about: key, at: time)
                log("\(key): deleted (no spec file holds it any more)", .info)
                await enqueue(key, nil)
            }
        }
        if !plan.withheld.isEmpty {
            summary.withheld = plan.withheld.count
            log("the spec directory \(root) yielded no objects: keeping all \(plan.withheld.count), held at their last good version (start with --allow-empty to allow deleting everything)", .warning)
        }
        for (key, problems) in plan.duplicates.sorted(by: { $0.key < $1.key }) where cache.get(key) != nil {
            let lines = problems.map(\.description)
            try store.setProblems(key, lines, reason: StoredObject.duplicateObject)
            cache.update(key) { $0.problems = lines; $0.holdReason = StoredObject.duplicateObject }
            guard heldBefore[key] != StoredObject.duplicateObject + "\n" + lines.joined(separator: "\n") else { continue }
            for line in lines {
                try store.recordEvent(.warning, reason: StoredObject.duplicateObject, message: line + " (refused: the definition in the file it came from is used)", about: key, at: time)
                log(line + " (refused)", .warning)
            }
            await enqueue(key, cache.get(key)?.resource)
        }
        try reportUnattached(plan.unattached, read: readFiles, at: time)
        summary.problems = loaded.errors.count
        return summary
    }
}
