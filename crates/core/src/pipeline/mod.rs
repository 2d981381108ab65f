//! The decision pipeline (docs/design.md): credentials -> verify -> claims ->
//! session/role -> elevation -> [`Decision`]. One [`Engine`] is built per
//! config and swapped whole on reload; it holds no tonic or axum types.
//!
//! - `spec`: what an engine is built from (settings, modes);
//! - `modes`: the four authenticators and the loop over them;
//! - `asks`: what a request asks for besides its credential;
//! - `token_cache`: verified tokens, and `memo`: a front door's encoded
//!   allows kept with them;
//! - here: building, role resolution, elevation and the final [`Allow`].

mod asks;
mod memo;
mod modes;
mod spec;
mod token_cache;

use std::sync::Arc;

use serde_json::Value;

pub use crate::identity::{AccessToken, Identity};
pub use asks::is_reserved_header;
pub use memo::{Answer, EncodeAllow, MemoHit};
pub use spec::{ApiKeyMode, JwtMode, KeySource, MODE_ORDER, Mode, ModeKind, NoAuthMode, Settings};

use asks::Asks;
use memo::{Encoded, NoMemo, WithMemo};
use modes::{AuthKind, Authenticator, Found, JwtAuth, Keys, Verified, invalid_reason};
use token_cache::{CachedToken, SignedFor, TokenCache};

use crate::decision::{
    Allow, Decision, Deny, DenyReason, ExtraField, MetadataField, ModeRef, UpstreamHeader,
};
use crate::elevation::{Elevation, GrantError};
use crate::introspection::Introspector;
use crate::jwks::{JwksCache, JwksRegistry};
use crate::metrics::Metrics;
use crate::policy::{Facts, Policies};
use crate::request::Request;
use crate::session::{self, RoleError, Session};
use crate::upstream::{MintError, UpstreamTokens};
use crate::webhook::WebhookAuth;

/// Selection headers (RelyAuth): restrict mode types, or pick one mode id.
pub const MODE_HEADER: &str = "x-rely-auth-mode";
pub const HASURA_MODE_HEADER: &str = "x-hasura-auth-mode";
pub const ID_HEADER: &str = "x-rely-auth-id";

/// The compiled, runnable form of a config.
pub struct Engine {
    modes: Vec<Authenticator>,
    jwks: Vec<Arc<JwksCache>>,
    /// Introspection modes (readiness: a discovered endpoint).
    introspectors: Vec<Arc<Introspector>>,
    token_cache: Option<TokenCache>,
    metrics: Arc<Metrics>,
    elevation: Option<Arc<Elevation>>,
    policies: Arc<Policies>,
    /// `authgate_policy_decisions_total` (allow, deny), by policy index.
    policy_counters: Vec<(prometheus::IntCounter, prometheus::IntCounter)>,
    /// `definition.upstreamToken`.
    upstream: Option<Arc<UpstreamTokens>>,
    /// `definition.dynamicMetadata`.
    metadata: Arc<[MetadataField]>,
    pub settings: Settings,
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
        let mut introspectors = Vec::new();
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
                ModeKind::Introspection(i) => {
                    let introspector = Arc::new(Introspector::new(*i));
                    if start {
                        introspector.start();
                    }
                    introspectors.push(introspector.clone());
                    AuthKind::Introspection(introspector)
                }
                ModeKind::Jwt(j) => {
                    let pinned = j.keys.pinned();
                    let keys = match j.keys {
                        KeySource::Fixed(set) => Keys::Fixed(set),
                        KeySource::Remote {
                            url, fetch, issuer, ..
                        } => {
                            let cache = registry.get_or_create(
                                &url,
                                issuer.as_deref(),
                                fetch.as_deref(),
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
                only_when_selected: m.only_when_selected,
            });
        }
        let token_cache = (settings.token_cache_max_entries > 0)
            .then(|| TokenCache::new(settings.token_cache_max_entries, settings.token_cache_ttl));
        Engine {
            modes,
            jwks,
            introspectors,
            token_cache,
            metrics,
            elevation,
            policies: Arc::default(),
            policy_counters: Vec::new(),
            upstream: None,
            metadata: Arc::new([]),
            settings,
        }
    }

