//! Elevated access end to end: real WebAuthn ceremonies with a software
//! authenticator (`webauthn-authenticator-rs` SoftPasskey) against the HTTP
//! endpoints, grants checked by the gRPC and HTTP front doors.

use crate::common;

use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::prelude::Url;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse};

const ORIGIN: &str = "https://app.example.com";

fn config(mode: &str, db: &std::path::Path, extra: &str) -> String {
    hs256_config(&format!(
        r#"  elevation:
    mode: {mode}
    routes:
      - {{methods: [POST], path: /v1/user/password}}
      - {{pathPrefix: /v1/user/}}
    webauthn: {{rpId: example.com, rpName: Example, origins: ["{ORIGIN}"]}}
    grant: {{ttl: 900}}
    store: {{url: "sqlite://{}"}}
{extra}"#,
        db.display()
    ))
}

fn token_for(user: &str) -> String {
    mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims(user, &["user"], "user"),
        None,
    )
}

struct Api<'a> {
    server: &'a TestServer,
    client: reqwest::Client,
}

impl<'a> Api<'a> {
    fn new(server: &'a TestServer) -> Self {
        Api {
            server,
            client: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        grant: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut rb = self
            .client
            .request(method.parse().unwrap(), self.server.http_url(path))
            .bearer_auth(token);
        if let Some(g) = grant {
            rb = rb.header("x-elevation-token", g);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v, headers)
    }

    /// The registration ceremony; returns the verify answer.
    async fn register(
        &self,
        token: &str,
        grant: Option<&str>,
        auth: &mut SoftPasskey,
        origin: &str,
    ) -> (u16, Value) {
        let (status, options, _) = self
            .call(
                "POST",
                "/user/webauthn/add",
                token,
                grant,
                Some(json!({"nickname": "yubi"})),
            )
            .await;
        if status != 200 {
            return (status, options);
        }
        assert!(options["publicKey"]["challenge"].is_string(), "{options}");
        let options: CreationChallengeResponse = serde_json::from_value(options).unwrap();
        let credential = auth
            .do_registration(Url::parse(origin).unwrap(), options)
            .expect("the soft authenticator registers");
        let (status, body, _) = self
            .call(
                "POST",
                "/user/webauthn/verify",
                token,
                grant,
                Some(json!({"credential": serde_json::to_value(&credential).unwrap()})),
            )
            .await;
        (status, body)
    }

    /// Starts a step-up and returns the assertion JSON (not yet sent).
    async fn assertion(&self, token: &str, auth: &mut SoftPasskey) -> Value {
        let (status, options, _) = self
            .call("POST", "/elevate/webauthn", token, None, Some(json!({})))
            .await;
        assert_eq!(status, 200, "{options}");
        let options: RequestChallengeResponse = serde_json::from_value(options).unwrap();
        let credential = auth
            .do_authentication(Url::parse(ORIGIN).unwrap(), options)
            .expect("the soft authenticator signs");
        serde_json::to_value(&credential).unwrap()
    }

    async fn finish(&self, token: &str, assertion: &Value) -> (u16, Value) {
        let (status, body, _) = self
            .call(
                "POST",
                "/elevate/webauthn/verify",
                token,
                None,
                Some(json!({"credential": assertion})),
            )
            .await;
        (status, body)
    }

    async fn elevate(&self, token: &str, auth: &mut SoftPasskey) -> String {
        let a = self.assertion(token, auth).await;
        let (status, body) = self.finish(token, &a).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["expiresIn"].as_i64().unwrap() > 0 && body["expiresIn"].as_i64().unwrap() <= 900
        );
        body["elevationToken"].as_str().unwrap().to_owned()
    }
}

/// A Check for `method path` with the token and an optional grant.
async fn check(
    server: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    grant: Option<&str>,
) -> Outcome {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(g) = grant {
        headers.push(("x-elevation-token", g));
    }
    let mut req = check_request(&headers, path);
    req.attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
        .method = method.into();
    outcome(&server.check_request(req).await)
}

