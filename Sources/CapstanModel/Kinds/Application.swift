/// Where an Application's code comes from on the local platform: a directory or a git repository.
public struct ApplicationSource: SpecObject, Hashable {
    public var path: String?
    public var git: GitSource?

    public init() {}

    public static let fields: [Field<ApplicationSource>] = [
        .optional("path", \.path, "A directory, relative to the spec file.", .nonEmpty),
        .optional("git", \.git, "A git repository, checked out at the Deployment's version."),
    ]

    public static let exactlyOneOf = ["path", "git"]
}

/// A git repository.
public struct GitSource: SpecObject, Hashable {
    public var url = ""
    public var ref: String?

    public init() {}

    public static let fields: [Field<GitSource>] = [
        .required("url", \.url, "Clone URL (https, ssh or a local path).", .nonEmpty),
        .optional("ref", \.ref, "Branch or tag to fetch; the Deployment's version selects the commit to check out."),
    ]
}

/// How to build an artifact, once per version.
public struct BuildSpec: SpecObject, Hashable {
    public var command: [String] = []
    public var timeout = KubeDuration.minutes(10)

    public init() {}

    public static let fields: [Field<BuildSpec>] = [
        .required("command", \.command, "Build command, run in the artifact directory.", .minItems(1)),
        .defaulted("timeout", \.timeout, .minutes(10), "Build time limit.", .positive),
    ]
}

public enum PortProtocol: String, SpecEnum {
    case tcp = "TCP"
    case udp = "UDP"
}

/// A port the app listens on.
public struct ContainerPort: SpecObject, Hashable {
    public var name: String?
    public var containerPort = 0
    public var `protocol` = PortProtocol.tcp

    public init() {}

    public static let fields: [Field<ContainerPort>] = [
        .optional("name", \.name, "Port name, referenced by health checks and routes.", .dnsLabel, .maxLength(15)),
        .required("containerPort", \.containerPort, "Port number (kube: in the container; local: the app reads $PORT).", .port),
        .defaulted("protocol", \.protocol, .tcp),
    ]
}

public struct HTTPGetCheck: SpecObject, Hashable {
    public var path = "/"
    public var port = IntOrString.string("")
    public var scheme = "HTTP"

    public init() {}

    public static let fields: [Field<HTTPGetCheck>] = [
        .defaulted("path", \.path, "/", "Request path; any 2xx or 3xx answer is healthy."),
        .required("port", \.port, "Port number or name."),
        .defaulted("scheme", \.scheme, "HTTP", "HTTP or HTTPS.", Rule(check: { ["HTTP", "HTTPS"].contains($0) ? nil : "must be HTTP or HTTPS, got \"\($0)\"" }, schema: { $0.enumValues = ["HTTP", "HTTPS"] })),
    ]

    public static func validate(_ value: HTTPGetCheck, _ node: SpecNode, _ context: inout DecodeContext) {
        if !value.path.hasPrefix("/") {
            context.fail("path \"\(value.path)\" must start with /", field: "path", at: node["path"]?.mark)
        } else if let bad = value.path.unicodeScalars.first(where: { !Route.isPathCharacter($0) && $0 != "?" }) {
            // Sent as the request line's target: a path and a query.
            context.fail("path \"\(value.path)\" holds \(bad.escaped(asASCII: true)), which a URL cannot (percent-encode it)", field: "path", at: node["path"]?.mark)
        }
    }
}

public struct TCPCheck: SpecObject, Hashable {
    public var port = IntOrString.string("")

    public init() {}

    public static let fields: [Field<TCPCheck>] = [.required("port", \.port, "Port number or name.")]
}

/// How Capstan (or the kubelet) decides an instance is healthy.
public struct HealthCheck: SpecObject, Hashable {
    public var http: HTTPGetCheck?
    public var tcp: TCPCheck?
    public var exec: ExecAction?
    public var initialDelay = KubeDuration.zero
    public var interval = KubeDuration.seconds(5)
    public var timeout = KubeDuration.seconds(2)
    public var failureThreshold = 3
    public var successThreshold = 1

    public init() {}

    public static let fields: [Field<HealthCheck>] = [
        .optional("http", \.http, "HTTP GET probe."),
        .optional("tcp", \.tcp, "TCP connect probe."),
        .optional("exec", \.exec, "Command probe: exit 0 is healthy."),
        .defaulted("initialDelay", \.initialDelay, .zero, "Wait before the first probe."),
        .defaulted("interval", \.interval, .seconds(5), "Time between probes.", .positive),
        .defaulted("timeout", \.timeout, .seconds(2), "Time limit of one probe (default 2s, or the interval if that is shorter).", .positive),
        .defaulted("failureThreshold", \.failureThreshold, 3, "Consecutive failures that make an instance unhealthy.", .minimum(1), .maximum(1000)),
        .defaulted("successThreshold", \.successThreshold, 1, "Consecutive successes that make it healthy again.", .minimum(1), .maximum(1000)),
    ]

