import ArgumentParser
import CapstanLocal
import CapstanModel
import Foundation

/// `capstan source`: where the daemon of a state directory reads its specs from, and how that
/// goes (a git source: the commit, the last fetch, the next, the last error; its webhook
/// deliveries).
struct SourceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "source",
        abstract: "Show the source of the specs: a spec directory, or a git repository with its commit, fetches and errors.",
        subcommands: [SourceShow.self, SourceDeliveries.self],
        defaultSubcommand: SourceShow.self)

    /// The documents the daemon wrote, parsed.
    static func documents(_ store: StateStore) throws -> [(name: String, fields: [String: Any])] {
        try store.sourceStatuses().compactMap { name, document in
            guard let fields = (try? JSONSerialization.jsonObject(with: Data(document.utf8))) as? [String: Any] else { return nil }
            return (name, fields)
        }
    }

    /// The table of sources (header first); nil when no daemon recorded one.
    static func rows(_ store: StateStore, now: Date = Date()) throws -> [[String]]? {
        let documents = try documents(store)
        guard !documents.isEmpty else { return nil }
        func text(_ value: Any?) -> String { (value as? String) ?? "" }
        func time(_ value: Any?) -> Date? { (value as? String).flatMap { RFC3339Text.parse($0) } }
        var rows = [["SOURCE", "URL", "REF", "COMMIT", "FETCHED", "NEXT FETCH", "LAST ERROR"]]
        for (name, fields) in documents {
            if text(fields["type"]) == "directory" {
                rows.append(["source/\(name)", text(fields["path"]), "", "", "", "on change", "<none>"])
                continue
            }
            let fetched = time(fields["fetchedAt"]).map { age(since: $0, now: now) + " ago" } ?? "never"
            let next = time(fields["nextFetchAt"]).map { $0 > now ? "in " + age(since: now, now: $0) : "due" } ?? ""
            var error = "<none>"
            if let last = fields["lastError"] as? String {
                let when = time(fields["lastErrorAt"]).map { " (" + age(since: $0, now: now) + " ago)" } ?? ""
                error = ((fields["failing"] as? Bool) == true ? "failing: " : "") + last + when
            }
            let path = text(fields["path"])
            rows.append(["source/\(name)", text(fields["url"]), text(fields["ref"]) + (path == "." || path.isEmpty ? "" : " (\(path))"),
                         String(text(fields["commit"]).prefix(12)), fetched, next, error])
        }
        return rows
    }
}

struct SourceShow: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "The source, as the daemon last recorded it (the default).")

    @Option(name: .shortAndLong, help: "table (default) or json.")
    var output: GetFormat = .table

    @OptionGroup var state: StateOptions

    func run() throws {
        let store = try openStore(state)
        switch output {
        case .json, .yaml:
            let items = try SourceCommand.documents(store).map { name, fields in
                var item = fields
                item["name"] = name
                return item
            }
            let data = try JSONSerialization.data(withJSONObject: ["items": items], options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        case .table, .wide:
            guard let rows = try SourceCommand.rows(store) else {
                printError("No source recorded (no daemon ran on this state directory yet).")
                return
            }
            printTable(rows)
        }
    }
}

struct SourceDeliveries: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "deliveries",
        abstract: "The last \(StateStore.deliveriesKept) webhook deliveries, newest first: provider, event, ref, commit, the status answered and what came of it.")

    @Option(name: .shortAndLong, help: "table (default) or json.")
    var output: GetFormat = .table

    @OptionGroup var state: StateOptions

    func run() throws {
        let deliveries = try openStore(state).deliveries()
        switch output {
        case .json, .yaml:
            let items: [[String: Any]] = deliveries.map {
                ["id": $0.id, "time": Timestamp($0.time).description, "provider": $0.provider, "event": $0.event, "ref": $0.ref,
                 "commit": $0.commit, "status": $0.status, "outcome": $0.outcome, "detail": $0.detail]
            }
            let data = try JSONSerialization.data(withJSONObject: ["items": items], options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        case .table, .wide:
            guard !deliveries.isEmpty else {
                printError("No webhook deliveries.")
                return
            }
            printTable([["TIME", "PROVIDER", "EVENT", "REF", "COMMIT", "STATUS", "OUTCOME", "DETAIL"]] + deliveries.map {
                [Timestamp($0.time).description, $0.provider.isEmpty ? "-" : $0.provider, $0.event.isEmpty ? "-" : $0.event, $0.ref.isEmpty ? "-" : $0.ref,
                 $0.commit.isEmpty ? "-" : String($0.commit.prefix(12)), String($0.status), $0.outcome, $0.detail]
            })
        }
    }
}
