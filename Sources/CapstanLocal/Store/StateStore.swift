import CapstanModel
import CapstanRuntime
import Foundation
import GRDB

/// The local state store: one SQLite database (WAL mode) in the state directory holding what
/// directory mode needs to survive restarts — each object's last good spec, generation and
/// status, reconcile events, and (in later milestones) inventory, revisions and requests.
///
/// Guarantees:
/// - a store written by a newer Capstan, or a file that is not a healthy SQLite database, is
///   refused with a message saying what to do, and never modified;
/// - the database and its directory are private to the user (0600/0700);
/// - readers (the CLI) use WAL snapshots and never block the daemon's writes.
public final class StateStore: Sendable {
    /// The database file's name inside the state directory.
    public static let fileName = "capstan.db"

    public let path: String
    let pool: DatabasePool

    public enum OpenError: Error, CustomStringConvertible {
        case newerSchema(path: String, unknown: [String])
        case corrupted(path: String, detail: String)
        case missing(path: String)
        case cannotCreate(path: String, detail: String)
        case readOnly(path: String)
        case permissionDenied(path: String)
        case diskFull(path: String)

        public var description: String {
            switch self {
            case .newerSchema(let path, let unknown):
                return "state store \(path) was written by a newer Capstan (it has migrations this one does not know: \(unknown.joined(separator: ", "))); refusing to open it: upgrade capstan, or use another --state-dir"
            case .corrupted(let path, let detail):
                // Moving it aside at once would orphan every instance it records: they are
                // stopped first, by their environment (the database is not needed for that).
                let directory = (path as NSString).deletingLastPathComponent
                return "state store \(path) is not a healthy SQLite database (\(detail)); refusing to start and leaving it untouched. Its instances keep running: stop them with `capstan down --state-dir \(directory)` (it finds them without the database), then move the file aside to start from an empty store"
            case .missing(let path):
                return "no state store at \(path): is the daemon's --state-dir another directory?"
            case .cannotCreate(let path, let detail):
                return "cannot create the state store in \(path): \(detail)"
            case .readOnly(let path):
                return "the state directory \(path) is read-only (a read-only mount, or the file's write permission is off): the daemon needs to write there. Remount it read-write or use another --state-dir; nothing in it was changed"
            case .permissionDenied(let path):
                return "permission denied on the state directory \(path) (running as uid \(getuid())): run capstan as the user that owns it, or fix its permissions; nothing in it was changed"
            case .diskFull(let path):
                return "the disk holding the state directory \(path) is full: free some space (the store needs a few MiB); nothing in it was changed"
            }
        }
    }

    /// Why `directory` (and its database) cannot be written, as an `OpenError`, or nil when
    /// it can: checked before SQLite tries, whose own errors do not tell these apart.
    static func writeProblem(directory: String, database: String) -> OpenError? {
        for path in [directory, database] where FileManager.default.fileExists(atPath: path) {
            guard access(path, W_OK) != 0 else { continue }
            switch errno {
            case EROFS: return .readOnly(path: directory)
            case EACCES, EPERM:
                // A file whose write bit is off (chmod a-w) reads as read-only too.
                var info = stat()
                if stat(path, &info) == 0, info.st_uid == getuid(), info.st_mode & S_IWUSR == 0 { return .readOnly(path: directory) }
                return .permissionDenied(path: directory)
            default: continue
            }
        }
        var fs = statvfs()
        if statvfs(directory, &fs) == 0, fs.f_bavail == 0, getuid() != 0 || fs.f_bfree == 0 { return .diskFull(path: directory) }
        return nil
    }

    /// An `OpenError` for what SQLite said while opening, by its result code.
    static func openError(_ error: any Error, directory: String, path: String) -> OpenError {
        if let error = error as? DatabaseError {
            switch error.resultCode.primaryResultCode {
            case .SQLITE_READONLY: return writeProblem(directory: directory, database: path) ?? .readOnly(path: directory)
            case .SQLITE_PERM, .SQLITE_AUTH: return .permissionDenied(path: directory)
            case .SQLITE_FULL: return .diskFull(path: directory)
            case .SQLITE_CANTOPEN, .SQLITE_IOERR:
                if let problem = writeProblem(directory: directory, database: path) { return problem }
            default: break
            }
        }
        return .corrupted(path: path, detail: describe(error))
    }

