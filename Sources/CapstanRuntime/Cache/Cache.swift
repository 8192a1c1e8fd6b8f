import Synchronization

/// The last good object per key, answering reconcilers' reads without I/O, with secondary
/// indexes (client-go's `Indexer`): each index function maps an object to the values it is
/// found under (`references` → the keys it points at, `label` → `key=value` pairs, ...).
///
/// Thread-safe; reads copy out values, so a reader never sees a half-applied change.
public final class Cache<Key: Hashable & Sendable, Object: Sendable>: Sendable {
    public typealias IndexFunction = @Sendable (Object) -> [String]

    private struct State {
        var objects: [Key: Object] = [:]
        /// index name → value → keys.
        var indexed: [String: [String: Set<Key>]] = [:]
    }

    private let indexers: [String: IndexFunction]
    private let state = Mutex(State())

    public init(indexers: [String: IndexFunction] = [:]) {
        self.indexers = indexers
    }

    public var count: Int { state.withLock { $0.objects.count } }

    public func get(_ key: Key) -> Object? {
        state.withLock { $0.objects[key] }
    }

    public func keys() -> [Key] {
        state.withLock { Array($0.objects.keys) }
    }

    public func list() -> [Object] {
        state.withLock { Array($0.objects.values) }
    }

    /// Folds every object into `initial`, under the lock, without copying them all out.
    public func reduce<Result: Sendable>(into initial: Result, _ update: (inout Result, Object) -> Void) -> Result {
        state.withLock { state in
            var result = initial
            for object in state.objects.values { update(&result, object) }
            return result
        }
    }

    /// The objects found under `value` in the index `name` (none for an unknown index).
    public func byIndex(_ name: String, _ value: String) -> [Object] {
        state.withLock { state in
            guard let keys = state.indexed[name]?[value] else { return [] }
            return keys.compactMap { state.objects[$0] }
        }
    }

    /// The objects found under `value` in the index `name` whose keys pass `include`, ordered
    /// by their keys (sorting keys, not objects: a large object is never copied to compare).
    public func byIndex(_ name: String, _ value: String, where include: (Key) -> Bool = { _ in true },
                        orderedBy areInIncreasingOrder: (Key, Key) -> Bool) -> [Object] {
        state.withLock { state in
            guard let keys = state.indexed[name]?[value] else { return [] }
            return keys.filter(include).sorted(by: areInIncreasingOrder).compactMap { state.objects[$0] }
        }
    }

    /// The values present in the index `name`.
    public func indexValues(_ name: String) -> [String] {
        state.withLock { Array(($0.indexed[name] ?? [:]).keys) }
    }

    /// Adds or replaces an object; returns the one it replaced.
    @discardableResult
    public func upsert(_ key: Key, _ object: Object) -> Object? {
        state.withLock { state in
            let previous = state.objects.updateValue(object, forKey: key)
            reindex(&state, key, from: previous, to: object)
            return previous
        }
    }

    /// Changes an object in place; returns false (and calls nothing) when the key is absent.
    @discardableResult
    public func update(_ key: Key, _ change: (inout Object) -> Void) -> Bool {
        state.withLock { state in
            guard var object = state.objects[key] else { return false }
            let previous = object
            change(&object)
            state.objects[key] = object
            reindex(&state, key, from: previous, to: object)
            return true
        }
    }

    /// Removes an object; returns it.
    @discardableResult
    public func remove(_ key: Key) -> Object? {
        state.withLock { state in
            guard let previous = state.objects.removeValue(forKey: key) else { return nil }
            reindex(&state, key, from: previous, to: nil)
            return previous
        }
    }

    /// Replaces the whole content (a full list from a source).
    public func replaceAll(_ objects: [(Key, Object)]) {
        state.withLock { state in
            state = State()
            for (key, object) in objects {
                let previous = state.objects.updateValue(object, forKey: key)
                reindex(&state, key, from: previous, to: object)
            }
        }
    }

    private func reindex(_ state: inout State, _ key: Key, from previous: Object?, to object: Object?) {
        for (name, function) in indexers {
            let old = previous.map(function) ?? []
            let new = object.map(function) ?? []
            if old == new { continue }
            for value in old where !new.contains(value) {
                state.indexed[name]?[value]?.remove(key)
                if state.indexed[name]?[value]?.isEmpty == true { state.indexed[name]?[value] = nil }
            }
            for value in new where !old.contains(value) {
                state.indexed[name, default: [:]][value, default: []].insert(key)
            }
        }
    }
}
