/// A reference from a child to the object that owns it (Kubernetes `ownerReferences`).
public struct OwnerReference: SpecObject, Hashable {
    public var apiVersion = ""
    public var kind = ""
    public var name = ""
    public var uid = ""
    public var controller: Bool?
    public var blockOwnerDeletion: Bool?

    public init() {}

    public static let fields: [Field<OwnerReference>] = [
        .required("apiVersion", \.apiVersion),
        .required("kind", \.kind),
        .required("name", \.name),
        .required("uid", \.uid),
        .optional("controller", \.controller),
        .optional("blockOwnerDeletion", \.blockOwnerDeletion),
    ]
}

/// Standard object metadata, as in Kubernetes (`metav1.ObjectMeta`).
public struct ObjectMeta: SpecObject, Hashable {
    public var name = ""
    public var namespace = "default"
    public var labels = StringMap()
    public var annotations = StringMap()
    public var generation: Int?
    public var uid: String?
    public var resourceVersion: String?
    public var creationTimestamp: Timestamp?
    public var deletionTimestamp: Timestamp?
    public var finalizers: [String] = []
    public var ownerReferences: [OwnerReference] = []

    public init() {}
    public init(name: String, namespace: String = "default") {
        self.name = name
        self.namespace = namespace
    }

    public static let documentation = "Standard object metadata."

    public static let fields: [Field<ObjectMeta>] = [
        .required("name", \.name, "Name of the object: a DNS-1123 label.", .dnsLabel),
        .defaulted("namespace", \.namespace, "default", "Namespace of the object.", .dnsLabel),
        .defaulted("labels", \.labels, StringMap()),
        .defaulted("annotations", \.annotations, StringMap()),
        .optional("generation", \.generation),
        .optional("uid", \.uid),
        .optional("resourceVersion", \.resourceVersion),
        .optional("creationTimestamp", \.creationTimestamp),
        .optional("deletionTimestamp", \.deletionTimestamp),
        .defaulted("finalizers", \.finalizers, []),
        .defaulted("ownerReferences", \.ownerReferences, []),
    ]

    /// Fields the API server adds that Capstan neither needs nor rejects.
    public static let ignoredFields: Set<String> = [
        "managedFields", "selfLink", "generateName", "deletionGracePeriodSeconds",
    ]

    public static func validate(_ value: ObjectMeta, _ node: SpecNode, _ context: inout DecodeContext) {
        for (key, label) in value.labels.values.sorted(by: { $0.key < $1.key }) {
            let mark = node["labels"]?.entries?.first(where: { $0.key == key })?.keyMark
            if let problem = Names.qualifiedNameProblem(key) {
                context.fail("label \(problem)", field: "labels", at: mark)
            } else if let problem = Names.labelValueProblem(label) {
                context.fail("label \"\(key)\": \(problem)", field: "labels", at: mark)
            }
        }
        var size = 0
        for (key, annotation) in value.annotations.values.sorted(by: { $0.key < $1.key }) {
            size += key.utf8.count + annotation.utf8.count
            if let problem = Names.qualifiedNameProblem(key) {
                let mark = node["annotations"]?.entries?.first(where: { $0.key == key })?.keyMark
                context.fail("annotation \(problem)", field: "annotations", at: mark)
            }
        }
        if size > 256 * 1024 {
            context.fail("annotations total \(size) bytes, over the 262144-byte limit", field: "annotations", at: node["annotations"]?.mark)
        }
    }
}

/// The status of a condition.
public enum ConditionStatus: String, SpecEnum {
    case `true` = "True"
    case `false` = "False"
    case unknown = "Unknown"
}

/// One observation of an object's state, in the shape of Kubernetes' `metav1.Condition`.
public struct Condition: SpecObject, Hashable {
    public var type = ""
    public var status = ConditionStatus.unknown
    public var reason = ""
    public var message = ""
    public var observedGeneration: Int?
    public var lastTransitionTime = Timestamp(.init(timeIntervalSince1970: 0))

