//! Trace export: the real binary, configured only by `OTEL_*` variables,
//! sends OTLP (HTTP, protobuf) to a collector this test runs. A decision
//! span's parent is the trace context Envoy sent (the gRPC call's
//! `traceparent`, else the checked request's, or `b3`), JWKS and webhook
//! calls are its children and carry the context on, and no attribute holds
//! a credential.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use jsonwebtoken::Algorithm;
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::common::otlp::{attr, collector, hex, spans_of};
use crate::common::process::{serve_with_logs, signal, wait_exit};
use crate::common::*;

#[derive(Default)]
struct Seen {
    /// `traceparent` of each JWKS and webhook request.
    jwks: Vec<Option<String>>,
    hook: Vec<Option<String>>,
    keys: String,
}

type Shared = Arc<Mutex<Seen>>;

fn traceparent(h: &HeaderMap) -> Option<String> {
    h.get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// JWKS at `/jwks` and a webhook at `/hook` (200 with a session when the
/// request has `X-Session-Key`, else 401), recording `traceparent`.
async fn peers(keys: String) -> (SocketAddr, Shared) {
    let seen: Shared = Arc::new(Mutex::new(Seen {
        keys,
        ..Default::default()
    }));
    let app = Router::new()
        .route(
            "/jwks",
            get(|State(s): State<Shared>, h: HeaderMap| async move {
                let mut s = s.lock().unwrap();
                s.jwks.push(traceparent(&h));
                s.keys.clone()
            }),
        )
        .route(
            "/hook",
            get(|State(s): State<Shared>, h: HeaderMap| async move {
                s.lock().unwrap().hook.push(traceparent(&h));
                if h.contains_key("x-session-key") {
                    let role = serde_json::json!({"x-hasura-role": "hook"});
                    (axum::http::StatusCode::OK, axum::Json(role))
                } else {
                    let none = serde_json::json!({});
                    (axum::http::StatusCode::UNAUTHORIZED, axum::Json(none))
                }
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

fn named<'a>(trace: &'a [(String, Span)], name: &str) -> &'a Span {
    trace
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} span"))
}

#[tokio::test]
async fn decisions_are_spans_under_envoys_trace_with_jwks_and_webhook_children() {
    let pem = private_key(Algorithm::ES256);
    let (addr, seen) = peers(jwks_of(vec![public_jwk(Algorithm::ES256, &pem, "k1")])).await;
    let (otlp, spans) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("auth.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"definition:
  modes:
    - id: users
      mode: jwt
      tokenLocation: {{in: header, name: Authorization, scheme: bearer}}
      key: {{jwkFromUrl: {{value: "http://{addr}/jwks"}}, algorithm: ES256}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
    - id: hook
      mode: webhook
      url: {{value: "http://{addr}/hook"}}
      method: GET
      customRequest:
        headers:
          forward: [X-Session-Key]
"#
        ),
    )
    .unwrap();
    let endpoint = format!("http://{otlp}");
    let (mut child, grpc, http, logs) = serve_with_logs(
        cfg.to_str().unwrap(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "authgate-under-test"),
        ],
    );
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();

    // 1. A token signed with a key the JWKS did not have at start: the
    //    refetch is part of the decision. Envoy's ext_authz span is in the
    //    call's metadata; the checked request carries the client's.
    for _ in 0..200 {
        if !seen.lock().unwrap().jwks.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    seen.lock().unwrap().keys = jwks_of(vec![
        public_jwk(Algorithm::ES256, &pem, "k1"),
        public_jwk(Algorithm::ES256, &pem, "k2"),
    ]);
    let token = mint(
        Algorithm::ES256,
        &pem,
        hasura_claims("u1", &["user"], "user"),
        Some("k2"),
    );
    let envoy_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let envoy_span = "00f067aa0ba902b7";
    let client_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut req = tonic::Request::new(check_request(
        &[
            ("authorization", &format!("Bearer {token}")),
            (
                "traceparent",
                &format!("00-{client_trace}-b7ad6b7169203331-01"),
            ),
        ],
        "/graphql",
    ));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{envoy_trace}-{envoy_span}-01").parse().unwrap(),
    );
    let r = client.check(req).await.unwrap().into_inner();
    assert_eq!(outcome(&r).code, 0, "{:?}", outcome(&r));

    let trace = spans_of(&spans, envoy_trace, "jwks.fetch", 1).await;
    let decision = named(&trace, "authgate.decision");
    assert_eq!(hex(&decision.parent_span_id), envoy_span);
    assert_eq!(attr(decision, "authgate.decision"), Some("allow"));
    assert_eq!(attr(decision, "authgate.mode"), Some("jwt"));
    assert_eq!(attr(decision, "authgate.mode_id"), Some("users"));
    assert_eq!(attr(decision, "authgate.frontend"), Some("grpc"));
    let fetch = named(&trace, "jwks.fetch");
    assert_eq!(fetch.parent_span_id, decision.span_id);
    assert_eq!(
        attr(fetch, "url.full"),
        Some(format!("http://{addr}/jwks").as_str())
    );
    // The JWKS request carried the trace on.
    let sent = seen.lock().unwrap().jwks.last().cloned().flatten();
    let sent = sent.expect("the refetch carries traceparent");
    assert!(sent.starts_with(&format!("00-{envoy_trace}-")), "{sent}");
    assert!(sent.contains(&hex(&fetch.span_id)), "{sent}");

    // 2. Only the checked request's b3 context (Envoy without tracing):
    //    the webhook call is a child, and carries it on.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let b3_span = "e457b5a2e4d86bd1";
    let r = client
        .check(check_request(
            &[
                ("x-session-key", "s3cret-session-key"),
                ("b3", &format!("{b3_trace}-{b3_span}-1")),
            ],
            "/graphql",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&r).headers["x-hasura-role"], "hook");
    let trace = spans_of(&spans, b3_trace, "webhook", 1).await;
    let decision = named(&trace, "authgate.decision");
    assert_eq!(hex(&decision.parent_span_id), b3_span);
    assert_eq!(attr(decision, "authgate.mode"), Some("webhook"));
    let hook = named(&trace, "webhook");
    assert_eq!(hook.parent_span_id, decision.span_id);
    let sent = seen.lock().unwrap().hook.last().cloned().flatten();
    assert!(
        sent.is_some_and(|t| t.starts_with(&format!("00-{b3_trace}-"))),
        "the webhook call carries the trace"
    );

    // 3. /check with a denial (the webhook refuses a request without its
    //    session key): the reason, and the forward-auth call's own
    //    traceparent as parent.
    let http_trace = "11111111111111111111111111111111";
    let resp = reqwest::Client::new()
        .get(format!("http://{http}/check"))
        .header("cookie", "session=not-a-session")
        .header(
            "traceparent",
            format!("00-{http_trace}-2222222222222222-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let trace = spans_of(&spans, http_trace, "authgate.decision", 1).await;
    let decision = named(&trace, "authgate.decision");
    assert_eq!(hex(&decision.parent_span_id), "2222222222222222");
    assert_eq!(attr(decision, "authgate.decision"), Some("deny"));
    assert_eq!(attr(decision, "authgate.reason"), Some("webhook_denied"));
    assert_eq!(attr(decision, "authgate.frontend"), Some("http"));

    // No credential in any span, and spans never reach the log.
    let all = format!("{:?}", spans.lock().unwrap());
    assert!(
        spans
            .lock()
            .unwrap()
            .iter()
            .all(|(service, _)| service == "authgate-under-test")
    );
    for secret in [token.as_str(), "s3cret-session-key", "not-a-session"] {
        assert!(!all.contains(secret), "a credential in a span");
    }
    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child), 0);
    let logs = logs.lock().unwrap().join("\n");
    assert!(!logs.contains("authgate.decision"), "{logs}");
    assert!(!logs.contains("jwks.fetch"), "{logs}");
}

#[tokio::test]
async fn an_unsupported_otel_setting_is_an_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("auth.yaml");
    std::fs::write(
        &cfg,
        "definition:\n  modes:\n    - {mode: noAuth, sessionVariables: {x-hasura-role: {value: anonymous}}}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported"),
        "{err}"
    );
}
