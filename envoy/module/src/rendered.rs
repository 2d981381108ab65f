//! An allow as the module applies it, kept in one flat allocation with the
//! token-cache entry (the engine's memo, docs/design.md "Verified-token
//! cache"): a cached token's repeat sets the same headers and metadata
//! without re-reading its session. Checked against [`FilterConfig::apply`]
//! of the plain decision by the module's tests.
//!
//! [`FilterConfig::apply`]: crate::filter::FilterConfig::apply

#![forbid(unsafe_code)]

use std::borrow::Cow;

use authgate_core::decision::{self, Allow, Metadata, ModeRef};

/// Layout: a flags byte (elevated, role present, user id present), then the
/// role and user id when present, then the headers to set, the headers to
/// remove and the configured metadata fields, each list a `u32` count of
/// `u32`-length-prefixed strings.
/// Every count and length fits: a session and its values come from one
/// request's headers or one bounded webhook answer.
const ELEVATED: u8 = 1;
const ROLE: u8 = 2;
const USER_ID: u8 = 4;

/// Encodes `a` ([`authgate_core::pipeline::EncodeAllow`]).
pub fn encode(a: &Allow) -> Box<[u8]> {
    let meta = a.metadata();
    let text = |name: &str| {
        meta.iter().find_map(|(k, v)| match v {
            Some(decision::MetaValue::Text(s)) if *k == name => Some(s.as_ref()),
            _ => None,
        })
    };
    let (role, user_id) = (text("role"), text("user_id"));
    let mut out = Vec::with_capacity(
        64 + a
            .headers_to_set()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>(),
    );
    let mut flags = 0;
    if a.elevated {
        flags |= ELEVATED;
    }
    if role.is_some() {
        flags |= ROLE;
    }
    if user_id.is_some() {
        flags |= USER_ID;
    }
    out.push(flags);
    for s in [role, user_id].into_iter().flatten() {
        put(&mut out, s);
    }
    put_count(&mut out, a.headers_to_set().count());
    for (k, v) in a.headers_to_set() {
        put(&mut out, k);
        put(&mut out, v);
    }
    put_count(&mut out, a.headers_to_remove.len());
    for h in &a.headers_to_remove {
        put(&mut out, h);
    }
    put_count(&mut out, a.extra_metadata.len());
    for f in &a.extra_metadata {
        put(&mut out, &f.key);
        put(&mut out, &f.value);
    }
    out.into_boxed_slice()
}

fn put(out: &mut Vec<u8>, s: &str) {
    put_count(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A count or length; one past `u32` (impossible, see the layout) would
/// make the bytes unreadable, and the repeat fail closed.
fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

/// An encoded allow, read back: borrowed from the bytes, checked whole
/// before anything is applied.
#[derive(Debug)]
pub struct Rendered<'a> {
    elevated: bool,
    role: Option<&'a str>,
    user_id: Option<&'a str>,
    set: List<'a>,
    remove: List<'a>,
    extra: List<'a>,
}

/// The bytes holding the strings of one list.
#[derive(Debug, Clone, Copy)]
struct List<'a> {
    bytes: &'a [u8],
}

impl<'a> Rendered<'a> {
    /// `None` if `bytes` is not what [`encode`] wrote.
    pub fn read(bytes: &'a [u8]) -> Option<Rendered<'a>> {
        let mut r = Reader(bytes);
        let flags = r.byte()?;
        if flags & !(ELEVATED | ROLE | USER_ID) != 0 {
            return None;
        }
        let role = if flags & ROLE != 0 {
            Some(r.str()?)
        } else {
            None
        };
        let user_id = if flags & USER_ID != 0 {
            Some(r.str()?)
        } else {
            None
        };
        let set = r.list(2)?;
        let remove = r.list(1)?;
        let extra = r.list(2)?;
        if !r.0.is_empty() {
            return None;
        }
        Some(Rendered {
            elevated: flags & ELEVATED != 0,
            role,
            user_id,
            set,
            remove,
            extra,
        })
    }

    /// The configured metadata fields (`dynamicMetadata`), key and value.
    pub fn extra_metadata(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let mut strs = self.extra.strs();
        std::iter::from_fn(move || Some((strs.next()?, strs.next()?)))
    }

    /// The headers to set, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        let mut strs = self.set.strs();
        std::iter::from_fn(move || Some((strs.next()?, strs.next()?)))
    }

    /// The client headers to remove.
    pub fn headers_to_remove(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.remove.strs()
    }

    /// The allow's dynamic metadata ([`Allow::metadata`]).
    pub fn metadata<'m>(&self, mode: &'m ModeRef) -> Metadata<'m>
    where
        'a: 'm,
    {
        decision::metadata(
            self.role.map(Cow::Borrowed),
            self.user_id.map(Cow::Borrowed),
            mode,
            self.elevated,
        )
    }
}

impl<'a> List<'a> {
    fn strs(self) -> impl Iterator<Item = &'a str> {
        let mut r = Reader(self.bytes);
        // Checked whole by `Rendered::read`.
        std::iter::from_fn(move || r.str())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        std::str::from_utf8(self.take(usize::try_from(len).ok()?)?).ok()
    }

    /// A list of `count` items of `per` strings each; its bytes checked.
    fn list(&mut self, per: usize) -> Option<List<'a>> {
        let count = usize::try_from(u32::from_le_bytes(self.take(4)?.try_into().ok()?)).ok()?;
        let start = self.0;
        for _ in 0..count.checked_mul(per)? {
            self.str()?;
        }
        let used = start.len() - self.0.len();
        Some(List {
            bytes: &start[..used],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_or_extended_bytes_are_refused() {
        let a = Allow {
            session: authgate_core::session::Session::default(),
            headers: vec![("x-hasura-role".into(), "user".into())],
            mode: ModeRef {
                kind: "jwt",
                id: "jwt".into(),
            },
            elevated: true,
            headers_to_remove: vec!["x-hasura-org-id".into()],
            upstream_token: Some(authgate_core::decision::UpstreamHeader {
                name: "authorization".into(),
                value: "Bearer e.y.j".into(),
                fresh_until: 0,
            }),
            extra_metadata: vec![authgate_core::decision::ExtraField {
                key: "tenant".into(),
                header: "x-authgate-meta-tenant".into(),
                value: "acme".into(),
            }],
        };
        let bytes = encode(&a);
        let r = Rendered::read(&bytes).expect("reads back");
        assert_eq!(
            r.headers().collect::<Vec<_>>(),
            [("x-hasura-role", "user"), ("authorization", "Bearer e.y.j")]
        );
        assert_eq!(
            r.headers_to_remove().collect::<Vec<_>>(),
            ["x-hasura-org-id"]
        );
        assert_eq!(r.extra_metadata().collect::<Vec<_>>(), [("tenant", "acme")]);
        for n in 0..bytes.len() {
            assert!(Rendered::read(&bytes[..n]).is_none(), "{n} bytes");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Rendered::read(&longer).is_none());
        assert!(Rendered::read(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_none());
        // A count larger than the bytes hold.
        assert!(Rendered::read(&[0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]).is_none());
    }
}
