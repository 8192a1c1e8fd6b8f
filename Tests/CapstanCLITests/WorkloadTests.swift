import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Deployments end to end: the built binary runs real processes behind its router, and the
/// tests act on them as a user would (kill -9, edit specs, `capstan rollback`, delete files).
@Suite(.serialized, .timeLimit(.minutes(5))) struct WorkloadTests {
    let root: String
    var specs: String { root + "/specs" }
    var state: String { root + "/state" }

    init() throws {
        root = NSTemporaryDirectory() + "capstan-workload-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root + "/specs/web", withIntermediateDirectories: true)
        // The example app: a Python standard-library HTTP server.
        try FileManager.default.copyItem(atPath: CLITests.root + "/manifests/examples/apps/hello/server.py", toPath: specs + "/web/server.py")
    }

    /// Stops what a test left: the daemon, then every instance of the state directory.
    func cleanUp(_ daemon: Process?) {
        if let daemon, daemon.isRunning {
            kill(daemon.processIdentifier, SIGKILL)
            daemon.waitUntilExit()
        }
        _ = try? CLITests.capstan(["down", "--grace", "2s", "--state-dir", state])
        try? FileManager.default.removeItem(atPath: root)
    }

    static func app(name: String = "web", source: String = "source: {path: web}", command: String = "[python3, server.py]", extra: String = "") -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: Application
        metadata: {name: \(name)}
        spec:
          \(source)
          command: \(command)
          ports: [{name: http, containerPort: 8080}]
          healthCheck: {http: {path: /healthz, port: http}, interval: 1s, timeout: 1s, failureThreshold: 2}
        \(extra)

        """
    }

    static func deployment(name: String = "web", application: String = "web", version: String, port: Int, replicas: Int = 2,
                           env: String = "", deadline: String = "8s") -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: Deployment
        metadata: {name: \(name)}
        spec:
          application: \(application)
          version: "\(version)"
          replicas: \(replicas)
          port: \(port)
          env: [{name: APP_VERSION, value: "\(version)"}\(env)]
          strategy: {type: RollingUpdate, maxSurge: 1, maxUnavailable: 0}
          progressDeadline: \(deadline)

        """
    }

    func write(_ text: String, to name: String) throws {
        try text.write(toFile: specs + "/" + name, atomically: true, encoding: .utf8)
    }

    func startDaemon(_ extra: [String] = [], log name: String = "daemon.log") throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: CLITests.binary)
        process.arguments = ["run", "--spec-dir", specs, "--state-dir", state, "--resync", "1h", "--metrics-addr", "127.0.0.1:0"] + extra
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        let log = root + "/" + name
        if !FileManager.default.fileExists(atPath: log) { _ = FileManager.default.createFile(atPath: log, contents: nil) }
        let handle = FileHandle(forWritingAtPath: log)!
        handle.seekToEndOfFile()
        process.standardError = handle
        try process.run()
        return process
    }

    var daemonLog: String { (try? String(contentsOfFile: root + "/daemon.log", encoding: .utf8)) ?? "" }

    func poll(_ what: String, seconds: Double = 30, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        Issue.record("timed out waiting for \(what); daemon log:\n\(daemonLog.suffix(3000))\nevents:\n\((try? events()) ?? "")")
        throw CLITests.CLIError("timed out waiting for \(what)")
    }

    func object(_ kind: String, _ name: String = "web") throws -> [String: Any]? {
        let run = try CLITests.capstan(["get", kind, name, "-o", "json", "--state-dir", state])
        guard run.status == 0 else { return nil }
        return try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any]
    }

    func status(_ kind: String = "deployment", _ name: String = "web") throws -> [String: Any] {
        (try object(kind, name)?["status"] as? [String: Any]) ?? [:]
    }

    func condition(_ type: String, _ kind: String = "deployment", _ name: String = "web") throws -> [String: Any]? {
        (try status(kind, name)["conditions"] as? [[String: Any]])?.first { $0["type"] as? String == type }
    }

    func events() throws -> String { try CLITests.capstan(["events", "--state-dir", state]).stdout }

    /// The instances of this state directory: processes whose working directory is one of its
    /// artifacts (a release resolves to one), by pid.
    func instancePIDs() -> Set<Int32> {
        let prefix = (state as NSString).resolvingSymlinksInPath + "/artifacts/"
        var pids: Set<Int32> = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let cwd = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(entry)/cwd"),
                  cwd.hasPrefix(prefix) || cwd.hasPrefix(state + "/artifacts/") else { continue }
            // Zombies and exiting processes have no cwd link; a live one is in state R/S.
            if let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8), stat.contains(") Z ") { continue }
            pids.insert(pid)
        }
        return pids
    }

    func body(_ port: Int, _ path: String = "/version") -> String? {
        guard let response = LoopbackHTTP.get(port: port, path: path), response.status == 200 else { return nil }
        return response.body.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A client hammering the router port from a thread: new connection per request, every
    /// answer kept in order (nil: failed).
    final class Hammer: Sendable {
        let answers = Mutex([String?]())
        let failures = Mutex([String]())
        let stopped = Mutex(false)
        let done = DispatchSemaphore(value: 0)

        init(port: Int) {
            Thread.detachNewThread { [self] in
                while !stopped.withLock({ $0 }) {
                    let response = LoopbackHTTP.get(port: port, path: "/version")
                    let body = response?.status == 200 ? response?.body.trimmingCharacters(in: .whitespacesAndNewlines) : nil
                    if body == nil, failures.withLock({ $0.count }) < 5 {
                        failures.withLock { $0.append(response.map { "HTTP \($0.status)" } ?? "no response") }
                    }
                    answers.withLock { $0.append(body) }
                }
                done.signal()
            }
        }

        /// Stops; returns the answers in order.
        func stopAnswers() -> [String?] {
            stopped.withLock { $0 = true }
            done.wait()
            return answers.withLock { $0 }
        }

        func stop() -> (ok: Int, failed: Int, failures: [String]) {
            let answers = stopAnswers()
            let failed = answers.filter { $0 == nil }.count
            return (answers.count - failed, failed, failures.withLock { $0 })
        }
    }

    @Test func aDeploymentServesSelfHealsRollsOutRollsBackAndLeavesNothingBehind() throws {
        let port = LoopbackHTTP.freePort()
        var daemon: Process?
        defer { cleanUp(daemon) }
        try write(Self.app() + "---\n" + Self.deployment(version: "1", port: port), to: "web.yaml")
        // Another object, so that deleting web.yaml does not empty the directory (--allow-empty).
        try write(Self.app(name: "other"), to: "other.yaml")
        let started = Date()
        daemon = try startDaemon()

        // It answers on its router port within seconds.
        try poll("the app answers on \(port)") { body(port) == "1" }
        let firstAnswer = Date().timeIntervalSince(started)
        #expect(firstAnswer < 10, "answered after \(firstAnswer) s")
        try poll("2/2 ready") { try status()["readyReplicas"] as? Int == 2 && status()["phase"] as? String == "Succeeded" }
        let table = try CLITests.capstan(["get", "deployments", "--state-dir", state]).stdout
        #expect(table.contains("2/2") && table.contains("Succeeded") && table.contains("REVISION"), "\(table)")
        #expect(instancePIDs().count == 2)

        // kill -9 of an instance: a replacement is ready and the router serves throughout.
        let before = instancePIDs()
        let victim = before.sorted()[0]
        let hammer = Hammer(port: port)
        let killed = Date()
        kill(victim, SIGKILL)
        try poll("a replacement instance") {
            let now = instancePIDs()
            return now.count == 2 && !now.contains(victim)
        }
        try poll("the replacement is ready") { try status()["readyReplicas"] as? Int == 2 }
        let replaced = Date().timeIntervalSince(killed)
        var counts = hammer.stop()
        // The one request the victim may have been answering when it died cannot be saved by a
        // TCP router (its bytes were sent); every later one goes to the live instance.
        #expect(counts.failed <= 1, "requests failed while an instance was replaced: \(counts)")
        #expect(counts.ok > 0)
        #expect(replaced < 5, "replacement ready after \(replaced) s")
        #expect(try events().contains("InstanceRestarted"))

        // A new version rolls out with zero failed requests.
        let rollout = Hammer(port: port)
        try write(Self.app() + "---\n" + Self.deployment(version: "2", port: port), to: "web.yaml")
        try poll("version 2 rolled out") {
            try status()["version"] as? String == "2" && status()["phase"] as? String == "Succeeded" && status()["readyReplicas"] as? Int == 2
        }
        counts = rollout.stop()
        #expect(counts.failed == 0, "requests failed during the rollout: \(counts)")
        #expect(counts.ok > 10)
        #expect(body(port) == "2")
        #expect(try status()["currentRevision"] as? Int == 2)

        // A version whose health check never passes: stuck at maxUnavailable 0, deadline, rollback.
        let broken = Hammer(port: port)
        try write(Self.app() + "---\n" + Self.deployment(version: "3", port: port, env: ", {name: BIND_ADDR, value: 127.0.0.2}"), to: "web.yaml")
        try poll("rolled back", seconds: 40) { try condition("Stalled")?["reason"] as? String == "RollbackActive" }
        counts = broken.stop()
        #expect(counts.failed == 0, "the old revision kept serving: \(counts)")
        #expect(body(port) == "2")
        let rolledBack = try status()
        #expect(rolledBack["phase"] as? String == "RolledBack")
        #expect(rolledBack["version"] as? String == "2")
        #expect(rolledBack["currentRevision"] as? Int == 4, "the rollback is revision 4")
        let log = try events()
        #expect(log.contains("ProgressDeadlineExceeded") && log.contains("RolledBack"))
        try poll("the broken instance is gone") { instancePIDs().count == 2 }

        // capstan rollback to revision 1 is a new revision with revision 1's template.
        let request = try CLITests.capstan(["rollback", "deployment/web", "--to-revision", "1", "--state-dir", state])
        #expect(request.status == 0, "\(request.stderr)")
        try poll("rolled back to version 1") {
            let current = try status()
            return body(port) == "1" && current["version"] as? String == "1" && current["readyReplicas"] as? Int == 2
        }
        #expect(try status()["currentRevision"] as? Int == 5)
        let bad = try CLITests.capstan(["rollback", "deployment/web", "--to-revision", "99", "--state-dir", state])
        #expect(bad.status == 1 && bad.stderr.contains("no revision 99"), "the store knows the revisions: refused at once, \(bad.stderr)")

        // A current link and a release removed behind Capstan's back are restored (at the next
        // reconcile: a resync, an event, or as here a request).
        let releases = state + "/deployments/default/web"
        let current = try FileManager.default.destinationOfSymbolicLink(atPath: releases + "/current")
        try FileManager.default.removeItem(atPath: releases + "/current")
        try FileManager.default.removeItem(atPath: releases + "/" + current)
        #expect(try CLITests.capstan(["reconcile", "deployment/web", "--state-dir", state]).status == 0)
        try poll("drift corrected") {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: releases + "/current")) == current
                && FileManager.default.fileExists(atPath: releases + "/" + current + "/server.py")
        }
        // The event is recorded when that reconcile ends, a moment after the files are back.
        try poll("the DriftCorrected event") { try events().contains("DriftCorrected") }

        // Deleting the spec file leaves no process, no listener and no release behind.
        try FileManager.default.removeItem(atPath: specs + "/web.yaml")
        try poll("everything removed") {
            instancePIDs().isEmpty && LoopbackHTTP.get(port: port, path: "/") == nil
                && !FileManager.default.fileExists(atPath: state + "/deployments/default/web")
        }
        #expect(try events().contains("OrphanDeleted"))
        #expect(FileManager.default.fileExists(atPath: state + "/logs/default/web"), "logs are kept")
    }

    @Test func aRestartedDaemonAdoptsItsInstances() throws {
        let port = LoopbackHTTP.freePort()
        var daemon: Process?
        defer { cleanUp(daemon) }
        try write(Self.app() + "---\n" + Self.deployment(version: "1", port: port), to: "web.yaml")
        daemon = try startDaemon()
        try poll("2/2 ready") { try status()["readyReplicas"] as? Int == 2 }
        let before = instancePIDs().sorted()
        #expect(before.count == 2)

        // kill -9 the daemon: the instances keep running; the router port closes with it.
        kill(daemon!.processIdentifier, SIGKILL)
        daemon!.waitUntilExit()
        #expect(Set(instancePIDs()) == Set(before), "instances outlive the daemon")
        // One instance dies while no daemon runs.
        kill(before[0], SIGKILL)
        try poll("the instance is gone") { !instancePIDs().contains(before[0]) }

        daemon = try startDaemon()
        try poll("serving again") { body(port) == "1" }
        try poll("two instances again") { instancePIDs().count == 2 }
        let after = instancePIDs()
        #expect(after.contains(before[1]), "the live instance is adopted, not restarted")
        #expect(!after.contains(before[0]))
        #expect(daemonLog.contains("adopted 1 running instance(s), restarted 1"))
        try poll("2/2 ready") { try status()["readyReplicas"] as? Int == 2 }
        #expect(instancePIDs().count == 2, "no duplicates")
    }

    @Test func twoDaemonsOnOneStateDirectoryElectOneLeaderAndHandOver() throws {
        let port = LoopbackHTTP.freePort()
        var daemons: [String: Process] = [:]
        defer {
            for daemon in daemons.values where daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) }
            cleanUp(nil)
        }
        try write(Self.app() + "---\n" + Self.deployment(version: "1", port: port), to: "web.yaml")
        let election = ["--leader-elect", "--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "500ms"]
        func log(_ name: String) -> String { (try? String(contentsOfFile: root + "/\(name).log", encoding: .utf8)) ?? "" }
        func leaders() -> [String] { ["a", "b", "c"].filter { log($0).contains("leading: this daemon acts now") } }
        for name in ["a", "b"] { daemons[name] = try startDaemon(election + ["--identity", name], log: "\(name).log") }
        try poll("one leader") { leaders().count == 1 }
        try poll("the app answers") { body(port) == "1" }
        Thread.sleep(forTimeInterval: 1.5)
        #expect(leaders().count == 1, "exactly one leader: \(leaders())")
        let first = leaders()[0], second = first == "a" ? "b" : "a"
        let leases = try CLITests.capstan(["get", "leases", "--state-dir", state]).stdout
        #expect(leases.contains(first) && leases.contains("valid"), "\(leases)")
        let pids = instancePIDs()
        #expect(pids.count == 2, "the follower started nothing: \(pids)")

        // kill -9 the leader: the follower leads within the lease duration (plus a retry).
        let killed = Date()
        kill(daemons[first]!.processIdentifier, SIGKILL)
        daemons[first]!.waitUntilExit()
        try poll("the follower leads", seconds: 10) { log(second).contains("leading: this daemon acts now") }
        let failover = Date().timeIntervalSince(killed)
        #expect(failover < 3 + 0.5 + 1, "failover took \(failover) s")
        try poll("serving again") { body(port) == "1" }
        #expect(instancePIDs() == pids, "the instances were adopted, not duplicated")

        // SIGTERM the leader while another follows: it releases the lease; the handoff is quick.
        daemons["c"] = try startDaemon(election + ["--identity", "c"], log: "c.log")
        try poll("c follows") { log("c").contains("waiting to lead as c") }
        Thread.sleep(forTimeInterval: 1)
        let stopped = Date()
        kill(daemons[second]!.processIdentifier, SIGTERM)
        try poll("c leads", seconds: 10) { log("c").contains("leading: this daemon acts now") }
        let handoff = Date().timeIntervalSince(stopped)
        daemons[second]!.waitUntilExit()
        #expect(daemons[second]!.terminationStatus == 0)
        #expect(log(second).contains("released lease"))
        #expect(handoff < 1.5, "graceful handoff took \(handoff) s")
        try poll("serving under c") { body(port) == "1" }
        #expect(instancePIDs() == pids)
    }

    /// What a deleted object had is kept when it carried `capstan.dev/prune: disabled` (always)
    /// or the daemon runs with `--prune=false` (until a daemon that prunes sweeps at start-up).
    @Test func pruningCanBeTurnedOffPerObjectAndForTheDaemon() throws {
        let kept = LoopbackHTTP.freePort(), web = LoopbackHTTP.freePort()
        var daemon: Process?
        defer { cleanUp(daemon) }
        try write(Self.app(), to: "app.yaml")
        try write(Self.deployment(name: "kept", version: "1", port: kept, replicas: 1)
            .replacingOccurrences(of: "metadata: {name: kept}", with: "metadata: {name: kept, annotations: {capstan.dev/prune: disabled}}"), to: "kept.yaml")
        try write(Self.deployment(name: "web", version: "1", port: web, replicas: 1), to: "web.yaml")
        daemon = try startDaemon()
        try poll("both answer") { body(kept) == "1" && body(web) == "1" }

        // The annotated Deployment's spec goes: its instance and port stay (a Normal event).
        try FileManager.default.removeItem(atPath: specs + "/kept.yaml")
        try poll("the deletion is reconciled") { try events().contains("PruneSkipped") }
        #expect(try events().contains("capstan.dev/prune: disabled"))
        #expect(body(kept) == "1", "still served")
        #expect(instancePIDs().count == 2)

        // With --prune=false, a deleted Deployment and Application stay, with Warning events.
        kill(daemon!.processIdentifier, SIGTERM)
        daemon!.waitUntilExit()
        daemon = try startDaemon(["--prune=false"])
        try poll("serving again") { body(web) == "1" && body(kept) == "1" }
        try FileManager.default.removeItem(atPath: specs + "/web.yaml")
        try FileManager.default.removeItem(atPath: specs + "/app.yaml")
        // An emptied spec directory deletes nothing without --allow-empty.
        try poll("the empty directory is refused") { daemonLog.contains("start with --allow-empty") }
        #expect(try object("application") != nil)
        try write(Self.app(name: "other"), to: "other.yaml")
        try poll("dry-run events") {
            let log = try events()
            return log.contains("deployment deleted; --prune=false") && log.contains("application deleted; --prune=false")
        }
        #expect(body(web) == "1" && body(kept) == "1", "nothing removed")
        #expect(FileManager.default.fileExists(atPath: state + "/deployments/default/web"))

        // A daemon that prunes sweeps at start-up: web goes, the annotated one stays, and so does
        // the artifact its release runs.
        kill(daemon!.processIdentifier, SIGTERM)
        daemon!.waitUntilExit()
        daemon = try startDaemon()
        try poll("web removed by the start-up sweep") {
            !FileManager.default.fileExists(atPath: state + "/deployments/default/web") && body(kept) == "1"
        }
        #expect(instancePIDs().count == 1)
        #expect(try events().contains("OrphanDeleted"))
        #expect(FileManager.default.fileExists(atPath: state + "/deployments/default/kept"))
        #expect(body(kept) == "1")
    }

    @Test func aGitSourceChecksOutAndBuildsEachTag() throws {
        // A real bare repository with two tagged versions.
        let work = root + "/repo-work", bare = root + "/repo.git"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: specs + "/web/server.py", toPath: work + "/server.py")
        func git(_ arguments: [String], in directory: String) throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"] + arguments
            process.currentDirectoryURL = URL(fileURLWithPath: directory)
            process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
            process.standardError = FileHandle(forWritingAtPath: "/dev/null")
            try process.run()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { throw CLITests.CLIError("git \(arguments) failed") }
        }
        try git(["init", "-q"], in: work)
        for (tag, message) in [("v1", "one"), ("v2", "two")] {
            try message.write(toFile: work + "/message.txt", atomically: true, encoding: .utf8)
            try git(["add", "."], in: work)
            try git(["commit", "-q", "-m", tag], in: work)
            try git(["tag", tag], in: work)
        }
        try git(["clone", "-q", "--bare", work, bare], in: root)

        let port = LoopbackHTTP.freePort()
        var daemon: Process?
        defer { cleanUp(daemon) }
        let app = Self.app(source: "source: {git: {url: \"\(bare)\"}}",
                           command: "[sh, -c, 'GREETING=\"$(cat built.txt)\" exec python3 server.py']",
                           extra: "  build: {command: [sh, -c, 'echo building; tr a-z A-Z < message.txt > built.txt'], timeout: 1m}")
        try write(app + "---\n" + Self.deployment(version: "v1", port: port, replicas: 1), to: "web.yaml")
        daemon = try startDaemon()
        try poll("v1 answers") { body(port, "/")?.hasPrefix("ONE") == true }
        try write(app + "---\n" + Self.deployment(version: "v2", port: port, replicas: 1), to: "web.yaml")
        try poll("v2 answers") { body(port, "/")?.hasPrefix("TWO") == true }
        try poll("the Application lists both artifacts") {
            let artifacts = (try status("application")["artifacts"] as? [[String: Any]]) ?? []
            return Set(artifacts.compactMap { $0["version"] as? String }) == ["v1", "v2"]
        }
        let artifacts = (try status("application")["artifacts"] as? [[String: Any]]) ?? []
        #expect(artifacts.allSatisfy { ($0["digest"] as? String)?.hasPrefix("git:") == true })
        // The artifact is read-only.
        let artifact = state + "/artifacts/default/web/v2"
        let mode = (try FileManager.default.attributesOfItem(atPath: artifact + "/built.txt")[.posixPermissions] as? Int) ?? 0o777
        #expect(mode & 0o222 == 0, "no write permission (mode \(String(mode, radix: 8)))")
        #expect(FileManager.default.fileExists(atPath: artifact + ".build.log"))
        // A tag that does not exist: SourceUnavailable, and v2 keeps serving.
        try write(app + "---\n" + Self.deployment(version: "v9", port: port, replicas: 1), to: "web.yaml")
        try poll("SourceUnavailable") { try condition("Stalled")?["reason"] as? String == "SourceUnavailable" }
        #expect((try condition("Stalled")?["message"] as? String)?.contains("v9") == true)
        #expect(body(port, "/")?.hasPrefix("TWO") == true)
    }

    @Test func badInputGivesAClearConditionAndDisturbsNothingElse() throws {
        let goodPort = LoopbackHTTP.freePort()
        // A port someone else holds.
        let (taken, takenPort) = LoopbackHTTP.bound()
        defer { close(taken) }

        var daemon: Process?
        defer { cleanUp(daemon) }
        let specsText = [
            Self.app() + "---\n" + Self.deployment(version: "1", port: goodPort, replicas: 1),
            Self.app(name: "nocmd", command: "[does-not-exist-anywhere]") + "---\n" + Self.deployment(name: "nocmd", application: "nocmd", version: "1", port: LoopbackHTTP.freePort(), replicas: 1),
            Self.deployment(name: "taken", version: "1", port: takenPort, replicas: 1),
            Self.app(name: "nobuild", extra: "  build: {command: [sh, -c, 'echo compiling main.c; echo \"main.c:3: error: expected ;\" >&2; exit 2']}")
                + "---\n" + Self.deployment(name: "nobuild", application: "nobuild", version: "1", port: LoopbackHTTP.freePort(), replicas: 1),
            Self.app(name: "deaf").replacingOccurrences(of: "port: http}", with: "port: 1}") + "---\n"
                + Self.deployment(name: "deaf", application: "deaf", version: "1", port: LoopbackHTTP.freePort(), replicas: 1),
            Self.app(name: "hungry", command: "[python3, -c, 'import time; x = bytearray(200 * 1024 * 1024); time.sleep(60)']", extra: "  resources: {memory: 64Mi}")
                .replacingOccurrences(of: "  healthCheck: {http: {path: /healthz, port: http}, interval: 1s, timeout: 1s, failureThreshold: 2}\n", with: "")
                + "---\n" + Self.deployment(name: "hungry", application: "hungry", version: "1", port: LoopbackHTTP.freePort(), replicas: 1),
        ]
        for (index, text) in specsText.enumerated() { try write(text, to: "spec\(index).yaml") }
        daemon = try startDaemon()

        try poll("the good one serves") {
            let ready = try status()["readyReplicas"] as? Int
            return body(goodPort) == "1" && ready == 1
        }
        try poll("a missing command") { (try condition("Ready", "deployment", "nocmd")?["message"] as? String)?.contains("not found") == true }
        try poll("a taken port") { try condition("Stalled", "deployment", "taken")?["reason"] as? String == "PortUnavailable" }
        #expect((try condition("Stalled", "deployment", "taken")?["message"] as? String)?.contains("\(takenPort)") == true)
        try poll("a failed build") { try condition("Stalled", "application", "nobuild")?["reason"] as? String == "BuildFailed" }
        #expect((try condition("Stalled", "application", "nobuild")?["message"] as? String)?.contains("expected ;") == true, "the build log's last lines")
        try poll("the deployment of a failed build") { try condition("Stalled", "deployment", "nobuild")?["reason"] as? String == "BuildFailed" }
        try poll("a health check nothing answers") {
            (try condition("Ready", "deployment", "deaf")?["message"] as? String)?.contains("health check failed") == true
        }
        try poll("an app over its memory limit") {
            let events = try CLITests.capstan(["events", "deployment/hungry", "--state-dir", state]).stdout
            return events.contains("InstanceRestarted") && events.contains("exited with status 1")
        }
        let log = try events()
        #expect(log.contains("StartFailed"))
        #expect(log.contains("PortUnavailable"))
        // Nothing else was disturbed: the good Deployment is ready, its instance never restarted.
        #expect(try condition("Ready")?["status"] as? String == "True")
        #expect(!(try CLITests.capstan(["events", "deployment/web", "--state-dir", state]).stdout.contains("InstanceRestarted")))
        #expect(body(goodPort) == "1")
    }
}

