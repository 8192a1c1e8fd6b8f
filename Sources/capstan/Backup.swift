import ArgumentParser
import CapstanControllers
import CapstanKube
import CapstanLocal
import CapstanModel
import CapstanRuntime
import Foundation
#if canImport(Glibc)
import Glibc
#endif

struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Take a BackupSchedule's backup now, list its backups, restore one.",
        discussion: """
            Backups are taken by the daemon as jobs (here: a child process; on a cluster: a batch/v1 Job), streamed from the source through gzip and, with encryption, AES-256-GCM to the destination with a SHA-256, verified by reading them back (and, for PostgreSQL and SQLite, by restoring into a scratch database). Each backup is an object SCHEDULE-<UTC time> with a JSON manifest beside it.
            """,
        subcommands: [BackupRunCommand.self, BackupList.self, BackupRestore.self])
}

/// A schedule named on the command line and the job that reaches its destination: from the
/// state directory (secrets from its vault), or with `--kube` from the cluster (the custom
/// resource; secrets from its Secrets). `record` writes an event about the schedule there.
struct BackupAccess {
    let key: ObjectKey
    let job: BackupJobSpec
    let record: (EventType, String, String) async -> Void
    let close: () async -> Void

    static func open(_ reference: String, namespace: String?, state: StateOptions, kube: KubeConnection) async throws -> BackupAccess {
        let parsed = try parseReference(reference, namespace: namespace ?? "default")
        guard parsed.kind == .backupSchedule else { throw ValidationError("backups belong to BackupSchedules; got \(parsed.kind.singular)") }
        if kube.enabled { return try await cluster(parsed, namespace: namespace, kube: kube) }
        let key = parsed
        let vault = try openVault(state, create: false)
        guard let record = try vault.store.object(key), case .backupSchedule(let schedule) = record.resource else {
            printError("capstan: backupschedule \"\(key.name)\" not found in namespace \(key.namespace)")
            throw ExitCode(1)
        }
        let run = BackupRun(id: "", owner: key, spec: schedule.spec, sourceFile: record.sourceFile)
        do {
            let job = try LocalBackups.job(for: run, vault: vault, version: Capstan.version, scratch: state.resolved + "/backups/\(key.namespace)/\(key.name)/scratch")
            return BackupAccess(key: key, job: job, record: { type, reason, message in
                _ = try? vault.store.recordEvent(type, reason: reason, message: message, about: key, at: Date())
            }, close: {})
        } catch {
            printError("capstan: \(error.message)")
            throw ExitCode(1)
        }
    }

    static func cluster(_ parsed: ObjectKey, namespace: String?, kube: KubeConnection) async throws -> BackupAccess {
        let client: KubeClient
        let key: ObjectKey
        do {
            let config = try kube.config()
            client = try KubeClient(config: config, qps: 0, userAgent: "capstan/\(Capstan.version)")
            key = ObjectKey(kind: .backupSchedule, namespace: namespace ?? config.namespace, name: parsed.name)
        } catch {
            printError("capstan: \(error)")
            throw ExitCode(2)
        }
        do {
            guard let node = try await client.get(.capstan(.backupSchedule), namespace: key.namespace, name: key.name) else {
                printError("capstan: backupschedule \"\(key.name)\" not found in namespace \(key.namespace)")
                throw ExitCode(1)
            }
            let schedule = try BackupSchedule.decoded(from: node)
            func secret(_ source: SecretSource?) async throws -> String? {
                guard let ref = source?.secretKeyRef else { return nil }
                guard let found = try await client.get(KubeSecrets.secrets, namespace: key.namespace, name: ref.name),
                      let value = KubeSecrets.values(of: found)[ref.key] else {
                    printError("capstan: Secret \(ref.name) with key \(ref.key) not found in namespace \(key.namespace)")
                    throw ExitCode(1)
                }
                return String(decoding: value, as: UTF8.self)
            }
            var secrets = BackupJobSpec.Secrets()
            secrets.postgresPassword = try await secret(schedule.spec.source.postgres?.passwordFrom)
            secrets.encryptionKey = try await secret(schedule.spec.encryption?.keyFrom).map { Data($0.utf8).base64EncodedString() }
            secrets.s3Credentials = try await secret(schedule.spec.destination.s3?.credentialsFrom)
            let job = BackupJobSpec(id: "", namespace: key.namespace, schedule: key.name, spec: schedule.spec, secrets: secrets,
                                    capstanVersion: Capstan.version, scratch: NSTemporaryDirectory() + "capstan-backup-\(getpid())")
            let events = KubeObjectStore(client: client, instance: "capstan-cli", log: { printError("capstan: \($0)") })
            let involved: SpecNode = .mapping([
                ("apiVersion", .string(capstanAPIVersion)), ("kind", .string("BackupSchedule")), ("namespace", .string(key.namespace)),
                ("name", .string(key.name)), ("uid", .string(schedule.metadata.uid ?? "")),
            ])
            return BackupAccess(key: key, job: job, record: { type, reason, message in
                await events.record(type, reason: reason, message: message, involved: involved, namespace: key.namespace)
            }, close: { await client.shutdown() })
        } catch let exit as ExitCode {
            await client.shutdown()
            throw exit
        } catch {
            await client.shutdown()
            printError("capstan: \(error)")
            throw ExitCode(1)
        }
    }
}

