/// Checks between the objects of one set of files (`capstan validate`): what an object names
/// (a Deployment's Application, a Canary's Deployment, the Deployments a SecretRotation
/// restarts, the secrets `secretKeyRef`s read) and what two objects would both claim (a
/// router port). Warnings, not errors: a target may be defined in files not named, or set by
/// hand (`capstan secret set`).
public enum ReferenceCheck {
    public static func problems(_ objects: [DecodedObject]) -> [Diagnostic] {
        var byKey: [ObjectKey: DecodedObject] = [:]
        for object in objects where byKey[object.key] == nil { byKey[object.key] = object }
        // Secrets and their keys made by the SecretRotations of the set, per namespace.
        var secrets: [String: [String: Set<String>]] = [:]
        for object in objects {
            guard case .secretRotation(let rotation) = object.resource else { continue }
            var keys = Set<String>()
            for key in rotation.spec.keys {
                switch key.generator.type {
                case .ed25519: keys.formUnion([key.name, key.name + ".pub"])
                case .selfSignedCertificate: keys.formUnion([key.name + ".crt", key.name + ".key"])
                default: keys.insert(key.name)
                }
            }
            secrets[object.key.namespace, default: [:]][rotation.spec.secretName, default: []].formUnion(keys)
        }
        var problems: [Diagnostic] = []
        func warn(_ object: DecodedObject, _ path: String, _ message: String) {
            problems.append(Diagnostic(.warning, file: object.file, mark: object.mark, object: object.resource.reference,
                                       path: FieldPath(path.split(separator: ".").map { .key(String($0)) }), message: message))
        }
        func expect(_ kind: ResourceKind, _ name: String, from object: DecodedObject, at path: String) {
            let key = ObjectKey(kind: kind, namespace: object.key.namespace, name: name)
            if byKey[key] == nil {
                warn(object, path, "\(kind.rawValue) \"\(name)\" is not defined in these files (fine if it is defined elsewhere; until it exists this object is Stalled)")
            }
        }
        var ports: [Int: DecodedObject] = [:]
        for object in objects {
            switch object.resource {
            case .deployment(let deployment):
                expect(.application, deployment.spec.application, from: object, at: "spec.application")
                if let port = deployment.spec.port {
                    if let other = ports[port], other.key != object.key {
                        warn(object, "spec.port", "port \(port) is also the port of \(other.resource.reference) (\(other.location)): on one host only one of them can listen on it")
                    } else {
                        ports[port] = object
                    }
                }
            case .canary(let canary):
                expect(.deployment, canary.spec.deployment, from: object, at: "spec.deployment")
            case .secretRotation(let rotation):
                for name in rotation.spec.restartDeployments {
                    expect(.deployment, name, from: object, at: "spec.restartDeployments")
                }
            default:
                break
            }
            for (path, name, key) in secretReferences(object.resource.specNode, path: "spec") {
                guard let made = secrets[object.key.namespace]?[name] else {
                    // Only where the set makes secrets at all: else they come from elsewhere.
                    if secrets[object.key.namespace] != nil {
                        warn(object, path, "no SecretRotation in these files makes secret \"\(name)\" (fine if it is set with `capstan secret set` or made elsewhere)")
                    }
                    continue
                }
                if !made.contains(key) {
                    warn(object, path, "secret \"\(name)\" has no key \"\(key)\": its SecretRotation makes \(made.sorted().joined(separator: ", "))")
                }
            }
        }
        return problems
    }

    /// Every `secretKeyRef: {name, key}` below `node`, with its field path.
    static func secretReferences(_ node: SpecNode, path: String) -> [(String, String, String)] {
        switch node.value {
        case .mapping(let entries):
            var found: [(String, String, String)] = []
            for entry in entries {
                let childPath = path + "." + entry.key
                if entry.key == "secretKeyRef", let name = entry.value["name"]?.scalarText, let key = entry.value["key"]?.scalarText {
                    found.append((childPath, name, key))
                } else {
                    found += secretReferences(entry.value, path: childPath)
                }
            }
            return found
        case .sequence(let items):
            return items.enumerated().flatMap { index, item in secretReferences(item, path: path + "[\(index)]") }
        default:
            return []
        }
    }
}
