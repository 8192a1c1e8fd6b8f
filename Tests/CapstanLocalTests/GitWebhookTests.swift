import CapstanIntegrations
import Crypto
import Foundation
import Testing

/// Push deliveries as the four git hosts send them (payload shapes from their documentation),
/// signed with the secret as each signs: accepted for the followed ref, ignored for another,
/// refused when the signature is wrong, missing, or a signed body was edited.
@Suite struct GitWebhookTests {
    static let secret = Array("It's a Secret to Everybody".utf8)
    static let ref = "refs/heads/main"
    static let commit = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"

    static func sign(_ body: String, secret: [UInt8] = secret) -> String {
        HMAC<SHA256>.authenticationCode(for: Array(body.utf8), using: SymmetricKey(data: secret)).map { String(format: "%02x", $0) }.joined()
    }

    static func github(ref: String = ref) -> String {
        """
        {"ref":"\(ref)","before":"0000000000000000000000000000000000000000","after":"\(commit)","created":false,"deleted":false,"forced":false,
         "repository":{"id":1296269,"full_name":"octocat/specs","default_branch":"main"},"pusher":{"name":"octocat","email":"octocat@github.com"},
         "commits":[{"id":"\(commit)","message":"version 2","modified":["specs/web.yaml"]}],"head_commit":{"id":"\(commit)"}}
        """
    }

    static func gitea(ref: String = ref) -> String {
        """
        {"ref":"\(ref)","before":"28e1879d029cb852e4844d9c718537df08844e03","after":"\(commit)","compare_url":"http://localhost:3000/gitea/specs/compare/28e1879...\(commit)",
         "commits":[{"id":"\(commit)","message":"version 2","url":"http://localhost:3000/gitea/specs/commit/\(commit)"}],
         "repository":{"id":140,"full_name":"gitea/specs","default_branch":"main"},"pusher":{"login":"gitea"},"sender":{"login":"gitea"}}
        """
    }

    static func gitlab(ref: String = ref) -> String {
        """
        {"object_kind":"push","event_name":"push","before":"95790bf891e76fee5e1747ab589903a6a1f80f22","after":"\(commit)","ref":"\(ref)",
         "ref_protected":true,"checkout_sha":"\(commit)","user_username":"jsmith","project_id":15,
         "project":{"id":15,"name":"Specs","path_with_namespace":"mike/specs","default_branch":"main"},"total_commits_count":1}
        """
    }

    static func bitbucketCloud(branch: String = "main") -> String {
        """
        {"actor":{"display_name":"Emma"},"repository":{"full_name":"team/specs","type":"repository"},
         "push":{"changes":[{"new":{"type":"branch","name":"\(branch)","target":{"type":"commit","hash":"\(commit)"}},
                             "old":{"type":"branch","name":"\(branch)","target":{"type":"commit","hash":"1e65c05c1d5171631d92438a13901ca7dae9618c"}},
                             "created":false,"forced":false,"closed":false}]}}
        """
    }

    static func bitbucketServer(ref: String = ref) -> String {
        """
        {"eventKey":"repo:refs_changed","date":"2017-09-19T09:58:11+1000","actor":{"name":"admin"},
         "repository":{"slug":"specs","project":{"key":"PROJ"}},
         "changes":[{"ref":{"id":"\(ref)","displayId":"main","type":"BRANCH"},"refId":"\(ref)",
                     "fromHash":"ecddabb624f6f5ba43816f5926e580a5f680a932","toHash":"\(commit)","type":"UPDATE"}]}
        """
    }

    /// Each provider's delivery, as it signs it.
    static func deliveries(ref: String = ref) -> [(String, [(String, String)], String)] {
        let branch = String(ref.dropFirst("refs/heads/".count))
        let github = github(ref: ref), gitea = gitea(ref: ref), gitlab = gitlab(ref: ref)
        let cloud = bitbucketCloud(branch: branch), server = bitbucketServer(ref: ref)
        return [
            ("github", [("X-GitHub-Event", "push"), ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
                        ("X-Hub-Signature-256", "sha256=" + sign(github)), ("Content-Type", "application/json")], github),
            ("gitea", [("X-Gitea-Event", "push"), ("X-GitHub-Event", "push"), ("X-Gitea-Signature", sign(gitea)), ("Content-Type", "application/json")], gitea),
            ("gitlab", [("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", String(decoding: secret, as: UTF8.self)), ("Content-Type", "application/json")], gitlab),
            ("bitbucket", [("X-Event-Key", "repo:push"), ("X-Hub-Signature", "sha256=" + sign(cloud)), ("Content-Type", "application/json")], cloud),
            ("bitbucket", [("X-Event-Key", "repo:refs_changed"), ("X-Hub-Signature", "sha256=" + sign(server)), ("Content-Type", "application/json; charset=utf-8")], server),
        ]
    }

