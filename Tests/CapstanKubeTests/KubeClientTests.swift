import CapstanKube
import CapstanModel
import CapstanRuntime
import Foundation
import Synchronization
import Testing

/// The API client against hack/fake-apiserver: TLS with client certificates, CRUD, Status
/// errors, pagination, watch resume and 410, retries.
@Suite(.serialized) struct KubeClientTests {
    static let widgets = KubeResource(group: "capstan.dev", version: "v1alpha1", plural: "applications", kind: "Application")

    static func application(_ name: String, labels: [(String, String)] = []) -> SpecNode {
        .mapping([
            ("apiVersion", .string("capstan.dev/v1alpha1")), ("kind", .string("Application")),
            ("metadata", .mapping([("name", .string(name)), ("labels", .mapping(labels.map { ($0.0, .string($0.1)) }))])),
            ("spec", .mapping([("image", .string("ghcr.io/example/\(name)")), ("command", .sequence([.string("run")]))])),
        ])
    }

    /// A fake with the CRDs applied, and a client for it.
    func started(_ arguments: [String] = []) async throws -> (FakeAPIServer, KubeClient) {
        let server = try FakeAPIServer(arguments: arguments)
        let client = try server.client()
        for crd in try FakeAPIServer.crds() {
            _ = try await client.create(.customResourceDefinitions, namespace: nil, crd)
        }
        return (server, client)
    }

    @Test func createGetUpdateAndStatusErrors() async throws {
        let (server, client) = try await started()
        defer { server.stop() }
        defer { Task { await client.shutdown() } }
        let created = try await client.create(Self.widgets, namespace: "default", Self.application("web"))
        #expect(created["metadata"]?["uid"]?.scalarText?.isEmpty == false)
        #expect(created["metadata"]?["generation"]?.scalarText == "1")
        let version = try #require(created["metadata"]?["resourceVersion"]?.scalarText)

        // AlreadyExists, NotFound, Invalid: the Status' reason and message come through.
        do {
            _ = try await client.create(Self.widgets, namespace: "default", Self.application("web"))
            Issue.record("a second create must fail")
        } catch {
            #expect(error.isAlreadyExists)
            #expect(error.description.contains("applications.capstan.dev \"web\" already exists"))
        }
        #expect(try await client.get(Self.widgets, namespace: "default", name: "nope") == nil)
        var bad = Self.application("bad")
        bad = bad.setting(["spec", "command"], .string("not-a-list"))
        do {
            _ = try await client.create(Self.widgets, namespace: "default", bad)
            Issue.record("an invalid object must be refused")
        } catch {
            #expect(error.code == 422 && error.reason == "Invalid")
            #expect(error.causes.contains { $0.hasPrefix("spec.command:") }, "\(error.causes)")
        }

        // A PUT with a stale resourceVersion is a conflict; with the current one it goes through.
        let edited = created.setting(["spec", "image"], .string("ghcr.io/example/other"))
        let updated = try await client.update(Self.widgets, namespace: "default", name: "web", edited)
        #expect(updated["metadata"]?["generation"]?.scalarText == "2")
        do {
            _ = try await client.update(Self.widgets, namespace: "default", name: "web",
                                        edited.setting(["metadata", "resourceVersion"], .string(version)))
            Issue.record("a stale update must conflict")
        } catch {
            #expect(error.isConflict)
        }

        // Status goes through /status only, and does not move the generation.
        let status = SpecNode.mapping([("status", .mapping([("observedGeneration", .int(2))]))])
        let withStatus = try await client.patch(Self.widgets, namespace: "default", name: "web", status, subresource: "status")
        #expect(withStatus["status"]?["observedGeneration"]?.scalarText == "2")
        #expect(withStatus["metadata"]?["generation"]?.scalarText == "2")
        let ignored = try await client.patch(Self.widgets, namespace: "default", name: "web",
                                             .mapping([("status", .mapping([("observedGeneration", .int(9))]))]))
        #expect(ignored["status"]?["observedGeneration"]?.scalarText == "2", "status is ignored on the main resource")
    }

