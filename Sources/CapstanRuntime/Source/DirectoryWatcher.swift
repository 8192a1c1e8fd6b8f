#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// Watches a directory tree with inotify and reports changes in debounced batches: a burst of
/// changes (a `git pull` touching 500 files) becomes one batch once the tree has been quiet
/// for `quiet` (25 ms by default: short enough for a reaction well under 100 ms, long enough
/// to coalesce a checkout's writes) or after `maxDelay` of continuous change.
///
/// New subdirectories are watched as they appear; hidden entries (`.git`, an editor's swap
/// files) are ignored, as the spec-directory source skips them, except a hidden symlink put in
/// place: that is how a Kubernetes ConfigMap volume (`..data`) swaps every file at once, so it
/// asks for a full read. The directory behind the root is checked every second: a root reached
/// through a symlink that was swapped (git-sync's link, a `current -> releases/N` layout) is
/// watched anew and read whole. If the kernel's event queue overflows, a batch with
/// `overflowed` set asks for a full resync, which is always safe.
///
/// Nothing is dropped while the reader is busy: batches it has not taken yet are merged into
/// one (their paths joined), so a slow sync reads every change in the next batch it takes.
public final class DirectoryWatcher: Sendable {
    /// One debounced batch of changes.
    public struct Batch: Sendable, Equatable {
        /// Paths that changed (files created, written, moved, deleted; directories too).
        public var paths: Set<String>
        /// True when events were lost: resync everything.
        public var overflowed: Bool

        public init(paths: Set<String>, overflowed: Bool) {
            self.paths = paths
            self.overflowed = overflowed
        }

        /// Both batches' changes in one. Past `limit` paths it becomes a full resync: a sync
        /// of everything costs less than one of that many named files.
        mutating func merge(_ other: Batch, limit: Int = 10_000) {
            overflowed = overflowed || other.overflowed
            paths.formUnion(other.paths)
            if paths.count > limit {
                overflowed = true
                paths.removeAll()
            }
        }
    }

    /// The batches, in order; those not taken yet are merged into one. One reader.
    public struct Changes: AsyncSequence, Sendable {
        fileprivate let watcher: DirectoryWatcher

        public func makeAsyncIterator() -> AsyncIterator {
            AsyncIterator(watcher: watcher, ticks: watcher.ticks.makeAsyncIterator())
        }

        public struct AsyncIterator: AsyncIteratorProtocol {
            fileprivate let watcher: DirectoryWatcher
            fileprivate var ticks: AsyncStream<Void>.AsyncIterator

            public mutating func next() async -> Batch? {
                while true {
                    if let batch = watcher.take() { return batch }
                    if await ticks.next() == nil { return watcher.take() }
                }
            }
        }
    }

    public let root: String
    public var changes: Changes { Changes(watcher: self) }

    private let fd: Int32
    private let warn: @Sendable (String) -> Void
    private let wakePipe: (read: Int32, write: Int32)
    private let state: Mutex<State>
    private let ticks: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    private struct State {
        var watches: [Int32: String] = [:]
        /// The directory the root led to when it was watched (device, inode).
        var rootIdentity: (UInt64, UInt64)?
        var stopped = false
        /// Changes reported and not taken yet.
        var ready: Batch?
        /// Why directories could not be watched (each said once).
        var unwatchable: Set<String> = []
    }

