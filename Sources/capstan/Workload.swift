import ArgumentParser
import CapstanControllers
import CapstanKube
import CapstanLocal
import CapstanModel
import Foundation

struct Rollback: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Roll a Deployment back to an earlier revision, or a SecretRotation's secret to a kept version (default: the one before the current).",
        discussion: """
            The rollback is itself a new revision with the template of the chosen one, and it holds until the Deployment's spec changes its template (version, env, or the Application's template). `capstan describe deployment/NAME` lists the revisions.

            A secretrotation/NAME is restored to --to-version N (default: the newest kept before the current) the way a failed rotation is rolled back: the version is current again, the apply command runs with its values, the restartDeployments roll. `capstan secret get NAME` lists the versions kept.

            With --kube the custom resource gets the annotation capstan.dev/rollback-to (the revision, or empty for the previous one), as `kubectl annotate` would write it; the operator removes it when it has taken the request, and status.rollback shows the result.
            """)

    @OptionGroup var options: RequestOptions

    @Option(name: .customLong("to-revision"), help: "The revision to return to.")
    var toRevision: Int?

    @Option(name: .customLong("to-version"), help: "A SecretRotation: the kept version to restore.")
    var toVersion: Int?

    func validate() throws {
        if let toRevision, toRevision < 1 { throw ValidationError("--to-revision must be 1 or more") }
        if let toVersion, toVersion < 1 { throw ValidationError("--to-version must be 1 or more") }
    }

    func run() async throws {
        let (object, namespace, wait, state, kube) = (options.object, options.namespace, options.wait, options.state, options.kube)
        let key = try parseReference(object, namespace: namespace ?? "default")
        if key.kind == .secretRotation {
            guard toRevision == nil else { throw ValidationError("a SecretRotation rolls back to a version: use --to-version") }
            return try await rollbackSecret(key)
        }
        guard toVersion == nil else { throw ValidationError("--to-version is for SecretRotations; a Deployment rolls back --to-revision") }
        guard key.kind == .deployment else { throw ValidationError("only Deployments and SecretRotations roll back; got \(key.kind.singular)") }
        let value = toRevision.map(String.init) ?? ""
        let what = "rollback to \(toRevision.map { "revision \($0)" } ?? "the previous revision")"
        guard kube.enabled else {
            try await submitRequest("rollback", for: key, value: value, what: what, wait: wait, state: state,
                                    answers: (["RollbackRequested"], ["RollbackRefused"])) { store in
                // A revision the store does not have is refused now, daemon or not.
                let known = try store.revisions(of: key).map(\.number)
                guard let toRevision else {
                    if known.count < 2 { throw UserError("deployment \(key.name) has \(known.isEmpty ? "no revision yet" : "only revision \(known[0])"): there is nothing earlier to roll back to") }
                    return
                }
                guard known.contains(toRevision) else {
                    throw UserError("deployment \(key.name) has no revision \(toRevision)" + (known.isEmpty ? " (it has none yet)" : " (it has \(known.map(String.init).joined(separator: ", ")))"))
                }
            }
            return
        }
        // An event of an earlier request may share the second: it must name this revision.
        let wanted = self.toRevision
        let named: @Sendable (String) -> Bool = { message in
            guard let wanted else { return true }
            return message.ranges(of: "revision \(wanted)").contains { range in
                range.upperBound == message.endIndex || !message[range.upperBound].isNumber
            }
        }
        try await KubeRequest(connection: kube, key: key, annotation: RollbackRequest.annotation, value: value, what: what)
            .answered(wait: wait, namespace: namespace, accepted: ["RollbackRequested"], refused: ["RollbackRefused"], matching: named)
    }
}

extension Rollback {
    func rollbackSecret(_ key: ObjectKey) async throws {
        let value = toVersion.map(String.init) ?? ""
        let what = "rollback to \(toVersion.map { "version \($0)" } ?? "the previous version")"
        guard options.kube.enabled else {
            try await submitRequest("rollback", for: key, value: value, what: what, wait: options.wait, state: options.state,
                                    answers: (["RollbackRequested"], ["RollbackRefused"])) { _ in }
            return
        }
        try await KubeRequest(connection: options.kube, key: key, annotation: RollbackRequest.annotation, value: value, what: what)
            .answered(wait: options.wait, namespace: options.namespace, accepted: ["RollbackRequested"], refused: ["RollbackRefused"], matching: { _ in true })
    }
}

