import CSystemShims
import CapstanControllers
import CapstanModel
import Foundation
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// Backups on this host: each run is `capstan backup-job`, a child of the daemon that gets its
/// job (with the secrets, from the vault) on standard input and keeps that pipe open: when the
/// daemon goes (even by kill -9) the job sees the end of its input, cuts itself off and removes
/// what it wrote; the next daemon finds the run in `status.active` with no job and records it
/// `Interrupted`. Its result is its last line of output; its log is
/// `<state>/backups/NAMESPACE/NAME/ID.log`.
public actor LocalBackups: BackupPlatform {
    let executable: String
    let stateDirectory: String
    let vault: Vault
    let version: String
    let enqueue: @Sendable (ObjectKey) async -> Void

    struct Job {
        var spec: BackupJobSpec
        var pid: pid_t
        var input: Int32
        var outcome: BackupOutcome?
        var stopReason: String?
    }

    var jobs: [String: Job] = [:]

    /// - Parameter executable: the `capstan` binary that runs `backup-job`.
    public init(executable: String, stateDirectory: String, vault: Vault, version: String, enqueue: @escaping @Sendable (ObjectKey) async -> Void) {
        self.executable = executable
        self.stateDirectory = stateDirectory
        self.vault = vault
        self.version = version
        self.enqueue = enqueue
    }

    /// This program's own path (for `backup-job`).
    public static var currentExecutable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    static func jobKey(_ owner: ObjectKey, _ id: String) -> String { "\(owner.namespace)/\(owner.name)/\(id)" }

    func directory(_ owner: ObjectKey) -> String { "\(stateDirectory)/backups/\(owner.namespace)/\(owner.name)" }

    /// The job for a run: paths made absolute (relative to the spec file), secrets read from
    /// the vault.
    public static func job(for run: BackupRun, vault: Vault, version: String, scratch: String) throws(BackupStartError) -> BackupJobSpec {
        let base = run.sourceFile.isEmpty ? FileManager.default.currentDirectoryPath : (run.sourceFile as NSString).deletingLastPathComponent
        func absolute(_ path: String) -> String {
            let joined = path.hasPrefix("/") ? path : ((base.hasPrefix("/") ? base : FileManager.default.currentDirectoryPath + "/" + base) as NSString).appendingPathComponent(path)
            return (joined as NSString).standardizingPath
        }
        var spec = run.spec
        if var sqlite = spec.source.sqlite { sqlite.path = absolute(sqlite.path); spec.source.sqlite = sqlite }
        if var directory = spec.source.directory { directory.path = absolute(directory.path); spec.source.directory = directory }
        if var local = spec.destination.local { local.path = absolute(local.path); spec.destination.local = local }
        func secret(_ source: SecretSource?, _ what: String) throws(BackupStartError) -> Data? {
            guard let ref = source?.secretKeyRef else { return nil }
            do {
                return try vault.value(of: ref.name, key: ref.key, namespace: run.owner.namespace)
            } catch {
                throw BackupStartError(error.reason, "\(what): \(error.message)")
            }
        }
        var secrets = BackupJobSpec.Secrets()
        secrets.postgresPassword = try secret(spec.source.postgres?.passwordFrom, "the PostgreSQL password").map { String(decoding: $0, as: UTF8.self) }
        secrets.encryptionKey = try secret(spec.encryption?.keyFrom, "the encryption key")?.base64EncodedString()
        secrets.s3Credentials = try secret(spec.destination.s3?.credentialsFrom, "the S3 credentials").map { String(decoding: $0, as: UTF8.self) }
        if spec.destination.s3 != nil, secrets.s3Credentials == nil {
            throw BackupStartError("InvalidDestination", "an s3 destination needs credentialsFrom (a Secret key holding ACCESS_KEY_ID:SECRET_ACCESS_KEY)")
        }
        return BackupJobSpec(id: run.id, namespace: run.owner.namespace, schedule: run.owner.name, spec: spec, secrets: secrets,
                             capstanVersion: version, scratch: scratch)
    }

    public func start(_ run: BackupRun) async throws(BackupStartError) {
        let key = Self.jobKey(run.owner, run.id)
        guard jobs[key] == nil else { return }
        let directory = directory(run.owner)
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let job = try Self.job(for: run, vault: vault, version: version, scratch: directory + "/scratch")
        let payload: Data
        do { payload = try JSONEncoder().encode(job) + Data("\n".utf8) } catch { throw BackupStartError("InternalError", "\(error)") }
        var input: [Int32] = [0, 0], output: [Int32] = [0, 0]
        guard capstan_pipe_cloexec(&input) == 0, capstan_pipe_cloexec(&output) == 0 else {
            throw BackupStartError("InternalError", "pipe: \(String(cString: strerror(errno)))")
        }
        let log = "\(directory)/\(run.id).log"
        let environment = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"].compactMap { name in ProcessInfo.processInfo.environment[name].map { "\(name)=\($0)" } }
        let spawned = Result { () throws(Spawner.SpawnCode) -> pid_t in
            try Spawner.posixSpawn(executable, arguments: [executable, "backup-job"], environment: environment) { actions in
                posix_spawn_file_actions_adddup2(&actions, input[0], 0)
                posix_spawn_file_actions_adddup2(&actions, output[1], 1)
                posix_spawn_file_actions_addopen(&actions, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0o600)
            }
        }
        close(input[0])
        close(output[1])
        guard case .success(let pid) = spawned else {
            close(input[1])
            close(output[0])
            if case .failure(let error) = spawned { throw BackupStartError("InternalError", "\(executable): \(String(cString: strerror(error.code)))") }
            return
        }
        // The job and its secrets go through the pipe; the pipe stays open while the daemon lives.
        payload.withUnsafeBytes { bytes in _ = Glibc.write(input[1], bytes.baseAddress!, bytes.count) }
        jobs[key] = Job(spec: job, pid: pid, input: input[1], outcome: nil, stopReason: nil)
        let reader = output[0]
        Task.detached { [weak self] in
            var text = ByteBuffer()
            while let chunk = try? await ByteReader.read(reader, what: "backup-job", reason: "InternalError") {
                var chunk = chunk
                if text.readableBytes < 1 << 20 { text.writeBuffer(&chunk) }
            }
            close(reader)
            let status = await BackupTool.wait(pid)
            await self?.finished(key, owner: run.owner, output: String(buffer: text), status: status, log: log)
        }
    }

    func finished(_ key: String, owner: ObjectKey, output: String, status: Int32, log: String) async {
        guard var job = jobs[key] else { return }
        close(job.input)
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .deferredToDate
        let line = output.split(separator: "\n").last.map(String.init) ?? ""
        if let result = try? decoder.decode(BackupJobResult.self, from: Data(line.utf8)) {
            var outcome = BackupOutcome(succeeded: result.succeeded, reason: result.reason, message: result.message, size: result.size, sha256: result.sha256,
                                        verified: result.verified, pruned: result.pruned, pruneError: result.pruneError, finishedAt: result.finishedAt)
            if !outcome.succeeded, let stop = job.stopReason {
                outcome.reason = stop
                outcome.message = (stop == "Replaced" ? "stopped for a newer run (concurrencyPolicy Replace)" : "stopped (\(stop))") + ": " + outcome.message
            }
            job.outcome = outcome
        } else {
            // Killed before it could clean up after itself: what it wrote is removed here.
            let how = status > 0 ? "exited with status \(status)" : "was killed by signal \(-status)"
            let tail = LogTail.lastLines(of: log, count: 3).joined(separator: " | ")
            let recovered = await BackupRunner.recover(job.spec)
            if recovered.succeeded {
                job.outcome = recovered.outcome
            } else {
                let removed = recovered.message.components(separatedBy: "; ").dropFirst().joined(separator: "; ")
                job.outcome = BackupOutcome(succeeded: false, reason: job.stopReason ?? BackupError.interrupted,
                                            message: "the backup job \(how) before it finished" + (tail.isEmpty ? "" : " (\(tail))") + (removed.isEmpty ? "" : "; \(removed)"),
                                            finishedAt: Date())
            }
        }
        jobs[key] = job
        await enqueue(owner)
    }

    public func state(of id: String, owner: ObjectKey) async -> BackupJobState {
        let key = Self.jobKey(owner, id)
        guard let job = jobs[key] else { return .unknown }
        guard let outcome = job.outcome else { return .running }
        jobs[key] = nil
        return .finished(outcome)
    }

    public func stop(_ id: String, owner: ObjectKey, reason: String) async {
        let key = Self.jobKey(owner, id)
        guard var job = jobs[key], job.outcome == nil else { return }
        job.stopReason = reason
        jobs[key] = job
        kill(job.pid, SIGTERM)
    }

    public func running(owner: ObjectKey) async -> [String] {
        let prefix = "\(owner.namespace)/\(owner.name)/"
        return jobs.filter { $0.key.hasPrefix(prefix) && $0.value.outcome == nil }.map { String($0.key.dropFirst(prefix.count)) }.sorted()
    }

    public func recover(_ run: BackupRun) async -> BackupOutcome {
        let job: BackupJobSpec
        do {
            job = try Self.job(for: run, vault: vault, version: version, scratch: directory(run.owner) + "/scratch")
        } catch {
            return BackupOutcome(succeeded: false, reason: BackupError.interrupted,
                                 message: "the daemon running it stopped; what it left could not be looked at: \(error.message)", finishedAt: Date())
        }
        return await BackupRunner.recover(job).outcome
    }
}

