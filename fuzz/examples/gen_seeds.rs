//! Writes the seed corpora under `fuzz/corpus/<target>/seed-*` and the
//! WebAuthn fixture key `fuzz/fixtures/webauthn-key.json`.
//!
//!     cd fuzz && cargo run --example gen_seeds
//!
//! Tokens are signed with the test fixture keys (`tests/fixtures`), the
//! CheckRequests are real prost encodings, and the WebAuthn credentials come
//! from a software authenticator answering authgate's relying party over the
//! fixed challenge the `webauthn` target uses. Re-running rewrites the seeds
//! (signatures over ECDSA and the authenticator's fresh key differ each time).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use authgate::elevation::GrantKeys;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderMap, HeaderValue, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message;
use serde_json::{Value, json};
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::Url;

#[path = "../fuzz_targets/common/mod.rs"]
mod common;

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Out {
    root: PathBuf,
    count: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, bytes: impl AsRef<[u8]>) {
        let dir = self.root.join("corpus").join(target);
        fs::create_dir_all(&dir).expect("corpus dir");
        fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
        self.count += 1;
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, key).expect("sign")
}

fn check_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    raw: &[(&str, &[u8])],
    source: Option<&str>,
    context: &[(&str, &str)],
) -> Vec<u8> {
    let http = HttpRequest {
        method: method.into(),
        path: path.into(),
        host: "api.example.com".into(),
        scheme: "https".into(),
        protocol: "HTTP/1.1".into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([(":authority".to_string(), "api.example.com".to_string())])
            .collect(),
        header_map: (!raw.is_empty()).then(|| HeaderMap {
            headers: raw
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.to_string(),
                    value: String::new(),
                    raw_value: v.to_vec(),
                })
                .collect(),
        }),
        ..Default::default()
    };
    let check = CheckRequest {
        attributes: Some(AttributeContext {
            source: source.map(|ip| Peer {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: ip.into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            context_extensions: context
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }),
    };
    check.encode_to_vec()
}

fn main() {
    let mut out = Out {
        root: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        count: 0,
    };
    let hmac = EncodingKey::from_secret(common::HMAC_SECRET.as_bytes());
    let rsa = EncodingKey::from_rsa_pem(fixture("rsa.key").as_bytes()).expect("rsa.key");
    let ec = EncodingKey::from_ec_pem(fixture("ec256.key").as_bytes()).expect("ec256.key");
    let ed = EncodingKey::from_ed_pem(fixture("ed25519.key").as_bytes()).expect("ed25519.key");

    // --- jwt -----------------------------------------------------------
    let user_claims = json!({
        "sub": "user-1",
        "iss": common::ISSUER,
        "aud": [common::AUDIENCE],
        "iat": common::NOW - 60,
        "nbf": common::NOW - 60,
        "exp": common::SEED_EXP,
        "https://hasura.io/jwt/claims": {
            "x-hasura-allowed-roles": ["user", "editor"],
            "x-hasura-default-role": "user",
            "x-hasura-org-id": "7",
        },
    });
    let hs = sign(Algorithm::HS256, None, &user_claims, &hmac);
    out.put("jwt", "hs256", &hs);
    out.put(
        "jwt",
        "hs256-kid",
        sign(Algorithm::HS256, Some("k1"), &user_claims, &hmac),
    );
    out.put(
        "jwt",
        "rs256",
        sign(Algorithm::RS256, Some("rsa"), &user_claims, &rsa),
    );
    out.put(
        "jwt",
        "ps256",
        sign(Algorithm::PS256, None, &user_claims, &rsa),
    );
    out.put(
        "jwt",
        "hs384",
        sign(Algorithm::HS384, None, &user_claims, &hmac),
    );
    out.put(
        "jwt",
        "hs512",
        sign(Algorithm::HS512, None, &user_claims, &hmac),
    );
    out.put(
        "jwt",
        "rs512",
        sign(Algorithm::RS512, None, &user_claims, &rsa),
    );
    out.put(
        "jwt",
        "ps384",
        sign(Algorithm::PS384, None, &user_claims, &rsa),
    );
    out.put(
        "jwt",
        "es256",
        sign(Algorithm::ES256, None, &user_claims, &ec),
    );
    out.put(
        "jwt",
        "eddsa",
        sign(Algorithm::EdDSA, None, &user_claims, &ed),
    );
    out.put(
        "jwt",
        "hs256-expired-float",
        sign(
            Algorithm::HS256,
            None,
            &json!({"sub": "u", "exp": 1_600_000_000.5, "aud": "fuzz-aud", "iat": 1.0e3}),
            &hmac,
        ),
    );
    let none = |alg: &str| {
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string()),
            URL_SAFE_NO_PAD.encode(user_claims.to_string()),
        )
    };
    out.put("jwt", "alg-none", none("none"));
    out.put("jwt", "alg-none-sig", none("nOnE") + "c2ln");
    let forged_header = URL_SAFE_NO_PAD.encode(
        json!({"alg": "HS256", "kid": "../../etc/passwd", "jku": "https://evil.example/jwks", "crit": ["x"]})
            .to_string(),
    );
    out.put("jwt", "hostile-header", format!("{forged_header}.e30.c2ln"));

    // --- jwks ----------------------------------------------------------
    let jwk = |key: &EncodingKey, alg: Algorithm, kid: &str| {
        let mut j = Jwk::from_encoding_key(key, alg).expect("jwk");
        j.common.key_id = Some(kid.to_owned());
        j
    };
    let set = JwkSet {
        keys: vec![
            jwk(&rsa, Algorithm::RS256, "rsa"),
            jwk(&ec, Algorithm::ES256, "ec"),
            jwk(&ed, Algorithm::EdDSA, "ed"),
        ],
    };
    out.put(
        "jwks",
        "three-keys.json",
        serde_json::to_vec_pretty(&set).expect("jwks"),
    );
    let grants =
        GrantKeys::from_pem(Algorithm::ES256, common::EC256_PRIVATE_PEM).expect("grant key");
    out.put("jwks", "grant-keys.json", grants.jwks().to_string());
    let mut mixed = serde_json::to_value(&set).expect("jwks");
    if let Some(keys) = mixed["keys"].as_array_mut() {
        keys.push(json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "kid": "oct"}));
        keys.push(json!({"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}));
        keys.push(json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}));
    }
    out.put("jwks", "mixed.json", mixed.to_string());
    out.put(
        "jwks",
        "single-jwk.json",
        serde_json::to_vec(&set.keys[0]).expect("jwk"),
    );
    out.put("jwks", "rsa-spki.pem", common::RSA_PUBLIC_PEM);
    out.put("jwks", "rsa-cert.pem", fixture("rsa.crt"));

    // --- credential ----------------------------------------------------
    out.put(
        "credential",
        "bearer",
        format!("h authorization bearer\n/v1/graphql\nAuthorization: Bearer {hs}\nX-API-Key: k\n"),
    );
    out.put(
        "credential",
        "cookies",
        "c session\n/check/app?x=1\ncookie: a=1; token=\"abc\"; session=s1\ncookie: X-Elevation-Token=g\n",
    );
    out.put(
        "credential",
        "query",
        "q access_token\n/check?access_token=t%2Bk&token=Bearer%20x&token=\nx-original-uri: /api?access_token=a&access_token=b\n",
    );
    out.put(
        "credential",
        "forwarded",
        "h x-token Token\n/check\nx-forwarded-uri: /x?token=Bearer+q\nx-forwarded-method: PUT\nX-Token: token   v\n",
    );

    // --- route ---------------------------------------------------------
    out.put(
        "route",
        "reserved",
        "/v1/account%3AchangePassword?x=1\n/users/@me/\nX-HTTP-Method-Override: DELETE\n",
    );
    out.put(
        "route",
        "dots",
        "/v1/x/%252e%252e/user;a=b//password/\n/v1/user/\nx-method-override: PUT, DELETE\n",
    );
    out.put("route", "ambiguous", "/v1/%C0%AF%00\\\\a\n/\n");

    // --- config --------------------------------------------------------
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for name in ["quickstart", "elevation"] {
        let text = fs::read_to_string(examples.join(name).join("auth.yaml")).expect("example");
        out.put("config", &format!("{name}.yaml"), text);
    }
    // The configs the targets load must load.
    for text in [common::check_config(), common::webauthn_config()] {
        if let Err(e) = authgate::config::parse(&text, &|_: &str| None) {
            panic!("a fuzz config does not load: {e}");
        }
    }
    out.put("config", "check.yaml", common::check_config());
    out.put("config", "webauthn.yaml", common::webauthn_config());
    out.put("config", "webhook.yaml", WEBHOOK_CONFIG);
    out.put("config", "jwks-url.json", JWKS_CONFIG);

    // --- claims --------------------------------------------------------
    out.put(
        "claims",
        "hasura",
        serde_json::to_vec_pretty(&user_claims).expect("json"),
    );
    out.put(
        "claims",
        "stringified",
        json!({
            "sub": 42,
            "hasura": "{\"x-hasura-allowed-roles\":[\"a\",\"b c\"],\"x-hasura-default-role\":\"a\"}",
            "roles": ["admin", "user"],
            "teams": [{"id": 1}, {"id": "two"}, {"id": null}],
            "groups": ["g1", "g2"],
            "user": {"name": "n", "domain": "example.com"},
            "org": {"id": {"nested": [1, 2.5, true, null]}},
        })
        .to_string(),
    );
    out.put(
        "claims",
        "expression",
        format!(
            "#sort_by(teams, &to_string(id))[*].id | join(',', map(&to_string(@), @))\n{}",
            json!({"teams": [{"id": 3}, {"id": 1}], "role": "r\r\nx"})
        ),
    );

    // --- check_request -------------------------------------------------
    let rs_claims = json!({
        "sub": "partner-1",
        "exp": common::SEED_EXP,
        "hasura": "{\"x-hasura-role\":\"partner\",\"x-hasura-user-id\":\"partner-1\"}",
    });
    let rs = sign(Algorithm::RS256, None, &rs_claims, &rsa);
    let link = sign(
        Algorithm::HS256,
        None,
        &json!({"sub": "link", "x-hasura-role": "x"}),
        &hmac,
    );
    let grant = grants
        .mint(
            "user-1",
            &hs,
            Some(common::SEED_EXP),
            Duration::from_secs(200 * 365 * 86_400),
            authgate::clock::unix_now(),
        )
        .expect("grant")
        .0;
    let bearer = format!("Bearer {hs}");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "bearer",
            check_request(
                "GET",
                "/v1/graphql",
                &[("authorization", &bearer)],
                &[],
                Some("10.0.0.1"),
                &[],
            ),
        ),
        (
            "bearer-role-request",
            check_request(
                "POST",
                "/v1/graphql?x=1",
                &[
                    ("authorization", &bearer),
                    ("x-hasura-role", "editor"),
                    ("x_hasura_user_id", "evil"),
                ],
                &[],
                None,
                &[],
            ),
        ),
        (
            "elevated-with-grant",
            check_request(
                "POST",
                "/v1/user/password",
                &[
                    ("authorization", &bearer),
                    ("x-elevation-token", &grant),
                    ("x-hasura-auth-elevated", "user-1"),
                ],
                &[],
                Some("2001:db8::1"),
                &[],
            ),
        ),
        (
            "elevation-required-no-grant",
            check_request(
                "GET",
                "/v1/admin/users",
                &[("authorization", &bearer)],
                &[],
                None,
                &[("elevation", "required")],
            ),
        ),
        (
            "cookie-rs256",
            check_request(
                "GET",
                "/",
                &[("cookie", &format!("a=b; token={rs}"))],
                &[],
                None,
                &[],
            ),
        ),
        (
            "query",
            check_request(
                "GET",
                &format!("/files?access_token={link}"),
                &[],
                &[],
                None,
                &[],
            ),
        ),
        (
            "api-key-raw-headers",
            check_request(
                "GET",
                "/internal",
                &[],
                &[
                    ("x-api-key", common::API_KEY.as_bytes()),
                    ("x-forwarded-for", b"192.0.2.1, 10.9.8.7"),
                    ("origin", b"https://app.example.com"),
                    (":path", b"/internal"),
                    ("x-rely-auth-id", b"service"),
                ],
                Some("192.0.2.1"),
                &[],
            ),
        ),
        (
            "mode-selection",
            check_request(
                "GET",
                "/",
                &[("x-rely-auth-mode", "noAuth"), ("x-hasura-role", "admin")],
                &[],
                None,
                &[],
            ),
        ),
        (
            "two-credentials",
            check_request(
                "GET",
                "/",
                &[("authorization", &bearer)],
                &[
                    ("authorization", b"Bearer other"),
                    ("cookie", format!("token={rs}").as_bytes()),
                ],
                None,
                &[],
            ),
        ),
        (
            "duplicate-authorization",
            check_request(
                "GET",
                "/",
                &[("authorization", &bearer)],
                &[("authorization", bearer.as_bytes())],
                None,
                &[],
            ),
        ),
        ("empty", CheckRequest::default().encode_to_vec()),
    ];
    // Each seed decides as intended on the target's engine, so the fuzzer
    // starts from allowed, elevated and denied requests alike.
    let rt = common::current_thread_runtime();
    let engine = {
        let cfg = authgate::config::parse(&common::check_config(), &|_: &str| None)
            .expect("check config");
        let metrics = std::sync::Arc::new(authgate::metrics::Metrics::new());
        let elevation = rt
            .block_on(authgate::server::open_elevation(&cfg, None, &metrics))
            .expect("elevation opens");
        let registry = authgate::jwks::JwksRegistry::new().expect("JWKS registry");
        authgate::pipeline::Engine::build(
            cfg.settings,
            cfg.modes,
            authgate::pipeline::Parts {
                registry: &registry,
                metrics,
                fetch: authgate::pipeline::KeyFetch::OnDemand,
                elevation,
            },
        )
        .with_policies(cfg.policies)
    };
    let expected: HashMap<&str, &str> = [
        ("bearer", "allow user"),
        ("bearer-role-request", "allow editor"),
        ("elevated-with-grant", "allow user elevated"),
        ("elevation-required-no-grant", "deny elevation_required"),
        ("cookie-rs256", "allow partner"),
        ("query", "allow x"),
        ("api-key-raw-headers", "allow service"),
        ("mode-selection", "allow anonymous"),
        ("two-credentials", "allow partner"),
        ("duplicate-authorization", "deny invalid_token"),
        ("empty", "allow anonymous"),
    ]
    .into_iter()
    .collect();
    for (name, bytes) in cases {
        let check = CheckRequest::decode(bytes.as_slice()).expect("decodes");
        let req = authgate::grpc::to_request(check, None);
        let got = match rt.block_on(engine.decide(&req)) {
            authgate::decision::Decision::Allow(a) => format!(
                "allow {}{}",
                a.session.get_str("x-hasura-role").unwrap_or("?"),
                if a.elevated { " elevated" } else { "" }
            ),
            authgate::decision::Decision::Deny(d) => format!("deny {}", d.reason.as_str()),
        };
        assert_eq!(
            Some(&got.as_str()),
            expected.get(name),
            "check_request seed {name}"
        );
        out.put("check_request", name, bytes);
    }

    // --- webauthn ------------------------------------------------------
    let rt = common::current_thread_runtime();
    let elevation = common::open_elevation(&rt, &common::webauthn_config());
    let webauthn = elevation.webauthn.clone().expect("webauthn configured");
    let origin = Url::parse(common::WEBAUTHN_ORIGIN).expect("origin");
    let user = authgate::http::webauthn::user_handle(common::WEBAUTHN_USER);
    let (mut ccr, reg_state) = webauthn
        .start_securitykey_registration(
            user,
            common::WEBAUTHN_USER,
            common::WEBAUTHN_USER,
            None,
            None,
            None,
        )
        .expect("registration starts");
    ccr.public_key.challenge = common::WEBAUTHN_CHALLENGE.to_vec();
    let reg_state = common::with_fixed_challenge(&reg_state);
    let mut authenticator = SoftPasskey::new(true);
    let registration = authenticator
        .do_registration(origin.clone(), ccr)
        .expect("the soft authenticator registers");
    let key = webauthn
        .finish_securitykey_registration(&registration, &reg_state)
        .expect("the fixed-challenge registration verifies");
    fs::create_dir_all(out.root.join("fixtures")).expect("fixtures dir");
    fs::write(
        out.root.join("fixtures/webauthn-key.json"),
        serde_json::to_string_pretty(&key).expect("key json") + "\n",
    )
    .expect("write key");
    let (mut rcr, auth_state) = webauthn
        .start_securitykey_authentication(std::slice::from_ref(&key))
        .expect("authentication starts");
    rcr.public_key.challenge = common::WEBAUTHN_CHALLENGE.to_vec();
    let auth_state = common::with_fixed_challenge(&auth_state);
    let assertion = authenticator
        .do_authentication(origin, rcr)
        .expect("the soft authenticator signs");
    webauthn
        .finish_securitykey_authentication(&assertion, &auth_state)
        .expect("the fixed-challenge assertion verifies");
    out.put("webauthn", "empty", "");
    out.put(
        "webauthn",
        "nickname.json",
        json!({"nickname": "yubi"}).to_string(),
    );
    out.put(
        "webauthn",
        "registration.json",
        json!({"credential": registration, "nickname": "k1"}).to_string(),
    );
    out.put(
        "webauthn",
        "assertion.json",
        json!({"credential": assertion}).to_string(),
    );

    // --- gotmpl --------------------------------------------------------
    for (name, t) in [
        (
            "role",
            "{\n  \"x-hasura-role\": \"{{ index .body \"x-hasura-role\" }}\",\n  \"x-content-type\": \"{{ index .headers \"content-type\" }}\"\n}\n",
        ),
        (
            "request",
            "{\"url\": {{ printf \"%q\" .url }}, \"n\": {{ len .headers }}, \"auth\": \"{{ index .headers \"authorization\" }}\"}",
        ),
        (
            "control",
            "{{ if .body }}{{ range $k, $v := .body }}{{ $k }}={{ $v }};{{ end }}{{ else }}none{{ end }}",
        ),
        (
            "pipeline",
            "{{ with .body.user }}{{ .id | printf \"%d\" }} {{ len .roles }} {{ index .roles 1 }}{{ end }} {{ and .body.user.active (eq .body.ratio 0.5) }}",
        ),
        (
            "define",
            "{{ define \"t\" }}[{{ . }}]{{ end }}{{/* c */}}{{- \"x\" -}}",
        ),
        (
            "escapes",
            "{{ printf \"%s\\t%q\\n\" .url \"a\\\"b\" }}{{ `raw\\\\` }}{{ 'c' }}{{ \"\\\\\" }}",
        ),
        (
            "refused-call",
            "{{ define \"t\" }}[{{ . }}]{{ end }}{{ template \"t\" .url }}",
        ),
    ] {
        out.put("gotmpl", name, t);
    }

    eprintln!(
        "wrote {} seeds under {}",
        out.count,
        out.root.join("corpus").display()
    );
}

