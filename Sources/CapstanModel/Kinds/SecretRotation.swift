#if canImport(Glibc)
import Glibc
#endif

public enum GeneratorType: String, SpecEnum {
    case random, token, ed25519, selfSignedCertificate
}

public enum Charset: String, SpecEnum {
    case alphanumeric, asciiPrintable = "ascii-printable", hex, base64url
}

/// How one key's value is generated.
public struct Generator: SpecObject, Hashable {
    public var type = GeneratorType.random
    public var length: Int?
    public var charset: Charset?
    public var bytes: Int?
    public var commonName: String?
    public var dnsNames: [String]?
    public var ipAddresses: [String]?
    public var validity: KubeDuration?

    public init() {}

    public static let documentation = "random: length, charset; token: bytes; ed25519: nothing; selfSignedCertificate: commonName, dnsNames, ipAddresses, validity."
    public static let fields: [Field<Generator>] = [
        .required("type", \.type, "random, token, ed25519 or selfSignedCertificate."),
        .optional("length", \.length, "random: characters (default 32).", .minimum(8), .maximum(4096)),
        .optional("charset", \.charset, "random: alphanumeric (default), ascii-printable, hex or base64url."),
        .optional("bytes", \.bytes, "token: random bytes, base64url-encoded (default 32).", .minimum(16), .maximum(4096)),
        .optional("commonName", \.commonName, "selfSignedCertificate: subject common name (also its first DNS name unless dnsNames is set).", .nonEmpty),
        .optional("dnsNames", \.dnsNames, "selfSignedCertificate: DNS subject alternative names.", Rule(check: { names in
            names.lazy.compactMap { name in
                let bare = name.hasPrefix("*.") ? String(name.dropFirst(2)) : name
                return Names.dns1123SubdomainProblem(bare).map { "\"\(name)\": \($0)" }
            }.first
        })),
        .optional("ipAddresses", \.ipAddresses, "selfSignedCertificate: IP address subject alternative names.", Rule(check: { addresses in
            addresses.lazy.compactMap { GeneratorAddress.parse($0) == nil ? "\"\($0)\" is not an IPv4 or IPv6 address" : nil }.first
        })),
        .optional("validity", \.validity, "selfSignedCertificate: lifetime (default 2160h).", .atLeast(.hours(1))),
    ]

    /// Which fields belong to which generator type.
    static let fieldsByType: [GeneratorType: Set<String>] = [
        .random: ["length", "charset"], .token: ["bytes"], .ed25519: [], .selfSignedCertificate: ["commonName", "dnsNames", "ipAddresses", "validity"],
    ]

    public static func validate(_ value: Generator, _ node: SpecNode, _ context: inout DecodeContext) {
        let allowed = fieldsByType[value.type] ?? []
        for key in ["length", "charset", "bytes", "commonName", "dnsNames", "ipAddresses", "validity"] where node[key] != nil && !allowed.contains(key) {
            let owner = fieldsByType.first(where: { $0.value.contains(key) })!.key
            context.fail("only applies to type \(owner.rawValue) (type is \(value.type.rawValue))", field: key, at: node[key]?.mark)
        }
        if value.type == .selfSignedCertificate && value.commonName == nil {
            context.fail("required for type selfSignedCertificate", field: "commonName", at: node.mark)
        }
    }

    /// Effective settings with defaults applied.
    public var effectiveLength: Int { length ?? 32 }
    public var effectiveCharset: Charset { charset ?? .alphanumeric }
    public var effectiveBytes: Int { bytes ?? 32 }
    public var effectiveValidity: KubeDuration { validity ?? .hours(2160) }
}

/// An IP address of a certificate, as bytes (4 or 16).
public enum GeneratorAddress {
    public static func parse(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}

public struct SecretKeySpec: SpecObject, Hashable {
    public var name = ""
    public var generator = Generator()

    public init() {}

