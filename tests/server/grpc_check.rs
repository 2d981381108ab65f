//! The gRPC ext_authz front door, called as Envoy calls it: a tonic client
//! built from Envoy's protos against the real server on 127.0.0.1:0.

use crate::common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn fixed_key_config(alg: &str, key: &str) -> String {
    let key = serde_json::to_string(key).unwrap();
    format!(
        r#"
definition:
  modes:
    - mode: jwt
      key: {{algorithm: {alg}, key: {{value: {key}}}}}
      claimsConfig:
        namespace: {{location: '"claims.jwt.hasura.io"'}}
"#
    )
}

#[tokio::test]
async fn every_algorithm_family_with_every_fixed_key_form() {
    let rsa = private_key(Algorithm::RS256);
    let cases: Vec<(Algorithm, &str, String, String)> = vec![
        (Algorithm::HS256, "HS256", SECRET.into(), SECRET.into()),
        (
            Algorithm::HS384,
            "HS384",
            SECRET.repeat(2),
            SECRET.repeat(2),
        ),
        (
            Algorithm::HS512,
            "HS512",
            SECRET.repeat(2),
            SECRET.repeat(2),
        ),
        (
            Algorithm::RS256,
            "RS256",
            rsa.clone(),
            fixture("rsa.pub.pem"),
        ),
        (
            Algorithm::RS384,
            "RS384",
            rsa.clone(),
            fixture("rsa.pkcs1.pem"),
        ),
        (Algorithm::RS512, "RS512", rsa.clone(), fixture("rsa.crt")),
        (
            Algorithm::PS256,
            "PS256",
            rsa.clone(),
            fixture("rsa.pub.pem"),
        ),
        (
            Algorithm::PS384,
            "PS384",
            rsa.clone(),
            fixture("rsa.pub.pem"),
        ),
        (
            Algorithm::PS512,
            "PS512",
            rsa.clone(),
            fixture("rsa.pub.pem"),
        ),
        (
            Algorithm::ES256,
            "ES256",
            fixture("ec256.key"),
            fixture("ec256.pub.pem"),
        ),
        (
            Algorithm::ES384,
            "ES384",
            fixture("ec384.key"),
            fixture("ec384.pub.pem"),
        ),
        (
            Algorithm::EdDSA,
            "EdDSA",
            fixture("ed25519.key"),
            fixture("ed25519.pub.pem"),
        ),
        // A JWK as a fixed key.
        (
            Algorithm::RS256,
            "RS256",
            rsa.clone(),
            public_jwk(Algorithm::RS256, &rsa, "k1").to_string(),
        ),
    ];
    for (alg, name, signing, verifying) in cases {
        let server = TestServer::start(&fixed_key_config(name, &verifying)).await;
        let token = mint(alg, &signing, hasura_claims("u-1", &["user"], "user"), None);
        let o = outcome(&server.check(&[("authorization", &bearer(&token))]).await);
        assert_eq!(o.code, 0, "{name}: {o:?}");
        assert_eq!(o.headers["x-hasura-role"], "user", "{name}");
        assert_eq!(o.headers["x-hasura-user-id"], "u-1", "{name}");
        // Another key of the same family does not verify.
        if alg.family() == jsonwebtoken::AlgorithmFamily::Rsa {
            let forged = mint(
                alg,
                &fixture("rsa2.key"),
                hasura_claims("u-1", &["user"], "user"),
                None,
            );
            let o = outcome(&server.check(&[("authorization", &bearer(&forged))]).await);
            assert_eq!(
                (o.code, o.http_status, o.reason().as_str()),
                (16, 401, "invalid_token"),
                "{name}"
            );
        }
        server.running.shutdown().await;
    }
}