    @Test func aSignedPushToTheRefIsAFetchFromEveryProvider() {
        for (provider, headers, body) in Self.deliveries() {
            let verdict = GitWebhook.judge(headers: headers, body: Array(body.utf8), secret: Self.secret, ref: Self.ref)
            #expect(verdict.status == 202 && verdict.outcome == .fetch, "\(provider): \(verdict)")
            #expect(verdict.provider == provider && verdict.ref == Self.ref && verdict.commit == Self.commit, "\(provider): \(verdict)")
        }
    }

    @Test func aSignedPushToAnotherRefIsIgnored() {
        for (provider, headers, body) in Self.deliveries(ref: "refs/heads/feature") {
            let verdict = GitWebhook.judge(headers: headers, body: Array(body.utf8), secret: Self.secret, ref: Self.ref)
            #expect(verdict.status == 202 && verdict.outcome == .ignored && verdict.ref == "refs/heads/feature", "\(provider): \(verdict)")
        }
        let ping = #"{"zen":"Keep it logically awesome.","hook_id":1}"#
        let verdict = GitWebhook.judge(headers: [("X-GitHub-Event", "ping"), ("X-Hub-Signature-256", "sha256=" + Self.sign(ping))],
                                       body: Array(ping.utf8), secret: Self.secret, ref: Self.ref)
        #expect(verdict.status == 202 && verdict.outcome == .ignored && verdict.detail.contains("ping"))
    }

    @Test func aWrongOrMissingSignatureOrAnEditedBodyIsRefused() {
        for (provider, headers, body) in Self.deliveries() {
            // Signed with another secret.
            let wrong = GitWebhook.judge(headers: headers, body: Array(body.utf8), secret: Array("another secret".utf8), ref: Self.ref)
            #expect(wrong.status == 401 && wrong.outcome == .refused, "\(provider) wrong secret: \(wrong)")
            // The signature header left out.
            let bare = headers.filter { !["x-hub-signature-256", "x-hub-signature", "x-gitea-signature", "x-gitlab-token"].contains($0.0.lowercased()) }
            let missing = GitWebhook.judge(headers: bare, body: Array(body.utf8), secret: Self.secret, ref: Self.ref)
            #expect(missing.status == 401 && missing.outcome == .refused && missing.detail.contains("no "), "\(provider) missing: \(missing)")
            // A replayed body with another ref under the original signature (GitLab's token
            // signs nothing: its body is believed once the token matches).
            guard provider != "gitlab" else { continue }
            let edited = body.replacingOccurrences(of: "main", with: "release")
            let replayed = GitWebhook.judge(headers: headers, body: Array(edited.utf8), secret: Self.secret, ref: "refs/heads/release")
            #expect(replayed.status == 401 && replayed.outcome == .refused && replayed.ref.isEmpty, "\(provider) replayed: \(replayed)")
        }
        let none = GitWebhook.judge(headers: [("Content-Type", "application/json")], body: Array(Self.github().utf8), secret: Self.secret, ref: Self.ref)
        #expect(none.status == 401 && none.provider.isEmpty)
        let sha1 = GitWebhook.judge(headers: [("X-GitHub-Event", "push"), ("X-Hub-Signature", "sha1=" + String(repeating: "0", count: 40))],
                                    body: Array(Self.github().utf8), secret: Self.secret, ref: Self.ref)
        #expect(sha1.status == 401, "GitHub's SHA-1 header alone is not enough")
        let garbage = GitWebhook.judge(headers: [("X-GitHub-Event", "push"), ("X-Hub-Signature-256", "sha256=zz")], body: [], secret: Self.secret, ref: Self.ref)
        #expect(garbage.status == 401 && garbage.detail.contains("64 hex"))
    }

    @Test func formEncodedAndUnreadableBodies() {
        let json = Self.github()
        let form = "payload=" + json.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        let verdict = GitWebhook.judge(headers: [("X-GitHub-Event", "push"), ("X-Hub-Signature-256", "sha256=" + Self.sign(form)),
                                                 ("Content-Type", "application/x-www-form-urlencoded")],
                                       body: Array(form.utf8), secret: Self.secret, ref: Self.ref)
        #expect(verdict.outcome == .fetch && verdict.commit == Self.commit, "\(verdict)")
        let text = "not json"
        let unreadable = GitWebhook.judge(headers: [("X-GitHub-Event", "push"), ("X-Hub-Signature-256", "sha256=" + Self.sign(text))],
                                          body: Array(text.utf8), secret: Self.secret, ref: Self.ref)
        #expect(unreadable.status == 400 && unreadable.outcome == .ignored)
    }
}
