import CapstanModel
import CapstanRuntime
import Foundation
import GRDB
import Testing
@testable import CapstanLocal

/// The state store against a real SQLite file in a temporary directory.
@Suite struct StateStoreTests {
    let directory: String = NSTemporaryDirectory() + "capstan-store-" + UUID().uuidString
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    func decoded(_ yaml: String) throws -> DecodedObject {
        let result = ManifestDecoder().decode(Array(yaml.utf8), file: "specs/web.yaml")
        guard let object = result.objects.first, !result.hasErrors else {
            throw StoreTestError(result.errors.map(\.description).joined(separator: "\n"))
        }
        return object
    }

    struct StoreTestError: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    static let web = """
        apiVersion: capstan.dev/v1alpha1
        kind: Application
        metadata: {name: web}
        spec:
          source: {path: ./web}
          command: [python3, server.py]
        """

    @Test func createsAPrivateDatabase() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try StateStore(directory: directory)
        let dirMode = try FileManager.default.attributesOfItem(atPath: directory)[.posixPermissions] as? Int
        let fileMode = try FileManager.default.attributesOfItem(atPath: directory + "/capstan.db")[.posixPermissions] as? Int
        #expect(dirMode == 0o700)
        #expect(fileMode == 0o600)
        let journal = try DatabaseQueue(path: directory + "/capstan.db").read { try String.fetchOne($0, sql: "PRAGMA journal_mode") }
        #expect(journal == "wal")
    }

    @Test func generationGrowsOnlyWhenTheSpecChanges() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        let (first, created) = try store.apply(decoded(Self.web), now: t0)
        #expect(created == .created)
        #expect(first.generation == 1)
        #expect(first.resource.metadata.generation == 1)

        let reformatted = Self.web.replacingOccurrences(of: "[python3, server.py]", with: "\n  - python3\n  - server.py") + "\n# comment\n"
        let (same, unchanged) = try store.apply(decoded(reformatted), now: t0 + 1)
        #expect(unchanged == .unchanged)
        #expect(same.generation == 1)

        let labelled = Self.web.replacingOccurrences(of: "{name: web}", with: "{name: web, labels: {team: a}}")
        let (withLabel, labelOutcome) = try store.apply(decoded(labelled), now: t0 + 2)
        #expect(labelOutcome == .unchanged, "metadata is not the spec")
        #expect(withLabel.resource.metadata.labels["team"] == "a", "but the stored object follows it")

        let edited = Self.web.replacingOccurrences(of: "server.py", with: "app.py")
        let (second, changed) = try store.apply(decoded(edited), now: t0 + 3)
        #expect(changed == .specChanged)
        #expect(second.generation == 2)
        #expect(second.resource.metadata.creationTimestamp?.date == t0, "creation time is kept")
    }

    @Test func statusWritesAreSkippedWhenNothingChanged() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        let (record, _) = try store.apply(decoded(Self.web), now: t0)
        var status = ApplicationStatus()
        status.markReady(reason: "Succeeded", message: "template valid", generation: 1, now: Timestamp(t0))
        #expect(try store.writeStatus(record.key, status: status.encode()))
        #expect(try !store.writeStatus(record.key, status: status.encode()))
        guard case .application(let app)? = try store.object(record.key)?.resource else {
            Issue.record("no application"); return
        }
        #expect(app.status.isReady(generation: 1))
        #expect(app.status.condition("Ready")?.lastTransitionTime.date == t0)
    }

    @Test func applyAllIsOneTransactionAndClearsProblems() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        let web = try decoded(Self.web)
        let (record, _) = try store.apply(web, now: t0)
        try store.setProblems(record.key, ["broken"])
        let applied = try store.applyAll([web], now: t0 + 1)
        #expect(applied.map(\.outcome) == [.unchanged])
        #expect(applied.first?.problemsCleared == true)
        #expect(try store.object(record.key)?.problems == [])
    }

    @Test func dataSurvivesReopening() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let store = try StateStore(directory: directory)
            try store.apply(decoded(Self.web), now: t0)
            try store.recordEvent(.normal, reason: "Reconciled", message: "ok", about: ObjectKey(kind: .application, namespace: "default", name: "web"), at: t0)
        }
        let reopened = try StateStore(directory: directory, readOnly: true)
        #expect(try reopened.objects().map(\.key.name) == ["web"])
        #expect(try reopened.events().map(\.event.reason) == ["Reconciled"])
    }

    @Test func problemsAreKeptBesideTheLastGoodObject() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        let (record, _) = try store.apply(decoded(Self.web), now: t0)
        #expect(record.sourceFile == "specs/web.yaml")
        #expect(try store.sourceFiles() == [record.key: "specs/web.yaml"])
        #expect(try store.setProblems(record.key, ["specs/web.yaml:5:3: Application/web: spec.command: expected a list"]))
        #expect(try !store.setProblems(record.key, ["specs/web.yaml:5:3: Application/web: spec.command: expected a list"]))
        #expect(try store.object(record.key)?.problems.count == 1)
        #expect(try store.setProblems(record.key, []))
        #expect(try store.object(record.key)?.problems == [])
    }

    @Test func aVersionOneStoreIsMigrated() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/capstan.db"
        do {
            // A store as the first release left it: only migration v1.
            let queue = try DatabaseQueue(path: path)
            var v1 = DatabaseMigrator()
            v1.registerMigration("v1-objects-events") { db in
                try db.execute(sql: "CREATE TABLE objects (kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, object TEXT NOT NULL, spec_hash TEXT NOT NULL, generation INTEGER NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (kind, namespace, name))")
                try db.execute(sql: "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL, count INTEGER NOT NULL, first_at REAL NOT NULL, last_at REAL NOT NULL, seq INTEGER NOT NULL)")
            }
            try v1.migrate(queue)
            try queue.close()
        }
        let store = try StateStore(directory: directory)
        let (record, _) = try store.apply(decoded(Self.web), now: t0)
        #expect(try store.setProblems(record.key, ["broken"]))
        let applied = try DatabaseQueue(path: path).read { try String.fetchAll($0, sql: "SELECT identifier FROM grdb_migrations ORDER BY identifier") }
        #expect(applied == StateStore.migrationNames)
    }

    @Test func requestsWaitUntilHandled() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        let key = ObjectKey(kind: .application, namespace: "default", name: "web")
        let id = try store.request("reconcile", for: key, at: t0)
        #expect(try store.pendingRequests().map(\.key) == [key])
        #expect(try !store.isHandled(id))
        try store.markHandled(id, at: t0 + 1)
        #expect(try store.isHandled(id))
        #expect(try store.pendingRequests().isEmpty)
    }

    @Test func aRequestHasAnEnd() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        let key = ObjectKey(kind: .deployment, namespace: "default", name: "web")
        // Withdrawn (the CLI gave up): never pending again, and not takeable.
        let withdrawn = try store.request("rollback", for: key, at: t0, expiresAt: t0 + 10)
        #expect(try store.withdrawRequest(withdrawn))
        #expect(try !store.claimRequest(withdrawn, at: t0 + 1))
        // Taken first: the CLI cannot withdraw it any more.
        let taken = try store.request("rollback", for: key, at: t0, expiresAt: t0 + 10)
        #expect(try store.claimRequest(taken, at: t0 + 1))
        #expect(try !store.withdrawRequest(taken))
        #expect(try store.isHandled(taken))
        // Past its end: expired, never pending.
        let late = try store.request("reconcile", for: key, at: t0, expiresAt: t0 + 10)
        #expect(try store.pendingRequests(now: t0 + 5).map(\.id) == [late])
        #expect(try store.pendingRequests(now: t0 + 11).isEmpty)
        #expect(try store.expireRequests(now: t0 + 11).map(\.id) == [late])
        #expect(try !store.claimRequest(late, at: t0 + 12))
        // Without a stated end: an hour.
        let plain = try store.request("reconcile", for: key, at: t0)
        #expect(try store.pendingRequests().first { $0.id == plain }?.expiresAt == t0 + StateStore.requestLifetime)
    }

    @Test func aSecondOwnerIsRefusedNamingTheFirst() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try StateStore(directory: directory)
        var first: StateOwner? = try StateOwner(directory: directory, mode: .exclusive)
        #expect(throws: StateOwner.Refused.self) { try StateOwner(directory: directory, mode: .exclusive) }
        do {
            _ = try StateOwner(directory: directory, mode: .electing)
            Issue.record("an electing daemon beside a lone one")
        } catch {
            #expect("\(error)".contains("pid \(getpid())") && "\(error)".contains("without --leader-elect"), "\(error)")
        }
        #expect(first != nil)
        first = nil  // released: the kernel drops the lock with the descriptor
        let electing = try [StateOwner(directory: directory, mode: .electing), StateOwner(directory: directory, mode: .electing)]
        #expect(throws: StateOwner.Refused.self) { try StateOwner(directory: directory, mode: .exclusive) }
        withExtendedLifetime(electing) {}
    }

    @Test func theIdentityOfTheDirectoryIsWatched() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try StateStore(directory: directory)
        let identity = try #require(StateDirectoryIdentity.current(of: directory))
        #expect(identity.change(in: directory) == nil)
        try FileManager.default.moveItem(atPath: directory + "/capstan.db", toPath: directory + "/old.db")
        try Data().write(to: URL(fileURLWithPath: directory + "/capstan.db"))
        #expect(identity.change(in: directory)?.contains("replaced") == true)
        try FileManager.default.removeItem(atPath: directory)
        #expect(identity.change(in: directory)?.contains("deleted") == true)
    }

    @Test func deletingRemovesTheObjectButKeepsItsEvents() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        let (record, _) = try store.apply(decoded(Self.web), now: t0)
        try store.recordEvent(.normal, reason: "Deleted", message: "file removed", about: record.key, at: t0)
        #expect(try store.delete(record.key))
        #expect(try !store.delete(record.key))
        #expect(try store.object(record.key) == nil)
        #expect(try store.events(for: record.key).count == 1)
    }

    @Test func eventsAggregateAndWatchersSeeEveryRepeat() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        let key = ObjectKey(kind: .deployment, namespace: "default", name: "web")
        try store.recordEvent(.warning, reason: "InvalidSpec", message: "web.yaml:3:5: bad", about: key, at: t0)
        let cursor = try store.events().last!.seq
        let again = try store.recordEvent(.warning, reason: "InvalidSpec", message: "web.yaml:3:5: bad", about: key, at: t0 + 60)
        #expect(again.count == 2)
        let stream = try store.events(after: cursor)
        #expect(stream.count == 1, "the aggregated event moved past the watcher's cursor")
        #expect(stream.first?.event.count == 2)
        try store.recordEvent(.warning, reason: "InvalidSpec", message: "web.yaml:3:5: bad", about: key, at: t0 + 60 + 601)
        #expect(try store.events(for: key).count == 2, "a new event after a 10-minute gap")
        try store.recordEvent(.normal, reason: "Reconciled", message: "ok", about: key, at: t0 + 90_000)
        #expect(try store.events(for: key).map(\.event.reason) == ["Reconciled"], "24-hour retention")
    }

    @Test func eventsAreCappedPerObject() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        let key = ObjectKey(kind: .deployment, namespace: "default", name: "web")
        for i in 0..<30 {
            try store.recordEvent(.normal, reason: "Step", message: "step \(i)", about: key, at: t0 + Double(i), rules: EventLog(perObjectLimit: 10))
        }
        let events = try store.events(for: key)
        #expect(events.count == 10)
        #expect(events.first?.event.message == "step 20")
    }

    @Test func aStoreFromANewerCapstanIsRefusedAndLeftAlone() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/capstan.db"
        // A store as a future Capstan might leave it, written without our code.
        do {
            let queue = try DatabaseQueue(path: path)
            try queue.write { db in
                try db.execute(sql: "CREATE TABLE grdb_migrations (identifier TEXT NOT NULL PRIMARY KEY)")
                try db.execute(sql: "INSERT INTO grdb_migrations VALUES ('v1-objects-events'), ('v9-from-the-future')")
                try db.execute(sql: "CREATE TABLE objects (whatever TEXT)")
            }
            try queue.close()
        }
        let before = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect {
            _ = try StateStore(directory: directory)
        } throws: { error in
            "\(error)".contains("written by a newer Capstan") && "\(error)".contains("v9-from-the-future")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == before)
        #expect(!FileManager.default.fileExists(atPath: path + "-wal"))
    }

    @Test func aCorruptedFileIsRefusedAndNeverOverwritten() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/capstan.db"
        let garbage = Data((0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
        try garbage.write(to: URL(fileURLWithPath: path))
        #expect {
            _ = try StateStore(directory: directory)
        } throws: { error in
            "\(error)".contains("is not a healthy SQLite database") && "\(error)".contains("capstan down --state-dir") && "\(error)".contains("then move the file aside")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == garbage)
    }

    @Test func aTruncatedDatabaseIsRefused() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let store = try StateStore(directory: directory)
            for i in 0..<200 {
                try store.recordEvent(.normal, reason: "Fill", message: String(repeating: "x", count: 200) + "\(i)",
                                      about: ObjectKey(kind: .application, namespace: "default", name: "web"), at: t0)
            }
        }
        let path = directory + "/capstan.db"
        // Fold the WAL back, then cut the file in half.
        try DatabaseQueue(path: path).writeWithoutTransaction { try $0.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)") }
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count / 2).write(to: URL(fileURLWithPath: path))
        #expect(throws: StateStore.OpenError.self) { _ = try StateStore(directory: directory) }
    }

    @Test func readOnlyOpenOfAMissingStoreSaysSo() {
        #expect {
            _ = try StateStore(directory: directory, readOnly: true)
        } throws: { error in
            "\(error)".contains("no state store at")
        }
        #expect(!FileManager.default.fileExists(atPath: directory), "a reader creates nothing")
    }

    @Test func readersDoNotBlockTheWriter() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let daemon = try StateStore(directory: directory)
        try daemon.apply(decoded(Self.web), now: t0)
        let reader = try DatabasePool(path: directory + "/capstan.db")
        // Hold a read transaction open (a slow `capstan get`) while the daemon writes.
        try await reader.read { db in
            _ = try Row.fetchAll(db, sql: "SELECT * FROM objects")
            let start = Date()
            try daemon.recordEvent(.normal, reason: "Reconciled", message: "ok", about: ObjectKey(kind: .application, namespace: "default", name: "web"), at: t0)
            #expect(Date().timeIntervalSince(start) < 1)
        }
    }
}

