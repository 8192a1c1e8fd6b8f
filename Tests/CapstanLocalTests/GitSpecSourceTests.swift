import CapstanLocal
import Foundation
import Testing

/// The git source's checkouts: every snapshot, whether made from the previous one (hard links
/// with the changed files replaced) or exported whole, is exactly the commit's tree; the
/// changed spec files are reported; a rewritten history is said so.
@Suite(.serialized) struct GitSpecSourceTests {
    let root = NSTemporaryDirectory() + "capstan-git-snapshots-" + UUID().uuidString

    @discardableResult
    func git(_ arguments: [String], in directory: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["git"] + arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.environment = ProcessInfo.processInfo.environment.merging([
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
            "GIT_CONFIG_NOSYSTEM": "1", "HOME": root,
        ]) { $1 }
        let out = Pipe()
        process.standardOutput = out
        process.standardError = out
        try process.run()
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw Failure(text: "git \(arguments): \(output)") }
        return output
    }

    struct Failure: Error { let text: String }

    /// Every file below `directory` (symlinks as their target), by relative path.
    func tree(_ link: String) -> [String: String] {
        let directory = URL(fileURLWithPath: link).resolvingSymlinksInPath().path
        var files: [String: String] = [:]
        let manager = FileManager.default
        for path in manager.subpaths(atPath: directory) ?? [] {
            let full = directory + "/" + path
            if let target = try? manager.destinationOfSymbolicLink(atPath: full) {
                files[path] = "-> " + target
                continue
            }
            var isDirectory: ObjCBool = false
            if manager.fileExists(atPath: full, isDirectory: &isDirectory), isDirectory.boolValue {
                files[path + "/"] = ""
                continue
            }
            files[path] = (try? String(contentsOfFile: full, encoding: .utf8)) ?? "<unreadable>"
        }
        return files
    }

    func write(_ text: String, _ path: String) throws {
        let full = root + "/work/" + path
        try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: full, atomically: true, encoding: .utf8)
    }

    func commitAndPush(_ message: String, force: Bool = false) throws -> String {
        try git(["add", "-A"], in: root + "/work")
        try git(["commit", "--quiet", "--allow-empty", "-m", message], in: root + "/work")
        try git(["push", "--quiet"] + (force ? ["--force"] : []) + [root + "/remote.git", "HEAD:refs/heads/main"], in: root + "/work")
        return try git(["rev-parse", "HEAD"], in: root + "/work").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The commit's tree as `git archive` gives it.
    func expected(_ commit: String) throws -> [String: String] {
        let directory = root + "/expected-" + commit
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "git --git-dir=\"$1\" archive --format=tar \"$2\" | tar -x -C \"$3\"", "sh", root + "/remote.git", commit, directory]
        try process.run()
        process.waitUntilExit()
        return tree(directory)
    }

    @Test func everySnapshotIsExactlyItsCommit() async throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: root + "/work", withIntermediateDirectories: true)
        try git(["init", "--quiet", "--bare", root + "/remote.git"], in: root)
        try git(["init", "--quiet", "-b", "main"], in: root + "/work")
        for index in 0..<20 { try write("index: \(index)\n", "specs/b\(index).yaml") }
        try write("outside\n", "README")
        try write("deep\n", "specs/nested/only/one.yaml")
        var commit = try commitAndPush("first")
        let source = GitSpecSource(.init(url: root + "/remote.git", ref: "main", path: "specs"), stateDirectory: root + "/state")
        guard case .moved(nil, commit, nil, false) = try await source.update() else { Issue.record("first checkout"); return }
        #expect(tree(root + "/state/source/git/current") == (try expected(commit)))

        // A modification, an addition, a deletion that empties directories, a type change.
        try write("index: changed\n", "specs/b3.yaml")
        try write("new\n", "specs/new/added.yaml")
        try FileManager.default.removeItem(atPath: root + "/work/specs/nested")
        try FileManager.default.removeItem(atPath: root + "/work/specs/b4.yaml")
        try FileManager.default.createSymbolicLink(atPath: root + "/work/specs/b4.yaml", withDestinationPath: "b5.yaml")
        try write("outside, changed\n", "README")
        let previous = commit
        commit = try commitAndPush("second")
        guard case .moved(previous, commit, let changed?, false) = try await source.update() else { Issue.record("second checkout"); return }
        let second = tree(root + "/state/source/git/current"), secondExpected = try expected(commit)
        #expect(second == secondExpected, "\(second.filter { secondExpected[$0.key] != $0.value }) \(secondExpected.filter { second[$0.key] != $0.value })")
        let current = root + "/state/source/git/current/specs/"
        #expect(Set(changed) == Set(["b3.yaml", "new/added.yaml", "nested/only/one.yaml", "b4.yaml"].map { current + $0 }), "\(changed)")
        // Made from the previous one: an unchanged file is the same inode, a changed one not.
        func links(_ path: String) -> Int { ((try? FileManager.default.attributesOfItem(atPath: path))?[.referenceCount] as? NSNumber)?.intValue ?? 0 }
        #expect(links(current + "b10.yaml") >= 2 && links(current + "b3.yaml") == 1, "\(links(current + "b10.yaml")) \(links(current + "b3.yaml"))")
        // The snapshot before stays whole (a read begun on it finishes).
        #expect(tree(root + "/state/source/git/snapshots/" + previous) == (try expected(previous)))

        // No change at all, then history rewritten: a whole tree, said so.
        guard case .unchanged(commit) = try await source.update() else { Issue.record("unchanged"); return }
        try git(["checkout", "--quiet", "--orphan", "rewritten"], in: root + "/work")
        try write("rewritten\n", "specs/b0.yaml")
        let rewritten = try commitAndPush("rewritten", force: true)
        guard case .moved(commit, rewritten, _, true) = try await source.update() else { Issue.record("force-push"); return }
        #expect(tree(root + "/state/source/git/current") == (try expected(rewritten)))

        // Many changes at once (over the incremental limit): exported whole, still exact.
        for index in 0..<(GitSpecSourceTests.many) { try write("many: \(index)\n", "specs/many/m\(index).yaml") }
        let many = try commitAndPush("many")
        guard case .moved(rewritten, many, _, false) = try await source.update() else { Issue.record("many"); return }
        #expect(tree(root + "/state/source/git/current") == (try expected(many)))
    }

    static let many = 1200
}
