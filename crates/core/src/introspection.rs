//! `mode: introspection`: opaque access tokens checked at the issuer's
//! OAuth 2.0 Token Introspection endpoint (RFC 7662).
//!
//! An answer with `active: false` is a refusal (`invalid_token`); so is an
//! active answer whose `aud`, `iss`, `exp` or `nbf` fails the mode's checks.
//! An endpoint that fails, times out, refuses authgate's client or answers
//! something that is not an introspection answer is `internal_error`: never
//! an allow. Active answers are kept in the verified-token cache for at most
//! `cacheTtl` and never past the token's `exp` (docs/configuration.md).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::claims::ClaimsConfig;
use crate::discovery;
use crate::jwks::{BACKOFF_CAP, BACKOFF_START, DISCOVERY_REFRESH, FetchOptions};
use crate::redact::Secret;
use crate::request::TokenLocation;

/// Largest introspection answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Most calls one mode has in flight at the endpoint; more wait for a
/// slot (within `decisionTimeout`), so a flood of tokens cannot turn
/// authgate into a flood against the issuer.
pub const MAX_CONCURRENT_CALLS: usize = 64;

/// One `mode: introspection`, as read from the config.
#[derive(Debug)]
pub struct IntrospectionMode {
    pub location: TokenLocation,
    pub endpoint: Endpoint,
    pub client: ClientAuth,
    /// `tokenTypeHint` (RFC 7662, section 2.1), sent when set.
    pub token_type_hint: Option<String>,
    /// Longest an active answer is reused; zero: every request asks.
    pub cache_ttl: Duration,
    /// `introspection.httpClient`: the client and the extra headers.
    pub fetch: FetchOptions,
    /// Accepted `aud` values (any of); empty: not checked.
    pub audience: Vec<String>,
    pub issuer: Option<String>,
    pub allowed_skew: u64,
    pub claims: ClaimsConfig,
}

#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `introspection.endpoint`.
    Fixed(String),
    /// `introspection.oidcIssuer`: the endpoint is the discovery document's
    /// `introspection_endpoint`.
    Discovered { document: String, issuer: String },
}

/// How authgate authenticates to the endpoint (RFC 7662, section 2.1: the
/// endpoint requires some authorization).
#[derive(Debug)]
pub enum ClientAuth {
    /// `client_secret_basic` (RFC 6749, section 2.3.1: both parts
    /// form-urlencoded, then Basic).
    Basic { id: String, secret: Secret },
    /// `client_secret_post`: `client_id` and `client_secret` in the form.
    Post { id: String, secret: Secret },
    /// `bearer`: `Authorization: Bearer <clientSecret>`.
    Bearer(Secret),
}

/// Why an introspection gave no session.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// `active: false`, a token that is no bearer access token, or a claim
    /// check failed: `invalid_token`.
    Inactive,
    /// The endpoint could not answer: `internal_error`.
    Unavailable(String),
}

/// A mode's endpoint and its discovery state.
pub struct Introspector {
    pub cfg: IntrospectionMode,
    /// The discovered endpoint.
    found: Mutex<Option<String>>,
    /// The background discovery task, stopped with the mode.
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Calls to the endpoint in flight, bounded.
    calls: tokio::sync::Semaphore,
    /// Single flight for discovery, holding the time of the last failure
    /// (a failing issuer is asked at most once a second).
    discovering: tokio::sync::Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    /// The client's `Authorization` header (basic or bearer), built once.
    auth_header: Option<reqwest::header::HeaderValue>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("endpoint", &self.shown_endpoint())
            .finish_non_exhaustive()
    }
}

impl Drop for Introspector {
    fn drop(&mut self) {
        if let Ok(mut h) = self.refresher.lock()
            && let Some(h) = h.take()
        {
            h.abort();
        }
    }
}

