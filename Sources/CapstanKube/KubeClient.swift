import AsyncHTTPClient
import CapstanModel
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL
import Synchronization

/// A resource type as the API serves it: `/apis/GROUP/VERSION/[namespaces/NS/]PLURAL`.
public struct KubeResource: Sendable, Hashable, CustomStringConvertible {
    public var group: String
    public var version: String
    public var plural: String
    public var kind: String
    public var namespaced: Bool

    public init(group: String, version: String, plural: String, kind: String, namespaced: Bool = true) {
        self.group = group
        self.version = version
        self.plural = plural
        self.kind = kind
        self.namespaced = namespaced
    }

    public var apiVersion: String { group.isEmpty ? version : "\(group)/\(version)" }
    public var description: String { group.isEmpty ? plural : "\(plural).\(group)" }

    /// The path of the collection (namespace nil: across all namespaces) or of one object.
    public func path(namespace: String?, name: String? = nil, subresource: String? = nil) -> String {
        var path = group.isEmpty ? "/api/\(version)" : "/apis/\(group)/\(version)"
        if namespaced, let namespace { path += "/namespaces/\(escape(namespace))" }
        path += "/\(plural)"
        if let name { path += "/\(escape(name))" }
        if let subresource { path += "/\(subresource)" }
        return path
    }

    private func escape(_ segment: String) -> String {
        // Names, namespaces and plurals are DNS names: nothing to escape, and no CharacterSet
        // built per request (that was 3% of the operator's CPU time under load).
        if segment.utf8.allSatisfy({ Self.unreserved($0) }) { return segment }
        return segment.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? segment
    }

    /// RFC 3986's unreserved characters: ALPHA / DIGIT / "-" / "." / "_" / "~".
    static func unreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    public static let deployments = KubeResource(group: "apps", version: "v1", plural: "deployments", kind: "Deployment")
    public static let services = KubeResource(group: "", version: "v1", plural: "services", kind: "Service")
    public static let ingresses = KubeResource(group: "networking.k8s.io", version: "v1", plural: "ingresses", kind: "Ingress")
    public static let events = KubeResource(group: "", version: "v1", plural: "events", kind: "Event")
    public static let leases = KubeResource(group: "coordination.k8s.io", version: "v1", plural: "leases", kind: "Lease")
    public static let namespaces = KubeResource(group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false)
    public static let customResourceDefinitions = KubeResource(group: "apiextensions.k8s.io", version: "v1",
                                                               plural: "customresourcedefinitions", kind: "CustomResourceDefinition", namespaced: false)
}

/// A failure the API server reported (its `Status`), or the transport's.
public struct KubeError: Error, Sendable, CustomStringConvertible, Equatable {
    /// HTTP status; 0 when the server could not be reached.
    public var code: Int
    /// The Status' reason: NotFound, AlreadyExists, Conflict, Invalid, Expired, TooManyRequests, ...
    public var reason: String
    public var message: String
    /// For `Invalid`: "field: message" of each cause.
    public var causes: [String]

    public init(code: Int, reason: String, message: String, causes: [String] = []) {
        self.code = code
        self.reason = reason
        self.message = message
        self.causes = causes
    }

    public var isNotFound: Bool { code == 404 }
    public var isConflict: Bool { code == 409 && reason != "AlreadyExists" }
    public var isAlreadyExists: Bool { code == 409 && reason == "AlreadyExists" }
    /// 410: a resourceVersion or continue token too old (list again).
    public var isGone: Bool { code == 410 }

    public var description: String {
        code == 0 ? "cannot reach the API server: \(message)" : "\(message) (\(reason.isEmpty ? "HTTP" : reason) \(code))"
    }