struct Rotate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rotate a SecretRotation's secret now.",
        discussion: """
            The rotation runs as a scheduled one does: a new version, the apply command, the restartDeployments rolled, verify; a failure rolls it back. With --kube the custom resource gets the annotation capstan.dev/rotate-now.
            """)

    @OptionGroup var options: RequestOptions

    func run() async throws {
        let key = try parseReference(options.object, namespace: options.namespace ?? "default")
        guard key.kind == .secretRotation else { throw ValidationError("only SecretRotations rotate; got \(key.kind.singular)") }
        guard options.kube.enabled else {
            try await submitRequest(ObjectRequest.rotate, for: key, value: "", what: "rotation", wait: options.wait, state: options.state,
                                    answers: (["RotationRequested"], [])) { _ in }
            return
        }
        try await KubeRequest(connection: options.kube, key: key, annotation: ObjectRequest.annotation(of: ObjectRequest.rotate)!, value: "", what: "rotation")
            .answered(wait: options.wait, namespace: options.namespace, accepted: ["RotationRequested"], refused: [], matching: { _ in true })
    }
}

struct Ack: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ack",
        abstract: "Acknowledge an AlertRule: silence its notifications and escalation for a while.",
        discussion: """
            Until the time is up or the alert resolves, no repeat or escalation is sent (the resolved notification still is). --for 0 ends an acknowledgement. With --kube the custom resource gets the annotation capstan.dev/acknowledge.
            """)

    @OptionGroup var options: RequestOptions

    @Option(name: .customLong("for"), help: ArgumentHelp("How long (such as 30m, 1h; 0 ends it).", valueName: "duration"))
    var duration: String = "1h"

    func run() async throws {
        let key = try parseReference(options.object, namespace: options.namespace ?? "default")
        guard key.kind == .alertRule else { throw ValidationError("only AlertRules are acknowledged; got \(key.kind.singular)") }
        guard let parsed = try? KubeDuration.parse(duration), parsed.seconds >= 0 else {
            throw ValidationError("--for \"\(duration)\" is not a duration such as 30m or 1h")
        }
        let answers: Set<String> = ["Acknowledged", "AcknowledgementEnded"]
        guard options.kube.enabled else {
            try await submitRequest(ObjectRequest.acknowledge, for: key, value: duration, what: "acknowledgement", wait: options.wait, state: options.state,
                                    answers: (answers, ["AcknowledgeRefused"])) { _ in }
            return
        }
        try await KubeRequest(connection: options.kube, key: key, annotation: ObjectRequest.annotation(of: ObjectRequest.acknowledge)!, value: duration,
                              what: "acknowledgement")
            .answered(wait: options.wait, namespace: options.namespace, accepted: answers, refused: ["AcknowledgeRefused"], matching: { _ in true })
    }
}

/// What every request command takes: the object, where it is, how long to wait for an answer.
struct RequestOptions: ParsableArguments {
    @Argument(help: ArgumentHelp("The object, such as deployment/web.", valueName: "kind/name"))
    var object: String

    @Option(name: .shortAndLong, help: "Namespace of the object (default: default, or with --kube the kubeconfig context's).")
    var namespace: String?

    @Option(help: ArgumentHelp("Wait this long for the daemon to take the request (0: do not wait).", valueName: "duration"))
    var wait: String = "10s"

    @OptionGroup var state: StateOptions
    @OptionGroup var kube: KubeConnection

    /// Hands the request to the daemon (the state store) or the operator (an annotation).
    func submit(_ type: String, what: String, accepted: Set<String>, refused: Set<String>) async throws {
        let key = try parseReference(object, namespace: namespace ?? "default")
        guard key.kind == .deployment || key.kind == .canary else { throw ValidationError("only Deployments and Canaries take \(type); got \(key.kind.singular)") }
        guard kube.enabled else {
            try await submitRequest(type, for: key, value: "", what: what, wait: wait, state: state, answers: (accepted, refused))
            return
        }
        let value = Timestamp(Date()).description
        try await KubeRequest(connection: kube, key: key, annotation: ObjectRequest.annotation(of: type)!, value: value, what: what)
            .answered(wait: wait, namespace: namespace, accepted: accepted, refused: refused)
    }
}

struct Promote: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Switch a BlueGreen Deployment's traffic to its preview (with autoPromote: false), or end a Canary's pause.",
        discussion: """
            A Deployment's preview must be ready (phase Paused, reason AwaitingPromotion); a Canary must be in a pause (phase Paused: the next step follows). Otherwise the request is refused with a PromoteRefused event. With --kube the custom resource gets the annotation capstan.dev/promote.
            """)

    @OptionGroup var options: RequestOptions

    func run() async throws {
        try await options.submit(ObjectRequest.promote, what: "promotion", accepted: ["PromoteRequested"], refused: ["PromoteRefused"])
    }
}

