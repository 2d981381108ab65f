//! The decision pipeline (SPEC 3): credentials -> verify -> claims ->
//! session/role -> elevation -> [`Decision`]. One [`Engine`] is built per
//! config and swapped whole on reload; it holds no tonic or axum types.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::claims;
use crate::config::{ClaimsConfig, Config, KeySource, ModeKind, Secret, Settings, TokenLocation};
use crate::decision::{Allow, Decision, DenyReason, ModeRef};
use crate::elevation::{Elevation, GrantError};
use crate::jwks::{JwksCache, JwksRegistry};
use crate::jwt::{self, ClaimRules, JwtError};
use crate::keys::KeySet;
use crate::metrics::Metrics;
use crate::request::{Credential, Request};
use crate::rules::SecurityRules;
use crate::session::{self, RoleError, Session};
use crate::webhook::WebhookAuth;

/// Selection headers (RelyAuth): restrict mode types, or pick one mode id.
pub const MODE_HEADER: &str = "x-rely-auth-mode";
pub const HASURA_MODE_HEADER: &str = "x-hasura-auth-mode";
pub const ID_HEADER: &str = "x-rely-auth-id";

/// The compiled, runnable form of a [`Config`].
pub struct Engine {
    modes: Vec<Authenticator>,
    jwks: Vec<Arc<JwksCache>>,
    token_cache: Option<TokenCache>,
    metrics: Arc<Metrics>,
    elevation: Option<Arc<Elevation>>,
    pub settings: Settings,
}

struct Authenticator {
    mode: ModeRef,
    kind: AuthKind,
    rules: SecurityRules,
}

enum AuthKind {
    ApiKey {
        location: TokenLocation,
        value: Secret,
        session: Session,
    },
    Jwt(Box<JwtAuth>),
    Webhook(Box<WebhookAuth>),
    NoAuth {
        session: Session,
    },
}

struct JwtAuth {
    location: TokenLocation,
    keys: Keys,
    pinned: Option<Algorithm>,
    audience: Vec<String>,
    issuer: Option<String>,
    skew: u64,
    require_exp: bool,
    claims: ClaimsConfig,
}

enum Keys {
    Fixed(Arc<KeySet>),
    Remote(Arc<JwksCache>),
}

/// How one mode fared.
enum Outcome<'r> {
    /// No credential at its location: try the next mode.
    Absent,
    /// A credential was there and was refused.
    Invalid(DenyReason),
    Verified(Session, Option<AccessToken<'r>>),
}

/// The verified bearer token behind a JWT session, for elevation grants.
/// A Check borrows it from the request; an [`Identity`] owns it.
#[derive(Debug, Clone)]
pub struct AccessToken<'r> {
    pub raw: Cow<'r, str>,
    pub exp: Option<i64>,
}

impl AccessToken<'_> {
    pub fn into_owned(self) -> AccessToken<'static> {
        AccessToken {
            raw: Cow::Owned(self.raw.into_owned()),
            exp: self.exp,
        }
    }
}

/// Who is calling, for authgate's own endpoints (WebAuthn).
#[derive(Debug, Clone)]
pub struct Identity {
    pub session: Session,
    pub user_id: Option<String>,
    pub token: Option<AccessToken<'static>>,
    pub elevated: bool,
    pub mode: ModeRef,
}