    /// Reads a `Status` body; falls back to the HTTP status line.
    static func from(status: Int, body: Data) -> KubeError {
        if let node = try? SpecNode.fromJSON(body), node["kind"]?.scalarText == "Status" {
            let causes = node["details"]?["causes"].flatMap { cause -> [String]? in
                guard case .sequence(let items) = cause.value else { return nil }
                return items.map { "\($0["field"]?.scalarText ?? ""): \($0["message"]?.scalarText ?? "")" }
            } ?? []
            return KubeError(code: status, reason: node["reason"]?.scalarText ?? "", message: node["message"]?.scalarText ?? "", causes: causes)
        }
        let text = String(decoding: body.prefix(300), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return KubeError(code: status, reason: "", message: text.isEmpty ? "HTTP \(status)" : text)
    }
}

/// One change a watch reports.
public enum WatchEvent: Sendable, Equatable {
    case added(SpecNode)
    case modified(SpecNode)
    case deleted(SpecNode)
    /// Nothing changed up to this resourceVersion (resume from here).
    case bookmark(String)
}

/// How a patch body is to be read.
public enum PatchType: String, Sendable {
    case merge = "application/merge-patch+json"
    case json = "application/json-patch+json"
    case apply = "application/apply-patch+yaml"
}

/// A Kubernetes API client on async-http-client: TLS from the kubeconfig, a client-side rate
/// limiter, retries of 429 and 5xx answers that honour `Retry-After`, watches as async streams.
public final class KubeClient: Sendable {
    public let config: KubeConfig
    let http: HTTPClient
    let limiter: RateLimiter?
    let userAgent: String
    /// How many times a request refused with 429/5xx is tried again.
    public let maxRetries: Int
    private let tokenCache = Mutex<(token: String, read: ContinuousClock.Instant)?>(nil)
    private let requestCount = Atomic<Int>(0)
    private let isShutDown = Atomic<Bool>(false)

