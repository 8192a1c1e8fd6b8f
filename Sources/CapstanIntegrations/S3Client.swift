import AsyncHTTPClient
import Crypto
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// An error from S3-compatible storage: the server's own code and message, or why it could
/// not be reached.
public struct S3Error: Error, CustomStringConvertible, Sendable {
    public var status: Int
    public var code: String
    public var message: String

    public init(status: Int, code: String, message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    public var description: String {
        status == 0 ? message : "\(code.isEmpty ? "HTTP \(status)" : code): \(message.isEmpty ? "HTTP \(status)" : message)"
    }
}

/// The calls a backup needs from S3-compatible object storage, signed with Signature V4 on
/// async-http-client: objects (put, get as a stream, delete, list), multipart uploads (create,
/// upload a part, complete, abort, list). Path-style (`endpoint/bucket/key`) or virtual-host
/// (`bucket.endpoint/key`) addressing.
public struct S3Client: Sendable {
    public let bucket: String
    public let region: String
    let credentials: AWSCredentials
    let scheme: String
    let host: String
    let port: Int?
    public let pathStyle: Bool
    let http: HTTPClient

    /// - Parameter pathStyle: nil chooses: path-style for an IP address, `localhost` or an
    ///   endpoint with a port, virtual-host otherwise (as AWS wants).
    public init(endpoint: String, bucket: String, region: String, credentials: AWSCredentials, pathStyle: Bool? = nil,
                http: HTTPClient = .shared) throws(S3Error) {
        guard let components = URLComponents(string: endpoint), let scheme = components.scheme?.lowercased(), scheme == "http" || scheme == "https",
              let host = components.host, !host.isEmpty else {
            throw S3Error(status: 0, code: "", message: "endpoint \"\(endpoint)\" is not an http(s) URL")
        }
        self.bucket = bucket
        self.region = region
        self.credentials = credentials
        self.scheme = scheme
        self.host = host
        self.port = components.port
        let isAddress = host == "localhost" || host.allSatisfy { $0.isNumber || $0 == "." } || host.contains(":")
        self.pathStyle = pathStyle ?? (isAddress || components.port != nil || bucket.contains("."))
        self.http = http
    }

    /// The host (with a port that is not the scheme's default) and the encoded path of a key.
    public func address(_ key: String) -> (host: String, path: String) {
        let portPart = port.map { ":\($0)" } ?? ""
        let encodedKey = SigV4.encode(key, keepSlash: true)
        if pathStyle {
            return (host + portPart, "/\(SigV4.encode(bucket))" + (key.isEmpty ? "" : "/\(encodedKey)"))
        }
        return ("\(bucket).\(host)\(portPart)", "/" + encodedKey)
    }

    /// A signed request (the payload's SHA-256 is signed when given).
    func request(_ method: HTTPMethod, key: String, query: [(String, String)] = [], body: ByteBuffer? = nil, payloadHash: String? = nil,
                 date: Date = Date()) -> HTTPClientRequest {
        let (hostHeader, path) = address(key)
        let hash = payloadHash ?? (body.map { SigV4.hex(SHA256.hash(data: $0.readableBytesView)) } ?? SigV4.emptyPayloadHash)
        let amzDate = SigV4.timestamps(date).amzDate
        var headers = [("host", hostHeader), ("x-amz-date", amzDate), ("x-amz-content-sha256", hash)]
        if let token = credentials.sessionToken { headers.append(("x-amz-security-token", token)) }
        let authorization = SigV4.authorization(method: method.rawValue, path: path, query: query, headers: headers, payloadHash: hash,
                                                credentials: credentials, region: region, service: "s3", date: date)
        let queryString = query.map { "\(SigV4.encode($0.0))=\(SigV4.encode($0.1))" }.joined(separator: "&")
        let connectHost = pathStyle ? host : "\(bucket).\(host)"
        let bracketed = connectHost.contains(":") ? "[\(connectHost)]" : connectHost
        var request = HTTPClientRequest(url: "\(scheme)://\(bracketed)\(port.map { ":\($0)" } ?? "")\(path)\(queryString.isEmpty ? "" : "?" + queryString)")
        request.method = method
        for (name, value) in headers where name != "host" { request.headers.add(name: name, value: value) }
        request.headers.add(name: "Authorization", value: authorization)
        if let body {
            request.headers.add(name: "Content-Length", value: String(body.readableBytes))
            request.body = .bytes(body)
        }
        return request
    }

    /// Sends a request and returns the response with its body collected (up to `limit`),
    /// throwing the server's error for a status that is not 2xx.
    func send(_ request: HTTPClientRequest, timeout: TimeAmount = .seconds(60), limit: Int = 16 << 20) async throws(S3Error) -> (HTTPClientResponse, ByteBuffer) {
        do {
            let response = try await http.execute(request, timeout: timeout)
            let body = try await response.body.collect(upTo: limit)
            guard (200..<300).contains(response.status.code) else { throw Self.error(response.status, body) }
            return (response, body)
        } catch let error as S3Error {
            throw error
        } catch {
            throw S3Error(status: 0, code: "", message: "\(request.url): \(error)")
        }
    }

    static func error(_ status: HTTPResponseStatus, _ body: ByteBuffer) -> S3Error {
        let text = String(buffer: body)
        let code = XMLText.first("Code", in: text) ?? ""
        var message = XMLText.first("Message", in: text) ?? ""
        if code == "NoSuchBucket", let name = XMLText.first("BucketName", in: text) { message += " (bucket \(name))" }
        return S3Error(status: Int(status.code), code: code.isEmpty ? status.reasonPhrase : code, message: message.isEmpty ? "HTTP \(status.code)" : message)
    }