extension WorkloadTests {
    static func blueGreen(version: String, port: Int, previewPort: Int) -> String {
        deployment(version: version, port: port).replacingOccurrences(
            of: "strategy: {type: RollingUpdate, maxSurge: 1, maxUnavailable: 0}",
            with: "strategy: {type: BlueGreen, blueGreen: {previewPort: \(previewPort), autoPromote: false, scaleDownDelay: 2s}}")
    }

    /// BlueGreen on real processes: the preview port serves the new colour before the switch;
    /// through `capstan promote`, a client on the port sees no failed request, and after the
    /// first answer of the new colour never the old one again; the old colour goes after its delay.
    @Test func blueGreenSwitchesTheRouterWithoutAFailedRequest() throws {
        let port = LoopbackHTTP.freePort(), preview = LoopbackHTTP.freePort()
        var daemon: Process?
        defer { cleanUp(daemon) }
        try write(Self.app() + "---\n" + Self.blueGreen(version: "1", port: port, previewPort: preview), to: "web.yaml")
        daemon = try startDaemon()
        try poll("version 1 answers") { body(port) == "1" }
        #expect(body(preview) == nil, "no preview port without a preview")
        let old = instancePIDs()

        try write(Self.app() + "---\n" + Self.blueGreen(version: "2", port: port, previewPort: preview), to: "web.yaml")
        try poll("the preview answers with version 2") { body(preview) == "2" }
        try poll("awaiting promotion") { try condition("Reconciling")?["reason"] as? String == "AwaitingPromotion" }
        #expect(body(port) == "1", "the port still serves the active colour")
        #expect(instancePIDs().isSuperset(of: old) && instancePIDs().count == 4, "both colours at full size")

        let recorder = Hammer(port: port)
        Thread.sleep(forTimeInterval: 0.3)
        let promote = try CLITests.capstan(["promote", "deployment/web", "--state-dir", state])
        #expect(promote.status == 0, "\(promote.stdout)\(promote.stderr)")
        try poll("version 2 on the port") { body(port) == "2" }
        Thread.sleep(forTimeInterval: 0.3)
        let answers = recorder.stopAnswers()
        #expect(!answers.contains(nil), "no failed request: \(answers.filter { $0 == nil }.count) of \(answers.count)")
        let first = try #require(answers.firstIndex(of: "2"))
        #expect(answers[first...].allSatisfy { $0 == "2" }, "after the switch only the new colour answers")
        #expect(answers[..<first].allSatisfy { $0 == "1" } && first > 0)
        try poll("the old colour stopped after scaleDownDelay") { instancePIDs().isDisjoint(with: old) && instancePIDs().count == 2 }
        try poll("the preview port closed") { body(preview) == nil }
        #expect(try events().contains("TrafficSwitched"))
    }
}

