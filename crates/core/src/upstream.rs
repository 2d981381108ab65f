//! Tokens for the upstream (docs/configuration.md, "Upstream token"): on
//! every allow, a short JWT signed by authgate that carries the decided
//! session in Hasura's JWT claims format, so that Hasura (v2 or DDN) runs in
//! plain JWT mode against authgate's JWKS and no proxy holds an admin
//! secret. The public keys are published at `/.well-known/jwks.json`.
//!
//! Rotation: a reload with another key publishes the new key at once but
//! keeps signing with the old one for [`PUBLISH_AHEAD`] (twice the JWKS
//! answer's `max-age`), so a verifier that cached the JWKS has fetched the
//! new key before it sees a token signed with it; the old key then stays
//! published until the last token it signed has expired.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::Jwk;
use serde_json::{Map, Value};

use crate::redact::Secret;
use crate::session::{self, Session};
use crate::signing::SigningKey;

/// How long a JWKS answer may be cached (`Cache-Control: max-age`).
pub const JWKS_MAX_AGE: i64 = 60;

/// How long a new key is published before it signs: twice what a verifier
/// may cache, so one failed refresh does not refuse its tokens.
pub const PUBLISH_AHEAD: i64 = 2 * JWKS_MAX_AGE;

/// How long past its last token's expiry a replaced key stays published
/// (clock skew between authgate and verifiers).
const RETIRE_MARGIN: i64 = 60;

/// Hasura v2's default claims namespace.
pub const HASURA_NAMESPACE: &str = "https://hasura.io/jwt/claims";

/// How the namespace's value is written (Hasura's `claims_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimsFormat {
    /// A JSON object.
    Json,
    /// The object serialized into a JSON string.
    StringifiedJson,
}

/// `definition.upstreamToken`.
#[derive(Debug, Clone)]
pub struct UpstreamTokenConfig {
    /// The request header that carries the token (lower case).
    pub header: String,
    /// Written before the token with one space (`Bearer`); `None`: the
    /// token alone.
    pub scheme: Option<String>,
    pub alg: Algorithm,
    /// Private key PEM; `None` generates a key at start.
    pub signing_key: Option<Secret>,
    /// `iss`, also the base of the published discovery document.
    pub issuer: String,
    /// `aud`: none, one (a string) or several (an array).
    pub audience: Vec<String>,
    pub ttl: Duration,
    pub namespace: String,
    pub format: ClaimsFormat,
}

/// The signer of upstream tokens, rebuilt on reload from the previous one.
pub struct UpstreamTokens {
    pub cfg: UpstreamTokenConfig,
    /// The key of this config.
    key: Arc<SigningKey>,
    /// Until `switch_at`, the previous config's key still signs.
    outgoing: Option<Arc<SigningKey>>,
    switch_at: i64,
    /// Keys replaced by reloads, published until the given Unix time.
    retired: Vec<(Arc<SigningKey>, i64)>,
    /// `cfg.ttl` in seconds.
    ttl: i64,
    /// The longest ttl the current key has signed with (configs reloaded
    /// with the same key may have had a longer one than this).
    signed_ttl: i64,
    /// `cfg.header`, shared with every allow.
    header: Arc<str>,
}

/// Why no token was signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintError {
    /// The caller's credential expires now: a token would be born expired.
    Expired,
    /// The key failed to sign (logged).
    Signing,
}

/// A signed token as the upstream gets it.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The header value: scheme, space, token (or the token alone).
    pub value: Arc<str>,
    /// The token's `exp`.
    pub exp: i64,
    /// Until when a repeat of the same session may reuse it: half its
    /// lifetime, or its `exp` when a new one could not live longer (the
    /// caller's credential expires first).
    pub reuse_until: i64,
}

