import CapstanControllers
import CapstanModel
import Foundation
import Testing
@testable import CapstanLocal

/// Artifacts survive a daemon killed while it replaced one: what is under an artifact's name
/// is the whole artifact, or nothing.
@Suite struct ArtifactTests {
    let root = NSTemporaryDirectory() + "capstan-artifacts-" + UUID().uuidString

    func template(_ version: String) -> WorkloadTemplate {
        var spec = ApplicationSpec()
        spec.source = ApplicationSource()
        spec.source?.path = "app"
        spec.command = ["python3", "server.py"]
        return WorkloadTemplate(application: "web", version: version, spec: spec, env: [], sourceRoot: root)
    }

    @Test func aHalfRemovedOrUnrecordedArtifactIsBuiltAgainWhole() async throws {
        defer { Artifacts.removeTree(root) }
        try FileManager.default.createDirectory(atPath: root + "/app", withIntermediateDirectories: true)
        try "print('hello')\n".write(toFile: root + "/app/server.py", atomically: true, encoding: .utf8)
        let store = try StateStore(directory: root + "/state")
        let artifacts = Artifacts(stateDirectory: root + "/state", store: store)
        let (_, path) = try await artifacts.prepare(template("1"), namespace: "default")
        #expect(FileManager.default.fileExists(atPath: path + "/server.py"))

        // A removal begun and cut short (what an older build left when it was killed while
        // replacing the artifact): writable again, its files gone, its record still there.
        chmod(path, 0o700)
        try FileManager.default.removeItem(atPath: path + "/server.py")
        #expect(try store.inventory(type: Artifacts.inventoryType).count == 1)
        _ = try await artifacts.prepare(template("1"), namespace: "default")
        #expect(FileManager.default.fileExists(atPath: path + "/server.py"), "built again, not taken as prepared")

        // Its record lost (a damaged store) while the artifact is whole: built again beside it,
        // the old one moved aside and removed, nothing left over.
        for entry in try store.inventory(type: Artifacts.inventoryType) { _ = try store.removeInventory(type: Artifacts.inventoryType, id: entry.id) }
        _ = try await artifacts.prepare(template("1"), namespace: "default")
        #expect(FileManager.default.fileExists(atPath: path + "/server.py"))
        let siblings = try FileManager.default.contentsOfDirectory(atPath: (path as NSString).deletingLastPathComponent)
        #expect(siblings == ["1"], "\(siblings)")
    }
}
