//! Which request a forward-auth call (`/check`) is about.
//!
//! nginx's `auth_request` and Traefik's `forwardAuth` call `/check` with a
//! method and path of their own (`GET /check`) and describe the original
//! request in headers they set: nginx in whatever `proxy_set_header` names
//! (authgate's example: `X-Original-URI`, `X-Original-Method`), Traefik in
//! `X-Forwarded-Uri` and `X-Forwarded-Method`. Envoy's HTTP ext_authz calls
//! `/check<original path>` with the original method instead. Each proxy
//! passes the client's other headers through, so a header only counts when
//! the configured proxy sets it; see docs/security.md ("Forward auth").

use std::fmt;

use crate::request::Headers;

pub const ORIGINAL_URI: &str = "x-original-uri";
pub const ORIGINAL_METHOD: &str = "x-original-method";
pub const FORWARDED_URI: &str = "x-forwarded-uri";
pub const FORWARDED_METHOD: &str = "x-forwarded-method";

/// The proxy in front of the forward-auth door
/// (`definition.settings.forwardAuth.proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardAuthProxy {
    /// Not said: every source is read, and the request is refused when two
    /// of them disagree or one is repeated.
    #[default]
    Any,
    /// `X-Original-URI` and `X-Original-Method`, required.
    Nginx,
    /// `X-Forwarded-Uri` and `X-Forwarded-Method`, required.
    Traefik,
    /// The path after `/check` and the call's own method; headers ignored.
    Envoy,
}

impl ForwardAuthProxy {
    pub const NAMES: [&'static str; 4] = ["any", "nginx", "traefik", "envoy"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "any" => Some(ForwardAuthProxy::Any),
            "nginx" => Some(ForwardAuthProxy::Nginx),
            "traefik" => Some(ForwardAuthProxy::Traefik),
            "envoy" => Some(ForwardAuthProxy::Envoy),
            _ => None,
        }
    }
}

/// The original request's method and path (with query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub method: String,
    pub path: String,
}

/// Why the original request cannot be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardError {
    /// A header the configured proxy always sets is missing: the proxy is
    /// not the one configured, or its config lacks a line.
    Missing(&'static str),
    /// A header appears more than once.
    Repeated(&'static str),
    /// Two sources name different requests.
    Conflict(&'static str, &'static str),
    /// One header of a proxy's pair without the other.
    Incomplete(&'static str, &'static str),
    /// Empty, or not a method token / an origin-form path.
    Malformed(&'static str),
}

impl ForwardError {
    /// A missing header is the operator's to fix (the proxy's config); the
    /// other errors come with the request, whoever added them.
    pub fn is_proxy_config(&self) -> bool {
        matches!(self, ForwardError::Missing(_))
    }
}

impl fmt::Display for ForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardError::Missing(h) => write!(f, "{h} is missing (set by the configured proxy)"),
            ForwardError::Repeated(h) => write!(f, "{h} appears more than once"),
            ForwardError::Conflict(a, b) => write!(f, "{a} and {b} disagree"),
            ForwardError::Incomplete(a, b) => write!(f, "{a} without {b}"),
            ForwardError::Malformed(h) => write!(f, "{h} is empty or malformed"),
        }
    }
}

/// At most one value of `name`; `Ok(None)` when absent.
fn single<'h>(headers: &'h Headers, name: &'static str) -> Result<Option<&'h str>, ForwardError> {
    let mut values = headers.get_all(name);
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => Ok(Some(v)),
        (Some(_), Some(_)) => Err(ForwardError::Repeated(name)),
    }
}

/// RFC 9110 `method = token`.
fn is_method(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An origin-form request target (`/path?query`), as proxies send it.
fn is_path(s: &str) -> bool {
    s.starts_with('/') && !s.bytes().any(|b| b.is_ascii_control() || b == b' ')
}

fn checked<'v>(
    name: &'static str,
    value: &'v str,
    valid: fn(&str) -> bool,
) -> Result<&'v str, ForwardError> {
    if valid(value) {
        Ok(value)
    } else {
        Err(ForwardError::Malformed(name))
    }
}

/// Reads one of the header pairs, each header at most once.
fn pair<'h>(
    headers: &'h Headers,
    method: &'static str,
    uri: &'static str,
) -> Result<(Option<&'h str>, Option<&'h str>), ForwardError> {
    let m = single(headers, method)?
        .map(|v| checked(method, v, is_method))
        .transpose()?;
    let u = single(headers, uri)?
        .map(|v| checked(uri, v, is_path))
        .transpose()?;
    Ok((m, u))
}

/// What is missing when Envoy's path is expected.
pub const ENVOY_PATH: &str = "the path after /check";

/// A pair of headers, both or neither.
fn whole<'v>(
    (m, u): (Option<&'v str>, Option<&'v str>),
    method: &'static str,
    uri: &'static str,
) -> Result<(Option<&'v str>, Option<&'v str>), ForwardError> {
    match (m, u) {
        (Some(_), None) => Err(ForwardError::Incomplete(method, uri)),
        (None, Some(_)) => Err(ForwardError::Incomplete(uri, method)),
        both_or_neither => Ok(both_or_neither),
    }
}

