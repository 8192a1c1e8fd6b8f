import CapstanIntegrations
import Foundation
import NIOCore
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// moto's server mode, started once for the process (hack/testapps/s3_server.py): an
/// S3-compatible server that checks request signatures, with a user, its key and the bucket
/// `capstan-backups`. It stops when the test process ends (its standard input closes).
final class S3Server: Sendable {
    let endpoint: String
    let accessKeyID: String
    let secretAccessKey: String
    let bucket: String
    let process: Process

    static let shared = Result { try S3Server() }

    init() throws {
        let info = NSTemporaryDirectory() + "capstan-s3-\(UUID().uuidString).json"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", CLITests.root + "/hack/testapps/s3_server.py", String(LoopbackHTTP.freePort()), info]
        process.standardInput = Pipe()
        let log = FileHandle(forWritingAtPath: "/dev/null")!
        process.standardOutput = log
        process.standardError = log
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: info) {
            guard process.isRunning, Date() < deadline else {
                throw CLITests.CLIError("the S3 test server (moto) did not start: is moto[server] installed? (hack/test installs it)")
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        let fields = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: info))) as! [String: String]
        unlink(info)
        endpoint = fields["endpoint"]!
        accessKeyID = fields["accessKeyId"]!
        secretAccessKey = fields["secretAccessKey"]!
        bucket = fields["bucket"]!
    }

    var credentials: String { "\(accessKeyID):\(secretAccessKey)" }

    func client() throws -> S3Client {
        try S3Client(endpoint: endpoint, bucket: bucket, region: "us-east-1", credentials: AWSCredentials(accessKeyID: accessKeyID, secretAccessKey: secretAccessKey))
    }
}

