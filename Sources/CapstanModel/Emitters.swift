/// Writes a `SpecNode` as JSON. `sortKeys` gives the canonical form used for spec hashes.
public enum JSONEmitter {
    public static func emit(_ node: SpecNode, pretty: Bool = true, sortKeys: Bool = false) -> String {
        var out = ""
        write(node, into: &out, indent: pretty ? 0 : nil, sortKeys: sortKeys)
        if pretty { out += "\n" }
        return out
    }

    private static func write(_ node: SpecNode, into out: inout String, indent: Int?, sortKeys: Bool) {
        let newline = indent == nil ? "" : "\n"
        let pad = { (level: Int) in String(repeating: "  ", count: level) }
        switch node.value {
        case .null: out += "null"
        case .scalar(let text, let quoted):
            if quoted || !isJSONLiteral(text) { quoteJSON(text, into: &out) } else { out += text }
        case .sequence(let items):
            if items.isEmpty { out += "[]"; return }
            out += "[" + newline
            for (i, item) in items.enumerated() {
                if let indent { out += pad(indent + 1) }
                write(item, into: &out, indent: indent.map { $0 + 1 }, sortKeys: sortKeys)
                if i < items.count - 1 { out += "," }
                out += newline
            }
            if let indent { out += pad(indent) }
            out += "]"
        case .mapping(let entries):
            if entries.isEmpty { out += "{}"; return }
            let ordered = sortKeys ? entries.sorted { $0.key < $1.key } : entries
            out += "{" + newline
            for (i, entry) in ordered.enumerated() {
                if let indent { out += pad(indent + 1) }
                quoteJSON(entry.key, into: &out)
                out += indent == nil ? ":" : ": "
                write(entry.value, into: &out, indent: indent.map { $0 + 1 }, sortKeys: sortKeys)
                if i < ordered.count - 1 { out += "," }
                out += newline
            }
            if let indent { out += pad(indent) }
            out += "}"
        }
    }

    static func isJSONLiteral(_ text: String) -> Bool {
        if text == "true" || text == "false" || text == "null" { return true }
        guard let first = text.first, first == "-" || first.isASCIIDigitCharacter else { return false }
        return text.allSatisfy { $0.isASCIIDigitCharacter || "+-.eE".contains($0) } && Double(text) != nil
            && !(text.count > 1 && text.hasPrefix("0") && !text.hasPrefix("0.") && !text.hasPrefix("0e"))
    }

    static func quoteJSON(_ text: String, into out: inout String) {
        // Fast path: printable ASCII without quotes or backslashes needs no escaping.
        if text.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F && $0 != 0x22 && $0 != 0x5C }) {
            out += "\""
            out += text
            out += "\""
            return
        }
        out += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F || (0x80...0x9F).contains(scalar.value)
                    || scalar.value == 0x2028 || scalar.value == 0x2029 || scalar.value == 0xFEFF {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}

/// Writes a `SpecNode` as block-style YAML that any YAML 1.1 or 1.2 reader reads back the same:
/// strings that could be read as anything else are double-quoted.
public enum YAMLEmitter {
    public static func emit(_ node: SpecNode) -> String {
        var out = ""
        switch node.value {
        case .mapping(let entries) where !entries.isEmpty:
            writeMapping(entries, into: &out, indent: 0)
        case .sequence(let items) where !items.isEmpty:
            writeSequence(items, into: &out, indent: 0)
        default:
            out += inline(node) + "\n"
        }
        return out
    }

    private static func writeMapping(_ entries: [SpecNode.Entry], into out: inout String, indent: Int) {
        let pad = String(repeating: " ", count: indent)
        for entry in entries {
            out += pad + key(entry.key) + ":"
            writeValue(entry.value, into: &out, indent: indent, inSequence: false)
        }
    }

