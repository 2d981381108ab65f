//! The `webhook` mode's configuration: request/response transformers and
//! RelyAuth's `httpClient` options.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::env::{Env, env_any, env_string};
use super::reader::{Diagnostics, Obj, YamlPath, as_str, as_str_list, type_name};
use super::{compile_jmespath, token_location};
use crate::request::{Place, TokenLocation};
use crate::session::is_header_name_byte;
use crate::webhook::{
    AdditionalHeader, FieldMapping, Forward, GoTemplate, HookAuth, HookMethod, HttpClientOptions,
    Transform, WebhookMode,
};

pub(super) fn webhook(d: &mut Diagnostics, env: &dyn Env, mut o: Obj<'_>) -> Option<WebhookMode> {
    let url = o.require(d, "url").and_then(|(p, v)| {
        let url = env_string(d, env, &p, v)?;
        match reqwest::Url::parse(&url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Some(url),
            Ok(_) => {
                d.error(&p, "the webhook URL must be http or https");
                None
            }
            Err(e) => {
                d.error(&p, format!("not a valid URL: {e}"));
                None
            }
        }
    });
    let method = match o
        .require(d, "method")
        .and_then(|(p, v)| as_str(d, &p, v).map(|s| (p, s)))
    {
        Some((_, "GET")) => Some(HookMethod::Get),
        Some((_, "POST")) => Some(HookMethod::Post),
        Some((p, other)) => {
            d.error(
                &p,
                format!("unsupported method `{other}`; expected GET or POST"),
            );
            None
        }
        None => None,
    };
    let mut forward = None;
    let mut additional = Vec::new();
    let mut body = None;
    let mut ok = true;
    if let Some((p, v)) = o.get("customRequest")
        && let Some(mut cr) = Obj::open(d, p.clone(), v)
    {
        if let Some((hp, hv)) = cr.get("headers")
            && let Some(mut ho) = Obj::open(d, hp.clone(), hv)
        {
            if let Some((fp, fv)) = ho.get("forward") {
                forward = match fv {
                    Value::String(s) if s == "*" => Some(Forward::All),
                    other => as_str_list(d, &fp, other).map(|names| {
                        Forward::Names(
                            names
                                .iter()
                                .map(|n| n.trim().to_ascii_lowercase())
                                .collect(),
                        )
                    }),
                };
                ok &= forward.is_some();
            }
            if let Some((ap, av)) = ho.get("additional")
                && let Some(mut ao) = Obj::open(d, ap.clone(), av)
            {
                ao.read_all();
                ok &= ao.no_case_duplicates(d, "header");
                for (name, spec) in ao.entries() {
                    match additional_header(d, env, ap.key(name), name, spec) {
                        Some(h) => additional.push(h),
                        None => ok = false,
                    }
                }
            }
            ho.finish(d, &["forward", "additional"]);
        }
        if let Some((bp, bv)) = cr.get("body") {
            body = transform(d, env, bp, bv);
            ok &= body.is_some();
        }
        cr.finish(d, &["headers", "body"]);
    }
    if matches!(method, Some(HookMethod::Get)) && body.is_some() {
        d.error(
            &o.path.key("customRequest").key("body"),
            "a GET webhook has no body",
        );
        ok = false;
    }
    let mut response = None;
    if let Some((p, v)) = o.get("customResponse")
        && let Some(mut cr) = Obj::open(d, p.clone(), v)
    {
        if let Some((rp, rv)) = cr.get("response") {
            response = transform(d, env, rp, rv);
            ok &= response.is_some();
        }
        cr.finish(d, &["response"]);
    }
    let client_path = o.path.key("httpClient");
    let client = match o.get("httpClient") {
        Some((p, v)) => http_client(d, env, p, v),
        None => Some(HttpClientOptions::default()),
    };
    let http = match &client {
        Some(c) => match crate::webhook::build_client(c) {
            Ok(h) => Some(h),
            Err(e) => {
                d.error(&client_path, e);
                None
            }
        },
        None => None,
    };
    super::finish_mode(
        d,
        o,
        &[
            "url",
            "method",
            "customRequest",
            "customResponse",
            "httpClient",
        ],
    );
    if !ok {
        return None;
    }
    Some(WebhookMode {
        url: url?,
        http: http?,
        method: method?,
        forward,
        additional,
        body,
        response,
        client: client?,
    })
}

