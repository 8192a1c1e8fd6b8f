import CapstanControllers
import CapstanModel
import Foundation
import GRDB
import Synchronization
import Testing
@testable import CapstanLocal

/// The vault against a real state store: sealed values, versions, the master key's rules.
@Suite struct VaultTests {
    let directory: String = NSTemporaryDirectory() + "capstan-vault-" + UUID().uuidString
    let owner = ObjectKey(kind: .secretRotation, namespace: "default", name: "db")
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)
    let values = ["password": Data("correct horse battery staple".utf8), "token": Data("tok-123456".utf8)]

    func vault(_ environment: [String: String] = [:]) throws -> Vault {
        Vault(store: try StateStore(directory: directory), stateDirectory: directory, environment: environment)
    }

    @Test func valuesAreSealedVersionedAndReadBack() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let vault = try vault()
        #expect(try vault.state(of: "db", namespace: "default", owner: owner) == nil)
        try vault.write("db", namespace: "default", version: 1, values: values, createdAt: t0, owner: owner)
        var second = values
        second["password"] = Data("another one entirely".utf8)
        try vault.write("db", namespace: "default", version: 2, values: second, createdAt: t0.addingTimeInterval(60), owner: owner)
        let state = try #require(try vault.state(of: "db", namespace: "default", owner: owner))
        #expect(state.current == 2)
        #expect(state.versions.map(\.version) == [1, 2])
        #expect(state.versions[0].keys == ["password", "token"])
        #expect(state.versions[0].fingerprint != state.versions[1].fingerprint)
        #expect(try vault.values(of: "db", namespace: "default", version: 1) == values)
        #expect(try vault.value(of: "db", key: "password", namespace: "default") == Data("another one entirely".utf8))
        try vault.makeCurrent("db", namespace: "default", version: 1, owner: owner)
        #expect(try vault.value(of: "db", key: "password", namespace: "default") == values["password"])
        #expect(throws: SecretError.self) { try vault.removeVersion("db", namespace: "default", version: 1, owner: owner) }
        try vault.removeVersion("db", namespace: "default", version: 2, owner: owner)
        #expect(try vault.state(of: "db", namespace: "default", owner: owner)?.versions.map(\.version) == [1])

        // Nothing readable at rest: the database and its WAL hold no value.
        for file in try FileManager.default.contentsOfDirectory(atPath: directory) {
            let data = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + file))
            #expect(data.range(of: values["password"]!) == nil, "\(file) holds a value in the clear")
        }
        let mode = try FileManager.default.attributesOfItem(atPath: directory + "/master.key")[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    @Test func aSealedValueMovedToAnotherVersionDoesNotOpen() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let vault = try vault()
        try vault.write("db", namespace: "default", version: 1, values: values, createdAt: t0, owner: owner)
        try vault.write("db", namespace: "default", version: 2, values: values, createdAt: t0, owner: owner)
        try vault.store.pool.write { db in
            let sealed = try String.fetchOne(db, sql: "SELECT sealed FROM secret_versions WHERE version = 1")!
            try db.execute(sql: "UPDATE secret_versions SET sealed = ? WHERE version = 2", arguments: [sealed])
        }
        let error = try #require(throws: SecretError.self) { try vault.values(of: "db", namespace: "default", version: 2) }
        #expect(error.reason == "VaultError")
    }

    @Test func aSecretOfAnotherOwnerIsLeftAlone() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let vault = try vault()
        try vault.write("db", namespace: "default", version: 1, values: values, createdAt: t0, ownerName: Vault.manualOwner)
        let error = try #require(throws: SecretError.self) { try vault.state(of: "db", namespace: "default", owner: owner) }
        #expect(error.reason == "ChildConflict")
        #expect(throws: SecretError.self) { try vault.write("db", namespace: "default", version: 2, values: values, createdAt: t0, owner: owner) }
        #expect(try vault.read("db", namespace: "default")?.0.current == 1)
    }

    @Test func aWrongMasterKeyIsRefusedAndChangesNothing() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let key = Data((0..<32).map { UInt8($0) }).base64EncodedString()
        try vault([MasterKey.environmentVariable: key]).write("db", namespace: "default", version: 1, values: values, createdAt: t0, owner: owner)
        #expect(!FileManager.default.fileExists(atPath: directory + "/master.key"))  // the key came from the environment

        let wrong = String(repeating: "ab", count: 32)
        let error = try #require(throws: SecretError.self) { try vault([MasterKey.environmentVariable: wrong]).values(of: "db", namespace: "default", version: 1) }
        #expect(error.reason == "VaultLocked")
        #expect(error.message.contains("not the one this vault was sealed with"))
        #expect(throws: SecretError.self) { try vault([MasterKey.environmentVariable: wrong]).write("db", namespace: "default", version: 2, values: values, createdAt: t0, owner: owner) }

        let malformed = try #require(throws: SecretError.self) { try vault([MasterKey.environmentVariable: "hunter2"]).values(of: "db", namespace: "default", version: 1) }
        #expect(malformed.message.contains("32 bytes"))

        // A missing key with secrets in the vault: refused, and no new key is made over them.
        let missing = try #require(throws: SecretError.self) { try vault().write("db", namespace: "default", version: 2, values: values, createdAt: t0, owner: owner) }
        #expect(missing.reason == "VaultLocked")
        #expect(missing.message.contains("never makes a new key"))
        #expect(!FileManager.default.fileExists(atPath: directory + "/master.key"))
        #expect(try vault([MasterKey.environmentVariable: key]).values(of: "db", namespace: "default", version: 1) == values)
    }

    @Test func aMasterKeyFileOthersCanReadIsRefused() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try vault().write("db", namespace: "default", version: 1, values: values, createdAt: t0, owner: owner)
        chmod(directory + "/master.key", 0o644)
        let error = try #require(throws: SecretError.self) { try vault().values(of: "db", namespace: "default", version: 1) }
        #expect(error.reason == "VaultLocked")
        #expect(error.message.contains("chmod 600"))
        chmod(directory + "/master.key", 0o600)
        #expect(try vault().values(of: "db", namespace: "default", version: 1) == values)
    }

    /// Workers writing their first secrets at once share one master key: none reads a
    /// half-written key file (a race that stalled rotations for a retry interval).
    @Test func concurrentFirstWritesMakeOneMasterKey() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = try StateStore(directory: directory)
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 16) { index in
            let vault = Vault(store: store, stateDirectory: directory, environment: [:])
            do {
                try vault.write("s\(index)", namespace: "default", version: 1, values: values, createdAt: t0,
                                owner: ObjectKey(kind: .secretRotation, namespace: "default", name: "s\(index)"))
            } catch {
                failures.withLock { $0.append("\(error)") }
            }
        }
        #expect(failures.withLock { $0 }.isEmpty)
        let reader = Vault(store: store, stateDirectory: directory, environment: [:])
        for index in 0..<16 {
            #expect(try reader.values(of: "s\(index)", namespace: "default", version: 1) == values)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasPrefix("master.key") } == ["master.key"])
    }
}
