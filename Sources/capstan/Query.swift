import ArgumentParser
import CapstanLocal
import CapstanModel
import Foundation

enum GetFormat: String, ExpressibleByArgument, CaseIterable {
    case table, wide, yaml, json
}

/// A mistake in what the user typed that is not about the command's shape: printed as one
/// line (`Error: ...`), without the usage text a `ValidationError` brings.
struct UserError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Parses a KIND argument with kubectl's names (`app`, `applications`, `Deployment`, ...).
func parseKind(_ name: String) throws -> ResourceKind {
    guard let kind = ResourceKind(name: name) else {
        let known = ResourceKind.allCases.map { "\($0.plural) (\(([$0.singular] + $0.shortNames).joined(separator: ", ")))" }
        throw UserError("unknown kind \"\(name)\"; kinds: \(known.joined(separator: "; ")); or all")
    }
    return kind
}

/// Parses the KIND argument of `get`: one kind, several separated by commas, or `all` /
/// `capstan` (every kind, as kubectl's `all` and the CRDs' category).
func parseKinds(_ text: String) throws -> [ResourceKind] {
    var kinds: [ResourceKind] = []
    for name in text.split(separator: ",").map(String.init) {
        let new = ["all", "capstan"].contains(name.lowercased()) ? ResourceKind.allCases : [try parseKind(name)]
        for kind in new where !kinds.contains(kind) { kinds.append(kind) }
    }
    guard !kinds.isEmpty else { throw UserError("name a kind, such as deployments, or all") }
    return kinds
}

/// Parses `KIND/NAME`.
func parseReference(_ text: String, namespace: String) throws -> ObjectKey {
    let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
    guard parts.count == 2, !parts[1].isEmpty else { throw UserError("expected KIND/NAME, such as application/web, got \"\(text)\"") }
    return ObjectKey(kind: try parseKind(parts[0]), namespace: namespace, name: parts[1])
}

func openStore(_ options: StateOptions) throws -> StateStore {
    do {
        return try StateStore(directory: options.resolved, readOnly: true)
    } catch {
        printError("capstan: \(error)")
        throw ExitCode(1)
    }
}

/// kubectl-style ages: 45s, 12m, 5h, 3d.
func age(since date: Date?, now: Date = Date()) -> String {
    guard let date else { return "<unknown>" }
    let seconds = max(0, Int(now.timeIntervalSince(date)))
    switch seconds {
    case ..<120: return "\(seconds)s"
    case ..<(120 * 60): return "\(seconds / 60)m"
    case ..<(48 * 3600): return "\(seconds / 3600)h"
    default: return "\(seconds / 86400)d"
    }
}

/// Prints rows as aligned columns (widths from `widthsFrom`, by default the rows themselves).
func printTable(_ rows: [[String]], widthsFrom: [[String]]? = nil) {
    let sizing = widthsFrom ?? rows
    guard let header = sizing.first else { return }
    var widths = header.map(\.count)
    for row in sizing { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
    for row in rows {
        var line = ""
        for (i, cell) in row.enumerated() {
            line += i == row.count - 1 ? cell : cell.padding(toLength: widths[i] + 3, withPad: " ", startingAt: 0)
        }
        print(line.replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression))
    }
}

struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List objects of a kind with their state (reads the state store; works with the daemon stopped).",
        discussion: """
            STATUS is one word that never contradicts the conditions: Held (kept at its last good version because its spec or source cannot be used: REASON says why), Stalled, a phase such as Progressing or Succeeded, Ready, NotReady or Unknown. -o wide adds the message.
            """)

    @Argument(help: ArgumentHelp("application|app, deployment|cdeploy, canary, alertrule, secretrotation, backupschedule (singular, plural or short), several separated by commas, or all.", valueName: "kind"))
    var kind: String

    @Argument(help: "Only this object.")
    var name: String?

    @Option(name: .shortAndLong, help: "Namespace (default: all).")
    var namespace: String?

    @Option(name: .shortAndLong, help: "table (default), wide, yaml or json.")
    var output: GetFormat = .table

    @Flag(name: .shortAndLong, help: "Watch: after the list, print an object again whenever it changes (table output).")
    var watch = false

    @OptionGroup var state: StateOptions

    mutating func validate() throws {
        if watch && (output == .yaml || output == .json) { throw ValidationError("-w prints tables: use -o table or -o wide") }
        // `kind/name`, as kubectl takes it.
        if let slash = kind.firstIndex(of: "/") {
            guard name == nil else { throw ValidationError("give the object as kind/name or as kind name, not both") }
            name = String(kind[kind.index(after: slash)...])
            kind = String(kind[..<slash])
            if name!.isEmpty || kind.isEmpty { throw ValidationError("\"\(kind)/\(name!)\" is not kind/name") }
        }
    }

    func run() async throws {
        if ["lease", "leases"].contains(kind.lowercased()) {
            try printLeases(try openStore(state))
            return
        }
        let kinds = try parseKinds(kind)
        let store = try openStore(state)
        guard watch else {
            try printOnce(kinds: kinds, store: store)
            return
        }
        guard kinds.count == 1, let kind = kinds.first else { throw UserError("-w watches one kind: name it, such as deployments") }
        // Like kubectl get -w: the table once, then a row for every object that changes.
        var printed: [ObjectKey: [String]] = [:]
        var header = true
        while true {
            let rows = try tableRows(kind: kind, records: try records(of: kind, store: store), prefixed: false)
            var changed: [[String]] = []
            for (key, row) in rows.rows where printed[key] != Self.withoutAge(row, header: rows.header) {
                printed[key] = Self.withoutAge(row, header: rows.header)
                changed.append(row)
            }
            if header || !changed.isEmpty {
                printTable(header ? [rows.header] + changed : changed, widthsFrom: [rows.header] + rows.rows.map(\.1))
                fflush(nil)
                header = false
            }
            try await Task.sleep(for: .milliseconds(300))
        }
    }

    /// A row without its AGE cell (which changes every second and is no change of the object).
    private static func withoutAge(_ row: [String], header: [String]) -> [String] {
        var row = row
        if let index = header.firstIndex(of: "AGE"), index < row.count { row.remove(at: index) }
        return row
    }

    private func records(of kind: ResourceKind, store: StateStore) throws -> [StateStore.ObjectRecord] {
        var records = try store.objects(kind: kind)
        if let namespace { records = records.filter { $0.key.namespace == namespace } }
        if let name { records = records.filter { $0.key.name == name } }
        return records
    }

    /// The object as shown: with `status.sourceRevision` (the commit its spec was last applied
    /// from, and the file's path in the repository) when it came from a git source.
    static func node(_ record: StateStore.ObjectRecord) -> SpecNode {
        let node = record.resource.encode()
        guard !record.revision.isEmpty, case .mapping(var entries) = node.value else { return node }
        let revision = SpecNode.mapping([("commit", .string(record.revision)),
                                         ("path", .string(GitSpecSource.repositoryPath(of: record.sourceFile) ?? record.sourceFile))])
        if let index = entries.firstIndex(where: { $0.key == "status" }), case .mapping(var status) = entries[index].value.value {
            status.removeAll { $0.key == "sourceRevision" }
            status.append(.init("sourceRevision", revision))
            entries[index].value = SpecNode(.mapping(status))
        } else {
            entries.append(.init("status", .mapping([("sourceRevision", revision)])))
        }
        return SpecNode(.mapping(entries))
    }

    /// STATUS, REASON and the message of an object (kstatus' order; a hold first).
    static func summary(_ record: StateStore.ObjectRecord, node: SpecNode? = nil) -> StatusSummary {
        let type = record.key.kind.type
        let node = node ?? record.resource.encode()
        let phase = type.statusColumnPath.contains("conditions") ? nil : JSONPath.text(type.statusColumnPath, on: node)
        var summary = StatusSummary.of(conditions: record.resource.resource.status.conditions, phase: phase,
                                       hold: record.problems.isEmpty ? nil : record.holdReason)
        if summary.message.isEmpty, let problem = record.problems.first { summary.message = problem }
        return summary
    }

    /// The table: a header and a row per object. `prefixed`: names as `kind/name` (`get all`).
    private func tableRows(kind: ResourceKind, records: [StateStore.ObjectRecord], prefixed: Bool) throws -> (header: [String], rows: [(ObjectKey, [String])]) {
        let type = kind.type
        let wide = output == .wide
        // Deployments read as kubectl's do: READY is ready/desired instances.
        let ratio = kind == .deployment
        let extra = type.columns.filter { (wide || $0.priority == 0) && !(ratio && ["Ready-Replicas", "Replicas"].contains($0.name)) }
        // -o wide: the commit of each object's spec, when they come from git.
        let revisions = wide && records.contains { !$0.revision.isEmpty }
        let header = ["NAMESPACE", "NAME", "READY", "STATUS", "REASON"] + extra.map { $0.name.uppercased() } + ["AGE"] + (revisions ? ["REVISION"] : [])
            + (wide ? ["MESSAGE"] : [])
        let rows = records.map { record -> (ObjectKey, [String]) in
            let node = record.resource.encode()
            let summary = Self.summary(record, node: node)
            return (record.key, [
                record.key.namespace, prefixed ? "\(kind.singular)/\(record.key.name)" : record.key.name,
                ratio ? Self.readyRatio(record.resource) : JSONPath.text(".status.conditions[?(@.type==\"Ready\")].status", on: node),
                summary.status, summary.reason,
            ] + extra.map { JSONPath.text($0.jsonPath, on: node) } + [age(since: record.createdAt)] + (revisions ? [String(record.revision.prefix(12))] : [])
              + (wide ? [summary.message] : []))
        }
        return (header, rows)
    }

    /// Who leads the daemons of this state directory, and since when (`capstan get leases`).
    private func printLeases(_ store: StateStore) throws {
        let leases = try store.leases()
        guard !leases.isEmpty else {
            print("No leases found (no daemon ran with --leader-elect).")
            return
        }
        let now = Date()
        let rows = leases.map { name, record -> [String] in
            let expires = record.renewTime.addingTimeInterval(Double(record.leaseDurationSeconds))
            return [name, record.holderIdentity.isEmpty ? "<released>" : record.holderIdentity, Timestamp(record.acquireTime).description,
                    Timestamp(record.renewTime).description, "\(record.leaseDurationSeconds)s", String(record.leaseTransitions),
                    expires > now ? "valid" : "expired"]
        }
        printTable([["NAME", "HOLDER", "ACQUIRED", "RENEWED", "DURATION", "TRANSITIONS", "STATE"]] + rows)
    }

    /// `2/3`: ready instances of the desired.
    static func readyRatio(_ resource: AnyResource) -> String {
        guard case .deployment(let deployment) = resource else { return "" }
        return "\(deployment.status.readyReplicas ?? 0)/\(deployment.spec.replicas)"
    }

    private func printOnce(kinds: [ResourceKind], store: StateStore) throws {
        let found = try kinds.map { ($0, try records(of: $0, store: store)) }.filter { !$0.1.isEmpty }
        if let name, found.isEmpty {
            let what = kinds.count == 1 ? "\(kinds[0].singular) \"\(name)\"" : "no object named \"\(name)\""
            throw UserError("\(what) not found" + (namespace.map { " in namespace \($0)" } ?? ""))
        }
        let nodes = found.flatMap { $0.1 }.map(Self.node)
        switch output {
        case .yaml:
            print(nodes.map(YAMLEmitter.emit).joined(separator: "---\n"), terminator: "")
        case .json:
            let single = name != nil && kinds.count == 1 && nodes.count == 1
            let node = single ? nodes[0] : SpecNode.mapping([("apiVersion", .string("v1")), ("kind", .string("List")), ("items", .sequence(nodes))])
            print(JSONEmitter.emit(node), terminator: "")
        case .table, .wide:
            guard !found.isEmpty else {
                // As kubectl says it: on standard error, on a line of its own.
                printError(namespace.map { "No resources found in \($0) namespace." } ?? "No resources found.")
                return
            }
            for (index, (kind, records)) in found.enumerated() {
                if index > 0 { print("") }
                let table = try tableRows(kind: kind, records: records, prefixed: kinds.count > 1)
                printTable([table.header] + table.rows.map(\.1))
            }
            // `get all`: the source too, as `capstan source` shows it.
            if kinds.count > 1, name == nil, let rows = try SourceCommand.rows(store), rows.count > 1 {
                print("")
                printTable(rows)
            }
        }
    }
}

