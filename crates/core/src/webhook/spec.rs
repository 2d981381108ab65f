//! What a `webhook` mode is built from (RelyAuth's webhook mode, as
//! `config` reads it).

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::GoTemplate;
use crate::request::TokenLocation;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookMethod {
    Get,
    Post,
}

/// Which request headers go to the hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// Every header but the excluded ones (`"*"`).
    All,
    /// These (lower-case) headers when present.
    Names(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct AdditionalHeader {
    pub name: String,
    pub path: Option<jmespath::Expression<'static>>,
    pub default: Option<String>,
}

/// RelyAuth's FieldMapping: an object of mappings, or a field (JMESPath
/// `path` with a `default`).
#[derive(Debug, Clone)]
pub enum FieldMapping {
    Object(Vec<(String, FieldMapping)>),
    Field {
        path: Option<jmespath::Expression<'static>>,
        default: Option<Value>,
    },
}

#[derive(Debug, Clone)]
pub enum Transform {
    Jmespath(FieldMapping),
    GoTemplate {
        template: GoTemplate,
        content_type: Option<String>,
    },
}

#[derive(Clone, Default)]
pub struct TlsOptions {
    /// Extra trusted roots, PEM.
    pub root_certs: Vec<String>,
    /// Client certificate and key, PEM (mutual TLS).
    pub identity: Option<String>,
    pub insecure_skip_verify: bool,
    pub include_system_roots: bool,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The identity holds a private key.
        f.debug_struct("TlsOptions")
            .field("root_certs", &self.root_certs.len())
            .field("identity", &self.identity.as_ref().map(|_| "(set)"))
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("include_system_roots", &self.include_system_roots)
            .field("min_version", &self.min_version)
            .field("max_version", &self.max_version)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    pub delay: Duration,
    pub max_delay: Duration,
    pub multiplier: f64,
    /// Statuses worth a retry (connection errors always are).
    pub statuses: Vec<u16>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            multiplier: 1.5,
            statuses: vec![429, 502, 503, 504],
        }
    }
}

/// How authgate authenticates itself to the hook.
#[derive(Clone)]
pub enum HookAuth {
    Basic {
        header: String,
        value: String,
    },
    Token {
        location: TokenLocation,
        value: String,
    },
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        scopes: Vec<String>,
        params: Vec<(String, String)>,
    },
}

impl fmt::Debug for HookAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            HookAuth::Basic { .. } => "basic",
            HookAuth::Token { .. } => "http",
            HookAuth::OAuth2 { .. } => "oauth2",
        };
        write!(f, "HookAuth({kind}, <redacted>)")
    }
}

#[derive(Clone)]
pub struct HttpClientOptions {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Option<Duration>,
    pub pool_max_idle_per_host: Option<usize>,
    pub tls: TlsOptions,
    pub retry: RetryPolicy,
    pub auth: Option<HookAuth>,
    /// Every request through this proxy (`http://` or `https://`);
    /// without it, the `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` environment.
    pub proxy: Option<String>,
}

impl std::fmt::Debug for HttpClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The proxy URL may carry a user and password; `auth` holds
        // credentials (its own `Debug` decides what shows).
        f.debug_struct("HttpClientOptions")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("pool_max_idle_per_host", &self.pool_max_idle_per_host)
            .field("tls", &self.tls)
            .field("retry", &self.retry)
            .field("auth", &self.auth)
            .field("proxy", &self.proxy.as_deref().map(crate::redact::url))
            .finish()
    }
}

impl Default for HttpClientOptions {
    fn default() -> Self {
        HttpClientOptions {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: None,
            pool_max_idle_per_host: None,
            tls: TlsOptions::default(),
            retry: RetryPolicy::default(),
            auth: None,
            proxy: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WebhookMode {
    pub url: String,
    /// The HTTP client built from `client` (built at load so TLS errors are config errors).
    pub http: reqwest::Client,
    pub method: HookMethod,
    pub forward: Option<Forward>,
    pub additional: Vec<AdditionalHeader>,
    pub body: Option<Transform>,
    pub response: Option<Transform>,
    pub client: HttpClientOptions,
    /// `cache`: how many hook answers may be kept; `None` when off.
    pub cache: Option<u64>,
}