impl Engine {
    /// Builds the engine; JWKS caches come from (and stay in) `registry`,
    /// started in the background when `start` is set.
    pub fn new(
        config: Config,
        registry: &JwksRegistry,
        metrics: Arc<Metrics>,
        start: bool,
        elevation: Option<Arc<Elevation>>,
    ) -> Self {
        let settings = config.settings.clone();
        let mut jwks: Vec<Arc<JwksCache>> = Vec::new();
        let mut modes = Vec::with_capacity(config.modes.len());
        for m in config.modes {
            let mode = ModeRef {
                kind: m.kind.name(),
                id: m.id.clone(),
            };
            let kind = match m.kind {
                ModeKind::ApiKey(a) => AuthKind::ApiKey {
                    location: a.location,
                    value: a.value,
                    session: a.session,
                },
                ModeKind::NoAuth(n) => AuthKind::NoAuth { session: n.session },
                ModeKind::Webhook(w) => AuthKind::Webhook(Box::new(WebhookAuth::new(*w))),
                ModeKind::Jwt(j) => {
                    let pinned = j.keys.pinned();
                    let keys = match j.keys {
                        KeySource::Fixed(set) => Keys::Fixed(set),
                        KeySource::Remote { url, .. } => {
                            let cache = registry.get_or_create(
                                &url,
                                &m.id,
                                settings.unknown_kid_cooldown,
                                settings.reload_interval,
                                &metrics,
                                start,
                            );
                            if !jwks.iter().any(|c| Arc::ptr_eq(c, &cache)) {
                                jwks.push(cache.clone());
                            }
                            Keys::Remote(cache)
                        }
                    };
                    AuthKind::Jwt(Box::new(JwtAuth {
                        location: j.location,
                        keys,
                        pinned,
                        audience: j.audience,
                        issuer: j.issuer,
                        skew: j.allowed_skew,
                        require_exp: j.require_exp,
                        claims: j.claims,
                    }))
                }
            };
            modes.push(Authenticator {
                mode,
                kind,
                rules: m.rules,
            });
        }
        let token_cache = (settings.token_cache_max_entries > 0)
            .then(|| TokenCache::new(settings.token_cache_max_entries, settings.token_cache_ttl));
        Engine {
            modes,
            jwks,
            token_cache,
            metrics,
            elevation,
            settings,
        }
    }

    /// Ready when every JWKS has keys.
    pub fn is_ready(&self) -> bool {
        self.jwks.iter().all(|c| c.is_ready())
    }

    pub fn jwks(&self) -> &[Arc<JwksCache>] {
        &self.jwks
    }

    /// Decides one request.
    pub async fn decide(&self, req: &Request) -> Decision {
        let now = jwt::unix_now();
        match self.first_verified(req, now).await {
            Ok((auth, session, token)) => self.finish(auth, session, token, req, now).await,
            Err(deny) => deny,
        }
    }

    /// Authenticates a call to authgate's own endpoints: modes and role as
    /// for a Check, elevation computed but not enforced.
    pub async fn identify(&self, req: &Request) -> Result<Identity, Decision> {
        let now = jwt::unix_now();
        let (auth, mut session, token) = self.first_verified(req, now).await?;
        self.resolve_role(auth, &mut session, req)?;
        let (elevated, _) = self.elevation_state(&mut session, token.as_ref(), req, now);
        Ok(Identity {
            user_id: session.user_id(),
            session,
            token: token.map(AccessToken::into_owned),
            elevated,
            mode: auth.mode.clone(),
        })
    }

    pub fn elevation(&self) -> Option<&Arc<Elevation>> {
        self.elevation.as_ref()
    }

    /// Modes in order; the first verified session wins (SPEC 3.1-3.2).
    async fn first_verified<'s, 'r>(
        &'s self,
        req: &'r Request,
        now: i64,
    ) -> Result<(&'s Authenticator, Session, Option<AccessToken<'r>>), Decision> {
        let mode_filter = req
            .headers
            .get(MODE_HEADER)
            .filter(|v| !v.is_empty())
            .or_else(|| {
                req.headers
                    .get(HASURA_MODE_HEADER)
                    .filter(|v| !v.is_empty())
            });
        let id_filter = req.headers.get(ID_HEADER).filter(|v| !v.is_empty());
        let mut refused: Option<(DenyReason, &ModeRef)> = None;
        for (index, auth) in self.modes.iter().enumerate() {
            if mode_filter.is_some_and(|m| m != auth.mode.kind)
                || id_filter.is_some_and(|id| id != &*auth.mode.id)
            {
                continue;
            }
            // noAuth stands in only when no credential was presented at all.
            if matches!(auth.kind, AuthKind::NoAuth { .. }) && refused.is_some() {
                continue;
            }
            match self.authenticate(index, auth, req, now).await {
                Outcome::Absent => {}
                Outcome::Invalid(reason) => {
                    refused = Some((reason, &auth.mode));
                    if id_filter.is_some() {
                        break;
                    }
                }
                Outcome::Verified(session, token) => {
                    return Ok((auth, session, token));
                }
            }
        }
        Err(match refused {
            Some((reason, mode)) => Decision::deny(reason, Some(mode.clone())),
            None => Decision::deny(DenyReason::MissingCredentials, None),
        })
    }

