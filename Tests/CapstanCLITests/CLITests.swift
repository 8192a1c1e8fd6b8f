import Foundation
import Testing
import CapstanModel

/// Runs the built `capstan` binary as a user would.
@Suite(.serialized) struct CLITests {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static var binary: String {
        ProcessInfo.processInfo.environment["CAPSTAN_BIN"] ?? root + "/.build/debug/capstan"
    }

    struct Run {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    @discardableResult
    static func capstan(_ arguments: [String], in directory: String = root, environment: [String: String] = [:]) throws -> Run {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw CLIError("capstan binary not found at \(binary): run `swift build` first (hack/test does)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Run(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self), stderr: String(decoding: stderr, as: UTF8.self))
    }

    /// The CLI as `capstan(_:)` runs it, awaited: the output goes to files and the exit wakes
    /// the caller, so no thread waits meanwhile.
    static func capstanAsync(_ arguments: [String], in directory: String = root) async throws -> Run {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw CLIError("capstan binary not found at \(binary): run `swift build` first (hack/test does)")
        }
        let base = NSTemporaryDirectory() + "capstan-cli-output-" + UUID().uuidString
        defer { unlink(base + ".out"); unlink(base + ".err") }
        _ = FileManager.default.createFile(atPath: base + ".out", contents: nil)
        _ = FileManager.default.createFile(atPath: base + ".err", contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        let out = FileHandle(forWritingAtPath: base + ".out")!, err = FileHandle(forWritingAtPath: base + ".err")!
        defer { try? out.close(); try? err.close() }
        process.standardOutput = out
        process.standardError = err
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            process.terminationHandler = { _ in continuation.resume() }
            do { try process.run() } catch { continuation.resume(throwing: error) }
        }
        let stdout = (try? String(contentsOfFile: base + ".out", encoding: .utf8)) ?? ""
        let stderr = (try? String(contentsOfFile: base + ".err", encoding: .utf8)) ?? ""
        return Run(status: process.terminationStatus, stdout: stdout, stderr: stderr)
    }

    struct CLIError: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    static func temporaryDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "capstan-cli-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func examplesAreValidAndCoverEveryKind() throws {
        let run = try Self.capstan(["validate", "manifests/examples"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        for kind in ResourceKind.allCases {
            #expect(run.stdout.range(of: "\\b[1-9][0-9]* \(kind.rawValue)", options: .regularExpression) != nil, "examples lack a \(kind.rawValue): \(run.stdout)")
        }
    }

    @Test func everyCorpusFileIsRejectedWithItsExpectedLines() throws {
        let directory = Self.root + "/Tests/Corpus/invalid"
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
            .filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".json") }.sorted()
        #expect(names.count >= 40)
        for name in names {
            let expected = try String(contentsOfFile: directory + "/" + name.prefix(while: { $0 != "." }) + ".expected", encoding: .utf8)
            let run = try Self.capstan(["validate", "--quiet", name], in: directory)
            #expect(run.status == 1, "\(name) exit \(run.status)")
            #expect(run.stdout == expected, "\(name)")
        }
    }

    @Test func summaryCountsProblemsAndFiles() throws {
        let directory = Self.root + "/Tests/Corpus/invalid"
        let run = try Self.capstan(["validate", "05-wrong-type-replicas.yaml", "08-missing-required.yaml"], in: directory)
        #expect(run.status == 1)
        #expect(run.stdout.hasSuffix("3 problems in 2 of 2 files; 0 valid objects\n"), "\(run.stdout)")
    }

    @Test func filesThatCannotBeManifests() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fm = FileManager.default
        _ = fm.createFile(atPath: dir + "/binary.yaml", contents: Data([0x7F, 0x45, 0x4C, 0x46, 0, 1, 2]))
        _ = fm.createFile(atPath: dir + "/huge.yaml", contents: Data(repeating: UInt8(ascii: "#"), count: 3 << 20))
        _ = fm.createFile(atPath: dir + "/latin1.yaml", contents: Data([0x6B, 0x3A, 0x20, 0xE9, 0x0A]))
        _ = fm.createFile(atPath: dir + "/empty.yml", contents: Data())
        #expect(mkfifo(dir + "/pipe.yaml", 0o644) == 0)
        try fm.createSymbolicLink(atPath: dir + "/loop", withDestinationPath: ".")
        try fm.createSymbolicLink(atPath: dir + "/gone.yaml", withDestinationPath: dir + "/does-not-exist.yaml")
        try fm.createSymbolicLink(atPath: dir + "/self.yaml", withDestinationPath: dir + "/self.yaml")
        // A file that opens but cannot be read, even by root.
        try fm.createSymbolicLink(atPath: dir + "/mem.yaml", withDestinationPath: "/proc/self/mem")
        try fm.createDirectory(atPath: dir + "/.git", withIntermediateDirectories: true)
        _ = fm.createFile(atPath: dir + "/.git/ignored.yaml", contents: Data("not: [valid".utf8))

