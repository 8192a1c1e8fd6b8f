import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import CapstanModel

/// A manifest file read from disk.
public struct SpecFile: Sendable, Hashable {
    /// The path as the user would write it (relative to what they named).
    public var path: String
    public var bytes: [UInt8]
}

/// Finds and reads manifest files: every `*.yaml`, `*.yml` and `*.json` below the given
/// directories (hidden files and folders such as `.git` skipped), plus files named explicitly.
///
/// It never hangs and never reads unbounded data: files over `maxFileSize` are refused from
/// their size alone, only regular files are opened (a FIFO would block), symlinks are followed
/// but a directory reached twice (a symlink loop) is reported and not entered again.
public struct SpecFileCollector: Sendable {
    public var maxFileSize: Int
    public static let extensions = [".yaml", ".yml", ".json"]

    public init(maxFileSize: Int = ManifestDecoder.defaultMaxFileSize) {
        self.maxFileSize = maxFileSize
    }

    /// A regular file found and checked (size, type) but not read yet.
    public struct PendingFile: Sendable, Hashable {
        public var path: String
        public var display: String
        public var size: Int
    }

    public struct Collection: Sendable {
        public var files: [SpecFile] = []
        /// With `read: false`, the files to read (see `read(_:)`), in order.
        public var pending: [PendingFile] = []
        /// Files and directories that could not be read, as errors located at the path.
        public var problems: [Diagnostic] = []
        /// How many candidate files were found (read or not).
        public var candidates = 0
    }

    private struct FileID: Hashable {
        var device: UInt64
        var inode: UInt64
    }

    /// Collects the files under every path, in a stable order (sorted by name within a directory).
    /// With `read: false` the files are only found and checked, and left in `pending`.
    public func collect(_ paths: [String], read readNow: Bool = true) -> Collection {
        var collection = discover(paths)
        if readNow {
            for file in collection.pending {
                switch read(file) {
                case .success(let spec): collection.files.append(spec)
                case .failure(let problem): collection.problems.append(problem)
                }
            }
            collection.pending = []
        }
        return collection
    }

    private func discover(_ paths: [String]) -> Collection {
        var collection = Collection()
        var visited: [FileID: String] = [:]
        var seenFiles = Set<FileID>()
        for path in paths {
            var info = stat()
            guard stat(path, &info) == 0 else {
                let reason = errnoText()
                var lstatInfo = stat()
                if lstat(path, &lstatInfo) == 0 && (lstatInfo.st_mode & S_IFMT) == S_IFLNK {
                    collection.problems.append(Diagnostic(file: path, mark: nil, message: "broken symlink: \(reason)"))
                } else {
                    collection.problems.append(Diagnostic(file: path, mark: nil, message: "cannot read: \(reason)"))
                }
                continue
            }
            if (info.st_mode & S_IFMT) == S_IFDIR {
                walk(directory: path, display: path, ancestors: [], visited: &visited, seenFiles: &seenFiles, into: &collection)
            } else {
                collection.candidates += 1
                read(path, display: path, info: info, seenFiles: &seenFiles, into: &collection)
            }
        }
        return collection
    }