#[tokio::test]
async fn every_token_location() {
    let cfg = format!(
        r#"
definition:
  modes:
    - id: h
      mode: jwt
      tokenLocation: {{in: header, name: X-Token}}
      key: {{algorithm: HS256, key: {{value: "{SECRET}"}}}}
      claimsConfig: {{namespace: {{location: h}}}}
    - id: c
      mode: jwt
      tokenLocation: {{in: cookie, name: session}}
      key: {{algorithm: HS256, key: {{value: "{SECRET}"}}}}
      claimsConfig: {{namespace: {{location: c}}}}
    - id: q
      mode: jwt
      tokenLocation: {{in: query, name: access_token}}
      key: {{algorithm: HS256, key: {{value: "{SECRET}"}}}}
      claimsConfig: {{namespace: {{location: q}}}}
"#
    );
    let server = TestServer::start(&cfg).await;
    let t = |ns: &str| {
        mint(
            Algorithm::HS256,
            SECRET,
            json!({ns: {"x-hasura-role": format!("from-{ns}")}}),
            None,
        )
    };
    let o = outcome(&server.check(&[("X-Token", &t("h"))]).await);
    assert_eq!(o.headers["x-hasura-role"], "from-h", "{o:?}");
    let cookie = format!("theme=dark; session={}; other=1", t("c"));
    let o = outcome(&server.check(&[("cookie", &cookie)]).await);
    assert_eq!(o.headers["x-hasura-role"], "from-c", "{o:?}");
    let path = format!("/graphql?x=1&access_token={}", t("q"));
    let o = outcome(&server.check_request(check_request(&[], &path)).await);
    assert_eq!(o.headers["x-hasura-role"], "from-q", "{o:?}");
    assert_eq!(o.metadata["mode_id"], "q");
    // A header with a scheme: another scheme is skipped (absent), so missing.
    let server2 = TestServer::start(&hs256_config("")).await;
    let o = outcome(
        &server2
            .check(&[("authorization", "Basic dXNlcjpwYXNz")])
            .await,
    );
    assert_eq!(
        (o.http_status, o.reason().as_str()),
        (401, "missing_credentials")
    );
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("u", &["user"], "user"),
        None,
    );
    let o = outcome(
        &server2
            .check(&[("authorization", &format!("bEaReR {token}"))])
            .await,
    );
    assert_eq!(o.code, 0, "scheme is case-insensitive: {o:?}");
}

#[tokio::test]
async fn namespace_and_locations_mapping() {
    let cfg = format!(
        r#"
definition:
  modes:
    - mode: jwt
      key: {{algorithm: HS256, key: {{value: "{SECRET}"}}}}
      claimsConfig:
        namespace: {{location: 'app.hasura', claimsFormat: StringifiedJson}}
        locations:
          X-Hasura-User-Id: {{path: sub}}
          x-hasura-org-id: {{path: org.id, default: {{value: "none"}}}}
          x-hasura-tenants: {{path: 'orgs[].name'}}
          x-hasura-profile: {{path: profile}}
          x-hasura-level: {{path: level}}
"#
    );
    let server = TestServer::start(&cfg).await;
    let claims = json!({
        "sub": "user-9",
        "level": 3,
        "orgs": [{"name": "acme"}, {"name": "big corp"}],
        "profile": {"a": 1},
        "app": {"hasura": "{\"x-hasura-allowed-roles\":[\"user\",\"editor\"],\"x-hasura-default-role\":\"user\",\"x-hasura-user-id\":\"overridden\"}"}
    });
    let token = mint(Algorithm::HS256, SECRET, claims, None);
    let o = outcome(&server.check(&[("authorization", &bearer(&token))]).await);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.headers["x-hasura-user-id"], "user-9");
    assert_eq!(o.headers["x-hasura-org-id"], "none");
    assert_eq!(o.headers["x-hasura-tenants"], r#"{acme,"big corp"}"#);
    assert_eq!(o.headers["x-hasura-profile"], r#"{"a":1}"#);
    assert_eq!(o.headers["x-hasura-level"], "3");
    assert_eq!(o.headers["x-hasura-role"], "user");
    assert!(!o.headers.contains_key("x-hasura-allowed-roles"));
    assert!(!o.headers.contains_key("x-hasura-default-role"));
    assert_eq!(o.metadata["user_id"], "user-9");
    assert_eq!(o.metadata["role"], "user");
    assert_eq!(o.metadata["mode"], "jwt");
    assert_eq!(o.metadata["elevated"], "false");
}

#[tokio::test]
async fn role_override_allowed_and_refused() {
    let server = TestServer::start(&hs256_config("")).await;
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("u", &["user", "editor"], "user"),
        None,
    );
    let auth = bearer(&token);
    let o = outcome(
        &server
            .check(&[("authorization", &auth), ("x-hasura-role", "editor")])
            .await,
    );
    assert_eq!((o.code, o.headers["x-hasura-role"].as_str()), (0, "editor"));
    let o = outcome(
        &server
            .check(&[("authorization", &auth), ("x-hasura-role", "admin")])
            .await,
    );
    assert_eq!(
        (o.code, o.http_status, o.reason().as_str()),
        (7, 403, "role_not_allowed")
    );
    assert!(!o.headers.contains_key("www-authenticate"));
    assert_eq!(o.headers["content-type"], "application/json");
    assert_eq!(
        o.body,
        r#"{"error":"role_not_allowed","message":"access denied"}"#
    );
}

