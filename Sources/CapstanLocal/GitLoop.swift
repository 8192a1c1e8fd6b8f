import CapstanControllers
import CapstanIntegrations
import CapstanModel
import CapstanRuntime
import Foundation

/// The git source at work while this daemon leads: fetches at the interval and on each signed
/// push webhook (one fetch in flight, one queued: a flood of deliveries costs two fetches),
/// reads each new commit into the spec-directory source, holds every object while the
/// repository cannot be fetched, and keeps the source's status and the delivery log in the
/// state store for `capstan source`. The webhook's HTTP listener is the daemon's wiring; what it
/// receives is judged and recorded here (`receive`).
public final class GitLoop: Sendable {
    public enum Trigger: Sendable { case interval, webhook }

    /// Where push webhooks are received, and their shared secret.
    public struct Webhook: Sendable {
        public var address: String
        public var secret: [UInt8]

        public init(address: String, secret: [UInt8]) {
            self.address = address
            self.secret = secret
        }
    }

    /// A log line and its level.
    public typealias Log = @Sendable (_ message: String, _ level: String) -> Void

    let git: GitSpecSource
    let source: SpecDirectorySource
    let store: StateStore
    let metrics: RuntimeMetrics
    let logLine: Log
    let interval: Duration
    public let webhook: Webhook?
    /// The status document as last written.
    let status: Synchronized<Status>
    /// Deliveries that asked for a fetch not begun yet.
    let waiting = Synchronized<[Int64]>([])
    let trigger = Synchronized<AsyncStream<Trigger>.Continuation?>(nil)

    /// The largest webhook body read (GitHub caps its own at 25 MB; a push's is kilobytes).
    public static let maxBody = 4 << 20

    struct Status: Sendable {
        var url: String
        var ref: String
        var path: String
        var interval: String
        var webhook: String
        var commit: String?
        var checkedOutAt: Date?
        var fetchedAt: Date?
        var nextFetchAt: Date?
        var lastError: String?
        var lastErrorAt: Date?

        /// Whether the last fetch failed (the last error is newer than the last success).
        var failing: Bool {
            guard let lastErrorAt else { return false }
            return fetchedAt.map { lastErrorAt > $0 } ?? true
        }

