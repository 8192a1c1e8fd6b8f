import Foundation
import Testing
@testable import CapstanModel

/// The CRDs in crds/ are exactly the generator's output, structurally valid for
/// apiextensions.k8s.io/v1, and accept every valid example object.
@Suite struct CRDTests {
    @Test(arguments: ResourceKind.allCases)
    func committedFileMatchesGenerator(kind: ResourceKind) throws {
        let path = repositoryRoot + "/crds/" + CRDGenerator.fileName(for: kind)
        let committed = try readText(path)
        #expect(committed == CRDGenerator.yaml(for: kind), "crds/ is stale: run hack/generate-crds")
    }

    @Test func noStrayFilesInCRDDirectory() throws {
        let names = Set(try files(in: repositoryRoot + "/crds", extensions: [".yaml"]))
        // One file per kind, and the kustomization listing them (deploy/ includes the directory).
        #expect(names == Set(ResourceKind.allCases.map(CRDGenerator.fileName(for:)) + ["kustomization.yaml"]))
    }

    @Test(arguments: ResourceKind.allCases)
    func generatedYAMLParsesBackToTheSameTree(kind: ResourceKind) throws {
        let documents = try YAMLReader().documents(CRDGenerator.yaml(for: kind))
        #expect(documents.count == 1)
        #expect(normalized(documents[0].root!) == normalized(CRDGenerator.crd(for: kind)))
    }

    @Test(arguments: ResourceKind.allCases)
    func namesAndVersionsAreWellFormed(kind: ResourceKind) throws {
        let crd = CRDGenerator.crd(for: kind)
        #expect(crd["apiVersion"]?.scalarText == "apiextensions.k8s.io/v1")
        #expect(crd["metadata"]?["name"]?.scalarText == "\(kind.plural).capstan.dev")
        let spec = try #require(crd["spec"])
        #expect(spec["scope"]?.scalarText == "Namespaced")
        let names = try #require(spec["names"])
        #expect(names["kind"]?.scalarText == kind.rawValue)
        #expect(names["categories"] == .sequence([.string("capstan")]))
        var all = [names["plural"]?.scalarText, names["singular"]?.scalarText].compactMap { $0 }
        if case .sequence(let shorts)? = names["shortNames"]?.value { all += shorts.compactMap(\.scalarText) }
        #expect(Set(all).count == all.count, "names must be distinct: \(all)")
        for name in all { #expect(Names.dns1123LabelProblem(name) == nil && name.first!.isLetter) }
        guard case .sequence(let versions)? = spec["versions"]?.value, let version = versions.first else {
            Issue.record("no versions"); return
        }
        #expect(version["name"]?.scalarText == "v1alpha1")
        #expect(version["subresources"]?["status"] == .mapping([]))
        guard case .sequence(let columns)? = version["additionalPrinterColumns"]?.value else {
            Issue.record("no printer columns"); return
        }
        let columnNames = columns.compactMap { $0["name"]?.scalarText }
        #expect(Array(columnNames.prefix(3)) == ["Ready", "Status", "Reason"])
        #expect(columnNames.last == "Age")
        for column in columns {
            #expect(["integer", "number", "string", "boolean", "date"].contains(column["type"]?.scalarText ?? ""))
            #expect(column["jsonPath"]?.scalarText?.hasPrefix(".") == true)
        }
    }

    @Test(arguments: ResourceKind.allCases)
    func schemaIsStructural(kind: ResourceKind) throws {
        let schema = try #require(CRDGenerator.crd(for: kind)["spec"].flatMap { node -> SpecNode? in
            guard case .sequence(let versions)? = node["versions"]?.value else { return nil }
            return versions.first?["schema"]?["openAPIV3Schema"]
        })
        var problems: [String] = []
        checkStructural(schema, path: "openAPIV3Schema", problems: &problems)
        #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
        #expect(schema["properties"]?["metadata"] == .mapping([("type", .string("object"))]))
    }

    /// Structural-schema rules of apiextensions.k8s.io/v1 that a generator could break.
    func checkStructural(_ node: SpecNode, path: String, problems: inout [String]) {
        let hasType = node["type"] != nil
        let intOrString = node["x-kubernetes-int-or-string"] == .bool(true)
        if !hasType && !intOrString && node["x-kubernetes-preserve-unknown-fields"] == nil {
            problems.append("\(path): no type")
        }
        if node["properties"] != nil && node["additionalProperties"] != nil {
            problems.append("\(path): properties and additionalProperties together")
        }
        if let type = node["type"]?.scalarText, !["object", "array", "string", "integer", "number", "boolean"].contains(type) {
            problems.append("\(path): bad type \(type)")
        }
        if node["type"]?.scalarText == "array" && node["items"] == nil { problems.append("\(path): array without items") }
        if case .sequence(let alternatives)? = node["oneOf"]?.value {
            for alternative in alternatives where alternative.entries?.map(\.key) != ["required"] {
                problems.append("\(path).oneOf: only required is allowed in a structural oneOf")
            }
        }
        let properties = node["properties"]?.entries ?? []
        if case .sequence(let required)? = node["required"]?.value {
            for name in required.compactMap(\.scalarText) where !properties.contains(where: { $0.key == name }) {
                problems.append("\(path): required \(name) is not a property")
            }
        }
        if let pattern = node["pattern"]?.scalarText, (try? NSRegularExpression(pattern: pattern)) == nil {
            problems.append("\(path): pattern does not compile")
        }
        for entry in properties { checkStructural(entry.value, path: path + ".properties." + entry.key, problems: &problems) }
        if let items = node["items"] { checkStructural(items, path: path + ".items", problems: &problems) }
        if let values = node["additionalProperties"] { checkStructural(values, path: path + ".additionalProperties", problems: &problems) }
    }

    /// Every valid object we ship or test passes the generated schema (as the API server would check it).
    @Test func validObjectsPassTheSchema() throws {
        for object in try RoundTripTests.objects() {
            let crd = CRDGenerator.crd(for: object.key.kind)
            guard case .sequence(let versions)? = crd["spec"]?["versions"]?.value,
                  let schema = versions.first?["schema"]?["openAPIV3Schema"] else { Issue.record("no schema"); continue }
            var problems: [String] = []
            SchemaChecker.check(object.resource.encode(), against: schema, path: "", problems: &problems)
            #expect(problems.isEmpty, "\(object.location): \(problems)")
        }
    }

    @Test func schemaRejectsWhatTheDecoderRejects() throws {
        let crd = CRDGenerator.crd(for: .canary)
        guard case .sequence(let versions)? = crd["spec"]?["versions"]?.value,
              let schema = versions.first?["schema"]?["openAPIV3Schema"] else { Issue.record("no schema"); return }
        let bad = SpecNode.mapping([
            ("apiVersion", .string(capstanAPIVersion)), ("kind", .string("Canary")), ("metadata", .mapping([("name", .string("c"))])),
            ("spec", .mapping([("deployment", .string("d")), ("steps", .sequence([.mapping([("setWeight", .int(150))])])), ("trafficRouting", .string("mesh"))])),
        ])
        var problems: [String] = []
        SchemaChecker.check(bad, against: schema, path: "", problems: &problems)
        #expect(problems.contains { $0.contains("setWeight") && $0.contains("maximum") })
        #expect(problems.contains { $0.contains("trafficRouting") && $0.contains("enum") })
    }

    func normalized(_ node: SpecNode) -> SpecNode {
        switch node.value {
        case .scalar(let text, _): return SpecNode(.scalar(text, quoted: false))
        case .sequence(let items): return .sequence(items.map(normalized))
        case .mapping(let entries): return SpecNode(.mapping(entries.map { .init($0.key, normalized($0.value)) }))
        case .null: return node
        }
    }
}

