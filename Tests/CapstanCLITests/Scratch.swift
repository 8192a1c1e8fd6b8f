import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A temporary directory for an end-to-end test: `specs/` (with the example app in
/// `specs/web`), `state/`, the built binary started in it with its output in a log file, and
/// polling with a deadline.
struct Scratch {
    let root: String
    var specs: String { root + "/specs" }
    var state: String { root + "/state" }

    init(_ prefix: String) throws {
        root = NSTemporaryDirectory() + "capstan-\(prefix)-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root + "/specs/web", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: CLITests.root + "/manifests/examples/apps/hello/server.py", toPath: specs + "/web/server.py")
    }

    func write(_ text: String, to name: String) throws {
        try text.write(toFile: specs + "/" + name, atomically: true, encoding: .utf8)
    }

    /// Starts `capstan ARGUMENTS` in `directory` (default: the root), standard output and error into `log`.
    func start(_ arguments: [String], in directory: String? = nil, log: String = "daemon.log", executable: String? = nil) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable ?? CLITests.binary)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory ?? root)
        let path = root + "/" + log
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let handle = FileHandle(forWritingAtPath: path)!
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return process
    }

    /// `capstan run` on `specs/` and `state/`, resync off, metrics on any free port.
    func startDaemon(_ extra: [String] = [], log: String = "daemon.log") throws -> Process {
        try start(["run", "--spec-dir", specs, "--state-dir", state, "--resync", "1h", "--metrics-addr", "127.0.0.1:0"] + extra, log: log)
    }

    func log(_ name: String = "daemon.log") -> String { (try? String(contentsOfFile: root + "/" + name, encoding: .utf8)) ?? "" }

    /// Polls `condition` until it holds or `seconds` pass (then the log goes into the failure).
    func poll(_ what: String, seconds: Double = 30, log name: String = "daemon.log", _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        Issue.record("timed out waiting for \(what); log:\n\(log(name).suffix(3000))")
        throw CLITests.CLIError("timed out waiting for \(what)")
    }

    /// Kills what a test left running, stops the instances of each state directory, removes everything.
    func cleanUp(_ daemons: [Process], stateDirectories: [String]? = nil) {
        for daemon in daemons where daemon.isRunning {
            kill(daemon.processIdentifier, SIGKILL)
            daemon.waitUntilExit()
        }
        for directory in stateDirectories ?? [state] {
            _ = try? CLITests.capstan(["down", "--grace", "2s", "--state-dir", directory])
        }
        try? FileManager.default.removeItem(atPath: root)
    }
}

/// A suite whose tests each run in a `Scratch`: its helpers, without the `scratch.` prefix.
protocol ScratchSuite {
    var scratch: Scratch { get }
}

extension ScratchSuite {
    var root: String { scratch.root }
    var specs: String { scratch.specs }
    var state: String { scratch.state }

    func cleanUp(_ daemons: [Process], stateDirectories: [String]? = nil) { scratch.cleanUp(daemons, stateDirectories: stateDirectories) }
    func write(_ text: String, to name: String) throws { try scratch.write(text, to: name) }
    func start(_ arguments: [String], in directory: String? = nil, log: String = "daemon.log", executable: String? = nil) throws -> Process {
        try scratch.start(arguments, in: directory, log: log, executable: executable)
    }
    func startDaemon(_ extra: [String] = [], log: String = "daemon.log") throws -> Process { try scratch.startDaemon(extra, log: log) }
    func log(_ name: String = "daemon.log") -> String { scratch.log(name) }
    func poll(_ what: String, seconds: Double = 30, log name: String = "daemon.log", _ condition: () throws -> Bool) throws {
        try scratch.poll(what, seconds: seconds, log: name, condition)
    }

    /// Polls `condition` (awaiting between tries, so no thread of the pool is held) until it
    /// holds or `seconds` pass; then the log goes into the failure.
    func until(_ what: String, seconds: Double = 30, log name: String = "daemon.log", _ condition: () async throws -> Bool) async throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("timed out waiting for \(what); log:\n\(log(name).suffix(3000))")
        throw CLITests.CLIError("timed out waiting for \(what)")
    }
}

/// A server process the test starts and stops: it runs under a shell that kills it (SIGKILL:
/// a child of Foundation's Process may start with SIGTERM blocked) when `stop()` is called or
/// when the test process ends, even by kill -9 (its pipe closes). Output goes to `log`.
final class PipedServer: @unchecked Sendable {
    let log: String
    private let process = Process()

    /// `command`'s first word may be a shell word (`"$(git --exec-path)/git-daemon"`).
    init(_ command: [String], log: String, shellProgram: String? = nil) throws {
        self.log = log
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        let program = shellProgram.map { "\($0) " } ?? ""
        process.arguments = ["-c", "exec 3<&0; \(program)\"$@\" <&3 >>\"$LOG\" 2>&1 & pid=$!; echo $pid >\"$LOG.pid\"; cat >/dev/null; kill -9 $pid 2>/dev/null; wait", "sh"] + command
        process.environment = ProcessInfo.processInfo.environment.merging(["LOG": log]) { $1 }
        process.standardInput = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    /// Sends the server a signal (SIGSTOP to make it hang: the kernel still accepts
    /// connections into its backlog, nobody answers them until SIGCONT).
    func signal(_ number: Int32) {
        if let text = try? String(contentsOfFile: log + ".pid", encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            kill(pid, number)
        }
    }

    /// Kills the server now and lets its shell go.
    func stop() {
        if let text = try? String(contentsOfFile: log + ".pid", encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            kill(pid, SIGKILL)
        }
        (process.standardInput as? Pipe)?.fileHandleForWriting.closeFile()
    }
}
