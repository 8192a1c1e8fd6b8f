import CapstanModel
import CapstanRuntime
import Foundation
import Synchronization
import Testing
@testable import CapstanControllers

/// In-memory platform fakes: for unit tests of reconciler logic only.
final class FakeStore: ObjectStore, EventRecorder, ArtifactPlatform, Sendable {
    struct State {
        var objects: [ObjectKey: StoredObject] = [:]
        var statusWrites = 0
        var events: [(EventType, String, String)] = []
        var sourceCheck = SourceCheck.ready("source ./web")
        var artifacts: [String: ArtifactStatus] = [:]
        var buildFailure: WorkloadError?
        var revisions: [(owner: ObjectKey, number: Int, hash: String, template: SpecNode)] = []
        var pruneDisabled: Set<ObjectKey> = []
        var requests: [(key: ObjectKey, request: ObjectRequest, taken: Bool)] = []
    }
    let state = Mutex(State())

    /// A request as the CLI leaves it for the reconciler.
    func request(_ type: String, _ value: String, for key: ObjectKey) {
        state.withLock { $0.requests.append((key, ObjectRequest(id: Int64($0.requests.count + 1), type: type, value: value), false)) }
    }

    func requests(for key: ObjectKey) async -> [ObjectRequest] {
        state.withLock { $0.requests.filter { $0.key == key && !$0.taken }.map(\.request) }
    }

    func take(_ request: ObjectRequest, of key: ObjectKey) async -> Bool {
        state.withLock { state in
            guard let index = state.requests.firstIndex(where: { $0.request == request && !$0.taken }) else { return false }
            state.requests[index].taken = true
            return true
        }
    }

    func put(_ yaml: String, generation: Int = 1, problems: [String] = []) throws {
        let result = ManifestDecoder().decode(Array(yaml.utf8), file: "specs/x.yaml")
        guard let object = result.objects.first else { throw FakeError(description: "\(result.errors)") }
        state.withLock { state in
            var resource = object.resource
            if let previous = state.objects[object.key]?.resource {
                // Keep the status the reconciler wrote, as the real store does.
                resource = Self.withStatus(of: previous, on: resource)
            }
            state.objects[object.key] = StoredObject(resource: resource, generation: generation, sourceFile: "specs/x.yaml", problems: problems)
        }
    }

    static func withStatus(of previous: AnyResource, on next: AnyResource) -> AnyResource {
        switch (previous, next) {
        case (.application(let p), .application(var n)): n.status = p.status; return .application(n)
        case (.deployment(let p), .deployment(var n)): n.status = p.status; return .deployment(n)
        case (.backupSchedule(let p), .backupSchedule(var n)): n.status = p.status; return .backupSchedule(n)
        case (.alertRule(let p), .alertRule(var n)): n.status = p.status; return .alertRule(n)
        default: return next
        }
    }

    struct FakeError: Error, CustomStringConvertible { var description: String }

    func object(_ key: ObjectKey) async throws -> StoredObject? { state.withLock { $0.objects[key] } }
    func pruneDisabled(_ key: ObjectKey) async -> Bool { state.withLock { $0.pruneDisabled.contains(key) } }
    func objects(kind: ResourceKind) async throws -> [StoredObject] {
        state.withLock { $0.objects.values.filter { $0.key.kind == kind }.sorted { $0.key < $1.key } }
    }
    func objects(kind: ResourceKind, referencing key: ObjectKey) async throws -> [StoredObject] {
        try await objects(kind: kind).filter { $0.resource.references.contains(key) }
    }
    func writeStatus(_ key: ObjectKey, _ status: SpecNode) async throws -> Bool {
        try state.withLock { state in
            guard var stored = state.objects[key] else { return false }
            let updated = try stored.resource.withStatus(status)
            guard updated != stored.resource else { return false }
            stored.resource = updated
            state.objects[key] = stored
            state.statusWrites += 1
            return true
        }
    }
    func record(_ type: EventType, reason: String, message: String, about key: ObjectKey) async {
        state.withLock { $0.events.append((type, reason, message)) }
    }
    func checkSource(of application: Application, specFile: String) async -> SourceCheck { state.withLock { $0.sourceCheck } }
    func prepare(_ template: WorkloadTemplate, namespace: String) async throws(WorkloadError) -> ArtifactStatus {
        try state.withLock { state throws(WorkloadError) in
            if let failure = state.buildFailure { throw failure }
            var artifact = ArtifactStatus()
            artifact.version = template.version
            artifact.digest = "sha256:" + template.version
            state.artifacts[template.version] = artifact
            return artifact
        }
    }
    func artifacts(of application: ObjectKey) async -> [ArtifactStatus] {
        state.withLock { $0.artifacts.values.sorted { $0.version > $1.version } }
    }
    func prune(_ application: ObjectKey, keep: Int, inUse: Set<String>) async -> [String] { [] }

