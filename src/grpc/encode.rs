//! Writes the `CheckResponse` of an allow straight from the [`Allow`], in
//! Envoy's wire format. Building prost's `CheckResponse` first meant a map
//! (SipHash) and a string per dynamic-metadata field, a `HeaderValueOption`
//! per header, prost walking it all twice (lengths, then bytes) and dropping
//! it: about a tenth of the instructions of a cached Check. The bytes decode
//! (prost) to exactly what [`super::render`] builds; unit tests here and the
//! `check_request` fuzz target compare the two.

use bytes::BufMut;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;

use crate::decision::{Allow, MetaValue};

// Every field number here is below 16: a key is one byte, (field << 3) | wire.
const LEN: u8 = 2;
const VARINT: u8 = 0;

fn key(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits (at least one).
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Bytes of a length-delimited field holding `n` bytes.
fn len_field(n: usize) -> usize {
    1 + varint_len(n as u64) + n
}

fn put_len(buf: &mut impl BufMut, field: u8, n: usize) {
    buf.put_u8(key(field, LEN));
    put_varint(buf, n as u64);
}

/// A proto3 string field: absent when empty, as prost writes it.
fn str_field(s: &str) -> usize {
    if s.is_empty() { 0 } else { len_field(s.len()) }
}

fn put_str(buf: &mut impl BufMut, field: u8, s: &str) {
    if !s.is_empty() {
        put_len(buf, field, s.len());
        buf.put_slice(s.as_bytes());
    }
}

const APPEND_ACTION: u64 = HeaderAppendAction::OverwriteIfExistsOrAdd as i32 as u64;

/// `HeaderValue { key: 1, value: 2 }` length.
fn header_value(k: &str, v: &str) -> usize {
    str_field(k) + str_field(v)
}

/// `HeaderValueOption { header: 1, append: 2 (BoolValue false: an empty
/// message), append_action: 3, keep_empty_value: 4 (true for an empty
/// value) }` length (see `super::header`).
fn header_option(k: &str, v: &str) -> usize {
    len_field(header_value(k, v))
        + 2
        + 1
        + varint_len(APPEND_ACTION)
        + if v.is_empty() { 2 } else { 0 }
}

/// A dynamic-metadata field: `Value.string_value` (3) or `bool_value` (4).
fn value_len(f: &MetaValue<'_>) -> usize {
    match f {
        // A oneof member is written even when empty.
        MetaValue::Text(s) => len_field(s.len()),
        MetaValue::Bool(_) => 2,
    }
}

/// A `Struct.fields` map entry `{ key: 1, value: 2 }` length.
fn entry_len(f: &MetaValue<'_>, name: &str) -> usize {
    str_field(name) + len_field(value_len(f))
}

/// Appends the serialized `CheckResponse` of `a` to `buf`.
pub fn put_allow(a: &Allow, buf: &mut impl BufMut) {
    let fields = a.metadata();
    let extra = || {
        a.extra_metadata.iter().map(|f| {
            (
                &*f.key,
                MetaValue::Text(std::borrow::Cow::Borrowed(&*f.value)),
            )
        })
    };
    let ok_len: usize = a
        .headers_to_set()
        .map(|(k, v)| len_field(header_option(k, v)))
        .sum::<usize>()
        + a.headers_to_remove
            .iter()
            .map(|h| len_field(h.len()))
            .sum::<usize>();
    let struct_len: usize = fields
        .iter()
        .filter_map(|(name, f)| f.as_ref().map(|f| len_field(entry_len(f, name))))
        .sum::<usize>()
        + extra()
            .map(|(name, f)| len_field(entry_len(&f, name)))
            .sum::<usize>();

    // CheckResponse.status (1): google.rpc.Status with code 0, i.e. empty.
    put_len(buf, 1, 0);
    // CheckResponse.ok_response (3): OkHttpResponse.
    put_len(buf, 3, ok_len);
    for (k, v) in a.headers_to_set() {
        // OkHttpResponse.headers (2): HeaderValueOption.
        put_len(buf, 2, header_option(k, v));
        put_len(buf, 1, header_value(k, v));
        put_str(buf, 1, k);
        put_str(buf, 2, v);
        put_len(buf, 2, 0);
        buf.put_u8(key(3, VARINT));
        put_varint(buf, APPEND_ACTION);
        if v.is_empty() {
            buf.put_u8(key(4, VARINT));
            buf.put_u8(1);
        }
    }
    for h in &a.headers_to_remove {
        // OkHttpResponse.headers_to_remove (5): every entry, even "".
        put_len(buf, 5, h.len());
        buf.put_slice(h.as_bytes());
    }
    // CheckResponse.dynamic_metadata (4): Struct, fields (1) map entries.
    put_len(buf, 4, struct_len);
    let fields = fields
        .into_iter()
        .filter_map(|(name, f)| Some((name, f?)))
        .chain(extra());
    for (name, f) in fields {
        let f = &f;
        put_len(buf, 1, entry_len(f, name));
        put_str(buf, 1, name);
        put_len(buf, 2, value_len(f));
        match f {
            MetaValue::Text(s) => {
                put_len(buf, 3, s.len());
                buf.put_slice(s.as_bytes());
            }
            MetaValue::Bool(b) => {
                buf.put_u8(key(4, VARINT));
                buf.put_u8(u8::from(*b));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
    use prost::Message;
    use serde_json::json;

    use super::{put_allow, varint_len};
    use crate::decision::{Allow, Decision, ExtraField, ModeRef, UpstreamHeader};
    use crate::session::Session;

    fn allow(vars: serde_json::Value, headers: &[(&str, &str)], remove: &[&str]) -> Allow {
        let mut session = Session::new();
        for (k, v) in vars.as_object().unwrap() {
            session.insert(k, v.clone());
        }
        Allow {
            session,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mode: ModeRef {
                kind: "jwt",
                id: Arc::from("users"),
            },
            elevated: false,
            headers_to_remove: remove.iter().map(|s| s.to_string()).collect(),
            upstream_token: None,
            extra_metadata: Vec::new(),
        }
    }

    #[test]
    fn varint_lengths() {
        for (v, n) in [
            (0u64, 1),
            (1, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
        ] {
            assert_eq!(varint_len(v), n, "{v}");
        }
        assert_eq!(varint_len(u64::MAX), 10);
    }

    #[test]
    fn allow_bytes_decode_to_what_render_builds() {
        let long = "x".repeat(20_000);
        let mut cases = vec![
            allow(
                json!({"x-hasura-role": "user", "x-hasura-user-id": "u1"}),
                &[("x-hasura-role", "user"), ("x-hasura-user-id", "u1")],
                &["x-hasura-admin-secret", "x_hasura_role"],
            ),
            allow(json!({"x-hasura-user-id": 42}), &[], &[]),
            allow(json!({}), &[("x-empty", "")], &[""]),
            allow(
                json!({"x-hasura-role": "ünï", "x-hasura-org": long}),
                &[("x-hasura-role", "ünï"), ("x-hasura-org", &long)],
                &[],
            ),
        ];
        cases[1].elevated = true;
        cases[1].upstream_token = Some(UpstreamHeader {
            name: Arc::from("authorization"),
            value: Arc::from("Bearer e.y.j"),
            fresh_until: 0,
        });
        cases[1].extra_metadata = vec![
            ExtraField {
                key: Arc::from("tenant"),
                header: Arc::from("x-authgate-meta-tenant"),
                value: "t-1".into(),
            },
            ExtraField {
                key: Arc::from("plan"),
                header: Arc::from("x-authgate-meta-plan"),
                value: String::new(),
            },
        ];
        cases[2].mode = ModeRef {
            kind: "noAuth",
            id: Arc::from(""),
        };
        for (i, a) in cases.into_iter().enumerate() {
            let mut bytes = Vec::new();
            put_allow(&a, &mut bytes);
            let decoded = CheckResponse::decode(bytes.as_slice())
                .unwrap_or_else(|e| panic!("case {i}: prost cannot read it: {e}"));
            assert_eq!(
                decoded,
                super::super::render(Decision::Allow(a)),
                "case {i}"
            );
        }
    }
}