extension WorkloadTests {
    /// Scaling 4 → 1 an app that ignores SIGTERM: the three stops run side by side, so it
    /// costs one grace period (10 s), not three.
    @Test func scalingDownAnAppThatIgnoresSIGTERMTakesOneGracePeriod() throws {
        let stubborn = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsignal.signal = lambda *args: None\nimport server\nserver.main()\n"
        try stubborn.write(toFile: specs + "/web/stubborn.py", atomically: true, encoding: .utf8)
        let port = LoopbackHTTP.freePort()
        let app = Self.app(command: "[python3, stubborn.py]")
        try write(app + "---\n" + Self.deployment(version: "1", port: port, replicas: 4), to: "web.yaml")
        var daemon: Process?
        defer { cleanUp(daemon) }
        daemon = try startDaemon()
        try poll("4/4 ready") { try status()["readyReplicas"] as? Int == 4 }
        let started = Date()
        try write(app + "---\n" + Self.deployment(version: "1", port: port, replicas: 1), to: "web.yaml")
        try poll("one instance left", seconds: 40) { instancePIDs().count == 1 }
        let took = Date().timeIntervalSince(started)
        #expect(took > 9, "the grace period was waited out: \(took) s")
        #expect(took < 18, "one grace period, not three: \(took) s")
        #expect(body(port) == "1")
    }

    /// A router port held by someone else (the old leader, a moment after a handoff) is served
    /// within a second of being freed, and holds no rollout meanwhile.
    @Test func aBusyRouterPortIsServedWithinASecondOfBeingFreed() throws {
        let port = LoopbackHTTP.freePort()
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        var one: Int32 = 1
        setsockopt(holder, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        #expect(bound == 0 && listen(holder, 8) == 0)
        try write(Self.app() + "---\n" + Self.deployment(version: "1", port: port), to: "web.yaml")
        var daemon: Process?
        defer { cleanUp(daemon) }
        daemon = try startDaemon()
        try poll("the instances run and are ready without their port") { try status()["readyReplicas"] as? Int == 2 }
        try poll("PortUnavailable said") { try condition("Stalled")?["reason"] as? String == "PortUnavailable" }
        close(holder)
        let freed = Date()
        try poll("served", seconds: 10) { body(port) == "1" }
        let took = Date().timeIntervalSince(freed)
        #expect(took < 1.5, "served \(took) s after the port was freed")
        try poll("no longer stalled") { try condition("Stalled") == nil && status()["phase"] as? String == "Succeeded" }
    }
}
