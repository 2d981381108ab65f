//! The HTTP address: forward-auth (`/check`, `/check/*`) for nginx,
//! Traefik and Envoy's HTTP ext_authz, plus `/healthz`, `/readyz` and
//! `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::BytesMut;

use crate::admission::Slots;
use crate::budget::Charge;
use crate::conn::Connection;
use crate::decision::{Decision, DenyReason};
use crate::forward_auth::{self, ForwardAuthProxy, ForwardError};
use crate::limits::{self, MAX_HEADER_BYTES, MAX_HEADERS};
use crate::metrics::Frontend;
use crate::request::{Headers, Request};
use crate::state::Shared;

pub mod webauthn;

/// The denial reason on `/check` answers, so nginx can rebuild the body.
pub const REASON_HEADER: HeaderName = HeaderName::from_static("x-authgate-reason");

/// Envoy's HTTP ext_authz reads the headers to remove upstream from this
/// header of an allow (comma-separated).
pub const HEADERS_TO_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// Largest body of a WebAuthn endpoint call.
pub const MAX_WEBAUTHN_BODY_BYTES: usize = 64 * 1024;
/// Largest POST body of the Hasura webhook endpoints (`/auth/ddn`, `/auth/hasura`).
pub const MAX_HOOK_BODY_BYTES: usize = 1024 * 1024;

pub fn router(shared: Arc<Shared>) -> Router {
    let hooks = Router::new()
        .route("/auth/ddn", get(hasura_ddn_get).post(hasura_ddn_post))
        .route("/auth/hasura", get(hasura_v2_get).post(hasura_v2_post))
        .route_layer(middleware::from_fn_with_state(shared.clone(), hook_body));
    let webauthn =
        webauthn::router().route_layer(middleware::from_fn_with_state(shared.clone(), ceremony));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(published_jwks))
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/elevation/client.js", get(elevation_client))
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

/// Why a request body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the endpoint's limit.
    TooLarge,
    /// Not received whole within [`limits::HTTP_BODY_TIMEOUT`].
    TooSlow,
    /// The connection's or the shared body budget is spent.
    Busy,
    /// The connection failed while the body was read.
    Broken,
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        let (status, error, message) = match self {
            BodyError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "request body too large",
            ),
            BodyError::TooSlow => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request",
                "request body not received in time",
            ),
            BodyError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "internal_error",
                "too many requests in progress; retry",
            ),
            BodyError::Broken => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "request body could not be read",
            ),
        };
        let mut resp = json_error(status, error, message);
        match self {
            // The rest of a slow body may still come: close rather than read it.
            BodyError::TooSlow | BodyError::Broken | BodyError::TooLarge => {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            BodyError::Busy => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
        }
        resp
    }
}

fn json_error(status: StatusCode, error: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": error, "message": message}).to_string();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Reads a whole request body: at most `limit` bytes, within `timeout`,
/// each chunk charged to `charge` as it arrives (before it is kept).
pub async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
    charge: &mut Charge,
) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut out = BytesMut::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| BodyError::Broken)?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if out.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            charge.take(data.len()).map_err(|_| BodyError::Busy)?;
            out.extend_from_slice(&data);
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => Ok(out.freeze()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BodyError::TooSlow),
    }
}

/// The connection a request came on (set by [`crate::conn::serve_http`]);
/// a stand-in with its own budget for a router served some other way.
fn connection_of(req: &axum::extract::Request) -> Arc<Connection> {
    req.extensions()
        .get::<Arc<Connection>>()
        .cloned()
        .unwrap_or_else(|| Arc::new(Connection::detached(limits::HTTP_CONNECTION_BODY_BYTES)))
}

/// Reads the body of a request whole, charged to its connection's and the
/// shared budget, and hands the request on with it.
async fn with_read_body(
    shared: &Shared,
    conn: &Connection,
    req: axum::extract::Request,
    limit: usize,
) -> Result<(axum::extract::Request, Charge), BodyError> {
    let (parts, body) = req.into_parts();
    let mut charge = Charge::new(&conn.body_budget, &shared.admission.http_body_bytes);
    let bytes = read_body(body, limit, limits::HTTP_BODY_TIMEOUT, &mut charge).await?;
    Ok((
        axum::extract::Request::from_parts(parts, Body::from(bytes)),
        charge,
    ))
}