#[tokio::test]
async fn missing_token_is_401_with_bearer_challenge() {
    let server = TestServer::start(&hs256_config("")).await;
    let o = outcome(&server.check(&[("x-other", "1")]).await);
    assert_eq!((o.code, o.http_status), (16, 401));
    assert_eq!(o.headers["www-authenticate"], "Bearer");
    assert_eq!(
        o.body,
        r#"{"error":"missing_credentials","message":"credentials required"}"#
    );
}

#[tokio::test]
async fn refused_tokens_each_with_their_reason() {
    let cfg = format!(
        r#"
definition:
  modes:
    - mode: jwt
      key: {{algorithm: RS256, key: {{value: {pem}}}}}
      audience: [app-1, app-2]
      issuer: https://issuer.test
      allowedSkew: 30
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
"#,
        pem = serde_json::to_string(&fixture("rsa.pub.pem")).unwrap()
    );
    let server = TestServer::start(&cfg).await;
    let rsa = private_key(Algorithm::RS256);
    let base = |extra: serde_json::Value| {
        let mut c = hasura_claims("u", &["user"], "user");
        c["aud"] = json!("app-2");
        c["iss"] = json!("https://issuer.test");
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let ok = mint(Algorithm::RS256, &rsa, base(json!({})), None);
    let aud_list = mint(
        Algorithm::RS256,
        &rsa,
        base(json!({"aud": ["x", "app-1"]})),
        None,
    );
    let n = now();
    let cases: Vec<(&str, String, &str)> = vec![
        ("valid", ok.clone(), "allow"),
        ("aud any-of", aud_list, "allow"),
        (
            "expired",
            mint(Algorithm::RS256, &rsa, base(json!({"exp": n - 31})), None),
            "token_expired",
        ),
        (
            "expired within skew",
            mint(Algorithm::RS256, &rsa, base(json!({"exp": n - 10})), None),
            "allow",
        ),
        (
            "wrong aud",
            mint(Algorithm::RS256, &rsa, base(json!({"aud": "other"})), None),
            "invalid_token",
        ),
        (
            "no aud",
            {
                let mut c = base(json!({}));
                c.as_object_mut().unwrap().remove("aud");
                mint(Algorithm::RS256, &rsa, c, None)
            },
            "invalid_token",
        ),
        (
            "wrong iss",
            mint(
                Algorithm::RS256,
                &rsa,
                base(json!({"iss": "https://evil"})),
                None,
            ),
            "invalid_token",
        ),
        (
            "nbf future",
            mint(Algorithm::RS256, &rsa, base(json!({"nbf": n + 120})), None),
            "invalid_token",
        ),
        (
            "nbf within skew",
            mint(Algorithm::RS256, &rsa, base(json!({"nbf": n + 10})), None),
            "allow",
        ),
        (
            "iat future",
            mint(Algorithm::RS256, &rsa, base(json!({"iat": n + 120})), None),
            "invalid_token",
        ),
        (
            "no exp",
            {
                let c = base(json!({}));
                let mut obj = c.as_object().unwrap().clone();
                obj.remove("exp");
                let header = jsonwebtoken::Header::new(Algorithm::RS256);
                jsonwebtoken::encode(&header, &obj, &encoding_key(Algorithm::RS256, &rsa)).unwrap()
            },
            "invalid_token",
        ),
        (
            "bad signature",
            {
                let mut parts: Vec<String> = ok.split('.').map(str::to_owned).collect();
                let mut sig = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
                sig[10] ^= 1;
                parts[2] = URL_SAFE_NO_PAD.encode(sig);
                parts.join(".")
            },
            "invalid_token",
        ),
        (
            "alg none",
            {
                let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
                let p = ok.split('.').nth(1).unwrap().to_owned();
                format!("{h}.{p}.")
            },
            "invalid_token",
        ),
        (
            "alg None with sig",
            {
                let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"None"}"#);
                let p = ok.split('.').nth(1).unwrap().to_owned();
                format!("{h}.{p}.c2ln")
            },
            "invalid_token",
        ),
        // HS256 keyed with the RSA public key PEM: classic alg confusion.
        (
            "alg confusion",
            mint(
                Algorithm::HS256,
                &fixture("rsa.pub.pem"),
                base(json!({})),
                None,
            ),
            "invalid_token",
        ),
        (
            "other RSA key",
            mint(
                Algorithm::RS256,
                &fixture("rsa2.key"),
                base(json!({})),
                None,
            ),
            "invalid_token",
        ),
        (
            "PS256 instead of RS256",
            mint(Algorithm::PS256, &rsa, base(json!({})), None),
            "invalid_token",
        ),
        ("empty bearer", String::new(), "invalid_token"),
        ("20 KB token", "a".repeat(20 * 1024), "invalid_token"),
        ("5 segments", format!("{ok}.a.b"), "invalid_token"),
        ("garbage", "not-a-jwt".into(), "invalid_token"),
        (
            "jku ignored",
            {
                let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
                header.jku = Some("https://evil.example/jwks".into());
                jsonwebtoken::encode(
                    &header,
                    &base(json!({})),
                    &encoding_key(Algorithm::RS256, &fixture("rsa2.key")),
                )
                .unwrap()
            },
            "invalid_token",
        ),
    ];
    for (name, token, expected) in cases {
        let o = outcome(&server.check(&[("authorization", &bearer(&token))]).await);
        if expected == "allow" {
            assert_eq!(o.code, 0, "{name}: {o:?}");
        } else {
            assert_eq!(o.reason(), expected, "{name}: {o:?}");
            assert_eq!((o.code, o.http_status), (16, 401), "{name}");
            assert_eq!(
                o.headers["www-authenticate"], "Bearer error=\"invalid_token\"",
                "{name}"
            );
            let message =
                serde_json::from_str::<serde_json::Value>(&o.body).unwrap()["message"].clone();
            let expect_msg = if expected == "token_expired" {
                "token expired"
            } else {
                "invalid credentials"
            };
            assert_eq!(message, expect_msg, "{name}: the message stays generic");
        }
    }
}

