import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// One acting owner per state directory, faults named right, nothing outside the inventory:
/// the findings of a hostile fault session, each reproduced with the built binary.
@Suite(.serialized, .timeLimit(.minutes(5))) struct OwnershipTests: ScratchSuite {
    let scratch: Scratch

    init() throws { scratch = try Scratch("owner") }

    func capstan(_ arguments: [String]) throws -> CLITests.Run { try CLITests.capstan(arguments + ["--state-dir", state]) }

    static func app(command: String = "[python3, server.py]") -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: Application
        metadata: {name: web}
        spec:
          source: {path: web}
          command: \(command)
          ports: [{name: http, containerPort: 8080}]
          healthCheck: {http: {path: /healthz, port: http}, interval: 1s}

        """
    }

    static func deployment(name: String = "web", version: String = "1", port: Int, replicas: Int = 1) -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: Deployment
        metadata: {name: \(name)}
        spec:
          application: web
          version: "\(version)"
          replicas: \(replicas)
          port: \(port)
          env: [{name: APP_VERSION, value: "\(version)"}]

        """
    }

    /// Live processes started as instances of this test's state directory, by pid.
    func instances() -> Set<Int32> {
        var pids: Set<Int32> = []
        let marker = Array("CAPSTAN_STATE=\(state)".utf8)
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let environ = FileManager.default.contents(atPath: "/proc/\(entry)/environ"),
                  environ.split(separator: 0).contains(where: { Array($0) == marker }),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8), !stat.contains(") Z ") else { continue }
            pids.insert(pid)
        }
        return pids
    }

    func ready(_ port: Int) -> Bool { LoopbackHTTP.get(port: port, path: "/healthz")?.status == 200 }

    @Test func aSecondDaemonWithoutLeaderElectionIsRefusedNamingTheFirst() throws {
        let port = LoopbackHTTP.freePort()
        try write(Self.app() + "---\n" + Self.deployment(port: port), to: "web.yaml")
        let first = try startDaemon()
        defer { cleanUp([first]) }
        try poll("the first serves") { ready(port) }
        let second = try CLITests.capstan(["run", "--spec-dir", specs, "--state-dir", state, "--metrics-addr", "127.0.0.1:0"])
        #expect(second.status == 2)
        #expect(second.stderr.contains("in use by a daemon (pid \(first.processIdentifier)"), "\(second.stderr)")
        #expect(second.stderr.contains("--leader-elect"))
        let electing = try CLITests.capstan(["run", "--spec-dir", specs, "--state-dir", state, "--metrics-addr", "127.0.0.1:0", "--leader-elect"])
        #expect(electing.status == 2 && electing.stderr.contains("without --leader-elect"), "\(electing.stderr)")
        #expect(instances().count == 1, "one instance for replicas: 1")
        // The CLI keeps working beside it.
        #expect(try capstan(["get", "deployments"]).stdout.contains("1/1"))
    }

    @Test func aDeletedStateDirectoryStopsTheDaemonAndDownStillFindsTheInstances() throws {
        let port = LoopbackHTTP.freePort()
        try write(Self.app() + "---\n" + Self.deployment(port: port, replicas: 2), to: "web.yaml")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        try poll("2/2") { try capstan(["get", "deployments"]).stdout.contains("2/2") }
        let running = instances()
        #expect(running.count == 2)
        try FileManager.default.removeItem(atPath: state)
        let removed = Date()
        try poll("the daemon exits", seconds: 5) { !daemon.isRunning }
        #expect(Date().timeIntervalSince(removed) < 2, "stopped within a second or so (it checks every 200 ms)")
        #expect(daemon.terminationStatus != 0)
        #expect(log().contains("was deleted") && log().contains("capstan down"), "\(log())")
        #expect(instances() == running, "its instances keep running, untouched")
        let down = try capstan(["down", "--grace", "2s"])
        #expect(down.status == 0, "\(down.stderr)")
        #expect(down.stdout.contains("2 instance(s) stopped"), "\(down.stdout)")
        try poll("no instance left") { instances().isEmpty }
    }

    /// The example app as one Deployment on a free port, started and serving 1/1.
    func startServing() throws -> (daemon: Process, port: Int) {
        let port = LoopbackHTTP.freePort()
        try write(Self.app() + "---\n" + Self.deployment(port: port), to: "web.yaml")
        let daemon = try startDaemon()
        try poll("1/1") { try capstan(["get", "deployments"]).stdout.contains("1/1") }
        return (daemon, port)
    }

    @Test func anInstanceNoInventoryKnowsIsStoppedAtStartUp() throws {
        var (daemon, port) = try startServing()
        defer { cleanUp([daemon]) }
        let orphan = try #require(instances().first)
        kill(daemon.processIdentifier, SIGKILL)
        daemon.waitUntilExit()
        // What a second acting daemon or a lost database page leaves: a live instance no row knows.
        let sql = Process()
        sql.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        sql.arguments = ["python3", "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(\"DELETE FROM inventory WHERE type = 'instance'\"); c.commit()", state + "/capstan.db"]
        try sql.run()
        sql.waitUntilExit()
        #expect(sql.terminationStatus == 0)
        daemon = try startDaemon(log: "second.log")
        try poll("the unknown instance stopped") { !instances().contains(orphan) }
        try poll("a replacement serves") { ready(port) && instances().count == 1 }
        let events = try capstan(["events", "deployment/web"]).stdout
        #expect(events.contains("OrphanDeleted") && events.contains("without an inventory record"), "\(events)")
    }

    @Test func aHungInstanceIsReplaced() throws {
        let port = LoopbackHTTP.freePort()
        let app = Self.app().replacingOccurrences(of: "interval: 1s}", with: "interval: 500ms, failureThreshold: 2}")
        try write(app + "---\n" + Self.deployment(port: port), to: "web.yaml")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        try poll("serving") { ready(port) }
        let hung = try #require(instances().first)
        kill(hung, SIGSTOP)
        defer { kill(hung, SIGKILL) }
        try poll("a replacement serves", seconds: 20) { ready(port) && !instances().contains(hung) && instances().count == 1 }
        let events = try capstan(["events", "deployment/web"]).stdout
        #expect(events.contains("InstanceRestarted") && events.contains("hung"), "\(events)")
    }

    @Test func aFloodOfOutputNeverTakesMoreThanItsFilesAndLosesNoLine() throws {
        // 50 MiB/s for two seconds, then a last line, then quiet.
        let flood = "import sys, time\nchunk = ('x' * 99 + '\\n') * 10486\nstart = time.time()\nwhile time.time() - start < 2:\n    t = time.time()\n    for _ in range(5): sys.stdout.write(chunk)\n    sys.stdout.flush()\n    time.sleep(max(0, 0.1 - (time.time() - t)))\nprint('the last line', flush=True)\ntime.sleep(600)\n"
        try flood.write(toFile: specs + "/web/flood.py", atomically: true, encoding: .utf8)
        let app = Self.app(command: "[python3, flood.py]").replacingOccurrences(of: "  healthCheck: {http: {path: /healthz, port: http}, interval: 1s}\n", with: "")
        try write(app + "---\n" + Self.deployment(port: LoopbackHTTP.freePort()), to: "web.yaml")
        let metrics = LoopbackHTTP.freePort()
        let daemon = try startDaemon(["--log-max-size", "1Mi", "--log-max-files", "3", "--metrics-addr", "127.0.0.1:\(metrics)"])
        defer { cleanUp([daemon]) }
        let logs = state + "/logs/default/web"
        func usage() -> Int {
            ((try? FileManager.default.contentsOfDirectory(atPath: logs)) ?? []).reduce(0) { total, name in
                total + (((try? FileManager.default.attributesOfItem(atPath: logs + "/" + name))?[.size] as? Int) ?? 0)
            }
        }
        var largest = 0
        var answered = 0
        let deadline = Date().addingTimeInterval(30)
        var found = false
        while Date() < deadline && !found {
            largest = max(largest, usage())
            if LoopbackHTTP.get(port: metrics, path: "/healthz")?.status == 200 { answered += 1 }
            let files = (try? FileManager.default.contentsOfDirectory(atPath: logs)) ?? []
            found = files.contains { $0.hasSuffix(".log") && ((try? String(contentsOfFile: logs + "/" + $0, encoding: .utf8))?.hasSuffix("the last line\n") ?? false) }
            Thread.sleep(forTimeInterval: 0.02)
        }
        #expect(found, "the last line is in the current log")
        #expect(largest <= 3 << 20, "at most 3 files of 1 MiB: \(largest) bytes")
        #expect(largest > 2 << 20, "the files did fill: \(largest) bytes")
        #expect(answered > 20, "the daemon stayed responsive")
        let files = try FileManager.default.contentsOfDirectory(atPath: logs).sorted()
        #expect(files.count == 3, "\(files)")
        for file in files {
            let text = try String(contentsOfFile: logs + "/" + file, encoding: .utf8)
            #expect(text.hasSuffix("\n") && text.split(separator: "\n").allSatisfy { $0.count == 99 || $0 == "the last line" }, "whole lines only in \(file)")
        }
    }

    @Test func aRequestTheCLIGaveUpOnNeverRuns() throws {
        let port = LoopbackHTTP.freePort()
        try write(Self.app() + "---\n" + Self.deployment(version: "1", port: port), to: "web.yaml")
        var daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        try poll("revision 1") { LoopbackHTTP.get(port: port, path: "/version")?.body.contains("1") == true }
        try write(Self.app() + "---\n" + Self.deployment(version: "2", port: port), to: "web.yaml")
        try poll("revision 2") { LoopbackHTTP.get(port: port, path: "/version")?.body.contains("2") == true }
        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()

        let started = Date()
        let unknown = try capstan(["rollback", "deployment/web", "--to-revision", "99", "--wait", "10s"])
        #expect(unknown.status == 1 && unknown.stderr.contains("no revision 99") && unknown.stderr.contains("1, 2"), "\(unknown.stderr)")
        #expect(Date().timeIntervalSince(started) < 3, "decided by the store at once")
        let gaveUp = try capstan(["rollback", "deployment/web", "--wait", "1s"])
        #expect(gaveUp.status == 1 && gaveUp.stderr.contains("withdrawn"), "\(gaveUp.stderr)")
        let queued = try capstan(["rollback", "deployment/web", "--wait", "0"])
        #expect(queued.status == 0 && queued.stdout.contains("queued as request"), "\(queued.stdout)")
        let listed = try capstan(["requests"])
        #expect(listed.stdout.contains("rollback") && listed.stdout.contains("deployment/web"), "\(listed.stdout)")
        let id = try #require(listed.stdout.split(separator: "\n").dropFirst().first?.split(separator: " ").first.map(String.init))
        #expect(try capstan(["requests", "cancel", id]).status == 0)
        #expect(try capstan(["requests"]).stderr.contains("No requests waiting"))

        daemon = try startDaemon(log: "second.log")
        try poll("the daemon reconciled") { log("second.log").contains("reconciled Deployment/default/web") }
        Thread.sleep(forTimeInterval: 1.5)  // two rounds of the request loop
        #expect(LoopbackHTTP.get(port: port, path: "/version")?.body.contains("2") == true, "still revision 2")
        #expect(!(try capstan(["events", "deployment/web"]).stdout.contains("RollbackRequested")))
    }

    @Test func aDuplicateInANewFileChangesNothingRunning() throws {
        let (daemon, port) = try startServing()
        defer { cleanUp([daemon]) }
        let before = instances()
        // Sorts before web.yaml: the first path in order used to win.
        try write(Self.deployment(version: "9", port: LoopbackHTTP.freePort(), replicas: 3), to: "0-dup.yaml")
        try poll("held as a duplicate") { try capstan(["get", "deployments"]).stdout.contains("DuplicateObject") }
        let object = try capstan(["get", "deployment", "web", "-o", "json"]).stdout
        #expect(object.contains("\"port\": \(port)") && object.contains("\"replicas\": 1"), "\(object)")
        #expect(try capstan(["describe", "deployment", "web"]).stdout.contains("0-dup.yaml"))
        #expect(try capstan(["events", "deployment/web"]).stdout.contains("DuplicateObject"))
        Thread.sleep(forTimeInterval: 0.5)
        #expect(instances() == before, "nothing running changed")
        #expect(ready(port))
        try FileManager.default.removeItem(atPath: specs + "/0-dup.yaml")
        try poll("no longer held") { !(try capstan(["get", "deployments"]).stdout.contains("DuplicateObject")) }
    }

    @Test func aReadOnlyStateDirectoryOrAFullDiskIsCalledSo() throws {
        try write(Self.app(), to: "web.yaml")
        let daemon = try startDaemon()
        try poll("the store exists") { try capstan(["get", "app"]).stdout.contains("web") }
        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        defer { cleanUp([]) }
        // A read-only bind mount in a mount namespace of its own (root, as CI runs).
        let script = "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && exec \"$2\" run --spec-dir \"$3\" --state-dir \"$1\" --metrics-addr 127.0.0.1:0"
        let (status, output) = try Self.inMountNamespace(script, state, CLITests.binary, specs)
        if output.contains("mount:") || output.contains("unshare:") {
            if ProcessInfo.processInfo.environment["CAPSTAN_REQUIRE_INTEGRATION"] == "1" { Issue.record("cannot make a read-only mount here: \(output)") }
            return
        }
        #expect(status == 2)
        #expect(output.contains("is read-only") && !output.contains("not a healthy SQLite database") && !output.contains("move"), "\(output)")

        // A full disk: a small tmpfs, filled.
        let full = root + "/full"
        try FileManager.default.createDirectory(atPath: full, withIntermediateDirectories: true)
        let fill = "mount -t tmpfs -o size=256k tmpfs \"$1\" && (dd if=/dev/zero of=\"$1/filler\" bs=4k 2>/dev/null; true) && exec \"$2\" run --spec-dir \"$3\" --state-dir \"$1/state\" --metrics-addr 127.0.0.1:0"
        let (fullStatus, fullOutput) = try Self.inMountNamespace(fill, full, CLITests.binary, specs)
        #expect(fullStatus == 2 && fullOutput.contains("is full") && !fullOutput.contains("not a healthy"), "\(fullOutput)")
    }

    @Test func aStateDirectoryOfAnotherUserIsAPermissionProblem() throws {
        try write(Self.app(), to: "web.yaml")
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { cleanUp([]) }
        // The binary and the specs must be reachable by the other user; only the state is not.
        let (status, output) = try Self.standardError(of: "/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", CLITests.binary,
                                                                            "run", "--spec-dir", specs, "--state-dir", state, "--metrics-addr", "127.0.0.1:0"])
        if getuid() != 0 || output.contains("setpriv:") || output.contains("Permission denied") && !output.contains("capstan") {
            if ProcessInfo.processInfo.environment["CAPSTAN_REQUIRE_INTEGRATION"] == "1" && getuid() == 0 { Issue.record("cannot run as another user here: \(output)") }
            return
        }
        #expect(status == 2)
        #expect(output.contains("permission denied") && output.contains("uid 65534") && !output.contains("not a healthy"), "\(output)")
    }

    /// Runs `sh -c script` with the arguments in a mount namespace of its own; its exit status
    /// and standard error.
    static func inMountNamespace(_ script: String, _ arguments: String...) throws -> (Int32, String) {
        try standardError(of: "/usr/bin/unshare", ["-m", "sh", "-c", script, "sh"] + arguments)
    }

    /// Runs a program to its end; its exit status and standard error.
    static func standardError(of program: String, _ arguments: [String]) throws -> (Int32, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        let output = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }
}