struct Describe: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one object: source, spec, conditions and recent events.")

    @Argument(help: ArgumentHelp("The kind.", valueName: "kind"))
    var kind: String

    @Argument(help: "The object's name.")
    var name: String

    @Option(name: .shortAndLong, help: "Namespace.")
    var namespace: String = "default"

    @OptionGroup var state: StateOptions

    func run() throws {
        let key = ObjectKey(kind: try parseKind(kind), namespace: namespace, name: name)
        let store = try openStore(state)
        guard let record = try store.object(key) else {
            printError("capstan: \(key.kind.singular) \"\(name)\" not found in namespace \(namespace)")
            throw ExitCode(1)
        }
        let resource = record.resource.resource
        print("Name:         \(key.name)")
        print("Namespace:    \(key.namespace)")
        print("Kind:         \(key.kind.rawValue)")
        print("Generation:   \(record.generation)")
        print("Source:       \(record.source)")
        if !record.revision.isEmpty {
            print("Revision:     \(record.revision) (\(GitSpecSource.repositoryPath(of: record.sourceFile) ?? record.sourceFile))")
        }
        print("Created:      \(Timestamp(record.createdAt)) (\(age(since: record.createdAt)) ago)")
        let summary = Get.summary(record)
        print("Status:       \(summary.status)" + (summary.reason.isEmpty ? "" : " (\(summary.reason))"))
        if !record.problems.isEmpty {
            print("Held:         \(record.holdReason): the last good version below is in use, because")
            for problem in record.problems { print("  \(problem)") }
        }
        print("Spec:")
        print(YAMLEmitter.emit(resource.spec.encode()).split(separator: "\n", omittingEmptySubsequences: false).map { $0.isEmpty ? "" : "  " + $0 }.joined(separator: "\n"), terminator: "")
        let status = resource.status.encode()
        let conditions = JSONPath.evaluate(".conditions[*]", on: status)
        print("Conditions:")
        if conditions.isEmpty {
            print("  <none>")
        } else {
            var rows = [["  TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
            for condition in conditions {
                let time = condition["lastTransitionTime"]?.scalarText.flatMap { RFC3339Text.parse($0) }
                rows.append(["  " + (condition["type"]?.scalarText ?? ""), condition["status"]?.scalarText ?? "", condition["reason"]?.scalarText ?? "",
                             age(since: time), condition["message"]?.scalarText ?? ""])
            }
            printTable(rows)
        }
        if let observed = status["observedGeneration"]?.scalarText { print("Observed generation: \(observed)") }
        if key.kind == .deployment {
            printTracks(status)
            try printInstances(of: key, store: store)
        }
        if key.kind == .secretRotation { printVersions(status) }
        if key.kind == .backupSchedule { printBackups(status) }
        if key.kind == .alertRule { printAlerts(status) }
        if case .canary(let canary) = record.resource { printCanary(canary) }
        print("Events:")
        let events = try store.events(for: key).suffix(20)
        if events.isEmpty {
            print("  <none>")
        } else {
            var rows = [["  TYPE", "REASON", "AGE", "COUNT", "MESSAGE"]]
            for stored in events {
                let event = stored.event
                rows.append(["  " + event.type.rawValue, event.reason, age(since: event.lastTimestamp.date), "\(event.count)", event.message])
            }
            printTable(rows)
        }
    }
}

extension Describe {
    /// A Deployment's tracks: which revision each runs, whether it serves the port.
    func printTracks(_ status: SpecNode) {
        let tracks = JSONPath.evaluate(".tracks[*]", on: status)
        guard !tracks.isEmpty else { return }
        print("Tracks:")
        var rows = [["  TRACK", "ROLE", "REVISION", "VERSION", "READY", "WEIGHT", "UNTIL"]]
        for track in tracks {
            let ready = "\(track["readyReplicas"]?.scalarText ?? "0")/\(track["replicas"]?.scalarText ?? "0")"
            rows.append(["  " + (track["name"]?.scalarText ?? ""), track["role"]?.scalarText ?? "", track["revision"]?.scalarText ?? "",
                         track["version"]?.scalarText ?? "", ready, track["weight"]?.scalarText.map { $0 + "%" } ?? "", track["retireAt"]?.scalarText ?? ""])
        }
        printTable(rows)
    }

    /// A SecretRotation's versions (key names and fingerprints, never values) and the
    /// rotation under way.
    func printVersions(_ status: SpecNode) {
        let versions = JSONPath.evaluate(".versions[*]", on: status)
        if !versions.isEmpty {
            print("Versions:")
            let current = status["currentVersion"]?.scalarText
            var rows = [["  VERSION", "CREATED", "KEYS", "FINGERPRINT"]]
            for version in versions.reversed() {
                let number = version["version"]?.scalarText ?? ""
                rows.append(["  " + number + (number == current ? " (current)" : ""), version["createdAt"]?.scalarText ?? "",
                             JSONPath.evaluate(".keys[*]", on: version).compactMap(\.scalarText).joined(separator: ","), version["fingerprint"]?.scalarText ?? ""])
            }
            printTable(rows)
        }
        if let rotation = status["rotation"] {
            let from = rotation["fromVersion"]?.scalarText.map { "from version \($0) " } ?? ""
            print("Rotation: \(rotation["reason"]?.scalarText ?? ""), \(from)to version \(rotation["toVersion"]?.scalarText ?? ""), step \(rotation["step"]?.scalarText ?? "")"
                  + (rotation["failure"]?.scalarText.map { " (rolling back: \($0))" } ?? ""))
        }
        if let token = status["restartToken"]?.scalarText { print("Dependents restarted for: \(token)") }
    }

    /// A BackupSchedule's runs: those going, the last ones with their outcome (a failure's
    /// reason and the tool's or server's message), and the runs missed.
    func printBackups(_ status: SpecNode) {
        let active = JSONPath.evaluate(".active[*]", on: status).compactMap(\.scalarText)
        if !active.isEmpty { print("Running: \(active.joined(separator: ", "))") }
        let backups = JSONPath.evaluate(".backups[*]", on: status)
        if !backups.isEmpty {
            print("Backups:")
            var rows = [["  ID", "FINISHED", "OUTCOME", "SIZE", "VERIFIED", "MESSAGE"]]
            for backup in backups {
                let outcome = backup["outcome"]?.scalarText ?? ""
                let reason = backup["reason"]?.scalarText.map { "/\($0)" } ?? ""
                rows.append(["  " + (backup["id"]?.scalarText ?? ""), backup["time"]?.scalarText ?? "", outcome + reason,
                             backup["size"]?.scalarText.flatMap(Int.init).map(BackupList.size) ?? "", backup["verified"]?.scalarText ?? "",
                             backup["message"]?.scalarText ?? ""])
            }
            printTable(rows)
        }
        if let missed = status["missedRuns"]?.scalarText { print("Missed runs: \(missed)") }
    }

    /// An AlertRule's label sets and its notification log (the newest last).
    func printAlerts(_ status: SpecNode) {
        if let until = status["acknowledgedUntil"]?.scalarText { print("Acknowledged until: \(until)") }
        let alerts = JSONPath.evaluate(".alerts[*]", on: status)
        if !alerts.isEmpty {
            print("Alerts:")
            var rows = [["  STATE", "VALUE", "SINCE", "LABELS"]]
            for alert in alerts {
                let labels = (alert["labels"]?.entries ?? []).map { "\($0.key)=\($0.value.scalarText ?? "")" }.sorted().joined(separator: ",")
                let since = alert["firedAt"]?.scalarText ?? alert["activeSince"]?.scalarText
                rows.append(["  " + (alert["state"]?.scalarText ?? ""), alert["value"]?.scalarText ?? "",
                             age(since: since.flatMap { RFC3339Text.parse($0) }), labels.isEmpty ? "{}" : labels])
            }
            printTable(rows)
        }
        let notifications = JSONPath.evaluate(".notifications[*]", on: status)
        if !notifications.isEmpty {
            print("Notifications:")
            var rows = [["  TIME", "RECEIVER", "TRANSITION", "DELIVERED", "ATTEMPTS", "ERROR"]]
            for record in notifications {
                let delivered = record["delivered"]?.scalarText == "true" ? "yes" : record["abandoned"]?.scalarText == "true" ? "abandoned" : "not yet"
                rows.append(["  " + (record["time"]?.scalarText ?? ""), record["receiver"]?.scalarText ?? "", record["transition"]?.scalarText ?? "",
                             delivered, record["attempts"]?.scalarText ?? "0", record["error"]?.scalarText ?? ""])
            }
            printTable(rows)
        }
    }

    /// Where a Canary's run is (version over version, the step, the weight, why it stopped),
    /// its steps with the current one marked, and its last analysis runs.
    func printCanary(_ canary: Canary) {
        let status = canary.status
        let steps = canary.spec.steps
        if let version = status.canaryVersion {
            let step = status.currentStep ?? 0
            let limit = canary.spec.analysis.failureLimit
            print("Run:          version \(version) beside version \(status.stableVersion ?? "?"), \(status.phase?.rawValue ?? "?")"
                  + (status.phase == .paused || status.phase == .progressing ? " at step \(min(step + 1, steps.count)) of \(steps.count), \(status.canaryWeight ?? 0)% of the traffic" : "")
                  + (canary.spec.analysis.metrics.isEmpty ? "" : "; failed analyses \(status.failedAnalyses ?? 0) (failureLimit \(limit))"))
            if let message = status.message { print("              \(message)") }
        } else if let stable = status.stableVersion {
            print("Run:          none; version \(stable) is stable")
        }
        if !steps.isEmpty {
            print("Steps:")
            let current = status.canaryVersion == nil || status.phase == .succeeded || status.phase == .aborted ? nil : status.currentStep ?? 0
            var rows = [["  ", "STEP", "WHAT"]]
            for (index, step) in steps.enumerated() {
                let what: String
                if let weight = step.setWeight {
                    what = "setWeight \(weight)%"
                } else if let pause = step.pause {
                    what = pause.duration.map { "pause \($0)" } ?? "pause until `capstan promote canary/\(canary.metadata.name)`"
                } else {
                    what = "analysis"
                }
                rows.append([index == current ? "  >" : "  ", "\(index + 1)", what])
            }
            printTable(rows)
        }
        if !status.analysisRuns.isEmpty {
            print("Analysis runs:")
            var rows = [["  TIME", "METRIC", "VALUE", "PASSED", "WHY"]]
            for run in status.analysisRuns.suffix(10) {
                rows.append(["  \(run.time)", run.metric, run.value.map { Self.number($0) } ?? "-",
                             run.passed ? "yes" : "no", run.message ?? ""])
            }
            printTable(rows)
        }
    }

    /// A metric's value as people write it (no trailing `.0`).
    static func number(_ value: Double) -> String {
        value.rounded() == value && abs(value) < 1e15 ? String(Int(value)) : String(value)
    }

    /// The instances the inventory records for a Deployment (this host), with their logs.
    func printInstances(of key: ObjectKey, store: StateStore) throws {
        let entries = try store.inventory(of: key, type: Supervisor.inventoryType)
        guard !entries.isEmpty else { return }
        print("Instances:")
        var rows = [["  INSTANCE", "TRACK", "REVISION", "PID", "PORT", "LOG"]]
        for entry in entries {
            let launch = entry.data["launch"].flatMap { try? JSONDecoder().decode(InstanceLaunch.self, from: Data($0.utf8)) }
            rows.append(["  " + entry.id, launch?.trackName.rawValue ?? "", entry.data["revision"] ?? "", entry.data["pid"] ?? "-", entry.data["port"] ?? "",
                         launch?.logPath ?? ""])
        }
        printTable(rows)
    }
}

struct Events: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List reconcile events, newest last; -w keeps streaming new ones.")

    @Argument(help: ArgumentHelp("Only events of this object.", valueName: "kind/name"))
    var object: String?

    @Option(name: .shortAndLong, help: "Namespace of the object.")
    var namespace: String = "default"

    @Flag(name: .shortAndLong, help: "Watch: print new events (and repeats of old ones) as they happen.")
    var watch = false

    @OptionGroup var state: StateOptions

    func run() async throws {
        // The daemon's own lease has events too (LeaderElected, LeaderLost): lease/NAME; and
        // spec files that could not be used (SpecFileSkipped, InvalidSpec): specfile/PATH.
        let key = try object.map { text -> ObjectReference in
            let rest = String(text[text.index(after: text.firstIndex(of: "/") ?? text.startIndex)...])
            if text.lowercased().hasPrefix("lease/") || text.lowercased().hasPrefix("leases/") {
                return ObjectReference(kind: "Lease", namespace: namespace, name: rest)
            }
            if text.lowercased().hasPrefix("specfile/") {
                return ObjectReference(kind: "SpecFile", namespace: "", name: rest)
            }
            let key = try parseReference(text, namespace: namespace)
            return ObjectReference(kind: key.kind.rawValue, namespace: key.namespace, name: key.name)
        }
        let store = try openStore(state)
        // Events outlive their object (a deleted Deployment's OrphanDeleted): only an object
        // that is unknown and has no event at all is an error.
        if let key, let text = object, !text.lowercased().hasPrefix("lease"), !watch,
           let kind = ResourceKind(name: key.kind), try store.object(ObjectKey(kind: kind, namespace: key.namespace, name: key.name)) == nil,
           try store.events(about: key, after: 0).isEmpty {
            throw UserError("\(kind.singular) \"\(key.name)\" not found in namespace \(key.namespace), and no event names it")
        }
        var cursor: Int64 = 0
        print(["LAST SEEN".column(21), "TYPE    ", "REASON".column(26), "OBJECT".column(32), "COUNT", " MESSAGE"].joined())
        while true {
            for stored in try store.events(about: key, after: cursor) {
                cursor = stored.seq
                let event = stored.event
                let object = "\(event.involvedObject.kind.lowercased())/\(event.involvedObject.name)"
                let seen = Timestamp(Date(timeIntervalSince1970: event.lastTimestamp.date.timeIntervalSince1970.rounded(.down)))
                print([seen.description.column(21),
                       event.type.rawValue.column(8),
                       event.reason.column(26),
                       object.column(32),
                       String(event.count).column(5), " " + event.message].joined())
                fflush(nil)
            }
            guard watch else { return }
            try await Task.sleep(for: .milliseconds(200))
        }
    }
}

/// RFC 3339 parsing for the CLI (the model's parser, through a Timestamp).
enum RFC3339Text {
    static func parse(_ text: String) -> Date? {
        var context = DecodeContext()
        return Timestamp.decode(.string(text), &context)?.date
    }
}

extension String {
    /// Padded to `width` for a fixed-width column; a longer value is kept whole, followed by
    /// one space (never cut: a reason or name must stay readable and greppable).
    func column(_ width: Int) -> String {
        count < width ? padding(toLength: width, withPad: " ", startingAt: 0) : self + " "
    }
}
