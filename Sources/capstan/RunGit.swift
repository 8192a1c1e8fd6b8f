import ArgumentParser
import CapstanLocal
import CapstanModel
import CapstanRuntime
import Foundation

/// `capstan run --git-url URL`: the specs come from a git repository instead of --spec-dir.
struct GitOptions: ParsableArguments {
    @Option(name: .customLong("git-url"), help: ArgumentHelp("Read the specs from this git repository (https://, ssh://, git:// or a path), fetched into the state directory; instead of --spec-dir. Credentials go in files, never in the URL.", valueName: "url"))
    var url: String?

    @Option(name: .customLong("git-ref"), help: ArgumentHelp("The branch (or full ref, refs/tags/v1) whose commits are applied.", valueName: "ref"))
    var ref: String = "main"

    @Option(name: .customLong("git-path"), help: ArgumentHelp("The directory of specs inside the repository.", valueName: "path"))
    var path: String = "."

    @Option(name: .customLong("git-interval"), help: ArgumentHelp("How often the repository is fetched, as a duration.", valueName: "duration"))
    var interval: String = "1m"

    @Option(name: .customLong("git-token-file"), help: ArgumentHelp("A file holding an HTTPS access token (GitHub, Gitea, GitLab, Bitbucket).", valueName: "file"))
    var tokenFile: String?

    @Option(name: .customLong("git-ssh-key-file"), help: ArgumentHelp("A private key file for ssh:// URLs.", valueName: "file"))
    var sshKeyFile: String?

    @Option(name: .customLong("git-known-hosts-file"), help: ArgumentHelp("The known_hosts file the SSH server's key is checked against.", valueName: "file"))
    var knownHostsFile: String?

    @Option(name: .customLong("webhook-addr"), help: ArgumentHelp("Where git hosts' push webhooks are received (POST /hooks/git): a push to --git-ref fetches at once. Needs --webhook-secret-file.", valueName: "host:port"))
    var webhookAddress: String?

    @Option(name: .customLong("webhook-secret-file"), help: ArgumentHelp("A file holding the webhooks' shared secret (GitHub, Gitea and Bitbucket sign with it; GitLab sends it as its token).", valueName: "file"))
    var webhookSecretFile: String?

    var enabled: Bool { url != nil }

    /// The webhook listener's host and port.
    var webhookHostPort: (String, Int)? { webhookAddress.flatMap(Run.hostPort) }

    /// The webhooks' secret (read at start: a secret changed on disk takes a restart).
    func webhookSecret() -> [UInt8]? {
        guard let webhookSecretFile, let data = FileManager.default.contents(atPath: webhookSecretFile) else { return nil }
        var bytes = [UInt8](data)
        while let last = bytes.last, last == 10 || last == 13 || last == 32 { bytes.removeLast() }
        return bytes.isEmpty ? nil : bytes
    }

    func check() throws {
        guard let url else {
            if tokenFile != nil || sshKeyFile != nil || knownHostsFile != nil || webhookAddress != nil || webhookSecretFile != nil {
                throw ValidationError("--git-token-file, --git-ssh-key-file, --git-known-hosts-file, --webhook-addr and --webhook-secret-file go with --git-url")
            }
            return
        }
        if webhookAddress != nil || webhookSecretFile != nil {
            guard webhookHostPort != nil else { throw ValidationError("--webhook-addr \"\(webhookAddress ?? "")\" is not host:port, such as 0.0.0.0:9465") }
            guard let webhookSecretFile else {
                throw ValidationError("--webhook-addr needs --webhook-secret-file: without a secret anyone who reaches the port could make the daemon fetch")
            }
            guard FileManager.default.isReadableFile(atPath: webhookSecretFile) else {
                throw ValidationError("--webhook-secret-file \(webhookSecretFile) cannot be read (relative paths start at \(FilePaths.currentDirectory()))")
            }
            guard webhookSecret() != nil else { throw ValidationError("--webhook-secret-file \(webhookSecretFile) is empty") }
            guard webhookAddress != nil else { throw ValidationError("--webhook-secret-file goes with --webhook-addr") }
        }
        if url.range(of: "^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*@", options: .regularExpression) != nil, !url.hasPrefix("ssh://") {
            throw ValidationError("--git-url holds credentials: put a token in a file and name it with --git-token-file (a URL ends up in logs and process lists)")
        }
        if url.range(of: "^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*:[^/@]*@", options: .regularExpression) != nil {
            throw ValidationError("--git-url holds a password: use --git-ssh-key-file or --git-token-file")
        }
        guard (try? KubeDuration.parse(interval)).map({ $0.seconds >= 1 }) == true else {
            throw ValidationError("--git-interval \(interval) is not a duration of a second or more (30s, 1m)")
        }
        if ref.isEmpty || ref.contains("..") || ref.hasPrefix("-") || ref.contains(" ") {
            throw ValidationError("--git-ref \"\(ref)\" is not a branch or ref name")
        }
        if path.hasPrefix("/") || path.split(separator: "/").contains("..") {
            throw ValidationError("--git-path \(path) must be a path inside the repository (relative, without ..)")
        }
        for (flag, file) in [("--git-token-file", tokenFile), ("--git-ssh-key-file", sshKeyFile), ("--git-known-hosts-file", knownHostsFile)] {
            guard let file else { continue }
            guard FileManager.default.isReadableFile(atPath: file) else {
                throw ValidationError("\(flag) \(file) cannot be read (relative paths start at \(FilePaths.currentDirectory()))")
            }
        }
    }

    /// The source's options, file paths made absolute (the daemon's directory may change).
    func source() -> GitSpecSource.Options? {
        guard let url else { return nil }
        func absolute(_ path: String?) -> String? { path.map { $0.hasPrefix("/") ? $0 : FilePaths.currentDirectory() + "/" + $0 } }
        // A local path is read from the daemon's directory too.
        let location = url.contains("://") || url.hasPrefix("/") || url.contains("@") ? url : FilePaths.currentDirectory() + "/" + url
        return GitSpecSource.Options(url: location, ref: ref, path: path, tokenFile: absolute(tokenFile), sshKeyFile: absolute(sshKeyFile),
                                     knownHostsFile: absolute(knownHostsFile))
    }
}
