import CapstanControllers
import CapstanIntegrations
import CapstanModel
import Crypto
import Foundation
import NIOCore

/// The JSON beside each backup (`ID.json`): written last, so a backup without one was never
/// finished and is never listed.
public struct BackupManifest: Codable, Sendable, Hashable {
    public var id: String
    public var schedule: String
    public var namespace: String
    public var source: String
    public var size: Int
    public var sha256: String
    /// `gzip` or `none` (a PostgreSQL custom-format dump compresses itself).
    public var compression: String
    /// `aes-256-gcm` or nil.
    public var encryption: String?
    public var startedAt: Date
    public var finishedAt: Date
    public var capstanVersion: String
    public var verified: String?

    public static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }()

    public static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }()
}

/// A run's tools, so a stop, a timeout or the daemon's end can cut it off at once.
public final class BackupInterruption: @unchecked Sendable {
    private let lock = NSLock()
    private var reason: (String, String)?
    private var tools: Set<pid_t> = []

    public init() {}

    /// Cuts the run off: its tools are killed; the run ends failed with this reason.
    public func interrupt(_ reason: String, _ message: String) {
        let pids: Set<pid_t> = lock.withLock {
            if self.reason == nil { self.reason = (reason, message) }
            return tools
        }
        for pid in pids { kill(-pid, SIGKILL) }
    }

    var current: BackupError? { lock.withLock { reason.map { BackupError($0.0, $0.1) } } }

    func add(_ tool: BackupTool) throws(BackupError) {
        let cut: BackupError? = lock.withLock {
            if reason == nil { tools.insert(tool.pid) }
            return reason.map { BackupError($0.0, $0.1) }
        }
        if let cut {
            kill(-tool.pid, SIGKILL)
            throw cut
        }
    }

    func remove(_ tool: BackupTool) { _ = lock.withLock { tools.remove(tool.pid) } }
}

/// Takes, verifies and prunes backups, and restores them: the work of `capstan backup-job`
/// and `capstan backup restore`, the same on this host and in a Kubernetes Job.
public enum BackupRunner {
    /// 512 B, 1.3 KiB, 208.2 MiB, 1.02 GiB.
    public static func size(_ bytes: Int) -> String {
        if bytes < 1024 { return "\(bytes) B" }
        if bytes < 1 << 20 { return String(format: "%.1f KiB", Double(bytes) / 1024) }
        if bytes < 1 << 30 { return String(format: "%.1f MiB", Double(bytes) / 1_048_576) }
        return String(format: "%.2f GiB", Double(bytes) / 1_073_741_824)
    }

    /// When a backup of `schedule` was begun, from its id (nil for a name that is not one).
    public static func time(ofID id: String, schedule: String) -> Date? {
        BackupScheduleReconciler.time(ofID: id, schedule: schedule)
    }

    public static func id(schedule: String, at date: Date) -> String {
        BackupScheduleReconciler.id(schedule: schedule, at: date)
    }

    static func target(_ destination: BackupJobSpec.Destination, credentials: String?) throws(BackupError) -> any BackupTarget {
        if let path = destination.path { return DirectoryTarget(path: path) }
        guard let endpoint = destination.endpoint, let bucket = destination.bucket else {
            throw BackupError(BackupError.destinationFailed, "no destination")
        }
        guard let text = credentials, let parsed = AWSCredentials(parsing: text) else {
            throw BackupError(BackupError.destinationFailed, "S3 credentials are missing or not ACCESS_KEY_ID:SECRET_ACCESS_KEY")
        }
        do {
            let client = try S3Client(endpoint: endpoint, bucket: bucket, region: destination.region ?? "us-east-1", credentials: parsed,
                                      pathStyle: destination.pathStyle)
            return S3Target(client: client, prefix: destination.prefix ?? "")
        } catch {
            throw BackupError(BackupError.destinationFailed, error.description)
        }
    }

    static func key(_ secrets: BackupJobSpec.Secrets) throws(BackupError) -> SymmetricKey? {
        guard let encoded = secrets.encryptionKey else { return nil }
        guard let data = Data(base64Encoded: encoded) else { throw BackupError(BackupError.encryptionFailed, "the encryption key is not readable") }
        return try BackupCipher.key(from: data)
    }

