/// Connects `SpecNode` to `Codable`, so every kind works with JSONEncoder/JSONDecoder and
/// Yams' YAMLEncoder/YAMLDecoder while decoding still runs through the one field table.
enum CodableBridge {
    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { return nil }
    }

    /// A Decodable that captures whatever value it is given as a `SpecNode`.
    struct Capture: Decodable {
        var node: SpecNode

        init(from decoder: any Decoder) throws {
            node = try CodableBridge.node(from: decoder)
        }
    }

    /// A Encodable that writes a `SpecNode`.
    struct Emit: Encodable {
        var node: SpecNode
        func encode(to encoder: any Encoder) throws { try CodableBridge.encode(node, to: encoder) }
    }

    static func node(from decoder: any Decoder) throws -> SpecNode {
        if let keyed = try? decoder.container(keyedBy: AnyKey.self) {
            var entries: [SpecNode.Entry] = []
            for key in keyed.allKeys.sorted(by: { $0.stringValue < $1.stringValue }) {
                entries.append(.init(key.stringValue, try keyed.decode(Capture.self, forKey: key).node))
            }
            return SpecNode(.mapping(entries))
        }
        if var unkeyed = try? decoder.unkeyedContainer() {
            var items: [SpecNode] = []
            while !unkeyed.isAtEnd { items.append(try unkeyed.decode(Capture.self).node) }
            return SpecNode(.sequence(items))
        }
        let single = try decoder.singleValueContainer()
        if single.decodeNil() { return .null }
        if let value = try? single.decode(Bool.self) { return .bool(value) }
        if let value = try? single.decode(Int.self) { return .int(value) }
        if let value = try? single.decode(Double.self) { return .double(value) }
        return .string(try single.decode(String.self))
    }

    static func encode(_ node: SpecNode, to encoder: any Encoder) throws {
        switch node.value {
        case .null:
            var single = encoder.singleValueContainer()
            try single.encodeNil()
        case .scalar(let text, let quoted):
            var single = encoder.singleValueContainer()
            if quoted {
                try single.encode(text)
            } else if let value = Int(text) {
                try single.encode(value)
            } else if text == "true" || text == "false" {
                try single.encode(text == "true")
            } else if JSONEmitter.isJSONLiteral(text), let value = Double(text) {
                try single.encode(value)
            } else {
                try single.encode(text)
            }
        case .sequence(let items):
            var unkeyed = encoder.unkeyedContainer()
            for item in items { try unkeyed.encode(Emit(node: item)) }
        case .mapping(let entries):
            var keyed = encoder.container(keyedBy: AnyKey.self)
            for entry in entries { try keyed.encode(Emit(node: entry.value), forKey: AnyKey(stringValue: entry.key)) }
        }
    }
}

import Foundation

extension SpecNode {
    /// Parses JSON text (our own stored JSON, or an API's) quickly, without positions.
    public static func fromJSON(_ data: Data) throws -> SpecNode {
        try JSONReader.parse(data)
    }
}
