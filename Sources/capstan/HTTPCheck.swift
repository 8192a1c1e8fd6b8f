import AsyncHTTPClient
import Foundation
import NIOCore

/// A rotation's `verify.http`: GET the URL (redirects followed), 2xx passes.
enum HTTPCheck {
    static func get(_ url: String, timeout: Duration) async -> String? {
        var request = HTTPClientRequest(url: url)
        request.headers.add(name: "User-Agent", value: "capstan-verify")
        do {
            let response = try await HTTPClient.shared.execute(request, timeout: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000))
            var body = try await response.body.collect(upTo: 4096)
            let text = body.readString(length: body.readableBytes) ?? ""
            if (200..<300).contains(Int(response.status.code)) { return nil }
            let tail = text.split(separator: "\n").suffix(3).joined(separator: " | ")
            return "GET \(url) answered \(response.status.code)" + (tail.isEmpty ? "" : ": \(tail.prefix(300))")
        } catch {
            return "GET \(url) failed: \(error)"
        }
    }
}
