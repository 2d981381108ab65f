//! The attack suite: hostile tokens, headers, paths and WebAuthn
//! payloads sent to the real server on 127.0.0.1:0, over gRPC (Envoy's
//! ext_authz protos) and HTTP, exactly as a client or a proxy would send them.
//! Every case asserts the decision (gRPC code, HTTP status and reason), and
//! where the server could be tricked into a fetch, that no fetch happened.
//! Outcomes and limits are summarised in `docs/security.md` (## Attack suite).
//!
//! Already covered elsewhere, and only extended here:
//! - `tests/server/grpc_check.rs::refused_tokens_each_with_their_reason`: RS256 config with an HS256
//!   token keyed by the public PEM, PS256 for RS256, `alg: none` / `None`, 20 KB token, `jku`
//!   with a fixed key, expired / `nbf` / `iat` / `aud` / `iss` basics.
//! - `tests/server/grpc_check.rs::spoofed_session_headers_are_overwritten_or_removed`,
//!   `header_map_input_and_non_utf8`, `control_characters_in_claims_are_a_denial`.
//! - `tests/server/jwks.rs::burst_of_unknown_kids_refetches_at_most_once`,
//!   `rotation_by_unknown_kid_refetches_once_per_cooldown`,
//!   `algorithm_beside_jwk_from_url_pins_keys_and_hmac_keys_are_ignored`.
//! - `tests/server/elevation.rs::ceremonies_refuse_replays_forgeries_wrong_origins_and_expired_challenges`
//!   (replayed and forged assertions, another user's challenge, expired challenges) and
//!   `required_mode_end_to_end` (grants for another user or a renewed token, a forged grant),
//!   `recommended_disabled_nhost_claims_and_path_tricks` (`//`, `/./`, `%75`, `%2F`, `..`, `\`).

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde_json::{Value, json};
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::prelude::Url;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse};

const ALL_ALGS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs `header.payload` given as raw JSON text (any header fields, any
/// payload shape) with a real key; the token a crafted client would send.
fn sign_parts(alg: Algorithm, key: &str, header: &str, payload: &str) -> String {
    let message = format!("{}.{}", b64(header), b64(payload));
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &encoding_key(alg, key), alg)
        .expect("test key signs");
    format!("{message}.{sig}")
}

fn sign_raw(alg: Algorithm, key: &str, header: Value, claims: &Value) -> String {
    sign_parts(alg, key, &header.to_string(), &claims.to_string())
}

/// Hasura claims for `user` (roles user/editor, default user) with `exp`.
fn claims_for(user: &str) -> Value {
    let mut c = hasura_claims(user, &["user", "editor"], "user");
    c["exp"] = json!(now() + 3600);
    c
}

fn alg_name(a: Algorithm) -> &'static str {
    authgate::keys::algorithm_name(a)
}

/// The signing key an attacker would try for `alg`: for HMAC, the
/// verifier's own (public) key text; otherwise a private key of the family
/// (the legitimate one, which tests pinning at its strictest).
fn attack_key(alg: Algorithm, verifier_key_text: &str) -> String {
    match alg.family() {
        AlgorithmFamily::Hmac => verifier_key_text.to_owned(),
        _ => private_key(alg),
    }
}

/// One jwt mode with a fixed key; `extra` lines go in the mode (6 spaces).
fn fixed_config(alg: &str, key: &str, extra: &str) -> String {
    let key = serde_json::to_string(key).unwrap();
    format!(
        r#"
definition:
  modes:
    - id: users
      mode: jwt
      key: {{algorithm: {alg}, key: {{value: {key}}}}}
{extra}      claimsConfig:
        namespace: {{location: '"claims.jwt.hasura.io"'}}
"#
    )
}

