//! The WebAuthn step-up endpoints (docs/elevation.md) on the HTTP address. Every call
//! needs a valid access token, checked by the same pipeline as a Check; the
//! JSON follows what browsers produce (`PublicKeyCredential.toJSON()`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use uuid::Uuid;
use webauthn_rs::prelude::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential, SecurityKey,
    SecurityKeyAuthentication, SecurityKeyRegistration, WebauthnError,
};

use crate::clock::unix_now;
use crate::decision::{Decision, DenyReason};
use crate::elevation::Elevation;
use crate::elevation::ElevationMode;
use crate::pipeline::Identity;
use crate::request::Request;
use crate::state::Shared;
use crate::store::{ChallengeKind, PendingChallenge, StoreError, StoredKey};

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

fn store_error(elevation: &Elevation, e: StoreError) -> Response {
    elevation.store_failed(&e);
    crate::http::render(&Decision::deny(DenyReason::InternalError, None))
}

/// The WebAuthn user handle: the user id when it is a UUID, else a stable
/// name-based UUID (v5) of it.
pub fn user_handle(user: &str) -> Uuid {
    Uuid::parse_str(user).unwrap_or_else(|_| {
        Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            format!("urn:authgate:user:{user}").as_bytes(),
        )
    })
}

/// The caller, verified; or the response that refuses them.
struct Caller {
    elevation: Arc<Elevation>,
    webauthn: Arc<webauthn_rs::Webauthn>,
    identity: Identity,
    user: String,
}

async fn caller(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Caller, Response> {
    let engine = shared.engine();
    let Some(elevation) = engine.elevation().cloned() else {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "elevated access is not configured",
        ));
    };
    let Some(webauthn) = elevation.webauthn.clone() else {
        return Err(api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "WebAuthn is not configured",
        ));
    };
    let req = Request {
        headers: crate::http::headers_of(headers),
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        source_ip: Some(peer.ip()),
        context: Default::default(),
        body: None,
    };
    let identity = engine
        .identify(&req)
        .await
        .map_err(|d| crate::http::render(&d))?;
    let Some(user) = identity.user_id.clone() else {
        return Err(api_error(
            StatusCode::FORBIDDEN,
            "user_required",
            "a user session is required",
        ));
    };
    Ok(Caller {
        elevation,
        webauthn,
        identity,
        user,
    })
}

fn elevation_required(shared: &Shared, reason: &str) -> Response {
    shared
        .metrics
        .elevation_failures
        .with_label_values(&[reason])
        .inc();
    crate::http::render(&Decision::deny(DenyReason::ElevationRequired, None))
}

fn ceremony(shared: &Shared, step: &str, ok: bool) {
    shared
        .metrics
        .elevation_ceremonies
        .with_label_values(&[step, if ok { "ok" } else { "error" }])
        .inc();
    if !ok {
        shared
            .metrics
            .elevation_failures
            .with_label_values(&["ceremony_failed"])
            .inc();
    }
}

/// Adding a key follows the mode (nhost): the first key is free; later ones
/// need elevation unless elevation is disabled.
async fn may_add_key(c: &Caller) -> Result<bool, Response> {
    let count = c
        .elevation
        .store
        .count_keys(&c.user)
        .await
        .map_err(|e| store_error(&c.elevation, e))?;
    Ok(count == 0 || c.identity.elevated || c.elevation.cfg.mode == ElevationMode::Disabled)
}

/// Makes webauthn-rs' security-key registration options acceptable to
/// browsers. webauthn-rs asks for the credProtect extension with
/// `userVerificationRequired` while it asks for user verification only as
/// `preferred`; Chromium refuses that pair before it asks the authenticator
/// ("Requested protection policy is inconsistent or incongruent with other
/// requested parameters", kanidm/webauthn-rs#490). authgate does not
/// require user verification (a PIN-less key can step up, as with nhost),
/// so the extension goes: a key then keeps its default protection. The
/// registration state still says it was asked for, and webauthn-rs does
/// not require the extension's output, so the ceremony verifies the same.
/// docs/elevation.md ("User verification").
pub fn consistent_registration_options(options: &mut CreationChallengeResponse) {
    if let Some(ext) = options.public_key.extensions.as_mut() {
        ext.cred_protect = None;
    }
}

