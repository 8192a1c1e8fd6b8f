import AsyncHTTPClient
import NIOCore
import NIOPosix

/// The HTTP client of notifiers and metric queries. Unlike `HTTPClient.shared`, a connection
/// that cannot be made fails the request at once (refused, no route) instead of being retried
/// until the request's deadline: the caller has its own retries (a notification's backoff, a
/// rule's next evaluation), and a receiver or Prometheus that is down must not hold a worker
/// for the whole timeout of every request sent to it.
public enum IntegrationHTTP {
    public static let client: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout.connect = .seconds(5)
        return HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: configuration)
    }()
}
