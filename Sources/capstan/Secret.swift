import ArgumentParser
import CapstanControllers
import CapstanLocal
import CapstanModel
import Foundation

struct SecretCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secret",
        abstract: "Show and set the secrets in the local vault.",
        discussion: """
            The vault is in the state directory, each value sealed with AES-256-GCM under the master key ($CAPSTAN_MASTER_KEY, else <state-dir>/master.key, made 0600 on first use). SecretRotations write their secrets here; secrets Capstan does not generate (S3 credentials, an SMTP password, a Slack URL) are set with `capstan secret set`. On a cluster, use `kubectl create secret generic`.
            """,
        subcommands: [SecretGet.self, SecretSet.self, SecretDelete.self])
}

/// The vault of the state directory the command names.
func openVault(_ state: StateOptions, create: Bool) throws -> Vault {
    do {
        if !create { _ = try StateStore(directory: state.resolved, readOnly: true) }
        let store = try StateStore(directory: state.resolved)
        return Vault(store: store, stateDirectory: state.resolved)
    } catch {
        printError("capstan: \(error)")
        throw ExitCode(1)
    }
}

struct SecretGet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "List secrets, or show one: versions, key names and fingerprints (values only with --reveal).")

    @Argument(help: "The secret (all of the namespace when left out).")
    var name: String?

    @Option(name: .shortAndLong, help: "Namespace (default: default).")
    var namespace: String = "default"

    @Option(help: "Only this key.")
    var key: String?

    @Option(help: "This version instead of the current one.")
    var version: Int?

    @Flag(help: "Print the values. With --key, the value alone, as it is (for a script).")
    var reveal = false

    @OptionGroup var state: StateOptions

    func run() throws {
        let vault = try openVault(state, create: false)
        guard let name else {
            guard !reveal else { throw ValidationError("--reveal needs a secret's name") }
            let secrets = try vault.list().filter { $0.namespace == namespace }
            guard !secrets.isEmpty else {
                printError("No secrets found in \(namespace) namespace.")
                return
            }
            var rows = [["NAME", "VERSION", "KEYS", "VERSIONS", "SET BY"]]
            for secret in secrets {
                let current = secret.state.versions.first { $0.version == secret.state.current }
                rows.append([secret.name, String(secret.state.current), (current?.keys ?? []).joined(separator: ","), String(secret.state.versions.count), secret.owner])
            }
            print(table(rows), terminator: "")
            return
        }
        do {
            guard let (state, owner) = try vault.read(name, namespace: namespace) else {
                printError("capstan: secret \"\(name)\" not found in namespace \(namespace)")
                throw ExitCode(1)
            }
            let shown = version ?? state.current
            guard let info = state.versions.first(where: { $0.version == shown }) else {
                printError("capstan: secret \(name) has no version \(shown) (kept: \(state.versions.map { String($0.version) }.joined(separator: ", ")))")
                throw ExitCode(1)
            }
            if let key, !info.keys.contains(key) {
                printError("capstan: secret \(name) has no key \(key) (it has \(info.keys.joined(separator: ", ")))")
                throw ExitCode(1)
            }
            if reveal {
                let values = try vault.values(of: name, namespace: namespace, version: shown)
                if let key {
                    FileHandle.standardOutput.write(values[key]!)
                    return
                }
                for name in info.keys { print("\(name)=\(String(decoding: values[name]!, as: UTF8.self))") }
                return
            }
            print("Name:     \(name)\nNamespace: \(namespace)\nSet by:   \(owner)\nCurrent:  version \(state.current)\nVersions:")
            var rows = [["  VERSION", "CREATED", "KEYS", "FINGERPRINT"]]
            for info in state.versions.reversed() {
                let keys = key.map { [$0] } ?? info.keys
                rows.append(["  \(info.version)\(info.version == state.current ? " (current)" : "")", Timestamp(info.createdAt).description, keys.joined(separator: ","), info.fingerprint])
            }
            print(table(rows), terminator: "")
        } catch let error as SecretError {
            printError("capstan: \(error.message)")
            throw ExitCode(1)
        }
    }

    func table(_ rows: [[String]]) -> String {
        var widths = [Int](repeating: 0, count: rows[0].count)
        for row in rows { for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) } }
        return rows.map { row in
            row.enumerated().map { index, cell in index == row.count - 1 ? cell : cell.padding(toLength: widths[index] + 3, withPad: " ", startingAt: 0) }.joined()
        }.joined(separator: "\n") + "\n"
    }
}

