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

    @OptionGroup var options: RequestOptions

    func run() async throws {
        let (object, namespace, wait, state, kube) = (options.object, options.namespace, options.wait, options.state, options.kube)
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

/// Records a request for the daemon and waits (up to `wait`) until a daemon takes it. A request
/// the CLI gives up on is withdrawn: it never runs later. With `--wait 0` it stays queued until
/// a daemon takes it or it expires (`capstan requests` lists, `capstan requests cancel` withdraws).
func submitRequest(_ type: String, for key: ObjectKey, value: String, what: String, wait: String, state: StateOptions,
                   answers: (accepted: Set<String>, refused: Set<String>)? = nil,
                   check: ((StateStore) throws -> Void)? = nil) async throws {
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
    // What the store can decide is refused now, daemon or not.
    do {
        try check?(store)
    } catch {
        printError("capstan: \(error)")
        throw ExitCode(1)
    }
    let now = Date()
    guard timeout.nanoseconds > 0 else {
        let expires = now.addingTimeInterval(StateStore.requestLifetime)
        let id = try store.request(type, for: key, value: value, at: now, expiresAt: expires)
        print("\(key.kind.singular)/\(key.name): \(what) queued as request \(id); a daemon takes it, or it expires at \(Timestamp(expires)) (cancel it with: capstan requests cancel \(id))")
        return
    }
    // The request ends when this command does: if it is killed while waiting, the request
    // expires at the same moment it would have given up.
    let deadline = now.addingTimeInterval(timeout.seconds)
    let seen = try store.events(for: key).map(\.seq).max() ?? 0
    let id = try store.request(type, for: key, value: value, at: now, expiresAt: deadline)
    var taken = false
    while Date() < deadline {
        if try store.isHandled(id) {
            taken = true
            break
        }
        try await Task.sleep(for: .milliseconds(100))
    }
    if !taken, try store.withdrawRequest(id) {
        printError("capstan: no daemon took the request within \(wait): withdrawn, it will not run later. Is `capstan run` running on \(state.resolved)? (--wait 0 leaves a request queued)")
        throw ExitCode(1)
    }
    try await answer(to: what, for: key, in: store, after: seen, answers: answers)
}

/// What the reconcile that took a request made of it: an accepted or refused event (written
/// after its status write), waited for up to 3 s; a refusal is exit status 1.
func answer(to what: String, for key: ObjectKey, in store: StateStore, after seen: Int64,
            answers: (accepted: Set<String>, refused: Set<String>)?) async throws {
    let name = "\(key.kind.singular)/\(key.name)"
    guard let answers else {
        print("\(name): \(what) requested and taken by the daemon")
        return
    }
    let until = Date().addingTimeInterval(3)
    while Date() < until {
        if let answer = try store.events(for: key, after: seen).map(\.event).last(where: { answers.accepted.union(answers.refused).contains($0.reason) }) {
            if answers.refused.contains(answer.reason) {
                printError("capstan: \(name): \(what) refused: \(answer.message)")
                throw ExitCode(1)
            }
            print("\(name): \(what) requested and taken by the daemon: \(answer.message)")
            return
        }
        try await Task.sleep(for: .milliseconds(100))
    }
    print("\(name): \(what) requested and taken by the daemon")
}

/// `capstan requests`: what the CLI queued for the daemon, and `cancel ID` to withdraw one.
struct Requests: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the requests waiting for a daemon (reconcile, rollback), or cancel one.",
        discussion: "A request waits until a daemon takes it or it expires; one the CLI stopped waiting for is withdrawn at once. `capstan requests cancel ID` withdraws one that waits.")

    @Argument(help: ArgumentHelp("cancel, to withdraw a request.", valueName: "cancel"))
    var action: String?

    @Argument(help: "The request's id (with cancel).")
    var id: Int64?

    @OptionGroup var state: StateOptions

    func validate() throws {
        if let action, action != "cancel" { throw ValidationError("unknown action \"\(action)\": capstan requests [cancel ID]") }
        if action == "cancel" && id == nil { throw ValidationError("name the request to cancel: capstan requests cancel ID") }
    }

    func run() throws {
        if action == "cancel", let id {
            let store: StateStore
            do {
                store = try StateStore(directory: state.resolved)
            } catch {
                printError("capstan: \(error)")
                throw ExitCode(1)
            }
            guard try store.withdrawRequest(id) else {
                throw UserError("request \(id) is not waiting (taken by a daemon, expired, or unknown)")
            }
            print("request \(id) withdrawn")
            return
        }
        let requests = try openStore(state).pendingRequests(now: Date())
        guard !requests.isEmpty else {
            printError("No requests waiting.")
            return
        }
        let rows = requests.map { request in
            [String(request.id), request.type, "\(request.key.kind.singular)/\(request.key.name)", request.key.namespace,
             request.value.isEmpty ? "-" : request.value, age(since: request.createdAt), Timestamp(request.expiresAt).description]
        }
        printTable([["ID", "TYPE", "OBJECT", "NAMESPACE", "VALUE", "AGE", "EXPIRES"]] + rows)
    }
}