    /// Runs a job to its end: never throws; a failure is the result.
    public static func run(_ job: BackupJobSpec, interruption: BackupInterruption = BackupInterruption()) async -> BackupJobResult {
        let started = Date()
        try? FileManager.default.createDirectory(atPath: job.scratch, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        do {
            let (manifest, pruned, pruneError) = try await take(job, interruption: interruption, started: started)
            let how = switch manifest.verified {
            case "restore": ", verified by restore"
            case "archive": ", verified by reading the whole archive (the user may not create a scratch database to restore into: grant CREATEDB for a restore check)"
            case "digest": ", verified by digest"
            default: ""
            }
            return BackupJobResult(id: job.id, succeeded: true, reason: "Succeeded", message: "backup \(job.id): \(Self.size(manifest.size))\(how)",
                                   size: manifest.size, sha256: manifest.sha256, startedAt: started, finishedAt: Date(), verified: manifest.verified,
                                   pruned: pruned, pruneError: pruneError)
        } catch {
            let failure = interruption.current ?? (error as? BackupError) ?? BackupError(BackupError.destinationFailed, "\(error)")
            return BackupJobResult(id: job.id, succeeded: false, reason: failure.reason, message: failure.message, startedAt: started, finishedAt: Date())
        }
    }

    static func take(_ job: BackupJobSpec, interruption: BackupInterruption, started: Date) async throws -> (BackupManifest, [String], String?) {
        let target = try target(job.destination, credentials: job.secrets.s3Credentials)
        let key = try key(job.secrets)
        if job.encrypted, key == nil { throw BackupError(BackupError.encryptionFailed, "the encryption key is missing") }
        try await target.check()
        let compressed = job.source.type != "postgres"
        let writer = try await target.writer(job.id)
        let digest = DigestSink(next: writer)
        var head: any ByteSink = digest
        if let key { head = EncryptSink(key: key, next: head) }
        if compressed { head = try ZlibSink(.compress, next: head) }
        let streamed = await Result {
            let tool = try sourceTool(job)
            try await using(tool, interruption) {
                do {
                    try await ByteReader.pump(tool.descriptor, into: head, what: tool.name, reason: BackupError.sourceFailed)
                } catch {
                    await tool.kill()
                    throw error
                }
                try await tool.finish()
            }
            if let cut = interruption.current { throw cut }
            try await head.finish()
        }
        if case .failure(let error) = streamed {
            await head.abort()
            _ = try? await target.discard(job.id)
            throw interruption.current ?? error
        }
        var manifest = BackupManifest(id: job.id, schedule: job.schedule, namespace: job.namespace, source: job.source.type, size: digest.size,
                                      sha256: digest.digest ?? "", compression: compressed ? "gzip" : "none", encryption: key == nil ? nil : "aes-256-gcm",
                                      startedAt: started, finishedAt: Date(), capstanVersion: job.capstanVersion, verified: nil)
        if job.verify {
            do {
                manifest.verified = try await verify(job, manifest: manifest, target: target, key: key, interruption: interruption)
            } catch {
                _ = try? await target.discard(job.id)
                throw interruption.current ?? error
            }
        }
        manifest.finishedAt = Date()
        do {
            try await target.put(job.id + ".json", try BackupManifest.encoder.encode(manifest))
        } catch {
            _ = try? await target.discard(job.id)
            throw interruption.current ?? error
        }
        // Retention runs after a success only; a failure to prune does not fail the backup.
        do {
            return (manifest, try await prune(job, target: target), nil)
        } catch {
            return (manifest, [], (error as? BackupError)?.message ?? "\(error)")
        }
    }

    /// Runs `body` with `tool` known to the interruption (a stop kills it at once).
    static func using(_ tool: BackupTool, _ interruption: BackupInterruption, _ body: () async throws -> Void) async throws {
        try interruption.add(tool)
        let result = await Result { try await body() }
        interruption.remove(tool)
        try result.get()
    }

    static func sourceTool(_ job: BackupJobSpec) throws(BackupError) -> BackupTool {
        let source = job.source
        switch source.type {
        case "postgres":
            var environment = ["PGCONNECT_TIMEOUT": "10"]
            if let password = job.secrets.postgresPassword { environment["PGPASSWORD"] = password }
            return try BackupTool(["pg_dump", "--format=custom", "--no-password", "--host", source.host ?? "", "--port", String(source.port ?? 5432),
                                   "--username", source.user ?? "", "--dbname", source.database ?? ""],
                                  environment: environment, direction: .readOutput, scratch: job.scratch, reason: BackupError.sourceFailed)
        case "sqlite":
            let path = source.path ?? ""
            guard FileManager.default.fileExists(atPath: path) else { throw BackupError(BackupError.sourceFailed, "\(path): no such file") }
            // `.dump` reads inside one transaction: a consistent copy while the app writes.
            return try BackupTool(["sqlite3", "-bail", "-cmd", ".timeout 30000", path, ".dump"], direction: .readOutput, scratch: job.scratch,
                                  reason: BackupError.sourceFailed)
        case "directory":
            let path = source.path ?? ""
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw BackupError(BackupError.sourceFailed, "\(path): no such directory")
            }
            return try BackupTool(["tar", "-C", path, "-cf", "-", "."], direction: .readOutput, scratch: job.scratch, reason: BackupError.sourceFailed)
        default:
            return try BackupTool(source.command ?? [], direction: .readOutput, scratch: job.scratch, reason: BackupError.sourceFailed)
        }
    }

