import ArgumentParser
import CapstanModel
import CapstanRuntime

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check manifests: syntax, types, required and unknown fields, names, durations, cron, references.",
        discussion: """
            Reads every *.yaml, *.yml and *.json file under the given directories (hidden ones skipped) and every file named explicitly. Exit status 0 when every object is valid, 1 when there is any problem. Each problem is one line:

              file:line:column: Kind/name: field.path: message

            Objects of other API groups (apps/v1, v1, ...) are skipped with a note.
            """)

    @Argument(help: ArgumentHelp("Files and directories to check.", valueName: "path"))
    var paths: [String]

    @Option(name: .shortAndLong, help: "Output format: text or json.")
    var output: OutputFormat = .text

    @Option(name: .customLong("max-file-size"), help: ArgumentHelp("Largest manifest file read, as a quantity (1Mi, 512Ki).", valueName: "size"))
    var maxFileSize: String = "1Mi"

    @Flag(name: .shortAndLong, help: "Print problems only: no notes, no summary.")
    var quiet = false

    func validate() throws {
        if paths.isEmpty { throw ValidationError("name at least one file or directory") }
        _ = try parsedMaxFileSize()
    }

    private func parsedMaxFileSize() throws -> Int {
        try parseMaxFileSize(maxFileSize)
    }

    func run() throws {
        let loader = ManifestLoader(maxFileSize: try parsedMaxFileSize())
        let result = loader.load(paths)
        let manifests = result.manifests
        let diagnostics = (manifests.diagnostics + ReferenceCheck.problems(manifests.objects)).enumerated().sorted { a, b in
            let (x, y) = (a.element, b.element)
            if x.file != y.file { return x.file < y.file }
            let (mx, my) = (x.mark ?? SourceMark(line: 0, column: 0), y.mark ?? SourceMark(line: 0, column: 0))
            return mx != my ? mx < my : a.offset < b.offset
        }.map(\.element)
        let errors = diagnostics.filter { $0.severity == .error }
        switch output {
        case .text:
            for diagnostic in diagnostics {
                switch diagnostic.severity {
                case .error: print(diagnostic.description)
                case .warning: if !quiet { printError("warning: " + diagnostic.description) }
                case .info: if !quiet { printError("note: " + diagnostic.description) }
                }
            }
            if !quiet {
                let counts = Dictionary(grouping: manifests.objects, by: { $0.key.kind })
                let breakdown = ResourceKind.allCases.compactMap { kind in counts[kind].map { "\($0.count) \(kind.rawValue)" } }
                let objects = "\(manifests.objects.count) valid object\(manifests.objects.count == 1 ? "" : "s")"
                    + (breakdown.isEmpty ? "" : " (\(breakdown.joined(separator: ", ")))")
                let files = "\(result.files) file\(result.files == 1 ? "" : "s")"
                if errors.isEmpty {
                    print("\(objects) in \(files)" + (manifests.skipped > 0 ? ", \(manifests.skipped) skipped" : ""))
                } else {
                    // A path that is no file (missing, a broken link) has problems but is not
                    // among the files found: then the paths are counted, not "M of N files".
                    let badPaths = Set(errors.map(\.file)).count
                    let problems = "\(errors.count) problem\(errors.count == 1 ? "" : "s")"
                    if badPaths <= result.files {
                        print("\(problems) in \(badPaths) of \(files); \(objects)")
                    } else {
                        print("\(problems) in \(badPaths) path\(badPaths == 1 ? "" : "s") (\(files) found); \(objects)")
                    }
                }
            }
        case .json:
            print(JSONEmitter.emit(jsonReport(result, diagnostics: diagnostics)), terminator: "")
        }
        if !errors.isEmpty { throw ExitCode(1) }
    }

    private func jsonReport(_ result: ManifestLoader.Result, diagnostics: [Diagnostic]) -> SpecNode {
        let objects: [SpecNode] = result.manifests.objects.map { object in
            .mapping([
                ("kind", .string(object.key.kind.rawValue)), ("namespace", .string(object.key.namespace)),
                ("name", .string(object.key.name)), ("file", .string(object.file)), ("line", .int(object.mark.line)),
                ("column", .int(object.mark.column)), ("specHash", .string(object.specHash)),
            ])
        }
        let problems: [SpecNode] = diagnostics.map { d in
            var entries: [(String, SpecNode)] = [("severity", .string(d.severity.rawValue)), ("file", .string(d.file))]
            if let mark = d.mark { entries += [("line", .int(mark.line)), ("column", .int(mark.column))] }
            if let object = d.object { entries.append(("object", .string(object))) }
            if !d.path.isEmpty { entries.append(("path", .string(d.path.description))) }
            entries.append(("message", .string(d.message)))
            return .mapping(entries)
        }
        return .mapping([
            ("valid", .bool(!result.manifests.hasErrors)), ("files", .int(result.files)),
            ("objects", .sequence(objects)), ("problems", .sequence(problems)),
        ])
    }
}

/// `--max-file-size` (of `validate` and `run`): the largest manifest file read, in bytes.
func parseMaxFileSize(_ text: String) throws -> Int {
    guard let quantity = try? Quantity(text), quantity.roundedUp > 0, quantity.roundedUp < Int64(Int32.max) else {
        throw ValidationError("--max-file-size \"\(text)\" is not a size such as 1Mi or 512Ki")
    }
    return Int(quantity.roundedUp)
}
