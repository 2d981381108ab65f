//! The decision pipeline (docs/design.md): credentials -> verify -> claims ->
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
use crate::decision::{Allow, Decision, DenyReason, ModeRef, Rendered};
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
    Verified(Session, Option<AccessToken<'r>>, Option<Arc<CachedToken>>),
    /// A cached token whose allow was rendered for an equivalent request.
    Rendered(Arc<CachedToken>),
}

/// What [`Engine::verify_jwt`] found.
enum JwtOutcome {
    /// A verified session; the token-cache entry when it came from the cache.
    Session(Session, Option<i64>, Option<Arc<CachedToken>>),
    Rendered(Arc<CachedToken>),
}

/// A mode verified a session: what the rest of the pipeline starts from.
struct Verified<'s, 'r> {
    auth: &'s Authenticator,
    session: Session,
    token: Option<AccessToken<'r>>,
    /// The token-cache entry this session was served from (a repeat).
    entry: Option<Arc<CachedToken>>,
}

/// How a front door renders an allow, for reuse on the token's repeats.
pub type Render = fn(&Allow) -> Box<[u8]>;

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
        self.decide_reusing(req, None).await
    }

    /// Decides one request; with `render`, a token seen before whose allow
    /// was rendered for an equivalent request ([`Engine::reusable`]) gets
    /// that rendering back ([`Decision::Rendered`]), and the first repeat of
    /// a token stores its rendering. New tokens store none: a token used
    /// once costs the cache no more than its session.
    pub async fn decide_reusing(&self, req: &Request, render: Option<Render>) -> Decision {
        let now = jwt::unix_now();
        let v = match self.first_verified(req, now, render.is_some()).await {
            Ok(v) => v,
            Err(decided) => return decided,
        };
        let Verified {
            auth,
            session,
            token,
            entry,
        } = v;
        let decision = self.finish(auth, session, token, req, now).await;
        match (render, entry, &decision) {
            // A set rendering was already offered (and refused) in verify_jwt.
            (Some(render), Some(entry), Decision::Allow(a))
                if entry.rendered.get().is_none() && self.reusable(req) =>
            {
                // Another request may have stored the same bytes first.
                let _ = entry.rendered.set(render(a));
                Decision::Rendered(Rendered {
                    mode: auth.mode.clone(),
                    source: entry,
                })
            }
            _ => decision,
        }
    }

    /// Whether the allow for `req` depends on its token alone: no client
    /// header authgate reserves (role or mode selection, headers to strip,
    /// an elevation grant) and no elevation asked for, so role, elevation
    /// and headers come out the same for every such request.
    fn reusable(&self, req: &Request) -> bool {
        if req.headers.iter().any(|(name, _)| is_reserved_header(name)) {
            return false;
        }
        match &self.elevation {
            None => crate::elevation::context_requires(req) == Ok(false),
            Some(el) => el.route_requires(req) == Ok(false) && el.grant_of(req).is_none(),
        }
    }

    /// Authenticates a call to authgate's own endpoints: modes and role as
    /// for a Check, elevation computed but not enforced.
    pub async fn identify(&self, req: &Request) -> Result<Identity, Decision> {
        let now = jwt::unix_now();
        let Verified {
            auth,
            mut session,
            token,
            ..
        } = self.first_verified(req, now, false).await?;
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

    /// Modes in order; the first verified session wins (RelyAuth's order;
    /// an invalid credential never falls through to `noAuth`).
    /// `Err` is a decision already made: a denial, or (with `reuse`) an
    /// allow reused from the token cache.
    async fn first_verified<'s, 'r>(
        &'s self,
        req: &'r Request,
        now: i64,
        reuse: bool,
    ) -> Result<Verified<'s, 'r>, Decision> {
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
            match self.authenticate(index, auth, req, now, reuse).await {
                Outcome::Absent => {}
                Outcome::Invalid(reason) => {
                    refused = Some((reason, &auth.mode));
                    if id_filter.is_some() {
                        break;
                    }
                }
                Outcome::Verified(session, token, entry) => {
                    return Ok(Verified {
                        auth,
                        session,
                        token,
                        entry,
                    });
                }
                Outcome::Rendered(entry) => {
                    return Err(Decision::Rendered(Rendered {
                        mode: auth.mode.clone(),
                        source: entry,
                    }));
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
        reuse: bool,
    ) -> Outcome<'r> {
        // Security rules apply once a mode has something to authenticate:
        // a mode whose credential is absent is skipped, rules or not.
        let blocked = || !auth.rules.is_empty() && !auth.rules.allows(req);
        match &auth.kind {
            AuthKind::NoAuth { session } => {
                if blocked() {
                    return Outcome::Invalid(DenyReason::BlockedByRule);
                }
                Outcome::Verified(session.clone(), None, None)
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
                        Outcome::Verified(session.clone(), None, None)
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
                    Ok(session) => Outcome::Verified(session, None, None),
                    Err(reason) => Outcome::Invalid(reason),
                }
            }
            AuthKind::Jwt(j) => match req.credential(&j.location) {
                Credential::Absent => Outcome::Absent,
                Credential::Ambiguous => Outcome::Invalid(DenyReason::InvalidToken),
                Credential::Present(_) if blocked() => Outcome::Invalid(DenyReason::BlockedByRule),
                Credential::Present(token) => {
                    let reusable = || reuse && self.reusable(req);
                    match self.verify_jwt(index, j, &token, now, reusable).await {
                        Ok(JwtOutcome::Session(session, exp, entry)) => {
                            Outcome::Verified(session, Some(AccessToken { raw: token, exp }), entry)
                        }
                        Ok(JwtOutcome::Rendered(entry)) => Outcome::Rendered(entry),
                        Err(e) => {
                            tracing::debug!(mode = %auth.mode.id, error = %e, "token refused");
                            Outcome::Invalid(e.reason())
                        }
                    }
                }
            },
        }
    }

    async fn verify_jwt(
        &self,
        index: usize,
        j: &JwtAuth,
        token: &str,
        now: i64,
        reuse: impl FnOnce() -> bool,
    ) -> Result<JwtOutcome, JwtError> {
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
                if hit.rendered.get().is_some() && reuse() {
                    return Ok(JwtOutcome::Rendered(hit));
                }
                // The encoding is ours; failing to read it back is a bug, and
                // the token is simply verified again.
                if let Some(session) = Session::from_compact(&hit.session) {
                    let exp = (hit.exp != i64::MAX).then_some(hit.exp);
                    return Ok(JwtOutcome::Session(session, exp, Some(hit)));
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
        Ok(JwtOutcome::Session(session, exp, None))
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
            // Even an elevated request is refused when the route's
            // requirement cannot be read (an unknown context value, a path
            // with no single reading): such a config or request is broken.
            Some(el) => match el.route_requires(req) {
                Ok(true) if !elevated => el.must_elevate(session.user_id().as_deref()).await,
                Ok(_) => Ok(false),
                Err(reason) => Err(reason),
            },
            None => crate::elevation::context_requires(req).map(|needed| needed && !elevated),
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

/// Verified tokens (docs/design.md, "Verified-token cache"): key = SHA-256 of mode index and token, value =
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
    /// `exp` and `nbf`; `i64::MAX` and `i64::MIN` when absent (not
    /// `Option`s: 16 bytes less an entry, and the checks stay the same).
    exp: i64,
    nbf: i64,
    /// `tokenCacheTtl` after the insert.
    fresh_until: std::time::Instant,
    /// The gRPC front door's allow for requests that add nothing to the
    /// token ([`Engine::reusable`]), stored on the token's first repeat.
    rendered: std::sync::OnceLock<Box<[u8]>>,
}

impl CachedToken {
    fn check_time(&self, now: i64, rules: &ClaimRules<'_>) -> Result<(), JwtError> {
        let skew = i64::try_from(rules.skew).unwrap_or(i64::MAX / 4);
        if now >= self.exp.saturating_add(skew) {
            return Err(JwtError::Expired);
        }
        if now.saturating_add(skew) < self.nbf {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }
}

/// A [`Decision::Rendered`] lends the entry's rendering (never empty: an
/// entry is only handed out once `rendered` is set).
impl AsRef<[u8]> for CachedToken {
    fn as_ref(&self) -> &[u8] {
        self.rendered.get().map_or(&[], |b| b)
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
                exp: exp.unwrap_or(i64::MAX),
                nbf: nbf.unwrap_or(i64::MIN),
                fresh_until: std::time::Instant::now() + self.ttl,
                rendered: std::sync::OnceLock::new(),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::request::Headers;

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes!!";

    fn engine() -> Engine {
        let yaml = format!(
            r#"
definition:
  modes:
    - mode: jwt
      key: {{algorithm: HS256, key: {{value: "{SECRET}"}}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
"#
        );
        let cfg = crate::config::parse(&yaml, &|_: &str| None).expect("config loads");
        let registry = JwksRegistry::new().expect("registry");
        Engine::new(cfg, &registry, Arc::new(Metrics::new()), false, None)
    }

    fn token(user: &str) -> String {
        let claims = json!({
            "sub": user,
            "exp": jwt::unix_now() + 600,
            "claims.jwt.hasura.io": {
                "x-hasura-user-id": user,
                "x-hasura-default-role": "user",
                "x-hasura-allowed-roles": ["user", "editor"],
            },
        });
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&Header::default(), &claims, &key).expect("token")
    }

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut h = Headers::new();
        for (k, v) in headers {
            h.push(k, *v);
        }
        Request {
            headers: h,
            method: "POST".into(),
            path: "/v1/graphql".into(),
            ..Default::default()
        }
    }

    /// A stand-in for the gRPC front door's encoding: what it renders is
    /// the front door's business, the pipeline only keeps and returns it.
    fn render(a: &Allow) -> Box<[u8]> {
        format!("{:?} {}", a.headers, a.elevated)
            .into_bytes()
            .into()
    }

    fn kind(d: &Decision) -> &'static str {
        match d {
            Decision::Allow(_) => "allow",
            Decision::Rendered(_) => "rendered",
            Decision::Deny(_) => "deny",
        }
    }

    #[tokio::test]
    async fn repeats_reuse_the_rendering_only_for_requests_that_add_nothing() {
        let engine = engine();
        let bearer = format!("Bearer {}", token("u-1"));
        let plain = request(&[("authorization", &bearer)]);

        // New token: decided in full, nothing stored.
        let first = engine.decide_reusing(&plain, Some(render)).await;
        let Decision::Allow(a) = &first else {
            panic!("{first:?}")
        };
        let expected = render(a);
        // First repeat: decided from the cached session, rendering stored.
        // Later repeats: the stored rendering.
        for _ in 0..3 {
            match engine.decide_reusing(&plain, Some(render)).await {
                Decision::Rendered(r) => {
                    assert_eq!(r.bytes(), &*expected);
                    assert_eq!(r.mode.kind, "jwt");
                }
                other => panic!("{other:?}"),
            }
        }
        // Without a renderer (HTTP front door, `check`), never reused.
        assert_eq!(kind(&engine.decide(&plain).await), "allow");

        // Requests that change the answer are decided in full.
        let role = request(&[("authorization", &bearer), ("x-hasura-role", "editor")]);
        let Decision::Allow(a) = engine.decide_reusing(&role, Some(render)).await else {
            panic!("role request")
        };
        assert!(
            a.headers
                .contains(&("x-hasura-role".into(), "editor".into()))
        );
        let spoof = request(&[("authorization", &bearer), ("x-hasura-org-id", "7")]);
        let Decision::Allow(a) = engine.decide_reusing(&spoof, Some(render)).await else {
            panic!("spoofed header request")
        };
        assert_eq!(a.headers_to_remove, ["x-hasura-org-id"]);
        let mut elevate = request(&[("authorization", &bearer)]);
        elevate
            .context
            .insert("elevation".into(), "required".into());
        let d = engine.decide_reusing(&elevate, Some(render)).await;
        assert_eq!(d.reason_label(), "elevation_required", "{d:?}");

        // Another token never gets this one's rendering.
        let other = request(&[("authorization", &format!("Bearer {}", token("u-2")))]);
        for _ in 0..3 {
            match engine.decide_reusing(&other, Some(render)).await {
                Decision::Allow(a) => assert_ne!(render(&a), expected),
                Decision::Rendered(r) => assert_ne!(r.bytes(), &*expected),
                d => panic!("{d:?}"),
            }
        }
    }
}
