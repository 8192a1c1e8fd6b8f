import Foundation
@testable import CapstanModel

/// The repository root, found from this file's path.
let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

func readText(_ path: String) throws -> String {
    try String(contentsOfFile: path, encoding: .utf8)
}

func files(in directory: String, extensions: [String]) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: directory)
        .filter { name in extensions.contains { name.hasSuffix($0) } }
        .sorted()
}

/// Decodes YAML text into objects, failing the caller on any error.
func decodeValid(_ text: String, file: String = "test.yaml") throws -> [DecodedObject] {
    let result = ManifestDecoder().decode(Array(text.utf8), file: file)
    if result.hasErrors {
        throw TestFailure(result.errors.map(\.description).joined(separator: "\n"))
    }
    return result.objects
}

/// The error lines `capstan validate` would print for `text`.
func errorLines(_ text: String, file: String = "test.yaml") -> [String] {
    ManifestDecoder().decode(Array(text.utf8), file: file).errors.map(\.description)
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
