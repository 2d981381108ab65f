//! Decodes a serialized `CheckRequest` straight into a [`Request`], reading
//! only the fields the pipeline uses: the client address, the context
//! extensions, the method, the path and the headers (`headers` map and
//! `header_map`). Decoding the whole message with prost first built a tree of
//! maps (SipHash), strings and sub-messages per Check only to be converted
//! and dropped; this is about a third of the instructions of the default
//! decoder, and gives the same [`Request`] as [`super::to_request`] for every
//! message prost accepts (unit tests here, and the `check_request` fuzz
//! target compares the two).
//!
//! Fields the pipeline does not read are skipped without being parsed, so a
//! malformed value there (bad UTF-8 in `scheme`, a broken `destination`) is
//! not an error here where prost would refuse the whole message. Everything read
//! is checked as prost checks it: wire types, lengths, varints, UTF-8.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

use crate::request::{Headers, Request};

/// Where `HttpRequest.host` goes among the headers (Envoy's own name for
/// it; clients cannot send pseudo-headers, which are otherwise kept out).
pub const AUTHORITY: &str = ":authority";

/// Why a message could not be decoded (reported as a gRPC error, as tonic
/// does for a message prost cannot decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError(&'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed CheckRequest: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

type Result<T> = std::result::Result<T, DecodeError>;

// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// prost's recursion limit, for nested groups in skipped fields.
const MAX_DEPTH: u32 = 100;

/// A cursor over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for (i, &b) in self.buf.iter().enumerate().take(10) {
            if i == 9 && b > 1 {
                return Err(DecodeError("varint overflows 64 bits"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        // Fewer than 10 bytes left, all with the continuation bit (10 such
        // bytes fail above: the 10th may only be 0 or 1).
        Err(DecodeError("truncated varint"))
    }

    /// The next field's number and wire type.
    fn key(&mut self) -> Result<(u32, u8)> {
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| DecodeError("field key overflows 32 bits"))?;
        let wire = (key & 7) as u8;
        let field = key >> 3;
        if field == 0 {
            return Err(DecodeError("field number 0"));
        }
        if wire > FIXED32 {
            return Err(DecodeError("unknown wire type"));
        }
        Ok((field, wire))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(DecodeError("length beyond the end of the message"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| DecodeError("length overflows"))?;
        self.take(n)
    }

    /// A length-delimited field of a known field number: checks the wire type.
    fn expect_len(&mut self, wire: u8) -> Result<&'a [u8]> {
        if wire != LEN {
            return Err(DecodeError("wrong wire type for a known field"));
        }
        self.bytes()
    }

    fn str(&mut self, wire: u8) -> Result<&'a str> {
        std::str::from_utf8(self.expect_len(wire)?)
            .map_err(|_| DecodeError("string field is not UTF-8"))
    }

    /// Skips a field the pipeline does not read.
    fn skip(&mut self, field: u32, wire: u8, depth: u32) -> Result<()> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            FIXED32 => self.take(4).map(drop),
            LEN => self.bytes().map(drop),
            START_GROUP => {
                if depth >= MAX_DEPTH {
                    return Err(DecodeError("groups nested too deep"));
                }
                loop {
                    if self.is_empty() {
                        return Err(DecodeError("unterminated group"));
                    }
                    let (f, w) = self.key()?;
                    if w == END_GROUP {
                        return if f == field {
                            Ok(())
                        } else {
                            Err(DecodeError("mismatched end group"))
                        };
                    }
                    self.skip(f, w, depth + 1)?;
                }
            }
            _ => Err(DecodeError("unexpected end group")),
        }
    }
}

/// What the walk collects, borrowed from the message; turned into a
/// [`Request`] (one allocation per kept string) at the end.
#[derive(Default)]
struct Fields<'a> {
    /// `Some` while `source.address` holds a `socket_address` (its text).
    socket_address: Option<&'a str>,
    context: HashMap<String, String>,
    method: &'a str,
    path: &'a str,
    /// From the `headers` map.
    headers: Vec<(&'a str, &'a str)>,
    /// From `header_map`: after the map's, as `to_request` orders them.
    raw_headers: Vec<(&'a str, Cow<'a, str>)>,
    /// `HttpRequest.host`: the request's Host or `:authority`.
    host: &'a str,
}

