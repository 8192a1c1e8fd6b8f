/// A position in a source file: 1-based line and column (columns count Unicode scalars).
public struct SourceMark: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var line: Int
    public var column: Int

    public init(line: Int, column: Int) {
        self.line = line
        self.column = column
    }

    public static func < (lhs: SourceMark, rhs: SourceMark) -> Bool {
        (lhs.line, lhs.column) < (rhs.line, rhs.column)
    }

    public var description: String { "\(line):\(column)" }
}

/// A format-neutral document tree, the common ground of YAML and JSON input and output.
///
/// Scalars keep their text as written: whether `3` is a number or a string is decided by the
/// field that reads it, not by the parser (so `version: 1.10` stays "1.10"). `quoted` records
/// that the author wrote a string explicitly, which numeric and boolean fields reject.
/// Nodes read from a file carry their `mark`; nodes built by encoders have none.
public struct SpecNode: Sendable, Equatable, CustomStringConvertible {
    public enum Value: Sendable, Equatable {
        case null
        case scalar(String, quoted: Bool)
        case sequence([SpecNode])
        case mapping([Entry])
    }

    /// One key/value pair of a mapping; keys keep their own position for "unknown field" errors.
    public struct Entry: Sendable, Equatable {
        public var key: String
        public var keyMark: SourceMark?
        public var value: SpecNode

        public init(_ key: String, _ value: SpecNode, keyMark: SourceMark? = nil) {
            self.key = key
            self.value = value
            self.keyMark = keyMark
        }

        public static func == (lhs: Entry, rhs: Entry) -> Bool {
            lhs.key == rhs.key && lhs.value == rhs.value
        }
    }

    public var value: Value
    public var mark: SourceMark?

    public init(_ value: Value, mark: SourceMark? = nil) {
        self.value = value
        self.mark = mark
    }

    /// Equality ignores positions: two trees are equal when they say the same thing.
    public static func == (lhs: SpecNode, rhs: SpecNode) -> Bool { lhs.value == rhs.value }

    public static let null = SpecNode(.null)
    public static func string(_ text: String) -> SpecNode { SpecNode(.scalar(text, quoted: true)) }
    public static func int(_ value: Int) -> SpecNode { SpecNode(.scalar(String(value), quoted: false)) }
    public static func bool(_ value: Bool) -> SpecNode { SpecNode(.scalar(value ? "true" : "false", quoted: false)) }
    public static func double(_ value: Double) -> SpecNode { SpecNode(.scalar(formatNumber(value), quoted: false)) }
    public static func sequence(_ items: [SpecNode]) -> SpecNode { SpecNode(.sequence(items)) }
    public static func mapping(_ entries: [(String, SpecNode)]) -> SpecNode {
        SpecNode(.mapping(entries.map { Entry($0.0, $0.1) }))
    }

    /// The entries of a mapping, or nil for any other node.
    public var entries: [Entry]? {
        if case .mapping(let entries) = value { return entries }
        return nil
    }

    /// The value under `key` in a mapping.
    public subscript(key: String) -> SpecNode? {
        entries?.first(where: { $0.key == key })?.value
    }

    /// The text of a scalar, or nil.
    public var scalarText: String? {
        if case .scalar(let text, _) = value { return text }
        return nil
    }

    /// True for empty mappings, empty sequences and null: what an encoder may leave out.
    public var isEmptyCollection: Bool {
        switch value {
        case .null: return true
        case .mapping(let entries): return entries.isEmpty
        case .sequence(let items): return items.isEmpty
        case .scalar: return false
        }
    }

    /// A word for the node's shape, for error messages ("expected an integer, got a mapping").
    public var shapeDescription: String {
        switch value {
        case .null: return "null"
        case .scalar(let text, let quoted):
            let shown = text.count > 40 ? String(text.prefix(37)) + "..." : text
            return quoted ? "the string \"\(shown)\"" : "\"\(shown)\""
        case .sequence: return "a list"
        case .mapping: return "a mapping"
        }
    }

    public var description: String { JSONEmitter.emit(self, pretty: false) }

    /// Formats a double the way JSON and YAML both read back: integers without a fraction.
    static func formatNumber(_ value: Double) -> String {
        if value.isFinite, value == value.rounded(), abs(value) < 1e15 {
            return String(Int64(value))
        }
        return "\(value)"
    }
}