    var application: Application? {
        state.withLock { state in
            if case .application(let app)? = state.objects[ObjectKey(kind: .application, namespace: "default", name: "web")]?.resource { return app }
            return nil
        }
    }
    var eventReasons: [String] { state.withLock { $0.events.map(\.1) } }
    var statusWrites: Int { state.withLock { $0.statusWrites } }
}

@Suite struct ApplicationReconcilerTests {
    static let web = "apiVersion: capstan.dev/v1alpha1\nkind: Application\nmetadata: {name: web}\nspec: {source: {path: ./web}, command: [./web]}\n"
    static let key = ObjectKey(kind: .application, namespace: "default", name: "web")
    let fixedNow = Date(timeIntervalSince1970: 1_800_000_000)

    func reconciler(_ fake: FakeStore) -> ApplicationReconciler {
        let now = fixedNow
        return ApplicationReconciler(store: fake, events: fake, artifacts: fake, now: { now })
    }

    @Test func aValidApplicationBecomesReadyAtItsGeneration() async throws {
        let fake = FakeStore()
        try fake.put(Self.web)
        let result = try await reconciler(fake).reconcile(Self.key)
        #expect(result == .done)
        let app = try #require(fake.application)
        #expect(app.status.isReady(generation: 1))
        #expect(app.status.observedGeneration == 1)
        #expect(app.status.condition("Ready")?.reason == "Succeeded")
        #expect(fake.eventReasons == ["Succeeded"])
    }

    @Test func reconcilingTwiceChangesNothingTheSecondTime() async throws {
        let fake = FakeStore()
        try fake.put(Self.web)
        _ = try await reconciler(fake).reconcile(Self.key)
        _ = try await reconciler(fake).reconcile(Self.key)
        #expect(fake.statusWrites == 1)
        #expect(fake.eventReasons.count == 1)
    }

    @Test func aNewGenerationIsObserved() async throws {
        let fake = FakeStore()
        try fake.put(Self.web)
        _ = try await reconciler(fake).reconcile(Self.key)
        try fake.put(Self.web.replacingOccurrences(of: "[./web]", with: "[./web, --fast]"), generation: 2)
        _ = try await reconciler(fake).reconcile(Self.key)
        #expect(fake.application?.status.observedGeneration == 2)
        #expect(fake.application?.status.condition("Ready")?.observedGeneration == 2)
        #expect(fake.eventReasons.count == 1, "still Ready: no new event")
    }

    @Test func aMissingSourceStallsAndIsRetried() async throws {
        let fake = FakeStore()
        fake.state.withLock { $0.sourceCheck = .unavailable("source path specs/web does not exist") }
        try fake.put(Self.web)
        let result = try await reconciler(fake).reconcile(Self.key)
        #expect(result == .requeue(after: ApplicationReconciler.sourceRetry))
        #expect(fake.application?.status.condition("Stalled")?.reason == "SourceUnavailable")
        #expect(fake.application?.status.condition("Ready")?.status == .false)
        fake.state.withLock { $0.sourceCheck = .ready("source ./web") }
        _ = try await reconciler(fake).reconcile(Self.key)
        #expect(fake.application?.status.conditions.map(\.type) == ["Ready"])
        #expect(fake.eventReasons == ["SourceUnavailable", "Succeeded"])
    }

    @Test func anInvalidSpecKeepsTheLastGoodObjectStalled() async throws {
        let fake = FakeStore()
        try fake.put(Self.web)
        _ = try await reconciler(fake).reconcile(Self.key)
        try fake.put(Self.web, problems: ["specs/x.yaml:4:7: Application/web: spec.command: expected a list"])
        _ = try await reconciler(fake).reconcile(Self.key)
        let stalled = try #require(fake.application?.status.condition("Stalled"))
        #expect(stalled.reason == "InvalidSpec")
        #expect(stalled.message.contains("specs/x.yaml:4:7"))
        #expect(fake.application?.spec.command == ["./web"], "the last good spec is kept")
        #expect(fake.eventReasons == ["Succeeded"], "the source records InvalidSpec's event")
        try fake.put(Self.web)
        _ = try await reconciler(fake).reconcile(Self.key)
        #expect(fake.application?.status.condition("Stalled") == nil)
        #expect(fake.application?.status.isReady(generation: 1) == true)
    }

