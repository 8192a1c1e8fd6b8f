import CapstanModel
import Foundation

/// What one revision of a Deployment runs: the Application's template, the version and the
/// merged environment. Its hash identifies the revision; replicas and rollout settings are not
/// part of it (changing them is no new revision, as with Kubernetes' pod template).
public struct WorkloadTemplate: Sendable, Hashable {
    public var application: String
    public var version: String
    public var spec: ApplicationSpec
    /// The Application's env with the Deployment's merged over it, by name, in order.
    public var env: [EnvVar]
    /// Where a relative `source.path` is resolved from (the Application's spec file's
    /// directory). Not part of the hash: moving a spec file is no new revision.
    public var sourceRoot: String

    public init(application: String, version: String, spec: ApplicationSpec, env: [EnvVar], sourceRoot: String) {
        self.application = application
        self.version = version
        self.spec = spec
        self.env = env
        self.sourceRoot = sourceRoot
    }

    /// The template a Deployment asks of its Application.
    public init(deployment: Deployment, application: Application, applicationFile: String) {
        var env = application.spec.env
        for variable in deployment.spec.env {
            if let index = env.firstIndex(where: { $0.name == variable.name }) { env[index] = variable } else { env.append(variable) }
        }
        self.init(application: application.metadata.name, version: deployment.spec.version, spec: application.spec, env: env,
                  sourceRoot: (applicationFile as NSString).deletingLastPathComponent)
    }

    private var hashedEntries: [(String, SpecNode)] {
        var spec = spec
        spec.env = []  // the merged env below is what counts
        return [("application", .string(application)), ("version", .string(version)), ("spec", spec.encode()), ("env", env.encode())]
    }

    /// The revision's identity: a hash of everything an instance is made of.
    public var hash: String { String(SpecHash.of(.mapping(hashedEntries)).prefix(16)) }

    /// The form kept in the revision history (for rollbacks).
    public func encode() -> SpecNode {
        .mapping(hashedEntries + [("sourceRoot", .string(sourceRoot))])
    }

    public static func decode(_ node: SpecNode) throws -> WorkloadTemplate {
        guard let application = node["application"]?.scalarText, let version = node["version"]?.scalarText,
              let specNode = node["spec"], let envNode = node["env"] else {
            throw WorkloadError("InvalidRevision", "a stored revision template is incomplete")
        }
        var spec = try ApplicationSpec.decoded(from: specNode)
        let env = try [EnvVar].decodedList(from: envNode)
        spec.env = []
        return WorkloadTemplate(application: application, version: version, spec: spec, env: env,
                                sourceRoot: node["sourceRoot"]?.scalarText ?? ".")
    }
}

extension Array where Element == EnvVar {
    static func decodedList(from node: SpecNode) throws -> [EnvVar] {
        var context = DecodeContext()
        let value = [EnvVar].decode(node, &context)
        if let value, context.problems.isEmpty { return value }
        throw WorkloadError("InvalidRevision", "a stored revision's env is invalid: \(context.problems.map(\.description).joined(separator: "; "))")
    }
}

/// A revision of a Deployment: its number and template.
public struct WorkloadRevision: Sendable, Hashable {
    public var number: Int
    public var template: WorkloadTemplate
    public var hash: String { template.hash }

    public init(number: Int, template: WorkloadTemplate) {
        self.number = number
        self.template = template
    }
}

/// One instance as the platform sees it.
public struct InstanceState: Sendable, Hashable {
    public var id: String
    /// The template hash of the revision it runs.
    public var templateHash: String
    public var revision: Int
    /// Passing its health check (or running, without one) and receiving traffic.
    public var ready: Bool
    public var restarts: Int
    /// The last thing that went wrong: an exit, a failed probe, a start that failed.
    public var problem: String?

    public init(id: String, templateHash: String, revision: Int, ready: Bool, restarts: Int = 0, problem: String? = nil) {
        self.id = id
        self.templateHash = templateHash
        self.revision = revision
        self.ready = ready
        self.restarts = restarts
        self.problem = problem
    }
}