/// The signer a config asks for, if any; on reload `previous` is the
/// running engine's ([`UpstreamTokens::open`]).
pub fn open_configured(
    cfg: Option<UpstreamTokenConfig>,
    previous: Option<&UpstreamTokens>,
    grant_kid: Option<&str>,
) -> Result<Option<Arc<UpstreamTokens>>, String> {
    let now = crate::clock::unix_now();
    let Some(cfg) = cfg else {
        return Ok(None);
    };
    let tokens =
        UpstreamTokens::open(cfg, previous, now).map_err(|e| format!("upstreamToken: {e}"))?;
    if let Some(kid) = grant_kid {
        tokens.check_grant_key(kid, now)?;
    }
    Ok(Some(Arc::new(tokens)))
}

impl UpstreamTokens {
    /// The signer for `cfg`. On reload, `previous` lends its key when the
    /// configured key is the same (or both generated), and otherwise starts
    /// a rotation from it.
    pub fn open(
        cfg: UpstreamTokenConfig,
        previous: Option<&UpstreamTokens>,
        now: i64,
    ) -> Result<Self, String> {
        let ttl = i64::try_from(cfg.ttl.as_secs()).unwrap_or(i64::MAX / 4);
        let header: Arc<str> = cfg.header.as_str().into();
        let same_key = |p: &&UpstreamTokens| match (&p.cfg.signing_key, &cfg.signing_key) {
            (None, None) => p.cfg.alg == cfg.alg,
            (Some(a), Some(b)) => p.cfg.alg == cfg.alg && a.0 == b.0,
            _ => false,
        };
        if let Some(p) = previous.filter(same_key) {
            let mut retired = p.live_retired(now);
            // A reload within a rotation: the outgoing key signs with this
            // config's ttl until the switch.
            if let Some(o) = p.outgoing.as_ref().filter(|_| now < p.switch_at) {
                let until = p
                    .switch_at
                    .saturating_add(ttl.max(p.signed_ttl))
                    .saturating_add(RETIRE_MARGIN);
                for (k, u) in &mut retired {
                    if Arc::ptr_eq(k, o) {
                        *u = (*u).max(until);
                    }
                }
            }
            return Ok(UpstreamTokens {
                key: p.key.clone(),
                outgoing: p.outgoing.clone(),
                switch_at: p.switch_at,
                retired,
                ttl,
                signed_ttl: ttl.max(p.signed_ttl),
                header,
                cfg,
            });
        }
        let key = Arc::new(match &cfg.signing_key {
            Some(pem) => SigningKey::from_pem(cfg.alg, &pem.0)?,
            None => {
                tracing::warn!(
                    "upstreamToken.signingKey is not set: a key was generated; upstream tokens will not verify after a restart or across replicas"
                );
                SigningKey::generate(cfg.alg)?
            }
        });
        let Some(p) = previous else {
            return Ok(UpstreamTokens {
                key,
                outgoing: None,
                switch_at: i64::MIN,
                retired: Vec::new(),
                ttl,
                signed_ttl: ttl,
                header,
                cfg,
            });
        };
        // The previous signer keeps signing until verifiers have the new
        // key; every key it or its predecessors used stays published until
        // their tokens have expired.
        let old = p.signer(now).clone();
        let switch_at = now.saturating_add(PUBLISH_AHEAD);
        let mut retired = p.live_retired(now);
        // Until the switch the old key signs with this config's ttl, and
        // tokens it signed before with the previous one.
        let old_until = switch_at
            .saturating_add(p.signed_ttl.max(ttl))
            .saturating_add(RETIRE_MARGIN);
        for k in [Some(&p.key), p.outgoing.as_ref()].into_iter().flatten() {
            let until = if Arc::ptr_eq(k, &old) {
                old_until
            } else {
                now.saturating_add(p.signed_ttl)
                    .saturating_add(RETIRE_MARGIN)
            };
            retired.push((k.clone(), until));
        }
        retired.retain(|(k, _)| k.kid != key.kid);
        let outgoing = (old.kid != key.kid).then_some(old);
        Ok(UpstreamTokens {
            key,
            switch_at: if outgoing.is_some() {
                switch_at
            } else {
                i64::MIN
            },
            outgoing,
            retired,
            ttl,
            signed_ttl: ttl,
            header,
            cfg,
        })
    }

