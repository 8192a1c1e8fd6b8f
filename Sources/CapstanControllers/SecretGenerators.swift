import CapstanModel
import Crypto
import Foundation
import SwiftASN1
import X509

/// The values a SecretRotation generates (issue 18), from the system CSPRNG (`getrandom`):
/// one key's generator gives one value, or two for the kinds that come in pairs (`NAME` and
/// `NAME.pub` for ed25519; `NAME.crt` and `NAME.key` for a certificate).
public enum SecretGenerators {
    /// The values for one key, by the names they are stored under.
    public static func generate(_ key: SecretKeySpec, comment: String) throws(WorkloadError) -> [(name: String, value: String)] {
        let generator = key.generator
        switch generator.type {
        case .random:
            return [(key.name, random(length: generator.effectiveLength, charset: generator.effectiveCharset))]
        case .token:
            return [(key.name, token(bytes: generator.effectiveBytes))]
        case .ed25519:
            let pair = ed25519(comment: comment)
            return [(key.name, pair.privateKey), (key.name + ".pub", pair.publicKey)]
        case .selfSignedCertificate:
            let pair = try certificate(commonName: generator.commonName ?? key.name, dnsNames: generator.dnsNames,
                                       ipAddresses: generator.ipAddresses ?? [], validity: generator.effectiveValidity.seconds)
            return [(key.name + ".crt", pair.certificate), (key.name + ".key", pair.privateKey)]
        }
    }

    /// A self-signed X.509 v3 certificate for a server or client (ECDSA P-256, SHA-256),
    /// valid from five minutes ago (clock skew) for `validity` seconds, with the common name
    /// and the subject alternative names (the common name is the DNS name when none are
    /// given: clients check SANs only); the certificate and its PKCS#8 key in PEM.
    public static func certificate(commonName: String, dnsNames: [String]?, ipAddresses: [String], validity: TimeInterval,
                                   now: Date = Date()) throws(WorkloadError) -> (certificate: String, privateKey: String) {
        let key = P256.Signing.PrivateKey()
        do {
            let name = try DistinguishedName { CommonName(commonName) }
            var alternatives: [GeneralName] = (dnsNames ?? [commonName]).map { .dnsName($0) }
            for address in ipAddresses {
                guard let bytes = GeneratorAddress.parse(address) else { throw WorkloadError("InvalidSpec", "\(address) is not an IP address") }
                alternatives.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(bytes))))
            }
            let sans = alternatives
            let extensions = try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames(sans)
                SubjectKeyIdentifier(hash: Certificate.PublicKey(key.publicKey))
            }
            let certificate = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: Certificate.PublicKey(key.publicKey),
                notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(validity),
                issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions,
                issuerPrivateKey: Certificate.PrivateKey(key))
            return (try certificate.serializeAsPEM().pemString + "\n", key.pemRepresentation + "\n")
        } catch let error as WorkloadError {
            throw error
        } catch {
            throw WorkloadError("GenerationFailed", "cannot make the certificate for \(commonName): \(error)")
        }
    }

    /// The characters of a charset.
    static func alphabet(_ charset: Charset) -> [Character] {
        switch charset {
        case .alphanumeric: return Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
        case .asciiPrintable: return (0x21...0x7E).map { Character(UnicodeScalar(UInt8($0))) }
        case .hex: return Array("0123456789abcdef")
        case .base64url: return Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        }
    }

    /// `length` characters, each uniform over the charset (no modulo bias: `random(in:)`
    /// rejects what would bias).
    public static func random(length: Int, charset: Charset) -> String {
        var generator = SystemRandomNumberGenerator()
        let characters = alphabet(charset)
        return String((0..<length).map { _ in characters[Int.random(in: 0..<characters.count, using: &generator)] })
    }

    /// `bytes` random bytes, base64url without padding.
    public static func token(bytes: Int) -> String {
        base64url(randomBytes(bytes))
    }

    static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    static func base64url(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// An Ed25519 key pair as OpenSSH writes it: the private key in the `openssh-key-v1` format
    /// (unencrypted: the vault encrypts it), the public key as an `authorized_keys` line.
    public static func ed25519(comment: String) -> (privateKey: String, publicKey: String) {
        let key = Curve25519.Signing.PrivateKey()
        let seed = [UInt8](key.rawRepresentation), publicKey = [UInt8](key.publicKey.rawRepresentation)
        var wirePublic = SSHWire()
        wirePublic.string("ssh-ed25519")
        wirePublic.string(publicKey)
        var secret = SSHWire()
        let check = randomBytes(4)
        secret.bytes += check + check
        secret.string("ssh-ed25519")
        secret.string(publicKey)
        secret.string(seed + publicKey)
        secret.string(Array(comment.utf8))
        var pad: UInt8 = 1
        while secret.bytes.count % 8 != 0 {
            secret.bytes.append(pad)
            pad += 1
        }
        var file = SSHWire()
        file.bytes = Array("openssh-key-v1".utf8) + [0]
        file.string("none")
        file.string("none")
        file.string([])
        file.uint32(1)
        file.string(wirePublic.bytes)
        file.string(secret.bytes)
        let body = Data(file.bytes).base64EncodedString()
        let lines = stride(from: 0, to: body.count, by: 70).map { start -> String in
            let from = body.index(body.startIndex, offsetBy: start)
            return String(body[from..<body.index(from, offsetBy: min(70, body.count - start))])
        }
        let privateText = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + lines.joined(separator: "\n") + "\n-----END OPENSSH PRIVATE KEY-----\n"
        let publicText = "ssh-ed25519 " + Data(wirePublic.bytes).base64EncodedString() + (comment.isEmpty ? "" : " " + comment)
        return (privateText, publicText)
    }
}

/// The SSH wire encoding (RFC 4251): big-endian lengths before byte strings.
struct SSHWire {
    var bytes: [UInt8] = []

    mutating func uint32(_ value: UInt32) {
        bytes += [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
    }

    mutating func string(_ value: [UInt8]) {
        uint32(UInt32(value.count))
        bytes += value
    }

    mutating func string(_ value: String) { string(Array(value.utf8)) }
}
