//! A hook's `client` block: timeouts, TLS (CA bundle, client certificate),
//! retries and how authgate authenticates itself to the hook.

use std::time::Duration;

use serde_json::Value;

use super::duration::duration;
use super::env::{Env, env_any, env_string};
use super::reader::{Diagnostics, Obj, YamlPath, as_str, as_str_list, type_name};
use super::token_location;
use crate::jwks::FetchOptions;
use crate::request::{Place, TokenLocation};
use crate::webhook::{HookAuth, HttpClientOptions, build_client};
use sha2::{Digest, Sha256};

fn env_bool(d: &mut Diagnostics, env: &dyn Env, path: &YamlPath, v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        _ => match env_any(d, env, path, v)? {
            Value::Bool(b) => Some(b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
            other => {
                d.error(
                    path,
                    format!("expected true or false, found {}", type_name(&other)),
                );
                None
            }
        },
    }
}

fn pem_sources(
    d: &mut Diagnostics,
    env: &dyn Env,
    o: &mut Obj<'_>,
    file_key: &'static str,
    pem_key: &'static str,
    out: &mut Vec<String>,
) -> bool {
    let mut ok = true;
    for (key, is_file) in [(file_key, true), (pem_key, false)] {
        let Some((p, v)) = o.get(key) else { continue };
        let items: Vec<(YamlPath, &Value)> = match v {
            Value::Array(a) => a.iter().enumerate().map(|(i, v)| (p.index(i), v)).collect(),
            other => vec![(p.clone(), other)],
        };
        for (ip, iv) in items {
            let text = match iv {
                Value::String(s) => Some(s.clone()),
                other => env_string(d, env, &ip, other),
            };
            let Some(text) = text else {
                ok = false;
                continue;
            };
            if is_file {
                match std::fs::read_to_string(&text) {
                    Ok(pem) => out.push(pem),
                    // PEM text where a path belongs may be a private key.
                    Err(_) if text.contains('\n') || text.contains("-----BEGIN") => {
                        d.error(
                            &ip,
                            "cannot read the file: the value looks like PEM text, not a path (not shown)",
                        );
                        ok = false;
                    }
                    Err(e) => {
                        d.error(&ip, format!("cannot read {text}: {e}"));
                        ok = false;
                    }
                }
            } else {
                out.push(text);
            }
        }
    }
    ok
}

