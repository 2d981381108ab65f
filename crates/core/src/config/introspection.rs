//! The `introspection` mode's configuration (RFC 7662 token introspection).

use std::time::Duration;

use serde_json::Value;

use super::env::{Env, env_string};
use super::http_client::{FetchPurpose, key_fetch};
use super::reader::{Diagnostics, Obj, YamlPath, as_str_list};
use super::{
    MAX_CACHE_TTL_SECONDS, claims_config, clear_text_off_loopback, oidc_document, token_location,
    web_url,
};
use crate::introspection::{ClientAuth, Endpoint, IntrospectionMode};
use crate::jwks::FetchOptions;
use crate::redact::Secret;
use crate::request::{Place, TokenLocation};

/// `cacheTtl` when not set, in seconds.
pub const DEFAULT_CACHE_TTL: u64 = 60;

pub(super) fn introspection(
    d: &mut Diagnostics,
    env: &dyn Env,
    mut o: Obj<'_>,
) -> Option<IntrospectionMode> {
    let location = match o.get("tokenLocation") {
        Some((p, v)) => token_location(d, p, v, Some("bearer")),
        None => Some(TokenLocation {
            place: Place::Header,
            name: "authorization".into(),
            scheme: Some("bearer".into()),
        }),
    };
    let endpoint = o
        .require(d, "introspection")
        .and_then(|(p, v)| Obj::open(d, p, v))
        .and_then(|io| client(d, env, io));
    let audience = match o.get("audience") {
        Some((p, v)) => as_str_list(d, &p, v).unwrap_or_default(),
        None => Vec::new(),
    };
    let issuer = o.str(d, "issuer").map(str::to_owned);
    let allowed_skew = o.u64(d, "allowedSkew").unwrap_or(60);
    let claims = o
        .require(d, "claimsConfig")
        .and_then(|(p, v)| claims_config(d, env, p, v));
    o.finish(d);
    let (endpoint, client, token_type_hint, cache_ttl, fetch) = endpoint?;
    Some(IntrospectionMode {
        location: location?,
        endpoint,
        client,
        token_type_hint,
        cache_ttl,
        fetch,
        audience,
        issuer,
        allowed_skew,
        claims: claims?,
    })
}

type Client = (Endpoint, ClientAuth, Option<String>, Duration, FetchOptions);

