import CapstanControllers
import Crypto
import Foundation
import NIOCore

/// Where `capstan backup restore` puts a backup.
public enum RestoreTarget: Sendable, Hashable {
    /// A PostgreSQL database (made when it does not exist), on the source's server unless given.
    case database(String)
    /// A path: the SQLite file, the directory the tar is unpacked into, or the file a command's
    /// output is written to.
    case path(String)
}

extension BackupRunner {
    /// Restores backup `id` of the job's schedule: checks its digest first (a damaged backup
    /// restores nothing), then decrypts, decompresses and hands it to `pg_restore`, `sqlite3`
    /// or `tar`. A target that is not empty is refused unless `force`. Returns a line saying
    /// what was restored.
    public static func restore(_ job: BackupJobSpec, id: String, into target: RestoreTarget, force: Bool) async throws(BackupError) -> String {
        try? FileManager.default.createDirectory(atPath: job.scratch, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let store = try self.target(job.destination, credentials: job.secrets.s3Credentials)
        guard let data = try await store.get(id + ".json") else {
            throw BackupError(BackupError.restoreFailed, "no backup \(id) at \(store.location) (`capstan backup list` shows them)")
        }
        let manifest: BackupManifest
        do { manifest = try BackupManifest.decoder.decode(BackupManifest.self, from: data) } catch {
            throw BackupError(BackupError.restoreFailed, "the manifest of \(id) cannot be read: \(error)")
        }
        var key: SymmetricKey?
        if manifest.encryption != nil {
            guard let given = try Self.key(job.secrets) else {
                throw BackupError(BackupError.encryptionFailed, "backup \(id) is encrypted (\(manifest.encryption!)) and no key was given: the schedule's encryption.keyFrom names it, and that secret must hold the key it was written with")
            }
            key = given
        }
        do {
            let check = DigestSink(next: DiscardSink())
            try await store.read(id, into: check)
            guard check.digest == manifest.sha256 else {
                throw BackupError(BackupError.restoreFailed, "backup \(id) is damaged: its SHA-256 is \(check.digest ?? "?"), the manifest says \(manifest.sha256)")
            }
            let compressed = manifest.compression == "gzip"
            switch (manifest.source, target) {
            case ("postgres", .database(let database)):
                var restoreJob = job
                restoreJob.source.database = database
                let environment = postgresEnvironment(restoreJob)
                let exists = try await BackupTool.run(["psql", "--no-password", "--dbname", job.source.database ?? "postgres", "-tAc",
                                                       "SELECT count(*) FROM pg_database WHERE datname = '\(database.replacingOccurrences(of: "'", with: "''"))'"],
                                                      environment: environment, scratch: job.scratch, reason: BackupError.restoreFailed)
                if exists.trimmingCharacters(in: .whitespacesAndNewlines) == "0" {
                    _ = try await BackupTool.run(["createdb", "--no-password", "--maintenance-db", job.source.database ?? "postgres", database],
                                                 environment: environment, scratch: job.scratch, reason: BackupError.restoreFailed)
                } else if !force {
                    let tables = try await BackupTool.run(["psql", "--no-password", "--dbname", database, "-tAc",
                                                           "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"],
                                                          environment: environment, scratch: job.scratch, reason: BackupError.restoreFailed)
                    if tables.trimmingCharacters(in: .whitespacesAndNewlines) != "0" {
                        throw BackupError(BackupError.restoreFailed, "database \(database) is not empty (\(tables.trimmingCharacters(in: .whitespacesAndNewlines)) tables): restore into a new database, or pass --force to replace what it has")
                    }
                }
                var command = ["pg_restore", "--no-password", "--no-owner", "--exit-on-error", "--dbname", database]
                if force { command += ["--clean", "--if-exists"] }
                let tool = try BackupTool(command, environment: environment, direction: .writeInput, scratch: job.scratch, reason: BackupError.restoreFailed)
                try await restoreStream(id, from: store, key: key, compressed: compressed, into: ToolInputSink(tool))
                return "restored \(id) into database \(database)"
            case ("sqlite", .path(let path)):
                if FileManager.default.fileExists(atPath: path) {
                    let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
                    guard force || size == 0 else { throw BackupError(BackupError.restoreFailed, "\(path) exists: pass --force to replace it") }
                }
                // Into a new file beside it, renamed into place: a failed restore leaves what was there.
                let partial = path + ".restoring"
                for suffix in ["", "-journal", "-wal", "-shm"] { unlink(partial + suffix) }
                let tool = try BackupTool(["sqlite3", "-bail", partial], direction: .writeInput, scratch: job.scratch, reason: BackupError.restoreFailed)
                do {
                    try await restoreStream(id, from: store, key: key, compressed: compressed, into: ToolInputSink(tool))
                } catch {
                    for suffix in ["", "-journal", "-wal", "-shm"] { unlink(partial + suffix) }
                    throw error
                }
                for suffix in ["-wal", "-shm", "-journal"] { unlink(path + suffix) }
                guard rename(partial, path) == 0 else { throw BackupError(BackupError.restoreFailed, "\(path): \(String(cString: strerror(errno)))") }
                return "restored \(id) into \(path)"
            case ("directory", .path(let path)):
                if let entries = try? FileManager.default.contentsOfDirectory(atPath: path), !entries.isEmpty, !force {
                    throw BackupError(BackupError.restoreFailed, "\(path) is not empty: restore into an empty directory, or pass --force to unpack over it")
                }
                do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
                    throw BackupError(BackupError.restoreFailed, "\(path): \(error.localizedDescription)")
                }
                let tool = try BackupTool(["tar", "-C", path, "-xf", "-"], direction: .writeInput, scratch: job.scratch, reason: BackupError.restoreFailed)
                try await restoreStream(id, from: store, key: key, compressed: compressed, into: ToolInputSink(tool))
                return "restored \(id) into \(path)"
            case ("command", .path(let path)), ("postgres", .path(let path)):
                guard force || !FileManager.default.fileExists(atPath: path) else {
                    throw BackupError(BackupError.restoreFailed, "\(path) exists: pass --force to replace it")
                }
                let sink = try FileSink(path: path, exclusive: false)
                do {
                    try await restoreStream(id, from: store, key: key, compressed: compressed, into: sink)
                } catch {
                    await sink.abort()
                    throw error
                }
                return "wrote \(id) to \(path)" + (manifest.source == "postgres" ? " (a pg_dump custom-format archive: pg_restore reads it)" : "")
            case ("postgres", _):
                throw BackupError(BackupError.restoreFailed, "a PostgreSQL backup restores into a database: --database NAME (or --to FILE for the dump itself)")
            default:
                throw BackupError(BackupError.restoreFailed, "a \(manifest.source) backup restores into a path: --to PATH")
            }
        } catch let error as BackupError {
            throw error
        } catch {
            throw BackupError(BackupError.restoreFailed, "\(error)")
        }
    }
}
