//! Reference codecs built on prost's generated types: what the server's
//! own decoder (`wire`) and allow encoder (`encode`) are tested and fuzzed
//! against. Not part of the server: built for unit tests and with the
//! `reference` feature (the fuzz targets).

use std::collections::HashMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue};
use envoy_types::pb::google::rpc::Status;
use prost::Message;

use super::{deny, header};
use crate::decision::{Allow, Decision, Deny, DenyReason, MetaValue};
use crate::pipeline::Answer;
use crate::request::{Headers, Request};

/// Builds the neutral request from Envoy's attributes. Headers come from
/// `header_map` (with `encode_raw_headers`) and from `headers`; pseudo
/// headers are kept out of the header list, except `host` as `:authority`.
pub fn to_request(check: CheckRequest, peer: Option<IpAddr>) -> Request {
    let mut req = Request::default();
    let Some(attrs) = check.attributes else {
        req.source_ip = peer;
        return req;
    };
    req.context = attrs.context_extensions;
    req.source_ip = attrs
        .source
        .and_then(|s| s.address)
        .and_then(|a| a.address)
        .and_then(|a| match a {
            Address::SocketAddress(sa) => sa.address.parse().ok(),
            _ => None,
        })
        .or(peer);
    let Some(http) = attrs.request.and_then(|r| r.http) else {
        return req;
    };
    let raw = http.header_map.map(|m| m.headers).unwrap_or_default();
    let mut headers = Headers::with_capacity(http.headers.len() + raw.len());
    for (k, v) in http.headers {
        if !k.starts_with(':') {
            headers.push(&k, v);
        }
    }
    for hv in raw {
        if hv.key.starts_with(':') {
            continue;
        }
        let value = if hv.raw_value.is_empty() {
            hv.value
        } else {
            // Non-UTF-8 bytes become U+FFFD: such a credential cannot verify.
            String::from_utf8(hv.raw_value)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        };
        headers.push(&hv.key, value);
    }
    if !http.host.is_empty() {
        headers.push(super::wire::AUTHORITY, http.host);
    }
    req.headers = headers;
    req.method = http.method;
    req.path = http.path;
    req
}

/// Renders by value: the decision's strings move into the response.
pub fn render(decision: Decision) -> CheckResponse {
    match decision {
        Decision::Allow(a) => allow(a),
        Decision::Deny(d) => deny(&d),
    }
}

/// Renders what [`crate::pipeline::Engine::decide_memo`] answered; memo
/// bytes are read back as the response they encode.
pub fn render_answer(answer: Answer) -> CheckResponse {
    match answer {
        Answer::Decided(d) => render(d),
        Answer::Memo(m) => CheckResponse::decode(m.bytes()).unwrap_or_else(|_| {
            deny(&Deny {
                reason: DenyReason::InternalError,
                mode: Some(m.mode),
            })
        }),
    }
}

fn allow(a: Allow) -> CheckResponse {
    let fields: HashMap<String, PbValue> = a
        .metadata()
        .into_iter()
        .filter_map(|(name, field)| {
            let kind = match field? {
                MetaValue::Text(s) => Kind::StringValue(s.into_owned()),
                MetaValue::Bool(b) => Kind::BoolValue(b),
            };
            Some((name.to_owned(), PbValue { kind: Some(kind) }))
        })
        .chain(a.extra_metadata.iter().map(|f| {
            (
                f.key.to_string(),
                PbValue {
                    kind: Some(Kind::StringValue(f.value.clone())),
                },
            )
        }))
        .collect();
    CheckResponse {
        status: Some(Status {
            code: 0,
            message: String::new(),
            details: Vec::new(),
        }),
        dynamic_metadata: Some(Struct { fields }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: a
                .headers_to_set()
                .map(|(k, v)| header(k.to_owned(), v.to_owned()))
                .collect(),
            headers_to_remove: a.headers_to_remove,
            ..Default::default()
        })),
    }
}