/// Reads an `httpClient` block. `headers` is where a key fetch's extra
/// headers go (`key.httpClient.headers`); a webhook has no such key.
pub(super) fn http_client(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    v: &Value,
    headers: Option<&mut Vec<(String, String)>>,
) -> Option<HttpClientOptions> {
    let mut opts = HttpClientOptions::default();
    let mut o = Obj::open(d, path.clone(), v)?;
    let mut ok = true;
    if let Some(out) = headers
        && let Some((p, v)) = o.get("headers")
    {
        ok &= extra_headers(d, env, p, v, out);
    }
    if let Some((p, v)) = o.get("proxy") {
        match env_string(d, env, &p, v) {
            Some(url) => match reqwest::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {
                    opts.proxy = Some(url);
                }
                _ => {
                    d.error(&p, "the proxy must be an http or https URL");
                    ok = false;
                }
            },
            None => ok = false,
        }
    }
    if let Some((p, v)) = o.get("timeout") {
        match duration(d, &p, v) {
            Some(t) if !t.is_zero() => opts.timeout = t,
            Some(_) => {}
            None => ok = false,
        }
    }
    if let Some((p, v)) = o.get("transport")
        && let Some(mut t) = Obj::open(d, p.clone(), v)
    {
        if let Some((dp, dv)) = t.get("dialer")
            && let Some(mut dialer) = Obj::open(d, dp, dv)
        {
            if let Some((tp, tv)) = dialer.get("timeout") {
                match duration(d, &tp, tv) {
                    Some(x) if !x.is_zero() => opts.connect_timeout = x,
                    Some(_) => {}
                    None => ok = false,
                }
            }
            let no_effect = [
                "keepAlive",
                "keepAliveEnabled",
                "keepAliveInterval",
                "keepAliveIdle",
                "keepAliveCount",
                "fallbackDelay",
            ];
            dialer.no_effect(d, &no_effect, "");
            dialer.finish(d);
        }
        if let Some((ip, iv)) = t.get("idleConnTimeout") {
            opts.pool_idle_timeout = duration(d, &ip, iv);
        }
        if let Some(n) = t.u64(d, "maxIdleConnsPerHost") {
            opts.pool_max_idle_per_host = Some(usize::try_from(n).unwrap_or(usize::MAX));
        }
        if t.bool(d, "disableKeepAlives") == Some(true) {
            opts.pool_max_idle_per_host = Some(0);
        }
        let no_effect = [
            "responseHeaderTimeout",
            "tlsHandshakeTimeout",
            "expectContinueTimeout",
            "maxIdleConns",
            "maxConnsPerHost",
            "maxResponseHeaderBytes",
            "readBufferSize",
            "writeBufferSize",
            "forceAttemptHTTP2",
        ];
        t.no_effect(d, &no_effect, "");
        t.finish(d);
    }
    if let Some((p, v)) = o.get("tls")
        && let Some(mut t) = Obj::open(d, p.clone(), v)
    {
        ok &= pem_sources(
            d,
            env,
            &mut t,
            "rootCAFile",
            "rootCAPem",
            &mut opts.tls.root_certs,
        );
        ok &= pem_sources(d, env, &mut t, "caFile", "caPem", &mut opts.tls.root_certs);
        if let Some((cp, cv)) = t.get("certificates") {
            let items: Vec<&Value> = match cv {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for (i, item) in items.into_iter().enumerate() {
                let ip = cp.index(i);
                let Some(mut c) = Obj::open(d, ip.clone(), item) else {
                    ok = false;
                    continue;
                };
                let mut cert = Vec::new();
                let mut key = Vec::new();
                ok &= pem_sources(d, env, &mut c, "certFile", "certPem", &mut cert);
                ok &= pem_sources(d, env, &mut c, "keyFile", "keyPem", &mut key);
                c.finish(d);
                if cert.len() != 1 || key.len() != 1 {
                    d.error(&ip, "a certificate needs one certificate and one key");
                    ok = false;
                } else {
                    opts.tls.identity = Some(format!("{}\n{}", cert[0], key[0]));
                }
            }
        }
        if let Some((bp, bv)) = t.get("insecureSkipVerify") {
            match env_bool(d, env, &bp, bv) {
                Some(true) => {
                    d.warn(&bp, "TLS certificates of the server are not verified");
                    opts.tls.insecure_skip_verify = true;
                }
                Some(false) => {}
                None => ok = false,
            }
        }
        opts.tls.include_system_roots = true;
        if let Some((bp, bv)) = t.get("includeSystemCACertsPool") {
            match env_bool(d, env, &bp, bv) {
                Some(b) => opts.tls.include_system_roots = b || opts.tls.root_certs.is_empty(),
                None => ok = false,
            }
        }
        for (key, slot) in [
            ("minVersion", &mut opts.tls.min_version),
            ("maxVersion", &mut opts.tls.max_version),
        ] {
            if let Some((vp, vv)) = t.get(key) {
                match as_str(d, &vp, vv) {
                    Some(s @ ("1.0" | "1.1" | "1.2" | "1.3")) => *slot = Some(s.to_owned()),
                    Some(other) => {
                        d.error(
                            &vp,
                            format!("unknown TLS version `{other}`; expected 1.2 or 1.3"),
                        );
                        ok = false;
                    }
                    None => ok = false,
                }
            }
        }
        for key in ["cipherSuites", "serverName"] {
            if let Some((kp, _)) = t.get(key) {
                d.warn(
                    &kp,
                    "accepted for RelyAuth compatibility; it has no effect in authgate",
                );
            }
        }
        t.finish(d);
    }
    if let Some((p, v)) = o.get("retry")
        && let Some(mut r) = Obj::open(d, p.clone(), v)
    {
        if let Some(n) = r.u64(d, "maxAttempts") {
            opts.retry.max_attempts = u32::try_from(n.clamp(1, 10)).unwrap_or(1);
        }
        // RelyAuth: delays in milliseconds.
        if let Some(n) = r.u64(d, "delay") {
            opts.retry.delay = Duration::from_millis(n);
        }
        if let Some(n) = r.u64(d, "maxDelay") {
            opts.retry.max_delay = Duration::from_millis(n);
        }
        if let Some((mp, mv)) = r.get("multiplier") {
            match mv.as_f64() {
                Some(m) if m >= 1.0 => opts.retry.multiplier = m,
                _ => {
                    d.error(&mp, "expected a number >= 1");
                    ok = false;
                }
            }
        }
        if let Some((sp, sv)) = r.get("httpStatus") {
            match sv.as_array() {
                Some(items) => {
                    opts.retry.statuses = items
                        .iter()
                        .filter_map(|s| s.as_u64().and_then(|n| u16::try_from(n).ok()))
                        .collect();
                    if opts.retry.statuses.len() != items.len() {
                        d.error(&sp, "expected a list of HTTP status codes");
                        ok = false;
                    }
                }
                None => {
                    d.error(&sp, "expected a list of HTTP status codes");
                    ok = false;
                }
            }
        }
        r.no_effect(
            d,
            &["jitter", "jitterFactor"],
            " (retries wait the computed delay)",
        );
        r.finish(d);
    }
    if let Some((p, v)) = o.get("authentication") {
        match hook_auth(d, env, p, v) {
            Some(a) => opts.auth = Some(a),
            None => ok = false,
        }
    }
    o.finish(d);
    ok.then_some(opts)
}