    public init() {}
    public init(type: String, status: ConditionStatus, reason: String, message: String = "",
                observedGeneration: Int? = nil, lastTransitionTime: Timestamp) {
        self.type = type
        self.status = status
        self.reason = reason
        self.message = message
        self.observedGeneration = observedGeneration
        self.lastTransitionTime = lastTransitionTime
    }

    public static let fields: [Field<Condition>] = [
        .required("type", \.type, "Type of the condition: Ready, Reconciling, Stalled, ...", .nonEmpty, .maxLength(316)),
        .required("status", \.status),
        .required("reason", \.reason, "CamelCase reason for the last transition.", .nonEmpty, .maxLength(1024)),
        .defaulted("message", \.message, "", "Human-readable detail.", .maxLength(32768)),
        .optional("observedGeneration", \.observedGeneration, nil, .minimum(0)),
        .required("lastTransitionTime", \.lastTransitionTime, "When the status last changed."),
    ]

    public static func validate(_ value: Condition, _ node: SpecNode, _ context: inout DecodeContext) {
        let first = value.reason.first
        if !(first?.isLetter ?? false) || !value.reason.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_,:".contains($0)) }) {
            context.fail("reason \"\(value.reason)\" must be CamelCase (letters, digits, '_', ',' and ':', starting with a letter)", field: "reason", at: node["reason"]?.mark)
        }
    }
}

extension Rule where V == [Condition] {
    /// Conditions form a map keyed by type.
    static var uniqueTypes: Rule {
        Rule(check: { conditions in
            var seen = Set<String>()
            for condition in conditions where !seen.insert(condition.type).inserted {
                return "condition type \"\(condition.type)\" appears twice"
            }
            return nil
        }, schema: { $0.listType = "map"; $0.listMapKeys = ["type"] })
    }
}

/// The object an event is about.
public struct ObjectReference: SpecObject, Hashable {
    public var apiVersion: String?
    public var kind = ""
    public var namespace = "default"
    public var name = ""
    public var uid: String?

    public init() {}
    public init(kind: String, namespace: String, name: String, apiVersion: String? = nil, uid: String? = nil) {
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.apiVersion = apiVersion
        self.uid = uid
    }

    public static let fields: [Field<ObjectReference>] = [
        .optional("apiVersion", \.apiVersion),
        .required("kind", \.kind),
        .defaulted("namespace", \.namespace, "default"),
        .required("name", \.name),
        .optional("uid", \.uid),
    ]
}

/// Normal or Warning, as Kubernetes events.
public enum EventType: String, SpecEnum {
    case normal = "Normal"
    case warning = "Warning"
}

/// A reconcile event: something Capstan decided or noticed about one object.
public struct Event: SpecObject, Hashable {
    public var type = EventType.normal
    public var reason = ""
    public var message = ""
    public var involvedObject = ObjectReference()
    public var count = 1
    public var firstTimestamp = Timestamp(.init(timeIntervalSince1970: 0))
    public var lastTimestamp = Timestamp(.init(timeIntervalSince1970: 0))
    public var reportingController = "capstan"

    public init() {}

    public static let fields: [Field<Event>] = [
        .required("type", \.type),
        .required("reason", \.reason, nil, .nonEmpty),
        .defaulted("message", \.message, ""),
        .required("involvedObject", \.involvedObject),
        .defaulted("count", \.count, 1, nil, .minimum(1)),
        .required("firstTimestamp", \.firstTimestamp),
        .required("lastTimestamp", \.lastTimestamp),
        .defaulted("reportingController", \.reportingController, "capstan"),
    ]
}

/// Status fields every kind shares.
public protocol CommonStatus: SpecObject {
    var observedGeneration: Int? { get set }
    var conditions: [Condition] { get set }
    var lastReconcileTime: Timestamp? { get set }
}

extension CommonStatus {
    /// The common fields, to be listed first in every status.
    public static var commonFields: [Field<Self>] {
        [
            .optional("observedGeneration", \.observedGeneration, "The generation last reconciled.", .minimum(0)),
            .defaulted("conditions", \.conditions, [], "Ready, Reconciling, Stalled and kind-specific conditions.", .uniqueTypes),
            .optional("lastReconcileTime", \.lastReconcileTime, "When the object was last reconciled."),
        ]
    }

