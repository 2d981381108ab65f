//! The WebAuthn step-up endpoints (docs/elevation.md) on the HTTP address:
//! HTTP in and out around [`crate::elevation::ceremony`]. Every call needs
//! a valid access token, checked by the same pipeline as a Check; the JSON
//! follows what browsers produce (`PublicKeyCredential.toJSON()`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use crate::decision::{Decision, DenyReason};
use crate::elevation::ceremony::{Caller, Ceremonies, CeremonyError};
pub use crate::elevation::ceremony::{challenge_of, user_handle};
use crate::pipeline::Engine;
use crate::request::Request;
use crate::state::Shared;

pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/user/webauthn/add", post(add_begin))
        .route("/user/webauthn/verify", post(add_finish))
        .route("/elevate/webauthn", post(elevate_begin))
        .route("/elevate/webauthn/verify", post(elevate_finish))
        .route("/user/webauthn", get(list_keys))
        .route("/user/webauthn/{id}", delete(delete_key))
}

fn api_error(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({"error": error, "message": message}))).into_response()
}

/// A refused ceremony call as HTTP: store failures and missing elevation
/// are the denials a Check gives; the others a JSON error a user can act
/// on, with the `cause` of a refused credential.
fn refused(e: CeremonyError) -> Response {
    let status = match &e {
        CeremonyError::Store(_) => {
            return super::render(&Decision::deny(DenyReason::InternalError, None));
        }
        CeremonyError::ElevationRequired => {
            return super::render(&Decision::deny(DenyReason::ElevationRequired, None));
        }
        CeremonyError::NotConfigured | CeremonyError::NotFound => StatusCode::NOT_FOUND,
        CeremonyError::UserRequired | CeremonyError::TokenRequired => StatusCode::FORBIDDEN,
        CeremonyError::InvalidRequest(_)
        | CeremonyError::NoSecurityKey
        | CeremonyError::CannotStart(_)
        | CeremonyError::InvalidChallenge => StatusCode::BAD_REQUEST,
        CeremonyError::CredentialExists => StatusCode::CONFLICT,
        CeremonyError::KeyGone | CeremonyError::TokenExpiring => StatusCode::UNAUTHORIZED,
        CeremonyError::Refused(_) => match e.cause() {
            Some("credential_exists") => StatusCode::CONFLICT,
            Some("malformed_credential" | "unsupported_key") => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        },
    };
    let mut body = json!({"error": e.code(), "message": e.message()});
    if let Some(cause) = e.cause() {
        body["cause"] = json!(cause);
    }
    (status, Json(body)).into_response()
}

/// The caller, identified by the pipeline, with the current engine (whose
/// elevation stage the ceremony uses); or the response that refuses them.
async fn caller(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(Arc<Engine>, Caller), Response> {
    let engine = shared.engine();
    let Some(elevation) = engine.elevation() else {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "elevated access is not configured",
        ));
    };
    if elevation.webauthn.is_none() {
        return Err(refused(CeremonyError::NotConfigured));
    }
    let req = Request {
        headers: super::headers_of(headers),
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        source_ip: Some(peer.ip()),
        context: Default::default(),
        body: None,
    };
    let identity = engine.identify(&req).await.map_err(|d| super::render(&d))?;
    let caller = Caller::of(identity).map_err(refused)?;
    Ok((engine, caller))
}

/// The engine's ceremonies.
fn ceremonies<'a>(shared: &'a Shared, engine: &'a Engine) -> Result<Ceremonies<'a>, CeremonyError> {
    let elevation = engine.elevation().ok_or(CeremonyError::NotConfigured)?;
    Ceremonies::of(elevation, &shared.metrics)
}

/// A malformed request (400), small enough to travel in a `Result`.
pub struct BadRequest(&'static str);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        api_error(StatusCode::BAD_REQUEST, "invalid_request", self.0)
    }
}

pub fn parse_body(body: &Bytes) -> Result<Value, BadRequest> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(BadRequest("the body must be a JSON object")),
    }
}

pub fn nickname_of(v: &Value) -> Result<Option<String>, BadRequest> {
    match v.get("nickname") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= 128 && !s.chars().any(char::is_control) => {
            Ok(Some(s.clone()))
        }
        _ => Err(BadRequest(
            "nickname must be a string of at most 128 characters",
        )),
    }
}

/// The body's `credential`, as `what` (a WebAuthn JSON type).
fn credential_of<T: DeserializeOwned>(body: &Value, what: &'static str) -> Result<T, BadRequest> {
    match body.get("credential").map(|v| T::deserialize(v)) {
        Some(Ok(c)) => Ok(c),
        _ => Err(BadRequest(what)),
    }
}

/// Answers `result` as JSON.
fn answer<T: serde::Serialize>(result: Result<T, CeremonyError>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => refused(e),
    }
}

async fn add_begin(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (engine, caller) = match caller(&shared, &method, &uri, &headers, peer).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let c = match ceremonies(&shared, &engine) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    let nickname = match parse_body(&body).and_then(|b| nickname_of(&b)) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    answer(c.add_begin(&caller, nickname).await)
}

async fn add_finish(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (engine, caller) = match caller(&shared, &method, &uri, &headers, peer).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let c = match ceremonies(&shared, &engine) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    let parsed = parse_body(&body).and_then(|b| {
        let credential: RegisterPublicKeyCredential =
            credential_of(&b, "`credential` must be a RegistrationResponseJSON")?;
        Ok((credential, nickname_of(&b)?))
    });
    let (credential, nickname) = match parsed {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let added = c.add_finish(&caller, &credential, nickname).await;
    answer(added.map(|k| json!({"id": k.id, "nickname": k.nickname})))
}

async fn elevate_begin(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (engine, caller) = match caller(&shared, &method, &uri, &headers, peer).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let c = match ceremonies(&shared, &engine) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    if let Err(e) = parse_body(&body) {
        return e.into_response();
    }
    answer(c.elevate_begin(&caller).await)
}

async fn elevate_finish(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (engine, caller) = match caller(&shared, &method, &uri, &headers, peer).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let c = match ceremonies(&shared, &engine) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    if let Err(e) = caller.bearer() {
        return refused(e);
    }
    let credential: PublicKeyCredential = match parse_body(&body)
        .and_then(|b| credential_of(&b, "`credential` must be an AuthenticationResponseJSON"))
    {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let grant = c.elevate_finish(&caller, &credential).await;
    answer(grant.map(|g| json!({"elevationToken": g.token, "expiresIn": g.expires_in})))
}

fn rfc3339(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

async fn list_keys(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (engine, caller) = match caller(&shared, &method, &uri, &headers, peer).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let c = match ceremonies(&shared, &engine) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    let keys = c.list(&caller).await;
    answer(keys.map(|keys| {
        json!({
            "keys": keys
                .iter()
                .map(|k| json!({"id": k.id, "nickname": k.nickname, "createdAt": rfc3339(k.created_at)}))
                .collect::<Vec<_>>()
        })
    }))
}

async fn delete_key(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (engine, caller) = match caller(&shared, &method, &uri, &headers, peer).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let c = match ceremonies(&shared, &engine) {
        Ok(c) => c,
        Err(e) => return refused(e),
    };
    match c.delete(&caller, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refused(e),
    }
}
