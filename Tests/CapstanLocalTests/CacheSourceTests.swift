import CapstanControllers
import CapstanModel
import CapstanRuntime
import Foundation
import Synchronization
import Testing
@testable import CapstanLocal

/// The cache against the real store and spec-directory source: what reconcilers read from
/// memory is what the store holds.
@Suite struct CacheSourceTests {
    let root = NSTemporaryDirectory() + "capstan-cache-" + UUID().uuidString

    static func app(_ name: String, command: String = "server.py") -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: Application
        metadata: {name: \(name), labels: {team: blue}}
        spec:
          source: {path: ./web}
          command: [python3, \(command)]
        """
    }

    static func deployment(_ name: String, app: String) -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: Deployment
        metadata: {name: \(name)}
        spec: {application: \(app), version: v1, replicas: 1, port: 18080}
        """
    }

    func write(_ file: String, _ text: String) throws {
        try FileManager.default.createDirectory(atPath: root + "/specs", withIntermediateDirectories: true)
        try text.write(toFile: root + "/specs/" + file, atomically: true, encoding: .utf8)
    }

    func compare(_ cache: ObjectCache, _ store: StateStore) throws {
        let records = try store.objects()
        #expect(records.count == cache.count)
        for record in records {
            let cached = cache.get(record.key)
            #expect(cached?.resource == record.resource, "\(record.key)")
            #expect(cached?.generation == record.generation)
            #expect(cached?.problems == record.problems)
            #expect(cached?.sourceFile == record.sourceFile)
        }
    }

    @Test func theCacheMatchesTheStoreThroughEditsStatusAndDeletes() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try StateStore(directory: root + "/state")
        let cache = ObjectCache()
        let objects = LocalObjectStore(store: store, cache: cache)
        let source = SpecDirectorySource(root: root + "/specs", store: store, cache: cache) { _, _ in }
        try write("web.yaml", Self.app("web"))
        try write("api.yaml", Self.app("api") + "\n---\n" + Self.deployment("api-prod", app: "api"))
        try await source.sync()
        try compare(cache, store)
        let apiKey = ObjectKey(kind: .application, namespace: "default", name: "api")
        #expect(try await objects.objects(kind: .deployment, referencing: apiKey).map(\.key.name) == ["api-prod"])
        #expect(cache.objects(labelled: "team", "blue").count == 2)

        // A status write reaches both; a spec edit keeps the status (as the store does).
        var status = ApplicationStatus()
        status.markReady(reason: "Succeeded", message: "ok", generation: 1, now: Timestamp(Date()))
        #expect(try await objects.writeStatus(apiKey, status.encode()))
        try compare(cache, store)
        #expect(cache.readiness()[.application]! == (1, 1))
        try write("api.yaml", Self.app("api", command: "app.py") + "\n---\n" + Self.deployment("api-prod", app: "api"))
        try await source.sync()
        try compare(cache, store)
        #expect(cache.get(apiKey)?.generation == 2)
        #expect(cache.readiness()[.application]! == (0, 2), "generation 2 is not observed yet")

        // A broken edit keeps the object and records its problems; fixing it clears them.
        try write("web.yaml", "kind: Application\nmetadata: {name: web}\nspec: {command: 5}\n")
        try await source.sync()
        try compare(cache, store)
        #expect(cache.get(ObjectKey(kind: .application, namespace: "default", name: "web"))?.problems.isEmpty == false)
        try write("web.yaml", Self.app("web"))
        try await source.sync()
        try compare(cache, store)

        // A label-only edit is no new generation, but the cache (and its label index) follows.
        try write("web.yaml", Self.app("web").replacingOccurrences(of: "team: blue", with: "team: red"))
        try await source.sync()
        try compare(cache, store)
        #expect(cache.objects(labelled: "team", "red").map(\.key.name) == ["web"])
        #expect(cache.get(ObjectKey(kind: .application, namespace: "default", name: "web"))?.generation == 1)

        // Moving the Deployment to another Application moves it in the index.
        try write("api.yaml", Self.app("api", command: "app.py") + "\n---\n" + Self.deployment("api-prod", app: "web"))
        try await source.sync()
        #expect(try await objects.objects(kind: .deployment, referencing: apiKey).isEmpty)
        try FileManager.default.removeItem(atPath: root + "/specs/api.yaml")
        try await source.sync()
        try compare(cache, store)
        #expect(cache.count == 1)

        // A fresh cache loaded from the store equals the one that followed the changes.
        let reloaded = ObjectCache()
        try LocalObjectStore.load(store, into: reloaded)
        try compare(reloaded, store)
    }

    /// A partial read (the changed files only) ends where a full read would: after it, a full
    /// read finds nothing to change.
    @Test func partialReadsAgreeWithFullReads() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try StateStore(directory: root + "/state")
        let cache = ObjectCache()
        let events = Mutex<[ObjectKey]>([])
        let source = SpecDirectorySource(root: root + "/specs", store: store, cache: cache) { key, _ in events.withLock { $0.append(key) } }
        for i in 0..<5 { try write("app-\(i).yaml", Self.app("app-\(i)")) }
        try await source.sync()
        let specs = root + "/specs/"
        func expectFullReadIsNoOp(_ comment: Comment) async throws {
            let full = try await source.sync()
            #expect(full.changed == 0 && full.deleted == 0, comment)
            try compare(cache, store)
        }

        // An edit: one object changes, and only it is enqueued.
        events.withLock { $0 = [] }
        try write("app-1.yaml", Self.app("app-1", command: "other.py"))
        var summary = try await source.sync(changed: [specs + "app-1.yaml", specs + ".app-1.yaml.swp"])
        #expect(summary.partial && summary.changed == 1 && summary.applied == 1, "only the changed file is read")
        #expect(events.withLock { $0 }.map(\.name) == ["app-1"])
        try await expectFullReadIsNoOp("after an edit")

        // A new file, a removed file and a broken file in one batch.
        try write("new.yaml", Self.app("new"))
        try FileManager.default.removeItem(atPath: specs + "app-2.yaml")
        try write("app-3.yaml", "kind: Application\nmetadata: {name: app-3}\nspec: {command: 5}\n")
        summary = try await source.sync(changed: [specs + "new.yaml", specs + "app-2.yaml", specs + "app-3.yaml"])
        #expect(summary.deleted == 1 && summary.kept == 1 && summary.changed == 1)
        try await expectFullReadIsNoOp("after add, remove and break")

        // A file that defines an object another file holds: the other file is read too, and
        // the copy a full read would use (the first in walk order) stays.
        try write("zz-copy.yaml", Self.app("app-0", command: "copy.py"))
        summary = try await source.sync(changed: [specs + "zz-copy.yaml"])
        guard case .application(let app0)? = cache.get(ObjectKey(kind: .application, namespace: "default", name: "app-0"))?.resource else {
            Issue.record("app-0 missing"); return
        }
        #expect(app0.spec.command == ["python3", "server.py"], "the first definition wins, as in a full read")
        try await expectFullReadIsNoOp("after a duplicate")
        try FileManager.default.removeItem(atPath: specs + "zz-copy.yaml")
        try await source.sync(changed: [specs + "zz-copy.yaml"])
        try await expectFullReadIsNoOp("after the duplicate is gone")

        // A directory change is a full read.
        try FileManager.default.createDirectory(atPath: specs + "team", withIntermediateDirectories: true)
        try Self.app("in-team").write(toFile: specs + "team/t.yaml", atomically: true, encoding: .utf8)
        summary = try await source.sync(changed: [specs + "team"])
        #expect(summary.changed == 1)
        #expect(cache.get(ObjectKey(kind: .application, namespace: "default", name: "in-team")) != nil)

        // A removed directory that held specs is a full read too: its objects go.
        try FileManager.default.removeItem(atPath: specs + "team")
        summary = try await source.sync(changed: [specs + "team"])
        #expect(summary.deleted == 1 && !summary.partial)

        // An editor's save (write a temporary file, rename it over the spec) is a partial read.
        try Self.app("app-4", command: "saved.py").write(toFile: specs + "app-4.yaml.tmp", atomically: false, encoding: .utf8)
        try FileManager.default.moveItem(atPath: specs + "app-4.yaml.tmp", toPath: specs + "app-4.yaml.new")
        _ = rename(specs + "app-4.yaml.new", specs + "app-4.yaml")
        summary = try await source.sync(changed: [specs + "app-4.yaml.tmp", specs + "app-4.yaml.new", specs + "app-4.yaml"])
        #expect(summary.partial && summary.changed == 1)
        try await expectFullReadIsNoOp("after an editor's save")
    }

    /// Removing every file is never done from a partial read: the full read's guard applies.
    @Test func emptyingTheDirectoryInAPartialReadIsWithheld() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let store = try StateStore(directory: root + "/state")
        let cache = ObjectCache()
        let source = SpecDirectorySource(root: root + "/specs", store: store, cache: cache) { _, _ in }
        try write("only.yaml", Self.app("only"))
        try await source.sync()
        try FileManager.default.removeItem(atPath: root + "/specs/only.yaml")
        let summary = try await source.sync(changed: [root + "/specs/only.yaml"])
        #expect(summary.withheld == 1 && summary.deleted == 0)
        #expect(cache.count == 1)

        // Once the directory holds something again, the withheld deletion happens (the next
        // change is read in full, not only the new file).
        try write("next.yaml", Self.app("next"))
        let next = try await source.sync(changed: [root + "/specs/next.yaml"])
        #expect(!next.partial && next.deleted == 1 && next.changed == 1)
        #expect(cache.list().map(\.key.name) == ["next"])
    }
}
