import CapstanModel
import Foundation
import GRDB

// MARK: - Inventory

extension StateStore {
    /// One thing Capstan created for an owner: a process, a listener, a release directory, an
    /// artifact. `data` holds what is needed to find and remove it again (pid and start time,
    /// revision, path), as a JSON object.
    public struct InventoryEntry: Sendable, Hashable {
        public var type: String
        public var id: String
        public var owner: ObjectKey
        public var data: [String: String]
        public var createdAt: Date
        public var updatedAt: Date

        public init(type: String, id: String, owner: ObjectKey, data: [String: String] = [:], createdAt: Date, updatedAt: Date? = nil) {
            self.type = type
            self.id = id
            self.owner = owner
            self.data = data
            self.createdAt = createdAt
            self.updatedAt = updatedAt ?? createdAt
        }
    }

    /// Records (or updates) an entry; it is in the inventory before the action that creates the
    /// thing, so a crash between the two leaves a record to clean up, never an unknown orphan.
    public func recordInventory(_ entry: InventoryEntry) throws {
        let data = JSONEmitter.emit(Self.node(entry.data), pretty: false, sortKeys: true)
        try pool.write { db in
            try db.execute(sql: """
                INSERT INTO inventory (type, id, owner_kind, owner_namespace, owner_name, data, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (type, id) DO UPDATE SET
                  owner_kind = excluded.owner_kind, owner_namespace = excluded.owner_namespace,
                  owner_name = excluded.owner_name, data = excluded.data, updated_at = excluded.updated_at
                """, arguments: [entry.type, entry.id, entry.owner.kind.rawValue, entry.owner.namespace, entry.owner.name,
                                 data, entry.createdAt.timeIntervalSince1970, entry.updatedAt.timeIntervalSince1970])
        }
    }

    /// Removes an entry (the thing is gone); returns whether it was there.
    @discardableResult
    public func removeInventory(type: String, id: String) throws -> Bool {
        try pool.write { db in
            try db.execute(sql: "DELETE FROM inventory WHERE type = ? AND id = ?", arguments: [type, id])
            return db.changesCount > 0
        }
    }

    /// The entries of one owner, or of every owner; sorted by type and id.
    public func inventory(of owner: ObjectKey? = nil, type: String? = nil) throws -> [InventoryEntry] {
        try pool.read { db in
            var sql = "SELECT * FROM inventory"
            var clauses: [String] = []
            var arguments: StatementArguments = []
            if let owner {
                clauses.append("owner_kind = ? AND owner_namespace = ? AND owner_name = ?")
                arguments += [owner.kind.rawValue, owner.namespace, owner.name]
            }
            if let type {
                clauses.append("type = ?")
                arguments += [type]
            }
            if !clauses.isEmpty { sql += " WHERE " + clauses.joined(separator: " AND ") }
            sql += " ORDER BY type, id"
            return try Row.fetchAll(db, sql: sql, arguments: arguments).compactMap(Self.inventoryEntry)
        }
    }

    /// The mark of an object annotated `capstan.dev/prune: disabled`: it outlives the object,
    /// so the cleanup after a deletion knows to keep what the object had. Not garbage itself.
    public static let pruneDisabledType = "prune-disabled"

    /// Records or clears the mark (the source, as it reads each object).
    public func setPruneDisabled(_ key: ObjectKey, _ disabled: Bool, at now: Date) throws {
        let id = "\(key.kind.rawValue)/\(key.namespace)/\(key.name)"
        if disabled {
            guard try inventory(of: key, type: Self.pruneDisabledType).isEmpty else { return }
            try recordInventory(InventoryEntry(type: Self.pruneDisabledType, id: id, owner: key, createdAt: now))
        } else {
            try removeInventory(type: Self.pruneDisabledType, id: id)
        }
    }

    public func isPruneDisabled(_ key: ObjectKey) throws -> Bool {
        try !inventory(of: key, type: Self.pruneDisabledType).isEmpty
    }

    /// Entries whose owner is no longer among the objects: garbage for the orphan sweep.
    public func orphanedInventory() throws -> [InventoryEntry] {
        try pool.read { db in
            try Row.fetchAll(db, sql: """
                SELECT i.* FROM inventory i LEFT JOIN objects o
                  ON o.kind = i.owner_kind AND o.namespace = i.owner_namespace AND o.name = i.owner_name
                WHERE o.kind IS NULL AND i.type != '\(Self.pruneDisabledType)' ORDER BY i.type, i.id
                """).compactMap(Self.inventoryEntry)
        }
    }

