import CapstanControllers
import CapstanModel
import CapstanRuntime
import Foundation

/// Requests and finalizers of custom resources: a request is an annotation
/// (`capstan.dev/rollback-to`, `capstan.dev/promote`, `capstan.dev/abort`), taken by removing it;
/// the finalizer `capstan.dev/cleanup` keeps an object until its reconciler cleaned up.
extension KubeObjectStore {
    public static let finalizer = "capstan.dev/cleanup"

    public func requests(for key: ObjectKey) async -> [ObjectRequest] {
        guard let object = cache.get(key) else { return [] }
        let annotations = object.resource.metadata.annotations
        return ObjectRequest.annotations.compactMap { entry in
            annotations[entry.annotation].map { ObjectRequest(id: 0, type: entry.type, value: $0) }
        }
    }

    /// Removes the request's annotation, unless it changed since it was read (a JSON patch
    /// `test`): a newer request stays for the next reconcile.
    public func take(_ request: ObjectRequest, of key: ObjectKey) async -> Bool {
        guard let annotation = ObjectRequest.annotation(of: request.type) else { return false }
        let path = "/metadata/annotations/" + annotation.replacingOccurrences(of: "~", with: "~0").replacingOccurrences(of: "/", with: "~1")
        let operations = SpecNode.sequence([
            .mapping([("op", .string("test")), ("path", .string(path)), ("value", .string(request.value))]),
            .mapping([("op", .string("remove")), ("path", .string(path))]),
        ])
        do {
            let patched = try await client.patch(.capstan(key.kind), namespace: key.namespace, name: key.name, operations, type: .json)
            took(patched, kind: key.kind)
            return true
        } catch {
            if !error.isNotFound && error.code != 422 { log("cannot take \(annotation) of \(key): \(error)") }
            return false
        }
    }

    public func claim(_ key: ObjectKey) async throws {
        guard let object = cache.get(key), object.resource.metadata.deletionTimestamp == nil,
              !object.resource.metadata.finalizers.contains(Self.finalizer) else { return }
        try await setFinalizer(present: true, on: key, object.resource.metadata)
    }

    public func release(_ key: ObjectKey) async throws {
        guard let object = cache.get(key), object.resource.metadata.finalizers.contains(Self.finalizer) else { return }
        try await setFinalizer(present: false, on: key, object.resource.metadata)
    }

    /// Adds or removes our finalizer (a merge patch conditioned on the resourceVersion: a
    /// conflict is retried with the newer object).
    private func setFinalizer(present: Bool, on key: ObjectKey, _ metadata: ObjectMeta) async throws {
        var finalizers = metadata.finalizers.filter { $0 != Self.finalizer }
        if present { finalizers.append(Self.finalizer) }
        var patch: [(String, SpecNode)] = [("finalizers", .sequence(finalizers.map { .string($0) }))]
        if let version = metadata.resourceVersion { patch.append(("resourceVersion", .string(version))) }
        do {
            let patched = try await client.patch(.capstan(key.kind), namespace: key.namespace, name: key.name, .mapping([("metadata", .mapping(patch))]))
            took(patched, kind: key.kind)
        } catch {
            if error.isNotFound { return }
            throw error
        }
    }
}
