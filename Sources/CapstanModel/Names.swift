/// Kubernetes naming rules, with messages that say what is wrong and how to fix it.
public enum Names {
    public static let dns1123LabelPattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    public static let dns1123SubdomainPattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

    private static func isLabelChar(_ c: Character) -> Bool {
        c.isASCII && (c.isLowercase || c.isNumber || c == "-")
    }

    /// Fast check on bytes: lower-case letters, digits and '-', alphanumeric at both ends.
    static func isDNS1123Label(_ name: String) -> Bool {
        let bytes = name.utf8
        guard !bytes.isEmpty, bytes.count <= 63, let first = bytes.first, let last = bytes.last else { return false }
        func alnum(_ b: UInt8) -> Bool { (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) }
        return alnum(first) && alnum(last) && bytes.allSatisfy { alnum($0) || $0 == 0x2D }
    }

    /// nil when `name` is a DNS-1123 label (an object name), else why it is not.
    public static func dns1123LabelProblem(_ name: String) -> String? {
        if isDNS1123Label(name) { return nil }
        if name.isEmpty { return "must not be empty" }
        if name.count > 63 { return "\"\(name.prefix(20))...\" is \(name.count) characters long: a name must be at most 63 characters" }
        if name.contains(where: { $0.isUppercase }) {
            return "\"\(name)\" must be lower case: a name may contain only lower-case letters, digits and '-' (DNS-1123 label)"
        }
        if !name.allSatisfy(isLabelChar) {
            return "\"\(name)\" is not a valid name: use only lower-case letters, digits and '-' (DNS-1123 label)"
        }
        if name.first == "-" || name.last == "-" {
            return "\"\(name)\" must start and end with a letter or digit (DNS-1123 label)"
        }
        return nil
    }

    /// nil when `name` is a DNS-1123 subdomain (dot-separated labels, at most 253 characters).
    public static func dns1123SubdomainProblem(_ name: String) -> String? {
        if name.utf8.count <= 253, !name.isEmpty, name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy({ isDNS1123Label(String($0)) }) {
            return nil
        }
        if name.isEmpty { return "must not be empty" }
        if name.count > 253 { return "must be at most 253 characters, got \(name.count)" }
        for part in name.split(separator: ".", omittingEmptySubsequences: false) {
            let part = String(part)
            if part.isEmpty || !part.allSatisfy(isLabelChar) || part.first == "-" || part.last == "-" {
                return "\"\(name)\" is not a valid DNS-1123 subdomain: use lower-case letters, digits, '-' and '.'"
            }
        }
        return nil
    }

    /// nil when `key` is a valid label or annotation key (`[prefix/]name`).
    public static func qualifiedNameProblem(_ key: String) -> String? {
        let parts = key.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { return "key \"\(key)\" may contain at most one '/'" }
        if parts.count == 2 {
            if dns1123SubdomainProblem(String(parts[0])) != nil {
                return "key \"\(key)\" has an invalid prefix: it must be a DNS subdomain such as example.com"
            }
        }
        let name = String(parts.last!)
        if name.isEmpty || name.count > 63 {
            return "key \"\(key)\": the name part must be 1 to 63 characters"
        }
        if !isLabelValue(name) {
            return "key \"\(key)\": the name part may contain letters, digits, '-', '_' and '.', and must start and end with a letter or digit"
        }
        return nil
    }

    /// Letters, digits, '-', '_', '.', starting and ending alphanumeric.
    static func isLabelValue(_ value: String) -> Bool {
        let bytes = value.utf8
        guard let first = bytes.first, let last = bytes.last else { return true }
        func alnum(_ b: UInt8) -> Bool { (b >= 0x61 && b <= 0x7A) || (b >= 0x41 && b <= 0x5A) || (b >= 0x30 && b <= 0x39) }
        return alnum(first) && alnum(last) && bytes.allSatisfy { alnum($0) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E }
    }

    /// nil when `value` is a valid label value.
    public static func labelValueProblem(_ value: String) -> String? {
        if value.count > 63 { return "label value must be at most 63 characters, got \(value.count)" }
        if !isLabelValue(value) {
            return "label value \"\(value)\" may contain letters, digits, '-', '_' and '.', and must start and end with a letter or digit"
        }
        return nil
    }

    /// nil when `value` is an environment variable name.
    public static func envVarNameProblem(_ value: String) -> String? {
        guard let first = value.utf8.first else { return "must not be empty" }
        func ok(_ b: UInt8) -> Bool {
            (b >= 0x61 && b <= 0x7A) || (b >= 0x41 && b <= 0x5A) || (b >= 0x30 && b <= 0x39) || b == 0x5F || b == 0x2D || b == 0x2E
        }
        if (first >= 0x30 && first <= 0x39) || !value.utf8.allSatisfy(ok) {
            return "\"\(value)\" is not a valid environment variable name: use letters, digits, '_', '-' and '.', not starting with a digit"
        }
        return nil
    }

    /// nil when `value` is an absolute http or https URL with a host.
    public static func httpURLProblem(_ value: String) -> String? {
        let lower = value.lowercased()
        guard lower.hasPrefix("http://") || lower.hasPrefix("https://") else {
            return "\"\(value)\" is not an http:// or https:// URL"
        }
        let rest = value.drop(while: { $0 != "/" }).dropFirst(2)
        let host = rest.prefix(while: { $0 != "/" && $0 != "?" && $0 != "#" })
        if host.isEmpty || host.contains(" ") || value.contains(where: { $0.isWhitespace }) {
            return "\"\(value)\" is not a valid URL: it needs a host and no spaces"
        }
        return nil
    }
}
