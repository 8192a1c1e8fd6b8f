import CapstanControllers
import Foundation
import NIOCore
import NIOPosix
import NIOSSL

/// Why an e-mail was not sent: the server's own reply where it gave one (never the password).
public struct SMTPError: Error, Sendable, CustomStringConvertible {
    public var description: String

    init(_ description: String) { self.description = description }
}

/// A small SMTP client (RFC 5321): EHLO, STARTTLS (RFC 3207) when asked for — then the
/// password is only sent encrypted — AUTH PLAIN or LOGIN (RFC 4954), one message to every
/// recipient, QUIT. Each step waits for the server's reply; the whole send has one deadline.
public struct SMTPClient: Sendable {
    let target: ReceiverTarget.Email
    let timeout: TimeAmount

    public init(_ target: ReceiverTarget.Email, timeout: TimeAmount = .seconds(30)) {
        self.target = target
        self.timeout = timeout
    }

    public func send(subject: String, body: String, messageID: String? = nil) async throws(SMTPError) {
        let target = self.target
        let deadline = timeout
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await Self.session(target, message: Self.message(target, subject: subject, body: body, messageID: messageID)) }
                group.addTask {
                    try await Task.sleep(nanoseconds: UInt64(deadline.nanoseconds))
                    throw SMTPError("no answer within \(deadline.nanoseconds / 1_000_000_000) s")
                }
                try await group.next()
                group.cancelAll()
            }
        } catch let error as SMTPError {
            throw error
        } catch let error as NIOSSLError {
            throw SMTPError("TLS: \(error)")
        } catch let error as BoringSSLError {
            throw SMTPError("TLS: \(error)")
        } catch {
            let text = String(describing: error)
            throw SMTPError(text.contains("connectionRefused") || text.contains("refused") ? "connection refused" : text)
        }
    }

    /// The message as sent (CRLF lines, dot-stuffed by `session`).
    static func message(_ target: ReceiverTarget.Email, subject: String, body: String, messageID: String?) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss Z"
        formatter.timeZone = TimeZone(identifier: "UTC")
        let ascii = body.utf8.allSatisfy { $0 < 0x80 }
        var headers = [
            "From: \(target.from)",
            "To: \(target.to.joined(separator: ", "))",
            "Subject: \(encodeHeader(subject))",
            "Date: \(formatter.string(from: Date()))",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: \(ascii ? "7bit" : "base64")",
            "X-Mailer: capstan",
        ]
        if let messageID { headers.append("Message-ID: \(messageID)") }
        var text = body.replacingOccurrences(of: "\r\n", with: "\n")
        if !ascii {
            let encoded = Data(text.utf8).base64EncodedString()
            text = stride(from: 0, to: encoded.count, by: 76).map { start -> String in
                let from = encoded.index(encoded.startIndex, offsetBy: start)
                return String(encoded[from..<(encoded.index(from, offsetBy: 76, limitedBy: encoded.endIndex) ?? encoded.endIndex)])
            }.joined(separator: "\n")
        }
        return (headers.joined(separator: "\r\n") + "\r\n\r\n" + text.replacingOccurrences(of: "\n", with: "\r\n"))
    }

    static func encodeHeader(_ text: String) -> String {
        text.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x80 }) ? text : "=?UTF-8?B?\(Data(text.utf8).base64EncodedString())?="
    }

    private static func session(_ target: ReceiverTarget.Email, message: String) async throws {
        let reader = SMTPReader()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(reader) } }
            .connect(host: target.host, port: target.port).get()
        defer { channel.close(promise: nil) }
        var lines = reader.lines()
        func reply(_ expected: Int, _ what: String) async throws -> [String] {
            let (code, text) = try await lines.reply()
            guard code == expected else { throw SMTPError("\(what): the server answered \(code) \(text.joined(separator: " "))") }
            return text
        }
        func command(_ line: String, _ expected: Int, _ what: String) async throws -> [String] {
            try await channel.writeAndFlush(ByteBuffer(string: line + "\r\n"))
            return try await reply(expected, what)
        }
        _ = try await reply(220, "greeting")
        let name = ProcessInfo.processInfo.hostName.isEmpty ? "capstan" : ProcessInfo.processInfo.hostName
        var features = try await command("EHLO \(name)", 250, "EHLO")
        if target.startTLS {
            guard features.contains(where: { $0.uppercased().hasPrefix("STARTTLS") }) else {
                throw SMTPError("\(target.host) does not offer STARTTLS (startTLS is required: set smtp.startTLS false to send in the clear)")
            }
            _ = try await command("STARTTLS", 220, "STARTTLS")
            var tls = TLSConfiguration.makeClientConfiguration()
            if let pem = target.caPEM {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(pem.utf8)))
            }
            if target.insecureSkipVerify { tls.certificateVerification = .none }
            let context = try NIOSSLContext(configuration: tls)
            let isAddress = target.host.allSatisfy { $0.isNumber || $0 == "." || $0 == ":" }
            let hostname = isAddress ? nil : target.host
            try await channel.eventLoop.submit {
                try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: hostname), position: .first)
            }.get()
            features = try await command("EHLO \(name)", 250, "EHLO after STARTTLS")
        }
        if let user = target.user {
            let mechanisms = features.first { $0.uppercased().hasPrefix("AUTH") }.map { $0.uppercased().split(whereSeparator: { $0 == " " || $0 == "=" }).dropFirst().map(String.init) } ?? []
            let password = target.password ?? ""
            if mechanisms.contains("PLAIN") {
                let token = Data(("\0" + user + "\0" + password).utf8).base64EncodedString()
                _ = try await command("AUTH PLAIN \(token)", 235, "AUTH PLAIN")
            } else if mechanisms.contains("LOGIN") {
                _ = try await command("AUTH LOGIN", 334, "AUTH LOGIN")
                _ = try await command(Data(user.utf8).base64EncodedString(), 334, "AUTH LOGIN user")
                _ = try await command(Data(password.utf8).base64EncodedString(), 235, "AUTH LOGIN")
            } else {
                throw SMTPError("\(target.host) offers no AUTH PLAIN or LOGIN (offered: \(mechanisms.isEmpty ? "none" : mechanisms.joined(separator: " ")))")
            }
        }
        _ = try await command("MAIL FROM:<\(target.from)>", 250, "MAIL FROM")
        for recipient in target.to {
            try await channel.writeAndFlush(ByteBuffer(string: "RCPT TO:<\(recipient)>\r\n"))
            let (code, text) = try await lines.reply()
            guard code == 250 || code == 251 else { throw SMTPError("RCPT TO \(recipient): the server answered \(code) \(text.joined(separator: " "))") }
        }
        _ = try await command("DATA", 354, "DATA")
        let stuffed = message.components(separatedBy: "\r\n").map { $0.hasPrefix(".") ? "." + $0 : $0 }.joined(separator: "\r\n")
        _ = try await command(stuffed + "\r\n.", 250, "message")
        try? await channel.writeAndFlush(ByteBuffer(string: "QUIT\r\n"))
    }
}