/// The Hasura webhook endpoints read their body (up to
/// [`MAX_HOOK_BODY_BYTES`]) before they take a decision slot.
async fn hook_body(
    State(shared): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let conn = connection_of(&req);
    match with_read_body(&shared, &conn, req, MAX_HOOK_BODY_BYTES).await {
        Ok((req, _charge)) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Admission of a WebAuthn call, so that ceremonies cannot starve
/// decisions: at most [`limits::CEREMONIES_PER_CONNECTION`] per connection
/// and [`limits::MAX_PENDING_CEREMONIES`] in all (more are refused at once);
/// the body is read with a deadline before a slot is taken; the call then
/// runs in a ceremony slot (never a decision's), within the decision
/// timeout: a hung store or IdP answers `internal_error` (503).
async fn ceremony(
    State(shared): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let conn = connection_of(&req);
    let Ok(_on_connection) = conn.ceremonies.clone().try_acquire_owned() else {
        let mut resp = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many WebAuthn calls on this connection",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    };
    let Ok(_admitted) = shared
        .admission
        .ceremonies_pending
        .clone()
        .try_acquire_owned()
    else {
        return BodyError::Busy.into_response();
    };
    let (req, _charge) = match with_read_body(&shared, &conn, req, MAX_WEBAUTHN_BODY_BYTES).await {
        Ok(read) => read,
        Err(e) => return e.into_response(),
    };
    let timeout = shared.decision_timeout();
    match shared
        .admission
        .bounded(Slots::Ceremony, timeout, next.run(req))
        .await
    {
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

/// `{"ready": bool, "missing": [...], "degraded": [...]}`: what keeps
/// authgate from being ready (a JWKS source without keys at start and why,
/// draining), and key sources that lost their keys or never had them since
/// a reload, for whoever reads the probe.
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let r = shared.readiness();
    let ready = r.missing.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({"ready": ready, "missing": r.missing, "degraded": r.degraded});
    (status, axum::Json(body)).into_response()
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
    let proxy = shared.forward_auth_proxy();
    let decision = match to_request(proxy, &method, &uri, &headers, peer) {
        Ok(req) => shared.decide(Frontend::Http, &req, started).await,
        Err(e) => {
            let reason = if e.is_proxy_config() {
                tracing::warn!(proxy = ?proxy, "forward-auth call refused: {e}; check definition.settings.forwardAuth.proxy and the proxy's config");
                DenyReason::InternalError
            } else {
                tracing::info!(proxy = ?proxy, "forward-auth call refused: {e}");
                DenyReason::InvalidRequest
            };
            let d = Decision::deny(reason, None);
            shared
                .metrics
                .record(Frontend::Http, d.summary(), started.elapsed().as_secs_f64());
            d
        }
    };
    render(&decision)
}

/// The request headers as the pipeline reads them (names lower-cased).
pub fn headers_of(headers: &HeaderMap) -> Headers {
    let mut h = Headers::with_capacity(headers.len());
    for (name, value) in headers {
        let v = match value.to_str() {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
        };
        h.push(name.as_str(), v);
    }
    h
}

/// The original request of a forward-auth call, described by the headers of
/// the configured `proxy` only ([`forward_auth::original`]).
pub fn to_request(
    proxy: ForwardAuthProxy,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Request, ForwardError> {
    let mut h = headers_of(headers);
    // Over HTTP/2 (Envoy's HTTP ext_authz on an h2 cluster) the original
    // host arrives as the URI's authority, not as a Host header.
    if let Some(authority) = uri.authority() {
        h.push(":authority", authority.as_str());
    }
    let full = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/check");
    let after_check = full.strip_prefix("/check").unwrap_or(full);
    let original = forward_auth::original(proxy, method.as_str(), after_check, &h)?;
    // `?policy=NAME` on the exact `/check` URL is the operator's (nginx's
    // `auth_request /check?policy=admin;`); after `/check/` the query is the
    // client's and selects nothing.
    let mut context = std::collections::HashMap::new();
    if uri.path() == "/check"
        && let Some(query) = uri.query()
    {
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k == authgate_core::policy::CONTEXT_KEY {
                if context.contains_key(authgate_core::policy::CONTEXT_KEY) {
                    return Err(ForwardError::Repeated("policy"));
                }
                context.insert(
                    authgate_core::policy::CONTEXT_KEY.to_owned(),
                    v.into_owned(),
                );
            }
        }
    }
    Ok(Request {
        headers: h,
        method: original.method,
        path: original.path,
        source_ip: Some(peer.ip()),
        context,
        body: None,
    })
}

/// `GET /.well-known/jwks.json`: the public keys of elevation grants and of
/// upstream tokens (during a rotation, the next and the previous key too).
/// Verifiers may cache it for [`crate::upstream::JWKS_MAX_AGE`] seconds; a
/// new key is published twice that long before it signs.
async fn published_jwks(State(shared): State<Arc<Shared>>) -> Response {
    let engine = shared.engine();
    let now = crate::clock::unix_now();
    let mut keys: Vec<serde_json::Value> = Vec::new();
    if let Some(e) = engine.elevation()
        && let Some(grant) = e.grants.jwks()["keys"].as_array()
    {
        keys.extend(grant.iter().cloned());
    }
    if let Some(u) = engine.upstream_tokens() {
        for jwk in u.published(now) {
            let kid = jwk.common.key_id.as_deref();
            if !keys.iter().any(|k| k["kid"].as_str() == kid)
                && let Ok(v) = serde_json::to_value(jwk)
            {
                keys.push(v);
            }
        }
    }
    (
        [(
            header::CACHE_CONTROL,
            format!("public, max-age={}", crate::upstream::JWKS_MAX_AGE),
        )],
        axum::Json(serde_json::json!({ "keys": keys })),
    )
        .into_response()
}

/// The browser client for the ceremonies (docs/elevation.md), the same
/// file as `clients/elevation/client.js` in the repository.
const ELEVATION_CLIENT: &str = include_str!("../../clients/elevation/client.js");

/// `GET /elevation/client.js`: the ES module, revalidated by its hash so that
/// a page never runs a client older than the server it talks to.
async fn elevation_client(headers: HeaderMap) -> Response {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    static ETAG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let digest = sha2::Sha256::digest(ELEVATION_CLIENT.as_bytes());
        let mut tag = String::from("\"");
        for b in &digest[..16] {
            let _ = write!(tag, "{b:02x}");
        }
        tag.push('"');
        tag
    });
    let etag = ETAG.as_str();
    let cached = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
        });
    // Public, so any page may import it (a module script is fetched in CORS
    // mode).
    let common = [
        (header::CACHE_CONTROL, "no-cache"),
        (header::ETAG, etag),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
    ];
    if cached {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        ELEVATION_CLIENT,
    )
        .into_response()
}

