//! `definition.elevation` (docs/elevation.md): nhost's elevated access, enforced at the edge.

use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde_json::Value;

use super::env::{Env, env_string};
use super::reader::{Diagnostics, Obj, YamlPath, as_str, as_str_list};
use crate::elevation::{ElevationConfig, ElevationMode, GrantSettings, WebauthnSettings};
use crate::redact::Secret;
use crate::route::{KNOWN_METHODS, Route, RoutePath};
use crate::session::check_variable_name;

pub(super) fn elevation(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    v: &Value,
) -> Option<ElevationConfig> {
    let mut c = ElevationConfig::default();
    let mut o = Obj::open(d, path.clone(), v)?;
    let mut ok = true;
    match o.str(d, "mode") {
        None | Some("disabled") => {}
        Some("required") => c.mode = ElevationMode::Required,
        Some("recommended") => c.mode = ElevationMode::Recommended,
        Some(other) => {
            d.error(
                &path.key("mode"),
                format!("unknown mode `{other}`; expected disabled, required or recommended"),
            );
            ok = false;
        }
    }
    if let Some(claim) = o.str(d, "claim") {
        match check_variable_name(claim) {
            Ok(()) => c.claim = claim.to_ascii_lowercase(),
            Err(e) => {
                d.error(&path.key("claim"), e);
                ok = false;
            }
        }
    }
    if let Some((p, v)) = o.get("routes") {
        match v.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    match route(d, p.index(i), item) {
                        Some(r) => c.routes.push(r),
                        None => ok = false,
                    }
                }
            }
            None => {
                d.error(&p, "expected a list of routes");
                ok = false;
            }
        }
    }
    if let Some((p, v)) = o.get("webauthn") {
        c.webauthn = webauthn(d, p, v);
        ok &= c.webauthn.is_some();
    }
    if let Some((p, v)) = o.get("grant") {
        match grant(d, env, p, v) {
            Some(g) => c.grant = g,
            None => ok = false,
        }
    }
    if let Some((p, v)) = o.get("store") {
        if let Some(mut s) = Obj::open(d, p.clone(), v) {
            if let Some((up, uv)) = s.get("url") {
                // A plain string or `{value|env}` (a password in the URL).
                let url = match uv {
                    Value::String(u) => Some(u.clone()),
                    other => env_string(d, env, &up, other),
                };
                match url {
                    Some(u)
                        if u.starts_with("sqlite:")
                            || u.starts_with("postgres://")
                            || u.starts_with("postgresql://") =>
                    {
                        c.store_url = u;
                    }
                    Some(_) => {
                        d.error(&up, "expected a sqlite:// or postgres:// URL");
                        ok = false;
                    }
                    None => ok = false,
                }
            }
            if let Some(b) = s.bool(d, "nhostSecurityKeys") {
                c.nhost_keys = b;
            }
            s.finish(d);
        } else {
            ok = false;
        }
    }
    if let Some(n) = o.u64(d, "challengeTtl") {
        c.challenge_ttl = Duration::from_secs(n.clamp(1, 3600));
    }
    o.finish(d);
    if c.mode != ElevationMode::Disabled && c.webauthn.is_none() && ok {
        d.error(
            &path,
            "`webauthn` (rpId, rpName, origins) is required unless mode is disabled",
        );
        ok = false;
    }
    ok.then_some(c)
}

fn route(d: &mut Diagnostics, path: YamlPath, v: &Value) -> Option<Route> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let route = route_keys(d, &path, &mut o);
    o.finish(d);
    route
}

/// A route's `methods`, `path` and `pathPrefix`, read from `o` (which the
/// caller finishes: policy routes have more keys).
pub(super) fn route_keys(d: &mut Diagnostics, path: &YamlPath, o: &mut Obj<'_>) -> Option<Route> {
    let path = path.clone();
    let methods = match o.get("methods") {
        Some((p, v)) => methods(d, &p, v),
        None => Some(Vec::new()),
    };
    let exact = o.str(d, "path").map(str::to_owned);
    let prefix = o.str(d, "pathPrefix").map(str::to_owned);
    let (key, parsed) = match (&exact, &prefix) {
        (Some(p), None) if p.starts_with('/') => ("path", RoutePath::exact(p)),
        (None, Some(p)) if p.starts_with('/') => ("pathPrefix", RoutePath::prefix(p)),
        (Some(_), Some(_)) => {
            d.error(&path, "set `path` or `pathPrefix`, not both");
            return None;
        }
        (None, None) => {
            d.error(&path, "set `path` or `pathPrefix`");
            return None;
        }
        _ => {
            d.error(&path, "paths start with `/`");
            return None;
        }
    };
    let route_path = match parsed {
        Ok(p) => p,
        Err(e) => {
            d.error(&path.key(key), e.to_string());
            return None;
        }
    };
    Some(Route {
        methods: methods?,
        path: route_path,
    })
}

