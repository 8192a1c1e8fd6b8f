import Foundation
import Synchronization
import Testing
@testable import CapstanRuntime

/// The inotify watcher on a real temporary directory.
@Suite(.serialized, .timeLimit(.minutes(1))) struct DirectoryWatcherTests {
    /// Collects batches from a watcher in the background.
    final class Collector: Sendable {
        let task: Task<Void, Never>

        init(_ watcher: DirectoryWatcher) {
            let box = Box()
            task = Task { [box] in
                for await batch in watcher.changes { box.append(batch) }
            }
            self.box = box
        }

        let box: Box
        final class Box: Sendable {
            let items = Mutex<[DirectoryWatcher.Batch]>([])
            func append(_ batch: DirectoryWatcher.Batch) { items.withLock { $0.append(batch) } }
        }

        var all: [DirectoryWatcher.Batch] { box.items.withLock { $0 } }
        var paths: Set<String> { all.reduce(into: Set<String>()) { $0.formUnion($1.paths) } }

        /// Waits until `condition` holds over the batches seen, up to `seconds`.
        func wait(seconds: Double = 5, until condition: ([DirectoryWatcher.Batch]) -> Bool) async -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if condition(all) { return true }
                try? await Task.sleep(for: .milliseconds(20))
            }
            return condition(all)
        }
    }

    static func temporaryDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "capstan-watch-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func aWrittenFileIsReported() async throws {
        let root = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let watcher = try DirectoryWatcher(root: root)
        defer { watcher.stop() }
        let collector = Collector(watcher)
        try "a: 1\n".write(toFile: root + "/web.yaml", atomically: false, encoding: .utf8)
        #expect(await collector.wait { _ in collector.paths.contains(root + "/web.yaml") })
    }

    @Test func aBurstOfFilesIsOneBatch() async throws {
        let root = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let watcher = try DirectoryWatcher(root: root, quiet: .milliseconds(200), maxDelay: .seconds(5))
        defer { watcher.stop() }
        let collector = Collector(watcher)
        for i in 0..<500 {
            try "n: \(i)\n".write(toFile: root + "/spec-\(i).yaml", atomically: false, encoding: .utf8)
        }
        #expect(await collector.wait { _ in collector.paths.count >= 500 })
        // A git pull's worth of writes arrives as one batch (two if the machine stalls mid-burst).
        #expect(collector.all.count <= 2, "\(collector.all.count) batches")
    }

    @Test func newSubdirectoriesAreWatched() async throws {
        let root = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let watcher = try DirectoryWatcher(root: root)
        defer { watcher.stop() }
        let collector = Collector(watcher)
        try FileManager.default.createDirectory(atPath: root + "/team-a", withIntermediateDirectories: true)
        #expect(await collector.wait { _ in collector.paths.contains(root + "/team-a") })
        try "a: 1\n".write(toFile: root + "/team-a/web.yaml", atomically: false, encoding: .utf8)
        #expect(await collector.wait { _ in collector.paths.contains(root + "/team-a/web.yaml") })
    }

    @Test func deletionsAndRenamesAreReported() async throws {
        let root = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        try "a: 1\n".write(toFile: root + "/old.yaml", atomically: false, encoding: .utf8)
        try "b: 1\n".write(toFile: root + "/gone.yaml", atomically: false, encoding: .utf8)
        let watcher = try DirectoryWatcher(root: root)
        defer { watcher.stop() }
        let collector = Collector(watcher)
        try FileManager.default.moveItem(atPath: root + "/old.yaml", toPath: root + "/new.yaml")
        try FileManager.default.removeItem(atPath: root + "/gone.yaml")
        #expect(await collector.wait { _ in
            collector.paths.isSuperset(of: [root + "/old.yaml", root + "/new.yaml", root + "/gone.yaml"])
        })
    }

    @Test func hiddenEntriesAreIgnored() async throws {
        let root = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: root + "/.git", withIntermediateDirectories: true)
        let watcher = try DirectoryWatcher(root: root)
        defer { watcher.stop() }
        let collector = Collector(watcher)
        try "x".write(toFile: root + "/.git/index", atomically: false, encoding: .utf8)
        try "x".write(toFile: root + "/.hidden.yaml", atomically: false, encoding: .utf8)
        try "a: 1\n".write(toFile: root + "/seen.yaml", atomically: false, encoding: .utf8)
        #expect(await collector.wait { _ in collector.paths.contains(root + "/seen.yaml") })
        #expect(collector.paths == [root + "/seen.yaml"])
    }

    /// A reader busy for a while (a slow sync) misses nothing: the batches it did not take
    /// are one when it comes back. (A bounded buffer of batches dropped the oldest.)
    @Test func batchesNotTakenYetAreMergedNotDropped() async throws {
        let root = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let watcher = try DirectoryWatcher(root: root, quiet: .milliseconds(2), maxDelay: .milliseconds(20))
        defer { watcher.stop() }
        var iterator = watcher.changes.makeAsyncIterator()
        try "first\n".write(toFile: root + "/first.yaml", atomically: false, encoding: .utf8)
        let first = await iterator.next()
        #expect(first?.paths == [root + "/first.yaml"])
        // 60 changes, each its own batch (the quiet time passes between them), none taken.
        for i in 0..<60 {
            try "n: \(i)\n".write(toFile: root + "/spec-\(i).yaml", atomically: false, encoding: .utf8)
            try await Task.sleep(for: .milliseconds(15))
        }
        try await Task.sleep(for: .milliseconds(200))
        var seen = Set<String>()
        var batches = 0
        while seen.count < 60, batches < 5, let batch = await iterator.next() {
            seen.formUnion(batch.paths.subtracting([root + "/first.yaml"]))
            batches += 1
        }
        #expect(seen == Set((0..<60).map { root + "/spec-\($0).yaml" }))
        #expect(batches == 1, "\(batches) batches")
    }

    @Test func aBatchHandedBackComesAgainWithTheNextChanges() async throws {
        let root = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let watcher = try DirectoryWatcher(root: root, quiet: .milliseconds(2))
        defer { watcher.stop() }
        var iterator = watcher.changes.makeAsyncIterator()
        try "a\n".write(toFile: root + "/a.yaml", atomically: false, encoding: .utf8)
        let failed = try #require(await iterator.next())
        watcher.redo(failed)
        try "b\n".write(toFile: root + "/b.yaml", atomically: false, encoding: .utf8)
        try await Task.sleep(for: .milliseconds(100))
        let again = await iterator.next()
        #expect(again?.paths == [root + "/a.yaml", root + "/b.yaml"])
    }

    /// A Kubernetes ConfigMap volume: the visible files are symlinks through `..data`, which the
    /// kubelet swaps to a new hidden directory. Only hidden entries change, and that is a change
    /// of every file: a full read.
    @Test func aConfigMapVolumeSwappingItsDataIsAFullRead() async throws {
        let root = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let files = FileManager.default
        try files.createDirectory(atPath: root + "/..2026_a", withIntermediateDirectories: true)
        try "v: 1\n".write(toFile: root + "/..2026_a/web.yaml", atomically: false, encoding: .utf8)
        try files.createSymbolicLink(atPath: root + "/..data", withDestinationPath: "..2026_a")
        try files.createSymbolicLink(atPath: root + "/web.yaml", withDestinationPath: "..data/web.yaml")
        let watcher = try DirectoryWatcher(root: root, quiet: .milliseconds(5))
        defer { watcher.stop() }
        let collector = Collector(watcher)
        // What the kubelet does on an update.
        try files.createDirectory(atPath: root + "/..2026_b", withIntermediateDirectories: true)
        try "v: 2\n".write(toFile: root + "/..2026_b/web.yaml", atomically: false, encoding: .utf8)
        try files.createSymbolicLink(atPath: root + "/..data_tmp", withDestinationPath: "..2026_b")
        #expect(rename(root + "/..data_tmp", root + "/..data") == 0)
        try files.removeItem(atPath: root + "/..2026_a")
        #expect(await collector.wait { $0.contains { $0.overflowed } })
        #expect(try String(contentsOfFile: root + "/web.yaml", encoding: .utf8) == "v: 2\n")
    }

    /// A root reached through a symlink swapped to another directory (git-sync's link, a
    /// `current -> releases/N` layout, the old directory kept): read whole, and watched there.
    @Test func aRootWhoseSymlinkIsSwappedIsReadWholeAndWatchedAnew() async throws {
        let base = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: base) }
        let files = FileManager.default
        for release in ["r1", "r2"] {
            try files.createDirectory(atPath: base + "/" + release, withIntermediateDirectories: true)
            try "release: \(release)\n".write(toFile: base + "/\(release)/web.yaml", atomically: false, encoding: .utf8)
        }
        try files.createSymbolicLink(atPath: base + "/current", withDestinationPath: "r1")
        let root = base + "/current"
        let watcher = try DirectoryWatcher(root: root, quiet: .milliseconds(5))
        defer { watcher.stop() }
        let collector = Collector(watcher)
        try files.createSymbolicLink(atPath: base + "/next", withDestinationPath: "r2")
        #expect(rename(base + "/next", root) == 0)
        #expect(await collector.wait { $0.contains { $0.overflowed } })
        // The new release is watched (the old one was the only one watched before).
        try "release: r2, edited\n".write(toFile: base + "/r2/web.yaml", atomically: false, encoding: .utf8)
        #expect(await collector.wait { _ in collector.paths.contains(root + "/web.yaml") })
    }

    /// A subdirectory that is a symlink, switched to another directory: the new one is watched.
    @Test func aSubdirectorySymlinkSwitchedIsWatchedWhereItLeads() async throws {
        let root = try Self.temporaryDirectory(), elsewhere = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root); try? FileManager.default.removeItem(atPath: elsewhere) }
        let files = FileManager.default
        for release in ["a", "b"] { try files.createDirectory(atPath: elsewhere + "/" + release, withIntermediateDirectories: true) }
        try files.createSymbolicLink(atPath: root + "/team", withDestinationPath: elsewhere + "/a")
        let watcher = try DirectoryWatcher(root: root, quiet: .milliseconds(5))
        defer { watcher.stop() }
        let collector = Collector(watcher)
        try files.createSymbolicLink(atPath: root + "/next", withDestinationPath: elsewhere + "/b")
        #expect(rename(root + "/next", root + "/team") == 0)
        #expect(await collector.wait { _ in collector.paths.contains(root + "/team") })
        try "b: 1\n".write(toFile: elsewhere + "/b/web.yaml", atomically: false, encoding: .utf8)
        #expect(await collector.wait { _ in collector.paths.contains(root + "/team/web.yaml") })
    }

    @Test func stopFinishesTheStream() async throws {
        let root = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let watcher = try DirectoryWatcher(root: root)
        let collector = Collector(watcher)
        watcher.stop()
        await collector.task.value
    }

    @Test func aMissingRootIsAnError() {
        #expect(throws: DirectoryWatcher.WatchError.self) {
            _ = try DirectoryWatcher(root: "/nonexistent/capstan-" + UUID().uuidString)
        }
    }
}
