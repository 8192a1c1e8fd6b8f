import CSystemShims
import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A real PostgreSQL for a test: `initdb` and `pg_ctl` in a temporary directory, as a normal
/// user (`nobody` when the tests run as root), listening on 127.0.0.1 and a private socket.
/// The superuser `postgres` logs in over the socket without a password; `app` over TCP with
/// a password (SCRAM).
final class Postgres: @unchecked Sendable {
    let directory: String
    let port: Int
    var socket: String { directory + "/sock" }
    let user: String?

    struct Unavailable: Error, CustomStringConvertible { var description: String }

    static func binary(_ name: String) -> String? {
        for candidate in ["/usr/local/bin/\(name)", "/usr/bin/\(name)"] where FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        for version in versions.sorted(by: >) {
            let path = "/usr/lib/postgresql/\(version)/bin/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    init() throws {
        guard let initdb = Self.binary("initdb"), let pgCtl = Self.binary("pg_ctl") else {
            throw Unavailable(description: "PostgreSQL is not installed (hack/test installs Debian's postgresql)")
        }
        directory = "/tmp/capstan-pg-" + UUID().uuidString.prefix(8)
        port = LoopbackHTTP.freePort()
        user = getuid() == 0 ? "nobody" : nil
        try FileManager.default.createDirectory(atPath: directory + "/sock", withIntermediateDirectories: true)
        if let user { try Self.run(["/bin/chown", "-R", user, directory]) }
        try run([initdb, "-D", directory + "/data", "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"])
        Self.running.withLock { running in
            if running.isEmpty { atexit { Postgres.stopAll() } }
            running[directory] = self
        }
        try run([pgCtl, "-D", directory + "/data", "-l", directory + "/server.log", "-w", "-t", "60", "start",
                 "-o", "-p \(port) -k \(socket) -c listen_addresses=127.0.0.1 -c fsync=off"])
    }

    func stop() {
        if let pgCtl = Self.binary("pg_ctl") { try? run([pgCtl, "-D", directory + "/data", "-m", "immediate", "-w", "stop"]) }
        try? FileManager.default.removeItem(atPath: directory)
        _ = Self.running.withLock { $0.removeValue(forKey: directory) }
    }

    /// Servers not stopped yet: a suite's shared one (BackupTests) lives as long as the test
    /// process, and `pg_ctl start` leaves it running after: stopped at exit.
    private static let running = Mutex<[String: Postgres]>([:])

    static func stopAll() {
        for server in running.withLock({ Array($0.values) }) { server.stop() }
    }

    /// Runs a command as the database's owner.
    func run(_ command: [String]) throws {
        try Self.run(user.map { ["/usr/sbin/runuser", "-u", $0, "--"] + command } ?? command)
    }

    /// Runs a command to its end, its output in a file (not a pipe: `pg_ctl start` leaves the
    /// server holding what it was given), with posix_spawn and waitpid (Foundation's Process
    /// lost the exit of `runuser` here and waited forever).
    @discardableResult
    static func run(_ command: [String], environment: [String: String]? = nil) throws -> String {
        let path = NSTemporaryDirectory() + "capstan-pg-output-" + UUID().uuidString
        defer { unlink(path) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Nothing else of this process: a server it starts would hold, say, the pipe whose
        // close stops a PipedServer (a git daemon outlived the suite so).
        capstan_spawn_add_closefrom(&actions, 3)
        let arguments = command.map { strdup($0) } + [nil]
        let variables = (environment ?? ProcessInfo.processInfo.environment).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { arguments.forEach { free($0) }; variables.forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, command[0], &actions, nil, arguments, variables)
        guard spawned == 0 else { throw Unavailable(description: "\(command[0]): \(String(cString: strerror(spawned)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        guard status == 0 else { throw Unavailable(description: "\(command.joined(separator: " ")) failed (\(status)): \(text)") }
        return text
    }

    /// SQL as the superuser, over the socket.
    func superuser(_ sql: String) throws {
        try Self.run([Self.binary("psql")!, "-X", "-q", "-h", socket, "-p", String(port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql])
    }

    /// Whether `app` logs in over TCP with this password.
    func logsIn(password: String) -> Bool {
        var environment = ProcessInfo.processInfo.environment
        environment["PGPASSWORD"] = password
        return (try? Self.run([Self.binary("psql")!, "-X", "-q", "-h", "127.0.0.1", "-p", String(port), "-U", "app", "-d", "app", "-c", "select 1"], environment: environment)) != nil
    }
}

/// SecretRotation end to end on this host: the built daemon, a real PostgreSQL, an app that
/// holds a database session opened with the rotated password.
@Suite(.serialized, .timeLimit(.minutes(5))) struct SecretRotationTests: ScratchSuite {
    let scratch: Scratch

    init() throws {
        scratch = try Scratch("secrets")
    }

    func specs(port: Int, database: Postgres, verifyDatabase: String = "app") -> String {
        let psql = Postgres.binary("psql")!
        return """
            apiVersion: capstan.dev/v1alpha1
            kind: Application
            metadata: {name: db}
            spec:
              source: {path: db}
              command: [python3, app.py]
              ports: [{name: http, containerPort: 8080}]
              healthCheck: {http: {path: /, port: http}, interval: 1s, timeout: 1s, failureThreshold: 2}
              env:
              - {name: DB_PORT, value: "\(database.port)"}
              - name: DB_PASSWORD
                valueFrom: {secretKeyRef: {name: db-credentials, key: password}}
            ---
            apiVersion: capstan.dev/v1alpha1
            kind: Deployment
            metadata: {name: db}
            spec:
              application: db
              version: "1"
              replicas: 2
              port: \(port)
              strategy: {type: RollingUpdate, maxSurge: 1, maxUnavailable: 0}
              progressDeadline: 30s
            ---
            apiVersion: capstan.dev/v1alpha1
            kind: SecretRotation
            metadata: {name: db-credentials}
            spec:
              secretName: db-credentials
              keys:
              - name: password
                generator: {type: random, length: 24}
              keepVersions: 2
              apply:
                exec: {command: [sh, -c, "echo \\"ALTER USER app PASSWORD '$NEW_PASSWORD';\\" | \(psql) -X -q -v ON_ERROR_STOP=1 -h \(database.socket) -p \(database.port) -U postgres -d postgres"]}
              restartDeployments: [db]
              verify:
                exec: {command: [sh, -c, "PGPASSWORD=\\"$NEW_PASSWORD\\" \(psql) -X -q -h 127.0.0.1 -p \(database.port) -U app -d \(verifyDatabase) -c 'select 1'"]}
                timeout: 10s

            """
    }

    /// A field of an object, as text: `.status.currentVersion`, a condition's field as
    /// `.status.conditions[?(@.type=="Ready")].reason`, a list's field as `.status.versions[*].version`.
    func status(_ reference: String, _ path: String) throws -> String {
        let output = try CLITests.capstan(["get", reference, "-o", "json", "--state-dir", state]).stdout
        guard output.hasPrefix("{") else { return "" }  // not there yet
        var current: Any? = try JSONSerialization.jsonObject(with: Data(output.utf8))
        var rest = Substring(path.dropFirst())
        while !rest.isEmpty {
            let selector = "conditions[?(@.type==\""
            if rest.hasPrefix(selector), let end = rest.range(of: "\")]") {
                let type = rest[rest.index(rest.startIndex, offsetBy: selector.count)..<end.lowerBound]
                current = ((current as? [String: Any])?["conditions"] as? [[String: Any]])?.first { $0["type"] as? String == String(type) }
                rest = rest[end.upperBound...].drop { $0 == "." }
                continue
            }
            let part = rest.prefix { $0 != "." && $0 != "[" }
            rest = rest.dropFirst(part.count)
            current = (current as? [String: Any])?[String(part)]
            if rest.hasPrefix("[*].") {
                let field = String(rest.dropFirst(4))
                return ((current as? [[String: Any]]) ?? []).map { "\($0[field] ?? "")" }.joined(separator: " ")
            }
            rest = rest.drop { $0 == "." }
        }
        switch current {
        case nil, is NSNull: return ""
        case let text as String: return text
        case let number as NSNumber: return number.stringValue
        default: return "\(current!)"
        }
    }

    func password(version: Int? = nil) throws -> String {
        try CLITests.capstan(["secret", "get", "db-credentials", "--key", "password", "--reveal", "--state-dir", state] + (version.map { ["--version", String($0)] } ?? [])).stdout
    }

    /// Requests through the router port on a thread until stopped: how many, how many failed.
    final class Load: Sendable {
        let counts = Mutex((ok: 0, failed: [String]()))
        let running = Atomic(true)
        let done = Atomic(false)

        init(port: Int) {
            Thread.detachNewThread { [self] in
                while running.load(ordering: .relaxed) {
                    let answer = LoopbackHTTP.get(port: port, path: "/")
                    counts.withLock { counts in
                        if answer?.status == 200 { counts.ok += 1 } else { counts.failed.append(answer.map { "\($0.status) \($0.body)" } ?? "no answer") }
                    }
                    usleep(20_000)
                }
                done.store(true, ordering: .relaxed)
            }
        }

        func stop() -> (ok: Int, failed: [String]) {
            running.store(false, ordering: .relaxed)
            while !done.load(ordering: .relaxed) { usleep(10_000) }
            return counts.withLock { $0 }
        }
    }

    /// What the daemon shows, for a failing test's message.
    func diagnosis() -> String {
        let objects = (try? CLITests.capstan(["get", "all", "-o", "wide", "--state-dir", state]).stdout) ?? ""
        let events = (try? CLITests.capstan(["events", "--state-dir", state]).stdout) ?? ""
        return objects + "\n" + events.split(separator: "\n").suffix(25).joined(separator: "\n")
    }

    @Test func aDatabasePasswordRotatesWithoutAFailedRequestAndAFailedVerifyRollsBack() throws {
        let database = try Postgres()
        defer { database.stop() }
        try database.superuser("CREATE USER app")
        try database.superuser("CREATE DATABASE app OWNER app")
        try FileManager.default.createDirectory(atPath: specs + "/db", withIntermediateDirectories: true)
        // One psql session opened at start with $DB_PASSWORD (a pool of one); every request
        // runs a query on it; a failed login exits 1.
        try FileManager.default.copyItem(atPath: CLITests.root + "/hack/testapps/pg_session_app.py", toPath: specs + "/db/app.py")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        do {
            try rotateAndRollBack(database)
        } catch {
            Issue.record("\(error)\n\(diagnosis())")
        }
    }

    func rotateAndRollBack(_ database: Postgres) throws {
        let port = LoopbackHTTP.freePort()
        try write(specs(port: port, database: database), to: "db.yaml")

        // Version 1 is generated and applied; the app logs in with it and serves.
        try poll("version 1 and the app serving", seconds: 60) {
            try status("secretrotation/db-credentials", ".status.currentVersion") == "1" && LoopbackHTTP.get(port: port, path: "/")?.status == 200
        }
        let first = try password()
        #expect(first.count == 24)
        #expect(database.logsIn(password: first))

        // Rotated under load: ALTER USER, the app rolled with its own strategy, verify.
        let load = Load(port: port)
        Thread.sleep(forTimeInterval: 0.5)
        let rotate = try CLITests.capstan(["rotate", "secretrotation/db-credentials", "--state-dir", state])
        #expect(rotate.status == 0, "\(rotate.stderr)")
        try poll("version 2 verified", seconds: 60) {
            try status("secretrotation/db-credentials", ".status.currentVersion") == "2"
                && status("secretrotation/db-credentials", ".status.conditions[?(@.type==\"Ready\")].reason") == "Rotated"
                || status("secretrotation/db-credentials", ".status.conditions[?(@.type==\"Ready\")].reason") == "Current"
                && status("secretrotation/db-credentials", ".status.currentVersion") == "2"
        }
        try poll("the app rolled with version 2", seconds: 30) {
            try status("deployment/db", ".status.secretRestarts.db-credentials") == "v2" && status("deployment/db", ".status.phase") == "Succeeded"
        }
        Thread.sleep(forTimeInterval: 1)
        let counts = load.stop()
        #expect(counts.failed.isEmpty, "failed requests during the rotation: \(counts.failed.prefix(5))")
        #expect(counts.ok > 20)
        let second = try password()
        #expect(second != first)
        #expect(database.logsIn(password: second))
        #expect(!database.logsIn(password: first))

        // A verify that fails: the rotation is rolled back, the database has the old password
        // again, the app (rolled once more) still logs in.
        try write(specs(port: port, database: database, verifyDatabase: "nosuchdatabase"), to: "db.yaml")
        try poll("the spec change read", seconds: 30) { try status("secretrotation/db-credentials", ".metadata.generation") == "2" }
        let load2 = Load(port: port)
        #expect(try CLITests.capstan(["rotate", "secretrotation/db-credentials", "--state-dir", state]).status == 0)
        try poll("the failed rotation rolled back", seconds: 90) {
            try status("secretrotation/db-credentials", ".status.conditions[?(@.type==\"Stalled\")].reason") == "VerificationFailed"
                && status("secretrotation/db-credentials", ".status.rotation").isEmpty
        }
        try poll("the app rolled back to version 2's password", seconds: 30) {
            try status("deployment/db", ".status.secretRestarts.db-credentials") == "v2-after-v3" && status("deployment/db", ".status.phase") == "Succeeded"
        }
        let counts2 = load2.stop()
        #expect(counts2.failed.isEmpty, "failed requests during the rollback: \(counts2.failed.prefix(5))")
        #expect(try status("secretrotation/db-credentials", ".status.currentVersion") == "2")
        #expect(try password() == second)
        #expect(database.logsIn(password: second))
        #expect(LoopbackHTTP.get(port: port, path: "/")?.status == 200)
        let message = try status("secretrotation/db-credentials", ".status.conditions[?(@.type==\"Stalled\")].message")
        #expect(message.contains("nosuchdatabase"), "\(message)")
        // The versions kept are 1 and 2 (3 failed and went).
        #expect(try status("secretrotation/db-credentials", ".status.versions[*].version") == "1 2")

        // No value in any output: the log, events, statuses, the instances' command lines.
        let outputs = [
            log(),
            try CLITests.capstan(["events", "--state-dir", state]).stdout,
            try CLITests.capstan(["get", "all", "-o", "yaml", "--state-dir", state]).stdout,
            try CLITests.capstan(["get", "all", "-o", "json", "--state-dir", state]).stdout,
            try CLITests.capstan(["describe", "secretrotation/db-credentials", "--state-dir", state]).stdout,
            try CLITests.capstan(["describe", "deployment/db", "--state-dir", state]).stdout,
            try CLITests.capstan(["secret", "get", "db-credentials", "--state-dir", state]).stdout,
        ] + Self.commandLines()
        for (index, output) in outputs.enumerated() {
            for value in [first, second] {
                #expect(!output.contains(value), "output \(index) shows a password")
            }
        }
    }

    /// Every process's command line.
    static func commandLines() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter { $0.allSatisfy(\.isNumber) }.compactMap { pid in
            (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))).map { String(decoding: $0, as: UTF8.self) }
        }
    }

    static func rotation(apply: String, verify: String, keep: Int = 0) -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: SecretRotation
        metadata: {name: api}
        spec:
          secretName: api
          keys: [{name: token, generator: {type: token, bytes: 16}}]
          keepVersions: \(keep)
          restartDeployments: [nosuch]
          \(apply)
          \(verify)

        """
    }

    @Test func badInputIsToldClearlyAndNothingIsLost() throws {
        let silent = LoopbackHTTP.bound()  // accepts, never answers
        defer { close(silent.fd) }
        try write(Self.rotation(apply: "apply: {exec: {command: [/nonexistent/apply-db]}}", verify: ""), to: "api.yaml")
        let daemon = try startDaemon(["--log-format", "json"])
        defer { cleanUp([daemon]) }
        do {
            // An apply command that does not exist: the first version stays, apply is retried.
            try poll("ApplyFailed") {
                try status("secretrotation/api", ".status.conditions[?(@.type==\"Stalled\")].reason") == "ApplyFailed"
            }
            let message = try status("secretrotation/api", ".status.conditions[?(@.type==\"Stalled\")].message")
            #expect(message.contains("/nonexistent/apply-db") && message.contains("not found"), "\(message)")
            #expect(try status("secretrotation/api", ".status.currentVersion") == "1")

            // A verify URL that never answers: its timeout fails it.
            try write(Self.rotation(apply: "apply: {exec: {command: [\"true\"]}}", verify: "verify: {http: {url: \"http://127.0.0.1:\(silent.port)/ok\"}, timeout: 2s}"), to: "api.yaml")
            try poll("VerificationFailed") {
                try status("secretrotation/api", ".status.conditions[?(@.type==\"Stalled\")].reason") == "VerificationFailed"
            }

            // Fixed: Ready; keepVersions 0 keeps only the current one; a dependent that does
            // not exist is a Warning, not a failure.
            try write(Self.rotation(apply: "apply: {exec: {command: [\"true\"]}}", verify: ""), to: "api.yaml")
            try poll("Ready") { try status("secretrotation/api", ".status.conditions[?(@.type==\"Ready\")].status") == "True" }
            var tokens = [try CLITests.capstan(["secret", "get", "api", "--key", "token", "--reveal", "--state-dir", state]).stdout]
            #expect(try CLITests.capstan(["rotate", "secretrotation/api", "--state-dir", state]).status == 0)
            try poll("version 2") {
                try status("secretrotation/api", ".status.currentVersion") == "2" && status("secretrotation/api", ".status.rotation").isEmpty
            }
            #expect(try status("secretrotation/api", ".status.versions[*].version") == "2")
            let events = try CLITests.capstan(["events", "secretrotation/api", "--state-dir", state]).stdout
            #expect(events.contains("DeploymentNotFound") && events.contains("nosuch"), "\(events)")

            // No value in the JSON log.
            tokens.append(try CLITests.capstan(["secret", "get", "api", "--key", "token", "--reveal", "--state-dir", state]).stdout)
            for (index, token) in tokens.enumerated() {
                #expect(token.count >= 16 && !log().contains(token), "the JSON log shows token \(index + 1)")
            }
            #expect(log().contains("\"level\""), "the log is JSON")

            // A wrong master key: values are refused, the vault is unchanged.
            let wrong = try CLITests.capstan(["secret", "get", "api", "--reveal", "--state-dir", state],
                                             environment: ["CAPSTAN_MASTER_KEY": String(repeating: "00", count: 32)])
            #expect(wrong.status == 1 && wrong.stderr.contains("not the one this vault was sealed with"), "\(wrong.stderr)")
            #expect(try CLITests.capstan(["secret", "get", "api", "--reveal", "--state-dir", state]).stdout.hasPrefix("token="))
            // A master key file others can read: refused, saying how to fix it.
            chmod(state + "/master.key", 0o644)
            let exposed = try CLITests.capstan(["secret", "get", "api", "--reveal", "--state-dir", state])
            #expect(exposed.status == 1 && exposed.stderr.contains("chmod 600"), "\(exposed.stderr)")
            chmod(state + "/master.key", 0o600)
        } catch {
            Issue.record("\(error)\n\(diagnosis())")
        }
    }
}
