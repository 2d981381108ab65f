//! Per-route policies (`definition.policies`, `definition.policyRoutes`):
//! what a request must prove beyond a valid credential, as the route
//! requires it (docs/configuration.md, "Policies").
//!
//! Which policies apply is read from the request: Envoy's
//! `context_extensions: {policy: NAME}` (or the forward-auth door's
//! `?policy=NAME`, placed in the same map), plus every `policyRoutes` entry
//! that covers it. Requirements only add up.
//!
//! What a credential satisfies is computed once, when it is verified, as
//! bit sets over the policies ([`Facts`]), and kept with the token-cache
//! entry: a cached token's repeat checks its policies with a few bit
//! operations, and never evaluates JMESPath again.

use std::sync::Arc;

use serde_json::Value;

use crate::decision::DenyReason;
use crate::request::Request;
use crate::route::{self, Route};
use crate::session::{self, Session};

/// Most policies a config may define (one bit each in [`Facts`]).
pub const MAX_POLICIES: usize = 64;

/// The `context_extensions` key (and forward-auth query parameter) that
/// selects a policy.
pub const CONTEXT_KEY: &str = "policy";

/// One policy: every requirement it lists must hold.
#[derive(Debug)]
pub struct Policy {
    pub name: Arc<str>,
    /// Mode ids that may authenticate; empty: any.
    pub modes: Vec<Arc<str>>,
    /// Roles, after Hasura's role resolution; empty: any.
    pub roles: Vec<String>,
    pub claims: Vec<ClaimRequirement>,
    /// Scopes the credential must carry (`scope` or `scp`).
    pub scopes: Vec<String>,
    /// Whether the request needs elevated access.
    pub elevation: bool,
}

/// `JMESPATH: value` or `JMESPATH: [any of]`.
#[derive(Debug)]
pub struct ClaimRequirement {
    pub expr: jmespath::Expression<'static>,
    pub any_of: Vec<Value>,
}

/// A `policyRoutes` entry.
#[derive(Debug)]
pub struct PolicyRoute {
    /// Lower case, without a port.
    pub host: Option<String>,
    pub route: Route,
    pub policy: usize,
}

/// A config's policies and routes.
#[derive(Debug, Default)]
pub struct Policies {
    pub policies: Vec<Policy>,
    pub routes: Vec<PolicyRoute>,
}

/// Which policies a verified credential satisfies, one bit per policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    /// Its scopes are there.
    pub scopes: u64,
    /// Its mode and claims are accepted.
    pub rest: u64,
    /// All of it, with the role the token gets when none is requested.
    pub passes: u64,
}

impl Policies {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.policies.iter().position(|p| &*p.name == name)
    }

    /// The policies `req` asks for, as a bit set: the selected one and
    /// those of every covering route. An unknown selected name is
    /// `policy_denied`; a path with no single reading, when routes must be
    /// matched, `invalid_request`.
    pub fn applying(&self, req: &Request) -> Result<u64, DenyReason> {
        let mut mask = 0u64;
        if let Some(name) = req.context.get(CONTEXT_KEY) {
            match self.index(name) {
                Some(i) => mask |= 1 << i,
                None => {
                    tracing::warn!(
                        policy = %name.escape_debug().to_string().chars().take(64).collect::<String>(),
                        "unknown policy selected; denied"
                    );
                    return Err(DenyReason::PolicyDenied);
                }
            }
        }
        if self.routes.is_empty() {
            return Ok(mask);
        }
        let path = route::canonical_path(&req.path).map_err(|e| {
            tracing::debug!(error = %e, "path refused");
            DenyReason::InvalidRequest
        })?;
        for r in &self.routes {
            if mask & (1 << r.policy) == 0
                && r.route.covers(req, &path)
                && r.host.as_deref().is_none_or(|h| host_matches(req, h))
            {
                mask |= 1 << r.policy;
            }
        }
        Ok(mask)
    }

    /// Whether any policy in `mask` needs elevated access.
    pub fn elevation(&self, mask: u64) -> bool {
        bits(mask).any(|i| self.policies[i].elevation)
    }

    /// What a credential of mode `mode_id` with `claims` (a JWT's claims,
    /// an introspection answer, or another mode's session) satisfies,
    /// apart from roles ([`Policies::with_role`] adds them).
    pub fn facts(&self, mode_id: &str, claims: &Value) -> Facts {
        if self.policies.is_empty() {
            return Facts::default();
        }
        let data = crate::claims::jmespath_input(claims).ok();
        let scopes = granted_scopes(claims);
        let mut f = Facts::default();
        for (i, p) in self.policies.iter().enumerate() {
            let bit = 1u64 << i;
            if p.scopes.iter().all(|s| scopes.contains(&s.as_str())) {
                f.scopes |= bit;
            }
            let mode_ok = p.modes.is_empty() || p.modes.iter().any(|m| &**m == mode_id);
            let claims_ok = p.claims.iter().all(|c| {
                data.as_ref()
                    .and_then(|d| crate::claims::evaluate(&c.expr, d).ok())
                    .is_some_and(|v| c.any_of.contains(&v))
            });
            if mode_ok && claims_ok {
                f.rest |= bit;
            }
        }
        f
    }

    /// `facts` completed with the role `session` gets when none is
    /// requested ([`Facts::passes`]).
    pub fn with_role(&self, mut f: Facts, session: &Session) -> Facts {
        let role = default_role(session);
        f.passes = 0;
        for (i, p) in self.policies.iter().enumerate() {
            if role.is_some_and(|r| p.role_allows(r)) {
                f.passes |= 1u64 << i;
            }
        }
        f.passes &= f.scopes & f.rest;
        f
    }

    /// Checks the policies in `mask` for a credential with `facts` whose
    /// resolved role is `role`: the first failing policy's reason.
    pub fn check(
        &self,
        mask: u64,
        facts: &Facts,
        role: Option<&str>,
    ) -> Result<(), (usize, DenyReason)> {
        for i in bits(mask) {
            let bit = 1u64 << i;
            if facts.scopes & bit == 0 {
                return Err((i, DenyReason::InsufficientScope));
            }
            if facts.rest & bit == 0 || !role.is_some_and(|r| self.policies[i].role_allows(r)) {
                return Err((i, DenyReason::PolicyDenied));
            }
        }
        Ok(())
    }
}