    private static func inventoryEntry(_ row: Row) -> InventoryEntry? {
        guard let kind = ResourceKind(rawValue: row["owner_kind"]) else { return nil }
        var data: [String: String] = [:]
        if let node = try? SpecNode.fromJSON(Data((row["data"] as String).utf8)), case .mapping(let entries) = node.value {
            for entry in entries { data[entry.key] = entry.value.scalarText ?? "" }
        }
        return InventoryEntry(
            type: row["type"], id: row["id"], owner: ObjectKey(kind: kind, namespace: row["owner_namespace"], name: row["owner_name"]),
            data: data, createdAt: Date(timeIntervalSince1970: row["created_at"]), updatedAt: Date(timeIntervalSince1970: row["updated_at"]))
    }

    private static func node(_ map: [String: String]) -> SpecNode {
        .mapping(map.sorted { $0.key < $1.key }.map { ($0.key, SpecNode.string($0.value)) })
    }
}

// MARK: - Revision history

extension StateStore {
    /// One revision of an object's effective template (a Deployment's release).
    public struct Revision: Sendable, Equatable {
        public var owner: ObjectKey
        public var number: Int
        public var hash: String
        public var template: SpecNode
        public var createdAt: Date
    }

    /// Records `template` as the owner's newest revision and returns it. The newest revision
    /// with the same hash is returned unchanged; an older one with the same hash is renumbered
    /// as the newest (a rollback is itself a new revision, as with Kubernetes ReplicaSets).
    public func recordRevision(of owner: ObjectKey, hash: String, template: SpecNode, at now: Date) throws -> Revision {
        let json = JSONEmitter.emit(template, pretty: false, sortKeys: true)
        return try pool.write { db in
            let arguments: StatementArguments = [owner.kind.rawValue, owner.namespace, owner.name]
            let newest = try Row.fetchOne(db, sql: """
                SELECT revision, hash FROM revisions WHERE kind = ? AND namespace = ? AND name = ?
                ORDER BY revision DESC LIMIT 1
                """, arguments: arguments)
            if let newest, (newest["hash"] as String) == hash {
                return try Self.revision(db, owner, number: newest["revision"])!
            }
            let number = ((newest?["revision"] as Int?) ?? 0) + 1
            try db.execute(sql: "DELETE FROM revisions WHERE kind = ? AND namespace = ? AND name = ? AND hash = ?",
                           arguments: arguments + [hash])
            try db.execute(sql: """
                INSERT INTO revisions (kind, namespace, name, revision, hash, template, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                """, arguments: arguments + [number, hash, json, now.timeIntervalSince1970])
            return try Self.revision(db, owner, number: number)!
        }
    }

    /// The owner's revisions, oldest first.
    public func revisions(of owner: ObjectKey) throws -> [Revision] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM revisions WHERE kind = ? AND namespace = ? AND name = ? ORDER BY revision",
                             arguments: [owner.kind.rawValue, owner.namespace, owner.name]).compactMap { try Self.revision($0, owner) }
        }
    }

    /// One revision by number.
    public func revision(of owner: ObjectKey, number: Int) throws -> Revision? {
        try pool.read { db in try Self.revision(db, owner, number: number) }
    }

    /// Keeps the newest `keep` revisions plus those in `inUse`; returns the numbers removed.
    @discardableResult
    public func pruneRevisions(of owner: ObjectKey, keep: Int, inUse: Set<Int> = []) throws -> [Int] {
        try pool.write { db in
            let arguments: StatementArguments = [owner.kind.rawValue, owner.namespace, owner.name]
            let numbers = try Int.fetchAll(db, sql: "SELECT revision FROM revisions WHERE kind = ? AND namespace = ? AND name = ? ORDER BY revision DESC",
                                           arguments: arguments)
            let removed = numbers.dropFirst(max(0, keep)).filter { !inUse.contains($0) }
            for number in removed {
                try db.execute(sql: "DELETE FROM revisions WHERE kind = ? AND namespace = ? AND name = ? AND revision = ?",
                               arguments: arguments + [number])
            }
            return removed.sorted()
        }
    }

    /// Removes every revision of an owner (it was deleted).
    public func removeRevisions(of owner: ObjectKey) throws {
        try pool.write { db in
            try db.execute(sql: "DELETE FROM revisions WHERE kind = ? AND namespace = ? AND name = ?",
                           arguments: [owner.kind.rawValue, owner.namespace, owner.name])
        }
    }

    private static func revision(_ db: Database, _ owner: ObjectKey, number: Int) throws -> Revision? {
        try Row.fetchOne(db, sql: "SELECT * FROM revisions WHERE kind = ? AND namespace = ? AND name = ? AND revision = ?",
                         arguments: [owner.kind.rawValue, owner.namespace, owner.name, number]).flatMap { try revision($0, owner) }
    }

    private static func revision(_ row: Row, _ owner: ObjectKey) throws -> Revision? {
        let template = try SpecNode.fromJSON(Data((row["template"] as String).utf8))
        return Revision(owner: owner, number: row["revision"], hash: row["hash"], template: template,
                        createdAt: Date(timeIntervalSince1970: row["created_at"]))
    }
}