    /// Opens (creating if needed) the store in `directory`, migrating an older schema.
    /// With `readOnly`, nothing is created or migrated (the CLI's view of a daemon's store).
    public init(directory: String, readOnly: Bool = false) throws {
        let path = directory + "/" + StateStore.fileName
        self.path = path
        let fm = FileManager.default
        if readOnly {
            guard fm.fileExists(atPath: path) else { throw OpenError.missing(path: path) }
        } else {
            do {
                try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                if let problem = Self.writeProblem(directory: (directory as NSString).deletingLastPathComponent, database: directory) { throw problem }
                throw OpenError.cannotCreate(path: directory, detail: "\(error.localizedDescription)")
            }
            if let problem = Self.writeProblem(directory: directory, database: path) { throw problem }
            if !fm.fileExists(atPath: path) {
                guard fm.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
                    throw OpenError.cannotCreate(path: path, detail: String(cString: strerror(errno)))
                }
            }
        }
        // Daemons starting together on one state directory (leader election) open, check and
        // migrate the store one at a time: a lock file, held until the store is ready.
        var lock: Int32 = -1
        if !readOnly {
            lock = open(directory + "/capstan.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            if lock >= 0 { flock(lock, LOCK_EX) }
        }
        defer { if lock >= 0 { flock(lock, LOCK_UN); close(lock) } }
        // Check before anything writes, on a plain connection that only reads: a damaged file
        // or a newer schema is reported, never "repaired" or migrated by us.
        if fm.fileExists(atPath: path), (try? fm.attributesOfItem(atPath: path)[.size] as? Int) ?? 0 > 0 {
            try StateStore.check(path: path)
        }
        var configuration = Configuration()
        configuration.readonly = readOnly
        configuration.busyMode = .timeout(5)
        configuration.label = "capstan-state"
        // WAL with synchronous=NORMAL: a kill -9 loses nothing committed; only an OS crash can
        // lose the last commits, which a level-based daemon recomputes. FULL fsyncs every
        // status write and halves convergence speed.
        configuration.prepareDatabase { db in
            if !db.configuration.readonly { try db.execute(sql: "PRAGMA synchronous = NORMAL") }
        }
        do {
            pool = try DatabasePool(path: path, configuration: configuration)
            if !readOnly { try StateStore.migrator.migrate(pool) }
        } catch {
            throw StateStore.openError(error, directory: directory, path: path)
        }
    }

    private static func check(path: String) throws {
        do {
            var configuration = Configuration()
            configuration.busyMode = .timeout(5)
            let queue = try DatabaseQueue(path: path, configuration: configuration)
            let (check, applied) = try queue.read { db in
                (try String.fetchAll(db, sql: "PRAGMA quick_check"), try migrator.appliedIdentifiers(db))
            }
            guard check == ["ok"] else {
                throw OpenError.corrupted(path: path, detail: check.prefix(3).joined(separator: "; "))
            }
            let unknown = applied.subtracting(migrationNames).sorted()
            if !unknown.isEmpty { throw OpenError.newerSchema(path: path, unknown: unknown) }
        } catch let error as OpenError {
            throw error
        } catch {
            throw OpenError.corrupted(path: path, detail: describe(error))
        }
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? DatabaseError { return error.message ?? "\(error.resultCode)" }
        return "\(error)"
    }

    // MARK: - Schema

    /// Migrations in order. Never edit a shipped one: add a new one.
    static let migrationNames = ["v1-objects-events", "v2-object-problems", "v3-requests", "v4-inventory-revisions", "v5-leases", "v6-holds-request-expiry", "v7-vault", "v8-git-source"]