    public static let fields: [Field<SecretKeySpec>] = [
        .required("name", \.name, "Key name inside the Secret.", Rule(check: { name in
            let ok = !name.isEmpty && name.count <= 253 && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-._".contains($0)) }
            return ok && name != "." && name != ".." ? nil : "\"\(name)\" is not a valid key name: use letters, digits, '-', '_' and '.'"
        })),
        .required("generator", \.generator, "How the value is generated."),
    ]
}

public struct VerifySpec: SpecObject, Hashable {
    public var exec: ExecAction?
    public var http: HTTPVerify?
    public var timeout = KubeDuration.seconds(30)

    public init() {}

    public static let fields: [Field<VerifySpec>] = [
        .optional("exec", \.exec, "A command that must exit 0."),
        .optional("http", \.http, "A URL that must answer 2xx."),
        .defaulted("timeout", \.timeout, .seconds(30), "Time limit.", .positive),
    ]

    public static let exactlyOneOf = ["exec", "http"]
}

public struct HTTPVerify: SpecObject, Hashable {
    public var url = ""

    public init() {}

    public static let fields: [Field<HTTPVerify>] = [.required("url", \.url, nil, .httpURL)]
}

/// The command that makes a new value real where it is checked (a database's `ALTER USER`):
/// given the new values as `NEW_<KEY>` and the previous ones as `OLD_<KEY>`, in its
/// environment only.
public struct ApplySpec: SpecObject, Hashable {
    public var exec = ExecAction()
    public var timeout = KubeDuration.seconds(30)

    public init() {}

    public static let fields: [Field<ApplySpec>] = [
        .required("exec", \.exec, "The command; NEW_<KEY> and OLD_<KEY> in its environment (a key's name upper-cased, other characters as _)."),
        .defaulted("timeout", \.timeout, .seconds(30), "Time limit.", .positive),
    ]
}

public struct SecretRotationSpec: SpecObject, Hashable {
    public var secretName = ""
    public var keys: [SecretKeySpec] = []
    public var interval: KubeDuration?
    public var schedule: CronSchedule?
    public var timeZone = TimeZoneName.utc
    public var keepVersions = 3
    public var apply: ApplySpec?
    public var restartDeployments: [String] = []
    public var verify: VerifySpec?
    public var suspend = false

    public init() {}

    public static let documentation = "Rotates on interval (default 720h) or on schedule, not both."
    public static let fields: [Field<SecretRotationSpec>] = [
        .required("secretName", \.secretName, "The Secret this rotation manages.", .dnsSubdomain),
        .required("keys", \.keys, "Keys and their generators.", .minItems(1)),
        .optional("interval", \.interval, "Rotate this long after the last rotation (default 720h).", .atLeast(.minutes(1))),
        .optional("schedule", \.schedule, "Rotate at these cron times instead."),
        .defaulted("timeZone", \.timeZone, .utc, "Time zone of schedule."),
        .defaulted("keepVersions", \.keepVersions, 3, "Previous versions kept for rollback.", .minimum(0), .maximum(100)),
        .optional("apply", \.apply, "A command that makes the new values real (e.g. ALTER USER); run again with the previous values on a rollback."),
        .defaulted("restartDeployments", \.restartDeployments, [], "Deployments restarted after each rotation.", Rule(check: { names in
            names.lazy.compactMap { Names.dns1123LabelProblem($0) }.first
        })),
        .optional("verify", \.verify, "A check that must pass after rotation, else the rotation is rolled back."),
        .defaulted("suspend", \.suspend, false, "Stop rotating."),
    ]

    public static func validate(_ value: SecretRotationSpec, _ node: SpecNode, _ context: inout DecodeContext) {
        if value.interval != nil && value.schedule != nil {
            context.fail("set interval or schedule, not both", field: "schedule", at: node["schedule"]?.mark ?? node.mark)
        }
        var seen = Set<String>()
        for (index, key) in value.keys.enumerated() {
            let names = key.generator.type == .ed25519 ? [key.name, key.name + ".pub"]
                : key.generator.type == .selfSignedCertificate ? [key.name + ".crt", key.name + ".key"] : [key.name]
            for name in names where !seen.insert(name).inserted {
                context.at("keys") { $0.at(.index(index)) { $0.fail("key \"\(name)\" is produced twice", at: nil) } }
            }
        }
    }