impl Policy {
    fn role_allows(&self, role: &str) -> bool {
        self.roles.is_empty() || self.roles.iter().any(|r| r == role)
    }
}

/// The set bits of `mask`, lowest first.
pub fn bits(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            i
        })
    })
}

/// Scopes a credential carries: OAuth's space-separated `scope` (RFC 8693,
/// RFC 9068), or `scp` as a list or a string (Azure AD, Okta).
fn granted_scopes(claims: &Value) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for key in ["scope", "scp"] {
        match claims.get(key) {
            Some(Value::String(s)) => out.extend(s.split_ascii_whitespace()),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// The role [`session::resolve_role`] gives when no role is requested.
fn default_role(s: &Session) -> Option<&str> {
    let role = |name: &str| match s.get(name) {
        Some(Value::String(r)) if !r.is_empty() => Some(r.as_str()),
        _ => None,
    };
    let chosen = role(session::ROLE).or_else(|| role(session::DEFAULT_ROLE))?;
    match s.get(session::ALLOWED_ROLES) {
        Some(allowed) => session::role_allowed(allowed, chosen).then_some(chosen),
        None => Some(chosen),
    }
}

/// Whether a host the request names is `host` (case-insensitive, any port):
/// Envoy's `:authority`, `Host`, or a forward-auth proxy's
/// `X-Forwarded-Host`. Any one is enough, so a client adding a header can
/// only make more policies apply, never fewer.
fn host_matches(req: &Request, host: &str) -> bool {
    [":authority", "host", "x-forwarded-host"]
        .iter()
        .flat_map(|name| req.headers.get_all(name))
        .flat_map(|v| v.split(','))
        .any(|v| normal_host(v.trim()).eq_ignore_ascii_case(host))
}

/// A host as routes compare it: no port, no trailing dot (the same name in
/// DNS, and Envoy does not strip it by default).
pub fn normal_host(host: &str) -> &str {
    let h = strip_port(host);
    h.strip_suffix('.').unwrap_or(h)
}

/// `example.com:8443` -> `example.com`; `[::1]:80` -> `[::1]`.
pub fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bits_and_hosts() {
        assert_eq!(bits(0b1011).collect::<Vec<_>>(), vec![0, 1, 3]);
        assert_eq!(bits(1 << 63).collect::<Vec<_>>(), vec![63]);
        assert_eq!(strip_port("Api.Example.com:8443"), "Api.Example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("api"), "api");
        assert_eq!(normal_host("Orders.example.com.:443"), "Orders.example.com");
        let c = json!({"scope": "read write", "scp": ["admin"]});
        assert_eq!(granted_scopes(&c), vec!["read", "write", "admin"]);
    }
}
