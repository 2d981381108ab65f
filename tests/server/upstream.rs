//! Upstream tokens and configured dynamic metadata: the token authgate signs
//! on an allow is verified by jose (npm, run by node) against the JWKS the
//! server publishes; it carries the decided session in Hasura's claims
//! format, never outlives the caller's token, replaces the caller's header,
//! is kept with the token-cache entry, and a replaced key stays published.

use std::path::PathBuf;
use std::sync::Arc;

use crate::common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const NS: &str = "https://hasura.io/jwt/claims";
const ISSUER: &str = "https://authgate.test";

fn config(key_file: &str, alg: &str) -> String {
    let pem = fixture(key_file).replace('\n', "\\n");
    hs256_config(&format!(
        r#"    - id: svc
      mode: apiKey
      tokenLocation: {{in: header, name: X-Api-Key}}
      value: {{value: service-key-0123456789}}
      sessionVariables: {{x-hasura-role: {{value: service}}, x-hasura-org-id: {{value: "7"}}}}
  upstreamToken:
    algorithm: {alg}
    signingKey: {{value: "{pem}"}}
    issuer: {ISSUER}
    audience: hasura
    ttl: 300
  dynamicMetadata:
    tenant: x-hasura-org-id
    user: x-hasura-user-id"#
    ))
}

/// A caller's token expiring `exp_in` seconds from now, and its `exp`.
fn caller_with_exp(exp_in: i64) -> (String, i64) {
    let mut claims = hasura_claims("u1", &["user", "editor"], "user");
    claims["claims.jwt.hasura.io"]["x-hasura-org-id"] = json!("acme");
    let exp = now() + exp_in;
    claims["exp"] = json!(exp);
    (mint(Algorithm::HS256, SECRET, claims, None), exp)
}

fn caller(exp_in: i64) -> String {
    caller_with_exp(exp_in).0
}

/// What jose says of each token, verified against `jwks_url`.
async fn jose(jwks_url: &str, tokens: &[&str]) -> Vec<Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider");
    assert!(
        root.join("node_modules/jose").is_dir(),
        "jose is not installed: run `npm ci --prefix tests/oidc-provider` (scripts/test-deps.sh does)"
    );
    let out = tokio::process::Command::new("node")
        .arg(root.join("verify-jwt.mjs"))
        .arg(jwks_url)
        .arg(ISSUER)
        .arg("hasura")
        .args(tokens)
        .output()
        .await
        .expect("node must be installed (scripts/test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn bearer(o: &Outcome) -> String {
    o.headers["authorization"]
        .strip_prefix("Bearer ")
        .expect("the upstream token in Authorization, with the Bearer scheme")
        .to_owned()
}

