import ArgumentParser
import CapstanControllers
import CapstanKube
import CapstanModel
import Foundation

/// A request to the operator on a cluster: an annotation on the custom resource (what
/// `kubectl annotate` would write), then (up to `wait`) what the operator made of it.
struct KubeRequest {
    let connection: KubeConnection
    let key: ObjectKey
    let annotation: String
    let value: String
    let what: String

    /// Writes the annotation on the object (in `namespace`, or the kubeconfig context's) and
    /// waits until `taken` has an answer.
    func run(wait: String, namespace: String?, before: (KubeClient, ObjectKey) async throws -> Void = { _, _ in },
             taken: (KubeClient, ObjectKey) async throws -> String?) async throws {
        guard let timeout = try? KubeDuration.parse(wait) else { throw ValidationError("--wait \"\(wait)\" is not a duration") }
        let client: KubeClient
        let key: ObjectKey
        do {
            let config = try connection.config()
            client = try KubeClient(config: config, qps: 0, userAgent: "capstan/\(Capstan.version)")
            key = ObjectKey(kind: self.key.kind, namespace: namespace ?? config.namespace, name: self.key.name)
        } catch {
            printError("capstan: \(error)")
            throw ExitCode(2)
        }
        do {
            try await before(client, key)
            try await request(client, key, timeout: timeout, wait: wait, taken: taken)
        } catch {
            await client.shutdown()
            throw error
        }
        await client.shutdown()
    }

    private func request(_ client: KubeClient, _ key: ObjectKey, timeout: KubeDuration, wait: String,
                         taken: (KubeClient, ObjectKey) async throws -> String?) async throws {
        let resource = KubeResource.capstan(key.kind)
        let patch = SpecNode.mapping([("metadata", .mapping([("annotations", .mapping([(annotation, .string(value))]))]))])
        do {
            _ = try await client.patch(resource, namespace: key.namespace, name: key.name, patch)
        } catch {
            printError(error.isNotFound ? "capstan: \(key.kind.singular) \"\(key.name)\" not found in namespace \(key.namespace)" : "capstan: \(error)")
            throw ExitCode(1)
        }
        let name = "\(key.kind.singular)/\(key.name)"
        guard timeout.nanoseconds > 0 else {
            print("\(name): \(what) requested (\(annotation)=\(value))")
            return
        }
        let deadline = Date().addingTimeInterval(timeout.seconds)
        while Date() < deadline {
            do {
                if let answer = try await taken(client, key) {
                    print("\(name): \(what) requested and taken by the operator: \(answer)")
                    return
                }
            } catch let refused as Refused {
                printError("capstan: \(name): \(what) refused: \(refused.message)")
                throw ExitCode(1)
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        printError("capstan: the request is on \(name) (\(annotation)), but no operator took it within \(wait): is `capstan run --kube` running for namespace \(key.namespace)?")
        throw ExitCode(1)
    }

    struct Refused: Error { var message: String }

    /// The newest Event of `reason` about the object whose message passes `matching`.
    static func event(_ client: KubeClient, about key: ObjectKey, reasons: Set<String>, since: Date,
                      matching: (String) -> Bool = { _ in true }) async throws -> (reason: String, message: String)? {
        let (items, _) = try await client.list(.events, namespace: key.namespace)
        let found = items.filter { event in
            event["involvedObject"]?["name"]?.scalarText == key.name && event["involvedObject"]?["kind"]?.scalarText == key.kind.rawValue
                && reasons.contains(event["reason"]?.scalarText ?? "")
                && (Timestamp(rfc3339: event["lastTimestamp"]?.scalarText ?? "")?.date ?? .distantPast) >= since.addingTimeInterval(-1)
                && matching(event["message"]?.scalarText ?? "")
        }
        guard let newest = found.max(by: { ($0["lastTimestamp"]?.scalarText ?? "") < ($1["lastTimestamp"]?.scalarText ?? "") }) else { return nil }
        return (newest["reason"]?.scalarText ?? "", newest["message"]?.scalarText ?? "")
    }
}
