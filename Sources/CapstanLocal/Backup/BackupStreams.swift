import CompressNIO
import Crypto
import Foundation
import NIOCore
import NIOFoundationCompat

/// Why a backup run, a verification or a restore failed: a reason (`SourceFailed`,
/// `DestinationFailed`, `VerifyFailed`, `Timeout`, `Interrupted`, ...) and the tool's or
/// server's own message.
public struct BackupError: Error, CustomStringConvertible, Sendable, Equatable {
    public var reason: String
    public var message: String

    public init(_ reason: String, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { message }

    public static let sourceFailed = "SourceFailed"
    public static let destinationFailed = "DestinationFailed"
    public static let verifyFailed = "VerifyFailed"
    public static let encryptionFailed = "EncryptionFailed"
    public static let timeout = "Timeout"
    public static let interrupted = "Interrupted"
    public static let restoreFailed = "RestoreFailed"
}

/// One stage of a stream of bytes: gzip, encryption, a digest, a file, an upload, a
/// process's standard input. Buffers go in order; `finish` ends the stream and `abort` undoes
/// what can be undone (a partial file, an upload).
public protocol ByteSink: AnyObject {
    func write(_ buffer: ByteBuffer) async throws
    func finish() async throws
    func abort() async
}

extension ByteSink {
    public func abort() async {}
}

/// gzip (compress) or gunzip (decompress) on zlib, streaming.
final class ZlibSink: ByteSink {
    enum Mode { case compress, decompress }
    let next: any ByteSink
    let compressor: ZlibCompressor?
    let decompressor: ZlibDecompressor?
    static let window = 256 * 1024

    init(_ mode: Mode, next: any ByteSink) throws {
        self.next = next
        switch mode {
        case .compress:
            compressor = try ZlibCompressor(algorithm: .gzip, configuration: .init(compressionLevel: 6))
            decompressor = nil
        case .decompress:
            compressor = nil
            decompressor = try ZlibDecompressor(algorithm: .gzip)
        }
    }

    func write(_ buffer: ByteBuffer) async throws {
        var input = buffer
        if let compressor {
            while input.readableBytes > 0 {
                var output = ByteBufferAllocator().buffer(capacity: Self.window)
                do {
                    try compressor.deflate(from: &input, to: &output, flush: .no)
                } catch let error as CompressNIOError where error == .bufferOverflow {}
                if output.readableBytes > 0 { try await next.write(output) }
            }
        } else if let decompressor {
            // Until the input is used up and the last call did not fill its output (zlib
            // may hold more).
            var outputFull = false
            while input.readableBytes > 0 || outputFull {
                var output = ByteBufferAllocator().buffer(capacity: Self.window)
                outputFull = false
                var streamEnded = false
                do {
                    try decompressor.inflate(from: &input, to: &output)
                    streamEnded = input.readableBytes > 0
                } catch let error as CompressNIOError where error == .bufferOverflow {
                    outputFull = true
                } catch let error as CompressNIOError where error == .inputBufferOverflow {
                } catch let error as CompressNIOError where error == .corruptData {
                    throw BackupError(BackupError.verifyFailed, "the gzip stream is damaged")
                }
                if output.readableBytes > 0 { try await next.write(output) }
                // Another gzip member follows (as `cat a.gz b.gz`).
                if streamEnded { try decompressor.reset() }
            }
        }
    }

    func finish() async throws {
        if let compressor {
            var empty = ByteBufferAllocator().buffer(capacity: 16)
            while true {
                var output = ByteBufferAllocator().buffer(capacity: Self.window)
                var done = true
                do {
                    try compressor.deflate(from: &empty, to: &output, flush: .finish)
                } catch let error as CompressNIOError where error == .bufferOverflow {
                    done = false
                }
                if output.readableBytes > 0 { try await next.write(output) }
                if done { break }
            }
        }
        try await next.finish()
    }

