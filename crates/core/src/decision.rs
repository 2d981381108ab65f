//! The outcome of one authorization: what every front door renders.
//!
//! Reasons are a closed set because they appear in responses, logs and
//! metric labels: an open set would leak detail to clients and blow up label
//! cardinality.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::session::{self, Session};

/// Why a request was denied. Each reason fixes its gRPC code, HTTP status and
/// `WWW-Authenticate` challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    MissingCredentials,
    InvalidToken,
    TokenExpired,
    InvalidApiKey,
    WebhookDenied,
    ElevationRequired,
    RoleNotAllowed,
    BlockedByRule,
    /// A policy's required scopes are missing (RFC 6750, section 3.1).
    InsufficientScope,
    /// A policy's other requirements (modes, roles, claims) are not met, or
    /// the selected policy is unknown.
    PolicyDenied,
    /// The request itself cannot be decided safely: conflicting, incomplete
    /// or repeated forward-auth headers, or a path with no single reading
    /// when routes must be matched.
    InvalidRequest,
    InternalError,
}

impl DenyReason {
    pub const ALL: [DenyReason; 12] = [
        DenyReason::MissingCredentials,
        DenyReason::InvalidToken,
        DenyReason::TokenExpired,
        DenyReason::InvalidApiKey,
        DenyReason::WebhookDenied,
        DenyReason::ElevationRequired,
        DenyReason::RoleNotAllowed,
        DenyReason::BlockedByRule,
        DenyReason::InsufficientScope,
        DenyReason::PolicyDenied,
        DenyReason::InvalidRequest,
        DenyReason::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::MissingCredentials => "missing_credentials",
            DenyReason::InvalidToken => "invalid_token",
            DenyReason::TokenExpired => "token_expired",
            DenyReason::InvalidApiKey => "invalid_api_key",
            DenyReason::WebhookDenied => "webhook_denied",
            DenyReason::ElevationRequired => "elevation_required",
            DenyReason::RoleNotAllowed => "role_not_allowed",
            DenyReason::BlockedByRule => "blocked_by_rule",
            DenyReason::InsufficientScope => "insufficient_scope",
            DenyReason::PolicyDenied => "policy_denied",
            DenyReason::InvalidRequest => "invalid_request",
            DenyReason::InternalError => "internal_error",
        }
    }

    /// `google.rpc.Code` carried in `CheckResponse.status`.
    pub fn grpc_code(self) -> i32 {
        match self {
            DenyReason::RoleNotAllowed
            | DenyReason::BlockedByRule
            | DenyReason::InsufficientScope
            | DenyReason::PolicyDenied => 7, // PERMISSION_DENIED
            DenyReason::InvalidRequest => 3, // INVALID_ARGUMENT
            DenyReason::InternalError => 14, // UNAVAILABLE
            _ => 16,                         // UNAUTHENTICATED
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            DenyReason::RoleNotAllowed
            | DenyReason::BlockedByRule
            | DenyReason::InsufficientScope
            | DenyReason::PolicyDenied => 403,
            DenyReason::InvalidRequest => 400,
            DenyReason::InternalError => 503,
            _ => 401,
        }
    }

    /// The RFC 6750 / RFC 9470 challenge, if the status carries one.
    pub fn www_authenticate(self) -> Option<&'static str> {
        match self {
            DenyReason::MissingCredentials => Some("Bearer"),
            DenyReason::InvalidToken
            | DenyReason::TokenExpired
            | DenyReason::InvalidApiKey
            | DenyReason::WebhookDenied => Some("Bearer error=\"invalid_token\""),
            DenyReason::ElevationRequired => {
                Some("Bearer error=\"insufficient_user_authentication\"")
            }
            DenyReason::InsufficientScope => Some("Bearer error=\"insufficient_scope\""),
            DenyReason::RoleNotAllowed
            | DenyReason::PolicyDenied
            | DenyReason::BlockedByRule
            | DenyReason::InvalidRequest
            | DenyReason::InternalError => None,
        }
    }

    /// A generic message: it never says which key, claim or check failed,
    /// except for expiry, which clients need to know to refresh.
    pub fn message(self) -> &'static str {
        match self {
            DenyReason::MissingCredentials => "credentials required",
            DenyReason::InvalidToken | DenyReason::InvalidApiKey | DenyReason::WebhookDenied => {
                "invalid credentials"
            }
            DenyReason::TokenExpired => "token expired",
            DenyReason::ElevationRequired => "elevated access required",
            DenyReason::RoleNotAllowed | DenyReason::BlockedByRule | DenyReason::PolicyDenied => {
                "access denied"
            }
            DenyReason::InsufficientScope => "insufficient scope",
            DenyReason::InvalidRequest => "malformed request",
            DenyReason::InternalError => "authorization temporarily unavailable",
        }
    }

    /// The JSON body of a denial; precomputed per reason, so rendering a
    /// denial allocates nothing for it.
    pub fn body(self) -> &'static str {
        match self {
            DenyReason::MissingCredentials => {
                r#"{"error":"missing_credentials","message":"credentials required"}"#
            }
            DenyReason::InvalidToken => {
                r#"{"error":"invalid_token","message":"invalid credentials"}"#
            }
            DenyReason::TokenExpired => r#"{"error":"token_expired","message":"token expired"}"#,
            DenyReason::InvalidApiKey => {
                r#"{"error":"invalid_api_key","message":"invalid credentials"}"#
            }
            DenyReason::WebhookDenied => {
                r#"{"error":"webhook_denied","message":"invalid credentials"}"#
            }
            DenyReason::ElevationRequired => {
                r#"{"error":"elevation_required","message":"elevated access required"}"#
            }
            DenyReason::RoleNotAllowed => {
                r#"{"error":"role_not_allowed","message":"access denied"}"#
            }
            DenyReason::BlockedByRule => r#"{"error":"blocked_by_rule","message":"access denied"}"#,
            DenyReason::InsufficientScope => {
                r#"{"error":"insufficient_scope","message":"insufficient scope"}"#
            }
            DenyReason::PolicyDenied => r#"{"error":"policy_denied","message":"access denied"}"#,
            DenyReason::InvalidRequest => {
                r#"{"error":"invalid_request","message":"malformed request"}"#
            }
            DenyReason::InternalError => {
                r#"{"error":"internal_error","message":"authorization temporarily unavailable"}"#
            }
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which configured mode produced (or refused) the decision; used in logs,
/// metrics and dynamic metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeRef {
    /// The mode type: `jwt`, `apiKey`, `webhook`, `noAuth`.
    pub kind: &'static str,
    /// The mode's `id` (configured or defaulted).
    pub id: Arc<str>,
}