/// One jwt mode reading a remote JWKS.
fn remote_config(url: &str, key_extra: &str) -> String {
    format!(
        r#"
definition:
  modes:
    - id: idp
      mode: jwt
      key: {{jwkFromUrl: {{value: "{url}"}}{key_extra}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
"#
    )
}

fn expected_codes(reason: &str) -> (i32, i32) {
    match reason {
        "role_not_allowed" | "blocked_by_rule" => (7, 403),
        "invalid_request" => (3, 400),
        "internal_error" => (14, 503),
        _ => (16, 401),
    }
}

#[track_caller]
fn assert_denied(o: &Outcome, reason: &str, ctx: &str) {
    let (code, status) = expected_codes(reason);
    assert_eq!(
        (o.code, o.http_status, o.reason().as_str()),
        (code, status, reason),
        "{ctx}: {o:?}"
    );
    assert!(
        o.headers.keys().all(|k| !k.starts_with("x-hasura-")),
        "{ctx}: a denial carries no session header: {o:?}"
    );
}

#[track_caller]
fn assert_allowed(o: &Outcome, ctx: &str) {
    assert_eq!((o.code, o.http_status), (0, 200), "{ctx}: {o:?}");
    assert!(
        o.headers
            .get("x-hasura-role")
            .is_some_and(|r| !r.is_empty()),
        "{ctx}: an allow carries a role: {o:?}"
    );
}

async fn decide(server: &TestServer, headers: &[(&str, &str)]) -> Outcome {
    outcome(&server.check(headers).await)
}

async fn decide_token(server: &TestServer, token: &str) -> Outcome {
    decide(server, &[("authorization", &bearer(token))]).await
}

async fn decide_raw(server: &TestServer, headers: &[(&str, &[u8])]) -> Outcome {
    outcome(&server.check_request(check_request_raw(headers)).await)
}

fn with_method(mut req: CheckRequest, method: &str) -> CheckRequest {
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
    req
}

/// An HTTP call with headers appended as given (duplicates kept).
async fn http(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut map = reqwest::header::HeaderMap::new();
    for (k, v) in headers {
        map.append(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            reqwest::header::HeaderValue::from_bytes(v).unwrap(),
        );
    }
    let resp = reqwest::Client::new()
        .request(method.parse().unwrap(), server.http_url(path))
        .headers(map)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    (status, h, resp.text().await.unwrap())
}

/// A raw HTTP/1.1 exchange, for request targets a URL library would
/// normalize (`%2e%2e`) before sending.
async fn raw_http(addr: SocketAddr, request: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    })
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------
// Algorithm confusion
// ---------------------------------------------------------------------------

/// Every configured algorithm against tokens of every other algorithm: HMAC
/// tokens keyed with the verifier's public key text (PEM, JWK, certificate),
/// asymmetric tokens signed with a real key of their family (for the RSA
/// configs, the legitimate private key: only the pinned algorithm counts).
#[tokio::test]
async fn alg_confusion_every_direction_with_fixed_keys() {
    let rsa = private_key(Algorithm::RS256);
    let rsa_jwk = public_jwk(Algorithm::RS256, &rsa, "k1").to_string();
    let configs: Vec<(Algorithm, String, String)> = vec![
        (Algorithm::HS256, SECRET.into(), SECRET.into()),
        (Algorithm::HS512, SECRET.repeat(2), SECRET.repeat(2)),
        (Algorithm::RS256, fixture("rsa.pub.pem"), rsa.clone()),
        (Algorithm::RS384, fixture("rsa.pkcs1.pem"), rsa.clone()),
        (Algorithm::RS512, fixture("rsa.crt"), rsa.clone()),
        (Algorithm::RS256, rsa_jwk, rsa.clone()),
        (Algorithm::PS256, fixture("rsa.pub.pem"), rsa.clone()),
        (
            Algorithm::ES256,
            fixture("ec256.pub.pem"),
            fixture("ec256.key"),
        ),
        (
            Algorithm::ES384,
            fixture("ec384.pub.pem"),
            fixture("ec384.key"),
        ),
        (
            Algorithm::EdDSA,
            fixture("ed25519.pub.pem"),
            fixture("ed25519.key"),
        ),
    ];
    for (alg, verifying, signing) in configs {
        let name = alg_name(alg);
        let server = TestServer::start(&fixed_config(name, &verifying, "")).await;
        // Control: the configured algorithm and key verify.
        let good = mint(alg, &signing, claims_for("u"), None);
        assert_allowed(&decide_token(&server, &good).await, name);
        for other in ALL_ALGS.into_iter().filter(|a| *a != alg) {
            let mut keys = vec![attack_key(other, &verifying)];
            if other.family() == AlgorithmFamily::Hmac {
                // The key text as a tool would read it: trimmed, or with a newline.
                keys.push(verifying.trim().to_owned());
                keys.push(format!("{}\n", verifying.trim()));
            }
            for key in keys {
                let token = mint(other, &key, claims_for("u"), None);
                assert_denied(
                    &decide_token(&server, &token).await,
                    "invalid_token",
                    &format!("{name} config, {} token", alg_name(other)),
                );
            }
        }
        server.running.shutdown().await;
    }
}

/// JWKS keys declare (or imply) their algorithm: a token naming another
/// algorithm for the same key finds no key, whatever its `kid`.
#[tokio::test]
async fn alg_confusion_with_remote_jwks_keys() {
    let rsa = private_key(Algorithm::RS256);
    let ec = fixture("ec256.key");
    let ed = fixture("ed25519.key");
    let rs = public_jwk(Algorithm::RS256, &rsa, "rs");
    let ps = public_jwk(Algorithm::PS256, &rsa, "ps");
    let mut rs_noalg = public_jwk(Algorithm::RS256, &rsa, "rs-noalg");
    rs_noalg.as_object_mut().unwrap().remove("alg");
    let es = public_jwk(Algorithm::ES256, &ec, "ec");
    let eddsa = public_jwk(Algorithm::EdDSA, &ed, "ed");
    // An RSA key that claims to be an HMAC key, and one that claims `none`.
    let mut rsa_as_hs = rs.clone();
    rsa_as_hs["kid"] = json!("rsa-hs");
    rsa_as_hs["alg"] = json!("HS256");
    let mut rsa_as_none = rs.clone();
    rsa_as_none["kid"] = json!("rsa-none");
    rsa_as_none["alg"] = json!("none");
    let doc = json!({"keys": [rs, ps, rs_noalg, es, eddsa, rsa_as_hs, rsa_as_none]}).to_string();
    let jwks = JwksServer::start(doc.clone()).await;
    let server = TestServer::start(&remote_config(&jwks.url(), "")).await;
    server.wait_ready().await;
    let before = jwks.hits();

    let c = claims_for("u");
    for (alg, key, kid) in [
        (Algorithm::RS256, rsa.as_str(), "rs"),
        (Algorithm::PS256, rsa.as_str(), "ps"),
        (Algorithm::RS256, rsa.as_str(), "rs-noalg"),
        (Algorithm::ES256, ec.as_str(), "ec"),
        (Algorithm::EdDSA, ed.as_str(), "ed"),
    ] {
        let t = mint(alg, key, c.clone(), Some(kid));
        assert_allowed(&decide_token(&server, &t).await, &format!("control {kid}"));
    }
    let rs_n = rsa_modulus(&doc);
    let cases: Vec<(&str, String)> = vec![
        (
            "PS256 on an RS256 key",
            mint(Algorithm::PS256, &rsa, c.clone(), Some("rs")),
        ),
        (
            "RS384 on an RS256 key",
            mint(Algorithm::RS384, &rsa, c.clone(), Some("rs")),
        ),
        (
            "RS256 on a PS256 key",
            mint(Algorithm::RS256, &rsa, c.clone(), Some("ps")),
        ),
        (
            "PS256 on an alg-less RSA key",
            mint(Algorithm::PS256, &rsa, c.clone(), Some("rs-noalg")),
        ),
        (
            "RS512 on an alg-less RSA key",
            mint(Algorithm::RS512, &rsa, c.clone(), Some("rs-noalg")),
        ),
        (
            "HS256 keyed with the JWKS document",
            mint(Algorithm::HS256, &doc, c.clone(), Some("rs")),
        ),
        (
            "HS256 keyed with the RSA modulus",
            mint(Algorithm::HS256, &rs_n, c.clone(), Some("rs")),
        ),
        (
            "HS256 keyed with the RSA PEM",
            mint(
                Algorithm::HS256,
                &fixture("rsa.pub.pem"),
                c.clone(),
                Some("rs"),
            ),
        ),
        (
            "HS256 keyed with the EC PEM",
            mint(
                Algorithm::HS256,
                &fixture("ec256.pub.pem"),
                c.clone(),
                Some("ec"),
            ),
        ),
        (
            "ES384 on a P-256 key",
            mint(
                Algorithm::ES384,
                &fixture("ec384.key"),
                c.clone(),
                Some("ec"),
            ),
        ),
        (
            "ES256 on an Ed25519 kid",
            mint(Algorithm::ES256, &ec, c.clone(), Some("ed")),
        ),
        (
            "EdDSA on an EC kid",
            mint(Algorithm::EdDSA, &ed, c.clone(), Some("ec")),
        ),
        (
            "RS256 on an RSA key declared HS256",
            mint(Algorithm::RS256, &rsa, c.clone(), Some("rsa-hs")),
        ),
        (
            "HS256 on an RSA key declared HS256",
            mint(
                Algorithm::HS256,
                &fixture("rsa.pub.pem"),
                c.clone(),
                Some("rsa-hs"),
            ),
        ),
        (
            "RS256 on an RSA key declared none",
            mint(Algorithm::RS256, &rsa, c.clone(), Some("rsa-none")),
        ),
        (
            "HS256 without kid keyed with the PEM",
            mint(Algorithm::HS256, &fixture("rsa.pub.pem"), c.clone(), None),
        ),
    ];
    for (name, token) in cases {
        assert_denied(&decide_token(&server, &token).await, "invalid_token", name);
    }
    // Known kids never refetch; the two skipped keys' kids are unknown and
    // cost at most one (rate-limited) refetch between them.
    assert!(jwks.hits() - before <= 1, "hits: {}", jwks.hits() - before);
}

fn rsa_modulus(doc: &str) -> String {
    let v: Value = serde_json::from_str(doc).unwrap();
    v["keys"][0]["n"].as_str().unwrap().to_owned()
}

/// `alg: none` in every spelling, with and without a signature, against
/// HMAC, RSA and JWKS configs; and other malformed `alg` values.
#[tokio::test]
async fn alg_none_and_malformed_alg_values() {
    let rsa = private_key(Algorithm::RS256);
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let servers = [
        (
            "HS256",
            TestServer::start(&hs256_config("")).await,
            Algorithm::HS256,
            SECRET.to_owned(),
        ),
        (
            "RS256",
            TestServer::start(&fixed_config("RS256", &fixture("rsa.pub.pem"), "")).await,
            Algorithm::RS256,
            rsa.clone(),
        ),
        (
            "JWKS",
            TestServer::start(&remote_config(&jwks.url(), "")).await,
            Algorithm::RS256,
            rsa.clone(),
        ),
    ];
    servers[2].1.wait_ready().await;
    let payload = claims_for("u").to_string();
    for (name, server, alg, key) in &servers {
        let good = sign_parts(
            *alg,
            key,
            &json!({"alg": alg_name(*alg), "kid": "k1"}).to_string(),
            &payload,
        );
        assert_allowed(&decide_token(server, &good).await, name);
        let real_sig = good.rsplit('.').next().unwrap().to_owned();
        let mut headers: Vec<String> = Vec::new();
        for none in [
            "none",
            "None",
            "nOnE",
            "NONE",
            "none ",
            " none",
            "none\u{0}",
        ] {
            headers.push(json!({"alg": none}).to_string());
            headers.push(json!({"alg": none, "kid": "k1", "typ": "JWT"}).to_string());
        }
        for odd in [
            json!({}),
            json!({"alg": null}),
            json!({"alg": ""}),
            json!({"alg": 0}),
            json!({"alg": ["HS256"]}),
            json!({"alg": {"name": "HS256"}}),
            json!({"alg": "hs256"}),
            json!({"alg": "HS256 "}),
            json!({"alg": "RSA-OAEP"}),
            json!({"alg": "dir", "enc": "A256GCM"}),
        ] {
            headers.push(odd.to_string());
        }
        // Duplicate `alg` members: one parser's first is another's last.
        headers.push(format!(r#"{{"alg":"none","alg":"{}"}}"#, alg_name(*alg)));
        headers.push(format!(r#"{{"alg":"{}","alg":"none"}}"#, alg_name(*alg)));
        for h in &headers {
            for sig in ["", "AAAA", real_sig.as_str()] {
                let token = format!("{}.{}.{sig}", b64(h), b64(&payload));
                assert_denied(
                    &decide_token(server, &token).await,
                    "invalid_token",
                    &format!("{name}: header {h} sig {sig:?}"),
                );
            }
        }
        // The signed header itself says none: its real signature does not help.
        let signed_none = format!(
            "{}.{}.{real_sig}",
            b64(json!({"alg": "none", "kid": "k1"}).to_string()),
            b64(&payload)
        );
        assert_denied(
            &decide_token(server, &signed_none).await,
            "invalid_token",
            name,
        );
        // Two segments only (`header.payload`, the unsecured form without the dot).
        let two = format!("{}.{}", b64(r#"{"alg":"none"}"#), b64(&payload));
        assert_denied(&decide_token(server, &two).await, "invalid_token", name);
    }
}

// ---------------------------------------------------------------------------
// kid injection, embedded keys, foreign JWKS, oct keys
// ---------------------------------------------------------------------------

/// `kid` values shaped as path, SQL, URL or header injection, very long or
/// not strings, against a real JWKS server: all refused, and the JWKS server
/// sees at most one refetch for the whole batch (the unknown-kid cooldown).
#[tokio::test]
async fn kid_injection_against_a_real_jwks() {
    let rsa = private_key(Algorithm::RS256);
    let attacker = fixture("rsa2.key");
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let server = TestServer::start(&remote_config(&jwks.url(), "")).await;
    server.wait_ready().await;
    let before = jwks.hits();
    let c = claims_for("u");
    let long = "k".repeat(8 * 1024);
    let string_kids: Vec<String> = vec![
        "../../etc/passwd".into(),
        "../../../../../../dev/null".into(),
        "/etc/passwd".into(),
        "file:///etc/passwd".into(),
        "' OR 1=1--".into(),
        "k1' OR '1'='1".into(),
        "k1\"; DROP TABLE keys;--".into(),
        "http://evil/".into(),
        format!("http://{}/jwks.json", jwks.addr),
        "k1\r\nx-injected: 1".into(),
        "k1\u{0}".into(),
        "K1".into(),
        "k1 ".into(),
        " k1".into(),
        "*".into(),
        "".into(),
        long.clone(),
    ];
    for kid in &string_kids {
        for (who, key) in [("attacker", attacker.as_str()), ("real", rsa.as_str())] {
            let t = sign_raw(
                Algorithm::RS256,
                key,
                json!({"alg": "RS256", "kid": kid}),
                &c,
            );
            assert_denied(
                &decide_token(&server, &t).await,
                "invalid_token",
                &format!(
                    "kid {:?} signed by the {who} key",
                    &kid[..kid.len().min(40)]
                ),
            );
        }
    }
    // Non-string kids are malformed headers.
    for kid in [json!(1), json!(["k1"]), json!({"kid": "k1"}), json!(true)] {
        for key in [attacker.as_str(), rsa.as_str()] {
            let t = sign_raw(
                Algorithm::RS256,
                key,
                json!({"alg": "RS256", "kid": kid}),
                &c,
            );
            assert_denied(
                &decide_token(&server, &t).await,
                "invalid_token",
                &kid.to_string(),
            );
        }
    }
    // The right kid with the attacker's key.
    let t = sign_raw(
        Algorithm::RS256,
        &attacker,
        json!({"alg": "RS256", "kid": "k1"}),
        &c,
    );
    assert_denied(
        &decide_token(&server, &t).await,
        "invalid_token",
        "attacker key, real kid",
    );
    // A null kid is no kid: every key of the algorithm is tried.
    let t = sign_raw(
        Algorithm::RS256,
        &attacker,
        json!({"alg": "RS256", "kid": null}),
        &c,
    );
    assert_denied(
        &decide_token(&server, &t).await,
        "invalid_token",
        "null kid, attacker",
    );
    let t = sign_raw(
        Algorithm::RS256,
        &rsa,
        json!({"alg": "RS256", "kid": null}),
        &c,
    );
    assert_allowed(&decide_token(&server, &t).await, "null kid, real key");
    // A kid that makes the token exceed the cap.
    let huge = "k".repeat(authgate::jwt::MAX_TOKEN_BYTES);
    let t = sign_raw(
        Algorithm::RS256,
        &rsa,
        json!({"alg": "RS256", "kid": huge}),
        &c,
    );
    assert_denied(
        &decide_token(&server, &t).await,
        "invalid_token",
        "kid over the cap",
    );

    let refetches = jwks.hits() - before;
    assert!(refetches <= 1, "JWKS hammered: {refetches} fetches");
    // And the legitimate token still works.
    let t = mint(Algorithm::RS256, &rsa, c, Some("k1"));
    assert_allowed(&decide_token(&server, &t).await, "real token");
}

/// `jku`, `x5u`, `jwk`, `x5c` (and friends) pointing at an attacker's key or
/// server are never used: tokens signed by the attacker are refused, tokens
/// signed by the real key are accepted (the headers are ignored, not
/// obeyed), and the attacker's server receives no request at all.
#[tokio::test]
async fn embedded_key_headers_are_ignored() {
    let rsa = private_key(Algorithm::RS256);
    let evil = fixture("rsa2.key");
    let evil_jwk = public_jwk(Algorithm::RS256, &evil, "k1");
    let attacker = JwksServer::start(jwks_of(vec![
        evil_jwk.clone(),
        public_jwk(Algorithm::RS256, &evil, "evil"),
    ]))
    .await;
    let evil_cert: String = fixture("rsa2.crt")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(STANDARD.decode(&evil_cert).is_ok());
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let remote = TestServer::start(&remote_config(&jwks.url(), "")).await;
    remote.wait_ready().await;
    let fixed = TestServer::start(&fixed_config("RS256", &fixture("rsa.pub.pem"), "")).await;
    let before = jwks.hits();
    let url = attacker.url();
    let headers = [
        json!({"alg": "RS256", "kid": "evil", "jku": url}),
        json!({"alg": "RS256", "kid": "k1", "jku": url}),
        json!({"alg": "RS256", "jku": url}),
        json!({"alg": "RS256", "kid": "evil", "x5u": url}),
        json!({"alg": "RS256", "x5u": url}),
        json!({"alg": "RS256", "jwk": evil_jwk}),
        json!({"alg": "RS256", "kid": "k1", "jwk": evil_jwk}),
        json!({"alg": "RS256", "x5c": [evil_cert]}),
        json!({"alg": "RS256", "kid": "k1", "x5c": [evil_cert]}),
        json!({"alg": "RS256", "kid": "k1", "jku": url, "x5u": url, "jwk": evil_jwk, "x5c": [evil_cert]}),
    ];
    let c = claims_for("u");
    for server in [&remote, &fixed] {
        for h in &headers {
            let forged = sign_raw(Algorithm::RS256, &evil, h.clone(), &c);
            assert_denied(
                &decide_token(server, &forged).await,
                "invalid_token",
                &h.to_string(),
            );
            // Signed by the real key, the extra headers change nothing.
            let mut real_h = h.clone();
            if real_h["kid"] == json!("evil") {
                real_h["kid"] = json!("k1");
            }
            let real = sign_raw(Algorithm::RS256, &rsa, real_h.clone(), &c);
            assert_allowed(&decide_token(server, &real).await, &real_h.to_string());
        }
        // `crit` naming them is refused outright (RFC 7515 4.1.11).
        let crit = sign_raw(
            Algorithm::RS256,
            &rsa,
            json!({"alg": "RS256", "kid": "k1", "jku": url, "crit": ["jku"]}),
            &c,
        );
        assert_denied(&decide_token(server, &crit).await, "invalid_token", "crit");
    }
    assert_eq!(attacker.hits(), 0, "the attacker's server was contacted");
    assert!(
        jwks.hits() - before <= 1,
        "unknown kid `evil` refetches at most once"
    );
}

/// A token signed by another issuer's key (another JWKS) is refused, even
/// when that issuer reuses the same `kid`; and two modes with two JWKS never
/// verify each other's tokens.
#[tokio::test]
async fn tokens_signed_by_a_key_from_another_jwks() {
    let rsa = private_key(Algorithm::RS256);
    let other_rsa = fixture("rsa2.key");
    let ec = fixture("ec256.key");
    let ours = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let theirs = JwksServer::start(jwks_of(vec![
        public_jwk(Algorithm::RS256, &other_rsa, "k1"),
        public_jwk(Algorithm::ES256, &ec, "e1"),
    ]))
    .await;
    let cfg = format!(
        r#"
definition:
  modes:
    - id: ours
      mode: jwt
      key: {{jwkFromUrl: {{value: "{}"}}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
    - id: partner
      mode: jwt
      tokenLocation: {{in: header, name: X-Partner-Token}}
      key: {{jwkFromUrl: {{value: "{}"}}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
"#,
        ours.url(),
        theirs.url()
    );
    let server = TestServer::start(&cfg).await;
    server.wait_ready().await;
    let c = claims_for("u");
    let ours_token = mint(Algorithm::RS256, &rsa, c.clone(), Some("k1"));
    let theirs_same_kid = mint(Algorithm::RS256, &other_rsa, c.clone(), Some("k1"));
    let theirs_ec = mint(Algorithm::ES256, &ec, c.clone(), Some("e1"));
    // Each mode accepts its own issuer.
    let o = decide_token(&server, &ours_token).await;
    assert_allowed(&o, "ours");
    assert_eq!(o.metadata["mode_id"], "ours");
    let o = decide(&server, &[("x-partner-token", &theirs_same_kid)]).await;
    assert_allowed(&o, "partner");
    assert_eq!(o.metadata["mode_id"], "partner");
    // ... and only its own.
    for (name, token) in [("same kid", &theirs_same_kid), ("other kid", &theirs_ec)] {
        assert_denied(&decide_token(&server, token).await, "invalid_token", name);
    }
    let o = decide(&server, &[("x-partner-token", &ours_token)]).await;
    assert_denied(&o, "invalid_token", "our token in the partner location");
}

/// Symmetric (`oct`) keys published in a remote JWKS are never used to
/// verify: a JWKS would be publishing the secret. A JWKS of only oct keys
/// loads nothing (not ready, `internal_error`), and `HS*` beside
/// `jwkFromUrl` is a config error.
#[tokio::test]
async fn oct_keys_in_a_remote_jwks_never_verify() {
    let rsa = private_key(Algorithm::RS256);
    let secret = "published-hmac-secret-published-hmac-secret";
    let oct = json!({"kty": "oct", "kid": "h", "k": b64(secret)});
    let oct_sig =
        json!({"kty": "oct", "kid": "h-sig", "use": "sig", "alg": "HS256", "k": b64(secret)});
    let oct_rs = json!({"kty": "oct", "kid": "h-rs", "alg": "RS256", "k": b64(secret)});
    let doc = json!({"keys": [oct, oct_sig, oct_rs, public_jwk(Algorithm::RS256, &rsa, "r")]});
    let jwks = JwksServer::start(doc.to_string()).await;
    // No `algorithm` beside jwkFromUrl: nothing pins the family.
    let server = TestServer::start(&remote_config(&jwks.url(), "")).await;
    server.wait_ready().await;
    let c = claims_for("u");
    assert_allowed(
        &decide_token(&server, &mint(Algorithm::RS256, &rsa, c.clone(), Some("r"))).await,
        "control",
    );
    for (alg, kid) in [
        (Algorithm::HS256, Some("h")),
        (Algorithm::HS256, Some("h-sig")),
        (Algorithm::HS256, Some("h-rs")),
        (Algorithm::HS256, None),
        (Algorithm::HS384, Some("h")),
        (Algorithm::HS512, None),
    ] {
        let t = mint(alg, secret, c.clone(), kid);
        assert_denied(
            &decide_token(&server, &t).await,
            "invalid_token",
            &format!("{alg:?} {kid:?}"),
        );
    }
    server.running.shutdown().await;

    // Only oct keys: no usable key, never ready, checks are 503s.
    let only_oct = JwksServer::start(
        json!({"keys": [{"kty": "oct", "kid": "h", "k": b64(secret)}]}).to_string(),
    )
    .await;
    let server = TestServer::start(&remote_config(&only_oct.url(), "")).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!server.running.shared.is_ready());
    let t = mint(Algorithm::HS256, secret, c.clone(), Some("h"));
    assert_denied(
        &decide_token(&server, &t).await,
        "internal_error",
        "only oct keys",
    );
    server.running.shutdown().await;

    let err = authgate::config::parse(
        &remote_config(&jwks.url(), ", algorithm: HS256"),
        &|_: &str| None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("HMAC algorithms cannot be used with a remote JWKS"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Sizes and nesting
// ---------------------------------------------------------------------------

/// The 16 KiB token cap, exactly; huge headers over gRPC and HTTP; the gRPC
/// message size limit (4 MiB) is a call error, never a decision, and the
/// server keeps serving.
#[tokio::test]
async fn oversized_tokens_headers_and_messages() {
    let server = TestServer::start(&hs256_config("")).await;
    let cap = authgate::jwt::MAX_TOKEN_BYTES;
    assert_eq!(cap, 16 * 1024);
    let padded = |n: usize| {
        let mut c = claims_for("u");
        c["pad"] = json!("x".repeat(n));
        mint(Algorithm::HS256, SECRET, c, None)
    };
    let mut n = cap * 3 / 4 - 400;
    while padded(n + 1).len() <= cap {
        n += 1;
    }
    let at_cap = padded(n);
    let over_cap = padded(n + 1);
    assert!(at_cap.len() <= cap && over_cap.len() > cap);
    assert_allowed(&decide_token(&server, &at_cap).await, "token at the cap");
    assert_denied(
        &decide_token(&server, &over_cap).await,
        "invalid_token",
        "token over the cap",
    );
    // Over HTTP too.
    let (status, h, _) = http(
        &server,
        "GET",
        "/check",
        &[("authorization", bearer(&at_cap).as_bytes())],
    )
    .await;
    assert_eq!(
        (status, h["x-hasura-user-id"].to_str().unwrap()),
        (200, "u")
    );
    let (status, h, _) = http(
        &server,
        "GET",
        "/check",
        &[("authorization", bearer(&over_cap).as_bytes())],
    )
    .await;
    assert_eq!(
        (status, h["x-authgate-reason"].to_str().unwrap()),
        (401, "invalid_token")
    );

    // Many session variables: bounded only by the token cap.
    let mut c = claims_for("u");
    for i in 0..500 {
        c["claims.jwt.hasura.io"][format!("x-hasura-v{i}")] = json!(i);
    }
    let t = mint(Algorithm::HS256, SECRET, c, None);
    assert!(t.len() <= cap);
    let o = decide_token(&server, &t).await;
    assert_allowed(&o, "500 session variables");
    assert_eq!(o.headers.len(), 502);

    // Large headers within the gRPC message cap: each a clean decision.
    let max_msg = authgate::limits::MAX_CHECK_REQUEST_BYTES;
    let big = "A".repeat(max_msg / 4);
    assert_denied(
        &decide_token(&server, &big).await,
        "invalid_token",
        "quarter-MiB token",
    );
    let good = mint(Algorithm::HS256, SECRET, claims_for("u"), None);
    let o = decide(
        &server,
        &[("authorization", &bearer(&good)), ("x-hasura-role", &big)],
    )
    .await;
    assert_denied(&o, "role_not_allowed", "quarter-MiB role header");
    let o = decide(
        &server,
        &[("authorization", &bearer(&good)), ("cookie", &big)],
    )
    .await;
    assert_allowed(&o, "quarter-MiB cookie header");

    // Beyond the CheckRequest cap: a call error (Envoy denies), then business as usual.
    let huge = "A".repeat(max_msg + 1024);
    let err = server
        .client()
        .await
        .check(check_request(&[("authorization", &huge)], "/"))
        .await
        .expect_err("an oversized CheckRequest is refused as a call");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert_allowed(
        &decide_token(&server, &good).await,
        "after the oversized call",
    );

    // HTTP: headers beyond the cap answer 431 without a decision.
    for size in [authgate::limits::MAX_HEADER_BYTES + 1, 1024 * 1024] {
        let (status, _, _) = http(
            &server,
            "GET",
            "/check",
            &[("authorization", bearer(&"A".repeat(size)).as_bytes())],
        )
        .await;
        assert_eq!(status, 431, "{size} bytes of headers");
    }
    let (status, h, _) = http(
        &server,
        "GET",
        "/check",
        &[("authorization", bearer(&good).as_bytes())],
    )
    .await;
    assert_eq!(
        (status, h["x-hasura-role"].to_str().unwrap()),
        (200, "user")
    );
}

/// Deep nesting anywhere a token carries JSON: in a claim, in the
/// namespace, in a stringified namespace, in the JOSE header. Each is a
/// clean decision (serde_json's recursion limit, 128, or the token cap),
/// never a crash or a stack overflow.
#[tokio::test]
async fn deeply_nested_claims_decide_cleanly() {
    let server = TestServer::start(&hs256_config("")).await;
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let exp = now() + 3600;
    let ns = r#""claims.jwt.hasura.io":{"x-hasura-allowed-roles":["user"],"x-hasura-default-role":"user","x-hasura-user-id":"u""#;
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let token = |payload: String| sign_parts(Algorithm::HS256, SECRET, header, &payload);

    // 10k nested arrays: over the 16 KiB cap before any parsing.
    let t = token(format!(
        r#"{{"exp":{exp},{ns}}},"deep":{}}}"#,
        nested(10_000)
    ));
    assert!(t.len() > authgate::jwt::MAX_TOKEN_BYTES);
    assert_denied(
        &decide_token(&server, &t).await,
        "invalid_token",
        "10k nested (over the cap)",
    );
    // 5k nested arrays within the cap: refused by the parser's depth limit.
    let t = token(format!(
        r#"{{"exp":{exp},{ns}}},"deep":{}}}"#,
        nested(5_000)
    ));
    assert!(t.len() <= authgate::jwt::MAX_TOKEN_BYTES);
    assert_denied(
        &decide_token(&server, &t).await,
        "invalid_token",
        "5k nested arrays",
    );
    let objects = format!("{}1{}", r#"{"a":"#.repeat(2_000), "}".repeat(2_000));
    let t = token(format!(r#"{{"exp":{exp},{ns}}},"deep":{objects}}}"#));
    assert_denied(
        &decide_token(&server, &t).await,
        "invalid_token",
        "2k nested objects",
    );
    // 100 levels inside the namespace: parsed, mapped and rendered.
    let t = token(format!(
        r#"{{"exp":{exp},{ns},"x-hasura-deep":{}}}}}"#,
        nested(100)
    ));
    let o = decide_token(&server, &t).await;
    assert_allowed(&o, "100 nested arrays in a session variable");
    assert_eq!(
        o.headers["x-hasura-deep"],
        format!("{}{}", "{".repeat(100), "}".repeat(100))
    );
    let objects = format!("{}1{}", r#"{"a":"#.repeat(100), "}".repeat(100));
    let t = token(format!(
        r#"{{"exp":{exp},{ns},"x-hasura-obj":{objects}}}}}"#
    ));
    let o = decide_token(&server, &t).await;
    assert_allowed(&o, "100 nested objects in a session variable");
    assert_eq!(o.headers["x-hasura-obj"], objects);
    // Nesting in the JOSE header, which is parsed before the signature is
    // checked: an unknown member is skipped whatever its depth (no crash),
    // so only the signature decides; in a member authgate reads, the depth
    // limit or the type refuses it.
    let payload = claims_for("u").to_string();
    let deep_header = format!(r#"{{"alg":"HS256","x":{}}}"#, nested(5_000));
    let t = sign_parts(Algorithm::HS256, SECRET, &deep_header, &payload);
    assert_allowed(
        &decide_token(&server, &t).await,
        "deep unknown header member",
    );
    let t = sign_parts(Algorithm::HS256, "not-the-secret", &deep_header, &payload);
    assert_denied(
        &decide_token(&server, &t).await,
        "invalid_token",
        "deep unknown header member, wrong key",
    );
    for member in ["kid", "crit", "alg"] {
        let h = format!(r#"{{"alg":"HS256","{member}":{}}}"#, nested(5_000));
        let h = h.replacen(r#""alg":"HS256","alg""#, r#""alg""#, 1);
        let t = sign_parts(Algorithm::HS256, SECRET, &h, &payload);
        assert_denied(
            &decide_token(&server, &t).await,
            "invalid_token",
            &format!("deep {member}"),
        );
    }
    // The Hasura webhook door with a deeply nested body: an empty 401.
    let body = format!(
        r#"{{"headers":{{"authorization":"Bearer x","x":{}}}}}"#,
        nested(100_000)
    );
    let resp = reqwest::Client::new()
        .post(server.http_url("/auth/hasura"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await.unwrap().is_empty());
    server.running.shutdown().await;

    // A stringified namespace is a second JSON parse: same limit.
    let cfg = format!(
        r#"
definition:
  modes:
    - mode: jwt
      key: {{algorithm: HS256, key: {{value: "{SECRET}"}}}}
      claimsConfig: {{namespace: {{location: hasura, claimsFormat: StringifiedJson}}}}
"#
    );
    let server = TestServer::start(&cfg).await;
    let inner = |deep: &str| {
        json!({"exp": exp, "hasura": format!(r#"{{"x-hasura-role":"user","x-hasura-deep":{deep}}}"#)})
            .to_string()
    };
    let t = token(inner(&nested(5_000)));
    assert_denied(
        &decide_token(&server, &t).await,
        "invalid_token",
        "stringified 5k nesting",
    );
    let t = token(inner(&nested(50)));
    let o = decide_token(&server, &t).await;
    assert_allowed(&o, "stringified 50 nesting");
    assert_eq!(o.headers["x-hasura-deep"].len(), 100);
}

/// Many client headers in one CheckRequest (Envoy caps a request at 100
/// headers by default, but a caller reaching the gRPC port directly is not
/// capped): the decision must stay linear in the number of headers.
#[tokio::test]
async fn many_reserved_headers_decide_in_linear_time() {
    let server = TestServer::start(&hs256_config("")).await;
    let good = bearer(&mint(Algorithm::HS256, SECRET, claims_for("u"), None));
    let names: Vec<String> = (0..40_000).map(|i| format!("x-hasura-v{i:05}")).collect();
    let mut headers: Vec<(&str, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), b"1".as_slice()))
        .collect();
    headers.push(("authorization", good.as_bytes()));
    let started = Instant::now();
    let o = decide_raw(&server, &headers).await;
    let grpc = started.elapsed();
    assert_allowed(&o, "40k client x-hasura-* headers");
    assert_eq!(o.removed.len(), 40_000);
    // The Hasura webhook door takes the headers from a JSON body (1 MiB cap).
    let mut map: serde_json::Map<String, Value> =
        names.iter().map(|n| (n.clone(), json!("1"))).collect();
    map.insert("authorization".into(), json!(good));
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .post(server.http_url("/auth/hasura"))
        .json(&json!({ "headers": map }))
        .send()
        .await
        .unwrap();
    let hook = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert!(
        grpc < Duration::from_secs(2) && hook < Duration::from_secs(2),
        "one decision took {grpc:?} over gRPC, {hook:?} over /auth/hasura"
    );
}

// ---------------------------------------------------------------------------
// Credentials: duplicates, schemes, locations
// ---------------------------------------------------------------------------

/// Two Authorization headers (raw header_map, HTTP), a comma-joined header
/// (how proxies merge duplicates), both header forms at once; a header and a
/// cookie read by two modes (first success wins, as in RelyAuth); duplicate
/// cookies; duplicates in the Hasura webhook body.
#[tokio::test]
async fn duplicate_and_conflicting_credentials() {
    let server = TestServer::start(&hs256_config(
        r#"    - id: web
      mode: jwt
      tokenLocation: {in: cookie, name: session}
      key: {algorithm: HS256, key: {value: "a-string-secret-at-least-256-bits-long-for-tests"}}
      claimsConfig:
        namespace: {location: '"claims.jwt.hasura.io"'}"#,
    ))
    .await;
    let alice = mint(Algorithm::HS256, SECRET, claims_for("alice"), None);
    let bob = mint(Algorithm::HS256, SECRET, claims_for("bob"), None);
    let (ba, bb) = (bearer(&alice), bearer(&bob));
    // Controls.
    assert_allowed(&decide(&server, &[("authorization", &ba)]).await, "alice");
    // Two Authorization headers (Envoy's encode_raw_headers keeps both).
    for (x, y) in [(&ba, &bb), (&ba, &ba), (&ba, &"Bearer garbage".to_string())] {
        let o = decide_raw(
            &server,
            &[
                ("authorization", x.as_bytes()),
                ("authorization", y.as_bytes()),
            ],
        )
        .await;
        assert_denied(&o, "invalid_token", "two authorization headers");
    }
    // Comma-joined, as Envoy's `headers` map or a proxy merges them.
    for joined in [
        format!("{ba}, {bb}"),
        format!("{ba},{ba}"),
        format!("{ba}, Basic eDp5"),
    ] {
        assert_denied(
            &decide(&server, &[("authorization", &joined)]).await,
            "invalid_token",
            &joined[..20],
        );
    }
    // The same header in `headers` and `header_map` at once.
    let mut req = check_request(&[("authorization", &ba)], "/graphql");
    req.attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
        .header_map = check_request_raw(&[("authorization", bb.as_bytes())])
        .attributes
        .unwrap()
        .request
        .unwrap()
        .http
        .unwrap()
        .header_map;
    assert_denied(
        &outcome(&server.check_request(req).await),
        "invalid_token",
        "headers + header_map",
    );
    // Over HTTP.
    let (status, h, _) = http(
        &server,
        "GET",
        "/check",
        &[
            ("authorization", ba.as_bytes()),
            ("authorization", bb.as_bytes()),
        ],
    )
    .await;
    assert_eq!(
        (status, h["x-authgate-reason"].to_str().unwrap()),
        (401, "invalid_token")
    );

    // Header and cookie, two modes: the first mode that verifies wins.
    let cookie_bob = format!("session={bob}");
    let o = decide(&server, &[("authorization", &ba), ("cookie", &cookie_bob)]).await;
    assert_allowed(&o, "header + cookie");
    assert_eq!(
        (
            o.headers["x-hasura-user-id"].as_str(),
            o.metadata["mode_id"].as_str()
        ),
        ("alice", "users")
    );
    // An invalid header does not fall through to anonymous, but a valid
    // credential of a later mode still authenticates.
    let o = decide(
        &server,
        &[("authorization", "Bearer garbage"), ("cookie", &cookie_bob)],
    )
    .await;
    assert_allowed(&o, "invalid header + valid cookie");
    assert_eq!(
        (
            o.headers["x-hasura-user-id"].as_str(),
            o.metadata["mode_id"].as_str()
        ),
        ("bob", "web")
    );
    // Duplicate cookies (one header, two headers, names differing in case).
    for cookies in [
        vec![format!("session={alice}; session={bob}")],
        vec![format!("session={alice}"), format!("session={bob}")],
        vec![format!("session={alice}; SESSION={alice}")],
    ] {
        let mut h: Vec<(&str, &[u8])> = cookies.iter().map(|c| ("cookie", c.as_bytes())).collect();
        h.push(("x-other", b"1"));
        assert_denied(
            &decide_raw(&server, &h).await,
            "invalid_token",
            "duplicate cookies",
        );
    }
    // The Hasura webhook door: a header given as a list of values.
    let resp = reqwest::Client::new()
        .post(server.http_url("/auth/hasura"))
        .json(&json!({"headers": {"Authorization": [ba, bb]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = reqwest::Client::new()
        .post(server.http_url("/auth/hasura"))
        .json(&json!({"headers": {"Authorization": ba}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Bearer scheme spellings, spaces and tabs; a token in the query when the
/// config reads a header, and in a header when it reads the query.
#[tokio::test]
async fn bearer_scheme_spellings_and_token_locations() {
    let server = TestServer::start(&hs256_config("")).await;
    let t = mint(Algorithm::HS256, SECRET, claims_for("u"), None);
    for v in [
        format!("Bearer {t}"),
        format!("bearer {t}"),
        format!("BEARER {t}"),
        format!("bEaReR {t}"),
        format!("Bearer   {t}"),
        format!("Bearer\t{t}"),
        format!("  Bearer {t}  "),
    ] {
        assert_allowed(&decide(&server, &[("authorization", &v)]).await, &v[..10]);
    }
    for (v, reason) in [
        (format!("Bearer{t}"), "missing_credentials"),
        (format!("Basic {t}"), "missing_credentials"),
        (format!("Token {t}"), "missing_credentials"),
        (t.clone(), "missing_credentials"),
        ("Bearer".to_string(), "invalid_token"),
        ("Bearer    ".to_string(), "invalid_token"),
        (format!("Bearer Bearer {t}"), "invalid_token"),
        (format!("Bearer {t} extra"), "invalid_token"),
        (format!("Bearer {t},"), "invalid_token"),
        (format!("Bearer \"{t}\""), "invalid_token"),
    ] {
        assert_denied(
            &decide(&server, &[("authorization", &v)]).await,
            reason,
            &v[..10.min(v.len())],
        );
    }
    // In the query while the config says header: not a credential at all.
    for q in ["access_token", "token", "authorization", "jwt"] {
        let req = check_request(&[], &format!("/graphql?{q}={t}"));
        assert_denied(
            &outcome(&server.check_request(req).await),
            "missing_credentials",
            q,
        );
    }
    let (status, h, _) = http(
        &server,
        "GET",
        &format!("/check/graphql?access_token={t}"),
        &[],
    )
    .await;
    assert_eq!(
        (status, h["x-authgate-reason"].to_str().unwrap()),
        (401, "missing_credentials")
    );
    server.running.shutdown().await;

    // The reverse: a query-parameter mode ignores the Authorization header.
    let cfg = format!(
        r#"
definition:
  modes:
    - mode: jwt
      tokenLocation: {{in: query, name: token}}
      key: {{algorithm: HS256, key: {{value: "{SECRET}"}}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
"#
    );
    let server = TestServer::start(&cfg).await;
    assert_denied(
        &decide_token(&server, &t).await,
        "missing_credentials",
        "header for a query mode",
    );
    let ok = outcome(
        &server
            .check_request(check_request(&[], &format!("/g?token={t}")))
            .await,
    );
    assert_allowed(&ok, "query");
    for path in [
        format!("/g?Token={t}"),
        format!("/g?TOKEN={t}"),
        format!("/g?token%00={t}"),
    ] {
        let o = outcome(&server.check_request(check_request(&[], &path)).await);
        assert_denied(&o, "missing_credentials", &path[..8]);
    }
    let o = outcome(
        &server
            .check_request(check_request(&[], &format!("/g?token={t}&token={t}")))
            .await,
    );
    assert_denied(&o, "invalid_token", "two token parameters");
    // An empty value is no credential, as an empty header is.
    let o = outcome(&server.check_request(check_request(&[], "/g?token=")).await);
    assert_denied(&o, "missing_credentials", "empty parameter");
}

// ---------------------------------------------------------------------------
// Registered claims: types and values
// ---------------------------------------------------------------------------

/// `exp`/`nbf`/`iat` of the wrong JSON type or extreme values, `aud` and
/// `iss` near-misses, all with a valid signature.
#[tokio::test]
async fn registered_claim_types_and_near_misses() {
    let cfg = fixed_config(
        "HS256",
        SECRET,
        "      audience: [app-1, app-2]\n      issuer: https://issuer.test\n      allowedSkew: 0\n",
    );
    let server = TestServer::start(&cfg).await;
    let n = now();
    let base = |extra: Value| {
        let mut c = claims_for("u");
        c["aud"] = json!("app-1");
        c["iss"] = json!("https://issuer.test");
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let signed = |c: &Value| sign_raw(Algorithm::HS256, SECRET, json!({"alg": "HS256"}), c);
    let raw_payload = |extra: &str| {
        let mut c = base(json!({}));
        c.as_object_mut().unwrap().remove("exp");
        let text = c.to_string();
        let payload = format!("{},{extra}}}", &text[..text.len() - 1]);
        sign_parts(Algorithm::HS256, SECRET, r#"{"alg":"HS256"}"#, &payload)
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("control", signed(&base(json!({}))), "allow"),
        (
            "exp string",
            signed(&base(json!({"exp": (n + 3600).to_string()}))),
            "invalid_token",
        ),
        (
            "exp bool",
            signed(&base(json!({"exp": true}))),
            "invalid_token",
        ),
        (
            "exp array",
            signed(&base(json!({"exp": [n + 3600]}))),
            "invalid_token",
        ),
        (
            "exp object",
            signed(&base(json!({"exp": {"$date": n + 3600}}))),
            "invalid_token",
        ),
        (
            "exp null",
            signed(&base(json!({"exp": null}))),
            "invalid_token",
        ),
        (
            "exp float future",
            signed(&base(json!({"exp": n as f64 + 3600.75}))),
            "allow",
        ),
        (
            "exp float past",
            signed(&base(json!({"exp": n as f64 - 1.5}))),
            "token_expired",
        ),
        ("exp 1e300", signed(&base(json!({"exp": 1e300}))), "allow"),
        (
            "exp u64::MAX",
            signed(&base(json!({"exp": u64::MAX}))),
            "allow",
        ),
        (
            "exp i64::MIN",
            signed(&base(json!({"exp": i64::MIN}))),
            "token_expired",
        ),
        ("exp -1", signed(&base(json!({"exp": -1}))), "token_expired"),
        ("exp 0", signed(&base(json!({"exp": 0}))), "token_expired"),
        (
            "exp 1e400 (not a JSON double)",
            raw_payload(r#""exp":1e400"#),
            "invalid_token",
        ),
        (
            "exp -1e400",
            raw_payload(r#""exp":-1e400"#),
            "invalid_token",
        ),
        (
            "exp twice, past last",
            raw_payload(&format!(r#""exp":{},"exp":{}"#, n + 3600, n - 3600)),
            "token_expired",
        ),
        (
            "nbf future",
            signed(&base(json!({"nbf": n + 120}))),
            "invalid_token",
        ),
        (
            "nbf future float",
            signed(&base(json!({"nbf": n as f64 + 5.5}))),
            "invalid_token",
        ),
        (
            "nbf string",
            signed(&base(json!({"nbf": "0"}))),
            "invalid_token",
        ),
        (
            "nbf 1e300",
            signed(&base(json!({"nbf": 1e300}))),
            "invalid_token",
        ),
        ("nbf -1e300", signed(&base(json!({"nbf": -1e300}))), "allow"),
        (
            "iat future",
            signed(&base(json!({"iat": n + 120}))),
            "invalid_token",
        ),
        (
            "iat string",
            signed(&base(json!({"iat": "now"}))),
            "invalid_token",
        ),
        (
            "aud array match",
            signed(&base(json!({"aud": ["x", "app-2"]}))),
            "allow",
        ),
        (
            "aud array no match",
            signed(&base(json!({"aud": ["x", "y"]}))),
            "invalid_token",
        ),
        (
            "aud empty array",
            signed(&base(json!({"aud": []}))),
            "invalid_token",
        ),
        (
            "aud case",
            signed(&base(json!({"aud": "APP-1"}))),
            "invalid_token",
        ),
        (
            "aud space-joined",
            signed(&base(json!({"aud": "app-1 app-2"}))),
            "invalid_token",
        ),
        (
            "aud comma-joined",
            signed(&base(json!({"aud": "app-1,app-2"}))),
            "invalid_token",
        ),
        (
            "aud prefix",
            signed(&base(json!({"aud": "app-"}))),
            "invalid_token",
        ),
        (
            "aud number",
            signed(&base(json!({"aud": 1}))),
            "invalid_token",
        ),
        (
            "aud nested array",
            signed(&base(json!({"aud": [["app-1"]]}))),
            "invalid_token",
        ),
        (
            "aud object",
            signed(&base(json!({"aud": {"app-1": true}}))),
            "invalid_token",
        ),
        (
            "aud null",
            signed(&base(json!({"aud": null}))),
            "invalid_token",
        ),
        (
            "aud with NUL",
            signed(&base(json!({"aud": "app-1\u{0}"}))),
            "invalid_token",
        ),
        (
            "iss trailing slash",
            signed(&base(json!({"iss": "https://issuer.test/"}))),
            "invalid_token",
        ),
        (
            "iss case",
            signed(&base(json!({"iss": "HTTPS://ISSUER.TEST"}))),
            "invalid_token",
        ),
        (
            "iss array",
            signed(&base(json!({"iss": ["https://issuer.test"]}))),
            "invalid_token",
        ),
        (
            "iss leading space",
            signed(&base(json!({"iss": " https://issuer.test"}))),
            "invalid_token",
        ),
        (
            "iss null",
            signed(&base(json!({"iss": null}))),
            "invalid_token",
        ),
        (
            "iss subdomain",
            signed(&base(json!({"iss": "https://issuer.test.evil"}))),
            "invalid_token",
        ),
        (
            "iss userinfo",
            signed(&base(json!({"iss": "https://issuer.test@evil"}))),
            "invalid_token",
        ),
    ];
    for (name, token, expected) in cases {
        // Twice: the second answer may come from the verified-token cache.
        for round in 0..2 {
            let o = decide_token(&server, &token).await;
            if expected == "allow" {
                assert_allowed(&o, &format!("{name} #{round}"));
            } else {
                assert_denied(&o, expected, &format!("{name} #{round}"));
            }
        }
    }
    server.running.shutdown().await;

    // Without `audience` configured, `aud` is not checked (RelyAuth, Hasura).
    let server = TestServer::start(&fixed_config("HS256", SECRET, "")).await;
    let t = signed(&base(json!({"aud": "anything-at-all"})));
    assert_allowed(&decide_token(&server, &t).await, "aud unchecked");
}

// ---------------------------------------------------------------------------
// Header injection, roles, header stripping
// ---------------------------------------------------------------------------

/// CR, LF, NUL, DEL in session values and in the role header never reach a
/// header: the decision is a denial instead. Non-ASCII passes through intact
/// over gRPC, HTTP and the Hasura webhook.
#[tokio::test]
async fn control_characters_and_non_ascii_in_claims_and_role_headers() {
    let server = TestServer::start(&hs256_config("")).await;
    let with_var = |k: &str, v: Value| {
        let mut c = claims_for("u");
        c["claims.jwt.hasura.io"][k] = v;
        mint(Algorithm::HS256, SECRET, c, None)
    };
    for (name, value) in [
        ("CRLF", json!("u\r\nx-hasura-role: admin")),
        ("LF", json!("u\nx")),
        ("CR", json!("u\rx")),
        ("NUL", json!("u\u{0}")),
        ("DEL", json!("u\u{7f}")),
        ("ESC", json!("u\u{1b}[31m")),
        ("CRLF in array element", json!(["a", "b\r\nc"])),
    ] {
        for var in ["x-hasura-user-id", "x-hasura-org-id"] {
            let t = with_var(var, value.clone());
            assert_denied(
                &decide_token(&server, &t).await,
                "invalid_token",
                &format!("{name} in {var}"),
            );
            let (status, _, _) = http(
                &server,
                "GET",
                "/check",
                &[("authorization", bearer(&t).as_bytes())],
            )
            .await;
            assert_eq!(status, 401, "{name} over HTTP");
        }
    }
    // In an object value, JSON escapes them: no raw control byte remains.
    let t = with_var("x-hasura-meta", json!({"k": "v\r\nx-evil: 1"}));
    let o = decide_token(&server, &t).await;
    assert_allowed(&o, "object with CRLF");
    assert_eq!(o.headers["x-hasura-meta"], r#"{"k":"v\r\nx-evil: 1"}"#);
    // A control character in a session variable *name*.
    let t = with_var("x-hasura-a\r\nb", json!("1"));
    assert_denied(
        &decide_token(&server, &t).await,
        "invalid_token",
        "CRLF in a name",
    );
    // Non-ASCII is data, not an attack: passed on byte for byte.
    for value in [
        "Zoë-ユーザー-👍",
        "a\tb",
        "u\u{85}v",
        "u\u{2028}v",
        "\u{feff}u",
    ] {
        let t = with_var("x-hasura-user-id", json!(value));
        let o = decide_token(&server, &t).await;
        assert_allowed(&o, value);
        assert_eq!(o.headers["x-hasura-user-id"], value);
        let (status, h, _) = http(
            &server,
            "GET",
            "/check",
            &[("authorization", bearer(&t).as_bytes())],
        )
        .await;
        assert_eq!(
            (status, h["x-hasura-user-id"].as_bytes()),
            (200, value.as_bytes())
        );
        let resp: Value = reqwest::Client::new()
            .post(server.http_url("/auth/hasura"))
            .json(&json!({"headers": {"authorization": bearer(&t)}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(resp["x-hasura-user-id"], value);
    }

    // The role header.
    let mut c = claims_for("u");
    c["claims.jwt.hasura.io"]["x-hasura-allowed-roles"] = json!(["user", "ed\r\nitor", "rôle"]);
    let t = mint(Algorithm::HS256, SECRET, c, None);
    let auth = bearer(&t);
    for (role, reason) in [
        ("user\r\nx-hasura-role: admin", "role_not_allowed"),
        ("user\u{0}", "role_not_allowed"),
        ("user\nadmin", "role_not_allowed"),
        // Allowed by the token, but not a valid header value.
        ("ed\r\nitor", "invalid_token"),
    ] {
        let o = decide_raw(
            &server,
            &[
                ("authorization", auth.as_bytes()),
                ("x-hasura-role", role.as_bytes()),
            ],
        )
        .await;
        assert_denied(&o, reason, &format!("role {role:?}"));
    }
    let o = decide_raw(
        &server,
        &[
            ("authorization", auth.as_bytes()),
            ("x-hasura-role", "rôle".as_bytes()),
        ],
    )
    .await;
    assert_allowed(&o, "non-ASCII role");
    assert_eq!(o.headers["x-hasura-role"], "rôle");
    // Invalid UTF-8 becomes U+FFFD: no role matches it.
    let o = decide_raw(
        &server,
        &[
            ("authorization", auth.as_bytes()),
            ("x-hasura-role", b"r\xc3le"),
        ],
    )
    .await;
    assert_denied(&o, "role_not_allowed", "invalid UTF-8 role");
    // A default role that cannot be a header value.
    let mut c = claims_for("u");
    c["claims.jwt.hasura.io"]["x-hasura-allowed-roles"] = json!(["user\r\n"]);
    c["claims.jwt.hasura.io"]["x-hasura-default-role"] = json!("user\r\n");
    let t = mint(Algorithm::HS256, SECRET, c, None);
    assert_denied(
        &decide_token(&server, &t).await,
        "invalid_token",
        "CRLF default role",
    );
    let resp = reqwest::Client::new()
        .post(server.http_url("/auth/hasura"))
        .json(&json!({"headers": {"authorization": bearer(&t)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// Hasura role semantics are exact: no case folding, no Unicode look-alikes,
/// no lists, no wildcards; the cached token never carries a role over.
#[tokio::test]
async fn role_case_and_lookalike_tricks() {
    let server = TestServer::start(&hs256_config("")).await;
    let mut c = claims_for("u");
    c["claims.jwt.hasura.io"]["x-hasura-allowed-roles"] = json!(["user", "admin"]);
    let t = mint(Algorithm::HS256, SECRET, c, None);
    let auth = bearer(&t);
    for role in [
        "ADMIN",
        "Admin",
        "aDmIn",
        "\u{0430}dmin",
        "ａｄｍｉｎ",
        "admin\u{0}",
        "user,admin",
        "{admin}",
        "[\"admin\"]",
        "*",
        "admin-",
        "root",
    ] {
        let o = decide_raw(
            &server,
            &[
                ("authorization", auth.as_bytes()),
                ("x-hasura-role", role.as_bytes()),
            ],
        )
        .await;
        assert_denied(&o, "role_not_allowed", role);
    }
    for (role, got) in [
        ("admin", "admin"),
        (" admin ", "admin"),
        ("", "user"),
        ("user", "user"),
    ] {
        let o = decide(
            &server,
            &[("authorization", &auth), ("x-hasura-role", role)],
        )
        .await;
        assert_allowed(&o, role);
        assert_eq!(o.headers["x-hasura-role"], got, "{role:?}");
    }
    // The cache holds the token's session, never the last request's role.
    let o = decide_token(&server, &t).await;
    assert_eq!(o.headers["x-hasura-role"], "user");
    // Only the first role header is read; each is checked against the allowed roles.
    let o = decide_raw(
        &server,
        &[
            ("authorization", auth.as_bytes()),
            ("x-hasura-role", b"root"),
            ("x-hasura-role", b"admin"),
        ],
    )
    .await;
    assert_denied(
        &o,
        "role_not_allowed",
        "two role headers, first not allowed",
    );
    // The token's own role claims are held to the same rules.
    for (allowed, default, claimed, expect) in [
        (
            json!(["admin"]),
            json!("ADMIN"),
            Value::Null,
            Err("role_not_allowed"),
        ),
        (
            json!(["Admin"]),
            json!("admin"),
            Value::Null,
            Err("role_not_allowed"),
        ),
        (
            json!(["user"]),
            json!("user"),
            json!("admin"),
            Err("role_not_allowed"),
        ),
        (
            json!([1, null, "user"]),
            json!("user"),
            Value::Null,
            Ok("user"),
        ),
        (
            json!("{user,admin}"),
            json!("admin"),
            Value::Null,
            Ok("admin"),
        ),
        (
            json!("{user}"),
            json!("admin"),
            Value::Null,
            Err("role_not_allowed"),
        ),
        (
            json!([]),
            json!("user"),
            Value::Null,
            Err("role_not_allowed"),
        ),
    ] {
        let mut c = claims_for("u");
        let ns = &mut c["claims.jwt.hasura.io"];
        ns["x-hasura-allowed-roles"] = allowed.clone();
        ns["x-hasura-default-role"] = default.clone();
        if !claimed.is_null() {
            ns["x-hasura-role"] = claimed.clone();
        }
        let t = mint(Algorithm::HS256, SECRET, c, None);
        let o = decide_token(&server, &t).await;
        let ctx = format!("allowed {allowed} default {default} role {claimed}");
        match expect {
            Ok(role) => {
                assert_allowed(&o, &ctx);
                assert_eq!(o.headers["x-hasura-role"], role, "{ctx}");
            }
            Err(reason) => assert_denied(&o, reason, &ctx),
        }
    }
}

/// Client-supplied session headers, their underscore spellings and
/// authgate's own inputs never reach the upstream: overwritten when authgate
/// sets them, in `headers_to_remove` otherwise, for every mode type.
#[tokio::test]
async fn client_session_headers_and_underscore_variants_are_stripped() {
    let server = TestServer::start(&hs256_config(
        r#"    - mode: apiKey
      tokenLocation: {in: header, name: X-API-Key}
      value: {value: "service-key-123"}
      sessionVariables: {x-hasura-role: {value: service}}"#,
    ))
    .await;
    let t = mint(Algorithm::HS256, SECRET, claims_for("u-1"), None);
    let auth = bearer(&t);
    let spoofed: [(&str, &[u8]); 12] = [
        ("x-hasura-role", b"admin"),
        ("X-Hasura-User-Id", b"admin-id"),
        ("x_hasura_role", b"admin"),
        ("X_HASURA_USER_ID", b"admin-id"),
        ("x_Hasura_Org_Id", b"7"),
        ("x-hasura-admin-secret", b"guess"),
        ("X-HASURA-ADMIN-SECRET", b"guess"),
        ("x-hasura-auth-elevated", b"u-1"),
        ("x_hasura_auth_elevated", b"u-1"),
        ("x-elevation-token", b"forged"),
        ("x_elevation_token", b"forged"),
        ("x_rely_auth_mode", b"jwt"),
    ];
    // JWT session (sets role and user id). The mode selector is honoured
    // (it names this mode), then stripped.
    let mut headers = vec![
        ("authorization", auth.as_bytes()),
        ("x-rely-auth-id", b"users".as_slice()),
    ];
    headers.extend_from_slice(&spoofed[1..]);
    let o = decide_raw(&server, &headers).await;
    assert_allowed(&o, "jwt");
    assert_eq!(o.headers["x-hasura-user-id"], "u-1");
    assert_eq!(o.headers["x-hasura-role"], "user");
    for name in [
        "x_hasura_role",
        "x_hasura_user_id",
        "x_hasura_org_id",
        "x-hasura-admin-secret",
        "x-hasura-auth-elevated",
        "x_hasura_auth_elevated",
        "x-elevation-token",
        "x_elevation_token",
        "x-rely-auth-id",
        "x_rely_auth_mode",
    ] {
        assert!(
            o.removed.iter().any(|r| r == name),
            "{name} not removed: {:?}",
            o.removed
        );
    }
    for (k, _, append, action) in &o.header_options {
        assert!(!o.removed.contains(k), "{k} both set and removed");
        assert_eq!((*append, *action), (Some(false), 2), "{k} must overwrite");
    }
    // apiKey session (sets only the role): a client user id is removed, and
    // the client's role request is overwritten, not obeyed.
    let mut headers = vec![("x-api-key", b"service-key-123".as_slice())];
    headers.extend_from_slice(&spoofed);
    let o = decide_raw(&server, &headers).await;
    assert_allowed(&o, "apiKey");
    assert_eq!(o.headers["x-hasura-role"], "service");
    assert!(!o.headers.contains_key("x-hasura-user-id"));
    assert!(
        o.removed.iter().any(|r| r == "x-hasura-user-id"),
        "{:?}",
        o.removed
    );
    assert!(
        !o.removed.iter().any(|r| r == "x-hasura-role"),
        "{:?}",
        o.removed
    );
}

/// Spellings that mix `-` and `_` fold to `X_HASURA_ROLE` in CGI-style
/// upstreams (WSGI, Rack, PHP, nginx with underscores_in_headers on), just
/// as `x_hasura_role` does, so they must be stripped too.
#[tokio::test]
async fn mixed_dash_underscore_spellings_are_stripped() {
    let server = TestServer::start(&hs256_config("")).await;
    let t = mint(Algorithm::HS256, SECRET, claims_for("u-1"), None);
    let auth = bearer(&t);
    let names = [
        "x-hasura_role",
        "x-hasura_user-id",
        "x_hasura-role",
        "x_hasura-user_id",
        "x-elevation_token",
        "x_elevation-token",
        "x-rely_auth-id",
    ];
    let mut headers = vec![("authorization", auth.as_bytes())];
    for n in names {
        headers.push((n, b"admin".as_slice()));
    }
    let o = decide_raw(&server, &headers).await;
    assert_allowed(&o, "mixed spellings");
    for n in names {
        assert!(
            o.removed.iter().any(|r| r == n),
            "{n} not removed: {:?}",
            o.removed
        );
    }
}

// ---------------------------------------------------------------------------
// Elevation: grants, WebAuthn, paths
// ---------------------------------------------------------------------------

const ORIGIN: &str = "https://app.example.com";

fn elevation_config(db: &std::path::Path) -> String {
    hs256_config(&format!(
        r#"  elevation:
    mode: required
    routes:
      - {{methods: [POST], path: /v1/user/password}}
      - {{pathPrefix: /admin/}}
    webauthn: {{rpId: example.com, rpName: Example, origins: ["{ORIGIN}"]}}
    grant: {{ttl: 900}}
    store: {{url: "sqlite://{}"}}
"#,
        db.display()
    ))
}

fn user_token(user: &str) -> String {
    mint(Algorithm::HS256, SECRET, claims_for(user), None)
}

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(server: &TestServer) -> Self {
        Api {
            base: server.http_url(""),
            client: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        grant: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut rb = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(g) = grant {
            rb = rb.header("x-elevation-token", g);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn registration(&self, token: &str, key: &mut SoftPasskey) -> Value {
        let (status, options) = self
            .call("POST", "/user/webauthn/add", token, None, Some(&json!({})))
            .await;
        assert_eq!(status, 200, "{options}");
        let options: CreationChallengeResponse = serde_json::from_value(options).unwrap();
        let credential = key
            .do_registration(Url::parse(ORIGIN).unwrap(), options)
            .unwrap();
        json!({"credential": serde_json::to_value(&credential).unwrap()})
    }

    async fn register(&self, token: &str, key: &mut SoftPasskey) {
        let body = self.registration(token, key).await;
        let (status, answer) = self
            .call("POST", "/user/webauthn/verify", token, None, Some(&body))
            .await;
        assert_eq!(status, 200, "{answer}");
    }

    async fn begin(&self, token: &str) -> Value {
        let (status, options) = self
            .call("POST", "/elevate/webauthn", token, None, Some(&json!({})))
            .await;
        assert_eq!(status, 200, "{options}");
        options
    }

    fn sign(key: &mut SoftPasskey, options: Value) -> Value {
        let options: RequestChallengeResponse = serde_json::from_value(options).unwrap();
        let credential = key
            .do_authentication(Url::parse(ORIGIN).unwrap(), options)
            .unwrap();
        json!({"credential": serde_json::to_value(&credential).unwrap()})
    }

    async fn finish(&self, token: &str, body: &Value) -> (u16, Value) {
        self.call("POST", "/elevate/webauthn/verify", token, None, Some(body))
            .await
    }

    async fn elevate(&self, token: &str, key: &mut SoftPasskey) -> String {
        let options = self.begin(token).await;
        let (status, answer) = self.finish(token, &Self::sign(key, options)).await;
        assert_eq!(status, 200, "{answer}");
        answer["elevationToken"].as_str().unwrap().to_owned()
    }
}

async fn protected(server: &TestServer, token: &str, extra: &[(&str, &str)]) -> Outcome {
    let auth = bearer(token);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    outcome(
        &server
            .check_request(check_request(&headers, "/v1/user/password"))
            .await,
    )
}

#[track_caller]
fn assert_elevation_required(o: &Outcome, ctx: &str) {
    assert_denied(o, "elevation_required", ctx);
    assert_eq!(
        o.headers["www-authenticate"], "Bearer error=\"insufficient_user_authentication\"",
        "{ctx}"
    );
}

/// Forged, re-signed, foreign and misplaced elevation grants never elevate.
#[tokio::test]
async fn forged_and_foreign_elevation_grants() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&elevation_config(&dir.path().join("a.db"))).await;
    let api = Api::new(&server);
    let alice = user_token("alice");
    let bob = user_token("bob");
    let mut key = SoftPasskey::new(true);
    api.register(&alice, &mut key).await;
    let grant = api.elevate(&alice, &mut key).await;
    // Control.
    let o = protected(&server, &alice, &[("x-elevation-token", &grant)]).await;
    assert_allowed(&o, "genuine grant");
    assert_eq!(o.headers["x-hasura-auth-elevated"], "alice");

    let parts: Vec<&str> = grant.split('.').collect();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let payload: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let jwks_text = reqwest::get(server.http_url("/.well-known/jwks.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let jwks: Value = serde_json::from_str(&jwks_text).unwrap();
    let with_header = |h: Value, sig: &str| format!("{}.{}.{sig}", b64(h.to_string()), parts[1]);
    let mut none_header = header.clone();
    none_header["alg"] = json!("none");
    let resigned_payload = |p: Value| format!("{}.{}.{}", parts[0], b64(p.to_string()), parts[2]);
    let mut other_sub = payload.clone();
    other_sub["sub"] = json!("bob");
    let mut other_ath = payload.clone();
    other_ath["ath"] = json!(authgate::elevation::token_hash(&bob));
    let mut hs_header = header.clone();
    hs_header["alg"] = json!("HS256");
    let hs_with = |secret: &str| sign_raw(Algorithm::HS256, secret, hs_header.clone(), &payload);
    let x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();

    // A second authgate with its own generated key issues its own grant for the same token.
    let other = TestServer::start(&elevation_config(&dir.path().join("b.db"))).await;
    let other_api = Api::new(&other);
    let mut other_key = SoftPasskey::new(true);
    other_api.register(&alice, &mut other_key).await;
    let foreign = other_api.elevate(&alice, &mut other_key).await;
    assert_allowed(
        &protected(&other, &alice, &[("x-elevation-token", &foreign)]).await,
        "foreign control",
    );

    let cases: Vec<(&str, String)> = vec![
        (
            "alg none, no signature",
            with_header(none_header.clone(), ""),
        ),
        (
            "alg none, real signature",
            with_header(none_header, parts[2]),
        ),
        ("HS256 keyed with the published JWKS", hs_with(&jwks_text)),
        ("HS256 keyed with the public x coordinate", hs_with(&x)),
        ("sub changed", resigned_payload(other_sub)),
        ("ath changed", resigned_payload(other_ath)),
        ("grant of another authgate", foreign.clone()),
        ("the access token as a grant", alice.clone()),
        ("truncated", grant[..grant.len() - 10].to_string()),
        ("empty", String::new()),
    ];
    for (name, forged) in &cases {
        assert_elevation_required(
            &protected(&server, &alice, &[("x-elevation-token", forged)]).await,
            name,
        );
        let cookie = format!("x-elevation-token={forged}");
        assert_elevation_required(
            &protected(&server, &alice, &[("cookie", &cookie)]).await,
            name,
        );
    }
    // The genuine grant for Alice, presented with Bob's token, in a cookie.
    let cookie = format!("theme=dark; x-elevation-token={grant}");
    assert_elevation_required(
        &protected(&server, &bob, &[("cookie", &cookie)]).await,
        "bob + alice's grant",
    );
    // Two grant headers: ambiguous, even when both are genuine.
    let auth = bearer(&alice);
    for second in [grant.as_str(), "junk"] {
        let req = check_request_raw(&[
            (":path", b"/v1/user/password"),
            ("authorization", auth.as_bytes()),
            ("x-elevation-token", grant.as_bytes()),
            ("x-elevation-token", second.as_bytes()),
        ]);
        let mut req = with_method(req, "POST");
        req.attributes
            .as_mut()
            .unwrap()
            .request
            .as_mut()
            .unwrap()
            .http
            .as_mut()
            .unwrap()
            .path = "/v1/user/password".into();
        assert_elevation_required(
            &outcome(&server.check_request(req).await),
            "two grant headers",
        );
    }
    // A client's elevated header for someone else is replaced by authgate's.
    let o = protected(
        &server,
        &alice,
        &[
            ("x-elevation-token", &grant),
            ("x-hasura-auth-elevated", "bob"),
        ],
    )
    .await;
    assert_allowed(&o, "spoofed elevated header");
    assert_eq!(o.headers["x-hasura-auth-elevated"], "alice");
    // Alice's grant does not let Bob delete Alice's key, nor his own.
    let (status, list) = api.call("GET", "/user/webauthn", &alice, None, None).await;
    assert_eq!(status, 200);
    let id = list["keys"][0]["id"].as_str().unwrap().to_owned();
    let (status, body) = api
        .call(
            "DELETE",
            &format!("/user/webauthn/{id}"),
            &bob,
            Some(&grant),
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("elevation_required")),
        "{body}"
    );
    let (status, _) = api.call("GET", "/user/webauthn", &alice, None, None).await;
    assert_eq!(status, 200);
    let m = server.metrics().await;
    assert!(
        m.contains(r#"authgate_elevation_failures_total{reason="invalid_grant"}"#),
        "{m}"
    );
}

/// WebAuthn: one user's security key cannot answer another user's
/// challenge; registration responses cannot be replayed or moved to another
/// user; tampered client data and hostile bodies are refused cleanly.
#[tokio::test]
async fn webauthn_cross_user_replayed_and_malformed_ceremonies() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&elevation_config(&dir.path().join("w.db"))).await;
    let api = Api::new(&server);
    let alice = user_token("alice");
    let bob = user_token("bob");
    let mut alice_key = SoftPasskey::new(true);
    let mut bob_key = SoftPasskey::new(true);

    // A registration response replayed, or moved to another user.
    let reg = api.registration(&alice, &mut alice_key).await;
    let (status, body) = api
        .call("POST", "/user/webauthn/verify", &bob, None, Some(&reg))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_challenge")),
        "{body}"
    );
    let (status, body) = api
        .call("POST", "/user/webauthn/verify", &alice, None, Some(&reg))
        .await;
    assert_eq!(status, 200, "{body}");
    // Replayed: a second key needs elevation first, and with it the used
    // challenge is refused.
    let (status, body) = api
        .call("POST", "/user/webauthn/verify", &alice, None, Some(&reg))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("elevation_required")),
        "{body}"
    );
    let grant = api.elevate(&alice, &mut alice_key).await;
    let (status, body) = api
        .call(
            "POST",
            "/user/webauthn/verify",
            &alice,
            Some(&grant),
            Some(&reg),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_challenge")),
        "{body}"
    );
    api.register(&bob, &mut bob_key).await;

    // Alice's key signs Bob's challenge (allowCredentials swapped to hers).
    let alice_options = api.begin(&alice).await;
    let mut bob_options = api.begin(&bob).await;
    bob_options["publicKey"]["allowCredentials"] =
        alice_options["publicKey"]["allowCredentials"].clone();
    let crossed = Api::sign(&mut alice_key, bob_options);
    let (status, body) = api.finish(&bob, &crossed).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("ceremony_failed")),
        "{body}"
    );
    // ... and Alice cannot finish Bob's challenge with it either.
    let (status, _) = api.finish(&alice, &crossed).await;
    assert_eq!(status, 400);

    // Tampered clientDataJSON: type, origin, challenge.
    for (field, value) in [
        ("type", json!("webauthn.create")),
        ("origin", json!("https://evil.example.net")),
        ("crossOrigin", json!(true)),
    ] {
        let options = api.begin(&alice).await;
        let mut a = Api::sign(&mut alice_key, options);
        let cdj = URL_SAFE_NO_PAD
            .decode(
                a["credential"]["response"]["clientDataJSON"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        let mut cd: Value = serde_json::from_slice(&cdj).unwrap();
        cd[field] = value;
        a["credential"]["response"]["clientDataJSON"] = json!(b64(cd.to_string()));
        let (status, body) = api.finish(&alice, &a).await;
        // Fields checked before the signature name what is wrong; any other
        // change breaks the signature over clientDataJSON.
        let cause = match field {
            "type" => "wrong_ceremony",
            "origin" => "origin_mismatch",
            _ => "bad_signature",
        };
        assert_eq!(
            (status, body["error"].as_str(), body["cause"].as_str()),
            (401, Some("ceremony_failed"), Some(cause)),
            "{field}: {body}"
        );
    }
    // A genuine assertion still works afterwards, once.
    let options = api.begin(&alice).await;
    let a = Api::sign(&mut alice_key, options);
    assert_eq!(api.finish(&alice, &a).await.0, 200);
    assert_eq!(api.finish(&alice, &a).await.0, 400);

    // Hostile bodies: deep nesting, wrong types, huge.
    let deep = format!(
        r#"{{"credential":{}{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    assert!(deep.len() < authgate::http::MAX_WEBAUTHN_BODY_BYTES);
    for body in [
        deep.clone(),
        r#"{"credential": "x"}"#.to_string(),
        "[]".to_string(),
        "{".to_string(),
    ] {
        let resp = reqwest::Client::new()
            .post(server.http_url("/elevate/webauthn/verify"))
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "invalid_request");
    }
    let huge = format!(
        r#"{{"nickname":"{}"}}"#,
        "n".repeat(authgate::http::MAX_WEBAUTHN_BODY_BYTES)
    );
    let resp = reqwest::Client::new()
        .post(server.http_url("/user/webauthn/add"))
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413, "WebAuthn body cap");
    // Nicknames with control characters are refused.
    let (status, body) = api
        .call(
            "POST",
            "/user/webauthn/add",
            &alice,
            None,
            Some(&json!({"nickname": "a\r\nb"})),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
}

/// Spellings of a protected path that a proxy or upstream resolves to it
/// must need elevation; look-alikes that resolve elsewhere must not.
#[tokio::test]
async fn path_normalization_bypasses_on_elevated_routes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&elevation_config(&dir.path().join("p.db"))).await;
    let token = user_token("alice");
    let auth = bearer(&token);
    let decide_path = |method: &'static str, path: String| {
        let req = with_method(check_request(&[("authorization", &auth)], &path), method);
        let server = &server;
        async move { outcome(&server.check_request(req).await) }
    };
    for (method, path) in [
        ("POST", "/v1/user/password"),
        ("post", "/v1/user/password"),
        ("POST", "/v1/user/password/"),
        ("POST", "/v1/user/password?"),
        ("POST", "/v1/user/password#f"),
        ("POST", "/v1%2fuser%2fpassword"),
        ("POST", "/v1%5cuser%5cpassword"),
        ("POST", "/%76%31/user/password"),
        ("POST", "//v1/user/password"),
        // Matrix parameters: Tomcat / Spring / Jetty route these to the protected handler.
        ("POST", "/v1/user/password;jsessionid=1"),
        ("POST", "/v1/user;x=1/password"),
        // Case: Express (nhost's hasura-auth) and ASP.NET route case-insensitively.
        ("POST", "/V1/USER/PASSWORD"),
        ("POST", "/v1/User/Password"),
        ("POST", "/v1/user/pa\u{17f}\u{17f}word"),
        ("GET", "/ADMIN/users"),
        ("GET", "/Admin"),
        ("GET", "/admin"),
        ("GET", "/admin/"),
        ("GET", "/adm%C4%B1n/x"),
        ("GET", "/admin;x/users"),
        // Double encoding: a proxy and an upstream may each decode once.
        ("POST", "/v1/user%252Fpassword"),
    ] {
        assert_elevation_required(
            &decide_path(method, path.into()).await,
            &format!("{method} {path}"),
        );
    }
    // Dot segments, in any spelling: upstreams resolve them in different
    // ways (before or after merging `//`, or not at all); refused.
    for (method, path) in [
        ("POST", "/v1/x/%2e%2e/user/password"),
        ("POST", "/v1/x/%2E%2E/user/password"),
        ("POST", "/v1/x/.%2e/user/password"),
        ("POST", "/v1/user/%2e/password"),
        ("POST", "/v1/user/password/."),
        ("POST", "/./v1/user/password"),
        ("POST", "/../v1/user/password"),
        ("POST", "/v1//../user/password"),
        ("POST", "/v1/x/..;/user/password"),
        ("GET", "/public/..%2fadmin/x"),
        ("GET", "/admin/../admin/x"),
        ("GET", "/public/%252e%252e/admin/x"),
    ] {
        assert_denied(
            &decide_path(method, path.into()).await,
            "invalid_request",
            &format!("{method} {path}"),
        );
    }
    // Resolve to other resources on a single-decoding, case-sensitive or not,
    // RFC 3986 upstream: no elevation, and no elevated header either.
    for (method, path) in [
        ("GET", "/v1/user/password"),
        ("POST", "/v1/user/passwords"),
        ("POST", "/v1/user/password."),
        ("GET", "/administrator"),
    ] {
        let o = decide_path(method, path.into()).await;
        assert_allowed(&o, &format!("{method} {path}"));
        assert!(!o.headers.contains_key("x-hasura-auth-elevated"));
    }

    // The HTTP front doors: nginx's X-Original-URI, and Envoy's HTTP
    // ext_authz path after /check sent raw (a URL library would resolve it).
    for uri in [
        "/v1%2fuser%2fpassword",
        "/V1/user/password;a=b",
        "/v1/user/password",
    ] {
        let (status, h, body) = http(
            &server,
            "GET",
            "/check",
            &[
                ("authorization", auth.as_bytes()),
                ("x-original-uri", uri.as_bytes()),
                ("x-original-method", b"POST"),
            ],
        )
        .await;
        assert_eq!(
            (status, h["x-authgate-reason"].to_str().unwrap()),
            (401, "elevation_required"),
            "{uri}: {body}"
        );
    }
    // A client's X-Forwarded-Uri beside nginx's X-Original-URI: the two
    // disagree, and without `forwardAuth.proxy` that is refused.
    let (status, _, _) = http(
        &server,
        "GET",
        "/check",
        &[
            ("authorization", auth.as_bytes()),
            ("x-original-uri", b"/v1/user/password"),
            ("x-forwarded-uri", b"/public"),
            ("x-original-method", b"POST"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    for (target, want) in [
        ("/check/v1/x/%2e%2e/user/password", 400),
        ("/check/v1/x/..%2fuser/password", 400),
        ("/check//v1/user/password;x", 401),
        ("/check/v1%2fuser%2fpassword", 401),
    ] {
        let (status, text) = raw_http(
            server.running.http_addr,
            format!("POST {target} HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, want, "{target}: {text}");
        let reason = if want == 401 {
            "elevation_required"
        } else {
            "invalid_request"
        };
        assert!(text.contains(reason), "{target}: {text}");
    }
}

// ---------------------------------------------------------------------------
// Cancelled streams (HTTP/2 resets)
// ---------------------------------------------------------------------------

/// A raw HTTP/2 connection to the gRPC address, and one Check on it as Envoy
/// sends it (pre-encoded body, `te: trailers`).
async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

fn check_post() -> http::Request<()> {
    http::Request::post("/envoy.service.auth.v3.Authorization/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

fn grpc_frame(req: &CheckRequest) -> bytes::Bytes {
    use prost::Message as _;
    let msg = req.encode_to_vec();
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&msg);
    out.into()
}

/// The decision code of one Check on `send`, or the HTTP/2 error that ended it.
async fn h2_check(
    send: &h2::client::SendRequest<bytes::Bytes>,
    body: bytes::Bytes,
) -> Result<i32, String> {
    use prost::Message as _;
    let mut send = send.clone().ready().await.map_err(|e| e.to_string())?;
    let (response, mut stream) = send
        .send_request(check_post(), false)
        .map_err(|e| e.to_string())?;
    stream.send_data(body, true).map_err(|e| e.to_string())?;
    let mut recv = response.await.map_err(|e| e.to_string())?.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.map_err(|e| e.to_string())?;
    let grpc_status = trailers.as_ref().and_then(|t| t.get("grpc-status"));
    if grpc_status.is_none_or(|s| s != "0") || data.len() < 5 {
        return Err(format!("grpc-status {grpc_status:?}"));
    }
    let msg = envoy_types::pb::envoy::service::auth::v3::CheckResponse::decode(&data[5..])
        .map_err(|e| e.to_string())?;
    Ok(msg.status.map_or(-1, |s| s.code))
}

/// Opens `n` Check streams and resets each at once (RST_STREAM CANCEL), all
/// in one write: the server reads them before it accepts any.
async fn cancel_burst(send: &h2::client::SendRequest<bytes::Bytes>, n: usize) {
    for _ in 0..n {
        let Ok(mut ready) = send.clone().ready().await else {
            return;
        };
        let Ok((_response, mut stream)) = ready.send_request(check_post(), false) else {
            return;
        };
        stream.send_reset(h2::Reason::CANCEL);
    }
    // Let the connection task flush and the server read the burst.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Envoy resets its ext_authz stream whenever the downstream request goes
/// away (client gone, route timeout), often many at once. hyper's default
/// closes the connection (GOAWAY ENHANCE_YOUR_CALM) after 20 resets of
/// streams it has not accepted yet, which failed every other check in flight
/// on it: Envoy answered 403 to unrelated requests (seen in the benchmark
/// through Envoy). Bursts of 500 must leave the connection serving; a reset
/// flood (CVE-2023-44487, "rapid reset", 20 000 streams) may close its own
/// connection (hyper still counts, up to the stream limit), and the server
/// keeps serving every other.
/// The test runtime is single-threaded, so each burst reaches the server in
/// one read, before it accepts any stream.
#[tokio::test]
async fn cancelled_checks_keep_the_connection_and_reset_floods_stay_contained() {
    let server = TestServer::start(&hs256_config("")).await;
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("u1", &["user"], "user"),
        None,
    );
    let auth = bearer(&token);
    let body = grpc_frame(&check_request(&[("authorization", &auth)], "/graphql"));
    let addr = server.running.grpc_addr;

    let send = h2_connect(addr).await;
    assert_eq!(h2_check(&send, body.clone()).await, Ok(0));
    for round in 0..3 {
        cancel_burst(&send, 500).await;
        assert_eq!(
            h2_check(&send, body.clone()).await,
            Ok(0),
            "round {round}: the connection survives 500 cancelled checks"
        );
    }

    let flood = h2_connect(addr).await;
    cancel_burst(&flood, 20_000).await;
    match h2_check(&flood, body.clone()).await {
        Ok(code) => assert_eq!(
            code, 0,
            "a flooded connection that stays open answers right"
        ),
        Err(e) => assert!(
            e.contains("too_many_resets"),
            "closed for the flood only: {e}"
        ),
    }
    let fresh = h2_connect(addr).await;
    assert_eq!(
        h2_check(&fresh, body.clone()).await,
        Ok(0),
        "other connections are served after a reset flood"
    );
    assert_eq!(
        h2_check(&send, body).await,
        Ok(0),
        "and so is the first one"
    );
}

// ---------------------------------------------------------------------------
// Forward auth: which headers describe the original request
// ---------------------------------------------------------------------------

/// Elevation routes for the forward-auth and route-matching attacks.
fn routes_config(db: &std::path::Path, settings: &str) -> String {
    hs256_config(&format!(
        r#"{settings}  elevation:
    mode: required
    routes:
      - {{methods: [POST], path: /v1/user/password}}
      - {{methods: [DELETE], path: /v1/keys}}
      - {{methods: [GET], path: /v1/secrets}}
      - {{path: /v1/account:changePassword}}
      - {{pathPrefix: /users/@me/}}
      - {{path: /v1/slash/}}
    webauthn: {{rpId: example.com, rpName: Example, origins: ["{ORIGIN}"]}}
    store: {{url: "sqlite://{}"}}
"#,
        db.display()
    ))
}

fn forward_auth(proxy: &str) -> String {
    format!("  settings:\n    forwardAuth: {{proxy: {proxy}}}\n")
}

/// `GET /check` as Traefik's forwardAuth sends it for `method uri`, plus
/// whatever the client added (Traefik passes every other header through).
async fn traefik_check(
    server: &TestServer,
    token: &str,
    method: &str,
    uri: &str,
    client: &[(&str, &str)],
) -> (u16, String) {
    let auth = bearer(token);
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("authorization", auth.as_bytes()),
        ("x-forwarded-method", method.as_bytes()),
        ("x-forwarded-uri", uri.as_bytes()),
        ("x-forwarded-host", b"api.example.com"),
        ("x-forwarded-proto", b"https"),
        ("x-forwarded-for", b"203.0.113.9"),
    ];
    headers.extend(client.iter().map(|(k, v)| (*k, v.as_bytes())));
    let (status, h, _) = http(server, "GET", "/check", &headers).await;
    let reason = h
        .get("x-authgate-reason")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, reason)
}

/// A client's copy of another proxy's headers must not change which request
/// authgate decides on (Traefik passes `X-Original-Method: GET` on to the
/// auth server; authgate used to prefer it to Traefik's own header).
#[tokio::test]
async fn forward_auth_reads_only_the_configured_proxys_headers() {
    let dir = tempfile::tempdir().unwrap();
    let token = user_token("alice");
    let elevation = (401, "elevation_required".to_owned());
    let refused = (400, "invalid_request".to_owned());

    // Not configured: every source is read; disagreeing or repeated ones
    // are refused.
    let any = TestServer::start(&routes_config(&dir.path().join("a.db"), "")).await;
    let post = |client: &'static [(&'static str, &'static str)]| {
        traefik_check(&any, &token, "POST", "/v1/user/password", client)
    };
    assert_eq!(post(&[]).await, elevation);
    for client in [
        &[("x-original-method", "GET")][..],
        &[("x-original-method", "")],
        &[("x-original-method", "get ")],
        &[("x-original-uri", "/public")],
        &[("x-original-uri", "")],
        &[("x-forwarded-method", "GET")],
        &[("x-forwarded-method", "POST")],
        &[("x-forwarded-uri", "/v1/user/password")],
    ] {
        assert_eq!(post(client).await, refused, "{client:?}");
    }
    // A whole copy that agrees changes nothing; half of one is refused.
    assert_eq!(
        post(&[
            ("x-original-method", "POST"),
            ("x-original-uri", "/v1/user/password")
        ])
        .await,
        elevation
    );
    assert_eq!(post(&[("x-original-method", "POST")]).await, refused);
    // Envoy's HTTP ext_authz (`/check/<path>`, original method): headers
    // that disagree with the call itself are refused too.
    let auth = bearer(&token);
    for (extra, want) in [
        (None, 401),
        (Some(("x-original-method", "GET")), 400),
        (Some(("x-forwarded-method", "GET")), 400),
        (Some(("x-original-uri", "/public")), 400),
    ] {
        let mut headers: Vec<(&str, &[u8])> = vec![("authorization", auth.as_bytes())];
        if let Some((k, v)) = extra {
            headers.push((k, v.as_bytes()));
        }
        let (status, _, body) = http(&any, "POST", "/check/v1/user/password", &headers).await;
        assert_eq!(status, want, "{extra:?}: {body}");
    }

    // Traefik: only X-Forwarded-Method and X-Forwarded-Uri count.
    let traefik = TestServer::start(&routes_config(
        &dir.path().join("t.db"),
        &forward_auth("traefik"),
    ))
    .await;
    for client in [
        &[][..],
        &[("x-original-method", "GET")],
        &[("x-original-method", "")],
        &[("x-original-uri", "/public")],
    ] {
        assert_eq!(
            traefik_check(&traefik, &token, "POST", "/v1/user/password", client).await,
            elevation,
            "{client:?}"
        );
    }
    assert_eq!(
        traefik_check(
            &traefik,
            &token,
            "POST",
            "/v1/user/password",
            &[("x-forwarded-method", "GET")]
        )
        .await,
        refused,
        "a repeated source"
    );
    // Without Traefik's headers, the proxy is not the one configured.
    let (status, h, _) = http(
        &traefik,
        "GET",
        "/check",
        &[("authorization", auth.as_bytes())],
    )
    .await;
    assert_eq!(
        (status, h["x-authgate-reason"].to_str().unwrap()),
        (503, "internal_error")
    );

    // nginx: only X-Original-Method and X-Original-URI count.
    let nginx = TestServer::start(&routes_config(
        &dir.path().join("n.db"),
        &forward_auth("nginx"),
    ))
    .await;
    let (status, h, _) = http(
        &nginx,
        "GET",
        "/check",
        &[
            ("authorization", auth.as_bytes()),
            ("x-original-method", b"POST"),
            ("x-original-uri", b"/v1/user/password"),
            ("x-forwarded-method", b"GET"),
            ("x-forwarded-uri", b"/public"),
        ],
    )
    .await;
    assert_eq!(
        (status, h["x-authgate-reason"].to_str().unwrap()),
        (401, "elevation_required")
    );

    // Envoy: the call's own method and path; no header counts.
    let envoy = TestServer::start(&routes_config(
        &dir.path().join("e.db"),
        &forward_auth("envoy"),
    ))
    .await;
    let (status, _, _) = http(
        &envoy,
        "POST",
        "/check/v1/user/password",
        &[
            ("authorization", auth.as_bytes()),
            ("x-original-method", b"GET"),
            ("x-forwarded-method", b"GET"),
            ("x-original-uri", b"/public"),
            ("x-forwarded-uri", b"/public"),
        ],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = http(
        &envoy,
        "GET",
        "/check/public",
        &[("authorization", auth.as_bytes())],
    )
    .await;
    assert_eq!(status, 200);
}

/// Other headers the forward-auth door could be made to trust: method
/// overrides (a POST acting as DELETE upstream), and `X-Forwarded-For`
/// (the client's left-most entries never count).
#[tokio::test]
async fn method_overrides_and_forwarded_for_cannot_dodge_rules() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&routes_config(&dir.path().join("m.db"), "")).await;
    let token = user_token("alice");
    let auth = bearer(&token);
    for (method, path, extra) in [
        ("POST", "/v1/keys", ("x-http-method-override", "DELETE")),
        ("POST", "/v1/keys", ("x-http-method", "delete")),
        ("POST", "/v1/keys", ("x-method-override", "PUT,DELETE")),
        ("POST", "/v1/keys?_method=DELETE", ("x-unrelated", "1")),
        ("PUT", "/v1/keys?x=1&_method=delete", ("x-unrelated", "1")),
        // HEAD is served by the GET handler.
        ("HEAD", "/v1/secrets", ("x-unrelated", "1")),
        ("POST", "/v1/secrets", ("x-http-method-override", "GET")),
    ] {
        let req = with_method(
            check_request(&[("authorization", &auth), extra], path),
            method,
        );
        assert_elevation_required(
            &outcome(&server.check_request(req).await),
            &format!("{method} {path} {extra:?}"),
        );
        let (status, reason) = traefik_check(&server, &token, method, path, &[extra]).await;
        assert_eq!(
            (status, reason.as_str()),
            (401, "elevation_required"),
            "{method} {path} {extra:?}"
        );
    }
    let req = with_method(
        check_request(
            &[
                ("authorization", &auth),
                ("x-http-method-override", "PATCH"),
            ],
            "/v1/keys",
        ),
        "POST",
    );
    assert_allowed(
        &outcome(&server.check_request(req).await),
        "an override to a method no route names",
    );

    // An IP rule reads the right-most X-Forwarded-For entry, the one the
    // proxy added: a client's own entries in front of it change nothing.
    let ip_server = TestServer::start(&hs256_config(
        r#"    - id: internal
      mode: apiKey
      tokenLocation: {in: header, name: X-Api-Key}
      value: {value: internal-key}
      sessionVariables: {x-hasura-role: {value: service}}
      securityRules:
        allowedIPs: {include: {value: ["10.0.0.0/8"]}}
"#,
    ))
    .await;
    for (xff, want) in [
        ("10.1.2.3", 200),
        ("203.0.113.9", 403),
        ("10.1.2.3, 203.0.113.9", 403),
        ("10.1.2.3,10.9.9.9, 203.0.113.9", 403),
    ] {
        let (status, _, _) = http(
            &ip_server,
            "GET",
            "/check",
            &[
                ("x-api-key", b"internal-key"),
                ("x-forwarded-for", xff.as_bytes()),
            ],
        )
        .await;
        assert_eq!(status, want, "X-Forwarded-For: {xff}");
    }
}

// ---------------------------------------------------------------------------
// Routes: percent-encodings, trailing slashes, ambiguous paths
// ---------------------------------------------------------------------------

/// Encoded reserved characters (`%3A`, `%40`) reach the protected handler on
/// Starlette, Go's ServeMux, ASP.NET Core and Spring: they must match the
/// route too, over gRPC and `/check`. A path with no single reading is
/// refused (`invalid_request`).
#[tokio::test]
async fn encoded_reserved_characters_and_ambiguous_paths() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&routes_config(&dir.path().join("r.db"), "")).await;
    let token = user_token("alice");
    let auth = bearer(&token);
    let grpc = |path: &str| {
        let req = check_request(&[("authorization", &auth)], path);
        let server = &server;
        async move { outcome(&server.check_request(req).await) }
    };
    let check_raw = |path: &str| {
        let request = format!(
            "GET /check HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\nX-Original-URI: {path}\r\nX-Original-Method: GET\r\nConnection: close\r\n\r\n"
        );
        raw_http(server.running.http_addr, request)
    };
    for path in [
        "/v1/account:changePassword",
        "/v1/account%3AchangePassword",
        "/v1/account%3achangePassword",
        "/v1/account%253AchangePassword",
        "/v1/%61ccount%3AchangePassword",
        "/users/@me/delete",
        "/users/%40me/delete",
        "/users/%2540me/delete",
        "/users/%40me",
        "/users%2F%40me%2Fdelete",
        // A trailing slash in the config covers the path without it.
        "/v1/slash",
        "/v1/slash/",
    ] {
        assert_elevation_required(&grpc(path).await, path);
        let (status, text) = check_raw(path).await;
        assert_eq!(status, 401, "{path}: {text}");
        assert!(text.contains("elevation_required"), "{path}: {text}");
    }
    for path in [
        "/v1/account%00:changePassword",
        "/users/%40me%00/delete",
        "/v1/account%C0%AFchangePassword",
        "/users/%FF/x",
        "/v1/%0d%0aaccount",
        "/v1/account%25252533AchangePassword",
        "/v1/account%3FchangePassword",
        "/users/%40me%23/delete",
    ] {
        assert_denied(&grpc(path).await, "invalid_request", path);
        let (status, text) = check_raw(path).await;
        assert_eq!(status, 400, "{path}: {text}");
    }
    // Other resources stay open.
    for path in [
        "/v1/accounts",
        "/users/@mex/delete",
        "/v1/slashes",
        "/graphql?x=%00",
    ] {
        assert_allowed(&grpc(path).await, path);
    }
}

// ---------------------------------------------------------------------------
// Empty session values and the client's header of the same name
// ---------------------------------------------------------------------------

/// A session value that renders empty must still replace the client's
/// header: an Envoy that honours `keep_empty_value: false` drops an empty
/// mutation, and the name is not in `headers_to_remove` (authgate sets it).
#[tokio::test]
async fn empty_session_values_still_replace_the_clients_header() {
    let server = TestServer::start(&hs256_config("")).await;
    let mut claims = claims_for("alice");
    claims["claims.jwt.hasura.io"]["x-hasura-org-id"] = json!("");
    claims["claims.jwt.hasura.io"]["x-hasura-tags"] = json!([]);
    let token = mint(Algorithm::HS256, SECRET, claims, None);
    let o = decide(
        &server,
        &[
            ("authorization", &bearer(&token)),
            ("x-hasura-org-id", "victim-org"),
            ("x-hasura_org-id", "victim-org"),
            ("x_hasura-role", "admin"),
        ],
    )
    .await;
    assert_allowed(&o, "empty org id");
    assert_eq!(o.headers["x-hasura-org-id"], "");
    assert!(
        o.kept_empty.contains(&"x-hasura-org-id".to_owned()),
        "{o:?}"
    );
    assert!(!o.removed.contains(&"x-hasura-org-id".to_owned()));
    assert!(
        !o.kept_empty.contains(&"x-hasura-role".to_owned()),
        "non-empty values are plain"
    );
    for spelling in ["x-hasura_org-id", "x_hasura-role"] {
        assert!(
            o.removed.contains(&spelling.to_owned()),
            "{spelling}: {o:?}"
        );
    }

    // /check: the empty header is in the answer (Envoy's HTTP ext_authz
    // copies it, empty, over the client's), and the other spellings are
    // named in x-envoy-auth-headers-to-remove.
    let auth = bearer(&token);
    let (status, h, _) = http(
        &server,
        "GET",
        "/check",
        &[
            ("authorization", auth.as_bytes()),
            ("x-hasura-org-id", b"victim-org"),
            ("x-hasura_org-id", b"victim-org"),
            ("x_hasura-role", b"admin"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(h["x-hasura-org-id"], "");
    let remove = h["x-envoy-auth-headers-to-remove"].to_str().unwrap();
    let remove: Vec<&str> = remove.split(',').collect();
    assert_eq!(remove, ["x-hasura_org-id", "x_hasura-role"]);
}

// ---------------------------------------------------------------------------
// Security settings that would validate and never trigger
// ---------------------------------------------------------------------------

#[tokio::test]
async fn security_settings_that_could_never_trigger_are_refused() {
    let route = |r: &str| {
        hs256_config(&format!(
            "  elevation:\n    mode: required\n    routes:\n      - {r}\n    webauthn: {{rpId: example.com, origins: [\"{ORIGIN}\"]}}\n    store: {{url: \"sqlite::memory:\"}}\n"
        ))
    };
    let no_env = |_: &str| None;
    for (r, needle) in [
        ("{methods: ['*'], path: /a}", "unknown HTTP method `*`"),
        ("{methods: [ANY], path: /a}", "leave `methods` out"),
        ("{methods: [POTS], path: /a}", "unknown HTTP method `POTS`"),
        ("{methods: [], path: /a}", "an empty list"),
        ("{methods: [POST, GETT], path: /a}", "`GETT`"),
        ("{path: '/a%00b'}", "control character"),
        ("{pathPrefix: '/a%FF/'}", "invalid UTF-8"),
    ] {
        let err = authgate::config::parse(&route(r), &no_env)
            .err()
            .unwrap_or_else(|| panic!("{r} validated"))
            .to_string();
        assert!(err.contains(needle), "{r}: {err}");
    }
    for r in ["{methods: [post, Get, HEAD], path: /a}", "{path: /a/}"] {
        assert!(authgate::config::parse(&route(r), &no_env).is_ok(), "{r}");
    }
    let err = authgate::config::parse(
        &hs256_config("  settings:\n    forwardAuth: {proxy: traefk}\n"),
        &no_env,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("unknown proxy `traefk`"), "{err}");

    // Envoy's context_extensions are free-form: an unknown elevation value
    // is refused at request time, never read as "not required".
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&routes_config(&dir.path().join("c.db"), "")).await;
    let plain = TestServer::start(&hs256_config("")).await;
    let token = user_token("alice");
    let auth = bearer(&token);
    for s in [&server, &plain] {
        for (value, want) in [
            ("required", Some("elevation_required")),
            ("REQUIRED", Some("elevation_required")),
            ("optional", None),
            ("true", Some("internal_error")),
            ("yes", Some("internal_error")),
            ("required ", Some("internal_error")),
            ("", Some("internal_error")),
        ] {
            let mut req = check_request(&[("authorization", &auth)], "/graphql");
            req.attributes
                .as_mut()
                .unwrap()
                .context_extensions
                .insert("elevation".into(), value.into());
            let o = outcome(&s.check_request(req).await);
            match want {
                Some(reason) => assert_denied(&o, reason, value),
                None => assert_allowed(&o, value),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Resource floods: what unauthenticated or unfinished requests may hold
// ---------------------------------------------------------------------------

/// Opens a connection and writes `head` (and nothing more).
async fn half_sent(addr: SocketAddr, head: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head).await.unwrap();
    s
}

/// What the server answers on `s` before it closes it: the status of the
/// first response (0 when it closes without one). Gives up after `guard`.
async fn answer_or_close(mut s: tokio::net::TcpStream, guard: Duration) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(guard, read).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    Some(
        text.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    )
}

/// 1100 connections each start `POST /elevate/webauthn/verify` with a body
/// of 100 bytes and send one. Before, each took one of the 1024 HTTP slots
/// shared with `/check` before reading its body and held it until
/// `decisionTimeout` (30 s here): a valid `/check` waited that long for a
/// slot. Ceremonies now read their body within 5 s before taking a slot of
/// their own, at most 256 at once. The 10 s guard on each decision is a
/// liveness bound (answered while the flood holds its connections), far from
/// both the new behaviour (no wait) and the old one (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_ceremony_bodies_cannot_starve_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = elevation_config(&dir.path().join("s.db")).replace(
        "  elevation:\n",
        "  settings: {decisionTimeout: 30}\n  elevation:\n",
    );
    let server = TestServer::start(&yaml).await;
    let token = user_token("alice");
    let auth = bearer(&token);
    let head = format!(
        "POST /elevate/webauthn/verify HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    let mut slow = Vec::new();
    for _ in 0..1100 {
        slow.push(half_sent(server.running.http_addr, head.as_bytes()).await);
    }
    // Every decision still answers, on new connections and over gRPC.
    let guard = Duration::from_secs(10);
    for _ in 0..5 {
        let (status, h, body) = tokio::time::timeout(
            guard,
            http(
                &server,
                "GET",
                "/check",
                &[("authorization", auth.as_bytes())],
            ),
        )
        .await
        .expect("a /check during the flood is answered while the flood holds its connections");
        assert_eq!(status, 200, "{body}");
        assert_eq!(h["x-hasura-role"], "user");
    }
    assert_allowed(
        &decide_token(&server, &token).await,
        "gRPC during the flood",
    );
    // The flood itself: refused at once past the admission limit (503), cut
    // off with 408 after the body deadline; nothing is left hanging.
    let answers = futures_util::future::join_all(
        slow.into_iter()
            .map(|s| answer_or_close(s, Duration::from_secs(60))),
    )
    .await;
    let count = |code: u16| answers.iter().filter(|a| **a == Some(code)).count();
    assert_eq!(count(408) + count(503), 1100, "{:?}", {
        let mut other: Vec<_> = answers
            .iter()
            .filter(|a| !matches!(a, Some(408 | 503)))
            .collect();
        other.dedup();
        other
    });
    assert!(count(408) <= 256, "{} bodies were read at once", count(408));
    // Afterwards a real ceremony call is admitted again.
    let api = Api::new(&server);
    let (status, _) = api
        .call("POST", "/user/webauthn/add", &token, None, Some(&json!({})))
        .await;
    assert_eq!(status, 200);
}

/// One HTTP/2 connection (as a multiplexing proxy would open) may carry 16
/// WebAuthn calls at once: a 17th is refused at once with 429, while the 16
/// wait for their bodies (408 after 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ceremonies_are_limited_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&elevation_config(&dir.path().join("p.db"))).await;
    let auth = bearer(&user_token("alice"));
    let send = h2_connect(server.running.http_addr).await;
    let mut pending = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..authgate::limits::CEREMONIES_PER_CONNECTION + 1 {
        let req = http::Request::post("/elevate/webauthn/verify")
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .header("content-length", "100")
            .body(())
            .unwrap();
        let mut ready = send.clone().ready().await.unwrap();
        let (response, mut stream) = ready.send_request(req, false).unwrap();
        stream
            .send_data(bytes::Bytes::from_static(b"{"), false)
            .unwrap();
        streams.push(stream);
        pending.push(tokio::spawn(tokio::time::timeout(
            Duration::from_secs(30),
            response,
        )));
    }
    let mut statuses = Vec::new();
    for p in pending {
        let status = match p.await.unwrap() {
            Ok(Ok(r)) => r.status().as_u16(),
            other => panic!("no answer: {other:?}"),
        };
        statuses.push(status);
    }
    statuses.sort_unstable();
    let mut want = vec![408; authgate::limits::CEREMONIES_PER_CONNECTION];
    want.push(429);
    assert_eq!(statuses, want);
    drop(streams);
}

/// Request heads that never end: each connection is closed once the
/// header-read timeout (10 s from its first byte) passes, a head over the
/// buffer limit is refused at once, and `/check` answers meanwhile. A
/// kept-alive connection idle for as long is not a slow head: it still
/// serves (client pools keep connections idle for up to 90 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_request_heads_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(&hs256_config("")).await;
    let token = mint(Algorithm::HS256, SECRET, claims_for("alice"), None);
    let request =
        format!("GET /check HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\r\n");
    let mut kept = tokio::net::TcpStream::connect(server.running.http_addr)
        .await
        .unwrap();
    let exchange = async |s: &mut tokio::net::TcpStream| {
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(exchange(&mut kept).await.starts_with("HTTP/1.1 200"));
    let mut head = b"GET /check HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 60 * 1024));
    let mut heads = Vec::new();
    for _ in 0..200 {
        heads.push(half_sent(server.running.http_addr, &head).await);
    }
    let token = mint(Algorithm::HS256, SECRET, claims_for("alice"), None);
    let (status, _, _) = http(
        &server,
        "GET",
        "/check",
        &[("authorization", bearer(&token).as_bytes())],
    )
    .await;
    assert_eq!(status, 200);
    // Over the 72 KiB buffer: 431 at once.
    let mut big = b"GET /check HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 * 1024));
    let s = half_sent(server.running.http_addr, &big).await;
    assert_eq!(answer_or_close(s, Duration::from_secs(5)).await, Some(431));
    // Every half-sent head is closed (408 or a plain close), none held.
    let answers = futures_util::future::join_all(
        heads
            .into_iter()
            .map(|s| answer_or_close(s, Duration::from_secs(30))),
    )
    .await;
    assert!(
        answers.iter().all(|a| matches!(a, Some(0 | 408))),
        "{:?}",
        answers
            .iter()
            .filter(|a| !matches!(a, Some(0 | 408)))
            .collect::<Vec<_>>()
    );
    let answer = exchange(&mut kept).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

/// Silent sockets filling every connection slot (256 on the gRPC address,
/// 2048 on the HTTP one) cannot keep a proxy out: a newcomer closes the
/// connection idle the longest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_cannot_keep_a_proxy_out() {
    let server = TestServer::start(&hs256_config("")).await;
    let token = mint(Algorithm::HS256, SECRET, claims_for("alice"), None);
    let mut silent = Vec::new();
    for _ in 0..authgate::limits::GRPC_MAX_CONNECTIONS {
        silent.push(
            tokio::net::TcpStream::connect(server.running.grpc_addr)
                .await
                .unwrap(),
        );
    }
    for _ in 0..authgate::limits::HTTP_MAX_CONNECTIONS {
        silent.push(
            tokio::net::TcpStream::connect(server.running.http_addr)
                .await
                .unwrap(),
        );
    }
    // Give the listeners time to accept them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let guard = Duration::from_secs(10);
    let o = tokio::time::timeout(guard, decide_token(&server, &token))
        .await
        .expect("a new gRPC connection is served while silent sockets fill the slots");
    assert_allowed(&o, "gRPC");
    let (status, _, _) = tokio::time::timeout(
        guard,
        http(
            &server,
            "GET",
            "/check",
            &[("authorization", bearer(&token).as_bytes())],
        ),
    )
    .await
    .expect("a new HTTP connection is served while silent sockets fill the slots");
    assert_eq!(status, 200);
    drop(silent);
}

/// The gRPC status of a stream: from its trailers, or from a trailers-only
/// response's headers.
async fn grpc_status_of(response: h2::client::ResponseFuture) -> Result<String, String> {
    let response = response.await.map_err(|e| e.to_string())?;
    if let Some(s) = response.headers().get("grpc-status") {
        return Ok(s.to_str().unwrap_or("?").to_owned());
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    Ok(trailers
        .and_then(|t| {
            t.get("grpc-status")
                .map(|s| s.to_str().unwrap_or("?").to_owned())
        })
        .unwrap_or_default())
}

/// One connection opens 300 Check streams, each announcing a ~1 MiB
/// message and withholding its last byte. Before, every stream buffered its
/// megabyte and stayed open (279 MiB held). Now the connection's streams
/// hold at most 8 MiB (`RESOURCE_EXHAUSTED` past it), each message must
/// arrive within 5 s (`DEADLINE_EXCEEDED`), and other connections are
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_grpc_messages_are_bounded_in_bytes_and_time() {
    let server = TestServer::start(&hs256_config("")).await;
    let send = h2_connect(server.running.grpc_addr).await;
    let announced: usize = 1_000_000;
    let mut partial = Vec::with_capacity(announced + 4);
    partial.push(0u8);
    partial.extend_from_slice(&u32::try_from(announced).unwrap().to_be_bytes());
    partial.resize(5 + announced - 1, b'x');
    let partial = bytes::Bytes::from(partial);
    let mut pending = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..300 {
        let mut ready = send.clone().ready().await.unwrap();
        let (response, mut stream) = ready.send_request(check_post(), false).unwrap();
        stream.send_data(partial.clone(), false).unwrap();
        streams.push(stream);
        pending.push(tokio::spawn(tokio::time::timeout(
            Duration::from_secs(30),
            grpc_status_of(response),
        )));
    }
    // Another connection is served while those are open.
    let token = mint(Algorithm::HS256, SECRET, claims_for("alice"), None);
    assert_allowed(&decide_token(&server, &token).await, "another connection");
    let mut statuses = std::collections::BTreeMap::new();
    for p in pending {
        let status = match p.await.unwrap() {
            Ok(Ok(code)) => code,
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "no answer in 30 s".to_owned(),
        };
        *statuses.entry(status).or_insert(0) += 1;
    }
    drop(streams);
    // 8 RESOURCE_EXHAUSTED, 4 DEADLINE_EXCEEDED; nothing else.
    let other: usize = statuses
        .iter()
        .filter(|(k, _)| *k != "8" && *k != "4")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(other, 0, "{statuses:?}");
    assert!(statuses.get("8").copied().unwrap_or(0) > 0, "{statuses:?}");
}

/// Abandoned ceremonies: each `POST /user/webauthn/add` stores a challenge.
/// A user keeps at most 8 pending, and expired ones are deleted on a
/// schedule (every `challengeTtl`, at most a minute), so 300 calls leave no
/// pile of rows behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_challenges_are_bounded_and_purged() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let yaml = elevation_config(&db).replace(
        "    grant: {ttl: 900}\n",
        "    grant: {ttl: 900}\n    challengeTtl: 2\n",
    );
    assert!(yaml.contains("challengeTtl: 2"));
    let server = TestServer::start(&yaml).await;
    let api = Api::new(&server);
    let (alice, bob) = (user_token("alice"), user_token("bob"));
    for i in 0..300 {
        let token = if i % 3 == 0 { &bob } else { &alice };
        let (status, body) = api
            .call("POST", "/user/webauthn/add", token, None, Some(&json!({})))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let url = format!("sqlite://{}", db.display());
    let rows = || {
        let url = url.clone();
        async move {
            let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM authgate_challenges")
                .fetch_one(&mut c)
                .await
                .unwrap();
            n
        }
    };
    let after_calls = rows().await;
    assert!(
        after_calls <= 16,
        "{after_calls} pending challenges for two users"
    );
    // Expired after 2 s; the purge runs every 2 s.
    let mut left = after_calls;
    for _ in 0..100 {
        left = rows().await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "expired challenges are deleted");
}
