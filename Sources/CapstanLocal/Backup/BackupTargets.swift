import CapstanIntegrations
import Foundation
import NIOCore
import NIOFoundationCompat

/// Where backups are kept: a directory on this host or an S3 bucket. Objects are named by the
/// backup's id; its manifest is `ID.json` beside it.
protocol BackupTarget: Sendable {
    /// `/var/backups/capstan` or `s3://bucket/prefix`.
    var location: String { get }
    /// Whether it can be written (the directory exists and is writable; the bucket answers).
    func check() async throws(BackupError)
    /// A writer for a new object; nothing is visible under `name` until it finished.
    func writer(_ name: String) async throws(BackupError) -> any ByteSink
    /// Streams an object into `sink` (then finishes it).
    func read(_ name: String, into sink: any ByteSink) async throws
    func put(_ name: String, _ data: Data) async throws(BackupError)
    func get(_ name: String) async throws(BackupError) -> Data?
    /// Names starting with `prefix`.
    func list(prefix: String) async throws(BackupError) -> [String]
    func delete(_ name: String) async throws(BackupError)
    /// Removes whatever a run cut off left of `name`: a partial file, an upload begun, the
    /// object itself. Returns what it removed.
    func discard(_ name: String) async throws(BackupError) -> [String]
}

struct DirectoryTarget: BackupTarget {
    let path: String

    var location: String { path }

    func file(_ name: String) -> String { path + "/" + name }

    func check() async throws(BackupError) {
        var isDirectory: ObjCBool = false
        if !FileManager.default.fileExists(atPath: path) {
            // Made when its parent exists; a missing parent (a disk not mounted) is a failure,
            // never a backup written somewhere else.
            let parent = (path as NSString).deletingLastPathComponent
            guard FileManager.default.fileExists(atPath: parent, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw BackupError(BackupError.destinationFailed, "destination \(path) does not exist, nor does its parent \(parent) (a disk not mounted?)")
            }
            guard mkdir(path, 0o700) == 0 || errno == EEXIST else {
                throw BackupError(BackupError.destinationFailed, "destination \(path) does not exist and cannot be made: \(String(cString: strerror(errno)))")
            }
        }
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw BackupError(BackupError.destinationFailed, "destination \(path) is not a directory")
        }
        guard access(path, W_OK | X_OK) == 0 else {
            throw BackupError(BackupError.destinationFailed, "destination \(path) is not writable: \(String(cString: strerror(errno)))")
        }
    }

    func writer(_ name: String) async throws(BackupError) -> any ByteSink {
        try FileSink(path: file(name))
    }

    func read(_ name: String, into sink: any ByteSink) async throws {
        let descriptor = open(file(name), O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw BackupError(BackupError.verifyFailed, "\(file(name)): \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        try await ByteReader.pump(descriptor, into: sink, what: file(name), reason: BackupError.verifyFailed)
        try await sink.finish()
    }

    func put(_ name: String, _ data: Data) async throws(BackupError) {
        let sink = try FileSink(path: file(name), exclusive: false)
        do {
            try await sink.write(ByteBuffer(bytes: data))
            try await sink.finish()
        } catch {
            await sink.abort()
            throw error as? BackupError ?? BackupError(BackupError.destinationFailed, "\(error)")
        }
    }

    func get(_ name: String) async throws(BackupError) -> Data? {
        guard FileManager.default.fileExists(atPath: file(name)) else { return nil }
        guard let data = FileManager.default.contents(atPath: file(name)) else {
            throw BackupError(BackupError.destinationFailed, "\(file(name)): cannot be read")
        }
        return data
    }

    func list(prefix: String) async throws(BackupError) -> [String] {
        do {
            return try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasPrefix(prefix) }.sorted()
        } catch {
            throw BackupError(BackupError.destinationFailed, "destination \(path): \((error as NSError).localizedDescription)")
        }
    }

    func delete(_ name: String) async throws(BackupError) {
        guard unlink(file(name)) == 0 || errno == ENOENT else {
            throw BackupError(BackupError.destinationFailed, "\(file(name)): \(String(cString: strerror(errno)))")
        }
    }

    func discard(_ name: String) async throws(BackupError) -> [String] {
        var removed: [String] = []
        for candidate in [name + ".partial", name, name + ".json.partial"] where FileManager.default.fileExists(atPath: file(candidate)) {
            try await delete(candidate)
            removed.append(file(candidate))
        }
        return removed
    }
}

