#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Paths as the daemon keeps them: absolute, so that what it stores or links to means the same
/// whatever the working directory of whoever reads it later.
public enum FilePaths {
    /// `path` made absolute against the current directory, with `.` and `..` segments and
    /// repeated slashes folded (symlinks are left as they are).
    public static func absolute(_ path: String) -> String {
        guard !path.isEmpty else { return currentDirectory() }
        let joined = path.hasPrefix("/") ? path : currentDirectory() + "/" + path
        var parts: [Substring] = []
        for part in joined.split(separator: "/", omittingEmptySubsequences: true) {
            switch part {
            case ".": continue
            case "..": if !parts.isEmpty { parts.removeLast() }
            default: parts.append(part)
            }
        }
        return "/" + parts.joined(separator: "/")
    }

    /// The current working directory ("/" if it cannot be read, e.g. it was removed).
    public static func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return "/" }
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }
}
