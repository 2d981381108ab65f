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

mod spec;

pub use spec::{ApiKeyMode, JwtMode, KeySource, MODE_ORDER, Mode, ModeKind, NoAuthMode, Settings};

use crate::claims::{self, ClaimsConfig};
use crate::decision::{Allow, Decision, Deny, DenyReason, ModeRef, Summary};
use crate::elevation::{Elevation, GrantError};
use crate::jwks::{JwksCache, JwksRegistry};
use crate::jwt::{self, ClaimRules, JwtError};
use crate::keys::KeySet;
use crate::metrics::Metrics;
use crate::redact::Secret;
use crate::request::{Credential, Request, TokenLocation};
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
enum Outcome<'r, M: Memo> {
    /// No credential at its location: try the next mode.
    Absent,
    /// A credential was there and was refused.
    Invalid(DenyReason),
    Found(Found<'r, M>),
}

/// What a mode that accepted the credential hands on.
enum Found<'r, M: Memo> {
    Verified(Verified<'r>),
    /// A cached token whose allow was encoded for an equivalent request
    /// ([`Engine::decide_memo`]); never built when `M` is [`NoMemo`].
    Memo(M::Hit),
}

/// A mode verified a session: what role, elevation and rendering start from.
struct Verified<'r> {
    session: Session,
    token: Option<AccessToken<'r>>,
    /// The token-cache entry this session was served from (a repeat).
    entry: Option<Arc<CachedToken>>,
}

impl Verified<'_> {
    fn session(session: Session) -> Self {
        Verified {
            session,
            token: None,
            entry: None,
        }
    }
}

/// Whether a caller takes encoded allows from the token cache. The type
/// proves that [`Engine::decide`] never gets one.
trait Memo {
    type Hit;
    fn hit(entry: &Arc<CachedToken>) -> Option<Self::Hit>;
}

/// For [`Engine::decide`] and [`Engine::identify`]: no memo.
enum NoMemo {}

impl Memo for NoMemo {
    type Hit = std::convert::Infallible;
    fn hit(_: &Arc<CachedToken>) -> Option<Self::Hit> {
        None
    }
}

/// For [`Engine::decide_memo`]: the entry, when an encoding is stored.
enum WithMemo {}

impl Memo for WithMemo {
    type Hit = Arc<CachedToken>;
    fn hit(entry: &Arc<CachedToken>) -> Option<Self::Hit> {
        entry.memo.get().is_some().then(|| entry.clone())
    }
}

/// What a request asks of the pipeline besides its credential: everything
/// role resolution, elevation and rendering read from the request. Two
/// requests with the same token and nothing asked decide the same way,
/// which is what lets [`Engine::decide_memo`] reuse an encoded allow.
struct Asks<'r> {
    /// Client headers authgate reserves ([`is_reserved_header`]), in
    /// request order; the role asked for is one of them.
    reserved: Vec<&'r str>,
    /// `x-hasura-role`.
    role: Option<&'r str>,
    /// An elevation grant (header or cookie), when elevation is configured.
    grant: Option<Cow<'r, str>>,
    /// Whether the route asks for elevation; an `Err` when that cannot be
    /// read (refused once a mode has verified the caller).
    elevation: Result<bool, DenyReason>,
}

impl Asks<'_> {
    /// Whether the request asks for nothing: the decision then depends on
    /// the token alone. Destructured whole, so a field added to [`Asks`]
    /// must be considered here.
    fn nothing(&self) -> bool {
        let Asks {
            reserved,
            role,
            grant,
            elevation,
        } = self;
        reserved.is_empty() && role.is_none() && grant.is_none() && *elevation == Ok(false)
    }
}

/// How a front door encodes an allow, for the memo of
/// [`Engine::decide_memo`]. One engine serves one encoder.
pub type EncodeAllow = fn(&Allow) -> Box<[u8]>;

/// The answer of [`Engine::decide_memo`].
#[derive(Debug)]
pub enum Answer {
    Decided(Decision),
    /// An allow encoded earlier for the same token and an equivalent request.
    Memo(MemoHit),
}

/// Bytes of an allow, lent by the token-cache entry that holds them.
pub struct MemoHit {
    pub mode: ModeRef,
    entry: Arc<CachedToken>,
}

impl MemoHit {
    pub fn bytes(&self) -> &[u8] {
        self.entry.memo.get().map_or(&[], |b| b)
    }
}

impl std::fmt::Debug for MemoHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoHit")
            .field("mode", &self.mode)
            .field("bytes", &self.bytes().len())
            .finish()
    }
}

