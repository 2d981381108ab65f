//! The ways a mode authenticates (apiKey, jwt, introspection, webhook,
//! noAuth) and the loop that tries them in order.

use std::borrow::Cow;
use std::sync::Arc;

use jsonwebtoken::Algorithm;
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::asks::Asks;
use super::memo::Memo;
use super::token_cache::{CachedToken, TokenCache};
use super::{AccessToken, Engine, HASURA_MODE_HEADER, ID_HEADER, MODE_HEADER};
use crate::claims::{self, ClaimsConfig};
use crate::decision::{Deny, DenyReason, ModeRef};
use crate::introspection::{self, Introspector};
use crate::jwks::JwksCache;
use crate::jwt::{self, ClaimRules, JwtError};
use crate::keys::KeySet;
use crate::policy::Facts;
use crate::redact::Secret;
use crate::request::{Credential, Request, TokenLocation};
use crate::rules::SecurityRules;
use crate::session::Session;
use crate::webhook::WebhookAuth;

pub(super) struct Authenticator {
    pub(super) mode: ModeRef,
    pub(super) kind: AuthKind,
    pub(super) rules: SecurityRules,
    pub(super) only_when_selected: bool,
}

pub(super) enum AuthKind {
    ApiKey {
        location: TokenLocation,
        value: Secret,
        session: Session,
    },
    Jwt(Box<JwtAuth>),
    Introspection(Arc<Introspector>),
    Webhook(Box<WebhookAuth>),
    NoAuth {
        session: Session,
    },
}

pub(super) struct JwtAuth {
    pub(super) location: TokenLocation,
    pub(super) keys: Keys,
    pub(super) pinned: Option<Algorithm>,
    pub(super) audience: Vec<String>,
    pub(super) issuer: Option<String>,
    pub(super) skew: u64,
    pub(super) require_exp: bool,
    pub(super) claims: ClaimsConfig,
}

pub(super) enum Keys {
    Fixed(Arc<KeySet>),
    Remote(Arc<JwksCache>),
}

/// How one mode fared.
pub(super) enum Outcome<'r, M: Memo> {
    /// No credential at its location: try the next mode.
    Absent,
    /// A credential was there and was refused.
    Invalid(DenyReason),
    Found(Found<'r, M>),
}

/// What a mode that accepted the credential hands on.
pub(super) enum Found<'r, M: Memo> {
    Verified(Verified<'r>),
    /// A cached token whose allow was encoded for an equivalent request
    /// ([`Engine::decide_memo`]); never built when `M` is [`NoMemo`].
    Memo(M::Hit),
}

/// A mode verified a session: what role, elevation and rendering start from.
pub(super) struct Verified<'r> {
    pub(super) session: Session,
    pub(super) token: Option<AccessToken<'r>>,
    /// The token-cache entry this session was served from (a repeat).
    pub(super) entry: Option<Arc<CachedToken>>,
    /// The token-cache entry of this token, served from or just stored:
    /// where the upstream token signed for it is kept.
    pub(super) slot: Option<Arc<CachedToken>>,
    /// Which policies the credential satisfies.
    pub(super) facts: Facts,
}

impl Engine {
    /// A session from a mode without claims of its own (apiKey, noAuth,
    /// webhook): policies read the session as the claims.
    fn verified_session<'r>(&self, mode_id: &str, session: Session) -> Verified<'r> {
        let facts = if self.policies.is_empty() {
            Facts::default()
        } else {
            let f = self.policies.facts(mode_id, &session.to_json());
            self.policies.with_role(f, &session)
        };
        Verified {
            session,
            token: None,
            entry: None,
            slot: None,
            facts,
        }
    }
}

