import CapstanControllers
import CapstanModel
import Crypto
import Foundation
import GRDB
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The master key the vault's values are sealed under: `$CAPSTAN_MASTER_KEY` (32 bytes as
/// base64 or hex), else `<state-dir>/master.key` (base64, created 0600 on first use — never
/// while the vault holds secrets: those were sealed under a key that is gone, and a new one
/// would only hide that).
public struct MasterKey: Sendable {
    public static let environmentVariable = "CAPSTAN_MASTER_KEY"
    public static let fileName = "master.key"

    let key: SymmetricKey
    /// Where it came from, for messages.
    public let source: String

    /// Reads the key. `vaultInUse`: the vault already holds secrets (a missing key is then an
    /// error, not a reason to make one); `create`: a missing key file may be made.
    public static func load(stateDirectory: String, environment: [String: String] = ProcessInfo.processInfo.environment,
                            vaultInUse: Bool, create: Bool) throws(SecretError) -> MasterKey? {
        if let text = environment[environmentVariable] {
            guard let bytes = decode(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw SecretError("VaultLocked", "$\(environmentVariable) is not a master key: it must be 32 bytes as base64 or 64 hex digits (make one with `head -c 32 /dev/urandom | base64`)")
            }
            return MasterKey(key: SymmetricKey(data: bytes), source: "$\(environmentVariable)")
        }
        let path = stateDirectory + "/" + fileName
        var info = stat()
        if stat(path, &info) == 0 {
            if info.st_mode & 0o077 != 0 {
                throw SecretError("VaultLocked", "the master key \(path) can be read by other users (mode \(String(info.st_mode & 0o777, radix: 8))): refusing to use it; make it private with `chmod 600 \(path)` (and consider the secrets it sealed exposed)")
            }
            guard let data = FileManager.default.contents(atPath: path) else {
                throw SecretError("VaultLocked", "cannot read the master key \(path): \(String(cString: strerror(errno)))")
            }
            guard let bytes = decode(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw SecretError("VaultLocked", "the master key \(path) is not 32 bytes of base64 or hex: it was damaged or replaced")
            }
            return MasterKey(key: SymmetricKey(data: bytes), source: path)
        }
        if vaultInUse {
            throw SecretError("VaultLocked", "the vault holds secrets but its master key is missing: neither $\(environmentVariable) nor \(path) is there. Put the key back (the secrets cannot be read without it); Capstan never makes a new key over existing secrets")
        }
        guard create else { return nil }
        // Written whole under a private name, then linked to its name: a daemon racing to make
        // it too finds either no key or the whole of one, never a half-written file.
        let key = SymmetricKey(size: .bits256)
        let text = key.withUnsafeBytes { Data($0) }.base64EncodedString() + "\n"
        let temporary = "\(path).\(getpid()).\(UInt64.random(in: 0...UInt64.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw SecretError("VaultLocked", "cannot create the master key \(path): \(String(cString: strerror(errno)))")
        }
        defer { unlink(temporary) }
        let written = text.withCString { write(fd, $0, strlen($0)) }
        let synced = fsync(fd)
        close(fd)
        guard written == text.utf8.count, synced == 0 else {
            throw SecretError("VaultLocked", "cannot write the master key \(path)")
        }
        guard link(temporary, path) == 0 else {
            if errno == EEXIST { return try load(stateDirectory: stateDirectory, environment: environment, vaultInUse: vaultInUse, create: false) }
            throw SecretError("VaultLocked", "cannot create the master key \(path): \(String(cString: strerror(errno)))")
        }
        return MasterKey(key: key, source: path)
    }

    static func decode(_ text: String) -> [UInt8]? {
        if text.count == 64, text.allSatisfy(\.isHexDigit) {
            var bytes: [UInt8] = []
            var index = text.startIndex
            while index < text.endIndex {
                let next = text.index(index, offsetBy: 2)
                bytes.append(UInt8(text[index..<next], radix: 16)!)
                index = next
            }
            return bytes
        }
        if let data = Data(base64Encoded: text), data.count == 32 { return [UInt8](data) }
        return nil
    }
}

/// The local platform's secrets: versions in the state store, each value sealed with
/// AES-256-GCM under the master key, bound to its secret, version and key (a sealed value
/// moved to another row does not open).
public final class Vault: SecretPlatform, Sendable {
    public let store: StateStore
    let stateDirectory: String
    let environment: [String: String]
    private let key = Mutex<MasterKey?>(nil)