/// Why a ceremony failed, told so that a user or an operator can act on
/// it. A cause names what did not match, never a value the client could
/// not see anyway (the configured origins are not echoed).
pub fn failure_cause(e: &WebauthnError) -> (StatusCode, &'static str, &'static str) {
    use WebauthnError as E;
    match e {
        E::InvalidRPOrigin | E::CredentialCrossOrigin => (
            StatusCode::UNAUTHORIZED,
            "origin_mismatch",
            "the page's origin is not allowed for this relying party (webauthn.origins)",
        ),
        E::InvalidRPIDHash => (
            StatusCode::UNAUTHORIZED,
            "rp_id_mismatch",
            "the security key answered for another relying party ID (webauthn.rpId)",
        ),
        E::UserNotPresent => (
            StatusCode::UNAUTHORIZED,
            "user_not_present",
            "the security key did not confirm the user's presence (touch)",
        ),
        E::UserNotVerified => (
            StatusCode::UNAUTHORIZED,
            "user_not_verified",
            "the security key did not verify the user (PIN or biometric), which this key requires",
        ),
        E::AuthenticationFailure | E::SignatureInvalid => (
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "the security key's signature did not verify",
        ),
        E::MismatchedChallenge => (
            StatusCode::UNAUTHORIZED,
            "challenge_mismatch",
            "the credential answers another challenge",
        ),
        E::InvalidClientDataType => (
            StatusCode::UNAUTHORIZED,
            "wrong_ceremony",
            "the credential was made for the other ceremony (registration or authentication)",
        ),
        E::CredentialNotFound => (
            StatusCode::UNAUTHORIZED,
            "unknown_credential",
            "this security key is not registered for the user",
        ),
        E::CredentialExcludedFromRequest | E::CredentialAlreadyExists => (
            StatusCode::CONFLICT,
            "credential_exists",
            "this security key is already registered",
        ),
        E::ParseBase64Failure(_)
        | E::ParseCBORFailure(_)
        | E::ParseJSONFailure(_)
        | E::ParseNOMFailure
        | E::ParseInsufficientBytesAvailable
        | E::MissingAttestationCredentialData
        | E::AuthenticatorDataMissingExtension
        | E::InvalidExtensions => (
            StatusCode::BAD_REQUEST,
            "malformed_credential",
            "the credential could not be parsed",
        ),
        E::COSEKeyInvalidCBORValue
        | E::COSEKeyInvalidType
        | E::COSEKeyEDUnsupported
        | E::COSEKeyECDSAXYInvalid
        | E::COSEKeyRSANEInvalid
        | E::COSEKeyECDSAInvalidCurve
        | E::COSEKeyEDDSAXInvalid
        | E::COSEKeyEDDSAInvalidCurve
        | E::COSEKeyInvalidAlgorithm
        | E::CredentialAlteredAlgFromRequest
        | E::CredentialInsecureCryptography => (
            StatusCode::BAD_REQUEST,
            "unsupported_key",
            "the security key's public key or algorithm is not supported",
        ),
        _ => (
            StatusCode::UNAUTHORIZED,
            "ceremony_failed",
            "the security key could not be verified",
        ),
    }
}

