import CapstanControllers
import CapstanModel
import CapstanRuntime
import Foundation
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
}
