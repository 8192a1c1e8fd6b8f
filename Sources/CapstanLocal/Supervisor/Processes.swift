import CSystemShims
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A process as the supervisor records it: the pid alone is not enough (pids are reused), so
/// the kernel's start time (clock ticks since boot, `/proc/PID/stat` field 22) goes with it.
public struct ProcessIdentity: Sendable, Hashable, CustomStringConvertible {
    public var pid: Int32
    public var startTime: UInt64

    public init(pid: Int32, startTime: UInt64) {
        self.pid = pid
        self.startTime = startTime
    }

    /// The identity of a running process; nil when there is none with this pid.
    public static func of(pid: Int32) -> ProcessIdentity? {
        guard let (state, start) = stat(pid), state != "Z" else { return nil }
        return ProcessIdentity(pid: pid, startTime: start)
    }

    /// State (field 3) and start time (field 22) from `/proc/PID/stat`, zombies included.
    static func stat(_ pid: Int32) -> (state: Substring, startTime: UInt64)? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // Fields after the command name (which may hold spaces and parentheses).
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, let start = UInt64(fields[19]) else { return nil }
        return (fields[0], start)
    }

    /// Live process group leaders started as Capstan instances, by their `CAPSTAN_INSTANCE`.
    /// A daemon killed between spawning an instance and recording its pid leaves one that only
    /// its environment names; the next daemon adopts it instead of starting a duplicate.
    public static func instanceProcesses() -> [String: ProcessIdentity] {
        var found: [String: ProcessIdentity] = [:]
        let marker = Array("CAPSTAN_INSTANCE=".utf8)
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let environ = FileManager.default.contents(atPath: "/proc/\(entry)/environ") else { continue }
            for variable in environ.split(separator: 0) where variable.starts(with: marker) {
                let id = String(decoding: variable.dropFirst(marker.count), as: UTF8.self)
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                      let close = stat.lastIndex(of: ")") else { break }
                let fields = stat[stat.index(after: close)...].split(separator: " ")
                // The spawned process leads its own group; its children inherit the variable.
                guard fields.count > 19, fields[0] != "Z", Int32(fields[2]) == pid, let start = UInt64(fields[19]) else { break }
                found[id] = ProcessIdentity(pid: pid, startTime: start)
                break
            }
        }
        return found
    }

    /// Whether this very process still runs (not a zombie, not another process with the pid).
    public var isAlive: Bool { ProcessIdentity.of(pid: pid) == self }

    public var description: String { "pid \(pid)" }
}

/// What to start.
public struct ProcessSpec: Sendable, Hashable {
    public var command: [String]
    public var environment: [String: String]
    public var workingDirectory: String
    /// stdout and stderr are appended here (the file is created 0600 when missing).
    public var logPath: String
    /// RLIMIT_DATA in bytes; nil for none.
    public var memoryLimit: UInt64?

    public init(command: [String], environment: [String: String], workingDirectory: String, logPath: String, memoryLimit: UInt64? = nil) {
        self.command = command
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.logPath = logPath
        self.memoryLimit = memoryLimit
    }
}

public struct SpawnError: Error, CustomStringConvertible, Equatable {
    public var description: String
}

/// Starts processes with `posix_spawn`: own process group, clean signal mask and default
/// dispositions (Foundation.Process leaves signals blocked in children started from async
/// code), stdin from /dev/null, stdout and stderr appended to the log, the given working
/// directory and environment only.
public enum Spawner {
    /// Resolves a command name the way a shell would, against the instance's PATH (relative
    /// names against the working directory).
    public static func resolve(_ name: String, path: String?, workingDirectory: String) -> String? {
        func executable(_ candidate: String) -> Bool {
            var info = stat()
            return access(candidate, X_OK) == 0 && stat(candidate, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG
        }
        if name.contains("/") {
            let full = name.hasPrefix("/") ? name : workingDirectory + "/" + name
            return executable(full) ? full : nil
        }
        for directory in (path ?? "/usr/local/bin:/usr/bin:/bin").split(separator: ":", omittingEmptySubsequences: false) {
            let base = directory.isEmpty ? "." : String(directory)
            let candidate = (base.hasPrefix("/") ? base : workingDirectory + "/" + base) + "/" + name
            if executable(candidate) { return candidate }
        }
        return nil
    }

    public static func spawn(_ spec: ProcessSpec) throws(SpawnError) -> ProcessIdentity {
        guard let name = spec.command.first, !name.isEmpty else { throw SpawnError(description: "empty command") }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: spec.workingDirectory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw SpawnError(description: "working directory \(spec.workingDirectory) does not exist")
        }
        guard let program = resolve(name, path: spec.environment["PATH"], workingDirectory: spec.workingDirectory) else {
            throw SpawnError(description: "command \"\(name)\" not found (PATH=\(spec.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin")) or not executable")
        }
        let log = open(spec.logPath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard log >= 0 else { throw SpawnError(description: "cannot open log \(spec.logPath): \(String(cString: strerror(errno)))") }
        defer { close(log) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, log, 1)
        posix_spawn_file_actions_adddup2(&actions, log, 2)
        capstan_spawn_add_chdir(&actions, spec.workingDirectory)
        capstan_spawn_add_closefrom(&actions, 3)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let arguments = spec.command.map { strdup($0) } + [nil]
        let environment = spec.environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            arguments.forEach { free($0) }
            environment.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, program, &actions, &attributes, arguments, environment)
        guard result == 0 else {
            throw SpawnError(description: "cannot start \(program): \(String(cString: strerror(result)))")
        }
        if let limit = spec.memoryLimit, capstan_set_memory_limit(pid, limit) != 0 {
            let reason = String(cString: strerror(errno))
            kill(-pid, SIGKILL)
            throw SpawnError(description: "cannot set the memory limit of \(program): \(reason)")
        }
        // The start time is read at once; a process that already exited still is a zombie
        // (our child), so /proc has it until it is reaped.
        return ProcessIdentity(pid: pid, startTime: ProcessIdentity.stat(pid)?.startTime ?? 0)
    }
}