    /// Re-reads the stored backup and checks its digest; a PostgreSQL dump is restored into a
    /// scratch database and an SQLite dump into a scratch file, then queried; a tar is read
    /// through. Returns how it was verified.
    static func verify(_ job: BackupJobSpec, manifest: BackupManifest, target: any BackupTarget, key: SymmetricKey?,
                       interruption: BackupInterruption) async throws -> String {
        let check = DigestSink(next: DiscardSink())
        try await target.read(job.id, into: check)
        guard check.digest == manifest.sha256 else {
            throw BackupError(BackupError.verifyFailed, "the stored backup's SHA-256 is \(check.digest ?? "?"), \(manifest.sha256) was written")
        }
        switch job.source.type {
        case "postgres":
            return try await verifyPostgres(job, target: target, key: key, interruption: interruption)
        case "sqlite":
            let file = "\(job.scratch)/verify-\(UUID().uuidString).db"
            defer { for suffix in ["", "-journal", "-wal", "-shm"] { unlink(file + suffix) } }
            let tool = try BackupTool(["sqlite3", "-bail", file], direction: .writeInput, scratch: job.scratch, reason: BackupError.verifyFailed)
            try await using(tool, interruption) { try await restoreStream(job.id, from: target, key: key, compressed: true, into: ToolInputSink(tool)) }
            let integrity = try await BackupTool.run(["sqlite3", file, "PRAGMA integrity_check; SELECT count(*) FROM sqlite_master;"], scratch: job.scratch,
                                                     reason: BackupError.verifyFailed)
            guard integrity.split(separator: "\n").first == "ok" else {
                throw BackupError(BackupError.verifyFailed, "the restored copy fails PRAGMA integrity_check: \(integrity.prefix(300))")
            }
            return "restore"
        case "directory":
            let tool = try BackupTool(["tar", "-tf", "-"], direction: .writeInput, scratch: job.scratch, reason: BackupError.verifyFailed)
            try await using(tool, interruption) { try await restoreStream(job.id, from: target, key: key, compressed: true, into: ToolInputSink(tool)) }
            return "restore"
        default:
            if key != nil { try await restoreStream(job.id, from: target, key: key, compressed: true, into: DiscardSink()) }
            return "digest"
        }
    }

    static func postgresEnvironment(_ job: BackupJobSpec) -> [String: String] {
        var environment = ["PGCONNECT_TIMEOUT": "10", "PGHOST": job.source.host ?? "", "PGPORT": String(job.source.port ?? 5432),
                           "PGUSER": job.source.user ?? ""]
        if let password = job.secrets.postgresPassword { environment["PGPASSWORD"] = password }
        return environment
    }