/// `{"error": "ceremony_failed", "cause": ..., "message": ...}`; a key
/// registered already is `credential_exists`, as when the store finds it.
fn ceremony_failed(e: &WebauthnError) -> Response {
    let (status, cause, message) = failure_cause(e);
    let error = if cause == "credential_exists" {
        "credential_exists"
    } else {
        "ceremony_failed"
    };
    (
        status,
        Json(json!({"error": error, "cause": cause, "message": message})),
    )
        .into_response()
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

/// The challenge a credential answers, from its clientDataJSON.
pub fn challenge_of(client_data_json: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(client_data_json).ok()?;
    let c = v.get("challenge")?.as_str()?;
    let bytes = URL_SAFE_NO_PAD.decode(c.trim_end_matches('=')).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

async fn add_begin(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let c = match caller(&shared, &method, &uri, &headers, peer).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let nickname = match nickname_of(&body) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    match may_add_key(&c).await {
        Ok(true) => {}
        Ok(false) => return elevation_required(&shared, "missing"),
        Err(r) => return r,
    }
    let existing = match c.elevation.store.list_keys(&c.user).await {
        Ok(k) => k,
        Err(e) => return store_error(&c.elevation, e),
    };
    let exclude = existing
        .iter()
        .filter(|k| !k.id.starts_with("nhost:"))
        .map(|k| k.credential_id.clone())
        .collect();
    let started = c.webauthn.start_securitykey_registration(
        user_handle(&c.user),
        &c.user,
        &c.user,
        Some(exclude),
        None,
        None,
    );
    let (mut options, state) = match started {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a WebAuthn registration");
            ceremony(&shared, "begin", false);
            return api_error(
                StatusCode::BAD_REQUEST,
                "ceremony_failed",
                "cannot start the registration",
            );
        }
    };
    consistent_registration_options(&mut options);
    let challenge = URL_SAFE_NO_PAD.encode(&options.public_key.challenge);
    let pending = PendingChallenge {
        challenge,
        user_id: c.user.clone(),
        kind: ChallengeKind::Register,
        state: json!({"registration": state, "nickname": nickname}),
        expires_at: unix_now() + c.elevation.cfg.challenge_ttl.as_secs() as i64,
    };
    if let Err(e) = c.elevation.store.put_challenge(&pending).await {
        return store_error(&c.elevation, e);
    }
    ceremony(&shared, "begin", true);
    Json(options).into_response()
}

async fn add_finish(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let c = match caller(&shared, &method, &uri, &headers, peer).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let Some(Ok(credential)) = body
        .get("credential")
        .map(|v| serde_json::from_value::<RegisterPublicKeyCredential>(v.clone()))
    else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`credential` must be a RegistrationResponseJSON",
        );
    };
    let nickname = match nickname_of(&body) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    match may_add_key(&c).await {
        Ok(true) => {}
        Ok(false) => return elevation_required(&shared, "missing"),
        Err(r) => return r,
    }
    let Some(challenge) = challenge_of(&credential.response.client_data_json) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "clientDataJSON has no challenge",
        );
    };
    let pending = match c
        .elevation
        .store
        .take_challenge(&challenge, &c.user, ChallengeKind::Register, unix_now())
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => {
            ceremony(&shared, "register", false);
            return api_error(
                StatusCode::BAD_REQUEST,
                "invalid_challenge",
                "unknown, used or expired challenge",
            );
        }
        Err(e) => return store_error(&c.elevation, e),
    };
    let Ok(state) =
        serde_json::from_value::<SecurityKeyRegistration>(pending.state["registration"].clone())
    else {
        return store_error(
            &c.elevation,
            StoreError::Corrupt("registration state".into()),
        );
    };
    let key = match c
        .webauthn
        .finish_securitykey_registration(&credential, &state)
    {
        Ok(k) => k,
        Err(e) => {
            tracing::info!(error = %e, "WebAuthn registration refused");
            ceremony(&shared, "register", false);
            return ceremony_failed(&e);
        }
    };
    let nickname = nickname.or_else(|| pending.state["nickname"].as_str().map(str::to_owned));
    let stored = StoredKey {
        id: Uuid::new_v4().to_string(),
        user_id: c.user.clone(),
        credential_id: key.cred_id().to_vec(),
        nickname: nickname.clone(),
        credential: match serde_json::to_value(&key) {
            Ok(v) => v,
            Err(_) => return store_error(&c.elevation, StoreError::Corrupt("credential".into())),
        },
        counter: 0,
        created_at: unix_now(),
    };
    match c.elevation.store.add_key(&stored).await {
        Ok(()) => {}
        Err(StoreError::Conflict) => {
            ceremony(&shared, "register", false);
            return api_error(
                StatusCode::CONFLICT,
                "credential_exists",
                "this security key is already registered",
            );
        }
        Err(e) => return store_error(&c.elevation, e),
    }
    c.elevation.invalidate(&c.user);
    ceremony(&shared, "register", true);
    Json(json!({"id": stored.id, "nickname": nickname})).into_response()
}

fn security_keys(keys: &[StoredKey]) -> Vec<(String, SecurityKey)> {
    keys.iter()
        .filter_map(|k| {
            Some((
                k.id.clone(),
                serde_json::from_value(k.credential.clone()).ok()?,
            ))
        })
        .collect()
}

async fn elevate_begin(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let c = match caller(&shared, &method, &uri, &headers, peer).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if let Err(e) = parse_body(&body) {
        return e.into_response();
    }
    let keys = match c.elevation.store.list_keys(&c.user).await {
        Ok(k) => security_keys(&k),
        Err(e) => return store_error(&c.elevation, e),
    };
    if keys.is_empty() {
        ceremony(&shared, "begin", false);
        return api_error(
            StatusCode::BAD_REQUEST,
            "no_security_key",
            "register a security key first",
        );
    }
    let creds: Vec<SecurityKey> = keys.into_iter().map(|(_, k)| k).collect();
    let (options, state) = match c.webauthn.start_securitykey_authentication(&creds) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a WebAuthn authentication");
            ceremony(&shared, "begin", false);
            return api_error(
                StatusCode::BAD_REQUEST,
                "ceremony_failed",
                "cannot start the challenge",
            );
        }
    };
    let pending = PendingChallenge {
        challenge: URL_SAFE_NO_PAD.encode(&options.public_key.challenge),
        user_id: c.user.clone(),
        kind: ChallengeKind::Authenticate,
        state: json!({"authentication": state}),
        expires_at: unix_now() + c.elevation.cfg.challenge_ttl.as_secs() as i64,
    };
    if let Err(e) = c.elevation.store.put_challenge(&pending).await {
        return store_error(&c.elevation, e);
    }
    ceremony(&shared, "begin", true);
    Json(options).into_response()
}