    /// The default timeout is 2s, or the interval if the user set a shorter one: only a
    /// timeout the user wrote can conflict with the interval.
    public static func completeDefaults(_ value: inout HealthCheck, _ node: SpecNode) {
        if node["timeout"] == nil || node["timeout"]?.value == .null {
            value.timeout = min(.seconds(2), value.interval)
        }
    }

    public static func validate(_ value: HealthCheck, _ node: SpecNode, _ context: inout DecodeContext) {
        if value.timeout > value.interval {
            context.fail("timeout \(value.timeout) must not exceed interval \(value.interval) (both are set here)", field: "timeout", at: node["timeout"]?.mark)
        }
    }

    /// No default in the schema for the timeout: the API server would write 2s into an object
    /// whose interval is shorter, and the object would no longer validate.
    public static func refineSchema(_ schema: inout Schema) {
        for index in schema.properties.indices where schema.properties[index].0 == "timeout" {
            schema.properties[index].1.defaultValue = nil
        }
    }

    public static let exactlyOneOf = ["http", "tcp", "exec"]

    /// The port a check refers to, if any.
    var port: IntOrString? { http?.port ?? tcp?.port }
}

/// CPU and memory for each instance.
public struct Resources: SpecObject, Hashable {
    public var cpu: Quantity?
    public var memory: Quantity?

    public init() {}

    public static let fields: [Field<Resources>] = [
        .optional("cpu", \.cpu, "CPU (kube: request = limit).", .nonNegative),
        .optional("memory", \.memory, "Memory (kube: request = limit; local: address-space rlimit).", .nonNegative),
    ]
}

/// An HTTP route to the app (kube: an Ingress rule).
public struct Route: SpecObject, Hashable {
    public var host = ""
    public var path = "/"
    public var port = IntOrString.string("")

    public init() {}

    public static let fields: [Field<Route>] = [
        .required("host", \.host, "Host name.", .dnsSubdomain),
        .defaulted("path", \.path, "/", "Path prefix."),
        .required("port", \.port, "Port number or name."),
    ]

    /// RFC 3986 `pchar` and `/`: unreserved, sub-delims, `:`, `@`, `%` of percent-encoding.
    static func isPathCharacter(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar {
        case "a"..."z", "A"..."Z", "0"..."9": return true
        default: return "-._~!$&'()*+,;=:@%/".unicodeScalars.contains(scalar)
        }
    }

    public static func validate(_ value: Route, _ node: SpecNode, _ context: inout DecodeContext) {
        if !value.path.hasPrefix("/") {
            context.fail("path \"\(value.path)\" must start with /", field: "path", at: node["path"]?.mark)
        } else if let bad = value.path.unicodeScalars.first(where: { !Self.isPathCharacter($0) }) {
            // What a URL path may hold (RFC 3986): an Ingress and a Traefik rule take it as is.
            context.fail("path \"\(value.path)\" holds \(bad.escaped(asASCII: true)), which a URL path cannot (percent-encode it)", field: "path", at: node["path"]?.mark)
        }
    }
}

public struct ApplicationSpec: SpecObject, Hashable {
    public var image: String?
    public var source: ApplicationSource?
    public var build: BuildSpec?
    public var command: [String] = []
    public var env: [EnvVar] = []
    public var ports: [ContainerPort] = []
    public var healthCheck: HealthCheck?
    public var resources = Resources()
    public var routes: [Route] = []

    public init() {}

    public static let documentation = "The template of an app. At least one of image (Kubernetes) or source (local) is required."
    public static let fields: [Field<ApplicationSpec>] = [
        .optional("image", \.image, "Image repository (Kubernetes platform); the tag is the Deployment's version.", Rule(check: { image in
            image.isEmpty || image.contains(where: { $0.isWhitespace || $0.isUppercase }) ? "\"\(image)\" is not a valid image reference (lower case, no spaces)" : nil
        })),
        .optional("source", \.source, "Where the code comes from (local platform)."),
        .optional("build", \.build, "Build command, run once per version (local platform)."),
        .defaulted("command", \.command, [], "Entrypoint; $(PORT) and env vars are expanded. Required with source."),
        .defaulted("env", \.env, [], "Environment variables.", .uniqueNames),
        .defaulted("ports", \.ports, [], "Ports the app listens on."),
        .optional("healthCheck", \.healthCheck, "Health probe: gates the router and rollouts."),
        .defaulted("resources", \.resources, Resources(), "CPU and memory per instance."),
        .defaulted("routes", \.routes, [], "HTTP routes (Kubernetes: an Ingress)."),
    ]

