import CapstanModel
import CapstanRuntime
import Foundation

/// Leader election's lease as a `coordination.k8s.io/v1` Lease in the operator's namespace:
/// compare-and-swap by resourceVersion (a stale PUT is a 409 Conflict), as client-go's
/// LeaseLock does.
public struct KubeLeaseStore: LeaseStore {
    let client: KubeClient
    let namespace: String

    public init(client: KubeClient, namespace: String) {
        self.client = client
        self.namespace = namespace
    }

    public func get(_ name: String) async throws -> (record: LeaseRecord, version: String)? {
        guard let object = try await client.get(.leases, namespace: namespace, name: name) else { return nil }
        let spec = object["spec"]
        let record = LeaseRecord(
            holderIdentity: spec?["holderIdentity"]?.scalarText ?? "",
            leaseDurationSeconds: Int(spec?["leaseDurationSeconds"]?.scalarText ?? "") ?? 1,
            acquireTime: Self.time(spec?["acquireTime"]?.scalarText),
            renewTime: Self.time(spec?["renewTime"]?.scalarText),
            leaseTransitions: Int(spec?["leaseTransitions"]?.scalarText ?? "") ?? 0)
        return (record, object["metadata"]?["resourceVersion"]?.scalarText ?? "")
    }

    public func create(_ name: String, _ record: LeaseRecord) async throws -> Bool {
        do {
            _ = try await client.create(.leases, namespace: namespace, object(name, record, version: nil))
            return true
        } catch {
            if error.isAlreadyExists { return false }
            throw error
        }
    }

    public func update(_ name: String, _ record: LeaseRecord, expecting version: String) async throws -> Bool {
        do {
            _ = try await client.update(.leases, namespace: namespace, name: name, object(name, record, version: version))
            return true
        } catch {
            if error.isConflict || error.isNotFound { return false }
            throw error
        }
    }

    private func object(_ name: String, _ record: LeaseRecord, version: String?) -> SpecNode {
        var metadata: [(String, SpecNode)] = [("name", .string(name)), ("namespace", .string(namespace))]
        if let version { metadata.append(("resourceVersion", .string(version))) }
        var spec: [(String, SpecNode)] = []
        if !record.holderIdentity.isEmpty { spec.append(("holderIdentity", .string(record.holderIdentity))) }
        spec += [
            ("leaseDurationSeconds", .int(record.leaseDurationSeconds)),
            ("acquireTime", .string(Self.microTime(record.acquireTime))),
            ("renewTime", .string(Self.microTime(record.renewTime))),
            ("leaseTransitions", .int(record.leaseTransitions)),
        ]
        return .mapping([("apiVersion", .string("coordination.k8s.io/v1")), ("kind", .string("Lease")),
                         ("metadata", .mapping(metadata)), ("spec", .mapping(spec))])
    }

    /// metav1.MicroTime: RFC 3339 with microseconds.
    static func microTime(_ date: Date) -> String { Timestamp(date).microTime }

    static func time(_ text: String?) -> Date {
        guard let text else { return Date(timeIntervalSince1970: 0) }
        return Timestamp(rfc3339: text)?.date ?? Date(timeIntervalSince1970: 0)
    }
}
