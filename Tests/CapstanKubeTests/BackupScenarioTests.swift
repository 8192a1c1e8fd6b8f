import CapstanControllers
import CapstanKube
import CapstanModel
import Foundation
import Testing

/// BackupSchedule scenarios on both platforms with the built binary: locally a run is a real
/// `capstan backup-job`; on the fake API server it is a `batch/v1` Job whose pod this test plays
/// (no kubelet there): it leaves the result as its termination message, or fails.
@Suite(.serialized, .timeLimit(.minutes(5))) struct BackupScenarioTests {
    typealias Platform = DeploymentScenarioTests.Platform
    typealias Kind = DeploymentScenarioTests.Kind

    static func schedule(root: String, timeout: String = "1h") -> SpecNode {
        .mapping([
            ("apiVersion", .string(capstanAPIVersion)), ("kind", .string("BackupSchedule")), ("metadata", .mapping([("name", .string("web"))])),
            ("spec", .mapping([
                ("schedule", .string("@yearly")),
                ("source", .mapping([("directory", .mapping([("path", .string(root + "/data"))]))])),
                ("destination", .mapping([("local", .mapping([("path", .string(root + "/dest"))]))])),
                ("encryption", .mapping([("keyFrom", .mapping([("secretKeyRef", .mapping([("name", .string("backup-key")), ("key", .string("key"))]))]))])),
                ("timeout", .string(timeout)),
            ])),
        ])
    }

    func schedule(_ platform: Platform) async throws -> SpecNode? {
        if platform.kind == .kube { return try await platform.client!.get(.capstan(.backupSchedule), namespace: "default", name: "web") }
        let result = try await KubeModeTests.capstan(["get", "backupschedule/web", "-o", "json", "--state-dir", platform.state])
        guard result.status == 0, let start = result.output.firstIndex(of: "{") else { return nil }
        return try? JSONReader.parse(Data(result.output[start...].utf8))
    }

    /// Waits for the newest record to satisfy `condition`; returns it.
    func record(_ platform: Platform, _ what: String, seconds: Double = 40, _ condition: (SpecNode) -> Bool) async throws -> SpecNode {
        let deadline = Date().addingTimeInterval(seconds)
        var last: SpecNode?
        while Date() < deadline {
            last = try await schedule(platform)
            if let newest = last?["status"]?["backups"]?.entriesOrItems.first, condition(newest) { return newest }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw KubeModeTests.Failure(description: "\(platform.kind): no \(what) after \(seconds) s; status: \(last?["status"].map { JSONEmitter.emit($0, pretty: true) } ?? "none")")
    }

    /// The cluster's part for a Job: its pod ends with `result` as termination message, or fails.
    func finish(_ platform: Platform, job: SpecNode, result: BackupJobResult?, failure: (reason: String, message: String)? = nil) async throws {
        let client = platform.client!
        let name = job["metadata"]?["name"]?.scalarText ?? ""
        if let result {
            let pod: SpecNode = .mapping([
                ("apiVersion", .string("v1")), ("kind", .string("Pod")),
                ("metadata", .mapping([("name", .string(name + "-pod")), ("labels", job["spec"]?["template"]?["metadata"]?["labels"] ?? .mapping([]))])),
                ("spec", .mapping([("containers", .sequence([.mapping([("name", .string("backup")), ("image", .string("x"))])]))])),
            ])
            _ = try await client.create(KubeBackups.pods, namespace: "default", pod)
            let message = String(decoding: try JSONEncoder().encode(result), as: UTF8.self)
            let status: SpecNode = .mapping([("containerStatuses", .sequence([.mapping([("name", .string("backup")), ("state", .mapping([
                ("terminated", .mapping([("exitCode", .int(0)), ("message", .string(message))])),
            ]))])]))])
            _ = try await client.patch(KubeBackups.pods, namespace: "default", name: name + "-pod", .mapping([("status", status)]), subresource: "status")
        }
        let now = Timestamp(Date()).description
        let condition: SpecNode = failure.map { failure in
            .mapping([("type", .string("Failed")), ("status", .string("True")), ("reason", .string(failure.reason)), ("message", .string(failure.message)),
                      ("lastTransitionTime", .string(now))])
        } ?? .mapping([("type", .string("Complete")), ("status", .string("True")), ("lastTransitionTime", .string(now))])
        _ = try await client.patch(KubeBackups.jobs, namespace: "default", name: name, .mapping([("status", .mapping([("conditions", .sequence([condition]))]))]),
                                   subresource: "status")
    }

    /// Runs a Job's container here as a kubelet would (the built binary for its `capstan`):
    /// its environment with each `secretKeyRef` read from the cluster. Returns its result.
    func runContainer(_ platform: Platform, container: SpecNode) async throws -> BackupJobResult {
        var environment = ProcessInfo.processInfo.environment
        for entry in container["env"]?.entriesOrItems ?? [] {
            let name = entry["name"]?.scalarText ?? ""
            if let value = entry["value"]?.scalarText {
                environment[name] = value
            } else if let ref = entry["valueFrom"]?["secretKeyRef"], let secretName = ref["name"]?.scalarText, let key = ref["key"]?.scalarText,
                      let secret = try await platform.client!.get(KubeSecrets.secrets, namespace: "default", name: secretName) {
                environment[name] = KubeSecrets.values(of: secret)[key].map { String(decoding: $0, as: UTF8.self) }
            }
        }
        let command = (container["command"]?.entriesOrItems ?? []).compactMap(\.scalarText)
        #expect(command == ["capstan", "backup-job", "--from-env"])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: KubeModeTests.binary)
        process.arguments = Array(command.dropFirst())
        process.environment = environment
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let line = String(decoding: data, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? ""
        return try JSONDecoder().decode(BackupJobResult.self, from: Data(line.utf8))
    }

    func jobs(_ platform: Platform) async throws -> [SpecNode] {
        try await platform.client!.list(KubeBackups.jobs, namespace: "default").items
    }

    /// Asks for a run; on a cluster waits for its Job (the new one).
    func requestRun(_ platform: Platform, known: Int = 0) async throws -> SpecNode? {
        // The daemon reads a put schedule when it reads it: until then the command truly finds nothing.
        let seen = Date().addingTimeInterval(20)
        while try await platform.cli(["get", "backupschedule/web"]).status != 0 && Date() < seen { try await Task.sleep(for: .milliseconds(100)) }
        let run = try await platform.cli(["backup", "run", "backupschedule/web"])
        #expect(run.status == 0, "\(platform.kind): \(run.output)")
        guard platform.kind == .kube else { return nil }
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            let all = try await jobs(platform)
            if all.count > known { return all.max { ($0["metadata"]?["name"]?.scalarText ?? "") < ($1["metadata"]?["name"]?.scalarText ?? "") } }
            try await Task.sleep(for: .milliseconds(100))
        }
        let status = try await schedule(platform)?["status"]
        throw KubeModeTests.Failure(description: "no Job for the run; status: \(status.map { JSONEmitter.emit($0, pretty: true) } ?? "none")")
    }

    @Test(arguments: Kind.allCases) func aRequestedRunIsAJobWhoseResultIsTheStatus(_ kind: Kind) async throws {
        try await DeploymentScenarioTests().on(kind) { platform in
            let root = NSTemporaryDirectory() + "capstan-backup-scenario-" + UUID().uuidString
            try FileManager.default.createDirectory(atPath: root + "/data", withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: root + "/dest", withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: root) }
            try "backed up\n".write(toFile: root + "/data/file.txt", atomically: true, encoding: .utf8)
            let key = Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
            if kind == .kube {
                _ = try await platform.client!.create(KubeSecrets.secrets, namespace: "default", .mapping([
                    ("apiVersion", .string("v1")), ("kind", .string("Secret")), ("metadata", .mapping([("name", .string("backup-key"))])),
                    ("data", .mapping([("key", .string(Data(key.utf8).base64EncodedString()))])),
                ]))
            } else {
                let set = try await KubeModeTests.capstan(["secret", "set", "backup-key", "--from-literal", "key=\(key)", "--state-dir", platform.state])
                #expect(set.status == 0, "\(set.output)")
            }
            try await platform.put([Self.schedule(root: root)])
            let job = try await requestRun(platform)
            if let job {
                // A Job the cluster runs: owned, labelled, one attempt, bounded, collected, no secret value in it.
                let metadata = job["metadata"]
                let owner = metadata?["ownerReferences"]?.entriesOrItems.first
                #expect(owner?["kind"]?.scalarText == "BackupSchedule" && owner?["controller"]?.scalarText == "true")
                #expect(metadata?["labels"]?["capstan.dev/owner-name"]?.scalarText == "web")
                #expect(job["spec"]?["backoffLimit"]?.scalarText == "0")
                #expect(job["spec"]?["activeDeadlineSeconds"]?.scalarText == "3600")
                #expect(job["spec"]?["ttlSecondsAfterFinished"]?.scalarText == "86400")
                let container = job["spec"]?["template"]?["spec"]?["containers"]?.entriesOrItems.first
                #expect(container?["image"]?.scalarText == KubeBackups.defaultImage)
                let env = container?["env"]?.entriesOrItems ?? []
                #expect(env.contains { $0["valueFrom"]?["secretKeyRef"]?["name"]?.scalarText == "backup-key" })
                #expect(!JSONEmitter.emit(job, pretty: false).contains(key), "the key is not in the Job")
                let id = metadata?["annotations"]?["capstan.dev/backup-id"]?.scalarText ?? ""
                #expect(metadata?["name"]?.scalarText == id.lowercased())
                // The kubelet's part: the container's command with the Job's environment (its
                // secretKeyRefs read from the cluster); its result is the termination message.
                let result = try await runContainer(platform, container: container!)
                #expect(result.id == id && result.succeeded, "\(result)")
                try await finish(platform, job: job, result: result)
            }
            let succeeded = try await record(platform, "success") { $0["outcome"]?.scalarText == "Succeeded" }
            #expect(succeeded["verified"]?.scalarText == "restore")
            let status = try await schedule(platform)?["status"]
            #expect(status?["lastSuccessfulTime"] != nil)
            #expect(status?["active"]?.entriesOrItems.isEmpty ?? true)
            if kind == .local {
                #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/dest").count == 2, "the backup and its manifest")
                return
            }
            #expect(Int(succeeded["size"]?.scalarText ?? "") ?? 0 > 0)
            // The CLI reads the schedule and its Secrets from the cluster to list and restore.
            let list = try await platform.cli(["backup", "list", "backupschedule/web"])
            #expect(list.status == 0 && list.output.contains(succeeded["id"]?.scalarText ?? "?"), "\(list.output)")
            let restore = try await platform.cli(["backup", "restore", "backupschedule/web", "--to", root + "/restored"])
            #expect(restore.status == 0, "\(restore.output)")
            #expect((try? String(contentsOfFile: root + "/restored/file.txt", encoding: .utf8)) == "backed up\n")
            #expect(try await KubeModeTests.events(platform.client!, about: "web").contains("BackupRestored"))

            // A Job past its deadline: Timeout, with the cluster's message.
            let late = try await requestRun(platform, known: 1)!
            try await finish(platform, job: late, result: nil, failure: ("DeadlineExceeded", "Job was active longer than specified deadline"))
            let timedOut = try await record(platform, "a timeout") { $0["reason"]?.scalarText == "Timeout" }
            #expect(timedOut["message"]?.scalarText?.contains("longer than specified deadline") == true)

            // A Job deleted while it ran (kubectl delete job): Interrupted.
            let doomed = try await requestRun(platform, known: 2)!
            _ = try await platform.client!.delete(KubeBackups.jobs, namespace: "default", name: doomed["metadata"]?["name"]?.scalarText ?? "")
            let interrupted = try await record(platform, "an interruption") { $0["reason"]?.scalarText == "Interrupted" }
            #expect(interrupted["id"]?.scalarText == doomed["metadata"]?["annotations"]?["capstan.dev/backup-id"]?.scalarText)
        }
    }
}
