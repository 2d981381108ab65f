//! What an [`Engine`](super::Engine) is built from: its settings and its
//! modes, as `config` reads them from `definition.settings` and
//! `definition.modes`.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::claims::ClaimsConfig;
use crate::introspection::IntrospectionMode;
use crate::jwks::FetchOptions;
use crate::keys::KeySet;
use crate::redact::Secret;
use crate::request::TokenLocation;
use crate::rules::SecurityRules;
use crate::session::Session;
use crate::webhook::WebhookMode;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Fixed JWKS refresh period; `None` follows Cache-Control.
    pub reload_interval: Option<Duration>,
    /// At most one unknown-`kid` refetch per JWKS URL per this period.
    pub unknown_kid_cooldown: Duration,
    /// Verified-token cache size (0 disables it).
    pub token_cache_max_entries: u64,
    /// Longest a verified token stays cached (never past its `exp`).
    pub token_cache_ttl: Duration,
    /// Longest one decision (or one WebAuthn call) may take, waiting for a
    /// slot and for dependencies included; past it the answer is
    /// `internal_error`.
    pub decision_timeout: Duration,
    /// The proxy in front of the forward-auth door (`/check`), whose headers
    /// alone describe the original request.
    pub forward_auth: crate::forward_auth::ForwardAuthProxy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            reload_interval: None,
            unknown_kid_cooldown: Duration::from_secs(30),
            token_cache_max_entries: 100_000,
            token_cache_ttl: Duration::from_secs(300),
            decision_timeout: Duration::from_secs(10),
            forward_auth: Default::default(),
        }
    }
}

/// One entry of `definition.modes`.
#[derive(Debug)]
pub struct Mode {
    pub id: Arc<str>,
    pub kind: ModeKind,
    pub rules: SecurityRules,
    /// `onlyWhenSelected`: the mode runs only for requests whose selection
    /// header names its id (DDN's `alternativeModes`).
    pub only_when_selected: bool,
}

#[derive(Debug)]
pub enum ModeKind {
    ApiKey(ApiKeyMode),
    Jwt(Box<JwtMode>),
    Introspection(Box<IntrospectionMode>),
    Webhook(Box<WebhookMode>),
    NoAuth(NoAuthMode),
}

impl ModeKind {
    /// The RelyAuth mode name, also used as the `mode` metric label.
    pub fn name(&self) -> &'static str {
        match self {
            ModeKind::ApiKey(_) => "apiKey",
            ModeKind::Jwt(_) => "jwt",
            ModeKind::Introspection(_) => "introspection",
            ModeKind::Webhook(_) => "webhook",
            ModeKind::NoAuth(_) => "noAuth",
        }
    }
}

/// RelyAuth's fixed evaluation order; `introspection`, authgate's own,
/// goes with the other bearer tokens, after `jwt`.
pub const MODE_ORDER: [&str; 5] = ["apiKey", "jwt", "introspection", "webhook", "noAuth"];

#[derive(Debug)]
pub struct ApiKeyMode {
    pub location: TokenLocation,
    pub value: Secret,
    pub session: Session,
}

#[derive(Debug)]
pub struct NoAuthMode {
    pub session: Session,
}

#[derive(Debug)]
pub struct JwtMode {
    pub location: TokenLocation,
    pub keys: KeySource,
    /// Accepted `aud` values (any of); empty means `aud` is not checked.
    pub audience: Vec<String>,
    pub issuer: Option<String>,
    pub allowed_skew: u64,
    pub require_exp: bool,
    pub claims: ClaimsConfig,
}

#[derive(Debug, Clone)]
pub enum KeySource {
    Fixed(Arc<KeySet>),
    Remote {
        url: String,
        algorithm: Option<Algorithm>,
        /// `key.httpClient`, when given.
        fetch: Option<Box<FetchOptions>>,
        /// `key.oidcIssuer`: then `url` is its discovery document.
        issuer: Option<String>,
    },
}

impl KeySource {
    /// The algorithm tokens must use, when the config pins one.
    pub fn pinned(&self) -> Option<Algorithm> {
        match self {
            KeySource::Fixed(set) => set.keys.first().and_then(|k| k.declared),
            KeySource::Remote { algorithm, .. } => *algorithm,
        }
    }
}
