//! Webhook mode against a real local hook server: GET and POST, header
//! forwarding, JMESPath and Go templates, refusals, errors, timeouts, retries,
//! and RelyAuth's own webhook vectors.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use common::*;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

#[derive(Clone, Default)]
struct Hook {
    seen: Arc<Mutex<Vec<Seen>>>,
    flaky: Arc<AtomicUsize>,
}

impl Hook {
    fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn json_response(v: Value) -> Response {
    ([("content-type", "application/json")], v.to_string()).into_response()
}

async fn hook_handler(
    State(hook): State<Hook>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let get = |name: &str| h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    hook.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers: h.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    match uri.path() {
        // RelyAuth's mock hook (authtests/units.go).
        "/authorize" if method == Method::GET => {
            if get("authorization").as_deref() != Some("Bearer bearertoken") {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            json_response(json!({"x-hasura-role": "admin"}))
        }
        "/authorize" => {
            if get("authorization").as_deref() != Some("Bearer posttoken") {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            if get("x-test-header").is_some()
                || get("content-type").as_deref() != Some("application/json")
            {
                return StatusCode::BAD_REQUEST.into_response();
            }
            match serde_json::from_slice::<Value>(&body) {
                Ok(v) if v == json!({"x-hasura-role": "user"}) => json_response(v),
                _ => StatusCode::BAD_REQUEST.into_response(),
            }
        }
        "/session" => {
            let user = get("x-user").unwrap_or_default();
            if user.is_empty() {
                return StatusCode::FORBIDDEN.into_response();
            }
            json_response(
                json!({"X-Hasura-Role": "user", "X-Hasura-User-Id": user, "x-hasura-tags": ["a", "b"]}),
            )
        }
        "/cached" => {
            let user = get("x-user").unwrap_or_default();
            let cache_control = match user.as_str() {
                "" => return StatusCode::FORBIDDEN.into_response(),
                "boom" => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                // A refusal that says it may be cached: it never is.
                "deny" => {
                    return (
                        StatusCode::UNAUTHORIZED,
                        [("cache-control", "max-age=60")],
                        "",
                    )
                        .into_response();
                }
                "nostore" => "no-store",
                "short" => "max-age=1",
                // Hasura's form: the directive is a key of the answer.
                "body" => {
                    return json_response(json!({
                        "x-hasura-role": "user",
                        "x-hasura-user-id": "body",
                        "Cache-Control": "max-age=60",
                    }));
                }
                _ => "private, max-age=60",
            };
            (
                [
                    ("content-type", "application/json"),
                    ("cache-control", cache_control),
                ],
                json!({"x-hasura-role": "user", "x-hasura-user-id": user}).to_string(),
            )
                .into_response()
        }
        "/nested" => json_response(json!({"data": {"role": "editor", "id": 7}})),
        "/error" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        "/badjson" => ([("content-type", "application/json")], "{not json").into_response(),
        "/array" => json_response(json!(["x-hasura-role"])),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json_response(json!({"x-hasura-role": "late"}))
        }
        "/flaky" => {
            if hook.flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            json_response(json!({"x-hasura-role": "eventually"}))
        }
        "/injection" => {
            json_response(json!({"x-hasura-role": "user", "x-hasura-evil": "a\r\nx: y"}))
        }
        "/hop" => json_response(json!({"x-hasura-role": "user", "transfer-encoding": "chunked"})),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn start_hook() -> (SocketAddr, Hook) {
    let hook = Hook::default();
    let app = Router::new()
        .fallback(any(hook_handler))
        .with_state(hook.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, hook)
}

fn one_hook(addr: SocketAddr, body: &str) -> String {
    format!("definition:\n  modes:\n    - mode: webhook\n      url: {{value: \"http://{addr}{body}")
}

/// RelyAuth's `authtests/testdata/webhook.yaml`, verbatim.
const RELY_WEBHOOK: &str = r#"version: v1
kind: AuthConfig
definition:
  modes:
    - mode: webhook
      url:
        env: AUTH_HOOK_URL
      method: POST
      customRequest:
        headers:
          forward:
            - Authorization
        body:
          type: gotmpl
          contentType: application/json
          template: |
            {
              "x-hasura-role": "user"
            }
      customResponse:
        response:
          type: jmespath
          template:
            type: object
            properties:
              x-hasura-role:
                type: field
                path: body."x-hasura-role"

    - mode: webhook
      url:
        env: AUTH_HOOK_URL
      method: GET
      customRequest:
        headers:
          additional:
            Authorization:
              default:
                value: Bearer bearertoken
      customResponse:
        response:
          type: gotmpl
          contentType: application/json
          template: |
            {
              "x-hasura-role": "{{ index .body "x-hasura-role" }}",
              "x-content-type": "{{ index .headers "content-type" }}"
            }
"#;

async fn ddn(server: &TestServer, headers: &[(&str, &str)]) -> (u16, String) {
    let body = json!({
        "url": "http://localhost:8080/graphql",
        "headers": headers.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    let resp = reqwest::Client::new()
        .post(server.http_url("/auth/ddn"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn relyauth_webhook_vectors() {
    let (addr, hook) = start_hook().await;
    let url = format!("http://{addr}/authorize");
    let server = TestServer::start_with_env(RELY_WEBHOOK, &[("AUTH_HOOK_URL", &url)]).await;
    let (status, body) = ddn(&server, &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"x-hasura-role": "admin", "x-content-type": "application/json"})
    );
    let (status, body) = ddn(
        &server,
        &[
            ("Authorization", "Bearer posttoken"),
            ("x-test-header", "test"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"x-hasura-role": "user"})
    );
    let post = hook
        .seen
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|s| s.method == "POST")
        .cloned()
        .unwrap();
    assert!(
        !post.headers.iter().any(|(k, _)| k == "x-test-header"),
        "not in `forward`"
    );
}

#[tokio::test]
async fn get_forwards_all_but_excluded_headers_and_maps_the_answer() {
    let (addr, hook) = start_hook().await;
    let cfg = one_hook(addr, "/session\"}\n      method: GET\n");
    let server = TestServer::start(&cfg).await;
    let r = server
        .check(&[
            ("x-user", "u-5"),
            ("cookie", "sid=1"),
            ("user-agent", "curl"),
            ("origin", "https://app"),
            ("x-hasura-role", "user"),
        ])
        .await;
    let o = outcome(&r);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.headers["x-hasura-user-id"], "u-5");
    assert_eq!(o.headers["x-hasura-role"], "user");
    assert_eq!(o.headers["x-hasura-tags"], "{a,b}");
    assert_eq!(o.metadata["mode"], "webhook");
    let seen = hook.last();
    assert_eq!(seen.method, "GET");
    let names: Vec<&str> = seen.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        names.contains(&"x-user") && names.contains(&"cookie"),
        "{names:?}"
    );
    assert!(!names.contains(&"origin"), "excluded: {names:?}");
    assert!(
        seen.headers
            .iter()
            .any(|(k, v)| k == "user-agent" && v.starts_with("authgate/"))
    );
    // The hook's 403 is a refusal.
    let o = outcome(&server.check(&[]).await);
    assert_eq!(
        (o.code, o.http_status, o.reason().as_str()),
        (16, 401, "webhook_denied")
    );
    assert_eq!(
        o.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
}

#[tokio::test]
async fn post_default_body_and_jmespath_templates() {
    let (addr, hook) = start_hook().await;
    // Default POST body: {"headers": ..., "request": ...}.
    let cfg = one_hook(
        addr,
        "/session\"}\n      method: POST\n      customRequest:\n        headers:\n          forward: [X-User]\n",
    );
    let server = TestServer::start(&cfg).await;
    let o = outcome(
        &server
            .check(&[("x-user", "u-9"), ("authorization", "Bearer t")])
            .await,
    );
    assert_eq!(o.headers["x-hasura-user-id"], "u-9", "{o:?}");
    let seen = hook.last();
    let body: Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(body["headers"]["authorization"], "Bearer t");
    assert_eq!(body["headers"]["x-user"], "u-9");
    assert!(body.get("request").is_some());
    assert!(
        seen.headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json")
    );
    assert!(
        !seen.headers.iter().any(|(k, _)| k == "authorization"),
        "only forwarded headers"
    );

    // JMESPath body and response mappings.
    let cfg = format!(
        r#"
definition:
  modes:
    - mode: webhook
      url: {{value: "http://{addr}/nested"}}
      method: POST
      customRequest:
        headers:
          additional:
            X-Caller: {{path: 'headers."x-caller"', default: {{value: anonymous}}}}
        body:
          type: jmespath
          template:
            type: object
            properties:
              token: {{type: field, path: headers.authorization}}
              path: {{type: field, path: url}}
              fixed: {{type: field, default: {{value: 42}}}}
      customResponse:
        response:
          type: jmespath
          template:
            type: object
            properties:
              x-hasura-role: {{type: field, path: body.data.role}}
              x-hasura-user-id: {{type: field, path: body.data.id}}
              x-hasura-source: {{type: field, path: 'headers."content-type"'}}
"#
    );
    let server = TestServer::start(&cfg).await;
    let r = server
        .check_request(check_request(
            &[("authorization", "Bearer abc")],
            "/v1/graphql?x=1",
        ))
        .await;
    let o = outcome(&r);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.headers["x-hasura-role"], "editor");
    assert_eq!(o.headers["x-hasura-user-id"], "7");
    assert_eq!(o.headers["x-hasura-source"], "application/json");
    let seen = hook.last();
    assert_eq!(
        serde_json::from_str::<Value>(&seen.body).unwrap(),
        json!({"token": "Bearer abc", "path": "/v1/graphql?x=1", "fixed": 42})
    );
    assert!(
        seen.headers
            .iter()
            .any(|(k, v)| k == "x-caller" && v == "anonymous")
    );
}

#[tokio::test]
async fn hook_failures_are_internal_errors_and_never_panics() {
    let (addr, _hook) = start_hook().await;
    for (path, extra) in [
        ("/error", ""),
        ("/badjson", ""),
        ("/array", ""),
        ("/injection", ""),
        ("/hop", ""),
        ("/slow", "      httpClient: {timeout: 1}\n"),
    ] {
        let cfg = one_hook(addr, &format!("{path}\"}}\n      method: GET\n{extra}"));
        let server = TestServer::start(&cfg).await;
        let started = std::time::Instant::now();
        let o = outcome(&server.check(&[("x-user", "u")]).await);
        if path == "/injection" {
            // A CR/LF value is refused as a header, never passed on.
            assert_eq!(o.code, 14, "{path}: {o:?}");
        } else {
            assert_eq!(
                (o.code, o.http_status, o.reason().as_str()),
                (14, 503, "internal_error"),
                "{path}: {o:?}"
            );
        }
        if path == "/slow" {
            assert!(
                started.elapsed() < Duration::from_millis(2500),
                "the timeout applies"
            );
        }
        server.running.shutdown().await;
    }
    // Unreachable hook.
    let cfg = "definition:\n  modes:\n    - mode: webhook\n      url: {value: \"http://127.0.0.1:9/x\"}\n      method: GET\n";
    let server = TestServer::start(cfg).await;
    assert_eq!(outcome(&server.check(&[]).await).reason(), "internal_error");
}

#[tokio::test]
async fn retries_follow_the_policy() {
    let (addr, hook) = start_hook().await;
    let cfg = one_hook(
        addr,
        "/flaky\"}\n      method: GET\n      httpClient:\n        timeout: 2s\n        retry: {maxAttempts: 3, delay: 10, httpStatus: [503]}\n",
    );
    let server = TestServer::start(&cfg).await;
    let o = outcome(&server.check(&[]).await);
    assert_eq!(
        (o.code, o.headers["x-hasura-role"].as_str()),
        (0, "eventually"),
        "{o:?}"
    );
    assert_eq!(hook.count(), 3);
}

#[tokio::test]
async fn hook_authentication_and_invalid_token_then_webhook() {
    let (addr, hook) = start_hook().await;
    let cfg = hs256_config(&format!(
        r#"    - mode: webhook
      url: {{value: "http://{addr}/session"}}
      method: GET
      httpClient:
        authentication: {{type: basic, username: {{value: authgate}}, password: {{value: s3cret}}}}
"#
    ));
    let server = TestServer::start(&cfg).await;
    // The jwt mode refuses the token; the webhook (later in order) accepts the caller.
    let o = outcome(
        &server
            .check(&[("authorization", "Bearer forged"), ("x-user", "w")])
            .await,
    );
    assert_eq!(
        (o.code, o.metadata["mode"].as_str()),
        (0, "webhook"),
        "{o:?}"
    );
    let seen = hook.last();
    assert!(
        seen.headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == "Basic YXV0aGdhdGU6czNjcmV0"),
        "{:?}",
        seen.headers
    );
    assert_eq!(seen.path, "/session");
}

#[test]
fn webhook_config_errors_have_paths() {
    let errs = match authgate::config::parse(
        r#"
definition:
  modes:
    - mode: webhook
      url: {value: "ftp://x"}
      method: PUT
      customRequest:
        headers: {forward: 5}
        body: {type: xslt, template: x}
      customResponse:
        response: {type: gotmpl, template: "{{ .x "}
      httpClient: {timeout: 5x, tls: {rootCAFile: [/nonexistent.pem]}, retry: {multiplier: 0.5}}
"#,
        &|_: &str| None,
    ) {
        Ok(_) => panic!("should fail"),
        Err(e) => e.to_string(),
    };
    for expected in [
        "definition.modes[0].url: the webhook URL must be http or https",
        "definition.modes[0].method: unsupported method `PUT`",
        "definition.modes[0].customRequest.headers.forward: expected a list of strings",
        "definition.modes[0].customRequest.body.type: unknown transformer type `xslt`",
        "definition.modes[0].customResponse.response.template: invalid Go template",
        "definition.modes[0].httpClient.timeout: `5x` is not a duration",
        "definition.modes[0].httpClient.tls.rootCAFile[0]: cannot read /nonexistent.pem",
        "definition.modes[0].httpClient.retry.multiplier: expected a number >= 1",
    ] {
        assert!(errs.contains(expected), "missing {expected:?} in:\n{errs}");
    }
}

/// `cache`: an answer is reused for the same hook request while its
/// `Cache-Control` says; refusals, errors and `no-store` answers never are,
/// within `maxEntries`.
#[tokio::test]
async fn answers_are_cached_as_their_cache_headers_say() {
    let (addr, hook) = start_hook().await;
    let config = |cache: &str| {
        format!(
            "{}\"}}\n      method: GET\n      customRequest: {{headers: {{forward: [x-user]}}}}\n      {cache}\n",
            one_hook(addr, "/cached")
        )
    };
    let server = TestServer::start(&config("cache: {enabled: true, maxEntries: 100}")).await;
    let decide = |user: &'static str| {
        let server = &server;
        async move { outcome(&server.check(&[("x-user", user)]).await) }
    };
    for _ in 0..3 {
        let o = decide("alice").await;
        assert_eq!(o.code, 0, "{o:?}");
        assert_eq!(o.headers["x-hasura-user-id"], "alice");
    }
    assert_eq!(hook.count(), 1, "one hook call, then the cache");
    let o = decide("bob").await;
    assert_eq!(
        o.headers["x-hasura-user-id"], "bob",
        "another request, another entry"
    );
    assert_eq!(hook.count(), 2);
    assert_eq!(decide("alice").await.headers["x-hasura-user-id"], "alice");
    assert_eq!(hook.count(), 2);

    for (user, reason) in [
        ("deny", "webhook_denied"),
        ("boom", "internal_error"),
        ("nostore", ""),
    ] {
        let before = hook.count();
        for _ in 0..2 {
            assert_eq!(decide(user).await.reason(), reason, "{user}");
        }
        assert_eq!(hook.count(), before + 2, "{user} is never cached");
    }

    let before = hook.count();
    for _ in 0..2 {
        let o = decide("body").await;
        assert_eq!(o.code, 0, "{o:?}");
        assert!(
            !o.headers.contains_key("cache-control"),
            "a directive, not a session variable: {o:?}"
        );
    }
    assert_eq!(
        hook.count(),
        before + 1,
        "Cache-Control in the answer, as Hasura"
    );

    let before = hook.count();
    assert_eq!(decide("short").await.code, 0);
    assert_eq!(decide("short").await.code, 0);
    assert_eq!(hook.count(), before + 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(decide("short").await.code, 0);
    assert_eq!(hook.count(), before + 2, "max-age=1 has lapsed");

    // Off by default.
    let uncached = TestServer::start(&config("")).await;
    let before = hook.count();
    for _ in 0..2 {
        assert_eq!(
            outcome(&uncached.check(&[("x-user", "alice")]).await).code,
            0
        );
    }
    assert_eq!(hook.count(), before + 2);
}