    async fn authenticate<'r>(
        &self,
        index: usize,
        auth: &Authenticator,
        req: &'r Request,
        now: i64,
    ) -> Outcome<'r> {
        // Security rules apply once a mode has something to authenticate:
        // a mode whose credential is absent is skipped, rules or not.
        let blocked = || !auth.rules.is_empty() && !auth.rules.allows(req);
        match &auth.kind {
            AuthKind::NoAuth { session } => {
                if blocked() {
                    return Outcome::Invalid(DenyReason::BlockedByRule);
                }
                Outcome::Verified(session.clone(), None)
            }
            AuthKind::ApiKey {
                location,
                value,
                session,
            } => match req.credential(location) {
                Credential::Absent => Outcome::Absent,
                Credential::Ambiguous => Outcome::Invalid(DenyReason::InvalidApiKey),
                Credential::Present(_) if blocked() => Outcome::Invalid(DenyReason::BlockedByRule),
                Credential::Present(given) => {
                    if bool::from(given.as_bytes().ct_eq(value.0.as_bytes())) {
                        Outcome::Verified(session.clone(), None)
                    } else {
                        Outcome::Invalid(DenyReason::InvalidApiKey)
                    }
                }
            },
            AuthKind::Webhook(w) => {
                if blocked() {
                    return Outcome::Invalid(DenyReason::BlockedByRule);
                }
                match w.authenticate(req).await {
                    Ok(session) => Outcome::Verified(session, None),
                    Err(reason) => Outcome::Invalid(reason),
                }
            }
            AuthKind::Jwt(j) => match req.credential(&j.location) {
                Credential::Absent => Outcome::Absent,
                Credential::Ambiguous => Outcome::Invalid(DenyReason::InvalidToken),
                Credential::Present(_) if blocked() => Outcome::Invalid(DenyReason::BlockedByRule),
                Credential::Present(token) => match self.verify_jwt(index, j, &token, now).await {
                    Ok((session, exp)) => {
                        Outcome::Verified(session, Some(AccessToken { raw: token, exp }))
                    }
                    Err(e) => {
                        tracing::debug!(mode = %auth.mode.id, error = %e, "token refused");
                        Outcome::Invalid(e.reason())
                    }
                },
            },
        }
    }

    async fn verify_jwt(
        &self,
        index: usize,
        j: &JwtAuth,
        token: &str,
        now: i64,
    ) -> Result<(Session, Option<i64>), JwtError> {
        let rules = ClaimRules {
            audience: &j.audience,
            issuer: j.issuer.as_deref(),
            skew: j.skew,
            require_exp: j.require_exp,
        };
        let cache_key = self
            .token_cache
            .as_ref()
            .map(|_| TokenCache::key(index, token));
        if let (Some(cache), Some(key)) = (&self.token_cache, &cache_key) {
            if let Some(hit) = cache.get(key) {
                self.metrics.token_cache_hit.inc();
                hit.check_time(now, &rules)?;
                // The encoding is ours; failing to read it back is a bug, and
                // the token is simply verified again.
                if let Some(session) = Session::from_compact(&hit.session) {
                    return Ok((session, hit.exp));
                }
            }
            self.metrics.token_cache_miss.inc();
        }
        let parsed = jwt::parse(token)?;
        let verified = match &j.keys {
            Keys::Fixed(set) => verify_with(set, j.pinned, &parsed),
            Keys::Remote(cache) => {
                let set = cache.current().ok_or(JwtError::KeysUnavailable)?;
                let known = match parsed.kid.as_deref() {
                    Some(kid) => set.has_kid(kid) || set.keys.iter().any(|k| k.kid.is_none()),
                    None => true,
                };
                cache.record_lookup(known);
                if known {
                    verify_with(&set, j.pinned, &parsed)
                } else {
                    let kid = parsed.kid.as_deref().unwrap_or_default();
                    match cache.refetch_for_kid(kid).await {
                        Some(set) => verify_with(&set, j.pinned, &parsed),
                        None => Err(JwtError::NoKey),
                    }
                }
            }
        };
        verified?;
        let claims = parsed.claims()?;
        let exp = jwt::check_claims(&claims, &rules, now)?;
        let nbf = claims.get("nbf").and_then(Value::as_i64);
        let session = claims::extract_owned(&j.claims, Value::Object(claims))
            .map_err(|_| JwtError::Claims)?;
        if let (Some(cache), Some(key)) = (&self.token_cache, cache_key) {
            cache.insert(key, &session, exp, nbf, now);
        }
        Ok((session, exp))
    }

    fn resolve_role(
        &self,
        auth: &Authenticator,
        session: &mut Session,
        req: &Request,
    ) -> Result<(), Decision> {
        let requested = req.headers.get(session::ROLE);
        session::resolve_role(session, requested).map_err(|e| {
            let reason = match e {
                RoleError::NotAllowed => DenyReason::RoleNotAllowed,
                RoleError::Missing => invalid_reason(auth),
            };
            Decision::deny(reason, Some(auth.mode.clone()))
        })
    }

    /// Whether the session is elevated: the token's claim equals the user id
    /// (nhost), or the request carries a valid grant for this user and this
    /// access token. Only authgate decides the upstream's elevation variable:
    /// set to the user id when elevated, removed otherwise.
    fn elevation_state(
        &self,
        session: &mut Session,
        token: Option<&AccessToken<'_>>,
        req: &Request,
        now: i64,
    ) -> (bool, Option<GrantError>) {
        let claim = self
            .elevation
            .as_ref()
            .map(|e| e.cfg.claim.as_str())
            .unwrap_or(session::ELEVATED);
        let by_claim = match (session.get(claim), session.user_id_text()) {
            (Some(Value::String(e)), Some(u)) => *e == *u,
            _ => false,
        };
        if by_claim {
            return (true, None);
        }
        session.remove(claim);
        let Some(el) = &self.elevation else {
            return (false, Some(GrantError::Missing));
        };
        let Some(user) = session.user_id() else {
            return (false, Some(GrantError::Missing));
        };
        let Some(grant) = el.grant_of(req) else {
            return (false, Some(GrantError::Missing));
        };
        let Some(token) = token else {
            return (false, Some(GrantError::Mismatch));
        };
        match el.grants.verify(&grant, &user, &token.raw, now) {
            Ok(()) => {
                session.insert(claim, Value::String(user));
                (true, None)
            }
            Err(e) => (false, Some(e)),
        }
    }

    /// Role, elevation and rendering, once a mode has verified a session.
    async fn finish(
        &self,
        auth: &Authenticator,
        mut session: Session,
        token: Option<AccessToken<'_>>,
        req: &Request,
        now: i64,
    ) -> Decision {
        if let Err(deny) = self.resolve_role(auth, &mut session, req) {
            return deny;
        }
        let (elevated, grant_error) = self.elevation_state(&mut session, token.as_ref(), req, now);
        // Without an elevation config, an Envoy route that asks for elevation
        // can only be satisfied by an elevated token (fail closed).
        let must = match &self.elevation {
            _ if elevated => Ok(false),
            Some(el) if el.route_requires(req) => {
                el.must_elevate(session.user_id().as_deref()).await
            }
            Some(_) => Ok(false),
            None => Ok(crate::elevation::context_requires(req)),
        };
        match must {
            Ok(false) => {}
            Ok(true) => {
                let label = grant_error.unwrap_or(GrantError::Missing).label();
                self.metrics
                    .elevation_failures
                    .with_label_values(&[label])
                    .inc();
                return Decision::deny(DenyReason::ElevationRequired, Some(auth.mode.clone()));
            }
            Err(reason) => return Decision::deny(reason, Some(auth.mode.clone())),
        }
        let invalid = invalid_reason(auth);
        let mut headers = Vec::with_capacity(session.len());
        for (k, v) in session.iter() {
            let value = session::hasura_string(v);
            if !session::is_valid_header_value(&value) {
                tracing::info!(mode = %auth.mode.id, variable = k, "session value is not a valid header value");
                return Decision::deny(invalid, Some(auth.mode.clone()));
            }
            headers.push((k.to_owned(), value));
        }
        // Sorted and deduplicated: linear in the number of client headers.
        let mut headers_to_remove: Vec<String> = req
            .headers
            .iter()
            .filter(|(name, _)| is_reserved_header(name) && session.get(name).is_none())
            .map(|(name, _)| name.to_owned())
            .collect();
        headers_to_remove.sort_unstable();
        headers_to_remove.dedup();
        Decision::Allow(Allow {
            session,
            headers,
            mode: auth.mode.clone(),
            elevated,
            headers_to_remove,
        })
    }
}

