import Foundation

/// RFC 8259 JSON straight into a `SpecNode`, without positions: the API server's responses
/// and watch events, and our own stored JSON. It replaces a Codable round trip that spent
/// most of the daemon's CPU under load (a thrown and caught error per scalar). The result is
/// the one that path gave: mapping keys sorted (a repeated key: the first one wins), strings
/// quoted scalars, numbers unquoted (integers that fit in `Int` as written, others as
/// `Double`). It is stricter where RFC 8259 is (a trailing comma is refused). Invalid input (bad UTF-8, control characters in strings, lone surrogates,
/// trailing text, nesting deeper than 512) throws.
public enum JSONReader {
    public struct Problem: Error, CustomStringConvertible, Equatable {
        public var message: String
        public var offset: Int
        public var description: String { "invalid JSON at byte \(offset): \(message)" }
    }

    public static let maximumDepth = 512

    public static func parse(_ data: Data) throws(Problem) -> SpecNode {
        let result: Result<SpecNode, Problem> = data.withUnsafeBytes { raw in
            var reader = Reader(bytes: raw.bindMemory(to: UInt8.self))
            do throws(Problem) {
                reader.skipSpace()
                let node = try reader.value(depth: 0)
                reader.skipSpace()
                guard reader.index == reader.bytes.count else { throw reader.problem("unexpected text after the value") }
                return .success(node)
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    private struct Reader {
        let bytes: UnsafeBufferPointer<UInt8>
        var index = 0

        init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

        func problem(_ message: String) -> Problem { Problem(message: message, offset: index) }

        mutating func skipSpace() {
            while index < bytes.count {
                switch bytes[index] {
                case 0x20, 0x0A, 0x0D, 0x09: index += 1
                default: return
                }
            }
        }

        mutating func value(depth: Int) throws(Problem) -> SpecNode {
            guard index < bytes.count else { throw problem("unexpected end of input") }
            switch bytes[index] {
            case UInt8(ascii: "{"): return try object(depth: depth + 1)
            case UInt8(ascii: "["): return try array(depth: depth + 1)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): try literal("true"); return .bool(true)
            case UInt8(ascii: "f"): try literal("false"); return .bool(false)
            case UInt8(ascii: "n"): try literal("null"); return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
            default: throw problem("unexpected character")
            }
        }

        mutating func literal(_ word: StaticString) throws(Problem) {
            let count = word.utf8CodeUnitCount
            guard index + count <= bytes.count else { throw problem("unexpected end of input") }
            for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] {
                throw problem("unexpected character")
            }
            index += count
        }

        mutating func object(depth: Int) throws(Problem) -> SpecNode {
            guard depth <= JSONReader.maximumDepth else { throw problem("nested deeper than \(JSONReader.maximumDepth)") }
            index += 1
            var entries: [SpecNode.Entry] = []
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
                index += 1
                return SpecNode(.mapping(entries))
            }
            var sorted = true
            while true {
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw problem("expected a key") }
                let key = try string()
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw problem("expected ':'") }
                index += 1
                skipSpace()
                let value = try value(depth: depth)
                if let last = entries.last, last.key >= key { sorted = false }
                entries.append(SpecNode.Entry(key, value))
                skipSpace()
                guard index < bytes.count else { throw problem("unexpected end of input") }
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                guard bytes[index] == UInt8(ascii: "}") else { throw problem("expected ',' or '}'") }
                index += 1
                break
            }
            if !sorted {
                // Of repeated keys the first one is kept, as JSONDecoder keeps it.
                var byKey: [String: SpecNode] = [:]
                for entry in entries where byKey[entry.key] == nil { byKey[entry.key] = entry.value }
                entries = byKey.keys.sorted().map { SpecNode.Entry($0, byKey[$0]!) }
            }
            return SpecNode(.mapping(entries))
        }

        mutating func array(depth: Int) throws(Problem) -> SpecNode {
            guard depth <= JSONReader.maximumDepth else { throw problem("nested deeper than \(JSONReader.maximumDepth)") }
            index += 1
            var items: [SpecNode] = []
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
                index += 1
                return SpecNode(.sequence(items))
            }
            while true {
                skipSpace()
                items.append(try value(depth: depth))
                skipSpace()
                guard index < bytes.count else { throw problem("unexpected end of input") }
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                guard bytes[index] == UInt8(ascii: "]") else { throw problem("expected ',' or ']'") }
                index += 1
                return SpecNode(.sequence(items))
            }
        }

        mutating func number() throws(Problem) -> SpecNode {
            let start = index
            func digits(_ reader: inout Reader) -> Int {
                let from = reader.index
                while reader.index < reader.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(reader.bytes[reader.index]) { reader.index += 1 }
                return reader.index - from
            }
            if bytes[index] == UInt8(ascii: "-") { index += 1 }
            let integerStart = index
            let integerDigits = digits(&self)
            guard integerDigits > 0 else { throw problem("expected a digit") }
            if integerDigits > 1, bytes[integerStart] == UInt8(ascii: "0") { throw Problem(message: "leading zero", offset: integerStart) }
            var integral = true
            if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
                index += 1
                integral = false
                guard digits(&self) > 0 else { throw problem("expected a digit after '.'") }
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
                index += 1
                integral = false
                if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
                guard digits(&self) > 0 else { throw problem("expected a digit in the exponent") }
            }
            let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
            if integral, let value = Int(text) { return .int(value) }
            guard let value = Double(text), value.isFinite else { throw Problem(message: "number out of range", offset: start) }
            return .double(value)
        }

        mutating func string() throws(Problem) -> String {
            index += 1  // the opening quote
            let start = index
            // The common case: no escapes, one slice; ASCII needs no validation (the generic
            // `String(validating:)` was 3% of the operator's CPU time, reading API responses).
            var ascii = true
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\"") {
                    let slice = UnsafeBufferPointer(rebasing: bytes[start..<index])
                    index += 1
                    if ascii { return String(decoding: slice, as: UTF8.self) }
                    guard let text = String(validating: slice, as: UTF8.self) else { throw Problem(message: "invalid UTF-8", offset: start) }
                    return text
                }
                if byte == UInt8(ascii: "\\") { break }
                if byte < 0x20 { throw problem("control character in a string") }
                if byte >= 0x80 { ascii = false }
                index += 1
            }
            var buffer = Array(UnsafeBufferPointer(rebasing: bytes[start..<index]))
            while index < bytes.count {
                let byte = bytes[index]
                switch byte {
                case UInt8(ascii: "\""):
                    index += 1
                    guard let text = String(validating: buffer, as: UTF8.self) else { throw Problem(message: "invalid UTF-8", offset: start) }
                    return text
                case UInt8(ascii: "\\"):
                    index += 1
                    guard index < bytes.count else { throw problem("unexpected end of input") }
                    let escaped = bytes[index]
                    index += 1
                    switch escaped {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): buffer.append(escaped)
                    case UInt8(ascii: "b"): buffer.append(0x08)
                    case UInt8(ascii: "f"): buffer.append(0x0C)
                    case UInt8(ascii: "n"): buffer.append(0x0A)
                    case UInt8(ascii: "r"): buffer.append(0x0D)
                    case UInt8(ascii: "t"): buffer.append(0x09)
                    case UInt8(ascii: "u"):
                        var scalar = try hex4()
                        if (0xD800...0xDBFF).contains(scalar) {
                            guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") else {
                                throw problem("lone surrogate")
                            }
                            index += 2
                            let low = try hex4()
                            guard (0xDC00...0xDFFF).contains(low) else { throw problem("lone surrogate") }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        } else if (0xDC00...0xDFFF).contains(scalar) {
                            throw problem("lone surrogate")
                        }
                        guard let unicode = Unicode.Scalar(scalar) else { throw problem("invalid escape") }
                        buffer.append(contentsOf: UTF8.encode(unicode)!)
                    default:
                        throw problem("invalid escape")
                    }
                default:
                    if byte < 0x20 { throw problem("control character in a string") }
                    buffer.append(byte)
                    index += 1
                }
            }
            throw problem("unterminated string")
        }

        mutating func hex4() throws(Problem) -> UInt32 {
            guard index + 4 <= bytes.count else { throw problem("unexpected end of input") }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let byte = bytes[index]
                let digit: UInt8
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
                default: throw problem("invalid \\u escape")
                }
                value = value << 4 | UInt32(digit)
                index += 1
            }
            return value
        }
    }
}
