import CapstanControllers
import CapstanModel
import CapstanRuntime
import Foundation

/// Backups on Kubernetes: each run is a `batch/v1` Job named by the run's id, owned by the
/// BackupSchedule (ownerReference when it is a custom resource, the Capstan labels always),
/// running `capstan backup-job --from-env` in the backup image: the job (without secrets) in
/// `CAPSTAN_BACKUP_JOB`, the secrets by `secretKeyRef` from the cluster's Secrets — never in the
/// Job's spec. One attempt (`backoffLimit: 0`), `activeDeadlineSeconds` the schedule's timeout,
/// `ttlSecondsAfterFinished` a day. The result is the pod's termination message (the same JSON
/// a local job prints); without one, the Job's conditions say how it ended.
public final class KubeBackups: BackupPlatform, Sendable {
    public static let jobs = KubeResource(group: "batch", version: "v1", plural: "jobs", kind: "Job")
    public static let pods = KubeResource(group: "", version: "v1", plural: "pods", kind: "Pod")
    /// The Job's name on the Job and its pods (a label value: at most 63 characters); the run's
    /// id, whole, is the annotation `capstan.dev/backup-id`.
    static let jobLabel = "capstan.dev/backup-job"
    public static let idAnnotation = "capstan.dev/backup-id"
    public static let defaultImage = "ghcr.io/capstan-dev/capstan:0.1.0"
    public static let finishedTTL = 86_400

    let client: KubeClient
    let image: String
    let version: String
    let uid: @Sendable (ObjectKey) -> String?
    /// Cleans up after a run cut off (an S3 upload begun), from the operator.
    let recoverRun: @Sendable (BackupRun, BackupJobSpec) async -> BackupOutcome
    let stopped = Synchronized<[String: String]>([:])

    public init(client: KubeClient, image: String = KubeBackups.defaultImage, version: String, uid: @escaping @Sendable (ObjectKey) -> String?,
                recover: @escaping @Sendable (BackupRun, BackupJobSpec) async -> BackupOutcome) {
        self.client = client
        self.image = image
        self.version = version
        self.uid = uid
        self.recoverRun = recover
    }

