@testable import CapstanKube
import CapstanModel
import Foundation
import Testing

/// What the child watches keep: Capstan's children whole, others' names only, and whether an
/// object of a name may exist without asking the server.
@Suite struct ChildCacheTests {
    static func object(_ name: String, namespace: String = "default", version: Int = 7, labels: [(String, String)] = [],
                       controller: String? = nil) -> SpecNode {
        var metadata: [(String, SpecNode)] = [("name", .string(name)), ("namespace", .string(namespace)), ("resourceVersion", .string("\(version)")),
                                              ("labels", .mapping(labels.map { ($0.0, .string($0.1)) }))]
        if let controller {
            metadata.append(("ownerReferences", .sequence([.mapping([
                ("apiVersion", .string("capstan.dev/v1alpha1")), ("kind", .string("Deployment")), ("name", .string(controller)),
                ("uid", .string("u-\(controller)")), ("controller", .bool(true)),
            ])])))
        }
        return .mapping([("apiVersion", .string("apps/v1")), ("kind", .string("Deployment")), ("metadata", .mapping(metadata)),
                         ("spec", .mapping([("replicas", .int(2))]))])
    }

    @Test func oursAreKeptWholeAndOthersOnlyByName() {
        let cache = ChildCache()
        let apps = KubeResource.deployments
        // Before the watch has listed, anything may exist.
        #expect(cache.mayExist(apps, namespace: "default", name: "web"))
        #expect(cache.apply(.synced, resource: apps) == nil)
        #expect(!cache.mayExist(apps, namespace: "default", name: "web"), "listed, and nothing of that name")

        let ours = Self.object("web", labels: [(Children.managedBy, "capstan")], controller: "web")
        #expect(cache.apply(.upsert(ours), resource: apps) == ObjectKey(kind: .deployment, namespace: "default", name: "web"))
        let kept = cache.get(apps, namespace: "default", name: "web")
        #expect(kept?["spec"]?["replicas"]?.scalarText == "2", "kept whole (as JSON) and read back")
        #expect(Children.controller(of: kept ?? .null)?.uid == "u-web")

        let theirs = Self.object("db")
        #expect(cache.apply(.upsert(theirs), resource: apps) == nil, "someone else's: no owner to wake")
        #expect(cache.get(apps, namespace: "default", name: "db") == nil)
        #expect(cache.mayExist(apps, namespace: "default", name: "db"), "its name is known: a reconcile reads it")
        #expect(!cache.mayExist(apps, namespace: "other", name: "db"))

        // Ours, with its label removed by hand: still ours by its controller reference.
        #expect(cache.apply(.upsert(ours), resource: apps) == nil, "the same version again (the echo of our own write): nothing to do")
        let unlabelled = Self.object("web", version: 8, controller: "web")
        #expect(cache.apply(.upsert(unlabelled), resource: apps) == ObjectKey(kind: .deployment, namespace: "default", name: "web"))
        #expect(cache.get(apps, namespace: "default", name: "web") != nil)
        // Label and reference both gone: no longer ours; its owner is told, and it is only a name.
        #expect(cache.apply(.upsert(Self.object("web", version: 9)), resource: apps) == ObjectKey(kind: .deployment, namespace: "default", name: "web"))
        #expect(cache.get(apps, namespace: "default", name: "web") == nil)
        #expect(cache.mayExist(apps, namespace: "default", name: "web"))

        // A re-list's tombstone (name only) of one of ours still finds its owner.
        _ = cache.apply(.upsert(Self.object("web", version: 10, labels: [(Children.managedBy, "capstan")], controller: "web")), resource: apps)
        let tombstone = SpecNode.mapping([("metadata", .mapping([("name", .string("web")), ("namespace", .string("default"))]))])
        #expect(cache.apply(.delete(tombstone), resource: apps) == ObjectKey(kind: .deployment, namespace: "default", name: "web"))
        #expect(!cache.mayExist(apps, namespace: "default", name: "web"))
        _ = cache.apply(.delete(theirs), resource: apps)
        #expect(!cache.mayExist(apps, namespace: "default", name: "db"), "deleted: forgotten")
    }

