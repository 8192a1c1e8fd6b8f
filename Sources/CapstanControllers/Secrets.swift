import CapstanModel
import Crypto
import Foundation

/// A failure of a secret platform, with the condition reason it is reported under:
/// `SecretNotFound`, `ChildConflict` (a secret of that name Capstan does not manage),
/// `VaultLocked` (no usable master key), `VaultError`.
public struct SecretError: Error, Sendable, Equatable, CustomStringConvertible {
    public var reason: String
    public var message: String

    public init(_ reason: String, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { message }
}

/// One stored version of a secret, described without its values.
public struct SecretVersionInfo: Sendable, Hashable {
    public var version: Int
    public var createdAt: Date
    public var keys: [String]
    public var fingerprint: String

    public init(version: Int, createdAt: Date, keys: [String], fingerprint: String) {
        self.version = version
        self.createdAt = createdAt
        self.keys = keys
        self.fingerprint = fingerprint
    }
}

/// A secret as stored: which version is current, and the versions kept (oldest first).
public struct SecretState: Sendable, Hashable {
    public var current: Int
    public var versions: [SecretVersionInfo]

    public init(current: Int, versions: [SecretVersionInfo]) {
        self.current = current
        self.versions = versions
    }

    public var latest: Int { versions.map(\.version).max() ?? current }
}

/// Versioned secrets (the local vault; `v1` Secrets on Kubernetes). Every secret written here
/// has an owner (the SecretRotation that manages it); one that exists under another owner, or
/// none Capstan knows of, is a `ChildConflict` and is never written over.
public protocol SecretPlatform: Sendable {
    /// The secret's versions; nil when it does not exist.
    func state(of name: String, namespace: String, owner: ObjectKey) async throws(SecretError) -> SecretState?
    /// The values of one version.
    func values(of name: String, namespace: String, version: Int) async throws(SecretError) -> [String: Data]
    /// Writes a version and makes it current (written again, the same version is replaced).
    func write(_ name: String, namespace: String, version: Int, values: [String: Data], createdAt: Date, owner: ObjectKey) async throws(SecretError)
    /// Makes a kept version current again.
    func makeCurrent(_ name: String, namespace: String, version: Int, owner: ObjectKey) async throws(SecretError)
    /// Removes one version (never the current one).
    func removeVersion(_ name: String, namespace: String, version: Int, owner: ObjectKey) async throws(SecretError)
    /// Why an instance could not get `key` of secret `name` now (the secret or the key is
    /// missing), whoever made the secret; nil when it is there.
    func missing(_ name: String, key: String, namespace: String) async -> String?
    /// One key of the current version of any secret (one Capstan made or one set by hand):
    /// what a receiver's `urlFrom` or an SMTP password reads.
    func value(of name: String, key: String, namespace: String) async throws(SecretError) -> Data
    /// Removes every secret of `owner` and all their versions (the rotation was deleted);
    /// what went, as lines for an event. With `dryRun`, only says what would go.
    func remove(ownedBy owner: ObjectKey, dryRun: Bool) async throws(SecretError) -> [String]
}

public enum SecretFingerprint {
    /// A short fingerprint of a version's values (`sha256:` and 16 hex digits): tells versions
    /// apart in a status without saying anything usable about the values.
    public static func of(_ values: [String: Data]) -> String {
        var hasher = SHA256()
        for key in values.keys.sorted() {
            hasher.update(data: Data(key.utf8))
            hasher.update(data: Data([0]))
            hasher.update(data: Data(String(values[key]!.count).utf8))
            hasher.update(data: Data([0]))
            hasher.update(data: values[key]!)
        }
        return "sha256:" + hasher.finalize().prefix(8).map { String(format: "%02x", $0) }.joined()
    }
}

/// Runs the commands and checks a rotation needs (apply, verify) where the daemon runs.
public protocol ActionRunner: Sendable {
    /// Runs `command` with `environment` added to a minimal one; nil when it exited 0, else
    /// why not, with the tail of its output.
    func run(_ command: [String], environment: [String: String], timeout: Duration) async -> String?
    /// GETs `url`; nil when it answered 2xx, else why not.
    func check(url: String, timeout: Duration) async -> String?
}

/// The environment variable name a key's value is given under (`NEW_`/`OLD_` prefixed):
/// upper-cased, every character other than a letter or digit as `_`.
public enum SecretEnvName {
    public static func of(_ key: String) -> String {
        String(key.uppercased().map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "_" })
    }
}
