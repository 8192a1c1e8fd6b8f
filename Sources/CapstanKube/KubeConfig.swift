import Foundation
import Yams

/// Where and how to reach a Kubernetes API server: from a kubeconfig file (its current context
/// or a named one) or from inside a pod (the service account), as client-go resolves them.
public struct KubeConfig: Sendable, Equatable {
    /// `https://host:port`, possibly with a path prefix (no trailing slash).
    public var server: String
    /// PEM: the CA to trust (nil: the system's roots).
    public var certificateAuthority: [UInt8]?
    /// PEM: a client certificate and its key (K3s' admin kubeconfig uses these).
    public var clientCertificate: [UInt8]?
    public var clientKey: [UInt8]?
    /// A bearer token, or a file to read it from (re-read as it rotates).
    public var token: String?
    public var tokenFile: String?
    public var username: String?
    public var password: String?
    public var insecureSkipTLSVerify = false
    public var tlsServerName: String?
    /// The context's namespace (the service account's in a pod), "default" when none.
    public var namespace = "default"

    public init(server: String) {
        self.server = server.hasSuffix("/") ? String(server.dropLast()) : server
    }

    /// Why a kubeconfig cannot be used, with where it came from.
    public struct Problem: Error, CustomStringConvertible, Equatable {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    // MARK: - kubeconfig files

    private struct File: Decodable {
        var currentContext: String?
        var clusters: [Named<Cluster>]?
        var users: [Named<User>]?
        var contexts: [Named<Context>]?
        enum CodingKeys: String, CodingKey {
            case currentContext = "current-context", clusters, users, contexts
        }
    }

    private struct Named<T: Decodable>: Decodable {
        var name: String
        var value: T?
        enum CodingKeys: String, CodingKey { case name, cluster, user, context }
        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            name = try container.decode(String.self, forKey: .name)
            value = try container.decodeIfPresent(T.self, forKey: .cluster) ?? container.decodeIfPresent(T.self, forKey: .user)
                ?? container.decodeIfPresent(T.self, forKey: .context)
        }
    }

    private struct Cluster: Decodable {
        var server: String?
        var certificateAuthority: String?
        var certificateAuthorityData: String?
        var insecureSkipTLSVerify: Bool?
        var tlsServerName: String?
        enum CodingKeys: String, CodingKey {
            case server, certificateAuthority = "certificate-authority", certificateAuthorityData = "certificate-authority-data"
            case insecureSkipTLSVerify = "insecure-skip-tls-verify", tlsServerName = "tls-server-name"
        }
    }

    private struct User: Decodable {
        var token: String?
        var tokenFile: String?
        var clientCertificate: String?
        var clientCertificateData: String?
        var clientKey: String?
        var clientKeyData: String?
        var username: String?
        var password: String?
        var exec: Exec?
        var authProvider: AuthProvider?
        enum CodingKeys: String, CodingKey {
            case token, tokenFile, username, password, exec
            case clientCertificate = "client-certificate", clientCertificateData = "client-certificate-data"
            case clientKey = "client-key", clientKeyData = "client-key-data", authProvider = "auth-provider"
        }
        struct Exec: Decodable { var command: String? }
        struct AuthProvider: Decodable { var name: String? }
    }

    private struct Context: Decodable {
        var cluster: String?
        var user: String?
        var namespace: String?
    }

    /// The kubeconfig paths client-go would read: `explicit`, else `$KUBECONFIG` (colon-separated,
    /// merged: the first file to set a value wins), else `~/.kube/config`.
    public static func defaultPaths(explicit: String? = nil, environment: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        if let explicit, !explicit.isEmpty { return [explicit] }
        if let list = environment["KUBECONFIG"], !list.isEmpty {
            return list.split(separator: ":").map(String.init).filter { !$0.isEmpty }
        }
        return [(environment["HOME"] ?? NSHomeDirectory()) + "/.kube/config"]
    }

