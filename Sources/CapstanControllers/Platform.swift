import CapstanModel
import Foundation

/// An object as a reconciler sees it: the last good desired state, its generation, where it
/// came from, and the problems of the document that holds it now (principle 2).
public struct StoredObject: Sendable, Hashable {
    public var resource: AnyResource
    public var generation: Int
    public var sourceFile: String
    public var problems: [String]

    public init(resource: AnyResource, generation: Int, sourceFile: String, problems: [String] = []) {
        self.resource = resource
        self.generation = generation
        self.sourceFile = sourceFile
        self.problems = problems
    }

    public var key: ObjectKey { resource.key }
}

/// Where desired state and status live (the local state store; the Kubernetes API).
public protocol ObjectStore: Sendable {
    func object(_ key: ObjectKey) async throws -> StoredObject?
    func objects(kind: ResourceKind) async throws -> [StoredObject]
    /// Writes the status; returns false when it was unchanged (nothing written).
    func writeStatus(_ key: ObjectKey, _ status: SpecNode) async throws -> Bool
}

/// Records reconcile events (aggregated by the implementation).
public protocol EventRecorder: Sendable {
    func record(_ type: EventType, reason: String, message: String, about key: ObjectKey) async
}

/// Whether an Application's code can be reached.
public enum SourceCheck: Sendable, Equatable {
    case ready(String)
    case unavailable(String)
}

/// Prepares Applications' artifacts (the local platform copies or checks out and builds;
/// Kubernetes pulls images and has nothing to prepare).
public protocol ArtifactPlatform: Sendable {
    /// Checks that the Application's source exists and can be read.
    func checkSource(of application: Application, specFile: String) async -> SourceCheck
}
