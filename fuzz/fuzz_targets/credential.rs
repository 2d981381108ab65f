//! Credential extraction: `Request::credential` for header,
//! cookie and query token locations, with and without a scheme, on a
//! request built directly (as the gRPC front door does) and through the
//! HTTP forward-auth front door (`http::to_request` for each proxy setting:
//! `X-Original-URI`, `X-Forwarded-Uri`, `/check` prefix).
//!
//! Input, as lines: `<h|c|q> <name> [scheme]` (an extra location), the URI
//! (path and query), then `name: value` header lines.
#![no_main]

use std::net::SocketAddr;

use authgate::forward_auth::{ForwardAuthProxy, ForwardError};
use authgate::request::{Credential, Headers, Request};
use authgate::request::{Place, TokenLocation};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use libfuzzer_sys::fuzz_target;

mod common;

fn loc(place: Place, name: &str, scheme: Option<&str>) -> TokenLocation {
    TokenLocation {
        place,
        // The config lower-cases header names and schemes; cookie and query
        // names are exact.
        name: match place {
            Place::Header => name.to_ascii_lowercase(),
            _ => name.to_owned(),
        },
        scheme: scheme.map(str::to_ascii_lowercase),
    }
}

fn fixed() -> Vec<TokenLocation> {
    vec![
        loc(Place::Header, "Authorization", Some("bearer")),
        loc(Place::Header, "X-API-Key", None),
        loc(Place::Cookie, "token", None),
        loc(Place::Cookie, "X-Elevation-Token", None),
        loc(Place::Query, "access_token", None),
        loc(Place::Query, "token", Some("Bearer")),
    ]
}

fn extra(line: &str) -> Option<TokenLocation> {
    let mut parts = line.splitn(3, ' ');
    let place = match parts.next()? {
        "h" => Place::Header,
        "c" => Place::Cookie,
        "q" => Place::Query,
        _ => return None,
    };
    let name = parts.next().filter(|n| !n.is_empty())?;
    Some(loc(place, name, parts.next()))
}

fn check(req: &Request, locations: &[TokenLocation]) {
    for l in locations {
        match req.credential(l) {
            Credential::Absent | Credential::Ambiguous => {}
            Credential::Present(c) => {
                assert_eq!(c.trim(), c, "untrimmed credential from {l:?}");
                if l.scheme.is_none() {
                    assert!(!c.is_empty(), "an empty credential without a scheme");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let spec = common::text(lines.next().unwrap_or_default());
    let uri = lines.next().unwrap_or_default();
    let header_lines: Vec<(&[u8], &[u8])> = lines
        .filter_map(|l| {
            let i = l.iter().position(|b| *b == b':')?;
            Some((l[..i].trim_ascii(), l[i + 1..].trim_ascii_start()))
        })
        .collect();
    let mut locations = fixed();
    locations.extend(extra(&spec));

    // As the gRPC front door builds it: names lower-cased, bytes lossy.
    let mut headers = Headers::new();
    for (n, v) in &header_lines {
        headers.push(&common::text(n), common::text(v));
    }
    let direct = Request {
        headers,
        method: "GET".into(),
        path: common::text(uri),
        ..Default::default()
    };
    check(&direct, &locations);

    // Through the HTTP front door, with what `http` accepts as a request.
    let mut map = HeaderMap::new();
    for (n, v) in &header_lines {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            map.append(n, v);
        }
    }
    let uri = Uri::try_from(uri).unwrap_or_else(|_| Uri::from_static("/check"));
    let peer = SocketAddr::from(([192, 0, 2, 1], 40000));
    for proxy in [
        ForwardAuthProxy::Any,
        ForwardAuthProxy::Nginx,
        ForwardAuthProxy::Traefik,
        ForwardAuthProxy::Envoy,
    ] {
        let via_http = match authgate::http::to_request(proxy, &Method::POST, &uri, &map, peer) {
            Ok(r) => r,
            // Envoy's door refuses only a call without a path after /check;
            // the others because of some proxy's headers.
            Err(e) => {
                if proxy == ForwardAuthProxy::Envoy {
                    assert_eq!(e, ForwardError::Missing(authgate::forward_auth::ENVOY_PATH));
                }
                continue;
            }
        };
        // The original request is always an origin-form path and a method.
        assert!(
            via_http.path.starts_with('/'),
            "{proxy:?}: {:?}",
            via_http.path
        );
        assert!(!via_http.method.is_empty());
        if proxy == ForwardAuthProxy::Envoy {
            assert_eq!(via_http.method, "POST");
        }
        check(&via_http, &locations);
    }
});
