import ArgumentParser
import CapstanLocal
import CapstanModel
import Foundation

struct Rollback: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Roll a Deployment back to an earlier revision (default: the one before the current).",
        discussion: """
            The rollback is itself a new revision with the template of the chosen one, and it holds until the Deployment's spec changes its template (version, env, or the Application's template). `capstan describe deployment/NAME` lists the revisions.
            """)

    @Argument(help: ArgumentHelp("The Deployment, such as deployment/web.", valueName: "deployment/name"))
    var object: String

    @Option(name: .customLong("to-revision"), help: "The revision to return to.")
    var toRevision: Int?

    @Option(name: .shortAndLong, help: "Namespace of the object.")
    var namespace: String = "default"

    @Option(help: ArgumentHelp("Wait this long for the daemon to take the request (0: do not wait).", valueName: "duration"))
    var wait: String = "10s"

    @OptionGroup var state: StateOptions

    func validate() throws {
        if let toRevision, toRevision < 1 { throw ValidationError("--to-revision must be 1 or more") }
    }

    func run() async throws {
        let key = try parseReference(object, namespace: namespace)
        guard key.kind == .deployment else { throw ValidationError("only Deployments roll back; got \(key.kind.singular)") }
        try await submitRequest("rollback", for: key, value: toRevision.map(String.init) ?? "",
                                what: "rollback to \(toRevision.map { "revision \($0)" } ?? "the previous revision")", wait: wait, state: state)
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
        let store: StateStore
        do {
            store = try StateStore(directory: state.resolved)
        } catch {
            printError("capstan: \(error)")
            throw ExitCode(1)
        }
        let stopped = await Supervisor.stopRecorded(in: store, grace: grace.duration)
        for line in stopped { print(line) }
        print("\(stopped.count) instance(s) stopped")
    }
}
