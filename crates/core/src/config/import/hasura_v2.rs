//! Hasura v2: `HASURA_GRAPHQL_JWT_SECRET` (or `_JWT_SECRETS`),
//! `HASURA_GRAPHQL_UNAUTHORIZED_ROLE`, `HASURA_GRAPHQL_AUTH_HOOK` and
//! `_AUTH_HOOK_MODE`, read as Hasura's `JWTConfig` parser reads them
//! (unknown keys ignored, `key` xor `jwk_url`, `claims_map` over the
//! namespace).

use serde_json::{Map, Value};
use serde_yaml_ng::Value as Y;

use super::{
    Findings, Imported, Step, Unusable, admin_secret_difference, empty_audience, finish,
    hasura_json_path, jmespath, literal, map, role_header_difference, without_role_claim, yaml,
};

/// What a Hasura v2 instance was started with.
#[derive(Debug, Default)]
pub struct HasuraV2 {
    /// `HASURA_GRAPHQL_JWT_SECRET`: one JSON object.
    pub jwt_secret: Option<String>,
    /// `HASURA_GRAPHQL_JWT_SECRETS`: a JSON list of them.
    pub jwt_secrets: Option<String>,
    pub unauthorized_role: Option<String>,
    pub auth_hook: Option<String>,
    /// `GET` (Hasura's default) or `POST`.
    pub auth_hook_mode: Option<String>,
}

/// The keys Hasura's `JWTConfig` reads.
const KEYS: [&str; 11] = [
    "type",
    "key",
    "jwk_url",
    "claims_namespace",
    "claims_namespace_path",
    "claims_format",
    "claims_map",
    "audience",
    "issuer",
    "allowed_skew",
    "header",
];

/// Claims `claims_namespace_path` cannot see: Hasura evaluates it over
/// the unregistered claims only.
const REGISTERED: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

const DEFAULT_NAMESPACE: &str = "https://hasura.io/jwt/claims";