    fn live_retired(&self, now: i64) -> Vec<(Arc<SigningKey>, i64)> {
        self.retired
            .iter()
            .filter(|(_, until)| now < *until)
            .cloned()
            .collect()
    }

    /// The key that signs at `now`.
    fn signer(&self, now: i64) -> &Arc<SigningKey> {
        match &self.outgoing {
            Some(old) if now < self.switch_at => old,
            _ => &self.key,
        }
    }

    /// The request header the token replaces (lower case).
    pub fn header_name(&self) -> &Arc<str> {
        &self.header
    }

    /// The public keys to publish at `now`: the signing key, the next one
    /// during a rotation, and replaced keys whose tokens may still be alive.
    /// Each key once.
    pub fn published(&self, now: i64) -> Vec<&Jwk> {
        let mut out: Vec<&Jwk> = Vec::with_capacity(2 + self.retired.len());
        let keys = std::iter::once(&self.key)
            .chain(self.outgoing.iter().filter(|_| now < self.switch_at))
            .chain(
                self.retired
                    .iter()
                    .filter(|(_, until)| now < *until)
                    .map(|(k, _)| k),
            );
        for k in keys {
            if !out
                .iter()
                .any(|j| j.common.key_id.as_deref() == Some(&k.kid))
            {
                out.push(&k.jwk);
            }
        }
        out
    }