async fn elevate_finish(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let c = match caller(&shared, &method, &uri, &headers, peer).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(token) = c.identity.token.clone() else {
        return api_error(
            StatusCode::FORBIDDEN,
            "token_required",
            "elevation grants bind to a bearer access token",
        );
    };
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let Some(Ok(credential)) = body
        .get("credential")
        .map(|v| serde_json::from_value::<PublicKeyCredential>(v.clone()))
    else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`credential` must be an AuthenticationResponseJSON",
        );
    };
    let Some(challenge) = challenge_of(&credential.response.client_data_json) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "clientDataJSON has no challenge",
        );
    };
    let pending = match c
        .elevation
        .store
        .take_challenge(&challenge, &c.user, ChallengeKind::Authenticate, unix_now())
        .await
    {
        Ok(Some(p)) => p,
        Ok(None) => {
            ceremony(&shared, "verify", false);
            return api_error(
                StatusCode::BAD_REQUEST,
                "invalid_challenge",
                "unknown, used or expired challenge",
            );
        }
        Err(e) => return store_error(&c.elevation, e),
    };
    let Ok(state) = serde_json::from_value::<SecurityKeyAuthentication>(
        pending.state["authentication"].clone(),
    ) else {
        return store_error(
            &c.elevation,
            StoreError::Corrupt("authentication state".into()),
        );
    };
    let result = match c
        .webauthn
        .finish_securitykey_authentication(&credential, &state)
    {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "WebAuthn assertion refused");
            ceremony(&shared, "verify", false);
            return ceremony_failed(&e);
        }
    };
    // Persist the new signature counter.
    let keys = match c.elevation.store.list_keys(&c.user).await {
        Ok(k) => security_keys(&k),
        Err(e) => return store_error(&c.elevation, e),
    };
    let Some((id, mut key)) = keys
        .into_iter()
        .find(|(_, k)| k.cred_id() == result.cred_id())
    else {
        ceremony(&shared, "verify", false);
        return api_error(
            StatusCode::UNAUTHORIZED,
            "ceremony_failed",
            "the security key is no longer registered",
        );
    };
    if key.update_credential(&result).is_some() {
        let value = serde_json::to_value(&key).unwrap_or(Value::Null);
        if let Err(e) = c
            .elevation
            .store
            .update_key(&id, &value, result.counter())
            .await
        {
            return store_error(&c.elevation, e);
        }
    }
    let now = unix_now();
    match c.elevation.grants.mint(
        &c.user,
        &token.raw,
        token.exp,
        c.elevation.cfg.grant.ttl,
        now,
    ) {
        Ok((grant, expires_in)) => {
            ceremony(&shared, "verify", true);
            Json(json!({"elevationToken": grant, "expiresIn": expires_in})).into_response()
        }
        Err(_) => api_error(
            StatusCode::UNAUTHORIZED,
            "token_expiring",
            "the access token is about to expire",
        ),
    }
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
    let c = match caller(&shared, &method, &uri, &headers, peer).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match c.elevation.store.list_keys(&c.user).await {
        Ok(keys) => Json(json!({
            "keys": keys
                .iter()
                .map(|k| json!({"id": k.id, "nickname": k.nickname, "createdAt": rfc3339(k.created_at)}))
                .collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => store_error(&c.elevation, e),
    }
}

async fn delete_key(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let c = match caller(&shared, &method, &uri, &headers, peer).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    // Removing a key always requires elevation (nhost), whatever the mode.
    if !c.identity.elevated {
        return elevation_required(&shared, "missing");
    }
    match c.elevation.store.delete_key(&c.user, &id).await {
        Ok(true) => {
            c.elevation.invalidate(&c.user);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => api_error(StatusCode::NOT_FOUND, "not_found", "no such security key"),
        Err(e) => store_error(&c.elevation, e),
    }
}

/// `GET /.well-known/jwks.json`: the public keys of elevation grants.
pub async fn grant_jwks(State(shared): State<Arc<Shared>>) -> Response {
    let engine = shared.engine();
    let body = match engine.elevation() {
        Some(e) => e.grants.jwks().clone(),
        None => json!({"keys": []}),
    };
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(body),
    )
        .into_response()
}
