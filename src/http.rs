//! The HTTP address: forward-auth (`/check`, `/check/*`) for nginx,
//! Traefik and Envoy's HTTP ext_authz, plus `/healthz`, `/readyz` and
//! `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use crate::decision::{Decision, DenyReason};
use crate::metrics::Frontend;
use crate::request::{Headers, Request};
use crate::server::Shared;

/// The denial reason on `/check` answers, so nginx can rebuild the body.
pub const REASON_HEADER: HeaderName = HeaderName::from_static("x-authgate-reason");

/// Most header fields one HTTP request may carry (hyper also refuses more
/// than 100 on HTTP/1.1).
pub const MAX_HEADERS: usize = 100;
/// Largest request target plus header names and values of one HTTP request.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest body of a WebAuthn endpoint call.
pub const MAX_WEBAUTHN_BODY_BYTES: usize = 64 * 1024;
/// Largest POST body of the Hasura webhook endpoints (`/auth/ddn`, `/auth/hasura`).
pub const MAX_HOOK_BODY_BYTES: usize = 1024 * 1024;

pub fn router(shared: Arc<Shared>) -> Router {
    let hooks = Router::new()
        .route("/auth/ddn", get(hasura_ddn_get).post(hasura_ddn_post))
        .route("/auth/hasura", get(hasura_v2_get).post(hasura_v2_post))
        .layer(DefaultBodyLimit::max(MAX_HOOK_BODY_BYTES));
    let webauthn = crate::webauthn_api::router()
        .layer(DefaultBodyLimit::max(MAX_WEBAUTHN_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(shared.clone(), bounded));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/check", any(check))
        .route("/check/", any(check))
        .route("/check/{*rest}", any(check))
        .merge(hooks)
        .merge(webauthn)
        .layer(middleware::from_fn(header_limits))
        .with_state(shared)
}

/// Refuses a request whose headers exceed [`MAX_HEADERS`] or
/// [`MAX_HEADER_BYTES`] with 431, before any route runs.
async fn header_limits(req: axum::extract::Request, next: Next) -> Response {
    let headers = req.headers();
    let bytes = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum::<usize>()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            r#"{"error":"invalid_request","message":"request headers too large"}"#,
        )
            .into_response();
    }
    next.run(req).await
}

/// A WebAuthn call runs in an HTTP slot and within the decision timeout,
/// like a decision: a hung store or IdP answers `internal_error` (503).
async fn bounded(
    State(shared): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let timeout = shared.decision_timeout();
    match shared.bounded(Frontend::Http, timeout, next.run(req)).await {
        Some(resp) => resp,
        None => {
            tracing::warn!(timeout_s = timeout.as_secs(), "WebAuthn call timed out");
            render(&Decision::deny(DenyReason::InternalError, None))
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        shared.metrics.render(),
    )
        .into_response()
}

async fn check(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let req = to_request(&method, &uri, &headers, peer);
    let decision = shared.decide(Frontend::Http, &req, started).await;
    render(&decision)
}

/// The original request: nginx's `X-Original-URI` / `X-Original-Method`,
/// Traefik's `X-Forwarded-Uri` / `X-Forwarded-Method`, else the path after
/// `/check` (Envoy's HTTP ext_authz `path_prefix`) and this call's method.
pub fn to_request(method: &Method, uri: &Uri, headers: &HeaderMap, peer: SocketAddr) -> Request {
    let mut h = Headers::with_capacity(headers.len());
    for (name, value) in headers {
        let v = match value.to_str() {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
        };
        h.push(name.as_str(), v);
    }
    let path = h
        .get("x-original-uri")
        .or_else(|| h.get("x-forwarded-uri"))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let full = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/check");
            let rest = full.strip_prefix("/check").unwrap_or(full);
            if rest.is_empty() || rest.starts_with('?') {
                format!("/{rest}")
            } else {
                rest.to_owned()
            }
        });
    let method = h
        .get("x-original-method")
        .or_else(|| h.get("x-forwarded-method"))
        .map(str::to_owned)
        .unwrap_or_else(|| method.as_str().to_owned());
    Request {
        headers: h,
        method,
        path,
        source_ip: Some(peer.ip()),
        context: Default::default(),
        body: None,
    }
}

