//! Fixed inputs shared by the fuzz targets and by `examples/gen_seeds.rs`
//! (which signs the seed tokens with the matching private keys).
#![allow(dead_code)]

/// The HMAC secret every HS* seed token is signed with.
pub const HMAC_SECRET: &str = "authgate-fuzz-hmac-secret-0123456789abcdef";

/// Public keys from the test fixtures; seeds are signed with the private halves.
pub const RSA_PUBLIC_PEM: &str = include_str!("../../../tests/fixtures/rsa.pub.pem");
pub const EC256_PUBLIC_PEM: &str = include_str!("../../../tests/fixtures/ec256.pub.pem");
pub const ED25519_PUBLIC_PEM: &str = include_str!("../../../tests/fixtures/ed25519.pub.pem");

/// A fixed "now" (2023-11-14) so a run is deterministic; seed tokens use
/// `iat`/`nbf` before it and `exp` after it.
pub const NOW: i64 = 1_700_000_000;

pub const AUDIENCE: &str = "fuzz-aud";
pub const ISSUER: &str = "https://issuer.fuzz.example";

/// Splits `data` as UTF-8 (lossily: front doors turn bad bytes into U+FFFD).
pub fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Far-future `exp` for seed tokens (2100-01-01), so they stay valid for the
/// pipeline, which uses the real clock.
pub const SEED_EXP: i64 = 4_102_444_800;

/// The grant signing key (PKCS#8) of the `check_request` engine, so seeds can
/// carry a valid elevation grant.
pub const EC256_PRIVATE_PEM: &str = include_str!("../../../tests/fixtures/ec256.key");

/// The API key of the `check_request` engine's apiKey mode.
pub const API_KEY: &str = "fuzz-service-key";

/// The config the `check_request` target decides with: JWT modes on a
/// header (HS256), a cookie (RS256) and a query parameter, an apiKey mode
/// with security rules, noAuth, and required elevation on some routes with
/// an in-memory store. The token cache is off so every run verifies.
pub fn check_config() -> String {
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    format!(
        r#"
version: v1
kind: RelyAuth
definition:
  settings:
    tokenCacheMaxEntries: 0
  modes:
    - id: users
      mode: jwt
      tokenLocation: {{in: header, name: Authorization, scheme: bearer}}
      key: {{algorithm: HS256, key: {{value: {hmac}}}}}
      audience: [{aud}]
      issuer: {iss}
      claimsConfig:
        namespace: {{location: '"https://hasura.io/jwt/claims"', claimsFormat: Json}}
        locations:
          x-hasura-user-id: {{path: sub}}
    - id: partners
      mode: jwt
      tokenLocation: {{in: cookie, name: token}}
      key: {{algorithm: RS256, key: {{value: {rsa}}}}}
      claimsConfig:
        namespace: {{location: hasura, claimsFormat: StringifiedJson}}
    - id: links
      mode: jwt
      tokenLocation: {{in: query, name: access_token}}
      key: {{algorithm: HS256, key: {{value: {hmac}}}}}
      requireExp: false
      claimsConfig:
        locations:
          x-hasura-role: {{path: "\"x-hasura-role\"", default: {{value: link}}}}
          x-hasura-user-id: {{path: sub}}
    - id: service
      mode: apiKey
      tokenLocation: {{in: header, name: X-API-Key}}
      value: {{value: {api_key}}}
      sessionVariables: {{x-hasura-role: {{value: service}}}}
      securityRules:
        allowedIPs:
          include: {{value: ["10.0.0.0/8", "2001:db8::/32"]}}
          location: x_forwarded_for
          numTrustedProxies: 1
        headerRules:
          origin:
            include: {{value: ["^https://app\\.example\\.com$"]}}
    - id: anonymous
      mode: noAuth
      sessionVariables: {{x-hasura-role: {{value: anonymous}}}}
  policies:
    admins: {{roles: [admin]}}
    reports: {{scopes: [reports], modes: [users, links]}}
    org: {{claims: {{'"https://hasura.io/jwt/claims"."x-hasura-org-id"': [acme, "1"]}}}}
  policyRoutes:
    - {{host: api.example.com, pathPrefix: /v1/reports/, policy: reports}}
    - {{methods: [DELETE], pathPrefix: /v1/, policy: admins}}
    - {{path: /v1/graphql, methods: [PUT], policy: org}}
  elevation:
    mode: required
    webauthn: {{rpId: example.com, rpName: Example, origins: ["{origin}"]}}
    routes:
      - {{methods: [POST], path: /v1/user/password}}
      - {{pathPrefix: /v1/admin/}}
    grant:
      ttl: 900
      signingKey: {{algorithm: ES256, key: {{value: {grant}}}}}
    store: {{url: "sqlite::memory:"}}
"#,
        hmac = q(HMAC_SECRET),
        rsa = q(RSA_PUBLIC_PEM),
        grant = q(EC256_PRIVATE_PEM),
        aud = q(AUDIENCE),
        iss = q(ISSUER),
        api_key = q(API_KEY),
        origin = WEBAUTHN_ORIGIN,
    )
}

/// The relying party of the `webauthn` target (as in the elevation tests).
pub const WEBAUTHN_ORIGIN: &str = "https://app.example.com";
pub const WEBAUTHN_USER: &str = "fuzz-user";
/// Every ceremony state of the `webauthn` target carries this challenge, so
/// the seed credentials (signed over it) reach the signature checks.
pub const WEBAUTHN_CHALLENGE: [u8; 32] = [0x42; 32];

pub fn webauthn_config() -> String {
    format!(
        r#"
definition:
  modes:
    - mode: noAuth
      sessionVariables: {{x-hasura-role: {{value: anonymous}}}}
  elevation:
    mode: recommended
    webauthn: {{rpId: example.com, rpName: Example, origins: ["{WEBAUTHN_ORIGIN}"]}}
    store: {{url: "sqlite::memory:"}}
"#
    )
}

/// Loads `config_text` and opens its elevation stage on `rt`.
pub fn open_elevation(
    rt: &tokio::runtime::Runtime,
    config_text: &str,
) -> std::sync::Arc<authgate::elevation::Elevation> {
    let cfg = match authgate::config::parse(config_text, &|_: &str| None) {
        Ok(c) => c,
        Err(e) => panic!("fuzz config does not load: {e}"),
    };
    let metrics = authgate::metrics::Metrics::new();
    match rt.block_on(authgate::server::open_elevation(&cfg, None, &metrics)) {
        Ok(Some(e)) => e,
        Ok(None) => panic!("the fuzz config has no elevation"),
        Err(e) => panic!("elevation does not open: {e}"),
    }
}

pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A ceremony state with its challenge replaced by [`WEBAUTHN_CHALLENGE`]
/// (through its serialised form: webauthn-rs keeps the field private).
pub fn with_fixed_challenge<T>(state: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    fn walk(v: &mut serde_json::Value, replaced: &mut usize) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if k == "challenge" {
                        *v = match v {
                            serde_json::Value::String(_) => {
                                serde_json::Value::String(base64::Engine::encode(
                                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                                    WEBAUTHN_CHALLENGE,
                                ))
                            }
                            _ => serde_json::json!(WEBAUTHN_CHALLENGE),
                        };
                        *replaced += 1;
                    } else {
                        walk(v, replaced);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| walk(v, replaced)),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(state).expect("state serialises");
    let mut replaced = 0;
    walk(&mut v, &mut replaced);
    assert_eq!(replaced, 1, "expected one challenge in the state: {v}");
    serde_json::from_value(v).expect("state deserialises")
}
