import Foundation
import GRDB

/// What the source of desired state keeps in the store: its status (a JSON document the daemon
/// writes and `capstan source` reads) and the webhook deliveries it received (the last 100).
extension StateStore {
    /// The status document of a source (`git`, `directory`), nil before a daemon wrote one.
    public func sourceStatus(_ name: String) throws -> String? {
        try pool.read { db in try String.fetchOne(db, sql: "SELECT document FROM source_status WHERE name = ?", arguments: [name]) }
    }

    /// Every source's status document, by name.
    public func sourceStatuses() throws -> [(name: String, document: String)] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT name, document FROM source_status ORDER BY name").map { ($0["name"], $0["document"]) }
        }
    }

    public func setSourceStatus(_ name: String, document: String) throws {
        try pool.write { db in
            try db.execute(sql: "INSERT INTO source_status (name, document) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET document = excluded.document",
                           arguments: [name, document])
        }
    }

    /// Forgets the status of the sources not named (a daemon started with another source).
    public func keepSourceStatuses(_ names: [String]) throws {
        try pool.write { db in
            let marks = names.map { _ in "?" }.joined(separator: ", ")
            try db.execute(sql: "DELETE FROM source_status" + (names.isEmpty ? "" : " WHERE name NOT IN (\(marks))"),
                           arguments: StatementArguments(names))
        }
    }

    /// A webhook delivery as received and judged.
    public struct Delivery: Sendable, Hashable {
        public var id: Int64 = 0
        public var time: Date
        /// github, gitea, gitlab, bitbucket; empty when no provider's headers were there.
        public var provider: String
        public var event: String
        public var ref: String
        public var commit: String
        /// The HTTP status answered.
        public var status: Int
        /// `fetch` (a push to the ref: a fetch was asked), `ignored`, `refused`; a fetch's
        /// result replaces `fetch` (`fetched`, `failed`).
        public var outcome: String
        public var detail: String

        public init(time: Date, provider: String, event: String, ref: String, commit: String, status: Int, outcome: String, detail: String) {
            self.time = time
            self.provider = provider
            self.event = event
            self.ref = ref
            self.commit = commit
            self.status = status
            self.outcome = outcome
            self.detail = detail
        }
    }

    /// How many deliveries are kept.
    public static let deliveriesKept = 100

    /// Records a delivery, forgetting those beyond the last 100; returns its id.
    @discardableResult
    public func recordDelivery(_ delivery: Delivery) throws -> Int64 {
        try pool.write { db in
            try db.execute(sql: """
                INSERT INTO deliveries (at, provider, event, ref, commit_id, status, outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [delivery.time.timeIntervalSince1970, delivery.provider, delivery.event, delivery.ref, delivery.commit,
                                 delivery.status, delivery.outcome, delivery.detail])
            let id = db.lastInsertedRowID
            try db.execute(sql: "DELETE FROM deliveries WHERE id <= ?", arguments: [id - Int64(Self.deliveriesKept)])
            return id
        }
    }

    /// The result of the fetch some deliveries asked for.
    public func settleDeliveries(_ ids: [Int64], outcome: String, detail: String) throws {
        guard !ids.isEmpty else { return }
        try pool.write { db in
            for id in ids {
                try db.execute(sql: "UPDATE deliveries SET outcome = ?, detail = ? WHERE id = ?", arguments: [outcome, detail, id])
            }
        }
    }

    /// The deliveries kept, newest first.
    public func deliveries() throws -> [Delivery] {
        try pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM deliveries ORDER BY id DESC").map { row in
                var delivery = Delivery(time: Date(timeIntervalSince1970: row["at"]), provider: row["provider"], event: row["event"], ref: row["ref"],
                                        commit: row["commit_id"], status: row["status"], outcome: row["outcome"], detail: row["detail"])
                delivery.id = row["id"]
                return delivery
            }
        }
    }
}
