import Foundation
import Testing
@testable import CapstanModel

/// The JSON reader gives what the Codable path (JSONDecoder) gave, and refuses what it refuses.
@Suite struct JSONReaderTests {
    static func viaCodable(_ text: String) throws -> SpecNode {
        try JSONDecoder().decode(CodableBridge.Capture.self, from: Data(text.utf8)).node
    }

    static func read(_ text: String) throws -> SpecNode { try JSONReader.parse(Data(text.utf8)) }

    /// A random tree with the awkward parts: escapes, control characters, non-ASCII and
    /// astral-plane text, negative and large numbers, fractions, empty containers, repeated keys.
    static func tree<G: RandomNumberGenerator>(_ generator: inout G, depth: Int = 0) -> SpecNode {
        let pieces = ["a", "Z", "\"", "\\", "/", "\n", "\t", "\u{01}", "\u{1F}", "é", "日本", "😀", " ", "{", "]", ":", ","]
        func text() -> String { (0..<Int.random(in: 0...6, using: &generator)).map { _ in pieces.randomElement(using: &generator)! }.joined() }
        switch Int.random(in: 0...(depth > 4 ? 5 : 7), using: &generator) {
        case 0: return .null
        case 1: return .bool(Bool.random(using: &generator))
        case 2: return .int(Int.random(in: Int.min...Int.max, using: &generator))
        case 3: return .double(Double(Int.random(in: -1_000_000...1_000_000, using: &generator)) / 64)
        case 4, 5: return .string(text())
        case 6: return .sequence((0..<Int.random(in: 0...4, using: &generator)).map { _ in tree(&generator, depth: depth + 1) })
        default:
            return .mapping((0..<Int.random(in: 0...5, using: &generator)).map { _ in (text(), tree(&generator, depth: depth + 1)) })
        }
    }

    @Test func randomTreesReadAsTheCodablePathReadsThem() throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2_000 {
            let node = Self.tree(&generator)
            for pretty in [false, true] {
                let text = JSONEmitter.emit(node, pretty: pretty)
                let expected = try Self.viaCodable(text)
                let actual = try Self.read(text)
                #expect(actual == expected, "\(text)")
            }
        }
    }

    @Test func theCRDsReadAsBefore() throws {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../crds").standardized
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".yaml") }
        #expect(files.count >= 6)
        for file in files {
            let yaml = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
            guard let node = try YAMLReader().documents(yaml).first?.root else { continue }
            let text = JSONEmitter.emit(node, pretty: false)
            #expect(try Self.read(text) == Self.viaCodable(text), "\(file)")
        }
    }

    @Test func escapesNumbersAndRepeatedKeys() throws {
        #expect(try Self.read(#""\ud83d\ude00 \u00e9\u0041\n\/""#) == .string("😀 éA\n/"))
        #expect(try Self.read(#"{"b":1,"a":2,"b":3}"#) == .mapping([("a", .int(2)), ("b", .int(1))]))
        #expect(try Self.read(#"{"b":1,"a":2,"b":3}"#) == Self.viaCodable(#"{"b":1,"a":2,"b":3}"#))
        #expect(try Self.read("12345678901234567890") == .double(Double("12345678901234567890")!))
        #expect(try Self.read("-0") == .int(0))
        #expect(try Self.read("1.5e3") == .double(1500))
        #expect(try Self.read(" [ ] ") == .sequence([]))
        #expect(try Self.read("{}") == .mapping([]))
        #expect(try Self.read("2.0") == Self.viaCodable("2.0"))
        #expect(try Self.read("-7") == .int(-7))
    }

    @Test(arguments: [
        "", " ", "{", "{\"a\" 1}", "{a:1}", "01", "1.", ".5", "-", "1e", "+1", "tru", "nul", "[1 2]",
        "\"abc", "\"\\x\"", "\"\\u12G4\"", "\"\\ud83d\"", "\"\\ude00\"", "\"a\u{01}b\"", "1 2", "{} x", "1e400", "NaN", "'a'",
    ])
    func invalidInputIsRefused(_ text: String) {
        #expect(throws: JSONReader.Problem.self) { try Self.read(text) }
        #expect(throws: (any Error).self) { try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]) }
    }

    /// RFC 8259 has no trailing commas (Foundation's parser lets them through).
    @Test(arguments: ["[1,]", "{\"a\":1,}", "[,]"])
    func trailingCommasAreRefused(_ text: String) {
        #expect(throws: JSONReader.Problem.self) { try Self.read(text) }
    }

    @Test func invalidUTF8AndDeepNestingAreRefused() {
        #expect(throws: JSONReader.Problem.self) { try JSONReader.parse(Data([0x22, 0xC3, 0x28, 0x22])) }
        #expect(throws: JSONReader.Problem.self) { try JSONReader.parse(Data([0x22, 0xFF, 0x22])) }
        let deep = String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)
        #expect(throws: JSONReader.Problem.self) { try Self.read(deep) }
        let fine = String(repeating: "[", count: 500) + String(repeating: "]", count: 500)
        #expect((try? Self.read(fine)) != nil)
    }
}
