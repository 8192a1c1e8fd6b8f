import ArgumentParser
import CapstanLocal
import CapstanModel
import Foundation

struct Reconcile: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask the daemon to reconcile an object now (recorded in the state store; the daemon picks it up within a second).")

    @Argument(help: ArgumentHelp("The object, such as application/web.", valueName: "kind/name"))
    var object: String

    @Option(name: .shortAndLong, help: "Namespace of the object.")
    var namespace: String = "default"

    @Option(help: ArgumentHelp("Wait this long for the daemon to take the request (0: do not wait).", valueName: "duration"))
    var wait: String = "10s"

    @OptionGroup var state: StateOptions

    func run() async throws {
        let key = try parseReference(object, namespace: namespace)
        try await submitRequest("reconcile", for: key, value: Timestamp(Date()).description, what: "reconcile", wait: wait, state: state)
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
