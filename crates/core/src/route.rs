//! Request routes as upstreams see them: which method and which path a
//! request really targets, and whether a configured route covers it.
//!
//! A route protects a handler of the upstream, so a request must match it
//! whenever *some* common upstream would dispatch that request to the
//! handler. Hence the over-approximations here, each documented in
//! docs/security.md ("Route matching"): every percent-encoding is decoded
//! (repeatedly), `\` is `/`, `;` parameters and dot segments are resolved,
//! case and a trailing slash are ignored, `HEAD` counts as `GET`, and
//! method-override headers count as methods. What cannot be read one way
//! only (invalid UTF-8, NUL and other control characters, an encoded `?` or
//! `#`, escapes nested deeper than upstreams decode) is refused rather than
//! guessed.

use std::fmt;

use crate::request::Request;

/// Rounds of percent-decoding applied before a path is called ambiguous.
/// Upstreams decode once; a proxy in front of them may decode once more.
/// `%2525` needs two rounds to reach `%`; anything deeper is refused.
pub const MAX_DECODE_ROUNDS: usize = 3;

/// The methods a route may name (RFC 9110 section 9 and RFC 5789 PATCH).
/// Anything else in a config is a typo or a method no upstream routes.
pub const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

/// Headers through which common frameworks let a `POST` act as another
/// method (Symfony, Laravel, Rails, ASP.NET Core, Express' method-override,
/// gorilla/handlers); `_method` is the query parameter of the same idea.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
pub const METHOD_OVERRIDE_PARAM: &str = "_method";

/// Why a path has no single reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Decodes to bytes that are not UTF-8.
    InvalidUtf8,
    /// Holds NUL or another control character once decoded.
    ControlCharacter,
    /// Still holds escapes after [`MAX_DECODE_ROUNDS`] rounds.
    NestedEncoding,
    /// Holds an encoded `?` or `#`: an upstream that decodes before it
    /// splits off the query would read a shorter path.
    EncodedDelimiter,
    /// Holds a `.` or `..` segment: upstreams resolve them before or after
    /// merging empty segments, or not at all (`/a//../b` is `/a/b` to a
    /// WHATWG URL parser, `/b` once slashes are merged), so no one reading
    /// is the upstream's.
    DotSegment,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::InvalidUtf8 => "the path decodes to invalid UTF-8",
            PathError::ControlCharacter => "the path holds a control character",
            PathError::NestedEncoding => "the path is percent-encoded too many times over",
            PathError::EncodedDelimiter => "the path holds an encoded `?` or `#`",
            PathError::DotSegment => "the path holds a `.` or `..` segment",
        })
    }
}

/// Decodes every `%XX` once; `None` when there was none.
fn decode_once(bytes: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut decoded_any = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h * 16 + l);
            decoded_any = true;
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    decoded_any.then_some(out)
}

/// The canonical form of a request path: query and fragment dropped, every
/// escape decoded (up to [`MAX_DECODE_ROUNDS`] times), `\` read as `/`, `;`
/// parameters dropped from each segment (Servlet containers route
/// `/a;x=1/b` as `/a/b`), empty segments dropped, and no trailing slash (`/`
/// for the root). A `.` or `..` segment, in any spelling, is refused
/// ([`PathError::DotSegment`]). Route matching compares this form without
/// regard to case ([`fold`]).
pub fn canonical_path(raw: &str) -> Result<String, PathError> {
    let raw = raw.split(['?', '#']).next().unwrap_or("");
    let mut bytes = raw.as_bytes().to_vec();
    let mut rounds = 0;
    while let Some(decoded) = decode_once(&bytes) {
        if rounds == MAX_DECODE_ROUNDS {
            return Err(PathError::NestedEncoding);
        }
        bytes = decoded;
        rounds += 1;
    }
    let text = String::from_utf8(bytes).map_err(|_| PathError::InvalidUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    if text.contains(['?', '#']) {
        return Err(PathError::EncodedDelimiter);
    }
    let text = text.replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        match seg.split(';').next().unwrap_or("") {
            "" => {}
            "." | ".." => return Err(PathError::DotSegment),
            s => segments.push(s),
        }
    }
    if segments.is_empty() {
        return Ok("/".to_owned());
    }
    let mut out = String::with_capacity(text.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    Ok(out)
}

/// A configured path: exact, or a prefix. A prefix that ends with `/`
/// covers whole segments (`/v1/user/` covers `/v1/user` and `/v1/user/x`,
/// not `/v1/username`); one without is a plain string prefix, as Envoy's
/// `prefix` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePath {
    Exact(String),
    Prefix(String),
}