    public struct WatchError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Starts watching `root` (which must be a directory).
    /// `warn` hears of directories that cannot be watched (their changes wait for the resync).
    public init(root: String, quiet: Duration = .milliseconds(25), maxDelay: Duration = .seconds(1),
                warn: @escaping @Sendable (String) -> Void = { _ in }) throws {
        self.root = root
        self.warn = warn
        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { throw WatchError(description: "inotify_init1: \(String(cString: strerror(errno)))") }
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else {
            close(fd)
            throw WatchError(description: "pipe2: \(String(cString: strerror(errno)))")
        }
        for end in pipeFDs {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        self.fd = fd
        self.wakePipe = (pipeFDs[0], pipeFDs[1])
        self.state = Mutex(State())
        (ticks, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        try addWatches(below: root)
        let thread = Thread { [self] in self.run(quiet: quiet, maxDelay: maxDelay) }
        thread.name = "capstan-inotify"
        thread.start()
    }

    /// Stops watching; the stream finishes.
    public func stop() {
        let first = state.withLock { state -> Bool in
            defer { state.stopped = true }
            return !state.stopped
        }
        if first {
            var byte: UInt8 = 1
            _ = write(wakePipe.write, &byte, 1)
        }
    }

    deinit {
        stop()
    }

    /// Hands `batch` back to be read again with the next changes (a sync that failed).
    public func redo(_ batch: Batch) {
        offer(batch)
    }

    private func offer(_ batch: Batch) {
        state.withLock { state in
            if state.ready == nil { state.ready = batch } else { state.ready!.merge(batch) }
        }
        continuation.yield(())
    }

    private func take() -> Batch? {
        state.withLock { state in
            defer { state.ready = nil }
            return state.ready
        }
    }

    private static let mask = UInt32(IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
        | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF) | UInt32(IN_ONLYDIR) | UInt32(IN_EXCL_UNLINK)

    private func addWatches(below directory: String) throws {
        let descriptor = inotify_add_watch(fd, directory, DirectoryWatcher.mask)
        guard descriptor >= 0 else {
            let reason = errno == ENOSPC ? "the inotify watch limit is reached (sysctl fs.inotify.max_user_watches)" : String(cString: strerror(errno))
            if directory == root {
                throw WatchError(description: "cannot watch \(directory): \(reason)")
            }
            // Said once per cause: a tree past the limit would say it for every directory.
            let first = state.withLock { $0.unwatchable.insert(reason).inserted }
            if first { warn("cannot watch \(directory) (\(reason)): changes there are seen at the resync; others may follow") }
            return
        }
        let isNew = state.withLock { state -> Bool in
            let known = state.watches[descriptor] != nil
            state.watches[descriptor] = directory
            return !known
        }
        if directory == root {
            let identity = Self.identity(of: root)
            state.withLock { $0.rootIdentity = identity }
        }
        guard isNew, let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in entries where !name.hasPrefix(".") {
            let path = directory + "/" + name
            var info = stat()
            if stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR {
                try? addWatches(below: path)
            }
        }
    }

    /// The directory `path` leads to, symlinks followed.
    private static func identity(of path: String) -> (UInt64, UInt64)? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return (UInt64(info.st_dev), UInt64(info.st_ino))
    }

    /// Whether the root now leads to another directory than the one watched (or to one again):
    /// then the old watches go and the tree is watched from the root anew.
    private func rewatchIfTheRootMoved() -> Bool {
        let now = Self.identity(of: root)
        let (watched, descriptors) = state.withLock { ($0.rootIdentity, Array($0.watches.keys)) }
        if let now, let watched, now == watched { return false }
        if now == nil && watched == nil { return false }
        for descriptor in descriptors { inotify_rm_watch(fd, descriptor) }
        state.withLock { state in
            state.watches.removeAll()
            state.rootIdentity = nil
        }
        if now != nil { try? addWatches(below: root) }
        return true
    }

    private func run(quiet: Duration, maxDelay: Duration) {
        defer {
            close(fd)
            close(wakePipe.read)
            close(wakePipe.write)
            continuation.finish()
        }
        var pending = Set<String>()
        var overflowed = false
        var firstAt: ContinuousClock.Instant?
        var lastAt: ContinuousClock.Instant?
        let clock = ContinuousClock()
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var rootCheckedAt = clock.now
        while true {
            if clock.now - rootCheckedAt >= .seconds(1) {
                rootCheckedAt = clock.now
                if rewatchIfTheRootMoved() {
                    overflowed = true
                    if firstAt == nil { firstAt = rootCheckedAt }
                    lastAt = rootCheckedAt
                }
            }
            var timeout: Int32 = 1000
            if let first = firstAt, let last = lastAt {
                let due = min(last + quiet, first + maxDelay)
                let remaining = clock.now.duration(to: due)
                if remaining <= .zero {
                    offer(Batch(paths: pending, overflowed: overflowed))
                    pending.removeAll()
                    overflowed = false
                    firstAt = nil
                    lastAt = nil
                    continue
                }
                timeout = Int32(min(1000, max(1, (remaining.seconds * 1000).rounded(.up))))
            }
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakePipe.read, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, 2, timeout)
            if ready < 0 {
                if errno == EINTR { continue }
                return
            }
            if fds[1].revents != 0 || state.withLock({ $0.stopped }) { return }
            guard fds[0].revents != 0 else { continue }
            while true {
                let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if count <= 0 { break }
                var offset = 0
                while offset + MemoryLayout<inotify_event>.size <= count {
                    let (descriptor, mask, length) = buffer.withUnsafeBytes { raw -> (Int32, UInt32, Int) in
                        let event = raw.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
                        return (event.wd, event.mask, Int(event.len))
                    }
                    let nameStart = offset + MemoryLayout<inotify_event>.size
                    let nameBytes = buffer[nameStart..<min(nameStart + length, count)].prefix(while: { $0 != 0 })
                    let name = String(decoding: nameBytes, as: UTF8.self)
                    offset = nameStart + length
                    if mask & UInt32(IN_Q_OVERFLOW) != 0 {
                        overflowed = true
                        continue
                    }
                    if mask & UInt32(IN_IGNORED) != 0 {
                        state.withLock { _ = $0.watches.removeValue(forKey: descriptor) }
                        continue
                    }
                    guard let directory = state.withLock({ $0.watches[descriptor] }) else { continue }
                    if name.hasPrefix(".") {
                        // A hidden symlink put in place swaps what visible symlinks lead to
                        // (a ConfigMap volume's `..data`): every file may have changed.
                        var info = stat()
                        if mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0, lstat(directory + "/" + name, &info) == 0, (info.st_mode & S_IFMT) == S_IFLNK {
                            overflowed = true
                        }
                        continue
                    }
                    let path = name.isEmpty ? directory : directory + "/" + name
                    // A directory, or a symlink to one (switched to another target), put in place.
                    var info = stat()
                    if mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0,
                       mask & UInt32(IN_ISDIR) != 0 || (stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR) {
                        try? addWatches(below: path)
                        // Files created before the watch existed are part of this change.
                        pending.insert(path)
                    }
                    pending.insert(path)
                }
            }
            if !pending.isEmpty || overflowed {
                let now = clock.now
                if firstAt == nil { firstAt = now }
                lastAt = now
            }
        }
    }
}