    public func put(_ key: String, _ data: ByteBuffer) async throws(S3Error) {
        _ = try await send(request(.PUT, key: key, body: data))
    }

    /// The object's bytes (small objects: a manifest).
    public func get(_ key: String, limit: Int = 1 << 20) async throws(S3Error) -> ByteBuffer {
        try await send(request(.GET, key: key), limit: limit).1
    }

    /// The object as a stream of buffers, each handed to `each` (a backup being verified or
    /// restored); errors of `each` pass through.
    public func read(_ key: String, _ each: (ByteBuffer) async throws -> Void) async throws {
        let request = request(.GET, key: key)
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: .hours(24))
        } catch {
            throw S3Error(status: 0, code: "", message: "\(request.url): \(error)")
        }
        guard response.status == .ok else {
            let body = (try? await response.body.collect(upTo: 1 << 20)) ?? ByteBuffer()
            throw Self.error(response.status, body)
        }
        var iterator = response.body.makeAsyncIterator()
        while true {
            let next: ByteBuffer?
            do { next = try await iterator.next() } catch { throw S3Error(status: 0, code: "", message: "\(request.url): \(error)") }
            guard let next else { return }
            try await each(next)
        }
    }

    public func delete(_ key: String) async throws(S3Error) {
        _ = try await send(request(.DELETE, key: key))
    }

    /// Whether the bucket exists and these credentials may use it.
    public func checkBucket() async throws(S3Error) {
        _ = try await send(request(.GET, key: "", query: [("list-type", "2"), ("max-keys", "1")]))
    }

    /// Every key under `prefix`, with its size.
    public func list(prefix: String) async throws(S3Error) -> [(key: String, size: Int)] {
        var result: [(key: String, size: Int)] = []
        var token: String?
        repeat {
            var query = [("list-type", "2"), ("prefix", prefix)]
            if let token { query.append(("continuation-token", token)) }
            let text = String(buffer: try await send(request(.GET, key: "", query: query)).1)
            for item in XMLText.all("Contents", in: text) {
                guard let key = XMLText.first("Key", in: item) else { continue }
                result.append((key, Int(XMLText.first("Size", in: item) ?? "") ?? 0))
            }
            token = XMLText.first("IsTruncated", in: text) == "true" ? XMLText.first("NextContinuationToken", in: text) : nil
        } while token != nil
        return result
    }

    public func createUpload(_ key: String) async throws(S3Error) -> String {
        let text = String(buffer: try await send(request(.POST, key: key, query: [("uploads", "")])).1)
        guard let id = XMLText.first("UploadId", in: text) else {
            throw S3Error(status: 200, code: "InvalidResponse", message: "no UploadId in the answer to CreateMultipartUpload")
        }
        return id
    }

    /// Uploads one part; returns its ETag.
    public func uploadPart(_ key: String, uploadID: String, number: Int, _ data: ByteBuffer) async throws(S3Error) -> String {
        let (response, _) = try await send(request(.PUT, key: key, query: [("partNumber", String(number)), ("uploadId", uploadID)], body: data),
                                           timeout: .minutes(10))
        guard let etag = response.headers.first(name: "ETag") else {
            throw S3Error(status: 200, code: "InvalidResponse", message: "no ETag for part \(number)")
        }
        return etag
    }

    public func completeUpload(_ key: String, uploadID: String, parts: [(number: Int, etag: String)]) async throws(S3Error) {
        var xml = "<CompleteMultipartUpload>"
        for part in parts { xml += "<Part><PartNumber>\(part.number)</PartNumber><ETag>\(XMLText.escape(part.etag))</ETag></Part>" }
        xml += "</CompleteMultipartUpload>"
        let (_, body) = try await send(request(.POST, key: key, query: [("uploadId", uploadID)], body: ByteBuffer(string: xml)), timeout: .minutes(10))
        // S3 may answer 200 and put the error in the body.
        let text = String(buffer: body)
        if text.contains("<Error>") { throw Self.error(.ok, body) }
    }

    public func abortUpload(_ key: String, uploadID: String) async throws(S3Error) {
        do {
            _ = try await send(request(.DELETE, key: key, query: [("uploadId", uploadID)]))
        } catch where error.code == "NoSuchUpload" {
            return
        }
    }

    /// Multipart uploads begun and neither completed nor aborted, under `prefix`.
    public func uploads(prefix: String) async throws(S3Error) -> [(key: String, uploadID: String)] {
        let text = String(buffer: try await send(request(.GET, key: "", query: [("uploads", ""), ("prefix", prefix)])).1)
        return XMLText.all("Upload", in: text).compactMap { item in
            guard let key = XMLText.first("Key", in: item), let id = XMLText.first("UploadId", in: item) else { return nil }
            return (key, id)
        }
    }
}

/// Enough XML for S3's answers: the text of elements by name (no attributes, no namespaces).
enum XMLText {
    static func all(_ name: String, in text: String) -> [String] {
        var result: [String] = []
        var rest = text[...]
        while let open = rest.range(of: "<\(name)>"), let close = rest.range(of: "</\(name)>", range: open.upperBound..<rest.endIndex) {
            result.append(unescape(String(rest[open.upperBound..<close.lowerBound])))
            rest = rest[close.upperBound...]
        }
        return result
    }

    static func first(_ name: String, in text: String) -> String? { all(name, in: text).first }

    static func unescape(_ text: String) -> String {
        guard text.contains("&") else { return text }
        return text.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
            .replacingOccurrences(of: "&#34;", with: "\"").replacingOccurrences(of: "&amp;", with: "&")
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
            .replacingOccurrences(of: "\"", with: "&quot;")
    }
}
