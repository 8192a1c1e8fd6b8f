import CapstanControllers
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs a rotation's `apply` and `verify` commands as children of the daemon (on a cluster
/// too: in the operator's container), with a minimal environment plus the values given, and
/// HTTP checks through `http`. The output's tail is returned on a failure with every value
/// of the environment given replaced by `[redacted]`.
public struct ProcessActions: ActionRunner {
    let http: @Sendable (String, Duration) async -> String?
    let directory: String

    /// - Parameter directory: where the commands run and their output is kept while they run.
    public init(directory: String, http: @escaping @Sendable (String, Duration) async -> String?) {
        self.directory = directory
        self.http = http
    }

    public func check(url: String, timeout: Duration) async -> String? {
        await http(url, timeout)
    }

    public func run(_ command: [String], environment: [String: String], timeout: Duration) async -> String? {
        let daemon = ProcessInfo.processInfo.environment
        var full: [String: String] = [:]
        for name in ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "TMPDIR", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE"] { full[name] = daemon[name] }
        if full["PATH"] == nil { full["PATH"] = "/usr/local/bin:/usr/bin:/bin" }
        full.merge(environment) { $1 }
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let output = "\(directory)/action-\(UUID().uuidString).log"
        defer { unlink(output) }
        guard let first = command.first, Spawner.resolve(first, path: full["PATH"], workingDirectory: directory) != nil else {
            return "command \"\(command.first ?? "")\" not found (PATH=\(full["PATH"] ?? "")) or not executable"
        }
        let identity: ProcessIdentity
        do {
            identity = try Spawner.spawn(ProcessSpec(command: command, environment: full, workingDirectory: directory, logPath: output))
        } catch {
            return "\(first): \(error.description)"
        }
        let exit = await Spawner.wait(identity, timeout: timeout)
        let tail = Self.tail(of: output, redacting: Array(environment.values))
        guard let exit else {
            return "\(first) did not finish within \(timeout)" + (tail.isEmpty ? "" : ": \(tail)")
        }
        if exit == .exited(0) { return nil }
        return "\(first) \(exit)" + (tail.isEmpty ? "" : ": \(tail)")
    }

    /// The last three lines of the output, values replaced.
    static func tail(of path: String, redacting values: [String]) -> String {
        guard let data = FileManager.default.contents(atPath: path) else { return "" }
        var text = String(decoding: data.suffix(4096), as: UTF8.self)
        for value in values.sorted(by: { $0.count > $1.count }) where value.count >= 4 {
            text = text.replacingOccurrences(of: value, with: "[redacted]")
        }
        return text.split(separator: "\n").suffix(3).joined(separator: " | ")
    }
}