/// `GET /.well-known/openid-configuration` (OpenID Connect Discovery 1.0):
/// where verifiers of upstream tokens find the keys; 404 without
/// `upstreamToken`.
async fn openid_configuration(State(shared): State<Arc<Shared>>) -> Response {
    match shared.engine().upstream_tokens() {
        Some(u) => (
            [(header::CACHE_CONTROL, "public, max-age=300")],
            axum::Json(u.discovery()),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub fn render(decision: &Decision) -> Response {
    match decision {
        Decision::Allow(a) => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::OK;
            let headers = resp.headers_mut();
            let extra = a
                .extra_metadata
                .iter()
                .map(|f| (&*f.header, f.value.as_str()));
            for (k, v) in a.headers_to_set().chain(extra) {
                // Values were checked when decided; one that cannot be
                // written would leave the client's header (an upstream
                // token's) in place: fail closed.
                match (HeaderName::try_from(k), HeaderValue::from_str(v)) {
                    (Ok(name), Ok(value)) => {
                        headers.insert(name, value);
                    }
                    _ => {
                        return render(&Decision::deny(
                            crate::decision::DenyReason::InternalError,
                            Some(a.mode.clone()),
                        ));
                    }
                }
            }
            // Envoy's HTTP ext_authz removes these from the upstream request
            // (its equivalent of `headers_to_remove`); nginx and Traefik
            // ignore it and strip by their own config (envoy/, docs/).
            if !a.headers_to_remove.is_empty()
                && let Ok(value) = HeaderValue::from_str(&a.headers_to_remove.join(","))
            {
                headers.insert(HEADERS_TO_REMOVE, value);
            }
            resp
        }
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
    hook_answer(
        &shared,
        hook_get_request(&uri, &headers, peer),
        Dialect::Ddn,
    )
    .await
}

async fn hasura_v2_get(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    hook_answer(
        &shared,
        hook_get_request(&uri, &headers, peer),
        Dialect::Strings,
    )
    .await
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

/// A GET webhook call: Hasura sends the client's headers, so none of them
/// may say which request this is (no forward-auth headers are read).
fn hook_get_request(uri: &Uri, headers: &HeaderMap, peer: SocketAddr) -> Request {
    Request {
        headers: headers_of(headers),
        method: Method::GET.as_str().to_owned(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
        source_ip: Some(peer.ip()),
        context: Default::default(),
        body: None,
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
