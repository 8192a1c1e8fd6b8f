import ArgumentParser
import CapstanModel
import CapstanRuntime

/// The `capstan` command.
@main
struct Capstan: AsyncParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "capstan",
        abstract: "A reconciling operator for Applications, Deployments, Canaries, AlertRules, SecretRotations and BackupSchedules.",
        discussion: """
            Capstan reads resources of six kinds (API group capstan.dev/v1alpha1) from a spec directory or from the Kubernetes API and makes the running system match them.

            Start with:  capstan run --spec-dir manifests/examples   (and, beside it: capstan get applications)
            """,
        version: "capstan \(version)",
        subcommands: [Run.self, Get.self, Describe.self, Events.self, Reconcile.self, Rollback.self, Down.self, Validate.self, CRDs.self, VersionCommand.self]
    )
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print the version of capstan and of the API it serves.")

    func run() {
        print("capstan \(Capstan.version) (API \(capstanAPIVersion))")
    }
}

struct CRDs: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crds",
        abstract: "Print the CustomResourceDefinitions of the six kinds, generated from the model.",
        discussion: "Apply them with: capstan crds | kubectl apply -f -")

    @Option(name: .customLong("output-dir"), help: ArgumentHelp("Write one file per kind into this directory instead of printing.", valueName: "dir"))
    var outputDirectory: String?

    func run() throws {
        guard let outputDirectory else {
            print(CRDGenerator.allYAML(), terminator: "")
            return
        }
        for kind in ResourceKind.allCases {
            let path = outputDirectory + "/" + CRDGenerator.fileName(for: kind)
            try FileOutput.write(CRDGenerator.yaml(for: kind), to: path)
            print(path)
        }
    }
}