struct BackupRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Take a backup now.",
        discussion: "The daemon starts the run as a scheduled one (concurrencyPolicy applies: Forbid refuses while a run is going). With --kube the custom resource gets the annotation capstan.dev/backup-now.")

    @OptionGroup var options: RequestOptions

    func run() async throws {
        let key = try parseReference(options.object, namespace: options.namespace ?? "default")
        guard key.kind == .backupSchedule else { throw ValidationError("only BackupSchedules take backups; got \(key.kind.singular)") }
        guard options.kube.enabled else {
            try await submitRequest(ObjectRequest.backupNow, for: key, value: "", what: "backup", wait: options.wait, state: options.state,
                                    answers: (["BackupRequested"], ["RunRefused"])) { _ in }
            return
        }
        try await KubeRequest(connection: options.kube, key: key, annotation: ObjectRequest.annotation(of: ObjectRequest.backupNow)!, value: "", what: "backup")
            .answered(wait: options.wait, namespace: options.namespace, accepted: ["BackupRequested"], refused: ["RunRefused"], matching: { _ in true })
    }
}

struct BackupList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List the backups of a BackupSchedule at its destination (those with a manifest: finished and verified).")

    @Argument(help: ArgumentHelp("The schedule.", valueName: "backupschedule/name"))
    var object: String
    @Option(name: [.short, .long], help: "Namespace of the schedule.") var namespace: String?
    @Option(name: [.short, .customLong("output")], help: "Output format: table or json.") var output: String = "table"
    @OptionGroup var state: StateOptions
    @OptionGroup var kube: KubeConnection

    func run() async throws {
        let access = try await BackupAccess.open(object, namespace: namespace, state: state, kube: kube)
        let manifests: [BackupManifest]
        do {
            manifests = try await BackupRunner.list(access.job)
            await access.close()
        } catch {
            await access.close()
            printError("capstan: \(error.message)")
            throw ExitCode(1)
        }
        if output == "json" {
            let encoder = BackupManifest.encoder
            print(String(decoding: try encoder.encode(manifests), as: UTF8.self))
            return
        }
        guard !manifests.isEmpty else {
            printError("No backups found.")
            return
        }
        var rows = [["ID", "FINISHED", "SIZE", "SHA256", "ENCRYPTION", "VERIFIED"]]
        for manifest in manifests {
            rows.append([manifest.id, Timestamp(manifest.finishedAt).description, Self.size(manifest.size), String(manifest.sha256.prefix(12)),
                         manifest.encryption ?? "none", manifest.verified ?? "no"])
        }
        printTable(rows)
    }

    static func size(_ bytes: Int) -> String {
        BackupRunner.size(bytes).replacingOccurrences(of: " ", with: "").replacingOccurrences(of: "iB", with: "i")
    }
}

struct BackupRestore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a backup: PostgreSQL into a database, SQLite and directories into a path.",
        discussion: """
            The backup's digest is checked first; an encrypted backup needs the key its schedule names. A database with tables, an existing SQLite file or a directory that is not empty is refused unless --force. The restore is recorded as an event on the BackupSchedule.
            """)

    @Argument(help: ArgumentHelp("The schedule.", valueName: "backupschedule/name"))
    var object: String
    @Argument(help: ArgumentHelp("The backup (`capstan backup list`); the newest when left out.", valueName: "backup-id"))
    var id: String?
    @Option(help: ArgumentHelp("Restore into this path (SQLite file, directory, or the file a command's output is written to).", valueName: "path"))
    var to: String?
    @Option(help: ArgumentHelp("Restore a PostgreSQL backup into this database (made when it does not exist) on the source's server.", valueName: "name"))
    var database: String?
    @Flag(help: "Replace what the target holds.") var force = false
    @Option(name: [.short, .long], help: "Namespace of the schedule.") var namespace: String?
    @OptionGroup var state: StateOptions
    @OptionGroup var kube: KubeConnection

    func validate() throws {
        if (to == nil) == (database == nil) { throw ValidationError("give one of --to PATH or --database NAME") }
    }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let access = try await BackupAccess.open(object, namespace: namespace, state: state, kube: kube)
        var backupID = id
        if backupID == nil {
            backupID = try? await BackupRunner.list(access.job).first?.id
            guard backupID != nil else {
                await access.close()
                printError("capstan: backupschedule/\(access.key.name) has no backups yet (or they cannot be listed: `capstan backup list` says why)")
                throw ExitCode(1)
            }
        }
        let target: RestoreTarget = database.map { .database($0) } ?? .path(FilePaths.absolute(to!))
        do {
            let line = try await BackupRunner.restore(access.job, id: backupID!, into: target, force: force)
            await access.record(.normal, "BackupRestored", line + (force ? " (--force)" : ""))
            await access.close()
            print(line)
        } catch {
            await access.record(.warning, "RestoreFailed", "restoring \(backupID!) failed: \(error.message)")
            await access.close()
            printError("capstan: \(error.message)")
            throw ExitCode(1)
        }
    }
}

