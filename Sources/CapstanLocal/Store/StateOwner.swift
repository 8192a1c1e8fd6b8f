import CapstanModel
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The daemon's claim on a state directory, held for its whole life: exactly one daemon acts
/// on a directory, or several that elect a leader among themselves, never both.
///
/// It is a `flock` on `<state>/daemon.lock` (closed on exec, so no instance inherits it, and
/// released by the kernel when the daemon dies, kill -9 included): exclusive for a daemon
/// without leader election, shared for daemons with it. The file records who holds it (pid,
/// start, mode) so a refused daemon can name the holder. The CLI's commands (`get`, `down`,
/// requests) never take it.
public final class StateOwner: Sendable {
    public static let fileName = "daemon.lock"

    public let path: String
    private let descriptor: Int32

    public enum Mode: String, Sendable {
        /// Alone: no other daemon may run on the directory.
        case exclusive
        /// With leader election: other electing daemons may run beside it (one leads).
        case electing
    }

    public struct Refused: Error, CustomStringConvertible {
        public var description: String
    }

    /// Takes the claim, or throws naming the daemon that holds it and what to do.
    public init(directory: String, mode: Mode, now: Date = Date()) throws {
        path = directory + "/" + Self.fileName
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw Refused(description: "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        guard flock(fd, (mode == .exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0 else {
            let holders = Self.holders(path)
            close(fd)
            let who = holders.isEmpty ? "another daemon" : holders.map(\.description).joined(separator: ", ")
            switch mode {
            case .exclusive:
                throw Refused(description: "the state directory \(directory) is in use by \(who): one daemon acts on a state directory. Stop it first, or run every daemon of this directory with --leader-elect (one leads, the others wait)")
            case .electing:
                throw Refused(description: "the state directory \(directory) is in use by \(who), which runs without --leader-elect: stop it first, or start it with --leader-elect too")
            }
        }
        descriptor = fd
        // Who holds it: one line per holder. Alone, the file is rewritten; electing daemons
        // share it and each appends its line in one write (a read-and-rewrite by two daemons
        // starting together lost one of them). A line whose pid is gone is left by a daemon
        // that died; readers skip it.
        let line = Holder(pid: getpid(), mode: mode, since: now).line + "\n"
        if mode == .exclusive {
            _ = ftruncate(fd, 0)
            _ = line.withCString { pwrite(fd, $0, strlen($0), 0) }
        } else {
            let append = open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
            if append >= 0 {
                _ = line.withCString { write(append, $0, strlen($0)) }
                close(append)
            }
        }
    }

    deinit {
        flock(descriptor, LOCK_UN)
        close(descriptor)
    }

    /// A daemon named in the lock file.
    public struct Holder: Sendable, CustomStringConvertible {
        public var pid: Int32
        public var mode: Mode
        public var since: Date

        var line: String { "\(pid) \(mode.rawValue) \(Int(since.timeIntervalSince1970))" }
        var isAlive: Bool { kill(pid, 0) == 0 || errno == EPERM }

        public var description: String {
            "a daemon (pid \(pid)\(mode == .electing ? ", with --leader-elect" : ""), running since \(Timestamp(since)))"
        }
    }

    /// The live daemons the lock file names.
    public static func holders(_ path: String) -> [Holder] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ")
            guard parts.count == 3, let pid = Int32(parts[0]), let mode = Mode(rawValue: String(parts[1])), let since = Double(parts[2]) else { return nil }
            let holder = Holder(pid: pid, mode: mode, since: Date(timeIntervalSince1970: since))
            return holder.isAlive ? holder : nil
        }
    }
}

/// What a state directory is, as the kernel knows it: a daemon stops acting the moment its
/// directory or database is deleted, replaced or unmounted, instead of writing on into an
/// unlinked file while the next daemon starts a second set of instances.
public struct StateDirectoryIdentity: Sendable, Equatable {
    public var directory: FileID
    public var database: FileID

    public struct FileID: Sendable, Equatable {
        public var device: UInt64
        public var inode: UInt64
    }

    static func id(_ path: String) -> FileID? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return FileID(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }

    /// The identity now, or nil when the directory or its database is not there.
    public static func current(of directory: String) -> StateDirectoryIdentity? {
        guard let dir = id(directory), let db = id(directory + "/" + StateStore.fileName) else { return nil }
        return StateDirectoryIdentity(directory: dir, database: db)
    }

    /// What changed from `self`, as a sentence, or nil when nothing did.
    public func change(in directory: String) -> String? {
        guard let dir = Self.id(directory) else { return "the state directory \(directory) was deleted" }
        if dir != self.directory { return "the state directory \(directory) was replaced by another directory" }
        let database = directory + "/" + StateStore.fileName
        guard let db = Self.id(database) else { return "the state store \(database) was deleted" }
        if db != self.database { return "the state store \(database) was replaced by another file" }
        return nil
    }
}