    static let keyCheck = Data("capstan vault key check v1".utf8)

    public init(store: StateStore, stateDirectory: String, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.store = store
        self.stateDirectory = stateDirectory
        self.environment = environment
    }

    /// The owner recorded for a secret set by hand (`capstan secret set`).
    public static let manualOwner = "capstan secret set"

    static func ownerName(_ owner: ObjectKey) -> String { "\(owner.kind.singular)/\(owner.name)" }

    // MARK: - The master key

    /// The master key, checked against the vault (a wrong key is refused, never used to seal
    /// more). `create`: made when there is none and the vault is empty.
    func masterKey(create: Bool) throws(SecretError) -> MasterKey {
        if let key = key.withLock({ $0 }) { return key }
        let check: String?
        do {
            check = try store.pool.read { db in try String.fetchOne(db, sql: "SELECT key_check FROM vault_meta WHERE id = 1") }
        } catch {
            throw SecretError("VaultError", "cannot read the vault: \(error)")
        }
        guard let loaded = try MasterKey.load(stateDirectory: stateDirectory, environment: environment, vaultInUse: check != nil, create: create) else {
            throw SecretError("SecretNotFound", "the vault is empty (no master key yet)")
        }
        if let check {
            guard let box = Data(base64Encoded: check).flatMap({ try? AES.GCM.SealedBox(combined: $0) }),
                  let opened = try? AES.GCM.open(box, using: loaded.key), opened == Self.keyCheck else {
                throw SecretError("VaultLocked", "the master key from \(loaded.source) is not the one this vault was sealed with: refusing to read or write secrets. Use the right key (the vault in \(stateDirectory) is unchanged)")
            }
        } else {
            do {
                let sealed = try AES.GCM.seal(Self.keyCheck, using: loaded.key).combined!.base64EncodedString()
                try store.pool.write { db in
                    try db.execute(sql: "INSERT OR IGNORE INTO vault_meta (id, key_check) VALUES (1, ?)", arguments: [sealed])
                }
            } catch {
                throw SecretError("VaultError", "cannot write the vault: \(error)")
            }
            // Two daemons may have raced: the check that landed decides.
            key.withLock { $0 = nil }
            return try masterKey(create: false)
        }
        key.withLock { $0 = loaded }
        return loaded
    }

    static func context(_ namespace: String, _ name: String, _ version: Int, _ key: String) -> Data {
        Data("\(namespace)/\(name)/\(version)/\(key)".utf8)
    }

    // MARK: - SecretPlatform

    public func state(of name: String, namespace: String, owner: ObjectKey) throws(SecretError) -> SecretState? {
        guard let (state, recordedOwner) = try read(name, namespace: namespace) else { return nil }
        guard recordedOwner == Self.ownerName(owner) else {
            throw SecretError("ChildConflict", "secret \(name) exists in the vault, set by \(recordedOwner): left alone (delete it with `capstan secret delete \(name)` to let \(Self.ownerName(owner)) manage it)")
        }
        return state
    }

    /// A secret's state and owner, whoever owns it.
    public func read(_ name: String, namespace: String) throws(SecretError) -> (SecretState, owner: String)? {
        do {
            return try store.pool.read { db -> (SecretState, owner: String)? in
                guard let row = try Row.fetchOne(db, sql: "SELECT current_version, owner FROM secrets WHERE namespace = ? AND name = ?", arguments: [namespace, name]) else {
                    return nil
                }
                let versions = try Row.fetchAll(db, sql: """
                    SELECT version, created_at, keys, fingerprint FROM secret_versions
                    WHERE namespace = ? AND name = ? ORDER BY version
                    """, arguments: [namespace, name]).map { row in
                    SecretVersionInfo(version: row["version"], createdAt: Date(timeIntervalSince1970: row["created_at"]),
                                      keys: (try? JSONDecoder().decode([String].self, from: Data((row["keys"] as String).utf8))) ?? [],
                                      fingerprint: row["fingerprint"])
                }
                return (SecretState(current: row["current_version"], versions: versions), row["owner"])
            }
        } catch {
            throw SecretError("VaultError", "cannot read the vault: \(error)")
        }
    }