impl Answer {
    pub fn summary(&self) -> Summary {
        match self {
            Answer::Decided(d) => d.summary(),
            Answer::Memo(m) => Summary {
                reason: None,
                mode: m.mode.kind,
            },
        }
    }
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

/// What an engine shares with the host and with the engines of other
/// configs: they outlive a reload.
pub struct Parts<'a> {
    /// JWKS caches by URL; a reloaded engine keeps the caches it still uses.
    pub registry: &'a JwksRegistry,
    pub metrics: Arc<Metrics>,
    /// Whether new JWKS caches start fetching and refreshing now.
    pub fetch: KeyFetch,
    /// The elevation stage, when the config has one.
    pub elevation: Option<Arc<Elevation>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFetch {
    /// Fetch now and refresh in the background (the server, `check`).
    Background,
    /// No background task: keys come only from an unknown-`kid` refetch
    /// (tests and fuzzing, which must not reach the network by themselves).
    OnDemand,
}

impl Engine {
    /// Builds the engine for `settings` and `modes` (in evaluation order).
    pub fn build(settings: Settings, modes: Vec<Mode>, parts: Parts<'_>) -> Self {
        let Parts {
            registry,
            metrics,
            fetch,
            elevation,
        } = parts;
        let start = fetch == KeyFetch::Background;
        let mut jwks: Vec<Arc<JwksCache>> = Vec::new();
        let specs = modes;
        let mut modes = Vec::with_capacity(specs.len());
        for m in specs {
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
        let now = crate::clock::unix_now();
        let asks = self.asks(req);
        match self.first_verified::<NoMemo>(req, &asks, now).await {
            Ok((auth, Found::Verified(v))) => self.finish(auth, v, &asks, now).await,
            Ok((_, Found::Memo(never))) => match never {},
            Err(deny) => Decision::Deny(deny),
        }
    }

    /// Decides one request for a front door that encodes allows itself
    /// (the gRPC door): a token seen before, in a request that asks for
    /// nothing ([`Asks::nothing`]), gets the allow `encode`d for its first
    /// such repeat back as bytes. New tokens store no encoding: a token used
    /// once costs the cache no more than its session.
    pub async fn decide_memo(&self, req: &Request, encode: EncodeAllow) -> Answer {
        let now = crate::clock::unix_now();
        let asks = self.asks(req);
        let (auth, v) = match self.first_verified::<WithMemo>(req, &asks, now).await {
            Ok((auth, Found::Verified(v))) => (auth, v),
            Ok((auth, Found::Memo(entry))) => {
                return Answer::Memo(MemoHit {
                    mode: auth.mode.clone(),
                    entry,
                });
            }
            Err(deny) => return Answer::Decided(Decision::Deny(deny)),
        };
        let entry = v.entry.clone();
        let decision = self.finish(auth, v, &asks, now).await;
        match (entry, &decision) {
            // An encoding already set was offered (and refused) in verify_jwt.
            (Some(entry), Decision::Allow(a)) if entry.memo.get().is_none() && asks.nothing() => {
                // Another request may have stored the same bytes first.
                let _ = entry.memo.set(encode(a));
                Answer::Memo(MemoHit {
                    mode: auth.mode.clone(),
                    entry,
                })
            }
            _ => Answer::Decided(decision),
        }
    }

    /// Reads what the request asks for besides its credential.
    fn asks<'r>(&self, req: &'r Request) -> Asks<'r> {
        let reserved: Vec<&str> = req
            .headers
            .iter()
            .map(|(name, _)| name)
            .filter(|name| is_reserved_header(name))
            .collect();
        let role = if reserved.is_empty() {
            None
        } else {
            req.headers.get(session::ROLE)
        };
        let (grant, elevation) = match &self.elevation {
            None => (None, crate::elevation::context_requires(req)),
            Some(el) => (el.grant_of(req), el.route_requires(req)),
        };
        Asks {
            reserved,
            role,
            grant,
            elevation,
        }
    }

    /// Authenticates a call to authgate's own endpoints: modes and role as
    /// for a Check, elevation computed but not enforced.
    pub async fn identify(&self, req: &Request) -> Result<Identity, Decision> {
        let now = crate::clock::unix_now();
        let asks = self.asks(req);
        let (auth, mut v) = match self.first_verified::<NoMemo>(req, &asks, now).await {
            Ok((auth, Found::Verified(v))) => (auth, v),
            Ok((_, Found::Memo(never))) => match never {},
            Err(deny) => return Err(Decision::Deny(deny)),
        };
        self.resolve_role(auth, &mut v.session, &asks)?;
        let (elevated, _) = self.elevation_state(&mut v.session, v.token.as_ref(), &asks, now);
        Ok(Identity {
            user_id: v.session.user_id(),
            session: v.session,
            token: v.token.map(AccessToken::into_owned),
            elevated,
            mode: auth.mode.clone(),
        })
    }