impl RoutePath {
    /// An exact path in canonical form (a trailing slash is not kept: the
    /// upstreams that redirect or route `/a/` to `/a` are the common case),
    /// case-folded ([`fold`]).
    pub fn exact(raw: &str) -> Result<Self, PathError> {
        canonical_path(raw).map(|p| RoutePath::Exact(fold_path(&p).into_owned()))
    }

    /// A prefix in canonical form, keeping a trailing slash, case-folded.
    pub fn prefix(raw: &str) -> Result<Self, PathError> {
        let mut p = fold_path(&canonical_path(raw)?).into_owned();
        let trailing = raw
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .ends_with(['/', '\\']);
        if trailing && !p.ends_with('/') {
            p.push('/');
        }
        Ok(RoutePath::Prefix(p))
    }

    /// Whether `path` (canonical, see [`canonical_path`]) is covered,
    /// case ignored ([`fold`]): upstreams that route without regard to case
    /// (Express, ASP.NET, nhost's hasura-auth) must not be reachable through
    /// `/V1/USER/...`, and protecting a case variant costs nothing.
    pub fn covers(&self, path: &str) -> bool {
        // Both sides folded; each is borrowed as it is when already folded
        // (the configured paths are, by `exact` and `prefix`).
        let path = fold_path(path);
        match self {
            RoutePath::Exact(p) => path == fold_path(p),
            RoutePath::Prefix(p) => {
                let p = fold_path(p);
                path.starts_with(&*p)
                    || (p.len() > 1 && p.ends_with('/') && *path == p[..p.len() - 1])
            }
        }
    }
}

/// `path` with every character [`fold`]ed; borrowed when that changes
/// nothing (a lower-case path, the usual case).
pub fn fold_path(path: &str) -> std::borrow::Cow<'_, str> {
    if path.chars().all(|c| fold(c) == c) {
        std::borrow::Cow::Borrowed(path)
    } else {
        std::borrow::Cow::Owned(path.chars().map(fold).collect())
    }
}

/// A character as case-insensitive routers compare it: ASCII lower case,
/// and the few non-ASCII letters whose case mapping lands on an ASCII one
/// (`ſ` and `ı` upper-case to `S` and `I`, the Kelvin sign `K` lower-cases
/// to `k`), which .NET's `OrdinalIgnoreCase`, Java's `equalsIgnoreCase` and
/// Go's `EqualFold` equate with it.
pub fn fold(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_lowercase();
    }
    let mut upper = c.to_uppercase();
    let (Some(u), None) = (upper.next(), upper.next()) else {
        return c;
    };
    let mut lower = u.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) if l.is_ascii() => l,
        _ => c,
    }
}

/// Which requests a route covers: a method set (empty: every method) and a
/// path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Upper case, each one of [`KNOWN_METHODS`].
    pub methods: Vec<String>,
    pub path: RoutePath,
}

impl Route {
    /// Whether the route covers a request whose canonical path is `path`.
    pub fn covers(&self, req: &Request, path: &str) -> bool {
        self.path.covers(path) && (self.methods.is_empty() || self.covers_method(req))
    }

