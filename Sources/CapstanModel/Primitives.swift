import Foundation

extension String: SpecValue {
    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> String? {
        guard case .scalar(let text, _) = node.value else {
            context.fail("expected a string, got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        return text
    }

    public func encode() -> SpecNode { .string(self) }
    public static var schema: Schema { Schema(type: .string) }
}

extension Int: SpecValue {
    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> Int? {
        guard case .scalar(let text, let quoted) = node.value, !quoted else {
            context.fail("expected an integer, got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        if let value = Int(text.hasPrefix("+") ? String(text.dropFirst()) : text) {
            return value
        }
        let digits = text.drop(while: { $0 == "-" || $0 == "+" })
        if !digits.isEmpty, digits.allSatisfy(\.isASCIIDigitCharacter) {
            context.fail("integer \(text) is out of range", at: node.mark)
        } else {
            context.fail("expected an integer, got \(node.shapeDescription)", at: node.mark)
        }
        return nil
    }

    public func encode() -> SpecNode { .int(self) }
    public static var schema: Schema {
        var schema = Schema(type: .integer)
        schema.format = "int64"
        return schema
    }
}

extension Character {
    var isASCIIDigitCharacter: Bool { asciiValue.map { $0 >= 0x30 && $0 <= 0x39 } ?? false }
}

extension Bool: SpecValue {
    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> Bool? {
        if case .scalar(let text, false) = node.value {
            switch text {
            case "true", "True", "TRUE": return true
            case "false", "False", "FALSE": return false
            case "yes", "Yes", "YES", "on", "On", "ON", "y", "Y", "no", "No", "NO", "off", "Off", "OFF", "n", "N":
                context.fail("expected true or false, got \"\(text)\" (YAML 1.1 spellings are not accepted: write true or false)", at: node.mark)
                return nil
            default: break
            }
        }
        context.fail("expected true or false, got \(node.shapeDescription)", at: node.mark)
        return nil
    }

    public func encode() -> SpecNode { .bool(self) }
    public static var schema: Schema { Schema(type: .boolean) }
}

extension Double: SpecValue {
    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> Double? {
        guard case .scalar(let text, let quoted) = node.value, !quoted else {
            context.fail("expected a number, got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        let isNumeric = !text.isEmpty && text.allSatisfy { $0.isASCIIDigitCharacter || "+-.eE".contains($0) }
            && text.contains(where: \.isASCIIDigitCharacter)
        guard isNumeric, let value = Double(text) else {
            context.fail("expected a number, got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        guard value.isFinite else {
            context.fail("number \(text) is out of range", at: node.mark)
            return nil
        }
        return value
    }

    public func encode() -> SpecNode { .double(self) }
    public static var schema: Schema {
        var schema = Schema(type: .number)
        schema.format = "double"
        return schema
    }
}

extension Array: SpecValue where Element: SpecValue {
    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> [Element]? {
        guard case .sequence(let items) = node.value else {
            context.fail("expected a list, got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        var result: [Element] = []
        result.reserveCapacity(items.count)
        for (index, item) in items.enumerated() {
            if case .null = item.value {
                context.at(.index(index)) { $0.fail("list items must not be null", at: item.mark ?? node.mark) }
                continue
            }
            if let element = context.at(.index(index), { Element.decode(item, &$0) }) {
                result.append(element)
            }
        }
        return result
    }

    public func encode() -> SpecNode { .sequence(map { $0.encode() }) }
    public static var schema: Schema {
        var schema = Schema(type: .array)
        schema.items = Element.schema
        return schema
    }
}

/// A string-to-string map (labels, annotations); encoded with sorted keys.
public struct StringMap: SpecValue, Hashable, Sequence, ExpressibleByDictionaryLiteral {
    public var values: [String: String]

    public init(_ values: [String: String] = [:]) { self.values = values }
    public init(dictionaryLiteral elements: (String, String)...) {
        values = Dictionary(elements, uniquingKeysWith: { _, last in last })
    }

    public subscript(key: String) -> String? {
        get { values[key] }
        set { values[key] = newValue }
    }

    public var isEmpty: Bool { values.isEmpty }
    public var count: Int { values.count }
    public func makeIterator() -> Dictionary<String, String>.Iterator { values.makeIterator() }

    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> StringMap? {
        guard let entries = node.entries else {
            context.fail("expected a mapping of strings, got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        var values: [String: String] = [:]
        for entry in entries {
            switch entry.value.value {
            case .scalar(let text, _): values[entry.key] = text
            case .null: values[entry.key] = ""
            default:
                context.fail("expected a string value, got \(entry.value.shapeDescription)", field: entry.key, at: entry.value.mark)
            }
        }
        return StringMap(values)
    }

    public func encode() -> SpecNode {
        .mapping(values.keys.sorted().map { ($0, .string(values[$0]!)) })
    }

    public static var schema: Schema {
        var schema = Schema(type: .object)
        schema.valueSchemas = [Schema(type: .string)]
        return schema
    }
}

/// A value that is an integer or a string (`maxSurge: 1` or `maxSurge: 25%`; `port: 8080` or `port: http`).
public enum IntOrString: SpecValue, Hashable, CustomStringConvertible {
    case int(Int)
    case string(String)

    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> IntOrString? {
        guard case .scalar(let text, let quoted) = node.value else {
            context.fail("expected an integer or a string, got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        if !quoted, let value = Int(text) { return .int(value) }
        return .string(text)
    }

    public func encode() -> SpecNode {
        switch self {
        case .int(let value): return .int(value)
        case .string(let value): return .string(value)
        }
    }

    public static var schema: Schema {
        var schema = Schema(type: nil)
        schema.intOrString = true
        return schema
    }

    public var description: String {
        switch self {
        case .int(let value): return String(value)
        case .string(let value): return value
        }
    }

    /// Resolves an absolute count or a percentage of `total` (rounding up or down as asked).
    public func scaled(total: Int, roundUp: Bool) -> Int? {
        switch self {
        case .int(let value): return value
        case .string(let text):
            guard text.hasSuffix("%"), let percent = Int(text.dropLast()) else { return nil }
            let exact = Double(total) * Double(percent) / 100
            return Int(roundUp ? exact.rounded(.up) : exact.rounded(.down))
        }
    }
}

/// A string enumeration with a fixed set of values; the CRD lists them as `enum`.
public protocol SpecEnum: SpecValue, RawRepresentable, CaseIterable where RawValue == String {}

extension SpecEnum {
    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> Self? {
        guard case .scalar(let text, _) = node.value else {
            context.fail("expected a string, got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        if let value = Self(rawValue: text) { return value }
        let allowed = allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
        var message = "unsupported value \"\(text)\": must be one of \(allowed)"
        if let match = allCases.first(where: { $0.rawValue.lowercased() == text.lowercased() }) {
            message += " (did you mean \"\(match.rawValue)\"?)"
        }
        context.fail(message, at: node.mark)
        return nil
    }

    public func encode() -> SpecNode { .string(rawValue) }

    public static var schema: Schema {
        var schema = Schema(type: .string)
        schema.enumValues = allCases.map(\.rawValue)
        return schema
    }
}

/// A point in time, written as RFC 3339 (`2026-11-22T10:00:00Z`), as Kubernetes' `metav1.Time`.
public struct Timestamp: SpecValue, Hashable, Comparable, CustomStringConvertible {
    public var date: Date

    public init(_ date: Date) { self.date = date }

    /// Parses RFC 3339 text; nil when it is not.
    public init?(rfc3339 text: String) {
        guard let date = RFC3339.parse(text) else { return nil }
        self.date = date
    }

    public static func < (lhs: Timestamp, rhs: Timestamp) -> Bool { lhs.date < rhs.date }

    public static func decode(_ node: SpecNode, _ context: inout DecodeContext) -> Timestamp? {
        guard case .scalar(let text, _) = node.value, let date = RFC3339.parse(text) else {
            context.fail("expected an RFC 3339 time such as \"2026-11-22T10:00:00Z\", got \(node.shapeDescription)", at: node.mark)
            return nil
        }
        return Timestamp(date)
    }

    public func encode() -> SpecNode { .string(description) }

    public static var schema: Schema {
        var schema = Schema(type: .string)
        schema.format = "date-time"
        return schema
    }

    public var description: String { RFC3339.format(date) }

    /// With exactly six fractional digits, as Kubernetes' `metav1.MicroTime` must be written
    /// (`2026-11-22T10:00:00.000000Z`).
    public var microTime: String { RFC3339.format(date, sixDigits: true) }

    /// The time as it reads back from its text (microsecond precision): what a stored object holds.
    public var canonical: Timestamp { Timestamp(RFC3339.parse(description) ?? date) }
}

/// RFC 3339 parsing and formatting without formatters (which are neither fast nor Sendable).
enum RFC3339 {
    static func parse(_ text: String) -> Date? {
        let chars = Array(text.utf8)
        func number(_ start: Int, _ count: Int) -> Int? {
            guard start + count <= chars.count else { return nil }
            var value = 0
            for c in chars[start..<start + count] {
                guard c >= 48, c <= 57 else { return nil }
                value = value * 10 + Int(c - 48)
            }
            return value
        }
        guard chars.count >= 20,
              let year = number(0, 4), chars[4] == 45, let month = number(5, 2), chars[7] == 45,
              let day = number(8, 2), chars[10] == 84 || chars[10] == 116 || chars[10] == 32,
              let hour = number(11, 2), chars[13] == 58, let minute = number(14, 2), chars[16] == 58,
              let second = number(17, 2),
              (1...12).contains(month), (1...daysIn(month: month, year: year)).contains(day),
              hour < 24, minute < 60, second < 61
        else { return nil }
        var index = 19
        var fraction = 0.0
        if index < chars.count, chars[index] == 46 {
            index += 1
            var scale = 0.1
            let start = index
            while index < chars.count, chars[index] >= 48, chars[index] <= 57 {
                fraction += Double(chars[index] - 48) * scale
                scale /= 10
                index += 1
            }
            guard index > start else { return nil }
        }
        guard index < chars.count else { return nil }
        var offset = 0
        switch chars[index] {
        case 90, 122: index += 1
        case 43, 45:
            guard let oh = number(index + 1, 2), chars.count > index + 3, chars[index + 3] == 58,
                  let om = number(index + 4, 2), oh < 24, om < 60 else { return nil }
            offset = (oh * 60 + om) * 60 * (chars[index] == 45 ? -1 : 1)
            index += 6
        default: return nil
        }
        guard index == chars.count else { return nil }
        let days = daysFromCivil(year: year, month: month, day: day)
        let seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
        return Date(timeIntervalSince1970: Double(seconds) + fraction)
    }

    /// Without Foundation's calendars, whose first use loads ICU's data (MiBs kept resident).
    static func format(_ date: Date, sixDigits: Bool = false) -> String {
        let interval = date.timeIntervalSince1970
        let whole = Int(interval.rounded(.down))
        let micros = Int(((interval - Double(whole)) * 1_000_000).rounded())
        var days = whole / 86400
        var rest = whole % 86400
        if rest < 0 { rest += 86400; days -= 1 }
        let (y, m, d) = civilFromDays(days)
        func pad(_ v: Int, _ width: Int = 2) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        var out = "\(pad(y, 4))-\(pad(m))-\(pad(d))T\(pad(rest / 3600)):\(pad(rest % 3600 / 60)):\(pad(rest % 60))"
        if sixDigits {
            out += "." + pad(min(micros, 999_999), 6)
        } else if micros > 0, micros < 1_000_000 {
            var frac = pad(micros, 6)
            while frac.hasSuffix("0") { frac.removeLast() }
            out += "." + frac
        }
        return out + "Z"
    }

    static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146097 + doe - 719468
    }

    static func civilFromDays(_ days: Int) -> (Int, Int, Int) {
        let z = days + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let doe = z - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }
}