    func abort() async { await next.abort() }
}

/// The encrypted format: `CAPSTAN-AES256GCM-1\n`, a 16-byte salt, then chunks of at most
/// 1 MiB, each a 4-byte big-endian header (length, the top bit marking the last chunk) and
/// AES-256-GCM ciphertext with its tag. The key of a backup is HKDF-SHA256(key, salt); the
/// nonce is the chunk's number; the header is authenticated. A chunk moved, dropped, changed
/// or a stream cut short does not decrypt.
public enum BackupCipher {
    public static let magic = Array("CAPSTAN-AES256GCM-1\n".utf8)
    static let chunkSize = 1 << 20
    static let lastFlag: UInt32 = 1 << 31

    /// A key from a Secret: 32 raw bytes, or 32 bytes in base64 or hex.
    public static func key(from data: Data) throws(BackupError) -> SymmetricKey {
        if data.count == 32 { return SymmetricKey(data: data) }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if let decoded = Data(base64Encoded: text), decoded.count == 32 { return SymmetricKey(data: decoded) }
        if text.count == 64, let decoded = Data(hexString: text) { return SymmetricKey(data: decoded) }
        throw BackupError(BackupError.encryptionFailed, "the encryption key must be 32 bytes, raw, base64 or hex (it is \(data.count) bytes); make one with `openssl rand -base64 32`")
    }

    static func derive(_ key: SymmetricKey, salt: [UInt8]) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: key, salt: salt, info: Array("capstan backup".utf8), outputByteCount: 32)
    }

    static func nonce(_ counter: UInt64) -> AES.GCM.Nonce {
        var bytes = [UInt8](repeating: 0, count: 12)
        for i in 0..<8 { bytes[4 + i] = UInt8((counter >> (8 * UInt64(7 - i))) & 0xFF) }
        return try! AES.GCM.Nonce(data: bytes)
    }
}