/// The `introspection` block: where to ask and as whom.
fn client(d: &mut Diagnostics, env: &dyn Env, mut o: Obj<'_>) -> Option<Client> {
    let path = o.path.clone();
    let fixed = o.get("endpoint");
    let issuer = o.get("oidcIssuer");
    let secret = |d: &mut Diagnostics, o: &mut Obj<'_>, key: &'static str| {
        o.get(key)
            .map(|(p, v)| (p.clone(), env_string(d, env, &p, v)))
    };
    let id = secret(d, &mut o, "clientId");
    let client_secret = secret(d, &mut o, "clientSecret");
    let method = o
        .get("authMethod")
        .map(|(p, v)| (p, v.as_str().map(str::to_owned)));
    let hint = o.str(d, "tokenTypeHint").map(str::to_owned);
    let cache_ttl = o.u64(d, "cacheTtl").unwrap_or(DEFAULT_CACHE_TTL);
    if cache_ttl > MAX_CACHE_TTL_SECONDS {
        d.error(
            &path.key("cacheTtl"),
            format!("at most {MAX_CACHE_TTL_SECONDS} seconds (a day)"),
        );
        return None;
    }
    let fetch = match o.get("httpClient") {
        Some((p, v)) => key_fetch(d, env, p, v, FetchPurpose::Introspection),
        None => key_fetch(
            d,
            env,
            path.key("httpClient"),
            &Value::Object(Default::default()),
            FetchPurpose::Introspection,
        ),
    };
    o.finish(d);
    // The client's credentials and the form are authgate's: a configured
    // header would go beside them (RFC 6749, section 2.3: one method).
    if let Some(f) = &fetch {
        for name in ["authorization", "content-type"] {
            if f.headers.contains_key(name) {
                d.error(
                    &path.key("httpClient").key("headers"),
                    format!("`{name}` is set by authgate for introspection (clientId, clientSecret, authMethod); it cannot be configured"),
                );
                return None;
            }
        }
    }
    let headers_set = fetch.as_ref().is_some_and(|f| !f.headers.is_empty());
    let endpoint = match (fixed, issuer) {
        (Some((p, v)), None) => {
            let url = env_string(d, env, &p, v)?;
            checked_url(d, &p, &url, headers_set, "introspection endpoint")?;
            Endpoint::Fixed(url)
        }
        (None, Some((p, v))) => {
            let issuer = env_string(d, env, &p, v)?;
            let document = oidc_document(&issuer);
            let parsed = checked_url(d, &p, &document, headers_set, "OpenID issuer")?;
            if parsed.query().is_some() || parsed.fragment().is_some() {
                d.error(&p, "an OpenID issuer has no query or fragment");
                return None;
            }
            Endpoint::Discovered { document, issuer }
        }
        (None, None) => {
            d.error(
                &path,
                "missing `endpoint` (the introspection URL) or `oidcIssuer` (an OpenID issuer whose discovery document names it)",
            );
            return None;
        }
        (Some(_), Some(_)) => {
            d.error(&path, "set one of `endpoint` and `oidcIssuer`, not both");
            return None;
        }
    };
    let method = match method {
        None => "client_secret_basic".to_owned(),
        Some((_, Some(m)))
            if matches!(
                m.as_str(),
                "client_secret_basic" | "client_secret_post" | "bearer"
            ) =>
        {
            m
        }
        Some((p, _)) => {
            d.error(
                &p,
                "expected client_secret_basic, client_secret_post or bearer",
            );
            return None;
        }
    };
    let Some((sp, client_secret)) = client_secret else {
        d.error(
            &path,
            "missing required key `clientSecret` (the endpoint must authenticate authgate: RFC 7662, section 2.1)",
        );
        return None;
    };
    let client_secret = Secret(client_secret?);
    if client_secret.0.is_empty() {
        d.error(&sp, "must not be empty");
        return None;
    }
    // Sent in a header (bearer) or form-encoded: a byte a header cannot
    // carry is a config error, not a request sent without credentials.
    if method == "bearer"
        && reqwest::header::HeaderValue::from_str(&format!("Bearer {}", client_secret.0)).is_err()
    {
        d.error(
            &sp,
            "cannot be sent in a header: it holds a control character (a trailing newline?) or a non-ASCII character (not shown)",
        );
        return None;
    }
    let client = match (method.as_str(), id) {
        ("bearer", None) => ClientAuth::Bearer(client_secret),
        ("bearer", Some((p, _))) => {
            d.warn(
                &p,
                "not sent with authMethod bearer (only clientSecret is, as the bearer token)",
            );
            ClientAuth::Bearer(client_secret)
        }
        (_, None) => {
            d.error(
                &path,
                format!("missing required key `clientId` (required with authMethod {method})"),
            );
            return None;
        }
        (m, Some((p, id))) => {
            let id = id?;
            if id.is_empty() {
                d.error(&p, "must not be empty");
                return None;
            }
            if m == "client_secret_post" {
                ClientAuth::Post {
                    id,
                    secret: client_secret,
                }
            } else {
                ClientAuth::Basic {
                    id,
                    secret: client_secret,
                }
            }
        }
    };
    if let Some(h) = &hint
        && (h.is_empty() || h.len() > 256)
    {
        d.error(
            &path.key("tokenTypeHint"),
            "must be 1 to 256 characters (e.g. access_token)",
        );
        return None;
    }
    Some((
        endpoint,
        client,
        hint,
        Duration::from_secs(cache_ttl),
        fetch?,
    ))
}

/// An endpoint or issuer URL: http or https, no user or password; plain
/// http off the loopback is a warning, and an error with extra headers.
fn checked_url(
    d: &mut Diagnostics,
    at: &YamlPath,
    url: &str,
    headers_set: bool,
    what: &str,
) -> Option<reqwest::Url> {
    let parsed = web_url(d, at, url, what)?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        d.error(
            at,
            format!("the {what} URL has no user or password (not shown): the client authenticates with clientId and clientSecret"),
        );
        return None;
    }
    if clear_text_off_loopback(&parsed) {
        if headers_set {
            d.error(
                at,
                "introspection.httpClient.headers would cross the network in clear text over http; use https",
            );
            return None;
        }
        d.warn(
            at,
            "over plain http the client secret and every token cross the network in clear text, and answers can be forged; use https",
        );
    }
    Some(parsed)
}
