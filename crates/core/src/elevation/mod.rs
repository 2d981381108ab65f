//! Elevated access (docs/elevation.md): which requests need it, whether a request has
//! it (an nhost token claim or an authgate grant), and the grants themselves.
//!
//! A grant is a short JWT signed by authgate, bound to the user (`sub`) and
//! to the exact access token (`ath`, base64url SHA-256 of it, as in DPoP), so
//! it dies with that token: renewing the access token ends the elevation, as
//! nhost's claim does.

pub mod ceremony;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::decision::DenyReason;
use crate::metrics::ElevationFailure;
use crate::redact::Secret;
use crate::request::{Place, Request, TokenLocation};
use crate::route::{self, Route};
use crate::signing::SigningKey;
use crate::store::{CredentialStore, StoreOptions};

/// `aud` of every grant, so no other token of ours can pass for one.
pub const GRANT_AUDIENCE: &str = "authgate-elevation";
/// Header (and cookie) carrying a grant.
pub const GRANT_HEADER: &str = "x-elevation-token";

/// Envoy's per-route `context_extensions` key asking for elevation.
pub const CONTEXT_KEY: &str = "elevation";

/// What Envoy's per-route `context_extensions: {elevation: ...}` asks:
/// `required`, or `optional` (the default when absent: only authgate's own
/// routes decide). Any other value is a mistake in the Envoy config (`true`,
/// `yes`, `required ` with a space), and a mistake in a security setting
/// must not read as "not required": it is an error, which the pipeline
/// turns into a denial.
pub fn context_requires(req: &Request) -> Result<bool, DenyReason> {
    match req.context.get(CONTEXT_KEY).map(String::as_str) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("required") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("optional") => Ok(false),
        Some(v) => {
            tracing::warn!(
                value = %v.escape_debug().to_string().chars().take(64).collect::<String>(),
                "unknown context_extensions elevation value (expected required or optional); denied"
            );
            Err(DenyReason::InternalError)
        }
    }
}

/// Whether any of `routes` covers the request. A path that has no single
/// reading ([`route::PathError`]) is refused with `invalid_request`, since
/// it cannot be told whether the upstream would route it to a protected
/// handler.
pub fn routes_cover(routes: &[Route], req: &Request) -> Result<bool, DenyReason> {
    if routes.is_empty() {
        return Ok(false);
    }
    let path = route::canonical_path(&req.path).map_err(|e| {
        tracing::debug!(error = %e, "path refused");
        DenyReason::InvalidRequest
    })?;
    // Folded once here; each route's `covers` then borrows it as it is.
    let path = route::fold_path(&path);
    Ok(routes.iter().any(|r| r.covers(req, &path)))
}

/// authgate's grant signing keys and their public JWKS.
pub struct GrantKeys {
    key: SigningKey,
    jwks: Value,
    /// Grants whose signature and audience verified, by SHA-256 of the
    /// grant: a protected route then costs two hashes per request, not an
    /// ECDSA verification. Entries die with the grant's `exp`.
    verified: moka::sync::Cache<[u8; 32], Arc<VerifiedGrant>>,
}

struct VerifiedGrant {
    sub: String,
    ath: String,
    exp: i64,
}

struct GrantExpiry;

impl moka::Expiry<[u8; 32], Arc<VerifiedGrant>> for GrantExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<VerifiedGrant>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        let left = value.exp.saturating_sub(crate::clock::unix_now());
        Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
    }
}

/// Verified grants kept at most (about 200 bytes each).
const VERIFIED_GRANTS: u64 = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantError {
    Missing,
    Invalid,
    Expired,
    Mismatch,
}

impl From<GrantError> for ElevationFailure {
    fn from(e: GrantError) -> Self {
        match e {
            GrantError::Missing => ElevationFailure::Missing,
            GrantError::Invalid => ElevationFailure::InvalidGrant,
            GrantError::Expired => ElevationFailure::Expired,
            GrantError::Mismatch => ElevationFailure::Mismatch,
        }
    }
}

/// base64url SHA-256 of an access token (`ath`).
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

