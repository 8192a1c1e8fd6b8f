import ArgumentParser
import CapstanKube
import CapstanLocal
import CapstanModel
import Foundation

struct Reconcile: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask the daemon to reconcile an object now.",
        discussion: """
            With a state directory the request is recorded in its state store; the daemon picks it up within a second. With --kube the object gets the annotation capstan.dev/reconcile-requested-at (as `kubectl annotate` would write it), and the operator answers with a ReconcileRequested event.
            """)

    @Argument(help: ArgumentHelp("The object, such as application/web.", valueName: "kind/name"))
    var object: String

    @Option(name: .shortAndLong, help: "Namespace of the object (default: default, or with --kube the kubeconfig context's).")
    var namespace: String?

    @Option(help: ArgumentHelp("Wait this long for the daemon to take the request (0: do not wait).", valueName: "duration"))
    var wait: String = "10s"

    @OptionGroup var state: StateOptions
    @OptionGroup var kube: KubeConnection

    func run() async throws {
        let key = try parseReference(object, namespace: namespace ?? "default")
        let value = Timestamp(Date()).description
        guard kube.enabled else {
            try await submitRequest("reconcile", for: key, value: value, what: "reconcile", wait: wait, state: state)
            return
        }
        let started = Date()
        try await KubeRequest(connection: kube, key: key, annotation: KubeObjectStore.reconcileRequest, value: value, what: "reconcile")
            .run(wait: wait, namespace: namespace) { client, key in
                try await KubeRequest.event(client, about: key, reasons: ["ReconcileRequested"], since: started) { $0.hasSuffix(value) }?.message
            }
    }
}

/// Records a request for the daemon and waits (up to `wait`) until a daemon takes it.
func submitRequest(_ type: String, for key: ObjectKey, value: String, what: String, wait: String, state: StateOptions) async throws {
    guard let timeout = try? KubeDuration.parse(wait) else { throw ValidationError("--wait \"\(wait)\" is not a duration") }
    let store: StateStore
    do {
        _ = try StateStore(directory: state.resolved, readOnly: true)  // exists, healthy, not from the future
        store = try StateStore(directory: state.resolved)
    } catch {
        printError("capstan: \(error)")
        throw ExitCode(1)
    }
    guard try store.object(key) != nil else {
        printError("capstan: \(key.kind.singular) \"\(key.name)\" not found in namespace \(key.namespace)")
        throw ExitCode(1)
    }
    let id = try store.request(type, for: key, value: value, at: Date())
    guard timeout.nanoseconds > 0 else {
        print("\(key.kind.singular)/\(key.name): \(what) requested")
        return
    }
    let deadline = Date().addingTimeInterval(timeout.seconds)
    while Date() < deadline {
        if try store.isHandled(id) {
            print("\(key.kind.singular)/\(key.name): \(what) requested and taken by the daemon")
            return
        }
        try await Task.sleep(for: .milliseconds(100))
    }
    printError("capstan: the request is recorded, but no daemon took it within \(wait): is `capstan run` running on \(state.resolved)?")
    throw ExitCode(1)
}