fn required<'v>(value: Option<&'v str>, name: &'static str) -> Result<&'v str, ForwardError> {
    value.ok_or(ForwardError::Missing(name))
}

/// The one value the present sources agree on; an error naming the first
/// two that differ.
fn agree<'v>(
    sources: [(Option<&'v str>, &'static str); 3],
) -> Result<Option<&'v str>, ForwardError> {
    let mut found: Option<(&str, &'static str)> = None;
    for (value, name) in sources {
        let Some(v) = value else { continue };
        match found {
            Some((w, first)) if w != v => return Err(ForwardError::Conflict(first, name)),
            Some(_) => {}
            None => found = Some((v, name)),
        }
    }
    Ok(found.map(|(v, _)| v))
}

/// The original request of a forward-auth call: `method` and `target`
/// (path and query) are the call's own, `check_path` is what followed
/// `/check` (empty for a call to `/check` itself).
pub fn original(
    proxy: ForwardAuthProxy,
    method: &str,
    check_path: &str,
    headers: &Headers,
) -> Result<Original, ForwardError> {
    let own_path = || {
        if check_path.starts_with('/') {
            check_path.to_owned()
        } else {
            format!("/{check_path}")
        }
    };
    match proxy {
        // Envoy always calls `/check<original path>`; a call to `/check`
        // itself comes from some other proxy.
        ForwardAuthProxy::Envoy if !check_path.starts_with('/') => {
            Err(ForwardError::Missing(ENVOY_PATH))
        }
        ForwardAuthProxy::Envoy => Ok(Original {
            method: method.to_owned(),
            path: own_path(),
        }),
        ForwardAuthProxy::Nginx => {
            let (m, u) = pair(headers, ORIGINAL_METHOD, ORIGINAL_URI)?;
            Ok(Original {
                method: required(m, ORIGINAL_METHOD)?.to_owned(),
                path: required(u, ORIGINAL_URI)?.to_owned(),
            })
        }
        ForwardAuthProxy::Traefik => {
            let (m, u) = pair(headers, FORWARDED_METHOD, FORWARDED_URI)?;
            Ok(Original {
                method: required(m, FORWARDED_METHOD)?.to_owned(),
                path: required(u, FORWARDED_URI)?.to_owned(),
            })
        }
        ForwardAuthProxy::Any => {
            // Each proxy sets its pair whole: half a pair would leave the
            // method (or the path) to another source, which a client could
            // supply.
            let nginx = pair(headers, ORIGINAL_METHOD, ORIGINAL_URI)?;
            let (nginx_m, nginx_u) = whole(nginx, ORIGINAL_METHOD, ORIGINAL_URI)?;
            let traefik = pair(headers, FORWARDED_METHOD, FORWARDED_URI)?;
            let (traefik_m, traefik_u) = whole(traefik, FORWARDED_METHOD, FORWARDED_URI)?;
            // A call to `/check/<path>` is Envoy's: its own method and path
            // are the original ones, and any header must agree with them.
            let envoy = check_path.starts_with('/');
            let (own_m, own_u) = if envoy {
                (Some(method), Some(check_path))
            } else {
                (None, None)
            };
            let m = agree([
                (own_m, ":method"),
                (nginx_m, ORIGINAL_METHOD),
                (traefik_m, FORWARDED_METHOD),
            ])?;
            let u = agree([
                (own_u, ":path"),
                (nginx_u, ORIGINAL_URI),
                (traefik_u, FORWARDED_URI),
            ])?;
            Ok(Original {
                method: m.unwrap_or(method).to_owned(),
                path: u.map(str::to_owned).unwrap_or_else(own_path),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn ok(method: &str, path: &str) -> Result<Original, ForwardError> {
        Ok(Original {
            method: method.into(),
            path: path.into(),
        })
    }

    /// What Traefik's forwardAuth sends for `POST /v1/user/password`.
    fn traefik(extra: &[(&str, &str)]) -> Headers {
        let mut pairs = vec![
            ("x-forwarded-method", "POST"),
            ("x-forwarded-uri", "/v1/user/password"),
            ("x-forwarded-host", "api.example.com"),
        ];
        pairs.extend_from_slice(extra);
        h(&pairs)
    }

    #[test]
    fn a_client_copy_of_another_proxys_header_is_refused_or_ignored() {
        use ForwardAuthProxy::*;
        let spoofed = traefik(&[("x-original-method", "GET")]);
        assert_eq!(
            original(Any, "GET", "", &spoofed),
            Err(ForwardError::Incomplete(ORIGINAL_METHOD, ORIGINAL_URI))
        );
        let spoofed = traefik(&[
            ("x-original-method", "GET"),
            ("x-original-uri", "/v1/user/password"),
        ]);
        assert_eq!(
            original(Any, "GET", "", &spoofed),
            Err(ForwardError::Conflict(ORIGINAL_METHOD, FORWARDED_METHOD))
        );
        assert_eq!(
            original(Traefik, "GET", "", &spoofed),
            ok("POST", "/v1/user/password")
        );
        let empty = traefik(&[("x-original-method", "")]);
        assert_eq!(
            original(Any, "GET", "", &empty),
            Err(ForwardError::Malformed(ORIGINAL_METHOD))
        );
        assert_eq!(
            original(Traefik, "GET", "", &empty),
            ok("POST", "/v1/user/password")
        );
        let uri = traefik(&[("x-original-uri", "/public"), ("x-original-method", "POST")]);
        assert_eq!(
            original(Any, "GET", "", &uri),
            Err(ForwardError::Conflict(ORIGINAL_URI, FORWARDED_URI))
        );
        // Agreeing copies are harmless; half a pair is refused (the method,
        // or the path, would come from another source).
        let same = traefik(&[
            ("x-original-method", "POST"),
            ("x-original-uri", "/v1/user/password"),
        ]);
        assert_eq!(
            original(Any, "GET", "", &same),
            ok("POST", "/v1/user/password")
        );
        let nginx_uri_only = h(&[("x-original-uri", "/v1/user/password")]);
        assert_eq!(
            original(Any, "GET", "", &nginx_uri_only),
            Err(ForwardError::Incomplete(ORIGINAL_URI, ORIGINAL_METHOD))
        );
    }

    #[test]
    fn each_proxy_reads_its_own_headers_only() {
        use ForwardAuthProxy::*;
        let nginx = h(&[
            ("x-original-method", "DELETE"),
            ("x-original-uri", "/v1/x?a=1"),
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/public"),
        ]);
        assert_eq!(
            original(Nginx, "GET", "", &nginx),
            ok("DELETE", "/v1/x?a=1")
        );
        assert_eq!(original(Traefik, "GET", "", &nginx), ok("GET", "/public"));
        assert_eq!(original(Envoy, "PUT", "/real", &nginx), ok("PUT", "/real"));
        assert_eq!(
            original(Nginx, "GET", "", &h(&[("x-original-uri", "/x")])),
            Err(ForwardError::Missing(ORIGINAL_METHOD))
        );
        assert_eq!(
            original(Traefik, "GET", "", &h(&[("x-forwarded-method", "GET")])),
            Err(ForwardError::Missing(FORWARDED_URI))
        );
        assert!(ForwardError::Missing(FORWARDED_URI).is_proxy_config());
    }

    #[test]
    fn repeated_or_malformed_sources_are_refused() {
        use ForwardAuthProxy::*;
        let twice = h(&[
            ("x-original-method", "GET"),
            ("x-original-method", "POST"),
            ("x-original-uri", "/x"),
        ]);
        for proxy in [Any, Nginx] {
            assert_eq!(
                original(proxy, "GET", "", &twice),
                Err(ForwardError::Repeated(ORIGINAL_METHOD))
            );
        }
        for (name, value) in [
            ("x-original-method", "G T"),
            ("x-original-method", "GET\t"),
            ("x-original-uri", ""),
            ("x-original-uri", "v1/x"),
            ("x-original-uri", "/a b"),
            ("x-original-uri", "http://evil/v1/x"),
        ] {
            let mut pairs = vec![("x-original-method", "GET"), ("x-original-uri", "/x")];
            pairs.retain(|(n, _)| *n != name);
            pairs.push((name, value));
            assert!(
                matches!(
                    original(Nginx, "GET", "", &h(&pairs)),
                    Err(ForwardError::Malformed(_))
                ),
                "{name}: {value:?}"
            );
        }
    }

    #[test]
    fn envoy_style_calls_must_agree_with_any_header() {
        use ForwardAuthProxy::*;
        assert_eq!(
            original(Any, "POST", "/v1/x?q=1", &h(&[])),
            ok("POST", "/v1/x?q=1")
        );
        let nginx = h(&[("x-original-method", "GET"), ("x-original-uri", "/v1/x")]);
        assert_eq!(
            original(Any, "POST", "/v1/x", &nginx),
            Err(ForwardError::Conflict(":method", ORIGINAL_METHOD))
        );
        let traefik = h(&[
            ("x-forwarded-method", "POST"),
            ("x-forwarded-uri", "/public"),
        ]);
        assert_eq!(
            original(Any, "POST", "/v1/x", &traefik),
            Err(ForwardError::Conflict(":path", FORWARDED_URI))
        );
        assert_eq!(
            original(Envoy, "GET", "", &nginx),
            Err(ForwardError::Missing(ENVOY_PATH))
        );
        assert_eq!(
            original(Envoy, "GET", "?a=1", &h(&[])),
            Err(ForwardError::Missing(ENVOY_PATH))
        );
        // `/check` itself: no header, the call's own request.
        assert_eq!(original(Any, "GET", "", &h(&[])), ok("GET", "/"));
        assert_eq!(original(Any, "GET", "?a=1", &h(&[])), ok("GET", "/?a=1"));
    }
}
