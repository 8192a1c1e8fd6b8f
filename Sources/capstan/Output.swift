#if canImport(Glibc)
import Glibc
#endif

/// Writes a line to standard error, after what is buffered for standard output (so the two
/// keep their order when both go to one terminal or file).
func printError(_ text: String) {
    fflush(nil)
    var line = text + "\n"
    line.withUTF8 { buffer in
        var offset = 0
        while offset < buffer.count {
            let n = write(2, buffer.baseAddress! + offset, buffer.count - offset)
            if n <= 0 { break }
            offset += n
        }
    }
}

enum FileOutput {
    struct WriteError: Error, CustomStringConvertible {
        var description: String
    }

    /// Writes `text` to `path` atomically (temporary file + rename).
    static func write(_ text: String, to path: String) throws {
        let temporary = path + ".tmp"
        guard let file = fopen(temporary, "w") else {
            throw WriteError(description: "cannot write \(path): \(String(cString: strerror(errno)))")
        }
        var copy = text
        let written = copy.withUTF8 { fwrite($0.baseAddress, 1, $0.count, file) }
        fclose(file)
        guard written == text.utf8.count, rename(temporary, path) == 0 else {
            unlink(temporary)
            throw WriteError(description: "cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }
}
