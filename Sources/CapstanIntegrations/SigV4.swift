import Crypto
import Foundation

/// An access key for AWS-style request signing.
public struct AWSCredentials: Sendable, Hashable {
    public var accessKeyID: String
    public var secretAccessKey: String
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    /// `ACCESS_KEY_ID:SECRET_ACCESS_KEY` (one line, as a Secret key holds it), or the two on
    /// separate lines, or `aws_access_key_id = ...` / `aws_secret_access_key = ...` lines.
    public init?(parsing text: String) {
        var id: String?, secret: String?
        for line in text.split(whereSeparator: \.isNewline).map({ $0.trimmingCharacters(in: .whitespaces) }) where !line.isEmpty {
            if let equals = line.firstIndex(of: "=") {
                let name = line[..<equals].trimmingCharacters(in: .whitespaces).lowercased()
                let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
                if name == "aws_access_key_id" { id = value } else if name == "aws_secret_access_key" { secret = value }
            } else if let colon = line.firstIndex(of: ":"), id == nil, secret == nil {
                id = String(line[..<colon])
                secret = String(line[line.index(after: colon)...])
            } else if id == nil {
                id = line
            } else if secret == nil {
                secret = line
            }
        }
        guard let id, let secret, !id.isEmpty, !secret.isEmpty else { return nil }
        self.init(accessKeyID: id, secretAccessKey: secret)
    }
}

/// AWS Signature Version 4 (docs.aws.amazon.com, "Create a signed AWS API request"): the
/// canonical request, the string to sign and the signing key, for a header-signed request.
public enum SigV4 {
    /// The hash S3 accepts instead of the payload's.
    public static let unsignedPayload = "UNSIGNED-PAYLOAD"
    public static let emptyPayloadHash = hex(SHA256.hash(data: Data()))

    public static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        for byte in digest {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func sha256Hex(_ data: some DataProtocol) -> String { hex(SHA256.hash(data: data)) }

    /// RFC 3986 percent-encoding of everything but the unreserved characters (and `/` when
    /// `keepSlash`, for a path).
    public static func encode(_ text: String, keepSlash: Bool = false) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.unicodeScalars.append(UnicodeScalar(byte))
            case UInt8(ascii: "/") where keepSlash:
                out.append("/")
            default:
                out += String(format: "%%%02X", byte)
            }
        }
        return out
    }

    /// `20150830T123600Z` and `20150830`.
    public static func timestamps(_ date: Date) -> (amzDate: String, day: String) {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        let day = String(format: "%04d%02d%02d", c.year!, c.month!, c.day!)
        return (day + String(format: "T%02d%02d%02dZ", c.hour!, c.minute!, c.second!), day)
    }

    /// The canonical request. `path` is already URI-encoded (S3 encodes it once); `query` and
    /// `headers` are raw.
    public static func canonicalRequest(method: String, path: String, query: [(String, String)], headers: [(String, String)],
                                        payloadHash: String) -> (request: String, signedHeaders: String) {
        let encoded: [(String, String)] = query.map { (encode($0.0), encode($0.1)) }
        let sortedQuery = encoded.sorted { (a: (String, String), b: (String, String)) -> Bool in a.0 == b.0 ? a.1 < b.1 : a.0 < b.0 }
        let canonicalQuery = sortedQuery.map { "\($0.0)=\($0.1)" }.joined(separator: "&")
        var merged: [String: [String]] = [:]
        for (name, value) in headers {
            let trimmed = value.trimmingCharacters(in: .whitespaces).split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            merged[name.lowercased(), default: []].append(trimmed)
        }
        let names = merged.keys.sorted()
        let canonicalHeaders = names.map { "\($0):\(merged[$0]!.joined(separator: ","))\n" }.joined()
        let signedHeaders = names.joined(separator: ";")
        let request = [method, path.isEmpty ? "/" : path, canonicalQuery, canonicalHeaders, signedHeaders, payloadHash].joined(separator: "\n")
        return (request, signedHeaders)
    }

    /// The `Authorization` header of a request whose `headers` include `host` and `x-amz-date`
    /// (and, for S3, `x-amz-content-sha256`).
    public static func authorization(method: String, path: String, query: [(String, String)], headers: [(String, String)], payloadHash: String,
                                     credentials: AWSCredentials, region: String, service: String, date: Date) -> String {
        let (amzDate, day) = timestamps(date)
        let (request, signedHeaders) = canonicalRequest(method: method, path: path, query: query, headers: headers, payloadHash: payloadHash)
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, sha256Hex(Data(request.utf8))].joined(separator: "\n")
        var key = SymmetricKey(data: Data(("AWS4" + credentials.secretAccessKey).utf8))
        for part in [day, region, service, "aws4_request"] {
            key = SymmetricKey(data: Data(HMAC<SHA256>.authenticationCode(for: Data(part.utf8), using: key)))
        }
        let signature = hex(HMAC<SHA256>.authenticationCode(for: Data(stringToSign.utf8), using: key))
        return "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedHeaders), Signature=\(signature)"
    }
}