impl Introspector {
    pub fn new(cfg: IntrospectionMode) -> Self {
        let auth_header = match &cfg.client {
            ClientAuth::Basic { id, secret } => {
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let pair = format!("{}:{}", enc(id), enc(&secret.0));
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            ClientAuth::Bearer(secret) => Some(format!("Bearer {}", secret.0)),
            ClientAuth::Post { .. } => None,
        }
        .and_then(|v| {
            let mut v = reqwest::header::HeaderValue::from_str(&v).ok()?;
            v.set_sensitive(true);
            Some(v)
        });
        Introspector {
            cfg,
            found: Mutex::new(None),
            refresher: Mutex::new(None),
            calls: tokio::sync::Semaphore::new(MAX_CONCURRENT_CALLS),
            discovering: tokio::sync::Mutex::new(None),
            last_error: Mutex::new(None),
            auth_header,
        }
    }

    /// Whether the endpoint is known (always, unless it is discovered).
    pub fn is_ready(&self) -> bool {
        match self.cfg.endpoint {
            Endpoint::Fixed(_) => true,
            Endpoint::Discovered { .. } => self.found().is_some(),
        }
    }

    /// Why discovery last failed, for `/readyz` and logs.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// The configured URL without credentials, query or fragment.
    pub fn shown_endpoint(&self) -> String {
        match &self.cfg.endpoint {
            Endpoint::Fixed(url) => crate::redact::url(url),
            Endpoint::Discovered { document, .. } => crate::redact::url(document),
        }
    }

    /// Keeps the discovered endpoint fresh while the mode exists: read at
    /// once, again after [`DISCOVERY_REFRESH`], retried with backoff while
    /// it fails (requests meanwhile use the last endpoint found).
    pub fn start(self: &std::sync::Arc<Self>) {
        let Endpoint::Discovered { document, issuer } = &self.cfg.endpoint else {
            return;
        };
        let (document, issuer) = (document.clone(), issuer.clone());
        let weak = std::sync::Arc::downgrade(self);
        let handle = tokio::spawn(async move {
            let mut backoff = BACKOFF_START;
            loop {
                let Some(this) = weak.upgrade() else { return };
                let ok = {
                    let _single = this.discovering.lock().await;
                    this.discover(&document, &issuer).await.is_ok()
                };
                drop(this);
                let wait = if ok {
                    backoff = BACKOFF_START;
                    DISCOVERY_REFRESH
                } else {
                    let w = backoff;
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                    w
                };
                tokio::time::sleep(wait).await;
            }
        });
        if let Ok(mut slot) = self.refresher.lock() {
            *slot = Some(handle);
        }
    }

    fn found(&self) -> Option<String> {
        self.found.lock().ok().and_then(|f| f.clone())
    }

    /// The endpoint to POST to: the configured one, or the last one
    /// discovered. Requests never wait for a refresh (the background task
    /// does it); only until the first discovery succeeds do they discover
    /// themselves, one at a time and at most once a second.
    async fn endpoint(&self) -> Result<String, Failure> {
        let (document, issuer) = match &self.cfg.endpoint {
            Endpoint::Fixed(url) => return Ok(url.clone()),
            Endpoint::Discovered { document, issuer } => (document, issuer),
        };
        if let Some(url) = self.found() {
            return Ok(url);
        }
        let mut last_failure = self.discovering.lock().await;
        if let Some(url) = self.found() {
            return Ok(url);
        }
        if last_failure.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Err(Failure::Unavailable(
                self.last_error()
                    .unwrap_or_else(|| "discovery failed".into()),
            ));
        }
        let result = self.discover(document, issuer).await;
        *last_failure = result.is_err().then(Instant::now);
        result
    }

    /// Reads the discovery document once; a success replaces the endpoint,
    /// a failure keeps the last one.
    async fn discover(&self, document: &str, issuer: &str) -> Result<String, Failure> {
        let found = async {
            let doc = discovery::read(
                &self.cfg.fetch.client,
                &self.cfg.fetch.headers,
                document,
                issuer,
            )
            .await?;
            discovery::endpoint(
                document,
                doc.introspection_endpoint,
                "introspection_endpoint",
                !self.cfg.fetch.headers.is_empty(),
            )
        }
        .await;
        match found {
            Ok(url) => {
                if let Ok(mut f) = self.found.lock() {
                    *f = Some(url.clone());
                }
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                Ok(url)
            }
            Err(e) => {
                let message = e.to_string();
                if let Ok(mut slot) = self.last_error.lock() {
                    *slot = Some(message.clone());
                }
                if self.found().is_some() {
                    tracing::warn!(issuer = %issuer, error = %message, "OpenID discovery failed; keeping the last introspection_endpoint");
                } else {
                    tracing::warn!(issuer = %issuer, error = %message, "OpenID discovery failed; tokens of this introspection mode are answered 503 until it succeeds");
                }
                Err(Failure::Unavailable(message))
            }
        }
    }