    public static func validate(_ value: ApplicationSpec, _ node: SpecNode, _ context: inout DecodeContext) {
        if value.image == nil && value.source == nil {
            context.fail("set image (Kubernetes platform) or source (local platform): neither is set", at: node.mark)
        }
        if value.source != nil && value.command.isEmpty {
            context.fail("required when source is set: the command that starts the app", field: "command", at: node.mark)
        }
        if value.build != nil && value.source == nil {
            context.fail("build needs a source to build", field: "build", at: node["build"]?.mark)
        }
        ReservedEnv.check(value.env, node, &context)
        var names = Set<String>()
        var numbers = Set<Int>()
        for (index, port) in value.ports.enumerated() {
            let mark = node["ports"].flatMap { if case .sequence(let items) = $0.value { return items[index].mark } else { return nil } }
            if let name = port.name, !names.insert(name).inserted {
                context.at("ports") { $0.at(.index(index)) { $0.fail("port name \"\(name)\" is used twice", at: mark) } }
            }
            if !numbers.insert(port.containerPort).inserted {
                context.at("ports") { $0.at(.index(index)) { $0.fail("port \(port.containerPort) is listed twice", at: mark) } }
            }
        }
        func checkPortReference(_ port: IntOrString?, _ path: FieldPath, _ mark: SourceMark?) {
            guard case .string(let name)? = port else {
                if case .int(let number)? = port, !(1...65535).contains(number) {
                    context.fail("port \(number) must be between 1 and 65535", relative: path, at: mark)
                }
                return
            }
            if !names.contains(name) {
                let known = names.isEmpty ? "spec.ports names no port" : "known: \(names.sorted().joined(separator: ", "))"
                context.fail("no port named \"\(name)\" in ports (\(known))", relative: path, at: mark)
            }
        }
        if let check = value.healthCheck, let port = check.port {
            let kind = check.http != nil ? "http" : "tcp"
            checkPortReference(port, FieldPath([.key("healthCheck"), .key(kind), .key("port")]), node["healthCheck"]?[kind]?["port"]?.mark)
        }
        for (index, route) in value.routes.enumerated() {
            let routeNode = node["routes"].flatMap { if case .sequence(let items) = $0.value { return items[index] } else { return nil } }
            checkPortReference(route.port, FieldPath([.key("routes"), .index(index), .key("port")]), routeNode?["port"]?.mark)
        }
    }
}

public struct ApplicationDeploymentStatus: SpecObject, Hashable {
    public var name = ""
    public var namespace = "default"
    public var version = ""
    public var ready = false

    public init() {}

    public static let fields: [Field<ApplicationDeploymentStatus>] = [
        .required("name", \.name),
        .defaulted("namespace", \.namespace, "default"),
        .required("version", \.version),
        .defaulted("ready", \.ready, false),
    ]
}

public struct ArtifactStatus: SpecObject, Hashable {
    public var version = ""
    public var digest = ""
    public var builtAt: Timestamp?

    public init() {}

    public static let fields: [Field<ArtifactStatus>] = [
        .required("version", \.version),
        .required("digest", \.digest),
        .optional("builtAt", \.builtAt),
    ]
}

public struct ApplicationStatus: CommonStatus, Hashable {
    public var observedGeneration: Int?
    public var conditions: [Condition] = []
    public var lastReconcileTime: Timestamp?
    /// Deployments that run this Application: how many, and how many of them are ready.
    public var deploymentCount = 0
    public var readyDeploymentCount = 0
    /// Up to `listedDeployments` of them, those not ready first: an Application run by
    /// thousands of Deployments would otherwise write its whole list on every change (and
    /// past ~10,000 pass etcd's object size limit).
    public var deployments: [ApplicationDeploymentStatus] = []
    public var artifacts: [ArtifactStatus] = []

    /// How many Deployments the status names.
    public static let listedDeployments = 50

    /// The Deployments the status names, of all `entries`: those not ready first, each group
    /// by namespace and name, up to `listedDeployments`.
    public static func listed(_ entries: [ApplicationDeploymentStatus]) -> [ApplicationDeploymentStatus] {
        let order = { (a: ApplicationDeploymentStatus, b: ApplicationDeploymentStatus) -> Bool in
            a.ready != b.ready ? !a.ready : (a.namespace, a.name) < (b.namespace, b.name)
        }
        return Array(entries.sorted(by: order).prefix(listedDeployments))
    }

    public init() {}

    public static let fields: [Field<ApplicationStatus>] = commonFields + [
        .defaulted("deploymentCount", \.deploymentCount, 0, "How many Deployments run this Application."),
        .defaulted("readyDeploymentCount", \.readyDeploymentCount, 0, "How many of them are ready."),
        .defaulted("deployments", \.deployments, [], "Deployments that run this Application (up to \(listedDeployments), those not ready first)."),
        .defaulted("artifacts", \.artifacts, [], "Prepared artifacts (local platform)."),
    ]
}

/// What an app is: where its code comes from, how to build, run and probe it.
public struct Application: Resource, Hashable {
    public static let kind = ResourceKind.application
    public static let fields: [Field<Application>] = resourceFields
    public var metadata = ObjectMeta()
    public var spec = ApplicationSpec()
    public var status = ApplicationStatus()

    public init() {}

    public static let statusColumnPath = ".status.conditions[?(@.type==\"Ready\")].message"
    public static let columns = [
        PrinterColumn("Deployments", "integer", ".status.deploymentCount", "Deployments that run this Application"),
        PrinterColumn("Ready-Deployments", "integer", ".status.readyDeploymentCount", "Of them, those ready"),
    ]
}
