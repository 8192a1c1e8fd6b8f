import Yams

/// Reads YAML (and JSON, which it parses as YAML) into `SpecNode` documents with positions.
///
/// Anchors and aliases are supported, and so are `<<` merge keys, as in Kubernetes' own YAML
/// reader; but a document may expand to at most `maxNodes` nodes, which stops alias bombs
/// ("billion laughs") early and with bounded memory. Duplicate keys and non-scalar keys are
/// errors. Nesting is limited by libyaml (1,000 levels).
public struct YAMLReader: Sendable {
    public var maxNodes: Int

    public init(maxNodes: Int = 200_000) {
        self.maxNodes = maxNodes
    }

    /// A document of a stream: its root node (nil for an empty document) and where it starts.
    public struct Document: Sendable {
        public var root: SpecNode?
        public var start: SourceMark
    }

    public struct SyntaxError: Error, Sendable, CustomStringConvertible {
        public var mark: SourceMark?
        public var message: String
        public var description: String { (mark.map { "\($0): " } ?? "") + message }
    }

    /// Parses every document of `text`; throws at the first syntax error.
    public func documents(_ text: String) throws(SyntaxError) -> [Document] {
        var result: [Document] = []
        do {
            // The basic resolver (no regular expressions: types are decided by the fields that read
            // the scalars) and an explicit encoding (the default one reads the environment).
            let parser = try Parser(yaml: text, resolver: .basic, encoding: .utf8)
            while let node = try parser.nextRoot() {
                var budget = maxNodes
                let start = node.mark.map { SourceMark(line: $0.line, column: $0.column) } ?? SourceMark(line: 1, column: 1)
                let converted = try convert(node, budget: &budget)
                result.append(Document(root: converted, start: start))
            }
        } catch let error as SyntaxError {
            throw error
        } catch let error as YamlError {
            throw YAMLReader.syntaxError(error, text: text)
        } catch {
            throw SyntaxError(mark: nil, message: "\(error)")
        }
        return result
    }

    static func syntaxError(_ error: YamlError, text: String) -> SyntaxError {
        func mark(_ m: Mark) -> SourceMark { SourceMark(line: m.line, column: m.column) }
        switch error {
        case .scanner(let context, let problem, let m, _), .parser(let context, let problem, let m, _),
             .composer(let context, let problem, let m, _):
            var message = problem
            if problem.hasPrefix("Maximum nesting level") {
                return SyntaxError(mark: mark(m), message: "YAML nested more than 1000 levels deep: refusing it")
            }
            if let context { message += " (\(context.text) at line \(context.mark.line), column \(context.mark.column))" }
            let line = text.split(separator: "\n", omittingEmptySubsequences: false).dropFirst(m.line - 1).first ?? ""
            let column = line.unicodeScalars.dropFirst(m.column - 1).first
            if column == "\t" || (problem.contains("cannot start any token") && line.unicodeScalars.prefix(while: { $0 == " " || $0 == "\t" }).contains("\t")) {
                message = "tab character where YAML expects indentation or a value: indent with spaces, not tabs (\(problem))"
            }
            return SyntaxError(mark: mark(m), message: "YAML syntax error: " + message)
        case .reader(let problem, let offset, _, _):
            return SyntaxError(mark: nil, message: "cannot read the text: \(problem)" + (offset.map { " at byte \($0)" } ?? ""))
        case .duplicatedKeysInMapping(let duplicates, let context):
            return SyntaxError(
                mark: mark(context.mark),
                message: "duplicate key \(duplicates.map { "\"\($0)\"" }.joined(separator: ", ")) in a mapping: each key may appear once")
        default:
            return SyntaxError(mark: nil, message: "YAML error: \(error)")
        }
    }

    private func convert(_ node: Node, budget: inout Int) throws(SyntaxError) -> SpecNode {
        budget -= 1
        let mark = node.mark.map { SourceMark(line: $0.line, column: $0.column) }
        if budget < 0 {
            throw SyntaxError(
                mark: mark,
                message: "document expands to more than \(maxNodes) nodes (through aliases?): refusing it as a possible alias bomb")
        }
        switch node {
        case .scalar(let scalar):
            let tag = scalar.tag.description
            let quoted = scalar.style != .plain && scalar.style != .any
            if !tag.isEmpty, tag != "!", !tag.hasPrefix("tag:yaml.org,2002:") {
                throw SyntaxError(mark: mark, message: "unsupported YAML tag \"\(tag)\"")
            }
            if !quoted && tag != "tag:yaml.org,2002:str" {
                switch scalar.string {
                case "", "~", "null", "Null", "NULL": return SpecNode(.null, mark: mark)
                default: break
                }
            }
            return SpecNode(.scalar(scalar.string, quoted: quoted || tag == "tag:yaml.org,2002:str"), mark: mark)
        case .sequence(let sequence):
            var items: [SpecNode] = []
            for item in sequence { items.append(try convert(item, budget: &budget)) }
            return SpecNode(.sequence(items), mark: mark)
        case .mapping(let mapping):
            var entries: [SpecNode.Entry] = []
            var merged: [SpecNode.Entry] = []
            for (key, value) in mapping {
                guard case .scalar(let keyScalar) = key else {
                    throw SyntaxError(mark: key.mark.map { SourceMark(line: $0.line, column: $0.column) }, message: "mapping keys must be strings, got a \(key.isMapping ? "mapping" : "list")")
                }
                let keyMark = keyScalar.mark.map { SourceMark(line: $0.line, column: $0.column) }
                if keyScalar.string == "<<" && keyScalar.style == .plain {
                    let source = try convert(value, budget: &budget)
                    let sources: [SpecNode]
                    switch source.value {
                    case .mapping: sources = [source]
                    case .sequence(let items): sources = items
                    default: throw SyntaxError(mark: keyMark, message: "a << merge key needs a mapping or a list of mappings")
                    }
                    for item in sources {
                        guard let itemEntries = item.entries else {
                            throw SyntaxError(mark: keyMark, message: "a << merge key needs a mapping or a list of mappings")
                        }
                        for entry in itemEntries where !merged.contains(where: { $0.key == entry.key }) {
                            merged.append(entry)
                        }
                    }
                    continue
                }
                if let first = entries.first(where: { $0.key == keyScalar.string }) {
                    let at = first.keyMark.map { " (first at line \($0.line), column \($0.column))" } ?? ""
                    throw SyntaxError(mark: keyMark, message: "duplicate key \"\(keyScalar.string)\"\(at): each key may appear once")
                }
                entries.append(SpecNode.Entry(keyScalar.string, try convert(value, budget: &budget), keyMark: keyMark))
            }
            for entry in merged where !entries.contains(where: { $0.key == entry.key }) {
                entries.append(entry)
            }
            return SpecNode(.mapping(entries), mark: mark)
        case .alias:
            throw SyntaxError(mark: mark, message: "unresolved YAML alias")
        }
    }
}

private extension Node {
    var isMapping: Bool {
        if case .mapping = self { return true }
        return false
    }
}