/// What an `httpClient` with `headers` is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FetchPurpose {
    /// `key.httpClient`: JWKS and discovery documents.
    Keys,
    /// `introspection.httpClient`: discovery and introspection calls.
    Introspection,
}

/// A key fetch's or an introspection mode's `httpClient`: the webhook's
/// schema plus `headers`. `retry` has no effect (a failed key fetch is
/// retried with the key cache's own backoff; a failed introspection is a
/// 503); `authentication` is refused: a key server's credentials go in
/// `headers`, an introspection client's in `clientId`/`clientSecret`.
pub(super) fn key_fetch(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    v: &Value,
    purpose: FetchPurpose,
) -> Option<FetchOptions> {
    let mut headers = Vec::new();
    let opts = http_client(d, env, path.clone(), v, Some(&mut headers))?;
    if opts.auth.is_some() {
        d.error(
            &path.key("authentication"),
            match purpose {
                FetchPurpose::Keys => {
                    "not used for key fetches: send a key server's credentials with `headers`"
                }
                FetchPurpose::Introspection => {
                    "not used for introspection: the client authenticates with `clientId`, `clientSecret` and `authMethod`"
                }
            },
        );
        return None;
    }
    if v.get("retry").is_some() {
        d.warn(
            &path.key("retry"),
            match purpose {
                FetchPurpose::Keys => {
                    "has no effect on key fetches: a failed fetch is retried with backoff (1 s doubling to 10 s)"
                }
                FetchPurpose::Introspection => {
                    "has no effect on introspection: a failed call is answered 503 (internal_error) at once"
                }
            },
        );
    }
    let client = match build_client(&opts) {
        Ok(c) => c,
        Err(e) => {
            d.error(&path, e);
            return None;
        }
    };
    if opts.tls.insecure_skip_verify {
        d.warn(
            &path.key("tls").key("insecureSkipVerify"),
            match purpose {
                FetchPurpose::Keys => {
                    "keys fetched without certificate verification can be replaced by anyone on the network path"
                }
                FetchPurpose::Introspection => {
                    "without certificate verification anyone on the network path can answer that any token is active"
                }
            },
        );
    }
    let mut map = reqwest::header::HeaderMap::new();
    let mut hash = Sha256::new();
    fingerprint(&opts, &mut hash);
    for (name, value) in &headers {
        let (Ok(n), Ok(mut v)) = (
            reqwest::header::HeaderName::from_bytes(name.as_bytes()),
            reqwest::header::HeaderValue::from_str(value),
        ) else {
            // Both checked while reading.
            return None;
        };
        v.set_sensitive(true);
        map.append(n, v);
        hash.update([0]);
        hash.update(name);
        hash.update([0]);
        hash.update(value);
    }
    Some(FetchOptions {
        client,
        headers: map,
        fingerprint: {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash.finalize())
        },
    })
}

