import Foundation

/// Annotation templates: `{{ $value }}` and `{{ $labels.NAME }}` (Prometheus' spelling), and
/// `{{ $labels }}` for all of them; anything else between `{{` and `}}` is an error that says so.
public enum AlertTemplate {
    public struct Problem: Error, Sendable, Hashable, CustomStringConvertible {
        public var description: String
    }

    public static func expand(_ text: String, value: Double, labels: [String: String]) throws(Problem) -> String {
        var out = ""
        var rest = Substring(text)
        while let open = rest.range(of: "{{") {
            out += rest[..<open.lowerBound]
            guard let close = rest.range(of: "}}", range: open.upperBound..<rest.endIndex) else {
                throw Problem(description: "template \"\(text)\": {{ without }}")
            }
            let expression = rest[open.upperBound..<close.lowerBound].trimmingCharacters(in: .whitespaces)
            switch expression {
            case "$value", ".Value":
                out += value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
            case "$labels", ".Labels":
                out += labels.keys.sorted().map { "\($0)=\(labels[$0]!)" }.joined(separator: ", ")
            default:
                let prefixes = ["$labels.", ".Labels."]
                guard let prefix = prefixes.first(where: { expression.hasPrefix($0) }) else {
                    throw Problem(description: "template \"\(text)\": unknown expression {{ \(expression) }} (use {{ $value }} or {{ $labels.NAME }})")
                }
                out += labels[String(expression.dropFirst(prefix.count))] ?? ""
            }
            rest = rest[close.upperBound...]
        }
        return out + rest
    }
}