/// What a broken session from this mode is reported as.
fn invalid_reason(auth: &Authenticator) -> DenyReason {
    match auth.kind {
        AuthKind::Jwt(_) => DenyReason::InvalidToken,
        _ => DenyReason::InternalError,
    }
}

fn verify_with(
    set: &KeySet,
    pinned: Option<Algorithm>,
    parsed: &jwt::Parsed<'_>,
) -> Result<(), JwtError> {
    let mut any = false;
    for key in set.candidates(pinned, parsed.alg, parsed.kid.as_deref()) {
        any = true;
        if parsed.verify_with(key) {
            return Ok(());
        }
    }
    Err(if any {
        JwtError::Signature
    } else {
        JwtError::Algorithm
    })
}

/// Headers a client must never pass to the upstream on its own authority,
/// in any spelling an upstream may fold to the same name: case-insensitive,
/// and `_` equal to `-` anywhere (WSGI, Rack, PHP and nginx with
/// `underscores_in_headers` read `x-hasura_role` as `x-hasura-role`).
pub fn is_reserved_header(name: &str) -> bool {
    let folded = |a: u8, b: u8| {
        let a = if a == b'_' {
            b'-'
        } else {
            a.to_ascii_lowercase()
        };
        a == b
    };
    let starts =
        |p: &str| name.len() >= p.len() && name.bytes().zip(p.bytes()).all(|(a, b)| folded(a, b));
    let equals = |p: &str| name.len() == p.len() && starts(p);
    starts("x-hasura-") || starts("x-rely-auth-") || equals("x-elevation-token")
}