/// Why a platform could not do what was asked, with the condition reason it maps to.
public struct WorkloadError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `SourceUnavailable`, `BuildFailed`, `StartFailed`, `PortUnavailable`, `SecretUnavailable`.
    public var reason: String
    public var message: String

    public init(_ reason: String, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { message }
}

/// Runs Deployments' instances (local: supervised processes behind a router port).
public protocol WorkloadPlatform: Sendable {
    /// Makes the revision runnable (its artifact and release exist); idempotent. With
    /// `current`, the revision becomes the Deployment's current one.
    /// Returns the repairs it made (a release or link removed behind Capstan's back).
    func prepare(_ revision: WorkloadRevision, for deployment: ObjectKey, current: Bool) async throws(WorkloadError) -> [String]
    /// The Deployment's instances, sorted by id.
    func instances(of deployment: ObjectKey) async -> [InstanceState]
    /// Starts one instance of the revision; returns its id.
    func start(_ revision: WorkloadRevision, for deployment: ObjectKey, memoryLimit: Int64?) async throws(WorkloadError) -> String
    /// Takes the instance out of traffic, then stops it (SIGTERM, SIGKILL after the grace period).
    func stop(instance: String, of deployment: ObjectKey) async
    /// Serves the Deployment's stable port over its ready instances (nil: no port).
    func expose(_ deployment: ObjectKey, port: Int?) async throws(WorkloadError)
    /// Keeps only these revisions' releases (the history) for the Deployment.
    func pruneReleases(of deployment: ObjectKey, keeping revisions: Set<Int>) async
    /// Removes everything of a deleted Deployment: instances, port, releases. Returns what
    /// was removed, one line each (for the `OrphanDeleted` event); with `dryRun`, what would be.
    func remove(_ deployment: ObjectKey, dryRun: Bool) async -> [String]
}

/// Revision history of an object (the local state store; Kubernetes: kept by Capstan too).
public protocol RevisionStore: Sendable {
    /// Records the template as the newest revision; an older revision with the same hash is
    /// renumbered as the newest (a rollback is a new revision).
    func recordRevision(of owner: ObjectKey, hash: String, template: SpecNode) async throws -> (number: Int, template: SpecNode)
    /// Revisions, oldest first.
    func revisions(of owner: ObjectKey) async throws -> [(number: Int, hash: String, template: SpecNode)]
    func pruneRevisions(of owner: ObjectKey, keep: Int, inUse: Set<Int>) async throws
    func removeRevisions(of owner: ObjectKey) async throws
}

/// Kubernetes-style `$(VAR)` expansion: `$(NAME)` is replaced by the variable's value when it
/// is defined and left as it is when not; `$$` is a literal `$` (so `$$(NAME)` gives `$(NAME)`).
public enum EnvExpansion {
    public static func expand(_ text: String, _ lookup: (String) -> String?) -> String {
        guard text.contains("$") else { return text }
        var out = ""
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            let next = text.index(after: index)
            guard character == "$", next < text.endIndex else {
                out.append(character)
                index = next
                continue
            }
            if text[next] == "$" {
                out.append("$")
                index = text.index(after: next)
            } else if text[next] == "(", let close = text[next...].firstIndex(of: ")") {
                let name = String(text[text.index(after: next)..<close])
                if let value = lookup(name) { out += value } else { out += text[index...close] }
                index = text.index(after: close)
            } else {
                out.append(character)
                index = next
            }
        }
        return out
    }

    /// The environment of an instance: `base` (PORT, CAPSTAN_*, PATH ...) then the template's
    /// variables in order, each expanded against what is defined before it (as Kubernetes).
    /// Returns nil and the name of a variable that takes its value from a secret (not
    /// available before SecretRotation lands).
    public static func environment(base: [(String, String)], variables: [EnvVar]) -> (environment: [String: String], unresolved: String?) {
        var environment: [String: String] = [:]
        for (name, value) in base { environment[name] = value }
        for variable in variables {
            guard let value = variable.value else {
                if variable.valueFrom != nil { return (environment, variable.name) }
                environment[variable.name] = ""
                continue
            }
            environment[variable.name] = expand(value) { environment[$0] }
        }
        return (environment, nil)
    }
}
