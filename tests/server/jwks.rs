//! Remote JWKS against a real local HTTP server: readiness, rotation by
//! unknown kid (single-flight, rate-limited), outages, algorithm pinning.

use crate::common;

use std::time::Duration;

use crate::private_ca::PrivateCa;
use common::*;
use jsonwebtoken::Algorithm;

fn jwks_config(url: &str, extra_key: &str, settings: &str) -> String {
    format!(
        r#"
definition:
  settings: {{{settings}}}
  modes:
    - id: idp
      mode: jwt
      key: {{jwkFromUrl: {{value: "{url}"}}{extra_key}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
"#
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn not_ready_until_keys_load_then_serves() {
    let rsa = private_key(Algorithm::RS256);
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    jwks.set(500, "oops".into());
    let server = TestServer::start(&jwks_config(&jwks.url(), "", "")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = reqwest::get(server.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let token = mint(
        Algorithm::RS256,
        &rsa,
        hasura_claims("u", &["user"], "user"),
        Some("k1"),
    );
    let o = outcome(&server.check(&[("authorization", &bearer(&token))]).await);
    assert_eq!(
        (o.code, o.http_status, o.reason().as_str()),
        (14, 503, "internal_error")
    );
    assert!(!o.headers.contains_key("www-authenticate"));
    // The IdP recovers: the retry (backoff <= 10 s) loads the keys.
    jwks.set(200, jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")]));
    server.wait_ready().await;
    let ready = reqwest::get(server.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let o = outcome(&server.check(&[("authorization", &bearer(&token))]).await);
    assert_eq!(o.code, 0, "{o:?}");
    let m = server.metrics().await;
    assert!(
        m.contains(r#"authgate_jwks_fetches_total{result="error",source="idp"}"#),
        "{m}"
    );
    assert!(m.contains(r#"authgate_jwks_keys{source="idp"} 1"#), "{m}");
    let last: f64 = m
        .lines()
        .find(|l| l.starts_with(r#"authgate_jwks_last_success_timestamp_seconds{source="idp"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((last - now() as f64).abs() < 60.0, "{m}");
    assert!(
        m.contains(r#"authgate_jwk_cache_lookups_total{result="hit",source="idp"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn rotation_by_unknown_kid_refetches_once_per_cooldown() {
    let rsa = private_key(Algorithm::RS256);
    let rsa2 = fixture("rsa2.key");
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "old")])).await;
    let server = TestServer::start(&jwks_config(&jwks.url(), "", "")).await;
    server.wait_ready().await;
    assert_eq!(jwks.hits(), 1);
    // The IdP rotates: a token with the new kid triggers one refetch.
    jwks.set(
        200,
        jwks_of(vec![
            public_jwk(Algorithm::RS256, &rsa, "old"),
            public_jwk(Algorithm::RS256, &rsa2, "new"),
        ]),
    );
    let token = mint(
        Algorithm::RS256,
        &rsa2,
        hasura_claims("u", &["user"], "user"),
        Some("new"),
    );
    let o = outcome(&server.check(&[("authorization", &bearer(&token))]).await);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(jwks.hits(), 2);
    // A burst of unknown kids inside the cooldown: no further fetch at all.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let token = mint(
            Algorithm::RS256,
            &rsa2,
            hasura_claims("u", &["user"], "user"),
            Some(&format!("bogus-{i}")),
        );
        let url = server.grpc_url();
        tasks.push(tokio::spawn(async move {
            let mut c = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(url)
                .await
                .unwrap();
            let auth = format!("Bearer {token}");
            let r = c.check(check_request(&[("authorization", &auth)], "/")).await.unwrap().into_inner();
            outcome(&r).reason()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "invalid_token");
    }
    assert_eq!(
        jwks.hits(),
        2,
        "unknown kids within the cooldown must not refetch"
    );
    // Known kids keep working without fetches.
    let o = outcome(&server.check(&[("authorization", &bearer(&token))]).await);
    assert_eq!(o.code, 0);
    assert_eq!(jwks.hits(), 2);
}

#[tokio::test]
async fn burst_of_unknown_kids_refetches_at_most_once() {
    let rsa = private_key(Algorithm::RS256);
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let server = TestServer::start(&jwks_config(&jwks.url(), "", "")).await;
    server.wait_ready().await;
    let before = jwks.hits();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let token = mint(
            Algorithm::RS256,
            &rsa,
            hasura_claims("u", &["user"], "user"),
            Some(&format!("x{i}")),
        );
        let url = server.grpc_url();
        tasks.push(tokio::spawn(async move {
            let mut c = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(url)
                .await
                .unwrap();
            let auth = format!("Bearer {token}");
            c.check(check_request(&[("authorization", &auth)], "/")).await.unwrap().into_inner()
        }));
    }
    for t in tasks {
        assert_eq!(outcome(&t.await.unwrap()).reason(), "invalid_token");
    }
    assert_eq!(
        jwks.hits() - before,
        1,
        "single-flight, rate-limited refetch"
    );
    let m = server.metrics().await;
    assert!(
        m.contains(r#"authgate_jwk_cache_lookups_total{result="miss",source="idp"} 40"#),
        "{m}"
    );
}

#[tokio::test]
async fn outage_keeps_serving_the_last_good_keys() {
    let rsa = private_key(Algorithm::RS256);
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let server = TestServer::start(&jwks_config(&jwks.url(), "", "reloadInterval: 1")).await;
    server.wait_ready().await;
    jwks.set(500, "down".into());
    let before = jwks.hits();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(jwks.hits() > before, "the background refresh ran");
    jwks.set(200, "{not json".into());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let token = mint(
        Algorithm::RS256,
        &rsa,
        hasura_claims("u", &["user"], "user"),
        Some("k1"),
    );
    let o = outcome(&server.check(&[("authorization", &bearer(&token))]).await);
    assert_eq!(o.code, 0, "{o:?}");
    let ready = reqwest::get(server.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "stale keys keep the server ready");
    let m = server.metrics().await;
    let errors: u64 = m
        .lines()
        .find(|l| l.starts_with(r#"authgate_jwks_fetches_total{result="error",source="idp"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(errors >= 2, "{m}");
}

#[tokio::test]
async fn algorithm_beside_jwk_from_url_pins_keys_and_hmac_keys_are_ignored() {
    let rsa = private_key(Algorithm::RS256);
    let ec = fixture("ec256.key");
    let oct = serde_json::json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"});
    let jwks = JwksServer::start(jwks_of(vec![
        public_jwk(Algorithm::RS256, &rsa, "r"),
        public_jwk(Algorithm::ES256, &ec, "e"),
        oct,
    ]))
    .await;
    let server = TestServer::start(&jwks_config(&jwks.url(), ", algorithm: ES256", "")).await;
    server.wait_ready().await;
    let es = mint(
        Algorithm::ES256,
        &ec,
        hasura_claims("u", &["user"], "user"),
        Some("e"),
    );
    assert_eq!(
        outcome(&server.check(&[("authorization", &bearer(&es))]).await).code,
        0
    );
    let rs = mint(
        Algorithm::RS256,
        &rsa,
        hasura_claims("u", &["user"], "user"),
        Some("r"),
    );
    assert_eq!(
        outcome(&server.check(&[("authorization", &bearer(&rs))]).await).reason(),
        "invalid_token"
    );
    let hs = mint(
        Algorithm::HS256,
        "secret-secret-secret-secret-secret",
        hasura_claims("u", &["user"], "user"),
        Some("h"),
    );
    assert_eq!(
        outcome(&server.check(&[("authorization", &bearer(&hs))]).await).reason(),
        "invalid_token"
    );
    // Without a kid, each key of the pinned family is tried.
    let es_nokid = mint(
        Algorithm::ES256,
        &ec,
        hasura_claims("u", &["user"], "user"),
        None,
    );
    assert_eq!(
        outcome(&server.check(&[("authorization", &bearer(&es_nokid))]).await).code,
        0
    );
}

#[tokio::test]
async fn one_cache_per_url_shared_by_modes() {
    let rsa = private_key(Algorithm::RS256);
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let url = jwks.url();
    let cfg = format!(
        r#"
definition:
  modes:
    - id: a
      mode: jwt
      tokenLocation: {{in: header, name: X-A}}
      key: {{jwkFromUrl: {{value: "{url}"}}}}
      claimsConfig: {{namespace: {{location: a}}}}
    - id: b
      mode: jwt
      tokenLocation: {{in: header, name: X-B}}
      key: {{jwkFromUrl: {{value: "{url}"}}, algorithm: RS256}}
      claimsConfig: {{namespace: {{location: b}}}}
"#
    );
    let server = TestServer::start(&cfg).await;
    server.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(jwks.hits(), 1, "one fetch for one URL");
    let t = mint(
        Algorithm::RS256,
        &rsa,
        serde_json::json!({"b": {"x-hasura-role": "r"}}),
        Some("k1"),
    );
    let o = outcome(&server.check(&[("x-b", &t)]).await);
    assert_eq!((o.code, o.metadata["mode_id"].as_str()), (0, "b"));
}

#[tokio::test]
async fn shutdown_drains_a_decision_in_flight() {
    let rsa = private_key(Algorithm::RS256);
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let server = TestServer::start(&jwks_config(&jwks.url(), "", "")).await;
    server.wait_ready().await;
    // An unknown kid makes the decision wait for a slow refetch.
    jwks.state.lock().unwrap().delay = Duration::from_millis(800);
    let token = mint(
        Algorithm::RS256,
        &rsa,
        hasura_claims("u", &["user"], "user"),
        Some("new"),
    );
    let mut client = server.client().await;
    let inflight = tokio::spawn(async move {
        let auth = format!("Bearer {token}");
        client
            .check(check_request(&[("authorization", &auth)], "/"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    server.running.shutdown().await;
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "shutdown waited for the decision"
    );
    let r = inflight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert_eq!(outcome(&r.into_inner()).reason(), "invalid_token");
}

/// A caller that gives up while its unknown-kid refetch is under way (as
/// Envoy's ext_authz timeout does, resetting the stream) does not cancel
/// the refetch: the rotated key is loaded for the next request, inside the
/// cooldown that would refuse a second refetch.
#[tokio::test]
async fn an_abandoned_refetch_still_loads_the_new_key() {
    let rsa = private_key(Algorithm::RS256);
    let rsa2 = fixture("rsa2.key");
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let server = TestServer::start(&jwks_config(&jwks.url(), "", "unknownKidCooldown: 300")).await;
    server.wait_ready().await;
    // The IdP rotates to k2 and answers slowly.
    jwks.set(
        200,
        jwks_of(vec![
            public_jwk(Algorithm::RS256, &rsa, "k1"),
            public_jwk(Algorithm::RS256, &rsa2, "k2"),
        ]),
    );
    jwks.state.lock().unwrap().delay = Duration::from_millis(600);
    let token = mint(
        Algorithm::RS256,
        &rsa2,
        hasura_claims("u", &["user"], "user"),
        Some("k2"),
    );
    let auth = bearer(&token);
    // The client gives up after 100 ms: the gRPC call is cancelled.
    let mut client = server.client().await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        client.check(check_request(&[("authorization", &auth)], "/")),
    )
    .await;
    assert!(gave_up.is_err(), "the call was still waiting for the IdP");
    // The fetch finishes on its own; within the 300 s cooldown, k2 works.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(jwks.hits(), 2, "start-up fetch and one refetch");
    let o = outcome(&server.check(&[("authorization", &auth)]).await);
    assert_eq!(o.code, 0, "{o:?}");
}

/// A server state whose config file (one `jwkFromUrl` mode, `idp`) can be
/// rewritten and reloaded, once its keys have loaded.
async fn ready_from_file() -> (
    JwksServer,
    std::sync::Arc<authgate::server::Shared>,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let rsa = private_key(Algorithm::RS256);
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.yaml");
    std::fs::write(&path, jwks_config(&jwks.url(), "", "")).unwrap();
    let config = authgate::config::load_file(&path).unwrap();
    let shared = authgate::server::Shared::new(config, Some(path.clone()))
        .await
        .unwrap();
    for _ in 0..200 {
        if shared.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(shared.is_ready());
    (jwks, shared, dir, path)
}

/// A reload that drops a `jwkFromUrl` mode drops its metric series too: a
/// source nobody uses would otherwise age forever and fire staleness alerts.
#[tokio::test]
async fn a_source_removed_by_reload_leaves_the_metrics() {
    let (_jwks, shared, _dir, path) = ready_from_file().await;
    let series = r#"authgate_jwks_last_success_timestamp_seconds{source="idp"}"#;
    // Keys are stored, then the success is counted.
    for _ in 0..40 {
        if shared.metrics.render().contains(series) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(shared.metrics.render().contains(series));
    std::fs::write(&path, hs256_config("")).unwrap();
    shared.reload().await.unwrap();
    let text = shared.metrics.render();
    assert!(!text.contains(r#"source="idp""#), "{text}");
    // The families themselves stay announced.
    assert!(text.contains("# TYPE authgate_jwks_last_success_timestamp_seconds gauge"));
}

/// Once ready, an instance stays ready when a reload names a JWKS that has
/// no keys (every replica reads the same file: all would leave the Service
/// at once); the source is reported as degraded, without its credentials.
#[tokio::test]
async fn a_reload_naming_a_broken_jwks_leaves_a_ready_instance_ready() {
    let (jwks, shared, _dir, path) = ready_from_file().await;
    // A second source whose endpoint refuses connections, with a password
    // and a token in its URL.
    let port = free_port();
    let broken = format!("http://svc:S3cretPass@127.0.0.1:{port}/jwks.json?token=T0ken");
    let second = format!(
        "    - id: other\n      mode: jwt\n      tokenLocation: {{in: header, name: X-Other-Token}}\n      key: {{jwkFromUrl: {{value: \"{broken}\"}}}}\n      claimsConfig: {{namespace: {{location: '\"claims.jwt.hasura.io\"'}}}}\n"
    );
    std::fs::write(&path, jwks_config(&jwks.url(), "", "") + &second).unwrap();
    shared.reload().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = shared.readiness();
    assert!(r.missing.is_empty(), "{r:?}");
    assert_eq!(r.degraded.len(), 1, "{r:?}");
    assert!(
        r.degraded[0].starts_with(&format!(
            "jwks other (http://127.0.0.1:{port}/jwks.json): no keys yet"
        )),
        "{r:?}"
    );
    assert!(!r.degraded[0].contains("S3cret") && !r.degraded[0].contains("T0ken"));
}

/// A key server that wants a credential: without `key.httpClient.headers`
/// its keys never load (fail closed); with them, tokens verify. Two modes
/// fetching the same URL with different headers get caches of their own.
/// A third reaches a host that does not resolve through `proxy` (a key
/// server answers the proxy request's absolute URL by its path); headers
/// are refused over http to such a host, so it sends none.
#[tokio::test]
async fn key_fetches_send_the_configured_headers() {
    let rsa = private_key(Algorithm::RS256);
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    jwks.state.lock().unwrap().required_header = Some(("x-key-token".into(), "s3cret".into()));
    let token = mint(
        Algorithm::RS256,
        &rsa,
        hasura_claims("u", &["user"], "user"),
        Some("k1"),
    );
    // A key server that wants nothing, reached only through `proxy`.
    let open = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let url = jwks.url();
    let config = format!(
        r#"
definition:
  modes:
    - id: without
      mode: jwt
      key: {{jwkFromUrl: {{value: "{url}"}}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
    - id: with
      mode: jwt
      key:
        jwkFromUrl: {{value: "{url}"}}
        httpClient: {{timeout: 2s, headers: {{X-Key-Token: {{value: s3cret}}}}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
    - id: proxied
      mode: jwt
      key:
        jwkFromUrl: {{value: "http://keys.invalid/jwks.json"}}
        httpClient: {{proxy: {{value: "http://{addr}"}}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
"#,
        addr = open.addr
    );
    let server = TestServer::start(&config).await;
    for _ in 0..100 {
        let mut allowed = 0;
        for id in ["with", "proxied"] {
            let o = outcome(
                &server
                    .check(&[("authorization", &bearer(&token)), ("x-rely-auth-id", id)])
                    .await,
            );
            allowed += usize::from(o.code == 0);
        }
        if allowed == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in ["with", "proxied"] {
        let o = outcome(
            &server
                .check(&[("authorization", &bearer(&token)), ("x-rely-auth-id", id)])
                .await,
        );
        assert_eq!(o.code, 0, "{id}: {o:?}");
    }
    // The mode without the header has no keys: refused, never allowed.
    let o = outcome(
        &server
            .check(&[
                ("authorization", &bearer(&token)),
                ("x-rely-auth-id", "without"),
            ])
            .await,
    );
    assert_eq!(
        (o.http_status, o.reason().as_str()),
        (503, "internal_error")
    );
    let ready = reqwest::get(server.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("401"), "{body}");
    assert!(!body.contains("s3cret"), "{body}");
}

/// A key server on TLS with a private CA, which wants a client certificate
/// from the same CA (as internal key servers behind mTLS do).
struct TlsKeyServer {
    addr: std::net::SocketAddr,
    ca_pem: String,
    client_cert_pem: String,
    client_key_pem: String,
}

impl TlsKeyServer {
    async fn start(body: String) -> Self {
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_rustls::rustls;

        let ca = PrivateCa::new();
        let (server_cert, server_key) = ca.sign("localhost");
        let (client_cert, client_key) = ca.sign("authgate");

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server_cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, body) = (acceptor.clone(), body.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsKeyServer {
            addr,
            ca_pem: ca.pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }
}

/// `key.httpClient.tls`: keys load from a server of a private CA that wants
/// a client certificate only with both configured; without the CA bundle or
/// without the certificate the fetch fails and the mode refuses (503).
#[tokio::test]
async fn key_fetches_trust_a_private_ca_and_present_a_client_certificate() {
    let rsa = private_key(Algorithm::RS256);
    let keys = TlsKeyServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let token = mint(
        Algorithm::RS256,
        &rsa,
        hasura_claims("u", &["user"], "user"),
        Some("k1"),
    );
    let url = format!("https://localhost:{}/jwks.json", keys.addr.port());
    let yaml_text = |s: &str| serde_json::to_string(s).unwrap();
    let (ca, cert, key) = (
        yaml_text(&keys.ca_pem),
        yaml_text(&keys.client_cert_pem),
        yaml_text(&keys.client_key_pem),
    );
    let mode = |id: &str, tls: String| {
        format!(
            r#"
    - id: {id}
      mode: jwt
      key:
        jwkFromUrl: {{value: "{url}"}}
        httpClient: {{tls: {tls}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}"#
        )
    };
    let config = format!(
        "definition:\n  modes:{}{}{}\n",
        mode(
            "mtls",
            format!("{{rootCAPem: {ca}, certificates: [{{certPem: {cert}, keyPem: {key}}}]}}")
        ),
        mode(
            "no_ca",
            format!("{{certificates: [{{certPem: {cert}, keyPem: {key}}}]}}")
        ),
        mode("no_cert", format!("{{rootCAPem: {ca}}}")),
    );
    let server = TestServer::start(&config).await;
    let decide = |id: &'static str| {
        let server = &server;
        let token = &token;
        async move {
            outcome(
                &server
                    .check(&[("authorization", &bearer(token)), ("x-rely-auth-id", id)])
                    .await,
            )
        }
    };
    for _ in 0..100 {
        if decide("mtls").await.code == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = decide("mtls").await;
    assert_eq!(o.code, 0, "{o:?}");
    for id in ["no_ca", "no_cert"] {
        let o = decide(id).await;
        assert_eq!(
            (o.http_status, o.reason().as_str()),
            (503, "internal_error"),
            "{id}"
        );
    }
}

/// `oidcIssuer`: keys come from the discovery document's `jwks_uri`, the
/// issuer defaults to the configured one (a token from another issuer is
/// refused), and a rotated key is found through the discovered key set.
/// A document naming another issuer leaves the mode without keys: not
/// ready, and its tokens answered 503, with the reason in `/readyz`.
#[tokio::test]
async fn oidc_issuer_discovers_the_key_set() {
    let rsa = private_key(Algorithm::RS256);
    let idp = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let issuer = idp.issuer();
    let config = format!(
        r#"
definition:
  modes:
    - id: idp
      mode: jwt
      key: {{oidcIssuer: {{value: "{issuer}/"}}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
"#
    );
    // The configured issuer keeps its trailing slash: the document must
    // name exactly that. The keys are where `jwks_uri` says, nowhere else.
    {
        let mut s = idp.state.lock().unwrap();
        s.discovery_issuer = Some(format!("{issuer}/"));
        s.jwks_path = "/keys/set.json".into();
    }
    let server = TestServer::start(&config).await;
    server.wait_ready().await;
    let with_iss = |kid: &str, key: &str, iss: &str| {
        let mut claims = hasura_claims("u", &["user"], "user");
        claims["iss"] = serde_json::json!(iss);
        mint(Algorithm::RS256, key, claims, Some(kid))
    };
    let good = with_iss("k1", &rsa, &format!("{issuer}/"));
    let o = outcome(&server.check(&[("authorization", &bearer(&good))]).await);
    assert_eq!(o.code, 0, "{o:?}");
    let other = with_iss("k1", &rsa, "https://elsewhere.example/");
    let o = outcome(&server.check(&[("authorization", &bearer(&other))]).await);
    assert_eq!(o.reason().as_str(), "invalid_token");
    // Rotation through the provider: a new kid is refetched from jwks_uri.
    let rsa2 = fixture("rsa2.key");
    idp.set(
        200,
        jwks_of(vec![
            public_jwk(Algorithm::RS256, &rsa, "k1"),
            public_jwk(Algorithm::RS256, &rsa2, "k2"),
        ]),
    );
    let rotated = with_iss("k2", &rsa2, &format!("{issuer}/"));
    let o = outcome(&server.check(&[("authorization", &bearer(&rotated))]).await);
    assert_eq!(o.code, 0, "{o:?}");

    // Another server whose document names another issuer.
    let liar = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    liar.state.lock().unwrap().discovery_issuer = Some("https://evil.example".into());
    let config = format!(
        r#"
definition:
  modes:
    - id: idp
      mode: jwt
      key: {{oidcIssuer: {{value: "{}"}}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
"#,
        liar.issuer()
    );
    let server = TestServer::start(&config).await;
    let token = with_iss("k1", &rsa, &liar.issuer());
    let mut body = String::new();
    for _ in 0..100 {
        let ready = reqwest::get(server.http_url("/readyz")).await.unwrap();
        assert_eq!(ready.status(), 503);
        body = ready.text().await.unwrap();
        if body.contains("evil.example") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        body.contains("discovery") && body.contains("not the configured"),
        "{body}"
    );
    let o = outcome(&server.check(&[("authorization", &bearer(&token))]).await);
    assert_eq!(
        (o.http_status, o.reason().as_str()),
        (503, "internal_error")
    );

    // Exactly: a document naming the issuer with a trailing `/` does not
    // match an issuer configured without one.
    liar.state.lock().unwrap().discovery_issuer = Some(format!("{}/", liar.issuer()));
    let server = TestServer::start(&config).await;
    for _ in 0..100 {
        body = reqwest::get(server.http_url("/readyz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body.contains("not the configured") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(body.contains("not the configured"), "{body}");
}