    /// Every secret in the vault: namespace, name, owner and state.
    public func list() throws(SecretError) -> [(namespace: String, name: String, owner: String, state: SecretState)] {
        let names: [(String, String)]
        do {
            names = try store.pool.read { db in
                try Row.fetchAll(db, sql: "SELECT namespace, name FROM secrets ORDER BY namespace, name").map { ($0["namespace"], $0["name"]) }
            }
        } catch {
            throw SecretError("VaultError", "cannot read the vault: \(error)")
        }
        var result: [(namespace: String, name: String, owner: String, state: SecretState)] = []
        for (namespace, name) in names {
            if let (state, owner) = try read(name, namespace: namespace) { result.append((namespace, name, owner, state)) }
        }
        return result
    }

    public func missing(_ name: String, key: String, namespace: String) -> String? {
        do {
            guard let (state, _) = try read(name, namespace: namespace) else {
                return "secret \(name) does not exist in namespace \(namespace) (a SecretRotation makes it, or `capstan secret set \(name)`)"
            }
            let keys = state.versions.first { $0.version == state.current }?.keys ?? []
            return keys.contains(key) ? nil : "secret \(name) has no key \(key) (it has \(keys.joined(separator: ", ")))"
        } catch {
            return error.message
        }
    }

    public func values(of name: String, namespace: String, version: Int) throws(SecretError) -> [String: Data] {
        let sealed: String?
        do {
            sealed = try store.pool.read { db in
                try String.fetchOne(db, sql: "SELECT sealed FROM secret_versions WHERE namespace = ? AND name = ? AND version = ?",
                                    arguments: [namespace, name, version])
            }
        } catch {
            throw SecretError("VaultError", "cannot read the vault: \(error)")
        }
        guard let sealed else { throw SecretError("SecretNotFound", "secret \(name) has no version \(version)") }
        let key = try masterKey(create: false)
        guard let boxes = try? JSONDecoder().decode([String: String].self, from: Data(sealed.utf8)) else {
            throw SecretError("VaultError", "version \(version) of secret \(name) is damaged in the vault")
        }
        var values: [String: Data] = [:]
        for (name_, text) in boxes {
            guard let combined = Data(base64Encoded: text), let box = try? AES.GCM.SealedBox(combined: combined),
                  let value = try? AES.GCM.open(box, using: key.key, authenticating: Self.context(namespace, name, version, name_)) else {
                throw SecretError("VaultError", "key \(name_) of version \(version) of secret \(name) does not open under the master key: the vault was damaged or altered")
            }
            values[name_] = value
        }
        return values
    }

    /// One key of the current version (an instance's `secretKeyRef`).
    public func value(of name: String, key: String, namespace: String) throws(SecretError) -> Data {
        guard let (state, _) = try read(name, namespace: namespace) else {
            throw SecretError("SecretNotFound", "secret \(name) does not exist in namespace \(namespace) (a SecretRotation makes it, or `capstan secret set \(name)`)")
        }
        let values = try values(of: name, namespace: namespace, version: state.current)
        guard let value = values[key] else {
            throw SecretError("SecretNotFound", "secret \(name) has no key \(key) (it has \(values.keys.sorted().joined(separator: ", ")))")
        }
        return value
    }

    public func write(_ name: String, namespace: String, version: Int, values: [String: Data], createdAt: Date, owner: ObjectKey) throws(SecretError) {
        try write(name, namespace: namespace, version: version, values: values, createdAt: createdAt, ownerName: Self.ownerName(owner))
    }

