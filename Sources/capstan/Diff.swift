import ArgumentParser
import CapstanControllers
import CapstanKube
import CapstanLocal
import CapstanModel
import CapstanRuntime
import Foundation

/// `capstan diff PATH...`: what the daemon would do if these files were its spec, decided by
/// the same plan the spec-directory source makes (principle 2 included), without acting.
struct Diff: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what the daemon would do if these files were the spec, without acting.",
        discussion: """
            Against a state directory the paths stand for the whole spec directory: objects they define are created or changed (field by field, with the rollout or scaling that follows), objects no file holds are deleted, a document that does not read holds its object at its last good version, and paths that yield nothing delete nothing. With --kube the objects in the paths are compared with the cluster's custom resources (as kubectl apply would change them: nothing is deleted).
            Exit status: 0 when nothing would change, 1 when something would, 2 on error (a CI job can gate a merge on it).
            """)

    @Argument(help: ArgumentHelp("Spec files or directories.", valueName: "path"))
    var paths: [String]

    @Option(name: .customLong("max-file-size"), help: ArgumentHelp("Spec files larger than this are skipped, as the daemon does.", valueName: "size"))
    var maxFileSize: String = "1Mi"

    @OptionGroup var state: StateOptions
    @OptionGroup var kube: KubeConnection

    /// One object's fate.
    struct Entry {
        /// `Kind/namespace/name`, or for a document that names no valid object its file.
        var title: String
        var verb: String
        var detail: String = ""
        var lines: [String] = []
        var changes: Bool = true
    }

    func run() async throws {
        guard !paths.isEmpty else { throw ValidationError("name the spec files or directories to compare") }
        for path in paths where !FileManager.default.fileExists(atPath: FilePaths.absolute(path)) {
            printError("capstan: \(path) does not exist")
            throw ExitCode(2)
        }
        let maxBytes: Int
        do { maxBytes = try parseMaxFileSize(maxFileSize) } catch {
            printError("capstan: \(error)")
            throw ExitCode(2)
        }
        let loaded = ManifestLoader(maxFileSize: maxBytes).load(paths.map(FilePaths.absolute)).manifests
        let entries: [Entry]
        do {
            entries = kube.enabled ? try await clusterEntries(loaded) : try localEntries(loaded)
        } catch let exit as ExitCode {
            throw exit
        } catch {
            printError("capstan: \(error)")
            throw ExitCode(2)
        }
        var counts: [String: Int] = [:]
        for entry in entries {
            counts[entry.verb, default: 0] += 1
            guard entry.changes else { continue }
            print("\(entry.title): \(entry.verb)\(entry.detail.isEmpty ? "" : " (\(entry.detail))")")
            for line in entry.lines { print("  " + line) }
        }
        let order = ["created", "changed", "deleted", "held", "released", "invalid", "unchanged"]
        let summary = order.compactMap { verb in counts[verb].map { "\($0) \(verb)" } }
        print("Summary: " + (summary.isEmpty ? "no objects" : summary.joined(separator: ", ")))
        if entries.contains(where: \.changes) { throw ExitCode(1) }
    }

    // MARK: - A state directory

    func localEntries(_ loaded: ManifestResult) throws -> [Entry] {
        let store = try openStore(state)
        let records = Dictionary(try store.objects().map { ($0.key, $0) }, uniquingKeysWith: { first, _ in first })
        // The daemon's spec directory, whose files the paths stand for (a copy of it, say).
        let root = try Self.specRoot(store)
        let given = paths.count == 1 ? FilePaths.absolute(paths[0]) : nil
        var isDirectory: ObjCBool = false
        let remap = given.flatMap { FileManager.default.fileExists(atPath: $0, isDirectory: &isDirectory) && isDirectory.boolValue ? $0 : nil }
        let previous = Dictionary(records.values.map { record -> (ObjectKey, String) in
            var file = record.sourceFile
            if let root, let remap, file.hasPrefix(root + "/") { file = remap + file.dropFirst(root.count) }
            return (record.key, file)
        }, uniquingKeysWith: { first, _ in first })
        let plan = DirectorySync.plan(previous: previous, loaded: loaded, allowEmpty: false)
        let applied = Dictionary(plan.apply.map { ($0.key, $0.resource) }, uniquingKeysWith: { first, _ in first })
        var entries: [Entry] = []
        for object in plan.apply {
            guard let record = records[object.key] else {
                entries.append(Entry(title: Self.title(object.key), verb: "created", detail: "from \(object.location)",
                                     lines: Self.effects(created: object.resource, applications: applied, records: records)))
                continue
            }
            var entry = Self.compare(record.resource, object.resource, specChanged: record.specHash != object.specHash,
                                     generation: record.generation, applications: applied, records: records)
            if !entry.changes, !record.problems.isEmpty {
                entry = Entry(title: Self.title(object.key), verb: "released", detail: "its spec reads again: no longer held (\(record.holdReason))")
            }
            entries.append(entry)
        }
        for (key, problems) in plan.keep.sorted(by: { $0.key < $1.key }) {
            let lines = problems.map(\.description)
            let same = records[key].map { $0.problems == lines } ?? false
            entries.append(Entry(title: Self.title(key), verb: "held", detail: "\(plan.unreadable.contains(key) ? StoredObject.sourceUnreadable : StoredObject.invalidSpec): the last good version is kept",
                                 lines: lines, changes: !same))
        }
        for (key, problems) in plan.duplicates.sorted(by: { $0.key < $1.key }) where records[key] != nil {
            entries.append(Entry(title: Self.title(key), verb: "held", detail: "\(StoredObject.duplicateObject): the definition in the file it came from is used",
                                 lines: problems.map(\.description)))
        }
        for key in plan.delete {
            entries.append(Entry(title: Self.title(key), verb: "deleted", detail: "no file holds it",
                                 lines: records[key].map { Self.effects(deleted: $0.resource) } ?? []))
        }
        for key in plan.withheld {
            entries.append(Entry(title: Self.title(key), verb: "held", detail: "\(StoredObject.sourceEmpty): the paths yield no objects, so nothing is deleted"))
        }
        if !plan.unattached.isEmpty {
            let errors = plan.unattached.filter { $0.severity == .error }
            for (title, problems) in Dictionary(grouping: errors, by: { $0.object ?? $0.file }) {
                entries.append(Entry(title: title, verb: "invalid", detail: "not applied", lines: problems.map(\.description)))
            }
        }
        return entries.sorted { $0.title < $1.title }
    }

    /// The directory the daemon reads (`capstan source`'s record), without a trailing slash.
    static func specRoot(_ store: StateStore) throws -> String? {
        for (_, document) in try store.sourceStatuses() {
            guard let fields = (try? JSONSerialization.jsonObject(with: Data(document.utf8))) as? [String: Any] else { continue }
            if fields["type"] as? String == "directory", let path = fields["path"] as? String { return path.hasSuffix("/") ? String(path.dropLast()) : path }
            if fields["type"] as? String == "git" {
                let path = (fields["path"] as? String ?? ".").trimmingCharacters(in: CharacterSet(charactersIn: "/"))
                let current = (store.path as NSString).deletingLastPathComponent + "/source/git/current"
                return path.isEmpty || path == "." ? current : current + "/" + path
            }
        }
        return nil
    }

    // MARK: - A cluster

    func clusterEntries(_ loaded: ManifestResult) async throws -> [Entry] {
        let config = try kube.config()
        let client = try KubeClient(config: config, qps: 0, userAgent: "capstan/\(Capstan.version)")
        defer { Task { await client.shutdown() } }
        var entries: [Entry] = []
        var live: [ObjectKey: AnyResource] = [:]
        for object in loaded.objects {
            let key = object.key
            if let node = try await Self.fetch(client, key) {
                var context = DecodeContext()
                if let resource = AnyResource.decode(kind: key.kind, node, &context) { live[key] = resource }
            }
        }
        let applied = Dictionary(loaded.objects.map { ($0.key, $0.resource) }, uniquingKeysWith: { first, _ in first })
        for object in loaded.objects {
            let key = object.key
            guard let current = live[key] else {
                entries.append(Entry(title: Self.title(key), verb: "created", detail: "from \(object.location)", lines: Self.effects(created: object.resource, applications: applied, records: [:])))
                continue
            }
            let changed = current.specHash != object.resource.specHash
            entries.append(Self.compare(current, object.resource, specChanged: changed, generation: current.metadata.generation ?? 1, applications: applied, records: [:]))
        }
        for invalid in loaded.invalidObjects {
            entries.append(Entry(title: Self.title(invalid.key), verb: "invalid", detail: "kubectl apply would be refused by the CRD's validation, or the operator would hold it",
                                 lines: invalid.problems.map(\.description)))
        }
        return entries
    }

    /// The custom resource, nil when the cluster has none.
    static func fetch(_ client: KubeClient, _ key: ObjectKey) async throws -> SpecNode? {
        do {
            return try await client.get(KubeResource.capstan(key.kind), namespace: key.namespace, name: key.name)
        } catch {
            if error.isNotFound { return nil }
            throw error
        }
    }

    // MARK: - Comparing

    /// An object known and read again: changed (spec field by field, or labels and annotations
    /// alone), or unchanged.
    static func compare(_ old: AnyResource, _ new: AnyResource, specChanged: Bool, generation: Int,
                        applications: [ObjectKey: AnyResource], records: [ObjectKey: StateStore.ObjectRecord]) -> Entry {
        let key = new.key
        let spec = SpecDifference.between(old.resource.spec.encode(), new.resource.spec.encode(), path: "spec")
        let metadata = SpecDifference.between(labelsAndAnnotations(old), labelsAndAnnotations(new), path: "metadata")
        if specChanged || !spec.isEmpty {
            return Entry(title: Self.title(key), verb: "changed", detail: "generation \(generation) -> \(generation + 1)",
                         lines: (spec + metadata).map(\.description) + effects(changed: old, new, applications: applications, records: records))
        }
        if !metadata.isEmpty {
            return Entry(title: Self.title(key), verb: "changed", detail: "labels or annotations only: no new generation", lines: metadata.map(\.description))
        }
        return Entry(title: Self.title(key), verb: "unchanged", changes: false)
    }

    static func title(_ key: ObjectKey) -> String { "\(key.kind.rawValue)/\(key.namespace)/\(key.name)" }

    static func labelsAndAnnotations(_ resource: AnyResource) -> SpecNode {
        let metadata = resource.metadata
        func map(_ values: StringMap?) -> SpecNode { .mapping((values?.values ?? [:]).sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }) }
        return .mapping([("labels", map(metadata.labels)), ("annotations", map(metadata.annotations))])
    }

    /// The Application a Deployment runs, as it would be (the paths' version, else the known).
    static func application(of deployment: Deployment, applications: [ObjectKey: AnyResource], records: [ObjectKey: StateStore.ObjectRecord]) -> Application? {
        let key = ObjectKey(kind: .application, namespace: deployment.metadata.namespace, name: deployment.spec.application)
        if case .application(let application)? = applications[key] { return application }
        if case .application(let application)? = records[key]?.resource { return application }
        return nil
    }

    static func template(_ deployment: Deployment, _ application: Application?) -> WorkloadTemplate? {
        application.map { WorkloadTemplate(deployment: deployment, application: $0, applicationFile: "") }
    }

    /// What a new object brings: a Deployment's replicas.
    static func effects(created resource: AnyResource, applications: [ObjectKey: AnyResource], records: [ObjectKey: StateStore.ObjectRecord]) -> [String] {
        guard case .deployment(let deployment) = resource else { return [] }
        let found = application(of: deployment, applications: applications, records: records) != nil
        return ["=> \(deployment.spec.replicas) replica(s) of version \(deployment.spec.version) start" + (found ? "" : " once Application \(deployment.spec.application) exists")]
    }

    /// What a changed object brings: a rollout (a new revision of a Deployment's template, or
    /// of every Deployment that runs a changed Application), a scaling.
    static func effects(changed old: AnyResource, _ new: AnyResource, applications: [ObjectKey: AnyResource], records: [ObjectKey: StateStore.ObjectRecord]) -> [String] {
        switch (old, new) {
        case (.deployment(let before), .deployment(let after)):
            var lines: [String] = []
            let oldTemplate = template(before, application(of: before, applications: [:], records: records))
            let newTemplate = template(after, application(of: after, applications: applications, records: records))
            if let oldTemplate, let newTemplate, oldTemplate.hash != newTemplate.hash {
                let why = before.spec.version != after.spec.version ? "version \(before.spec.version) -> \(after.spec.version)"
                    : "its template changed (Application \(after.spec.application), or the Deployment's env)"
                lines.append("=> a new revision rolls out: \(why) (\(after.spec.strategy.type.rawValue))")
            }
            if before.spec.replicas != after.spec.replicas {
                lines.append("=> replicas \(before.spec.replicas) -> \(after.spec.replicas)")
            }
            return lines
        case (.application(let before), .application(let after)):
            var lines: [String] = []
            // The Deployments that run it now and still will (a new one starts, a deleted one stops).
            let users = applications.values.compactMap { resource -> Deployment? in
                guard case .deployment(let deployment) = resource, deployment.spec.application == after.metadata.name,
                      (deployment.metadata.namespace) == after.metadata.namespace,
                      records.isEmpty || records[resource.key] != nil else { return nil }
                return deployment
            }
            for deployment in users.sorted(by: { $0.metadata.name < $1.metadata.name })
            where template(deployment, before)?.hash != template(deployment, after)?.hash {
                lines.append("=> deployment/\(deployment.metadata.name) rolls out a new revision")
            }
            return lines
        default:
            return []
        }
    }

    /// What a deleted object takes with it.
    static func effects(deleted resource: AnyResource) -> [String] {
        guard case .deployment(let deployment) = resource else { return [] }
        return ["=> its \(deployment.spec.replicas) replica(s) stop and its port closes"]
    }
}
