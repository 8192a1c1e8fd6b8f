/// Collects problems while a tree is decoded, with the field path of the node being read.
///
/// Decoding never stops at the first problem: every field is read and every problem is kept,
/// so that one run of `capstan validate` shows them all.
public struct DecodeContext: Sendable {
    public private(set) var problems: [Problem] = []
    public private(set) var path: FieldPath = .root

    public init() {}

    /// Records a problem at the current path.
    public mutating func fail(_ message: String, at mark: SourceMark?) {
        problems.append(Problem(path: path, mark: mark, message: message))
    }

    /// Records a problem at a child of the current path.
    public mutating func fail(_ message: String, field: String, at mark: SourceMark?) {
        problems.append(Problem(path: path.appending(field), mark: mark, message: message))
    }

    /// Records a problem at a descendant of the current path.
    public mutating func fail(_ message: String, relative: FieldPath, at mark: SourceMark?) {
        problems.append(Problem(path: FieldPath(path.components + relative.components), mark: mark, message: message))
    }

    /// Runs `body` with `component` appended to the path.
    public mutating func at<T>(_ component: FieldPath.Component, _ body: (inout DecodeContext) -> T) -> T {
        // A stack, not a copy per field: decoding thousands of objects should not allocate paths.
        path.components.append(component)
        defer { path.components.removeLast() }
        return body(&self)
    }

    public mutating func at<T>(_ key: String, _ body: (inout DecodeContext) -> T) -> T {
        at(.key(key), body)
    }

    var problemCount: Int { problems.count }
}

/// A value that can be read from and written to a `SpecNode`, and described as an OpenAPI schema.
///
/// This one protocol is the single source of truth for decoding, encoding, validation and the
/// CRD schemas: the CRDs cannot drift from what `capstan validate` accepts.
public protocol SpecValue: Sendable, Equatable {
    /// Reads a value, recording every problem in `context`; nil when the node cannot be read at all.
    static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> Self?
    /// Writes the value as a tree.
    func encode() -> SpecNode
    /// The OpenAPI v3 schema of the value.
    static var schema: Schema { get }
}

/// A structured value described by a table of fields.
public protocol SpecObject: SpecValue {
    /// A value with every field at its default (required fields hold placeholders until decoded).
    init()
    /// The fields, in the order they are printed.
    static var fields: [Field<Self>] { get }
    /// Field names accepted for compatibility and ignored (Kubernetes' `managedFields`, ...).
    static var ignoredFields: Set<String> { get }
    /// Defaults that follow another field (a probe's timeout follows its interval): sets the
    /// fields `node` leaves out from the ones it has, so a default never makes a spec invalid.
    /// Runs after the fields decode, before `validate`.
    static func completeDefaults(_ value: inout Self, _ node: SpecNode)
    /// Checks that involve several fields; runs only when every field decoded cleanly.
    static func validate(_ value: Self, _ node: SpecNode, _ context: inout DecodeContext)
    /// Fields of which exactly one must be set (a union such as `http`/`tcp`/`exec`): checked
    /// when decoding and written into the schema as `oneOf`.
    static var exactlyOneOf: [String] { get }
    /// Schema rules across fields, added to the generated schema.
    static func refineSchema(_ schema: inout Schema)
    /// Description used in the CRD schema.
    static var documentation: String { get }
}

extension SpecObject {
    public static var ignoredFields: Set<String> { [] }
    public static func completeDefaults(_ value: inout Self, _ node: SpecNode) {}
    public static func validate(_ value: Self, _ node: SpecNode, _ context: inout DecodeContext) {}
    public static func refineSchema(_ schema: inout Schema) {}
    public static var exactlyOneOf: [String] { [] }
    public static var documentation: String { "" }

