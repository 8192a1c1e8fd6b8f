import CapstanModel
import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The git source of desired state (GitOps without a sidecar): a bare mirror of one ref of a
/// repository under `<state>/source/git`, fetched on demand; each new commit of the ref exported
/// as an immutable snapshot (`snapshots/<commit>`) and switched to atomically by a symlink
/// (`current`), so the spec-directory source reads a whole commit or the one before, never a
/// mixture. A fetch that fails leaves the last snapshot in place: nothing is deleted and nothing
/// moves backwards on its own. Credentials come from files, are handed to git through its
/// environment, and never appear in a command line, a log line or an error.
public actor GitSpecSource {
    public struct Options: Sendable {
        public var url: String
        /// A branch (`main`), or a full ref (`refs/tags/v1`).
        public var ref: String
        /// The directory of specs inside the repository (`.`: its root).
        public var path: String
        public var tokenFile: String?
        public var sshKeyFile: String?
        public var knownHostsFile: String?

        public init(url: String, ref: String = "main", path: String = ".", tokenFile: String? = nil, sshKeyFile: String? = nil, knownHostsFile: String? = nil) {
            self.url = url
            self.ref = ref
            self.path = path
            self.tokenFile = tokenFile
            self.sshKeyFile = sshKeyFile
            self.knownHostsFile = knownHostsFile
        }

        /// The remote ref fetched.
        var remoteRef: String { ref.hasPrefix("refs/") ? ref : "refs/heads/\(ref)" }
    }

    /// A fetch or export that failed, in words safe to show (no URL credentials, no token).
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// What an update found.
    public enum Update: Sendable, Equatable {
        /// The ref is at the commit already checked out.
        case unchanged(commit: String)
        /// A new commit is checked out; the spec files that differ from the previous one
        /// (absolute paths below `specDirectory`; nil: the first checkout, read everything).
        case moved(from: String?, to: String, changed: [String]?, rewritten: Bool)
    }

    public nonisolated let options: Options
    public nonisolated let root: String
    private var mirror: String { root + "/mirror.git" }
    private var snapshots: String { root + "/snapshots" }
    /// The symlink to the snapshot in use.
    public var current: String { root + "/current" }
    /// The directory the spec-directory source reads: the snapshot's `--git-path`, through the
    /// `current` link (its path never changes; what it points at does, at once).
    public nonisolated var specDirectory: String {
        let path = options.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        return root + "/current" + (path.isEmpty || path == "." ? "" : "/" + path)
    }

    public init(_ options: Options, stateDirectory: String) {
        self.options = options
        self.root = stateDirectory + "/source/git"
    }

    /// The commit checked out now (nil: none yet).
    public func checkedOut() -> String? {
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: current) else { return nil }
        return (target as NSString).lastPathComponent
    }

    /// Fetches the ref and, when it moved, exports the new commit and switches to it.
    public func update() async throws(Failure) -> Update {
        let commit = try await fetch()
        let previous = checkedOut()
        if previous == commit, FileManager.default.fileExists(atPath: snapshots + "/" + commit) { return .unchanged(commit: commit) }
        var changes: [(status: Character, path: String)]? = nil
        var rewritten = false
        if let previous {
            // History rewritten (a force-push): the previous commit is no ancestor of the new one.
            rewritten = try await git(["merge-base", "--is-ancestor", previous, commit], allowFailure: true) == nil
            if let output = try? await git(["diff", "--name-status", "--no-renames", "-z", previous, commit]) {
                changes = Self.nameStatus(output)
            }
        }
        // A commit that changes a few files is the previous snapshot, hard-linked (files are
        // never written in place), with those files replaced: its cost is the change's, not the
        // tree's. Otherwise (the first, or a large change) the whole tree is exported.
        var exported = false
        if let previous, let changes, changes.count <= Self.incrementalLimit {
            exported = await exportIncrementally(commit, from: previous, changes: changes)
        }
        if !exported { try await export(commit) }
        let prefix = options.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        let changed = changes.map { changes in
            changes.map(\.path).compactMap { name -> String? in
                if prefix.isEmpty || prefix == "." { return root + "/current/" + name }
                guard name.hasPrefix(prefix + "/") else { return nil }
                return root + "/current/" + name
            }
        }
        try link(commit)
        prune(keeping: [commit, previous].compactMap { $0 })
        return .moved(from: previous, to: commit, changed: changed, rewritten: rewritten)
    }

    /// Up to this many changed files a snapshot is made from the previous one.
    static let incrementalLimit = 1000

    /// `git diff --name-status -z` read: each path with its status letter (A, M, D, T).
    static func nameStatus(_ output: String) -> [(status: Character, path: String)] {
        let fields = output.split(separator: "\0", omittingEmptySubsequences: false).map(String.init)
        var result: [(Character, String)] = []
        var index = 0
        while index + 1 < fields.count {
            guard let status = fields[index].first else { break }
            result.append((status, fields[index + 1]))
            index += 2
        }
        return result
    }

    /// The previous snapshot hard-linked into a new one, the changed files replaced from the
    /// commit. False when it could not be done (the caller exports the whole tree instead).
    private func exportIncrementally(_ commit: String, from previous: String, changes: [(status: Character, path: String)]) async -> Bool {
        let manager = FileManager.default
        let source = snapshots + "/" + previous, target = snapshots + "/" + commit
        if manager.fileExists(atPath: target) { return true }
        guard manager.fileExists(atPath: source) else { return false }
        let temporary = snapshots + "/.tmp-" + commit + "-" + UUID().uuidString.prefix(8)
        let log = root + "/git.log"
        let (mirror, environment) = (mirror, environment())
        let written = changes.filter { $0.status != "D" }.map(\.path)
        let failure = await Self.offload { () -> String? in
            if let failure = Artifacts.run(["cp", "-al", "--", source, temporary], environment: environment, directory: "/", log: log, timeout: .seconds(300)) {
                return failure
            }
            for change in changes {
                let path = temporary + "/" + change.path
                if (try? manager.attributesOfItem(atPath: path)) != nil || (try? manager.destinationOfSymbolicLink(atPath: path)) != nil {
                    try? manager.removeItem(atPath: path)
                }
                if change.status == "D" {
                    // Directories the deletion emptied go too, as they would from a whole export.
                    var directory = (path as NSString).deletingLastPathComponent
                    while directory.count > temporary.count, rmdir(directory) == 0 { directory = (directory as NSString).deletingLastPathComponent }
                }
            }
            guard !written.isEmpty else { return nil }
            return Artifacts.run(["sh", "-c", "m=$1 c=$2 t=$3; shift 3; git --literal-pathspecs --git-dir=\"$m\" archive --format=tar \"$c\" -- \"$@\" | tar -x -C \"$t\"",
                                  "sh", mirror, commit, temporary] + written,
                                 environment: environment, directory: "/", log: log, timeout: .seconds(300))
                ?? (written.allSatisfy { path in (try? manager.attributesOfItem(atPath: temporary + "/" + path)) != nil
                        || (try? manager.destinationOfSymbolicLink(atPath: temporary + "/" + path)) != nil } ? nil : "left files out")
        }
        guard failure == nil, rename(temporary, target) == 0 || manager.fileExists(atPath: target) else {
            try? manager.removeItem(atPath: temporary)
            return false
        }
        return true
    }

    // MARK: - Git

    private func fetch() async throws(Failure) -> String {
        let manager = FileManager.default
        if !manager.fileExists(atPath: mirror + "/HEAD") {
            try? manager.removeItem(atPath: mirror)
            do {
                try manager.createDirectory(atPath: root, withIntermediateDirectories: true)
            } catch {
                throw Failure(description: "cannot create \(root): \(error.localizedDescription)")
            }
            _ = try await git(["init", "--quiet", "--bare", mirror], inMirror: false)
        }
        // The URL is passed on each fetch (no remote configured with it in the mirror).
        _ = try await git(["fetch", "--quiet", "--force", "--no-tags", "--", options.url, "+\(options.remoteRef):refs/capstan/source"])
        guard let output = try? await git(["rev-parse", "--verify", "--quiet", "refs/capstan/source^{commit}"]),
              case let commit = output.trimmingCharacters(in: .whitespacesAndNewlines), commit.count >= 40 else {
            throw Failure(description: "ref \(options.ref) of \(Self.safe(options.url)) resolves to no commit")
        }
        return commit
    }

    /// Exports a commit into its snapshot directory (made beside it, then renamed in place).
    private func export(_ commit: String) async throws(Failure) {
        let manager = FileManager.default
        let target = snapshots + "/" + commit
        if manager.fileExists(atPath: target) { return }
        let temporary = snapshots + "/.tmp-" + commit + "-" + UUID().uuidString.prefix(8)
        do {
            try manager.createDirectory(atPath: temporary, withIntermediateDirectories: true)
        } catch {
            throw Failure(description: "cannot create \(temporary): \(error.localizedDescription)")
        }
        let log = root + "/git.log"
        let (mirror, environment) = (mirror, environment())
        let failure = await Self.offload {
            Artifacts.run(["sh", "-c", "git --git-dir=\"$1\" archive --format=tar \"$2\" | tar -x -C \"$3\"", "sh", mirror, commit, temporary],
                          environment: environment, directory: "/", log: log, timeout: .seconds(300))
        }
        if let failure {
            try? manager.removeItem(atPath: temporary)
            throw Failure(description: "git archive \(commit.prefix(12)) \(failure): \(Self.safe(Artifacts.tail(log, lines: 3)))")
        }
        guard rename(temporary, target) == 0 || manager.fileExists(atPath: target) else {
            let problem = String(cString: strerror(errno))
            try? manager.removeItem(atPath: temporary)
            throw Failure(description: "cannot move the snapshot of \(commit.prefix(12)) in place: \(problem)")
        }
    }

    /// Points `current` at a snapshot: a new link beside it renamed over it (atomic).
    private func link(_ commit: String) throws(Failure) {
        let temporary = root + "/.current-" + UUID().uuidString.prefix(8)
        guard symlink("snapshots/" + commit, temporary) == 0 else {
            throw Failure(description: "cannot link the snapshot of \(commit.prefix(12)): \(String(cString: strerror(errno)))")
        }
        guard rename(temporary, current) == 0 else {
            let problem = String(cString: strerror(errno))
            unlink(temporary)
            throw Failure(description: "cannot switch to the snapshot of \(commit.prefix(12)): \(problem)")
        }
    }

    /// Removes the snapshots but those kept (the current one and the one before: a read that
    /// began before the switch finishes on it): each is renamed aside at once and removed in
    /// the background (a tree of 10,000 files takes a while), with what earlier prunes left.
    private func prune(keeping: [String]) {
        let manager = FileManager.default
        let names = (try? manager.contentsOfDirectory(atPath: snapshots)) ?? []
        var doomed: [String] = []
        for name in names where !keeping.contains(name) && !name.hasPrefix(".tmp-") {
            if name.hasPrefix(".trash-") {
                doomed.append(snapshots + "/" + name)
                continue
            }
            let trash = snapshots + "/.trash-" + name
            if rename(snapshots + "/" + name, trash) == 0 { doomed.append(trash) }
        }
        // Exports a killed daemon left half done (none runs now: this actor runs one at a time).
        for name in names where name.hasPrefix(".tmp-") { doomed.append(snapshots + "/" + name) }
        guard !doomed.isEmpty else { return }
        let paths = doomed
        DispatchQueue.global(qos: .utility).async {
            for path in paths { try? FileManager.default.removeItem(atPath: path) }
        }
    }

    /// Runs git on the mirror; its standard output, or a failure with git's last words.
    @discardableResult
    private func git(_ arguments: [String], inMirror: Bool = true, allowFailure: Bool = false) async throws(Failure) -> String? {
        let log = root + "/git-\(UUID().uuidString.prefix(8)).log"
        defer { unlink(log) }
        let command = ["git"] + (inMirror ? ["--git-dir=\(mirror)"] : []) + arguments
        let environment = environment()
        let failure = await Self.offload { Artifacts.run(command, environment: environment, directory: "/", log: log, timeout: .seconds(120)) }
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        if let failure {
            if allowFailure { return nil }
            let what = arguments.first { !$0.hasPrefix("-") } ?? "git"
            let words = Self.safe(output.split(separator: "\n").suffix(3).joined(separator: " "))
            throw Failure(description: "git \(what) \(Self.safe(options.url)) \(failure)\(words.isEmpty ? "" : ": " + words)")
        }
        return output
    }

    /// git's environment: no prompt, no user or system configuration, and the credentials.
    private nonisolated func environment() -> [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter { $0.key == "PATH" || $0.key == "HOME" || $0.key == "LANG" }
        environment["GIT_TERMINAL_PROMPT"] = "0"
        environment["GIT_CONFIG_NOSYSTEM"] = "1"
        environment["GIT_ASKPASS"] = "/bin/false"
        var config: [(String, String)] = []
        if let file = options.tokenFile, let token = try? String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), !token.isEmpty {
            // As GitHub, Gitea and GitLab take a token over HTTPS: basic auth, any user name.
            let basic = Data("x-access-token:\(token)".utf8).base64EncodedString()
            config.append(("http.extraHeader", "Authorization: Basic \(basic)"))
        }
        for (index, (key, value)) in config.enumerated() {
            environment["GIT_CONFIG_KEY_\(index)"] = key
            environment["GIT_CONFIG_VALUE_\(index)"] = value
        }
        if !config.isEmpty { environment["GIT_CONFIG_COUNT"] = String(config.count) }
        if let key = options.sshKeyFile {
            var ssh = "ssh -i '\(key)' -o IdentitiesOnly=yes -o BatchMode=yes"
            if let hosts = options.knownHostsFile { ssh += " -o UserKnownHostsFile='\(hosts)' -o StrictHostKeyChecking=yes" }
            environment["GIT_SSH_COMMAND"] = ssh
        }
        return environment
    }

    /// A spec file's path in the repository (`specs/web.yaml`), for a file read from a
    /// checkout (`<state>/source/git/current/specs/web.yaml`); nil for any other file.
    public static func repositoryPath(of file: String) -> String? {
        guard let range = file.range(of: "/source/git/current/") else { return nil }
        return String(file[range.upperBound...])
    }

    /// A URL or a message with any `user:password@` of a URL taken out.
    public static func safe(_ text: String) -> String {
        guard text.contains("@"), let userinfo = try? NSRegularExpression(pattern: "://[^/@\\s]*@") else { return text }
        return userinfo.stringByReplacingMatches(in: text, range: NSRange(text.startIndex..., in: text), withTemplate: "://")
    }

    /// Blocking work off the cooperative pool.
    static func offload<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: work()) }
        }
    }
}
