import CapstanModel
import Foundation
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Canary end to end on this host with real processes: clients hammer the Deployment's port
/// through every step; the share of connections the canary answers follows each weight, and
/// nothing fails, through the promotion too; a version that starts failing its health checks
/// is aborted by the builtin analysis, after which it answers nothing.
@Suite(.serialized, .timeLimit(.minutes(6))) struct CanaryTests: ScratchSuite {
    let scratch: Scratch

    init() throws {
        scratch = try Scratch("canary")
    }

    func capstan(_ arguments: [String]) async throws -> CLITests.Run {
        try await CLITests.capstanAsync(arguments + ["--state-dir", state], in: root)
    }

    func status(_ kind: String) async throws -> [String: Any] {
        let run = try await capstan(["get", kind, "-o", "json"])
        guard let start = run.stdout.firstIndex(of: "{"),
              let object = try JSONSerialization.jsonObject(with: Data(run.stdout[start...].utf8)) as? [String: Any] else { return [:] }
        return object["status"] as? [String: Any] ?? [:]
    }

    func specs(version: String, port: Int, unhealthy: String = "", steps: String) -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: Application
        metadata: {name: web}
        spec:
          source: {path: web}
          command: [python3, server.py]
          ports: [{name: http, containerPort: 8080}]
          healthCheck: {http: {path: /healthz, port: http}, interval: 200ms, timeout: 200ms, failureThreshold: 1000}
        ---
        apiVersion: capstan.dev/v1alpha1
        kind: Deployment
        metadata: {name: web}
        spec:
          application: web
          version: "\(version)"
          replicas: 2
          port: \(port)
          env: [{name: UNHEALTHY_FILE, value: "\(unhealthy)"}]
        ---
        apiVersion: capstan.dev/v1alpha1
        kind: Canary
        metadata: {name: web}
        spec:
          deployment: web
          steps:
        \(steps)
          analysis:
            interval: 1s
            metrics:
            - {name: health, source: builtin, query: probe_failure_ratio, max: 0.2}
        """
    }

    /// Clients opening a connection per request; each answer's time and version (nil: failed).
    final class Hammer: Sendable {
        let answers = Mutex<[(time: Double, version: String?)]>([])
        let running = Atomic<Bool>(true)

        init(port: Int, clients: Int = 2) {
            for _ in 0..<clients {
                Thread.detachNewThread { [self] in
                    while running.load(ordering: .relaxed) {
                        let answer = LoopbackHTTP.get(port: port, path: "/version")
                        let version = answer.flatMap { $0.status == 200 ? $0.body.trimmingCharacters(in: .whitespacesAndNewlines) : nil }
                        let now = Date().timeIntervalSince1970
                        answers.withLock { $0.append((now, version)) }
                    }
                }
            }
        }

        func stop() { running.store(false, ordering: .relaxed) }

        /// The answers between two times.
        func between(_ start: Double, _ end: Double) -> [String?] {
            answers.withLock { $0.filter { $0.time >= start && $0.time < end }.map(\.version) }
        }
    }

    @Test func aGoodVersionIsPromotedUnderLoadWithTheAnnouncedSharesAndNoFailure() async throws {
        let port = LoopbackHTTP.freePort()
        let steps = """
            - setWeight: 20
            - pause: {duration: 9s}
            - setWeight: 50
            - pause: {duration: 8s}
        """
        try write(specs(version: "1", port: port, steps: steps), to: "web.yaml")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        try await until("version 1 serving", seconds: 60) { LoopbackHTTP.get(port: port, path: "/version")?.body.hasPrefix("1") == true }
        try await until("the canary idle") { try await status("canary/web")["phase"] as? String == "Idle" }
        let hammer = Hammer(port: port)
        defer { hammer.stop() }
        try await Task.sleep(for: .seconds(1))

        try write(specs(version: "2", port: port, steps: steps), to: "web.yaml")
        // The canary's timeline: when each weight was surely in effect. A status read happens
        // somewhere between the start and the end of its `capstan get` (a process, slow on a
        // busy machine): a weight began before the end of the first read that shows it and
        // ended after the start of the last one; the traffic follows the status.
        var periods: [Int: (start: Double, end: Double)] = [:]
        var current: (weight: Int, since: Double, seen: Double)?
        var phase = ""
        let deadline = Date().addingTimeInterval(90)
        while phase != "Succeeded" && Date() < deadline {
            let asked = Date().timeIntervalSince1970
            let canary = try await status("canary/web")
            let now = Date().timeIntervalSince1970
            phase = canary["phase"] as? String ?? ""
            let weight = phase == "Paused" || phase == "Progressing" ? canary["canaryWeight"] as? Int ?? 0 : -1
            if current?.weight != weight {
                if let current, current.weight > 0 { periods[current.weight] = (current.since, current.seen) }
                current = (weight, now, asked)
            } else {
                current?.seen = asked
            }
            #expect(phase != "Aborted", "\(canary)")
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(phase == "Succeeded")
        try await until("version 2 on the stable track") { try await status("deployment/web")["phase"] as? String == "Succeeded" }
        try await Task.sleep(for: .seconds(1))
        hammer.stop()

        // The daemon's own times (events, whole seconds) bound each weight too, however slow the
        // reads were: 20% from its WeightSet to the next one, 50% from there to Promoting. Each
        // bound is sound, so the wider of the two estimates is taken.
        let events = try await capstan(["events", "canary/web"]).stdout.split(separator: "\n")
        func eventTime(_ reason: String, _ text: String) -> Double? {
            guard let line = events.first(where: { $0.contains(" \(reason) ") && $0.contains(text) }),
                  let first = line.split(separator: " ").first else { return nil }
            return Timestamp(rfc3339: String(first))?.date.timeIntervalSince1970
        }
        // Each weight's pause starts when its WeightSet is recorded and lasts its duration, so
        // the weight holds at least that long even if a later event is missing.
        let twenty = eventTime("WeightSet", "20%"), fifty = eventTime("WeightSet", "50%"), promoting = eventTime("Promoting", "")
        for (weight, from, to, pause) in [(20, twenty, fifty, 9.0), (50, fifty, promoting, 8.0)] {
            guard let from else { continue }
            let known = periods[weight]
            periods[weight] = (min(known?.start ?? .infinity, from + 1), max(known?.end ?? 0, to ?? 0, from + pause))
        }
        let all = hammer.answers.withLock { $0 }
        let failed = all.filter { $0.version == nil }.count
        #expect(failed == 0, "\(failed) of \(all.count) requests failed")
        for weight in [20, 50] {
            guard let period = periods[weight] else {
                Issue.record("weight \(weight) never seen: \(periods)")
                continue
            }
            // Half a second for the router to follow the status at the start.
            let answers = hammer.between(period.start + 0.5, period.end)
            let canary = answers.filter { $0 == "2" }.count
            let share = Double(canary) * 100 / Double(max(1, answers.count))
            print("canary share at weight \(weight): \(String(format: "%.1f", share))% of \(answers.count) connections; \(failed) of \(all.count) requests failed in the run")
            #expect(answers.count >= 200, "only \(answers.count) connections at \(weight)%")
            #expect(abs(share - Double(weight)) <= 5, "the canary answered \(share)% of \(answers.count) connections at weight \(weight)")
        }
        let after = hammer.answers.withLock { $0.suffix(50).map(\.version) }
        #expect(after.allSatisfy { $0 == "2" }, "after the promotion: \(after)")
        #expect(events.contains { $0.contains(" Promoted ") })
    }

    @Test func aVersionThatStartsFailingIsAbortedByTheAnalysisAndThenAnswersNothing() async throws {
        let port = LoopbackHTTP.freePort()
        let bad = root + "/bad"
        let steps = """
            - setWeight: 50
            - pause: {duration: 60s}
        """
        try write(specs(version: "1", port: port, steps: steps), to: "web.yaml")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        try await until("version 1 serving", seconds: 60) { LoopbackHTTP.get(port: port, path: "/version")?.body.hasPrefix("1") == true }
        try write(specs(version: "2", port: port, unhealthy: bad, steps: steps), to: "web.yaml")
        try await until("the canary at 50%") { try await status("canary/web")["phase"] as? String == "Paused" }
        let hammer = Hammer(port: port, clients: 1)
        defer { hammer.stop() }
        try await until("the canary answering") { hammer.answers.withLock { $0.contains { $0.version == "2" } } }

        // Version 2 starts failing its health checks.
        _ = FileManager.default.createFile(atPath: bad, contents: nil)
        try await until("aborted by the analysis", seconds: 30) { try await status("canary/web")["phase"] as? String == "Aborted" }
        let canary = try await status("canary/web")
        let stalled = (canary["conditions"] as? [[String: Any]])?.first { $0["type"] as? String == "Stalled" }
        #expect(stalled?["reason"] as? String == "AnalysisFailed", "\(canary)")
        let message = stalled?["message"] as? String ?? ""
        #expect(message.contains("health"), "the failing metric named: \(message)")
        let abortedAt = Date().timeIntervalSince1970
        try await Task.sleep(for: .seconds(3))
        hammer.stop()
        let after = hammer.between(abortedAt + 0.5, Date().timeIntervalSince1970)
        #expect(!after.isEmpty)
        #expect(after.allSatisfy { $0 == "1" }, "after the abort only version 1 answers: \(Set(after.map { $0 ?? "failed" }))")
        let deployment = try await self.status("deployment/web")
        let condition = (deployment["conditions"] as? [[String: Any]])?.first { $0["type"] as? String == "Stalled" }
        #expect(condition?["reason"] as? String == "CanaryAborted", "\(deployment)")
        let events = try await capstan(["events", "canary/web"]).stdout
        #expect(events.contains("AnalysisFailed"), "\(events)")
    }

    /// Crash-only: the step, the weight and the failures are in the status; a daemon killed
    /// at any moment of a run resumes the same step at the same weight (never step 0, never
    /// 100% before the promotion), and the run ends promoted.
    @Test func aDaemonKilledAnywhereInARunResumesTheSameStep() async throws {
        let port = LoopbackHTTP.freePort()
        let kills = Int(ProcessInfo.processInfo.environment["CAPSTAN_CANARY_KILLS"] ?? "") ?? 8
        let steps = """
            - setWeight: 20
            - pause: {duration: \(kills)s}
            - setWeight: 40
            - pause: {duration: \(kills)s}
            - setWeight: 60
            - pause: {duration: 2s}
        """
        try write(specs(version: "1", port: port, steps: steps), to: "web.yaml")
        var daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        try await until("version 1 serving", seconds: 60) { LoopbackHTTP.get(port: port, path: "/version")?.body.hasPrefix("1") == true }
        try write(specs(version: "2", port: port, steps: steps), to: "web.yaml")
        try await until("the run started") { try await status("canary/web")["canaryVersion"] as? String == "2" }
        var highest = (step: 0, weight: 0)
        for kill in 0..<kills {
            try await Task.sleep(for: .milliseconds(Int64.random(in: 100...900)))
            let before = try await status("canary/web")
            if before["phase"] as? String == "Succeeded" || before["phase"] as? String == "Promoting" { break }
            Glibc.kill(daemon.processIdentifier, SIGKILL)
            daemon.waitUntilExit()
            let step = before["currentStep"] as? Int ?? 0
            let weight = before["canaryWeight"] as? Int ?? 0
            // The daemon started after the last kill went on from there.
            #expect(step >= highest.step && weight >= highest.weight, "kill \(kill): at step \(step) (\(weight)%) after \(highest)")
            daemon = try startDaemon(log: "daemon-\(kill).log")
            // What the next daemon reads back is where the killed one was, or further.
            try await until("the next daemon acting", log: "daemon-\(kill).log") {
                LoopbackHTTP.get(port: port, path: "/version")?.status == 200
            }
            let after = try await status("canary/web")
            let phase = after["phase"] as? String ?? ""
            let resumedStep = after["currentStep"] as? Int ?? 0
            let resumedWeight = after["canaryWeight"] as? Int ?? 0
            #expect(phase != "Aborted", "kill \(kill): \(after)")
            if phase == "Paused" || phase == "Progressing" {
                #expect(resumedStep >= step && resumedStep >= highest.step, "kill \(kill): step \(step) before, \(resumedStep) after")
                #expect(resumedWeight >= weight && resumedWeight < 100, "kill \(kill): weight \(weight) before, \(resumedWeight) after")
                highest = (max(highest.step, resumedStep), max(highest.weight, resumedWeight))
            }
        }
        try await until("promoted after the kills", seconds: 90) { try await status("canary/web")["phase"] as? String == "Succeeded" }
        try await until("version 2 stable") { LoopbackHTTP.get(port: port, path: "/version")?.body.hasPrefix("2") == true }
        #expect(highest.step > 0, "the kills fell within the run")
    }
}
