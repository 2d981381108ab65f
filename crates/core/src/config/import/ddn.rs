//! Hasura DDN's `kind: AuthConfig` (versions v1 to v4), read as strictly
//! as the engine reads it (unknown keys refused).

use serde_json::Value;
use serde_yaml_ng::Value as Y;

use super::{
    Findings, Imported, Unusable, empty_audience, finish, jmespath, json_pointer, literal, map,
    role_header_difference, without_role_claim, yaml,
};
use crate::config::reader::{Diagnostics, Obj, Problem, YamlPath, as_str};

/// Whether `root` is a DDN `AuthConfig` rather than RelyAuth's file (whose
/// `AuthConfig` alias has `definition.modes`): DDN's has `definition.mode`.
pub fn is_ddn(root: &Value) -> bool {
    root.get("kind").and_then(Value::as_str) == Some("AuthConfig")
        && root
            .get("definition")
            .is_some_and(|d| d.get("mode").is_some() && d.get("modes").is_none())
}

/// Imports a DDN `AuthConfig` document.
pub fn ddn(root: &Value) -> Result<Imported, Unusable> {
    ddn_config(root)
        .map_err(|problems| Unusable(problems.iter().map(ToString::to_string).collect()))
}

/// [`ddn`] for `serve` and `validate`: problems keep their paths, so the
/// file's lines and columns can be shown.
pub(crate) fn ddn_config(root: &Value) -> Result<Imported, Vec<Problem>> {
    let mut d = Diagnostics::default();
    let mut f = Findings::default();
    let modes = read(&mut d, &mut f, root).unwrap_or_default();
    let mut problems = d.errors;
    problems.extend(
        std::mem::take(&mut f.problems)
            .into_iter()
            .map(|m| Problem::error(YamlPath::root(), m)),
    );
    if !problems.is_empty() {
        return Err(problems);
    }
    finish(modes, f).map_err(|u| {
        u.0.into_iter()
            .map(|m| Problem::error(YamlPath::root(), m))
            .collect()
    })
}

fn read(d: &mut Diagnostics, f: &mut Findings, root: &Value) -> Option<Vec<Y>> {
    let mut top = Obj::open(d, YamlPath::root(), root)?;
    let kind = top.str(d, "kind");
    let version = top.str(d, "version");
    let definition = top.require(d, "definition");
    top.finish(d);
    if kind != Some("AuthConfig") {
        d.error(&YamlPath::root().key("kind"), "expected `AuthConfig`");
    }
    let version = match version {
        Some(v @ ("v1" | "v2" | "v3" | "v4")) => v,
        Some(other) => {
            d.error(
                &YamlPath::root().key("version"),
                format!("unsupported version `{other}`; expected v1, v2, v3 or v4"),
            );
            return None;
        }
        None => {
            d.error(&YamlPath::root(), "missing required key `version`");
            return None;
        }
    };
    let (dp, dv) = definition?;
    let mut def = Obj::open(d, dp, dv)?;
    if version == "v1"
        && let Some((p, v)) = def.get("allowRoleEmulationBy")
        && as_str(d, &p, v).is_some()
    {
        f.differ("allowRoleEmulationBy (v1 role emulation) is not imported: authgate never lets a role take the client's role and session headers");
    }
    let mode = def.require(d, "mode");
    let alternatives = if version == "v4" {
        def.get("alternativeModes")
    } else {
        None
    };
    def.finish(d);
    let (mp, mv) = mode?;
    let mut modes = Vec::new();
    let mut identifiers = Vec::new();
    if let Some((ap, av)) = alternatives {
        let Value::Array(items) = av else {
            d.error(&ap, "expected a list");
            return None;
        };
        for (i, item) in items.iter().enumerate() {
            let ip = ap.index(i);
            let mut o = Obj::open(d, ip.clone(), item)?;
            let id = o.str(d, "identifier").map(str::to_owned);
            let config = o.require(d, "config");
            o.finish(d);
            let (Some(id), Some((cp, cv))) = (id, config) else {
                d.error(&ip, "expected `identifier` and `config`");
                continue;
            };
            if id.is_empty() || id == "primary" || identifiers.contains(&id) {
                d.error(
                    &ip.key("identifier"),
                    "must be unique, not empty and not `primary`",
                );
                continue;
            }
            identifiers.push(id.clone());
            if let Some(m) = one_mode(d, f, version, cp, cv, &id, true) {
                modes.push(m);
            }
        }
        if !identifiers.is_empty() {
            f.differ("alternativeModes: an `X-Hasura-Auth-Mode` value naming no mode makes DDN use the primary mode; authgate then tries no mode and answers 401 `missing_credentials`");
            if identifiers.iter().any(|i| {
                ["apiKey", "jwt", "introspection", "webhook", "noAuth"].contains(&i.as_str())
            }) {
                f.differ("an alternative mode's identifier is also an authgate mode type: `X-Hasura-Auth-Mode` with that value selects every mode of the type (an alternative still needs its own header value)");
            }
        }
    }
    let primary = one_mode(d, f, version, mp, mv, "primary", false)?;
    modes.insert(0, primary);
    Some(modes)
}

