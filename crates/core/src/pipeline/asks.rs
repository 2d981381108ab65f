//! What a request asks of the pipeline besides its credential.

use std::borrow::Cow;
use std::sync::OnceLock;

use super::Engine;
use crate::decision::DenyReason;
use crate::request::Request;
use crate::session;

/// What a request asks of the pipeline besides its credential: everything
/// role resolution, elevation and rendering read from the request. Two
/// requests with the same token and nothing asked decide the same way,
/// which is what lets [`Engine::decide_memo`](super::Engine::decide_memo) reuse an encoded allow.
pub(super) struct Asks<'r> {
    req: &'r Request,
    /// Client headers authgate reserves ([`is_reserved_header`]), in
    /// request order; the role asked for is one of them.
    pub(super) reserved: Vec<&'r str>,
    /// `x-hasura-role`.
    pub(super) role: Option<&'r str>,
    /// An elevation grant (header or cookie), when elevation is configured.
    pub(super) grant: Option<Cow<'r, str>>,
    /// Whether the route asks for elevation; an `Err` when that cannot be
    /// read (refused once a mode has verified the caller). Read when first
    /// needed: a request refused before that never has its route matched
    /// (nor a misconfigured route logged).
    elevation: OnceLock<Result<bool, DenyReason>>,
    /// The policies that apply ([`crate::policy::Policies::applying`]),
    /// read when first needed.
    policies: OnceLock<Result<u64, DenyReason>>,
}

impl Asks<'_> {
    /// Whether the route asks for elevation ([`Asks::elevation`] field).
    pub(super) fn elevation(&self, engine: &Engine) -> Result<bool, DenyReason> {
        *self.elevation.get_or_init(|| {
            let route = match &engine.elevation {
                None => crate::elevation::context_requires(self.req),
                Some(el) => el.route_requires(self.req),
            }?;
            Ok(route || engine.policies.elevation(self.policies(engine)?))
        })
    }

    /// The policies that apply to the request, as a bit set.
    pub(super) fn policies(&self, engine: &Engine) -> Result<u64, DenyReason> {
        *self.policies.get_or_init(|| {
            if engine.policies.is_empty() {
                // Without policies, selecting one names an unknown policy.
                return match self.req.context.get(crate::policy::CONTEXT_KEY) {
                    Some(_) => engine.policies.applying(self.req),
                    None => Ok(0),
                };
            }
            engine.policies.applying(self.req)
        })
    }

    /// Whether the request asks for nothing: the decision then depends on
    /// the token alone. Destructured whole, so a field added to [`Asks`]
    /// must be considered here.
    pub(super) fn nothing(&self, engine: &Engine) -> bool {
        let Asks {
            req: _,
            reserved,
            role,
            grant,
            elevation: _,
            policies: _,
        } = self;
        reserved.is_empty()
            && role.is_none()
            && grant.is_none()
            && self.elevation(engine) == Ok(false)
            && self.policies(engine).is_ok()
    }
}

impl Engine {
    /// Reads what the request asks for besides its credential.
    pub(super) fn asks<'r>(&self, req: &'r Request) -> Asks<'r> {
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
        let grant = self.elevation.as_ref().and_then(|el| el.grant_of(req));
        Asks {
            req,
            reserved,
            role,
            grant,
            elevation: OnceLock::new(),
            policies: OnceLock::new(),
        }
    }
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
