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
        Dictionary(MarkedInstance.all().map { ($0.id, $0.identity) }, uniquingKeysWith: { first, _ in first })
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
    /// Output through a log writer that bounds the log; nil: appended to `logPath` directly.
    public var logRotation: LogRotation?

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
        let log: Int32
        if let rotation = spec.logRotation, let writer = try? LogWriter.start(path: spec.logPath, rotation: rotation) {
            // Output goes through a pipe to a writer process that rotates the log at exactly
            // the size limit; it outlives the daemon with the instance and ends at EOF. (Should
            // no writer start, the instance still does, appending to its log directly.)
            log = writer
        } else {
            log = open(spec.logPath, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
            guard log >= 0 else { throw SpawnError(description: "cannot open log \(spec.logPath): \(String(cString: strerror(errno)))") }
        }
        defer { close(log) }

        let environment = spec.environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let pid: pid_t
        do {
            pid = try posixSpawn(program, arguments: spec.command, environment: environment) { actions in
                posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
                posix_spawn_file_actions_adddup2(&actions, log, 1)
                posix_spawn_file_actions_adddup2(&actions, log, 2)
                capstan_spawn_add_chdir(&actions, spec.workingDirectory)
            }
        } catch {
            throw SpawnError(description: "cannot start \(program): \(String(cString: strerror(error.code)))")
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
    /// An errno from `posix_spawn`.
    struct SpawnCode: Error {
        var code: Int32
    }

    /// `posix_spawn` of `program` in a process group of its own, with an empty signal mask
    /// (and, with `resetSignals`, default dispositions), every descriptor from 3 up closed,
    /// and the file actions `configure` adds. Returns the pid; throws the errno.
    static func posixSpawn(_ program: String, arguments: [String], environment: [String], resetSignals: Bool = true,
                           configure: (inout posix_spawn_file_actions_t) -> Void) throws(SpawnCode) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        configure(&actions)
        capstan_spawn_add_closefrom(&actions, 3)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var flags = POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK
        var defaults = sigset_t()
        sigemptyset(&defaults)
        if resetSignals {
            for signal in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2] { sigaddset(&defaults, signal) }
            posix_spawnattr_setsigdefault(&attributes, &defaults)
            flags |= POSIX_SPAWN_SETSIGDEF
        }
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(flags))

        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, program, &actions, &attributes, argv, envp)
        guard result == 0 else { throw SpawnCode(code: result) }
        return pid
    }

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
        // Looked at once more: a task resumed late (a busy executor) may find it gone already.
        if !identity.isAlive { return false }
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

/// An instance found by what its environment says, without the state store: every instance
/// is started with `CAPSTAN_STATE` (the absolute state directory) and `CAPSTAN_INSTANCE`, so a
/// daemon or `capstan down` finds it even when no inventory row knows it (the database was
/// deleted, damaged or written by a daemon that should not have acted).
public struct MarkedInstance: Sendable, Hashable {
    /// The variable that names the state directory an instance belongs to.
    public static let stateVariable = "CAPSTAN_STATE"

    public var id: String
    /// The process group leader (the instance; its children share the group and the variables).
    public var identity: ProcessIdentity
    public var stateDirectory: String?
    public var namespace: String?
    public var deployment: String?

    /// Every live process group leader that carries `CAPSTAN_INSTANCE` (of `stateDirectory`
    /// only, when given; instances from before the state variable existed have none and match
    /// no directory).
    public static func all(stateDirectory: String? = nil) -> [MarkedInstance] {
        var found: [MarkedInstance] = []
        let prefix = Array("CAPSTAN_".utf8)
        let own = getpid()
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid != own, let environ = FileManager.default.contents(atPath: "/proc/\(entry)/environ") else { continue }
            var variables: [String: String] = [:]
            for variable in environ.split(separator: 0) where variable.starts(with: prefix) {
                guard let equals = variable.firstIndex(of: UInt8(ascii: "=")) else { continue }
                variables[String(decoding: variable[variable.startIndex..<equals], as: UTF8.self)] = String(decoding: variable[(equals + 1)...], as: UTF8.self)
            }
            guard let id = variables["CAPSTAN_INSTANCE"] else { continue }
            if let stateDirectory, variables[stateVariable] != stateDirectory { continue }
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            // The spawned process leads its own group; its children inherit the variables.
            guard fields.count > 19, fields[0] != "Z", Int32(fields[2]) == pid, let start = UInt64(fields[19]) else { continue }
            found.append(MarkedInstance(id: id, identity: ProcessIdentity(pid: pid, startTime: start), stateDirectory: variables[stateVariable],
                                        namespace: variables["CAPSTAN_NAMESPACE"], deployment: variables["CAPSTAN_DEPLOYMENT"]))
        }
        return found.sorted { $0.id < $1.id }
    }

    /// `NS/DEPLOYMENT ID` for messages.
    public var name: String { "\(namespace ?? "?")/\(deployment ?? "?") \(id)" }
}

/// How an instance's log is bounded: rotated at `maxBytes`, `files` files kept (the current
/// one included), so its output costs at most `maxBytes × files` of disk.
public struct LogRotation: Sendable, Hashable {
    public var maxBytes: Int
    public var files: Int

    public init(maxBytes: Int, files: Int) {
        self.maxBytes = maxBytes
        self.files = files
    }
}

/// The log writer: this executable started again with `__log-writer` (handled in C before
/// Swift starts, `capstan_log_writer_main`), reading the instance's output from a pipe and
/// writing it to the log, rotating at a line boundary before the limit (a line longer than the
/// limit is split), renaming files (never copying or truncating), losing nothing. It has its
/// own process group and ignores the usual stop signals, so stopping an instance leaves it to
/// write the last lines and end at EOF.
enum LogWriter {
    /// This very executable: `/proc/self/exe` is resolved in the child before its exec, so the
    /// writer is the daemon's own binary even when the file was replaced or removed since (an
    /// upgrade in place, a rebuild).
    static let executable = "/proc/self/exe"

    /// Starts a writer for `path`; returns the pipe's write end (close-on-exec) for the instance.
    static func start(path: String, rotation: LogRotation) throws(SpawnError) -> Int32 {
        let program = executable
        var ends: [Int32] = [-1, -1]
        guard capstan_pipe_cloexec(&ends) == 0 else { throw SpawnError(description: "cannot make a pipe for the log: \(String(cString: strerror(errno)))") }
        let words: [String] = ["capstan", "__log-writer", path, String(rotation.maxBytes), String(max(1, rotation.files))]
        // Its own process group, the signals it ignores set by itself; no environment.
        let pid: pid_t
        do {
            pid = try Spawner.posixSpawn(program, arguments: words, environment: [], resetSignals: false) { actions in
                posix_spawn_file_actions_adddup2(&actions, ends[0], 0)
                posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
                posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
            }
            close(ends[0])
        } catch {
            close(ends[0])
            close(ends[1])
            throw SpawnError(description: "cannot start the log writer: \(String(cString: strerror(error.code)))")
        }
        // The first process forks the writer off and exits at once: reaped here, it leaves the
        // writer to init, so no daemon has to wait for it.
        Task.detached {
            var status: Int32 = 0
            for _ in 0..<1000 {
                let result = waitpid(pid, &status, WNOHANG)
                if result == pid || (result < 0 && errno != EINTR) { return }
                try? await Task.sleep(for: .milliseconds(5))
            }
        }
        return ends[1]
    }
}