/// One mode (`jwt`, `webhook` or `noAuth`) as an authgate mode with `id`.
/// An alternative mode runs only when `X-Hasura-Auth-Mode` names it, as
/// in DDN.
fn one_mode(
    d: &mut Diagnostics,
    f: &mut Findings,
    version: &str,
    path: YamlPath,
    v: &Value,
    id: &str,
    alternative: bool,
) -> Option<Y> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let jwt = o.get("jwt");
    let webhook = o.get("webhook");
    let no_auth = o.get("noAuth");
    o.finish(d);
    let body = match (jwt, webhook, no_auth) {
        (Some((p, v)), None, None) => jwt_mode(d, f, p, v)?,
        (None, Some((p, v)), None) => webhook_mode(d, f, version, p, v)?,
        (None, None, Some((p, v))) => no_auth_mode(d, f, p, v)?,
        _ => {
            d.error(
                &path,
                "expected exactly one of `jwt`, `webhook` and `noAuth`",
            );
            return None;
        }
    };
    let Y::Mapping(mut m) = body else {
        return None;
    };
    let mut out = serde_yaml_ng::Mapping::new();
    out.insert("id".into(), id.into());
    for (k, v) in std::mem::take(&mut m) {
        out.insert(k, v);
    }
    if alternative {
        out.insert("onlyWhenSelected".into(), true.into());
    }
    Some(Y::Mapping(out))
}

/// `{value}` or `{valueFromEnv}` as authgate's `{value}` or `{env}`.
fn env_value(d: &mut Diagnostics, path: YamlPath, v: &Value) -> Option<Y> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let value = o.get("value");
    let from_env = o.get("valueFromEnv");
    o.finish_hiding_keys(d);
    match (value, from_env) {
        (Some((p, Value::String(s))), None) => {
            let _ = p;
            Some(literal(s.as_str().into()))
        }
        (None, Some((p, v))) => {
            let name = as_str(d, &p, v)?;
            Some(map([("env", name.into())]))
        }
        _ => {
            d.error(&path, "expected `value` (a string) or `valueFromEnv`");
            None
        }
    }
}