pub fn hasura_v2(input: &HasuraV2) -> Result<Imported, Unusable> {
    let mut f = Findings::default();
    let mut modes = Vec::new();
    let secrets: Vec<(String, Value)> = match (&input.jwt_secrets, &input.jwt_secret) {
        (Some(list), other) => {
            if other.is_some() {
                f.differ("HASURA_GRAPHQL_JWT_SECRET is ignored beside HASURA_GRAPHQL_JWT_SECRETS, as Hasura ignores it");
            }
            match serde_json::from_str::<Value>(list) {
                Ok(Value::Array(items)) if !items.is_empty() => items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("--jwt-secrets[{i}]"), v))
                    .collect(),
                Ok(_) => {
                    f.unusable(
                        "--jwt-secrets: expected a non-empty JSON list of JWT secret objects",
                    );
                    Vec::new()
                }
                Err(e) => {
                    f.unusable(format!("--jwt-secrets: not JSON: {e}"));
                    Vec::new()
                }
            }
        }
        (None, Some(one)) => match serde_json::from_str::<Value>(one) {
            Ok(v) => vec![("--jwt-secret".to_owned(), v)],
            Err(e) => {
                f.unusable(format!("--jwt-secret: not JSON: {e}"));
                Vec::new()
            }
        },
        (None, None) => Vec::new(),
    };
    let jwt = input.jwt_secret.is_some() || input.jwt_secrets.is_some();
    if jwt && input.auth_hook.is_some() {
        f.unusable("Hasura refuses a JWT secret and an auth hook together: import one of them");
    }
    if input.unauthorized_role.is_some() && input.auth_hook.is_some() {
        f.unusable("Hasura refuses HASURA_GRAPHQL_UNAUTHORIZED_ROLE with an auth hook (the hook answers for anonymous requests)");
    }
    if input.auth_hook_mode.is_some() && input.auth_hook.is_none() {
        f.unusable("--auth-hook-mode needs --auth-hook");
    }
    if !jwt && input.auth_hook.is_none() {
        f.unusable("nothing to import: give --jwt-secret, --jwt-secrets or --auth-hook");
    }
    let many = secrets.len() > 1;
    for (i, (at, secret)) in secrets.iter().enumerate() {
        let id = if many {
            format!("hasura-jwt-{i}")
        } else {
            "hasura-jwt".to_owned()
        };
        if let Some(mode) = jwt_mode(&mut f, at, &id, secret) {
            modes.push(mode);
        }
    }
    if many {
        f.differ("several JWT secrets: Hasura picks one per token by its location and its (unverified) `iss`, and refuses a token two secrets could take; authgate tries the jwt modes in order, and the first that verifies the token wins");
    }
    if jwt {
        role_header_difference(&mut f, "400 (access-denied)");
        f.differ("a refused token: Hasura answers 400 (invalid-jwt), authgate 401 `invalid_token` with `WWW-Authenticate`");
        f.differ("a session variable that is not a string in the token (`\"x-hasura-user-id\": 42`): Hasura refuses the token; authgate passes the value on as text");
        let authorization = |s: &Value| {
            s.get("header")
                .and_then(|h| h.get("type"))
                .and_then(Value::as_str)
                .is_none_or(|t| t.eq_ignore_ascii_case("authorization"))
        };
        if secrets.iter().any(|(_, s)| authorization(s)) {
            f.differ("the Authorization header: Hasura answers 400 to anything but exactly `Bearer <token>`; authgate also takes `bearer` in any case, and treats another scheme (`Basic ...`) as no token (the unauthorized role, or 401)");
        }
    }
    if let Some(role) = &input.unauthorized_role {
        if role.trim().is_empty() {
            f.unusable("--unauthorized-role: must not be empty");
        }
        f.differ("the unauthorized role: Hasura also takes the client's `x-hasura-*` headers as session variables; authgate never trusts client session headers (they are removed before the upstream)");
        modes.push(map([
            ("id", "hasura-unauthorized".into()),
            ("mode", "noAuth".into()),
            (
                "sessionVariables",
                map([("x-hasura-role", literal(role.as_str().into()))]),
            ),
        ]));
    }
    if let Some(url) = &input.auth_hook {
        let method = match input.auth_hook_mode.as_deref() {
            None | Some("GET") => "GET",
            Some("POST") => "POST",
            Some(other) => {
                f.unusable(format!(
                    "--auth-hook-mode: `{other}`; Hasura expects GET or POST (upper case)"
                ));
                "GET"
            }
        };
        f.differ("the auth hook's other 4xx answers: Hasura answers 500, authgate 401 `webhook_denied` (only 401 is a refusal in Hasura)");
        f.differ("the auth hook's answer: Hasura takes only string values; authgate takes any JSON value");
        if method == "GET" {
            f.differ("GET hook: authgate does not forward the hop-by-hop headers Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade and Proxy-Authorization to the hook; Hasura does");
        }
        f.differ("`Cache-Control`/`Expires` in the hook's answer: Hasura OSS reads them only for websocket expiry; the import leaves authgate's `cache` off (turn it on to reuse answers as Hasura Cloud does)");
        if method == "POST" {
            f.differ("POST hook: the body's `request` is the GraphQL request only where the proxy passes the body to authgate (Hasura's `/auth/hasura` endpoint, Envoy's `with_request_body`); otherwise it is null. HASURA_GRAPHQL_AUTH_HOOK_SEND_REQUEST_BODY has no counterpart");
        }
        modes.push(map([
            ("id", "hasura-auth-hook".into()),
            ("mode", "webhook".into()),
            ("url", literal(url.as_str().into())),
            ("method", method.into()),
        ]));
    }
    admin_secret_difference(&mut f);
    finish(modes, f)
}