        var document: String {
            var fields: [String: Any] = ["type": "git", "url": url, "ref": ref, "path": path, "interval": interval, "webhook": webhook]
            func time(_ date: Date?) -> Any { date.map { Timestamp($0).description } ?? NSNull() }
            fields["commit"] = commit ?? NSNull()
            fields["checkedOutAt"] = time(checkedOutAt)
            fields["fetchedAt"] = time(fetchedAt)
            fields["nextFetchAt"] = time(nextFetchAt)
            fields["lastError"] = lastError ?? NSNull()
            fields["lastErrorAt"] = time(lastErrorAt)
            fields["failing"] = failing
            let data = (try? JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])) ?? Data("{}".utf8)
            return String(decoding: data, as: UTF8.self)
        }
    }

    /// `interval` as the user wrote it is shown by `capstan source`.
    public init(git: GitSpecSource, interval: String, webhook: Webhook?, source: SpecDirectorySource, store: StateStore, metrics: RuntimeMetrics,
                log: @escaping Log) {
        self.git = git
        self.source = source
        self.store = store
        self.metrics = metrics
        self.logLine = log
        self.interval = (try? KubeDuration.parse(interval).duration) ?? .seconds(60)
        self.webhook = webhook
        status = Synchronized(Status(url: GitSpecSource.safe(git.options.url), ref: git.options.ref, path: git.options.path, interval: interval,
                                     webhook: webhook?.address ?? ""))
    }

    private func log(_ message: String, level: String = "info") {
        logLine(message, level)
    }

    private func save() {
        do {
            try store.setSourceStatus("git", document: status.value.document)
        } catch {
            log("cannot record the git source's status: \(error)", level: "warning")
        }
    }

    // MARK: - Fetching

    /// The first checkout (before the first read of the specs): retried with a growing delay
    /// while nothing was ever checked out; a checkout a previous daemon made is read meanwhile.
    public func firstCheckout() async {
        try? store.keepSourceStatuses(["git"])
        var delay = Duration.seconds(1)
        while !Task.isCancelled {
            do {
                let update = try await git.update()
                let now = Date()
                switch update {
                case .moved(_, let commit, _, _):
                    log("git: checked out \(commit.prefix(12))")
                    status.update { $0.commit = commit; $0.checkedOutAt = now; $0.fetchedAt = now }
                case .unchanged(let commit):
                    status.update { $0.commit = commit; $0.fetchedAt = now }
                }
                await source.setRevision(status.value.commit)
                save()
                return
            } catch {
                failed(error)
                if let commit = await git.checkedOut() {
                    log("git: \(error); reading the last checkout, \(commit.prefix(12))", level: "warning")
                    status.update { $0.commit = commit }
                    await source.setRevision(commit)
                    save()
                    return
                }
                log("git: \(error); nothing checked out yet, trying again in \(delay)", level: "warning")
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(30))
            }
        }
    }

    /// After the first read of the checkout (which clears every hold): a repository that could
    /// not be fetched holds the objects again.
    public func afterFirstRead() async {
        let status = status.value
        guard status.failing, let error = status.lastError else { return }
        await hold(error)
    }

    private func hold(_ error: String) async {
        let kept = status.value.commit.map { "commit " + $0.prefix(12) } ?? "nothing"
        do {
            try await source.holdAll(reason: StoredObject.sourceFetchFailed, message: "the git source cannot be fetched (\(error)); \(kept) is kept")
        } catch {
            log("cannot record the hold: \(error)", level: "warning")
        }
    }

    private func failed(_ error: GitSpecSource.Failure) {
        metrics.sourceError(source: "git")
        status.update { $0.lastError = error.description; $0.lastErrorAt = Date() }
        save()
    }

    /// One fetch: a new commit is read as the files it changed (its whole tree when history was
    /// rewritten); a failure keeps the last checkout and holds every object, visibly, until a
    /// fetch succeeds again.
    func fetch(_ trigger: Trigger) async {
        let deliveries = waiting.update { ids in
            defer { ids = [] }
            return ids
        }
        let started = Date()
        do {
            let update = try await git.update()
            let now = Date()
            let wasFailing = status.value.failing
            status.update { $0.fetchedAt = now }
            let released = wasFailing ? try await source.releaseAll(reason: StoredObject.sourceFetchFailed) : 0
            if released > 0 { log("git: the repository answers again: \(released) object(s) no longer held") }
            let name = trigger == .webhook ? "webhook" : "interval"
            if case .moved = update { metrics.sourceFetch(trigger: name, result: "moved") } else { metrics.sourceFetch(trigger: name, result: "unchanged") }
            guard case .moved(let from, let to, let changed, let rewritten) = update else {
                if case .unchanged(let commit) = update {
                    try? store.settleDeliveries(deliveries, outcome: "fetched", detail: "already at \(commit.prefix(12))")
                }
                save()
                return
            }
            if rewritten, let from {
                log("git: \(git.options.ref) was rewritten (a force-push): \(from.prefix(12)) is not in the history of \(to.prefix(12)); following it", level: "warning")
            }
            status.update { $0.commit = to; $0.checkedOutAt = now }
            await source.setRevision(to)
            save()
            let summary = try await source.sync(changed: rewritten ? nil : changed.map(Set.init))
            if summary.problems > 0 { metrics.sourceError(source: "directory") }
            let took = Duration.seconds(Date().timeIntervalSince(started))
            log("git: commit \(to.prefix(12))\(from.map { " (was \($0.prefix(12)))" } ?? "") on \(trigger == .webhook ? "a webhook" : "the interval") in \(took.millisecondsText), \(changed?.count ?? 0) file(s) changed\(summary.partial ? "" : " (full read)"): \(summary.changed) object(s) changed, \(summary.deleted) deleted, \(summary.kept + summary.withheld) held at their last good version")
            try? store.settleDeliveries(deliveries, outcome: "fetched", detail: "checked out \(to.prefix(12))")
        } catch let error as GitSpecSource.Failure {
            metrics.sourceFetch(trigger: trigger == .webhook ? "webhook" : "interval", result: "failed")
            failed(error)
            let kept = status.value.commit.map { "commit " + $0.prefix(12) } ?? "nothing"
            log("git: \(error); keeping \(kept)", level: "warning")
            try? store.settleDeliveries(deliveries, outcome: "failed", detail: error.description)
            await hold(error.description)
        } catch {
            log("git: reading commit \(status.value.commit?.prefix(12) ?? "?") failed: \(error)", level: "error")
            try? store.settleDeliveries(deliveries, outcome: "failed", detail: "\(error)")
        }
    }

    /// While leading: the interval and the fetches it and the webhooks ask for, one at a time (a
    /// request while one runs is queued; more are the same request).
    public func run() async {
        let (stream, continuation) = AsyncStream.makeStream(of: Trigger.self, bufferingPolicy: .bufferingNewest(1))
        trigger.update { $0 = continuation }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [self] in
                while !Task.isCancelled {
                    status.update { $0.nextFetchAt = Date().addingTimeInterval(interval.seconds) }
                    save()
                    try? await Task.sleep(for: interval)
                    if Task.isCancelled { break }
                    continuation.yield(.interval)
                }
                continuation.finish()
            }
            group.addTask { [self] in
                for await trigger in stream { await fetch(trigger) }
            }
            await group.waitForAll()
        }
    }

    // MARK: - Webhooks

    /// Judges a delivery, records it, and asks for a fetch when it is a signed push to the ref.
    public func receive(headers: [(String, String)], body: [UInt8]) -> GitWebhook.Verdict {
        guard let webhook else { return GitWebhook.Verdict(status: 404, outcome: .refused, provider: "", event: "", ref: "", commit: "", detail: "no webhook") }
        let ref = git.options.ref.hasPrefix("refs/") ? git.options.ref : "refs/heads/" + git.options.ref
        let verdict = GitWebhook.judge(headers: headers, body: body, secret: webhook.secret, ref: ref)
        record(verdict)
        return verdict
    }

    /// Records a delivery (a refused one too) and, for a push to the ref, asks for a fetch.
    public func record(_ verdict: GitWebhook.Verdict) {
        let delivery = StateStore.Delivery(time: Date(), provider: verdict.provider, event: verdict.event, ref: verdict.ref, commit: verdict.commit,
                                           status: verdict.status, outcome: verdict.outcome.rawValue, detail: verdict.detail)
        let id = try? store.recordDelivery(delivery)
        metrics.webhookDelivery(outcome: verdict.outcome.rawValue)
        let what = "webhook\(verdict.provider.isEmpty ? "" : " from " + verdict.provider)\(verdict.event.isEmpty ? "" : " (\(verdict.event))")"
        switch verdict.outcome {
        case .fetch:
            if let id { waiting.update { $0.append(id) } }
            log("\(what): \(verdict.detail) at \(verdict.commit.prefix(12)): fetching")
            trigger.value?.yield(.webhook)
        case .ignored:
            log("\(what): ignored: \(verdict.detail)")
        case .refused:
            log("\(what): refused (\(verdict.status)): \(verdict.detail)", level: "warning")
        }
    }

    /// Records a delivery refused for its size (over `maxBody`; `length` when it said so).
    public func refuseTooLarge(_ length: Int?, headers: [(String, String)]) -> String {
        let detail = "a body of \(length.map { "\($0) bytes" } ?? "more bytes") over the \(Self.maxBody >> 20) MiB cap"
        let (provider, event) = GitWebhook.sender(headers)
        record(GitWebhook.Verdict(status: 413, outcome: .refused, provider: provider?.rawValue ?? "", event: event, ref: "", commit: "", detail: detail))
        return detail
    }
}
