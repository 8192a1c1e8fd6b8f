import Foundation
import Testing
@testable import CapstanLocal
#if canImport(Glibc)
import Glibc
#endif

/// The router against real sockets on loopback.
@Suite struct RouterTests {
    /// A listener that answers every connection with `reply` (after reading one line), then closes.
    final class Server: @unchecked Sendable {
        let fd: Int32
        let port: Int

        init(reply: [UInt8]) {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
            _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
            listen(fd, 64)
            self.fd = fd
            port = Int(UInt16(bigEndian: address.sin_port))
            Thread.detachNewThread {
                while true {
                    let client = accept(fd, nil, nil)
                    if client < 0 { return }
                    var byte: UInt8 = 0
                    while recv(client, &byte, 1, 0) == 1 && byte != UInt8(ascii: "\n") {}
                    var sent = 0
                    while sent < reply.count {
                        let count = reply[sent...].withUnsafeBytes { send(client, $0.baseAddress, $0.count, 0) }
                        if count <= 0 { break }
                        sent += count
                    }
                    close(client)
                }
            }
        }

        func stop() { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
    }

    /// Connects to the router, sends a line, reads to the end.
    func request(_ port: Int) -> [UInt8]? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { return nil }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        _ = "hello\n".withCString { send(fd, $0, 6, 0) }
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count <= 0 { break }
            data += buffer[0..<count]
        }
        return data
    }

    /// A canary's split: by weight, each track's instances together get its share whatever
    /// their number; by replica ratio, every instance alike.
    @Test func tracksGetTheirWeightOrTheirInstancesShare() {
        let backends = [Backend(port: 1, track: "stable"), Backend(port: 2, track: "stable"), Backend(port: 3, track: "stable"),
                        Backend(port: 4, track: "canary")]
        func share(_ weighted: [Backend], _ track: String) -> Double {
            Double(weighted.filter { $0.track == track }.map(\.weight).reduce(0, +)) * 100 / Double(weighted.map(\.weight).reduce(0, +))
        }
        let byWeight = RouterSet.weighted(backends, ["stable": 80, "canary": 20])
        #expect(share(byWeight, "canary") == 20)
        let byInstance = RouterSet.weighted(backends, ["stable": 80, "canary": 20, RouterSet.perInstance: 1])
        #expect(share(byInstance, "canary") == 25)
        #expect(byInstance.allSatisfy { $0.weight == 1 })
        // A track not asked for gets nothing either way.
        #expect(RouterSet.weighted(backends, ["stable": 100]).allSatisfy { $0.track == "stable" })
    }

    @Test func spreadsByWeightSkipsDeadBackendsAndPassesLargeRepliesWhole() async throws {
        let a = Server(reply: Array("a".utf8)), b = Server(reply: Array("b".utf8))
        let big = (0..<(2 << 20)).map { UInt8($0 % 251) }
        let large = Server(reply: big)
        defer { a.stop(); b.stop(); large.stop() }
        let port = Int(LocalWorkloadPlatform.freePort()!)
        let router = try await TCPRouter(host: "127.0.0.1", port: port, backends: [Backend(port: a.port, weight: 3), Backend(port: b.port, weight: 1)])
        defer { Task { await router.close() } }

        var seen: [String: Int] = [:]
        for _ in 0..<40 { seen[String(decoding: request(port) ?? [], as: UTF8.self), default: 0] += 1 }
        #expect(seen == ["a": 30, "b": 10], "smooth weighted round robin 3:1: \(seen)")

        // A backend that went away (connection refused) is skipped for that connection.
        let dead = Server(reply: [])
        dead.stop()
        router.setBackends([Backend(port: dead.port, weight: 1), Backend(port: b.port, weight: 1)])
        for _ in 0..<10 { #expect(request(port) == Array("b".utf8)) }

        // A 2 MiB reply arrives whole although the backend closes right after sending it.
        router.setBackends([Backend(port: large.port, weight: 1)])
        #expect(request(port) == big)
        #expect(router.activeConnections(to: large.port) == 0)

        // No ready backend: the connection is closed at once, nothing hangs.
        router.setBackends([])
        #expect(request(port) == [])

        await router.close()
        // Closed: nothing listens (the listening socket may take a moment to go on a busy machine).
        var answer = request(port)
        for _ in 0..<50 where answer != nil {
            try await Task.sleep(for: .milliseconds(100))
            answer = request(port)
        }
        #expect(answer == nil, "closed: nothing listens")
    }

    @Test func aTakenPortIsAnError() async throws {
        let holder = Server(reply: [])
        defer { holder.stop() }
        await #expect(throws: (any Error).self) { _ = try await TCPRouter(host: "127.0.0.1", port: holder.port) }
    }

    @Test func logsAreRotatedBySizeAndTheWriterKeepsAppending() throws {
        let directory = NSTemporaryDirectory() + "capstan-rotate-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/i.log"
        let writer = open(path, O_WRONLY | O_APPEND | O_CREAT, 0o600)
        defer { close(writer) }
        for round in 1...4 {
            let line = String(repeating: "\(round)", count: 100) + "\n"
            _ = line.withCString { write(writer, $0, strlen($0)) }
            Supervisor.rotate(path, maxBytes: 50, keep: 2)
        }
        _ = "tail\n".withCString { write(writer, $0, 5) }
        let current = try String(contentsOfFile: path, encoding: .utf8)
        #expect(current == "tail\n", "truncated in place; the writer's O_APPEND writes at the new end")
        #expect(try String(contentsOfFile: path + ".1", encoding: .utf8).hasPrefix("4444"))
        #expect(try String(contentsOfFile: path + ".2", encoding: .utf8).hasPrefix("3333"))
        #expect(!FileManager.default.fileExists(atPath: path + ".3"), "only `keep` copies")
    }
}
