import CapstanControllers
import CapstanIntegrations
import CapstanModel
import Crypto
import Foundation
import NIOCore
import Testing
@testable import CapstanLocal

/// AWS's published Signature V4 examples: the test suite's `get-vanilla` and
/// `get-vanilla-query-order-key-case`, and the S3 developer guide's GET-object example.
@Suite struct SigV4Tests {
    static let suiteCredentials = AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    static let suiteDate = Date(timeIntervalSince1970: 1_440_938_160)  // 20150830T123600Z

    @Test func getVanilla() {
        let headers = [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")]
        let (canonical, signed) = SigV4.canonicalRequest(method: "GET", path: "/", query: [], headers: headers, payloadHash: SigV4.emptyPayloadHash)
        #expect(canonical == "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(signed == "host;x-amz-date")
        let authorization = SigV4.authorization(method: "GET", path: "/", query: [], headers: headers, payloadHash: SigV4.emptyPayloadHash,
                                                credentials: Self.suiteCredentials, region: "us-east-1", service: "service", date: Self.suiteDate)
        #expect(authorization == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    }

    @Test func queryOrder() {
        let headers = [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")]
        let authorization = SigV4.authorization(method: "GET", path: "/", query: [("Param2", "value2"), ("Param1", "value1")], headers: headers,
                                                payloadHash: SigV4.emptyPayloadHash, credentials: Self.suiteCredentials, region: "us-east-1",
                                                service: "service", date: Self.suiteDate)
        #expect(authorization.hasSuffix("Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"))
    }

    @Test func s3GetObjectExample() {
        let credentials = AWSCredentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        let headers = [("Host", "examplebucket.s3.amazonaws.com"), ("Range", "bytes=0-9"), ("x-amz-content-sha256", SigV4.emptyPayloadHash),
                       ("x-amz-date", "20130524T000000Z")]
        let authorization = SigV4.authorization(method: "GET", path: "/test.txt", query: [], headers: headers, payloadHash: SigV4.emptyPayloadHash,
                                                credentials: credentials, region: "us-east-1", service: "s3", date: Date(timeIntervalSince1970: 1_369_353_600))
        #expect(authorization == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    @Test func addressing() throws {
        let credentials = AWSCredentials(accessKeyID: "a", secretAccessKey: "b")
        let local = try S3Client(endpoint: "http://127.0.0.1:9000", bucket: "backups", region: "us-east-1", credentials: credentials)
        #expect(local.pathStyle)
        #expect(local.address("db/x y").host == "127.0.0.1:9000")
        #expect(local.address("db/x y").path == "/backups/db/x%20y")
        let aws = try S3Client(endpoint: "https://s3.eu-west-1.amazonaws.com", bucket: "backups", region: "eu-west-1", credentials: credentials)
        #expect(!aws.pathStyle)
        #expect(aws.address("k").host == "backups.s3.eu-west-1.amazonaws.com")
        #expect(aws.address("k").path == "/k")
        let forced = try S3Client(endpoint: "https://minio.example.com", bucket: "b1b", region: "us-east-1", credentials: credentials, pathStyle: true)
        #expect(forced.address("k").path == "/b1b/k")
        #expect(throws: S3Error.self) { try S3Client(endpoint: "ftp://x", bucket: "b", region: "r", credentials: credentials) }
    }

    @Test func credentialsText() {
        #expect(AWSCredentials(parsing: "AK:SECRET/with:colon\n") == AWSCredentials(accessKeyID: "AK", secretAccessKey: "SECRET/with:colon"))
        #expect(AWSCredentials(parsing: "aws_access_key_id = AK\naws_secret_access_key = S\n") == AWSCredentials(accessKeyID: "AK", secretAccessKey: "S"))
        #expect(AWSCredentials(parsing: "AK\nS") == AWSCredentials(accessKeyID: "AK", secretAccessKey: "S"))
        #expect(AWSCredentials(parsing: "") == nil)
    }
}

/// Collects what reaches the end of a chain.
final class CollectSink: ByteSink {
    var data = Data()
    var finished = false
    func write(_ buffer: ByteBuffer) async throws { data.append(contentsOf: buffer.readableBytesView) }
    func finish() async throws { finished = true }
}

@Suite struct BackupStreamTests {
    static func pass(_ input: Data, chunk: Int, through head: any ByteSink) async throws {
        var offset = 0
        while offset < input.count {
            let end = min(input.count, offset + chunk)
            try await head.write(ByteBuffer(bytes: input[offset..<end]))
            offset = end
        }
        try await head.finish()
    }

    static func sample(_ count: Int) -> Data {
        var generator = SystemRandomNumberGenerator()
        // Half compressible text, half random bytes.
        var data = Data((0..<count / 2).map { UInt8(truncatingIfNeeded: $0 % 61 + 32) })
        data.append(contentsOf: (0..<(count - count / 2)).map { _ in UInt8.random(in: 0...255, using: &generator) })
        return data
    }

    @Test(arguments: [0, 1, 1000, 3 << 20])
    func gzipEncryptRoundTrip(size: Int) async throws {
        let input = Self.sample(size)
        let key = SymmetricKey(size: .bits256)
        let stored = CollectSink()
        let digest = DigestSink(next: stored)
        try await Self.pass(input, chunk: 70_001, through: try ZlibSink(.compress, next: EncryptSink(key: key, next: digest)))
        #expect(digest.size == stored.data.count)
        #expect(digest.digest == SHA256.hash(data: stored.data).map { String(format: "%02x", $0) }.joined())
        // The stored bytes are neither the input nor gzip: encrypted.
        #expect(stored.data.starts(with: BackupCipher.magic))
        let back = CollectSink()
        try await Self.pass(stored.data, chunk: 65_536, through: DecryptSink(key: key, next: try ZlibSink(.decompress, next: back)))
        #expect(back.data == input)
        #expect(back.finished)
    }

    @Test func gzipIsReadByGunzip() async throws {
        let input = Data(String(repeating: "capstan backup\n", count: 50_000).utf8)
        let stored = CollectSink()
        try await Self.pass(input, chunk: 4096, through: try ZlibSink(.compress, next: stored))
        #expect(stored.data.count < input.count / 20)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("capstan-gzip-\(UUID().uuidString).gz").path
        defer { unlink(path) }
        _ = FileManager.default.createFile(atPath: path, contents: stored.data)
        let scratch = FileManager.default.temporaryDirectory.path
        let text = try await BackupTool.run(["gzip", "-dc", path], scratch: scratch, reason: "Test")
        #expect(text == String(decoding: input, as: UTF8.self))
    }

    @Test func wrongKeyTruncationAndTampering() async throws {
        let input = Self.sample(2 << 20 + 17)
        let key = SymmetricKey(size: .bits256)
        let stored = CollectSink()
        try await Self.pass(input, chunk: 100_000, through: EncryptSink(key: key, next: stored))

        await #expect(throws: DecryptSink.wrongKey) {
            try await Self.pass(stored.data, chunk: 100_000, through: DecryptSink(key: SymmetricKey(size: .bits256), next: CollectSink()))
        }
        // Cut after the first chunk: every chunk read opens, the last one is missing.
        let cut = stored.data.prefix(BackupCipher.magic.count + 16 + 4 + (1 << 20) + 16)
        await #expect(throws: BackupError.self) {
            try await Self.pass(cut, chunk: 100_000, through: DecryptSink(key: key, next: CollectSink()))
        }
        var flipped = stored.data
        flipped[flipped.count / 2] ^= 1
        await #expect(throws: DecryptSink.wrongKey) {
            try await Self.pass(flipped, chunk: 100_000, through: DecryptSink(key: key, next: CollectSink()))
        }
        await #expect(throws: DecryptSink.notEncrypted) {
            try await Self.pass(Data(repeating: 7, count: 100), chunk: 100, through: DecryptSink(key: key, next: CollectSink()))
        }
    }

    @Test func keys() throws {
        let raw = Data((0..<32).map { UInt8($0) })
        #expect(try BackupCipher.key(from: raw) == SymmetricKey(data: raw))
        #expect(try BackupCipher.key(from: Data(raw.base64EncodedString().utf8)) == SymmetricKey(data: raw))
        #expect(try BackupCipher.key(from: Data((raw.map { String(format: "%02x", $0) }.joined() + "\n").utf8)) == SymmetricKey(data: raw))
        #expect(throws: BackupError.self) { try BackupCipher.key(from: Data("short".utf8)) }
    }

    @Test func ids() {
        let date = ISO8601DateFormatter().date(from: "2026-12-04T02:00:00Z")!
        let id = BackupRunner.id(schedule: "db-nightly", at: date)
        #expect(id == "db-nightly-20261204T020000Z")
        #expect(BackupRunner.time(ofID: id, schedule: "db-nightly") == date)
        #expect(BackupRunner.time(ofID: id + "-2", schedule: "db-nightly") == date)
        #expect(BackupRunner.time(ofID: id, schedule: "db") == nil)
        #expect(BackupRunner.time(ofID: "db-nightly-x", schedule: "db-nightly") == nil)
    }
}

