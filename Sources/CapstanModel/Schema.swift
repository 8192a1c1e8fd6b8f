/// An OpenAPI v3 schema as Kubernetes' `apiextensions.k8s.io/v1` accepts it (structural).
public struct Schema: Sendable, Equatable {
    public enum JSONType: String, Sendable {
        case object, array, string, integer, number, boolean
    }

    public var type: JSONType?
    public var format: String?
    public var description: String?
    public var properties: [(String, Schema)] = []
    public var required: [String] = []
    /// Items of an array: zero or one schema (an array keeps the struct recursive).
    public var itemSchemas: [Schema] = []
    /// Values of a string-keyed map: zero or one schema.
    public var valueSchemas: [Schema] = []
    public var enumValues: [String]?
    public var pattern: String?
    public var minimum: Double?
    public var maximum: Double?
    public var minLength: Int?
    public var maxLength: Int?
    public var minItems: Int?
    public var maxItems: Int?
    public var defaultValue: SpecNode?
    public var intOrString = false
    public var preserveUnknownFields = false
    /// `oneOf` alternatives, each naming only required fields (allowed in structural schemas).
    public var oneOfRequired: [[String]] = []
    public var listType: String?
    public var listMapKeys: [String] = []

    public init(type: JSONType?) {
        self.type = type
    }

    public static func == (lhs: Schema, rhs: Schema) -> Bool {
        lhs.encode() == rhs.encode()
    }

    public var items: Schema? {
        get { itemSchemas.first }
        set { itemSchemas = newValue.map { [$0] } ?? [] }
    }

    /// The schema as a tree, keys in the order Kubernetes documentation uses.
    public func encode() -> SpecNode {
        var entries: [(String, SpecNode)] = []
        if let description { entries.append(("description", .string(description))) }
        if let type { entries.append(("type", .string(type.rawValue))) }
        if let format { entries.append(("format", .string(format))) }
        if let defaultValue { entries.append(("default", defaultValue)) }
        if let enumValues { entries.append(("enum", .sequence(enumValues.map(SpecNode.string)))) }
        if let pattern { entries.append(("pattern", .string(pattern))) }
        if let minimum { entries.append(("minimum", .double(minimum))) }
        if let maximum { entries.append(("maximum", .double(maximum))) }
        if let minLength { entries.append(("minLength", .int(minLength))) }
        if let maxLength { entries.append(("maxLength", .int(maxLength))) }
        if let minItems { entries.append(("minItems", .int(minItems))) }
        if let maxItems { entries.append(("maxItems", .int(maxItems))) }
        if let items { entries.append(("items", items.encode())) }
        if let values = valueSchemas.first { entries.append(("additionalProperties", values.encode())) }
        if !properties.isEmpty {
            entries.append(("properties", .mapping(properties.map { ($0.0, $0.1.encode()) })))
        }
        if !required.isEmpty { entries.append(("required", .sequence(required.map(SpecNode.string)))) }
        if !oneOfRequired.isEmpty {
            entries.append(("oneOf", .sequence(oneOfRequired.map {
                .mapping([("required", .sequence($0.map(SpecNode.string)))])
            })))
        }
        if intOrString { entries.append(("x-kubernetes-int-or-string", .bool(true))) }
        if preserveUnknownFields { entries.append(("x-kubernetes-preserve-unknown-fields", .bool(true))) }
        if let listType { entries.append(("x-kubernetes-list-type", .string(listType))) }
        if !listMapKeys.isEmpty {
            entries.append(("x-kubernetes-list-map-keys", .sequence(listMapKeys.map(SpecNode.string))))
        }
        return .mapping(entries)
    }
}