    /// Reports unless exactly one of `exactlyOneOf` is set in `node`.
    static func checkExactlyOne(_ node: SpecNode, _ context: inout DecodeContext) {
        let names = exactlyOneOf
        guard !names.isEmpty else { return }
        let set = names.filter { name in node[name].map { $0.value != .null } ?? false }
        guard set.count != 1 else { return }
        let list = names.count == 2 ? "\(names[0]) or \(names[1])"
            : names.dropLast().joined(separator: ", ") + " or " + names.last!
        let detail: String
        switch (set.count, names.count) {
        case (0, 2): detail = " (neither is set)"
        case (0, _): detail = " (none is set)"
        case (_, 2): detail = ", not both"
        default: detail = " (\(set.dropLast().joined(separator: ", ")) and \(set.last!) are set)"
        }
        context.fail("set exactly one of \(list)\(detail)", at: node.mark)
    }

    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> Self? {
        guard let entries = node.entries else {
            context.fail("expected a mapping of fields, got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        let fields = Self.fields
        let before = context.problemCount
        var value = Self()
        var seen = [Bool](repeating: false, count: fields.count)
        for entry in entries {
            guard let fieldIndex = fields.firstIndex(where: { $0.name == entry.key }) else {
                if ignoredFields.contains(entry.key) { continue }
                var message = "unknown field \"\(entry.key)\""
                if let suggestion = closestName(to: entry.key, among: fields.map(\.name)) {
                    message += " (did you mean \"\(suggestion)\"?)"
                }
                context.fail(message, field: entry.key, at: entry.keyMark ?? entry.value.mark)
                continue
            }
            let field = fields[fieldIndex]
            if case .null = entry.value.value {
                // `field:` with no value (or `~`) means "not set", as in Kubernetes.
                continue
            }
            seen[fieldIndex] = true
            context.at(entry.key) { context in
                field.decodeInto(&value, entry.value, &context)
            }
        }
        for (index, field) in fields.enumerated() where !seen[index] {
            switch field.presence {
            case .required:
                context.fail("required field is missing", field: field.name, at: node.mark)
            case .optional, .defaulted:
                break
            }
        }
        checkExactlyOne(node, &context)
        if context.problemCount == before {
            completeDefaults(&value, node)
            validate(value, node, &context)
        }
        return value
    }

    public func encode() -> SpecNode {
        var entries: [SpecNode.Entry] = []
        for field in Self.fields {
            if let node = field.encodeFrom(self) {
                entries.append(.init(field.name, node))
            }
        }
        return SpecNode(.mapping(entries))
    }

    public static var schema: Schema {
        var schema = Schema(type: .object)
        if !documentation.isEmpty {
            schema.description = documentation
        } else if !exactlyOneOf.isEmpty {
            schema.description = "Exactly one of " + exactlyOneOf.dropLast().joined(separator: ", ") + " or " + exactlyOneOf.last! + "."
        }
        for field in fields {
            var child = field.schema()
            if let doc = field.documentation, !doc.isEmpty { child.description = doc }
            if case .defaulted = field.presence, let node = field.defaultNode, !node.isEmptyCollection {
                child.defaultValue = node
            }
            schema.properties.append((field.name, child))
            if case .required = field.presence { schema.required.append(field.name) }
        }
        if !exactlyOneOf.isEmpty { schema.oneOfRequired = exactlyOneOf.map { [$0] } }
        refineSchema(&schema)
        return schema
    }

    /// Decodes a complete value; throws every problem found.
    public static func decoded(from node: SpecNode) throws(ValidationError) -> Self {
        var context = DecodeContext()
        let value = decode(node, &context)
        if let value, context.problems.isEmpty { return value }
        throw ValidationError(problems: context.problems)
    }

    /// Every problem of a value built in code (the same rules as for a decoded one).
    public func validationProblems() -> [Problem] {
        var context = DecodeContext()
        _ = Self.decode(encode(), &context)
        return context.problems
    }
}

/// The problems that made a value invalid.
public struct ValidationError: Error, Sendable, CustomStringConvertible {
    public var problems: [Problem]
    public var description: String { problems.map(\.description).joined(separator: "; ") }
}

/// How a field behaves when it is absent.
public enum Presence: Sendable {
    case required
    case optional
    case defaulted
}

/// One field of a `SpecObject`: its name, presence, documentation, how to read and write it,
/// and its schema. Built with `.required`, `.optional` and `.defaulted`.
public struct Field<Root>: Sendable {
    public let name: String
    public let presence: Presence
    public let documentation: String?
    public let defaultNode: SpecNode?
    let decodeInto: @Sendable (inout Root, SpecNode, inout DecodeContext) -> Void
    let encodeFrom: @Sendable (Root) -> SpecNode?
    let schema: @Sendable () -> Schema

    /// Decodes a value, checks its rules and stores it.
    private static func decoding<V: SpecValue>(
        _ rules: [Rule<V>], store: @escaping @Sendable (inout Root, V) -> Void
    ) -> @Sendable (inout Root, SpecNode, inout DecodeContext) -> Void {
        { root, node, context in
            if let value = V.decode(node, &context) {
                Rule.check(rules, value, node, &context)
                store(&root, value)
            }
        }
    }

    /// A field that must be present.
    public static func required<V: SpecValue>(
        _ name: String, _ keyPath: WritableKeyPath<Root, V> & Sendable, _ doc: String? = nil,
        _ rules: Rule<V>...
    ) -> Field {
        Field(
            name: name, presence: .required, documentation: doc, defaultNode: nil,
            decodeInto: decoding(rules) { root, value in root[keyPath: keyPath] = value },
            encodeFrom: { root in root[keyPath: keyPath].encode() },
            schema: { Rule.apply(rules, to: V.schema) })
    }

    /// A field that may be absent (nil).
    public static func optional<V: SpecValue>(
        _ name: String, _ keyPath: WritableKeyPath<Root, V?> & Sendable, _ doc: String? = nil,
        _ rules: Rule<V>...
    ) -> Field {
        Field(
            name: name, presence: .optional, documentation: doc, defaultNode: nil,
            decodeInto: decoding(rules) { root, value in root[keyPath: keyPath] = value },
            encodeFrom: { root in root[keyPath: keyPath]?.encode() },
            schema: { Rule.apply(rules, to: V.schema) })
    }

    /// A field with a default value; empty collections are left out when encoding.
    public static func defaulted<V: SpecValue>(
        _ name: String, _ keyPath: WritableKeyPath<Root, V> & Sendable, _ defaultValue: V,
        _ doc: String? = nil, _ rules: Rule<V>...
    ) -> Field {
        Field(
            name: name, presence: .defaulted, documentation: doc, defaultNode: defaultValue.encode(),
            decodeInto: decoding(rules) { root, value in root[keyPath: keyPath] = value },
            encodeFrom: { root in
                let node = root[keyPath: keyPath].encode()
                return node.isEmptyCollection ? nil : node
            },
            schema: { Rule.apply(rules, to: V.schema) })
    }
}

/// A constraint on one field's value that is both checked and written into the schema.
public struct Rule<V>: Sendable {
    let check: @Sendable (V) -> String?
    let schemaPatch: @Sendable (inout Schema) -> Void

    public init(check: @escaping @Sendable (V) -> String?, schema: @escaping @Sendable (inout Schema) -> Void = { _ in }) {
        self.check = check
        self.schemaPatch = schema
    }

    static func check(_ rules: [Rule], _ value: V, _ node: SpecNode, _ context: inout DecodeContext) {
        for rule in rules {
            if let message = rule.check(value) { context.fail(message, at: node.mark) }
        }
    }

    static func apply(_ rules: [Rule], to schema: Schema) -> Schema {
        var schema = schema
        for rule in rules { rule.schemaPatch(&schema) }
        return schema
    }
}

extension Rule where V == Int {
    /// `value >= minimum`.
    public static func minimum(_ minimum: Int) -> Rule {
        Rule(check: { $0 < minimum ? "must be at least \(minimum), got \($0)" : nil },
             schema: { $0.minimum = Double(minimum) })
    }

    /// `value <= maximum`.
    public static func maximum(_ maximum: Int) -> Rule {
        Rule(check: { $0 > maximum ? "must be at most \(maximum), got \($0)" : nil },
             schema: { $0.maximum = Double(maximum) })
    }

    /// A TCP/UDP port number.
    public static var port: Rule {
        Rule(check: { (1...65535).contains($0) ? nil : "must be a port number between 1 and 65535, got \($0)" },
             schema: { $0.minimum = 1; $0.maximum = 65535 })
    }
}

extension Rule where V == Double {
    public static func range(_ range: ClosedRange<Double>) -> Rule {
        Rule(check: { range.contains($0) ? nil : "must be between \(SpecNode.formatNumber(range.lowerBound)) and \(SpecNode.formatNumber(range.upperBound)), got \(SpecNode.formatNumber($0))" },
             schema: { $0.minimum = range.lowerBound; $0.maximum = range.upperBound })
    }
}

extension Rule where V == String {
    /// A non-empty string.
    public static var nonEmpty: Rule {
        Rule(check: { $0.isEmpty ? "must not be empty" : nil }, schema: { $0.minLength = 1 })
    }

    /// A DNS-1123 label: the name of an object.
    public static var dnsLabel: Rule {
        Rule(check: { Names.dns1123LabelProblem($0) },
             schema: { $0.maxLength = 63; $0.pattern = Names.dns1123LabelPattern })
    }

    /// A DNS-1123 subdomain (Secret names, hosts).
    public static var dnsSubdomain: Rule {
        Rule(check: { Names.dns1123SubdomainProblem($0) },
             schema: { $0.maxLength = 253; $0.pattern = Names.dns1123SubdomainPattern })
    }

    /// An absolute http(s) URL.
    public static var httpURL: Rule {
        Rule(check: { Names.httpURLProblem($0) }, schema: { $0.pattern = "^https?://" })
    }

    /// A string with a bounded length.
    public static func maxLength(_ length: Int) -> Rule {
        Rule(check: { $0.count > length ? "must be at most \(length) characters, got \($0.count)" : nil },
             schema: { $0.maxLength = length })
    }
}

extension Rule where V: Collection & Sendable {
    /// At least `count` items.
    public static func minItems(_ count: Int) -> Rule {
        Rule(check: { $0.count < count ? (count == 1 ? "must not be empty" : "must have at least \(count) items") : nil },
             schema: { $0.minItems = count })
    }
}

extension Rule where V == KubeDuration {
    /// Strictly positive.
    public static var positive: Rule {
        Rule(check: { $0.nanoseconds <= 0 ? "must be greater than 0s" : nil })
    }

    /// At least `minimum`.
    public static func atLeast(_ minimum: KubeDuration) -> Rule {
        Rule(check: { $0 < minimum ? "must be at least \(minimum), got \($0)" : nil })
    }
}

/// The closest name by edit distance, when close enough to be a likely typo.
func closestName(to name: String, among candidates: [String]) -> String? {
    var best: (String, Int)?
    let lowered = name.lowercased()
    for candidate in candidates {
        let distance = editDistance(lowered, candidate.lowercased())
        if distance <= max(1, min(3, candidate.count / 3)), distance < (best?.1 ?? .max) {
            best = (candidate, distance)
        }
    }
    return best?.0
}

func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}
