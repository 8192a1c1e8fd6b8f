import AsyncHTTPClient
import CapstanControllers
import CapstanModel
import Foundation
import NIOCore
import NIOFoundationCompat

/// Sends notices: webhook (Alertmanager's JSON, version 4), Slack, Alertmanager's
/// `POST /api/v2/alerts` over HTTP, e-mail over SMTP. An answer other than 2xx, a timeout or
/// a refused connection is a failed delivery; its message names the host, never the URL's path
/// (a Slack or webhook token) or a password.
public struct AlertNotifier: Notifier {
    let http: HTTPClient
    let timeout: TimeAmount
    let externalURL: String

    public init(http: HTTPClient = IntegrationHTTP.client, timeout: TimeAmount = .seconds(10), externalURL: String = "") {
        self.http = http
        self.timeout = timeout
        self.externalURL = externalURL
    }

    public func send(_ notices: [AlertNotice], to target: ReceiverTarget, receiver: String) async throws(DeliveryError) {
        switch target {
        case .webhook(let url):
            try await post(AlertPayloads.webhook(notices, receiver: receiver, externalURL: externalURL), to: url, target: target)
        case .slack(let url, let channel):
            try await post(AlertPayloads.slack(notices, channel: channel), to: url, target: target)
        case .alertmanager(let url):
            let base = url.hasSuffix("/") ? String(url.dropLast()) : url
            try await post(AlertPayloads.alertmanager(notices, validUntil: Date().addingTimeInterval(4 * AlertRuleReconciler.resendDelay)),
                           to: base + "/api/v2/alerts", target: target)
        case .email(let email):
            let (subject, body) = AlertPayloads.email(notices)
            do {
                try await SMTPClient(email, timeout: timeout).send(subject: subject, body: body, messageID: notices.first.map { "<\($0.key)@capstan>" })
            } catch {
                throw DeliveryError("\(target): \(error.description)")
            }
        }
    }

    private func post(_ body: Data, to url: String, target: ReceiverTarget) async throws(DeliveryError) {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "capstan")
        request.body = .bytes(ByteBuffer(data: body))
        do {
            let response = try await http.execute(request, timeout: timeout)
            let answer = try await response.body.collect(upTo: 4096)
            guard (200..<300).contains(response.status.code) else {
                let text = String(buffer: answer).trimmingCharacters(in: .whitespacesAndNewlines)
                throw DeliveryError("\(target) answered \(response.status.code)\(text.isEmpty ? "" : ": " + String(text.prefix(200)))")
            }
        } catch let error as DeliveryError {
            throw error
        } catch {
            throw DeliveryError("\(target): \(Self.describe(error))")
        }
    }

    static func describe(_ error: any Error) -> String {
        let text = String(describing: error)
        if text.contains("connectTimeout") || text.contains("deadlineExceeded") || text.contains("readTimeout") { return "timed out" }
        if text.contains("connectionRefused") || text.contains("Connection refused") { return "connection refused" }
        // An HTTP client error may carry the URL (and its token): keep only its kind.
        return String(text.prefix { $0 != "(" && $0 != ":" }).prefix(120).description
    }
}
