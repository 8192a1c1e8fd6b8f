import CSystemShims
import Foundation
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// A tool a backup runs (`pg_dump`, `tar`, `sqlite3`, a command; `pg_restore` ...), with one
/// end of a pipe for its standard output or input and its standard error kept in a file whose
/// tail is the message when it fails. Only the environment given (and `PATH`, `HOME`, `LANG`,
/// `TZ`) reaches it: a password goes by environment, never on the command line.
final class BackupTool {
    enum Direction { case readOutput, writeInput }

    let name: String
    let pid: pid_t
    /// Our end of the pipe.
    var descriptor: Int32
    let errorLog: String
    let secrets: [String]
    let reason: String

    init(_ command: [String], environment: [String: String] = [:], direction: Direction, workingDirectory: String = "/",
         scratch: String, reason: String) throws(BackupError) {
        let inherited = ProcessInfo.processInfo.environment
        var full: [String: String] = [:]
        for key in ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"] { full[key] = inherited[key] }
        if full["PATH"] == nil { full["PATH"] = "/usr/local/bin:/usr/bin:/bin" }
        full.merge(environment) { $1 }
        name = command.first ?? ""
        self.reason = reason
        secrets = Array(environment.values).filter { $0.count >= 4 }
        guard let program = Spawner.resolve(name, path: full["PATH"], workingDirectory: workingDirectory) else {
            throw BackupError(reason, "command \"\(name)\" not found (PATH=\(full["PATH"] ?? "")) or not executable")
        }
        var pipeEnds: [Int32] = [0, 0]
        guard capstan_pipe_cloexec(&pipeEnds) == 0 else { throw BackupError(reason, "pipe: \(String(cString: strerror(errno)))") }
        _ = fcntl(pipeEnds[0], 1031 /* F_SETPIPE_SZ */, 1 << 20)
        errorLog = "\(scratch)/\(URL(fileURLWithPath: name).lastPathComponent)-\(UUID().uuidString).stderr"
        let childEnd = direction == .readOutput ? pipeEnds[1] : pipeEnds[0]
        let ourEnd = direction == .readOutput ? pipeEnds[0] : pipeEnds[1]
        let log = errorLog
        let spawned = Result { () throws(Spawner.SpawnCode) -> pid_t in
            try Spawner.posixSpawn(program, arguments: command, environment: full.map { "\($0.key)=\($0.value)" }) { actions in
                capstan_spawn_add_chdir(&actions, workingDirectory)
                if direction == .readOutput {
                    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
                    posix_spawn_file_actions_adddup2(&actions, childEnd, 1)
                } else {
                    posix_spawn_file_actions_adddup2(&actions, childEnd, 0)
                    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
                }
                posix_spawn_file_actions_addopen(&actions, 2, log, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            }
        }
        switch spawned {
        case .success(let spawnedPid):
            pid = spawnedPid
        case .failure(let error):
            close(pipeEnds[0])
            close(pipeEnds[1])
            throw BackupError(reason, "\(name): \(String(cString: strerror(error.code)))")
        }
        close(childEnd)
        descriptor = ourEnd
    }

    deinit {
        if descriptor >= 0 { close(descriptor) }
        unlink(errorLog)
    }

    /// The last lines of its standard error, secrets replaced.
    func errorTail() -> String {
        var text = LogTail.lastLines(of: errorLog, count: 3, lineLength: 400).joined(separator: " | ")
        for value in secrets.sorted(by: { $0.count > $1.count }) { text = text.replacingOccurrences(of: value, with: "[redacted]") }
        return text
    }

    /// Closes our end (its input ends) and waits for it; throws with its message when it did
    /// not exit 0.
    func finish() async throws(BackupError) {
        if descriptor >= 0 {
            close(descriptor)
            descriptor = -1
        }
        let status = await Self.wait(pid)
        guard status != 0 else { return }
        let tail = errorTail()
        let how = status > 0 ? "exited with status \(status)" : "was killed by signal \(-status)"
        throw BackupError(reason, "\(name) \(how)" + (tail.isEmpty ? "" : ": \(tail)"))
    }

    /// Stops it (its process group) and reaps it.
    func kill() async {
        if descriptor >= 0 {
            close(descriptor)
            descriptor = -1
        }
        Glibc.kill(-pid, SIGKILL)
        _ = await Self.wait(pid)
    }

    /// The exit status, or minus the signal that killed it.
    static func wait(_ pid: pid_t) async -> Int32 {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0, errno == EINTR {}
                let signal = status & 0x7F
                continuation.resume(returning: signal == 0 ? (status >> 8) & 0xFF : -signal)
            }
        }
    }

    /// Runs a command to its end (no pipe of ours), its standard output kept: for `createdb`,
    /// `psql -c`, `sqlite3 'PRAGMA ...'`.
    static func run(_ command: [String], environment: [String: String] = [:], scratch: String, reason: String) async throws(BackupError) -> String {
        let tool = try BackupTool(command, environment: environment, direction: .readOutput, scratch: scratch, reason: reason)
        var output = ByteBuffer()
        while var chunk = try await ByteReader.read(tool.descriptor, what: tool.name, reason: reason) {
            if output.readableBytes < 1 << 20 { output.writeBuffer(&chunk) }
        }
        try await tool.finish()
        return String(buffer: output)
    }
}

/// Feeds what it receives to a tool's standard input (`pg_restore`, `sqlite3`, `tar -x`).
final class ToolInputSink: ByteSink {
    let tool: BackupTool

    init(_ tool: BackupTool) { self.tool = tool }

    func write(_ buffer: ByteBuffer) async throws {
        do {
            try await ByteReader.write(tool.descriptor, buffer, what: tool.name)
        } catch {
            // A broken pipe: the tool stopped reading; its own message says why.
            try await tool.finish()
            throw error
        }
    }

    func finish() async throws { try await tool.finish() }
    func abort() async { await tool.kill() }
}
