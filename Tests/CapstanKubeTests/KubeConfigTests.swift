import CapstanKube
import Foundation
import Testing

/// kubeconfig variants as kubectl and K3s write them.
@Suite struct KubeConfigTests {
    let directory = NSTemporaryDirectory() + "capstan-kubeconfig-" + UUID().uuidString

    func write(_ name: String, _ text: String) throws -> String {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static let pem = Data("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".utf8)

    @Test func k3sStyleInlineClientCertificates() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let data = Self.pem.base64EncodedString()
        let path = try write("k3s.yaml", """
            apiVersion: v1
            clusters:
            - cluster:
                certificate-authority-data: \(data)
                server: https://127.0.0.1:6443
              name: default
            contexts:
            - context:
                cluster: default
                user: default
              name: default
            current-context: default
            kind: Config
            preferences: {}
            users:
            - name: default
              user:
                client-certificate-data: \(data)
                client-key-data: \(data)

            """)
        let config = try KubeConfig.load(paths: [path])
        #expect(config.server == "https://127.0.0.1:6443")
        #expect(config.certificateAuthority == Array(Self.pem))
        #expect(config.clientCertificate == Array(Self.pem) && config.clientKey == Array(Self.pem))
        #expect(config.namespace == "default")
        #expect(config.token == nil)
    }

    @Test func filesRelativeToTheKubeconfigTokensAndNamedContexts() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try write("ca.crt", String(decoding: Self.pem, as: UTF8.self))
        _ = try write("token", "abc123\n")
        let path = try write("config", """
            apiVersion: v1
            kind: Config
            current-context: prod
            clusters:
            - name: prod
              cluster: {server: "https://prod.example:6443/", certificate-authority: ca.crt}
            - name: lab
              cluster: {server: "https://lab.example:6443", insecure-skip-tls-verify: true}
            users:
            - name: robot
              user: {tokenFile: token}
            - name: me
              user: {token: s3cret}
            contexts:
            - name: prod
              context: {cluster: prod, user: robot, namespace: apps}
            - name: lab
              context: {cluster: lab, user: me}

            """)
        let prod = try KubeConfig.load(paths: [path])
        #expect(prod.server == "https://prod.example:6443", "no trailing slash")
        #expect(prod.certificateAuthority == Array(Self.pem), "read relative to the kubeconfig")
        #expect(prod.tokenFile == directory + "/token")
        #expect(prod.namespace == "apps")
        let lab = try KubeConfig.load(paths: [path], context: "lab")
        #expect(lab.insecureSkipTLSVerify && lab.token == "s3cret" && lab.certificateAuthority == nil)
    }

    @Test func mergedPathsAndClearProblems() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = try write("a", "apiVersion: v1\nkind: Config\ncurrent-context: two\n")
        let second = try write("b", """
            apiVersion: v1
            kind: Config
            current-context: ignored
            clusters: [{name: c, cluster: {server: "https://two:443"}}]
            contexts: [{name: two, context: {cluster: c}}]

            """)
        #expect(try KubeConfig.load(paths: [first, second]).server == "https://two:443", "the first file's current-context wins")
        #expect(KubeConfig.defaultPaths(environment: ["KUBECONFIG": "\(first):\(second)"]) == [first, second])
        #expect(KubeConfig.defaultPaths(environment: ["HOME": "/home/x"]) == ["/home/x/.kube/config"])

        let exec = try write("exec", """
            apiVersion: v1
            kind: Config
            current-context: eks
            clusters: [{name: c, cluster: {server: "https://eks:443"}}]
            users: [{name: u, user: {exec: {command: aws}}}]
            contexts: [{name: eks, context: {cluster: c, user: u}}]

            """)
        #expect(throws: KubeConfig.Problem.self) { try KubeConfig.load(paths: [exec]) }
        #expect(throws: KubeConfig.Problem.self) { try KubeConfig.load(paths: [second], context: "missing") }
        #expect(throws: KubeConfig.Problem.self) { try KubeConfig.load(paths: [self.directory + "/none"]) }
        let broken = try write("broken", "clusters: [\n")
        #expect(throws: KubeConfig.Problem.self) { try KubeConfig.load(paths: [broken]) }
    }

    @Test func inClusterReadsTheServiceAccount() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try write("token", "t0ken")
        _ = try write("namespace", "capstan-system\n")
        _ = try write("ca.crt", String(decoding: Self.pem, as: UTF8.self))
        let config = try KubeConfig.inCluster(environment: ["KUBERNETES_SERVICE_HOST": "10.43.0.1", "KUBERNETES_SERVICE_PORT": "443"], directory: directory)
        #expect(config.server == "https://10.43.0.1:443")
        #expect(config.namespace == "capstan-system")
        #expect(config.tokenFile == directory + "/token")
        let v6 = try KubeConfig.inCluster(environment: ["KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"], directory: directory)
        #expect(v6.server == "https://[fd00::1]:443")
        #expect(throws: KubeConfig.Problem.self) { try KubeConfig.inCluster(environment: [:], directory: directory) }
    }
}
