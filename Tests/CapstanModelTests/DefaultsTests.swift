import Testing
@testable import CapstanModel

/// A default the user never wrote never makes a spec invalid: defaults follow the fields set,
/// and only written values can conflict (the error names both).
@Suite struct DefaultsTests {
    func application(healthCheck: String) -> String {
        """
        apiVersion: capstan.dev/v1alpha1
        kind: Application
        metadata: {name: web}
        spec:
          image: example/web
          ports: [{name: http, containerPort: 8080}]
          healthCheck: {http: {path: /healthz, port: http}, \(healthCheck)}

        """
    }

    func healthCheck(_ fields: String) throws -> HealthCheck? {
        guard case .application(let app) = try decodeValid(application(healthCheck: fields))[0].resource else { return nil }
        return app.spec.healthCheck
    }

    @Test func aShortIntervalAloneIsAccepted() throws {
        #expect(try healthCheck("interval: 1s")?.timeout == .seconds(1))
        #expect(try healthCheck("interval: 500ms")?.timeout == KubeDuration(nanoseconds: 500_000_000))
        #expect(try healthCheck("failureThreshold: 5")?.timeout == .seconds(2))
        #expect(try healthCheck("interval: 10s")?.timeout == .seconds(2), "the 2s default where the interval allows it")
    }

    @Test func twoWrittenValuesThatConflictAreRefusedNamingBoth() {
        let errors = errorLines(application(healthCheck: "interval: 1s, timeout: 3s"))
        #expect(errors.count == 1)
        #expect(errors.first?.contains("spec.healthCheck.timeout: timeout 3s must not exceed interval 1s") == true, "\(errors)")
    }

    @Test func theCRDHasNoDefaultThatCouldConflict() {
        let schema = HealthCheck.schema
        let timeout = schema.properties.first { $0.0 == "timeout" }?.1
        #expect(timeout?.defaultValue == nil)
        #expect(schema.properties.first { $0.0 == "interval" }?.1.defaultValue != nil)
    }

    @Test func reservedVariablesAreRefusedWithWhy() {
        let app = application(healthCheck: "interval: 5s") + "  env: [{name: PORT, value: \"9000\"}, {name: CAPSTAN_INSTANCE, value: x}, {name: PORTS, value: ok}]\n"
        let errors = errorLines(app)
        #expect(errors.count == 2, "\(errors)")
        #expect(errors.contains { $0.contains("spec.env[0].name: PORT is set by Capstan") })
        #expect(errors.contains { $0.contains("spec.env[1].name: CAPSTAN_INSTANCE is reserved") })
        let deployment = "apiVersion: capstan.dev/v1alpha1\nkind: Deployment\nmetadata: {name: web}\nspec: {application: web, version: v1, env: [{name: PORT, value: \"1\"}]}\n"
        #expect(errorLines(deployment).contains { $0.contains("spec.env[0].name: PORT is set by Capstan") })
    }

    /// A BlueGreen preview on the Deployment's own port could never be served beside it.
    @Test func aPreviewPortEqualToThePortIsRefusedByName() throws {
        func deployment(previewPort: Int) -> String {
            """
            apiVersion: capstan.dev/v1alpha1
            kind: Deployment
            metadata: {name: web}
            spec:
              application: web
              version: "1"
              port: 8080
              strategy: {type: BlueGreen, blueGreen: {previewPort: \(previewPort)}}

            """
        }
        #expect(errorLines(deployment(previewPort: 8080)) == [
            "test.yaml:8:56: Deployment/web: spec.strategy.blueGreen.previewPort: must differ from port 8080: the preview serves the new colour beside the port, not on it",
        ])
        #expect(try decodeValid(deployment(previewPort: 8081)).count == 1)
    }
}
