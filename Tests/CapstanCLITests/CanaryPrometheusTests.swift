import CapstanModel
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A Canary's analysis against a real Prometheus (Debian's) scraping every instance of both
/// tracks (the example app's `/metrics`; the targets follow `capstan describe`): a good version
/// is promoted, one that answers errors is aborted naming the metric and its value, a query
/// with a syntax error fails with Prometheus' own words, and Prometheus stopped mid-analysis
/// counts as failures until the run aborts (fail closed).
@Suite(.serialized, .timeLimit(.minutes(6))) struct CanaryPrometheusTests: ScratchSuite {
    let scratch: Scratch

    init() throws {
        scratch = try Scratch("canary-prometheus")
    }

    /// Debian's Prometheus scraping the instances listed in `targets.json` every second; it
    /// stops with the test process (a pipe) or with `stop()`.
    final class Prometheus: @unchecked Sendable {
        let port = LoopbackHTTP.freePort()
        let directory: String
        var server: PipedServer?

        init(directory: String) throws {
            self.directory = directory
            try FileManager.default.createDirectory(atPath: directory + "/data", withIntermediateDirectories: true)
            try "[]".write(toFile: directory + "/targets.json", atomically: true, encoding: .utf8)
            try """
                global: {scrape_interval: 1s, scrape_timeout: 1s}
                scrape_configs:
                - job_name: instances
                  file_sd_configs: [{files: ["\(directory)/targets.json"], refresh_interval: 1s}]
                """.write(toFile: directory + "/prometheus.yml", atomically: true, encoding: .utf8)
            server = try PipedServer([AlertServers.tool("prometheus"), "--config.file=\(directory)/prometheus.yml", "--storage.tsdb.path=\(directory)/data",
                                      "--web.listen-address=127.0.0.1:\(port)", "--storage.tsdb.retention.time=1h"], log: directory + "/prometheus.log")
        }

        var address: String { "http://127.0.0.1:\(port)" }

        func ready() async throws {
            let deadline = Date().addingTimeInterval(60)
            while LoopbackHTTP.get(port: port, path: "/-/ready")?.status != 200 {
                guard Date() < deadline else {
                    throw CLITests.CLIError("prometheus did not start (hack/test installs it): "
                                            + ((try? String(contentsOfFile: directory + "/prometheus.log", encoding: .utf8)) ?? "").suffix(2000))
                }
                try await Task.sleep(for: .milliseconds(100))
            }
        }

        /// Scrape these ports from now on.
        func scrape(_ ports: [Int]) {
            let targets = ports.sorted().map { "\"127.0.0.1:\($0)\"" }.joined(separator: ", ")
            try? "[{\"targets\": [\(targets)]}]".write(toFile: directory + "/targets.json", atomically: true, encoding: .utf8)
        }

        /// Whether Prometheus has had a series for `selector` in the last ten minutes (an
        /// aborted canary's instance is no longer scraped, and its series go stale at once).
        func has(_ selector: String) -> Bool {
            let query = "last_over_time(\(selector)[10m])".addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? selector
            guard let answer = LoopbackHTTP.get(port: port, path: "/api/v1/query?query=" + query), answer.status == 200 else { return false }
            return answer.body.contains("\"value\"")
        }

        /// Stops Prometheus now.
        func stop() {
            server?.stop()
            let deadline = Date().addingTimeInterval(10)
            while LoopbackHTTP.get(port: port, path: "/-/ready") != nil && Date() < deadline { usleep(100_000) }
        }
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

    /// The ports of the Deployment's instances, from `capstan describe`'s Instances table.
    func instancePorts() async throws -> [Int] {
        let text = try await capstan(["describe", "deployment", "web"]).stdout
        guard let table = text.range(of: "Instances:") else { return [] }
        let lines = text[table.upperBound...].split(separator: "\n").dropFirst()  // the header
        return lines.prefix { $0.hasPrefix("  ") }.compactMap { line in
            let columns = line.split(separator: " ", omittingEmptySubsequences: true)
            return columns.count > 4 ? Int(columns[4]) : nil
        }
    }

    /// Keeps Prometheus' targets on the instances until the task is cancelled.
    func follow(_ prometheus: Prometheus) -> Task<Void, Never> {
        Task {
            while !Task.isCancelled {
                if let ports = try? await instancePorts(), !ports.isEmpty { prometheus.scrape(ports) }
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
    }

    /// The errors the canary's version answered (a new version's counters start at 0).
    static let errors = "sum(hello_requests_total{version=\"$(CANARY_VERSION)\",code=~\"5..\"}) or vector(0)"

    func specs(version: String, port: Int, prometheus: Prometheus, failFile: String = "", query: String = errors,
               pause: String = "4s", failureLimit: Int = 0) -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: Application
        metadata: {name: web}
        spec:
          source: {path: web}
          command: [python3, server.py]
          ports: [{name: http, containerPort: 8080}]
          healthCheck: {http: {path: /healthz, port: http}, interval: 300ms, timeout: 300ms}
        ---
        apiVersion: capstan.dev/v1alpha1
        kind: Deployment
        metadata: {name: web}
        spec:
          application: web
          version: "\(version)"
          replicas: 2
          port: \(port)
          env: [{name: FAIL_FILE, value: "\(failFile)"}]
        ---
        apiVersion: capstan.dev/v1alpha1
        kind: Canary
        metadata: {name: web}
        spec:
          deployment: web
          steps:
          - setWeight: 50
          - pause: {duration: \(pause)}
          analysis:
            interval: 1s
            failureLimit: \(failureLimit)
            metrics:
            - name: errors
              source: prometheus
              address: \(prometheus.address)
              query: '\(query)'
              max: 0
        """
    }

    /// The Canary's Stalled condition's message (empty without one).
    func stalled() async throws -> (reason: String, message: String) {
        let canary = try await status("canary/web")
        let condition = (canary["conditions"] as? [[String: Any]])?.first { $0["type"] as? String == "Stalled" && $0["status"] as? String == "True" }
        return (condition?["reason"] as? String ?? "", condition?["message"] as? String ?? "")
    }

    @Test func aGoodVersionIsPromotedAndOneThatAnswersErrorsIsAbortedAndASyntaxErrorFails() async throws {
        let prometheus = try Prometheus(directory: root + "/prometheus")
        defer { prometheus.stop() }
        try await prometheus.ready()
        let port = LoopbackHTTP.freePort()
        let fail = root + "/fail"
        _ = FileManager.default.createFile(atPath: fail, contents: nil)
        try write(specs(version: "1", port: port, prometheus: prometheus), to: "web.yaml")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        let following = follow(prometheus)
        defer { following.cancel() }
        try await until("version 1 serving", seconds: 60) { LoopbackHTTP.get(port: port, path: "/version")?.body.hasPrefix("1") == true }
        let hammer = CanaryTests.Hammer(port: port, clients: 1)
        defer { hammer.stop() }

        // A good version: every run reads 0 errors from Prometheus, which scrapes the canary.
        try write(specs(version: "2", port: port, prometheus: prometheus), to: "web.yaml")
        try await until("version 2 promoted", seconds: 60) { try await status("canary/web")["phase"] as? String == "Succeeded" }
        let runs = try await status("canary/web")["analysisRuns"] as? [[String: Any]] ?? []
        #expect(!runs.isEmpty && runs.allSatisfy { $0["passed"] as? Bool == true && $0["value"] as? Double == 0 }, "\(runs)")
        // Scraped (the targets follow the instances within about 2.5 s).
        try await until("Prometheus has version 2's requests", seconds: 15) { prometheus.has("hello_requests_total{version=\"2\"}") }

        // A version that answers errors (its FAIL_FILE exists): aborted on the errors counted.
        try write(specs(version: "3", port: port, prometheus: prometheus, failFile: fail, pause: "20s"), to: "web.yaml")
        try await until("version 3 aborted", seconds: 60) { try await status("canary/web")["phase"] as? String == "Aborted" }
        let (reason, message) = try await stalled()
        #expect(reason == "AnalysisFailed")
        #expect(message.contains("errors:") && message.contains("above the maximum 0"), "\(message)")
        #expect(prometheus.has("hello_requests_total{version=\"3\",code=\"500\"}"), "the errors the analysis read")
        let abortedAt = Date().timeIntervalSince1970
        try await Task.sleep(for: .seconds(2))
        let after = hammer.between(abortedAt + 0.5, Date().timeIntervalSince1970)
        #expect(!after.isEmpty && after.allSatisfy { $0 == "2" }, "after the abort only version 2 answers: \(Set(after.map { $0 ?? "failed" }))")

        // A query Prometheus cannot parse: a failure with its own message, never a pass.
        try write(specs(version: "4", port: port, prometheus: prometheus, query: "hello_requests_total{"), to: "web.yaml")
        try await until("version 4 aborted", seconds: 60) {
            let canary = try await status("canary/web")
            return canary["canaryVersion"] as? String == "4" && canary["phase"] as? String == "Aborted"
        }
        let syntax = try await stalled()
        #expect(syntax.message.contains("parse error"), "Prometheus' words: \(syntax.message)")
        let events = try await capstan(["events", "canary/web"]).stdout
        #expect(events.contains("Promoted") && events.contains("AnalysisFailed"), "\(events)")
    }

    @Test func prometheusStoppedMidAnalysisCountsAsFailuresAndAborts() async throws {
        let prometheus = try Prometheus(directory: root + "/prometheus")
        defer { prometheus.stop() }
        try await prometheus.ready()
        let port = LoopbackHTTP.freePort()
        try write(specs(version: "1", port: port, prometheus: prometheus, pause: "120s", failureLimit: 2), to: "web.yaml")
        let daemon = try startDaemon()
        defer { cleanUp([daemon]) }
        try await until("version 1 serving", seconds: 60) { LoopbackHTTP.get(port: port, path: "/version")?.body.hasPrefix("1") == true }
        try write(specs(version: "2", port: port, prometheus: prometheus, pause: "120s", failureLimit: 2), to: "web.yaml")
        try await until("two runs passed", seconds: 60) {
            let runs = try await status("canary/web")["analysisRuns"] as? [[String: Any]] ?? []
            return runs.filter { $0["passed"] as? Bool == true }.count >= 2
        }
        prometheus.stop()
        let stoppedAt = Date()
        try await until("aborted without Prometheus", seconds: 30) { try await status("canary/web")["phase"] as? String == "Aborted" }
        print("aborted \(String(format: "%.1f", Date().timeIntervalSince(stoppedAt))) s after Prometheus stopped")
        let canary = try await status("canary/web")
        #expect(canary["failedAnalyses"] as? Int == 3, "failureLimit 2: the third failure aborts")
        let (reason, message) = try await stalled()
        #expect(reason == "AnalysisFailed")
        #expect(message.contains("errors:") && message.contains("127.0.0.1:\(prometheus.port)"), "the unreachable server named: \(message)")
        let runs = canary["analysisRuns"] as? [[String: Any]] ?? []
        #expect(runs.suffix(3).allSatisfy { $0["passed"] as? Bool == false }, "\(runs.suffix(3))")
        #expect(LoopbackHTTP.get(port: port, path: "/version")?.body.hasPrefix("1") == true)
    }
}