#[tokio::test]
async fn invalid_token_is_denied_even_with_no_auth() {
    let server = TestServer::start(&hs256_config(
        "    - mode: noAuth\n      sessionVariables: {x-hasura-role: {value: anonymous}}",
    ))
    .await;
    let o = outcome(&server.check(&[]).await);
    assert_eq!(
        (o.code, o.headers["x-hasura-role"].as_str()),
        (0, "anonymous")
    );
    assert_eq!(o.metadata["mode"], "noAuth");
    let bad = mint(
        Algorithm::HS256,
        "another-secret-of-sufficient-length!!",
        hasura_claims("u", &["user"], "user"),
        None,
    );
    let o = outcome(&server.check(&[("authorization", &bearer(&bad))]).await);
    assert_eq!(
        (o.code, o.reason().as_str()),
        (16, "invalid_token"),
        "{o:?}"
    );
    let expired = mint(Algorithm::HS256, SECRET, json!({"exp": now() - 3600}), None);
    let o = outcome(&server.check(&[("authorization", &bearer(&expired))]).await);
    assert_eq!(o.reason(), "token_expired");
}

#[tokio::test]
async fn last_invalid_mode_wins_and_api_key_reads_the_same_header() {
    let server = TestServer::start(&hs256_config(
        r#"    - mode: apiKey
      tokenLocation: {in: header, name: Authorization}
      value: {value: "service-key-123"}
      sessionVariables: {x-hasura-role: {value: service}, x-hasura-user-id: {value: svc}}"#,
    ))
    .await;
    let o = outcome(&server.check(&[("authorization", "service-key-123")]).await);
    assert_eq!(
        (o.code, o.headers["x-hasura-role"].as_str()),
        (0, "service")
    );
    // The apiKey session ignores a role request.
    let o = outcome(
        &server
            .check(&[
                ("authorization", "service-key-123"),
                ("x-hasura-role", "admin"),
            ])
            .await,
    );
    assert_eq!(
        (o.code, o.headers["x-hasura-role"].as_str()),
        (0, "service")
    );
    let expired = mint(Algorithm::HS256, SECRET, json!({"exp": now() - 3600}), None);
    let o = outcome(&server.check(&[("authorization", &bearer(&expired))]).await);
    assert_eq!(
        o.reason(),
        "token_expired",
        "jwt comes after apiKey, so its reason wins"
    );
    let o = outcome(&server.check(&[("authorization", "wrong-key")]).await);
    assert_eq!(o.reason(), "invalid_api_key");
    let valid = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("u", &["user"], "user"),
        None,
    );
    let o = outcome(&server.check(&[("authorization", &bearer(&valid))]).await);
    assert_eq!((o.code, o.metadata["mode"].as_str()), (0, "jwt"));
    // Selection headers.
    let o = outcome(
        &server
            .check(&[
                ("authorization", "service-key-123"),
                ("x-rely-auth-mode", "jwt"),
            ])
            .await,
    );
    assert_eq!(o.reason(), "missing_credentials", "{o:?}");
    let o = outcome(
        &server
            .check(&[
                ("authorization", &bearer(&valid)),
                ("x-rely-auth-id", "users"),
            ])
            .await,
    );
    assert_eq!(o.code, 0);
    assert!(o.removed.contains(&"x-rely-auth-id".to_string()));
}

