import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// What a newcomer meets in the first minutes: the README's commands as written, relative
/// paths, held objects, a quiet stop, kubectl's habits in `get`, and the ordinary mistakes.
@Suite(.serialized, .timeLimit(.minutes(4))) struct FirstMinutesTests: ScratchSuite {
    let scratch: Scratch

    init() throws { scratch = try Scratch("first") }

    func capstan(_ arguments: [String], in directory: String? = nil) throws -> CLITests.Run {
        try CLITests.capstan(arguments, in: directory ?? root)
    }

    static func app(name: String = "web", command: String = "[python3, server.py]", extra: String = "") -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: Application
        metadata: {name: \(name)}
        spec:
          source: {path: web}
          command: \(command)
          ports: [{name: http, containerPort: 8080}]
          healthCheck: {http: {path: /healthz, port: http}, interval: 1s}
        \(extra)

        """
    }

    static func deployment(name: String = "web", application: String = "web", port: Int, replicas: Int = 1) -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: Deployment
        metadata: {name: \(name)}
        spec: {application: \(application), version: "1.0.0", replicas: \(replicas), port: \(port)}

        """
    }

    // MARK: - The README

    /// The README's set-up block: its command lines, comments and all.
    static func readmeSetUp() throws -> [String] {
        let readme = try String(contentsOfFile: CLITests.root + "/README.md", encoding: .utf8)
        guard let heading = readme.range(of: "## Set up on a fresh machine"),
              let open = readme.range(of: "```sh\n", range: heading.upperBound..<readme.endIndex),
              let close = readme.range(of: "```", range: open.upperBound..<readme.endIndex) else {
            throw CLITests.CLIError("README.md has no ```sh block under \"## Set up on a fresh machine\"")
        }
        return readme[open.upperBound..<close.lowerBound].split(separator: "\n").map(String.init).filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
    }

    @Test func theReadmeHasTwoSetUpCommandsAndCIRunsTheSecond() throws {
        let lines = try Self.readmeSetUp()
        #expect(lines.count == 2, "\(lines)")
        let first = lines[0].components(separatedBy: "#")[0]
        #expect(first.contains("swift build") && first.contains(" run ") && first.contains("manifests/examples"), "\(lines[0])")
        #expect(lines[1].components(separatedBy: "#")[0].trimmingCharacters(in: .whitespaces) == "hack/test")
        let ci = try String(contentsOfFile: CLITests.root + "/.ci/run", encoding: .utf8)
        #expect(ci.contains("exec hack/test"), "CI runs the README's test command")
    }

    /// The README's first command, as written, in a copy of the repository's `manifests/`
    /// with no `--state-dir` (the default `./.capstan`, relative): the example answers,
    /// `capstan get deployments` says 2/2, and Ctrl-C stops it quietly with exit 0.
    @Test func theReadmeFirstCommandServesTheExampleAndStopsQuietly() throws {
        let directory = root + "/fresh"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: CLITests.root + "/manifests", toPath: directory + "/manifests")
        let line = try Self.readmeSetUp()[0]
        let parts = line.components(separatedBy: "#")
        let url = parts.dropFirst().joined(separator: "#").split(separator: " ").first { $0.hasPrefix("http://") }.map(String.init)
        let command = parts[0].components(separatedBy: "&&").first { $0.contains(" run ") }?.split(separator: " ").map(String.init) ?? []
        guard let url, command.count > 1, command[0].hasSuffix("capstan"), let portText = url.split(separator: ":").last?.split(separator: "/").first,
              let port = Int(portText) else {
            throw CLITests.CLIError("cannot read the command and URL from the README's first line: \(line)")
        }
        let started = Date()
        // The command as written; only the binary is the one this suite tests.
        let daemon = try start(Array(command.dropFirst()), in: directory, log: "readme.log")
        defer { cleanUp([daemon], stateDirectories: [directory + "/.capstan"]) }
        var answer = ""
        try poll("the example to answer on \(url)", seconds: 20, log: "readme.log") {
            answer = LoopbackHTTP.get(port: port, path: "/")?.body ?? ""
            return answer.contains("Hello from Capstan")
        }
        let elapsed = Date().timeIntervalSince(started)
        #expect(elapsed < 10, "answered after \(elapsed) s")
        try poll("2/2 in capstan get deployments", log: "readme.log") {
            try capstan(["get", "deployments"], in: directory).stdout.contains("2/2")
        }
        // The Application follows its Deployments' readiness (each one's status change wakes
        // it, not only those a Canary or a rotation refers to).
        try poll("both of the Application's Deployments ready in its status", log: "readme.log") {
            let json = try capstan(["get", "applications", "-o", "json"], in: directory).stdout
            let items = (try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])?["items"] as? [[String: Any]]
            let status = items?.first?["status"] as? [String: Any]
            let count = status?["deploymentCount"] as? Int
            return count == 2 && status?["readyDeploymentCount"] as? Int == count
        }
        #expect(FileManager.default.fileExists(atPath: directory + "/.capstan/capstan.db"), "the default state directory is ./.capstan")
        let link = try FileManager.default.destinationOfSymbolicLink(atPath: directory + "/.capstan/deployments/default/hello/releases/1")
        #expect(link.hasPrefix("/"), "release links are absolute: \(link)")

        kill(daemon.processIdentifier, SIGINT)
        daemon.waitUntilExit()
        #expect(daemon.terminationReason == .exit && daemon.terminationStatus == 0)
        let output = log("readme.log")
        #expect(!output.contains(" error "), "no error line on a clean stop:\n\(output)")
        #expect(!output.contains("error capstan"), "\(output)")
        #expect(LoopbackHTTP.get(port: port, path: "/") == nil, "--down-on-exit stopped the instances")
    }

    // MARK: - Paths

    /// A relative `--state-dir`, used from another working directory, and a release link an
    /// older build wrote relative (broken): the link is repaired with a DriftCorrected event.
    @Test func relativeStateDirectoriesWorkAndBrokenLinksAreRepaired() throws {
        let port = LoopbackHTTP.freePort()
        try write(Self.app() + "---\n" + Self.deployment(port: port), to: "web.yaml")
        let work = root + "/work"
        try FileManager.default.createDirectory(atPath: work + "/elsewhere", withIntermediateDirectories: true)
        var daemon = try start(["run", "--spec-dir", "../specs", "--state-dir", "st", "--resync", "1h", "--metrics-addr", "127.0.0.1:0"], in: work)
        defer { cleanUp([daemon], stateDirectories: [work + "/st"]) }
        try poll("the app answers") { LoopbackHTTP.get(port: port, path: "/healthz")?.status == 200 }
        // Another working directory, another relative path to the same state.
        try poll("1/1 read from elsewhere") { try capstan(["get", "deployments", "--state-dir", "../st"], in: work + "/elsewhere").stdout.contains("1/1") }
        let none = try capstan(["get", "deployments"], in: work + "/elsewhere")
        #expect(none.status == 1 && none.stderr.contains("no state store at \(work)/elsewhere/.capstan/capstan.db"), "\(none.stderr)")

        kill(daemon.processIdentifier, SIGTERM)
        daemon.waitUntilExit()
        #expect(try capstan(["down", "--state-dir", "st"], in: work).status == 0)
        let release = work + "/st/deployments/default/web/releases/1"
        let target = try FileManager.default.destinationOfSymbolicLink(atPath: release)
        #expect(target == work + "/st/artifacts/default/web/1.0.0")
        // What an older build wrote: the state directory's relative path as the target.
        try FileManager.default.removeItem(atPath: release)
        try FileManager.default.createSymbolicLink(atPath: release, withDestinationPath: "st/artifacts/default/web/1.0.0")

        daemon = try start(["run", "--spec-dir", "../specs", "--state-dir", "st", "--resync", "1h", "--metrics-addr", "127.0.0.1:0"], in: work, log: "second.log")
        try poll("the app answers again", log: "second.log") { LoopbackHTTP.get(port: port, path: "/healthz")?.status == 200 }
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: release) == target)
        let events = try capstan(["events", "deployment/web", "--state-dir", work + "/st"]).stdout
        #expect(events.contains("DriftCorrected") && events.contains("release 1 restored"), "\(events)")
    }

    // MARK: - Defaults

    @Test func leaseTimingsFollowTheLeaseDuration() throws {
        try write(Self.app(), to: "web.yaml")
        let daemon = try startDaemon(["--leader-elect", "--lease-duration", "4s"])
        defer { cleanUp([daemon]) }
        try poll("leading with a 4s lease") { log().contains("leading: this daemon acts now") }
        let conflict = try capstan(["run", "--spec-dir", specs, "--state-dir", state, "--leader-elect", "--lease-duration", "4s", "--renew-deadline", "5s"])
        #expect(conflict.status != 0)
        #expect(conflict.stderr.contains("--lease-duration 4s") && conflict.stderr.contains("--renew-deadline 5s"), "\(conflict.stderr)")
    }

    // MARK: - Holds

    /// `capstan diff` on a copy of the running spec directory: nothing but a summary and exit 0
    /// while it is the same; once edited, exactly its changes (field by field, with the rollout
    /// and scaling they bring), the deletion, the new object and the invalid document, exit 1.
    @Test func diffListsExactlyTheChangesOfACopy() throws {
        let port = LoopbackHTTP.freePort(), other = LoopbackHTTP.freePort()
        try write(Self.app() + "---\n" + Self.deployment(port: port), to: "web.yaml")
        try write(Self.deployment(name: "api", port: other), to: "api.yaml")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        try poll("both Deployments read") { try capstan(["get", "deployments", "--state-dir", state]).stdout.contains("api") }
        let copy = root + "/copy"
        try FileManager.default.copyItem(atPath: specs, toPath: copy)
        let same = try capstan(["diff", copy, "--state-dir", state])
        #expect(same.status == 0 && same.stdout == "Summary: 3 unchanged\n", "\(same.stdout)\(same.stderr)")

        try (Self.app(command: "[python3, server.py, --quiet]") + "---\n" + Self.deployment(port: port, replicas: 2))
            .write(toFile: copy + "/web.yaml", atomically: true, encoding: .utf8)
        try FileManager.default.removeItem(atPath: copy + "/api.yaml")
        try Self.deployment(name: "extra", port: LoopbackHTTP.freePort()).write(toFile: copy + "/extra.yaml", atomically: true, encoding: .utf8)
        try "apiVersion: capstan.dev/v1alpha1\nkind: Deployment\nmetadata: {name: broken}\nspec: {replicas: many}\n".write(toFile: copy + "/broken.yaml", atomically: true, encoding: .utf8)
        let changed = try capstan(["diff", copy, "--state-dir", state])
        #expect(changed.status == 1, "\(changed.stderr)")
        let lines = changed.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains("Application/default/web: changed (generation 1 -> 2)"), "\(changed.stdout)")
        #expect(lines.contains("  ~ spec.command[2]: \"--quiet\"") || lines.contains("  + spec.command[2]: \"--quiet\""), "\(changed.stdout)")
        #expect(lines.contains("  => deployment/web rolls out a new revision"), "\(changed.stdout)")
        #expect(lines.contains("Deployment/default/web: changed (generation 1 -> 2)") && lines.contains("  ~ spec.replicas: 1 -> 2")
                && lines.contains("  => replicas 1 -> 2"), "\(changed.stdout)")
        #expect(lines.contains("Deployment/default/api: deleted (no file holds it)"), "\(changed.stdout)")
        #expect(lines.contains { $0.hasPrefix("Deployment/default/extra: created (from \(copy)/extra.yaml:1:1)") }, "\(changed.stdout)")
        #expect(lines.contains { $0.contains("broken") && $0.contains("invalid (not applied)") }, "\(changed.stdout)")
        #expect(lines.last == "Summary: 1 created, 2 changed, 1 deleted, 1 invalid", "\(changed.stdout)")
        // Nothing was acted on: the daemon still runs what it read.
        #expect(try capstan(["get", "deployments", "--state-dir", state]).stdout.contains("api"))
        let missing = try capstan(["diff", root + "/nosuch", "--state-dir", state])
        #expect(missing.status == 2 && missing.stderr.contains("does not exist"), "\(missing.stderr)")
    }

    /// An emptied spec directory deletes nothing and says so where users look: STATUS Held,
    /// REASON SourceEmpty, a condition with what to do, one Warning event, a warning line.
    @Test func anEmptiedDirectoryShowsItsObjectsAsHeld() throws {
        try write(Self.app(), to: "web.yaml")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        try poll("web ready") { try capstan(["get", "app", "--state-dir", state]).stdout.contains("True") }
        try FileManager.default.removeItem(atPath: specs + "/web.yaml")
        try poll("web held") { try capstan(["get", "app", "--state-dir", state]).stdout.contains("Held") }
        let table = try capstan(["get", "app", "--state-dir", state]).stdout
        #expect(table.contains("SourceEmpty"), "\(table)")
        let describe = try capstan(["describe", "app", "web", "--state-dir", state]).stdout
        #expect(describe.contains("Held") && describe.contains("--allow-empty"), "\(describe)")
        try poll("the condition") {
            try capstan(["describe", "app", "web", "--state-dir", state]).stdout.split(separator: "\n").contains {
                $0.contains("Stalled") && $0.contains("True") && $0.contains("SourceEmpty")
            }
        }
        Thread.sleep(forTimeInterval: 0.5)
        // One event, however often the directory is read.
        kill(daemon.processIdentifier, SIGHUP)
        try poll("SIGHUP read") { log().contains("SIGHUP: re-reading") }
        Thread.sleep(forTimeInterval: 0.5)
        let events = try capstan(["events", "application/web", "--state-dir", state]).stdout
        let held = events.split(separator: "\n").filter { $0.contains("SourceEmpty") }
        #expect(held.count == 1 && held[0].contains("Warning") && held[0].contains(" 1 "), "\(events)")
        #expect(log().contains(" warning the spec directory"), "\(log())")

        // Putting the file back clears the hold.
        try write(Self.app(), to: "web.yaml")
        try poll("no longer held") {
            let table = try capstan(["get", "app", "--state-dir", state]).stdout
            return table.contains("Ready") && !table.contains("Held")
        }
    }

    // MARK: - get

    /// kubectl's habits: `get all` and `get capstan` print a table per kind with objects;
    /// STATUS is one word that agrees with the conditions; the message is in -o wide; an
    /// empty answer is `No resources found` on standard error, on its own line.
    @Test func getSpeaksKubectl() throws {
        try write(Self.app() + "---\n" + Self.deployment(name: "orphan", application: "nosuch", port: LoopbackHTTP.freePort()), to: "web.yaml")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        try poll("orphan stalled") { try capstan(["get", "deployments", "--state-dir", state]).stdout.contains("Stalled") }
        let deployments = try capstan(["get", "deployments", "--state-dir", state]).stdout
        #expect(deployments.contains("ApplicationNotFound") && !deployments.contains("Succeeded"), "\(deployments)")
        let apps = try capstan(["get", "app", "--state-dir", state]).stdout
        #expect(apps.contains("Ready") && !apps.contains("template valid"), "STATUS is short: \(apps)")
        #expect(try capstan(["get", "app", "-o", "wide", "--state-dir", state]).stdout.contains("template valid"))
        for all in ["all", "capstan"] {
            let run = try capstan(["get", all, "--state-dir", state])
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.stdout.contains("application/web") && run.stdout.contains("deployment/orphan"), "\(run.stdout)")
            #expect(!run.stdout.contains("canary/"), "kinds without objects print no table")
        }
        let none = try capstan(["get", "canaries", "--state-dir", state])
        #expect(none.status == 0 && none.stdout.isEmpty)
        #expect(none.stderr == "No resources found.\n", "\(none.stderr)")
        #expect(try capstan(["get", "canaries", "-n", "prod", "--state-dir", state]).stderr == "No resources found in prod namespace.\n")
        let unknown = try capstan(["get", "foo", "--state-dir", state])
        #expect(unknown.status == 1 && unknown.stderr.contains("unknown kind \"foo\"") && !unknown.stderr.contains("USAGE"), "\(unknown.stderr)")
        let missing = try capstan(["events", "deployment/nosuch", "--state-dir", state])
        #expect(missing.status == 1 && missing.stderr.contains("not found"), "\(missing.stderr)")
    }

    // MARK: - Ordinary mistakes

    @Test func aSpecFileOverTheSizeLimitIsAWarningEvent() throws {
        try write(Self.app(), to: "web.yaml")
        try write(Self.app(name: "big", extra: "# " + String(repeating: "x", count: 3000)), to: "big.yaml")
        let daemon = try startDaemon(["--max-file-size", "2Ki"])
        defer { cleanUp([daemon]) }
        try poll("the skipped file's event") {
            let events = try capstan(["events", "--state-dir", state]).stdout
            return events.contains("SpecFileSkipped") && events.contains("big.yaml")
        }
        #expect(log().contains(" warning ") && log().contains("--max-file-size"), "\(log())")
        #expect(try capstan(["get", "app", "big", "--state-dir", state]).status == 1, "a skipped file applies nothing")
        // A new object that does not validate: a warning (not info) and an event about its file.
        try write(Self.app(name: "broken", command: "\"not a list\""), to: "broken.yaml")
        try poll("the invalid file's event") { try capstan(["events", "specfile/" + specs + "/broken.yaml", "--state-dir", state]).stdout.contains("InvalidSpec") }
        #expect(log().split(separator: "\n").contains { $0.contains(" warning ") && $0.contains("broken.yaml") && $0.contains("not applied") }, "\(log())")
        // Once: a full read again (SIGHUP) reports nothing new.
        kill(daemon.processIdentifier, SIGHUP)
        try poll("SIGHUP read") { log().contains("SIGHUP: re-reading") }
        Thread.sleep(forTimeInterval: 0.5)
        #expect(log().components(separatedBy: "big.yaml").count - 1 == 1, "the skipped file is reported once:\n\(log())")
        let skipped = try capstan(["events", "specfile/" + specs + "/big.yaml", "--state-dir", state]).stdout
        #expect(skipped.split(separator: "\n").count == 2 && skipped.contains(" 1     "), "one event, count 1: \(skipped)")
    }

    @Test func anInstanceThatExitsShowsItsLastLinesAndItsLog() throws {
        try "import sys\nprint('starting up', flush=True)\nsys.stderr.write('fatal: no database at DATABASE_URL\\n')\nsys.exit(3)\n"
            .write(toFile: specs + "/web/crash.py", atomically: true, encoding: .utf8)
        try write(Self.app(command: "[python3, crash.py]") + "---\n" + Self.deployment(port: LoopbackHTTP.freePort()), to: "web.yaml")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        try poll("the restart event") { try capstan(["events", "deployment/web", "--state-dir", state]).stdout.contains("InstanceRestarted") }
        let events = try capstan(["events", "deployment/web", "--state-dir", state]).stdout
        #expect(events.contains("exited with status 3") && events.contains("fatal: no database at DATABASE_URL"), "\(events)")
        #expect(events.contains(state + "/logs/default/web/"), "the log's path: \(events)")
        let describe = try capstan(["describe", "deployment", "web", "--state-dir", state]).stdout
        #expect(describe.contains("Instances:") && describe.contains(state + "/logs/default/web/web-"), "\(describe)")
        #expect(describe.contains("fatal: no database"), "\(describe)")
    }

    @Test func validateChecksReferencesPortsAndReservedVariables() throws {
        try write("""
            apiVersion: capstan.dev/v1alpha1
            kind: Deployment
            metadata: {name: a}
            spec: {application: nosuch, version: "1", port: 18555}
            ---
            apiVersion: capstan.dev/v1alpha1
            kind: Deployment
            metadata: {name: b}
            spec: {application: web, version: "1", port: 18555}
            ---
            apiVersion: capstan.dev/v1alpha1
            kind: Canary
            metadata: {name: c}
            spec: {deployment: gone, steps: [{setWeight: 10}]}
            ---
            apiVersion: capstan.dev/v1alpha1
            kind: SecretRotation
            metadata: {name: s}
            spec:
              secretName: db
              keys: [{name: password, generator: {type: random}}]
              restartDeployments: [a, missing]

            """, to: "refs.yaml")
        try write(Self.app(extra: "  env: [{name: DB, valueFrom: {secretKeyRef: {name: db, key: pasword}}}, {name: API, valueFrom: {secretKeyRef: {name: api, key: token}}}]"), to: "web.yaml")
        let run = try capstan(["validate", specs])
        #expect(run.status == 0, "references are warnings: \(run.stdout)\(run.stderr)")
        for expected in ["Deployment/a: spec.application: Application \"nosuch\"", "Deployment/b: spec.port: port 18555 is also the port of Deployment/a",
                         "Canary/c: spec.deployment: Deployment \"gone\"", "spec.restartDeployments: Deployment \"missing\"",
                         "secret \"db\" has no key \"pasword\"", "no SecretRotation in these files makes secret \"api\""] {
            #expect(run.stderr.contains(expected), "missing \(expected) in:\n\(run.stderr)")
        }
        #expect(!run.stderr.contains("Deployment \"a\""), "a is defined")

        try write(Self.app(extra: "  env: [{name: PORT, value: \"9000\"}]"), to: "web.yaml")
        let reserved = try capstan(["validate", specs + "/web.yaml"])
        #expect(reserved.status == 1 && reserved.stdout.contains("spec.env[0].name: PORT is set by Capstan"), "\(reserved.stdout)")
    }

    @Test func exitCodesAndCountsSayWhatHappened() throws {
        try write(Self.app(command: "\"not a list\""), to: "web.yaml")
        let counted = try capstan(["validate", specs + "/web.yaml", root + "/nosuch.yaml"])
        #expect(counted.status == 1)
        #expect(counted.stdout.contains("2 problems in 2 paths (1 file found)"), "\(counted.stdout)")
        let missing = try capstan(["run", "--spec-dir", root + "/nosuch"])
        #expect(missing.status != 0 && missing.stderr.contains("does not exist"), "\(missing.stderr)")
        let file = try capstan(["run", "--spec-dir", specs + "/web.yaml"])
        #expect(file.status != 0 && file.stderr.contains("is a file"), "\(file.stderr)")
    }
}
