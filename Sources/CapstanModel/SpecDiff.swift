import Foundation

/// Field-by-field differences between two trees (`capstan diff`): each changed leaf, or the
/// whole subtree that appeared or went, by its path (`spec.env[1].value`).
public struct SpecDifference: Sendable, Equatable, CustomStringConvertible {
    public enum Change: Sendable, Equatable {
        case added(SpecNode)
        case removed(SpecNode)
        case changed(from: SpecNode, to: SpecNode)
    }

    public var path: String
    public var change: Change

    public var description: String {
        switch change {
        case .added(let node): return "+ \(path): \(Self.text(node))"
        case .removed(let node): return "- \(path): \(Self.text(node))"
        case .changed(let from, let to): return "~ \(path): \(Self.text(from)) -> \(Self.text(to))"
        }
    }

    /// A node on one line: scalars as JSON writes them, collections as compact JSON.
    static func text(_ node: SpecNode) -> String {
        let text = JSONEmitter.emit(node, pretty: false).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.count > 120 ? String(text.prefix(117)) + "..." : text
    }

    /// The differences from `old` to `new` below `path`, in the order of the new tree (then
    /// what went). Sequences are compared item by item.
    public static func between(_ old: SpecNode, _ new: SpecNode, path: String = "") -> [SpecDifference] {
        if old == new { return [] }
        switch (old.value, new.value) {
        case (.mapping(let before), .mapping(let after)):
            var differences: [SpecDifference] = []
            for entry in after {
                let child = path.isEmpty ? entry.key : path + "." + entry.key
                if let previous = before.first(where: { $0.key == entry.key }) {
                    differences += between(previous.value, entry.value, path: child)
                } else {
                    differences.append(SpecDifference(path: child, change: .added(entry.value)))
                }
            }
            for entry in before where !after.contains(where: { $0.key == entry.key }) {
                differences.append(SpecDifference(path: path.isEmpty ? entry.key : path + "." + entry.key, change: .removed(entry.value)))
            }
            return differences
        case (.sequence(let before), .sequence(let after)):
            var differences: [SpecDifference] = []
            for index in 0..<max(before.count, after.count) {
                let child = "\(path)[\(index)]"
                if index >= before.count {
                    differences.append(SpecDifference(path: child, change: .added(after[index])))
                } else if index >= after.count {
                    differences.append(SpecDifference(path: child, change: .removed(before[index])))
                } else {
                    differences += between(before[index], after[index], path: child)
                }
            }
            return differences
        default:
            return [SpecDifference(path: path, change: .changed(from: old, to: new))]
        }
    }
}