#[tokio::test]
async fn upstream_tokens_verify_with_jose_and_carry_the_decided_session() {
    let server = TestServer::start(&config("ec256.key", "ES256")).await;
    let jwks_url = server.http_url("/.well-known/jwks.json");
    let (token, caller_exp) = caller_with_exp(100);
    let auth = format!("Bearer {token}");

    // gRPC: the caller's Authorization is replaced (OVERWRITE_IF_EXISTS_OR_ADD).
    let first = outcome(&server.check(&[("authorization", &auth)]).await);
    assert_eq!(first.code, 0, "{first:?}");
    let t1 = bearer(&first);
    assert_ne!(t1, token);
    assert!(
        first
            .header_options
            .iter()
            .any(|(k, _, _, action)| k == "authorization" && *action == 2),
        "{:?}",
        first.header_options
    );
    assert_eq!(first.metadata["tenant"], "acme");
    assert_eq!(first.metadata["user"], "u1");
    // Repeats (a cache hit, then the gRPC door's memo) sign nothing new.
    for _ in 0..3 {
        let again = outcome(&server.check(&[("authorization", &auth)]).await);
        assert_eq!(bearer(&again), t1);
    }
    // Another role is another session: another token.
    let editor = outcome(
        &server
            .check(&[("authorization", &auth), ("x-hasura-role", "editor")])
            .await,
    );
    let t2 = bearer(&editor);
    assert_ne!(t2, t1);
    // A service key (no `exp` of its own): the configured ttl.
    let svc = outcome(
        &server
            .check(&[("x-api-key", "service-key-0123456789")])
            .await,
    );
    let t3 = bearer(&svc);

    // /check: the same header and the metadata as headers, for nginx.
    let http = reqwest::Client::new()
        .get(server.http_url("/check"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 200);
    assert_eq!(http.headers()["x-authgate-meta-tenant"], "acme");
    assert_eq!(http.headers()["x-authgate-meta-user"], "u1");
    let t4 = http.headers()["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();

    let mut forged: Vec<&str> = t1.split('.').collect();
    let payload = forged[1].replace('A', "B");
    forged[1] = &payload;
    let forged = forged.join(".");
    let verdicts = jose(&jwks_url, &[&t1, &t2, &t3, &t4, &forged, &token]).await;
    for v in &verdicts[..4] {
        assert_eq!(v["ok"], true, "{verdicts:?}");
        assert_eq!(v["alg"], "ES256");
        assert_eq!(v["payload"]["iss"], ISSUER);
        assert_eq!(v["payload"]["aud"], "hasura");
    }
    assert_eq!(verdicts[4]["ok"], false, "a forged token: {verdicts:?}");
    assert_eq!(verdicts[5]["ok"], false, "the caller's own token");

    let p = &verdicts[0]["payload"];
    assert_eq!(p["sub"], "u1");
    assert_eq!(
        p[NS],
        json!({
            "x-hasura-default-role": "user",
            "x-hasura-allowed-roles": ["user"],
            "x-hasura-user-id": "u1",
            "x-hasura-org-id": "acme",
        })
    );
    // Never beyond the caller's exp (100 s, under the 300 s ttl).
    assert_eq!(p["exp"].as_i64(), Some(caller_exp));
    assert_eq!(
        verdicts[1]["payload"][NS]["x-hasura-default-role"],
        "editor"
    );
    assert_eq!(
        verdicts[1]["payload"][NS]["x-hasura-allowed-roles"],
        json!(["editor"])
    );
    let s = &verdicts[2]["payload"];
    assert_eq!(s[NS]["x-hasura-default-role"], "service");
    assert_eq!(s[NS]["x-hasura-org-id"], "7");
    assert!(s.get("sub").is_none());
    assert_eq!(s["exp"].as_i64().unwrap() - s["iat"].as_i64().unwrap(), 300);

    // Discovery points verifiers at the keys.
    let d: Value = reqwest::get(server.http_url("/.well-known/openid-configuration"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["issuer"], ISSUER);
    assert_eq!(d["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["ES256"]));
}

#[tokio::test]
async fn denials_carry_no_upstream_token_and_an_expired_caller_gets_none() {
    let server = TestServer::start(&config("ed25519.key", "EdDSA")).await;
    let denied = outcome(&server.check(&[("authorization", "Bearer nope")]).await);
    assert_eq!(denied.reason(), "invalid_token");
    assert!(!denied.headers.contains_key("authorization"));
    let expired = outcome(
        &server
            .check(&[("authorization", &format!("Bearer {}", caller(-5)))])
            .await,
    );
    assert_eq!(expired.reason(), "token_expired");
    assert!(!expired.headers.contains_key("authorization"));
    // Without upstreamToken, no discovery document.
    let plain = TestServer::start(&hs256_config("")).await;
    let r = reqwest::get(plain.http_url("/.well-known/openid-configuration"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_replaced_key_stays_published_and_its_tokens_keep_verifying() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.yaml");
    std::fs::write(&path, config("ec256.key", "ES256")).unwrap();
    let cfg =
        authgate::config::parse(&std::fs::read_to_string(&path).unwrap(), &|_: &str| None).unwrap();
    let shared = authgate::server::Shared::new(cfg, Some(path.clone()))
        .await
        .unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let running = authgate::server::start(Arc::clone(&shared), any, any)
        .await
        .unwrap();
    let server = TestServer { running };
    let jwks_url = server.http_url("/.well-known/jwks.json");
    let kids = || async {
        let jwks: Value = reqwest::get(&jwks_url).await.unwrap().json().await.unwrap();
        let mut kids: Vec<String> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        kids.sort();
        kids
    };
    let auth = format!("Bearer {}", caller(600));
    let before = bearer(&outcome(&server.check(&[("authorization", &auth)]).await));
    let old_kids = kids().await;
    assert_eq!(old_kids.len(), 1);

    // Rotate to an Ed25519 key.
    std::fs::write(&path, config("ed25519.key", "EdDSA")).unwrap();
    shared.reload().await.expect("the new config loads");
    let new_kids = kids().await;
    assert_eq!(new_kids.len(), 2, "the old and the new key: {new_kids:?}");
    assert!(new_kids.contains(&old_kids[0]));
    // Within the publication lead the old key still signs; what it signed
    // before the reload verifies.
    let after = bearer(&outcome(&server.check(&[("authorization", &auth)]).await));
    let verdicts = jose(&jwks_url, &[&before, &after]).await;
    assert_eq!(verdicts[0]["ok"], true, "{verdicts:?}");
    assert_eq!(verdicts[1]["ok"], true, "{verdicts:?}");
    assert_eq!(verdicts[1]["kid"], old_kids[0].as_str());
    // A reload that changes nothing else keeps both published.
    std::fs::write(
        &path,
        config("ed25519.key", "EdDSA").replace("ttl: 300", "ttl: 200"),
    )
    .unwrap();
    shared.reload().await.expect("the new config loads");
    assert_eq!(kids().await, new_kids);
}
