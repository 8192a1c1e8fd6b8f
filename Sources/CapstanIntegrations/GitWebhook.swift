import Crypto
import Foundation

/// A git host's push notification, judged: which provider sent it (by its headers), whether
/// its signature holds against the shared secret (HMAC-SHA256 as GitHub, Gitea and Bitbucket
/// sign; GitLab's token), and whether it is a push to the ref the source follows. Pure: the
/// server that receives it decides nothing else.
public enum GitWebhook {
    public enum Provider: String, Sendable, CaseIterable {
        case github, gitea, gitlab, bitbucket
    }

    public enum Outcome: String, Sendable {
        /// A push to the followed ref: fetch now.
        case fetch
        /// Signed, but another event or another ref: nothing to do.
        case ignored
        /// Not signed with the secret (or not a delivery at all).
        case refused
    }

    public struct Verdict: Sendable, Equatable {
        /// The HTTP status to answer: 202 (taken: fetch or ignored), 401 (refused), 400 (signed
        /// but not readable).
        public var status: Int
        public var outcome: Outcome
        /// The provider, empty when no provider's headers were found.
        public var provider: String
        public var event: String
        public var ref: String
        public var commit: String
        public var detail: String

        public init(status: Int, outcome: Outcome, provider: String, event: String, ref: String, commit: String, detail: String) {
            self.status = status
            self.outcome = outcome
            self.provider = provider
            self.event = event
            self.ref = ref
            self.commit = commit
            self.detail = detail
        }
    }

