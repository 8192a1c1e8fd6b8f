import CapstanModel
import Foundation

/// One backup run, as the daemon hands it to `capstan backup-job` (on standard input, so the
/// secrets in it are never on a command line or on disk), or as a Kubernetes Job's container
/// receives it.
public struct BackupJobSpec: Codable, Sendable, Hashable {
    public struct Source: Codable, Sendable, Hashable {
        /// `postgres`, `sqlite`, `directory` or `command`.
        public var type: String
        public var host: String?
        public var port: Int?
        public var database: String?
        public var user: String?
        public var path: String?
        public var command: [String]?

        public init(type: String) { self.type = type }
    }

    public struct Destination: Codable, Sendable, Hashable {
        public var path: String?
        public var endpoint: String?
        public var bucket: String?
        public var prefix: String?
        public var region: String?
        public var pathStyle: Bool?

        public init() {}
    }

    public struct Secrets: Codable, Sendable, Hashable {
        public var postgresPassword: String?
        /// Base64 of the key's bytes as the Secret holds them.
        public var encryptionKey: String?
        public var s3Credentials: String?

        public init() {}
    }

    public var id: String
    public var namespace: String
    public var schedule: String
    public var source: Source
    public var destination: Destination
    public var encrypted: Bool
    public var verify: Bool
    public var retention: [Int]
    public var timeZone: String
    public var timeoutSeconds: Double
    public var capstanVersion: String
    public var secrets: Secrets
    /// Where the run keeps its tools' error output and a verification's scratch files.
    public var scratch: String

    public init(id: String, namespace: String, schedule: String, source: Source, destination: Destination, encrypted: Bool, verify: Bool,
                retention: [Int], timeZone: String, timeoutSeconds: Double, capstanVersion: String, secrets: Secrets, scratch: String) {
        self.id = id
        self.namespace = namespace
        self.schedule = schedule
        self.source = source
        self.destination = destination
        self.encrypted = encrypted
        self.verify = verify
        self.retention = retention
        self.timeZone = timeZone
        self.timeoutSeconds = timeoutSeconds
        self.capstanVersion = capstanVersion
        self.secrets = secrets
        self.scratch = scratch
    }

    /// The job for a schedule's spec (paths as given: the caller made them absolute).
    public init(id: String, namespace: String, schedule: String, spec: BackupScheduleSpec, secrets: Secrets, capstanVersion: String, scratch: String) {
        var source: Source
        if let postgres = spec.source.postgres {
            source = Source(type: "postgres")
            source.host = postgres.host
            source.port = postgres.port
            source.database = postgres.database
            source.user = postgres.user
        } else if let sqlite = spec.source.sqlite {
            source = Source(type: "sqlite")
            source.path = sqlite.path
        } else if let directory = spec.source.directory {
            source = Source(type: "directory")
            source.path = directory.path
        } else {
            source = Source(type: "command")
            source.command = spec.source.command?.command ?? []
        }
        var destination = Destination()
        if let s3 = spec.destination.s3 {
            destination.endpoint = s3.endpoint
            destination.bucket = s3.bucket
            destination.prefix = s3.prefix
            destination.region = s3.region
            destination.pathStyle = s3.pathStyle
        } else {
            destination.path = spec.destination.local?.path
        }
        let r = spec.retention
        self.init(id: id, namespace: namespace, schedule: schedule, source: source, destination: destination, encrypted: spec.encryption != nil,
                  verify: spec.verify, retention: [r.keepLast, r.keepHourly, r.keepDaily, r.keepWeekly, r.keepMonthly, r.keepYearly],
                  timeZone: spec.timeZone.identifier, timeoutSeconds: spec.timeout.seconds, capstanVersion: capstanVersion, secrets: secrets, scratch: scratch)
    }

    public var policy: RetentionPolicy {
        var policy = RetentionPolicy()
        let values = retention + Array(repeating: 0, count: max(0, 6 - retention.count))
        (policy.keepLast, policy.keepHourly, policy.keepDaily, policy.keepWeekly, policy.keepMonthly, policy.keepYearly) =
            (values[0], values[1], values[2], values[3], values[4], values[5])
        return policy
    }
}

/// What a run ended with: printed by `capstan backup-job` as its last line.
public struct BackupJobResult: Codable, Sendable, Hashable {
    public var id: String
    public var succeeded: Bool
    public var reason: String
    public var message: String
    public var size: Int?
    public var sha256: String?
    public var startedAt: Date
    public var finishedAt: Date
    /// `digest`, or `restore` (restored into a scratch database or file and queried).
    public var verified: String?
    /// Backups retention deleted after this one succeeded.
    public var pruned: [String]
    /// Why retention could not run (the backup itself succeeded).
    public var pruneError: String?

    public init(id: String, succeeded: Bool, reason: String, message: String, size: Int? = nil, sha256: String? = nil, startedAt: Date,
                finishedAt: Date, verified: String? = nil, pruned: [String] = [], pruneError: String? = nil) {
        self.id = id
        self.succeeded = succeeded
        self.reason = reason
        self.message = message
        self.size = size
        self.sha256 = sha256
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.verified = verified
        self.pruned = pruned
        self.pruneError = pruneError
    }
}


extension BackupJobResult {
    public var outcome: BackupOutcome {
        BackupOutcome(succeeded: succeeded, reason: reason, message: message, size: size, sha256: sha256, verified: verified, pruned: pruned,
                      pruneError: pruneError, finishedAt: finishedAt)
    }
}

