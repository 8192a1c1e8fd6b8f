import Testing
@testable import CapstanRuntime

@Suite struct CacheTests {
    struct Item: Sendable, Equatable {
        var owner: String?
        var tags: [String]
    }

    func cache() -> Cache<String, Item> {
        Cache(indexers: [
            "owner": { $0.owner.map { [$0] } ?? [] },
            "tag": { $0.tags },
        ])
    }

    @Test func indexesFollowUpsertUpdateAndRemove() {
        let cache = cache()
        cache.upsert("a", Item(owner: "x", tags: ["red", "blue"]))
        cache.upsert("b", Item(owner: "x", tags: ["red"]))
        cache.upsert("c", Item(owner: nil, tags: []))
        #expect(cache.count == 3)
        #expect(Set(cache.byIndex("owner", "x").map(\.tags.count)) == [1, 2])
        #expect(cache.byIndex("tag", "red").count == 2)
        #expect(cache.byIndex("tag", "blue").count == 1)

        // Moving "a" to another owner and dropping a tag updates both indexes.
        let moved = cache.update("a") { $0.owner = "y"; $0.tags = ["red"] }
        #expect(moved)
        #expect(cache.byIndex("owner", "x").count == 1)
        #expect(cache.byIndex("owner", "y").count == 1)
        #expect(cache.byIndex("tag", "blue").isEmpty)
        #expect(!cache.indexValues("tag").contains("blue"), "an emptied value leaves the index")

        let previous = cache.upsert("b", Item(owner: "y", tags: []))
        #expect(previous == Item(owner: "x", tags: ["red"]))
        #expect(cache.byIndex("owner", "x").isEmpty)
        #expect(cache.byIndex("owner", "y").count == 2)

        #expect(cache.remove("a") != nil)
        #expect(cache.remove("a") == nil)
        #expect(cache.byIndex("owner", "y").count == 1)
        #expect(cache.byIndex("tag", "red").isEmpty)
        let missing = cache.update("zz") { $0.owner = "q" }
        #expect(!missing)
        #expect(cache.byIndex("nonexistent-index", "x").isEmpty)
    }

    @Test func replaceAllRebuildsEverything() {
        let cache = cache()
        cache.upsert("old", Item(owner: "x", tags: ["t"]))
        cache.replaceAll([("n1", Item(owner: "z", tags: [])), ("n2", Item(owner: "z", tags: ["t"]))])
        #expect(cache.get("old") == nil)
        #expect(Set(cache.keys()) == ["n1", "n2"])
        #expect(cache.byIndex("owner", "x").isEmpty)
        #expect(cache.byIndex("owner", "z").count == 2)
        #expect(cache.byIndex("tag", "t").count == 1)
    }

    @Test func concurrentWritersKeepIndexesConsistent() async {
        let cache = cache()
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    for i in 0..<500 {
                        let key = "k\(i % 50)"
                        cache.upsert(key, Item(owner: "o\(worker % 3)", tags: ["w\(worker)"]))
                        if i % 7 == 0 { cache.remove(key) }
                    }
                }
            }
        }
        // Every key is under exactly the owner its current object names.
        for key in cache.keys() {
            let item = cache.get(key)!
            let owners = ["o0", "o1", "o2"].filter { owner in cache.byIndex("owner", owner).contains(item) }
            #expect(owners.contains(item.owner!))
        }
        let indexed = ["o0", "o1", "o2"].map { cache.byIndex("owner", $0).count }.reduce(0, +)
        #expect(indexed == cache.count)
    }
}
