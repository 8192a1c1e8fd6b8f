import CapstanControllers
import CapstanModel
import Foundation
import Synchronization

/// Applications on Kubernetes: nothing to build; the artifact of a version is the image
/// reference it runs.
public final class KubeArtifacts: ArtifactPlatform, Sendable {
    private let prepared = Mutex<[ObjectKey: [ArtifactStatus]]>([:])

    public init() {}

    public func checkSource(of application: Application, specFile: String) async -> SourceCheck {
        guard let image = application.spec.image else {
            return .unavailable("the Kubernetes platform runs images: spec.image is not set")
        }
        return .ready("image \(image)")
    }

    public func prepare(_ template: WorkloadTemplate, namespace: String) async throws(WorkloadError) -> ArtifactStatus {
        guard let image = template.spec.image else {
            throw WorkloadError("ImageMissing", "the Kubernetes platform runs images: spec.image is not set")
        }
        let reference = try Children.imageReference(image, version: template.version).get()
        var artifact = ArtifactStatus()
        artifact.version = template.version
        artifact.digest = reference
        let key = ObjectKey(kind: .application, namespace: namespace, name: template.application)
        prepared.withLock { prepared in
            var list = prepared[key] ?? []
            if !list.contains(artifact) { list.insert(artifact, at: 0) }
            prepared[key] = list
        }
        return artifact
    }

    public func artifacts(of application: ObjectKey) async -> [ArtifactStatus] {
        prepared.withLock { $0[application] ?? [] }
    }

    /// Images are the registry's: nothing is deleted; versions no longer used leave the list.
    public func prune(_ application: ObjectKey, keep: Int, inUse: Set<String>) async -> [String] {
        prepared.withLock { prepared in
            prepared[application] = (prepared[application] ?? []).filter { inUse.contains($0.version) }
            if prepared[application]?.isEmpty ?? false { prepared[application] = nil }
        }
        return []
    }
}
