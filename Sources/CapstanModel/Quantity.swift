import Foundation

/// A Kubernetes resource quantity: `500m` CPU, `256Mi` memory, `1.5G`, `2e3`.
///
/// The text is kept as written (so it round-trips); `value` is the exact decimal amount.
public struct Quantity: SpecValue, Hashable, CustomStringConvertible {
    public let text: String
    /// The amount in base units (cores, bytes).
    public let value: Decimal

    private static let binary: [(String, Int)] = [("Ki", 10), ("Mi", 20), ("Gi", 30), ("Ti", 40), ("Pi", 50), ("Ei", 60)]
    private static let decimal: [(String, Int)] = [("n", -9), ("u", -6), ("m", -3), ("", 0), ("k", 3), ("M", 6), ("G", 9), ("T", 12), ("P", 15), ("E", 18)]

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case empty, malformed(String), badSuffix(String, String), tooLarge(String)

        public var description: String {
            switch self {
            case .empty: return "quantity must not be empty"
            case .malformed(let text): return "\"\(text)\" is not a quantity (write e.g. \"500m\", \"2\", \"256Mi\" or \"1G\")"
            case .badSuffix(let text, let suffix):
                var hint = "suffixes are n u m k M G T P E (powers of 10) and Ki Mi Gi Ti Pi Ei (powers of 2)"
                if suffix.count == 2, suffix.last == "B" || suffix.last == "b", let first = suffix.first {
                    let number = text.dropLast(suffix.count)
                    hint = "write \"\(number)\(first.uppercased() == "K" ? "k" : first.uppercased())\" for powers of 10 or \"\(number)\(first.uppercased())i\" for powers of 2"
                }
                return "quantity \"\(text)\" has an unknown suffix \"\(suffix)\" (\(hint))"
            case .tooLarge(let text): return "quantity \"\(text)\" is too large"
            }
        }
    }

    public init(_ text: String) throws(ParseError) {
        self.text = text
        self.value = try Quantity.parse(text)
    }

    static func parse(_ text: String) throws(ParseError) -> Decimal {
        if text.isEmpty { throw .empty }
        var rest = Substring(text)
        var negative = false
        if rest.first == "+" || rest.first == "-" {
            negative = rest.first == "-"
            rest = rest.dropFirst()
        }
        let number = rest.prefix(while: { $0.isASCIIDigitCharacter || $0 == "." })
        guard !number.isEmpty, number.contains(where: \.isASCIIDigitCharacter), number.filter({ $0 == "." }).count <= 1
        else { throw .malformed(text) }
        // Past Decimal's range (over ~160 digits) the digits read as NaN.
        guard var mantissa = decimal(digits: number) else { throw .tooLarge(text) }
        let suffix = String(rest.dropFirst(number.count))
        var result: Decimal
        if let (_, power) = binary.first(where: { $0.0 == suffix }) {
            result = mantissa * pow(Decimal(2), power)
        } else if let (_, exponent) = decimal.first(where: { $0.0 == suffix }) {
            result = exponent >= 0 ? mantissa * pow(Decimal(10), exponent) : mantissa / pow(Decimal(10), -exponent)
        } else if let first = suffix.first, first == "e" || first == "E",
                  let exponent = Int(suffix.dropFirst()), suffix.count > 1 {
            guard abs(exponent) <= 30 else { throw .tooLarge(text) }
            result = exponent >= 0 ? mantissa * pow(Decimal(10), exponent) : mantissa / pow(Decimal(10), -exponent)
        } else {
            if suffix.contains(where: { !$0.isLetter }) { throw .malformed(text) }
            throw .badSuffix(text, suffix)
        }
        if result > Decimal(string: "9223372036854775807")! { throw .tooLarge(text) }
        if negative { mantissa = -mantissa; result = -result }
        return result
    }

    /// ASCII digits with at most one point, read exactly (up to Decimal's 38 digits), without
    /// a locale: `Decimal(string:locale:)` brings ICU's number-format data into memory. Nil
    /// past Decimal's range.
    private static func decimal(digits: Substring) -> Decimal? {
        var significand = Decimal(0), fraction = 0, afterPoint = false
        for character in digits {
            guard let digit = character.wholeNumberValue else { afterPoint = true; continue }
            significand = significand * 10 + Decimal(digit)
            if afterPoint { fraction += 1 }
        }
        let value = Decimal(sign: .plus, exponent: -fraction, significand: significand)
        return value.isNaN ? nil : value
    }

    public var isNegative: Bool { value < 0 }

    /// The text the Kubernetes API server stores for this quantity in a built-in object (a
    /// container's resources): it parses and writes quantities again in canonical form, so
    /// `0.5` reads back as `500m`, `1024Mi` as `1Gi` and `1.5Gi` as `1536Mi`. The suffix family
    /// is kept (powers of 2 stay powers of 2 when the value is a whole number of at least 1024);
    /// the number is the integer mantissa with the largest suffix that keeps it whole; precision
    /// finer than nano units is rounded up, as the API server does.
    public var canonical: String {
        var nanos = value * 1_000_000_000
        if Self.isWhole(nanos) == false {
            var rounded = Decimal()
            NSDecimalRound(&rounded, &nanos, 0, value < 0 ? .down : .up)
            nanos = rounded
        }
        if nanos == 0 { return "0" }
        let negative = nanos < 0
        if negative { nanos = -nanos }
        let sign = negative ? "-" : ""
        // The suffix family as written: `Ki`.. (powers of 2), `e3` (an exponent), else decimal.
        var unsigned = Substring(text.trimmingSpaces())
        if unsigned.first == "+" || unsigned.first == "-" { unsigned = unsigned.dropFirst() }
        let suffix = unsigned.drop { $0.isASCIIDigitCharacter || $0 == "." }
        let binary = Self.binary.contains { $0.0 == suffix }
        let exponentForm = suffix.count > 1 && (suffix.first == "e" || suffix.first == "E")
        let whole = nanos / 1_000_000_000
        if binary, whole >= 1024, Self.isWhole(whole) {
            var mantissa = whole, power = 0
            while power < 60, Self.isWhole(mantissa / 1024) {
                mantissa /= 1024
                power += 10
            }
            return sign + Self.integerText(mantissa) + (Self.binary.first { $0.1 == power }?.0 ?? "")
        }
        var mantissa = nanos, exponent = -9
        while exponent < 18, Self.isWhole(mantissa / 1000) {
            mantissa /= 1000
            exponent += 3
        }
        if exponentForm {
            return sign + Self.integerText(mantissa) + (exponent == 0 ? "" : "e\(exponent)")
        }
        return sign + Self.integerText(mantissa) + (Self.decimal.first { $0.1 == exponent }?.0 ?? "")
    }

    private static func isWhole(_ value: Decimal) -> Bool {
        var copy = value, rounded = Decimal()
        NSDecimalRound(&rounded, &copy, 0, .plain)
        return rounded == value
    }

    private static func integerText(_ value: Decimal) -> String {
        NSDecimalNumber(decimal: value).stringValue
    }

    /// Whole units, rounded up (bytes of memory).
    public var roundedUp: Int64 {
        var v = value, r = Decimal()
        NSDecimalRound(&r, &v, 0, .up)
        return NSDecimalNumber(decimal: r).int64Value
    }

    /// Thousandths of a unit, rounded up (millicores of CPU).
    public var milliValue: Int64 {
        var v = value * 1000, r = Decimal()
        NSDecimalRound(&r, &v, 0, .up)
        return NSDecimalNumber(decimal: r).int64Value
    }

    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> Quantity? {
        guard case .scalar(let text, _) = node.value else {
            context.fail("expected a quantity such as \"500m\" or \"256Mi\", got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        do {
            return try Quantity(text.trimmingSpaces())
        } catch {
            context.fail(error.description, at: node.mark)
            return nil
        }
    }

    public func encode() -> SpecNode { .string(text) }

    public static var schema: Schema {
        var schema = Schema(type: nil)
        schema.intOrString = true
        schema.pattern = "^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$"
        return schema
    }

    public var description: String { text }

    public static func == (lhs: Quantity, rhs: Quantity) -> Bool { lhs.text == rhs.text }
    public func hash(into hasher: inout Hasher) { hasher.combine(text) }
}

extension Rule where V == Quantity {
    /// Zero or more.
    public static var nonNegative: Rule {
        Rule(check: { $0.isNegative ? "quantity \"\($0.text)\" must not be negative" : nil })
    }
}