    /// The cluster's status writes to a track's `apps/v1` Deployment wake its owner only when
    /// they change what the reconciler decides on: ready or available instances, trouble
    /// (`ReplicaFailure`, a deadline), completion. Counts of instances made, the observed
    /// generation catching up and `Available` False (every rollout's first status) do not.
    @Test func onlyStatusChangesTheReconcilerDecidesOnWakeTheOwner() {
        let cache = ChildCache()
        let apps = KubeResource.deployments
        let owner = ObjectKey(kind: .deployment, namespace: "default", name: "web")
        func child(_ version: Int, replicas: Int = 2, _ status: [(String, SpecNode)]?) -> SpecNode {
            var node = Self.object("web", version: version, labels: [(Children.managedBy, "capstan")], controller: "web")
                .setting(["metadata", "generation"], .int(replicas - 1))
                .setting(["spec", "replicas"], .int(replicas))
                .setting(["spec", "template", "metadata", "annotations"], .mapping([
                    ("capstan.dev/revision", .string("1")), ("capstan.dev/template-hash", .string("abc"))]))
            if let status { node = node.setting(["status"], .mapping(status)) }
            return node
        }
        func condition(_ type: String, _ status: String, _ reason: String, _ message: String) -> SpecNode {
            .mapping([("type", .string(type)), ("status", .string(status)), ("reason", .string(reason)), ("message", .string(message)),
                      ("lastUpdateTime", .string("2026-12-05T00:00:0\(message.count % 10)Z"))])
        }
        let progressing = condition("Progressing", "True", "ReplicaSetUpdated", "ReplicaSet \"web\" is progressing.")
        let unavailable = condition("Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        let made: [(String, SpecNode)] = [("observedGeneration", .int(1)), ("replicas", .int(2)), ("updatedReplicas", .int(2)),
                                          ("unavailableReplicas", .int(2)), ("conditions", .sequence([unavailable, progressing]))]

        #expect(cache.wake(.upsert(child(7, nil)), resource: apps) == .now(owner), "new")
        #expect(cache.wake(.upsert(child(8, made)), resource: apps) == nil, "instances made, none ready: nothing to decide")
        let oneReady = made + [("readyReplicas", .int(1)), ("availableReplicas", .int(1))]
        #expect(cache.wake(.upsert(child(9, oneReady)), resource: apps) == .soon(owner), "one ready")
        let failing = oneReady.map { $0.0 == "conditions" ? ($0.0, SpecNode.sequence([unavailable, progressing,
            condition("ReplicaFailure", "True", "FailedCreate", "pods \"web-1\" is forbidden: exceeded quota")])) : $0 }
        #expect(cache.wake(.upsert(child(10, failing)), resource: apps) == .soon(owner), "its pods cannot be made")
        #expect(cache.wake(.upsert(child(11, replicas: 3, failing)), resource: apps) == .now(owner), "its spec changed")

        // A Service's status (not a track): any change of what is kept of it is news.
        let service = Self.object("web", version: 12, labels: [(Children.managedBy, "capstan")], controller: "web")
        #expect(cache.wake(.upsert(service), resource: .services) == .now(owner))
        let balanced = service.setting(["metadata", "resourceVersion"], .string("13"))
            .setting(["status"], .mapping([("conditions", .sequence([condition("LoadBalancer", "True", "Ready", "ok")]))]))
        #expect(cache.wake(.upsert(balanced), resource: .services) == .soon(owner))
    }

    /// What the API server writes back of an applied child: defaults added, zero values of
    /// `omitempty` fields left out. Neither is drift; a changed or missing value is.
    @Test func aStoredChildContainsWhatWasAppliedDespiteDefaultsAndOmittedZeroValues() throws {
        let applied = try JSONReader.parse(Data(#"""
            {"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app",
              "env": [{"name": "EMPTY", "value": ""}, {"name": "LEVEL", "value": "info"}]}]}}}}
            """#.utf8))
        let stored = try JSONReader.parse(Data(#"""
            {"spec": {"replicas": 2, "progressDeadlineSeconds": 600, "template": {"spec": {"containers": [{"name": "app",
              "imagePullPolicy": "IfNotPresent", "env": [{"name": "EMPTY"}, {"name": "LEVEL", "value": "info"}]}]}}}}
            """#.utf8))
        #expect(Children.contains(stored, applied))
        let changed = stored.setting(["spec", "replicas"], .int(3))
        #expect(!Children.contains(changed, applied), "a changed value is drift")
        let withoutLevel = try JSONReader.parse(Data(#"""
            {"spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app", "env": [{"name": "EMPTY"}, {"name": "LEVEL"}]}]}}}}
            """#.utf8))
        #expect(!Children.contains(withoutLevel, applied), "a value that is not zero must be there")
        #expect(!Children.contains(nil, applied), "no child at all")
    }

    /// Children are kept deflated against the first of their resource: read back whole, the
    /// siblings in a fraction of their size, and an object unlike the first (larger than the
    /// deflate window) read back whole too.
    @Test func childrenAreKeptDeflatedAgainstTheFirstOfTheirKindAndReadBackWhole() throws {
        let cache = ChildCache()
        var plain = 0
        var expected: [String: String] = [:]
        for index in 0..<300 {
            let name = "web-\(index)"
            let object = Self.object(name, version: index + 1, labels: [(Children.managedBy, "capstan"), ("tier", index % 2 == 0 ? "front" : "back")],
                                     controller: name)
                .setting(["spec", "replicas"], .int(index % 7))
                .setting(["spec", "template", "spec", "containers"], .sequence([.mapping([
                    ("name", .string("app")), ("image", .string("ghcr.io/example/web:1.\(index).0")),
                    ("env", .sequence([.mapping([("name", .string("INDEX")), ("value", .string("\(index)"))])])),
                ])]))
            _ = cache.wake(.upsert(object), resource: .deployments)
            let json = JSONEmitter.emit(object, pretty: false)
            plain += json.utf8.count
            expected[name] = json
        }
        // Unlike the others and larger than the 8 KiB window: kept (deflated or plain) all the same.
        var noise = SystemRandomNumberGenerator()
        let text = String((0..<20_000).map { _ in Character(Unicode.Scalar(UInt8.random(in: 97...122, using: &noise))) })
        let odd = Self.object("odd", labels: [(Children.managedBy, "capstan")], controller: "odd")
            .setting(["metadata", "annotations"], .mapping([("note", .string(text))]))
        _ = cache.wake(.upsert(odd), resource: .deployments)
        expected["odd"] = JSONEmitter.emit(odd, pretty: false)

        for (name, json) in expected {
            let kept = try #require(cache.get(.deployments, namespace: "default", name: name), "\(name)")
            // JSON read back has its keys in order: compare with the original read the same way.
            let original = try JSONReader.parse(Data(json.utf8))
            #expect(JSONEmitter.emit(kept, pretty: false) == JSONEmitter.emit(original, pretty: false), "\(name) read back whole")
        }
        let packed = cache.keptBytes - (expected["odd"]?.utf8.count ?? 0) - 64
        #expect(packed < plain / 4, "siblings deflated against the first: \(packed) of \(plain) bytes")
    }
}