#[tokio::test]
async fn spoofed_session_headers_are_overwritten_or_removed() {
    let server = TestServer::start(&hs256_config("")).await;
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("u-1", &["user"], "user"),
        None,
    );
    let r = server
        .check(&[
            ("authorization", &bearer(&token)),
            ("x-hasura-user-id", "admin-id"),
            ("x-hasura-admin-secret", "guess"),
            ("x_hasura_role", "admin"),
            ("X-Hasura-Org-Id", "7"),
            ("x-elevation-token", "forged"),
            ("x-hasura-auth-elevated", "u-1"),
            ("x-rely-auth-mode", "jwt"),
        ])
        .await;
    let o = outcome(&r);
    assert_eq!(o.code, 0);
    assert_eq!(o.headers["x-hasura-user-id"], "u-1");
    for h in [
        "x-hasura-admin-secret",
        "x_hasura_role",
        "x-hasura-org-id",
        "x-elevation-token",
        "x-hasura-auth-elevated",
        "x-rely-auth-mode",
    ] {
        assert!(
            o.removed.contains(&h.to_string()),
            "{h} not removed: {:?}",
            o.removed
        );
    }
    for (k, ..) in &o.header_options {
        assert!(!o.removed.contains(k), "{k} both set and removed");
    }
    for (k, _, append, action) in &o.header_options {
        assert_eq!(*append, Some(false), "{k}");
        assert_eq!(*action, 2, "{k}: OVERWRITE_IF_EXISTS_OR_ADD");
    }
    assert!(!o.headers.contains_key("x-hasura-auth-elevated"));
}

#[tokio::test]
async fn elevated_claim_passes_only_when_it_equals_the_user_id() {
    let server = TestServer::start(&hs256_config("")).await;
    let mut claims = hasura_claims("u-1", &["user"], "user");
    claims["claims.jwt.hasura.io"]["x-hasura-auth-elevated"] = json!("u-1");
    let t = mint(Algorithm::HS256, SECRET, claims.clone(), None);
    let o = outcome(&server.check(&[("authorization", &bearer(&t))]).await);
    assert_eq!(o.headers["x-hasura-auth-elevated"], "u-1");
    assert_eq!(o.metadata["elevated"], "true");
    claims["claims.jwt.hasura.io"]["x-hasura-auth-elevated"] = json!("u-2");
    let t = mint(Algorithm::HS256, SECRET, claims, None);
    let o = outcome(&server.check(&[("authorization", &bearer(&t))]).await);
    assert!(!o.headers.contains_key("x-hasura-auth-elevated"));
    assert_eq!(o.metadata["elevated"], "false");
}

#[tokio::test]
async fn header_map_input_and_non_utf8() {
    let server = TestServer::start(&hs256_config("")).await;
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("u", &["user", "x"], "user"),
        None,
    );
    let auth = bearer(&token);
    let req = check_request_raw(&[
        (":path", b"/graphql"),
        ("authorization", auth.as_bytes()),
        ("x-hasura-role", b"x"),
        ("x-hasura-role-extra", b"1"),
    ]);
    let o = outcome(&server.check_request(req).await);
    assert_eq!(
        (o.code, o.headers["x-hasura-role"].as_str()),
        (0, "x"),
        "{o:?}"
    );
    assert!(o.removed.contains(&"x-hasura-role-extra".to_string()));
    let req = check_request_raw(&[("authorization", b"Bearer \xff\xfe\x00abc")]);
    let o = outcome(&server.check_request(req).await);
    assert_eq!(o.reason(), "invalid_token");
    // Two Authorization headers are ambiguous, not guessed.
    let req = check_request_raw(&[
        ("authorization", auth.as_bytes()),
        ("authorization", b"Bearer x"),
    ]);
    let o = outcome(&server.check_request(req).await);
    assert_eq!(o.reason(), "invalid_token");
}

