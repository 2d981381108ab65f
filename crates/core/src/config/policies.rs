//! `definition.policies` and `definition.policyRoutes`.

use std::sync::Arc;

use serde_json::Value;

use super::compile_jmespath;
use super::elevation::route_keys;
use super::reader::{Diagnostics, Obj, as_str, as_str_list};
use crate::pipeline::Mode;
use crate::policy::{ClaimRequirement, MAX_POLICIES, Policies, Policy, PolicyRoute, normal_host};

/// Reads both keys of `definition` (`def` is finished by the caller).
pub(super) fn policies(d: &mut Diagnostics, def: &mut Obj<'_>, modes: &[Mode]) -> Policies {
    let mut out = Policies::default();
    if let Some((pp, pv)) = def.get("policies")
        && let Some(mut map) = Obj::open(d, pp.clone(), pv)
    {
        map.read_all();
        if map.entries().count() > MAX_POLICIES {
            d.error(&pp, format!("at most {MAX_POLICIES} policies"));
        }
        for (name, v) in map.entries() {
            let p = pp.key(name);
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            {
                d.error(
                    &p,
                    "a policy name is letters, digits, `-`, `_`, `.` or `:` (it appears in metrics and Envoy route configs)",
                );
                continue;
            }
            let Some(mut o) = Obj::open(d, p.clone(), v) else {
                continue;
            };
            let mode_ids = o.get("modes").and_then(|(mp, mv)| {
                let ids = as_str_list(d, &mp, mv)?;
                if ids.is_empty() {
                    d.error(
                        &mp,
                        "an empty list would allow no mode; leave the key out for any mode",
                    );
                    return None;
                }
                let mut known = Vec::new();
                for id in ids {
                    match modes.iter().find(|m| *m.id == *id) {
                        Some(m) => known.push(m.id.clone()),
                        None => d.error(&mp, format!("no mode has the id `{id}`")),
                    }
                }
                Some(known)
            });
            let roles = o
                .get("roles")
                .and_then(|(rp, rv)| {
                    let roles = as_str_list(d, &rp, rv)?;
                    if roles.is_empty() {
                        d.error(
                            &rp,
                            "an empty list would allow no role; leave the key out for any role",
                        );
                    }
                    Some(roles)
                })
                .unwrap_or_default();
            let mut claims = Vec::new();
            if let Some((cp, cv)) = o.get("claims")
                && let Some(mut co) = Obj::open(d, cp.clone(), cv)
            {
                co.read_all();
                for (expr, want) in co.entries() {
                    let ep = cp.key(expr);
                    let Some(compiled) = compile_jmespath(d, &ep, expr) else {
                        continue;
                    };
                    let any_of = match want {
                        Value::Array(items) if items.is_empty() => {
                            d.error(&ep, "an empty list matches nothing");
                            continue;
                        }
                        Value::Array(items) => items.clone(),
                        Value::Object(_) => {
                            d.error(&ep, "expected a value or a list of values");
                            continue;
                        }
                        one => vec![one.clone()],
                    };
                    claims.push(ClaimRequirement {
                        expr: compiled,
                        any_of,
                    });
                }
            }
            let scopes = o
                .get("scopes")
                .and_then(|(sp, sv)| as_str_list(d, &sp, sv))
                .unwrap_or_default();
            if scopes
                .iter()
                .any(|s| s.is_empty() || s.contains(char::is_whitespace))
            {
                d.error(&p.key("scopes"), "a scope is one word");
            }
            let elevation = match o.get("elevation") {
                None => false,
                Some((ep, ev)) => match as_str(d, &ep, ev) {
                    Some("required") => true,
                    Some("optional") => false,
                    Some(_) => {
                        d.error(&ep, "expected required or optional");
                        false
                    }
                    None => false,
                },
            };
            o.finish(d);
            out.policies.push(Policy {
                name: Arc::from(name.as_str()),
                modes: mode_ids.unwrap_or_default(),
                roles,
                claims,
                scopes,
                elevation,
            });
        }
    }
    if let Some((rp, rv)) = def.get("policyRoutes") {
        let Value::Array(items) = rv else {
            d.error(&rp, "expected a list of routes");
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let ip = rp.index(i);
            let Some(mut o) = Obj::open(d, ip.clone(), item) else {
                continue;
            };
            let host = o
                .str(d, "host")
                .map(|h| normal_host(h.trim()).to_ascii_lowercase());
            let policy = o.str(d, "policy").map(str::to_owned);
            let route = route_keys(d, &ip, &mut o);
            o.finish(d);
            // A host that can never match would silently drop the route.
            if let Some(h) = &host {
                let name = h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
                    && !h.is_empty()
                    && !h.starts_with('.')
                    && !h.contains("..");
                let ipv6 = h.starts_with('[')
                    && h.ends_with(']')
                    && h[1..h.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
                if !name && !ipv6 {
                    d.error(
                        &ip.key("host"),
                        "expected a host name or address (`api.example.com`, `10.0.0.5`, `[::1]`); no wildcard, path or scheme",
                    );
                    continue;
                }
            }
            let Some(name) = policy else {
                d.error(&ip, "missing required key `policy`");
                continue;
            };
            let Some(index) = out.index(&name) else {
                d.error(&ip.key("policy"), format!("no policy is named `{name}`"));
                continue;
            };
            if let Some(route) = route {
                out.routes.push(PolicyRoute {
                    host,
                    route,
                    policy: index,
                });
            }
        }
    }
    out
}