impl Engine {
    /// Modes in order; the first verified session wins (RelyAuth's order;
    /// an invalid credential never falls through to `noAuth`).
    pub(super) async fn first_verified<'s, 'r, M: Memo>(
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
            // A mode type selects the modes of that type (RelyAuth); any
            // other value names one mode's id (DDN's `alternativeModes`).
            let selected = |m: &str| {
                m == auth.mode.kind || (!super::MODE_ORDER.contains(&m) && m == &*auth.mode.id)
            };
            let named = |v: Option<&str>| v == Some(&*auth.mode.id);
            if mode_filter.is_some_and(|m| !selected(m))
                || id_filter.is_some_and(|id| id != &*auth.mode.id)
                || (auth.only_when_selected && !named(mode_filter) && !named(id_filter))
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
                Outcome::Found(Found::Verified(
                    self.verified_session(&auth.mode.id, session.clone()),
                ))
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
                        Outcome::Found(Found::Verified(
                            self.verified_session(&auth.mode.id, session.clone()),
                        ))
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
                    Ok(session) => Outcome::Found(Found::Verified(
                        self.verified_session(&auth.mode.id, session),
                    )),
                    Err(reason) => Outcome::Invalid(reason),
                }
            }
            AuthKind::Introspection(i) => match req.credential(&i.cfg.location) {
                Credential::Absent => Outcome::Absent,
                Credential::Ambiguous => Outcome::Invalid(DenyReason::InvalidToken),
                Credential::Present(_) if blocked() => Outcome::Invalid(DenyReason::BlockedByRule),
                Credential::Present(token) => {
                    match self
                        .introspect::<M>(index, &auth.mode.id, i, token, now, asks)
                        .await
                    {
                        Ok(found) => Outcome::Found(found),
                        Err(reason) => {
                            tracing::debug!(mode = %auth.mode.id, reason = reason.as_str(), "token refused");
                            Outcome::Invalid(reason)
                        }
                    }
                }
            },
            AuthKind::Jwt(j) => match req.credential(&j.location) {
                Credential::Absent => Outcome::Absent,
                Credential::Ambiguous => Outcome::Invalid(DenyReason::InvalidToken),
                Credential::Present(_) if blocked() => Outcome::Invalid(DenyReason::BlockedByRule),
                Credential::Present(token) => {
                    match self
                        .verify_jwt::<M>(index, &auth.mode.id, j, token, now, asks)
                        .await
                    {
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

    #[allow(clippy::too_many_arguments)]
    async fn verify_jwt<'r, M: Memo>(
        &self,
        index: usize,
        mode_id: &str,
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
        let token = match self.cached::<M>(cache_key.as_ref(), token, &rules, now, asks)? {
            Cached::Hit(found) => return Ok(found),
            Cached::Miss(token) => token,
        };
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
        let claims = Value::Object(claims);
        let facts = self.policies.facts(mode_id, &claims);
        let session = claims::extract_owned(&j.claims, claims).map_err(|_| JwtError::Claims)?;
        let facts = self.policies.with_role(facts, &session);
        let slot = match (&self.token_cache, cache_key) {
            (Some(cache), Some(key)) => {
                cache.insert(key, &session, exp, nbf, now, cache.ttl(), facts)
            }
            _ => None,
        };
        Ok(Found::Verified(Verified {
            session,
            token: Some(AccessToken { raw: token, exp }),
            entry: None,
            slot,
            facts,
        }))
    }

    /// The token's cached verification, when the cache holds a fresh one;
    /// otherwise the token back. Time validity is checked on every hit.
    fn cached<'r, M: Memo>(
        &self,
        key: Option<&[u8; 32]>,
        token: Cow<'r, str>,
        rules: &ClaimRules<'_>,
        now: i64,
        asks: &Asks<'r>,
    ) -> Result<Cached<'r, M>, JwtError> {
        let (Some(cache), Some(key)) = (&self.token_cache, key) else {
            return Ok(Cached::Miss(token));
        };
        if let Some(hit) = cache.get(key) {
            self.metrics.token_cache_hit.inc();
            hit.check_time(now, rules)?;
            if asks.nothing(self)
                && self.policies_pass_memo(asks, &hit.facts)
                && let Some(memo) = M::hit(&hit, now)
            {
                self.count_memo_policies(asks);
                return Ok(Cached::Hit(Found::Memo(memo)));
            }
            // The encoding is ours; failing to read it back is a bug, and
            // the token is simply verified again.
            if let Some(session) = Session::from_compact(&hit.session) {
                let exp = (hit.exp != i64::MAX).then_some(hit.exp);
                return Ok(Cached::Hit(Found::Verified(Verified {
                    session,
                    token: Some(AccessToken { raw: token, exp }),
                    facts: hit.facts,
                    slot: Some(hit.clone()),
                    entry: Some(hit),
                })));
            }
        }
        self.metrics.token_cache_miss.inc();
        Ok(Cached::Miss(token))
    }

    /// An opaque token, asked about at the introspection endpoint unless a
    /// fresh active answer is cached ([`crate::introspection`]).
    #[allow(clippy::too_many_arguments)]
    async fn introspect<'r, M: Memo>(
        &self,
        index: usize,
        mode_id: &str,
        i: &Introspector,
        token: Cow<'r, str>,
        now: i64,
        asks: &Asks<'r>,
    ) -> Result<Found<'r, M>, DenyReason> {
        let cfg = &i.cfg;
        // RFC 7662 makes `exp` optional: the endpoint said the token is
        // active, and its `exp`, when given, is still enforced.
        let rules = ClaimRules {
            audience: &cfg.audience,
            issuer: cfg.issuer.as_deref(),
            skew: cfg.allowed_skew,
            require_exp: false,
        };
        let cache_key = match (&self.token_cache, cfg.cache_ttl.is_zero()) {
            (Some(_), false) => Some(TokenCache::key(index, &token)),
            _ => None,
        };
        let invalid = |_| DenyReason::InvalidToken;
        let token = match self
            .cached::<M>(cache_key.as_ref(), token, &rules, now, asks)
            .map_err(invalid)?
        {
            Cached::Hit(found) => return Ok(found),
            Cached::Miss(token) => token,
        };
        let claims = i.introspect(&token).await.map_err(|f| match f {
            introspection::Failure::Inactive => DenyReason::InvalidToken,
            introspection::Failure::Unavailable(why) => {
                tracing::warn!(endpoint = %i.shown_endpoint(), problem = %why, "introspection unavailable");
                DenyReason::InternalError
            }
        })?;
        let exp = jwt::check_claims(&claims, &rules, now).map_err(invalid)?;
        let nbf = claims.get("nbf").and_then(Value::as_i64);
        let claims = Value::Object(claims);
        let facts = self.policies.facts(mode_id, &claims);
        let session =
            claims::extract_owned(&cfg.claims, claims).map_err(|_| DenyReason::InvalidToken)?;
        let facts = self.policies.with_role(facts, &session);
        let slot = match (&self.token_cache, cache_key) {
            (Some(cache), Some(key)) => {
                cache.insert(key, &session, exp, nbf, now, cfg.cache_ttl, facts)
            }
            _ => None,
        };
        Ok(Found::Verified(Verified {
            session,
            token: Some(AccessToken { raw: token, exp }),
            entry: None,
            slot,
            facts,
        }))
    }
}

/// A token-cache lookup: a verified session, or the token to verify.
enum Cached<'r, M: Memo> {
    Hit(Found<'r, M>),
    Miss(Cow<'r, str>),
}

/// What a broken session from this mode is reported as.
pub(super) fn invalid_reason(auth: &Authenticator) -> DenyReason {
    match auth.kind {
        AuthKind::Jwt(_) | AuthKind::Introspection(_) => DenyReason::InvalidToken,
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