#[tokio::test]
async fn control_characters_in_claims_are_a_denial() {
    let server = TestServer::start(&hs256_config("")).await;
    let mut claims = hasura_claims("u", &["user"], "user");
    claims["claims.jwt.hasura.io"]["x-hasura-org"] = json!("a\r\nx-injected: 1");
    let t = mint(Algorithm::HS256, SECRET, claims, None);
    let o = outcome(&server.check(&[("authorization", &bearer(&t))]).await);
    assert_eq!(o.reason(), "invalid_token");
}

#[tokio::test]
async fn empty_and_malformed_calls_are_denials_not_errors() {
    let server = TestServer::start(&hs256_config("")).await;
    let r = server
        .client()
        .await
        .check(envoy_types::pb::envoy::service::auth::v3::CheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&r).reason(), "missing_credentials");
}

#[tokio::test]
async fn health_and_metrics_on_both_addresses() {
    let server = TestServer::start(&hs256_config("")).await;
    server.wait_ready().await;
    let health = reqwest::get(server.http_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(server.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let channel = tonic::transport::Channel::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut hc = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = hc
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.auth.v3.Authorization".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("u", &["user"], "user"),
        None,
    );
    server.check(&[("authorization", &bearer(&token))]).await;
    server.check(&[]).await;
    // The same token again: served from the verified-token cache.
    let o = outcome(&server.check(&[("authorization", &bearer(&token))]).await);
    assert_eq!(o.code, 0);
    let m = server.metrics().await;
    assert!(
        m.contains(r#"authgate_token_cache_lookups_total{result="hit"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"authgate_token_cache_lookups_total{result="miss"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"authgate_check_requests_total{decision="allow",frontend="grpc",mode="jwt",reason="none"} 2"#), "{m}");
    assert!(m.contains(r#"authgate_check_requests_total{decision="deny",frontend="grpc",mode="none",reason="missing_credentials"} 1"#));
    assert!(m.contains("authgate_check_duration_seconds_count{frontend=\"grpc\"} 3"));
    assert!(m.contains(r#"authgate_build_info{version=""#));
}

/// What a reflection client learns: the services listed, and whether the
/// file defining `Authorization` came back with its imports.
macro_rules! reflect {
    ($version:ident, $url:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let channel = tonic::transport::Channel::from_shared($url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = ServerReflectionClient::new(channel);
        let requests = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "envoy.service.auth.v3.Authorization".into(),
                )),
            },
            // grpcurl then asks for each import by name.
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileByFilename(
                    "envoy/service/auth/v3/attribute_context.proto".into(),
                )),
            },
        ];
        let mut stream = client
            .server_reflection_info(tokio_stream_iter(requests))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("{first:?}")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        let mut files: Vec<prost_types::FileDescriptorProto> = Vec::new();
        for _ in 0..2 {
            let next = stream.message().await.unwrap().unwrap();
            let Some(MessageResponse::FileDescriptorResponse(got)) = next.message_response else {
                panic!("{next:?}")
            };
            for bytes in &got.file_descriptor_proto {
                files.push(prost::Message::decode(bytes.as_slice()).unwrap());
            }
        }
        (names, files)
    }};
}

#[tokio::test]
async fn reflection_lists_and_describes_ext_authz_in_v1_and_v1alpha() {
    let server = TestServer::start(&hs256_config("")).await;
    // v1alpha is what grpcurl before 1.8.8, Postman and Kreya ask.
    let (v1_names, v1_files) = reflect!(v1, server.grpc_url());
    let (alpha_names, alpha_files) = reflect!(v1alpha, server.grpc_url());
    for (names, files) in [(&v1_names, &v1_files), (&alpha_names, &alpha_files)] {
        for service in [
            "envoy.service.auth.v3.Authorization",
            "grpc.health.v1.Health",
        ] {
            assert!(names.contains(&service.to_string()), "{names:?}");
        }
        let root = files
            .iter()
            .find(|f| f.name() == "envoy/service/auth/v3/external_auth.proto")
            .expect("the file of the service");
        assert!(
            root.service.iter().any(
                |s| s.name() == "Authorization" && s.method.iter().any(|m| m.name() == "Check")
            ),
            "{root:?}"
        );
        // The imports a client needs to build a CheckRequest are served too.
        let import = "envoy/service/auth/v3/attribute_context.proto";
        assert!(root.dependency.iter().any(|d| d == import), "{root:?}");
        let attrs = files.iter().find(|f| f.name() == import).expect(import);
        assert!(
            attrs
                .message_type
                .iter()
                .any(|m| m.name() == "AttributeContext"),
            "{attrs:?}"
        );
    }
}

fn tokio_stream_iter<T: Send + 'static>(
    items: Vec<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::iter(items)
}

