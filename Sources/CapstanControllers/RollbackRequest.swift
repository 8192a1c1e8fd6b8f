import Foundation
import CapstanModel

/// A requested rollback (`capstan rollback deployment/NAME [--to-revision N]` or the annotation
/// `capstan.dev/rollback-to: "N"`), worked out the same way on every platform: revision N
/// (default: the one before the current) runs again as a new revision, and holds until the
/// spec's template changes.
public enum RollbackRequest {
    /// The annotation that asks for it on a custom resource; its value is a revision number,
    /// or empty (or `previous`) for the revision before the current one.
    public static let annotation = ObjectRequest.annotation(of: ObjectRequest.rollback)!

    /// What a request value asks: nil for "the previous revision".
    public static func revision(from value: String) throws(WorkloadError) -> Int? {
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        if trimmed.isEmpty || trimmed == "previous" { return nil }
        guard let number = Int(trimmed), number >= 1 else {
            throw WorkloadError("InvalidRequest", "rollback-to \"\(value)\" is not a revision number (1 or more) or empty for the previous revision")
        }
        return number
    }

    /// Records the chosen revision's template as the newest revision and returns the status's
    /// new `rollback` (nil when the chosen revision has the spec's own template, which ends a rollback)
    /// and what was done, for the event. `status` is the Deployment's current status; its
    /// history resolves a number the store has since renumbered.
    public static func plan(_ key: ObjectKey, to requested: Int?, status: DeploymentStatus, specTemplateHash: String,
                            revisions: any RevisionStore, request: String? = nil) async throws -> (rollback: DeploymentRollback?, message: String) {
        let stored = try await revisions.revisions(of: key)
        let current = status.currentRevision ?? stored.last?.number ?? 0
        let chosen: (number: Int, hash: String, template: SpecNode)
        if let requested {
            let byHash = status.history.first { $0.revision == requested }.flatMap { record in stored.last { $0.hash == record.templateHash } }
            guard let found = stored.first(where: { $0.number == requested }) ?? byHash else {
                let known = stored.map { String($0.number) }.joined(separator: ", ")
                throw WorkloadError("RevisionNotFound", "revision \(requested) not found (known: \(known.isEmpty ? "none" : known))")
            }
            chosen = found
        } else {
            guard let found = stored.last(where: { $0.number < current }) else {
                throw WorkloadError("RevisionNotFound", "there is no revision before \(current) to roll back to")
            }
            chosen = found
        }
        let recorded = try await revisions.recordRevision(of: key, hash: chosen.hash, template: chosen.template)
        let message = "rolling back from revision \(current) to revision \(chosen.number) (now revision \(recorded.number))"
        if chosen.hash == specTemplateHash {
            return (nil, message)  // the spec's own template: no rollback holds
        }
        var rollback = DeploymentRollback()
        rollback.toRevision = recorded.number
        rollback.specTemplateHash = specTemplateHash
        rollback.reason = "RollbackRequested"
        rollback.message = "rolled back on request from revision \(current) to the template of revision \(chosen.number)"
        rollback.request = request
        return (rollback, message)
    }
}