struct Abort: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Return a BlueGreen Deployment to what served before (the preview goes, or the old colour takes the traffic back), or abort a Canary's run.",
        discussion: """
            A Canary's run is aborted at once: no traffic to the canary, its instances go, the stable version serves on and the Deployment reports its spec's version as not promoted (Stalled, CanaryAborted) until the spec changes. For a BlueGreen Deployment: within scaleDownDelay after a switch, the colour that served before takes the traffic back at once. Before the switch, the preview is removed. Either way the earlier revision runs (status.rollback) until the spec changes; with nothing to abort the request is refused with an AbortRefused event. With --kube the custom resource gets the annotation capstan.dev/abort.
            """)

    @OptionGroup var options: RequestOptions

    func run() async throws {
        try await options.submit(ObjectRequest.abort, what: "abort", accepted: ["Aborted"], refused: ["AbortRefused"])
    }
}

extension KubeRequest {
    /// Writes the request and waits until the operator removed the annotation and said what it
    /// made of it (an accepted or refused event, written in the same reconcile).
    func answered(wait: String, namespace: String?, accepted: Set<String>, refused: Set<String>,
                  matching: @escaping @Sendable (String) -> Bool = { _ in true }) async throws {
        var removedAt: Date?
        var before: Set<String>?
        let annotation = self.annotation
        let reasons = accepted.union(refused)
        /// The answering events (of this request's reasons) about the object, by name and count.
        @Sendable func answers(_ client: KubeClient, _ key: ObjectKey) async throws -> [(identity: String, event: SpecNode)] {
            let (items, _) = try await client.list(.events, namespace: key.namespace)
            return items.filter { event in
                event["involvedObject"]?["name"]?.scalarText == key.name && event["involvedObject"]?["kind"]?.scalarText == key.kind.rawValue
                    && reasons.contains(event["reason"]?.scalarText ?? "") && matching(event["message"]?.scalarText ?? "")
            }.map { ("\($0["metadata"]?["name"]?.scalarText ?? "")#\($0["count"]?.scalarText ?? "1")", $0) }
        }
        // Those of earlier requests, seen before this one is made: an answer is an event not among them.
        try await run(wait: wait, namespace: namespace, before: { client, key in
            before = Set(try await answers(client, key).map(\.identity))
        }) { client, key in
            let seen = before ?? []
            guard let object = try await client.get(.capstan(key.kind), namespace: key.namespace, name: key.name) else {
                throw KubeRequest.Refused(message: "the \(key.kind.singular) was deleted")
            }
            guard object["metadata"]?["annotations"]?[annotation] == nil else { return nil }
            if let event = try await answers(client, key).last(where: { !seen.contains($0.identity) })?.event {
                let reason = event["reason"]?.scalarText ?? "", message = event["message"]?.scalarText ?? ""
                if refused.contains(reason) { throw KubeRequest.Refused(message: message) }
                return message
            }
            // The events follow the status write of the reconcile that took the request.
            let removed = removedAt ?? Date()
            removedAt = removed
            return Date().timeIntervalSince(removed) > 3 ? "the annotation was removed" : nil
        }
    }
}

struct Down: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop every instance of a state directory (instances outlive the daemon on purpose).",
        discussion: "Each instance's process group gets SIGTERM, then SIGKILL after --grace. Run it with the daemon stopped: a running daemon starts what its specs ask for again.")

    @Option(help: ArgumentHelp("How long instances get to stop after SIGTERM.", valueName: "duration"))
    var grace: String = "10s"

    @OptionGroup var state: StateOptions

    func run() async throws {
        guard let grace = try? KubeDuration.parse(grace) else { throw ValidationError("--grace \"\(self.grace)\" is not a duration") }
        // The inventory first; then every instance marked as this directory's that it did not
        // name (recorded nowhere, or the database is gone or damaged: they are found anyway).
        var stopped: [String] = []
        var recorded: Set<String> = []
        if FileManager.default.fileExists(atPath: state.resolved + "/" + StateStore.fileName) {
            do {
                let store = try StateStore(directory: state.resolved)
                recorded = Set(((try? store.inventory(type: Supervisor.inventoryType)) ?? []).map(\.id))
                stopped = await Supervisor.stopRecorded(in: store, grace: grace.duration)
            } catch {
                printError("capstan: \(error)")
                printError("capstan: stopping the instances of \(state.resolved) found by their environment instead")
            }
        }
        stopped += await Supervisor.stopMarked(stateDirectory: state.resolved, except: recorded, grace: grace.duration)
        for line in stopped { print(line) }
        print("\(stopped.count) instance(s) stopped")
    }
}
