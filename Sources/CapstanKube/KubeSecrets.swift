import CapstanControllers
import CapstanModel
import Foundation

/// A SecretRotation's secret on Kubernetes: the `v1` Secret `NAME` holds the current values
/// (annotation `capstan.dev/version`), which pods take by a native `secretKeyRef`; every kept
/// version is the Secret `NAME-vN` (labels `capstan.dev/secret`, `capstan.dev/version`). All
/// carry the Capstan owner labels and, for a custom resource, a controller ownerReference (the
/// garbage collector removes them with it). A Secret of that name Capstan did not make is
/// never written over (`ChildConflict`).
public final class KubeSecrets: SecretPlatform, Sendable {
    public static let secrets = KubeResource(group: "", version: "v1", plural: "secrets", kind: "Secret")
    static let versionAnnotation = "capstan.dev/version"
    static let createdAnnotation = "capstan.dev/created-at"
    static let fingerprintAnnotation = "capstan.dev/fingerprint"
    static let secretLabel = "capstan.dev/secret"
    static let versionLabel = "capstan.dev/version"

    let client: KubeClient
    /// The owner's UID when it is a custom resource (nil: from a spec directory).
    let uid: @Sendable (ObjectKey) -> String?

    public init(client: KubeClient, uid: @escaping @Sendable (ObjectKey) -> String?) {
        self.client = client
        self.uid = uid
    }

    static func versionName(_ name: String, _ version: Int) -> String { "\(name)-v\(version)" }

    private func failed(_ error: KubeError, _ what: String) -> SecretError {
        SecretError("SecretWriteFailed", "\(what): \(error)")
    }

    /// Whether a Secret is this owner's.
    func isOurs(_ secret: SpecNode, owner: ObjectKey) -> Bool {
        let labels = secret["metadata"]?["labels"]
        guard labels?[Children.managedBy]?.scalarText == "capstan", labels?[Children.ownerKindLabel]?.scalarText == "SecretRotation",
              labels?[Children.ownerNameLabel]?.scalarText == owner.name else { return false }
        if let controller = Children.controller(of: secret), let uid = uid(owner) { return controller.uid == uid }
        return true
    }

    func metadata(_ name: String, owner: ObjectKey, labels extra: [(String, SpecNode)], annotations: [(String, SpecNode)]) -> SpecNode {
        var metadata: [(String, SpecNode)] = [
            ("name", .string(name)), ("namespace", .string(owner.namespace)),
            ("labels", .mapping([(Children.managedBy, .string("capstan")), (Children.ownerKindLabel, .string("SecretRotation")),
                                 (Children.ownerNameLabel, .string(owner.name))] + extra)),
            ("annotations", .mapping(annotations)),
        ]
        if let uid = uid(owner) {
            metadata.append(("ownerReferences", .sequence([.mapping([
                ("apiVersion", .string(capstanAPIVersion)), ("kind", .string("SecretRotation")), ("name", .string(owner.name)),
                ("uid", .string(uid)), ("controller", .bool(true)), ("blockOwnerDeletion", .bool(true)),
            ])])))
        }
        return .mapping(metadata)
    }

    static func data(_ values: [String: Data]) -> SpecNode {
        .mapping(values.keys.sorted().map { ($0, .string(values[$0]!.base64EncodedString())) })
    }

    public static func values(of secret: SpecNode) -> [String: Data] {
        var values: [String: Data] = [:]
        for entry in secret["data"]?.entries ?? [] {
            values[entry.key] = entry.value.scalarText.flatMap { Data(base64Encoded: $0) } ?? Data()
        }
        return values
    }

    private func apply(_ object: SpecNode, name: String, namespace: String) async throws(SecretError) {
        do {
            _ = try await client.patch(Self.secrets, namespace: namespace, name: name, object, type: .apply, force: true)
        } catch {
            throw failed(error, "cannot write Secret \(name)")
        }
    }

    private func secret(_ name: String, namespace: String) async throws(SecretError) -> SpecNode? {
        do {
            return try await client.get(Self.secrets, namespace: namespace, name: name)
        } catch {
            throw failed(error, "cannot read Secret \(name)")
        }
    }

    // MARK: - SecretPlatform

    public func state(of name: String, namespace: String, owner: ObjectKey) async throws(SecretError) -> SecretState? {
        let current = try await secret(name, namespace: namespace)
        if let current, !isOurs(current, owner: owner) {
            throw SecretError("ChildConflict", "Secret \(name) exists in namespace \(namespace) and was not made by secretrotation/\(owner.name): Capstan leaves it alone (delete it or choose another secretName)")
        }
        let items: [SpecNode]
        do {
            items = try await client.list(Self.secrets, namespace: namespace, labelSelector: "\(Self.secretLabel)=\(name)").items
        } catch {
            throw failed(error, "cannot list the versions of Secret \(name)")
        }
        let versions = items.filter { isOurs($0, owner: owner) }.compactMap { item -> SecretVersionInfo? in
            let metadata = item["metadata"]
            guard let version = metadata?["labels"]?[Self.versionLabel]?.scalarText.flatMap({ Int($0) }) else { return nil }
            let created = metadata?["annotations"]?[Self.createdAnnotation]?.scalarText.flatMap { Timestamp(rfc3339: $0)?.date } ?? Date(timeIntervalSince1970: 0)
            let values = Self.values(of: item)
            return SecretVersionInfo(version: version, createdAt: created, keys: values.keys.sorted(),
                                     fingerprint: metadata?["annotations"]?[Self.fingerprintAnnotation]?.scalarText ?? SecretFingerprint.of(values))
        }.sorted { $0.version < $1.version }
        guard let current else {
            // Versions without the current Secret (a crash between the two writes): the newest
            // is made current by the next step.
            return versions.last.map { SecretState(current: $0.version, versions: versions) }
        }
        let version = current["metadata"]?["annotations"]?[Self.versionAnnotation]?.scalarText.flatMap { Int($0) } ?? versions.last?.version ?? 0
        return SecretState(current: version, versions: versions)
    }

