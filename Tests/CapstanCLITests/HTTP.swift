import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Minimal HTTP/1.1 GET over a loopback socket, for end-to-end tests.
enum LoopbackHTTP {
    /// A port that was free a moment ago.
    static func freePort() -> Int {
        let (fd, port) = bound(listening: false)
        close(fd)
        return port
    }

    /// A socket bound to a free port on 127.0.0.1 (listening: it accepts connections into its
    /// backlog and never answers them), which the caller closes.
    static func bound(listening: Bool = true) -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        if listening { listen(fd, 16) }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    /// GET `path` from 127.0.0.1:`port`; nil when nothing answers.
    static func get(port: Int, path: String) -> (status: Int, body: String)? {
        request("GET", port: port, path: path, version: "HTTP/1.1")
    }

    /// `method` `path` on 127.0.0.1:`port` with `body`; nil when nothing answers. HTTP/1.0 by
    /// default, so no server answers in chunks.
    static func request(_ method: String, port: Int, path: String, body: String = "", version: String = "HTTP/1.0",
                        headers: [(String, String)] = []) -> (status: Int, body: String)? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return nil }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        // A server that answers before reading the whole body stops reading: the send ends.
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let fields = headers.map { "\($0.0): \($0.1)\r\n" }.joined()
        let request = Array("\(method) \(path) \(version)\r\nHost: 127.0.0.1\r\nConnection: close\r\n\(fields)Content-Length: \(body.utf8.count)\r\n\r\n\(body)".utf8)
        // All of it (a large body takes many sends); a server that answers early and closes
        // ends the sending (no SIGPIPE).
        var sent = 0
        while sent < request.count {
            let count = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if count <= 0 { break }
            sent += count
        }
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count <= 0 { break }
            data += buffer[0..<count]
        }
        let text = String(decoding: data, as: UTF8.self)
        guard let statusLine = text.split(separator: "\r\n").first, let code = statusLine.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return nil }
        let body = text.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
        return (code, body)
    }
}