fn jwt_mode(d: &mut Diagnostics, f: &mut Findings, path: YamlPath, v: &Value) -> Option<Y> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let key = o.require(d, "key");
    let location = o.require(d, "tokenLocation");
    let claims = o.require(d, "claimsConfig");
    let audience = o.get("audience");
    let issuer = o.str(d, "issuer").map(str::to_owned);
    let skew = o.u64(d, "allowedSkew");
    o.finish(d);

    let key = {
        let (kp, kv) = key?;
        let mut k = Obj::open(d, kp.clone(), kv)?;
        let fixed = k.get("fixed");
        let url = k.get("jwkFromUrl");
        k.finish(d);
        match (fixed, url) {
            (Some((fp, fv)), None) => {
                let mut fo = Obj::open(d, fp, fv)?;
                let alg = fo.str(d, "algorithm").map(str::to_owned);
                let secret = fo.require(d, "key");
                fo.finish(d);
                let alg = match alg.as_deref() {
                    Some(
                        a @ ("HS256" | "HS384" | "HS512" | "ES256" | "ES384" | "RS256" | "RS384"
                        | "RS512" | "PS256" | "PS384" | "PS512" | "EdDSA"),
                    ) => a.to_owned(),
                    Some(other) => {
                        d.error(
                            &kp.key("fixed").key("algorithm"),
                            format!("`{other}` is not a DDN algorithm"),
                        );
                        return None;
                    }
                    None => {
                        d.error(&kp.key("fixed"), "missing required key `algorithm`");
                        return None;
                    }
                };
                let (sp, sv) = secret?;
                map([("algorithm", alg.into()), ("key", env_value(d, sp, sv)?)])
            }
            (None, Some((up, uv))) => {
                let url = as_str(d, &up, uv)?;
                f.differ("jwkFromUrl: DDN refuses a token without `kid`; authgate tries the key set's keys of the token's algorithm");
                map([("jwkFromUrl", literal(url.into()))])
            }
            _ => {
                d.error(&kp, "expected exactly one of `fixed` and `jwkFromUrl`");
                return None;
            }
        }
    };

    let location = {
        let (lp, lv) = location?;
        let mut l = Obj::open(d, lp.clone(), lv)?;
        let kind = l.str(d, "type").map(str::to_owned);
        let name = l.str(d, "name").map(str::to_owned);
        l.finish(d);
        match (kind.as_deref(), name) {
            (Some("BearerAuthorization"), None) => Y::Null,
            (Some("Header"), Some(n)) => map([
                ("in", "header".into()),
                ("name", n.into()),
                ("scheme", "".into()),
            ]),
            (Some("Cookie"), Some(n)) => {
                f.differ("a Cookie token location: DDN reads only the first cookie of the Cookie header; authgate finds the named cookie anywhere in it");
                map([("in", "cookie".into()), ("name", n.into())])
            }
            _ => {
                d.error(&lp, "expected {type: BearerAuthorization}, {type: Header, name} or {type: Cookie, name}");
                return None;
            }
        }
    };

    let claims = {
        let (cp, cv) = claims?;
        let mut c = Obj::open(d, cp.clone(), cv)?;
        let namespace = c.get("namespace");
        let locations = c.get("locations");
        c.finish(d);
        let mut numeric = false;
        let out = match (namespace, locations) {
            (Some((np, nv)), None) => {
                let mut n = Obj::open(d, np.clone(), nv)?;
                let format = n.str(d, "claimsFormat").map(str::to_owned);
                let pointer = n.str(d, "location").map(str::to_owned);
                n.finish(d);
                let format = match format.as_deref() {
                    Some(fmt @ ("Json" | "StringifiedJson")) => fmt.to_owned(),
                    _ => {
                        d.error(&np.key("claimsFormat"), "expected Json or StringifiedJson");
                        return None;
                    }
                };
                let Some(pointer) = pointer else {
                    d.error(&np, "missing required key `location`");
                    return None;
                };
                let steps = match json_pointer(&pointer, &mut numeric) {
                    Ok(s) => s,
                    Err(e) => {
                        d.error(&np.key("location"), e);
                        return None;
                    }
                };
                f.differ("claims namespace: DDN makes every key of the namespace object a session variable; authgate takes only its `x-hasura-*` keys");
                // DDN's role is the requested one or the default, never a
                // claim.
                let (role, none) = without_role_claim();
                let mut locations = serde_yaml_ng::Mapping::new();
                locations.insert(role, none);
                map([
                    (
                        "namespace",
                        map([
                            ("location", jmespath(&steps).into()),
                            ("claimsFormat", format.into()),
                        ]),
                    ),
                    ("locations", Y::Mapping(locations)),
                ])
            }
            (None, Some((lp, lv))) => {
                let mut lo = Obj::open(d, lp.clone(), lv)?;
                lo.read_all();
                let mut out = serde_yaml_ng::Mapping::new();
                for (name, entry) in lo.entries() {
                    let ep = lp.key(name);
                    let mut e = Obj::open(d, ep.clone(), entry)?;
                    let lit = e.get("literal");
                    let path = e.get("path");
                    e.finish(d);
                    let mapped = match (lit, path) {
                        (Some((_, lv)), None) => map([("default", literal(yaml(lv)))]),
                        (None, Some((pp, pv))) => {
                            let mut po = Obj::open(d, pp.clone(), pv)?;
                            let pointer = po.str(d, "path").map(str::to_owned);
                            let default = po.get("default").map(|(_, v)| v.clone());
                            po.finish(d);
                            let Some(pointer) = pointer else {
                                d.error(&pp, "missing required key `path` (a JSON Pointer)");
                                return None;
                            };
                            let steps = match json_pointer(&pointer, &mut numeric) {
                                Ok(s) => s,
                                Err(e) => {
                                    d.error(&pp.key("path"), e);
                                    return None;
                                }
                            };
                            match default {
                                Some(dv) => map([
                                    ("path", jmespath(&steps).into()),
                                    ("default", literal(yaml(&dv))),
                                ]),
                                None => map([("path", jmespath(&steps).into())]),
                            }
                        }
                        _ => {
                            d.error(&ep, "expected exactly one of `literal` and `path`");
                            return None;
                        }
                    };
                    out.insert(name.to_ascii_lowercase().into(), mapped);
                }
                for required in ["x-hasura-default-role", "x-hasura-allowed-roles"] {
                    if !out.contains_key(required) {
                        d.error(&lp, format!("missing required key `{required}`"));
                        return None;
                    }
                }
                map([("locations", Y::Mapping(out))])
            }
            _ => {
                d.error(&cp, "expected exactly one of `namespace` and `locations`");
                return None;
            }
        };
        if numeric {
            f.differ("a JSON Pointer step of digits is read as an array index (`/roles/0` -> `roles[0]`); in DDN it also names an object key `0`");
        }
        out
    };

    let audience = match audience {
        None => Y::Null,
        Some((ap, av)) => match av {
            Value::Array(items) if items.is_empty() => {
                empty_audience(f, &ap.to_string());
                return None;
            }
            Value::Array(items) if items.iter().all(Value::is_string) => {
                f.differ("audience: a token without `aud` passes DDN's check; authgate refuses it");
                yaml(av)
            }
            _ => {
                d.error(&ap, "expected a list of strings");
                return None;
            }
        },
    };
    if issuer.is_some() {
        f.differ("issuer: a token without `iss` passes DDN's check; authgate refuses it");
    }
    f.differ("DDN checks only `exp` (with the leeway); authgate also refuses a token whose `nbf` or `iat` is in the future (beyond `allowedSkew`)");
    role_header_difference(f, "401");
    f.differ("DDN refuses a token whose default role is not among its allowed roles, even when another role is requested; authgate checks only the role in use");
    Some(map([
        ("mode", "jwt".into()),
        ("tokenLocation", location),
        ("key", key),
        ("audience", audience),
        ("issuer", issuer.map(Y::String).unwrap_or(Y::Null)),
        ("allowedSkew", skew.map(Y::from).unwrap_or(Y::Null)),
        ("claimsConfig", claims),
    ]))
}