pub fn render(decision: &Decision) -> Response {
    match decision {
        Decision::Allow(a) => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::OK;
            let headers = resp.headers_mut();
            for (k, v) in &a.headers {
                if let (Ok(name), Ok(value)) =
                    (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v))
                {
                    headers.insert(name, value);
                }
            }
            resp
        }
        // Bytes for the gRPC front door; never asked for here (fail closed).
        Decision::Rendered(r) => render(&Decision::deny(
            DenyReason::InternalError,
            Some(r.mode.clone()),
        )),
        Decision::Deny(d) => {
            let mut resp = Response::new(Body::from(d.reason.body()));
            *resp.status_mut() =
                StatusCode::from_u16(d.reason.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
            let headers = resp.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            // For proxies that cannot pass the body on (nginx auth_request).
            headers.insert(REASON_HEADER, HeaderValue::from_static(d.reason.as_str()));
            if let Some(challenge) = d.reason.www_authenticate() {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            resp
        }
    }
}

/// Output dialect of the Hasura auth webhook endpoints.
#[derive(Clone, Copy)]
enum Dialect {
    /// `/auth/ddn`: typed JSON values.
    Ddn,
    /// `/auth/hasura`: every value a string (Hasura v2).
    Strings,
}

/// RelyAuth's POST body: `{headers, url?, request?}`.
#[derive(serde::Deserialize)]
struct HookBody {
    #[serde(default)]
    headers: std::collections::HashMap<String, serde_json::Value>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    request: Option<serde_json::Value>,
}

async fn hasura_ddn_get(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let req = to_request(&Method::GET, &uri, &headers, peer);
    hook_answer(&shared, req, Dialect::Ddn).await
}

async fn hasura_v2_get(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let req = to_request(&Method::GET, &uri, &headers, peer);
    hook_answer(&shared, req, Dialect::Strings).await
}

async fn hasura_ddn_post(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    match hook_request(&body, peer) {
        Some(req) => hook_answer(&shared, req, Dialect::Ddn).await,
        None => {
            tracing::debug!("malformed Hasura webhook body");
            empty_401()
        }
    }
}

async fn hasura_v2_post(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    match hook_request(&body, peer) {
        Some(req) => hook_answer(&shared, req, Dialect::Strings).await,
        None => {
            tracing::debug!("malformed Hasura webhook body");
            empty_401()
        }
    }
}

/// The request described by a POST body; `None` when the body is not one.
fn hook_request(body: &[u8], peer: SocketAddr) -> Option<Request> {
    let parsed: HookBody = serde_json::from_slice(body).ok()?;
    let mut headers = Headers::with_capacity(parsed.headers.len());
    for (k, v) in parsed.headers {
        match v {
            serde_json::Value::String(s) => headers.push(&k, s),
            serde_json::Value::Array(items) => {
                for item in items {
                    if let serde_json::Value::String(s) = item {
                        headers.push(&k, s);
                    }
                }
            }
            _ => return None,
        }
    }
    Some(Request {
        headers,
        method: "POST".into(),
        path: parsed.url.unwrap_or_else(|| "/".into()),
        source_ip: Some(peer.ip()),
        context: Default::default(),
        body: parsed.request,
    })
}

fn empty_401() -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    resp
}

/// 200 with the session as JSON, or an empty 401: Hasura understands only these.
async fn hook_answer(shared: &Shared, req: Request, dialect: Dialect) -> Response {
    let started = Instant::now();
    let decision = shared.decide(Frontend::Webhook, &req, started).await;
    let Decision::Allow(a) = decision else {
        return empty_401();
    };
    let body = match dialect {
        Dialect::Ddn => a.session.to_json(),
        Dialect::Strings => serde_json::Value::Object(
            a.headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        ),
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}
