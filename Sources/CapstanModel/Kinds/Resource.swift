/// The API group and version of every Capstan kind.
public let capstanGroup = "capstan.dev"
public let capstanVersion = "v1alpha1"
public let capstanAPIVersion = "capstan.dev/v1alpha1"

/// The six kinds, with the names kubectl and `capstan get` accept for them.
public enum ResourceKind: String, CaseIterable, Sendable, Hashable, Codable, Comparable {
    case application = "Application"
    case deployment = "Deployment"
    case canary = "Canary"
    case alertRule = "AlertRule"
    case secretRotation = "SecretRotation"
    case backupSchedule = "BackupSchedule"

    public var kind: String { rawValue }
    public var singular: String { rawValue.lowercased() }
    public var plural: String {
        switch self {
        case .canary: return "canaries"
        default: return singular + "s"
        }
    }
    /// Short names: the design's list, less those equal to the singular (kubectl resolves those anyway).
    public var shortNames: [String] {
        switch self {
        case .application: return ["app"]
        case .deployment: return ["cdeploy"]
        case .canary: return []
        case .alertRule: return []
        case .secretRotation: return []
        case .backupSchedule: return []
        }
    }
    /// Every name a user may type for this kind (`app`, `application`, `applications`, `Application`).
    public var allNames: [String] { [singular, plural, rawValue] + shortNames }

    /// Looks a kind up by any of its names, case-insensitively, also as `plural.capstan.dev`.
    public init?(name: String) {
        var lowered = name.lowercased()
        if lowered.hasSuffix("." + capstanGroup) { lowered.removeLast(capstanGroup.count + 1) }
        guard let match = ResourceKind.allCases.first(where: { $0.allNames.map { $0.lowercased() }.contains(lowered) }) else {
            return nil
        }
        self = match
    }

    public static func < (lhs: ResourceKind, rhs: ResourceKind) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }

    /// The Swift type of the kind.
    public var type: any Resource.Type {
        switch self {
        case .application: return Application.self
        case .deployment: return Deployment.self
        case .canary: return Canary.self
        case .alertRule: return AlertRule.self
        case .secretRotation: return SecretRotation.self
        case .backupSchedule: return BackupSchedule.self
        }
    }
}

/// An object of one of the six kinds: metadata, a spec, and a status Capstan writes.
public protocol Resource: SpecObject, Codable, Hashable {
    associatedtype Spec: SpecObject
    associatedtype Status: CommonStatus
    static var kind: ResourceKind { get }
    var metadata: ObjectMeta { get set }
    var spec: Spec { get set }
    var status: Status { get set }
    /// Extra printer columns, after READY, STATUS and REASON.
    static var columns: [PrinterColumn] { get }
    /// The STATUS column's JSON path.
    static var statusColumnPath: String { get }
}

/// A column of `kubectl get` and `capstan get`.
public struct PrinterColumn: Sendable, Hashable {
    public var name: String
    public var type: String
    public var jsonPath: String
    public var description: String
    public var priority: Int

    public init(_ name: String, _ type: String, _ jsonPath: String, _ description: String, priority: Int = 0) {
        self.name = name
        self.type = type
        self.jsonPath = jsonPath
        self.description = description
        self.priority = priority
    }
}

extension Resource {
    public static var statusColumnPath: String { ".status.phase" }

    /// The fields every kind has; each kind stores them once (`static let fields = resourceFields`).
    public static var resourceFields: [Field<Self>] {
        [
            .constant("apiVersion", capstanAPIVersion),
            .constant("kind", kind.rawValue),
            .required("metadata", \.metadata),
            .required("spec", \.spec),
            .defaulted("status", \.status, Status(), "Written by Capstan only."),
        ]
    }

    /// `Kind/name`, as printed in messages.
    public var reference: String { "\(Self.kind.rawValue)/\(metadata.name)" }
    /// The cache key: `kind/namespace/name`.
    public var key: ObjectKey { ObjectKey(kind: Self.kind, namespace: metadata.namespace, name: metadata.name) }

    public init(from decoder: any Decoder) throws {
        let node = try CodableBridge.node(from: decoder)
        do throws(ValidationError) {
            self = try Self.decoded(from: node)
        } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        try CodableBridge.encode(encode(), to: encoder)
    }
}

/// Identifies one object: kind, namespace and name.
public struct ObjectKey: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public var kind: ResourceKind
    public var namespace: String
    public var name: String

    public init(kind: ResourceKind, namespace: String, name: String) {
        self.kind = kind
        self.namespace = namespace
        self.name = name
    }

    public var description: String { "\(kind.rawValue)/\(namespace)/\(name)" }

    public static func < (lhs: ObjectKey, rhs: ObjectKey) -> Bool {
        (lhs.kind, lhs.namespace, lhs.name) < (rhs.kind, rhs.namespace, rhs.name)
    }
}

extension Field {
    /// A field whose value is fixed (`apiVersion`, `kind`).
    static func constant(_ name: String, _ value: String) -> Field {
        Field(
            name: name, presence: .required, documentation: nil, defaultNode: nil,
            decodeInto: { _, node, context in
                if node.scalarText != value {
                    context.fail("expected \"\(value)\", got \(node.shapeDescription)", at: node.mark)
                }
            },
            encodeFrom: { _ in .string(value) },
            schema: { Schema(type: .string) })
    }
}
