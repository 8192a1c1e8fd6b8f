import CapstanModel
import Foundation

/// One backup run of a schedule: `SCHEDULE-20261204T020000Z`.
public struct BackupRun: Sendable, Hashable {
    public var id: String
    public var owner: ObjectKey
    public var spec: BackupScheduleSpec
    /// The spec file it came from (relative paths are relative to it), empty on a cluster.
    public var sourceFile: String

    public init(id: String, owner: ObjectKey, spec: BackupScheduleSpec, sourceFile: String) {
        self.id = id
        self.owner = owner
        self.spec = spec
        self.sourceFile = sourceFile
    }
}

/// How a run ended, as the platform read it back (the job's result; on a cluster the Job's).
public struct BackupOutcome: Sendable, Hashable {
    public var succeeded: Bool
    public var reason: String
    public var message: String
    public var size: Int?
    public var sha256: String?
    public var verified: String?
    /// Backups retention deleted after this one succeeded.
    public var pruned: [String]
    /// Why retention could not run after this success.
    public var pruneError: String?
    public var finishedAt: Date

    public init(succeeded: Bool, reason: String, message: String, size: Int? = nil, sha256: String? = nil, verified: String? = nil,
                pruned: [String] = [], pruneError: String? = nil, finishedAt: Date) {
        self.succeeded = succeeded
        self.reason = reason
        self.message = message
        self.size = size
        self.sha256 = sha256
        self.verified = verified
        self.pruned = pruned
        self.pruneError = pruneError
        self.finishedAt = finishedAt
    }
}

/// What the platform knows of a run.
public enum BackupJobState: Sendable, Hashable {
    case running
    case finished(BackupOutcome)
    /// No job of that id: cut off (the daemon that ran it died) or never started.
    case unknown
}

/// Why a run could not start: a reason (`SecretNotFound`, `SecretUnavailable`,
/// `InvalidDestination`, ...) and a message.
public struct BackupStartError: Error, Sendable, Hashable {
    public var reason: String
    public var message: String

    public init(_ reason: String, _ message: String) {
        self.reason = reason
        self.message = message
    }
}

/// Backups are jobs the platform runs and the reconciler observes (platforms.md): local = a
/// `capstan backup-job` child of the daemon, Kubernetes = a `batch/v1` Job.
public protocol BackupPlatform: Sendable {
    /// Starts a run; returns at once. A run already started is left alone.
    func start(_ run: BackupRun) async throws(BackupStartError)
    func state(of id: String, owner: ObjectKey) async -> BackupJobState
    /// Stops a run (a `Replace`, a timeout, its schedule deleted); it ends failed with `reason`.
    func stop(_ id: String, owner: ObjectKey, reason: String) async
    /// After a run was found cut off: removes what it left (a partial file, an upload begun)
    /// and says how it ended — finished after all when its manifest is there, else
    /// `Interrupted`.
    func recover(_ run: BackupRun) async -> BackupOutcome
    /// Runs of `owner` the platform still runs (a schedule deleted stops them).
    func running(owner: ObjectKey) async -> [String]
}
