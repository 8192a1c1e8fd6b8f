import Crypto
import Foundation

/// An object of any of the six kinds.
///
/// Indirect: each object lives in one box, so a copy (a cache's slot, a list of objects, a
/// reconcile's frame) is a pointer, not the ~790 bytes of the largest kind inline.
public indirect enum AnyResource: Sendable, Hashable {
    case application(Application)
    case deployment(Deployment)
    case canary(Canary)
    case alertRule(AlertRule)
    case secretRotation(SecretRotation)
    case backupSchedule(BackupSchedule)

    public init(_ resource: any Resource) {
        switch resource {
        case let r as Application: self = .application(r)
        case let r as Deployment: self = .deployment(r)
        case let r as Canary: self = .canary(r)
        case let r as AlertRule: self = .alertRule(r)
        case let r as SecretRotation: self = .secretRotation(r)
        case let r as BackupSchedule: self = .backupSchedule(r)
        default: preconditionFailure("unknown resource type \(type(of: resource))")
        }
    }

    /// The wrapped object.
    public var resource: any Resource {
        switch self {
        case .application(let r): return r
        case .deployment(let r): return r
        case .canary(let r): return r
        case .alertRule(let r): return r
        case .secretRotation(let r): return r
        case .backupSchedule(let r): return r
        }
    }

    public var kind: ResourceKind { type(of: resource).kind }
    public var metadata: ObjectMeta { resource.metadata }
    public var key: ObjectKey { ObjectKey(kind: kind, namespace: metadata.namespace, name: metadata.name) }
    public var reference: String { "\(kind.rawValue)/\(metadata.name)" }

    /// The whole object as a tree (apiVersion, kind, metadata, spec, status).
    public func encode() -> SpecNode { resource.encode() }
    /// The spec as a tree.
    public var specNode: SpecNode { resource.spec.encode() }

    /// SHA-256 of the canonical JSON of the defaulted spec: formatting, key order, comments and
    /// explicitly written defaults do not change it; any change of meaning does.
    public var specHash: String { SpecHash.of(specNode) }

    /// Decodes an object of `kind` from a tree; nil with problems in `context` when invalid.
    public static func decode(kind: ResourceKind, _ node: SpecNode, _ context: inout DecodeContext) -> AnyResource? {
        let before = context.problems.count
        func run<R: Resource>(_ type: R.Type) -> AnyResource? {
            guard let value = R.decode(node, &context), context.problems.count == before else { return nil }
            return AnyResource(value)
        }
        switch kind {
        case .application: return run(Application.self)
        case .deployment: return run(Deployment.self)
        case .canary: return run(Canary.self)
        case .alertRule: return run(AlertRule.self)
        case .secretRotation: return run(SecretRotation.self)
        case .backupSchedule: return run(BackupSchedule.self)
        }
    }
}

extension AnyResource {
    /// The objects this one points at by name, in its own namespace: a Deployment its
    /// Application, a Canary its Deployment. The cache indexes them, so an owner finds what
    /// refers to it without a scan.
    public var references: [ObjectKey] {
        let namespace = metadata.namespace
        switch self {
        case .deployment(let d): return [ObjectKey(kind: .application, namespace: namespace, name: d.spec.application)]
        case .canary(let c): return [ObjectKey(kind: .deployment, namespace: namespace, name: c.spec.deployment)]
        case .secretRotation(let r): return r.spec.restartDeployments.map { ObjectKey(kind: .deployment, namespace: namespace, name: $0) }
        case .application, .alertRule, .backupSchedule: return []
        }
    }

    /// The same object with its status replaced by `node` (as written by a reconciler); nil
    /// with the problems when the node is not a valid status of this kind.
    public func withStatus(_ node: SpecNode) throws(ValidationError) -> AnyResource {
        func replace<R: Resource>(_ resource: R) throws(ValidationError) -> AnyResource {
            var context = DecodeContext()
            guard let status = R.Status.decode(node, &context), context.problems.isEmpty else {
                throw ValidationError(problems: context.problems)
            }
            var copy = resource
            copy.status = status
            return AnyResource(copy)
        }
        return try replace(resource)
    }

    /// The same object carrying `other`'s status (when it is of the same kind).
    public func withStatus(of other: AnyResource) -> AnyResource {
        func copy<R: Resource>(_ resource: R) -> AnyResource {
            guard let source = other.resource as? R else { return self }
            var copy = resource
            copy.status = source.status
            return AnyResource(copy)
        }
        return copy(resource)
    }

    /// Changes the metadata in place.
    public mutating func modifyMetadata(_ change: (inout ObjectMeta) -> Void) {
        var value = resource
        change(&value.metadata)
        self = AnyResource(value)
    }
}

/// The canonical spec hash.
public enum SpecHash {
    public static func of(_ node: SpecNode) -> String {
        let canonical = JSONEmitter.emit(node, pretty: false, sortKeys: true)
        return hex(SHA256.hash(data: Data(canonical.utf8)))
    }