    /// The rotation interval when no schedule is set.
    public var effectiveInterval: KubeDuration { interval ?? .hours(720) }
}

public struct SecretVersionRecord: SpecObject, Hashable {
    public var version = 0
    public var createdAt = Timestamp(.init(timeIntervalSince1970: 0))
    public var keys: [String] = []
    public var fingerprint = ""

    public init() {}

    public static let fields: [Field<SecretVersionRecord>] = [
        .required("version", \.version), .required("createdAt", \.createdAt),
        .defaulted("keys", \.keys, [], "Key names only, never values."), .required("fingerprint", \.fingerprint),
    ]
}

public enum RotationStep: String, SpecEnum {
    /// The new version is generated and written (it becomes current).
    case write = "Write"
    /// The apply command runs with the new values.
    case apply = "Apply"
    /// The dependent Deployments roll to the new values.
    case restart = "Restart"
    /// The verify check runs.
    case verify = "Verify"
    /// Failed: the previous version is current again and the apply command runs with it.
    case rollbackApply = "RollbackApply"
    /// Failed: the dependents roll back to the previous values.
    case rollbackRestart = "RollbackRestart"
}

/// A rotation under way: the step it takes next (written before it is taken, so a daemon
/// killed at any instant resumes it).
public struct RotationProgress: SpecObject, Hashable {
    public var step = RotationStep.write
    public var fromVersion: Int?
    public var toVersion = 0
    public var reason = ""
    public var startedAt = Timestamp(.init(timeIntervalSince1970: 0))
    public var stepStartedAt = Timestamp(.init(timeIntervalSince1970: 0))
    /// Why it is being rolled back (the failed step's reason and output tail).
    public var failureReason: String?
    public var failure: String?
    /// The request it answers, until that is taken (written first: a crash in between neither
    /// loses the request nor rotates twice).
    public var request: String?

    public init() {}

    public static let fields: [Field<RotationProgress>] = [
        .required("step", \.step), .optional("fromVersion", \.fromVersion), .required("toVersion", \.toVersion),
        .defaulted("reason", \.reason, "", "Why it rotates: Scheduled, Requested, Initial or RollbackRequested."),
        .required("startedAt", \.startedAt), .required("stepStartedAt", \.stepStartedAt),
        .optional("failureReason", \.failureReason), .optional("failure", \.failure),
        .optional("request", \.request, "The request it answers, until taken."),
    ]
}

public struct SecretRotationStatus: CommonStatus, Hashable {
    public var observedGeneration: Int?
    public var conditions: [Condition] = []
    public var lastReconcileTime: Timestamp?
    public var currentVersion: Int?
    public var lastRotationTime: Timestamp?
    public var nextRotationTime: Timestamp?
    public var versions: [SecretVersionRecord] = []
    public var rotation: RotationProgress?
    /// What the `restartDeployments` roll to: a new token restarts them (the version, and on
    /// a rollback the version restored after the one that failed).
    public var restartToken: String?

    public init() {}

    public static let fields: [Field<SecretRotationStatus>] = commonFields + [
        .optional("currentVersion", \.currentVersion), .optional("lastRotationTime", \.lastRotationTime),
        .optional("nextRotationTime", \.nextRotationTime), .defaulted("versions", \.versions, []),
        .optional("rotation", \.rotation, "The rotation under way and its next step."),
        .optional("restartToken", \.restartToken, "What the dependent Deployments were last restarted for."),
    ]
}

/// Generates, rotates and rolls back the keys of one Secret.
public struct SecretRotation: Resource, Hashable {
    public static let kind = ResourceKind.secretRotation
    public static let fields: [Field<SecretRotation>] = resourceFields
    public var metadata = ObjectMeta()
    public var spec = SecretRotationSpec()
    public var status = SecretRotationStatus()

    public init() {}

    public static let statusColumnPath = ".status.conditions[?(@.type==\"Ready\")].message"
    public static let columns = [
        PrinterColumn("Version", "integer", ".status.currentVersion", "Current secret version"),
        PrinterColumn("Last-Rotation", "date", ".status.lastRotationTime", "Last rotation"),
        PrinterColumn("Next", "string", ".status.nextRotationTime", "Next rotation"),
    ]
}