    @Test func statusListsTheDeploymentsThatRunIt() async throws {
        let fake = FakeStore()
        try fake.put(Self.web)
        try fake.put("apiVersion: capstan.dev/v1alpha1\nkind: Deployment\nmetadata: {name: web-prod}\nspec: {application: web, version: \"1.2\"}\n")
        try fake.put("apiVersion: capstan.dev/v1alpha1\nkind: Deployment\nmetadata: {name: other}\nspec: {application: api, version: \"1\"}\n")
        _ = try await reconciler(fake).reconcile(Self.key)
        #expect(fake.application?.status.deployments.map(\.name) == ["web-prod"])
        #expect(fake.application?.status.deployments.first?.version == "1.2")
        #expect(fake.application?.status.artifacts.map(\.version) == ["1.2"], "the version a Deployment asks for is prepared")
        #expect(fake.application?.status.condition("Ready")?.message.contains("prepared for 1.2") == true)
    }

    @Test func statusCountsThousandsOfDeploymentsAndNamesTheNotReadyFirst() async throws {
        let fake = FakeStore()
        try fake.put(Self.web)
        let count = ApplicationStatus.listedDeployments * 3
        for index in 0..<count {
            try fake.put("apiVersion: capstan.dev/v1alpha1\nkind: Deployment\nmetadata: {name: d\(1000 + index)}\nspec: {application: web, version: \"1.\(index % 3)\"}\n")
        }
        // All ready but three: a Ready condition at the current generation.
        let notReady = ["d1007", "d1100", "d1149"]
        for index in 0..<count where !notReady.contains("d\(1000 + index)") {
            var status = DeploymentStatus()
            _ = status.markReady(reason: "Succeeded", message: "running", generation: 1, now: Timestamp(Date()))
            _ = try await fake.writeStatus(ObjectKey(kind: .deployment, namespace: "default", name: "d\(1000 + index)"), status.encode())
        }
        _ = try await reconciler(fake).reconcile(Self.key)
        let status = try #require(fake.application?.status)
        #expect(status.deploymentCount == count)
        #expect(status.readyDeploymentCount == count - 3)
        #expect(status.deployments.count == ApplicationStatus.listedDeployments, "a bounded list, not every Deployment")
        #expect(status.deployments.prefix(3).map(\.name) == notReady, "those not ready first")
        #expect(status.deployments.dropFirst(3).allSatisfy { $0.ready })
        #expect(status.deployments[3].name == "d1000")
        #expect(Set(status.artifacts.map(\.version)) == ["1.0", "1.1", "1.2"], "every version asked for is prepared")

        // Unchanged: no write. One more ready: the counts change, one write.
        let writes = fake.statusWrites
        _ = try await reconciler(fake).reconcile(Self.key)
        #expect(fake.statusWrites == writes)
        var status1007 = DeploymentStatus()
        _ = status1007.markReady(reason: "Succeeded", message: "running", generation: 1, now: Timestamp(Date()))
        _ = try await fake.writeStatus(ObjectKey(kind: .deployment, namespace: "default", name: "d1007"), status1007.encode())
        _ = try await reconciler(fake).reconcile(Self.key)
        #expect(fake.statusWrites == writes + 2, "the Deployment's status, then the Application's")
        #expect(fake.application?.status.readyDeploymentCount == count - 2)
        #expect(fake.application?.status.deployments.prefix(2).map(\.name) == ["d1100", "d1149"])
    }

    @Test func aFailedBuildStallsWithItsReason() async throws {
        let fake = FakeStore()
        try fake.put(Self.web)
        try fake.put("apiVersion: capstan.dev/v1alpha1\nkind: Deployment\nmetadata: {name: web-prod}\nspec: {application: web, version: \"1.2\"}\n")
        fake.state.withLock { $0.buildFailure = WorkloadError("BuildFailed", "build of web 1.2 failed with exit status 2; last lines: make: *** no rule") }
        let result = try await reconciler(fake).reconcile(Self.key)
        #expect(result == .requeue(after: ApplicationReconciler.sourceRetry))
        let stalled = try #require(fake.application?.status.condition("Stalled"))
        #expect(stalled.reason == "BuildFailed")
        #expect(stalled.message.contains("no rule"))
        #expect(fake.eventReasons == ["BuildFailed"])
    }

    @Test func aDeletedApplicationIsDone() async throws {
        #expect(try await reconciler(FakeStore()).reconcile(Self.key) == .done)
    }
}