/// Inventory and revision history (migration v4).
@Suite struct InventoryRevisionTests {
    let directory: String = NSTemporaryDirectory() + "capstan-inventory-" + UUID().uuidString
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    let owner = ObjectKey(kind: .deployment, namespace: "default", name: "web-prod")

    @Test func inventoryIsPerOwnerAndFindsOrphans() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        let decoded = ManifestDecoder().decode(Array("""
            apiVersion: capstan.dev/v1alpha1
            kind: Deployment
            metadata: {name: web-prod}
            spec: {application: web, version: v1}
            """.utf8), file: "d.yaml").objects[0]
        try store.apply(decoded, now: t0)
        let other = ObjectKey(kind: .deployment, namespace: "default", name: "gone")
        try store.recordInventory(.init(type: "process", id: "4242:99", owner: owner, data: ["revision": "1", "pid": "4242"], createdAt: t0))
        try store.recordInventory(.init(type: "listener", id: "127.0.0.1:18080", owner: owner, createdAt: t0))
        try store.recordInventory(.init(type: "release", id: "/srv/gone/1", owner: other, data: ["path": "/srv/gone/1"], createdAt: t0))
        #expect(try store.inventory(of: owner).map(\.type) == ["listener", "process"])
        #expect(try store.inventory(of: owner, type: "process").first?.data == ["pid": "4242", "revision": "1"])
        #expect(try store.inventory().count == 3)
        #expect(try store.orphanedInventory().map(\.owner) == [other])

