//! `definition.upstreamToken` and `definition.dynamicMetadata`.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::duration::duration;
use super::env::{Env, env_string};
use super::reader::{Diagnostics, Obj, YamlPath, as_str, as_str_list};
use crate::decision::{METADATA_FIELDS, MetadataField};
use crate::redact::Secret;
use crate::session::{check_variable_name, is_header_name_byte};
use crate::upstream::{ClaimsFormat, HASURA_NAMESPACE, UpstreamTokenConfig};

/// The longest an upstream token may live.
const MAX_TTL: Duration = Duration::from_secs(86_400);
/// At most this many dynamic metadata fields of one's own.
const MAX_METADATA: usize = 32;

/// Headers a token must not be written into: the proxy or HTTP itself
/// reads them, or authgate already decides them (x-hasura-*).
fn refused_header(name: &str) -> Option<&'static str> {
    const HTTP: [&str; 9] = [
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "keep-alive",
        "proxy-connection",
    ];
    if name.starts_with(':') || HTTP.contains(&name) {
        Some("HTTP and the proxy read this header")
    } else if crate::pipeline::is_reserved_header(name) {
        Some("authgate decides this header (session variables, mode selection, grants)")
    } else {
        None
    }
}

pub(super) fn upstream_token(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    v: &Value,
) -> Option<UpstreamTokenConfig> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let mut ok = true;
    let header = match o.str(d, "header") {
        None => "authorization".to_string(),
        Some(h) => {
            let lower = h.to_ascii_lowercase();
            if lower.is_empty() || !lower.bytes().all(is_header_name_byte) {
                d.error(&path.key("header"), "not a header name");
                ok = false;
            } else if let Some(why) = refused_header(&lower) {
                d.error(
                    &path.key("header"),
                    format!("`{h}` cannot carry the token: {why}"),
                );
                ok = false;
            }
            lower
        }
    };
    let scheme = match o.str(d, "scheme") {
        None => Some("Bearer".to_string()),
        Some("") => None,
        Some(s) if s.bytes().all(is_header_name_byte) => Some(s.to_string()),
        Some(_) => {
            d.error(
                &path.key("scheme"),
                "a scheme is one word (`Bearer`), or \"\" for the token alone",
            );
            ok = false;
            None
        }
    };
    let alg = super::elevation::signing_algorithm(d, &mut o, "upstream tokens are signed");
    let signing_key = o
        .get("signingKey")
        .map(|(p, v)| (p.clone(), env_string(d, env, &p, v)));
    let issuer = o.require(d, "issuer").and_then(|(p, v)| {
        let s = as_str(d, &p, v)?;
        match reqwest::Url::parse(s) {
            Ok(u)
                if matches!(u.scheme(), "https" | "http")
                    && u.host().is_some()
                    && u.username().is_empty()
                    && u.password().is_none()
                    && u.query().is_none()
                    && u.fragment().is_none() =>
            {
                Some(s.to_string())
            }
            _ => {
                d.error(
                    &p,
                    "an issuer is an http(s) URL with no user, query or fragment (verifiers find the keys under it, at /.well-known/jwks.json)",
                );
                None
            }
        }
    });
    // Required: the same JWKS also holds the keys of elevation grants, and
    // a verifier that checks no audience would take a grant for a session.
    let audience = match o.require(d, "audience") {
        None => None,
        Some((_, Value::String(s))) if !s.is_empty() => Some(vec![s.clone()]),
        Some((p, v @ Value::Array(_))) => as_str_list(d, &p, v).filter(|l| {
            let fine = !l.is_empty() && l.iter().all(|a| !a.is_empty());
            if !fine {
                d.error(
                    &p,
                    "an empty audience is a mistake: name what the upstream checks",
                );
            }
            fine
        }),
        Some((p, _)) => {
            d.error(
                &p,
                "expected an audience (a non-empty string) or a list of them",
            );
            None
        }
    };
    if audience
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == crate::elevation::GRANT_AUDIENCE))
    {
        d.error(
            &path.key("audience"),
            format!(
                "`{}` is the audience of elevation grants",
                crate::elevation::GRANT_AUDIENCE
            ),
        );
    }
    let ttl = match o.get("ttl") {
        None => Some(Duration::from_secs(300)),
        Some((p, v)) => duration(d, &p, v).filter(|t| {
            let fine = t.as_secs() >= 1 && *t <= MAX_TTL;
            if !fine {
                d.error(&p, "from 1 second to 24 hours");
            }
            fine
        }),
    };
    let namespace = match o.str(d, "claimsNamespace") {
        None => Some(HASURA_NAMESPACE.to_string()),
        Some(n) if ["", "iss", "aud", "sub", "iat", "exp", "nbf", "jti"].contains(&n) => {
            d.error(
                &path.key("claimsNamespace"),
                "a namespace is a claim of its own, not empty nor a registered claim (RFC 7519)",
            );
            None
        }
        Some(n) => Some(n.to_string()),
    };
    let format = match o.str(d, "claimsFormat") {
        None | Some("Json") => Some(ClaimsFormat::Json),
        Some("StringifiedJson") => Some(ClaimsFormat::StringifiedJson),
        Some(other) => {
            d.error(
                &path.key("claimsFormat"),
                format!("unknown format `{other}`; expected Json or StringifiedJson"),
            );
            None
        }
    };
    o.finish(d);
    let signing_key = match (signing_key, alg) {
        (None, Some(a)) if !matches!(a, Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA) => {
            d.error(
                &path,
                "without `signingKey` a key is generated, which authgate does only for ES256, ES384 and EdDSA",
            );
            return None;
        }
        (None, _) => None,
        (Some((_, None)), _) => return None,
        (Some((p, Some(pem))), Some(a)) => {
            if let Err(e) = crate::signing::SigningKey::from_pem(a, &pem) {
                d.error(&p, e);
                return None;
            }
            Some(Secret(pem))
        }
        (Some(_), None) => None,
    };
    if !ok {
        return None;
    }
    Some(UpstreamTokenConfig {
        header,
        scheme,
        alg: alg?,
        signing_key,
        issuer: issuer?,
        audience: audience?,
        ttl: ttl?,
        namespace: namespace?,
        format: format?,
    })
}

/// `dynamicMetadata: {KEY: SESSION_VARIABLE}`, in key order.
pub(super) fn dynamic_metadata(
    d: &mut Diagnostics,
    path: YamlPath,
    v: &Value,
) -> Vec<MetadataField> {
    let Some(mut o) = Obj::open(d, path.clone(), v) else {
        return Vec::new();
    };
    o.read_all();
    if o.entries().count() > MAX_METADATA {
        d.error(&path, format!("at most {MAX_METADATA} fields"));
        return Vec::new();
    }
    let mut out: Vec<MetadataField> = Vec::new();
    for (key, v) in o.entries() {
        let p = path.key(key);
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            d.error(
                &p,
                "a metadata key is letters, digits, `_` or `-` (it also names a response header)",
            );
            continue;
        }
        if METADATA_FIELDS.contains(&key.as_str()) {
            d.error(
                &p,
                format!("`{key}` is one of authgate's own metadata fields"),
            );
            continue;
        }
        let Some(var) = as_str(d, &p, v) else {
            continue;
        };
        let var = var.to_ascii_lowercase();
        if let Err(e) = check_variable_name(&var) {
            d.error(&p, e);
            continue;
        }
        let field = MetadataField::new(key, &var);
        if out.iter().any(|f| f.header == field.header) {
            d.error(
                &p,
                format!(
                    "another key names the same response header `{}`",
                    field.header
                ),
            );
            continue;
        }
        out.push(field);
    }
    out
}