/// The server's bytes, as they come.
final class SMTPReader: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer

    let stream: AsyncThrowingStream<ByteBuffer, any Error>
    let continuation: AsyncThrowingStream<ByteBuffer, any Error>.Continuation

    init() {
        (stream, continuation) = AsyncThrowingStream.makeStream()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        continuation.yield(unwrapInboundIn(data))
    }

    func channelInactive(context: ChannelHandlerContext) {
        continuation.finish(throwing: SMTPError("the server closed the connection"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        continuation.finish(throwing: error)
        context.close(promise: nil)
    }

    func lines() -> Lines { Lines(iterator: stream.makeAsyncIterator()) }

    /// Replies read from the stream: `250-first`, `250 last` is one reply of two lines.
    struct Lines {
        var iterator: AsyncThrowingStream<ByteBuffer, any Error>.AsyncIterator
        var pending = ""

        mutating func line() async throws -> String {
            while true {
                if let end = pending.range(of: "\r\n") ?? pending.range(of: "\n") {
                    let line = String(pending[..<end.lowerBound])
                    pending = String(pending[end.upperBound...])
                    return line
                }
                guard let buffer = try await iterator.next() else { throw SMTPError("the server closed the connection") }
                pending += String(buffer: buffer)
                if pending.utf8.count > 1 << 20 { throw SMTPError("the server sent a line over 1 MiB") }
            }
        }

        mutating func reply() async throws -> (Int, [String]) {
            var text: [String] = []
            while true {
                let line = try await line()
                let chars = Array(line)
                guard chars.count >= 3, let code = Int(String(chars[0..<3])) else { throw SMTPError("the server sent \"\(line.prefix(80))\", not a reply") }
                text.append(String(line.dropFirst(4)))
                if chars.count == 3 || chars[3] == " " { return (code, text) }
            }
        }
    }
}
