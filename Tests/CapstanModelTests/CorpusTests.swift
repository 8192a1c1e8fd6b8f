import Foundation
import Testing
@testable import CapstanModel

/// Every file in Tests/Corpus/invalid is rejected with exactly the lines in its .expected file.
@Suite struct CorpusTests {
    static let directory = repositoryRoot + "/Tests/Corpus/invalid"
    static let cases: [String] = (try? files(in: directory, extensions: [".yaml", ".json"])) ?? []

    @Test func corpusHasAtLeastFortyCases() {
        #expect(Self.cases.count >= 40)
    }

    @Test(arguments: cases)
    func rejectedWithExpectedMessage(name: String) throws {
        let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: Self.directory + "/" + name)))
        let expectedPath = Self.directory + "/" + name.prefix(while: { $0 != "." }) + ".expected"
        let expected = try readText(expectedPath).split(separator: "\n").map(String.init)
        let start = Date()
        let result = ManifestDecoder().decode(bytes, file: name)
        let elapsed = Date().timeIntervalSince(start)
        #expect(result.hasErrors, "\(name) must be rejected")
        #expect(result.errors.map(\.description) == expected)
        #expect(elapsed < 5, "\(name) took \(elapsed)s")
        for error in result.errors {
            #expect(error.mark != nil || error.message.contains("no documents"), "\(name): every error carries a position")
        }
    }

    @Test func validCorpusDecodes() throws {
        let directory = repositoryRoot + "/Tests/Corpus/valid"
        for name in try files(in: directory, extensions: [".yaml", ".json"]) {
            let text = try readText(directory + "/" + name)
            let result = ManifestDecoder().decode(Array(text.utf8), file: name)
            #expect(result.errors.isEmpty, "\(name): \(result.errors)")
            #expect(!result.objects.isEmpty)
        }
    }

    @Test func aliasBombIsRejectedQuicklyWithBoundedWork() {
        var text = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
        let letters = Array("abcdefghijklmnop")
        for i in 1..<letters.count {
            text += "\(letters[i]): &\(letters[i]) [" + Array(repeating: "*\(letters[i - 1])", count: 9).joined(separator: ",") + "]\n"
        }
        let start = Date()
        let lines = errorLines(text)
        #expect(Date().timeIntervalSince(start) < 2)
        #expect(lines.count == 1)
        #expect(lines.first?.contains("alias bomb") == true)
    }

    @Test func binaryFilesAreRefused() {
        let bytes: [UInt8] = [0x7F, 0x45, 0x4C, 0x46, 0x02, 0x01, 0x00, 0x00]
        let result = ManifestDecoder().decode(bytes, file: "capstan.yaml")
        #expect(result.errors.map(\.description) == ["capstan.yaml: binary file (NUL byte at offset 6): not a YAML or JSON manifest"])
    }

    @Test func invalidUTF8IsRefused() {
        let bytes: [UInt8] = Array("kind: ".utf8) + [0xC3, 0x28, 0x0A]
        let result = ManifestDecoder().decode(bytes, file: "latin1.yaml")
        #expect(result.errors.map(\.description) == ["latin1.yaml: not UTF-8 text: manifests must be UTF-8 YAML or JSON"])
    }

    @Test func hugeFilesAreRefusedBeforeParsing() {
        let bytes = [UInt8](repeating: UInt8(ascii: "#"), count: 2 << 20)
        let result = ManifestDecoder().decode(bytes, file: "huge.yaml")
        #expect(result.errors.map(\.description) == ["huge.yaml: file is 2 MiB, over the 1 MiB limit for a manifest (--max-file-size)"])
    }

    @Test func byteOrderMarkIsAccepted() throws {
        let text = "\u{FEFF}apiVersion: capstan.dev/v1alpha1\nkind: Canary\nmetadata: {name: c}\nspec: {deployment: d, steps: [{setWeight: 5}]}\n"
        #expect(try decodeValid(text).count == 1)
    }

    @Test func invalidObjectsAreIdentifiedForPrincipleTwo() {
        let text = """
            apiVersion: capstan.dev/v1alpha1
            kind: Deployment
            metadata: {name: web, namespace: shop}
            spec: {application: web, version: "1", replicas: many}
            """
        let result = ManifestDecoder().decode(Array(text.utf8), file: "web.yaml")
        #expect(result.objects.isEmpty)
        #expect(result.invalidObjects.map(\.key) == [ObjectKey(kind: .deployment, namespace: "shop", name: "web")])
        #expect(result.invalidObjects.first?.problems.map(\.description) == ["web.yaml:4:50: Deployment/web: spec.replicas: expected an integer, got \"many\""])
        #expect(result.invalidObjects.first?.isDuplicate == false)
    }

    @Test func duplicatesAcrossFilesNameBothPlaces() throws {
        let text = "apiVersion: capstan.dev/v1alpha1\nkind: Canary\nmetadata: {name: c}\nspec: {deployment: d, steps: [{setWeight: 5}]}\n"
        var merged = ManifestResult()
        merged.merge(ManifestDecoder().decode(Array(text.utf8), file: "a.yaml"))
        merged.merge(ManifestDecoder().decode(Array(text.utf8), file: "b.yaml"))
        #expect(merged.objects.count == 1)
        #expect(merged.objects.first?.file == "a.yaml")
        #expect(merged.errors.map(\.description) == ["b.yaml:1:1: Canary/c: Canary default/c is defined twice: also at a.yaml:1:1 (that one is used)"])
    }
}
