/// A path to a field inside an object, printed the way kubectl prints them: `spec.env[0].name`.
public struct FieldPath: Sendable, Hashable, CustomStringConvertible {
    public enum Component: Sendable, Hashable {
        case key(String)
        case index(Int)
    }

    public var components: [Component]

    public init(_ components: [Component] = []) {
        self.components = components
    }

    public static let root = FieldPath()

    public func appending(_ key: String) -> FieldPath { FieldPath(components + [.key(key)]) }
    public func appending(index: Int) -> FieldPath { FieldPath(components + [.index(index)]) }

    public var isEmpty: Bool { components.isEmpty }

    public var description: String {
        var out = ""
        for component in components {
            switch component {
            case .key(let key):
                let plain = key.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" }
                if plain {
                    if !out.isEmpty { out += "." }
                    out += key
                } else {
                    out += "[\"\(key)\"]"
                }
            case .index(let index):
                out += "[\(index)]"
            }
        }
        return out
    }
}

/// One problem found in an object: where (field path and, when read from a file, position) and what.
public struct Problem: Sendable, Hashable, CustomStringConvertible {
    public var path: FieldPath
    public var mark: SourceMark?
    public var message: String

    public init(path: FieldPath, mark: SourceMark?, message: String) {
        self.path = path
        self.mark = mark
        self.message = message
    }

    public var description: String {
        path.isEmpty ? message : "\(path): \(message)"
    }
}

/// A problem tied to a file, as `capstan validate` prints it:
/// `file:line:col: Kind/name: field.path: message`.
public struct Diagnostic: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Severity: String, Sendable, Hashable, Codable {
        case error, warning, info
    }

    public var severity: Severity
    public var file: String
    public var mark: SourceMark?
    /// `Kind/name` of the object the problem belongs to, when known.
    public var object: String?
    public var path: FieldPath
    public var message: String

    public init(
        _ severity: Severity = .error, file: String, mark: SourceMark?, object: String? = nil,
        path: FieldPath = .root, message: String
    ) {
        self.severity = severity
        self.file = file
        self.mark = mark
        self.object = object
        self.path = path
        self.message = message
    }

    public var description: String {
        var parts = [file + (mark.map { ":\($0.line):\($0.column)" } ?? "")]
        if let object { parts.append(object) }
        if !path.isEmpty { parts.append(path.description) }
        parts.append(message)
        return parts.joined(separator: ": ")
    }
}
