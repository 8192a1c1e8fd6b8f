/// A builtin metric query: a metric name with an optional selector of label matchers,
/// `probe_failure_ratio{deployment="web",namespace!="test"}` — the small part of PromQL's
/// instant-vector selector a builtin metric needs (`=` and `!=`; no regular expressions, no
/// functions, no arithmetic). Anything else is refused with what is wrong and where.
public struct MetricSelector: Sendable, Hashable, CustomStringConvertible {
    public enum Operator: String, Sendable, Hashable {
        case equal = "=", notEqual = "!="
    }

    public struct Matcher: Sendable, Hashable {
        public var label: String
        public var op: Operator
        public var value: String

        public init(_ label: String, _ op: Operator, _ value: String) {
            self.label = label
            self.op = op
            self.value = value
        }

        public func matches(_ labels: [String: String]) -> Bool {
            let actual = labels[label] ?? ""
            return op == .equal ? actual == value : actual != value
        }
    }

    public struct ParseError: Error, Sendable, Hashable, CustomStringConvertible {
        public var description: String
    }

    public var metric: String
    public var matchers: [Matcher]

    public init(metric: String, matchers: [Matcher] = []) {
        self.metric = metric
        self.matchers = matchers
    }

    public func matches(_ labels: [String: String]) -> Bool { matchers.allSatisfy { $0.matches(labels) } }

    public var description: String {
        guard !matchers.isEmpty else { return metric }
        return metric + "{" + matchers.map { "\($0.label)\($0.op.rawValue)\"\(Self.escape($0.value))\"" }.joined(separator: ",") + "}"
    }

    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
    }

    static func isNameStart(_ c: Character) -> Bool { c == "_" || (c.isASCII && c.isLetter) }
    static func isNameRest(_ c: Character) -> Bool { isNameStart(c) || (c.isASCII && c.isNumber) }

    /// Parses `metric` or `metric{label="value",...}`; `known` limits the metric names.
    public static func parse(_ text: String, known: [String]? = nil) throws(ParseError) -> MetricSelector {
        let chars = Array(text)
        var i = 0
        func fail(_ message: String) -> ParseError {
            ParseError(description: "query \"\(text)\": \(message) at column \(i + 1)")
        }
        func skipSpaces() { while i < chars.count, chars[i] == " " || chars[i] == "\t" { i += 1 } }
        func name() -> String? {
            guard i < chars.count, isNameStart(chars[i]) else { return nil }
            let start = i
            while i < chars.count, isNameRest(chars[i]) || chars[i] == ":" { i += 1 }
            return String(chars[start..<i])
        }
        skipSpaces()
        guard let metric = name() else {
            throw fail(chars.isEmpty ? "empty; expected a metric name" : "expected a metric name")
        }
        if let known, !known.contains(metric) {
            throw ParseError(description: "unknown builtin metric \"\(metric)\" (builtin metrics: \(known.joined(separator: ", "))); use source: prometheus for PromQL")
        }
        var matchers: [Matcher] = []
        skipSpaces()
        if i < chars.count, chars[i] == "{" {
            i += 1
            skipSpaces()
            while i < chars.count, chars[i] != "}" {
                guard let label = name() else { throw fail("expected a label name") }
                skipSpaces()
                let op: Operator
                if i + 1 < chars.count, chars[i] == "!", chars[i + 1] == "=" {
                    op = .notEqual
                    i += 2
                } else if i < chars.count, chars[i] == "=" {
                    if i + 1 < chars.count, chars[i + 1] == "~" { throw fail("regular expressions (=~) are not supported by builtin metrics") }
                    op = .equal
                    i += 1
                } else if i + 1 < chars.count, chars[i] == "!", chars[i + 1] == "~" {
                    throw fail("regular expressions (!~) are not supported by builtin metrics")
                } else {
                    throw fail("expected = or != after label \(label)")
                }
                skipSpaces()
                guard i < chars.count, chars[i] == "\"" || chars[i] == "'" else { throw fail("expected a quoted value") }
                let quote = chars[i]
                i += 1
                var value = ""
                while i < chars.count, chars[i] != quote {
                    if chars[i] == "\\", i + 1 < chars.count {
                        i += 1
                    }
                    value.append(chars[i])
                    i += 1
                }
                guard i < chars.count else { throw fail("unterminated string") }
                i += 1
                matchers.append(Matcher(label, op, value))
                skipSpaces()
                if i < chars.count, chars[i] == "," {
                    i += 1
                    skipSpaces()
                    continue
                }
                guard i < chars.count, chars[i] == "}" else { throw fail("expected , or }") }
            }
            guard i < chars.count else { throw fail("expected }") }
            i += 1
        }
        skipSpaces()
        guard i == chars.count else {
            throw fail("unexpected \"\(String(chars[i...]))\" (builtin queries are a metric and an optional {label=\"value\"} selector; use source: prometheus for PromQL)")
        }
        return MetricSelector(metric: metric, matchers: matchers)
    }
}