    /// The condition of `type`, if present.
    public func condition(_ type: String) -> Condition? {
        conditions.first(where: { $0.type == type })
    }
}

/// A reference to a key of a Secret (a local vault entry or a Kubernetes Secret).
public struct SecretKeySelector: SpecObject, Hashable {
    public var name = ""
    public var key = ""

    public init() {}
    public init(name: String, key: String) {
        self.name = name
        self.key = key
    }

    public static let fields: [Field<SecretKeySelector>] = [
        .required("name", \.name, "Name of the Secret.", .dnsSubdomain),
        .required("key", \.key, "Key inside the Secret.", .nonEmpty),
    ]
}

/// Where a secret value comes from: `{secretKeyRef: {name, key}}`.
public struct SecretSource: SpecObject, Hashable {
    public var secretKeyRef = SecretKeySelector()

    public init() {}
    public init(_ ref: SecretKeySelector) { secretKeyRef = ref }

    public static let fields: [Field<SecretSource>] = [
        .required("secretKeyRef", \.secretKeyRef, "A key of a Secret managed by Capstan or present in the cluster."),
    ]
}

/// An environment variable: a literal value or a secret reference.
/// Variables Capstan sets in every instance, which an `env` list may not set: `PORT` is the
/// port the instance must listen on (health checks probe it, the router sends to it), and
/// `CAPSTAN_*` say which instance, revision and version it is.
public enum ReservedEnv {
    /// Why `name` cannot be set in `env`, or nil.
    public static func problem(_ name: String) -> String? {
        if name == "PORT" {
            return "PORT is set by Capstan for each instance (the port its health checks probe and the router sends to): listen on $PORT instead of setting it"
        }
        if name.hasPrefix("CAPSTAN_") {
            return "\(name) is reserved: Capstan sets CAPSTAN_* variables in every instance"
        }
        return nil
    }

    /// Reports every reserved name in an `env` list at `env[i].name`.
    public static func check(_ env: [EnvVar], _ node: SpecNode, _ context: inout DecodeContext) {
        for (index, variable) in env.enumerated() {
            guard let problem = problem(variable.name) else { continue }
            let item = node["env"].flatMap { if case .sequence(let items) = $0.value, index < items.count { return items[index] } else { return nil } }
            context.at("env") { $0.at(.index(index)) { $0.fail(problem, field: "name", at: item?["name"]?.mark ?? item?.mark) } }
        }
    }
}

public struct EnvVar: SpecObject, Hashable {
    public var name = ""
    public var value: String?
    public var valueFrom: SecretSource?

    public init() {}
    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }

    public static let fields: [Field<EnvVar>] = [
        .required("name", \.name, "Variable name.", Rule(check: { Names.envVarNameProblem($0) })),
        .optional("value", \.value, "Literal value; $(VAR) references are expanded."),
        .optional("valueFrom", \.valueFrom, "Take the value from a Secret key."),
    ]

    public static func validate(_ value: EnvVar, _ node: SpecNode, _ context: inout DecodeContext) {
        if value.value != nil && value.valueFrom != nil {
            context.fail("set value or valueFrom, not both", at: node.mark)
        }
    }
}

extension Rule where V == [EnvVar] {
    static var uniqueNames: Rule {
        Rule(check: { vars in
            var seen = Set<String>()
            for variable in vars where !seen.insert(variable.name).inserted {
                return "environment variable \"\(variable.name)\" is set twice"
            }
            return nil
        }, schema: { $0.listType = "map"; $0.listMapKeys = ["name"] })
    }
}

/// A command run on this host (or in the pod), as an argv list.
public struct ExecAction: SpecObject, Hashable {
    public var command: [String] = []

    public init() {}

    public static let fields: [Field<ExecAction>] = [
        .required("command", \.command, "The program and its arguments (no shell unless you call one).", .minItems(1)),
    ]
}