    @Test func listsPageThroughEverythingAndSelectByLabel() async throws {
        let (server, client) = try await started()
        defer { server.stop() }
        defer { Task { await client.shutdown() } }
        for index in 0..<23 {
            _ = try await client.create(Self.widgets, namespace: "default",
                                        Self.application("app-\(index)", labels: [("tier", index % 2 == 0 ? "even" : "odd")]))
        }
        let before = client.requests
        let all = try await client.list(Self.widgets, namespace: "default", limit: 5)
        #expect(all.items.count == 23)
        #expect(client.requests - before == 5, "five pages of five")
        #expect(Set(all.items.compactMap { $0["metadata"]?["name"]?.scalarText }).count == 23)
        #expect(all.items.allSatisfy { $0["kind"]?.scalarText == "Application" })
        let even = try await client.list(Self.widgets, namespace: "default", labelSelector: "tier=even")
        #expect(even.items.count == 12)
        let none = try await client.list(Self.widgets, namespace: "other")
        #expect(none.items.isEmpty)
    }

    @Test func watchesResumeFromTheirVersionAndSeeGoneWhenItIsTooOld() async throws {
        let (server, client) = try await started()
        defer { server.stop() }
        defer { Task { await client.shutdown() } }
        let (_, version) = try await client.list(Self.widgets, namespace: "default")
        let stream = client.watch(Self.widgets, namespace: "default", resourceVersion: version, timeoutSeconds: 10)
        _ = try await client.create(Self.widgets, namespace: "default", Self.application("one"))
        _ = try await client.delete(Self.widgets, namespace: "default", name: "one")
        var seen: [String] = []
        var last = version
        for try await event in stream {
            switch event {
            case .added(let object): seen.append("added \(object["metadata"]?["name"]?.scalarText ?? "")"); last = object["metadata"]?["resourceVersion"]?.scalarText ?? last
            case .modified: seen.append("modified")
            case .deleted(let object): seen.append("deleted \(object["metadata"]?["name"]?.scalarText ?? "")"); last = object["metadata"]?["resourceVersion"]?.scalarText ?? last
            case .bookmark: break
            }
            if seen.count == 2 { break }
        }
        #expect(seen == ["added one", "deleted one"])

        // Resuming from the last version seen misses nothing that happened meanwhile.
        _ = try await client.create(Self.widgets, namespace: "default", Self.application("two"))
        for try await event in client.watch(Self.widgets, namespace: "default", resourceVersion: last, timeoutSeconds: 5) {
            if case .added(let object) = event {
                #expect(object["metadata"]?["name"]?.scalarText == "two")
                break
            }
        }

        // After a compaction, the old version is gone: 410, for the caller to list again.
        try await server.control(client, "compact")
        do {
            for try await _ in client.watch(Self.widgets, namespace: "default", resourceVersion: version, timeoutSeconds: 5) {}
            Issue.record("a watch from a compacted version must end with 410")
        } catch let error as KubeError {
            #expect(error.isGone, "\(error)")
        }
    }

    @Test func throttlingAndServerErrorsAreRetriedHonouringRetryAfter() async throws {
        let (server, client) = try await started()
        defer { server.stop() }
        defer { Task { await client.shutdown() } }
        try await server.control(client, "faults", .mapping([("code", .int(429)), ("count", .int(2)), ("retryAfter", .int(1)),
                                                            ("match", .string("/applications"))]))
        let start = ContinuousClock.now
        let created = try await client.create(Self.widgets, namespace: "default", Self.application("patient"))
        let waited = start.duration(to: .now)
        #expect(created["metadata"]?["name"]?.scalarText == "patient")
        #expect(waited >= .seconds(2), "two Retry-After: 1 waits: \(waited)")

        // A 500 without Retry-After is retried for reads, not for writes.
        try await server.control(client, "faults", .mapping([("code", .int(500)), ("count", .int(1)), ("match", .string("/applications/patient")),
                                                            ("method", .string("GET"))]))
        #expect(try await client.get(Self.widgets, namespace: "default", name: "patient") != nil)
        try await server.control(client, "faults", .mapping([("code", .int(500)), ("count", .int(1)), ("match", .string("/applications")),
                                                            ("method", .string("POST"))]))
        do {
            _ = try await client.create(Self.widgets, namespace: "default", Self.application("once"))
            Issue.record("a failed write without Retry-After is not retried")
        } catch {
            #expect(error.code == 500)
        }

        // Past the retry budget the last error is reported.
        let impatient = try server.client(maxRetries: 1)
        defer { Task { await impatient.shutdown() } }
        try await server.control(client, "faults", .mapping([("code", .int(503)), ("count", .int(5)), ("retryAfter", .int(0)),
                                                            ("match", .string("/applications"))]))
        do {
            _ = try await impatient.list(Self.widgets, namespace: "default")
            Issue.record("503 five times must fail a client that retries once")
        } catch {
            #expect(error.code == 503)
        }
    }