    fn covers_method(&self, req: &Request) -> bool {
        let named = |m: &str| {
            let m = m.trim();
            self.methods.iter().any(|r| {
                r.eq_ignore_ascii_case(m)
                    // Frameworks answer HEAD with the GET handler.
                    || (r == "GET" && m.eq_ignore_ascii_case("HEAD"))
            })
        };
        if named(&req.method) {
            return true;
        }
        // What a request may ask an upstream to act as instead: the
        // override headers (comma-separated lists included) and every
        // `_method` query parameter, decoded as frameworks decode it.
        // Frameworks honour them on POST only; counting them on every
        // method can only protect more.
        let headers = METHOD_OVERRIDE_HEADERS
            .iter()
            .flat_map(|name| req.headers.get_all(name))
            .flat_map(|v| v.split(','));
        if headers.into_iter().any(&named) {
            return true;
        }
        let Some((_, query)) = req.path.split_once('?') else {
            return false;
        };
        let query = query.split('#').next().unwrap_or("");
        form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k == METHOD_OVERRIDE_PARAM && named(&v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_defeat_spellings() {
        for (raw, want) in [
            ("/v1/user/password", "/v1/user/password"),
            ("/v1//user/password?x=1", "/v1/user/password"),
            ("/v1/%75ser/password", "/v1/user/password"),
            ("/v1/user%2Fpassword", "/v1/user/password"),
            ("/v1/user%2fpassword", "/v1/user/password"),
            ("/v1\\user\\password", "/v1/user/password"),
            ("/v1/user%5cpassword", "/v1/user/password"),
            ("/v1/user/password#f", "/v1/user/password"),
            ("/v1/.well-known/x", "/v1/.well-known/x"),
            ("/v1/...", "/v1/..."),
            ("/v1/user/", "/v1/user"),
            ("/v1/user/password/", "/v1/user/password"),
            ("", "/"),
            ("/", "/"),
            ("//", "/"),
            ("/a%20b", "/a b"),
            ("/v1/user/password;jsessionid=1", "/v1/user/password"),
            ("/v1/user;x=1/password", "/v1/user/password"),
            ("/v1/;/user", "/v1/user"),
            // Reserved characters are decoded too: upstreams route them.
            ("/v1/account%3AchangePassword", "/v1/account:changePassword"),
            ("/v1/account%3achangePassword", "/v1/account:changePassword"),
            ("/users/%40me/delete", "/users/@me/delete"),
            ("/v1/user/password%3Bx", "/v1/user/password"),
            // Double encoding: a proxy and an upstream may each decode once.
            (
                "/v1/account%253AchangePassword",
                "/v1/account:changePassword",
            ),
            ("/v1/user%252Fpassword", "/v1/user/password"),
            ("/v1/%25%32%66a", "/v1/a"),
            ("/caf%C3%A9", "/café"),
            ("/100%", "/100%"),
            ("/a%zz", "/a%zz"),
            ("/a%4", "/a%4"),
        ] {
            assert_eq!(canonical_path(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn paths_without_one_reading_are_refused() {
        for (raw, err) in [
            ("/v1/user%00/password", PathError::ControlCharacter),
            ("/v1/user\0", PathError::ControlCharacter),
            ("/v1/%0d%0a", PathError::ControlCharacter),
            ("/v1/%09password", PathError::ControlCharacter),
            ("/v1/%7f", PathError::ControlCharacter),
            ("/v1/%C0%AFpassword", PathError::InvalidUtf8),
            ("/v1/%FF", PathError::InvalidUtf8),
            ("/v1/%E2%80", PathError::InvalidUtf8),
            ("/v1/%25252541", PathError::NestedEncoding),
            ("/v1/%2525252F", PathError::NestedEncoding),
            ("/v1/user%3Fpassword", PathError::EncodedDelimiter),
            ("/v1/user/password%23x", PathError::EncodedDelimiter),
            ("/v1/x%253F/admin", PathError::EncodedDelimiter),
            ("/v1/user/x/../password", PathError::DotSegment),
            ("/v1//../user/password", PathError::DotSegment),
            ("/v1/user/%2e%2e/user", PathError::DotSegment),
            ("/v1/x/..;/user/password", PathError::DotSegment),
            ("/v1/x/%2E%252e/y", PathError::DotSegment),
            ("/./v1", PathError::DotSegment),
            ("/v1%5c..%5cadmin", PathError::DotSegment),
        ] {
            assert_eq!(canonical_path(raw), Err(err), "{raw}");
        }
        // The query is not part of the path.
        assert_eq!(canonical_path("/v1/x?a=%00%FF").as_deref(), Ok("/v1/x"));
    }

    #[test]
    fn canonical_paths_are_fixed_points() {
        for raw in ["/a%2541/b", "/x/%2e%2ey", "/A;b/C/", "/%40me"] {
            let once = canonical_path(raw).unwrap();
            assert_eq!(canonical_path(&once).as_deref(), Ok(once.as_str()), "{raw}");
        }
    }

    #[test]
    fn exact_and_prefix_routes() {
        let exact = RoutePath::exact("/v1/user/password").unwrap();
        assert!(exact.covers("/v1/user/password"));
        assert!(!exact.covers("/v1/user/passwords"));
        assert!(exact.covers("/V1/User/PASSWORD"));
        // A trailing slash in the config is the same route.
        assert_eq!(RoutePath::exact("/v1/user/password/").unwrap(), exact);
        let prefix = RoutePath::prefix("/v1/user/").unwrap();
        assert_eq!(prefix, RoutePath::Prefix("/v1/user/".into()));
        assert!(prefix.covers("/v1/user/email"));
        assert!(prefix.covers("/v1/user"));
        assert!(!prefix.covers("/v1/username"));
        assert!(prefix.covers("/V1/USER/x"));
        assert!(!prefix.covers("/v1/us"));
        assert!(!prefix.covers("/v1/usé/x"));
        let plain = RoutePath::prefix("/v1/user").unwrap();
        assert!(plain.covers("/v1/username"));
        let at = RoutePath::prefix("/users/%40me/").unwrap();
        assert_eq!(at, RoutePath::Prefix("/users/@me/".into()));
        let root = RoutePath::prefix("/").unwrap();
        assert!(root.covers("/") && root.covers("/anything"));
        // Letters that case-insensitive routers equate with ASCII ones.
        assert!(exact.covers("/v1/user/pa\u{17f}\u{17f}word"));
        let admin = RoutePath::prefix("/admin/").unwrap();
        assert!(admin.covers("/adm\u{131}n/x"));
        let kelvin = RoutePath::exact("/ok").unwrap();
        assert!(kelvin.covers("/o\u{212a}"));
        assert!(!exact.covers("/v1/user/pa\u{df}word"));
        // A path built directly, not folded (found by fuzzing): it still
        // covers its own spelling.
        assert!(RoutePath::Exact("/\u{17f}".into()).covers("/\u{17f}"));
        assert!(RoutePath::Prefix("/A/".into()).covers("/a/b"));
        assert_eq!(RoutePath::exact("/a%00"), Err(PathError::ControlCharacter));
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            headers: headers.iter().map(|(k, v)| (*k, *v)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn methods_cover_head_and_overrides() {
        let route = Route {
            methods: vec!["GET".into(), "DELETE".into()],
            path: RoutePath::exact("/v1/x").unwrap(),
        };
        let covers = |r: &Request| route.covers(r, &canonical_path(&r.path).unwrap());
        assert!(covers(&req("GET", "/v1/x", &[])));
        assert!(covers(&req("HEAD", "/v1/x", &[])));
        assert!(covers(&req("delete", "/v1/x", &[])));
        assert!(!covers(&req("POST", "/v1/x", &[])));
        for (name, value) in [
            ("x-http-method-override", "DELETE"),
            ("X-HTTP-Method", "delete"),
            ("x-method-override", "PUT, DELETE"),
        ] {
            assert!(covers(&req("POST", "/v1/x", &[(name, value)])), "{name}");
        }
        assert!(covers(&req("POST", "/v1/x?_method=DELETE", &[])));
        assert!(covers(&req("POST", "/v1/x?a=1&_method=%44ELETE", &[])));
        assert!(!covers(&req("POST", "/v1/x?_method=PUT", &[])));
        assert!(!covers(&req(
            "POST",
            "/v1/y",
            &[("x-http-method-override", "DELETE")]
        )));
        let any = Route {
            methods: vec![],
            path: RoutePath::exact("/v1/x").unwrap(),
        };
        assert!(any.covers(&req("PROPFIND", "/v1/x", &[]), "/v1/x"));
    }
}