    /// Writes a version under an owner and makes it current.
    public func write(_ name: String, namespace: String, version: Int, values: [String: Data], createdAt: Date, ownerName: String) throws(SecretError) {
        let key = try masterKey(create: true)
        var boxes: [String: String] = [:]
        for (valueKey, value) in values {
            do {
                boxes[valueKey] = try AES.GCM.seal(value, using: key.key, authenticating: Self.context(namespace, name, version, valueKey)).combined!.base64EncodedString()
            } catch {
                throw SecretError("VaultError", "cannot seal key \(valueKey): \(error)")
            }
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let sealed = String(decoding: (try? encoder.encode(boxes)) ?? Data(), as: UTF8.self)
        let keys = String(decoding: (try? encoder.encode(values.keys.sorted())) ?? Data(), as: UTF8.self)
        let fingerprint = SecretFingerprint.of(values)
        do {
            try store.pool.write { db in
                if let recorded = try String.fetchOne(db, sql: "SELECT owner FROM secrets WHERE namespace = ? AND name = ?", arguments: [namespace, name]),
                   recorded != ownerName {
                    throw SecretError("ChildConflict", "secret \(name) exists in the vault, set by \(recorded): left alone")
                }
                try db.execute(sql: """
                    INSERT INTO secret_versions (namespace, name, version, created_at, keys, fingerprint, sealed) VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (namespace, name, version) DO UPDATE SET
                      created_at = excluded.created_at, keys = excluded.keys, fingerprint = excluded.fingerprint, sealed = excluded.sealed
                    """, arguments: [namespace, name, version, createdAt.timeIntervalSince1970, keys, fingerprint, sealed])
                try db.execute(sql: """
                    INSERT INTO secrets (namespace, name, current_version, owner) VALUES (?, ?, ?, ?)
                    ON CONFLICT (namespace, name) DO UPDATE SET current_version = excluded.current_version
                    """, arguments: [namespace, name, version, ownerName])
            }
        } catch let error as SecretError {
            throw error
        } catch {
            throw SecretError("VaultError", "cannot write the vault: \(error)")
        }
    }

    public func makeCurrent(_ name: String, namespace: String, version: Int, owner: ObjectKey) throws(SecretError) {
        try update(name, namespace: namespace, owner: owner) { db in
            guard try Int.fetchOne(db, sql: "SELECT version FROM secret_versions WHERE namespace = ? AND name = ? AND version = ?", arguments: [namespace, name, version]) != nil else {
                throw SecretError("SecretNotFound", "secret \(name) has no version \(version)")
            }
            try db.execute(sql: "UPDATE secrets SET current_version = ? WHERE namespace = ? AND name = ?", arguments: [version, namespace, name])
        }
    }

    public func removeVersion(_ name: String, namespace: String, version: Int, owner: ObjectKey) throws(SecretError) {
        try update(name, namespace: namespace, owner: owner) { db in
            guard try Int.fetchOne(db, sql: "SELECT current_version FROM secrets WHERE namespace = ? AND name = ?", arguments: [namespace, name]) != version else {
                throw SecretError("VaultError", "version \(version) of secret \(name) is current and is not removed")
            }
            try db.execute(sql: "DELETE FROM secret_versions WHERE namespace = ? AND name = ? AND version = ?", arguments: [namespace, name, version])
        }
    }

    public func remove(ownedBy owner: ObjectKey, dryRun: Bool) throws(SecretError) -> [String] {
        let names: [String]
        do {
            names = try store.pool.read { db in
                try String.fetchAll(db, sql: "SELECT name FROM secrets WHERE namespace = ? AND owner = ? ORDER BY name", arguments: [owner.namespace, Self.ownerName(owner)])
            }
        } catch {
            throw SecretError("VaultError", "cannot read the vault: \(error)")
        }
        var lines: [String] = []
        for name in names {
            guard let (state, _) = try read(name, namespace: owner.namespace) else { continue }
            lines.append("secret \(name) (\(state.versions.count) version(s)) from the vault")
            if !dryRun { try delete(name, namespace: owner.namespace) }
        }
        return lines
    }

    /// Deletes a secret and its versions, whoever set it (`capstan secret delete`).
    public func delete(_ name: String, namespace: String) throws(SecretError) {
        do {
            try store.pool.write { db in
                try db.execute(sql: "DELETE FROM secret_versions WHERE namespace = ? AND name = ?", arguments: [namespace, name])
                try db.execute(sql: "DELETE FROM secrets WHERE namespace = ? AND name = ?", arguments: [namespace, name])
            }
        } catch {
            throw SecretError("VaultError", "cannot write the vault: \(error)")
        }
    }

    private func update(_ name: String, namespace: String, owner: ObjectKey, _ body: @escaping @Sendable (Database) throws -> Void) throws(SecretError) {
        let ownerName = Self.ownerName(owner)
        do {
            try store.pool.write { db in
                guard let recorded = try String.fetchOne(db, sql: "SELECT owner FROM secrets WHERE namespace = ? AND name = ?", arguments: [namespace, name]) else {
                    throw SecretError("SecretNotFound", "secret \(name) does not exist in the vault")
                }
                guard recorded == ownerName else { throw SecretError("ChildConflict", "secret \(name) exists in the vault, set by \(recorded): left alone") }
                try body(db)
            }
        } catch let error as SecretError {
            throw error
        } catch {
            throw SecretError("VaultError", "cannot write the vault: \(error)")
        }
    }
}
