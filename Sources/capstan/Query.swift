import ArgumentParser
import CapstanLocal
import CapstanModel
import Foundation

enum GetFormat: String, ExpressibleByArgument, CaseIterable {
    case table, wide, yaml, json
}

/// Parses a KIND argument with kubectl's names (`app`, `applications`, `Deployment`, ...).
func parseKind(_ name: String) throws -> ResourceKind {
    guard let kind = ResourceKind(name: name) else {
        let known = ResourceKind.allCases.map { "\($0.plural) (\(([$0.singular] + $0.shortNames).joined(separator: ", ")))" }
        throw ValidationError("unknown kind \"\(name)\"; kinds: \(known.joined(separator: "; "))")
    }
    return kind
}

/// Parses `KIND/NAME`.
func parseReference(_ text: String, namespace: String) throws -> ObjectKey {
    let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
    guard parts.count == 2 else { throw ValidationError("expected KIND/NAME, such as application/web, got \"\(text)\"") }
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
        abstract: "List objects of a kind with their state (reads the state store; works with the daemon stopped).")

    @Argument(help: ArgumentHelp("application|app, deployment|cdeploy, canary, alertrule, secretrotation, backupschedule (singular, plural or short).", valueName: "kind"))
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

    func validate() throws {
        if watch && (output == .yaml || output == .json) { throw ValidationError("-w prints tables: use -o table or -o wide") }
    }

    func run() async throws {
        if ["lease", "leases"].contains(kind.lowercased()) {
            try printLeases(try openStore(state))
            return
        }
        let kind = try parseKind(kind)
        let store = try openStore(state)
        guard watch else {
            try printOnce(kind: kind, store: store)
            return
        }
        // Like kubectl get -w: the table once, then a row for every object that changes.
        var printed: [ObjectKey: [String]] = [:]
        var header = true
        while true {
            let rows = try tableRows(kind: kind, store: store)
            var changed: [[String]] = []
            for (key, row) in rows.rows where printed[key] != Array(row.dropLast()) {
                printed[key] = Array(row.dropLast())
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

    /// The table: a header and a row per object (AGE left out of change detection).
    private func tableRows(kind: ResourceKind, store: StateStore) throws -> (header: [String], rows: [(ObjectKey, [String])]) {
        var records = try store.objects(kind: kind)
        if let namespace { records = records.filter { $0.key.namespace == namespace } }
        if let name { records = records.filter { $0.key.name == name } }
        let type = kind.type
        // Deployments read as kubectl's do: READY is ready/desired instances.
        let ratio = kind == .deployment
        let extra = type.columns.filter { (output == .wide || $0.priority == 0) && !(ratio && ["Ready-Replicas", "Replicas"].contains($0.name)) }
        let header = ["NAMESPACE", "NAME", "READY", "STATUS", "REASON"] + extra.map { $0.name.uppercased() } + ["AGE"]
        let rows = records.map { record -> (ObjectKey, [String]) in
            let node = record.resource.encode()
            return (record.key, [
                record.key.namespace, record.key.name,
                ratio ? Self.readyRatio(record.resource) : JSONPath.text(".status.conditions[?(@.type==\"Ready\")].status", on: node),
                JSONPath.text(type.statusColumnPath, on: node),
                JSONPath.text(".status.conditions[?(@.type==\"Ready\")].reason", on: node),
            ] + extra.map { JSONPath.text($0.jsonPath, on: node) } + [age(since: record.createdAt)])
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

    private func printOnce(kind: ResourceKind, store: StateStore) throws {
        var records = try store.objects(kind: kind)
        if let namespace { records = records.filter { $0.key.namespace == namespace } }
        if let name { records = records.filter { $0.key.name == name } }
        if name != nil && records.isEmpty {
            printError("capstan: \(kind.singular) \"\(name!)\" not found")
            throw ExitCode(1)
        }
        let nodes = records.map { $0.resource.encode() }
        switch output {
        case .yaml:
            print(nodes.map(YAMLEmitter.emit).joined(separator: "---\n"), terminator: "")
        case .json:
            let node = name != nil ? nodes[0] : SpecNode.mapping([("apiVersion", .string("v1")), ("kind", .string("List")), ("items", .sequence(nodes))])
            print(JSONEmitter.emit(node), terminator: "")
        case .table, .wide:
            if records.isEmpty {
                printError("No \(kind.plural) found.")
                return
            }
            let table = try tableRows(kind: kind, store: store)
            printTable([table.header] + table.rows.map(\.1))
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
        print("Created:      \(Timestamp(record.createdAt)) (\(age(since: record.createdAt)) ago)")
        if !record.problems.isEmpty {
            print("Problems:     (the last good version below is in use)")
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
        // The daemon's own lease has events too (LeaderElected, LeaderLost): lease/NAME.
        let key = try object.map { text -> ObjectReference in
            if text.lowercased().hasPrefix("lease/") || text.lowercased().hasPrefix("leases/") {
                return ObjectReference(kind: "Lease", namespace: namespace, name: String(text[text.index(after: text.firstIndex(of: "/")!)...]))
            }
            let key = try parseReference(text, namespace: namespace)
            return ObjectReference(kind: key.kind.rawValue, namespace: key.namespace, name: key.name)
        }
        let store = try openStore(state)
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
