import CapstanControllers
import CapstanModel
import Foundation

/// The objects a Capstan Deployment owns on Kubernetes: an `apps/v1` Deployment running the
/// Application's image at the Deployment's version, a `v1` Service over its ports and a
/// `networking.k8s.io/v1` Ingress for its routes. Each carries the Capstan labels and a
/// controller ownerReference to the Capstan Deployment.
public enum Children {
    public static let managedBy = "app.kubernetes.io/managed-by"
    /// The owner labels of the design (README: labels on everything Capstan creates).
    public static let ownerKindLabel = "capstan.dev/owner-kind"
    public static let ownerNameLabel = "capstan.dev/owner-name"
    /// The label selector of everything Capstan creates (the child watches use it).
    public static let selector = "\(managedBy)=capstan"

    /// `image` with the version as its tag; an image pinned by digest is used as it is.
    public static func imageReference(_ image: String, version: String) -> Result<String, WorkloadError> {
        if image.contains("@") { return .success(image) }
        let lastComponent = image.split(separator: "/").last.map(String.init) ?? image
        if lastComponent.contains(":") {
            return .failure(WorkloadError("InvalidImage", "image \(image) carries a tag; the tag is the Deployment's version, so give the repository only"))
        }
        guard !version.isEmpty, version.count <= 128, version.allSatisfy({ $0.isLetter || $0.isNumber || "._-".contains($0) }),
              version.first.map({ $0 != "." && $0 != "-" }) ?? false else {
            return .failure(WorkloadError("InvalidImage", "version \"\(version)\" is not a valid image tag (letters, digits, _ . -; at most 128)"))
        }
        return .success("\(image):\(version)")
    }

    /// The labels selecting a Capstan Deployment's pods (and naming its children's owner).
    static func selector(_ deployment: Deployment) -> [(String, SpecNode)] {
        [(ownerKindLabel, .string("Deployment")), (ownerNameLabel, .string(deployment.metadata.name))]
    }

    static func labels(_ deployment: Deployment, application: String) -> [(String, SpecNode)] {
        [
            ("app.kubernetes.io/name", .string(application)),
            ("app.kubernetes.io/instance", .string(deployment.metadata.name)),
            (managedBy, .string("capstan")),
        ] + selector(deployment)
    }

    /// The label naming a pod's track (`stable`, `blue`, `green`, `canary`).
    public static let trackLabel = "capstan.dev/track"

    /// The name of a track's `apps/v1` Deployment: the owner's for `stable`, `NAME-<track>` otherwise.
    public static func name(of track: Track, _ owner: String) -> String {
        track == .stable ? owner : "\(owner)-\(track.rawValue)"
    }

    /// The name of the Service serving a BlueGreen preview.
    public static func previewName(_ owner: String) -> String { "\(owner)-preview" }

    static func metadata(_ deployment: Deployment, application: String, name: String? = nil, extraLabels: [(String, SpecNode)] = []) -> SpecNode {
        var metadata: [(String, SpecNode)] = [
            ("name", .string(name ?? deployment.metadata.name)),
            ("namespace", .string(deployment.metadata.namespace)),
            ("labels", .mapping(labels(deployment, application: application) + extraLabels)),
        ]
        // A custom resource owns its children; an object from a spec directory is not in the
        // cluster, so its children are known by labels and the inventory only.
        if let uid = deployment.metadata.uid {
            metadata.append(("ownerReferences", .sequence([.mapping([
                ("apiVersion", .string(capstanAPIVersion)), ("kind", .string("Deployment")), ("name", .string(deployment.metadata.name)),
                ("uid", .string(uid)), ("controller", .bool(true)), ("blockOwnerDeletion", .bool(true)),
            ])])))
        }
        return .mapping(metadata)
    }

