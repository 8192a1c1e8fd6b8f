import CapstanModel
import CapstanRuntime
import Foundation
import Testing
@testable import CapstanControllers

/// The builtin series as `/metrics` exports them.
@Suite struct BuiltinMetricsTests {
    static func source(_ names: [String]) throws -> BuiltinMetricsSource {
        let cache = ObjectCache()
        for name in names {
            let yaml = """
                apiVersion: capstan.dev/v1alpha1
                kind: Deployment
                metadata: {name: \(name), namespace: default}
                spec: {application: web, version: 1.0.0, replicas: 2}
                """
            let object = try #require(ManifestDecoder().decode(Array(yaml.utf8), file: "x.yaml").objects.first)
            _ = cache.upsert(object.key, StoredObject(resource: object.resource, generation: 1, sourceFile: "x.yaml", problems: []))
        }
        return BuiltinMetricsSource(cache: cache, workload: FakeWorkload(), probes: nil, host: { _ in [] })
    }

    /// Sorted by name, then by the written labels, one TYPE line per name; a scrape keeps no
    /// observation for rules, and a rule's observations are kept only while fresh.
    @Test func aScrapeIsSortedAndKeepsNothingBehind() async throws {
        let source = try Self.source(["web-c", "web-a", "web-b"])
        let text = AlertSampleNamed.exposition(await source.series(["up", "desired_replicas"], namespace: nil, remember: false))
        #expect(text == """
            # TYPE capstan_desired_replicas gauge
            capstan_desired_replicas{application="web",deployment="web-a",namespace="default"} 2
            capstan_desired_replicas{application="web",deployment="web-b",namespace="default"} 2
            capstan_desired_replicas{application="web",deployment="web-c",namespace="default"} 2
            # TYPE capstan_up gauge
            capstan_up{application="web",deployment="web-a",namespace="default"} 0
            capstan_up{application="web",deployment="web-b",namespace="default"} 0
            capstan_up{application="web",deployment="web-c",namespace="default"} 0

            """)
        #expect(source.observed.value.isEmpty, "a scrape keeps nothing")
        _ = await source.series(["up"], namespace: "default")
        #expect(source.observed.value.count == 3, "a rule's observations serve the rules that follow")
        try await Task.sleep(for: source.fresh + .milliseconds(50))
        _ = await source.series(["up"], namespace: "other")
        #expect(source.observed.value.isEmpty, "past their freshness they are dropped")
    }
}
