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

    @Test func commitsAreAppliedAndAServerThatIsDownOrARefThatVanishedKeepsTheLastGoodOne() async throws {
        let port = LoopbackHTTP.freePort()
        try FileManager.default.createDirectory(atPath: root + "/work/specs/web", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root + "/remote", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: CLITests.root + "/manifests/examples/apps/hello/server.py", toPath: root + "/work/specs/web/server.py")
        try git(["init", "--quiet", "--bare", root + "/remote/specs.git"], in: root)
        try git(["init", "--quiet", "-b", "main"])
        try commit("1", port: port)
        let server = GitDaemon(base: root + "/remote")
        try await server.start()
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

    @Test func credentialsInTheURLAreRefusedAndNeverShown() async throws {
        let run = try await CLITests.capstanAsync(["run", "--git-url", "https://user:s3cret-token@example.com/specs.git", "--state-dir", state], in: root)
        #expect(run.status != 0)
        #expect(run.stderr.contains("--git-token-file"), "\(run.stderr)")
        #expect(!run.stderr.contains("s3cret-token") && !run.stdout.contains("s3cret-token"), "the token is not repeated")
        let both = try await CLITests.capstanAsync(["run", "--git-url", "git://127.0.0.1:1/x.git", "--spec-dir", ".", "--state-dir", state], in: root)
        #expect(both.status != 0 && both.stderr.contains("two sources"), "\(both.stderr)")
    }
}