/// How a watched process ended: an exit status or a signal for our own children; unknown for
/// adopted ones (their parent is init now, which reaps them).
public enum ProcessExit: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signalled(Int32)
    case unknown

    public var description: String {
        switch self {
        case .exited(let code): return "exited with status \(code)"
        case .signalled(let signal): return "killed by signal \(signal)\(signal == SIGKILL ? " (SIGKILL: out of memory, or killed)" : "")"
        case .unknown: return "exited"
        }
    }
}

/// Notices process exits at once, children or not: a pidfd per process, one thread blocked
/// in epoll for all of them (no polling).
public final class ProcessWatcher: Sendable {
    private struct Watch {
        var identity: ProcessIdentity
        var onExit: @Sendable (ProcessExit) -> Void
    }

    private let epoll: Int32
    private let wake: Int32
    private let state = Mutex<(watches: [Int32: Watch], stopped: Bool)>(([:], false))

    public init() throws(SpawnError) {
        epoll = capstan_epoll_create()
        wake = capstan_eventfd()
        guard epoll >= 0, wake >= 0 else { throw SpawnError(description: "epoll: \(String(cString: strerror(errno)))") }
        capstan_epoll_add(epoll, wake)
        let thread = Thread { [self] in loop() }
        thread.name = "capstan-process-watcher"
        thread.start()
    }

    /// Calls `onExit` once when the process exits (at once when it is already gone).
    public func watch(_ identity: ProcessIdentity, onExit: @escaping @Sendable (ProcessExit) -> Void) {
        let fd = capstan_pidfd_open(identity.pid)
        guard fd >= 0, identity.isAlive || isZombieChild(identity.pid) else {
            if fd >= 0 { close(fd) }
            onExit(reap(identity.pid))
            return
        }
        state.withLock { $0.watches[fd] = Watch(identity: identity, onExit: onExit) }
        capstan_epoll_add(epoll, fd)
    }

    public func stop() {
        state.withLock { $0.stopped = true }
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
    }

    private func isZombieChild(_ pid: Int32) -> Bool {
        var info = siginfo_t()
        return waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info._sifields._sigchld.si_pid == pid
    }

    /// Collects the exit status of our own child; `.unknown` for a process that is not.
    private func reap(_ pid: Int32) -> ProcessExit {
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        guard result == pid else { return .unknown }
        if status & 0x7f == 0 { return .exited((status >> 8) & 0xff) }
        return .signalled(status & 0x7f)
    }

    private func loop() {
        var ready = [Int32](repeating: -1, count: 32)
        while !state.withLock({ $0.stopped }) {
            let count = capstan_epoll_wait(epoll, &ready, Int32(ready.count), -1)
            if count < 0 { if errno == EINTR { continue } else { break } }
            for fd in ready.prefix(Int(count)) {
                if fd == wake { continue }
                guard let watch = state.withLock({ $0.watches.removeValue(forKey: fd) }) else { continue }
                capstan_epoll_remove(epoll, fd)
                close(fd)
                watch.onExit(reap(watch.identity.pid))
            }
        }
        close(epoll)
        close(wake)
    }
}

extension Spawner {
    /// Stops a process group: SIGTERM, then SIGKILL once `grace` has passed. Returns whether
    /// the process had to be killed.
    @discardableResult
    public static func stop(_ identity: ProcessIdentity, grace: Duration) async -> Bool {
        guard identity.isAlive else { return false }
        kill(-identity.pid, SIGTERM)
        let deadline = ContinuousClock.now + grace
        while ContinuousClock.now < deadline {
            if !identity.isAlive { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        kill(-identity.pid, SIGKILL)
        return true
    }
}

/// The end of an instance's log, for messages: why a process exited is usually in its last
/// lines.
public enum LogTail {
    /// The last `count` non-empty lines of the file (at most its last `maxBytes`), each cut
    /// to `lineLength` characters; empty when the file cannot be read.
    public static func lastLines(of path: String, count: Int, maxBytes: Int = 4096, lineLength: Int = 200) -> [String] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return [] }
        let size = Int(info.st_size)
        let start = max(0, size - maxBytes)
        var buffer = [UInt8](repeating: 0, count: size - start)
        let read = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(start)) }
        guard read > 0 else { return [] }
        var lines = String(decoding: buffer[..<read], as: UTF8.self).split(whereSeparator: \.isNewline)
        if start > 0, !lines.isEmpty { lines.removeFirst() }  // cut in the middle
        return lines.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.suffix(count).map {
            $0.count > lineLength ? String($0.prefix(lineLength)) + "..." : $0
        }
    }
}