/// What makes two key fetches differ, in a fixed encoding (never a `Debug`
/// rendering, which may change or be redacted): `retry` and
/// `authentication` have no part in a key fetch.
fn fingerprint(o: &HttpClientOptions, h: &mut Sha256) {
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    for d in [o.timeout, o.connect_timeout] {
        field(&d.as_nanos().to_le_bytes());
    }
    field(
        &o.pool_idle_timeout
            .map_or(u128::MAX, |d| d.as_nanos())
            .to_le_bytes(),
    );
    field(
        &o.pool_max_idle_per_host
            .map_or(u64::MAX, |n| n as u64)
            .to_le_bytes(),
    );
    field(&(o.tls.root_certs.len() as u64).to_le_bytes());
    for pem in &o.tls.root_certs {
        field(pem.as_bytes());
    }
    field(o.tls.identity.as_deref().unwrap_or("").as_bytes());
    field(&[
        u8::from(o.tls.insecure_skip_verify),
        u8::from(o.tls.include_system_roots),
    ]);
    for v in [&o.tls.min_version, &o.tls.max_version, &o.proxy] {
        field(v.as_deref().unwrap_or("").as_bytes());
    }
}

/// `headers: {NAME: {value|env}}`: names and values checked as HTTP's.
fn extra_headers(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    v: &Value,
    out: &mut Vec<(String, String)>,
) -> bool {
    let Some(map) = v.as_object() else {
        d.error(
            &path,
            format!(
                "expected a map of header names to {{value|env}}, found {}",
                type_name(v)
            ),
        );
        return false;
    };
    let mut ok = true;
    let mut invalid = 0;
    for (name, value) in map {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            // Not echoed: `{X-Key:secret}` (no space) reads as one name.
            invalid += 1;
            continue;
        }
        let p = path.key(name);
        let lower = name.to_ascii_lowercase();
        if FETCH_MANAGED_HEADERS.contains(&lower.as_str()) {
            d.error(
                &p,
                "set by authgate itself for every fetch; it cannot be configured",
            );
            ok = false;
            continue;
        }
        if out.iter().any(|(n, _)| *n == lower) {
            d.error(&p, "the same header twice (header names ignore case)");
            ok = false;
            continue;
        }
        match env_string(d, env, &p, value) {
            Some(text) if reqwest::header::HeaderValue::from_str(&text).is_ok() => {
                out.push((name.to_ascii_lowercase(), text));
            }
            Some(_) => {
                d.error(&p, "not a valid HTTP header value");
                ok = false;
            }
            None => ok = false,
        }
    }
    if invalid > 0 {
        d.error(
            &path,
            format!(
                "{invalid} name{} not a valid HTTP header name (not shown: it may hold a secret; write `NAME: {{value: ...}}` with a space after each colon)",
                if invalid == 1 { " is" } else { "s are" }
            ),
        );
        ok = false;
    }
    ok
}

/// Headers a key fetch writes itself (content negotiation, conditional
/// requests) or HTTP owns: a configured one would break the fetch.
const FETCH_MANAGED_HEADERS: &[&str] = &[
    "accept",
    "if-none-match",
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
];