    /// The engine with `definition.policies` and `definition.policyRoutes`.
    pub fn with_policies(mut self, policies: Policies) -> Self {
        self.policy_counters = policies
            .policies
            .iter()
            .map(|p| self.metrics.policy(&p.name))
            .collect();
        self.policies = Arc::new(policies);
        self
    }

    /// The engine with `definition.upstreamToken`: every allow carries a
    /// token signed by `tokens`.
    pub fn with_upstream_token(mut self, tokens: Option<Arc<UpstreamTokens>>) -> Self {
        self.upstream = tokens;
        self
    }

    /// The engine with `definition.dynamicMetadata`.
    pub fn with_dynamic_metadata(mut self, fields: Vec<MetadataField>) -> Self {
        self.metadata = fields.into();
        self
    }

    /// The upstream token signer, for publishing its keys and for the next
    /// reload's rotation.
    pub fn upstream_tokens(&self) -> Option<&Arc<UpstreamTokens>> {
        self.upstream.as_ref()
    }

    /// Whether a cached token's encoded allow may answer this request's
    /// policies: it satisfies them all with the role it gets when none is
    /// requested (the only role a memo is stored for).
    fn policies_pass_memo(&self, asks: &Asks<'_>, facts: &Facts) -> bool {
        asks.policies(self)
            .is_ok_and(|mask| mask & !facts.passes == 0)
    }

    /// Counts the policies that applied to an allow answered from a memo.
    fn count_memo_policies(&self, asks: &Asks<'_>) {
        if let Ok(mask) = asks.policies(self) {
            for i in crate::policy::bits(mask) {
                self.policy_counters[i].0.inc();
            }
        }
    }

    /// Ready when every JWKS has keys and every discovered introspection
    /// endpoint is known.
    pub fn is_ready(&self) -> bool {
        self.jwks.iter().all(|c| c.is_ready()) && self.introspectors.iter().all(|i| i.is_ready())
    }