extension BackupRunner {
    /// A run found cut off: finished after all when its manifest is there; else what it left
    /// is removed and it is `Interrupted`.
    public static func recover(_ job: BackupJobSpec) async -> BackupJobResult {
        let now = Date()
        do {
            let target = try target(job.destination, credentials: job.secrets.s3Credentials)
            if let data = try await target.get(job.id + ".json"), let manifest = try? BackupManifest.decoder.decode(BackupManifest.self, from: data) {
                return BackupJobResult(id: job.id, succeeded: true, reason: "Succeeded", message: "backup \(job.id) finished while no daemon watched it",
                                       size: manifest.size, sha256: manifest.sha256, startedAt: manifest.startedAt, finishedAt: manifest.finishedAt,
                                       verified: manifest.verified)
            }
            let removed = try await target.discard(job.id)
            return BackupJobResult(id: job.id, succeeded: false, reason: BackupError.interrupted,
                                   message: "the daemon running it stopped before it finished" + (removed.isEmpty ? "; nothing partial was left" : "; removed \(removed.joined(separator: ", "))"),
                                   startedAt: now, finishedAt: now)
        } catch {
            return BackupJobResult(id: job.id, succeeded: false, reason: BackupError.interrupted,
                                   message: "the daemon running it stopped before it finished; what it left could not be removed: \(error)", startedAt: now, finishedAt: now)
        }
    }

    /// The backups of a job's schedule at its destination, newest first (those with a manifest).
    public static func list(_ job: BackupJobSpec) async throws(BackupError) -> [BackupManifest] {
        let target = try target(job.destination, credentials: job.secrets.s3Credentials)
        var manifests: [BackupManifest] = []
        for name in try await target.list(prefix: job.schedule + "-") where name.hasSuffix(".json") {
            let id = String(name.dropLast(5))
            guard time(ofID: id, schedule: job.schedule) != nil, let data = try await target.get(name),
                  let manifest = try? BackupManifest.decoder.decode(BackupManifest.self, from: data) else { continue }
            manifests.append(manifest)
        }
        return manifests.sorted { $0.id > $1.id }
    }
}