/// One JWT secret as a jwt mode.
fn jwt_mode(f: &mut Findings, at: &str, id: &str, secret: &Value) -> Option<Y> {
    let Value::Object(s) = secret else {
        f.unusable(format!("{at}: expected a JSON object"));
        return None;
    };
    for k in s.keys().filter(|k| !KEYS.contains(&k.as_str())) {
        f.differ(format!(
            "{at}: `{k}` is no key Hasura reads (it ignores it, so does the import)"
        ));
    }
    let str_of = |f: &mut Findings, key: &str| match s.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(v)) => Some(v.clone()),
        Some(_) => {
            f.unusable(format!("{at}.{key}: expected a string"));
            None
        }
    };
    let key = match (str_of(f, "key"), str_of(f, "jwk_url")) {
        (Some(_), Some(_)) => {
            f.unusable(format!(
                "{at}: `key` and `jwk_url` both set (Hasura refuses it)"
            ));
            return None;
        }
        (None, None) => {
            f.unusable(format!(
                "{at}: neither `key` nor `jwk_url` (Hasura refuses it)"
            ));
            return None;
        }
        (None, Some(url)) => map([("jwkFromUrl", literal(url.into()))]),
        (Some(k), None) => {
            let alg = match str_of(f, "type").as_deref() {
                Some(a @ ("HS256" | "HS384" | "HS512")) => {
                    let min = a[2..].parse::<usize>().unwrap_or(256) / 8;
                    if k.len() < min {
                        f.unusable(format!(
                            "{at}.key: Hasura refuses an {a} secret shorter than {min} bytes"
                        ));
                        return None;
                    }
                    a.to_owned()
                }
                Some(a @ ("RS256" | "RS384" | "RS512" | "ES256" | "ES384")) => a.to_owned(),
                Some("Ed25519") => {
                    f.differ(format!("{at}.type: Ed25519 is written `EdDSA` in authgate"));
                    "EdDSA".to_owned()
                }
                Some("ES512") => {
                    f.differ(format!("{at}: ES512 is not supported by authgate (its JWT library has no P-521); this secret is not imported, and its tokens are refused"));
                    return None;
                }
                Some(other) => {
                    f.unusable(format!("{at}.type: `{other}` is not a type Hasura accepts"));
                    return None;
                }
                None => {
                    f.unusable(format!("{at}: `type` is required with `key`"));
                    return None;
                }
            };
            map([("algorithm", alg.into()), ("key", literal(k.into()))])
        }
    };
    let location = match s.get("header") {
        None | Some(Value::Null) => Y::Null,
        Some(Value::Object(h)) => {
            let kind = h.get("type").and_then(Value::as_str).unwrap_or("");
            let name = h.get("name").and_then(Value::as_str);
            match (kind.to_ascii_lowercase().as_str(), name) {
                ("authorization", _) => Y::Null,
                ("cookie", Some(n)) => map([("in", "cookie".into()), ("name", n.into())]),
                ("customheader", Some(n)) => map([
                    ("in", "header".into()),
                    ("name", n.into()),
                    ("scheme", "".into()),
                ]),
                _ => {
                    f.unusable(format!(
                        "{at}.header: expected {{\"type\": \"Authorization\"}}, {{\"type\": \"Cookie\", \"name\": ...}} or {{\"type\": \"CustomHeader\", \"name\": ...}}"
                    ));
                    return None;
                }
            }
        }
        Some(_) => {
            f.unusable(format!("{at}.header: expected an object"));
            return None;
        }
    };
    let audience = match s.get("audience") {
        None | Some(Value::Null) => Y::Null,
        Some(Value::String(a)) => Y::Sequence(vec![a.as_str().into()]),
        Some(Value::Array(list)) if list.is_empty() => {
            empty_audience(f, &format!("{at}.audience"));
            return None;
        }
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            yaml(&Value::Array(list.clone()))
        }
        Some(_) => {
            f.unusable(format!(
                "{at}.audience: expected a string or a list of strings"
            ));
            return None;
        }
    };
    if !audience.is_null() {
        f.differ(format!(
            "{at}: a token without `aud` passes Hasura's audience check; authgate refuses it"
        ));
    }
    let issuer = str_of(f, "issuer");
    if issuer.is_some() {
        f.differ(format!(
            "{at}: a token without `iss` passes Hasura's issuer check; authgate refuses it"
        ));
    }
    let skew = match s.get("allowed_skew") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => match n.as_f64() {
            // Rounded up: the window never shrinks.
            Some(x) if x.is_finite() => x.abs().ceil().min(u32::MAX as f64) as u64,
            _ => 0,
        },
        Some(_) => {
            f.unusable(format!("{at}.allowed_skew: expected a number of seconds"));
            return None;
        }
    };
    let claims = claims_config(f, at, s)?;
    Some(map([
        ("id", id.into()),
        ("mode", "jwt".into()),
        ("tokenLocation", location),
        ("key", key),
        ("audience", audience),
        ("issuer", issuer.map(Y::String).unwrap_or(Y::Null)),
        // Hasura's defaults: no leeway, `exp` optional.
        ("allowedSkew", skew.into()),
        ("requireExp", false.into()),
        ("claimsConfig", claims),
    ]))
}