    /// The `apps/v1` Deployment of a track. The stable track's selector is the owner labels
    /// (as children made before tracks existed: a selector cannot change); another track's adds
    /// its track label. Every pod carries its track label, which the Services select.
    public static func deployment(_ deployment: Deployment, track: Track, _ spec: TrackSpec, image: String) -> SpecNode {
        let template = spec.revision.template
        let revision = spec.revision.number
        let app = template.spec
        let trackLabel: [(String, SpecNode)] = [(Self.trackLabel, .string(track.rawValue))]
        let selector = selector(deployment) + (track == .stable ? [] : trackLabel)
        var container: [(String, SpecNode)] = [("name", .string("app")), ("image", .string(image))]
        if !app.command.isEmpty { container.append(("command", .sequence(app.command.map { .string($0) }))) }
        if !template.env.isEmpty { container.append(("env", .sequence(template.env.map { $0.encode() }))) }
        if !app.ports.isEmpty {
            container.append(("ports", .sequence(app.ports.map { port in
                var entries: [(String, SpecNode)] = []
                if let name = port.name { entries.append(("name", .string(name))) }
                entries += [("containerPort", .int(port.containerPort)), ("protocol", .string(port.protocol.rawValue))]
                return .mapping(entries)
            })))
        }
        var amounts: [(String, SpecNode)] = []
        // As the API server writes them back (`0.5` is stored as `500m`): otherwise the stored
        // child would never contain what we apply, and every reconcile would apply it again.
        if let cpu = app.resources.cpu { amounts.append(("cpu", .string(cpu.canonical))) }
        if let memory = app.resources.memory { amounts.append(("memory", .string(memory.canonical))) }
        if !amounts.isEmpty {
            container.append(("resources", .mapping([("requests", .mapping(amounts)), ("limits", .mapping(amounts))])))
        }
        if let check = app.healthCheck, let probe = probe(check) {
            container.append(("readinessProbe", probe))
        }
        var strategy: [(String, SpecNode)]
        switch spec.strategy {
        case .recreate:
            strategy = [("type", .string("Recreate"))]
        case .rollingUpdate(let maxSurge, let maxUnavailable):
            strategy = [("type", .string("RollingUpdate")), ("rollingUpdate", .mapping([
                ("maxSurge", maxSurge.encode()),
                ("maxUnavailable", maxUnavailable.encode()),
            ]))]
        }
        var appsSpec: [(String, SpecNode)] = [
            ("replicas", .int(spec.replicas)),
            ("selector", .mapping([("matchLabels", .mapping(selector))])),
            ("strategy", .mapping(strategy)),
            ("revisionHistoryLimit", .int(spec.revisionHistoryLimit)),
            ("progressDeadlineSeconds", .int(max(1, Int(spec.progressDeadline.seconds.rounded(.up))))),
        ]
        if spec.paused { appsSpec.append(("paused", .bool(true))) }
        appsSpec.append(("template", .mapping([
            ("metadata", .mapping([
                ("labels", .mapping(labels(deployment, application: template.application) + [("app.kubernetes.io/version", .string(labelValue(template.version)))] + trackLabel)),
                ("annotations", .mapping([("capstan.dev/revision", .string(String(revision))), ("capstan.dev/template-hash", .string(template.hash))]
                    // What a secret rotation restarted the pods for (the Reloader way).
                    + (template.secretRestarts.isEmpty ? [] : [("capstan.dev/secret-restarts", .string(template.secretRestartsText))]))),
            ])),
            ("spec", .mapping([("containers", .sequence([.mapping(container)]))])),
        ])))
        return .mapping([
            ("apiVersion", .string("apps/v1")), ("kind", .string("Deployment")),
            ("metadata", metadata(deployment, application: template.application, name: name(of: track, deployment.metadata.name), extraLabels: track == .stable ? [] : trackLabel)),
            ("spec", .mapping(appsSpec)),
        ])
    }

    /// A label value from a version (63 characters of [A-Za-z0-9._-], alphanumeric at both ends).
    static func labelValue(_ text: String) -> String {
        var value = String(text.filter { $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }.prefix(63))
        while let last = value.last, !(last.isLetter || last.isNumber) { value.removeLast() }
        while let first = value.first, !(first.isLetter || first.isNumber) { value.removeFirst() }
        return value
    }

    /// The kubelet probe of a health check.
    static func probe(_ check: HealthCheck) -> SpecNode? {
        var entries: [(String, SpecNode)]
        if let http = check.http {
            entries = [("httpGet", .mapping([("path", .string(http.path)), ("port", http.port.encode()), ("scheme", .string(http.scheme))]))]
        } else if let tcp = check.tcp {
            entries = [("tcpSocket", .mapping([("port", tcp.port.encode())]))]
        } else if let exec = check.exec {
            entries = [("exec", .mapping([("command", .sequence(exec.command.map { .string($0) }))]))]
        } else {
            return nil
        }
        func seconds(_ duration: KubeDuration, minimum: Int) -> SpecNode { .int(max(minimum, Int(duration.seconds.rounded(.up)))) }
        entries += [
            ("initialDelaySeconds", seconds(check.initialDelay, minimum: 0)),
            ("periodSeconds", seconds(check.interval, minimum: 1)),
            ("timeoutSeconds", seconds(check.timeout, minimum: 1)),
            ("failureThreshold", .int(check.failureThreshold)),
            ("successThreshold", .int(check.successThreshold)),
        ]
        return .mapping(entries)
    }