        // Re-recording updates in place (one row per thing).
        try store.recordInventory(.init(type: "process", id: "4242:99", owner: owner, data: ["revision": "2"], createdAt: t0, updatedAt: t0 + 5))
        let process = try store.inventory(type: "process")
        #expect(process.count == 1)
        #expect(process.first?.data == ["revision": "2"])
        #expect(process.first?.updatedAt == t0 + 5)
        #expect(try store.removeInventory(type: "release", id: "/srv/gone/1"))
        #expect(try !store.removeInventory(type: "release", id: "/srv/gone/1"))
        #expect(try store.orphanedInventory().isEmpty)
        try store.delete(decoded.key)
        #expect(try store.orphanedInventory().count == 2, "the owner's spec is gone: its things are garbage")
    }

    @Test func revisionsNumberRollbacksAsNewAndPruneBeyondTheLimit() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        func template(_ version: String) -> SpecNode { .mapping([("version", .string(version))]) }
        let r1 = try store.recordRevision(of: owner, hash: "h1", template: template("v1"), at: t0)
        let again = try store.recordRevision(of: owner, hash: "h1", template: template("v1"), at: t0 + 1)
        #expect(r1.number == 1)
        #expect(again == r1, "the same template is the same revision")
        let r2 = try store.recordRevision(of: owner, hash: "h2", template: template("v2"), at: t0 + 2)
        #expect(r2.number == 2)
        // Rolling back to h1 makes it revision 3; revision 1 is gone (it moved).
        let r3 = try store.recordRevision(of: owner, hash: "h1", template: template("v1"), at: t0 + 3)
        #expect(r3.number == 3)
        #expect(try store.revisions(of: owner).map(\.number) == [2, 3])
        #expect(try store.revision(of: owner, number: 3)?.template["version"]?.scalarText == "v1")
        for (i, hash) in ["h4", "h5", "h6"].enumerated() {
            _ = try store.recordRevision(of: owner, hash: hash, template: template(hash), at: t0 + Double(10 + i))
        }
        #expect(try store.pruneRevisions(of: owner, keep: 2, inUse: [3]) == [2, 4])
        #expect(try store.revisions(of: owner).map(\.number) == [3, 5, 6])
        try store.removeRevisions(of: owner)
        #expect(try store.revisions(of: owner).isEmpty)
    }
}