/// Decodes `buf` (one serialized `CheckRequest`). `peer` is the TCP peer,
/// used when the message carries no parseable client address.
pub fn decode_check(buf: &[u8], peer: Option<IpAddr>) -> Result<Request> {
    let mut f = Fields::default();
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        match r.key()? {
            (1, w) => attributes(r.expect_len(w)?, &mut f)?,
            (field, w) => r.skip(field, w, 0)?,
        }
    }
    if f.headers.len() > 1 {
        // Protobuf map semantics, as prost's HashMap: the last entry of a key
        // wins. (Stable sort of the reversed list, keep the first of each.)
        f.headers.reverse();
        f.headers.sort_by(|a, b| a.0.cmp(b.0));
        f.headers.dedup_by(|a, b| a.0 == b.0);
    }
    let mut headers = Headers::with_capacity(f.headers.len() + f.raw_headers.len());
    for (k, v) in f.headers {
        headers.push(k, v);
    }
    for (k, v) in f.raw_headers {
        headers.push(k, v);
    }
    if !f.host.is_empty() {
        headers.push(AUTHORITY, f.host);
    }
    Ok(Request {
        headers,
        method: f.method.to_owned(),
        path: f.path.to_owned(),
        source_ip: f.socket_address.and_then(|a| a.parse().ok()).or(peer),
        context: f.context,
        body: None,
    })
}

/// `AttributeContext`: source (1), request (4), context_extensions (10).
fn attributes<'a>(buf: &'a [u8], f: &mut Fields<'a>) -> Result<()> {
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        match r.key()? {
            (1, w) => peer(r.expect_len(w)?, f)?,
            (4, w) => request(r.expect_len(w)?, f)?,
            (10, w) => {
                let (k, v) = map_entry(r.expect_len(w)?)?;
                f.context.insert(k.to_owned(), v.to_owned());
            }
            (field, w) => r.skip(field, w, 0)?,
        }
    }
    Ok(())
}

/// `Peer`: address (1) -> `Address` oneof: socket_address (1), pipe (2),
/// envoy_internal_address (3). The last variant seen wins; two
/// `socket_address` occurrences merge (protobuf rules).
fn peer<'a>(buf: &'a [u8], f: &mut Fields<'a>) -> Result<()> {
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        match r.key()? {
            (1, w) => {
                let mut a = Reader::new(r.expect_len(w)?);
                while !a.is_empty() {
                    match a.key()? {
                        (1, w) => {
                            let sa = a.expect_len(w)?;
                            let text = f.socket_address.get_or_insert("");
                            socket_address(sa, text)?;
                        }
                        (2 | 3, w) => {
                            a.expect_len(w)?;
                            f.socket_address = None;
                        }
                        (field, w) => a.skip(field, w, 0)?,
                    }
                }
            }
            (field, w) => r.skip(field, w, 0)?,
        }
    }
    Ok(())
}

/// `SocketAddress`: address (2).
fn socket_address<'a>(buf: &'a [u8], text: &mut &'a str) -> Result<()> {
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        match r.key()? {
            (2, w) => *text = r.str(w)?,
            (field, w) => r.skip(field, w, 0)?,
        }
    }
    Ok(())
}

/// `AttributeContext.Request`: http (2) -> `HttpRequest`: method (2),
/// headers (3), path (4), host (5), header_map (13).
fn request<'a>(buf: &'a [u8], f: &mut Fields<'a>) -> Result<()> {
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        match r.key()? {
            (2, w) => {
                let mut h = Reader::new(r.expect_len(w)?);
                while !h.is_empty() {
                    match h.key()? {
                        (2, w) => f.method = h.str(w)?,
                        (3, w) => {
                            let (k, v) = map_entry(h.expect_len(w)?)?;
                            if !k.starts_with(':') {
                                f.headers.push((k, v));
                            }
                        }
                        (4, w) => f.path = h.str(w)?,
                        (5, w) => f.host = h.str(w)?,
                        (13, w) => header_map(h.expect_len(w)?, f)?,
                        (field, w) => h.skip(field, w, 0)?,
                    }
                }
            }
            (field, w) => r.skip(field, w, 0)?,
        }
    }
    Ok(())
}

/// `HeaderMap`: headers (1), each a `HeaderValue`: key (1), value (2),
/// raw_value (3, bytes; wins when not empty, non-UTF-8 bytes become U+FFFD
/// as in `to_request`).
fn header_map<'a>(buf: &'a [u8], f: &mut Fields<'a>) -> Result<()> {
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        match r.key()? {
            (1, w) => {
                let mut h = Reader::new(r.expect_len(w)?);
                let (mut key, mut value, mut raw): (&str, &str, &[u8]) = ("", "", &[]);
                while !h.is_empty() {
                    match h.key()? {
                        (1, w) => key = h.str(w)?,
                        (2, w) => value = h.str(w)?,
                        (3, w) => raw = h.expect_len(w)?,
                        (field, w) => h.skip(field, w, 0)?,
                    }
                }
                if key.starts_with(':') {
                    continue;
                }
                let value = if raw.is_empty() {
                    Cow::Borrowed(value)
                } else {
                    String::from_utf8_lossy(raw)
                };
                f.raw_headers.push((key, value));
            }
            (field, w) => r.skip(field, w, 0)?,
        }
    }
    Ok(())
}