/// The pipeline's answer for one request.
#[derive(Debug, Clone)]
pub enum Decision {
    Allow(Allow),
    Deny(Deny),
}

/// A request header set to a token authgate signed for the upstream
/// ([`crate::upstream`]): `name` (lower case) replaces the caller's.
#[derive(Debug, Clone)]
pub struct UpstreamHeader {
    pub name: Arc<str>,
    pub value: Arc<str>,
    /// Unix time from which a new token should be signed instead
    /// ([`crate::upstream::Minted::reuse_until`]).
    pub fresh_until: i64,
}

/// The names of the dynamic metadata fields every allow carries.
pub const METADATA_FIELDS: [&str; 5] = ["role", "user_id", "mode", "mode_id", "elevated"];

/// The prefix of the response header that carries a configured dynamic
/// metadata field on the HTTP front door (for nginx's `auth_request_set`).
pub const METADATA_HEADER_PREFIX: &str = "x-authgate-meta-";

/// A configured dynamic metadata field (`dynamicMetadata: {KEY: VARIABLE}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataField {
    pub key: Arc<str>,
    /// The session variable (lower case).
    pub variable: Box<str>,
    /// `x-authgate-meta-` and the key, lower case, `_` as `-`.
    pub header: Arc<str>,
}

impl MetadataField {
    pub fn new(key: &str, variable: &str) -> Self {
        let header = format!(
            "{METADATA_HEADER_PREFIX}{}",
            key.to_ascii_lowercase().replace('_', "-")
        );
        MetadataField {
            key: key.into(),
            variable: variable.into(),
            header: header.into(),
        }
    }
}

/// A configured metadata field's value in one allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraField {
    pub key: Arc<str>,
    pub header: Arc<str>,
    pub value: String,
}

