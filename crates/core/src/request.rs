//! The protocol-neutral request the pipeline decides on. Front doors build
//! it from an Envoy `CheckRequest`, an HTTP forward-auth call or a Hasura
//! webhook body; the pipeline never sees tonic or axum types.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Header,
    Query,
    Cookie,
}

/// Where a mode finds its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLocation {
    pub place: Place,
    /// Lower case for headers; exact for query parameters and cookies.
    pub name: String,
    /// Lower-case scheme (`bearer`) expected before the credential.
    pub scheme: Option<String>,
}

/// Request headers with lower-case names, in arrival order; duplicates kept.
#[derive(Debug, Clone, Default)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    pub fn with_capacity(n: usize) -> Self {
        Headers(Vec::with_capacity(n))
    }

    /// Adds a header; the name is lower-cased.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push((name.to_ascii_lowercase(), value.into()));
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn get_all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: AsRef<str>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let mut h = Headers::new();
        for (k, v) in iter {
            h.push(k.as_ref(), v);
        }
        h
    }
}

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub headers: Headers,
    pub method: String,
    /// Path with query string, as the client sent it.
    pub path: String,
    /// The client address (Envoy `source.address` or the TCP peer).
    pub source_ip: Option<IpAddr>,
    /// Envoy per-route `context_extensions`.
    pub context: HashMap<String, String>,
    /// The original request body when a front door has it (Hasura's POST
    /// webhook sends the GraphQL request), for webhook mode.
    pub body: Option<serde_json::Value>,
}

/// What a mode found at its token location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential<'a> {
    /// Nothing there, or a credential of another scheme: the mode is skipped.
    Absent,
    /// A credential (scheme stripped); may still be empty or invalid.
    Present(Cow<'a, str>),
    /// Several values at the location: refused rather than guessed.
    Ambiguous,
}

impl Request {
    pub fn credential<'a>(&'a self, loc: &TokenLocation) -> Credential<'a> {
        let scheme = loc.scheme.as_deref();
        let one = match loc.place {
            Place::Header => single(self.headers.get_all(&loc.name)),
            Place::Cookie => single(
                self.headers
                    .get_all("cookie")
                    .flat_map(|h| h.split(';'))
                    .filter_map(|c| {
                        let (n, v) = c.trim().split_once('=')?;
                        n.trim().eq_ignore_ascii_case(&loc.name).then(|| {
                            let v = v.trim();
                            v.strip_prefix('"')
                                .and_then(|v| v.strip_suffix('"'))
                                .unwrap_or(v)
                        })
                    }),
            ),
            Place::Query => {
                // Percent-decoded, hence owned.
                return match self.query_param(&loc.name) {
                    QueryParam::Absent => Credential::Absent,
                    QueryParam::Many => Credential::Ambiguous,
                    QueryParam::One(v) => match strip_scheme(&v, scheme) {
                        Some(c) => Credential::Present(Cow::Owned(c.to_owned())),
                        None => Credential::Absent,
                    },
                };
            }
        };
        match one {
            Single::None => Credential::Absent,
            Single::Many => Credential::Ambiguous,
            Single::One(v) => match strip_scheme(v, scheme) {
                Some(c) => Credential::Present(Cow::Borrowed(c)),
                None => Credential::Absent,
            },
        }
    }

    fn query_param(&self, name: &str) -> QueryParam {
        let Some((_, query)) = self.path.split_once('?') else {
            return QueryParam::Absent;
        };
        let query = query.split('#').next().unwrap_or("");
        let mut found = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k == name {
                if found.is_some() {
                    return QueryParam::Many;
                }
                found = Some(v.into_owned());
            }
        }
        match found {
            Some(v) => QueryParam::One(v),
            None => QueryParam::Absent,
        }
    }
}

enum QueryParam {
    Absent,
    One(String),
    Many,
}

enum Single<'a> {
    None,
    One(&'a str),
    Many,
}

fn single<'a>(mut it: impl Iterator<Item = &'a str>) -> Single<'a> {
    match (it.next(), it.next()) {
        (None, _) => Single::None,
        (Some(v), None) => Single::One(v),
        (Some(_), Some(_)) => Single::Many,
    }
}

/// Strips an expected scheme (`Bearer x` -> `x`, case-insensitive). A value
/// of another scheme is absent for this mode (`None`); the bare scheme with
/// nothing after it is present but empty (an invalid credential).
fn strip_scheme<'a>(value: &'a str, scheme: Option<&str>) -> Option<&'a str> {
    let value = value.trim();
    let Some(scheme) = scheme else {
        return (!value.is_empty()).then_some(value);
    };
    let n = scheme.len();
    if value.len() < n || !value.is_char_boundary(n) || !value[..n].eq_ignore_ascii_case(scheme) {
        return None;
    }
    let rest = &value[n..];
    if rest.is_empty() {
        return Some("");
    }
    // `Bearerx` is another scheme, not ours.
    rest.starts_with([' ', '\t']).then(|| rest.trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(place: Place, name: &str, scheme: Option<&str>) -> TokenLocation {
        TokenLocation {
            place,
            name: name.into(),
            scheme: scheme.map(str::to_owned),
        }
    }

    fn req(headers: &[(&str, &str)], path: &str) -> Request {
        Request {
            headers: headers.iter().map(|(k, v)| (*k, *v)).collect(),
            path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn header_with_scheme() {
        let l = loc(Place::Header, "authorization", Some("bearer"));
        assert_eq!(
            req(&[("Authorization", "BEARER abc")], "/").credential(&l),
            Credential::Present("abc".into())
        );
        assert_eq!(
            req(&[("authorization", "Basic abc")], "/").credential(&l),
            Credential::Absent
        );
        assert_eq!(
            req(&[("authorization", "Bearer")], "/").credential(&l),
            Credential::Present("".into())
        );
        assert_eq!(
            req(&[("authorization", "Bearer ")], "/").credential(&l),
            Credential::Present("".into())
        );
        assert_eq!(req(&[], "/").credential(&l), Credential::Absent);
        assert_eq!(
            req(
                &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
                "/"
            )
            .credential(&l),
            Credential::Ambiguous
        );
        assert_eq!(
            req(&[("authorization", "Bearerabc")], "/").credential(&l),
            Credential::Absent
        );
    }

    #[test]
    fn cookie_among_many() {
        let l = loc(Place::Cookie, "token", None);
        let r = req(&[("cookie", "a=1; token=xyz; b=2")], "/");
        assert_eq!(r.credential(&l), Credential::Present("xyz".into()));
        let r = req(&[("cookie", "a=1"), ("cookie", "TOKEN=\"q\"")], "/");
        assert_eq!(r.credential(&l), Credential::Present("q".into()));
        let r = req(&[("cookie", "token=1; token=2")], "/");
        assert_eq!(r.credential(&l), Credential::Ambiguous);
        assert_eq!(
            req(&[("cookie", "a=1")], "/").credential(&l),
            Credential::Absent
        );
    }

    #[test]
    fn query_by_exact_name() {
        let l = loc(Place::Query, "access_token", None);
        let r = req(&[], "/x?a=1&access_token=t%2Bk");
        assert_eq!(r.credential(&l), Credential::Present("t+k".into()));
        assert_eq!(
            req(&[], "/x?Access_Token=1").credential(&l),
            Credential::Absent
        );
        assert_eq!(
            req(&[], "/x?access_token=1&access_token=2").credential(&l),
            Credential::Ambiguous
        );
        assert_eq!(req(&[], "/x").credential(&l), Credential::Absent);
    }
}