    pub fn elevation(&self) -> Option<&Arc<Elevation>> {
        self.elevation.as_ref()
    }

    /// Modes in order; the first verified session wins (RelyAuth's order;
    /// an invalid credential never falls through to `noAuth`).
    async fn first_verified<'s, 'r, M: Memo>(
        &'s self,
        req: &'r Request,
        asks: &Asks<'r>,
        now: i64,
    ) -> Result<(&'s Authenticator, Found<'r, M>), Deny> {
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
            match self.authenticate::<M>(index, auth, req, asks, now).await {
                Outcome::Absent => {}
                Outcome::Invalid(reason) => {
                    refused = Some((reason, &auth.mode));
                    if id_filter.is_some() {
                        break;
                    }
                }
                Outcome::Found(found) => return Ok((auth, found)),
            }
        }
        Err(match refused {
            Some((reason, mode)) => Deny {
                reason,
                mode: Some(mode.clone()),
            },
            None => Deny {
                reason: DenyReason::MissingCredentials,
                mode: None,
            },
        })
    }

    async fn authenticate<'r, M: Memo>(
        &self,
        index: usize,
        auth: &Authenticator,
        req: &'r Request,
        asks: &Asks<'r>,
        now: i64,
    ) -> Outcome<'r, M> {
        // Security rules apply once a mode has something to authenticate:
        // a mode whose credential is absent is skipped, rules or not.
        let blocked = || !auth.rules.is_empty() && !auth.rules.allows(req);
        match &auth.kind {
            AuthKind::NoAuth { session } => {
                if blocked() {
                    return Outcome::Invalid(DenyReason::BlockedByRule);
                }
                Outcome::Found(Found::Verified(Verified::session(session.clone())))
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
                        Outcome::Found(Found::Verified(Verified::session(session.clone())))
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
                    Ok(session) => Outcome::Found(Found::Verified(Verified::session(session))),
                    Err(reason) => Outcome::Invalid(reason),
                }
            }
            AuthKind::Jwt(j) => match req.credential(&j.location) {
                Credential::Absent => Outcome::Absent,
                Credential::Ambiguous => Outcome::Invalid(DenyReason::InvalidToken),
                Credential::Present(_) if blocked() => Outcome::Invalid(DenyReason::BlockedByRule),
                Credential::Present(token) => {
                    match self.verify_jwt::<M>(index, j, token, now, asks).await {
                        Ok(found) => Outcome::Found(found),
                        Err(e) => {
                            tracing::debug!(mode = %auth.mode.id, error = %e, "token refused");
                            Outcome::Invalid(e.reason())
                        }
                    }
                }
            },
        }
    }

    async fn verify_jwt<'r, M: Memo>(
        &self,
        index: usize,
        j: &JwtAuth,
        token: Cow<'r, str>,
        now: i64,
        asks: &Asks<'r>,
    ) -> Result<Found<'r, M>, JwtError> {
        let rules = ClaimRules {
            audience: &j.audience,
            issuer: j.issuer.as_deref(),
            skew: j.skew,
            require_exp: j.require_exp,
        };
        let cache_key = self
            .token_cache
            .as_ref()
            .map(|_| TokenCache::key(index, &token));
        if let (Some(cache), Some(key)) = (&self.token_cache, &cache_key) {
            if let Some(hit) = cache.get(key) {
                self.metrics.token_cache_hit.inc();
                hit.check_time(now, &rules)?;
                if asks.nothing()
                    && let Some(memo) = M::hit(&hit)
                {
                    return Ok(Found::Memo(memo));
                }
                // The encoding is ours; failing to read it back is a bug, and
                // the token is simply verified again.
                if let Some(session) = Session::from_compact(&hit.session) {
                    let exp = (hit.exp != i64::MAX).then_some(hit.exp);
                    return Ok(Found::Verified(Verified {
                        session,
                        token: Some(AccessToken { raw: token, exp }),
                        entry: Some(hit),
                    }));
                }
            }
            self.metrics.token_cache_miss.inc();
        }
        let parsed = jwt::parse(&token)?;
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
        Ok(Found::Verified(Verified {
            session,
            token: Some(AccessToken { raw: token, exp }),
            entry: None,
        }))
    }

    fn resolve_role(
        &self,
        auth: &Authenticator,
        session: &mut Session,
        asks: &Asks<'_>,
    ) -> Result<(), Decision> {
        session::resolve_role(session, asks.role).map_err(|e| {
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
        asks: &Asks<'_>,
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
        let Some(grant) = &asks.grant else {
            return (false, Some(GrantError::Missing));
        };
        let Some(token) = token else {
            return (false, Some(GrantError::Mismatch));
        };
        match el.grants.verify(grant, &user, &token.raw, now) {
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
        verified: Verified<'_>,
        asks: &Asks<'_>,
        now: i64,
    ) -> Decision {
        let Verified {
            mut session, token, ..
        } = verified;
        if let Err(deny) = self.resolve_role(auth, &mut session, asks) {
            return deny;
        }
        let (elevated, grant_error) = self.elevation_state(&mut session, token.as_ref(), asks, now);
        // Without an elevation config, an Envoy route that asks for elevation
        // can only be satisfied by an elevated token (fail closed). Even an
        // elevated request is refused when the route's requirement cannot be
        // read (an unknown context value, a path with no single reading):
        // such a config or request is broken.
        let must = match (&self.elevation, asks.elevation) {
            (_, Err(reason)) => Err(reason),
            (_, Ok(false)) => Ok(false),
            (_, Ok(true)) if elevated => Ok(false),
            (Some(el), Ok(true)) => el.must_elevate(session.user_id().as_deref()).await,
            (None, Ok(true)) => Ok(true),
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
        let mut headers_to_remove: Vec<String> = asks
            .reserved
            .iter()
            .filter(|name| session.get(name).is_none())
            .map(|name| (*name).to_owned())
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
    /// The gRPC front door's encoded allow for requests that ask for
    /// nothing ([`Engine::decide_memo`]), stored on the token's first repeat.
    memo: std::sync::OnceLock<Box<[u8]>>,
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
                memo: std::sync::OnceLock::new(),
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
        Engine::build(
            cfg.settings,
            cfg.modes,
            Parts {
                registry: &registry,
                metrics: Arc::new(Metrics::new()),
                fetch: KeyFetch::OnDemand,
                elevation: None,
            },
        )
    }

    fn token(user: &str) -> String {
        let claims = json!({
            "sub": user,
            "exp": crate::clock::unix_now() + 600,
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

    /// A stand-in for the gRPC front door's encoding: what it encodes is
    /// the front door's business, the pipeline only keeps and returns it.
    fn encode(a: &Allow) -> Box<[u8]> {
        format!("{:?} {}", a.headers, a.elevated)
            .into_bytes()
            .into()
    }

    fn allow(a: Answer) -> Allow {
        match a {
            Answer::Decided(Decision::Allow(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn repeats_reuse_the_encoding_only_for_requests_that_ask_for_nothing() {
        let engine = engine();
        let bearer = format!("Bearer {}", token("u-1"));
        let plain = request(&[("authorization", &bearer)]);

        // New token: decided in full, nothing stored.
        let a = allow(engine.decide_memo(&plain, encode).await);
        let expected = encode(&a);
        // First repeat: decided from the cached session, encoding stored.
        // Later repeats: the stored encoding.
        for _ in 0..3 {
            match engine.decide_memo(&plain, encode).await {
                Answer::Memo(m) => {
                    assert_eq!(m.bytes(), &*expected);
                    assert_eq!(m.mode.kind, "jwt");
                }
                other => panic!("{other:?}"),
            }
        }
        // `decide` (HTTP front door, `check`) never takes the memo.
        assert!(matches!(engine.decide(&plain).await, Decision::Allow(_)));

        // Requests that change the answer are decided in full.
        let role = request(&[("authorization", &bearer), ("x-hasura-role", "editor")]);
        let a = allow(engine.decide_memo(&role, encode).await);
        assert!(
            a.headers
                .contains(&("x-hasura-role".into(), "editor".into()))
        );
        let spoof = request(&[("authorization", &bearer), ("x-hasura-org-id", "7")]);
        let a = allow(engine.decide_memo(&spoof, encode).await);
        assert_eq!(a.headers_to_remove, ["x-hasura-org-id"]);
        let mut elevate = request(&[("authorization", &bearer)]);
        elevate
            .context
            .insert("elevation".into(), "required".into());
        let d = engine.decide_memo(&elevate, encode).await;
        assert_eq!(
            d.summary().reason,
            Some(DenyReason::ElevationRequired),
            "{d:?}"
        );

        // Another token never gets this one's encoding.
        let other = request(&[("authorization", &format!("Bearer {}", token("u-2")))]);
        for _ in 0..3 {
            match engine.decide_memo(&other, encode).await {
                Answer::Decided(Decision::Allow(a)) => assert_ne!(encode(&a), expected),
                Answer::Memo(m) => assert_ne!(m.bytes(), &*expected),
                d => panic!("{d:?}"),
            }
        }
    }
}
