import Foundation
import CapstanModel
import Testing
@testable import CapstanRuntime

/// Principle 2: never act on what could not be read.
@Suite struct DirectorySyncTests {
    static func spec(_ name: String, steps: String = "[{setWeight: 10}]") -> String {
        "apiVersion: capstan.dev/v1alpha1\nkind: Canary\nmetadata: {name: \(name)}\nspec: {deployment: web, steps: \(steps)}\n"
    }

    /// Decodes files given as (path, text), as the loader would.
    static func load(_ files: [(String, String)]) -> ManifestResult {
        var result = ManifestResult()
        for (path, text) in files {
            result.merge(ManifestDecoder().decode(Array(text.utf8), file: path))
        }
        return result
    }

    static func key(_ name: String) -> ObjectKey { ObjectKey(kind: .canary, namespace: "default", name: name) }

    @Test func newAndChangedObjectsAreApplied() {
        let loaded = Self.load([("specs/a.yaml", Self.spec("a")), ("specs/b.yaml", Self.spec("b"))])
        let plan = DirectorySync.plan(previous: [Self.key("a"): "specs/a.yaml"], loaded: loaded, allowEmpty: false)
        #expect(plan.apply.map(\.key) == [Self.key("a"), Self.key("b")])
        #expect(plan.delete.isEmpty && plan.keep.isEmpty)
    }

    @Test func aBrokenFileKeepsWhatItHeld() {
        let loaded = Self.load([("specs/a.yaml", "apiVersion: [unclosed\n"), ("specs/b.yaml", Self.spec("b"))])
        let previous = [Self.key("a"): "specs/a.yaml", Self.key("b"): "specs/b.yaml"]
        let plan = DirectorySync.plan(previous: previous, loaded: loaded, allowEmpty: false)
        #expect(plan.delete.isEmpty, "nothing is deleted because a file stopped parsing")
        #expect(plan.keep.keys.sorted() == [Self.key("a")])
        #expect(plan.keep[Self.key("a")]?.first?.description.hasPrefix("specs/a.yaml:2:1: YAML syntax error") == true)
    }

    @Test func anInvalidDocumentKeepsItsObjectWithTheProblem() {
        let broken = Self.spec("a", steps: "[]")
        let loaded = Self.load([("specs/a.yaml", broken)])
        let plan = DirectorySync.plan(previous: [Self.key("a"): "specs/a.yaml"], loaded: loaded, allowEmpty: false)
        #expect(plan.keep[Self.key("a")]?.map(\.description) == ["specs/a.yaml:4:32: Canary/a: spec.steps: must not be empty"])
        #expect(plan.delete.isEmpty && plan.withheld.isEmpty)
    }

    @Test func aDocumentWithoutIdentityKeepsTheOtherObjectsOfItsFile() {
        // The second document lost its kind: we cannot tell which object it was, so every
        // object the file held and that is not read again is kept.
        let text = Self.spec("a") + "---\napiVersion: capstan.dev/v1alpha1\nmetadata: {name: b}\n"
        let loaded = Self.load([("specs/ab.yaml", text)])
        let previous = [Self.key("a"): "specs/ab.yaml", Self.key("b"): "specs/ab.yaml"]
        let plan = DirectorySync.plan(previous: previous, loaded: loaded, allowEmpty: false)
        #expect(plan.apply.map(\.key) == [Self.key("a")])
        #expect(plan.keep.keys.sorted() == [Self.key("b")])
        #expect(plan.delete.isEmpty)
    }

    @Test func aRemovedFileDeletesItsObjects() {
        let loaded = Self.load([("specs/b.yaml", Self.spec("b"))])
        let previous = [Self.key("a"): "specs/a.yaml", Self.key("b"): "specs/b.yaml"]
        let plan = DirectorySync.plan(previous: previous, loaded: loaded, allowEmpty: false)
        #expect(plan.delete == [Self.key("a")])
    }

