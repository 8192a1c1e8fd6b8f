import Crypto
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `capstan run --git-url` end to end against a real git server on loopback (`git daemon`
/// serving a bare repository the test pushes to): commits are applied at the interval, a server
/// that is down or a ref that vanished keeps the last good commit (nothing deleted), a
/// force-push is followed with a warning, and credentials in a URL are refused.
@Suite(.serialized, .timeLimit(.minutes(4))) struct GitSourceTests: ScratchSuite {
    let scratch: Scratch

    init() throws {
        scratch = try Scratch("git-source")
    }

    /// `git daemon` on a free loopback port over `<root>/remote` (stopped with `stop()`, or
    /// with the test process: a pipe).
    final class GitDaemon: @unchecked Sendable {
        let port = LoopbackHTTP.freePort()
        let base: String
        var server: PipedServer?

        init(base: String) { self.base = base }


        func start() async throws {
            // `git-daemon` itself: `git daemon` runs it as a child, which a kill of `git` leaves.
            server = try PipedServer(["--reuseaddr", "--listen=127.0.0.1", "--port=\(port)", "--base-path=\(base)", "--export-all", base],
                                     log: base + "/../git-daemon.log", shellProgram: "\"$(git --exec-path)/git-daemon\"")
            let deadline = Date().addingTimeInterval(20)
            while !GitSourceTests.accepts(port) {
                guard Date() < deadline else { throw CLITests.CLIError("git daemon did not start (hack/test installs git)") }
                try await Task.sleep(for: .milliseconds(50))
            }
        }

        func stop() {
            server?.stop()
            server = nil
            let deadline = Date().addingTimeInterval(10)
            while GitSourceTests.accepts(port) && Date() < deadline { usleep(50_000) }
        }
    }

    static func accepts(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    /// Runs git in the work tree; fails the test on an error.
    @discardableResult
    func git(_ arguments: [String], in directory: String? = nil) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["git"] + arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory ?? root + "/work")
        process.environment = ProcessInfo.processInfo.environment.merging([
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com", "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
            "GIT_CONFIG_NOSYSTEM": "1", "HOME": root,
        ]) { $1 }
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw CLITests.CLIError("git \(arguments.joined(separator: " ")): \(output)") }
        return output
    }

    func spec(version: String, port: Int) -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: Application
        metadata: {name: web}
        spec:
          source: {path: web}
          command: [python3, server.py]
          ports: [{name: http, containerPort: 8080}]
          healthCheck: {http: {path: /healthz, port: http}, interval: 200ms, timeout: 200ms}
        ---
        apiVersion: capstan.dev/v1alpha1
        kind: Deployment
        metadata: {name: web}
        spec:
          application: web
          version: "\(version)"
          replicas: 1
          port: \(port)
        """
    }

    /// Commits `version` of the spec (in `specs/` of the repository) and pushes it to the bare
    /// repository directly (the server may be down meanwhile).
    func commit(_ version: String, port: Int, force: Bool = false) throws {
        try spec(version: version, port: port).write(toFile: root + "/work/specs/web.yaml", atomically: true, encoding: .utf8)
        try git(["add", "-A"])
        try git(["commit", "--quiet", "-m", "version \(version)"])
        try git(["push", "--quiet"] + (force ? ["--force"] : []) + [root + "/remote/specs.git", "HEAD:refs/heads/main"])
    }

    func serves(_ port: Int, _ version: String) -> Bool {
        LoopbackHTTP.get(port: port, path: "/version")?.body.hasPrefix(version) == true
    }

    /// A work tree with version 1 of the specs committed, its bare remote, and `git daemon`
    /// serving it.
    func repository(port: Int) async throws -> GitDaemon {
        try FileManager.default.createDirectory(atPath: root + "/work/specs/web", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/remote", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: CLITests.root + "/manifests/examples/apps/hello/server.py", toPath: root + "/work/specs/web/server.py")
        try git(["init", "--quiet", "--bare", root + "/remote/specs.git"], in: root)
        try git(["init", "--quiet", "-b", "main"])
        try commit("1", port: port)
        let server = GitDaemon(base: root + "/remote")
        try await server.start()
        return server
    }

    @Test func commitsAreAppliedAndAServerThatIsDownOrARefThatVanishedKeepsTheLastGoodOne() async throws {
        let port = LoopbackHTTP.freePort()
        let server = try await repository(port: port)
        defer { server.stop() }

        let url = "git://127.0.0.1:\(server.port)/specs.git"
        let daemon = try start(["run", "--git-url", url, "--git-path", "specs", "--git-interval", "1s", "--state-dir", state,
                                "--resync", "1h", "--metrics-addr", "127.0.0.1:0"])
        defer { cleanUp([daemon]) }
        try await until("version 1 from the repository", seconds: 60) { serves(port, "1") }

        // A push is applied at the next fetch.
        try commit("2", port: port)
        try await until("version 2 pushed", seconds: 30) { serves(port, "2") }
        #expect(log().contains("git: commit"), "the log names the commit")

        // The server down: the last good commit stays, and the log says why.
        server.stop()
        try commit("3", port: port)
        try await until("the failed fetch logged", seconds: 15) { log().contains("keeping commit") }
        #expect(serves(port, "2"))
        try await server.start()
        try await until("version 3 once the server is back", seconds: 30) { serves(port, "3") }

        // History rewritten: followed, with a warning.
        try git(["checkout", "--quiet", "--orphan", "rewritten"])
        try commit("4", port: port, force: true)
        try await until("version 4 after the force-push", seconds: 30) { serves(port, "4") }
        #expect(log().contains("was rewritten"), "a force-push is a warning")

        // The ref deleted: nothing deleted, the last commit serves on.
        let before = log().components(separatedBy: "keeping commit").count
        try git(["push", "--quiet", root + "/remote/specs.git", ":refs/heads/main"])
        try await until("the vanished ref logged", seconds: 15) { log().components(separatedBy: "keeping commit").count > before }
        try await Task.sleep(for: .seconds(1))
        #expect(serves(port, "4"))
        let deployment = try await CLITests.capstanAsync(["get", "deployment/web", "--state-dir", state], in: root)
        #expect(deployment.stdout.contains("web"), "the Deployment is still there: \(deployment.stdout)")
    }

    // MARK: - Webhooks

    static let secret = "webhook-s3cret"

    static func sign(_ body: String, secret: String = secret) -> String {
        HMAC<SHA256>.authenticationCode(for: Array(body.utf8), using: SymmetricKey(data: Array(secret.utf8))).map { String(format: "%02x", $0) }.joined()
    }

    /// A push of `commit` to `ref` as each git host sends it, signed as each signs.
    static func push(_ provider: String, ref: String, commit: String, secret: String = secret) -> (headers: [(String, String)], body: String) {
        switch provider {
        case "gitlab":
            let body = #"{"object_kind":"push","ref":"\#(ref)","after":"\#(commit)","checkout_sha":"\#(commit)","project":{"path_with_namespace":"team/specs"}}"#
            return ([("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", secret)], body)
        case "gitea":
            let body = #"{"ref":"\#(ref)","after":"\#(commit)","repository":{"full_name":"team/specs"}}"#
            return ([("X-Gitea-Event", "push"), ("X-Gitea-Signature", sign(body, secret: secret))], body)
        case "bitbucket":
            let branch = ref.replacingOccurrences(of: "refs/heads/", with: "")
            let body = #"{"push":{"changes":[{"new":{"type":"branch","name":"\#(branch)","target":{"hash":"\#(commit)"}}}]}}"#
            return ([("X-Event-Key", "repo:push"), ("X-Hub-Signature", "sha256=" + sign(body, secret: secret))], body)
        default:
            let body = #"{"ref":"\#(ref)","after":"\#(commit)","repository":{"full_name":"team/specs"}}"#
            return ([("X-GitHub-Event", "push"), ("X-GitHub-Delivery", UUID().uuidString), ("X-Hub-Signature-256", "sha256=" + sign(body, secret: secret))], body)
        }
    }

    func deliver(_ port: Int, _ delivery: (headers: [(String, String)], body: String)) -> Int {
        LoopbackHTTP.request("POST", port: port, path: "/hooks/git", body: delivery.body, headers: delivery.headers + [("Content-Type", "application/json")])?.status ?? 0
    }

    /// The daemon's git fetches so far, from its /metrics.
    func fetches() async throws -> Int {
        guard let line = log().split(separator: "\n").first(where: { $0.contains("serving /metrics") }),
              let port = line.split(separator: ":").last.flatMap({ Int($0.trimmingCharacters(in: .whitespaces)) }),
              let metrics = LoopbackHTTP.get(port: port, path: "/metrics")?.body else { return -1 }
        return metrics.split(separator: "\n").filter { $0.hasPrefix("capstan_source_fetches_total{") }
            .compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }.reduce(0) { $0 + Int($1) }
    }

    func json(_ arguments: [String]) async throws -> [String: Any] {
        let run = try await CLITests.capstanAsync(arguments + ["-o", "json", "--state-dir", state], in: root)
        return (try? JSONSerialization.jsonObject(with: Data(run.stdout.utf8))) as? [String: Any] ?? [:]
    }

    /// A signed push webhook fetches at once (the interval is an hour); every delivery, good or
    /// refused, is in the log; the commit is on the object and in its events; a repository
    /// that cannot be fetched holds the objects visibly until it can.
    @Test func aSignedWebhookFetchesAtOnceAndEveryDeliveryIsLogged() async throws {
        let port = LoopbackHTTP.freePort(), hooks = LoopbackHTTP.freePort()
        let server = try await repository(port: port)
        defer { server.stop() }
        try Self.secret.write(toFile: root + "/webhook-secret", atomically: true, encoding: .utf8)
        let url = "git://127.0.0.1:\(server.port)/specs.git"
        let daemon = try start(["run", "--git-url", url, "--git-path", "specs", "--git-interval", "1h", "--state-dir", state,
                                "--webhook-addr", "127.0.0.1:\(hooks)", "--webhook-secret-file", root + "/webhook-secret",
                                "--resync", "1h", "--metrics-addr", "127.0.0.1:0"])
        defer { cleanUp([daemon]) }
        try await until("version 1 from the repository", seconds: 60) { serves(port, "1") }
        try await until("the webhook listener", seconds: 20) { GitSourceTests.accepts(hooks) }
        let first = try git(["rev-parse", "HEAD"]).trimmingCharacters(in: .whitespacesAndNewlines)
        var revision = (try await json(["get", "deployment/web"])["status"] as? [String: Any])?["sourceRevision"] as? [String: Any]
        #expect(revision?["commit"] as? String == first && revision?["path"] as? String == "specs/web.yaml", "\(String(describing: revision))")

        // A push, then its webhook: applied at once.
        try commit("2", port: port)
        let second = try git(["rev-parse", "HEAD"]).trimmingCharacters(in: .whitespacesAndNewlines)
        let sent = Date()
        #expect(deliver(hooks, Self.push("github", ref: "refs/heads/main", commit: second)) == 202)
        try await until("version 2 on the webhook", seconds: 20) { serves(port, "2") }
        print("webhook to version 2 serving: \(Int(Date().timeIntervalSince(sent) * 1000)) ms")
        revision = (try await json(["get", "deployment/web"])["status"] as? [String: Any])?["sourceRevision"] as? [String: Any]
        #expect(revision?["commit"] as? String == second)
        let events = try await CLITests.capstanAsync(["events", "deployment/web", "--state-dir", state], in: root).stdout
        #expect(events.contains("SpecChanged") && events.contains("from commit \(second.prefix(12)) (specs/web.yaml)"), "\(events)")
        let wide = try await CLITests.capstanAsync(["get", "deployments", "-o", "wide", "--state-dir", state], in: root).stdout
        #expect(wide.contains("REVISION") && wide.contains(String(second.prefix(12))), "\(wide)")

        // Every provider's signed push to the ref is taken; what is not signed is refused.
        for provider in ["gitea", "gitlab", "bitbucket"] {
            #expect(deliver(hooks, Self.push(provider, ref: "refs/heads/main", commit: second)) == 202, "\(provider)")
        }
        #expect(deliver(hooks, Self.push("github", ref: "refs/heads/feature", commit: second)) == 202, "another ref: taken, ignored")
        #expect(deliver(hooks, Self.push("github", ref: "refs/heads/main", commit: second, secret: "wrong")) == 401, "a wrong signature")
        var missing = Self.push("github", ref: "refs/heads/main", commit: second)
        missing.headers.removeAll { $0.0 == "X-Hub-Signature-256" }
        #expect(deliver(hooks, missing) == 401, "no signature")
        var replayed = Self.push("github", ref: "refs/heads/feature", commit: second)
        replayed.body = replayed.body.replacingOccurrences(of: "refs/heads/feature", with: "refs/heads/main")
        #expect(deliver(hooks, replayed) == 401, "a signed body replayed with another ref")
        var large = Self.push("github", ref: "refs/heads/main", commit: second)
        large.body = String(repeating: " ", count: 10 << 20) + large.body
        #expect(deliver(hooks, large) == 413, "a 10 MiB body")
        #expect(LoopbackHTTP.get(port: hooks, path: "/metrics")?.status == 404, "the webhook port serves nothing else")

        // The fetches the pushes asked for settle their deliveries.
        var items: [[String: Any]] = []
        try await until("the deliveries settled", seconds: 20) {
            items = try await json(["source", "deliveries"])["items"] as? [[String: Any]] ?? []
            return !items.contains { $0["outcome"] as? String == "fetch" }
        }
        let outcomes = items.reversed().map { "\($0["status"] as? Int ?? 0) \($0["outcome"] as? String ?? "")" }
        #expect(outcomes == ["202 fetched", "202 fetched", "202 fetched", "202 fetched", "202 ignored", "401 refused", "401 refused", "401 refused", "413 refused"],
                "\(outcomes)")
        #expect(items.reversed().prefix(4).map { $0["provider"] as? String ?? "" } == ["github", "gitea", "gitlab", "bitbucket"], "\(items)")
        #expect(items.allSatisfy { ($0["detail"] as? String)?.contains(Self.secret) == false })

        // A flood of signed pushes: one fetch in flight, one queued, whatever the number. The git
        // server is stopped (SIGSTOP: connections wait in its backlog) so the first fetch is still
        // in flight when the last delivery arrives, however slowly a loaded machine sends them.
        let before = try await fetches()
        server.server?.signal(SIGSTOP)
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<30 {
                group.addTask { _ = self.deliver(hooks, Self.push("github", ref: "refs/heads/main", commit: second)) }
            }
        }
        try await until("the flood's deliveries recorded", seconds: 30) {
            let items = try await json(["source", "deliveries"])["items"] as? [[String: Any]] ?? []
            return items.filter { $0["outcome"] as? String == "fetch" }.count == 30
        }
        server.server?.signal(SIGCONT)
        try await until("the flood's fetches done", seconds: 30) {
            let items = try await json(["source", "deliveries"])["items"] as? [[String: Any]] ?? []
            return !items.contains { $0["outcome"] as? String == "fetch" }
        }
        let flood = try await fetches() - before
        #expect(flood == 2, "\(flood) fetches for 30 deliveries (one in flight, one queued)")
        let source = try await CLITests.capstanAsync(["source", "--state-dir", state], in: root).stdout
        #expect(source.contains("source/git") && source.contains(String(second.prefix(12))) && source.contains("in "), "\(source)")
        let all = try await CLITests.capstanAsync(["get", "all", "--state-dir", state], in: root).stdout
        #expect(all.contains("source/git"), "\(all)")

        // The repository unreachable: the objects are held, visibly, and serve on; back: released.
        server.stop()
        try commit("3", port: port)
        let third = try git(["rev-parse", "HEAD"]).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(deliver(hooks, Self.push("gitlab", ref: "refs/heads/main", commit: third)) == 202)
        try await until("the objects held", seconds: 20) {
            try await CLITests.capstanAsync(["get", "deployments", "--state-dir", state], in: root).stdout.contains("SourceFetchFailed")
        }
        #expect(serves(port, "2"))
        let failing = try await CLITests.capstanAsync(["source", "--state-dir", state], in: root).stdout
        #expect(failing.contains("failing:"), "\(failing)")
        try await server.start()
        #expect(deliver(hooks, Self.push("gitlab", ref: "refs/heads/main", commit: third)) == 202)
        try await until("version 3 once the repository answers", seconds: 20) { serves(port, "3") }
        try await until("no longer held", seconds: 20) {
            !(try await CLITests.capstanAsync(["get", "deployments", "--state-dir", state], in: root).stdout.contains("SourceFetchFailed"))
        }
        #expect(!log().contains(Self.secret), "the secret is never logged")
    }

    /// Over HTTP with a token (`git http-backend` behind a server that wants it): applied; a
    /// wrong token holds the objects visibly and serves on; the right one again, released. The
    /// token appears in no output, log, event or file of the state directory.
    @Test func aTokenIsSentButNeverShownAndAWrongOneHoldsTheObjects() async throws {
        let port = LoopbackHTTP.freePort(), http = LoopbackHTTP.freePort()
        let repository = try await repository(port: port)
        repository.stop()  // served over HTTP here
        let token = "tok-" + UUID().uuidString
        try token.write(toFile: root + "/server-token", atomically: true, encoding: .utf8)
        try (token + "\n").write(toFile: root + "/token", atomically: true, encoding: .utf8)
        let server = try PipedServer(["python3", CLITests.root + "/hack/git-http-server.py", "--root", root + "/remote", "--port", "\(http)",
                                      "--token-file", root + "/server-token"], log: root + "/git-http.log")
        defer { server.stop() }
        try await until("the git HTTP server", seconds: 20) { GitSourceTests.accepts(http) }
        let daemon = try start(["run", "--git-url", "http://127.0.0.1:\(http)/specs.git", "--git-token-file", root + "/token", "--git-path", "specs",
                                "--git-interval", "1s", "--state-dir", state, "--resync", "1h", "--metrics-addr", "127.0.0.1:0"])
        defer { cleanUp([daemon]) }
        try await until("version 1 over HTTP with the token", seconds: 60) { serves(port, "1") }

        // A wrong token: the fetch fails, the objects are held and serve on.
        try "not-the-token".write(toFile: root + "/token", atomically: true, encoding: .utf8)
        try commit("2", port: port)
        try await until("the objects held for the failed fetch", seconds: 30) {
            try await CLITests.capstanAsync(["get", "deployments", "--state-dir", state], in: root).stdout.contains("SourceFetchFailed")
        }
        #expect(serves(port, "1"))
        let failing = try await CLITests.capstanAsync(["source", "--state-dir", state], in: root).stdout
        #expect(failing.contains("failing:"), "\(failing)")
        // The right one again (read at each fetch): version 2, released.
        try token.write(toFile: root + "/token", atomically: true, encoding: .utf8)
        try await until("version 2 with the token back", seconds: 30) { serves(port, "2") }
        try await until("no longer held", seconds: 20) {
            !(try await CLITests.capstanAsync(["get", "deployments", "--state-dir", state], in: root).stdout.contains("SourceFetchFailed"))
        }

        var outputs = [log()]
        for arguments in [["source", "-o", "json"], ["source", "deliveries"], ["get", "all", "-o", "yaml"], ["events"], ["describe", "deployment", "web"]] {
            let run = try await CLITests.capstanAsync(arguments + ["--state-dir", state], in: root)
            outputs.append(run.stdout + run.stderr)
        }
        #expect(!outputs.contains { $0.contains(token) }, "the token in an output")
        // Nor in any file of the state directory (the database, its WAL, the mirror's config).
        let grep = Process()
        grep.executableURL = URL(fileURLWithPath: "/usr/bin/grep")
        grep.arguments = ["-rlaF", token, state]
        let found = Pipe()
        grep.standardOutput = found
        try grep.run()
        let files = String(decoding: found.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        grep.waitUntilExit()
        #expect(files.isEmpty, "the token is stored in \(files)")
    }

    @Test func credentialsInTheURLAreRefusedAndNeverShown() async throws {
        let run = try await CLITests.capstanAsync(["run", "--git-url", "https://user:s3cret-token@example.com/specs.git", "--state-dir", state], in: root)
        #expect(run.status != 0)
        #expect(run.stderr.contains("--git-token-file"), "\(run.stderr)")
        #expect(!run.stderr.contains("s3cret-token") && !run.stdout.contains("s3cret-token"), "the token is not repeated")
        let both = try await CLITests.capstanAsync(["run", "--git-url", "git://127.0.0.1:1/x.git", "--spec-dir", ".", "--state-dir", state], in: root)
        #expect(both.status != 0 && both.stderr.contains("two sources"), "\(both.stderr)")
    }
}
