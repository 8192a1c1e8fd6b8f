import CapstanRuntime
import Foundation
import GRDB

/// The local `LeaseStore`: one row per lease, compare-and-swap on a version column inside a
/// write transaction (SQLite serialises writers, so two daemons never both win).
extension StateStore: LeaseStore {
    public func get(_ name: String) async throws -> (record: LeaseRecord, version: String)? {
        try await pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM leases WHERE name = ?", arguments: [name]).map { row in
                (Self.lease(row), String(row["version"] as Int64))
            }
        }
    }

    public func create(_ name: String, _ record: LeaseRecord) async throws -> Bool {
        try await pool.write { db in
            try db.execute(sql: """
                INSERT OR IGNORE INTO leases (name, holder, duration_seconds, acquire_time, renew_time, transitions, version)
                VALUES (?, ?, ?, ?, ?, ?, 1)
                """, arguments: [name, record.holderIdentity, record.leaseDurationSeconds, record.acquireTime.timeIntervalSince1970,
                                 record.renewTime.timeIntervalSince1970, record.leaseTransitions])
            return db.changesCount == 1
        }
    }

    public func update(_ name: String, _ record: LeaseRecord, expecting version: String) async throws -> Bool {
        guard let expected = Int64(version) else { return false }
        return try await pool.write { db in
            try db.execute(sql: """
                UPDATE leases SET holder = ?, duration_seconds = ?, acquire_time = ?, renew_time = ?, transitions = ?, version = version + 1
                WHERE name = ? AND version = ?
                """, arguments: [record.holderIdentity, record.leaseDurationSeconds, record.acquireTime.timeIntervalSince1970,
                                 record.renewTime.timeIntervalSince1970, record.leaseTransitions, name, expected])
            return db.changesCount == 1
        }
    }

    /// Every lease (for `capstan get leases`).
    public func leases() throws -> [(name: String, record: LeaseRecord)] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM leases ORDER BY name").map { ($0["name"], Self.lease($0)) }
        }
    }

    private static func lease(_ row: Row) -> LeaseRecord {
        LeaseRecord(holderIdentity: row["holder"], leaseDurationSeconds: row["duration_seconds"],
                    acquireTime: Date(timeIntervalSince1970: row["acquire_time"]), renewTime: Date(timeIntervalSince1970: row["renew_time"]),
                    leaseTransitions: row["transitions"])
    }
}
