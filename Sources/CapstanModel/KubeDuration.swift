/// A duration written the Go/Kubernetes way: `90s`, `5m`, `1h30m`, `250ms`, `0`.
///
/// Negative durations are rejected: no field of Capstan's takes one.
public struct KubeDuration: SpecValue, Hashable, Comparable, CustomStringConvertible {
    /// Length in nanoseconds (Go's `time.Duration`).
    public var nanoseconds: Int64

    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }
    /// A Swift `Duration`, to whole nanoseconds (negative ones as zero).
    public init(_ duration: Swift.Duration) {
        let (seconds, attoseconds) = duration.components
        nanoseconds = max(0, seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
    public static func seconds(_ s: Int64) -> KubeDuration { KubeDuration(nanoseconds: s * 1_000_000_000) }
    public static func minutes(_ m: Int64) -> KubeDuration { .seconds(m * 60) }
    public static func hours(_ h: Int64) -> KubeDuration { .seconds(h * 3600) }
    public static let zero = KubeDuration(nanoseconds: 0)

    public static func < (lhs: KubeDuration, rhs: KubeDuration) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

    public var seconds: Double { Double(nanoseconds) / 1e9 }
    /// The value as a Swift `Duration`, for clocks and sleeps.
    public var duration: Swift.Duration { .nanoseconds(nanoseconds) }

    private static let units: [(String, Int64)] = [
        ("ns", 1), ("us", 1_000), ("µs", 1_000), ("μs", 1_000), ("ms", 1_000_000),
        ("s", 1_000_000_000), ("m", 60_000_000_000), ("h", 3_600_000_000_000),
    ]

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case empty, negative(String), missingUnit(String), unknownUnit(String, String), malformed(String), overflow(String)

        public var description: String {
            switch self {
            case .empty: return "duration must not be empty (write e.g. \"30s\")"
            case .negative(let text): return "duration \"\(text)\" must not be negative"
            case .missingUnit(let text): return "duration \"\(text)\" has no unit (write e.g. \"\(text)s\"; units are ns, us, ms, s, m, h)"
            case .unknownUnit(let text, let unit): return "duration \"\(text)\" has an unknown unit \"\(unit)\" (units are ns, us, ms, s, m, h; for days write e.g. 24h)"
            case .malformed(let text): return "\"\(text)\" is not a duration (write e.g. \"90s\", \"5m\" or \"1h30m\")"
            case .overflow(let text): return "duration \"\(text)\" is too long (at most about 2562047h)"
            }
        }
    }

    /// Parses Go's `time.ParseDuration` syntax, without the sign.
    public static func parse(_ text: String) throws(ParseError) -> KubeDuration {
        if text.isEmpty { throw .empty }
        if text.hasPrefix("-") { throw .negative(text) }
        var rest = Substring(text.hasPrefix("+") ? String(text.dropFirst()) : text)
        if rest == "0" { return .zero }
        if rest.isEmpty { throw .malformed(text) }
        var total: Int64 = 0
        while !rest.isEmpty {
            let number = rest.prefix(while: { $0.isASCIIDigitCharacter || $0 == "." })
            guard !number.isEmpty, number != ".", number.filter({ $0 == "." }).count <= 1 else { throw .malformed(text) }
            rest = rest.dropFirst(number.count)
            let unitText = rest.prefix(while: { !$0.isASCIIDigitCharacter && $0 != "." })
            if unitText.isEmpty { throw .missingUnit(text) }
            guard let unit = units.first(where: { $0.0 == unitText })?.1 else {
                if unitText.contains(" ") || unitText.count > 2 && !unitText.allSatisfy(\.isLetter) { throw .malformed(text) }
                throw .unknownUnit(text, String(unitText))
            }
            rest = rest.dropFirst(unitText.count)
            // Exact integer arithmetic, as Go's time.ParseDuration: whole part, then fraction digits.
            let parts = number.split(separator: ".", omittingEmptySubsequences: false)
            var value: Int64 = 0
            if !parts[0].isEmpty {
                guard let whole = Int64(parts[0]) else { throw .overflow(text) }
                let (product, overflow) = whole.multipliedReportingOverflow(by: unit)
                if overflow { throw .overflow(text) }
                value = product
            }
            if parts.count == 2 {
                var scale = unit
                for digit in parts[1] {
                    scale /= 10
                    if scale == 0 { break }
                    value += Int64(digit.wholeNumberValue!) * scale
                }
            }
            let (sum, overflow) = total.addingReportingOverflow(value)
            if overflow { throw .overflow(text) }
            total = sum
        }
        return KubeDuration(nanoseconds: total)
    }

    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> KubeDuration? {
        guard case .scalar(let text, _) = node.value else {
            context.fail("expected a duration such as \"30s\", got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        do {
            return try parse(text.trimmingSpaces())
        } catch {
            context.fail(error.description, at: node.mark)
            return nil
        }
    }

    public func encode() -> SpecNode { .string(description) }

    public static var schema: Schema {
        var schema = Schema(type: .string)
        schema.pattern = "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$|^0$"
        return schema
    }

    /// Go's `time.Duration.String()` form: `1h30m0s`, `250ms`, `0s`.
    public var description: String {
        var n = nanoseconds
        if n == 0 { return "0s" }
        if n < 1_000_000_000 {
            if n % 1_000_000 == 0 { return "\(n / 1_000_000)ms" }
            if n % 1_000 == 0 { return "\(n / 1_000)us" }
            return "\(n)ns"
        }
        var out = ""
        let hours = n / 3_600_000_000_000
        n -= hours * 3_600_000_000_000
        let minutes = n / 60_000_000_000
        n -= minutes * 60_000_000_000
        if hours > 0 { out += "\(hours)h" }
        if hours > 0 || minutes > 0 { out += "\(minutes)m" }
        let seconds = n / 1_000_000_000
        var fraction = n % 1_000_000_000
        out += "\(seconds)"
        if fraction > 0 {
            var digits = 9
            while fraction % 10 == 0 { fraction /= 10; digits -= 1 }
            let text = String(fraction)
            out += "." + String(repeating: "0", count: digits - text.count) + text
        }
        return out + "s"
    }
}

extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