    @Test func finalizersHoldADeletionUntilRemoved() async throws {
        let (server, client) = try await started()
        defer { server.stop() }
        defer { Task { await client.shutdown() } }
        let object = Self.application("held").setting(["metadata", "finalizers"], .sequence([.string("capstan.dev/cleanup")]))
        _ = try await client.create(Self.widgets, namespace: "default", object)
        #expect(try await client.delete(Self.widgets, namespace: "default", name: "held"))
        let deleting = try #require(try await client.get(Self.widgets, namespace: "default", name: "held"))
        #expect(deleting["metadata"]?["deletionTimestamp"] != nil)
        _ = try await client.patch(Self.widgets, namespace: "default", name: "held",
                                   .mapping([("metadata", .mapping([("finalizers", SpecNode(.null))]))]))
        #expect(try await client.get(Self.widgets, namespace: "default", name: "held") == nil)
        #expect(try await client.delete(Self.widgets, namespace: "default", name: "held") == false, "already gone")
    }

    @Test func serverSideApplyOwnsFieldsAndForceTakesThemOver() async throws {
        let (server, client) = try await started()
        defer { server.stop() }
        defer { Task { await client.shutdown() } }
        let service = SpecNode.mapping([
            ("apiVersion", .string("v1")), ("kind", .string("Service")),
            ("metadata", .mapping([("name", .string("web"))])),
            ("spec", .mapping([("ports", .sequence([.mapping([("port", .int(80))])])), ("selector", .mapping([("app", .string("web"))]))])),
        ])
        _ = try await client.patch(.services, namespace: "default", name: "web", service, type: .apply, fieldManager: "capstan")
        // Someone else changes the selector; capstan's next apply conflicts unless forced.
        _ = try await client.patch(.services, namespace: "default", name: "web",
                                   .mapping([("spec", .mapping([("selector", .mapping([("app", .string("other"))]))]))]), fieldManager: "kubectl")
        do {
            _ = try await client.patch(.services, namespace: "default", name: "web", service, type: .apply, fieldManager: "capstan")
            Issue.record("a conflicting apply must fail without force")
        } catch {
            #expect(error.code == 409 && error.message.contains("kubectl"), "\(error)")
        }
        let forced = try await client.patch(.services, namespace: "default", name: "web", service, type: .apply, fieldManager: "capstan", force: true)
        #expect(forced["spec"]?["selector"]?["app"]?.scalarText == "web")
    }

    /// Object paths: DNS names as they are; anything else percent-encoded, `/` included.
    @Test func pathsEscapeWhatIsNotAPlainName() {
        #expect(KubeResource.deployments.path(namespace: "team-a", name: "web.v2_x~y") == "/apis/apps/v1/namespaces/team-a/deployments/web.v2_x~y")
        #expect(KubeResource.events.path(namespace: "default", name: "a b/c%", subresource: "status") == "/api/v1/namespaces/default/events/a%20b%2Fc%25/status")
        #expect(KubeResource.namespaces.path(namespace: "ignored", name: "ünï") == "/api/v1/namespaces/%C3%BCn%C3%AF")
    }

    /// A core/v1 Event without an eventTime lives in its object's namespace, as the server
    /// validates it; Capstan's Events (about its objects and its Lease) do.
    @Test func eventsLiveInTheirObjectsNamespace() async throws {
        let (server, client) = try await started()
        defer { server.stop() }
        defer { Task { await client.shutdown() } }
        func event(_ name: String, about namespace: String) -> SpecNode {
            .mapping([
                ("metadata", .mapping([("name", .string(name))])),
                ("involvedObject", .mapping([("kind", .string("Lease")), ("namespace", .string(namespace)), ("name", .string("capstan"))])),
                ("reason", .string("LeaderElected")), ("message", .string("m")), ("type", .string("Normal")),
            ])
        }
        _ = try await client.create(.events, namespace: "kube-system", event("same", about: "kube-system"))
        do {
            _ = try await client.create(.events, namespace: "default", event("elsewhere", about: "kube-system"))
            Issue.record("an Event outside its object's namespace must be refused")
        } catch {
            #expect(error.code == 422 && error.causes.contains { $0.hasPrefix("involvedObject.namespace:") }, "\(error)")
        }
    }

    /// A CRD whose `spec` has the given properties (YAML lines, each indented by ten spaces)
    /// and junctors (twelve).
    static func gadgets(_ properties: String, oneOf: String = "") throws -> SpecNode {
        let properties = properties.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n")
        let text = """
            apiVersion: apiextensions.k8s.io/v1
            kind: CustomResourceDefinition
            metadata: {name: gadgets.test.dev}
            spec:
              group: test.dev
              names: {kind: Gadget, listKind: GadgetList, plural: gadgets, singular: gadget}
              scope: Namespaced
              versions:
              - name: v1
                served: true
                storage: true
                schema:
                  openAPIV3Schema:
                    type: object
                    properties:
                      spec:
                        type: object
            \(oneOf)
                        properties:
            \(properties)
            """
        return try #require(try YAMLReader().documents(text).first?.root)
    }