    /// Loads the named context (default: the current one) from kubeconfig files.
    public static func load(paths: [String], context name: String? = nil) throws(Problem) -> KubeConfig {
        var currentContext: String?
        var clusters: [String: (Cluster, String)] = [:]
        var users: [String: (User, String)] = [:]
        var contexts: [String: Context] = [:]
        var read = 0
        for path in paths {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                if paths.count == 1 { throw Problem("cannot read kubeconfig \(path)") }
                continue
            }
            read += 1
            let file: File
            do {
                file = try YAMLDecoder().decode(File.self, from: text)
            } catch {
                throw Problem("kubeconfig \(path) is not valid: \(error)")
            }
            let directory = (path as NSString).deletingLastPathComponent
            if currentContext == nil || currentContext == "" { currentContext = file.currentContext }
            for entry in file.clusters ?? [] where clusters[entry.name] == nil { entry.value.map { clusters[entry.name] = ($0, directory) } }
            for entry in file.users ?? [] where users[entry.name] == nil { entry.value.map { users[entry.name] = ($0, directory) } }
            for entry in file.contexts ?? [] where contexts[entry.name] == nil { entry.value.map { contexts[entry.name] = $0 } }
        }
        guard read > 0 else { throw Problem("no kubeconfig found at \(paths.joined(separator: ", "))") }
        guard let chosen = name ?? currentContext, !chosen.isEmpty else {
            throw Problem("the kubeconfig has no current-context: name one with --context")
        }
        guard let context = contexts[chosen] else { throw Problem("context \"\(chosen)\" is not in the kubeconfig") }
        guard let clusterName = context.cluster, let (cluster, clusterDirectory) = clusters[clusterName] else {
            throw Problem("context \"\(chosen)\" names cluster \"\(context.cluster ?? "")\", which the kubeconfig does not define")
        }
        guard let server = cluster.server, server.hasPrefix("https://") || server.hasPrefix("http://") else {
            throw Problem("cluster \"\(clusterName)\" has no https:// server")
        }
        var config = KubeConfig(server: server)
        config.namespace = context.namespace.flatMap { $0.isEmpty ? nil : $0 } ?? "default"
        config.insecureSkipTLSVerify = cluster.insecureSkipTLSVerify ?? false
        config.tlsServerName = cluster.tlsServerName
        config.certificateAuthority = try material(data: cluster.certificateAuthorityData, file: cluster.certificateAuthority,
                                                   relativeTo: clusterDirectory, what: "certificate-authority")
        if let userName = context.user, !userName.isEmpty {
            guard let (user, userDirectory) = users[userName] else {
                throw Problem("context \"\(chosen)\" names user \"\(userName)\", which the kubeconfig does not define")
            }
            if user.exec != nil || user.authProvider != nil {
                throw Problem("user \"\(userName)\" authenticates with an exec plugin or auth provider, which Capstan does not run: use a token or client certificate")
            }
            config.clientCertificate = try material(data: user.clientCertificateData, file: user.clientCertificate, relativeTo: userDirectory, what: "client-certificate")
            config.clientKey = try material(data: user.clientKeyData, file: user.clientKey, relativeTo: userDirectory, what: "client-key")
            if (config.clientCertificate == nil) != (config.clientKey == nil) {
                throw Problem("user \"\(userName)\" has a client certificate without a key, or a key without a certificate")
            }
            config.token = user.token.flatMap { $0.isEmpty ? nil : $0 }
            config.tokenFile = user.tokenFile.map { resolve($0, relativeTo: userDirectory) }
            config.username = user.username
            config.password = user.password
        }
        return config
    }

    private static func resolve(_ path: String, relativeTo directory: String) -> String {
        path.hasPrefix("/") ? path : (directory as NSString).appendingPathComponent(path)
    }

    /// Inline base64 data wins over a file, as in client-go.
    private static func material(data: String?, file: String?, relativeTo directory: String, what: String) throws(Problem) -> [UInt8]? {
        if let data, !data.isEmpty {
            guard let decoded = Data(base64Encoded: data.filter { !$0.isWhitespace }) else { throw Problem("\(what)-data is not base64") }
            return Array(decoded)
        }
        if let file, !file.isEmpty {
            let path = resolve(file, relativeTo: directory)
            guard let contents = FileManager.default.contents(atPath: path) else { throw Problem("cannot read \(what) \(path)") }
            return Array(contents)
        }
        return nil
    }

    // MARK: - in a pod

    public static let serviceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount"

    /// The pod's own access: `KUBERNETES_SERVICE_HOST`/`_PORT`, the service account's token
    /// (re-read as kubelet rotates it), CA and namespace.
    public static func inCluster(environment: [String: String] = ProcessInfo.processInfo.environment,
                                 directory: String = serviceAccountDirectory) throws(Problem) -> KubeConfig {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], let port = environment["KUBERNETES_SERVICE_PORT"], !host.isEmpty else {
            throw Problem("not in a pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set")
        }
        let bracketed = host.contains(":") ? "[\(host)]" : host
        var config = KubeConfig(server: "https://\(bracketed):\(port)")
        guard FileManager.default.isReadableFile(atPath: directory + "/token") else {
            throw Problem("cannot read the service account token \(directory)/token")
        }
        config.tokenFile = directory + "/token"
        config.certificateAuthority = FileManager.default.contents(atPath: directory + "/ca.crt").map(Array.init)
        if let namespace = try? String(contentsOfFile: directory + "/namespace", encoding: .utf8) {
            config.namespace = namespace.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return config
    }
}