fn webhook_mode(
    d: &mut Diagnostics,
    f: &mut Findings,
    version: &str,
    path: YamlPath,
    v: &Value,
) -> Option<Y> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let method = o.str(d, "method").map(str::to_owned);
    let url = o.require(d, "url");
    let custom = if matches!(version, "v1" | "v2") {
        None
    } else {
        o.get("customHeadersConfig")
    };
    o.finish(d);
    let (up, uv) = url?;
    let (url, post) = if matches!(version, "v1" | "v2") {
        let url = as_str(d, &up, uv)?;
        let post = match method.as_deref() {
            Some("Get") => false,
            Some("Post") => true,
            _ => {
                d.error(&path.key("method"), "expected Get or Post");
                return None;
            }
        };
        (literal(url.into()), post)
    } else {
        let post = match method.as_deref() {
            Some("GET") => false,
            Some("POST") => true,
            _ => {
                d.error(&path.key("method"), "expected GET or POST");
                return None;
            }
        };
        (env_value(d, up, uv)?, post)
    };
    f.differ("the hook's 401: DDN answers the client 403, authgate 401 `webhook_denied`; its other 4xx: DDN answers 500, authgate 401");
    f.differ("a client `x-hasura-role` other than the role a webhook or noAuth mode gives: DDN answers 401; authgate keeps the mode's role");
    if !post {
        f.differ("GET hook: authgate does not forward the hop-by-hop headers Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade and Proxy-Authorization to the hook; DDN's `*` does");
    }
    // What goes as HTTP headers and what in a POST body, as DDN builds it.
    let (headers, body_headers) = match custom {
        None => (
            if post { None } else { Some(forward_all()) },
            Some("headers".to_owned()),
        ),
        Some((cp, cv)) => {
            let mut c = Obj::open(d, cp.clone(), cv)?;
            let headers = c.get("headers");
            let body = if post { c.get("body") } else { None };
            c.finish(d);
            let headers = match headers {
                Some((hp, hv)) => Some(header_config(d, hp, hv)?),
                None => Some(map([("forward", Y::Sequence(Vec::new()))])),
            };
            let body_headers = match body {
                Some((bp, bv)) => {
                    let mut b = Obj::open(d, bp.clone(), bv)?;
                    let h = b.get("headers");
                    b.finish(d);
                    match h {
                        Some((hp, hv)) => Some(body_selection(d, hp, hv)?),
                        None => Some("`{}`".to_owned()),
                    }
                }
                None => Some("`{}`".to_owned()),
            };
            (headers, body_headers.filter(|_| post))
        }
    };
    let mut request = serde_yaml_ng::Mapping::new();
    if let Some(h) = headers {
        request.insert("headers".into(), h);
    }
    if post && let Some(expr) = body_headers {
        request.insert(
            "body".into(),
            map([
                ("type", "jmespath".into()),
                (
                    "template",
                    map([
                        ("type", "object".into()),
                        (
                            "properties",
                            map([(
                                "headers",
                                map([("type", "field".into()), ("path", expr.into())]),
                            )]),
                        ),
                    ]),
                ),
            ]),
        );
    }
    Some(map([
        ("mode", "webhook".into()),
        ("url", url),
        ("method", if post { "POST" } else { "GET" }.into()),
        (
            "customRequest",
            if request.is_empty() {
                Y::Null
            } else {
                Y::Mapping(request)
            },
        ),
    ]))
}