fn additional_header(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    name: &str,
    v: &Value,
) -> Option<AdditionalHeader> {
    if name.is_empty() || !name.bytes().all(is_header_name_byte) {
        d.error(&path, format!("`{name}` is not a valid header name"));
        return None;
    }
    let mut o = Obj::open(d, path.clone(), v)?;
    let expr = match o.get("path") {
        Some((p, v)) => Some(as_str(d, &p, v).and_then(|s| compile_jmespath(d, &p, s))?),
        None => None,
    };
    let default = match o.get("default") {
        Some((p, v)) => Some(env_string(d, env, &p, v)?),
        None => None,
    };
    o.finish(d, &["path", "default"]);
    if expr.is_none() && default.is_none() {
        d.error(&path, "set `path`, `default` or both");
        return None;
    }
    Some(AdditionalHeader {
        name: name.to_ascii_lowercase(),
        path: expr,
        default,
    })
}

pub fn transform(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    v: &Value,
) -> Option<Transform> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let kind = o
        .require(d, "type")
        .and_then(|(p, v)| as_str(d, &p, v).map(|s| (p, s)));

    match kind {
        Some((_, "jmespath")) => {
            let mapping = o
                .require(d, "template")
                .and_then(|(p, v)| field_mapping(d, env, p, v));
            o.finish(d, &["type", "template"]);
            mapping.map(Transform::Jmespath)
        }
        Some((_, "gotmpl")) => {
            let content_type = o.str(d, "contentType").map(str::to_owned);
            let template = o.require(d, "template").and_then(|(p, v)| {
                let text = as_str(d, &p, v)?;
                if let Err(e) = check_delimiters(text) {
                    d.error(&p, format!("invalid Go template: {e}"));
                    return None;
                }
                let mut t = gtmpl::Template::default();
                match t.parse(text) {
                    Ok(()) => Some(GoTemplate(Arc::new(t))),
                    Err(e) => {
                        d.error(&p, format!("invalid Go template: {e}"));
                        None
                    }
                }
            });
            o.finish(d, &["type", "template", "contentType"]);
            template.map(|template| Transform::GoTemplate {
                template,
                content_type,
            })
        }
        Some((p, other)) => {
            d.error(
                &p,
                format!("unknown transformer type `{other}`; expected jmespath or gotmpl"),
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

fn field_mapping(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    v: &Value,
) -> Option<FieldMapping> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let kind = o.str(d, "type").unwrap_or("field");
    match kind {
        "object" => {
            let mut out = Vec::new();
            let mut ok = true;
            if let Some((pp, pv)) = o.require(d, "properties") {
                if let Some(mut props) = Obj::open(d, pp.clone(), pv) {
                    props.read_all();
                    for (k, v) in props.entries() {
                        match field_mapping(d, env, pp.key(k), v) {
                            Some(m) => out.push((k.clone(), m)),
                            None => ok = false,
                        }
                    }
                } else {
                    ok = false;
                }
            }
            o.finish(d, &["type", "properties"]);
            ok.then_some(FieldMapping::Object(out))
        }
        "field" => {
            let mut ok = true;
            let expr = match o.get("path") {
                Some((p, v)) => {
                    let e = as_str(d, &p, v).and_then(|s| compile_jmespath(d, &p, s));
                    ok &= e.is_some();
                    e
                }
                None => None,
            };
            let default = match o.get("default") {
                Some((p, v)) => {
                    let e = env_any(d, env, &p, v);
                    ok &= e.is_some();
                    e
                }
                None => None,
            };
            o.finish(d, &["type", "path", "default"]);
            ok.then_some(FieldMapping::Field {
                path: expr,
                default,
            })
        }
        other => {
            d.error(
                &path.key("type"),
                format!("unknown mapping type `{other}`; expected object or field"),
            );
            o.read_all();
            None
        }
    }
}

/// Checks a Go template for what gtmpl cannot take, before gtmpl parses it.
/// Every `{{` must be closed by `}}` (quotes inside actions respected), as
/// gtmpl's lexer loops forever on an unterminated action. Fuzzing found more
/// gtmpl defects, kept out here:
/// - outside quotes an action must be ASCII: the lexer panics on a non-ASCII
///   identifier (`{{ .é }}`), and when `{{- ` trims spaces after a non-ASCII
///   character;
/// - quoted strings end where gtmpl's lexer ends them (it takes the quote
///   after `\\` as escaped) and may only use the escapes
///   `\b \f \n \r \t \' \" \\`, in every kind of quotes (gtmpl unquotes
///   backquoted strings too): its unquoting loops forever on a short `\x` or
///   `\u` escape (`"\x4"`) and panics on others; any character can be
///   written as itself instead;
/// - `template` and `block` are refused: gtmpl allows 100 000 nested calls,
///   so `{{template ""}}` (a template calling itself) overflowed the stack,
///   which aborts the process.
fn check_delimiters(text: &str) -> Result<(), String> {
    let b = text.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'{' && b[i + 1] == b'{' {
            let start = i;
            if b[i + 2..].starts_with(b"- ")
                && text[..i]
                    .trim_end()
                    .chars()
                    .next_back()
                    .is_some_and(|c| !c.is_ascii())
            {
                return Err(format!(
                    "`{{{{- ` right after a non-ASCII character (byte {start}) is not supported; drop the `-`"
                ));
            }
            i += 2;
            loop {
                if i >= b.len() {
                    return Err(format!("unclosed action starting at byte {start}"));
                }
                let c = b[i];
                if c == b'"' || c == b'`' || c == b'\'' {
                    let end = string_end(b, i).ok_or_else(|| {
                        format!("unclosed quoted string in the action starting at byte {start}")
                    })?;
                    check_escapes(&b[i + 1..end]).map_err(|()| {
                        format!(
                            "unsupported escape in a quoted string in the action starting at byte {start} (use \\b \\f \\n \\r \\t \\' \\\" \\\\, or the character itself)"
                        )
                    })?;
                    i = end;
                } else if c == b'}' && b.get(i + 1) == Some(&b'}') {
                    i += 1;
                    break;
                } else if !c.is_ascii() {
                    return Err(format!(
                        "non-ASCII character outside quotes in the action starting at byte {start}"
                    ));
                } else if c.is_ascii_alphabetic()
                    && !b[i - 1].is_ascii_alphanumeric()
                    && !matches!(b[i - 1], b'_' | b'.' | b'$')
                {
                    let end = b[i..]
                        .iter()
                        .position(|c| !c.is_ascii_alphanumeric() && *c != b'_')
                        .map_or(b.len(), |n| i + n);
                    if matches!(&b[i..end], b"template" | b"block") {
                        return Err(format!(
                            "`template` and `block` are not supported (the action starting at byte {start}): a template may not call a template"
                        ));
                    }
                    i = end - 1;
                }
                i += 1;
            }
        }
        i += 1;
    }
    Ok(())
}

/// Where gtmpl's lexer ends the string whose opening quote is at `open`: a
/// raw string at the next backquote; otherwise at the next quote not
/// preceded by a backslash (any run of them), and never across a newline.
fn string_end(b: &[u8], open: usize) -> Option<usize> {
    let q = b[open];
    let mut escaped = false;
    for (n, &c) in b[open + 1..].iter().enumerate() {
        if q == b'`' {
            if c == q {
                return Some(open + 1 + n);
            }
            continue;
        }
        match c {
            b'\\' => {
                escaped = true;
                continue;
            }
            b'\n' => return None,
            c if c == q && !escaped => return Some(open + 1 + n),
            _ => {}
        }
        escaped = false;
    }
    None
}

/// The escapes gtmpl's unquoting handles without looping or panicking,
/// paired from the start as it pairs them.
fn check_escapes(content: &[u8]) -> Result<(), ()> {
    let mut k = 0;
    while k < content.len() {
        if content[k] == b'\\' {
            if !matches!(
                content.get(k + 1),
                Some(b'b' | b'f' | b'n' | b'r' | b't' | b'\'' | b'"' | b'\\')
            ) {
                return Err(());
            }
            k += 1;
        }
        k += 1;
    }
    Ok(())
}

/// A duration as seconds (number) or Go-style text (`1m30s`, `500ms`).
pub fn duration(d: &mut Diagnostics, path: &YamlPath, v: &Value) -> Option<Duration> {
    match v {
        // `try_`: a number past u64 seconds (`1e20`) panicked the loader.
        Value::Number(n) => match n.as_f64().filter(|f| *f >= 0.0) {
            Some(f) if let Ok(d) = Duration::try_from_secs_f64(f) => Some(d),
            _ => {
                d.error(path, "expected a non-negative number of seconds");
                None
            }
        },
        Value::String(s) => match parse_go_duration(s) {
            Some(d) => Some(d),
            None => {
                d.error(
                    path,
                    format!("`{s}` is not a duration (e.g. 5s, 1m30s, 500ms)"),
                );
                None
            }
        },
        other => {
            d.error(
                path,
                format!("expected a duration, found {}", type_name(other)),
            );
            None
        }
    }
}

fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(n).ok();
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

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
    file_key: &str,
    pem_key: &str,
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

fn http_client(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    v: &Value,
) -> Option<HttpClientOptions> {
    let mut opts = HttpClientOptions::default();
    let mut o = Obj::open(d, path.clone(), v)?;
    let mut ok = true;
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
            let mut known = vec!["timeout"];
            known.extend(no_effect);
            dialer.finish(d, &known);
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
        for key in no_effect {
            if let Some((kp, _)) = t.get(key) {
                d.warn(
                    &kp,
                    "accepted for RelyAuth compatibility; it has no effect in authgate",
                );
            }
        }
        let mut known = vec![
            "dialer",
            "idleConnTimeout",
            "maxIdleConnsPerHost",
            "disableKeepAlives",
        ];
        known.extend(no_effect);
        t.finish(d, &known);
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
                c.finish(d, &["certFile", "certPem", "keyFile", "keyPem"]);
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
                    d.warn(&bp, "TLS certificates of the webhook are not verified");
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
        t.finish(
            d,
            &[
                "rootCAFile",
                "rootCAPem",
                "caFile",
                "caPem",
                "certificates",
                "insecureSkipVerify",
                "includeSystemCACertsPool",
                "minVersion",
                "maxVersion",
                "cipherSuites",
                "serverName",
            ],
        );
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
        r.finish(
            d,
            &[
                "maxAttempts",
                "delay",
                "maxDelay",
                "httpStatus",
                "multiplier",
                "jitter",
                "jitterFactor",
            ],
        );
    }
    if let Some((p, v)) = o.get("authentication") {
        match hook_auth(d, env, p, v) {
            Some(a) => opts.auth = Some(a),
            None => ok = false,
        }
    }
    o.finish(
        d,
        &["timeout", "transport", "tls", "retry", "authentication"],
    );
    ok.then_some(opts)
}

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
            o.finish(d, &["type", "header", "username", "password"]);
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
            o.finish(d, &["type", "tokenLocation", "header", "scheme", "value"]);
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
            o.finish(d, &["type", "flows", "tokenLocation"]);
            let (fp, fv) = flows?;
            let mut f = Obj::open(d, fp.clone(), fv)?;
            let cc = f.require(d, "clientCredentials");
            f.finish(d, &["clientCredentials"]);
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
            c.finish(
                d,
                &[
                    "tokenUrl",
                    "refreshUrl",
                    "clientId",
                    "clientSecret",
                    "scopes",
                    "endpointParams",
                ],
            );
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unclosed_actions_are_caught_before_gtmpl() {
        assert!(check_delimiters("{{ .x }} and {{ index .h \"}}\" }}").is_ok());
        assert!(check_delimiters("{{ .x ").is_err());
        assert!(check_delimiters("{{ \"}} ").is_err());
        assert!(check_delimiters("{{").is_err());
        assert!(check_delimiters("plain { text }").is_ok());
    }

    /// Fuzzing (`fuzz/`, target `gotmpl`) found that gtmpl's lexer panics
    /// on a non-ASCII identifier inside an action; such templates are
    /// refused before gtmpl sees them. Quoted text and text outside actions
    /// may be any Unicode.
    #[test]
    fn non_ascii_identifiers_are_caught_before_gtmpl() {
        for t in [
            "{{\u{48f}}}",
            "{{ .\u{e9} }}",
            "{{ .body.na\u{ef}ve }}",
            "{{ $\u{e9} := 1 }}",
        ] {
            assert!(check_delimiters(t).is_err(), "{t}");
        }
        for t in [
            "{{ \"na\u{ef}ve\" }}",
            "{{ index .body `\u{e9}` }}",
            "{{ '\u{e9}' }}",
            "\u{e9} {{ .url }} \u{fc}",
        ] {
            assert!(check_delimiters(t).is_ok(), "{t}");
        }
    }

    /// Fuzzing (`fuzz/`, target `gotmpl`) found that gtmpl's unquoting
    /// never returns on a short `\x` or `\u` escape, so a config load (or a
    /// reload) hung; its escape parsing also slices past the end of a string
    /// (`` `a\` ``) or inside a UTF-8 character, a panic while the config
    /// loads. Only the simple escapes reach gtmpl, in every kind of quotes.
    #[test]
    fn hex_and_unicode_escapes_are_caught_before_gtmpl() {
        for t in [
            r#"{{ "\x4" }}"#,
            r#"{{ "\x" }}"#,
            r#"{{ "\u004" }}"#,
            r#"{{ "\x41" }}"#,
            r#"{{ '\x4' }}"#,
            "{{ \"\\x41a\u{e9}b\" }}",
            "{{ \"\\\u{e9}\" }}",
            r#"{{ "\"#,
            r#"{{ `\x4` }}"#,
            r#"{{ (`\\(}\`{}}"#,
            "{{ `\\\u{e9}` }}",
        ] {
            assert!(check_delimiters(t).is_err(), "{t}");
        }
        for t in [
            r#"{{ "a\"b\\c\n\t\r\b\f" }}"#,
            r#"{{ '\'' }}"#,
            r#"{{ `\n` }}"#,
            r#"{{ printf "%s\n" .url }}"#,
        ] {
            assert!(check_delimiters(t).is_ok(), "{t}");
        }
    }

    /// Fuzzing (`fuzz/`, target `gotmpl`) found that a template calling
    /// itself (`{{template ""}}`, or through `define`/`block`) overflowed
    /// the stack while rendering, which aborts the whole process. Calls to
    /// templates are refused at load; the words elsewhere are fine.
    #[test]
    fn template_calls_are_refused() {
        for t in [
            r#"{{template ""}}"#,
            r#"{{- template "a" . -}}"#,
            r#"{{define "a"}}{{template "a"}}{{end}}{{template "a"}}"#,
            r#"{{block "a" .}}x{{end}}"#,
            r#"{{if 1}}{{ template "a" }}{{end}}"#,
        ] {
            assert!(check_delimiters(t).is_err(), "{t}");
        }
        for t in [
            r#"{{ .body.template }}"#,
            r#"{{ $template := 1 }}{{ $block := 2 }}"#,
            r#"{{ index .headers "template" }}"#,
            r#"{{ .templates }}{{ .x_block }} template block"#,
            r#"{{define "a"}}x{{end}}"#,
        ] {
            assert!(check_delimiters(t).is_ok(), "{t}");
        }
    }

    /// Fuzzing (`fuzz/`, target `gotmpl`) found that gtmpl's lexer takes
    /// the quote after `\\` as escaped, so `"\\"` does not end there and
    /// what follows is lexed as code.
    #[test]
    fn strings_end_where_gtmpl_ends_them() {
        for t in [
            "{{\"\\\\\"\"\u{64c}\"}}",
            r#"{{ "a\\" }}"#,
            "{{ \"a\nb\" }}",
        ] {
            assert!(check_delimiters(t).is_err(), "{t}");
        }
        for t in [r#"{{ "a\\b" }}"#, r#"{{ "a\\\"" }}"#, r#"{{ "\"" }}"#] {
            assert!(check_delimiters(t).is_ok(), "{t}");
        }
    }

    /// Fuzzing (`fuzz/`, target `gotmpl`) found that gtmpl's lexer panics
    /// when a left trim marker follows a non-ASCII character.
    #[test]
    fn left_trim_after_non_ascii_is_refused() {
        for t in [
            "\u{382}{{- \"x\" }}",
            "\u{e9} \n {{- .url }}",
            "{{ 1 }}\u{e9}{{- 2 }}",
        ] {
            assert!(check_delimiters(t).is_err(), "{t}");
        }
        for t in [
            "\u{e9}{{ .url -}} \u{e9}",
            "\u{e9}.{{- .url }}",
            "  {{- .url }}",
            "{{- 1 }}",
        ] {
            assert!(check_delimiters(t).is_ok(), "{t}");
        }
    }

    /// Fuzzing (`fuzz/`, target `config`) found that a duration past u64
    /// seconds, as a number or as text, panicked while the config loaded.
    #[test]
    fn huge_durations_are_errors() {
        for v in [
            json!(1e20),
            json!("1e400"),
            json!("99999999999999999999h"),
            json!(-1),
        ] {
            let mut d = Diagnostics::default();
            assert_eq!(duration(&mut d, &YamlPath::root(), &v), None, "{v}");
            assert_eq!(d.errors.len(), 1, "{v}");
        }
        let mut d = Diagnostics::default();
        assert_eq!(
            duration(&mut d, &YamlPath::root(), &json!("1e19")),
            Some(Duration::from_secs(10_000_000_000_000_000_000))
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(parse_go_duration(""), None);
    }
}