    /// A run's Job: its id in lower case (a Job's name is a DNS label), cut to 63 characters
    /// with a hash of the whole when longer. The label `capstan.dev/backup-id` keeps the id.
    public static func jobName(_ id: String) -> String {
        let lower = id.lowercased()
        guard lower.count > 63 else { return lower }
        var hash: UInt64 = 0xcbf29ce484222325
        for byte in lower.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100000001b3 }
        return String(lower.prefix(52)).trimmingCharacters(in: CharacterSet(charactersIn: "-.")) + "-" + String(hash, radix: 16).prefix(10)
    }

    /// Environment variables carrying the secrets into the pod.
    static let passwordVariable = "CAPSTAN_BACKUP_PGPASSWORD"
    static let keyVariable = "CAPSTAN_BACKUP_KEY"
    static let credentialsVariable = "CAPSTAN_BACKUP_S3_CREDENTIALS"
    public static let jobVariable = "CAPSTAN_BACKUP_JOB"

    /// The job for a run, without its secrets.
    func job(_ run: BackupRun) -> BackupJobSpec {
        BackupJobSpec(id: run.id, namespace: run.owner.namespace, schedule: run.owner.name, spec: run.spec, secrets: .init(),
                      capstanVersion: version, scratch: "/tmp/capstan-backup")
    }

    func manifest(_ run: BackupRun) throws(BackupStartError) -> SpecNode {
        let spec = job(run)
        let encoded: String
        do { encoded = String(decoding: try JSONEncoder().encode(spec), as: UTF8.self) } catch { throw BackupStartError("InternalError", "\(error)") }
        var env: [SpecNode] = [.mapping([("name", .string(Self.jobVariable)), ("value", .string(encoded))])]
        func secret(_ variable: String, _ source: SecretSource?) {
            guard let ref = source?.secretKeyRef else { return }
            env.append(.mapping([("name", .string(variable)), ("valueFrom", .mapping([("secretKeyRef", .mapping([
                ("name", .string(ref.name)), ("key", .string(ref.key)),
            ]))]))]))
        }
        secret(Self.passwordVariable, run.spec.source.postgres?.passwordFrom)
        secret(Self.keyVariable, run.spec.encryption?.keyFrom)
        secret(Self.credentialsVariable, run.spec.destination.s3?.credentialsFrom)
        var volumes: [SpecNode] = [.mapping([("name", .string("scratch")), ("emptyDir", .mapping([]))])]
        var mounts: [SpecNode] = [.mapping([("name", .string("scratch")), ("mountPath", .string("/tmp/capstan-backup"))])]
        // Paths on the node: the source directory, SQLite file and local destination.
        for (index, path) in [run.spec.source.sqlite.map { ($0.path as NSString).deletingLastPathComponent }, run.spec.source.directory?.path,
                              run.spec.destination.local?.path].enumerated() {
            guard let path, path.hasPrefix("/") else { continue }
            volumes.append(.mapping([("name", .string("host-\(index)")), ("hostPath", .mapping([("path", .string(path))]))]))
            mounts.append(.mapping([("name", .string("host-\(index)")), ("mountPath", .string(path))]))
        }
        let labels: [(String, SpecNode)] = [(Children.managedBy, .string("capstan")), (Children.ownerKindLabel, .string("BackupSchedule")),
                                            (Children.ownerNameLabel, .string(run.owner.name)), (Self.jobLabel, .string(Self.jobName(run.id)))]
        var metadata: [(String, SpecNode)] = [("name", .string(Self.jobName(run.id))), ("namespace", .string(run.owner.namespace)), ("labels", .mapping(labels)),
                                              ("annotations", .mapping([(Self.idAnnotation, .string(run.id))]))]
        if let uid = uid(run.owner) {
            metadata.append(("ownerReferences", .sequence([.mapping([
                ("apiVersion", .string(capstanAPIVersion)), ("kind", .string("BackupSchedule")), ("name", .string(run.owner.name)),
                ("uid", .string(uid)), ("controller", .bool(true)), ("blockOwnerDeletion", .bool(true)),
            ])])))
        }
        let container: SpecNode = .mapping([
            ("name", .string("backup")), ("image", .string(image)), ("command", .sequence([.string("capstan"), .string("backup-job"), .string("--from-env")])),
            ("env", .sequence(env)), ("volumeMounts", .sequence(mounts)),
            ("terminationMessagePath", .string("/dev/termination-log")), ("terminationMessagePolicy", .string("File")),
        ])
        return .mapping([
            ("apiVersion", .string("batch/v1")), ("kind", .string("Job")), ("metadata", .mapping(metadata)),
            ("spec", .mapping([
                ("backoffLimit", .int(0)), ("activeDeadlineSeconds", .int(max(1, Int(run.spec.timeout.seconds)))),
                ("ttlSecondsAfterFinished", .int(Self.finishedTTL)),
                ("template", .mapping([
                    ("metadata", .mapping([("labels", .mapping(labels))])),
                    ("spec", .mapping([("restartPolicy", .string("Never")), ("containers", .sequence([container])), ("volumes", .sequence(volumes))])),
                ])),
            ])),
        ])
    }

    public func start(_ run: BackupRun) async throws(BackupStartError) {
        let object = try manifest(run)
        do {
            _ = try await client.create(Self.jobs, namespace: run.owner.namespace, object)
        } catch where error.code == 409 {
            return  // started already
        } catch {
            throw BackupStartError("JobFailed", "cannot create Job \(Self.jobName(run.id)): \(error)")
        }
    }

    static func items(_ node: SpecNode?) -> [SpecNode] {
        if case .sequence(let items)? = node?.value { return items }
        return []
    }

    static func condition(_ job: SpecNode, _ type: String) -> SpecNode? {
        items(job["status"]?["conditions"]).first { $0["type"]?.scalarText == type && $0["status"]?.scalarText == "True" }
    }

    public func state(of id: String, owner: ObjectKey) async -> BackupJobState {
        let job: SpecNode?
        do {
            job = try await client.get(Self.jobs, namespace: owner.namespace, name: Self.jobName(id))
        } catch {
            return .running  // cannot tell now: looked at again later
        }
        guard let job else { return .unknown }
        let complete = Self.condition(job, "Complete"), failed = Self.condition(job, "Failed")
        guard complete != nil || failed != nil else { return .running }
        let finished = (complete ?? failed)?["lastTransitionTime"]?.scalarText.flatMap { Timestamp(rfc3339: $0)?.date } ?? Date()
        if let result = await result(of: id, namespace: owner.namespace) {
            var outcome = result.outcome
            if !outcome.succeeded, let reason = stopped.value[id] { outcome.reason = reason }
            return .finished(outcome)
        }
        if complete != nil {
            return .finished(BackupOutcome(succeeded: true, reason: "Succeeded", message: "backup \(id): Job \(id) completed (its pod's result is gone)", finishedAt: finished))
        }
        let reason = failed?["reason"]?.scalarText ?? ""
        let message = failed?["message"]?.scalarText ?? "the Job failed"
        return .finished(BackupOutcome(succeeded: false, reason: reason == "DeadlineExceeded" ? "Timeout" : (stopped.value[id] ?? "JobFailed"),
                                       message: "Job \(id): \(reason.isEmpty ? "" : reason + ": ")\(message)", finishedAt: finished))
    }

    /// The result the backup pod left as its termination message.
    func result(of id: String, namespace: String) async -> BackupJobResult? {
        guard let pods = try? await client.list(Self.pods, namespace: namespace, labelSelector: "\(Self.jobLabel)=\(Self.jobName(id))").items else { return nil }
        for pod in pods {
            for status in Self.items(pod["status"]?["containerStatuses"]) {
                guard let message = status["state"]?["terminated"]?["message"]?.scalarText,
                      let result = try? JSONDecoder().decode(BackupJobResult.self, from: Data(message.utf8)) else { continue }
                return result
            }
        }
        return nil
    }

    public func stop(_ id: String, owner: ObjectKey, reason: String) async {
        stopped.update { $0[id] = reason }
        // The pod gets SIGTERM: the job removes what it wrote and ends.
        _ = try? await client.delete(Self.jobs, namespace: owner.namespace, name: Self.jobName(id), propagation: "Background")
    }

    public func running(owner: ObjectKey) async -> [String] {
        let selector = "\(Children.ownerKindLabel)=BackupSchedule,\(Children.ownerNameLabel)=\(owner.name)"
        guard let jobs = try? await client.list(Self.jobs, namespace: owner.namespace, labelSelector: selector).items else { return [] }
        return jobs.filter { Self.condition($0, "Complete") == nil && Self.condition($0, "Failed") == nil }
            .compactMap { $0["metadata"]?["annotations"]?[Self.idAnnotation]?.scalarText }.sorted()
    }

    public func recover(_ run: BackupRun) async -> BackupOutcome {
        if let reason = stopped.update({ $0.removeValue(forKey: run.id) }) {
            return BackupOutcome(succeeded: false, reason: reason, message: "backup \(run.id) was stopped (\(reason)); its Job was deleted", finishedAt: Date())
        }
        var outcome = await recoverRun(run, job(run))
        if !outcome.succeeded { outcome.message = "Job \(run.id) is gone (deleted before it finished): " + outcome.message }
        return outcome
    }
}
