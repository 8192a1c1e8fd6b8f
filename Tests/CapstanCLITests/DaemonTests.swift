import Foundation
import Testing

/// `capstan run` end to end: the built binary on a temporary spec directory, observed with
/// `capstan get/describe/events` as a user would. Every wait polls with a deadline.
@Suite(.serialized, .timeLimit(.minutes(3))) struct DaemonTests {
    let root: String
    var specs: String { root + "/specs" }
    var state: String { root + "/state" }

    init() throws {
        root = NSTemporaryDirectory() + "capstan-daemon-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root + "/specs/web", withIntermediateDirectories: true)
    }

    static func app(command: String = "[python3, server.py]", greeting: String = "hi") -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: Application
        metadata:
          name: web
        spec:
          source: {path: web}
          command: \(command)
          env:
          - {name: GREETING, value: \(greeting)}

        """
    }

    func write(_ text: String, to name: String) throws {
        try text.write(toFile: specs + "/" + name, atomically: true, encoding: .utf8)
    }

    func startDaemon(metricsPort: Int = 0) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CLITests.binary)
        process.arguments = ["run", "--spec-dir", specs, "--state-dir", state, "--resync", "1h", "--metrics-addr", "127.0.0.1:\(metricsPort)"]
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        let log = root + "/daemon.log"
        if !FileManager.default.fileExists(atPath: log) { _ = FileManager.default.createFile(atPath: log, contents: nil) }
        let handle = FileHandle(forWritingAtPath: log)!
        handle.seekToEndOfFile()
        process.standardError = handle
        try process.run()
        return process
    }

    /// Starts a long-running CLI command (`-w`) writing its standard output to `output`.
    func startWatching(_ arguments: [String], into output: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CLITests.binary)
        process.arguments = arguments
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        process.standardOutput = FileHandle(forWritingAtPath: output)
        try process.run()
        return process
    }

    /// The application as `capstan get -o json` prints it, or nil when it is not there.
    func web() throws -> [String: Any]? {
        let run = try CLITests.capstan(["get", "application", "web", "-o", "json", "--state-dir", state])
        guard run.status == 0 else { return nil }
        return try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any]
    }

    func condition(_ object: [String: Any]?, _ type: String) -> [String: Any]? {
        ((object?["status"] as? [String: Any])?["conditions"] as? [[String: Any]])?.first { $0["type"] as? String == type }
    }

    func generation(_ object: [String: Any]?) -> Int? { (object?["metadata"] as? [String: Any])?["generation"] as? Int }
    func observed(_ object: [String: Any]?) -> Int? { (object?["status"] as? [String: Any])?["observedGeneration"] as? Int }

    /// Polls `condition` every 100 ms until it holds or `seconds` pass.
    func poll(_ what: String, seconds: Double = 20, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        let log = (try? String(contentsOfFile: root + "/daemon.log", encoding: .utf8)) ?? ""
        Issue.record("timed out waiting for \(what); daemon log:\n\(log.suffix(3000))")
        throw CLITests.CLIError("timed out waiting for \(what)")
    }

    @Test func applicationLifecycle() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try write(Self.app(), to: "web.yaml")
        var daemon = try startDaemon()
        defer { if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) } }

        // Ready at generation 1.
        try poll("Ready=True") { condition(try web(), "Ready")?["status"] as? String == "True" }
        var object = try web()
        #expect(generation(object) == 1)
        #expect(observed(object) == 1)
        #expect(condition(object, "Ready")?["observedGeneration"] as? Int == 1)

        // An edit of the spec is generation 2 and a new reconcile.
        try write(Self.app(greeting: "hello"), to: "web.yaml")
        try poll("generation 2 observed") { observed(try web()) == 2 }
        #expect(generation(try web()) == 2)

        // Reformatting (same meaning) is not a new generation. A second file proves the change was read.
        try write(Self.app(command: "\n  - python3\n  - server.py", greeting: "\"hello\"") + "# reformatted\n", to: "web.yaml")
        try write("apiVersion: capstan.dev/v1alpha1\nkind: Canary\nmetadata: {name: marker}\nspec: {deployment: web, steps: [{setWeight: 5}]}\n", to: "marker.yaml")
        try poll("the marker canary") { try CLITests.capstan(["get", "canary", "marker", "--state-dir", state]).status == 0 }
        #expect(generation(try web()) == 2)

        // A broken edit keeps the last good object, Stalled with a Warning event naming file:line.
        try write(Self.app(command: "\"python3 server.py\"", greeting: "broken"), to: "web.yaml")
        try poll("Stalled=True") { condition(try web(), "Stalled")?["status"] as? String == "True" }
        object = try web()
        #expect(condition(object, "Stalled")?["reason"] as? String == "InvalidSpec")
        #expect(generation(object) == 2, "the last good version is kept")
        let env = ((object?["spec"] as? [String: Any])?["env"] as? [[String: Any]])?.first?["value"] as? String
        #expect(env == "hello")
        let events = try CLITests.capstan(["events", "application/web", "--state-dir", state]).stdout
        #expect(events.contains("Warning") && events.contains("InvalidSpec") && events.contains("web.yaml:7:12"), "\(events)")

        // Fixing it clears both.
        try write(Self.app(greeting: "hello"), to: "web.yaml")
        try poll("Ready again") {
            let current = try web()
            return condition(current, "Ready")?["status"] as? String == "True" && condition(current, "Stalled") == nil
        }
        #expect(generation(try web()) == 2, "back to the same spec: same generation")

        // kill -9 and a restart lose nothing; the CLI works while the daemon is down.
        kill(daemon.processIdentifier, SIGKILL)
        daemon.waitUntilExit()
        #expect(condition(try web(), "Ready")?["status"] as? String == "True")
        daemon = try startDaemon()
        try poll("restarted daemon reconciles") {
            (try String(contentsOfFile: root + "/daemon.log", encoding: .utf8)).components(separatedBy: "reconciled Application/default/web").count >= 4
        }
        object = try web()
        #expect(generation(object) == 2 && observed(object) == 2)
        #expect(condition(object, "Ready")?["status"] as? String == "True")

        // capstan reconcile: taken by the daemon, recorded as an event.
        let request = try CLITests.capstan(["reconcile", "application/web", "--state-dir", state])
        #expect(request.status == 0, "\(request.stderr)")
        #expect(try CLITests.capstan(["events", "application/web", "--state-dir", state]).stdout.contains("ReconcileRequested"))

        // Deleting the file removes the object.
        try FileManager.default.removeItem(atPath: specs + "/web.yaml")
        try poll("web deleted") { try web() == nil }

        // SIGHUP: a full re-read now; the daemon keeps running.
        kill(daemon.processIdentifier, SIGHUP)
        try poll("SIGHUP handled") { (try String(contentsOfFile: root + "/daemon.log", encoding: .utf8)).contains("SIGHUP: re-reading") }
        #expect(daemon.isRunning)

        // SIGTERM: graceful stop, exit status 0.
        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        #expect(daemon.terminationReason == .exit && daemon.terminationStatus == 0)
        #expect(try String(contentsOfFile: root + "/daemon.log", encoding: .utf8).contains(" info stopped\n"))
    }

    @Test func eventsWatchStreamsNewEvents() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try write(Self.app(), to: "web.yaml")
        let daemon = try startDaemon()
        defer { kill(daemon.processIdentifier, SIGKILL); daemon.waitUntilExit() }
        try poll("Ready=True") { condition(try web(), "Ready")?["status"] as? String == "True" }

        let output = root + "/watch.out"
        let watcher = try startWatching(["events", "-w", "--state-dir", state], into: output)
        defer { kill(watcher.processIdentifier, SIGKILL); watcher.waitUntilExit() }
        try poll("the existing event") { (try String(contentsOfFile: output, encoding: .utf8)).contains("Succeeded") }
        try FileManager.default.removeItem(atPath: specs + "/web")
        try write(Self.app(greeting: "moved"), to: "web.yaml")
        try poll("a new event streamed") { (try String(contentsOfFile: output, encoding: .utf8)).contains("SourceUnavailable") }
    }

    @Test func getWatchPrintsObjectsAsTheyChange() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try write(Self.app(), to: "web.yaml")
        let daemon = try startDaemon()
        defer { kill(daemon.processIdentifier, SIGKILL); daemon.waitUntilExit() }
        try poll("Ready=True") { condition(try web(), "Ready")?["status"] as? String == "True" }

        let output = root + "/get-watch.out"
        let watcher = try startWatching(["get", "applications", "-w", "--state-dir", state], into: output)
        defer { kill(watcher.processIdentifier, SIGKILL); watcher.waitUntilExit() }
        func lines() throws -> [String] { try String(contentsOfFile: output, encoding: .utf8).split(separator: "\n").map(String.init) }
        try poll("the table") { try lines().count == 2 }
        #expect(try lines()[0].hasPrefix("NAMESPACE"))
        #expect(try lines()[1].contains("True"))
        try write(Self.app(command: "\"broken\""), to: "web.yaml")
        try poll("a row for the change") { try lines().count == 3 && lines()[2].contains("InvalidSpec") }
        Thread.sleep(forTimeInterval: 1.2)
        #expect(try lines().count == 3, "an unchanged object is not printed again as it ages")
    }

    @Test func metricsHealthAndReadinessAreServed() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try write(Self.app(), to: "web.yaml")
        let port = LoopbackHTTP.freePort()
        let daemon = try startDaemon(metricsPort: port)
        defer { kill(daemon.processIdentifier, SIGKILL); daemon.waitUntilExit() }
        try poll("Ready=True") { condition(try web(), "Ready")?["status"] as? String == "True" }
        try poll("/readyz") { LoopbackHTTP.get(port: port, path: "/readyz")?.status == 200 }
        #expect(LoopbackHTTP.get(port: port, path: "/healthz")?.status == 200)
        var body = ""
        try poll("reconcile counters in /metrics") {
            body = LoopbackHTTP.get(port: port, path: "/metrics")?.body ?? ""
            return body.contains("capstan_resources{kind=\"application\",ready=\"true\"} 1")
                && body.contains("capstan_workqueue_depth{kind=\"application\"} 0")
        }
        #expect(body.contains("capstan_reconcile_total{kind=\"application\",result=\"success\"}"))
        #expect(body.contains("capstan_workqueue_adds_total{kind=\"application\"}"))
        #expect(body.contains("capstan_reconcile_duration_seconds_bucket"))
        #expect(body.contains("capstan_workqueue_queue_duration_seconds_count{kind=\"application\"}"), "\(body)")
        #expect(body.contains("capstan_leader 1"))
        #expect(LoopbackHTTP.get(port: port, path: "/nothing")?.status == 404)
    }

    @Test func aBusyMetricsPortIsAClearError() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try write(Self.app(), to: "web.yaml")
        let port = LoopbackHTTP.freePort()
        let first = try startDaemon(metricsPort: port)
        defer { kill(first.processIdentifier, SIGKILL); first.waitUntilExit() }
        try poll("the first daemon serves") { LoopbackHTTP.get(port: port, path: "/healthz")?.status == 200 }
        let second = try CLITests.capstan(["run", "--spec-dir", specs, "--state-dir", root + "/other-state", "--metrics-addr", "127.0.0.1:\(port)"])
        #expect(second.status == 3)
        #expect(second.stderr.contains("cannot serve on 127.0.0.1:\(port)"))
    }

    @Test func aStoreFromTheFutureIsRefused() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        try Data("this is not a database, and it must survive".utf8).write(to: URL(fileURLWithPath: state + "/capstan.db"))
        let run = try CLITests.capstan(["run", "--spec-dir", specs, "--state-dir", state])
        #expect(run.status == 2)
        #expect(run.stderr.contains("is not a healthy SQLite database"))
        #expect(try String(contentsOfFile: state + "/capstan.db", encoding: .utf8) == "this is not a database, and it must survive")
    }
}