    public func missing(_ name: String, key: String, namespace: String) async -> String? {
        let found: SpecNode?
        do {
            found = try await secret(name, namespace: namespace)
        } catch {
            return nil  // unknown: the pods will tell
        }
        guard let found else { return "Secret \(name) does not exist in namespace \(namespace)" }
        let keys = (found["data"]?.entries ?? []).map(\.key) + (found["stringData"]?.entries ?? []).map(\.key)
        return keys.contains(key) ? nil : "Secret \(name) has no key \(key) (it has \(keys.sorted().joined(separator: ", ")))"
    }

    public func value(of name: String, key: String, namespace: String) async throws(SecretError) -> Data {
        guard let found = try await secret(name, namespace: namespace) else {
            throw SecretError("SecretNotFound", "Secret \(name) does not exist in namespace \(namespace)")
        }
        var values = Self.values(of: found)
        for entry in found["stringData"]?.entries ?? [] { values[entry.key] = Data((entry.value.scalarText ?? "").utf8) }
        guard let value = values[key] else {
            throw SecretError("SecretNotFound", "Secret \(name) has no key \(key) (it has \(values.keys.sorted().joined(separator: ", ")))")
        }
        return value
    }

    public func values(of name: String, namespace: String, version: Int) async throws(SecretError) -> [String: Data] {
        guard let secret = try await secret(Self.versionName(name, version), namespace: namespace) else {
            throw SecretError("SecretNotFound", "Secret \(name) has no version \(version) (Secret \(Self.versionName(name, version)) is missing)")
        }
        return Self.values(of: secret)
    }

    public func write(_ name: String, namespace: String, version: Int, values: [String: Data], createdAt: Date, owner: ObjectKey) async throws(SecretError) {
        if let current = try await secret(name, namespace: namespace), !isOurs(current, owner: owner) {
            throw SecretError("ChildConflict", "Secret \(name) exists in namespace \(namespace) and was not made by secretrotation/\(owner.name): Capstan leaves it alone")
        }
        let versionName = Self.versionName(name, version)
        try await apply(.mapping([
            ("apiVersion", .string("v1")), ("kind", .string("Secret")), ("type", .string("Opaque")),
            ("metadata", metadata(versionName, owner: owner, labels: [(Self.secretLabel, .string(name)), (Self.versionLabel, .string(String(version)))],
                                  annotations: [(Self.createdAnnotation, .string(Timestamp(createdAt).description)),
                                                (Self.fingerprintAnnotation, .string(SecretFingerprint.of(values)))])),
            ("data", Self.data(values)),
        ]), name: versionName, namespace: namespace)
        try await makeCurrent(name, namespace: namespace, values: values, version: version, owner: owner)
    }

    private func makeCurrent(_ name: String, namespace: String, values: [String: Data], version: Int, owner: ObjectKey) async throws(SecretError) {
        try await apply(.mapping([
            ("apiVersion", .string("v1")), ("kind", .string("Secret")), ("type", .string("Opaque")),
            ("metadata", metadata(name, owner: owner, labels: [], annotations: [(Self.versionAnnotation, .string(String(version)))])),
            ("data", Self.data(values)),
        ]), name: name, namespace: namespace)
    }

    public func makeCurrent(_ name: String, namespace: String, version: Int, owner: ObjectKey) async throws(SecretError) {
        if let current = try await secret(name, namespace: namespace), !isOurs(current, owner: owner) {
            throw SecretError("ChildConflict", "Secret \(name) exists in namespace \(namespace) and was not made by secretrotation/\(owner.name): Capstan leaves it alone")
        }
        let values = try await values(of: name, namespace: namespace, version: version)
        try await makeCurrent(name, namespace: namespace, values: values, version: version, owner: owner)
    }

    public func removeVersion(_ name: String, namespace: String, version: Int, owner: ObjectKey) async throws(SecretError) {
        let versionName = Self.versionName(name, version)
        guard let secret = try await secret(versionName, namespace: namespace), isOurs(secret, owner: owner) else { return }
        do {
            _ = try await client.delete(Self.secrets, namespace: namespace, name: versionName, uid: secret["metadata"]?["uid"]?.scalarText)
        } catch {
            if error.isNotFound { return }
            throw failed(error, "cannot delete Secret \(versionName)")
        }
    }

    public func remove(ownedBy owner: ObjectKey, dryRun: Bool) async throws(SecretError) -> [String] {
        let items: [SpecNode]
        do {
            items = try await client.list(Self.secrets, namespace: owner.namespace,
                                          labelSelector: "\(Children.ownerKindLabel)=SecretRotation,\(Children.ownerNameLabel)=\(owner.name)").items
        } catch {
            throw failed(error, "cannot list the Secrets of secretrotation/\(owner.name)")
        }
        let names = items.filter { isOurs($0, owner: owner) }.compactMap { $0["metadata"]?["name"]?.scalarText }.sorted()
        if !dryRun {
            for name in names {
                do {
                    _ = try await client.delete(Self.secrets, namespace: owner.namespace, name: name)
                } catch {
                    if !error.isNotFound { throw failed(error, "cannot delete Secret \(name)") }
                }
            }
        }
        return names.map { "Secret \($0)" }
    }
}