fn assert_elevation_required(o: &Outcome) {
    assert_eq!((o.code, o.http_status), (16, 401), "{o:?}");
    assert_eq!(
        o.headers["www-authenticate"],
        "Bearer error=\"insufficient_user_authentication\""
    );
    assert_eq!(
        o.body,
        r#"{"error":"elevation_required","message":"elevated access required"}"#
    );
}

#[tokio::test]
async fn required_mode_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config("required", &dir.path().join("a.db"), "")).await;
    let api = Api::new(&server);
    let user = "user-42"; // not a UUID: mapped to a v5 UUID user handle
    let token = token_for(user);
    let mut key1 = SoftPasskey::new(true);

    // Protected routes need elevation; others do not, and never see the header.
    assert_elevation_required(&check(&server, "POST", "/v1/user/password", &token, None).await);
    let o = check(&server, "POST", "/v1/graphql", &token, None).await;
    assert_eq!(o.code, 0);
    assert!(!o.headers.contains_key("x-hasura-auth-elevated"));

    // The first key needs no elevation.
    let (status, body) = api.register(&token, None, &mut key1, ORIGIN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["nickname"], "yubi");
    // A second one does.
    let mut key2 = SoftPasskey::new(true);
    let (status, body) = api.register(&token, None, &mut key2, ORIGIN).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "elevation_required");

    // Elevate; the grant opens the protected route for this token.
    let grant = api.elevate(&token, &mut key1).await;
    let o = check(&server, "POST", "/v1/user/password", &token, Some(&grant)).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.headers["x-hasura-auth-elevated"], user);
    assert_eq!(o.metadata["elevated"], "true");
    // ... also from a cookie, and on /check.
    let resp = reqwest::Client::new()
        .get(server.http_url("/check"))
        .bearer_auth(&token)
        .header("x-original-uri", "/v1/user/email?x=1")
        .header("x-original-method", "GET")
        .header("cookie", format!("theme=1; x-elevation-token={grant}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-hasura-auth-elevated"], user);
    // Not for a renewed access token, not for another user.
    std::thread::sleep(Duration::from_millis(1100));
    let renewed = token_for(user);
    assert_ne!(renewed, token);
    assert_elevation_required(
        &check(&server, "POST", "/v1/user/password", &renewed, Some(&grant)).await,
    );
    assert_elevation_required(
        &check(
            &server,
            "POST",
            "/v1/user/password",
            &token_for("other"),
            Some(&grant),
        )
        .await,
    );
    // A forged grant.
    let mut forged = grant.clone();
    forged.pop();
    forged.push(if grant.ends_with('A') { 'B' } else { 'A' });
    assert_elevation_required(
        &check(&server, "POST", "/v1/user/password", &token, Some(&forged)).await,
    );

    // With the grant, a second key can be added.
    let (status, body) = api.register(&token, Some(&grant), &mut key2, ORIGIN).await;
    assert_eq!(status, 200, "{body}");
    let (status, list, _) = api.call("GET", "/user/webauthn", &token, None, None).await;
    assert_eq!(status, 200);
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{list}");
    assert!(keys[0]["createdAt"].as_str().unwrap().ends_with('Z'));
    // Deleting always needs elevation.
    let id = keys[1]["id"].as_str().unwrap().to_owned();
    let (status, _, headers) = api
        .call(
            "DELETE",
            &format!("/user/webauthn/{id}"),
            &token,
            None,
            None,
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"insufficient_user_authentication\""
    );
    let (status, _, _) = api
        .call(
            "DELETE",
            &format!("/user/webauthn/{id}"),
            &token,
            Some(&grant),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, _, _) = api
        .call(
            "DELETE",
            &format!("/user/webauthn/{id}"),
            &token,
            Some(&grant),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // The grant verifies with the published key.
    let jwks: Value = reqwest::get(server.http_url("/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
    v.set_audience(&["authgate-elevation"]);
    let data = jsonwebtoken::decode::<Value>(
        &grant,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &v,
    )
    .unwrap();
    assert_eq!(data.claims["sub"], user);
    assert!(data.claims["jti"].is_string() && data.claims["ath"].is_string());

    let m = server.metrics().await;
    assert!(
        m.contains(r#"authgate_elevation_ceremonies_total{result="ok",step="register"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"authgate_elevation_ceremonies_total{result="ok",step="verify"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"authgate_elevation_failures_total{reason="mismatch"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn ceremonies_refuse_replays_forgeries_wrong_origins_and_expired_challenges() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(
        "required",
        &dir.path().join("b.db"),
        // Expiry is kept in whole seconds: a 1 s challenge could expire at
        // once (flaky on a loaded machine); 2 s leaves at least one.
        "    challengeTtl: 2\n",
    ))
    .await;
    let api = Api::new(&server);
    let token = token_for("4b1ab1b5-8d5a-4a8e-9d61-2f4c9c0e6f11");
    let mut key = SoftPasskey::new(true);
    // A registration answered from another origin (clientDataJSON rewritten,
    // as a phishing page's browser would report it).
    let (_, options, _) = api
        .call("POST", "/user/webauthn/add", &token, None, Some(json!({})))
        .await;
    let options: CreationChallengeResponse = serde_json::from_value(options).unwrap();
    let credential = key
        .do_registration(Url::parse(ORIGIN).unwrap(), options)
        .unwrap();
    let mut credential = serde_json::to_value(&credential).unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let cdj = base64::Engine::decode(
        &b64,
        credential["response"]["clientDataJSON"].as_str().unwrap(),
    )
    .unwrap();
    let mut cd: Value = serde_json::from_slice(&cdj).unwrap();
    cd["origin"] = json!("https://evil.example.net");
    credential["response"]["clientDataJSON"] = json!(base64::Engine::encode(&b64, cd.to_string()));
    let (status, body, _) = api
        .call(
            "POST",
            "/user/webauthn/verify",
            &token,
            None,
            Some(json!({"credential": credential})),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "ceremony_failed");
    let mut key = SoftPasskey::new(true);
    let (status, body) = api.register(&token, None, &mut key, ORIGIN).await;
    assert_eq!(status, 200, "{body}");

    // A replayed assertion: the challenge is single-use.
    let a = api.assertion(&token, &mut key).await;
    assert_eq!(api.finish(&token, &a).await.0, 200);
    let (status, body) = api.finish(&token, &a).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_challenge"))
    );
    // A forged signature.
    let mut a = api.assertion(&token, &mut key).await;
    let sig = a["response"]["signature"].as_str().unwrap().to_owned();
    let mut bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &sig).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    a["response"]["signature"] = json!(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        bytes
    ));
    let (status, body) = api.finish(&token, &a).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("ceremony_failed")),
        "{body}"
    );
    // Another user cannot finish this user's challenge.
    let a = api.assertion(&token, &mut key).await;
    let (status, _) = api.finish(&token_for("someone-else"), &a).await;
    assert_eq!(status, 400);
    // An expired challenge.
    let a = api.assertion(&token, &mut key).await;
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (status, body) = api.finish(&token, &a).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_challenge"))
    );
    // Malformed bodies are 400s.
    let (status, _, _) = api
        .call(
            "POST",
            "/elevate/webauthn/verify",
            &token,
            None,
            Some(json!({"credential": {"id": 1}})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _, _) = api
        .call(
            "POST",
            "/user/webauthn/verify",
            &token,
            None,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 400);
    // Without a token: the pipeline's denial.
    let resp = reqwest::Client::new()
        .post(server.http_url("/elevate/webauthn"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn recommended_disabled_nhost_claims_and_path_tricks() {
    let dir = tempfile::tempdir().unwrap();
    // recommended: only users with a key must elevate.
    let server = TestServer::start(&config("recommended", &dir.path().join("c.db"), "")).await;
    let api = Api::new(&server);
    let token = token_for("rec-user");
    assert_eq!(
        check(&server, "POST", "/v1/user/password", &token, None)
            .await
            .code,
        0
    );
    let mut key = SoftPasskey::new(true);
    assert_eq!(api.register(&token, None, &mut key, ORIGIN).await.0, 200);
    assert_elevation_required(&check(&server, "POST", "/v1/user/password", &token, None).await);
    let grant = api.elevate(&token, &mut key).await;
    assert_eq!(
        check(&server, "POST", "/v1/user/password", &token, Some(&grant))
            .await
            .code,
        0
    );

    // Path normalization: no spelling escapes the rule; dot segments have
    // no single reading and are refused.
    for path in [
        "/v1//user/password",
        "/v1/%75ser/password",
        "/v1/user%2Fpassword",
        "/v1/user/password?next=/",
        "/v1\\user\\password",
    ] {
        assert_elevation_required(&check(&server, "POST", path, &token, None).await);
    }
    for path in ["/v1/user/./password", "/v1/x/../user/password"] {
        let o = check(&server, "POST", path, &token, None).await;
        assert_eq!((o.code, o.http_status), (3, 400), "{path}: {o:?}");
    }
    // Envoy per-route context_extensions.
    let auth = format!("Bearer {token}");
    let mut req = check_request(&[("authorization", &auth)], "/anything");
    req.attributes
        .as_mut()
        .unwrap()
        .context_extensions
        .insert("elevation".into(), "required".into());
    assert_elevation_required(&outcome(&server.check_request(req).await));

    // nhost-style elevated tokens pass without a grant.
    let mut claims = hasura_claims("rec-user", &["user"], "user");
    claims["claims.jwt.hasura.io"]["x-hasura-auth-elevated"] = json!("rec-user");
    let nhost = mint(Algorithm::HS256, SECRET, claims, None);
    let o = check(&server, "POST", "/v1/user/password", &nhost, None).await;
    assert_eq!(
        (o.code, o.headers["x-hasura-auth-elevated"].as_str()),
        (0, "rec-user")
    );
    server.running.shutdown().await;

    // disabled: never required, even for a user with keys (same store).
    let server = TestServer::start(&config("disabled", &dir.path().join("c.db"), "")).await;
    let o = check(&server, "POST", "/v1/user/password", &token, None).await;
    assert_eq!(o.code, 0, "{o:?}");
}

#[test]
fn elevation_config_errors() {
    let err = authgate::config::parse(
        r#"
definition:
  modes: [{mode: noAuth, sessionVariables: {x-hasura-role: {value: a}}}]
  elevation:
    mode: sometimes
    routes: [{path: relative}, {methods: [GET]}]
    webauthn: {rpId: example.com, origins: ["https://evil.org"]}
    grant: {ttl: 0, signingKey: {algorithm: HS256, key: {value: x}}}
    store: {url: "mysql://x"}
"#,
        &|_: &str| None,
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "definition.elevation.mode: unknown mode `sometimes`",
        "definition.elevation.routes[0]: paths start with `/`",
        "definition.elevation.routes[1]: set `path` or `pathPrefix`",
        "definition.elevation.webauthn.origins[0]: origin host `evil.org` is not `example.com`",
        "definition.elevation.grant.ttl: must be at least 1 second",
        "definition.elevation.grant.signingKey.algorithm: grants are signed with an asymmetric key",
        "definition.elevation.store.url: expected a sqlite:// or postgres:// URL",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

/// Two replicas on one PostgreSQL store with one grant key: a ceremony begun
/// on one finishes on the other, and the grant works on both.
#[tokio::test]
async fn replicas_share_ceremonies_through_postgres() {
    let url = postgres_url();
    let key = serde_json::to_string(&fixture("ec256.key")).unwrap();
    let cfg = hs256_config(&format!(
        r#"  elevation:
    mode: required
    routes: [{{pathPrefix: /v1/user/}}]
    webauthn: {{rpId: example.com, origins: ["{ORIGIN}"]}}
    grant: {{ttl: 600, signingKey: {{algorithm: ES256, key: {{value: {key}}}}}}}
    store: {{url: "{url}"}}
"#
    ));
    let a = TestServer::start(&cfg).await;
    let b = TestServer::start(&cfg).await;
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    // A fresh user per run: the database outlives the test.
    let user = format!("replica-{}", uuid::Uuid::new_v4());
    let token = token_for(&user);
    let mut key = SoftPasskey::new(true);
    // Registration begun on A, finished on B.
    let (status, options, _) = api_a
        .call("POST", "/user/webauthn/add", &token, None, Some(json!({})))
        .await;
    assert_eq!(status, 200, "{options}");
    let options: CreationChallengeResponse = serde_json::from_value(options).unwrap();
    let credential = key
        .do_registration(Url::parse(ORIGIN).unwrap(), options)
        .unwrap();
    let (status, body, _) = api_b
        .call(
            "POST",
            "/user/webauthn/verify",
            &token,
            None,
            Some(json!({"credential": credential})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Step-up begun on B, finished on A; the grant opens routes on both.
    let assertion = api_b.assertion(&token, &mut key).await;
    let (status, body) = api_a.finish(&token, &assertion).await;
    assert_eq!(status, 200, "{body}");
    let grant = body["elevationToken"].as_str().unwrap().to_owned();
    for server in [&a, &b] {
        let o = check(server, "POST", "/v1/user/email", &token, Some(&grant)).await;
        assert_eq!(o.code, 0, "{o:?}");
        assert_eq!(o.headers["x-hasura-auth-elevated"], user);
    }
    let (status, list, _) = api_b
        .call("GET", "/user/webauthn", &token, None, None)
        .await;
    assert_eq!(
        (status, list["keys"].as_array().map(Vec::len)),
        (200, Some(1))
    );
}

/// The browser client, as a page loads it: the repository's file, revalidated
/// by its ETag, importable from any origin, never sniffed as something else.
#[tokio::test]
async fn the_browser_client_is_served_with_a_validator() {
    let server = TestServer::start(&hs256_config("")).await;
    let client = reqwest::Client::new();
    let url = server.http_url("/elevation/client.js");
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["access-control-allow-origin"], "*");
    let etag = h["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
    let body = resp.text().await.unwrap();
    let file = std::fs::read_to_string(repo_root().join("clients/elevation/client.js")).unwrap();
    assert_eq!(body, file);
    assert!(body.contains("export class ElevationClient"));

    for tag in [etag.clone(), format!("W/{etag}"), format!("\"x\", {etag}")] {
        let resp = client
            .get(&url)
            .header("if-none-match", &tag)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 304, "{tag}");
        assert_eq!(resp.headers()["etag"], etag.as_str());
        assert!(resp.text().await.unwrap().is_empty());
    }
    let resp = client
        .get(&url)
        .header("if-none-match", "\"another\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// The browser client's types, checked by TypeScript's own compiler (npm,
/// pinned in tests/oidc-provider): `client.d.ts` holds for an app that uses
/// it (`tests/clients/elevation.ts`), and `client.js` type-checks against
/// the DOM's WebAuthn and fetch types and its own JSDoc.
#[test]
fn the_browser_clients_types_compile() {
    let root = repo_root();
    let tsc = root.join("tests/oidc-provider/node_modules/typescript/bin/tsc");
    assert!(
        tsc.exists(),
        "{} not found: run `npm ci --prefix tests/oidc-provider` (scripts/test-deps.sh does)",
        tsc.display()
    );
    for project in ["tests/clients", "tests/clients/tsconfig.js.json"] {
        let out = std::process::Command::new("node")
            .arg(&tsc)
            .args(["-p", project])
            .current_dir(&root)
            .output()
            .expect("node runs");
        assert!(
            out.status.success(),
            "tsc -p {project}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