    @Test func anObjectRemovedFromAReadableFileIsDeleted() {
        let loaded = Self.load([("specs/ab.yaml", Self.spec("a"))])
        let previous = [Self.key("a"): "specs/ab.yaml", Self.key("b"): "specs/ab.yaml"]
        let plan = DirectorySync.plan(previous: previous, loaded: loaded, allowEmpty: false)
        #expect(plan.delete == [Self.key("b")])
    }

    @Test func anEmptiedSourceDeletesNothingUnlessAllowed() {
        let previous = [Self.key("a"): "specs/a.yaml", Self.key("b"): "specs/b.yaml"]
        let withheld = DirectorySync.plan(previous: previous, loaded: ManifestResult(), allowEmpty: false)
        #expect(withheld.delete.isEmpty)
        #expect(withheld.withheld == [Self.key("a"), Self.key("b")])
        let allowed = DirectorySync.plan(previous: previous, loaded: ManifestResult(), allowEmpty: true)
        #expect(allowed.delete == [Self.key("a"), Self.key("b")])
    }

    @Test func anUnreadableDirectoryKeepsEverythingBelowIt() {
        var loaded = ManifestResult()
        loaded.diagnostics = [Diagnostic(file: "specs/team-a", mark: nil, message: "cannot read directory: Permission denied")]
        loaded.merge(Self.load([("specs/team-b/b.yaml", Self.spec("b"))]))
        let previous = [Self.key("a"): "specs/team-a/a.yaml", Self.key("b"): "specs/team-b/b.yaml", Self.key("c"): "specs/team-ab/c.yaml"]
        let plan = DirectorySync.plan(previous: previous, loaded: loaded, allowEmpty: false)
        #expect(plan.keep.keys.sorted() == [Self.key("a")])
        #expect(plan.delete == [Self.key("c")], "team-ab is not below team-a")
    }

    @Test func anObjectMovedToAnotherFileIsNotKeptFromItsBrokenOldFile() {
        let loaded = Self.load([("specs/old.yaml", "kind: [\n"), ("specs/new.yaml", Self.spec("a"))])
        let plan = DirectorySync.plan(previous: [Self.key("a"): "specs/old.yaml"], loaded: loaded, allowEmpty: false)
        #expect(plan.apply.map(\.key) == [Self.key("a")])
        #expect(plan.keep.isEmpty)
        #expect(plan.unattached.count == 1, "the broken file is still reported")
    }

    @Test func duplicatesWarnTheObjectInUse() {
        let loaded = Self.load([("specs/1.yaml", Self.spec("a")), ("specs/2.yaml", Self.spec("a", steps: "[{setWeight: 20}]"))])
        let plan = DirectorySync.plan(previous: [:], loaded: loaded, allowEmpty: false)
        #expect(plan.apply.map(\.file) == ["specs/1.yaml"])
        #expect(plan.duplicates[Self.key("a")]?.first?.message.contains("defined twice") == true)
    }

    @Test func aDuplicateInANewFileNeverTakesOver() {
        // The new file sorts first; the object keeps the file it came from, whatever the order.
        for order in [["specs/0-dup.yaml", "specs/web.yaml"], ["specs/web.yaml", "specs/0-dup.yaml"]] {
            let texts = ["specs/0-dup.yaml": Self.spec("a", steps: "[{setWeight: 99}]"), "specs/web.yaml": Self.spec("a")]
            let loaded = Self.load(order.map { ($0, texts[$0]!) })
            let plan = DirectorySync.plan(previous: [Self.key("a"): "specs/web.yaml"], loaded: loaded, allowEmpty: false)
            #expect(plan.apply.map(\.file) == ["specs/web.yaml"], "\(order)")
            let problems = plan.duplicates[Self.key("a")] ?? []
            #expect(problems.count == 1 && problems[0].file == "specs/0-dup.yaml", "\(problems)")
            #expect(problems.first?.message.contains("also at specs/web.yaml:1:1") == true, "\(problems)")
            #expect(plan.keep.isEmpty && plan.unattached.isEmpty && plan.delete.isEmpty)
        }
    }