/// The lease row (migration v5): compare-and-swap against a real SQLite file, two stores on it.
@Suite struct LeaseStoreTests {
    @Test func compareAndSwapLetsOneOfTwoDaemonsWin() async throws {
        let directory = NSTemporaryDirectory() + "capstan-lease-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try StateStore(directory: directory), second = try StateStore(directory: directory)
        let time = Date(timeIntervalSince1970: 1_800_000_000)
        let record = LeaseRecord(holderIdentity: "a", leaseDurationSeconds: 15, acquireTime: time, renewTime: time, leaseTransitions: 0)
        #expect(try await first.get("capstan") == nil)
        #expect(try await first.create("capstan", record))
        #expect(try await !second.create("capstan", LeaseRecord(holderIdentity: "b", leaseDurationSeconds: 15, acquireTime: time, renewTime: time, leaseTransitions: 0)))
        let seen = try #require(try await second.get("capstan"))
        #expect(seen.record == record)
        var takeover = record
        takeover.holderIdentity = "b"
        takeover.leaseTransitions = 1
        // Both try to update from the same version: exactly one wins.
        async let one = first.update("capstan", record, expecting: seen.version)
        async let two = second.update("capstan", takeover, expecting: seen.version)
        let results = try await [one, two]
        #expect(results.filter { $0 }.count == 1, "\(results)")
        #expect(try await first.update("capstan", record, expecting: seen.version) == false, "a stale version never wins")
        #expect(try first.leases().count == 1)
    }
}
