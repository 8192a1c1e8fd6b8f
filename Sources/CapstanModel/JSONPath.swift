/// Evaluates the JSONPath subset kubectl's printer columns use: `.a.b`, `[*]`, `[0]` and
/// `[?(@.field=="value")]`. Results are the scalars found, joined with "," (as kubectl does).
public enum JSONPath {
    public static func evaluate(_ path: String, on node: SpecNode) -> [SpecNode] {
        var current = [node]
        var rest = Substring(path)
        while !rest.isEmpty {
            if rest.hasPrefix(".") {
                rest = rest.dropFirst()
                let name = rest.prefix(while: { $0 != "." && $0 != "[" })
                rest = rest.dropFirst(name.count)
                current = current.compactMap { $0[String(name)] }
            } else if rest.hasPrefix("[") {
                guard let close = rest.firstIndex(of: "]") else { return [] }
                let inside = rest[rest.index(after: rest.startIndex)..<close]
                rest = rest[rest.index(after: close)...]
                current = current.flatMap { node -> [SpecNode] in
                    guard case .sequence(let items) = node.value else { return [] }
                    if inside == "*" { return items }
                    if let index = Int(inside) { return items.indices.contains(index) ? [items[index]] : [] }
                    // ?(@.field=="value")
                    guard inside.hasPrefix("?(@."), inside.hasSuffix(")"), let eq = inside.range(of: "==") else { return [] }
                    let field = String(inside[inside.index(inside.startIndex, offsetBy: 4)..<eq.lowerBound])
                    var value = String(inside[eq.upperBound..<inside.index(before: inside.endIndex)])
                    value = value.trimmingCharacters(in: "\"")
                    return items.filter { $0[field]?.scalarText == value }
                }
            } else {
                return []
            }
        }
        return current
    }

    /// The column text: scalars joined with ","; empty when nothing matched.
    public static func text(_ path: String, on node: SpecNode) -> String {
        evaluate(path, on: node).compactMap(\.scalarText).joined(separator: ",")
    }
}
