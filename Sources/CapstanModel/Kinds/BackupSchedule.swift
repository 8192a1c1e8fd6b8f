public struct PostgresSource: SpecObject, Hashable {
    public var host = ""
    public var port = 5432
    public var database = ""
    public var user = ""
    public var passwordFrom: SecretSource?

    public init() {}

    public static let fields: [Field<PostgresSource>] = [
        .required("host", \.host, nil, .nonEmpty),
        .defaulted("port", \.port, 5432, nil, .port),
        .required("database", \.database, nil, .nonEmpty),
        .required("user", \.user, nil, .nonEmpty),
        .optional("passwordFrom", \.passwordFrom, "Password from a Secret."),
    ]
}

public struct PathSource: SpecObject, Hashable {
    public var path = ""

    public init() {}

    public static let fields: [Field<PathSource>] = [.required("path", \.path, "Absolute, or relative to the spec file.", .nonEmpty)]
}

public struct BackupSource: SpecObject, Hashable {
    public var postgres: PostgresSource?
    public var sqlite: PathSource?
    public var directory: PathSource?
    public var command: ExecAction?

    public init() {}

    public static let fields: [Field<BackupSource>] = [
        .optional("postgres", \.postgres, "pg_dump of a database."),
        .optional("sqlite", \.sqlite, "Consistent online copy of an SQLite database."),
        .optional("directory", \.directory, "tar.gz of a directory."),
        .optional("command", \.command, "A command whose standard output is the backup."),
    ]

    public static let exactlyOneOf = ["postgres", "sqlite", "directory", "command"]
}

public struct S3Destination: SpecObject, Hashable {
    public var endpoint = ""
    public var bucket = ""
    public var prefix = ""
    public var region = "us-east-1"
    public var credentialsFrom: SecretSource?
    public var pathStyle: Bool?

    public init() {}

    public static let fields: [Field<S3Destination>] = [
        .required("endpoint", \.endpoint, "S3 endpoint URL.", .httpURL),
        .required("bucket", \.bucket, nil, Rule(check: { bucket in
            (3...63).contains(bucket.count) && bucket.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-" || $0 == ".") })
                ? nil : "\"\(bucket)\" is not a valid bucket name (3-63 lower-case letters, digits, '-' and '.')"
        })),
        .defaulted("prefix", \.prefix, "", "Key prefix."),
        .defaulted("region", \.region, "us-east-1"),
        .optional("credentialsFrom", \.credentialsFrom, "A Secret key holding accessKeyId:secretAccessKey."),
        .optional("pathStyle", \.pathStyle, "Address the bucket as ENDPOINT/BUCKET (true) or BUCKET.ENDPOINT (false); default: path-style for an IP address, localhost or an endpoint with a port."),
    ]
}

public struct BackupDestination: SpecObject, Hashable {
    public var local: PathSource?
    public var s3: S3Destination?

    public init() {}

    public static let fields: [Field<BackupDestination>] = [
        .optional("local", \.local, "A directory on this host."),
        .optional("s3", \.s3, "S3-compatible object storage."),
    ]

    public static let exactlyOneOf = ["local", "s3"]
}

/// restic-style retention: keep the newest N, and the newest of each of the last N days, weeks, months.
public struct RetentionPolicy: SpecObject, Hashable {
    public var keepLast = 0
    public var keepHourly = 0
    public var keepDaily = 0
    public var keepWeekly = 0
    public var keepMonthly = 0
    public var keepYearly = 0

    public init() {}
    public static let standard: RetentionPolicy = { var r = RetentionPolicy(); r.keepLast = 7; return r }()

    public static let fields: [Field<RetentionPolicy>] = [
        .defaulted("keepLast", \.keepLast, 0, nil, .minimum(0)),
        .defaulted("keepHourly", \.keepHourly, 0, nil, .minimum(0)),
        .defaulted("keepDaily", \.keepDaily, 0, nil, .minimum(0)),
        .defaulted("keepWeekly", \.keepWeekly, 0, nil, .minimum(0)),
        .defaulted("keepMonthly", \.keepMonthly, 0, nil, .minimum(0)),
        .defaulted("keepYearly", \.keepYearly, 0, nil, .minimum(0)),
    ]

    public static func validate(_ value: RetentionPolicy, _ node: SpecNode, _ context: inout DecodeContext) {
        if value == RetentionPolicy() {
            context.fail("keeps nothing: set at least one of keepLast, keepHourly, keepDaily, keepWeekly, keepMonthly or keepYearly", at: node.mark)
        }
    }
}

public struct BackupEncryption: SpecObject, Hashable {
    public var keyFrom = SecretSource()

    public init() {}

