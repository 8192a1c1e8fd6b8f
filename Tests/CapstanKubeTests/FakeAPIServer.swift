import CapstanKube
import CapstanModel
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// hack/fake-apiserver started for a test: HTTPS on 127.0.0.1 with client certificates, the
/// kubeconfigs it writes, and its /fake/ controls.
final class FakeAPIServer: @unchecked Sendable {
    static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    let directory: String
    let process: Process
    let port: Int

    struct StartError: Error, CustomStringConvertible { var description: String }

    /// `gc`: the fake's garbage collection of dependents, as every real cluster has it.
    init(arguments: [String] = [], gc: Bool = true) throws {
        directory = NSTemporaryDirectory() + "capstan-fake-apiserver-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", Self.root + "/hack/fake-apiserver/fake_apiserver.py", "--dir", directory, "--verbose"] + (gc ? ["--gc"] : []) + arguments
        let output = Pipe()
        process.standardOutput = output
        // Every request it served, for a failing test's message.
        _ = FileManager.default.createFile(atPath: directory + "/requests.log", contents: nil)
        process.standardError = FileHandle(forWritingAtPath: directory + "/requests.log")
        try process.run()
        // It prints its address once it listens.
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { throw StartError(description: "the fake API server exited before listening") }
            line.append(chunk)
        }
        let text = String(decoding: line, as: UTF8.self)
        guard let range = text.range(of: "127.0.0.1:"), let port = Int(text[range.upperBound...].prefix { $0.isNumber }) else {
            throw StartError(description: "unexpected first line: \(text)")
        }
        self.port = port
    }

    deinit { stop() }

    func stop() {
        if process.isRunning {
            process.terminate()
            let deadline = Date().addingTimeInterval(5)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        // CAPSTAN_KEEP_FAKE=1 keeps the directory (requests.log, daemon logs) for a post-mortem.
        if ProcessInfo.processInfo.environment["CAPSTAN_KEEP_FAKE"] == nil { try? FileManager.default.removeItem(atPath: directory) }
    }

    var kubeconfig: String { directory + "/kubeconfig" }
    var kubeconfigWithFiles: String { directory + "/kubeconfig-files" }

    func client(qps: Double = 0, maxRetries: Int = 5) throws -> KubeClient {
        try KubeClient(config: try KubeConfig.load(paths: [kubeconfig]), qps: qps, maxRetries: maxRetries)
    }

    /// Calls a /fake/ control with the test's own client.
    func control(_ client: KubeClient, _ path: String, _ body: SpecNode = .mapping([])) async throws {
        try await client.raw(method: "POST", path: "/fake/" + path, body: body)
    }

    /// The CRDs from crds/, as the API takes them.
    static func crds() throws -> [SpecNode] {
        let directory = root + "/crds"
        return try FileManager.default.contentsOfDirectory(atPath: directory).sorted().filter { $0.hasPrefix(capstanGroup + "_") && $0.hasSuffix(".yaml") }.map { file in
            let text = try String(contentsOfFile: directory + "/" + file, encoding: .utf8)
            guard let root = try YAMLReader().documents(text).first?.root else { throw StartError(description: "\(file) is empty") }
            return root
        }
    }
}