    /// Asks the endpoint about `token` (RFC 7662, section 2.1) and returns
    /// the active answer's members.
    pub async fn introspect(&self, token: &str) -> Result<Map<String, Value>, Failure> {
        let url = self.endpoint().await?;
        let _slot = self
            .calls
            .acquire()
            .await
            .map_err(|_| Failure::Unavailable("the mode is shutting down".into()))?;
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token);
            if let Some(hint) = &self.cfg.token_type_hint {
                form.append_pair("token_type_hint", hint);
            }
            if let ClientAuth::Post { id, secret } = &self.cfg.client {
                form.append_pair("client_id", id);
                form.append_pair("client_secret", &secret.0);
            }
            form.finish()
        };
        let mut req = self
            .cfg
            .fetch
            .client
            .post(&url)
            .headers(self.cfg.fetch.headers.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body);
        if let Some(auth) = &self.auth_header {
            req = req.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        let unavailable = |why: &str| Failure::Unavailable(why.to_owned());
        let span = tracing::info_span!(
            target: crate::trace::SPAN_TARGET,
            "introspection",
            otel.kind = "client",
            url.full = %self.shown_endpoint(),
        );
        // The client span's own context, not its parent's.
        req = req.headers(span.in_scope(crate::trace::context_headers));
        let mut resp = tracing::Instrument::instrument(req.send(), span)
            .await
            .map_err(|e| {
                unavailable(if e.is_timeout() {
                    "the introspection endpoint timed out"
                } else {
                    "the introspection endpoint is unreachable"
                })
            })?;
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => {
                return Err(unavailable(
                    "the introspection endpoint refused authgate's client credentials",
                ));
            }
            _ => {
                return Err(unavailable(
                    "the introspection endpoint answered with an error status",
                ));
            }
        }
        let body = crate::body::read_capped(&mut resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| {
                unavailable(match e {
                    crate::body::BodyError::TooLarge => "the introspection answer is too large",
                    crate::body::BodyError::Read(_) => "reading the introspection answer failed",
                })
            })?;
        answer(&body)
    }
}

/// Reads an introspection answer: a JSON object whose `active` is a
/// boolean (RFC 7662, section 2.2); anything else is the endpoint's fault.
/// An active token that cannot be a bearer access token is refused too: a
/// refresh token (RFC 7662 has the server search every token type), or a
/// sender-constrained token (`cnf`, RFC 7800) whose proof of possession
/// authgate cannot check.
pub fn answer(body: &[u8]) -> Result<Map<String, Value>, Failure> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return Err(Failure::Unavailable(
            "the introspection answer is not a JSON object".into(),
        ));
    };
    match map.get("active") {
        Some(Value::Bool(true)) => {
            let refresh = map
                .get("token_type")
                .and_then(Value::as_str)
                .is_some_and(|t| {
                    t.eq_ignore_ascii_case("refresh_token") || t.eq_ignore_ascii_case("refresh")
                });
            if refresh || map.contains_key("cnf") {
                return Err(Failure::Inactive);
            }
            Ok(map)
        }
        Some(Value::Bool(false)) => Err(Failure::Inactive),
        _ => Err(Failure::Unavailable(
            "the introspection answer has no boolean `active`".into(),
        )),
    }
}

impl From<discovery::DiscoveryError> for Failure {
    fn from(e: discovery::DiscoveryError) -> Self {
        Failure::Unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_are_read_strictly() {
        assert_eq!(
            answer(br#"{"active":false}"#).unwrap_err(),
            Failure::Inactive
        );
        let ok = answer(br#"{"active":true,"sub":"u"}"#).unwrap();
        assert_eq!(ok["sub"], json!("u"));
        for not_bearer in [
            &br#"{"active":true,"token_type":"refresh_token"}"#[..],
            br#"{"active":true,"token_type":"Refresh"}"#,
            br#"{"active":true,"cnf":{"jkt":"x"}}"#,
        ] {
            assert_eq!(answer(not_bearer).unwrap_err(), Failure::Inactive);
        }
        assert!(answer(br#"{"active":true,"token_type":"Bearer"}"#).is_ok());
        for bad in [
            &br#"{"active":"true"}"#[..],
            br#"{"sub":"u"}"#,
            br#"[true]"#,
            b"not json",
            b"",
        ] {
            assert!(
                matches!(answer(bad), Err(Failure::Unavailable(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
