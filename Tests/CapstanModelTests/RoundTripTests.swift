import Foundation
import Testing
import Yams
@testable import CapstanModel

/// decode → encode → decode gives the same object, through our emitters and through Codable.
@Suite struct RoundTripTests {
    static let sources: [String] = {
        let valid = (try? files(in: repositoryRoot + "/Tests/Corpus/valid", extensions: [".yaml", ".json"]))?
            .map { repositoryRoot + "/Tests/Corpus/valid/" + $0 } ?? []
        let examples = (try? files(in: repositoryRoot + "/manifests/examples", extensions: [".yaml"]))?
            .map { repositoryRoot + "/manifests/examples/" + $0 } ?? []
        return valid + examples
    }()

    static func objects() throws -> [DecodedObject] {
        try sources.flatMap { try decodeValid(readText($0), file: $0) }
    }

    @Test func everyKindIsCovered() throws {
        let kinds = Set(try Self.objects().map(\.key.kind))
        #expect(kinds == Set(ResourceKind.allCases))
    }

    @Test func throughYAMLEmitter() throws {
        for object in try Self.objects() {
            let yaml = YAMLEmitter.emit(object.resource.encode())
            let again = try decodeValid(yaml)
            #expect(again.map(\.resource) == [object.resource], "\(object.location)\n\(yaml)")
        }
    }

    @Test func throughJSONEmitter() throws {
        for object in try Self.objects() {
            let json = JSONEmitter.emit(object.resource.encode())
            let again = try decodeValid(json, file: "x.json")
            #expect(again.map(\.resource) == [object.resource], "\(object.location)")
        }
    }

    @Test func throughFoundationJSONCodable() throws {
        for object in try Self.objects() {
            func check<R: Resource>(_ value: R) throws {
                let data = try JSONEncoder().encode(value)
                let decoded = try JSONDecoder().decode(R.self, from: data)
                #expect(decoded == value, "\(object.location)")
            }
            try check(object.resource.resource)
        }
    }

    @Test func throughYamsCodable() throws {
        for object in try Self.objects() {
            func check<R: Resource>(_ value: R) throws {
                let yaml = try YAMLEncoder().encode(value)
                let decoded = try YAMLDecoder().decode(R.self, from: yaml)
                #expect(decoded == value, "\(object.location)\n\(yaml)")
            }
            try check(object.resource.resource)
        }
    }

    @Test func codableDecodingReportsEveryProblem() {
        let json = #"{"apiVersion":"capstan.dev/v1alpha1","kind":"Deployment","metadata":{"name":"Web"},"spec":{"version":"1","replicas":-1}}"#
        #expect(throws: DecodingError.self) { try JSONDecoder().decode(Deployment.self, from: Data(json.utf8)) }
        do {
            _ = try JSONDecoder().decode(Deployment.self, from: Data(json.utf8))
        } catch let DecodingError.dataCorrupted(context) {
            #expect(context.debugDescription.contains("metadata.name"))
            #expect(context.debugDescription.contains("spec.application: required field is missing"))
            #expect(context.debugDescription.contains("spec.replicas: must be at least 0"))
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test func defaultsAreApplied() throws {
        let text = """
            apiVersion: capstan.dev/v1alpha1
            kind: Deployment
            metadata: {name: web}
            spec: {application: web, version: "1.0"}
            """
        guard case .deployment(let deployment)? = try decodeValid(text).first?.resource else {
            Issue.record("not a deployment"); return
        }
        #expect(deployment.metadata.namespace == "default")
        #expect(deployment.spec.replicas == 1)
        #expect(deployment.spec.strategy.type == .rollingUpdate)
        #expect(deployment.spec.strategy.effectiveMaxSurge == .string("25%"))
        #expect(deployment.spec.strategy.effectiveMaxUnavailable == .string("25%"))
        #expect(deployment.spec.progressDeadline == .minutes(10))
        #expect(deployment.spec.revisionHistoryLimit == 10)
        #expect(deployment.spec.autoRollback)
        #expect(!deployment.spec.paused)
        #expect(deployment.spec.port == nil)
    }

    @Test func plainScalarsKeepTheirTextInStringFields() throws {
        let text = """
            apiVersion: capstan.dev/v1alpha1
            kind: Deployment
            metadata: {name: web}
            spec:
              application: web
              version: 1.10
              env: [{name: FLAG, value: yes}, {name: MODE, value: 0755}]
            """
        guard case .deployment(let deployment)? = try decodeValid(text).first?.resource else {
            Issue.record("not a deployment"); return
        }
        #expect(deployment.spec.version == "1.10")
        #expect(deployment.spec.env.map(\.value) == ["yes", "0755"])
    }

    @Test func anchorsAliasesAndMergeKeysExpand() throws {
        let objects = try decodeValid(readText(repositoryRoot + "/Tests/Corpus/valid/anchors-and-merge.yaml"))
        guard case .deployment(let staging)? = objects.first(where: { $0.key.name == "api-staging" })?.resource else {
            Issue.record("missing api-staging"); return
        }
        #expect(staging.spec.application == "api")
        #expect(staging.spec.version == "2.1.0")
        #expect(staging.spec.replicas == 1)
        #expect(staging.spec.env == [EnvVar(name: "LOG_LEVEL", value: "info")])
    }

    @Test func otherAPIGroupsAreSkippedNotErrors() throws {
        let result = ManifestDecoder().decode(Array(try readText(repositoryRoot + "/Tests/Corpus/valid/list-and-others.yaml").utf8), file: "l.yaml")
        #expect(result.errors.isEmpty)
        #expect(result.skipped == 2)
        #expect(result.objects.map(\.key) == [ObjectKey(kind: .canary, namespace: "shop", name: "api")])
    }
}
