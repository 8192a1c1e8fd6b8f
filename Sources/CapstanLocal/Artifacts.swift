import CapstanControllers
import CapstanModel
import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Immutable artifacts per (Application, version) under `<state>/artifacts/<ns>/<app>/<version>`:
/// a copy of `source.path` or an export of the `git` ref, then `build.command`; read-only once
/// prepared and reused from then on. A prepared artifact is recorded in the inventory.
public actor Artifacts {
    public static let inventoryType = "artifact"

    public let root: String
    let gitRoot: String
    let store: StateStore
    let now: @Sendable () -> Date
    private var inFlight: [String: Task<ArtifactStatus, any Error>] = [:]

    public init(stateDirectory: String, store: StateStore, now: @escaping @Sendable () -> Date = Date.init) {
        root = stateDirectory + "/artifacts"
        gitRoot = stateDirectory + "/git"
        self.store = store
        self.now = now
    }

    public func path(namespace: String, application: String, version: String) -> String {
        "\(root)/\(namespace)/\(application)/\(version)"
    }

    /// Prepares (or reuses) the artifact of the template's version. Concurrent calls for one
    /// version share one preparation.
    public func prepare(_ template: WorkloadTemplate, namespace: String) async throws(WorkloadError) -> (artifact: ArtifactStatus, path: String) {
        let path = path(namespace: namespace, application: template.application, version: template.version)
        let id = "\(namespace)/\(template.application)/\(template.version)"
        if let existing = try? store.inventory(type: Self.inventoryType).first(where: { $0.id == id }), isDirectory(path) {
            return (Self.status(existing), path)
        }
        let task: Task<ArtifactStatus, any Error>
        if let running = inFlight[id] {
            task = running
        } else {
            let owner = ObjectKey(kind: .application, namespace: namespace, name: template.application)
            let store = store
            let now = now
            let gitRoot = gitRoot
            task = Task.detached {
                let artifact = try Self.build(template, into: path, gitRoot: gitRoot + "/\(namespace)/\(template.application).git", now: now())
                try store.recordInventory(.init(type: Self.inventoryType, id: id, owner: owner, data: [
                    "path": path, "version": template.version, "digest": artifact.digest, "builtAt": artifact.builtAt?.description ?? "",
                ], createdAt: now()))
                return artifact
            }
            inFlight[id] = task
        }
        defer { inFlight[id] = nil }
        do {
            return (try await task.value, path)
        } catch let error as WorkloadError {
            throw error
        } catch {
            throw WorkloadError("BuildFailed", "\(error)")
        }
    }

    /// The prepared artifacts of an Application, newest first.
    public func artifacts(of application: ObjectKey) -> [ArtifactStatus] {
        let entries = (try? store.inventory(of: application, type: Self.inventoryType)) ?? []
        return entries.sorted { $0.createdAt > $1.createdAt }.map(Self.status)
    }

    /// Removes artifacts beyond the newest `keep` that are not in use; returns their versions.
    public func prune(_ application: ObjectKey, keep: Int, inUse: Set<String>) -> [String] {
        let entries = ((try? store.inventory(of: application, type: Self.inventoryType)) ?? []).sorted { $0.createdAt > $1.createdAt }
        var removed: [String] = []
        for entry in entries.dropFirst(keep) where !inUse.contains(entry.data["version"] ?? "") {
            if let path = entry.data["path"] { Self.removeTree(path) }
            try? FileManager.default.removeItem(atPath: (entry.data["path"] ?? "") + ".build.log")
            _ = try? store.removeInventory(type: Self.inventoryType, id: entry.id)
            removed.append(entry.data["version"] ?? entry.id)
        }
        return removed
    }

    private static func status(_ entry: StateStore.InventoryEntry) -> ArtifactStatus {
        var status = ArtifactStatus()
        status.version = entry.data["version"] ?? ""
        status.digest = entry.data["digest"] ?? ""
        status.builtAt = entry.data["builtAt"].flatMap { Timestamp(rfc3339: $0) }
        return status
    }

    /// A finished artifact: a directory made read-only as the last step of its build (one whose
    /// removal an earlier build had begun is writable again, and is built anew).
    private func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR && (info.st_mode & S_IWUSR) == 0
    }

    // MARK: - Building

    /// Copies or exports the source into a temporary directory beside `path`, builds it, makes
    /// it read-only and renames it into place (a crash leaves only a temporary directory).
    static func build(_ template: WorkloadTemplate, into path: String, gitRoot: String, now: Date) throws -> ArtifactStatus {
        let manager = FileManager.default
        let parent = (path as NSString).deletingLastPathComponent
        try manager.createDirectory(atPath: parent, withIntermediateDirectories: true)
        let temporary = "\(parent)/.\(template.version).tmp-\(UUID().uuidString.prefix(8))"
        defer { removeTree(temporary) }
        var digest: String
        if let git = template.spec.source?.git {
            digest = "git:" + (try export(git: git.url, ref: template.version, mirror: gitRoot, into: temporary))
        } else if let source = template.spec.source?.path {
            let resolved = source.hasPrefix("/") ? source : (template.sourceRoot as NSString).appendingPathComponent(source)
            var directory: ObjCBool = false
            guard manager.fileExists(atPath: resolved, isDirectory: &directory), directory.boolValue else {
                throw WorkloadError("SourceUnavailable", "source path \(resolved) does not exist or is not a directory")
            }
            do {
                try manager.copyItem(atPath: resolved, toPath: temporary)
            } catch {
                throw WorkloadError("SourceUnavailable", "cannot copy \(resolved): \(error.localizedDescription)")
            }
            digest = "sha256:" + treeDigest(temporary)
        } else {
            try manager.createDirectory(atPath: temporary, withIntermediateDirectories: true)
            digest = "sha256:" + treeDigest(temporary)
        }
        if let build = template.spec.build, !build.command.isEmpty {
            let log = path + ".build.log"
            try? manager.removeItem(atPath: log)
            var environment = ProcessInfo.processInfo.environment
            environment["CAPSTAN_VERSION"] = template.version
            environment["CAPSTAN_APPLICATION"] = template.application
            for variable in template.env { if let value = variable.value { environment[variable.name] = value } }
            let result = run(build.command, environment: environment, directory: temporary, log: log, timeout: build.timeout.duration)
            if let failure = result {
                throw WorkloadError("BuildFailed", "build of \(template.application) \(template.version) \(failure); last lines of \(log):\n\(tail(log, lines: 20))")
            }
        }
        makeReadOnly(temporary)
        // An artifact already there (its record lost with a damaged store, or drift) is moved
        // aside whole before the new one takes its name, and removed after: a daemon killed at
        // any moment leaves the artifact complete, or absent (made again), never half-removed
        // under its name (which a later daemon would take for a prepared artifact).
        let aside = "\(parent)/.\(template.version).old.tmp-\(UUID().uuidString.prefix(8))"
        let movedAside = rename(path, aside) == 0
        defer { if movedAside { removeTree(aside) } }
        if !movedAside { removeTree(path) }  // not a directory rename could move (a file, say)
        guard rename(temporary, path) == 0 else {
            throw WorkloadError("BuildFailed", "cannot move the artifact into \(path): \(String(cString: strerror(errno)))")
        }
        var status = ArtifactStatus()
        status.version = template.version
        status.digest = digest
        status.builtAt = Timestamp(now)
        return status
    }

    /// Clones the repository once (a mirror), fetches, and exports `ref` into `directory`;
    /// returns the commit.
    static func export(git url: String, ref: String, mirror: String, into directory: String) throws -> String {
        let manager = FileManager.default
        let environment = ProcessInfo.processInfo.environment.merging(["GIT_TERMINAL_PROMPT": "0"]) { $1 }
        let scratch = NSTemporaryDirectory() + "capstan-git-\(UUID().uuidString.prefix(8)).log"
        defer { try? manager.removeItem(atPath: scratch) }
        func git(_ arguments: [String]) -> String? {
            run(["git"] + arguments, environment: environment, directory: "/", log: scratch, timeout: .seconds(300))
        }
        if !manager.fileExists(atPath: mirror) {
            try manager.createDirectory(atPath: (mirror as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            if let failure = git(["clone", "--mirror", "--quiet", "--", url, mirror]) {
                try? manager.removeItem(atPath: mirror)
                throw WorkloadError("SourceUnavailable", "git clone \(url) \(failure): \(tail(scratch, lines: 5))")
            }
        } else if let failure = git(["--git-dir=\(mirror)", "fetch", "--prune", "--quiet", "--tags", "origin"]) {
            // An unreachable remote still serves refs fetched before.
            if resolve(ref, mirror: mirror, git: git) == nil {
                throw WorkloadError("SourceUnavailable", "git fetch \(url) \(failure): \(tail(scratch, lines: 5))")
            }
        }
        guard let commit = resolve(ref, mirror: mirror, git: git) else {
            throw WorkloadError("SourceUnavailable", "git ref \"\(ref)\" not found in \(url)")
        }
        try manager.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let archive = run(["sh", "-c", "git --git-dir=\"$1\" archive --format=tar \"$2\" | tar -x -C \"$3\"", "sh", mirror, commit, directory],
                          environment: environment, directory: "/", log: scratch, timeout: .seconds(300))
        if let archive {
            throw WorkloadError("SourceUnavailable", "git archive \(ref) \(archive): \(tail(scratch, lines: 5))")
        }
        return commit
    }

    private static func resolve(_ ref: String, mirror: String, git: ([String]) -> String?) -> String? {
        let output = NSTemporaryDirectory() + "capstan-rev-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: output) }
        let result = run(["git", "--git-dir=\(mirror)", "rev-parse", "--verify", "--quiet", "\(ref)^{commit}"],
                         environment: ProcessInfo.processInfo.environment, directory: "/", log: output, timeout: .seconds(30))
        guard result == nil, let text = try? String(contentsOfFile: output, encoding: .utf8) else { return nil }
        let commit = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return commit.count >= 40 ? String(commit.prefix(40)) : nil
    }

    /// Runs a command to completion, output appended to `log`; nil on success, else what happened.
    static func run(_ command: [String], environment: [String: String], directory: String, log: String, timeout: Duration) -> String? {
        let identity: ProcessIdentity
        do {
            identity = try Spawner.spawn(ProcessSpec(command: command, environment: environment, workingDirectory: directory, logPath: log))
        } catch {
            return "could not start: \(error.description)"
        }
        let deadline = ContinuousClock.now + timeout
        var status: Int32 = 0
        while true {
            let result = waitpid(identity.pid, &status, WNOHANG)
            if result == identity.pid { break }
            if result < 0 { return "lost track of the process" }
            if ContinuousClock.now >= deadline {
                kill(-identity.pid, SIGKILL)
                waitpid(identity.pid, &status, 0)
                return "timed out after \(timeout.formatted(.units(allowed: [.hours, .minutes, .seconds])))"
            }
            usleep(10_000)
        }
        if status & 0x7f == 0 {
            let code = (status >> 8) & 0xff
            return code == 0 ? nil : "failed with exit status \(code)"
        }
        return "was killed by signal \(status & 0x7f)"
    }

    /// The last `lines` lines of a build or git log (read from its end, however long it grew).
    static func tail(_ path: String, lines: Int) -> String {
        let last = LogTail.lastLines(of: path, count: lines, maxBytes: 64 << 10, lineLength: 1000)
        return last.isEmpty ? "(no output)" : last.joined(separator: "\n")
    }

    /// SHA-256 over every file's relative path, mode and content, in sorted order.
    static func treeDigest(_ directory: String) -> String {
        var hasher = SHA256()
        let manager = FileManager.default
        let paths = ((manager.subpaths(atPath: directory)) ?? []).sorted()
        for relative in paths {
            let full = directory + "/" + relative
            var info = stat()
            guard lstat(full, &info) == 0 else { continue }
            hasher.update(data: Data("\(relative)\0\(info.st_mode)\0".utf8))
            if (info.st_mode & S_IFMT) == S_IFREG, let data = manager.contents(atPath: full) {
                hasher.update(data: data)
            } else if (info.st_mode & S_IFMT) == S_IFLNK, let target = try? manager.destinationOfSymbolicLink(atPath: full) {
                hasher.update(data: Data(target.utf8))
            }
        }
        return SpecHash.hex(hasher.finalize())
    }

    /// Removes write permission everywhere below (files and directories).
    static func makeReadOnly(_ directory: String) {
        let manager = FileManager.default
        for relative in (manager.subpaths(atPath: directory) ?? []) + [""] {
            let full = relative.isEmpty ? directory : directory + "/" + relative
            var info = stat()
            guard lstat(full, &info) == 0, (info.st_mode & S_IFMT) != S_IFLNK else { continue }
            chmod(full, info.st_mode & ~(S_IWUSR | S_IWGRP | S_IWOTH) & 0o7777)
        }
    }

    /// Removes a tree that may be read-only (write permission is restored on directories first).
    static func removeTree(_ path: String) {
        let manager = FileManager.default
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            for relative in manager.subpaths(atPath: path) ?? [] {
                let full = path + "/" + relative
                if lstat(full, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR { chmod(full, 0o700) }
            }
            chmod(path, 0o700)
        }
        try? manager.removeItem(atPath: path)
    }
}