impl GrantKeys {
    /// From a private key PEM (PKCS#8 for EC and Ed25519; RSA PKCS#1 or #8).
    pub fn from_pem(alg: Algorithm, pem: &str) -> Result<Self, String> {
        SigningKey::from_pem(alg, pem).map(Self::with_key)
    }

    /// A fresh ES256 key; grants signed with it die with the process.
    pub fn generate() -> Result<Self, String> {
        SigningKey::generate(Algorithm::ES256).map(Self::with_key)
    }

    fn with_key(key: SigningKey) -> Self {
        GrantKeys {
            jwks: json!({ "keys": [&key.jwk] }),
            key,
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_GRANTS)
                .expire_after(GrantExpiry)
                .build(),
        }
    }

    /// The signing key's id (its RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.key.kid
    }

    /// The public keys, for `GET /.well-known/jwks.json`.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// Signs a grant for `user` bound to `access_token`, expiring at
    /// `min(now + ttl, token_exp)`. Returns the token and its lifetime.
    pub fn mint(
        &self,
        user: &str,
        access_token: &str,
        token_exp: Option<i64>,
        ttl: Duration,
        now: i64,
    ) -> Result<(String, i64), String> {
        let mut exp = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2));
        if let Some(t) = token_exp {
            exp = exp.min(t);
        }
        let lifetime = exp - now;
        if lifetime <= 0 {
            return Err("the access token expires now".into());
        }
        let claims = json!({
            "iss": "authgate",
            "aud": GRANT_AUDIENCE,
            "sub": user,
            "ath": token_hash(access_token),
            "iat": now,
            "exp": exp,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        Ok((self.key.sign(&claims)?, lifetime))
    }

    /// Checks a grant for this user and this access token; its `exp`.
    pub fn verify(
        &self,
        grant: &str,
        user: &str,
        access_token: &str,
        now: i64,
    ) -> Result<i64, GrantError> {
        let key: [u8; 32] = Sha256::digest(grant.as_bytes()).into();
        let claims = match self.verified.get(&key) {
            Some(hit) => hit,
            None => {
                let claims = Arc::new(self.verify_signed(grant)?);
                self.verified.insert(key, claims.clone());
                claims
            }
        };
        if now >= claims.exp {
            return Err(GrantError::Expired);
        }
        let ath = token_hash(access_token);
        let ath_ok = bool::from(subtle::ConstantTimeEq::ct_eq(
            claims.ath.as_bytes(),
            ath.as_bytes(),
        ));
        if claims.sub == user && ath_ok {
            Ok(claims.exp)
        } else {
            Err(GrantError::Mismatch)
        }
    }

    /// Signature, audience and the claims a grant must carry.
    fn verify_signed(&self, grant: &str) -> Result<VerifiedGrant, GrantError> {
        let parsed = crate::jwt::parse(grant).map_err(|_| GrantError::Invalid)?;
        if parsed.alg != self.key.alg || !parsed.verify_with(&self.key.verify) {
            return Err(GrantError::Invalid);
        }
        let claims = parsed.claims().map_err(|_| GrantError::Invalid)?;
        if claims.get("aud").and_then(Value::as_str) != Some(GRANT_AUDIENCE) {
            return Err(GrantError::Invalid);
        }
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        match (
            claims.get("exp").and_then(Value::as_i64),
            text("sub"),
            text("ath"),
        ) {
            (Some(exp), Some(sub), Some(ath)) => Ok(VerifiedGrant { sub, ath, exp }),
            (None, _, _) => Err(GrantError::Invalid),
            _ => Err(GrantError::Mismatch),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElevationMode {
    Disabled,
    Required,
    Recommended,
}

#[derive(Debug, Clone)]
pub struct WebauthnSettings {
    pub rp_id: String,
    pub rp_name: String,
    pub origins: Vec<reqwest::Url>,
}

#[derive(Debug, Clone)]
pub struct GrantSettings {
    pub ttl: Duration,
    /// Algorithm and private key PEM; `None` generates a key at start.
    pub signing_key: Option<(Algorithm, Secret)>,
}

#[derive(Debug, Clone)]
pub struct ElevationConfig {
    pub mode: ElevationMode,
    /// Session variable that carries elevation (lower case).
    pub claim: String,
    pub routes: Vec<Route>,
    pub webauthn: Option<WebauthnSettings>,
    pub grant: GrantSettings,
    pub store_url: String,
    /// PostgreSQL: also count nhost's `auth.user_security_keys`.
    pub nhost_keys: bool,
    /// How long a WebAuthn challenge stays valid.
    pub challenge_ttl: Duration,
}

impl Default for ElevationConfig {
    fn default() -> Self {
        ElevationConfig {
            mode: ElevationMode::Disabled,
            claim: "x-hasura-auth-elevated".into(),
            routes: Vec::new(),
            webauthn: None,
            grant: GrantSettings {
                ttl: Duration::from_secs(900),
                signing_key: None,
            },
            store_url: "sqlite://authgate.db".into(),
            nhost_keys: false,
            challenge_ttl: Duration::from_secs(300),
        }
    }
}

/// The elevation stage: policy, grants, and the security-key store.
pub struct Elevation {
    pub cfg: ElevationConfig,
    pub grants: Arc<GrantKeys>,
    pub store: Arc<dyn CredentialStore>,
    /// The WebAuthn relying party, when `webauthn` is configured.
    pub webauthn: Option<Arc<webauthn_rs::Webauthn>>,
    /// Whether each user has a security key, cached briefly; invalidated
    /// when this instance adds or deletes a key.
    has_keys: moka::sync::Cache<String, bool>,
    /// Counts failed store operations (`authgate_elevation_store_errors_total`).
    store_errors: prometheus::IntCounter,
    /// When the store last failed, and why (for `/readyz`).
    last_store_error: arc_swap::ArcSwapOption<(std::time::Instant, String)>,
    /// Where a grant is read: the header, else the cookie of that name.
    grant_locations: [TokenLocation; 2],
}

/// Opens the elevation stage when the config asks for it: a mode other than
/// disabled, or WebAuthn settings for voluntary step-up. `None` otherwise.
pub async fn open_configured(
    cfg: Option<&ElevationConfig>,
    previous: Option<&Elevation>,
    metrics: &crate::metrics::Metrics,
) -> Result<Option<Arc<Elevation>>, String> {
    match cfg {
        Some(cfg) if cfg.mode != ElevationMode::Disabled || cfg.webauthn.is_some() => {
            let errors = metrics.elevation_store_errors.clone();
            Ok(Some(Arc::new(
                Elevation::open(cfg.clone(), previous, errors).await?,
            )))
        }
        _ => Ok(None),
    }
}

impl Elevation {
    /// Opens the store and prepares the grant keys. On reload, `previous`
    /// lends its store (same URL) and its keys (same or generated key), so
    /// pending ceremonies and issued grants survive.
    pub async fn open(
        cfg: ElevationConfig,
        previous: Option<&Elevation>,
        store_errors: prometheus::IntCounter,
    ) -> Result<Self, String> {
        let same_key = |p: &&Elevation| match (&p.cfg.grant.signing_key, &cfg.grant.signing_key) {
            (None, None) => true,
            (Some((a, k)), Some((b, l))) => a == b && k == l,
            _ => false,
        };
        let grants = match previous.filter(same_key) {
            Some(p) => p.grants.clone(),
            None => Arc::new(match &cfg.grant.signing_key {
                Some((alg, pem)) => GrantKeys::from_pem(*alg, &pem.0)?,
                None => {
                    tracing::warn!(
                        "elevation.grant.signingKey is not set: a key was generated; grants will not survive a restart or work across replicas"
                    );
                    GrantKeys::generate()?
                }
            }),
        };
        let reuse = previous
            .filter(|p| p.cfg.store_url == cfg.store_url && p.cfg.nhost_keys == cfg.nhost_keys);
        let store = match reuse {
            Some(p) => p.store.clone(),
            None => crate::store::open(
                &cfg.store_url,
                &StoreOptions {
                    nhost_keys: cfg.nhost_keys,
                },
            )
            .await
            .map_err(|e| format!("elevation store: {e}"))?,
        };
        let webauthn = match &cfg.webauthn {
            Some(w) => {
                let first = w.origins.first().ok_or("webauthn.origins is empty")?;
                let mut b = webauthn_rs::WebauthnBuilder::new(&w.rp_id, first)
                    .map_err(|e| format!("webauthn: {e}"))?
                    .rp_name(&w.rp_name)
                    .timeout(cfg.challenge_ttl);
                for o in &w.origins[1..] {
                    b = b.append_allowed_origin(o);
                }
                Some(Arc::new(b.build().map_err(|e| format!("webauthn: {e}"))?))
            }
            None => None,
        };
        Ok(Elevation {
            cfg,
            grants,
            store,
            webauthn,
            has_keys: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            store_errors,
            last_store_error: arc_swap::ArcSwapOption::empty(),
            grant_locations: [Place::Header, Place::Cookie].map(|place| TokenLocation {
                place,
                name: GRANT_HEADER.into(),
                scheme: None,
            }),
        })
    }

    /// Whether the request needs elevation: Envoy's `context_extensions`
    /// ask for it, or a route rule covers it (method and canonical path).
    pub fn route_requires(&self, req: &Request) -> Result<bool, DenyReason> {
        Ok(context_requires(req)? || routes_cover(&self.cfg.routes, req)?)
    }

    /// Counts and logs a failed store operation, and keeps it for `/readyz`.
    pub fn store_failed(&self, e: &crate::store::StoreError) {
        self.store_errors.inc();
        tracing::error!(error = %e, "security-key store unavailable");
        self.last_store_error
            .store(Some(Arc::new((std::time::Instant::now(), e.to_string()))));
    }

    /// The last store failure, when it happened within `window`: how long
    /// ago, and why.
    pub fn recent_store_error(&self, window: Duration) -> Option<(Duration, String)> {
        let last = self.last_store_error.load_full()?;
        let ago = last.0.elapsed();
        (ago <= window).then(|| (ago, last.1.clone()))
    }

    pub async fn user_has_keys(&self, user: &str) -> Result<bool, DenyReason> {
        if let Some(b) = self.has_keys.get(user) {
            return Ok(b);
        }
        let n = self.store.count_keys(user).await.map_err(|e| {
            self.store_failed(&e);
            DenyReason::InternalError
        })?;
        self.has_keys.insert(user.to_owned(), n > 0);
        Ok(n > 0)
    }

    pub fn invalidate(&self, user: &str) {
        self.has_keys.invalidate(user);
    }

    /// Whether a request that `needs` elevation may go on without it, under
    /// the configured mode (nhost semantics).
    pub async fn must_elevate(&self, user: Option<&str>) -> Result<bool, DenyReason> {
        match self.cfg.mode {
            ElevationMode::Disabled => Ok(false),
            ElevationMode::Required => Ok(true),
            ElevationMode::Recommended => match user {
                Some(u) => self.user_has_keys(u).await,
                None => Ok(false),
            },
        }
    }

    /// The grant a request carries: header, else cookie.
    pub fn grant_of<'a>(&self, req: &'a Request) -> Option<std::borrow::Cow<'a, str>> {
        self.grant_locations
            .iter()
            .find_map(|loc| match req.credential(loc) {
                crate::request::Credential::Present(g) => Some(g),
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_bind_user_and_token() {
        let keys = GrantKeys::generate().unwrap();
        let now = 1_000_000;
        let (g, life) = keys
            .mint("u1", "tok", Some(now + 100), Duration::from_secs(900), now)
            .unwrap();
        assert_eq!(life, 100, "never beyond the access token");
        assert!(
            keys.verify(&g, "u1", "tok", now + 1)
                .is_ok_and(|exp| exp > now)
        );
        assert_eq!(
            keys.verify(&g, "u2", "tok", now + 1),
            Err(GrantError::Mismatch)
        );
        assert_eq!(
            keys.verify(&g, "u1", "tok2", now + 1),
            Err(GrantError::Mismatch)
        );
        assert_eq!(
            keys.verify(&g, "u1", "tok", now + 100),
            Err(GrantError::Expired)
        );
        assert_eq!(
            keys.verify("x.y.z", "u1", "tok", now),
            Err(GrantError::Invalid)
        );
        let other = GrantKeys::generate().unwrap();
        assert_eq!(
            other.verify(&g, "u1", "tok", now + 1),
            Err(GrantError::Invalid)
        );
        assert_eq!(keys.jwks()["keys"][0]["kid"], json!(keys.kid()));
    }
}
