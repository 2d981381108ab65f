//! `mode: introspection` against a local RFC 7662 endpoint the tests
//! control: client authentication, what an answer allows or refuses, the
//! answer cache, failures, and the endpoint found by OpenID discovery.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::*;
use serde_json::{Value, json};

/// What the endpoint answers for each token, and what it saw.
#[derive(Default)]
struct Endpoint {
    /// token -> (status, body); unknown tokens get `{"active": false}`.
    answers: HashMap<String, (u16, String)>,
    /// The `Authorization` header the client must send (else 401).
    authorization: Option<String>,
    /// Form fields every call must carry (else 401).
    form: Vec<(String, String)>,
    delay: Duration,
    /// The `issuer` the discovery document names (default: own base URL).
    discovery_issuer: Option<String>,
    /// The last form received.
    last_form: Vec<(String, String)>,
}

#[derive(Clone)]
struct IntrospectionServer {
    addr: std::net::SocketAddr,
    state: Arc<Mutex<Endpoint>>,
    calls: Arc<AtomicUsize>,
}

type Shared = (Arc<Mutex<Endpoint>>, Arc<AtomicUsize>, String);

impl IntrospectionServer {
    async fn start(endpoint: Endpoint) -> Self {
        let state = Arc::new(Mutex::new(endpoint));
        let calls = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/oauth/introspect", post(introspect))
            .route("/.well-known/openid-configuration", get(discovery))
            .with_state((state.clone(), calls.clone(), format!("http://{addr}")));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        IntrospectionServer { addr, state, calls }
    }

