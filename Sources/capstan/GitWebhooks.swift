import CapstanLocal
import Foundation
import Hummingbird
import Logging

/// The daemon's listener for git hosts' push webhooks: `POST /hooks/git` on --webhook-addr,
/// each delivery handed to the git source to judge and record. A listener that cannot bind is
/// tried again every 5 s.
enum GitWebhooks {
    static func serve(_ gitLoop: GitLoop, host: String, port: Int, log: DaemonLog) async {
        guard let webhook = gitLoop.webhook else { return }
        var logger = Logging.Logger(label: "capstan-webhooks")
        logger.logLevel = .critical
        let router = Router()
        router.post("hooks/git") { request, _ -> Response in
            let headers = request.headers.map { ($0.name.rawName, $0.value) }
            if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > GitLoop.maxBody {
                return tooLarge(gitLoop.refuseTooLarge(length, headers: headers))
            }
            let body: ByteBuffer
            do {
                body = try await request.body.collect(upTo: GitLoop.maxBody)
            } catch {
                return tooLarge(gitLoop.refuseTooLarge(nil, headers: headers))
            }
            let verdict = gitLoop.receive(headers: headers, body: Array(body.readableBytesView))
            return Response(status: .init(code: verdict.status), headers: [.contentType: "text/plain; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: "\(verdict.outcome.rawValue): \(verdict.detail)\n")))
        }
        while !Task.isCancelled {
            let server = Hummingbird.Application(
                router: router,
                configuration: .init(address: .hostname(host, port: port), serverName: "capstan"),
                onServerRunning: { channel in log("receiving git webhooks on \(channel.localAddress.map { "\($0)" } ?? webhook.address)/hooks/git") },
                logger: logger)
            do {
                try await server.run()
                return
            } catch {
                if Task.isCancelled { return }
                log("cannot receive webhooks on \(webhook.address): \(error); trying again in 5s", level: "error")
                try? await Task.sleep(for: .seconds(5))
            }
        }
    }

    private static func tooLarge(_ detail: String) -> Response {
        Response(status: .contentTooLarge, body: .init(byteBuffer: ByteBuffer(string: "refused: \(detail)\n")))
    }
}