    /// Judges a delivery. `headers`: names in any case; `ref`: the full ref followed
    /// (`refs/heads/main`).
    public static func judge(headers: [(String, String)], body: [UInt8], secret: [UInt8], ref: String) -> Verdict {
        let fields = self.fields(headers)
        guard case (let provider?, let event) = sender(headers) else {
            return Verdict(status: 401, outcome: .refused, provider: "", event: "", ref: "", commit: "",
                           detail: "no git host's event header (X-GitHub-Event, X-Gitea-Event, X-Gitlab-Event, X-Event-Key)")
        }
        func refuse(_ detail: String) -> Verdict {
            Verdict(status: 401, outcome: .refused, provider: provider.rawValue, event: event, ref: "", commit: "", detail: detail)
        }
        // The signature first: nothing of an unsigned body is believed (its ref included).
        switch provider {
        case .gitlab:
            guard let token = fields["x-gitlab-token"] else { return refuse("no X-Gitlab-Token header") }
            guard constantTimeEqual(Array(token.utf8), secret) else { return refuse("X-Gitlab-Token does not match the secret") }
        case .github, .gitea, .bitbucket:
            let header: String
            let value: String
            if let signature = fields["x-hub-signature-256"] {
                (header, value) = ("X-Hub-Signature-256", signature)
            } else if provider == .gitea, let signature = fields["x-gitea-signature"] {
                (header, value) = ("X-Gitea-Signature", "sha256=" + signature)
            } else if provider == .bitbucket, let signature = fields["x-hub-signature"] {
                (header, value) = ("X-Hub-Signature", signature)
            } else {
                return refuse(provider == .bitbucket ? "no X-Hub-Signature header" : "no X-Hub-Signature-256 header")
            }
            guard value.lowercased().hasPrefix("sha256="), let mac = hexBytes(String(value.dropFirst(7))), mac.count == 32 else {
                return refuse("\(header) is not sha256=<64 hex digits>")
            }
            guard HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: body, using: SymmetricKey(data: secret)) else {
                return refuse("\(header) does not match the body signed with the secret")
            }
        }
        let pushEvents = ["push", "Push Hook", "Tag Push Hook", "repo:push", "repo:refs_changed"]
        guard pushEvents.contains(event) else {
            return Verdict(status: 202, outcome: .ignored, provider: provider.rawValue, event: event, ref: "", commit: "",
                           detail: "not a push (\(event.isEmpty ? "no event" : event))")
        }
        guard let payload = payload(body, contentType: fields["content-type"] ?? "") else {
            return Verdict(status: 400, outcome: .ignored, provider: provider.rawValue, event: event, ref: "", commit: "",
                           detail: "the body is not a JSON object")
        }
        let pushes = self.pushes(payload, provider: provider)
        guard let push = pushes.first(where: { $0.ref == ref }) else {
            let refs = pushes.map(\.ref).filter { !$0.isEmpty }
            return Verdict(status: 202, outcome: .ignored, provider: provider.rawValue, event: event, ref: refs.joined(separator: ","),
                           commit: pushes.first?.commit ?? "", detail: refs.isEmpty ? "a push naming no ref" : "a push to another ref (\(ref) is followed)")
        }
        return Verdict(status: 202, outcome: .fetch, provider: provider.rawValue, event: event, ref: push.ref, commit: push.commit,
                       detail: "a push to \(push.ref)")
    }

    static func fields(_ headers: [(String, String)]) -> [String: String] {
        var fields: [String: String] = [:]
        for (name, value) in headers { fields[name.lowercased()] = value }
        return fields
    }

    /// Who sent a delivery, by its headers (Gitea also sends GitHub's), and the event it names.
    public static func sender(_ headers: [(String, String)]) -> (Provider?, String) {
        let fields = self.fields(headers)
        if let gitlab = fields["x-gitlab-event"] ?? fields["x-gitlab-token"].map({ _ in "" }) { return (.gitlab, gitlab) }
        if let gitea = fields["x-gitea-event"] { return (.gitea, gitea) }
        if let bitbucket = fields["x-event-key"] { return (.bitbucket, bitbucket) }
        if let github = fields["x-github-event"] { return (.github, github) }
        return (nil, "")
    }

    /// The JSON object of a body: JSON itself, or GitHub's form encoding (`payload=...`).
    static func payload(_ body: [UInt8], contentType: String) -> [String: Any]? {
        var data = Data(body)
        if contentType.lowercased().hasPrefix("application/x-www-form-urlencoded") {
            let text = String(decoding: body, as: UTF8.self)
            guard let field = text.split(separator: "&").first(where: { $0.hasPrefix("payload=") }),
                  let decoded = String(field.dropFirst(8)).replacingOccurrences(of: "+", with: " ").removingPercentEncoding else { return nil }
            data = Data(decoded.utf8)
        }
        return (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
    }

    /// The refs a push moved, and the commit each is at now.
    static func pushes(_ payload: [String: Any], provider: Provider) -> [(ref: String, commit: String)] {
        switch provider {
        case .github, .gitea, .gitlab:
            let commit = (payload["after"] as? String) ?? (payload["checkout_sha"] as? String) ?? ""
            return [(payload["ref"] as? String ?? "", commit)]
        case .bitbucket:
            // Bitbucket Cloud: push.changes[].new {type, name, target.hash} (old when deleted).
            if let changes = (payload["push"] as? [String: Any])?["changes"] as? [[String: Any]] {
                return changes.compactMap { change in
                    guard let side = (change["new"] as? [String: Any]) ?? (change["old"] as? [String: Any]),
                          let name = side["name"] as? String else { return nil }
                    let prefix = (side["type"] as? String) == "tag" ? "refs/tags/" : "refs/heads/"
                    let hash = change["new"] == nil || change["new"] is NSNull ? "" : ((side["target"] as? [String: Any])?["hash"] as? String ?? "")
                    return (prefix + name, hash)
                }
            }
            // Bitbucket Server / Data Center: changes[] {ref.id, toHash}.
            if let changes = payload["changes"] as? [[String: Any]] {
                return changes.compactMap { change in
                    guard let id = (change["ref"] as? [String: Any])?["id"] as? String else { return nil }
                    return (id, change["toHash"] as? String ?? "")
                }
            }
            return []
        }
    }

    static func hexBytes(_ text: String) -> [UInt8]? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count / 2)
        var high: UInt8? = nil
        for character in text.utf8 {
            let value: UInt8
            switch character {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = character - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = character - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): value = character - UInt8(ascii: "A") + 10
            default: return nil
            }
            if let first = high {
                bytes.append(first << 4 | value)
                high = nil
            } else {
                high = value
            }
        }
        return high == nil ? bytes : nil
    }

    /// Equal, in a time that does not depend on where they differ (the lengths may show).
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        // Digests of both: equal lengths, so the loop runs the same whatever the input.
        let x = Array(SHA256.hash(data: a)), y = Array(SHA256.hash(data: b))
        var difference: UInt8 = 0
        for index in 0..<x.count { difference |= x[index] ^ y[index] }
        return difference == 0
    }
}