/// Retention as a run applies it: twenty simulated days of backups (twice a day, three days
/// missed) in a real destination directory, pruned after the newest run.
@Suite struct BackupRetentionTests {
    @Test func twentySimulatedDaysKeepWhatResticKeeps() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("capstan-retention-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let formatter = ISO8601DateFormatter()
        var ids: [String] = []
        for day in 1...20 where day != 5 && day != 11 && day != 12 {
            for hour in [2, 14] {
                let id = BackupRunner.id(schedule: "db", at: formatter.date(from: String(format: "2026-11-%02dT%02d:00:00Z", day, hour))!)
                ids.append(id)
                _ = FileManager.default.createFile(atPath: directory + "/" + id, contents: Data("backup".utf8))
                _ = FileManager.default.createFile(atPath: directory + "/" + id + ".json", contents: Data("{}".utf8))
            }
        }
        // Another schedule's backups and a stray file are never touched.
        _ = FileManager.default.createFile(atPath: directory + "/db-other-20261101T020000Z.json", contents: Data())
        _ = FileManager.default.createFile(atPath: directory + "/notes.txt", contents: Data())
        var destination = BackupJobSpec.Destination()
        destination.path = directory
        let job = BackupJobSpec(id: ids.last!, namespace: "default", schedule: "db", source: .init(type: "directory"), destination: destination,
                                encrypted: false, verify: false, retention: [2, 0, 5, 2, 2, 0], timeZone: "UTC", timeoutSeconds: 60,
                                capstanVersion: "test", secrets: .init(), scratch: directory)
        let pruned = try await BackupRunner.prune(job, target: DirectoryTarget(path: directory))
        let left = Set(try FileManager.default.contentsOfDirectory(atPath: directory))
        let expected = ["20261120T140000Z", "20261120T020000Z", "20261119T140000Z", "20261118T140000Z", "20261117T140000Z",
                        "20261116T140000Z", "20261115T140000Z"].map { "db-" + $0 }
        #expect(left == Set(expected + expected.map { $0 + ".json" } + ["db-other-20261101T020000Z.json", "notes.txt"]))
        #expect(pruned.count == ids.count - expected.count)
    }
}
