import ServiceLifecycle

/// A background loop of the daemon (a source's watch, a periodic resync, a gauge refresher) as
/// a service: it is cancelled when graceful shutdown reaches it.
public struct LoopService: Service, CustomStringConvertible {
    public let description: String
    private let body: @Sendable () async throws -> Void

    public init(_ name: String, _ body: @escaping @Sendable () async throws -> Void) {
        self.description = name
        self.body = body
    }

    public func run() async throws {
        do {
            try await cancelWhenGracefulShutdown {
                try await body()
            }
        } catch is CancellationError {
            // Stopped by shutdown: the normal end of a loop.
        }
    }
}