    /// The API server takes only structural schemas that pass the apiextensions checks (ours do:
    /// `started` applied them); the fake refuses the others as it does, naming the place.
    @Test func crdSchemasMustBeStructural() async throws {
        let (server, client) = try await started()
        defer { server.stop() }
        defer { Task { await client.shutdown() } }
        let refused: [(String, String, String)] = [
            ("          size: {description: no type}\n", "", "properties[spec].properties[size].type"),
            ("          tags: {type: array}\n", "", "properties[spec].properties[tags].items"),
            ("          env:\n            type: array\n            x-kubernetes-list-type: map\n            x-kubernetes-list-map-keys: [name]\n"
             + "            items: {type: object, properties: {name: {type: string}}}\n", "", "properties[spec].properties[env].items.properties[name].default"),
            ("          size: {type: integer, default: big}\n", "", "properties[spec].properties[size].default"),
            ("          size: {type: integer}\n", "            oneOf:\n            - {type: object, required: [size]}\n", "properties[spec].oneOf[0].type"),
            ("          size: {type: integer}\n", "            anyOf:\n            - properties: {other: {minimum: 1}}\n", "properties[spec].anyOf[0].properties[other]"),
            ("          name: {type: string, pattern: '^(?!x)'}\n", "", "properties[spec].properties[name].pattern"),
            ("          labels: {type: object, properties: {a: {type: string}}, additionalProperties: {type: string}}\n", "",
             "properties[spec].properties[labels].additionalProperties"),
        ]
        for (properties, oneOf, field) in refused {
            let crd = try Self.gadgets(properties, oneOf: oneOf)
            do {
                _ = try await client.create(.customResourceDefinitions, namespace: nil, crd)
                Issue.record("must be refused: \(properties)")
            } catch {
                #expect(error.code == 422, "\(error)")
                #expect(error.causes.contains { $0.hasPrefix("spec.versions[0].schema.openAPIV3Schema." + field + ":") }, "\(field): \(error.causes)")
            }
        }
        // Not a schema at all: the server cannot decode the CRD (400), nor does the fake fall over.
        let undecodable = try Self.gadgets("          size: [1, 2]\n")
        do {
            _ = try await client.create(.customResourceDefinitions, namespace: nil, undecodable)
            Issue.record("an undecodable CRD must be refused")
        } catch {
            #expect(error.code == 400 && error.message.contains("properties[spec].properties[size]"), "\(error)")
        }
        let accepted = "          size: {type: integer, default: 1, minimum: 0}\n          port: {x-kubernetes-int-or-string: true}\n"
        _ = try await client.create(.customResourceDefinitions, namespace: nil,
                                    try Self.gadgets(accepted, oneOf: "            oneOf:\n            - required: [size]\n            - required: [port]\n"))
    }
}

@Suite struct KubeLeaseStoreTests {
    @Test func leasesAreComparedAndSwappedByResourceVersion() async throws {
        let server = try FakeAPIServer()
        defer { server.stop() }
        let client = try server.client()
        defer { Task { await client.shutdown() } }
        let store = KubeLeaseStore(client: client, namespace: "default")
        let a = LeaderElector(config: LeaderElectionConfig(leaseName: "capstan", identity: "a"), store: store, clock: ContinuousClock())
        let b = LeaderElector(config: LeaderElectionConfig(leaseName: "capstan", identity: "b"), store: store, clock: ContinuousClock())
        #expect(await a.tryAcquireOrRenew())
        #expect(await !b.tryAcquireOrRenew(), "held and not expired")
        let lease = try #require(try await client.get(.leases, namespace: "default", name: "capstan"))
        #expect(lease["spec"]?["holderIdentity"]?.scalarText == "a")
        #expect(lease["spec"]?["leaseDurationSeconds"]?.scalarText == "15")
        #expect(lease["spec"]?["renewTime"]?.scalarText?.contains(".") == true, "MicroTime")

        var (record, version) = try #require(try await store.get("capstan"))
        // A renewal (a changed record: an unchanged one is a no-op that keeps the version).
        record.renewTime = record.renewTime.addingTimeInterval(1)
        #expect(try await store.update("capstan", record, expecting: version))
        record.renewTime = record.renewTime.addingTimeInterval(1)
        #expect(try await !store.update("capstan", record, expecting: version), "a stale resourceVersion loses")
        #expect(try await !store.create("capstan", record), "exists already")

        await a.release()
        #expect(try await store.get("capstan")?.record.holderIdentity == "")
        #expect(await b.tryAcquireOrRenew(), "a released lease is taken at once")
        #expect(try await store.get("capstan")?.record.leaseTransitions == 1)
    }
}