    /// The Service over the Application's ports (nil without ports). The first port is
    /// served on `servicePort` (the Deployment's port, or the preview port) when there is one. It selects
    /// the pods of `track`, or all the owner's pods when `track` is nil.
    public static func service(_ deployment: Deployment, application: Application, name: String? = nil, servicePort: Int?, track: Track? = nil) -> SpecNode? {
        let ports = application.spec.ports
        guard !ports.isEmpty else { return nil }
        let entries: [SpecNode] = ports.enumerated().map { index, port in
            var entry: [(String, SpecNode)] = []
            entry.append(("name", .string(port.name ?? "port-\(port.containerPort)")))
            entry.append(("port", .int(index == 0 ? servicePort ?? port.containerPort : port.containerPort)))
            entry.append(("targetPort", port.name.map { .string($0) } ?? .int(port.containerPort)))
            entry.append(("protocol", .string(port.protocol.rawValue)))
            return .mapping(entry)
        }
        return .mapping([
            ("apiVersion", .string("v1")), ("kind", .string("Service")),
            ("metadata", metadata(deployment, application: application.metadata.name, name: name)),
            ("spec", .mapping([
                ("selector", .mapping(selector(deployment) + (track.map { [(trackLabel, .string($0.rawValue))] } ?? []))),
                ("ports", .sequence(entries)),
            ])),
        ])
    }

    /// The Ingress for the Application's routes (nil without routes). A route's port names a
    /// container port (by name or number); the Ingress points at the Service port serving it.
    public static func ingress(_ deployment: Deployment, application: Application) -> Result<SpecNode?, WorkloadError> {
        let routes = application.spec.routes
        guard !routes.isEmpty else { return .success(nil) }
        var rules: [(host: String, paths: [SpecNode])] = []
        for route in routes {
            let index: Int
            switch routePort(route, of: application) {
            case .success(let found): index = found
            case .failure(let error): return .failure(error)
            }
            let port = application.spec.ports[index]
            let backendPort: SpecNode = port.name.map { .mapping([("name", .string($0))]) }
                ?? .mapping([("number", .int(index == 0 ? deployment.spec.port ?? port.containerPort : port.containerPort))])
            let path = SpecNode.mapping([
                ("path", .string(route.path)), ("pathType", .string("Prefix")),
                ("backend", .mapping([("service", .mapping([("name", .string(deployment.metadata.name)), ("port", backendPort)]))])),
            ])
            if let existing = rules.firstIndex(where: { $0.host == route.host }) {
                rules[existing].paths.append(path)
            } else {
                rules.append((route.host, [path]))
            }
        }
        return .success(.mapping([
            ("apiVersion", .string("networking.k8s.io/v1")), ("kind", .string("Ingress")),
            ("metadata", metadata(deployment, application: application.metadata.name)),
            ("spec", .mapping([("rules", .sequence(rules.map { rule in
                .mapping([("host", .string(rule.host)), ("http", .mapping([("paths", .sequence(rule.paths))]))])
            }))])),
        ]))
    }

    /// The port of a route (by name or number) among the application's: its index, or why not.
    static func routePort(_ route: Route, of application: Application) -> Result<Int, WorkloadError> {
        let index: Int?
        switch route.port {
        case .string(let name): index = application.spec.ports.firstIndex { $0.name == name }
        case .int(let number): index = application.spec.ports.firstIndex { $0.containerPort == number }
        }
        guard let index else {
            return .failure(WorkloadError("InvalidRoute", "route \(route.host)\(route.path): port \(route.port) is not one of the application's ports"))
        }
        return .success(index)
    }

    /// A Service port as a backend names it: its name, or its number.
    static func servicePort(_ deployment: Deployment, application: Application, index: Int) -> SpecNode {
        let port = application.spec.ports[index]
        return port.name.map { .string($0) } ?? .int(index == 0 ? deployment.spec.port ?? port.containerPort : port.containerPort)
    }