        let run = try Self.capstan(["validate", "--quiet", "."], in: dir)
        #expect(run.status == 1)
        let lines = run.stdout.split(separator: "\n").map(String.init)
        #expect(lines == [
            "./binary.yaml: binary file (NUL byte at offset 4): not a YAML or JSON manifest",
            "./empty.yml: file has no documents (it is empty or only comments)",
            "./gone.yaml: broken symlink: No such file or directory",
            "./huge.yaml: file is 3 MiB, over the 1 MiB limit for a manifest (--max-file-size)",
            "./latin1.yaml: not UTF-8 text: manifests must be UTF-8 YAML or JSON",
            "./loop: symlink loop: this directory leads back to .; not followed",
            "./mem.yaml: cannot read: Input/output error",
            "./pipe.yaml: not a regular file (a FIFO, socket or device): not read",
            "./self.yaml: broken symlink: Too many levels of symbolic links",
        ], "\(run.stdout)")
    }

    @Test func permissionDeniedIsReported() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = FileManager.default.createFile(atPath: dir + "/secret.yaml", contents: Data("a: b\n".utf8), attributes: [.posixPermissions: 0o000])
        let run = try Self.capstan(["validate", "--quiet", "secret.yaml"], in: dir)
        if geteuid() == 0 {
            // Root reads anything: the file is read and rejected for what it says instead.
            #expect(run.stdout == "secret.yaml:1:1: apiVersion: required field is missing (Capstan objects use capstan.dev/v1alpha1)\n")
        } else {
            #expect(run.stdout == "secret.yaml: cannot read: Permission denied\n")
        }
        #expect(run.status == 1)
    }

    @Test func maxFileSizeIsConfigurable() throws {
        let run = try Self.capstan(["validate", "--quiet", "--max-file-size", "512", "manifests/examples/hello.yaml"])
        #expect(run.status == 1)
        #expect(run.stdout.contains("over the 512 B limit"))
        let bad = try Self.capstan(["validate", "--max-file-size", "lots", "manifests/examples"])
        #expect(bad.status == 64)
        #expect(bad.stderr.contains("--max-file-size"))
    }

    @Test func jsonOutputIsMachineReadable() throws {
        let run = try Self.capstan(["validate", "-o", "json", "Tests/Corpus/invalid/43-env-problems.yaml", "manifests/examples"])
        #expect(run.status == 1)
        let report = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        #expect(report["valid"] as? Bool == false)
        #expect((report["objects"] as? [Any])?.count == 7, "the examples: one of each kind, and the Deployment that receives the alerts")
        let problems = try #require(report["problems"] as? [[String: Any]])
        #expect(problems.count == 3)
        #expect(problems.first?["line"] as? Int == 9)
        #expect(problems.first?["path"] as? String == "spec.env")
        #expect(problems.first?["object"] as? String == "Application/web")
    }

    @Test func noPathsIsAUsageError() throws {
        let run = try Self.capstan(["validate"])
        #expect(run.status == 64)
    }

    @Test func runSaysWhereToReadFrom() throws {
        let neither = try Self.capstan(["run"])
        #expect(neither.status == 64 && neither.stderr.contains("--spec-dir DIR") && neither.stderr.contains("--kube"), "\(neither.stderr)")
        let both = try Self.capstan(["run", "--kube", "--spec-dir", "manifests/examples"])
        #expect(both.status == 64 && both.stderr.contains("--platform kube"), "\(both.stderr)")
        let badQPS = try Self.capstan(["run", "--kube", "--kube-qps", "-1"])
        #expect(badQPS.status == 64 && badQPS.stderr.contains("--kube-qps"), "\(badQPS.stderr)")
        let noConfig = try Self.capstan(["run", "--kube", "--kubeconfig", "/nonexistent/kubeconfig", "--metrics-addr", "127.0.0.1:0"])
        #expect(noConfig.status == 2 && noConfig.stderr.contains("/nonexistent/kubeconfig"), "\(noConfig.stderr)")
    }

    @Test func crdsPrintsTheGeneratedDefinitions() throws {
        let run = try Self.capstan(["crds"])
        #expect(run.status == 0)
        #expect(run.stdout == CRDGenerator.allYAML())
        #expect(run.stdout.components(separatedBy: "kind: CustomResourceDefinition").count == 7)
    }

    @Test func crdsWritesOneFilePerKind() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let run = try Self.capstan(["crds", "--output-dir", dir])
        #expect(run.status == 0)
        for kind in ResourceKind.allCases {
            let text = try String(contentsOfFile: dir + "/" + CRDGenerator.fileName(for: kind), encoding: .utf8)
            #expect(text == CRDGenerator.yaml(for: kind))
        }
        let kustomization = try String(contentsOfFile: dir + "/kustomization.yaml", encoding: .utf8)
        for kind in ResourceKind.allCases { #expect(kustomization.contains("- \(CRDGenerator.fileName(for: kind))\n")) }
    }

    @Test func commandsOnAMissingStateDirectorySaySoAndCreateNothing() throws {
        let dir = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for arguments in [["get", "applications"], ["reconcile", "application/web"], ["events"], ["describe", "app", "web"]] {
            let run = try Self.capstan(arguments + ["--state-dir", dir + "/state"])
            #expect(run.status == 1, "\(arguments)")
            #expect(run.stderr.contains("no state store at"), "\(arguments): \(run.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/state"))
    }

    @Test func versionAndHelp() throws {
        let version = try Self.capstan(["version"])
        #expect(version.status == 0)
        #expect(version.stdout.hasPrefix("capstan "))
        #expect(version.stdout.contains("capstan.dev/v1alpha1"))
        let help = try Self.capstan(["--help"])
        #expect(help.status == 0)
        for command in ["validate", "crds", "version"] { #expect(help.stdout.contains(command)) }
    }
}