#[tokio::test]
async fn cached_tokens_still_expire_on_time() {
    let cfg = format!(
        r#"
definition:
  settings: {{tokenCacheTtl: 300}}
  modes:
    - mode: jwt
      key: {{algorithm: HS256, key: {{value: "{SECRET}"}}}}
      allowedSkew: 0
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
"#
    );
    let server = TestServer::start(&cfg).await;
    let mut claims = hasura_claims("u", &["user", "editor"], "user");
    claims["exp"] = json!(now() + 2);
    let token = mint(Algorithm::HS256, SECRET, claims, None);
    let auth = bearer(&token);
    // New, repeat (session from the cache), repeats (the reused allow).
    for _ in 0..3 {
        assert_eq!(
            outcome(&server.check(&[("authorization", &auth)]).await).code,
            0
        );
    }
    // Per-request inputs apply after the cache: the role header still counts.
    let o = outcome(
        &server
            .check(&[("authorization", &auth), ("x-hasura-role", "editor")])
            .await,
    );
    assert_eq!((o.code, o.headers["x-hasura-role"].as_str()), (0, "editor"));
    let o = outcome(
        &server
            .check(&[("authorization", &auth), ("x-hasura-role", "admin")])
            .await,
    );
    assert_eq!(o.reason(), "role_not_allowed");
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    let o = outcome(&server.check(&[("authorization", &auth)]).await);
    assert_eq!(o.reason(), "token_expired");
}

#[tokio::test]
async fn repeated_tokens_get_the_same_answer_as_new_ones() {
    let server = TestServer::start(&hs256_config("")).await;
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("u-1", &["user", "editor"], "user"),
        None,
    );
    let auth = bearer(&token);
    // A new token (verified), its first repeat (session from the cache)
    // and later repeats (the allow rendered for the first repeat, reused):
    // one answer, byte for byte.
    let first = server.check(&[("authorization", &auth)]).await;
    assert_eq!(outcome(&first).code, 0);
    assert_eq!(outcome(&first).headers["x-hasura-user-id"], "u-1");
    for _ in 0..3 {
        assert_eq!(server.check(&[("authorization", &auth)]).await, first);
    }
    // Requests that ask for more are answered for what they ask.
    let o = outcome(
        &server
            .check(&[("authorization", &auth), ("x-hasura-role", "editor")])
            .await,
    );
    assert_eq!(o.headers["x-hasura-role"], "editor");
    let o = outcome(
        &server
            .check(&[("authorization", &auth), ("x-hasura-org-id", "7")])
            .await,
    );
    assert_eq!(
        (o.code, o.removed.clone()),
        (0, vec!["x-hasura-org-id".to_string()])
    );
    let mut req = check_request(&[("authorization", &auth)], "/v1/graphql");
    if let Some(a) = req.attributes.as_mut() {
        a.context_extensions
            .insert("elevation".into(), "required".into());
    }
    let o = outcome(&server.check_request(req).await);
    assert_eq!(o.reason(), "elevation_required");
    assert_eq!(server.check(&[("authorization", &auth)]).await, first);
    // Another user's token gets its own answer.
    let other = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("u-2", &["user"], "user"),
        None,
    );
    for _ in 0..3 {
        let o = outcome(&server.check(&[("authorization", &bearer(&other))]).await);
        assert_eq!(o.headers["x-hasura-user-id"], "u-2");
    }
    let m = server.metrics().await;
    for series in [r#"{result="hit"} 9"#, r#"{result="miss"} 2"#] {
        assert!(
            m.contains(&format!("authgate_token_cache_lookups_total{series}")),
            "{m}"
        );
    }
}
