import CapstanModel
import Testing

@Suite struct MetricSelectorTests {
    @Test func parsesNamesAndMatchers() throws {
        let plain = try MetricSelector.parse("up")
        #expect(plain.metric == "up" && plain.matchers.isEmpty)
        let selector = try MetricSelector.parse(#" probe_failure_ratio{ deployment="web" , namespace!='test', path="/a\"b" } "#)
        #expect(selector.metric == "probe_failure_ratio")
        #expect(selector.matchers == [.init("deployment", .equal, "web"), .init("namespace", .notEqual, "test"), .init("path", .equal, "/a\"b")])
        #expect(selector.matches(["deployment": "web", "namespace": "prod", "path": "/a\"b"]))
        #expect(!selector.matches(["deployment": "web", "namespace": "test", "path": "/a\"b"]))
        // A label that is absent is the empty string, as in PromQL.
        #expect(try MetricSelector.parse(#"up{zone!=""}"#).matches([:]) == false)
        #expect(try MetricSelector.parse("up{}").matchers.isEmpty)
        #expect(try MetricSelector.parse(#"up{a="1"}"#).description == #"up{a="1"}"#)
    }

    @Test(arguments: [
        ("", "empty; expected a metric name"),
        ("rate(up[5m])", "unexpected \"(up[5m])\""),
        (#"up{a=~"x.*"}"#, "regular expressions (=~) are not supported"),
        (#"up{a!~"x"}"#, "regular expressions (!~) are not supported"),
        (#"up{a="x"#, "unterminated string"),
        (#"up{a="x" b="y"}"#, "expected , or }"),
        (#"up{a}"#, "expected = or != after label a"),
        (#"up{a=x}"#, "expected a quoted value"),
        (#"up{1a="x"}"#, "expected a label name"),
        (#"up{a="x""#, "expected , or }"),
        ("up > 1", "unexpected \"> 1\""),
    ])
    func refusesAnythingElseSayingWhat(_ query: String, _ message: String) {
        #expect(throws: MetricSelector.ParseError.self) { try MetricSelector.parse(query) }
        do {
            _ = try MetricSelector.parse(query)
        } catch {
            #expect(error.description.contains(message), "\(error.description)")
        }
    }

    @Test func unknownBuiltinMetricsAreNamed() {
        do {
            _ = try MetricSelector.parse("errors_total", known: BuiltinMetrics.names)
            Issue.record("accepted")
        } catch {
            #expect(error.description.contains("unknown builtin metric \"errors_total\""))
        }
    }
}
