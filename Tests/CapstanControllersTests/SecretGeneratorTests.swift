import CapstanModel
import Foundation
import Testing
@testable import CapstanControllers

/// The generators of SecretRotation keys: lengths and alphabets, no repeats, and keys the real
/// OpenSSH tools accept.
@Suite struct SecretGeneratorTests {
    @Test(arguments: Charset.allCases) func randomValuesUseTheirCharsetOnly(_ charset: Charset) {
        let allowed = Set(SecretGenerators.alphabet(charset))
        let values = (0..<200).map { _ in SecretGenerators.random(length: 48, charset: charset) }
        #expect(values.allSatisfy { $0.count == 48 && $0.allSatisfy(allowed.contains) })
        #expect(Set(values).count == values.count, "no value twice")
        // Every character of the alphabet turns up (9,600 draws): nothing is left out.
        #expect(Set(values.joined()) == allowed)
    }

    @Test func tokensAreBase64urlOfTheirBytes() throws {
        let token = SecretGenerators.token(bytes: 32)
        #expect(token.count == 43 && !token.contains("=") && !token.contains("+") && !token.contains("/"))
        let padded = token.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/") + "="
        #expect(Data(base64Encoded: padded)?.count == 32)
    }

    /// ssh-keygen (Debian `openssh-client`, installed by hack/test) reads the private key.
    @Test func ed25519KeysAreWhatSshKeygenReads() throws {
        var key = SecretKeySpec()
        key.name = "id"
        key.generator.type = .ed25519
        let values = try SecretGenerators.generate(key, comment: "capstan@test")
        #expect(values.map(\.name) == ["id", "id.pub"])
        let directory = NSTemporaryDirectory() + "capstan-ssh-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try values[0].value.write(toFile: directory + "/id", atomically: true, encoding: .utf8)
        chmod(directory + "/id", 0o600)
        // ssh-keygen derives the public key from the private one: it must be ours.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/ssh-keygen")
        process.arguments = ["-y", "-f", directory + "/id"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let derived = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(derived)")
        #expect(derived.trimmingCharacters(in: .whitespacesAndNewlines).hasPrefix(values[1].value.split(separator: " ").prefix(2).joined(separator: " ")))
        #expect(values[1].value.hasSuffix(" capstan@test"))
    }

    static func openssl(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    /// openssl (Debian `openssl`, installed by hack/test) reads the certificate and its key.
    @Test func selfSignedCertificatesAreWhatOpensslReads() throws {
        var key = SecretKeySpec()
        key.name = "tls"
        key.generator.type = .selfSignedCertificate
        key.generator.commonName = "web.internal"
        key.generator.dnsNames = ["web.internal", "*.web.internal"]
        key.generator.ipAddresses = ["127.0.0.1", "::1"]
        key.generator.validity = .hours(48)
        let values = try SecretGenerators.generate(key, comment: "")
        #expect(values.map(\.name) == ["tls.crt", "tls.key"])
        let directory = NSTemporaryDirectory() + "capstan-tls-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try values[0].value.write(toFile: directory + "/tls.crt", atomically: true, encoding: .utf8)
        try values[1].value.write(toFile: directory + "/tls.key", atomically: true, encoding: .utf8)
        let text = try Self.openssl(["x509", "-in", directory + "/tls.crt", "-noout", "-text"])
        #expect(text.status == 0, "\(text.output)")
        #expect(text.output.contains("Subject: CN = web.internal") || text.output.contains("Subject: CN=web.internal"), "\(text.output)")
        #expect(text.output.contains("DNS:web.internal, DNS:*.web.internal, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1"), "\(text.output)")
        #expect(text.output.contains("TLS Web Server Authentication"))
        // Self-signed: it verifies against itself; the key is the certificate's.
        let verify = try Self.openssl(["verify", "-CAfile", directory + "/tls.crt", "-partial_chain", directory + "/tls.crt"])
        #expect(verify.status == 0, "\(verify.output)")
        let certificateKey = try Self.openssl(["x509", "-in", directory + "/tls.crt", "-noout", "-pubkey"])
        let privateKey = try Self.openssl(["pkey", "-in", directory + "/tls.key", "-pubout"])
        #expect(certificateKey.output == privateKey.output && privateKey.status == 0)
        // Valid for the validity asked (from five minutes before now).
        let end = try Self.openssl(["x509", "-in", directory + "/tls.crt", "-noout", "-checkend", String(47 * 3600)])
        #expect(end.status == 0)
        let past = try Self.openssl(["x509", "-in", directory + "/tls.crt", "-noout", "-checkend", String(49 * 3600)])
        #expect(past.status != 0)
    }
}