    /// The introspection modes, by mode id.
    pub fn introspectors(&self) -> impl Iterator<Item = (&str, &Arc<Introspector>)> {
        self.modes.iter().filter_map(|m| match &m.kind {
            AuthKind::Introspection(i) => Some((&*m.mode.id, i)),
            _ => None,
        })
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
    /// (the gRPC door, the Envoy module): a token seen before, in a request that asks for
    /// nothing ([`Asks::nothing`]), gets the allow `encode`d for its first
    /// such repeat back as bytes. New tokens store no encoding: a token used
    /// once costs the cache no more than its session.
    pub async fn decide_memo(&self, req: &Request, encode: EncodeAllow) -> Answer {
        let now = crate::clock::unix_now();
        let asks = self.asks(req);
        let (auth, v) = match self.first_verified::<WithMemo>(req, &asks, now).await {
            Ok((auth, Found::Verified(v))) => (auth, v),
            Ok((auth, Found::Memo(encoded))) => {
                return Answer::Memo(MemoHit {
                    mode: auth.mode.clone(),
                    encoded,
                });
            }
            Err(deny) => return Answer::Decided(Decision::Deny(deny)),
        };
        let entry = v.entry.clone();
        let decision = self.finish(auth, v, &asks, now).await;
        match (entry, &decision) {
            // A fresh encoding was offered (and refused) in `cached`; a
            // stale one (its upstream token due for renewal) is replaced.
            (Some(entry), Decision::Allow(a))
                if asks.nothing(self)
                    && entry.memo.load().as_ref().is_none_or(|m| now >= m.until) =>
            {
                let encoded = Arc::new(Encoded {
                    bytes: encode(a),
                    until: a
                        .upstream_token
                        .as_ref()
                        .map_or(i64::MAX, |u| u.fresh_until),
                });
                // Another request may store the same bytes at the same time.
                entry.memo.store(Some(encoded.clone()));
                Answer::Memo(MemoHit {
                    mode: auth.mode.clone(),
                    encoded,
                })
            }
            _ => Answer::Decided(decision),
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
        self.resolve_role(auth, &mut v.session, &asks)
            .map_err(Decision::Deny)?;
        let elevated = self
            .elevation_state(&mut v.session, v.token.as_ref(), &asks, now)
            .elevated;
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

    fn resolve_role(
        &self,
        auth: &Authenticator,
        session: &mut Session,
        asks: &Asks<'_>,
    ) -> Result<(), Deny> {
        session::resolve_role(session, asks.role).map_err(|e| {
            let reason = match e {
                RoleError::NotAllowed => DenyReason::RoleNotAllowed,
                RoleError::Missing => invalid_reason(auth),
            };
            Deny {
                reason,
                mode: Some(auth.mode.clone()),
            }
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
    ) -> ElevationState {
        let no = |e| ElevationState {
            elevated: false,
            grant_exp: None,
            failure: Some(e),
        };
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
            return ElevationState {
                elevated: true,
                grant_exp: None,
                failure: None,
            };
        }
        session.remove(claim);
        let Some(el) = &self.elevation else {
            return no(GrantError::Missing);
        };
        let Some(user) = session.user_id() else {
            return no(GrantError::Missing);
        };
        let Some(grant) = &asks.grant else {
            return no(GrantError::Missing);
        };
        let Some(token) = token else {
            return no(GrantError::Mismatch);
        };
        match el.grants.verify(grant, &user, &token.raw, now) {
            Ok(exp) => {
                session.insert(claim, Value::String(user));
                ElevationState {
                    elevated: true,
                    grant_exp: Some(exp),
                    failure: None,
                }
            }
            Err(e) => no(e),
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
            mut session,
            token,
            facts,
            slot,
            ..
        } = verified;
        if let Err(deny) = self.resolve_role(auth, &mut session, asks) {
            return Decision::Deny(deny);
        }
        match asks.policies(self) {
            Ok(0) => {}
            Ok(mask) => {
                let role = session.get_str(session::ROLE);
                if let Err((failed, reason)) = self.policies.check(mask, &facts, role) {
                    self.policy_counters[failed].1.inc();
                    return Decision::deny(reason, Some(auth.mode.clone()));
                }
                for i in crate::policy::bits(mask) {
                    self.policy_counters[i].0.inc();
                }
            }
            Err(reason) => return Decision::deny(reason, Some(auth.mode.clone())),
        }
        let ElevationState {
            elevated,
            grant_exp,
            failure: grant_error,
        } = self.elevation_state(&mut session, token.as_ref(), asks, now);
        // Without an elevation config, an Envoy route that asks for elevation
        // can only be satisfied by an elevated token (fail closed). Even an
        // elevated request is refused when the route's requirement cannot be
        // read (an unknown context value, a path with no single reading):
        // such a config or request is broken.
        let must = match (&self.elevation, asks.elevation(self)) {
            (_, Err(reason)) => Err(reason),
            (_, Ok(false)) => Ok(false),
            (_, Ok(true)) if elevated => Ok(false),
            (Some(el), Ok(true)) => el.must_elevate(session.user_id().as_deref()).await,
            (None, Ok(true)) => Ok(true),
        };
        match must {
            Ok(false) => {}
            Ok(true) => {
                self.metrics
                    .elevation_failure(grant_error.unwrap_or(GrantError::Missing).into());
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
        let upstream_token = match &self.upstream {
            None => None,
            Some(u) => {
                // Never beyond the caller's token, nor, when a grant made
                // the session elevated, beyond the grant.
                let exp = match (token.as_ref().and_then(|t| t.exp), grant_exp) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                match upstream_header(u, slot.as_ref(), &session, elevated, exp, now) {
                    Ok(h) => Some(h),
                    Err(MintError::Expired) => {
                        return Decision::deny(DenyReason::TokenExpired, Some(auth.mode.clone()));
                    }
                    Err(MintError::Signing) => {
                        return Decision::deny(DenyReason::InternalError, Some(auth.mode.clone()));
                    }
                }
            }
        };
        let extra_metadata = self
            .metadata
            .iter()
            .filter_map(|f| {
                Some(ExtraField {
                    key: f.key.clone(),
                    header: f.header.clone(),
                    value: session::hasura_string(session.get(&f.variable)?),
                })
            })
            .collect();
        Decision::Allow(Allow {
            session,
            headers,
            mode: auth.mode.clone(),
            elevated,
            headers_to_remove,
            upstream_token,
            extra_metadata,
        })
    }
}

/// Whether a request is elevated, until when a grant makes it so, and why
/// it is not.
struct ElevationState {
    elevated: bool,
    grant_exp: Option<i64>,
    failure: Option<GrantError>,
}

/// The upstream token for a decided session: the one kept with the token's
/// cache entry when it was signed for the same role and elevation and is
/// not due for renewal, else a new one (then kept there).
fn upstream_header(
    tokens: &UpstreamTokens,
    slot: Option<&Arc<CachedToken>>,
    session: &Session,
    elevated: bool,
    caller_exp: Option<i64>,
    now: i64,
) -> Result<UpstreamHeader, MintError> {
    let role = session.get_str(session::ROLE).unwrap_or("");
    let header = |m: &crate::upstream::Minted| UpstreamHeader {
        name: tokens.header_name().clone(),
        value: m.value.clone(),
        fresh_until: m.reuse_until,
    };
    if let Some(kept) = slot.and_then(|e| e.upstream.load_full())
        && *kept.role == *role
        && kept.elevated == elevated
        && now < kept.minted.reuse_until
    {
        return Ok(header(&kept.minted));
    }
    let minted = tokens.mint(session, caller_exp, now)?;
    let out = header(&minted);
    if let Some(entry) = slot {
        entry.upstream.store(Some(Arc::new(SignedFor {
            role: role.into(),
            elevated,
            minted,
        })));
    }
    Ok(out)
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

    /// Repeats with an upstream token are answered from the memo, which
    /// carries the same token; no repeat signs again.
    #[tokio::test]
    async fn repeats_with_an_upstream_token_come_from_the_memo() {
        let cfg = crate::upstream::UpstreamTokenConfig {
            header: "authorization".into(),
            scheme: Some("Bearer".into()),
            alg: jsonwebtoken::Algorithm::ES256,
            signing_key: None,
            issuer: "https://a.example".into(),
            audience: vec!["hasura".into()],
            ttl: std::time::Duration::from_secs(300),
            namespace: crate::upstream::HASURA_NAMESPACE.into(),
            format: crate::upstream::ClaimsFormat::Json,
        };
        let tokens = crate::upstream::open_configured(Some(cfg), None, None).unwrap();
        let engine = engine().with_upstream_token(tokens);
        let bearer = format!("Bearer {}", token("u-1"));
        let plain = request(&[("authorization", &bearer)]);
        let first = allow(engine.decide_memo(&plain, encode).await);
        let signed = first.upstream_token.clone().expect("a token").value;
        let mut memo = 0;
        for _ in 0..4 {
            match engine.decide_memo(&plain, encode).await {
                Answer::Memo(m) => {
                    memo += 1;
                    assert!(String::from_utf8_lossy(m.bytes()).contains(&*signed));
                }
                Answer::Decided(Decision::Allow(a)) => {
                    assert_eq!(a.upstream_token.unwrap().value, signed);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(memo >= 3, "{memo} of 4 repeats from the memo");
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
        format!("{:?} {} {:?}", a.headers, a.elevated, a.upstream_token)
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