/// The reflector keeps a copy in step through dropped watches and compactions.
@Suite struct ReflectorTests {
    @Test func aCopyFollowsThroughDroppedWatchesAndExpiredVersions() async throws {
        let server = try FakeAPIServer(arguments: ["--bookmark-interval", "0.2"])
        defer { server.stop() }
        let client = try server.client()
        defer { Task { await client.shutdown() } }
        for crd in try FakeAPIServer.crds() { _ = try await client.create(.customResourceDefinitions, namespace: nil, crd) }
        let apps = KubeClientTests.widgets
        for name in ["a", "b", "c"] { _ = try await client.create(apps, namespace: "default", KubeClientTests.application(name)) }

        final class Seen: Sendable {
            let copy = Mutex<[String: String]>([:])  // name -> image
            let syncs = Mutex(0)
            let deletions = Mutex<[String]>([])  // namespace/name of what was reported deleted
        }
        let seen = Seen()
        let reflector = Reflector(client: client, resource: apps, namespace: nil, initialBackoff: .milliseconds(50))
        let task = Task {
            await reflector.run { change in
                switch change {
                case .upsert(let object):
                    seen.copy.withLock { $0[object["metadata"]?["name"]?.scalarText ?? ""] = object["spec"]?["image"]?.scalarText }
                case .delete(let object):
                    let metadata = object["metadata"]
                    seen.deletions.withLock { $0.append("\(metadata?["namespace"]?.scalarText ?? "")/\(metadata?["name"]?.scalarText ?? "")") }
                    _ = seen.copy.withLock { $0.removeValue(forKey: object["metadata"]?["name"]?.scalarText ?? "") }
                case .synced:
                    seen.syncs.withLock { $0 += 1 }
                }
            }
        }
        defer { task.cancel() }
        func expect(_ wanted: [String: String], _ what: String) async throws {
            for _ in 0..<600 where seen.copy.withLock({ $0 }) != wanted { try await Task.sleep(for: .milliseconds(25)) }
            #expect(seen.copy.withLock { $0 } == wanted, "\(what)")
        }
        func image(_ name: String, _ image: String) async throws {
            _ = try await client.patch(apps, namespace: "default", name: name, .mapping([("spec", .mapping([("image", .string(image))]))]))
        }
        try await expect(["a": "ghcr.io/example/a", "b": "ghcr.io/example/b", "c": "ghcr.io/example/c"], "the list")

        // Watches dropped by the server: changes made while reconnecting are not missed.
        try await server.control(client, "drop-watches")
        try await image("a", "a:2")
        _ = try await client.delete(apps, namespace: "default", name: "b")
        try await expect(["a": "a:2", "c": "ghcr.io/example/c"], "after a dropped watch")
        #expect(seen.syncs.withLock { $0 } == 1, "resumed, not listed again")

        // The watch fails for a while (500s): it comes back with backoff.
        try await server.control(client, "faults", .mapping([("code", .int(500)), ("count", .int(3)), ("match", .string("/applications")), ("method", .string("GET"))]))
        try await server.control(client, "drop-watches")
        try await image("c", "c:2")
        try await expect(["a": "a:2", "c": "c:2"], "after failing watches")

        // The version it would resume from is compacted away while it cannot reach the server:
        // 410, a new list, and the deletion that happened meanwhile is reported all the same.
        try await server.control(client, "faults", .mapping([("code", .int(500)), ("count", .int(6)), ("match", .string("/applications")), ("method", .string("GET"))]))
        try await server.control(client, "drop-watches")
        _ = try await client.delete(apps, namespace: "default", name: "a")
        _ = try await client.create(apps, namespace: "default", KubeClientTests.application("d"))
        try await server.control(client, "compact")
        try await expect(["c": "c:2", "d": "ghcr.io/example/d"], "after a 410")
        #expect(seen.syncs.withLock { $0 } == 2, "listed again once")
        // The re-list's report of "a" (the reflector keeps only versions) still names it fully.
        #expect(seen.deletions.withLock { $0 } == ["default/b", "default/a"])
    }
}