    private static func writeSequence(_ items: [SpecNode], into out: inout String, indent: Int) {
        let pad = String(repeating: " ", count: indent)
        for item in items {
            out += pad + "-"
            switch item.value {
            case .mapping(let entries) where !entries.isEmpty:
                // First entry on the dash line, the rest aligned under it.
                var nested = ""
                writeMapping(entries, into: &nested, indent: indent + 2)
                out += " " + nested.dropFirst(indent + 2)
            case .sequence(let inner) where !inner.isEmpty:
                out += "\n"
                writeSequence(inner, into: &out, indent: indent + 2)
            default:
                out += " " + inline(item) + "\n"
            }
        }
    }

    private static func writeValue(_ node: SpecNode, into out: inout String, indent: Int, inSequence: Bool) {
        switch node.value {
        case .mapping(let entries) where !entries.isEmpty:
            out += "\n"
            writeMapping(entries, into: &out, indent: indent + 2)
        case .sequence(let items) where !items.isEmpty:
            out += "\n"
            writeSequence(items, into: &out, indent: indent)
        case .scalar(let text, true) where text.contains("\n") && !text.hasSuffix(" ") && !text.hasPrefix(" ") && !text.hasPrefix("\n") && text.allSatisfy({ $0 != "\r" && $0 != "\t" }):
            // Multi-line strings as literal blocks, which read better than escaped newlines.
            let chomp = text.hasSuffix("\n") ? (text.hasSuffix("\n\n") ? "+" : "") : "-"
            out += " |" + chomp + "\n"
            let pad = String(repeating: " ", count: indent + 2)
            var body = text
            if body.hasSuffix("\n") { body.removeLast() }
            for line in body.split(separator: "\n", omittingEmptySubsequences: false) {
                out += line.isEmpty ? "\n" : pad + line + "\n"
            }
        default:
            out += " " + inline(node) + "\n"
        }
    }

    static func inline(_ node: SpecNode) -> String {
        switch node.value {
        case .null: return "null"
        case .scalar(let text, let isString):
            if !isString && JSONEmitter.isJSONLiteral(text) { return text }
            return needsQuotes(text) ? quoted(text) : text
        case .sequence(let items): return items.isEmpty ? "[]" : "[" + items.map(inline).joined(separator: ", ") + "]"
        case .mapping(let entries): return entries.isEmpty ? "{}" : "{" + entries.map { key($0.key) + ": " + inline($0.value) }.joined(separator: ", ") + "}"
        }
    }

    private static func key(_ text: String) -> String { needsQuotes(text) ? quoted(text) : text }

    private static func quoted(_ text: String) -> String {
        var out = ""
        JSONEmitter.quoteJSON(text, into: &out)
        return out
    }

    private static let reserved: Set<String> = [
        "", "~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE",
        "yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF", "y", "Y", "n", "N",
        ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "-.inf", "-.Inf", "-.INF", "+.inf", "<<", "=",
    ]

    /// Whether a plain scalar would be read as something other than this string.
    static func needsQuotes(_ text: String) -> Bool {
        if reserved.contains(text) { return true }
        guard let first = text.first, let last = text.last else { return true }
        if first == " " || last == " " { return true }
        if "-?:,[]{}#&*!|>'\"%@`".contains(first) {
            if !(first == "-" && text.count > 1 && text.dropFirst().first != " " && !text.dropFirst().first!.isASCIIDigitCharacter && text.dropFirst().first != ".") { return true }
        }
        if text.contains(": ") || text.contains(" #") || text.hasSuffix(":") { return true }
        if text.contains(where: { $0.isNewline || $0 == "\t" || ($0.asciiValue.map { $0 < 0x20 || $0 == 0x7F } ?? false) }) { return true }
        if text.unicodeScalars.contains(where: { $0.value > 0x7E }) { return true }
        // Anything that looks like a number, a date or a sexagesimal in YAML 1.1.
        if first.isASCIIDigitCharacter || first == "." || first == "+" || first == "-" {
            let numeric = text.allSatisfy { $0.isASCIIDigitCharacter || "+-.:_eExXoObB".contains($0) || $0.isHexDigit }
            if numeric { return true }
        }
        return false
    }
}