    private func walk(
        directory: String, display: String, ancestors: [FileID], visited: inout [FileID: String],
        seenFiles: inout Set<FileID>, into collection: inout Collection
    ) {
        var info = stat()
        guard stat(directory, &info) == 0 else {
            collection.problems.append(Diagnostic(file: display, mark: nil, message: "cannot read directory: \(errnoText())"))
            return
        }
        let id = FileID(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
        if ancestors.contains(id) {
            collection.problems.append(Diagnostic(file: display, mark: nil, message: "symlink loop: this directory leads back to \(visited[id] ?? "one of its parents"); not followed"))
            return
        }
        if let first = visited[id] {
            collection.problems.append(Diagnostic(.warning, file: display, mark: nil, message: "same directory as \(first) (through a symlink); read once"))
            return
        }
        visited[id] = display
        guard let handle = opendir(directory) else {
            collection.problems.append(Diagnostic(file: display, mark: nil, message: "cannot read directory: \(errnoText())"))
            return
        }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: Int(NAME_MAX) + 1) { String(cString: $0) }
            }
            if name.hasPrefix(".") { continue }
            names.append(name)
        }
        closedir(handle)
        for name in names.sorted() {
            let child = directory.hasSuffix("/") ? directory + name : directory + "/" + name
            let childDisplay = display.hasSuffix("/") ? display + name : display + "/" + name
            var linkInfo = stat()
            guard lstat(child, &linkInfo) == 0 else { continue }
            var childInfo = stat()
            if stat(child, &childInfo) != 0 {
                if (linkInfo.st_mode & S_IFMT) == S_IFLNK && isManifestName(name) {
                    collection.candidates += 1
                    collection.problems.append(Diagnostic(file: childDisplay, mark: nil, message: "broken symlink: \(errnoText())"))
                } else if (linkInfo.st_mode & S_IFMT) == S_IFLNK && errno == ELOOP {
                    collection.problems.append(Diagnostic(file: childDisplay, mark: nil, message: "symlink loop: \(errnoText())"))
                }
                continue
            }
            if (childInfo.st_mode & S_IFMT) == S_IFDIR {
                walk(directory: child, display: childDisplay, ancestors: ancestors + [id], visited: &visited, seenFiles: &seenFiles, into: &collection)
            } else if isManifestName(name) {
                collection.candidates += 1
                read(child, display: childDisplay, info: childInfo, seenFiles: &seenFiles, into: &collection)
            }
        }
    }

    static func isManifestName(_ name: String) -> Bool {
        extensions.contains { name.lowercased().hasSuffix($0) }
    }

    private func isManifestName(_ name: String) -> Bool { Self.isManifestName(name) }

    /// The spec files a batch of changed paths under `root` touches, named as a walk of `root`
    /// names them and in the walk's order; nil when only a full read can tell what changed (a
    /// directory, a symlink or a removed directory that held specs). Paths a walk
    /// skips (hidden names, other extensions: editors' swap and backup files) are ignored.
    /// `knownDirectories` are the directories that hold known objects' files: a removed path
    /// among them was a directory of specs.
    public static func changedFiles(root: String, paths: some Sequence<String>, knownDirectories: Set<String> = []) -> [String]? {
        let prefix = root.hasSuffix("/") ? root : root + "/"
        var files: [[String]] = []
        for path in paths {
            guard path.hasPrefix(prefix) || path + "/" == prefix else { return nil }
            let components = path.dropFirst(prefix.count).split(separator: "/").map(String.init)
            guard let name = components.last else { return nil }  // the root itself
            if components.contains(where: { $0.hasPrefix(".") }) { continue }
            var info = stat()
            if lstat(path, &info) == 0 {
                let type = info.st_mode & S_IFMT
                if type == S_IFDIR || type == S_IFLNK { return nil }
                if !isManifestName(name) { continue }
            } else if !isManifestName(name) {
                if knownDirectories.contains(path) || knownDirectories.contains(prefix + components.joined(separator: "/")) {
                    return nil  // a directory of specs went away
                }
                continue  // a temporary file renamed over a spec, an editor's backup
            }
            files.append(components)
        }
        var seen = Set<[String]>()
        return files.filter { seen.insert($0).inserted }.sorted { $0.lexicographicallyPrecedes($1) }
            .map { prefix + $0.joined(separator: "/") }
    }

    private func read(_ path: String, display: String, info: stat, seenFiles: inout Set<FileID>, into collection: inout Collection) {
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            collection.problems.append(Diagnostic(file: display, mark: nil, message: "not a regular file (a FIFO, socket or device): not read"))
            return
        }
        let id = FileID(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
        guard seenFiles.insert(id).inserted else { return }
        if Int(info.st_size) > maxFileSize {
            collection.problems.append(Diagnostic(file: display, mark: nil, message: "file is \(ByteSize.format(Int(info.st_size))), over the \(ByteSize.format(maxFileSize)) limit for a manifest (--max-file-size)"))
            return
        }
        collection.pending.append(PendingFile(path: path, display: display, size: Int(info.st_size)))
    }

    /// Reads one found file, never more than the size limit (it may have grown since).
    public func read(_ file: PendingFile) -> Result<SpecFile, Diagnostic> {
        let fd = open(file.path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            return .failure(Diagnostic(file: file.display, mark: nil, message: "cannot read: \(errnoText())"))
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(file.size)
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                return .failure(Diagnostic(file: file.display, mark: nil, message: "cannot read: \(errnoText())"))
            }
            if count == 0 { break }
            bytes += buffer[0..<count]
            if bytes.count > maxFileSize {
                return .failure(Diagnostic(file: file.display, mark: nil, message: "file grew over the \(ByteSize.format(maxFileSize)) limit while being read"))
            }
        }
        return .success(SpecFile(path: file.display, bytes: bytes))
    }
}

func errnoText() -> String {
    String(cString: strerror(errno))
}

/// Reads and decodes every manifest under `paths`: the whole of `capstan validate`.
public struct ManifestLoader: Sendable {
    public var collector: SpecFileCollector
    public var decoder: ManifestDecoder

    public init(maxFileSize: Int = ManifestDecoder.defaultMaxFileSize) {
        collector = SpecFileCollector(maxFileSize: maxFileSize)
        decoder = ManifestDecoder(maxFileSize: maxFileSize)
    }

    public struct Result: Sendable {
        public var manifests = ManifestResult()
        public var files = 0
    }

    public func load(_ paths: [String]) -> Result {
        let collection = collector.collect(paths, read: false)
        var result = Result()
        result.files = collection.candidates
        result.manifests.diagnostics = collection.problems
        // Files are read and decoded independently, so on every core; merging in path order
        // keeps the outcome (which duplicate wins, the order of problems) deterministic.
        let files = collection.pending
        let decoded = Mutex([ManifestResult?](repeating: nil, count: files.count))
        let decoder = self.decoder, collector = self.collector
        DispatchQueue.concurrentPerform(iterations: files.count) { index in
            let one: ManifestResult
            switch collector.read(files[index]) {
            case .success(let file):
                one = decoder.decode(file.bytes, file: file.path)
            case .failure(let problem):
                var failed = ManifestResult()
                failed.diagnostics = [problem]
                one = failed
            }
            decoded.withLock { $0[index] = one }
        }
        for one in decoded.withLock({ $0 }) {
            if let one { result.manifests.merge(one) }
        }
        return result
    }
}
