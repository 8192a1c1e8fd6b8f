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
        try await export(commit)
        var changed: [String]? = nil
        var rewritten = false
        if let previous {
            // History rewritten (a force-push): the previous commit is no ancestor of the new one.
            rewritten = try await git(["merge-base", "--is-ancestor", previous, commit], allowFailure: true) == nil
            if let names = try? await git(["diff", "--name-only", "--no-renames", "-z", previous, commit]) {
                let prefix = options.path.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
                changed = names.split(separator: "\0").map(String.init).compactMap { name in
                    if prefix.isEmpty || prefix == "." { return root + "/current/" + name }
                    guard name.hasPrefix(prefix + "/") else { return nil }
                    return root + "/current/" + name
                }
            }
        }
        try link(commit)
        prune(keeping: [commit, previous].compactMap { $0 })
        return .moved(from: previous, to: commit, changed: changed, rewritten: rewritten)
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
    /// began before the switch finishes on it).
    private func prune(keeping: [String]) {
        let manager = FileManager.default
        for name in (try? manager.contentsOfDirectory(atPath: snapshots)) ?? [] where !keeping.contains(name) {
            try? manager.removeItem(atPath: snapshots + "/" + name)
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