    /// Lower-case hexadecimal of bytes.
    public static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// An object read from a manifest file, with where it came from.
public struct DecodedObject: Sendable, Hashable {
    public var resource: AnyResource
    public var file: String
    /// Where the object's document starts.
    public var mark: SourceMark

    /// The canonical spec hash (computed on demand: validation does not need it).
    public var specHash: String { resource.specHash }

    public var key: ObjectKey { resource.key }
    public var location: String { "\(file):\(mark.line):\(mark.column)" }
}

/// A document that names an object (kind, namespace, name) but could not be used: its
/// problems, and whether another, valid definition of the same object exists (a duplicate).
public struct InvalidObject: Sendable, Hashable {
    public var key: ObjectKey
    public var file: String
    public var problems: [Diagnostic]
    /// True when this is a second definition of an object defined validly elsewhere.
    public var isDuplicate: Bool

    public init(key: ObjectKey, file: String, problems: [Diagnostic], isDuplicate: Bool = false) {
        self.key = key
        self.file = file
        self.problems = problems
        self.isDuplicate = isDuplicate
    }
}

/// What one file yielded: valid objects, problems (and notes), and the identities of objects
/// whose documents were invalid (so a daemon can keep their last good version: principle 2).
public struct ManifestResult: Sendable {
    public var objects: [DecodedObject] = []
    public var diagnostics: [Diagnostic] = []
    public var invalidObjects: [InvalidObject] = []
    /// The valid definitions that lost to an earlier one of the same object (each also an
    /// `InvalidObject` with `isDuplicate`): a daemon keeps the one its object came from.
    public var duplicateObjects: [DecodedObject] = []
    /// Documents of other API groups that were skipped.
    public var skipped = 0
    /// Position in `objects` of each key, so that merging many files stays linear.
    private var index: [ObjectKey: Int] = [:]

    public init() {}

    public var errors: [Diagnostic] { diagnostics.filter { $0.severity == .error } }
    public var hasErrors: Bool { diagnostics.contains { $0.severity == .error } }

    /// Appends another file's result, reporting objects defined twice (the first one read wins).
    public mutating func merge(_ other: ManifestResult) {
        if index.count != objects.count {
            index = Dictionary(objects.enumerated().map { ($1.key, $0) }, uniquingKeysWith: { first, _ in first })
        }
        for object in other.objects {
            if let position = index[object.key] {
                let first = objects[position]
                let diagnostic = Diagnostic(
                    file: object.file, mark: object.mark, object: object.resource.reference,
                    message: "\(object.key.kind.rawValue) \(object.key.namespace)/\(object.key.name) is defined twice: also at \(first.location) (that one is used)")
                diagnostics.append(diagnostic)
                invalidObjects.append(InvalidObject(key: object.key, file: object.file, problems: [diagnostic], isDuplicate: true))
                duplicateObjects.append(object)
            } else {
                index[object.key] = objects.count
                objects.append(object)
            }
        }
        diagnostics += other.diagnostics
        invalidObjects += other.invalidObjects
        duplicateObjects += other.duplicateObjects
        skipped += other.skipped
    }
}

/// Reads manifest files (multi-document YAML, or JSON) into objects, with every problem located.
public struct ManifestDecoder: Sendable {
    /// Files larger than this are refused without being parsed.
    public var maxFileSize: Int
    public var reader: YAMLReader

    public static let defaultMaxFileSize = 1 << 20

    public init(maxFileSize: Int = ManifestDecoder.defaultMaxFileSize, reader: YAMLReader = YAMLReader()) {
        self.maxFileSize = maxFileSize
        self.reader = reader
    }

    /// Decodes the bytes of `file` (the name is used in messages only).
    public func decode(_ bytes: some Collection<UInt8>, file: String) -> ManifestResult {
        var result = ManifestResult()
        func fail(_ message: String, at mark: SourceMark? = nil) -> ManifestResult {
            result.diagnostics.append(Diagnostic(file: file, mark: mark, message: message))
            return result
        }
        if bytes.count > maxFileSize {
            return fail("file is \(ByteSize.format(bytes.count)), over the \(ByteSize.format(maxFileSize)) limit for a manifest (--max-file-size)")
        }
        var data = Array(bytes)
        if data.starts(with: [0xEF, 0xBB, 0xBF]) { data.removeFirst(3) }
        if let nul = data.firstIndex(of: 0) {
            return fail("binary file (NUL byte at offset \(nul)): not a YAML or JSON manifest")
        }
        guard let text = String(validating: data, as: UTF8.self) else {
            return fail("not UTF-8 text: manifests must be UTF-8 YAML or JSON")
        }
        let documents: [YAMLReader.Document]
        do {
            documents = try reader.documents(text)
        } catch {
            return fail(error.message, at: error.mark)
        }
        var sawDocument = false
        var seen: [ObjectKey: SourceMark] = [:]
        for document in documents {
            guard let root = document.root, root.value != .null else { continue }
            sawDocument = true
            decodeDocument(root, start: document.start, file: file, into: &result, seen: &seen)
        }
        if !sawDocument {
            return fail("file has no documents (it is empty or only comments)")
        }
        // Problems in file order, whatever order the checks found them in.
        result.diagnostics = result.diagnostics.enumerated().sorted { a, b in
            let (x, y) = (a.element.mark ?? SourceMark(line: 0, column: 0), b.element.mark ?? SourceMark(line: 0, column: 0))
            return x != y ? x < y : a.offset < b.offset
        }.map(\.element)
        return result
    }