fn hook_auth(d: &mut Diagnostics, env: &dyn Env, path: YamlPath, v: &Value) -> Option<HookAuth> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let kind = o
        .require(d, "type")
        .and_then(|(p, v)| as_str(d, &p, v).map(|s| (p, s)));

    match kind {
        Some((_, "basic")) => {
            let header = o
                .str(d, "header")
                .unwrap_or("Authorization")
                .to_ascii_lowercase();
            let user = o
                .require(d, "username")
                .and_then(|(p, v)| env_string(d, env, &p, v));
            let pass = o
                .require(d, "password")
                .and_then(|(p, v)| env_string(d, env, &p, v));
            o.finish(d);
            use base64::Engine as _;
            let (user, pass) = (user?, pass?);
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            Some(HookAuth::Basic {
                header,
                value: format!("Basic {encoded}"),
            })
        }
        Some((_, "http")) => {
            let location = match o.get("tokenLocation") {
                Some((p, v)) => token_location(d, p, v, Some("bearer")),
                None => {
                    let header = o
                        .str(d, "header")
                        .unwrap_or("Authorization")
                        .to_ascii_lowercase();
                    let scheme = o
                        .str(d, "scheme")
                        .map(|s| s.to_ascii_lowercase())
                        .or_else(|| (header == "authorization").then(|| "bearer".to_owned()));
                    Some(TokenLocation {
                        place: Place::Header,
                        name: header,
                        scheme,
                    })
                }
            };
            let value = o
                .require(d, "value")
                .and_then(|(p, v)| env_string(d, env, &p, v));
            o.finish(d);
            Some(HookAuth::Token {
                location: location?,
                value: value?,
            })
        }
        Some((_, "oauth2")) => {
            let flows = o.require(d, "flows");
            o.no_effect(
                d,
                &["tokenLocation"],
                " (the access token is sent as `Authorization: Bearer`)",
            );
            o.finish(d);
            let (fp, fv) = flows?;
            let mut f = Obj::open(d, fp.clone(), fv)?;
            let cc = f.require(d, "clientCredentials");
            f.finish(d);
            let (cp, cv) = cc?;
            let mut c = Obj::open(d, cp.clone(), cv)?;
            let token_url = c
                .require(d, "tokenUrl")
                .and_then(|(p, v)| env_string(d, env, &p, v));
            let client_id = c
                .require(d, "clientId")
                .and_then(|(p, v)| env_string(d, env, &p, v));
            let client_secret = c
                .require(d, "clientSecret")
                .and_then(|(p, v)| env_string(d, env, &p, v));
            c.no_effect(
                d,
                &["refreshUrl"],
                " (tokens are fetched again from `tokenUrl`)",
            );
            let scopes = match c.get("scopes") {
                Some((p, Value::Object(m))) => {
                    let _ = p;
                    m.keys().cloned().collect()
                }
                Some((p, v)) => as_str_list(d, &p, v).unwrap_or_default(),
                None => Vec::new(),
            };
            let mut params = Vec::new();
            if let Some((pp, pv)) = c.get("endpointParams")
                && let Some(mut po) = Obj::open(d, pp.clone(), pv)
            {
                po.read_all();
                for (k, v) in po.entries() {
                    let value = match v {
                        Value::String(s) => Some(s.clone()),
                        other => env_string(d, env, &pp.key(k), other),
                    };
                    if let Some(value) = value {
                        params.push((k.clone(), value));
                    }
                }
            }
            c.finish(d);
            Some(HookAuth::OAuth2 {
                token_url: token_url?,
                client_id: client_id?,
                client_secret: client_secret?,
                scopes,
                params,
            })
        }
        Some((p, other)) => {
            d.error(
                &p,
                format!("unknown authentication type `{other}`; expected basic, http or oauth2"),
            );
            o.read_all();
            None
        }
        None => {
            o.read_all();
            None
        }
    }
}
