import ArgumentParser
import CapstanControllers
import CapstanKube
import CapstanLocal
import CapstanModel
import CapstanRuntime
import Dispatch
import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import UnixSignals
#if canImport(Glibc)
import Glibc
#endif

/// Options shared by every command that reads local state.
struct StateOptions: ParsableArguments {
    @Option(name: .customLong("state-dir"), help: ArgumentHelp("The state directory (default: $CAPSTAN_STATE_DIR or ./.capstan).", valueName: "dir"))
    var stateDirectory: String?

    /// The directory as given (flag, `$CAPSTAN_STATE_DIR`, or `.capstan`), made absolute: what
    /// the daemon stores and links must not depend on the directory it was started from.
    var resolved: String {
        FilePaths.absolute(given)
    }

    /// The directory as the user wrote it, for messages.
    var given: String {
        let value = stateDirectory ?? ProcessInfo.processInfo.environment["CAPSTAN_STATE_DIR"] ?? ""
        return value.isEmpty ? ".capstan" : value
    }
}

enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

/// One line per decision, on standard error; never a secret value (none reach the logger).
struct DaemonLog: Sendable {
    let format: LogFormat

    func callAsFunction(_ message: String, level: String = "info") {
        let time = Timestamp(Date()).description
        switch format {
        case .text: printError("\(time) \(level) \(message)")
        case .json:
            let node = SpecNode.mapping([("time", .string(time)), ("level", .string(level)), ("msg", .string(message))])
            printError(JSONEmitter.emit(node, pretty: false))
        }
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon: watch a spec directory (or, with --kube, a cluster's custom resources) and reconcile what it declares.",
        discussion: """
            Reads every spec below --spec-dir, keeps status and events in the state directory, reacts to file changes at once (inotify) and re-reads everything every --resync. SIGHUP re-reads now; SIGTERM or SIGINT stop gracefully (in-flight reconciles finish) with exit status 0.

            Reconciled so far: Application and Deployment (artifacts, supervised instances, health checks, a router port per Deployment, RollingUpdate/Recreate/BlueGreen rollouts, deployment windows, rollbacks, promote and abort) and SecretRotation (secrets generated into the vault under the master key $CAPSTAN_MASTER_KEY or <state-dir>/master.key, rotated with apply, a rolling restart of restartDeployments and verify, rolled back on failure; secretKeyRef in env filled in when each instance starts). BackupSchedule (scheduled backups as `capstan backup-job` children: postgres, sqlite, directory or command sources streamed through gzip, AES-256-GCM and SHA-256 to a directory or S3, verified by restore, restic retention; a run cut off by the daemon's end is Interrupted and leaves nothing partial). AlertRule (builtin metrics from the probes, the supervisor and /proc, or Prometheus queries; Pending, Firing, Resolved per label set; webhook, Slack, e-mail and Alertmanager receivers through a notification log written before each send; repeatInterval, escalation, `capstan ack`). Canary (a new version of its Deployment on a canary track beside the stable one, the router splitting connections by setWeight, pauses ended by `capstan promote canary/NAME`, builtin or Prometheus analysis that fails closed, promotion, or abort by `capstan abort`, failed analysis or the progress deadline).

            With --kube, the six custom resources are listed and watched through the Kubernetes API (--kubeconfig, --context, or the pod's service account); each Capstan Deployment becomes owned apps/v1 Deployments (one per track: NAME, NAME-blue, NAME-green, NAME-canary while a Canary runs, behind one Service by replica ratio), a Service (and NAME-preview for a BlueGreen preview) and (for routes) an Ingress; each SecretRotation owned v1 Secrets (NAME and NAME-vN); status goes to /status and events are core/v1 Events; --leader-elect uses a coordination.k8s.io/v1 Lease.

            One daemon acts on a state directory: a second one is refused (exit status 2) unless every daemon of it runs with --leader-elect. A daemon whose state directory is deleted or replaced under it stops at once (exit status 4); a busy --metrics-addr is exit status 3.

            Instances belong to the state directory, not to the daemon: they keep running when the daemon stops or dies, and the next daemon adopts them. Routers (the Deployments' ports) only listen while a daemon runs. `capstan down` stops every instance; --down-on-exit does it when the daemon stops.
            """)

    @Option(name: .customLong("spec-dir"), help: ArgumentHelp("The directory of specs.", valueName: "dir"))
    var specDirectoryOption: String?

    var specDirectory: String { specDirectoryOption ?? "" }

    @OptionGroup var git: GitOptions

    @OptionGroup var kube: KubeOptions

    @Option(name: .customLong("platform"), help: ArgumentHelp("Where a spec directory's Deployments run: local (processes on this host) or kube (apps/v1 Deployments on the cluster of --kubeconfig).", valueName: "local|kube"))
    var platform: PlatformName = .local

    @OptionGroup var state: StateOptions

    @Option(help: "Reconcile workers per kind.")
    var concurrency: Int = 4

    @Option(help: ArgumentHelp("Full re-read interval, as a duration.", valueName: "duration"))
    var resync: String = "5m"

    @Option(name: .customLong("reconcile-timeout"), help: ArgumentHelp("A reconcile running longer is cancelled and retried.", valueName: "duration"))
    var reconcileTimeout: String = "5m"

    @Option(name: .customLong("max-file-size"), help: ArgumentHelp("Largest spec file read, as a quantity (1Mi, 512Ki); a larger file is skipped with a Warning event, and what it held is kept.", valueName: "size"))
    var maxFileSize: String = "1Mi"

    var maxFileBytes: Int { (try? parseMaxFileSize(maxFileSize)) ?? ManifestDecoder.defaultMaxFileSize }

    @Option(name: .customLong("log-max-size"), help: ArgumentHelp("An instance's log is rotated at exactly this size (a quantity: 10Mi).", valueName: "size"))
    var logMaxSize: String = "10Mi"

    @Option(name: .customLong("log-max-files"), help: ArgumentHelp("Log files kept per instance, the current one included: its output costs at most --log-max-size times this.", valueName: "n"))
    var logMaxFiles: Int = 3

    var logRotation: LogRotation {
        LogRotation(maxBytes: (try? Quantity(logMaxSize)).map { Int($0.roundedUp) } ?? 10 << 20, files: logMaxFiles)
    }

    @Flag(name: .customLong("allow-empty"), help: "Allow an emptied spec directory to delete every object.")
    var allowEmpty = false

    @Option(name: .customLong("prune"), help: ArgumentHelp("Remove what deleted objects had (instances, ports, releases, artifacts); false: only Warning events say what would go.", valueName: "true|false"))
    var prune: Bool = true

    @Option(name: .customLong("shutdown-grace"), help: ArgumentHelp("On SIGTERM, how long in-flight reconciles may take to finish before they are cancelled.", valueName: "duration"))
    var shutdownGrace: String = "25s"

    @Option(name: .customLong("log-format"), help: "text or json.")
    var logFormat: LogFormat = .text

    @Option(name: .customLong("router-addr"), help: ArgumentHelp("The address Deployments' router ports listen on.", valueName: "host"))
    var routerAddress: String = "127.0.0.1"

    @Flag(name: .customLong("down-on-exit"), help: "On a graceful stop, stop every instance too (for interactive use).")
    var downOnExit = false

    @Flag(name: .customLong("leader-elect"), help: "Elect one leader among the daemons of this state directory; only the leader acts.")
    var leaderElect = false

    @Option(name: .customLong("lease-duration"), help: ArgumentHelp("Leader election: how long a lease holds without renewal (default 15s; the two below scale with it, 15:10:2).", valueName: "duration"))
    var leaseDuration: String?

    @Option(name: .customLong("renew-deadline"), help: ArgumentHelp("Leader election: a leader that cannot renew this long steps down and exits (default 10s, or 2/3 of --lease-duration).", valueName: "duration"))
    var renewDeadline: String?

    @Option(name: .customLong("retry-period"), help: ArgumentHelp("Leader election: how often to try to acquire or renew (default 2s, or 2/15 of --lease-duration).", valueName: "duration"))
    var retryPeriod: String?

    @Option(name: .customLong("identity"), help: ArgumentHelp("Leader election: this daemon's name (default: host name and pid).", valueName: "name"))
    var identity: String?

    /// The election's timings: those given, the others scaled from them (never a conflict
    /// made by a default). Throws for a value that is not a duration or for given values that
    /// conflict, naming both flags.
    func electionTimings() throws -> (leaseDuration: Duration, renewDeadline: Duration, retryPeriod: Duration) {
        func parse(_ flag: String, _ text: String?) throws -> Duration? {
            guard let text else { return nil }
            guard let value = try? KubeDuration.parse(text), value.nanoseconds > 0 else {
                throw ValidationError("\(flag) \"\(text)\" is not a positive duration such as 15s")
            }
            return value.duration
        }
        let given = (try parse("--lease-duration", leaseDuration), try parse("--renew-deadline", renewDeadline), try parse("--retry-period", retryPeriod))
        let timings = LeaderElectionConfig.timings(leaseDuration: given.0, renewDeadline: given.1, retryPeriod: given.2)
        func text(_ flag: String, _ value: Duration, _ written: String?) -> String {
            "\(flag) \(written ?? "\(KubeDuration(value)) (its default)")"
        }
        if timings.leaseDuration <= timings.renewDeadline {
            throw ValidationError("leader election: \(text("--lease-duration", timings.leaseDuration, leaseDuration)) must be longer than \(text("--renew-deadline", timings.renewDeadline, renewDeadline))")
        }
        if timings.renewDeadline <= timings.retryPeriod {
            throw ValidationError("leader election: \(text("--renew-deadline", timings.renewDeadline, renewDeadline)) must be longer than \(text("--retry-period", timings.retryPeriod, retryPeriod))")
        }
        return timings
    }

    var electionConfig: LeaderElectionConfig? {
        guard let timings = try? electionTimings() else { return nil }
        return LeaderElectionConfig(leaseName: "capstan-controller", identity: identity ?? "\(ProcessInfo.processInfo.hostName)-\(getpid())",
                                    leaseDuration: timings.leaseDuration, renewDeadline: timings.renewDeadline, retryPeriod: timings.retryPeriod,
                                    releaseCheck: .milliseconds(100))
    }

    @Option(name: .customLong("metrics-addr"), help: ArgumentHelp("Where /metrics, /healthz and /readyz are served (port 0: any free port).", valueName: "host:port"))
    var metricsAddress: String = "127.0.0.1:9464"

    var metricsHostPort: (String, Int)? { Self.hostPort(metricsAddress) }

    /// `host:port` (`[::1]:9464` too) split; nil when it is not one.
    static func hostPort(_ address: String) -> (String, Int)? {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
              (0...65535).contains(port) else { return nil }
        let host = String(address[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        return host.isEmpty ? nil : (host, port)
    }

    func validate() throws {
        guard concurrency >= 1 && concurrency <= 256 else { throw ValidationError("--concurrency must be between 1 and 256") }
        for (name, value) in [("--resync", resync), ("--reconcile-timeout", reconcileTimeout), ("--shutdown-grace", shutdownGrace)] {
            guard let duration = try? KubeDuration.parse(value), duration.nanoseconds > 0 else {
                throw ValidationError("\(name) \"\(value)\" is not a positive duration such as 30s or 5m")
            }
        }
        _ = try parseMaxFileSize(maxFileSize)
        guard let size = try? Quantity(logMaxSize), size.roundedUp >= 1024, size.roundedUp < Int64(1) << 40 else {
            throw ValidationError("--log-max-size \"\(logMaxSize)\" is not a size of at least 1Ki, such as 10Mi")
        }
        guard (1...100).contains(logMaxFiles) else { throw ValidationError("--log-max-files must be between 1 and 100") }
        _ = try electionTimings()
        if leaderElect, let problem = electionConfig?.problem { throw ValidationError("leader election: \(problem)") }
        guard metricsHostPort != nil else {
            throw ValidationError("--metrics-addr \"\(metricsAddress)\" is not host:port, such as 127.0.0.1:9464")
        }
        if kube.enabled {
            guard specDirectoryOption == nil, !git.enabled else {
                throw ValidationError("--kube reads the cluster's custom resources: leave out --spec-dir and --git-url (or use them with --platform kube)")
            }
            try kube.check()
            return
        }
        if platform == .kube { try kube.check() }
        try git.check()
        if git.enabled {
            guard specDirectoryOption == nil else { throw ValidationError("--git-url and --spec-dir are two sources: give one") }
            return
        }
        guard specDirectoryOption != nil else { throw ValidationError("give --spec-dir DIR (a directory of specs), --git-url URL (a git repository of specs) or --kube (the cluster's custom resources)") }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: specDirectory, isDirectory: &isDirectory) else {
            throw ValidationError("--spec-dir \(specDirectory) does not exist (relative paths start at \(FilePaths.currentDirectory()))")
        }
        guard isDirectory.boolValue else {
            throw ValidationError("--spec-dir \(specDirectory) is a file, not a directory: name the directory that holds it")
        }
    }

    func run() async throws {
        let log = DaemonLog(format: logFormat)
        unblockSignals()
        // The daemon works in UTC throughout (schedules name their zone; local time is refused).
        // Without this, the first calendar made (the HTTP server's Date header) looks up the
        // machine's zone, and ICU's zone tables stay resident for it (~1 MiB of the image binary).
        NSTimeZone.default = TimeZone(secondsFromGMT: 0)!
        if kube.enabled {
            try await runKube(log: log)
            return
        }
        try await LocalDaemon(self, log: log).run()
    }
}

/// Children started from async code can inherit a blocked mask (swift-corelibs-foundation
/// #4772): make sure the signals we handle are deliverable.
func unblockSignals() {
    var set = sigset_t()
    sigemptyset(&set)
    for signal in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, signal) }
    pthread_sigmask(SIG_UNBLOCK, &set, nil)
}