/// A small OpenAPI v3 checker for the subset the generator emits.
enum SchemaChecker {
    static func check(_ value: SpecNode, against schema: SpecNode, path: String, problems: inout [String]) {
        let type = schema["type"]?.scalarText
        switch value.value {
        case .mapping(let entries):
            guard type == "object" else { problems.append("\(path): object where \(type ?? "int-or-string") expected"); return }
            let properties = schema["properties"]?.entries ?? []
            for entry in entries {
                if let property = properties.first(where: { $0.key == entry.key }) {
                    check(entry.value, against: property.value, path: path + "." + entry.key, problems: &problems)
                } else if let values = schema["additionalProperties"] {
                    check(entry.value, against: values, path: path + "." + entry.key, problems: &problems)
                } else if !properties.isEmpty || schema["x-kubernetes-preserve-unknown-fields"] == nil && path != ".metadata" {
                    problems.append("\(path).\(entry.key): not in the schema (would be pruned)")
                }
            }
            if case .sequence(let required)? = schema["required"]?.value {
                for name in required.compactMap(\.scalarText) where !entries.contains(where: { $0.key == name }) {
                    problems.append("\(path): required \(name) missing")
                }
            }
            if case .sequence(let alternatives)? = schema["oneOf"]?.value {
                let matching = alternatives.filter { alternative in
                    guard case .sequence(let names)? = alternative["required"]?.value else { return false }
                    return names.compactMap(\.scalarText).allSatisfy { name in entries.contains { $0.key == name } }
                }
                if matching.count != 1 { problems.append("\(path): oneOf matched \(matching.count)") }
            }
        case .sequence(let items):
            guard type == "array", let itemSchema = schema["items"] else { problems.append("\(path): array where \(type ?? "?") expected"); return }
            if let min = schema["minItems"]?.scalarText.flatMap(Int.init), items.count < min { problems.append("\(path): minItems") }
            for (i, item) in items.enumerated() { check(item, against: itemSchema, path: path + "[\(i)]", problems: &problems) }
        case .scalar(let text, let quoted):
            let intOrString = schema["x-kubernetes-int-or-string"] == .bool(true)
            switch type {
            case "string" where !quoted: problems.append("\(path): \(text) is not a string")
            case "integer" where quoted || Int(text) == nil: problems.append("\(path): \(text) is not an integer")
            case "number" where quoted || Double(text) == nil: problems.append("\(path): \(text) is not a number")
            case "boolean" where quoted || (text != "true" && text != "false"): problems.append("\(path): \(text) is not a boolean")
            case nil where !intOrString: problems.append("\(path): no type")
            default: break
            }
            if case .sequence(let allowed)? = schema["enum"]?.value, !allowed.contains(where: { $0.scalarText == text }) {
                problems.append("\(path): \(text) not in enum")
            }
            if let min = schema["minimum"]?.scalarText.flatMap(Double.init), let v = Double(text), v < min { problems.append("\(path): below minimum") }
            if let max = schema["maximum"]?.scalarText.flatMap(Double.init), let v = Double(text), v > max { problems.append("\(path): above maximum") }
            if quoted, let min = schema["minLength"]?.scalarText.flatMap(Int.init), text.count < min { problems.append("\(path): minLength") }
            if quoted, let max = schema["maxLength"]?.scalarText.flatMap(Int.init), text.count > max { problems.append("\(path): maxLength") }
            if quoted, let pattern = schema["pattern"]?.scalarText, let regex = try? NSRegularExpression(pattern: pattern),
               regex.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) == nil {
                problems.append("\(path): \(text) does not match pattern \(pattern)")
            }
        case .null:
            break
        }
    }
}