struct SecretSet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "set",
        abstract: "Write a new version of a secret, as `kubectl create secret generic` takes it.",
        discussion: "Each call writes a new version with exactly the keys given (the previous one is kept). A secret a SecretRotation manages is refused: rotate it or roll it back instead.")

    @Argument(help: "The secret.")
    var name: String

    @Option(name: .shortAndLong, help: "Namespace (default: default).")
    var namespace: String = "default"

    @Option(name: .customLong("from-literal"), help: ArgumentHelp("A key and its value.", valueName: "KEY=VALUE"))
    var literals: [String] = []

    @Option(name: .customLong("from-file"), help: ArgumentHelp("A key and the file holding its value.", valueName: "KEY=PATH"))
    var files: [String] = []

    @OptionGroup var state: StateOptions

    func validate() throws {
        if literals.isEmpty && files.isEmpty { throw ValidationError("give at least one --from-literal KEY=VALUE or --from-file KEY=PATH") }
        if let problem = Names.dns1123SubdomainProblem(name) { throw ValidationError("secret name: \(problem)") }
    }

    func run() throws {
        var values: [String: Data] = [:]
        for (argument, isFile) in literals.map({ ($0, false) }) + files.map({ ($0, true) }) {
            guard let equals = argument.firstIndex(of: "="), equals != argument.startIndex else {
                throw ValidationError("\(isFile ? "--from-file" : "--from-literal") \"\(isFile ? argument : "...")\" is not KEY=\(isFile ? "PATH" : "VALUE")")
            }
            let key = String(argument[..<equals]), rest = String(argument[argument.index(after: equals)...])
            guard key.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-._".contains($0)) }) else {
                throw ValidationError("\"\(key)\" is not a valid key name: use letters, digits, '-', '_' and '.'")
            }
            guard values[key] == nil else { throw ValidationError("key \(key) is given twice") }
            if isFile {
                guard let data = FileManager.default.contents(atPath: rest) else { throw ValidationError("cannot read \(rest) for key \(key)") }
                values[key] = data
            } else {
                values[key] = Data(rest.utf8)
            }
        }
        let vault = try openVault(state, create: true)
        do {
            let existing = try vault.read(name, namespace: namespace)
            if let (_, owner) = existing, owner != Vault.manualOwner {
                printError("capstan: secret \(name) is managed by \(owner): rotate it (`capstan rotate \(owner)`) or roll it back instead")
                throw ExitCode(1)
            }
            let version = (existing?.0.latest ?? 0) + 1
            try vault.write(name, namespace: namespace, version: version, values: values, createdAt: Date(), ownerName: Vault.manualOwner)
            print("secret/\(name): version \(version) written (\(values.keys.sorted().joined(separator: ", ")))")
        } catch let error as SecretError {
            printError("capstan: \(error.message)")
            throw ExitCode(1)
        }
    }
}

struct SecretDelete: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete",
        abstract: "Delete a secret and all its versions from the vault.")

    @Argument(help: "The secret.")
    var name: String

    @Option(name: .shortAndLong, help: "Namespace (default: default).")
    var namespace: String = "default"

    @OptionGroup var state: StateOptions

    func run() throws {
        let vault = try openVault(state, create: false)
        do {
            guard try vault.read(name, namespace: namespace) != nil else {
                printError("capstan: secret \"\(name)\" not found in namespace \(namespace)")
                throw ExitCode(1)
            }
            try vault.delete(name, namespace: namespace)
            print("secret/\(name) deleted")
        } catch let error as SecretError {
            printError("capstan: \(error.message)")
            throw ExitCode(1)
        }
    }
}