extension Data {
    init?(hexString: String) {
        var bytes = [UInt8]()
        var iterator = hexString.utf8.makeIterator()
        while let high = iterator.next() {
            guard let low = iterator.next(), let h = Self.nibble(high), let l = Self.nibble(low) else { return nil }
            bytes.append(h << 4 | l)
        }
        self.init(bytes)
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

final class EncryptSink: ByteSink {
    let next: any ByteSink
    let key: SymmetricKey
    let salt: [UInt8]
    var pending = ByteBuffer()
    var counter: UInt64 = 0
    var started = false

    init(key: SymmetricKey, next: any ByteSink) {
        self.next = next
        self.salt = (0..<16).map { _ in UInt8.random(in: 0...255) }
        self.key = BackupCipher.derive(key, salt: salt)
    }

    func write(_ buffer: ByteBuffer) async throws {
        var buffer = buffer
        pending.writeBuffer(&buffer)
        while pending.readableBytes > BackupCipher.chunkSize {
            try await seal(pending.readSlice(length: BackupCipher.chunkSize)!, last: false)
        }
        pending.discardReadBytes()
    }

    func finish() async throws {
        try await seal(pending.readSlice(length: pending.readableBytes)!, last: true)
        try await next.finish()
    }

    func abort() async { await next.abort() }

    private func seal(_ chunk: ByteBuffer, last: Bool) async throws {
        var out = ByteBufferAllocator().buffer(capacity: chunk.readableBytes + 64)
        if !started {
            out.writeBytes(BackupCipher.magic)
            out.writeBytes(salt)
            started = true
        }
        let header = UInt32(chunk.readableBytes) | (last ? BackupCipher.lastFlag : 0)
        var headerBytes = ByteBuffer()
        headerBytes.writeInteger(header, endianness: .big)
        let sealed = try AES.GCM.seal(chunk.readableBytesView, using: key, nonce: BackupCipher.nonce(counter),
                                      authenticating: headerBytes.readableBytesView)
        counter += 1
        out.writeInteger(header, endianness: .big)
        out.writeBytes(sealed.ciphertext)
        out.writeBytes(sealed.tag)
        try await next.write(out)
    }
}

final class DecryptSink: ByteSink {
    let next: any ByteSink
    let master: SymmetricKey
    var key: SymmetricKey?
    var pending = ByteBuffer()
    var counter: UInt64 = 0
    var sawLast = false

    init(key: SymmetricKey, next: any ByteSink) {
        self.master = key
        self.next = next
    }

    static let notEncrypted = BackupError(BackupError.encryptionFailed, "the backup is not in Capstan's encrypted format")
    static let wrongKey = BackupError(BackupError.encryptionFailed, "the backup does not decrypt with this key (a wrong key, or the backup is damaged)")

    func write(_ buffer: ByteBuffer) async throws {
        var buffer = buffer
        pending.writeBuffer(&buffer)
        if key == nil {
            let headerLength = BackupCipher.magic.count + 16
            guard pending.readableBytes >= headerLength else { return }
            guard pending.readBytes(length: BackupCipher.magic.count) == BackupCipher.magic else { throw Self.notEncrypted }
            key = BackupCipher.derive(master, salt: pending.readBytes(length: 16)!)
        }
        while let header: UInt32 = pending.getInteger(at: pending.readerIndex, endianness: .big) {
            let length = Int(header & ~BackupCipher.lastFlag)
            guard length <= BackupCipher.chunkSize else { throw Self.wrongKey }
            guard pending.readableBytes >= 4 + length + 16 else { break }
            guard !sawLast else { throw BackupError(BackupError.verifyFailed, "data after the last encrypted chunk") }
            pending.moveReaderIndex(forwardBy: 4)
            let ciphertext = pending.readBytes(length: length)!
            let tag = pending.readBytes(length: 16)!
            var headerBytes = ByteBuffer()
            headerBytes.writeInteger(header, endianness: .big)
            let plain: Data
            do {
                let box = try AES.GCM.SealedBox(nonce: BackupCipher.nonce(counter), ciphertext: ciphertext, tag: tag)
                plain = try AES.GCM.open(box, using: key!, authenticating: headerBytes.readableBytesView)
            } catch {
                throw Self.wrongKey
            }
            counter += 1
            sawLast = header & BackupCipher.lastFlag != 0
            if !plain.isEmpty { try await next.write(ByteBuffer(bytes: plain)) }
        }
        pending.discardReadBytes()
    }

    func finish() async throws {
        guard key != nil else { throw Self.notEncrypted }
        guard sawLast, pending.readableBytes == 0 else {
            throw BackupError(BackupError.verifyFailed, "the encrypted backup is cut short (its last chunk is missing)")
        }
        try await next.finish()
    }

    func abort() async { await next.abort() }
}

/// Counts and hashes what passes (SHA-256).
final class DigestSink: ByteSink {
    let next: any ByteSink
    var hasher = SHA256()
    var size = 0
    var digest: String?

    init(next: any ByteSink) { self.next = next }

    func write(_ buffer: ByteBuffer) async throws {
        hasher.update(data: buffer.readableBytesView)
        size += buffer.readableBytes
        try await next.write(buffer)
    }

    func finish() async throws {
        digest = hasher.finalize().map { String(format: "%02x", $0) }.joined()
        try await next.finish()
    }

    func abort() async { await next.abort() }
}

/// Drops everything (a digest check reads to nothing).
final class DiscardSink: ByteSink {
    func write(_ buffer: ByteBuffer) async throws {}
    func finish() async throws {}
}

/// A file written beside its final name (`NAME.partial`), fsynced and renamed into place on
/// `finish`; removed on `abort`.
final class FileSink: ByteSink {
    let path: String
    let partial: String
    var descriptor: Int32 = -1

    init(path: String, exclusive: Bool = true) throws(BackupError) {
        self.path = path
        self.partial = path + ".partial"
        descriptor = open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (exclusive ? O_EXCL : 0), 0o600)
        guard descriptor >= 0 else {
            throw BackupError(BackupError.destinationFailed, "\(partial): \(String(cString: strerror(errno)))")
        }
    }

    func write(_ buffer: ByteBuffer) async throws {
        try buffer.withUnsafeReadableBytes { bytes throws(BackupError) in
            var offset = 0
            while offset < bytes.count {
                let written = Foundation.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw BackupError(BackupError.destinationFailed, "\(partial): \(String(cString: strerror(errno)))")
                }
                offset += written
            }
        }
    }