    private func decodeDocument(
        _ root: SpecNode, start: SourceMark, file: String, into result: inout ManifestResult,
        seen: inout [ObjectKey: SourceMark]
    ) {
        let mark = root.mark ?? start
        func fail(_ message: String, at: SourceMark? = nil, object: String? = nil, path: FieldPath = .root) {
            result.diagnostics.append(Diagnostic(file: file, mark: at ?? mark, object: object, path: path, message: message))
        }
        guard let _ = root.entries else {
            fail("a document must be a mapping with apiVersion, kind, metadata and spec; got \(root.shapeDescription)")
            return
        }
        let apiVersionNode = root["apiVersion"], kindNode = root["kind"]
        guard let apiVersion = apiVersionNode?.scalarText, !apiVersion.isEmpty else {
            fail(apiVersionNode == nil ? "required field is missing (Capstan objects use \(capstanAPIVersion))" : "expected a string, got \(apiVersionNode!.shapeDescription)", at: apiVersionNode?.mark, path: FieldPath([.key("apiVersion")]))
            return
        }
        guard let kindName = kindNode?.scalarText, !kindName.isEmpty else {
            fail(kindNode == nil ? "required field is missing" : "expected a string, got \(kindNode!.shapeDescription)", at: kindNode?.mark, path: FieldPath([.key("kind")]))
            return
        }
        if apiVersion == "v1" && kindName == "List" {
            guard case .sequence(let items)? = root["items"]?.value else {
                fail("a List needs items", path: FieldPath([.key("items")]))
                return
            }
            for item in items {
                decodeDocument(item, start: item.mark ?? mark, file: file, into: &result, seen: &seen)
            }
            return
        }
        let name = root["metadata"]?["name"]?.scalarText
        let group = apiVersion.contains("/") ? String(apiVersion.prefix(while: { $0 != "/" })) : ""
        guard group == capstanGroup else {
            result.skipped += 1
            result.diagnostics.append(Diagnostic(
                .info, file: file, mark: mark, object: "\(kindName)/\(name ?? "?")",
                message: "skipped: \(apiVersion) is not a capstan.dev object"))
            return
        }
        guard apiVersion == capstanAPIVersion else {
            fail("unsupported apiVersion \"\(apiVersion)\": this Capstan reads \(capstanAPIVersion)", at: apiVersionNode?.mark, path: FieldPath([.key("apiVersion")]))
            return
        }
        guard let kind = ResourceKind(rawValue: kindName) else {
            let kinds = ResourceKind.allCases.map(\.rawValue)
            var message = "unknown kind \"\(kindName)\" (kinds are \(kinds.joined(separator: ", ")))"
            if let suggestion = closestName(to: kindName, among: kinds) { message += "; did you mean \"\(suggestion)\"?" }
            fail(message, at: kindNode?.mark, path: FieldPath([.key("kind")]))
            return
        }
        let reference = "\(kind.rawValue)/\(name ?? "<no name>")"
        var context = DecodeContext()
        let decoded = AnyResource.decode(kind: kind, root, &context)
        let problems = context.problems.map {
            Diagnostic(file: file, mark: $0.mark ?? mark, object: reference, path: $0.path, message: $0.message)
        }
        result.diagnostics += problems
        guard let resource = decoded else {
            if let name, Names.dns1123LabelProblem(name) == nil {
                let namespace = root["metadata"]?["namespace"]?.scalarText ?? "default"
                result.invalidObjects.append(InvalidObject(key: ObjectKey(kind: kind, namespace: namespace, name: name), file: file, problems: problems))
            }
            return
        }
        if let first = seen[resource.key] {
            let diagnostic = Diagnostic(
                file: file, mark: mark, object: reference,
                message: "\(kind.rawValue) \(resource.key.namespace)/\(resource.key.name) is defined twice: also at \(file):\(first.line):\(first.column) (that one is used)")
            result.diagnostics.append(diagnostic)
            result.invalidObjects.append(InvalidObject(key: resource.key, file: file, problems: [diagnostic], isDuplicate: true))
            result.duplicateObjects.append(DecodedObject(resource: resource, file: file, mark: mark))
            return
        }
        seen[resource.key] = mark
        result.objects.append(DecodedObject(resource: resource, file: file, mark: mark))
    }
}

/// Human-readable byte sizes (`1 MiB`, `5.2 MiB`, `300 B`).
public enum ByteSize {
    public static func format(_ bytes: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(bytes) B" }
        let rounded = (value * 10).rounded() / 10
        return rounded == rounded.rounded() ? "\(Int(rounded)) \(units[unit])" : "\(rounded) \(units[unit])"
    }
}