/// The body of one backup run (started by the daemon; not for people).
struct BackupJobCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup-job",
        abstract: "Run one backup job read from standard input (started by the daemon).",
        shouldDisplay: false)

    @Flag(name: .customLong("from-env"), help: "Read the job from $CAPSTAN_BACKUP_JOB and its secrets from the environment (a Kubernetes Job).")
    var fromEnvironment = false

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let environment = ProcessInfo.processInfo.environment
        let text = fromEnvironment ? environment[KubeBackups.jobVariable] : readLine(strippingNewline: true)
        guard let text, var job = try? JSONDecoder().decode(BackupJobSpec.self, from: Data(text.utf8)) else {
            printError("capstan backup-job: no job " + (fromEnvironment ? "in $\(KubeBackups.jobVariable)" : "on standard input"))
            throw ExitCode(2)
        }
        if fromEnvironment {
            job.secrets.postgresPassword = environment["CAPSTAN_BACKUP_PGPASSWORD"]
            job.secrets.encryptionKey = environment["CAPSTAN_BACKUP_KEY"].map { Data($0.utf8).base64EncodedString() }
            job.secrets.s3Credentials = environment["CAPSTAN_BACKUP_S3_CREDENTIALS"]
        }
        let interruption = BackupInterruption()
        // The daemon keeps our input open while it lives: its end (even by kill -9) cuts the
        // run off, which then removes what it wrote. (A Kubernetes Job's pod is stopped by SIGTERM.)
        if !fromEnvironment { Thread.detachNewThread {
            var byte: UInt8 = 0
            while true {
                let count = Glibc.read(0, &byte, 1)
                if count == 0 || (count < 0 && errno != EINTR) { break }
            }
            interruption.interrupt(BackupError.interrupted, "the daemon that started the backup stopped")
        } }
        signal(SIGTERM, SIG_IGN)
        let terminate = DispatchSource.makeSignalSource(signal: SIGTERM, queue: .global())
        terminate.setEventHandler { interruption.interrupt(BackupError.interrupted, "the backup was stopped") }
        terminate.resume()
        let timeout = job.timeoutSeconds
        let timer = Task.detached {
            try? await Task.sleep(for: .milliseconds(Int64(timeout * 1000)))
            if !Task.isCancelled { interruption.interrupt(BackupError.timeout, "the backup did not finish within its timeout (\(KubeDuration(nanoseconds: Int64(timeout * 1e9))))") }
        }
        let result = await BackupRunner.run(job, interruption: interruption)
        timer.cancel()
        let data = try JSONEncoder().encode(result)
        FileHandle.standardOutput.write(data + Data("\n".utf8))
        // On a cluster the result is the pod's termination message, which the operator reads.
        if fromEnvironment, FileManager.default.fileExists(atPath: "/dev/termination-log") {
            try? data.write(to: URL(fileURLWithPath: "/dev/termination-log"))
        }
        printError("capstan backup-job: \(result.id): \(result.succeeded ? "succeeded" : "failed (\(result.reason))"): \(result.message)")
    }
}

/// After a run on a cluster was cut off (its Job deleted before it ended), the operator
/// removes what it left at an S3 destination, with the credentials read from the cluster.
enum KubeBackupRecovery {
    static func recover(client: KubeClient) -> @Sendable (BackupRun, BackupJobSpec) async -> BackupOutcome {
        { run, job in
            var job = job
            job.scratch = NSTemporaryDirectory() + "capstan-backup-recovery"
            if let ref = run.spec.destination.s3?.credentialsFrom?.secretKeyRef,
               let secret = try? await client.get(KubeSecrets.secrets, namespace: run.owner.namespace, name: ref.name) {
                job.secrets.s3Credentials = KubeSecrets.values(of: secret)[ref.key].map { String(decoding: $0, as: UTF8.self) }
            }
            if run.spec.destination.local != nil {
                // A directory on a node: the pod removed what it wrote when it was stopped.
                return BackupOutcome(succeeded: false, reason: BackupError.interrupted, message: "its pod was stopped before it finished", finishedAt: Date())
            }
            return await BackupRunner.recover(job).outcome
        }
    }
}