    /// Traefik's weighted service `NAME` for a canary's split of the Deployment's port (the
    /// application's first): each track's Service (`NAME` for the active track, `NAME-<track>`
    /// for the canary) with its percent. Nil when the application has no port.
    public static func traefikService(_ deployment: Deployment, application: Application, weights: [Track: Int], active: Track) -> SpecNode? {
        guard !application.spec.ports.isEmpty else { return nil }
        let port = servicePort(deployment, application: application, index: 0)
        let services: [SpecNode] = weights.sorted { ($0.key == active ? 0 : 1, $0.key.rawValue) < ($1.key == active ? 0 : 1, $1.key.rawValue) }.map { track, weight in
            .mapping([("name", .string(track == active ? deployment.metadata.name : name(of: track, deployment.metadata.name))),
                      ("kind", .string("Service")), ("port", port), ("weight", .int(weight))])
        }
        return .mapping([
            ("apiVersion", .string("traefik.io/v1alpha1")), ("kind", .string("TraefikService")),
            ("metadata", metadata(deployment, application: application.metadata.name)),
            ("spec", .mapping([("weighted", .mapping([("services", .sequence(services))]))])),
        ])
    }

    /// The Application's routes as a Traefik IngressRoute (nil without routes): those to the
    /// Deployment's port go to the weighted service `NAME`, the others to the Service's port.
    public static func ingressRoute(_ deployment: Deployment, application: Application) -> Result<SpecNode?, WorkloadError> {
        let routes = application.spec.routes
        guard !routes.isEmpty else { return .success(nil) }
        var entries: [SpecNode] = []
        for route in routes {
            let index: Int
            switch routePort(route, of: application) {
            case .success(let found): index = found
            case .failure(let error): return .failure(error)
            }
            let service: SpecNode = index == 0
                ? .mapping([("name", .string(deployment.metadata.name)), ("kind", .string("TraefikService"))])
                : .mapping([("name", .string(deployment.metadata.name)), ("kind", .string("Service")),
                            ("port", servicePort(deployment, application: application, index: index))])
            // As the Ingress's `Prefix` path type: the path and what is under it.
            entries.append(.mapping([
                ("match", .string("Host(`\(route.host)`) && PathPrefix(`\(route.path)`)")), ("kind", .string("Rule")),
                ("services", .sequence([service])),
            ]))
        }
        return .success(.mapping([
            ("apiVersion", .string("traefik.io/v1alpha1")), ("kind", .string("IngressRoute")),
            ("metadata", metadata(deployment, application: application.metadata.name)),
            ("spec", .mapping([("routes", .sequence(entries))])),
        ]))
    }

    /// Whether `observed` holds everything `desired` says (the API server adds defaults and
    /// other writers may add fields; neither is drift). Lists must match item by item. A field
    /// we set to its zero value (`""`, `false`, `0`, empty) may be absent: the API server does
    /// not write zero values of `omitempty` fields back (an env var's `value: ""`).
    public static func contains(_ observed: SpecNode?, _ desired: SpecNode) -> Bool {
        guard let observed else { return false }
        switch (observed.value, desired.value) {
        case (.mapping, .mapping(let wanted)):
            return wanted.allSatisfy { entry in
                guard let field = observed[entry.key] else { return isZero(entry.value) }
                return contains(field, entry.value)
            }
        case (.sequence(let have), .sequence(let want)):
            return have.count == want.count && zip(have, want).allSatisfy { contains($0, $1) }
        case (.scalar(let a, _), .scalar(let b, _)):
            return a == b
        case (.null, .null):
            return true
        default:
            return desired.isEmptyCollection && observed.isEmptyCollection
        }
    }

    static func isZero(_ node: SpecNode) -> Bool {
        switch node.value {
        case .scalar(let text, _): return text.isEmpty || text == "false" || text == "0"
        case .null: return true
        default: return node.isEmptyCollection
        }
    }

    /// The Capstan object controlling a child (of any of Capstan's kinds), if any.
    public static func controller(of child: SpecNode) -> (kind: ResourceKind, name: String, uid: String)? {
        guard case .sequence(let references)? = child["metadata"]?["ownerReferences"]?.value else { return nil }
        for reference in references where reference["controller"]?.scalarText == "true" && reference["apiVersion"]?.scalarText == capstanAPIVersion {
            if let kind = reference["kind"]?.scalarText.flatMap(ResourceKind.init(rawValue:)),
               let name = reference["name"]?.scalarText, let uid = reference["uid"]?.scalarText { return (kind, name, uid) }
        }
        return nil
    }
}

extension SpecNode {
    /// A copy with the value at `path` (mappings created as needed) replaced.
    public func setting(_ path: [String], _ value: SpecNode) -> SpecNode {
        guard let key = path.first else { return value }
        var entries = entries ?? []
        if let index = entries.firstIndex(where: { $0.key == key }) {
            entries[index].value = entries[index].value.setting(Array(path.dropFirst()), value)
        } else {
            entries.append(.init(key, SpecNode.mapping([]).setting(Array(path.dropFirst()), value)))
        }
        return SpecNode(.mapping(entries))
    }
}