    static let migrator: DatabaseMigrator = {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-objects-events") { db in
            try db.execute(sql: """
                CREATE TABLE objects (
                    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
                    object TEXT NOT NULL,          -- last good object (JSON, without status)
                    spec_hash TEXT NOT NULL,
                    generation INTEGER NOT NULL,
                    source TEXT NOT NULL,          -- file:line:column it came from
                    status TEXT NOT NULL DEFAULT '{}',
                    created_at REAL NOT NULL, updated_at REAL NOT NULL,
                    PRIMARY KEY (kind, namespace, name)
                );
                CREATE TABLE events (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
                    type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL,
                    count INTEGER NOT NULL, first_at REAL NOT NULL, last_at REAL NOT NULL,
                    seq INTEGER NOT NULL           -- grows on every insert or aggregation: watchers follow it
                );
                CREATE INDEX events_by_object ON events (kind, namespace, name, last_at);
                CREATE INDEX events_by_time ON events (last_at);
                CREATE UNIQUE INDEX events_by_seq ON events (seq);
                """)
        }
        migrator.registerMigration("v2-object-problems") { db in
            // Problems of the object's current document when it cannot be read (principle 2:
            // the last good object stays; reconcilers report it Stalled with these).
            try db.execute(sql: "ALTER TABLE objects ADD COLUMN problems TEXT NOT NULL DEFAULT ''")
        }
        migrator.registerMigration("v3-requests") { db in
            // Requests from the CLI (reconcile now; later rollback, promote, rotate, ...), the
            // directory mode's request annotations: specs in git are read-only.
            try db.execute(sql: """
                CREATE TABLE requests (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
                    type TEXT NOT NULL, value TEXT NOT NULL DEFAULT '',
                    created_at REAL NOT NULL, handled_at REAL
                );
                CREATE INDEX requests_pending ON requests (handled_at);
                """)
        }
        migrator.registerMigration("v4-inventory-revisions") { db in
            // Inventory: everything Capstan created on this host, per owner (orphan cleanup is
            // inventory-driven: a label or a path alone never makes something garbage).
            // Revisions: a Deployment's history of effective templates (rollback targets).
            try db.execute(sql: """
                CREATE TABLE inventory (
                    type TEXT NOT NULL,            -- process, listener, release, artifact, ...
                    id TEXT NOT NULL,              -- unique within its type (a path, a port, pid:start)
                    owner_kind TEXT NOT NULL, owner_namespace TEXT NOT NULL, owner_name TEXT NOT NULL,
                    data TEXT NOT NULL DEFAULT '{}',
                    created_at REAL NOT NULL, updated_at REAL NOT NULL,
                    PRIMARY KEY (type, id)
                );
                CREATE INDEX inventory_by_owner ON inventory (owner_kind, owner_namespace, owner_name);
                CREATE TABLE revisions (
                    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
                    revision INTEGER NOT NULL,
                    hash TEXT NOT NULL,            -- of the effective template
                    template TEXT NOT NULL,        -- JSON
                    created_at REAL NOT NULL,
                    PRIMARY KEY (kind, namespace, name, revision)
                );
                """)
        }
        migrator.registerMigration("v6-holds-request-expiry") { db in
            // Why an object is held at its last good version (InvalidSpec: its document does not
            // read; SourceEmpty: the directory yielded nothing and deletions are withheld).
            try db.execute(sql: "ALTER TABLE objects ADD COLUMN hold_reason TEXT NOT NULL DEFAULT ''")
            // A request has an end: taken by a daemon, withdrawn or cancelled (deleted), or
            // expired unhandled (outcome 'expired'); an older row without one expires an hour
            // after it was made.
            try db.execute(sql: "ALTER TABLE requests ADD COLUMN expires_at REAL")
            try db.execute(sql: "ALTER TABLE requests ADD COLUMN outcome TEXT NOT NULL DEFAULT ''")
        }
        migrator.registerMigration("v5-leases") { db in
            // Leader election among daemons on one state directory: Kubernetes Lease fields
            // plus a version for compare-and-swap.
            try db.execute(sql: """
                CREATE TABLE leases (
                    name TEXT PRIMARY KEY,
                    holder TEXT NOT NULL,
                    duration_seconds INTEGER NOT NULL,
                    acquire_time REAL NOT NULL,
                    renew_time REAL NOT NULL,
                    transitions INTEGER NOT NULL,
                    version INTEGER NOT NULL
                );
                """)
        }
        migrator.registerMigration("v7-vault") { db in
            // The vault: each secret's current version and owner; each version's key names,
            // fingerprint and values (JSON of key -> AES-256-GCM sealed box, base64); the
            // master key's check value (a constant sealed under it: a wrong key is told apart
            // from damaged data).
            try db.execute(sql: """
                CREATE TABLE secrets (
                    namespace TEXT NOT NULL,
                    name TEXT NOT NULL,
                    current_version INTEGER NOT NULL,
                    owner TEXT NOT NULL,
                    PRIMARY KEY (namespace, name)
                );
                CREATE TABLE secret_versions (
                    namespace TEXT NOT NULL,
                    name TEXT NOT NULL,
                    version INTEGER NOT NULL,
                    created_at REAL NOT NULL,
                    keys TEXT NOT NULL,
                    fingerprint TEXT NOT NULL,
                    sealed TEXT NOT NULL,
                    PRIMARY KEY (namespace, name, version)
                );
                CREATE TABLE vault_meta (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    key_check TEXT NOT NULL
                );
                """)
        }
        migrator.registerMigration("v8-git-source") { db in
            // The commit each object's spec was last applied from (a git source); the source's
            // own status (a JSON document per source); the webhook deliveries received.
            try db.execute(sql: """
                ALTER TABLE objects ADD COLUMN revision TEXT NOT NULL DEFAULT '';
                CREATE TABLE source_status (
                    name TEXT PRIMARY KEY,
                    document TEXT NOT NULL
                );
                CREATE TABLE deliveries (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    at REAL NOT NULL,
                    provider TEXT NOT NULL,
                    event TEXT NOT NULL,
                    ref TEXT NOT NULL,
                    commit_id TEXT NOT NULL,
                    status INTEGER NOT NULL,
                    outcome TEXT NOT NULL,
                    detail TEXT NOT NULL
                );
                """)
        }
        return migrator
    }()

    // MARK: - Requests

    /// A request made with the CLI, waiting for the daemon.
    public struct Request: Sendable, Hashable {
        public var id: Int64
        public var key: ObjectKey
        public var type: String
        public var value: String
        public var createdAt: Date
        /// After this a daemon ignores it (outcome `expired`).
        public var expiresAt: Date
    }

    /// How long a request without a stated end waits for a daemon.
    public static let requestLifetime: TimeInterval = 3600

    /// Records a request (the CLI writes; a daemon takes it before `expiresAt`). Returns its id.
    @discardableResult
    public func request(_ type: String, for key: ObjectKey, value: String = "", at now: Date, expiresAt: Date? = nil) throws -> Int64 {
        try pool.write { db in
            try db.execute(sql: "INSERT INTO requests (kind, namespace, name, type, value, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           arguments: [key.kind.rawValue, key.namespace, key.name, type, value, now.timeIntervalSince1970,
                                       (expiresAt ?? now.addingTimeInterval(Self.requestLifetime)).timeIntervalSince1970])
            return db.lastInsertedRowID
        }
    }

    private static func request(_ row: Row) -> Request? {
        guard let kind = ResourceKind(rawValue: row["kind"]) else { return nil }
        let created: Double = row["created_at"]
        let expires: Double? = row["expires_at"]
        return Request(id: row["id"], key: ObjectKey(kind: kind, namespace: row["namespace"], name: row["name"]),
                       type: row["type"], value: row["value"], createdAt: Date(timeIntervalSince1970: created),
                       expiresAt: Date(timeIntervalSince1970: expires ?? created + requestLifetime))
    }

    /// Requests not taken, withdrawn or expired yet, oldest first (`now`: also not past their end).
    public func pendingRequests(now: Date? = nil) throws -> [Request] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM requests WHERE handled_at IS NULL ORDER BY id").compactMap(Self.request)
                .filter { request in now.map { request.expiresAt > $0 } ?? true }
        }
    }

    /// Marks the pending requests past their end as expired and returns them (a daemon reports
    /// them and never acts on them).
    public func expireRequests(now: Date) throws -> [Request] {
        try pool.write { db in
            let expired = try Row.fetchAll(db, sql: "SELECT * FROM requests WHERE handled_at IS NULL ORDER BY id").compactMap(Self.request)
                .filter { $0.expiresAt <= now }
            for request in expired {
                try db.execute(sql: "UPDATE requests SET handled_at = ?, outcome = 'expired' WHERE id = ?", arguments: [now.timeIntervalSince1970, request.id])
            }
            return expired
        }
    }

    /// Takes a request for a daemon to act on: true when it was still pending and is now the
    /// caller's (a request withdrawn by the CLI at the same moment is not taken).
    public func claimRequest(_ id: Int64, at now: Date) throws -> Bool {
        try pool.write { db in
            try db.execute(sql: "UPDATE requests SET handled_at = ?, outcome = 'taken' WHERE id = ? AND handled_at IS NULL",
                           arguments: [now.timeIntervalSince1970, id])
            return db.changesCount > 0
        }
    }

    /// Marks a request handled.
    public func markHandled(_ id: Int64, at now: Date) throws {
        _ = try claimRequest(id, at: now)
    }

    /// Withdraws a pending request (the CLI gave up, or `capstan requests cancel`): true when
    /// it was pending and now never runs; false when a daemon already took it (or it is gone).
    public func withdrawRequest(_ id: Int64) throws -> Bool {
        try pool.write { db in
            try db.execute(sql: "DELETE FROM requests WHERE id = ? AND handled_at IS NULL", arguments: [id])
            return db.changesCount > 0
        }
    }

    /// Whether request `id` has been taken (or ended otherwise).
    public func isHandled(_ id: Int64) throws -> Bool {
        try pool.read { db in
            try Double.fetchOne(db, sql: "SELECT handled_at FROM requests WHERE id = ?", arguments: [id]) != nil
        }
    }

    // MARK: - Objects

    /// An object as the store keeps it.
    public struct ObjectRecord: Sendable, Hashable {
        public var key: ObjectKey
        /// The last good object, with `metadata.generation` set.
        public var resource: AnyResource
        public var specHash: String
        public var generation: Int
        public var source: String
        public var createdAt: Date
        public var updatedAt: Date
        /// Why the object is held at its last good version, one problem per line (empty when
        /// it reads cleanly): the problems of the document that now holds it, or what its
        /// source did (yielded nothing).
        public var problems: [String]
        /// The reason of the hold (`InvalidSpec`, `SourceEmpty`); meaningful with problems.
        public var holdReason: String = "InvalidSpec"
        /// The commit the spec was last applied from (a git source; empty otherwise).
        public var revision: String = ""

        /// The file the object came from (`source` without `:line:column`).
        public var sourceFile: String { Self.sourceFile(of: source) }

        static func sourceFile(of source: String) -> String {
            var parts = source.split(separator: ":", omittingEmptySubsequences: false)
            if parts.count >= 3, Int(parts[parts.count - 1]) != nil, Int(parts[parts.count - 2]) != nil { parts.removeLast(2) }
            return parts.joined(separator: ":")
        }
    }

    /// Records (or clears, with an empty list) why an object is held at its last good version:
    /// the problems of its current document (`InvalidSpec`) or of its source; returns whether
    /// they changed.
    @discardableResult
    public func setProblems(_ key: ObjectKey, _ problems: [String], reason: String = "InvalidSpec") throws -> Bool {
        let text = problems.joined(separator: "\n")
        let reason = problems.isEmpty ? "" : reason
        return try pool.write { db in
            try db.execute(sql: """
                UPDATE objects SET problems = ?, hold_reason = ? WHERE kind = ? AND namespace = ? AND name = ?
                  AND (problems IS NOT ? OR hold_reason IS NOT ?)
                """, arguments: [text, reason, key.kind.rawValue, key.namespace, key.name, text, reason])
            return db.changesCount > 0
        }
    }

    /// What `apply` did.
    public enum ApplyOutcome: Sendable, Equatable {
        case created, specChanged, unchanged
    }

    /// Stores the desired state of an object read from a spec. The generation starts at 1 and
    /// grows by one when the canonical spec hash changes (not for formatting or metadata).
    @discardableResult
    public func apply(_ object: DecodedObject, now: Date) throws -> (ObjectRecord, ApplyOutcome) {
        try pool.write { db in
            let (_, outcome, _, _) = try StateStore.applyRow(db, object, now: now)
            return (try StateStore.record(db, key: object.key)!, outcome)
        }
    }

    /// What `applyAll` did to one object.
    public struct Applied: Sendable {
        public var object: DecodedObject
        public var generation: Int
        public var outcome: ApplyOutcome
        /// The object had problems recorded, and they are cleared now (its document reads again).
        public var problemsCleared: Bool
        /// When the object was first stored.
        public var createdAt: Date

        /// The object as `object(_:)` returns it (generation and creation time in its
        /// metadata), without status.
        public var resource: AnyResource {
            var resource = object.resource
            resource.modifyMetadata {
                $0.generation = generation
                $0.creationTimestamp = Timestamp(createdAt).canonical
            }
            return resource
        }
    }

    /// Applies many objects in one transaction (a whole read of the spec directory), clearing
    /// the problems of those that read cleanly again.
    /// `revision`: the commit the objects were read from (a git source), recorded on those
    /// whose spec it creates or changes.
    public func applyAll(_ objects: [DecodedObject], now: Date, revision: String? = nil) throws -> [Applied] {
        try pool.write { db in
            try objects.map { object in
                let (generation, outcome, cleared, createdAt) = try StateStore.applyRow(db, object, now: now)
                if let revision, outcome != .unchanged {
                    try db.cachedStatement(sql: "UPDATE objects SET revision = ? WHERE kind = ? AND namespace = ? AND name = ?")
                        .execute(arguments: [revision, object.key.kind.rawValue, object.key.namespace, object.key.name])
                }
                return Applied(object: object, generation: generation, outcome: outcome, problemsCleared: cleared, createdAt: createdAt)
            }
        }
    }

    private static func applyRow(_ db: Database, _ object: DecodedObject, now: Date) throws -> (Int, ApplyOutcome, Bool, Date) {
        let key = object.key
        let hash = object.specHash
        let row = try Row.fetchOne(
            db.cachedStatement(sql: "SELECT spec_hash, generation, created_at, problems FROM objects WHERE kind = ? AND namespace = ? AND name = ?"),
            arguments: [key.kind.rawValue, key.namespace, key.name])
        let previousHash: String? = row?["spec_hash"]
        let previousGeneration: Int = row?["generation"] ?? 0
        let createdAt: Double = row?["created_at"] ?? now.timeIntervalSince1970
        let hadProblems = !((row?["problems"] as String?) ?? "").isEmpty
        let outcome: ApplyOutcome = row == nil ? .created : (previousHash == hash ? .unchanged : .specChanged)
        let generation = outcome == .unchanged ? previousGeneration : previousGeneration + 1
        var stored = object.resource.encode()
        stored = withMetadata(stored, generation: generation, createdAt: Date(timeIntervalSince1970: createdAt))
        let json = JSONEmitter.emit(withoutStatus(stored), pretty: false)
        try db.cachedStatement(sql: """
            INSERT INTO objects (kind, namespace, name, object, spec_hash, generation, source, created_at, updated_at, problems)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '')
            ON CONFLICT (kind, namespace, name) DO UPDATE SET
              object = excluded.object, spec_hash = excluded.spec_hash, generation = excluded.generation,
              source = excluded.source, updated_at = excluded.updated_at, problems = '', hold_reason = ''
            """).execute(arguments: [key.kind.rawValue, key.namespace, key.name, json, hash, generation, object.location,
                             createdAt, now.timeIntervalSince1970])
        return (generation, outcome, hadProblems, Date(timeIntervalSince1970: createdAt))
    }

    /// Removes an object (its file was deleted); its events stay until they expire.
    @discardableResult
    public func delete(_ key: ObjectKey) throws -> Bool {
        try pool.write { db in
            try db.execute(sql: "DELETE FROM objects WHERE kind = ? AND namespace = ? AND name = ?",
                           arguments: [key.kind.rawValue, key.namespace, key.name])
            return db.changesCount > 0
        }
    }

    /// One object with its status.
    public func object(_ key: ObjectKey) throws -> ObjectRecord? {
        try pool.read { db in try StateStore.record(db, key: key) }
    }

    /// Every object of `kind` (all kinds when nil), sorted by namespace and name.
    public func objects(kind: ResourceKind? = nil) throws -> [ObjectRecord] {
        try pool.read { db in
            let rows: [Row]
            if let kind {
                rows = try Row.fetchAll(db, sql: "SELECT * FROM objects WHERE kind = ? ORDER BY namespace, name", arguments: [kind.rawValue])
            } else {
                rows = try Row.fetchAll(db, sql: "SELECT * FROM objects ORDER BY kind, namespace, name")
            }
            return try rows.map(StateStore.record(from:))
        }
    }

    /// The file each object came from, without decoding any object (the source's view).
    public func sourceFiles() throws -> [ObjectKey: String] {
        try pool.read { db in
            var result: [ObjectKey: String] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT kind, namespace, name, source FROM objects") {
                guard let kind = ResourceKind(rawValue: row["kind"]) else { continue }
                let file = ObjectRecord.sourceFile(of: row["source"])
                result[ObjectKey(kind: kind, namespace: row["namespace"], name: row["name"])] = file
            }
            return result
        }
    }

    /// Writes an object's status; returns false (and writes nothing) when it is unchanged.
    @discardableResult
    public func writeStatus(_ key: ObjectKey, status: SpecNode) throws -> Bool {
        let json = JSONEmitter.emit(status, pretty: false, sortKeys: true)
        return try pool.write { db in
            try db.cachedStatement(sql: "UPDATE objects SET status = ? WHERE kind = ? AND namespace = ? AND name = ? AND status IS NOT ?")
                .execute(arguments: [json, key.kind.rawValue, key.namespace, key.name, json])
            return db.changesCount > 0
        }
    }

    private static func record(_ db: Database, key: ObjectKey) throws -> ObjectRecord? {
        let statement = try db.cachedStatement(sql: "SELECT * FROM objects WHERE kind = ? AND namespace = ? AND name = ?")
        return try Row.fetchOne(statement, arguments: [key.kind.rawValue, key.namespace, key.name]).map(record(from:))
    }

    private static func record(from row: Row) throws -> ObjectRecord {
        let kindName: String = row["kind"]
        guard let kind = ResourceKind(rawValue: kindName) else {
            throw DatabaseError(message: "unknown kind \(kindName) in the objects table")
        }
        let objectJSON: String = row["object"]
        let statusJSON: String = row["status"]
        var node = try parseJSON(objectJSON)
        let status = try parseJSON(statusJSON)
        if case .mapping(var entries) = node.value, !status.isEmptyCollection {
            entries.append(.init("status", status))
            node = SpecNode(.mapping(entries))
        }
        var context = DecodeContext()
        guard let resource = AnyResource.decode(kind: kind, node, &context) else {
            throw DatabaseError(message: "stored \(kindName) does not decode: \(context.problems.map(\.description).joined(separator: "; "))")
        }
        return ObjectRecord(
            key: resource.key, resource: resource, specHash: row["spec_hash"], generation: row["generation"],
            source: row["source"], createdAt: Date(timeIntervalSince1970: row["created_at"]),
            updatedAt: Date(timeIntervalSince1970: row["updated_at"]),
            problems: (row["problems"] as String).split(separator: "\n").map(String.init),
            holdReason: (row["hold_reason"] as String?).flatMap { $0.isEmpty ? nil : $0 } ?? "InvalidSpec",
            revision: row["revision"] ?? "")
    }

    private static func parseJSON(_ text: String) throws -> SpecNode {
        do {
            return try SpecNode.fromJSON(Data(text.utf8))
        } catch {
            throw DatabaseError(message: "stored JSON does not parse: \(error)")
        }
    }

    static func withoutStatus(_ node: SpecNode) -> SpecNode {
        guard case .mapping(let entries) = node.value else { return node }
        return SpecNode(.mapping(entries.filter { $0.key != "status" }))
    }

    static func withMetadata(_ node: SpecNode, generation: Int, createdAt: Date) -> SpecNode {
        guard case .mapping(var entries) = node.value, let index = entries.firstIndex(where: { $0.key == "metadata" }),
              case .mapping(var metadata) = entries[index].value.value else { return node }
        metadata.removeAll { $0.key == "generation" || $0.key == "creationTimestamp" }
        metadata.append(.init("generation", .int(generation)))
        metadata.append(.init("creationTimestamp", Timestamp(createdAt).encode()))
        entries[index].value = SpecNode(.mapping(metadata))
        return SpecNode(.mapping(entries))
    }

    // MARK: - Events

    /// Records an event, aggregating it with an identical one seen within the window and
    /// enforcing retention (EventLog's rules: 10 minutes, 24 hours, 1,000 per object).
    @discardableResult
    public func recordEvent(
        _ type: EventType, reason: String, message: String, about key: ObjectKey, at now: Date,
        rules: EventLog = EventLog()
    ) throws -> Event {
        try recordEvent(type, reason: reason, message: message,
                        about: ObjectReference(kind: key.kind.rawValue, namespace: key.namespace, name: key.name), at: now, rules: rules)
    }

    /// Records an event about something other than a resource (the daemon's Lease).
    @discardableResult
    public func recordEvent(
        _ type: EventType, reason: String, message: String, about key: ObjectReference, at now: Date,
        rules: EventLog = EventLog()
    ) throws -> Event {
        try pool.write { db in
            let t = now.timeIntervalSince1970
            let args: StatementArguments = [key.kind, key.namespace, key.name, type.rawValue, reason, message]
            if let id = try Int64.fetchOne(db.cachedStatement(sql: """
                SELECT id FROM events WHERE kind = ? AND namespace = ? AND name = ? AND type = ? AND reason = ? AND message = ?
                AND last_at >= ? ORDER BY last_at DESC LIMIT 1
                """), arguments: args + [t - rules.aggregationWindow]) {
                try db.cachedStatement(sql: "UPDATE events SET count = count + 1, last_at = ?, seq = (SELECT COALESCE(MAX(seq), 0) + 1 FROM events) WHERE id = ?")
                    .execute(arguments: [t, id])
            } else {
                try db.cachedStatement(sql: """
                    INSERT INTO events (kind, namespace, name, type, reason, message, count, first_at, last_at, seq)
                    VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM events))
                    """).execute(arguments: args + [t, t])
                try db.cachedStatement(sql: """
                    DELETE FROM events WHERE kind = ? AND namespace = ? AND name = ? AND id NOT IN (
                      SELECT id FROM events WHERE kind = ? AND namespace = ? AND name = ? ORDER BY last_at DESC, id DESC LIMIT ?)
                    """).execute(arguments: [key.kind, key.namespace, key.name, key.kind, key.namespace, key.name, rules.perObjectLimit])
            }
            try db.cachedStatement(sql: "DELETE FROM events WHERE last_at < ?").execute(arguments: [t - rules.retention])
            let row = try Row.fetchOne(db.cachedStatement(sql: """
                SELECT * FROM events WHERE kind = ? AND namespace = ? AND name = ? AND type = ? AND reason = ? AND message = ?
                ORDER BY last_at DESC, id DESC LIMIT 1
                """), arguments: args)!
            return StateStore.event(from: row)
        }
    }

    /// A stored event with its position, for `capstan events -w` to continue after: an event
    /// that aggregates again moves to a new position, so a watcher sees the new count.
    public struct StoredEvent: Sendable, Hashable {
        public var seq: Int64
        public var event: Event
    }

    /// Events of one object (all objects when nil), in the order they last happened;
    /// `after` continues a stream from a previous `seq`.
    public func events(for key: ObjectKey?, after seq: Int64 = 0, limit: Int = 1_000) throws -> [StoredEvent] {
        try events(about: key.map { ObjectReference(kind: $0.kind.rawValue, namespace: $0.namespace, name: $0.name) }, after: seq, limit: limit)
    }

    /// Events about one object, resource or not (all when nil).
    public func events(about key: ObjectReference? = nil, after seq: Int64 = 0, limit: Int = 1_000) throws -> [StoredEvent] {
        try pool.read { db in
            var sql = "SELECT * FROM events WHERE seq > ?"
            var arguments: StatementArguments = [seq]
            if let key {
                sql += " AND kind = ? AND namespace = ? AND name = ?"
                arguments += [key.kind, key.namespace, key.name]
            }
            sql += " ORDER BY seq LIMIT ?"
            arguments += [limit]
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map { StoredEvent(seq: $0["seq"], event: StateStore.event(from: $0)) }
        }
    }

    private static func event(from row: Row) -> Event {
        var event = Event()
        event.type = EventType(rawValue: row["type"]) ?? .normal
        event.reason = row["reason"]
        event.message = row["message"]
        event.involvedObject = ObjectReference(kind: row["kind"], namespace: row["namespace"], name: row["name"])
        event.count = row["count"]
        event.firstTimestamp = Timestamp(Date(timeIntervalSince1970: row["first_at"]))
        event.lastTimestamp = Timestamp(Date(timeIntervalSince1970: row["last_at"]))
        return event
    }
}