    public static let fields: [Field<BackupEncryption>] = [
        .required("keyFrom", \.keyFrom, "AES-256-GCM key (32 bytes, raw or base64) from a Secret."),
    ]
}

public enum ConcurrencyPolicy: String, SpecEnum {
    case forbid = "Forbid", allow = "Allow", replace = "Replace"
}

public struct BackupScheduleSpec: SpecObject, Hashable {
    public var schedule = try! CronSchedule("@daily")
    public var timeZone = TimeZoneName.utc
    public var source = BackupSource()
    public var destination = BackupDestination()
    public var retention = RetentionPolicy.standard
    public var encryption: BackupEncryption?
    public var concurrencyPolicy = ConcurrencyPolicy.forbid
    public var startingDeadline: KubeDuration?
    public var timeout = KubeDuration.hours(1)
    public var verify = true
    public var suspend = false

    public init() {}

    public static let fields: [Field<BackupScheduleSpec>] = [
        .required("schedule", \.schedule, "Cron (5 fields) or @hourly/@daily/@weekly/@monthly."),
        .defaulted("timeZone", \.timeZone, .utc, "IANA time zone of the schedule."),
        .required("source", \.source, "What to back up."),
        .required("destination", \.destination, "Where backups go."),
        .defaulted("retention", \.retention, .standard, "Which backups to keep (default keepLast 7)."),
        .optional("encryption", \.encryption, "Encrypt backups with AES-256-GCM."),
        .defaulted("concurrencyPolicy", \.concurrencyPolicy, .forbid, "Forbid, Allow or Replace a run still going."),
        .optional("startingDeadline", \.startingDeadline, "Skip a missed run older than this (default: always run the latest missed one).", .positive),
        .defaulted("timeout", \.timeout, .hours(1), "Time limit of one run.", .positive),
        .defaulted("verify", \.verify, true, "Re-read and check each backup after writing it."),
        .defaulted("suspend", \.suspend, false, "Stop scheduling runs."),
    ]
}

public struct BackupRecord: SpecObject, Hashable {
    public var id = ""
    public var time = Timestamp(.init(timeIntervalSince1970: 0))
    public var size: Int?
    public var sha256: String?
    /// `Succeeded`, `Failed`, or `Pruned` (succeeded, since deleted by retention).
    public var outcome = ""
    /// Why it failed (`SourceFailed`, `DestinationFailed`, `VerifyFailed`, `Timeout`,
    /// `Interrupted`, ...), and the tool's or server's message.
    public var reason: String?
    public var message: String?
    /// `digest` or `restore`.
    public var verified: String?

    public init() {}

    public static let succeeded = "Succeeded"
    public static let failed = "Failed"
    public static let pruned = "Pruned"

    public static let fields: [Field<BackupRecord>] = [
        .required("id", \.id), .required("time", \.time), .optional("size", \.size), .optional("sha256", \.sha256),
        .required("outcome", \.outcome), .optional("reason", \.reason), .optional("message", \.message),
        .optional("verified", \.verified, "How it was verified: digest, or restore (restored into a scratch database or file and queried)."),
    ]
}

public struct BackupScheduleStatus: CommonStatus, Hashable {
    public var observedGeneration: Int?
    public var conditions: [Condition] = []
    public var lastReconcileTime: Timestamp?
    public var lastScheduleTime: Timestamp?
    public var lastSuccessfulTime: Timestamp?
    public var nextScheduleTime: Timestamp?
    public var active: [String] = []
    public var backups: [BackupRecord] = []
    public var missedRuns: Int?

    public init() {}

    public static let fields: [Field<BackupScheduleStatus>] = commonFields + [
        .optional("lastScheduleTime", \.lastScheduleTime), .optional("lastSuccessfulTime", \.lastSuccessfulTime),
        .optional("nextScheduleTime", \.nextScheduleTime), .defaulted("active", \.active, [], "Runs in progress."),
        .defaulted("backups", \.backups, [], "The newest 20 backups."), .optional("missedRuns", \.missedRuns),
    ]
}

/// Scheduled backups with retention, verification and restore.
public struct BackupSchedule: Resource, Hashable {
    public static let kind = ResourceKind.backupSchedule
    public static let fields: [Field<BackupSchedule>] = resourceFields
    public var metadata = ObjectMeta()
    public var spec = BackupScheduleSpec()
    public var status = BackupScheduleStatus()

    public init() {}

    public static let statusColumnPath = ".status.conditions[?(@.type==\"Ready\")].message"
    public static let columns = [
        PrinterColumn("Schedule", "string", ".spec.schedule", "Cron schedule"),
        PrinterColumn("Last-Success", "date", ".status.lastSuccessfulTime", "Last successful backup"),
        PrinterColumn("Next", "string", ".status.nextScheduleTime", "Next scheduled run"),
    ]
}