/// BackupSchedule end to end on this host: the built daemon, a real PostgreSQL and moto's
/// S3 server (signatures checked), SQLite under a writer, directories, commands, bad input.
@Suite(.serialized, .timeLimit(.minutes(10))) struct BackupTests: ScratchSuite {
    let scratch: Scratch

    init() throws {
        scratch = try Scratch("backups")
    }

    /// The CLI, awaited without holding a thread of the pool the other suites' async tests run
    /// on (a blocking wait there starved them on two cores).
    func capstan(_ arguments: [String]) async throws -> CLITests.Run {
        try await CLITests.capstanAsync(arguments + ["--state-dir", state], in: root)
    }

    func setSecret(_ name: String, _ key: String, _ value: String) async throws {
        let run = try await capstan(["secret", "set", name, "--from-literal", "\(key)=\(value)"])
        #expect(run.status == 0, "\(run.stderr)")
    }

    /// `status.backups` of a schedule, newest first.
    func backups(_ name: String) async throws -> [[String: Any]] {
        let output = try await capstan(["get", "backupschedule/\(name)", "-o", "json"]).stdout
        guard output.hasPrefix("{"), let object = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any] else { return [] }
        return ((object["status"] as? [String: Any])?["backups"] as? [[String: Any]]) ?? []
    }

    /// Asks for a backup and waits for the run it started to end; returns its record.
    @discardableResult
    func backupNow(_ name: String, seconds: Double = 60) async throws -> [String: Any] {
        // A daemon just started may not have read the schedule yet: the command would truly find nothing.
        try await until("the daemon to read \(name)", seconds: 20) { try await capstan(["get", "backupschedule/\(name)"]).status == 0 }
        let before = try await backups(name).count
        let run = try await capstan(["backup", "run", "backupschedule/\(name)"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        var record: [String: Any] = [:]
        try await until("a run of \(name) to end", seconds: seconds) {
            let records = try await backups(name)
            guard records.count > before || (records.count == 20 && records.first?["id"] as? String != nil && before == 20) else { return false }
            record = records[0]
            return true
        }
        return record
    }

    func describe(_ name: String) async throws -> String {
        try await capstan(["describe", "backupschedule", name]).stdout
    }

    func listed(_ name: String) async throws -> [String] {
        let run = try await capstan(["backup", "list", "backupschedule/\(name)", "-o", "json"])
        guard run.status == 0, let array = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [[String: Any]] else {
            Issue.record("backup list failed: \(run.stderr)")
            return []
        }
        return array.compactMap { $0["id"] as? String }
    }

    static let postgres = Result { try Postgres() }

    func psql(_ database: Postgres, _ sql: String, in name: String = "app") throws -> String {
        try Postgres.run([Postgres.binary("psql")!, "-X", "-q", "-h", database.socket, "-p", String(database.port), "-U", "postgres", "-d", name,
                          "-v", "ON_ERROR_STOP=1", "-tAc", sql]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func postgresSpec(_ database: Postgres, _ s3: S3Server, bucket: String? = nil, port: Int? = nil) -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: BackupSchedule
        metadata: {name: db}
        spec:
          schedule: "0 3 * * *"
          source: {postgres: {host: 127.0.0.1, port: \(port ?? database.port), database: app, user: app, passwordFrom: {secretKeyRef: {name: db, key: password}}}}
          # moto decodes %2F in a query before it checks the signature (AWS and botocore do not), so no '/' in the prefix here.
          destination: {s3: {endpoint: "\(s3.endpoint)", bucket: \(bucket ?? s3.bucket), prefix: "pg-", credentialsFrom: {secretKeyRef: {name: s3, key: credentials}}}}
          encryption: {keyFrom: {secretKeyRef: {name: backup-key, key: key}}}
          retention: {keepLast: 3}
        """
    }

    @Test func aPostgresBackupToS3IsEncryptedVerifiedAndRestoredAndBadInputFailsClearly() async throws {
        let database = try Self.postgres.get()
        let s3 = try S3Server.shared.get()
        try database.superuser("DROP DATABASE IF EXISTS app")
        try database.superuser("DROP DATABASE IF EXISTS restored")
        try database.superuser("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN CREATE USER app CREATEDB PASSWORD 'app-password'; END IF; END $$")
        try database.superuser("CREATE DATABASE app OWNER app")
        _ = try psql(database, "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 5000) i; ALTER TABLE items OWNER TO app")
        let digest = try psql(database, "SELECT md5(string_agg(id || name, ',' ORDER BY id)) FROM items")
        try await setSecret("db", "password", "app-password")
        try await setSecret("s3", "credentials", s3.credentials)
        try await setSecret("backup-key", "key", Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString())
        try write(postgresSpec(database, s3), to: "db.yaml")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }

        let record = try await backupNow("db")
        let described = try await describe("db")
        #expect(record["outcome"] as? String == "Succeeded", "\(record)\n\(described)")
        #expect(record["verified"] as? String == "restore")
        let id = try #require(record["id"] as? String)
        // Encrypted at rest: Capstan's format, not a pg_dump archive (which starts "PGDMP").
        let stored = try await s3.client().get("pg-" + id, limit: 64 << 20)
        #expect(String(buffer: stored).hasPrefix("CAPSTAN-AES256GCM-1\n"))
        #expect(!String(decoding: stored.readableBytesView, as: UTF8.self).contains("PGDMP"))
        #expect(try await listed("db") == [id])

        // Restored into a fresh database: the same rows.
        let restore = try await capstan(["backup", "restore", "backupschedule/db", id, "--database", "restored"])
        #expect(restore.status == 0, "\(restore.stderr)")
        #expect(try psql(database, "SELECT md5(string_agg(id || name, ',' ORDER BY id)) FROM items", in: "restored") == digest)
        let again = try await capstan(["backup", "restore", "backupschedule/db", id, "--database", "restored"])
        #expect(again.status == 1)
        #expect(again.stderr.contains("is not empty"), "\(again.stderr)")
        #expect(try await capstan(["events", "backupschedule/db"]).stdout.contains("BackupRestored"))

        // A user that may not create databases: verified by reading the whole archive instead.
        try database.superuser("DROP DATABASE IF EXISTS plain")
        try database.superuser("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'plain') THEN CREATE USER plain NOCREATEDB PASSWORD 'plain-password'; END IF; END $$")
        try database.superuser("CREATE DATABASE plain OWNER plain")
        try await setSecret("plain", "password", "plain-password")
        try write(postgresSpec(database, s3) + "\n---\n" + postgresSpec(database, s3).replacingOccurrences(of: "name: db}", with: "name: plain}")
            .replacingOccurrences(of: "database: app, user: app", with: "database: plain, user: plain").replacingOccurrences(of: "name: db, key: password", with: "name: plain, key: password")
            .replacingOccurrences(of: "prefix: \"pg-\"", with: "prefix: \"plain-\""), to: "db.yaml")
        try await until("the second schedule", seconds: 20) { try await capstan(["get", "backupschedule/plain"]).status == 0 }
        let plain = try await backupNow("plain")
        #expect(plain["outcome"] as? String == "Succeeded", "\(plain)")
        #expect(plain["verified"] as? String == "archive")
        try write(postgresSpec(database, s3), to: "db.yaml")

        // Bad input: each run fails with the server's or tool's own message, and retention deletes nothing.
        try await setSecret("s3", "credentials", "\(s3.accessKeyID):wrong-secret")
        var failed = try await backupNow("db")
        #expect(failed["reason"] as? String == "DestinationFailed")
        #expect((failed["message"] as? String ?? "").contains("SignatureDoesNotMatch"), "\(failed)")
        #expect(try await describe("db").contains("SignatureDoesNotMatch"))
        try await setSecret("s3", "credentials", s3.credentials)

        try write(postgresSpec(database, s3, bucket: "no-such-bucket"), to: "db.yaml")
        try await until("the new spec", seconds: 20) { try await describe("db").contains("no-such-bucket") }
        failed = try await backupNow("db")
        #expect((failed["message"] as? String ?? "").contains("NoSuchBucket"), "\(failed)")
        try write(postgresSpec(database, s3), to: "db.yaml")
        try await until("the spec back", seconds: 20) { try await describe("db").contains("bucket: \(s3.bucket)") }

        try await setSecret("db", "password", "wrong-password")
        failed = try await backupNow("db")
        #expect(failed["reason"] as? String == "SourceFailed")
        #expect((failed["message"] as? String ?? "").contains("password authentication failed"), "\(failed)")
        try await setSecret("db", "password", "app-password")

        let down = LoopbackHTTP.freePort()
        try write(postgresSpec(database, s3, port: down), to: "db.yaml")
        try await until("the spec with a closed port", seconds: 20) { try await describe("db").contains("port: \(down)") }
        failed = try await backupNow("db")
        #expect(failed["reason"] as? String == "SourceFailed")
        #expect((failed["message"] as? String ?? "").contains("Connection refused"), "\(failed)")
        #expect(try await describe("db").contains("Connection refused"))

        #expect(try await listed("db") == [id], "a failed run must not prune")
        let uploads = try await s3.client().uploads(prefix: "pg-")
        #expect(uploads.isEmpty, "multipart uploads left: \(uploads)")
    }

    @Test func anSQLiteBackupTakenWhileAWriterCommitsIsConsistent() async throws {
        let db = root + "/app.db"
        // Each transaction adds one row to each of two tables: a consistent copy has as many in both.
        let writer = try start(["python3", "-c", """
            import sqlite3, time, sys
            db = sqlite3.connect(sys.argv[1], isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS a (n INTEGER)")
            db.execute("CREATE TABLE IF NOT EXISTS b (n INTEGER)")
            n = 0
            while True:
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO a VALUES (?)", (n,))
                db.execute("INSERT INTO b VALUES (?)", (n,))
                db.execute("COMMIT")
                n += 1
                time.sleep(0.01)
            """, db], log: "writer.log", executable: "/usr/bin/env")
        defer { kill(writer.processIdentifier, SIGKILL) }
        try FileManager.default.createDirectory(atPath: root + "/dest", withIntermediateDirectories: true)
        try write("""
            apiVersion: capstan.dev/v1alpha1
            kind: BackupSchedule
            metadata: {name: app-db}
            spec:
              schedule: "@daily"
              source: {sqlite: {path: ../app.db}}
              destination: {local: {path: ../dest}}
            """, to: "sqlite.yaml")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        try await Task.sleep(for: .seconds(0.5))
        var ids: [String] = []
        for _ in 0..<3 {
            let record = try await backupNow("app-db")
            #expect(record["outcome"] as? String == "Succeeded", "\(record)")
            #expect(record["verified"] as? String == "restore")
            ids.append(record["id"] as? String ?? "")
        }
        for (index, id) in ids.enumerated() {
            let target = root + "/restored-\(index).db"
            let run = try await capstan(["backup", "restore", "backupschedule/app-db", id, "--to", target])
            #expect(run.status == 0, "\(run.stderr)")
            let counts = try Postgres.run(["/usr/bin/sqlite3", target, "SELECT (SELECT count(*) FROM a) || ' ' || (SELECT count(*) FROM b) || ' ' || (SELECT max(n) FROM a); PRAGMA integrity_check;"])
            let lines = counts.split(separator: "\n")
            let numbers = lines.first?.split(separator: " ") ?? []
            #expect(numbers.count == 3 && numbers[0] == numbers[1] && Int(numbers[0]) ?? 0 > 0, "tables differ in \(id): \(counts)")
            #expect(lines.last == "ok")
        }
    }

    @Test func directoriesCommandsAndBadInput() async throws {
        try FileManager.default.createDirectory(atPath: root + "/data/sub", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/dest", withIntermediateDirectories: true)
        try "hello\n".write(toFile: root + "/data/a.txt", atomically: true, encoding: .utf8)
        try Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 * 7) }).write(to: URL(fileURLWithPath: root + "/data/sub/b.bin"))
        func schedule(_ name: String, source: String, destination: String = "{local: {path: ../dest}}", extra: String = "") -> String {
            """
            apiVersion: capstan.dev/v1alpha1
            kind: BackupSchedule
            metadata: {name: \(name)}
            spec:
              schedule: "@daily"
              source: \(source)
              destination: \(destination)
              retention: {keepLast: 2}
            \(extra)
            ---

            """
        }
        try write(schedule("files", source: "{directory: {path: ../data}}")
                  + schedule("dump", source: "{command: {command: [sh, -c, 'echo line one; echo line two']}}")
                  + schedule("broken", source: "{command: {command: [sh, -c, 'echo partial; echo no space left on device >&2; exit 1']}}")
                  + schedule("slow", source: "{command: {command: [sleep, '30']}}", extra: "  timeout: 1s")
                  + schedule("nowhere", source: "{directory: {path: ../data}}", destination: "{local: {path: ../missing/backups}}"), to: "backups.yaml")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }

        let files = try await backupNow("files")
        #expect(files["outcome"] as? String == "Succeeded", "\(files)")
        let restored = root + "/restored"
        #expect(try await capstan(["backup", "restore", "backupschedule/files", "--to", restored]).status == 0)
        #expect(FileManager.default.contentsEqual(atPath: root + "/data/sub/b.bin", andPath: restored + "/sub/b.bin"))
        #expect(try String(contentsOfFile: restored + "/a.txt", encoding: .utf8) == "hello\n")

        let dump = try await backupNow("dump")
        #expect(dump["outcome"] as? String == "Succeeded", "\(dump)")
        #expect(try await capstan(["backup", "restore", "backupschedule/dump", "--to", root + "/dump.txt"]).status == 0)
        #expect(try String(contentsOfFile: root + "/dump.txt", encoding: .utf8) == "line one\nline two\n")

        // Retention keeps the last 2; a failing run deletes nothing.
        for _ in 0..<2 { try await backupNow("files") }
        let kept = try await listed("files")
        #expect(kept.count == 2)
        #expect(try await capstan(["events", "backupschedule/files"]).stdout.contains("BackupsPruned"))

        let broken = try await backupNow("broken")
        #expect(broken["reason"] as? String == "SourceFailed")
        #expect((broken["message"] as? String ?? "").contains("no space left on device"), "\(broken)")
        #expect((broken["message"] as? String ?? "").contains("exited with status 1"))

        let slow = try await backupNow("slow", seconds: 30)
        #expect(slow["reason"] as? String == "Timeout", "\(slow)")

        let nowhere = try await backupNow("nowhere")
        #expect(nowhere["reason"] as? String == "DestinationFailed")
        #expect((nowhere["message"] as? String ?? "").contains("does not exist"), "\(nowhere)")
        #expect(try await describe("nowhere").contains("does not exist"))

        #expect(try await listed("files") == kept)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: root + "/dest").filter { $0.hasSuffix(".partial") }
        #expect(leftovers.isEmpty, "partial files left: \(leftovers)")
    }

    /// kill -9 of the daemon at a random moment of a backup, alternately to a directory and to
    /// S3: the run is `Interrupted` on restart, nothing partial is left (no `.partial` file, no
    /// object, no multipart upload), and the next run succeeds.
    @Test func aDaemonKilledMidBackupLeavesNothingPartial() async throws {
        let s3 = try S3Server.shared.get()
        // hack/test runs this alone afterwards with CAPSTAN_BACKUP_KILLS=20 (as the fault loop):
        // beside the other suites it runs two, to keep their timing undisturbed.
        let kills = Int(ProcessInfo.processInfo.environment["CAPSTAN_BACKUP_KILLS"] ?? "") ?? 2
        let size = root + "/size"
        try "400\n".write(toFile: size, atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: root + "/dest", withIntermediateDirectories: true)
        try await setSecret("s3", "credentials", s3.credentials)
        let prefix = "kill-\(UUID().uuidString.prefix(8).lowercased())-"
        // Random data, about 5 MB a second (light on the machine the other suites share): an S3
        // part is under way after 1.6 s; the run would take 20 s.
        let source = "{command: {command: [sh, -c, 'n=$(cat \(size)); i=0; while [ $i -lt $n ]; do head -c 262144 /dev/urandom; sleep 0.05; i=$((i+1)); done']}}"
        try write("""
            apiVersion: capstan.dev/v1alpha1
            kind: BackupSchedule
            metadata: {name: local}
            spec:
              schedule: "@yearly"
              source: \(source)
              destination: {local: {path: ../dest}}
            ---
            apiVersion: capstan.dev/v1alpha1
            kind: BackupSchedule
            metadata: {name: remote}
            spec:
              schedule: "@yearly"
              source: \(source)
              destination: {s3: {endpoint: "\(s3.endpoint)", bucket: \(s3.bucket), prefix: "\(prefix)", credentialsFrom: {secretKeyRef: {name: s3, key: credentials}}}}
            """, to: "backups.yaml")
        var daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        let client = try s3.client()
        func active(_ name: String) async throws -> String? {
            let output = try await capstan(["get", "backupschedule/\(name)", "-o", "json"]).stdout
            guard output.hasPrefix("{"), let object = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any] else { return nil }
            return ((object["status"] as? [String: Any])?["active"] as? [String])?.first
        }
        func leftovers(_ name: String, _ id: String) async throws -> [String] {
            if name == "local" {
                return try FileManager.default.contentsOfDirectory(atPath: root + "/dest").filter { $0.hasPrefix(id) }
            }
            let uploads = try await client.uploads(prefix: prefix).map { "upload of \($0.key)" }
            let objects = try await client.list(prefix: prefix + id).map(\.key)
            return uploads + objects
        }
        try await until("both schedules read") {
            let local = try await active("local"), remote = try await backups("remote"), found = try await capstan(["get", "backupschedule/remote"]).status
            return local == nil && remote.isEmpty && found == 0
        }
        var outcomes: [String: Int] = [:]
        for kill in 0..<kills {
            let name = kill % 2 == 0 ? "local" : "remote"
            let run = try await capstan(["backup", "run", "backupschedule/\(name)"])
            #expect(run.status == 0, "\(run.stderr)")
            var id = ""
            try await until("a run of \(name) to start", seconds: 20) {
                id = try await active(name) ?? ""
                return !id.isEmpty
            }
            try await Task.sleep(for: .seconds(Double.random(in: 0.05...2.5)))
            Glibc.kill(daemon.processIdentifier, SIGKILL)
            daemon.waitUntilExit()
            daemon = try startDaemon(log: "daemon-\(kill).log")
            var record: [String: Any] = [:]
            try await until("run \(id) recorded after the restart", seconds: 30, log: "daemon-\(kill).log") {
                guard let found = try await backups(name).first(where: { $0["id"] as? String == id }) else { return false }
                record = found
                return true
            }
            let outcome = "\(record["outcome"] ?? "")/\(record["reason"] ?? "")"
            outcomes[outcome, default: 0] += 1
            #expect(outcome == "Failed/Interrupted" || outcome == "Succeeded/", "\(record)")
            // The job cut off removes what it wrote; so does the restarted daemon: nothing stays.
            if outcome != "Succeeded/" {
                var left: [String] = []
                try await until("nothing left of \(id)", seconds: 20) {
                    left = try await leftovers(name, id)
                    return left.isEmpty
                }
            }
        }
        // The job itself killed (it cannot clean up): the daemon removes what it left.
        for name in ["local", "remote"] {
            _ = try await capstan(["backup", "run", "backupschedule/\(name)"])
            var id = ""
            try await until("a run of \(name) to start", seconds: 20) {
                id = try await active(name) ?? ""
                return !id.isEmpty
            }
            try await Task.sleep(for: .seconds(2))
            let children = try FileManager.default.contentsOfDirectory(atPath: "/proc").compactMap(Int32.init).filter { pid in
                let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
                let fields = stat.split(separator: ")").last?.split(separator: " ") ?? []
                let command = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? ""
                return fields.count > 2 && Int32(fields[1]) == daemon.processIdentifier && command.contains("backup-job")
            }
            #expect(children.count == 1, "backup-job children: \(children)")
            for child in children { Glibc.kill(child, SIGKILL) }
            var record: [String: Any] = [:]
            try await until("run \(id) recorded", seconds: 30) {
                guard let found = try await backups(name).first(where: { $0["id"] as? String == id }) else { return false }
                record = found
                return true
            }
            #expect(record["reason"] as? String == "Interrupted")
            #expect((record["message"] as? String ?? "").contains("killed by signal 9"), "\(record)")
            #expect(try await leftovers(name, id).isEmpty)
        }
        try "3\n".write(toFile: size, atomically: true, encoding: .utf8)
        for name in ["local", "remote"] {
            let record = try await backupNow(name)
            #expect(record["outcome"] as? String == "Succeeded", "\(record)")
        }
        print("backup kills: \(outcomes)")
    }
}