fn forward_all() -> Y {
    map([("forward", "*".into())])
}

/// `headers: {forward, additional}` for the hook's HTTP headers.
fn header_config(d: &mut Diagnostics, path: YamlPath, v: &Value) -> Option<Y> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let forward = o.get("forward");
    let additional = o.get("additional");
    o.finish(d);
    let forward = match forward {
        None => "*".into(),
        Some((_, Value::String(s))) if s == "*" => "*".into(),
        Some((fp, fv)) => {
            let Value::Array(items) = fv else {
                d.error(&fp, "expected \"*\" or a list of header names");
                return None;
            };
            if !items.iter().all(Value::is_string) {
                d.error(&fp, "expected \"*\" or a list of header names");
                return None;
            }
            yaml(fv)
        }
    };
    let additional = match additional {
        None => Y::Null,
        Some((ap, av)) => {
            let Value::Object(m) = av else {
                d.error(&ap, "expected a mapping of header names to values");
                return None;
            };
            let mut out = serde_yaml_ng::Mapping::new();
            for (name, value) in m {
                let Value::String(s) = value else {
                    d.error(&ap.key(name), "expected a string");
                    return None;
                };
                out.insert(
                    name.as_str().into(),
                    map([("default", literal(s.as_str().into()))]),
                );
            }
            Y::Mapping(out)
        }
    };
    Some(map([("forward", forward), ("additional", additional)]))
}

/// A POST body's `headers: {forward, additional}` as the JMESPath over the
/// request document that builds DDN's body `headers` object.
fn body_selection(d: &mut Diagnostics, path: YamlPath, v: &Value) -> Option<String> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let forward = o.get("forward");
    let additional = o.get("additional");
    o.finish(d);
    let base = match forward {
        None => "headers".to_owned(),
        Some((_, Value::String(s))) if s == "*" => "headers".to_owned(),
        Some((fp, Value::Array(items))) => {
            // A header the request lacks is left out, as DDN leaves it
            // out (an object member would be `null`).
            let mut parts = vec!["`{}`".to_owned()];
            for item in items {
                let Value::String(name) = item else {
                    d.error(&fp, "expected \"*\" or a list of header names");
                    return None;
                };
                let name = name.to_ascii_lowercase();
                let key = serde_json::to_string(&name).unwrap_or_default();
                parts.push(format!(
                    "headers.{key} && {{{key}: headers.{key}}} || `{{}}`"
                ));
            }
            format!("merge({})", parts.join(", "))
        }
        Some((fp, _)) => {
            d.error(&fp, "expected \"*\" or a list of header names");
            return None;
        }
    };
    let expr = match additional {
        None => base,
        Some((ap, Value::Object(m))) => {
            if !m.values().all(Value::is_string) {
                d.error(&ap, "expected a mapping of header names to strings");
                return None;
            }
            let lit = serde_json::to_string(&Value::Object(m.clone())).unwrap_or_default();
            format!("merge({base}, `{}`)", lit.replace('`', "\\`"))
        }
        Some((ap, _)) => {
            d.error(&ap, "expected a mapping of header names to values");
            return None;
        }
    };
    Some(expr)
}

fn no_auth_mode(d: &mut Diagnostics, f: &mut Findings, path: YamlPath, v: &Value) -> Option<Y> {
    f.differ("a client `x-hasura-role` other than the role a webhook or noAuth mode gives: DDN answers 401; authgate keeps the mode's role");
    let mut o = Obj::open(d, path.clone(), v)?;
    let role = o.str(d, "role").map(str::to_owned);
    let vars = o.require(d, "sessionVariables");
    o.finish(d);
    let Some(role) = role else {
        d.error(&path, "missing required key `role`");
        return None;
    };
    let (vp, vv) = vars?;
    let Value::Object(vars) = vv else {
        d.error(&vp, "expected a mapping");
        return None;
    };
    let mut out = serde_yaml_ng::Mapping::new();
    out.insert("x-hasura-role".into(), literal(role.into()));
    for (k, v) in vars {
        if k.eq_ignore_ascii_case("x-hasura-role") {
            continue;
        }
        out.insert(k.to_ascii_lowercase().into(), literal(yaml(v)));
    }
    Some(map([
        ("mode", "noAuth".into()),
        ("sessionVariables", Y::Mapping(out)),
    ]))
}
