//! authgate against a real, independent OpenID provider: panva's certified
//! `oidc-provider` (npm, pinned in tests/oidc-provider/package.json;
//! `scripts/test-deps.sh` installs it), run by node. Discovery, key rotation
//! through the provider, its client-credentials JWTs, and introspection of
//! its opaque tokens, active and revoked.

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use crate::private_ca::PrivateCa;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The provider as a child process; killed when dropped.
struct OidcProvider {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    issuer: String,
    /// Sent with every request when the provider requires a header.
    header: Option<(String, String)>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl OidcProvider {
    /// Starts it publishing `kids` (each an RSA key it generates); with
    /// `tls` (certificate, key, CA) on https://localhost.
    async fn start(
        kids: &[&str],
        tls: Option<(&str, &str, &str)>,
        header: Option<(&str, &str)>,
    ) -> Self {
        let root = repo_root().join("tests/oidc-provider");
        assert!(
            root.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed: run `npm ci --prefix tests/oidc-provider` (scripts/test-deps.sh does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = json!({ "keys": kids });
        if let Some((cert, key, _)) = tls {
            cfg["tls"] = json!({"cert": cert, "key": key});
        }
        if let Some((name, value)) = header {
            cfg["requiredHeader"] = json!([name, value]);
        }
        let cfg_path = dir.path().join("provider.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let mut child = tokio::process::Command::new("node")
            .arg(root.join("server.mjs"))
            .arg(&cfg_path)
            .current_dir(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed (scripts/test-deps.sh installs it)");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the provider did not start in 30 s")
            .unwrap()
            .expect("the provider exited");
        let port: u16 = ready
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected first line {ready:?}"))
            .parse()
            .unwrap();
        let mut http = reqwest::Client::builder();
        if let Some((_, _, ca)) = tls {
            http =
                http.tls_certs_only(vec![reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()]);
        }
        let issuer = match tls {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        OidcProvider {
            child,
            stdin,
            lines,
            issuer,
            header: header.map(|(n, v)| (n.to_owned(), v.to_owned())),
            http: http.build().unwrap(),
            _dir: dir,
        }
    }

    /// Publishes `kids` from now on; the first signs new tokens.
    async fn rotate(&mut self, kids: &[&str]) {
        let line = format!("KEYS {}\n", json!(kids));
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        loop {
            let answer = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
                .await
                .expect("no KEYS OK in 30 s")
                .unwrap()
                .expect("the provider exited");
            if answer == "KEYS OK" {
                return;
            }
        }
    }

    async fn post(&self, path: &str, form: &[(&str, &str)], client: (&str, &str)) -> Value {
        let mut req = self
            .http
            .post(format!("{}{path}", self.issuer))
            .basic_auth(client.0, Some(client.1))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish(),
            );
        if let Some((n, v)) = &self.header {
            req = req.header(n.as_str(), v.as_str());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A client-credentials token for `hasura-app`: a JWT for the Hasura
    /// resource (`aud: hasura`), opaque without one.
    async fn token(&self, jwt: bool) -> String {
        let mut form = vec![("grant_type", "client_credentials")];
        if jwt {
            form.push(("resource", "urn:authgate:hasura"));
        }
        let v = self
            .post("/token", &form, ("hasura-app", "app-secret"))
            .await;
        v["access_token"].as_str().unwrap().to_owned()
    }

    async fn revoke(&self, token: &str) {
        self.post(
            "/token/revocation",
            &[("token", token), ("token_type_hint", "access_token")],
            ("hasura-app", "app-secret"),
        )
        .await;
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn kid_of(jwt: &str) -> String {
    use base64::Engine as _;
    let head = jwt.split('.').next().unwrap();
    let v: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .unwrap(),
    )
    .unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

async fn decide(server: &TestServer, token: &str, mode: &str) -> Outcome {
    outcome(
        &server
            .check(&[
                ("authorization", &format!("Bearer {token}")),
                ("x-rely-auth-id", mode),
            ])
            .await,
    )
}

const CLAIMS: &str = r#"claimsConfig: {namespace: {location: '"https://hasura.io/jwt/claims"'}}"#;

/// jwt mode with `oidcIssuer`, the provider on TLS from a private CA and
/// wanting a header: discovery, its client-credentials JWTs, and a key
/// rotation done by the provider (the new kid is fetched on first sight).
#[tokio::test]
async fn provider_jwts_verify_through_discovery_and_rotation() {
    let ca = PrivateCa::new();
    let (server_cert, server_key) = ca.sign("localhost");
    let (cert, key, ca_pem) = (server_cert.pem(), server_key.serialize_pem(), ca.pem());
    let mut idp = OidcProvider::start(
        &["a"],
        Some((&cert, &key, &ca_pem)),
        Some(("x-idp-key", "k3y")),
    )
    .await;
    let issuer = idp.issuer.clone();
    let mode = |id: &str, headers: &str| {
        format!(
            r#"
    - id: {id}
      mode: jwt
      key:
        oidcIssuer: {{value: "{issuer}"}}
        httpClient:
          tls: {{rootCAPem: {ca}}}
          {headers}
      audience: hasura
      {CLAIMS}"#,
            ca = serde_json::to_string(&ca_pem).unwrap(),
        )
    };
    let server = TestServer::start(&format!(
        "definition:\n  modes:{}\n",
        mode("idp", "headers: {x-idp-key: {value: k3y}}")
    ))
    .await;
    server.wait_ready().await;

    let first = idp.token(true).await;
    assert_eq!(kid_of(&first), "a");
    let o = decide(&server, &first, "idp").await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.headers["x-hasura-role"], "service");
    assert_eq!(o.headers["x-hasura-user-id"], "hasura-app");

    // The provider's documented rotation: publish the new key first, then
    // sign with it.
    idp.rotate(&["b", "a"]).await;
    let second = idp.token(true).await;
    assert_eq!(kid_of(&second), "b");
    let o = decide(&server, &second, "idp").await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(decide(&server, &first, "idp").await.code, 0);

    // An opaque token is no JWT; a JWT from the provider's key with its
    // signature altered is refused.
    let opaque = idp.token(false).await;
    assert_eq!(decide(&server, &opaque, "idp").await.http_status, 401);
    let mut forged = second.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(decide(&server, &forged, "idp").await.http_status, 401);

    // Without the header, the provider refuses discovery: never ready.
    let without = TestServer::start(&format!("definition:\n  modes:{}\n", mode("idp", ""))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = reqwest::get(without.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap();
    assert!(why.contains("401"), "{why}");
    let o = decide(&without, &second, "idp").await;
    assert_eq!(
        (o.http_status, o.reason().as_str()),
        (503, "internal_error")
    );
}

/// introspection mode against the provider: its opaque tokens allowed with
/// the Hasura claims it returns (basic and post client authentication),
/// refused once revoked (unless an answer is cached), an unknown token
/// refused, a wrong client secret an `internal_error`.
#[tokio::test]
async fn provider_opaque_tokens_are_introspected() {
    let idp = OidcProvider::start(&["a"], None, None).await;
    let mode = |id: &str, client: &str, secret: &str, extra: &str| {
        format!(
            r#"
    - id: {id}
      mode: introspection
      introspection:
        oidcIssuer: {{value: "{issuer}"}}
        clientId: {{value: {client}}}
        clientSecret: {{value: {secret}}}
        {extra}
      {CLAIMS}"#,
            issuer = idp.issuer
        )
    };
    let config = format!(
        "definition:\n  modes:{}{}{}{}\n",
        mode("basic", "authgate", "introspect-secret", "cacheTtl: 0"),
        mode(
            "post",
            "authgate-post",
            "introspect-post-secret",
            "{authMethod: client_secret_post, cacheTtl: 0}"
                .trim_matches(['{', '}'])
                .replace(", ", "\n        ")
                .as_str()
        ),
        mode("cached", "authgate", "introspect-secret", ""),
        mode("wrong", "authgate", "not-the-secret", "cacheTtl: 0"),
    );
    let server = TestServer::start(&config).await;
    server.wait_ready().await;

    let token = idp.token(false).await;
    for id in ["basic", "post", "cached"] {
        let o = decide(&server, &token, id).await;
        assert_eq!(o.code, 0, "{id}: {o:?}");
        assert_eq!(o.headers["x-hasura-role"], "service", "{id}");
        assert_eq!(o.headers["x-hasura-user-id"], "hasura-app", "{id}");
    }
    let o = decide(&server, &token, "wrong").await;
    assert_eq!(
        (o.http_status, o.reason().as_str()),
        (503, "internal_error"),
        "{o:?}"
    );
    let o = decide(&server, "not-a-token-the-provider-issued", "basic").await;
    assert_eq!((o.http_status, o.reason().as_str()), (401, "invalid_token"));

    idp.revoke(&token).await;
    for id in ["basic", "post"] {
        let o = decide(&server, &token, id).await;
        assert_eq!(
            (o.http_status, o.reason().as_str()),
            (401, "invalid_token"),
            "{id}"
        );
    }
    // The documented trade: a cached active answer holds for cacheTtl.
    assert_eq!(decide(&server, &token, "cached").await.code, 0);
    // A fresh token, never cached, is refused by the same mode once revoked.
    let other = idp.token(false).await;
    idp.revoke(&other).await;
    assert_eq!(decide(&server, &other, "cached").await.http_status, 401);
}