const WEBHOOK_CONFIG: &str = r#"version: v1
kind: AuthConfig
definition:
  modes:
    - mode: webhook
      url: {value: "http://127.0.0.1:9/validate"}
      method: POST
      customRequest:
        headers:
          forward: [Authorization]
          additional:
            X-Request-Path: {path: url, default: {value: "/"}}
        body:
          type: gotmpl
          contentType: application/json
          template: |
            {"x-hasura-role": "user", "auth": "{{ index .headers "authorization" }}"}
      customResponse:
        response:
          type: jmespath
          template:
            type: object
            properties:
              x-hasura-role: {type: field, path: body."x-hasura-role"}
      httpClient:
        timeout: 1m30s
        retry: {maxAttempts: 2, delay: 100ms, multiplier: 2}
    - mode: webhook
      url: {value: "https://hook.example.com/get"}
      method: GET
      customResponse:
        response:
          type: gotmpl
          template: '{"x-hasura-role": "{{ index .body "role" }}"}'
"#;

const JWKS_CONFIG: &str = r#"{"version": "v1", "kind": "RelyAuth", "definition": {
  "settings": {"reloadInterval": 0, "unknownKidCooldown": 5, "tokenCacheTtl": 60},
  "modes": [
    {"id": "idp", "mode": "jwt",
     "tokenLocation": {"in": "cookie", "name": "session"},
     "key": {"jwkFromUrl": {"value": "https://idp.example.com/.well-known/jwks.json"}, "algorithm": "RS256"},
     "audience": ["a", "b"], "issuer": "https://idp.example.com", "allowedSkew": 0, "requireExp": false,
     "claimsConfig": {"locations": {"x-hasura-role": {"path": "role", "default": {"value": "user"}},
                                    "x-hasura-user-id": {"path": "sub"}}},
     "securityRules": {"allowedIPs": {"exclude": {"value": ["203.0.113.0/24"]}, "location": "remote_addr"}}},
    {"mode": "apiKey", "tokenLocation": {"in": "query", "name": "key"}, "value": {"env": "MISSING", "value": "k"},
     "sessionVariables": {"x-hasura-role": {"value": "svc"}, "x-hasura-ids": {"value": [1, "a b", null]}}}
  ]}}
"#;
