import CapstanControllers
import CapstanModel
import Foundation
import Synchronization
import Testing
@testable import CapstanLocal

/// The supervisor's process primitives against real processes.
@Suite struct ProcessTests {
    let directory = NSTemporaryDirectory() + "capstan-proc-" + UUID().uuidString

    func spec(_ script: String, env: [String: String] = [:], memory: UInt64? = nil) throws -> ProcessSpec {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return ProcessSpec(command: ["sh", "-c", script], environment: ["PATH": "/usr/bin:/bin"].merging(env) { $1 },
                           workingDirectory: directory, logPath: directory + "/instance.log", memoryLimit: memory)
    }

    func log() -> String { (try? String(contentsOfFile: directory + "/instance.log", encoding: .utf8)) ?? "" }

    /// Waits for an exit reported by the watcher; returns it with the time it took.
    func exit(of identity: ProcessIdentity, _ watcher: ProcessWatcher, after action: () -> Void) async throws -> (ProcessExit, Duration) {
        // The time is taken in the watcher's callback: what is measured is the watcher, not how
        // soon this task is scheduled again on a busy machine.
        let seen = Mutex<(ProcessExit, ContinuousClock.Instant)?>(nil)
        watcher.watch(identity) { exit in seen.withLock { $0 = (exit, ContinuousClock.now) } }
        let start = ContinuousClock.now
        action()
        for _ in 0..<2500 where seen.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(2)) }
        let result = seen.withLock { $0 }
        let (exit, at) = try #require(result)
        return (exit, at - start)
    }

    @Test func startsInItsOwnGroupWithTheGivenEnvironmentDirectoryAndLog() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let identity = try Spawner.spawn(try spec("echo port=$PORT dir=$(pwd) home=${HOME:-none}; echo oops >&2; exec sleep 30", env: ["PORT": "18123"]))
        defer { kill(-identity.pid, SIGKILL) }
        #expect(identity.isAlive)
        #expect(getpgid(identity.pid) == identity.pid, "its own process group")
        for _ in 0..<200 where !log().contains("oops") { try await Task.sleep(for: .milliseconds(5)) }
        #expect(log().contains("port=18123 dir=\(directory) home=none"), "only the given environment")
        #expect(log().contains("oops"), "stderr goes to the log too")
        // SIGTERM is deliverable (not blocked, not ignored) in the child.
        let watcher = try ProcessWatcher()
        let (exit, _) = try await self.exit(of: identity, watcher) { kill(identity.pid, SIGTERM) }
        #expect(exit == .signalled(SIGTERM))
        #expect(!identity.isAlive)
    }

    @Test func theDaemonsDescriptorsDoNotLeakIntoInstances() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A descriptor without CLOEXEC, as a listening socket of a library might be.
        let leaky = open("/dev/null", O_RDONLY)
        defer { close(leaky) }
        let identity = try Spawner.spawn(try spec("ls /proc/$$/fd | tr '\\n' ' '; echo; echo done"))
        defer { kill(-identity.pid, SIGKILL) }
        for _ in 0..<400 where !log().contains("done") { try await Task.sleep(for: .milliseconds(5)) }
        let descriptors = log().split(separator: "\n").first.map { $0.split(separator: " ").map(String.init) } ?? []
        #expect(descriptors.contains("1"))
        #expect(!descriptors.contains(String(leaky)), "descriptor \(leaky) must not be inherited: \(descriptors)")
    }

    @Test func exitsAreSeenAtOnce() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let watcher = try ProcessWatcher()
        let identity = try Spawner.spawn(try spec("exec sleep 30"))
        try await Task.sleep(for: .milliseconds(50))
        let (exit, took) = try await self.exit(of: identity, watcher) { kill(identity.pid, SIGKILL) }
        #expect(exit == .signalled(SIGKILL))
        #expect(took < .seconds(1), "noticed in \(took)")

        let quick = try Spawner.spawn(try spec("exit 7"))
        try await Task.sleep(for: .milliseconds(100))
        let (status, _) = try await self.exit(of: quick, watcher) {}
        #expect(status == .exited(7), "an already exited child is reported with its status")
    }

    @Test func aProcessThatIsNotOurChildIsWatchedToo() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A grandchild (its parent exits at once): as an instance left by a previous daemon.
        let pidFile = directory + "/pid"
        let parent = try Spawner.spawn(try spec("sleep 30 & echo $! > \(pidFile)"))
        var pid: Int32? = nil
        for _ in 0..<200 {
            if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let value = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) { pid = value; break }
            try await Task.sleep(for: .milliseconds(5))
        }
        let found = try #require(pid)
        let orphan = try #require(ProcessIdentity.of(pid: found))
        defer { kill(orphan.pid, SIGKILL) }
        _ = parent
        let watcher = try ProcessWatcher()
        let (exit, took) = try await self.exit(of: orphan, watcher) { kill(orphan.pid, SIGKILL) }
        #expect(exit == .unknown || exit == .signalled(SIGKILL))
        #expect(took < .seconds(5), "seen when the process ends, not at a poll (latency is measured by hack/bench)")
        // A recorded identity whose pid now belongs to another process is not alive.
        let reused = ProcessIdentity(pid: getpid(), startTime: 1)
        #expect(!reused.isAlive)
    }

    @Test func stopSendsTermToTheGroupThenKillsAfterTheGrace() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A well-behaved process and its child: both go on SIGTERM.
        let polite = try Spawner.spawn(try spec("sleep 30 & wait"))
        try await Task.sleep(for: .milliseconds(100))
        let killed = await Spawner.stop(polite, grace: .seconds(5))
        #expect(!killed)
        var status: Int32 = 0
        #expect(waitpid(polite.pid, &status, 0) == polite.pid)  // the watcher's job in the daemon
        for _ in 0..<200 where kill(-polite.pid, 0) == 0 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(kill(-polite.pid, 0) != 0, "nothing of the group is left")

        // One that ignores SIGTERM is killed after the grace period.
        let stubborn = try Spawner.spawn(try spec("trap '' TERM; while true; do sleep 0.05; done"))
        try await Task.sleep(for: .milliseconds(100))
        let start = ContinuousClock.now
        #expect(await Spawner.stop(stubborn, grace: .milliseconds(300)))
        #expect(ContinuousClock.now - start >= .milliseconds(300))
        try await Task.sleep(for: .milliseconds(100))
        #expect(!stubborn.isAlive)
    }

    @Test func badInputIsAClearError() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var missing = try spec("true")
        missing.command = ["no-such-command-capstan", "--flag"]
        #expect(throws: SpawnError.self) { try Spawner.spawn(missing) }
        do {
            _ = try Spawner.spawn(missing)
        } catch {
            #expect(error.description.contains("command \"no-such-command-capstan\" not found"))
        }
        var nowhere = try spec("true")
        nowhere.workingDirectory = directory + "/absent"
        #expect(throws: SpawnError(description: "working directory \(directory)/absent does not exist")) { try Spawner.spawn(nowhere) }
    }

    @Test func theMemoryLimitStopsAnAppThatExceedsIt() async throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let watcher = try ProcessWatcher()
        var hungry = try spec("")
        hungry.command = ["python3", "-c", "import time; time.sleep(0.2); b = bytearray(300 * 1024 * 1024); print('allocated')"]
        hungry.memoryLimit = 64 * 1024 * 1024
        let identity = try Spawner.spawn(hungry)
        let (exit, _) = try await self.exit(of: identity, watcher) {}
        #expect(exit == .exited(1))
        #expect(log().contains("MemoryError"))
        #expect(!log().contains("allocated"))
    }
    struct NoEvents: EventRecorder {
        func record(_ type: EventType, reason: String, message: String, about key: ObjectKey) async {}
    }

    /// A daemon killed between spawning an instance and recording its pid: the next one finds
    /// the process by its environment and adopts it instead of starting a second one.
    @Test func anInstanceStartedButNotRecordedIsAdoptedNotDuplicated() async throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory + "/state")
        let owner = ObjectKey(kind: .deployment, namespace: "default", name: "web")
        let launch = Self.launch(["sh", "-c", "sleep 60"], in: directory, logPath: directory + "/i.log")
        let first = try Supervisor(store: store, events: NoEvents(), onReady: { _, _ in }, onChange: { _ in })
        try await first.start(launch, owner: owner)
        let started = try #require(await first.identity(of: launch.id))
        defer { kill(-started.pid, SIGKILL) }
        await first.shutdown()
        // What the store holds if the daemon died before recording the pid.
        var entry = try #require(try store.inventory(type: Supervisor.inventoryType).first)
        entry.data["pid"] = nil
        entry.data["startTime"] = nil
        try store.recordInventory(entry)

        let second = try Supervisor(store: store, events: NoEvents(), onReady: { _, _ in }, onChange: { _ in })
        let (adopted, restarted) = await second.adopt()
        #expect(adopted == 1 && restarted == 0)
        #expect(await second.identity(of: launch.id) == started, "the same process, not a second one")
        #expect(try store.inventory(type: Supervisor.inventoryType).first?.data["pid"] == String(started.pid), "recorded now")
        await second.shutdown()
    }

    /// An instance of Deployment web running `command` in `workingDirectory`, with no probe.
    static func launch(_ command: [String], in workingDirectory: String, logPath: String) -> InstanceLaunch {
        InstanceLaunch(id: "web-\(UUID().uuidString.prefix(8))", revision: 1, templateHash: "h", version: "1", port: 0,
                       command: command, environment: ["PATH": "/usr/bin:/bin"],
                       workingDirectory: workingDirectory, logPath: logPath, memoryLimit: nil, probe: nil)
    }

    /// An inventory row for `launch` whose process is gone (a pid no process has).
    static func recordDead(_ launch: InstanceLaunch, owner: ObjectKey, in store: StateStore) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        try store.recordInventory(.init(type: Supervisor.inventoryType, id: launch.id, owner: owner,
                                        data: ["launch": String(decoding: try encoder.encode(launch), as: UTF8.self), "pid": "999999", "startTime": "1"],
                                        createdAt: Date()))
    }

    /// Found in the fault loop: an instance whose restart at adoption failed stayed without a
    /// process, probed and never tried again. It is retried with backoff like any exit, and
    /// keeps the reason it could not start (here its command is not there yet).
    @Test func anInstanceThatCannotBeRestartedAtAdoptionIsTriedAgain() async throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory + "/state")
        let owner = ObjectKey(kind: .deployment, namespace: "default", name: "web")
        let release = directory + "/release"
        try FileManager.default.createDirectory(atPath: release, withIntermediateDirectories: true)
        let launch = Self.launch(["./run.sh"], in: release, logPath: directory + "/i.log")
        try Self.recordDead(launch, owner: owner, in: store)
        let supervisor = try Supervisor(store: store, events: NoEvents(), onReady: { _, _ in }, onChange: { _ in })
        let (adopted, restarted) = await supervisor.adopt()
        #expect(adopted == 0 && restarted == 0)
        let waiting = await supervisor.instances(of: owner)
        #expect(waiting.first?.problem?.contains("not found") == true, "\(waiting)")
        try "#!/bin/sh\nexec sleep 60\n".write(toFile: release + "/run.sh", atomically: true, encoding: .utf8)
        chmod(release + "/run.sh", 0o755)
        var identity: ProcessIdentity?
        for _ in 0..<1500 where identity == nil {
            try await Task.sleep(for: .milliseconds(20))
            identity = await supervisor.identity(of: launch.id)
        }
        let running = try #require(identity, "tried again once its directory exists")
        defer { kill(-running.pid, SIGKILL) }
        #expect(running.isAlive)
        await supervisor.shutdown()
    }

    /// An instance whose release is gone (removed by a daemon whose records were lost) is
    /// dropped at adoption, not restarted forever: the reconcile starts a proper one.
    @Test func anInstanceWhoseReleaseIsGoneIsDroppedAtAdoption() async throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory + "/state")
        let owner = ObjectKey(kind: .deployment, namespace: "default", name: "web")
        let launch = Self.launch(["sh", "-c", "sleep 60"], in: directory + "/releases/26", logPath: directory + "/i.log")
        try Self.recordDead(launch, owner: owner, in: store)
        let changed = Mutex<[ObjectKey]>([])
        let supervisor = try Supervisor(store: store, events: NoEvents(), onReady: { _, _ in }, onChange: { key in changed.withLock { $0.append(key) } })
        let (adopted, restarted) = await supervisor.adopt()
        #expect(adopted == 0 && restarted == 0)
        #expect(await supervisor.instances(of: owner).isEmpty)
        #expect(try store.inventory(type: Supervisor.inventoryType).isEmpty)
        #expect(changed.withLock { $0 } == [owner], "its owner is reconciled")
        await supervisor.shutdown()
    }
}
