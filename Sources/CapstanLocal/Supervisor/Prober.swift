import CapstanModel
import Foundation
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// A health check resolved for one instance: ports are numbers on 127.0.0.1.
public struct ProbeSpec: Sendable, Hashable, Codable {
    public enum Check: Sendable, Hashable, Codable {
        case http(port: Int, path: String)
        case tcp(port: Int)
        case exec(command: [String])
    }

    public var check: Check
    public var initialDelay: Duration
    public var interval: Duration
    public var timeout: Duration
    public var failureThreshold: Int
    public var successThreshold: Int

    public init(check: Check, initialDelay: Duration = .zero, interval: Duration = .seconds(5), timeout: Duration = .seconds(2),
                failureThreshold: Int = 3, successThreshold: Int = 1) {
        self.check = check
        self.initialDelay = initialDelay
        self.interval = interval
        self.timeout = timeout
        self.failureThreshold = failureThreshold
        self.successThreshold = successThreshold
    }

    /// The Application's health check for an instance listening on `port`: a port named in
    /// `ports`, or the number of a declared container port, is the instance's `PORT`;
    /// another number is used as it is.
    public init?(_ check: HealthCheck?, ports: [ContainerPort], instancePort: Int) {
        guard let check else { return nil }
        func resolve(_ port: IntOrString) -> Int {
            switch port {
            case .int(let number):
                return ports.contains { $0.containerPort == number } || ports.isEmpty ? instancePort : number
            case .string:
                return instancePort  // validation guarantees the name is declared
            }
        }
        let resolved: Check
        if let http = check.http {
            resolved = .http(port: resolve(http.port), path: http.path.isEmpty ? "/" : http.path)
        } else if let tcp = check.tcp {
            resolved = .tcp(port: resolve(tcp.port))
        } else if let exec = check.exec {
            resolved = .exec(command: exec.command)
        } else {
            return nil
        }
        self.init(check: resolved, initialDelay: check.initialDelay.duration, interval: check.interval.duration,
                  timeout: check.timeout.duration, failureThreshold: check.failureThreshold, successThreshold: check.successThreshold)
    }
}

/// Runs one probe: nil when it passed, else why it failed.
public enum Prober {
    public static func run(_ spec: ProbeSpec, environment: [String: String] = [:], workingDirectory: String = "/") async -> String? {
        switch spec.check {
        case .http(let port, let path):
            return await withTimeout(spec.timeout, what: "GET http://127.0.0.1:\(port)\(path)") {
                try await httpGet(port: port, path: path, timeout: spec.timeout)
            }
        case .tcp(let port):
            return await withTimeout(spec.timeout, what: "connect to 127.0.0.1:\(port)") {
                let channel = try await connect(port: port, timeout: spec.timeout)
                try? await channel.close()
                return nil
            }
        case .exec(let command):
            return await exec(command, environment: environment, workingDirectory: workingDirectory, timeout: spec.timeout)
        }
    }

    private static func withTimeout(_ timeout: Duration, what: String, _ body: @escaping @Sendable () async throws -> String?) async -> String? {
        await withTaskGroup(of: String?.self) { group in
            group.addTask {
                do { return try await body() } catch { return "\(what): \(describe(error))" }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return Task.isCancelled ? nil : "\(what): timed out after \(timeout.formatted(.units(allowed: [.seconds, .milliseconds])))"
            }
            let first = await group.next()!
            group.cancelAll()
            return first
        }
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? IOError { return String(cString: strerror(error.errnoCode)).lowercased() }
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first {
            return describe(first.error)
        }
        return "\(error)"
    }

    private static func connect(port: Int, timeout: Duration) async throws -> Channel {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.milliseconds(timeout.wholeMilliseconds))
            .connect(host: "127.0.0.1", port: port).get()
    }

    /// HTTP/1.1 GET; 200–399 passes (as Kubernetes' httpGet probe).
    private static func httpGet(port: Int, path: String, timeout: Duration) async throws -> String? {
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.milliseconds(timeout.wholeMilliseconds))
        let channel = try await bootstrap.connect(host: "127.0.0.1", port: port) { channel in
            channel.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
        return try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUser-Agent: capstan-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"))
            var received = ByteBuffer()
            for try await var chunk in inbound {
                received.writeBuffer(&chunk)
                let text = String(buffer: received)
                guard let end = text.range(of: "\r\n") else {
                    if received.readableBytes > 8192 { return "GET \(path): response without a status line" }
                    continue
                }
                let parts = text[..<end.lowerBound].split(separator: " ", maxSplits: 2)
                guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let code = Int(parts[1]) else {
                    return "GET \(path): not an HTTP response"
                }
                return (200..<400).contains(code) ? nil : "GET \(path) returned \(code)"
            }
            return "GET \(path): connection closed before a response"
        }
    }

    /// Runs the command in the instance's directory and environment; exit status 0 passes.
    private static func exec(_ command: [String], environment: [String: String], workingDirectory: String, timeout: Duration) async -> String? {
        let spec = ProcessSpec(command: command, environment: environment, workingDirectory: workingDirectory, logPath: "/dev/null")
        let identity: ProcessIdentity
        do {
            identity = try Spawner.spawn(spec)
        } catch {
            return "exec \(command.first ?? ""): \(error.description)"
        }
        guard let exit = await Spawner.wait(identity, timeout: timeout) else {
            return "exec \(command.first ?? ""): timed out"
        }
        return exit == .exited(0) ? nil : "exec \(command.first ?? ""): \(exit)"
    }
}

extension Spawner {
    /// Waits for our own child at most `timeout`; nil when it did not exit in time (it is then
    /// killed with its process group, and reaped).
    public static func wait(_ identity: ProcessIdentity, timeout: Duration) async -> ProcessExit? {
        let exit = await withTaskGroup(of: ProcessExit?.self) { group in
            group.addTask { await Spawner.wait(identity) }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next()!
            group.cancelAll()
            return first
        }
        if exit == nil {
            kill(-identity.pid, SIGKILL)
            _ = await Spawner.wait(identity)
        }
        return exit
    }

    /// Waits for our own child to exit and reaps it (polls at 10 ms: for short-lived commands).
    public static func wait(_ identity: ProcessIdentity) async -> ProcessExit {
        while true {
            var status: Int32 = 0
            let result = waitpid(identity.pid, &status, WNOHANG)
            if result == identity.pid {
                if status & 0x7f == 0 { return .exited((status >> 8) & 0xff) }
                return .signalled(status & 0x7f)
            }
            if result < 0 { return .unknown }
            if Task.isCancelled { return .unknown }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }
}

extension Duration {
    /// The duration in whole milliseconds.
    var wholeMilliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
}