    fn url(&self) -> String {
        format!("http://{}/oauth/introspect", self.addr)
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn answer(&self, token: &str, body: Value) {
        self.state
            .lock()
            .unwrap()
            .answers
            .insert(token.into(), (200, body.to_string()));
    }

    fn answer_raw(&self, token: &str, status: u16, body: &str) {
        self.state
            .lock()
            .unwrap()
            .answers
            .insert(token.into(), (status, body.into()));
    }
}

async fn discovery(State((state, _, base)): State<Shared>) -> axum::Json<Value> {
    let issuer = state
        .lock()
        .unwrap()
        .discovery_issuer
        .clone()
        .unwrap_or_else(|| base.clone());
    axum::Json(json!({
        "issuer": issuer,
        "introspection_endpoint": format!("{base}/oauth/introspect"),
    }))
}

async fn introspect(
    State((state, calls, _)): State<Shared>,
    headers: HeaderMap,
    body: String,
) -> Response {
    calls.fetch_add(1, Ordering::SeqCst);
    let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let (answer, delay) = {
        let mut s = state.lock().unwrap();
        s.last_form = form.clone();
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let authorized = s
            .authorization
            .as_ref()
            .is_none_or(|a| Some(a) == auth.as_ref())
            && s.form.iter().all(|f| form.contains(f));
        let token = form
            .iter()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let answer = if !authorized {
            (401, r#"{"error":"invalid_client"}"#.to_owned())
        } else if headers.get("content-type").and_then(|v| v.to_str().ok())
            != Some("application/x-www-form-urlencoded")
        {
            (400, r#"{"error":"invalid_request"}"#.to_owned())
        } else {
            s.answers
                .get(&token)
                .cloned()
                .unwrap_or((200, r#"{"active":false}"#.to_owned()))
        };
        (answer, s.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut resp = (StatusCode::from_u16(answer.0).unwrap(), answer.1).into_response();
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp
}

/// `client_secret_basic` for `authgate` / `s3cr:t` (RFC 6749, 2.3.1: the
/// parts form-urlencoded before base64).
const BASIC: &str = "Basic YXV0aGdhdGU6czNjciUzQXQ=";

fn hasura(user: &str, role: &str) -> Value {
    json!({
        "x-hasura-default-role": role,
        "x-hasura-allowed-roles": [role],
        "x-hasura-user-id": user,
    })
}

fn config(endpoint: &str, extra: &str, mode_extra: &str) -> String {
    format!(
        r#"
definition:
  modes:
    - id: idp
      mode: introspection
      introspection:
        {endpoint}
        clientId: {{value: authgate}}
        clientSecret: {{value: "s3cr:t"}}
        {extra}
      {mode_extra}
      claimsConfig: {{namespace: {{location: '"https://hasura.io/jwt/claims"'}}}}
"#
    )
}

async fn decide(server: &TestServer, token: &str) -> Outcome {
    outcome(
        &server
            .check(&[("authorization", &format!("Bearer {token}"))])
            .await,
    )
}

/// An active answer allows with the session it carries; `active: false`,
/// a wrong `aud` or `iss`, an expired `exp` or a future `nbf` are
/// `invalid_token`; the token and the client's credentials go as RFC 7662
/// and RFC 6749 say.
#[tokio::test]
async fn answers_decide_as_rfc_7662_says() {
    let idp = IntrospectionServer::start(Endpoint {
        authorization: Some(BASIC.into()),
        ..Default::default()
    })
    .await;
    let now = now();
    let claims = |extra: Value| {
        let mut v = json!({
            "active": true,
            "iss": "https://idp.example",
            "aud": ["hasura", "other"],
            "exp": now + 600,
            "https://hasura.io/jwt/claims": hasura("u1", "user"),
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    idp.answer("good", claims(json!({})));
    idp.answer("inactive", json!({"active": false, "sub": "u1"}));
    idp.answer("wrong-aud", claims(json!({"aud": "other"})));
    idp.answer("no-aud", claims(json!({"aud": null})));
    idp.answer("wrong-iss", claims(json!({"iss": "https://evil.example"})));
    idp.answer("expired", claims(json!({"exp": now - 3600})));
    idp.answer("future", claims(json!({"nbf": now + 3600})));
    idp.answer("no-exp", claims(json!({"exp": null})));
    idp.answer(
        "no-role",
        json!({"active": true, "iss": "https://idp.example", "aud": "hasura"}),
    );
    let server = TestServer::start(&config(
        &format!(r#"endpoint: {{value: "{}"}}"#, idp.url()),
        "tokenTypeHint: access_token",
        "audience: hasura\n      issuer: https://idp.example",
    ))
    .await;

    let o = decide(&server, "good").await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.headers["x-hasura-user-id"], "u1");
    assert_eq!(o.headers["x-hasura-role"], "user");
    let form = idp.state.lock().unwrap().last_form.clone();
    assert_eq!(
        form,
        vec![
            ("token".to_owned(), "good".to_owned()),
            ("token_type_hint".to_owned(), "access_token".to_owned())
        ]
    );
    let o = decide(&server, "no-exp").await;
    assert_eq!(o.code, 0, "RFC 7662 makes exp optional: {o:?}");

    for token in [
        "inactive",
        "unknown",
        "wrong-aud",
        "no-aud",
        "wrong-iss",
        "expired",
        "future",
        "no-role",
    ] {
        let o = decide(&server, token).await;
        assert_eq!(o.http_status, 401, "{token}: {o:?}");
        assert_eq!(o.reason(), "invalid_token", "{token}");
        assert_eq!(
            o.headers.get("www-authenticate").map(String::as_str),
            Some("Bearer error=\"invalid_token\""),
            "{token}"
        );
    }
    let metrics = server.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("authgate_check_requests_total{")
                && l.contains("mode=\"introspection\"")
                && l.contains("reason=\"invalid_token\"")
                && l.ends_with(" 8")),
        "{metrics}"
    );
}

/// Active answers are reused for `cacheTtl` and never past `exp`; refusals
/// are not cached; `cacheTtl: 0` asks every time.
#[tokio::test]
async fn active_answers_are_cached_within_cache_ttl_and_exp() {
    let idp = IntrospectionServer::start(Endpoint::default()).await;
    let now = now();
    let active = |exp: i64| json!({"active": true, "exp": exp, "https://hasura.io/jwt/claims": hasura("u1", "user")});
    idp.answer("long", active(now + 600));
    idp.answer("short", active(now + 2));
    let server = TestServer::start(&config(
        &format!(r#"endpoint: {{value: "{}"}}"#, idp.url()),
        "",
        "allowedSkew: 0",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(decide(&server, "long").await.code, 0);
    }
    assert_eq!(idp.calls(), 1, "one call, then the cache");
    // Revoked at the issuer: the cached answer still holds for cacheTtl.
    idp.answer("long", json!({"active": false}));
    assert_eq!(decide(&server, "long").await.code, 0);
    assert_eq!(idp.calls(), 1);

    for _ in 0..3 {
        assert_eq!(decide(&server, "unknown").await.http_status, 401);
    }
    assert_eq!(idp.calls(), 4, "refusals are asked again");

    assert_eq!(decide(&server, "short").await.code, 0);
    assert_eq!(idp.calls(), 5);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Past its exp the entry is gone, and the endpoint's answer (still
    // active, with a past exp) is checked again: refused.
    let o = decide(&server, "short").await;
    assert_eq!(o.http_status, 401, "{o:?}");
    assert_eq!(idp.calls(), 6);

    let uncached = TestServer::start(&config(
        &format!(r#"endpoint: {{value: "{}"}}"#, idp.url()),
        "cacheTtl: 0",
        "",
    ))
    .await;
    idp.answer("long", active(now + 600));
    for _ in 0..3 {
        assert_eq!(decide(&uncached, "long").await.code, 0);
    }
    assert_eq!(idp.calls(), 9, "cacheTtl 0: every request asks");
}

/// `client_secret_post` puts the credentials in the form, `bearer` sends
/// the secret as a bearer token; a refused client, an error status, an
/// unreadable answer, a timeout and an unreachable endpoint are
/// `internal_error` (503), never an allow.
#[tokio::test]
async fn client_methods_and_failures() {
    let claims = json!({"active": true, "https://hasura.io/jwt/claims": hasura("u1", "user")});
    let post = IntrospectionServer::start(Endpoint {
        form: vec![
            ("client_id".into(), "authgate".into()),
            ("client_secret".into(), "s3cr:t".into()),
        ],
        ..Default::default()
    })
    .await;
    post.answer("t", claims.clone());
    let server = TestServer::start(&config(
        &format!(r#"endpoint: {{value: "{}"}}"#, post.url()),
        "authMethod: client_secret_post",
        "",
    ))
    .await;
    assert_eq!(decide(&server, "t").await.code, 0);
    assert!(
        post.state
            .lock()
            .unwrap()
            .last_form
            .contains(&("client_id".into(), "authgate".into()))
    );

    let bearer = IntrospectionServer::start(Endpoint {
        authorization: Some("Bearer s3cr:t".into()),
        ..Default::default()
    })
    .await;
    bearer.answer("t", claims.clone());
    let yaml = format!(
        r#"
definition:
  modes:
    - mode: introspection
      introspection:
        endpoint: {{value: "{}"}}
        clientSecret: {{value: "s3cr:t"}}
        authMethod: bearer
        httpClient: {{timeout: 1}}
      claimsConfig: {{namespace: {{location: '"https://hasura.io/jwt/claims"'}}}}
"#,
        bearer.url()
    );
    let server = TestServer::start(&yaml).await;
    assert_eq!(decide(&server, "t").await.code, 0);

    // The basic client against the bearer endpoint: refused client.
    let wrong = TestServer::start(&config(
        &format!(r#"endpoint: {{value: "{}"}}"#, bearer.url()),
        "",
        "",
    ))
    .await;
    let o = decide(&wrong, "t").await;
    assert_eq!(
        (o.http_status, o.reason().as_str()),
        (503, "internal_error"),
        "{o:?}"
    );

    for (token, status, body) in [
        ("error", 500, r#"{"error":"server_error"}"#),
        ("not-json", 200, "<html>"),
        ("no-active", 200, r#"{"sub":"u1"}"#),
        ("string-active", 200, r#"{"active":"true"}"#),
    ] {
        bearer.answer_raw(token, status, body);
        let o = decide(&server, token).await;
        assert_eq!(
            (o.http_status, o.reason().as_str()),
            (503, "internal_error"),
            "{token}: {o:?}"
        );
    }
    bearer.answer("slow", claims.clone());
    bearer.state.lock().unwrap().delay = Duration::from_millis(1500);
    let o = decide(&server, "slow").await;
    assert_eq!(
        (o.http_status, o.reason().as_str()),
        (503, "internal_error"),
        "timeout: {o:?}"
    );

    let port = free_port();
    let gone = TestServer::start(&config(
        &format!(r#"endpoint: {{value: "http://127.0.0.1:{port}/introspect"}}"#),
        "",
        "",
    ))
    .await;
    let o = decide(&gone, "t").await;
    assert_eq!(
        (o.http_status, o.reason().as_str()),
        (503, "internal_error"),
        "{o:?}"
    );
}

/// `oidcIssuer`: the endpoint is the discovery document's
/// `introspection_endpoint`; a document naming another issuer keeps the
/// server up but not ready, and the mode answers `internal_error`.
#[tokio::test]
async fn the_endpoint_is_discovered_from_the_issuer() {
    let idp = IntrospectionServer::start(Endpoint {
        authorization: Some(BASIC.into()),
        ..Default::default()
    })
    .await;
    idp.answer(
        "t",
        json!({"active": true, "https://hasura.io/jwt/claims": hasura("u1", "user")}),
    );
    let server = TestServer::start(&config(
        &format!(r#"oidcIssuer: {{value: "{}"}}"#, idp.issuer()),
        "",
        "",
    ))
    .await;
    server.wait_ready().await;
    assert_eq!(decide(&server, "t").await.code, 0);

    let other = IntrospectionServer::start(Endpoint {
        discovery_issuer: Some("https://someone-else.example".into()),
        ..Default::default()
    })
    .await;
    other.answer(
        "t",
        json!({"active": true, "https://hasura.io/jwt/claims": hasura("u1", "user")}),
    );
    let server = TestServer::start(&config(
        &format!(r#"oidcIssuer: {{value: "{}"}}"#, other.issuer()),
        "",
        "",
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = reqwest::get(server.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap();
    assert!(
        why.contains("introspection idp") && why.contains("someone-else.example"),
        "{why}"
    );
    let o = decide(&server, "t").await;
    assert_eq!(
        (o.http_status, o.reason().as_str()),
        (503, "internal_error"),
        "{o:?}"
    );
    assert_eq!(
        other.calls(),
        0,
        "no token goes to an endpoint discovery did not vouch for"
    );
}
