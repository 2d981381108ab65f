//! The `webhook` mode's configuration: request/response transformers and
//! RelyAuth's `httpClient` options.

use serde_json::Value;

use super::compile_jmespath;
use super::env::{Env, env_any, env_string};
use super::http_client::http_client;
use super::reader::{Diagnostics, Obj, YamlPath, as_str, as_str_list};
use crate::session::is_header_name_byte;
use crate::webhook::{
    AdditionalHeader, FieldMapping, Forward, GoTemplate, HookMethod, HttpClientOptions, Transform,
    WebhookMode,
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
            ho.finish(d);
        }
        if let Some((bp, bv)) = cr.get("body") {
            body = transform(d, env, bp, bv);
            ok &= body.is_some();
        }
        cr.finish(d);
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
        cr.finish(d);
    }
    let client_path = o.path.key("httpClient");
    let client = match o.get("httpClient") {
        Some((p, v)) => http_client(d, env, p, v, None),
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
    let cache = match o.get("cache") {
        Some((p, v)) => {
            let c = cache(d, p, v);
            ok &= c.is_some();
            c.flatten()
        }
        None => None,
    };
    o.finish(d);
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
        cache,
    })
}

/// Most answers a webhook mode may cache.
const MAX_CACHE_ENTRIES: u64 = 1_000_000;
/// `cache.maxEntries` when not set.
const DEFAULT_CACHE_ENTRIES: u64 = 10_000;

/// `cache: {enabled, maxEntries}`: `Some(None)` when off.
fn cache(d: &mut Diagnostics, path: YamlPath, v: &Value) -> Option<Option<u64>> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let enabled = o.bool(d, "enabled");
    let max = o.u64(d, "maxEntries");
    o.finish(d);
    match max {
        Some(n) if n == 0 || n > MAX_CACHE_ENTRIES => {
            d.error(
                &path.key("maxEntries"),
                format!("must be 1 to {MAX_CACHE_ENTRIES}"),
            );
            return None;
        }
        _ => {}
    }
    Some(
        enabled
            .unwrap_or(false)
            .then(|| max.unwrap_or(DEFAULT_CACHE_ENTRIES)),
    )
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
    o.finish(d);
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
            o.finish(d);
            mapping.map(Transform::Jmespath)
        }
        Some((_, "gotmpl")) => {
            let content_type = o.str(d, "contentType").map(str::to_owned);
            let template = o.require(d, "template").and_then(|(p, v)| {
                let text = as_str(d, &p, v)?;
                match GoTemplate::parse(text) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        d.error(&p, format!("invalid Go template: {e}"));
                        None
                    }
                }
            });
            o.finish(d);
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
            o.finish(d);
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
            o.finish(d);
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