/// A `map<string, string>` entry: key (1), value (2), each "" when absent.
fn map_entry(buf: &[u8]) -> Result<(&str, &str)> {
    let mut r = Reader::new(buf);
    let (mut k, mut v) = ("", "");
    while !r.is_empty() {
        match r.key()? {
            (1, w) => k = r.str(w)?,
            (2, w) => v = r.str(w)?,
            (field, w) => r.skip(field, w, 0)?,
        }
    }
    Ok((k, v))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
    use envoy_types::pb::envoy::config::core::v3::{
        Address, HeaderMap, HeaderValue, Pipe, SocketAddress,
    };
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request as PbRequest,
    };
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    use prost::Message;

    use super::{DecodeError, decode_check};
    use crate::request::Request;

    type Normal = (
        Vec<(String, String)>,
        String,
        String,
        Option<IpAddr>,
        Vec<(String, String)>,
    );

    /// What the pipeline can observe of a request, order-free (prost's maps
    /// iterate in random order).
    fn normal(r: &Request) -> Normal {
        let mut h: Vec<_> = r
            .headers
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        h.sort();
        let mut c: Vec<_> = r.context.clone().into_iter().collect();
        c.sort();
        (h, r.method.clone(), r.path.clone(), r.source_ip, c)
    }

    fn peer() -> Option<IpAddr> {
        Some("192.0.2.7".parse().unwrap())
    }

    /// Both decoders on `bytes`: when prost accepts it, ours must too, with
    /// the same request. Returns ours.
    fn same(bytes: &[u8]) -> Result<Request, DecodeError> {
        let ours = decode_check(bytes, peer());
        if let Ok(check) = CheckRequest::decode(bytes) {
            let reference = super::super::to_request(check, peer());
            let ours = ours.clone().unwrap_or_else(|e| {
                panic!("prost decodes {bytes:?}, ours refuses: {e}");
            });
            assert_eq!(normal(&ours), normal(&reference), "bytes {bytes:?}");
        }
        ours
    }

    fn hv(key: &str, value: &str, raw: &[u8]) -> HeaderValue {
        HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: raw.to_vec(),
        }
    }

    fn socket(addr: &str) -> Option<Peer> {
        Some(Peer {
            address: Some(Address {
                address: Some(AddressKind::SocketAddress(SocketAddress {
                    address: addr.into(),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })
    }

    fn check(
        source: Option<Peer>,
        headers: &[(&str, &str)],
        raw: Vec<HeaderValue>,
        context: &[(&str, &str)],
    ) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source,
                destination: socket("10.0.0.1"),
                request: Some(PbRequest {
                    time: None,
                    http: Some(HttpRequest {
                        id: "req-1".into(),
                        method: "POST".into(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        header_map: (!raw.is_empty()).then_some(HeaderMap { headers: raw }),
                        path: "/v1/graphql?x=1".into(),
                        host: "api.example".into(),
                        scheme: "https".into(),
                        body: "{\"query\":1}".into(),
                        ..Default::default()
                    }),
                }),
                context_extensions: context
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
        }
    }

    fn samples() -> Vec<CheckRequest> {
        let headers = [
            (":authority", "api.example"),
            ("Authorization", "Bearer a.b.c"),
            ("x-hasura-role", "admin"),
            ("cookie", "a=1; b=2"),
        ];
        vec![
            CheckRequest::default(),
            CheckRequest {
                attributes: Some(AttributeContext::default()),
            },
            check(
                socket("203.0.113.9"),
                &headers,
                vec![],
                &[("route", "admin")],
            ),
            check(socket("2001:db8::1"), &[], vec![], &[]),
            check(socket("not an ip"), &headers, vec![], &[]),
            check(None, &headers, vec![], &[("a", ""), ("", "b")]),
            check(
                Some(Peer {
                    address: Some(Address {
                        address: Some(AddressKind::Pipe(Pipe {
                            path: "/run/envoy.sock".into(),
                            mode: 0,
                        })),
                    }),
                    ..Default::default()
                }),
                &headers,
                vec![],
                &[],
            ),
            check(
                socket("198.51.100.1"),
                &[],
                vec![
                    hv(":path", "/x", b""),
                    hv("authorization", "", b"Bearer raw"),
                    hv("X-Other", "text", b""),
                    hv("x-bin", "", &[0xff, 0xfe, b'a']),
                    hv("x-dup", "1", b""),
                    hv("x-dup", "2", b""),
                ],
                &[],
            ),
            check(
                socket("198.51.100.1"),
                &headers,
                vec![hv("authorization", "", b"Bearer both")],
                &[],
            ),
        ]
    }

    #[test]
    fn decodes_what_to_request_builds() {
        for (i, c) in samples().iter().enumerate() {
            let ours = same(&c.encode_to_vec()).unwrap_or_else(|e| panic!("sample {i}: {e}"));
            if i == 2 {
                assert_eq!(ours.headers.get("authorization"), Some("Bearer a.b.c"));
                assert_eq!(ours.headers.get(":authority"), Some("api.example"));
                assert_eq!(ours.method, "POST");
                assert_eq!(ours.path, "/v1/graphql?x=1");
                assert_eq!(ours.source_ip, Some("203.0.113.9".parse().unwrap()));
                assert_eq!(ours.context.get("route").map(String::as_str), Some("admin"));
            }
        }
        let no_address = decode_check(&samples()[4].encode_to_vec(), peer()).unwrap();
        assert_eq!(
            no_address.source_ip,
            peer(),
            "an unparseable address falls back to the peer"
        );
    }

    /// Concatenated messages merge (protobuf rules): maps add up, strings
    /// and the address oneof take the last value, sub-messages merge.
    #[test]
    fn concatenated_messages_merge_as_prost_does() {
        let s = samples();
        for a in &s {
            for b in &s {
                let mut bytes = a.encode_to_vec();
                bytes.extend(b.encode_to_vec());
                same(&bytes).unwrap();
            }
        }
        // The same map key twice: the last wins.
        let mut bytes = check(None, &[("x-a", "1")], vec![], &[("k", "1")]).encode_to_vec();
        bytes.extend(check(None, &[("x-a", "2")], vec![], &[("k", "2")]).encode_to_vec());
        let r = same(&bytes).unwrap();
        assert_eq!(r.headers.get_all("x-a").collect::<Vec<_>>(), ["2"]);
        assert_eq!(r.context.get("k").map(String::as_str), Some("2"));
    }

    /// Every truncation and every single-byte change of the samples: never
    /// a panic; whenever prost accepts the bytes, the same request.
    #[test]
    fn mutated_messages_never_disagree_with_prost() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for c in samples() {
            let bytes = c.encode_to_vec();
            for n in 0..bytes.len() {
                let _ = same(&bytes[..n]);
            }
            for i in 0..bytes.len() {
                for v in [0u8, 1, 2, 0x7f, 0x80, 0xff, (next() & 0xff) as u8] {
                    let mut m = bytes.clone();
                    m[i] = v;
                    let _ = same(&m);
                }
            }
        }
    }

    #[test]
    fn malformed_wire_data_is_refused() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x0a], "truncated varint"),
            (&[0x0a, 0x05, 0x01], "length beyond the end of the message"),
            (&[0x00], "field number 0"),
            (&[0x0e], "unknown wire type"),
            (&[0x0f], "unknown wire type"),
            (&[0x14], "unexpected end group"),
            (
                &[
                    0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
                "varint overflows 64 bits",
            ),
            (
                &[
                    0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
                ],
                "varint overflows 64 bits",
            ),
            (
                &[0xf8, 0xff, 0xff, 0xff, 0xff, 0x01],
                "field key overflows 32 bits",
            ),
            // attributes as a varint: a known field with the wrong wire type.
            (&[0x08, 0x01], "wrong wire type for a known field"),
            // attributes.request.http.method = "\xff"
            (
                &[0x0a, 0x07, 0x22, 0x05, 0x12, 0x03, 0x12, 0x01, 0xff],
                "string field is not UTF-8",
            ),
            // an unknown group never closed, and one closed by another field number
            (&[0x1b, 0x08, 0x01], "unterminated group"),
            (&[0x1b, 0x24], "mismatched end group"),
        ];
        for (bytes, why) in cases {
            assert_eq!(
                decode_check(bytes, None).unwrap_err(),
                DecodeError(why),
                "{bytes:?}"
            );
            assert!(
                CheckRequest::decode(*bytes).is_err(),
                "prost refuses {bytes:?} too"
            );
        }
        // Groups nested past prost's recursion limit.
        let mut deep = vec![0x1b; 101];
        deep.extend(vec![0x1c; 101]);
        assert_eq!(
            decode_check(&deep, None).unwrap_err(),
            DecodeError("groups nested too deep")
        );
        // Unknown fields of every wire type, a well-formed group included, are skipped.
        let skipped = [
            0x18, 0x01, 0x21, 0, 0, 0, 0, 0, 0, 0, 0, 0x2d, 0, 0, 0, 0, 0x32, 0x00, 0x1b, 0x08,
            0x01, 0x1c,
        ];
        let r = same(&skipped).unwrap();
        assert_eq!(r.headers.len(), 0);
    }
}