/// Verified tokens (SPEC 6): key = SHA-256 of mode index and token, value =
/// the session before per-request steps. An entry is served for at most
/// `tokenCacheTtl` and never past the token's `exp` (time validity is
/// re-checked on every hit). `quick_cache`, not moka, for this one cache:
/// at 100k entries moka's bookkeeping alone was ~400 bytes an entry
/// (docs/benchmarks.md), quick_cache's is tens of bytes; eviction is by
/// capacity, expiry checked on read.
struct TokenCache {
    cache: quick_cache::sync::Cache<[u8; 32], Arc<CachedToken>>,
    ttl: Duration,
}

struct CachedToken {
    /// [`Session::to_compact`]: one allocation per entry.
    session: Box<str>,
    exp: Option<i64>,
    nbf: Option<i64>,
    /// `tokenCacheTtl` after the insert.
    fresh_until: std::time::Instant,
}

impl CachedToken {
    fn check_time(&self, now: i64, rules: &ClaimRules<'_>) -> Result<(), JwtError> {
        let skew = i64::try_from(rules.skew).unwrap_or(i64::MAX / 4);
        if self.exp.is_some_and(|exp| now >= exp.saturating_add(skew)) {
            return Err(JwtError::Expired);
        }
        if self.nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }
}

impl TokenCache {
    fn new(max_entries: u64, ttl: Duration) -> Self {
        TokenCache {
            cache: quick_cache::sync::Cache::new(
                usize::try_from(max_entries).unwrap_or(usize::MAX),
            ),
            ttl,
        }
    }

    fn key(index: usize, token: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((index as u64).to_le_bytes());
        h.update(token.as_bytes());
        h.finalize().into()
    }

    fn get(&self, key: &[u8; 32]) -> Option<Arc<CachedToken>> {
        let hit = self.cache.get(key)?;
        if std::time::Instant::now() < hit.fresh_until {
            Some(hit)
        } else {
            self.cache.remove(key);
            None
        }
    }

    fn insert(
        &self,
        key: [u8; 32],
        session: &Session,
        exp: Option<i64>,
        nbf: Option<i64>,
        now: i64,
    ) {
        let until_exp = match exp {
            Some(exp) => Duration::from_secs(u64::try_from(exp.saturating_sub(now)).unwrap_or(0)),
            None => self.ttl,
        };
        if self.ttl.min(until_exp).is_zero() {
            return;
        }
        self.cache.insert(
            key,
            Arc::new(CachedToken {
                session: session.to_compact(),
                exp,
                nbf,
                fresh_until: std::time::Instant::now() + self.ttl,
            }),
        );
    }
}