    /// `qps` 0 turns the client-side limiter off (the server's priority and fairness still applies).
    public init(config: KubeConfig, qps: Double = 50, burst: Int = 100, userAgent: String = "capstan", maxRetries: Int = 5) throws(KubeConfig.Problem) {
        self.config = config
        self.userAgent = userAgent
        self.maxRetries = maxRetries
        limiter = qps > 0 ? RateLimiter(qps: qps, burst: max(1, burst)) : nil
        var tls = TLSConfiguration.makeClientConfiguration()
        do {
            if let ca = config.certificateAuthority {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(ca))
            }
            if let certificate = config.clientCertificate, let key = config.clientKey {
                tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(certificate).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: key, format: .pem))
            }
        } catch {
            throw KubeConfig.Problem("cannot use the kubeconfig's certificates: \(error)")
        }
        if config.insecureSkipTLSVerify { tls.certificateVerification = .none }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls, timeout: .init(connect: .seconds(10), read: nil))
        // Watches hold an HTTP/1.1 connection each (HTTP/2 multiplexes them): room for all.
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 64
        configuration.decompression = .enabled(limit: .none)
        http = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }

    public func shutdown() async {
        guard !isShutDown.exchange(true, ordering: .relaxed) else { return }
        try? await http.shutdown()
    }

    /// A client dropped without `shutdown()` (a test that failed half-way, an error path)
    /// still closes its connections.
    deinit {
        if !isShutDown.load(ordering: .relaxed) { _ = http.shutdown() }
    }

    /// Requests sent so far (tests, metrics).
    public var requests: Int { requestCount.load(ordering: .relaxed) }

    // MARK: - Verbs

    /// The object, or nil when it does not exist.
    public func get(_ resource: KubeResource, namespace: String?, name: String) async throws(KubeError) -> SpecNode? {
        do {
            return try await json(.GET, resource.path(namespace: namespace, name: name))
        } catch {
            if error.isNotFound { return nil }
            throw error
        }
    }

    /// Every object (following `continue` pages of `limit`), and the list's resourceVersion to
    /// watch from.
    public func list(_ resource: KubeResource, namespace: String?, labelSelector: String? = nil, limit: Int = 500) async throws(KubeError) -> (items: [SpecNode], resourceVersion: String) {
        var items: [SpecNode] = []
        var token: String?
        var version = ""
        repeat {
            var query: [(String, String)] = [("limit", String(limit))]
            if let labelSelector { query.append(("labelSelector", labelSelector)) }
            if let token { query.append(("continue", token)) }
            let page = try await json(.GET, resource.path(namespace: namespace), query: query)
            if case .sequence(let objects)? = page["items"]?.value {
                // Built-in lists leave apiVersion and kind out of their items: put them back.
                items += objects.map { Self.withTypeMeta($0, resource) }
            }
            version = page["metadata"]?["resourceVersion"]?.scalarText ?? version
            token = page["metadata"]?["continue"]?.scalarText.flatMap { $0.isEmpty ? nil : $0 }
        } while token != nil
        return (items, version)
    }

    public func create(_ resource: KubeResource, namespace: String?, _ object: SpecNode, fieldManager: String = "capstan") async throws(KubeError) -> SpecNode {
        try await json(.POST, resource.path(namespace: namespace), query: [("fieldManager", fieldManager)], body: object)
    }

    /// PUT: fails with a conflict when the object's resourceVersion is not the stored one.
    public func update(_ resource: KubeResource, namespace: String?, name: String, _ object: SpecNode, subresource: String? = nil,
                       fieldManager: String = "capstan") async throws(KubeError) -> SpecNode {
        try await json(.PUT, resource.path(namespace: namespace, name: name, subresource: subresource), query: [("fieldManager", fieldManager)], body: object)
    }

    /// PATCH (merge, JSON or server-side apply with `fieldManager`; `force` takes fields over).
    public func patch(_ resource: KubeResource, namespace: String?, name: String, _ patch: SpecNode, type: PatchType = .merge,
                      subresource: String? = nil, fieldManager: String = "capstan", force: Bool = false) async throws(KubeError) -> SpecNode {
        var query = [("fieldManager", fieldManager)]
        if force && type == .apply { query.append(("force", "true")) }
        return try await json(.PATCH, resource.path(namespace: namespace, name: name, subresource: subresource), query: query,
                              body: patch, contentType: type.rawValue)
    }

    /// DELETE with a propagation policy; returns false when it was already gone.
    @discardableResult
    public func delete(_ resource: KubeResource, namespace: String?, name: String, propagation: String = "Background",
                       uid: String? = nil) async throws(KubeError) -> Bool {
        var options: [(String, SpecNode)] = [("kind", .string("DeleteOptions")), ("apiVersion", .string("v1")), ("propagationPolicy", .string(propagation))]
        if let uid { options.append(("preconditions", .mapping([("uid", .string(uid))]))) }
        do {
            _ = try await json(.DELETE, resource.path(namespace: namespace, name: name), body: .mapping(options))
            return true
        } catch {
            if error.isNotFound { return false }
            throw error
        }
    }

    /// One watch connection from `resourceVersion`: its events until the server ends it (a
    /// timeout, a dropped connection). A 410 (too old a version) is thrown as `isGone`.
    public func watch(_ resource: KubeResource, namespace: String?, resourceVersion: String, labelSelector: String? = nil,
                      timeoutSeconds: Int = 300) -> AsyncThrowingStream<WatchEvent, any Error> {
        var query: [(String, String)] = [("watch", "1"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", String(timeoutSeconds))]
        if !resourceVersion.isEmpty { query.append(("resourceVersion", resourceVersion)) }
        if let labelSelector { query.append(("labelSelector", labelSelector)) }
        let path = resource.path(namespace: namespace)
        let (stream, continuation) = AsyncThrowingStream<WatchEvent, any Error>.makeStream()
        let task = Task { [self] in
            await pump(path: path, query: query, timeoutSeconds: timeoutSeconds, resource: resource, into: continuation)
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    /// Reads a watch response line by line into the stream.
    private func pump(path: String, query: [(String, String)], timeoutSeconds: Int, resource: KubeResource,
                      into continuation: AsyncThrowingStream<WatchEvent, any Error>.Continuation) async {
        do {
            let response = try await send(.GET, path, query: query, body: nil, contentType: nil,
                                          timeout: .seconds(Int64(timeoutSeconds) + 30), stream: true)
            var pending = Data()
            for try await chunk in response.body {
                pending.append(contentsOf: chunk.readableBytesView)
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = Data(pending[pending.startIndex..<newline])
                    pending.removeSubrange(pending.startIndex...newline)
                    if line.isEmpty { continue }
                    if let event = try Self.event(line, resource) { continuation.yield(event) }
                }
            }
            continuation.finish()
        } catch {
            continuation.finish(throwing: error)
        }
    }

    static func event(_ line: Data, _ resource: KubeResource) throws(KubeError) -> WatchEvent? {
        guard let node = try? SpecNode.fromJSON(line), let type = node["type"]?.scalarText, let object = node["object"] else {
            throw KubeError(code: 500, reason: "InternalError", message: "unreadable watch event: \(String(decoding: line.prefix(200), as: UTF8.self))")
        }
        switch type {
        case "ADDED": return .added(withTypeMeta(object, resource))
        case "MODIFIED": return .modified(withTypeMeta(object, resource))
        case "DELETED": return .deleted(withTypeMeta(object, resource))
        case "BOOKMARK": return .bookmark(object["metadata"]?["resourceVersion"]?.scalarText ?? "")
        case "ERROR":
            let code = Int(object["code"]?.scalarText ?? "") ?? 500
            throw KubeError(code: code, reason: object["reason"]?.scalarText ?? "", message: object["message"]?.scalarText ?? "watch error")
        default: return nil
        }
    }

    static func withTypeMeta(_ object: SpecNode, _ resource: KubeResource) -> SpecNode {
        guard case .mapping(var entries) = object.value, object["kind"] == nil || object["apiVersion"] == nil else { return object }
        entries.removeAll { $0.key == "kind" || $0.key == "apiVersion" }
        entries.insert(.init("kind", .string(resource.kind)), at: 0)
        entries.insert(.init("apiVersion", .string(resource.apiVersion)), at: 0)
        return SpecNode(.mapping(entries))
    }

    /// Any request by method and path (JSON in, JSON out): what the typed verbs do not cover.
    @discardableResult
    public func raw(method: String, path: String, body: SpecNode? = nil) async throws(KubeError) -> SpecNode {
        try await json(HTTPMethod(rawValue: method), path, body: body)
    }

    // MARK: - Transport

    private func json(_ method: HTTPMethod, _ path: String, query: [(String, String)] = [], body: SpecNode? = nil,
                      contentType: String = "application/json") async throws(KubeError) -> SpecNode {
        let payload = body.map { Data(JSONEmitter.emit($0, pretty: false).utf8) }
        let response = try await send(method, path, query: query, body: payload, contentType: payload == nil ? nil : contentType,
                                      timeout: .seconds(30), stream: false)
        do {
            let buffer = try await response.body.collect(upTo: 256 << 20)
            return try SpecNode.fromJSON(Data(buffer: buffer))
        } catch {
            throw KubeError(code: Int(response.status.code), reason: "InternalError", message: "unreadable response to \(method) \(path): \(error)")
        }
    }

    /// Sends with the limiter, retrying 429 (always) and 5xx (with Retry-After, or for reads)
    /// after `Retry-After` or a growing, jittered pause. Returns a 2xx response with its body
    /// unread; throws the server's Status otherwise.
    private func send(_ method: HTTPMethod, _ path: String, query: [(String, String)], body: Data?, contentType: String?,
                      timeout: Duration, stream: Bool) async throws(KubeError) -> HTTPClientResponse {
        var attempt = 0
        while true {
            if let limiter { await limiter.wait() }
            var components = URLComponents()
            components.queryItems = query.isEmpty ? nil : query.map { URLQueryItem(name: $0.0, value: $0.1) }
            var request = HTTPClientRequest(url: config.server + path + (components.percentEncodedQuery.map { "?" + $0 } ?? ""))
            request.method = method
            request.headers.add(name: "Accept", value: "application/json")
            request.headers.add(name: "User-Agent", value: userAgent)
            if let authorization = authorization() { request.headers.add(name: "Authorization", value: authorization) }
            if let body {
                request.headers.add(name: "Content-Type", value: contentType ?? "application/json")
                request.body = .bytes(ByteBuffer(data: body))
            }
            requestCount.add(1, ordering: .relaxed)
            let response: HTTPClientResponse
            do {
                let seconds = timeout.components.seconds
                response = try await http.execute(request, timeout: .seconds(seconds))
            } catch {
                if Task.isCancelled { throw KubeError(code: 0, reason: "Cancelled", message: "cancelled") }
                // Not reached: reads are tried again; a write may have happened, so it is not,
                // unless the pooled connection was found closed before anything was sent (the
                // server closed it while idle: Go's transport retries those too).
                let unsent = (error as? ChannelError) == .ioOnClosedChannel
                if method == .GET || unsent, attempt < maxRetries {
                    attempt += 1
                    await pause(attempt: attempt, retryAfter: nil)
                    continue
                }
                throw KubeError(code: 0, reason: "", message: "\(method) \(path): \(error)")
            }
            let code = Int(response.status.code)
            if (200..<300).contains(code) { return response }
            let data = (try? await response.body.collect(upTo: 1 << 20)).map { Data(buffer: $0) } ?? Data()
            let retryAfter = response.headers.first(name: "Retry-After").flatMap(Double.init)
            let retryable = code == 429 || (code >= 500 && (retryAfter != nil || method == .GET))
            if retryable, attempt < maxRetries {
                attempt += 1
                await pause(attempt: attempt, retryAfter: retryAfter)
                continue
            }
            throw KubeError.from(status: code, body: data)
        }
    }

    private func pause(attempt: Int, retryAfter: Double?) async {
        let seconds = retryAfter.map { min(max($0, 0), 30) } ?? min(0.2 * pow(2, Double(attempt - 1)), 10) * Double.random(in: 0.8...1.2)
        try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
    }

    /// The bearer token (re-read from its file once a minute, as it rotates), or basic auth.
    private func authorization() -> String? {
        if let token = config.token { return "Bearer \(token)" }
        if let file = config.tokenFile {
            let now = ContinuousClock.now
            let token = tokenCache.withLock { cache -> String? in
                if let cache, cache.read.duration(to: now) < .seconds(60) { return cache.token }
                guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { return cache?.token }
                let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
                cache = (token, now)
                return token
            }
            return token.map { "Bearer \($0)" }
        }
        if let user = config.username, let password = config.password {
            return "Basic " + Data("\(user):\(password)".utf8).base64EncodedString()
        }
        return nil
    }
}

/// A token bucket: `qps` requests a second on average, bursts of up to `burst`.
actor RateLimiter {
    let qps: Double
    let burst: Double
    private var tokens: Double
    private var last = ContinuousClock.now

    init(qps: Double, burst: Int) {
        self.qps = qps
        self.burst = Double(burst)
        tokens = Double(burst)
    }

    func wait() async {
        let now = ContinuousClock.now
        let elapsed = last.duration(to: now)
        last = now
        tokens = min(burst, tokens + (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18) * qps)
        tokens -= 1
        if tokens < 0 {
            // Reserved: later callers queue behind this one's debt.
            try? await Task.sleep(for: .milliseconds(Int(-tokens / qps * 1000)))
        }
    }
}