    /// Restores the dump into a scratch database and queries it ("restore"); a user that may not
    /// create databases gets the whole archive read by `pg_restore` instead ("archive").
    static func verifyPostgres(_ job: BackupJobSpec, target: any BackupTarget, key: SymmetricKey?, interruption: BackupInterruption) async throws -> String {
        let environment = postgresEnvironment(job)
        let scratch = "capstan_verify_" + UUID().uuidString.prefix(8).lowercased()
        let maintenance = job.source.database ?? "postgres"
        let created = await Result {
            try await BackupTool.run(["createdb", "--no-password", "--maintenance-db", maintenance, scratch], environment: environment,
                                     scratch: job.scratch, reason: BackupError.verifyFailed)
        }
        if case .failure(let error) = created {
            guard "\(error)".contains("permission denied to create database") else { throw error }
            let tool = try BackupTool(["pg_restore", "--file=/dev/null"], direction: .writeInput, scratch: job.scratch, reason: BackupError.verifyFailed)
            try await using(tool, interruption) { try await restoreStream(job.id, from: target, key: key, compressed: false, into: ToolInputSink(tool)) }
            return "archive"
        }
        let restored = await Result { try await restoreAndQuery(job, into: scratch, environment: environment, target: target, key: key, interruption: interruption) }
        let dropped = await Result {
            try await BackupTool.run(["dropdb", "--no-password", "--maintenance-db", maintenance, scratch], environment: environment,
                                     scratch: job.scratch, reason: BackupError.verifyFailed)
        }
        try restored.get()
        _ = try dropped.get()
        return "restore"
    }

    /// `pg_restore` of the stored dump into `database`, then a query of what it holds.
    static func restoreAndQuery(_ job: BackupJobSpec, into database: String, environment: [String: String], target: any BackupTarget,
                                key: SymmetricKey?, interruption: BackupInterruption) async throws {
        let tool = try BackupTool(["pg_restore", "--no-password", "--no-owner", "--exit-on-error", "--dbname", database], environment: environment,
                                  direction: .writeInput, scratch: job.scratch, reason: BackupError.verifyFailed)
        try await using(tool, interruption) { try await restoreStream(job.id, from: target, key: key, compressed: false, into: ToolInputSink(tool)) }
        _ = try await BackupTool.run(["psql", "--no-password", "--dbname", database, "-tAc",
                                      "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"],
                                     environment: environment, scratch: job.scratch, reason: BackupError.verifyFailed)
    }

    /// The stored object, decrypted and decompressed, into `sink`.
    static func restoreStream(_ id: String, from target: any BackupTarget, key: SymmetricKey?, compressed: Bool, into sink: any ByteSink) async throws {
        var head: any ByteSink = sink
        if compressed { head = try ZlibSink(.decompress, next: head) }
        if let key { head = DecryptSink(key: key, next: head) }
        do {
            try await target.read(id, into: head)
        } catch {
            await head.abort()
            throw error
        }
    }

    /// Deletes the backups of this schedule the policy does not keep (manifest first: a
    /// backup is never listed without its object). Returns their ids.
    static func prune(_ job: BackupJobSpec, target: any BackupTarget) async throws -> [String] {
        let ids = try await target.list(prefix: job.schedule + "-").compactMap { name -> String? in
            name.hasSuffix(".json") && !name.hasSuffix(".partial") ? String(name.dropLast(5)) : nil
        }
        let dated = ids.compactMap { id in time(ofID: id, schedule: job.schedule).map { (id: id, time: $0) } }
        let kept = job.policy.kept(dated, in: TimeZone(identifier: job.timeZone) ?? .gmt)
        var pruned: [String] = []
        for backup in dated where !kept.contains(backup.id) && backup.id != job.id {
            try await target.delete(backup.id + ".json")
            try await target.delete(backup.id)
            pruned.append(backup.id)
        }
        return pruned.sorted()
    }
}