#[derive(Debug, Clone)]
pub struct Allow {
    pub session: Session,
    /// Session variables rendered as header values (Hasura strings), sorted.
    pub headers: Vec<(String, String)>,
    pub mode: ModeRef,
    /// Whether the request carries elevated access (docs/elevation.md).
    pub elevated: bool,
    /// Client-supplied headers to strip upstream (lower case), never one in `session`.
    pub headers_to_remove: Vec<String>,
    /// The upstream token, when `upstreamToken` is configured.
    pub upstream_token: Option<UpstreamHeader>,
    /// `dynamicMetadata` fields whose session variable is set.
    pub extra_metadata: Vec<ExtraField>,
}

/// One field of an allow's dynamic metadata (Envoy's `Struct` value kinds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaValue<'a> {
    Text(Cow<'a, str>),
    Bool(bool),
}

impl Allow {
    /// Every header to set on the upstream request: the session variables,
    /// then the upstream token (never one of their names).
    pub fn headers_to_set(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(self.upstream_token.as_ref().map(|u| (&*u.name, &*u.value)))
    }

    /// The dynamic metadata every Envoy front door attaches to an allow, for
    /// access logs and rate limits (docs/reference.md).
    pub fn metadata(&self) -> Metadata<'_> {
        metadata(
            self.session.get_str(session::ROLE).map(Cow::Borrowed),
            self.session.user_id_text(),
            &self.mode,
            self.elevated,
        )
    }
}

/// An allow's dynamic metadata: `(field, value)`, absent values skipped.
pub type Metadata<'a> = [(&'static str, Option<MetaValue<'a>>); 5];

/// The fields of an allow's dynamic metadata, from their parts (for a
/// front door that kept the parts rather than the [`Allow`]): role, user id
/// (when the session has one), mode type and id, elevated.
pub fn metadata<'a>(
    role: Option<Cow<'a, str>>,
    user_id: Option<Cow<'a, str>>,
    mode: &'a ModeRef,
    elevated: bool,
) -> Metadata<'a> {
    [
        ("role", role.map(MetaValue::Text)),
        ("user_id", user_id.map(MetaValue::Text)),
        ("mode", Some(MetaValue::Text(Cow::Borrowed(mode.kind)))),
        ("mode_id", Some(MetaValue::Text(Cow::Borrowed(&mode.id)))),
        ("elevated", Some(MetaValue::Bool(elevated))),
    ]
}

#[derive(Debug, Clone)]
pub struct Deny {
    pub reason: DenyReason,
    /// The mode whose credential failed, when one did.
    pub mode: Option<ModeRef>,
}

impl Decision {
    pub fn deny(reason: DenyReason, mode: Option<ModeRef>) -> Self {
        Decision::Deny(Deny { reason, mode })
    }

    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// What metrics and logs record of this decision.
    pub fn summary(&self) -> Summary {
        match self {
            Decision::Allow(a) => Summary {
                reason: None,
                mode: a.mode.kind,
            },
            Decision::Deny(d) => d.summary(),
        }
    }
}

impl Deny {
    pub fn summary(&self) -> Summary {
        Summary {
            reason: Some(self.reason),
            mode: self.mode.as_ref().map_or("none", |m| m.kind),
        }
    }
}

/// The outcome of a decision as counted: the denial reason (`None` for an
/// allow) and the mode type (`none` when no mode took part).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub reason: Option<DenyReason>,
    pub mode: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_match_reason_and_message() {
        for r in DenyReason::ALL {
            let v: serde_json::Value = serde_json::from_str(r.body()).unwrap();
            assert_eq!(v["error"], r.as_str());
            assert_eq!(v["message"], r.message());
        }
    }

    #[test]
    fn codes_follow_the_reference_table() {
        assert_eq!(
            DenyReason::MissingCredentials.www_authenticate(),
            Some("Bearer")
        );
        assert_eq!(DenyReason::RoleNotAllowed.grpc_code(), 7);
        assert_eq!(DenyReason::RoleNotAllowed.http_status(), 403);
        assert_eq!(DenyReason::InternalError.grpc_code(), 14);
        assert_eq!(DenyReason::InternalError.http_status(), 503);
        assert_eq!(DenyReason::TokenExpired.grpc_code(), 16);
        assert_eq!(DenyReason::BlockedByRule.www_authenticate(), None);
    }
}