    func finish() async throws {
        guard fsync(descriptor) == 0, close(descriptor) == 0 else {
            let message = String(cString: strerror(errno))
            await abort()
            throw BackupError(BackupError.destinationFailed, "\(partial): \(message)")
        }
        descriptor = -1
        guard rename(partial, path) == 0 else {
            let message = String(cString: strerror(errno))
            unlink(partial)
            throw BackupError(BackupError.destinationFailed, "\(path): \(message)")
        }
        let directory = open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directory >= 0 {
            fsync(directory)
            close(directory)
        }
    }

    func abort() async {
        if descriptor >= 0 { close(descriptor) }
        descriptor = -1
        unlink(partial)
    }

    deinit { if descriptor >= 0 { close(descriptor) } }
}

/// Reads a file or a pipe in chunks of up to 1 MiB (the blocking read on a thread that is not
/// one of the cooperative pool's), handing each to `sink`.
enum ByteReader {
    static let chunk = 1 << 20

    /// Reads until end of file; returns the count of bytes read.
    @discardableResult
    static func pump(_ descriptor: Int32, into sink: any ByteSink, what: String, reason: String) async throws -> Int {
        var total = 0
        while true {
            try Task.checkCancellation()
            let buffer = try await read(descriptor, what: what, reason: reason)
            guard let buffer else { return total }
            total += buffer.readableBytes
            try await sink.write(buffer)
        }
    }

    /// Up to a chunk (fewer at the end), nil at end of file.
    static func read(_ descriptor: Int32, what: String, reason: String) async throws(BackupError) -> ByteBuffer? {
        let result: Result<ByteBuffer?, BackupError> = await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                var buffer = ByteBufferAllocator().buffer(capacity: chunk)
                var failure: BackupError?
                var atEnd = false
                while buffer.readableBytes < chunk {
                    let count = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { space in
                        Foundation.read(descriptor, space.baseAddress!, space.count)
                    }
                    if count < 0 {
                        if errno == EINTR { continue }
                        failure = BackupError(reason, "\(what): \(String(cString: strerror(errno)))")
                        break
                    }
                    if count == 0 { atEnd = true; break }
                    // A pipe gives what it has: hand a chunk on once there is a good part of one.
                    if buffer.readableBytes >= chunk / 4 { break }
                }
                if let failure { continuation.resume(returning: .failure(failure)) } else {
                    continuation.resume(returning: .success(buffer.readableBytes == 0 && atEnd ? nil : buffer))
                }
            }
        }
        return try result.get()
    }

    /// Writes all of `buffer` to a descriptor (a pipe to a restoring tool) off the pool.
    static func write(_ descriptor: Int32, _ buffer: ByteBuffer, what: String) async throws(BackupError) {
        let failure: BackupError? = await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                let message: String? = buffer.withUnsafeReadableBytes { bytes in
                    var offset = 0
                    while offset < bytes.count {
                        let written = Foundation.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                        if written < 0 {
                            if errno == EINTR { continue }
                            return String(cString: strerror(errno))
                        }
                        offset += written
                    }
                    return nil
                }
                continuation.resume(returning: message.map { BackupError(BackupError.restoreFailed, "\(what): \($0)") })
            }
        }
        if let failure { throw failure }
    }
}

extension Result where Failure == any Error {
    /// The result of async work (a thrown error as `.failure`).
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