struct S3Target: BackupTarget {
    let client: S3Client
    let prefix: String
    /// Parts of a multipart upload (S3's smallest is 5 MiB).
    static let partSize = 8 << 20

    var location: String { "s3://\(client.bucket)/\(prefix)" }

    func key(_ name: String) -> String { prefix + name }

    static func failure(_ error: S3Error, _ what: String) -> BackupError {
        BackupError(BackupError.destinationFailed, "\(what): \(error.description)")
    }

    func check() async throws(BackupError) {
        do { try await client.checkBucket() } catch { throw Self.failure(error, "s3://\(client.bucket)") }
    }

    func writer(_ name: String) async throws(BackupError) -> any ByteSink {
        S3UploadSink(client: client, key: key(name))
    }

    func read(_ name: String, into sink: any ByteSink) async throws {
        do {
            try await client.read(key(name)) { try await sink.write($0) }
        } catch let error as S3Error {
            throw BackupError(BackupError.verifyFailed, "\(location)\(name): \(error.description)")
        }
        try await sink.finish()
    }

    func put(_ name: String, _ data: Data) async throws(BackupError) {
        do { try await client.put(key(name), ByteBuffer(bytes: data)) } catch { throw Self.failure(error, location + name) }
    }

    func get(_ name: String) async throws(BackupError) -> Data? {
        do {
            return Data(buffer: try await client.get(key(name)))
        } catch where error.code == "NoSuchKey" || error.status == 404 {
            return nil
        } catch {
            throw Self.failure(error, location + name)
        }
    }

    func list(prefix namePrefix: String) async throws(BackupError) -> [String] {
        do {
            return try await client.list(prefix: key(namePrefix)).map { String($0.key.dropFirst(prefix.count)) }.sorted()
        } catch {
            throw Self.failure(error, location)
        }
    }

    func delete(_ name: String) async throws(BackupError) {
        do { try await client.delete(key(name)) } catch { throw Self.failure(error, location + name) }
    }

    func discard(_ name: String) async throws(BackupError) -> [String] {
        var removed: [String] = []
        do {
            for upload in try await client.uploads(prefix: key(name)) where upload.key == key(name) {
                try await client.abortUpload(upload.key, uploadID: upload.uploadID)
                removed.append("upload \(upload.uploadID) of \(location)\(name)")
            }
            if try await client.list(prefix: key(name)).contains(where: { $0.key == key(name) }) {
                try await client.delete(key(name))
                removed.append(location + name)
            }
        } catch {
            throw Self.failure(error, location + name)
        }
        return removed
    }
}

/// An upload in parts: one PUT for a backup smaller than a part, a multipart upload
/// otherwise (aborted on `abort`). Holds at most one part in memory.
final class S3UploadSink: ByteSink {
    let client: S3Client
    let key: String
    var pending = ByteBuffer()
    var uploadID: String?
    var parts: [(number: Int, etag: String)] = []

    init(client: S3Client, key: String) {
        self.client = client
        self.key = key
    }

    func write(_ buffer: ByteBuffer) async throws {
        var buffer = buffer
        pending.writeBuffer(&buffer)
        while pending.readableBytes >= S3Target.partSize {
            try await upload(pending.readSlice(length: S3Target.partSize)!)
            pending.discardReadBytes()
        }
    }

    private func upload(_ part: ByteBuffer) async throws(BackupError) {
        do {
            if uploadID == nil { uploadID = try await client.createUpload(key) }
            let number = parts.count + 1
            parts.append((number, try await client.uploadPart(key, uploadID: uploadID!, number: number, part)))
        } catch {
            throw S3Target.failure(error, "s3://\(client.bucket)/\(key)")
        }
    }

    func finish() async throws {
        do {
            if uploadID == nil {
                try await client.put(key, pending)
                return
            }
            if pending.readableBytes > 0 { try await upload(pending) }
            try await client.completeUpload(key, uploadID: uploadID!, parts: parts)
        } catch let error as S3Error {
            throw S3Target.failure(error, "s3://\(client.bucket)/\(key)")
        }
    }

    func abort() async {
        if let uploadID { try? await client.abortUpload(key, uploadID: uploadID) }
    }
}