fn claims_config(f: &mut Findings, at: &str, s: &Map<String, Value>) -> Option<Y> {
    let namespace = s.get("claims_namespace").filter(|v| !v.is_null());
    let namespace_path = s.get("claims_namespace_path").filter(|v| !v.is_null());
    if namespace.is_some() && namespace_path.is_some() {
        f.unusable(format!(
            "{at}: `claims_namespace` and `claims_namespace_path` both set (Hasura refuses it)"
        ));
        return None;
    }
    if let Some(cm) = s.get("claims_map").filter(|v| !v.is_null()) {
        let Value::Object(cm) = cm else {
            f.unusable(format!("{at}.claims_map: expected an object"));
            return None;
        };
        // Hasura looks the two up by their exact (lower-case) names.
        for required in ["x-hasura-allowed-roles", "x-hasura-default-role"] {
            if !cm.contains_key(required) {
                f.unusable(format!("{at}.claims_map: `{required}` is required (Hasura refuses the secret without it)"));
                return None;
            }
        }
        let mut locations = serde_yaml_ng::Mapping::new();
        for (name, v) in cm {
            let name = name.to_ascii_lowercase();
            let entry = match v {
                Value::Object(o) => {
                    let Some(Value::String(p)) = o.get("path") else {
                        f.unusable(format!("{at}.claims_map.{name}: expected `path` (a JSONPath) or a literal value"));
                        return None;
                    };
                    let path = match hasura_json_path(p) {
                        Ok(steps) => jmespath(&steps),
                        Err(e) => {
                            f.unusable(format!("{at}.claims_map.{name}: {e}"));
                            return None;
                        }
                    };
                    match o.get("default") {
                        Some(d) if !d.is_null() => {
                            map([("path", path.into()), ("default", literal(yaml(d)))])
                        }
                        _ => {
                            if !name.eq_ignore_ascii_case("x-hasura-allowed-roles")
                                && !name.eq_ignore_ascii_case("x-hasura-default-role")
                            {
                                f.differ(format!("{at}.claims_map.{name}: where the path finds nothing, Hasura refuses the token; authgate leaves the variable out"));
                            }
                            map([("path", path.into())])
                        }
                    }
                }
                Value::String(_) => map([("default", literal(yaml(v)))]),
                Value::Array(_) if name == "x-hasura-allowed-roles" => {
                    map([("default", literal(yaml(v)))])
                }
                _ => {
                    f.unusable(format!("{at}.claims_map.{name}: a literal must be a string (a list of roles for x-hasura-allowed-roles), as Hasura requires"));
                    return None;
                }
            };
            locations.insert(Y::String(name), entry);
        }
        return Some(map([("locations", Y::Mapping(locations))]));
    }
    let location = match (namespace, namespace_path) {
        (Some(_), Some(_)) => return None,
        (None, Some(Value::String(p))) => match hasura_json_path(p) {
            Ok(steps) => {
                if let Some(Step::Key(first)) = steps.first()
                    && REGISTERED.contains(&first.as_str())
                {
                    f.differ(format!("{at}.claims_namespace_path: Hasura looks only among the unregistered claims, so `{first}` finds nothing there; authgate finds it"));
                }
                jmespath(&steps)
            }
            Err(e) => {
                f.unusable(format!("{at}.claims_namespace_path: {e}"));
                return None;
            }
        },
        (Some(Value::String(ns)), None) => {
            if REGISTERED.contains(&ns.as_str()) {
                f.differ(format!("{at}.claims_namespace: Hasura looks only among the unregistered claims, so `{ns}` finds nothing there; authgate finds it"));
            }
            jmespath(&[Step::Key(ns.clone())])
        }
        (None, None) => jmespath(&[Step::Key(DEFAULT_NAMESPACE.into())]),
        _ => {
            f.unusable(format!("{at}: the claims namespace must be a string"));
            return None;
        }
    };
    let format = match s.get("claims_format").and_then(Value::as_str) {
        None | Some("json") => "Json",
        Some("stringified_json") => "StringifiedJson",
        Some(other) => {
            f.unusable(format!(
                "{at}.claims_format: `{other}`; Hasura expects json or stringified_json"
            ));
            return None;
        }
    };
    // Hasura's role is the requested one or the default, never a claim.
    let (role, none) = without_role_claim();
    let mut locations = serde_yaml_ng::Mapping::new();
    locations.insert(role, none);
    Some(map([
        (
            "namespace",
            map([
                ("location", location.into()),
                ("claimsFormat", format.into()),
            ]),
        ),
        ("locations", Y::Mapping(locations)),
    ]))
}