/// A route's `methods`: known HTTP methods, any case. `*`, `ANY` or a typo
/// would validate and never match, so they are errors; an empty list is
/// one too (leave `methods` out to cover every method).
fn methods(d: &mut Diagnostics, path: &YamlPath, v: &Value) -> Option<Vec<String>> {
    let list = as_str_list(d, path, v)?;
    if list.is_empty() {
        d.error(
            path,
            "an empty list matches nothing; leave `methods` out to cover every method",
        );
        return None;
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    let mut ok = true;
    for (i, m) in list.iter().enumerate() {
        let upper = m.to_ascii_uppercase();
        if KNOWN_METHODS.contains(&upper.as_str()) {
            if !out.contains(&upper) {
                out.push(upper);
            }
        } else {
            let hint = if matches!(m.trim(), "*" | "ANY" | "any" | "ALL" | "all") {
                "; leave `methods` out to cover every method".to_owned()
            } else {
                format!("; expected one of {}", KNOWN_METHODS.join(", "))
            };
            d.error(&path.index(i), format!("unknown HTTP method `{m}`{hint}"));
            ok = false;
        }
    }
    ok.then_some(out)
}

fn webauthn(d: &mut Diagnostics, path: YamlPath, v: &Value) -> Option<WebauthnSettings> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let rp_id = o
        .require(d, "rpId")
        .and_then(|(p, v)| as_str(d, &p, v).map(str::to_owned));
    let rp_name = o.str(d, "rpName").map(str::to_owned);
    let origins = o.require(d, "origins").and_then(|(p, v)| {
        let list = as_str_list(d, &p, v)?;
        if list.is_empty() {
            d.error(&p, "at least one origin is required");
            return None;
        }
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match reqwest::Url::parse(s) {
                Ok(u) if u.scheme() == "https" || u.host_str() == Some("localhost") => out.push(u),
                Ok(_) => d.error(
                    &p.index(i),
                    "WebAuthn origins are https (or http://localhost)",
                ),
                Err(e) => d.error(&p.index(i), format!("not a valid origin: {e}")),
            }
        }
        (out.len() == list.len() && !out.is_empty()).then_some(out)
    });
    o.finish(d);
    let (rp_id, origins) = (rp_id?, origins?);
    for (i, origin) in origins.iter().enumerate() {
        let host = origin.host_str().unwrap_or("");
        if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
            d.error(
                &path.key("origins").index(i),
                format!("origin host `{host}` is not `{rp_id}` or one of its subdomains"),
            );
            return None;
        }
    }
    Some(WebauthnSettings {
        rp_name: rp_name.unwrap_or_else(|| rp_id.clone()),
        rp_id,
        origins,
    })
}

fn grant(d: &mut Diagnostics, env: &dyn Env, path: YamlPath, v: &Value) -> Option<GrantSettings> {
    let mut g = ElevationConfig::default().grant;
    let mut o = Obj::open(d, path, v)?;
    let mut ok = true;
    if let Some(n) = o.u64(d, "ttl") {
        if n == 0 {
            d.error(&o.path.key("ttl"), "must be at least 1 second");
            ok = false;
        }
        g.ttl = Duration::from_secs(n);
    }
    if let Some((kp, kv)) = o.get("signingKey") {
        match signing_key(d, env, kp, kv) {
            Some(k) => g.signing_key = Some(k),
            None => ok = false,
        }
    }
    o.finish(d);
    ok.then_some(g)
}

/// `algorithm` of a key authgate signs with: asymmetric (its public key
/// is published), ES256 when absent.
pub(super) fn signing_algorithm(
    d: &mut Diagnostics,
    o: &mut Obj<'_>,
    what: &str,
) -> Option<Algorithm> {
    match o.str(d, "algorithm") {
        None => Some(Algorithm::ES256),
        Some(a) => match crate::keys::parse_algorithm(a) {
            Ok(a) if a.family() != AlgorithmFamily::Hmac => Some(a),
            Ok(_) => {
                d.error(
                    &o.path.key("algorithm"),
                    format!("{what} with an asymmetric key (its public key is published)"),
                );
                None
            }
            Err(e) => {
                d.error(&o.path.key("algorithm"), e);
                None
            }
        },
    }
}

fn signing_key(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    v: &Value,
) -> Option<(Algorithm, Secret)> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let alg = signing_algorithm(d, &mut o, "grants are signed");
    let key = o
        .require(d, "key")
        .and_then(|(p, v)| env_string(d, env, &p, v).map(|k| (p, k)));
    o.finish(d);
    let (alg, (kp, key)) = (alg?, key?);
    if let Err(e) = crate::elevation::GrantKeys::from_pem(alg, &key) {
        d.error(&kp, e);
        return None;
    }
    Some((alg, Secret(key)))
}