    @Test func aNewObjectThatIsInvalidIsReportedNotKept() {
        let loaded = Self.load([("specs/a.yaml", Self.spec("a", steps: "[]"))])
        let plan = DirectorySync.plan(previous: [:], loaded: loaded, allowEmpty: false)
        #expect(plan.keep.isEmpty && plan.apply.isEmpty)
        #expect(plan.unattached.count == 1)
    }
}

/// The collector reading files itself (the loader reads them in parallel instead).
@Suite struct SpecFileCollectorTests {
    @Test func collectReadsWhatItFinds() throws {
        let root = NSTemporaryDirectory() + "capstan-collect-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root + "/sub", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        try "a: 1\n".write(toFile: root + "/a.yaml", atomically: true, encoding: .utf8)
        try "b: 1\n".write(toFile: root + "/sub/b.json", atomically: true, encoding: .utf8)
        try "not a spec".write(toFile: root + "/notes.txt", atomically: true, encoding: .utf8)
        let read = SpecFileCollector().collect([root])
        #expect(read.files.map(\.path) == [root + "/a.yaml", root + "/sub/b.json"])
        #expect(read.files.first?.bytes == Array("a: 1\n".utf8))
        #expect(read.pending.isEmpty && read.problems.isEmpty && read.candidates == 2)
        let found = SpecFileCollector().collect([root], read: false)
        #expect(found.files.isEmpty)
        #expect(found.pending.map(\.display) == [root + "/a.yaml", root + "/sub/b.json"])
    }
}

/// Which changes a partial read can handle.
@Suite struct ChangedFilesTests {
    let root = NSTemporaryDirectory() + "capstan-changed-" + UUID().uuidString

    @Test func specFilesInWalkOrderAndEverythingElseIgnoredOrFull() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: root + "/team/sub", withIntermediateDirectories: true)
        for file in ["b.yaml", "team/a.yml", "team/sub/z.json", "team-x.yaml", "notes.txt"] {
            try "x".write(toFile: root + "/" + file, atomically: true, encoding: .utf8)
        }
        let changed = SpecFileCollector.changedFiles(root: root, paths: [
            root + "/team-x.yaml", root + "/team/sub/z.json", root + "/b.yaml", root + "/team/a.yml",
            root + "/b.yaml", root + "/notes.txt", root + "/.b.yaml.swp", root + "/.git/index", root + "/gone.yaml",
        ])
        // The walk reads "b.yaml", then directory "team" (a.yml, then sub/z.json), then "team-x.yaml".
        #expect(changed == ["b.yaml", "team/a.yml", "team/sub/z.json", "team-x.yaml", "gone.yaml"].map { root + "/" + $0 }.sorted {
            $0.split(separator: "/").lexicographicallyPrecedes($1.split(separator: "/"))
        })
        #expect(changed?.first == root + "/b.yaml")
        #expect(SpecFileCollector.changedFiles(root: root + "/", paths: [root + "/b.yaml"]) == [root + "/b.yaml"])

        // Only a full read can tell: a directory, a symlink, a removed non-spec path, the root, outside paths.
        #expect(SpecFileCollector.changedFiles(root: root, paths: [root + "/team"]) == nil)
        try FileManager.default.createSymbolicLink(atPath: root + "/link.yaml", withDestinationPath: root + "/team")
        #expect(SpecFileCollector.changedFiles(root: root, paths: [root + "/link.yaml"]) == nil)
        #expect(SpecFileCollector.changedFiles(root: root, paths: [root + "/removed-dir"], knownDirectories: [root + "/removed-dir"]) == nil)
        #expect(SpecFileCollector.changedFiles(root: root, paths: [root + "/b.yaml.tmp", root + "/b.yaml"]) == [root + "/b.yaml"],
                "a temporary file renamed over a spec is no reason for a full read")
        #expect(SpecFileCollector.changedFiles(root: root, paths: [root]) == nil)
        #expect(SpecFileCollector.changedFiles(root: root, paths: ["/elsewhere/x.yaml"]) == nil)
        #expect(SpecFileCollector.changedFiles(root: root, paths: [root + "/notes.txt"]) == [])
    }
}
