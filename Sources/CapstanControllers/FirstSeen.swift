import CapstanModel
import Foundation
import Synchronization

/// When something was first seen about each object (a deleted Deployment gone with children
/// left; a Canary's analysis waiting for a first value).
final class FirstSeen: Sendable {
    private let times = Mutex<[ObjectKey: Date]>([:])

    func since(_ key: ObjectKey, _ now: Date) -> Date {
        times.withLock { times in
            if let time = times[key] { return time }
            times[key] = now
            return now
        }
    }

    func forget(_ key: ObjectKey) {
        _ = times.withLock { $0.removeValue(forKey: key) }
    }
}
