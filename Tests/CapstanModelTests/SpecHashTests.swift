import Testing
@testable import CapstanModel

/// The directory mode's generation grows when the spec's meaning changes, not its formatting.
@Suite struct SpecHashTests {
    static let original = """
        apiVersion: capstan.dev/v1alpha1
        kind: Deployment
        metadata: {name: web}
        spec:
          application: web
          version: "1.0"
          replicas: 2
          env: [{name: A, value: "1"}]
        """

    func hash(_ text: String) throws -> String {
        try decodeValid(text).first!.specHash
    }

    @Test func reformattingKeepsTheHash() throws {
        let reformatted = """
            # a comment
            kind: Deployment
            apiVersion: capstan.dev/v1alpha1
            metadata:
              name: web
              labels: {added: label}
            spec:
              replicas: 2
              env:
                - value: '1'
                  name: A
              version: '1.0'
              application: web
            """
        #expect(try hash(Self.original) == hash(reformatted))
    }

    @Test func explicitDefaultsKeepTheHash() throws {
        let explicit = Self.original + "\n  revisionHistoryLimit: 10\n  paused: false\n  strategy: {type: RollingUpdate}\n"
        #expect(try hash(Self.original) == hash(explicit))
    }

    @Test func jsonAndYAMLAgree() throws {
        let json = #"{"apiVersion":"capstan.dev/v1alpha1","kind":"Deployment","metadata":{"name":"web"},"spec":{"application":"web","version":"1.0","replicas":2,"env":[{"name":"A","value":"1"}]}}"#
        #expect(try hash(Self.original) == hash(json))
    }

    @Test func changesOfMeaningChangeTheHash() throws {
        let base = try hash(Self.original)
        #expect(try hash(Self.original.replacingOccurrences(of: "replicas: 2", with: "replicas: 3")) != base)
        #expect(try hash(Self.original.replacingOccurrences(of: "\"1.0\"", with: "\"1.0.1\"")) != base)
        #expect(try hash(Self.original.replacingOccurrences(of: "value: \"1\"", with: "value: \"2\"")) != base)
    }

    @Test func hashIsSHA256Hex() throws {
        let value = try hash(Self.original)
        #expect(value.count == 64)
        #expect(value.allSatisfy { $0.isHexDigit })
    }
}