    /// Refuses a grant key that is (or, within a rotation, was) one of the
    /// upstream token keys: one key for two jobs would publish one `kid`
    /// for both.
    pub fn check_grant_key(&self, grant_kid: &str, now: i64) -> Result<(), String> {
        if self.kids(now).contains(&grant_kid) {
            return Err(
                "upstreamToken.signingKey: use a key other than elevation.grant.signingKey (also one that signed upstream tokens before)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The key ids published at `now`.
    pub fn kids(&self, now: i64) -> Vec<&str> {
        self.published(now)
            .into_iter()
            .filter_map(|j| j.common.key_id.as_deref())
            .collect()
    }

    /// `/.well-known/openid-configuration` (OpenID Connect Discovery 1.0,
    /// RFC 8414): where verifiers find the keys.
    pub fn discovery(&self) -> Value {
        let issuer = self.cfg.issuer.trim_end_matches('/');
        serde_json::json!({
            "issuer": self.cfg.issuer,
            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            "id_token_signing_alg_values_supported": [crate::keys::algorithm_name(self.cfg.alg)],
            "token_endpoint_auth_methods_supported": ["none"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": ["iss", "sub", "aud", "iat", "exp", self.cfg.namespace],
        })
    }

    /// Signs a token for `session` (after role resolution and elevation):
    /// the resolved role as default and only allowed role, every other
    /// session variable as Hasura renders it, `sub` = the user id when there
    /// is one, and `exp` = `min(now + ttl, caller_exp)`.
    pub fn mint(
        &self,
        session: &Session,
        caller_exp: Option<i64>,
        now: i64,
    ) -> Result<Minted, MintError> {
        let wanted = now.saturating_add(self.ttl);
        let exp = caller_exp.map_or(wanted, |c| c.min(wanted));
        if exp <= now {
            return Err(MintError::Expired);
        }
        let mut ns = Map::with_capacity(session.len() + 1);
        if let Some(role) = session.get_str(session::ROLE) {
            ns.insert(session::DEFAULT_ROLE.into(), Value::String(role.into()));
            ns.insert(
                session::ALLOWED_ROLES.into(),
                Value::Array(vec![Value::String(role.into())]),
            );
        }
        for (k, v) in session.iter() {
            if k != session::ROLE {
                ns.insert(k.into(), Value::String(session::hasura_string(v)));
            }
        }
        let ns = match self.cfg.format {
            ClaimsFormat::Json => Value::Object(ns),
            ClaimsFormat::StringifiedJson => Value::String(Value::Object(ns).to_string()),
        };
        let mut claims = Map::with_capacity(7);
        claims.insert("iss".into(), Value::String(self.cfg.issuer.clone()));
        match self.cfg.audience.as_slice() {
            [] => {}
            [one] => {
                claims.insert("aud".into(), Value::String(one.clone()));
            }
            many => {
                claims.insert(
                    "aud".into(),
                    Value::Array(many.iter().cloned().map(Value::String).collect()),
                );
            }
        }
        if let Some(user) = session.user_id_text() {
            claims.insert("sub".into(), Value::String(user.into_owned()));
        }
        claims.insert("iat".into(), Value::from(now));
        claims.insert("exp".into(), Value::from(exp));
        claims.insert(self.cfg.namespace.clone(), ns);
        let token = match self.signer(now).sign(&claims) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign an upstream token");
                return Err(MintError::Signing);
            }
        };
        let value: Arc<str> = match &self.cfg.scheme {
            Some(s) => format!("{s} {token}").into(),
            None => token.into(),
        };
        // Reused for half its life; a token the caller's `exp` cuts short
        // is renewed a little before it ends (a new one would end as soon).
        let reuse_until = if exp < wanted {
            exp - (exp - now).min(10) / 2
        } else {
            now.saturating_add(self.ttl / 2)
        };
        Ok(Minted {
            value,
            exp,
            reuse_until,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(key: Option<&str>) -> UpstreamTokenConfig {
        UpstreamTokenConfig {
            header: "authorization".into(),
            scheme: Some("Bearer".into()),
            alg: Algorithm::ES256,
            signing_key: key.map(|k| Secret(k.into())),
            issuer: "https://authgate.example".into(),
            audience: vec!["hasura".into()],
            ttl: Duration::from_secs(300),
            namespace: HASURA_NAMESPACE.into(),
            format: ClaimsFormat::Json,
        }
    }

    fn session() -> Session {
        let mut s = Session::new();
        s.insert(session::USER_ID, Value::String("u-1".into()));
        s.insert(session::ROLE, Value::String("editor".into()));
        s.insert("x-hasura-org-id", Value::from(7));
        s
    }

    fn claims(m: &Minted) -> Value {
        let token = m.value.strip_prefix("Bearer ").expect("scheme");
        Value::Object(
            crate::jwt::parse(token)
                .expect("parses")
                .claims()
                .expect("claims"),
        )
    }

    #[test]
    fn tokens_carry_the_session_in_hasura_claims_and_never_outlive_the_caller() {
        let t = UpstreamTokens::open(config(None), None, 1000).expect("opens");
        let m = t.mint(&session(), None, 1000).expect("mints");
        assert_eq!((m.exp, m.reuse_until), (1300, 1150));
        let c = claims(&m);
        assert_eq!(c["iss"], "https://authgate.example");
        assert_eq!(c["aud"], "hasura");
        assert_eq!(c["sub"], "u-1");
        assert_eq!(c["iat"], 1000);
        let ns = &c[HASURA_NAMESPACE];
        assert_eq!(ns["x-hasura-default-role"], "editor");
        assert_eq!(ns["x-hasura-allowed-roles"], serde_json::json!(["editor"]));
        assert_eq!(ns["x-hasura-org-id"], "7");
        assert_eq!(ns["x-hasura-user-id"], "u-1");
        assert!(ns.get("x-hasura-role").is_none());

        let m = t.mint(&session(), Some(1100), 1000).expect("mints");
        assert_eq!((m.exp, m.reuse_until), (1100, 1095));
        assert_eq!(
            t.mint(&session(), Some(1000), 1000).unwrap_err(),
            MintError::Expired
        );

        let mut cfg = config(None);
        cfg.format = ClaimsFormat::StringifiedJson;
        cfg.scheme = None;
        cfg.audience = vec![];
        let t = UpstreamTokens::open(cfg, None, 1000).expect("opens");
        let m = t.mint(&session(), None, 1000).expect("mints");
        let c = crate::jwt::parse(&m.value).unwrap().claims().unwrap();
        let c = Value::Object(c);
        assert!(c.get("aud").is_none());
        let ns: Value = serde_json::from_str(c[HASURA_NAMESPACE].as_str().unwrap()).unwrap();
        assert_eq!(ns["x-hasura-default-role"], "editor");
    }

    #[test]
    fn a_new_key_is_published_before_it_signs_and_the_old_one_until_its_tokens_expire() {
        let first = UpstreamTokens::open(config(None), None, 1000).expect("opens");
        let old_kid = first.key.kid.clone();
        // A reload with the same (generated) key keeps it.
        let same = UpstreamTokens::open(config(None), Some(&first), 1010).expect("opens");
        assert_eq!(same.key.kid, old_kid);
        assert_eq!(same.kids(1010), [old_kid.as_str()]);

        let pem = include_str!("../../../tests/fixtures/ec256.key");
        let next = UpstreamTokens::open(config(Some(pem)), Some(&same), 2000).expect("opens");
        let new_kid = next.key.kid.clone();
        assert_ne!(new_kid, old_kid);
        let kid_of = |m: &Minted| {
            let token = m.value.strip_prefix("Bearer ").unwrap();
            crate::jwt::parse(token).unwrap().kid.clone().unwrap()
        };
        // Published at once, signing after PUBLISH_AHEAD.
        assert_eq!(next.kids(2000), [new_kid.as_str(), old_kid.as_str()]);
        assert_eq!(kid_of(&next.mint(&session(), None, 2000).unwrap()), old_kid);
        let switch = 2000 + PUBLISH_AHEAD;
        assert_eq!(
            kid_of(&next.mint(&session(), None, switch).unwrap()),
            new_kid
        );
        // The old key's last token expires at switch + ttl.
        let gone = switch + 300 + RETIRE_MARGIN;
        assert!(next.kids(gone - 1).contains(&old_kid.as_str()));
        assert_eq!(next.kids(gone), [new_kid.as_str()]);
        // A later reload carries the retired key along.
        let later = switch + 10;
        let again = UpstreamTokens::open(config(Some(pem)), Some(&next), later).expect("opens");
        assert!(again.kids(later).contains(&old_kid.as_str()));
        assert_eq!(
            kid_of(&again.mint(&session(), None, later).unwrap()),
            new_kid
        );
        // A reload within the rotation that lengthens the ttl keeps the
        // old key published as long as what it signs with that ttl lives.
        let mut longer = config(Some(pem));
        longer.ttl = Duration::from_secs(3000);
        let within = UpstreamTokens::open(longer, Some(&next), 2010).expect("opens");
        let m = within.mint(&session(), None, 2010).unwrap();
        assert_eq!(kid_of(&m), old_kid);
        assert!(within.kids(m.exp).contains(&old_kid.as_str()));
        assert!(within.kids(switch + 3000).contains(&old_kid.as_str()));
        assert!(
            !within
                .kids(switch + 3000 + RETIRE_MARGIN)
                .contains(&old_kid.as_str())
        );

        // A long ttl, then a short one with the same key, then a new key:
        // the old key stays as long as the long-lived tokens.
        let mut long = config(None);
        long.ttl = Duration::from_secs(3000);
        let a = UpstreamTokens::open(long, None, 5000).expect("opens");
        let a_kid = a.key.kid.clone();
        let b = UpstreamTokens::open(config(None), Some(&a), 5100).expect("opens");
        let c = UpstreamTokens::open(config(Some(pem)), Some(&b), 5200).expect("opens");
        let c_switch = 5200 + PUBLISH_AHEAD;
        assert!(c.kids(c_switch + 2999).contains(&a_kid.as_str()));
    }
}
