use serde_json::{Value, json};

use super::*;
use crate::config;

fn steps(path: &str) -> String {
    jmespath(&hasura_json_path(path).unwrap())
}

#[test]
fn hasura_json_paths_become_jmespath() {
    for (from, to) in [
        ("$", "@"),
        ("$.hasura", "hasura"),
        ("$.hasura.claims", "hasura.claims"),
        ("hasura.claims", "hasura.claims"),
        ("$.hasura['claims.x']", r#"hasura."claims.x""#),
        (
            r#"$["https://hasura.io/jwt/claims"]"#,
            r#""https://hasura.io/jwt/claims""#,
        ),
        ("$.roles[0]", "roles[0]"),
        ("$.roles.[1]", "roles[1]"),
        ("$.x-hasura-foo", r#""x-hasura-foo""#),
        (r"$['it\'s']", r#""it's""#),
        (r#"$["a\"b"]"#, r#""a\"b""#),
        (r"$['a\u002eb']", r#""a.b""#),
        ("$a", "a"),
        ("$.a[0]b", "a[0].b"),
    ] {
        assert_eq!(steps(from), to, "{from}");
    }
    for bad in [
        "", "$.", "$.a[", "$.a['x", "$.a[x]", "$.a[*]", "$..a", "$.a[-1]", r"$['\x']",
    ] {
        assert!(hasura_json_path(bad).is_err(), "{bad}");
    }
}

#[test]
fn json_pointers_become_jmespath() {
    let mut numeric = false;
    let conv = |p: &str, numeric: &mut bool| jmespath(&json_pointer(p, numeric).unwrap());
    assert_eq!(conv("", &mut numeric), "@");
    assert_eq!(
        conv("/https:~1~1hasura.io~1jwt~1claims", &mut numeric),
        r#""https://hasura.io/jwt/claims""#
    );
    assert_eq!(
        conv("/claims.jwt.hasura.io", &mut numeric),
        r#""claims.jwt.hasura.io""#
    );
    assert_eq!(conv("/a~0b/c", &mut numeric), r#""a~b".c"#);
    assert!(!numeric);
    assert_eq!(conv("/roles/0", &mut numeric), "roles[0]");
    assert!(numeric);
    let mut n = false;
    assert_eq!(conv("/roles/01", &mut n), r#"roles."01""#);
    assert!(!n);
    assert!(json_pointer("claims", &mut n).is_err());
}

/// The imported YAML as JSON, checked to load as `serve` loads it.
fn loads(i: &Imported) -> Value {
    let env = |name: &str| {
        Some(match name {
            "JWT_PUBLIC_KEY" => {
                include_str!("../../../../../tests/fixtures/rsa.pub.pem").to_owned()
            }
            "AUTH_HOOK" => "https://hook.example/auth".to_owned(),
            _ => "from-env".to_owned(),
        })
    };
    config::parse(&i.yaml, &env).unwrap_or_else(|e| panic!("{e}\n{}", i.yaml));
    read_document(&i.yaml, false).unwrap()
}

fn has(differences: &[String], want: &str) -> bool {
    differences.iter().any(|d| d.contains(want))
}

const HS: &str = "a-string-secret-at-least-256-bits-long";

fn v2(secret: Value) -> Result<Imported, Unusable> {
    hasura_v2(&HasuraV2 {
        jwt_secret: Some(secret.to_string()),
        ..Default::default()
    })
}

/// Every key of Hasura v2's JWT secret, and what it becomes.
#[test]
fn hasura_v2_field_matrix() {
    // Defaults: the Authorization header, Hasura's namespace, no leeway,
    // `exp` optional.
    let i = v2(json!({"type": "HS256", "key": HS})).unwrap();
    let c = loads(&i);
    let m = &c["definition"]["modes"][0];
    assert_eq!(m["id"], "hasura-jwt");
    assert_eq!(m["mode"], "jwt");
    assert!(m.get("tokenLocation").is_none());
    assert_eq!(
        m["key"],
        json!({"algorithm": "HS256", "key": {"value": HS}})
    );
    assert_eq!(m["allowedSkew"], 0);
    assert_eq!(m["requireExp"], false);
    assert_eq!(
        m["claimsConfig"],
        json!({
            "namespace": {"location": "\"https://hasura.io/jwt/claims\"", "claimsFormat": "Json"},
            "locations": {"x-hasura-role": {"path": "`null`"}},
        })
    );
    assert!(has(&i.differences, "admin secret"));
    assert!(has(&i.differences, "Hasura answers 400 (access-denied)"));

    let cases: Vec<(Value, &str, Value, Option<&str>)> = vec![
        (
            json!({"type": "RS512", "jwk_url": "https://idp.example/jwks"}),
            "key",
            json!({"jwkFromUrl": {"value": "https://idp.example/jwks"}}),
            None,
        ),
        (
            json!({"type": "HS256", "key": HS, "claims_namespace": "hasura"}),
            "claimsConfig",
            json!({"namespace": {"location": "hasura", "claimsFormat": "Json"}, "locations": {"x-hasura-role": {"path": "`null`"}}}),
            None,
        ),
        (
            json!({"type": "HS256", "key": HS, "claims_namespace_path": "$.a['b.c']", "claims_format": "stringified_json"}),
            "claimsConfig",
            json!({"namespace": {"location": "a.\"b.c\"", "claimsFormat": "StringifiedJson"}, "locations": {"x-hasura-role": {"path": "`null`"}}}),
            None,
        ),
        (
            json!({"type": "HS256", "key": HS, "claims_namespace_path": "$.sub"}),
            "claimsConfig",
            json!({"namespace": {"location": "sub", "claimsFormat": "Json"}, "locations": {"x-hasura-role": {"path": "`null`"}}}),
            Some("looks only among the unregistered claims"),
        ),
        (
            json!({"type": "HS256", "key": HS, "claims_map": {
                "x-hasura-allowed-roles": {"path": "$.roles"},
                "x-hasura-default-role": "user",
                "x-hasura-user-id": {"path": "$.sub"},
                "x-hasura-org": {"path": "$.org[0]", "default": "none"},
            }}),
            "claimsConfig",
            json!({"locations": {
                "x-hasura-allowed-roles": {"path": "roles"},
                "x-hasura-default-role": {"default": {"value": "user"}},
                "x-hasura-user-id": {"path": "sub"},
                "x-hasura-org": {"path": "org[0]", "default": {"value": "none"}},
            }}),
            Some("x-hasura-user-id: where the path finds nothing, Hasura refuses the token"),
        ),
        (
            json!({"type": "HS256", "key": HS, "audience": "app"}),
            "audience",
            json!(["app"]),
            Some("a token without `aud` passes"),
        ),
        (
            json!({"type": "HS256", "key": HS, "audience": ["a", "b"]}),
            "audience",
            json!(["a", "b"]),
            None,
        ),
        (
            json!({"type": "HS256", "key": HS, "issuer": "https://idp.example"}),
            "issuer",
            json!("https://idp.example"),
            Some("a token without `iss` passes"),
        ),
        (
            json!({"type": "HS256", "key": HS, "allowed_skew": 2.2}),
            "allowedSkew",
            json!(3),
            None,
        ),
        (
            json!({"type": "HS256", "key": HS, "header": {"type": "Cookie", "name": "jwt"}}),
            "tokenLocation",
            json!({"in": "cookie", "name": "jwt"}),
            None,
        ),
        (
            json!({"type": "HS256", "key": HS, "header": {"type": "CustomHeader", "name": "X-Token"}}),
            "tokenLocation",
            json!({"in": "header", "name": "X-Token", "scheme": ""}),
            None,
        ),
        (
            json!({"type": "HS256", "key": HS, "header": {"type": "authorization"}}),
            "tokenLocation",
            Value::Null,
            None,
        ),
        (
            json!({"type": "HS256", "key": HS, "claims_namespce": "x"}),
            "id",
            json!("hasura-jwt"),
            Some("`claims_namespce` is no key Hasura reads"),
        ),
    ];
    for (secret, key, want, difference) in cases {
        let i = v2(secret.clone()).unwrap_or_else(|e| panic!("{secret}: {e}"));
        let c = loads(&i);
        let got = c["definition"]["modes"][0]
            .get(key)
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(got, want, "{secret}");
        if let Some(d) = difference {
            assert!(has(&i.differences, d), "{secret}: {:?}", i.differences);
        }
    }

    // Ed25519 is EdDSA here; ES512 has no counterpart.
    let ed = v2(json!({"type": "Ed25519", "key": include_str!("../../../../../tests/fixtures/ed25519.pub.pem")}))
        .unwrap();
    assert_eq!(
        loads(&ed)["definition"]["modes"][0]["key"]["algorithm"],
        "EdDSA"
    );
    assert!(has(&ed.differences, "Ed25519 is written `EdDSA`"));
    let es512 = hasura_v2(&HasuraV2 {
        jwt_secrets: Some(
            json!([{"type": "ES512", "key": "x"}, {"type": "HS256", "key": HS}]).to_string(),
        ),
        ..Default::default()
    })
    .unwrap();
    let c = loads(&es512);
    assert_eq!(c["definition"]["modes"].as_array().unwrap().len(), 1);
    assert_eq!(c["definition"]["modes"][0]["id"], "hasura-jwt-1");
    assert!(has(&es512.differences, "ES512 is not supported"));
    assert!(has(&es512.differences, "several JWT secrets"));

    // What Hasura itself refuses is unusable input.
    for (secret, why) in [
        (json!({"type": "HS256"}), "neither `key` nor `jwk_url`"),
        (
            json!({"type": "HS256", "key": HS, "jwk_url": "https://x"}),
            "both set",
        ),
        (json!({"key": HS}), "`type` is required"),
        (
            json!({"type": "HS256", "key": "short"}),
            "shorter than 32 bytes",
        ),
        (
            json!({"type": "PS256", "key": HS}),
            "not a type Hasura accepts",
        ),
        (
            json!({"type": "HS256", "key": HS, "claims_namespace": "a", "claims_namespace_path": "$.b"}),
            "both set",
        ),
        (
            json!({"type": "HS256", "key": HS, "claims_map": {"x-hasura-default-role": "u"}}),
            "`x-hasura-allowed-roles` is required",
        ),
        (
            json!({"type": "HS256", "key": HS, "claims_format": "yaml"}),
            "json or stringified_json",
        ),
        (
            json!({"type": "HS256", "key": HS, "header": {"type": "Query"}}),
            "expected {\"type\": \"Authorization\"}",
        ),
        (
            json!({"type": "HS256", "key": HS, "claims_namespace_path": "$[*]"}),
            "JSONPath",
        ),
        (
            json!({"type": "HS256", "key": HS, "audience": []}),
            "an empty audience list",
        ),
        (
            json!({"type": "HS256", "key": HS, "claims_map": {"x-hasura-allowed-roles": ["u"], "x-hasura-default-role": "u", "x-hasura-n": 1}}),
            "a literal must be a string",
        ),
        (
            json!({"type": "HS256", "key": HS, "claims_map": {"X-Hasura-Allowed-Roles": ["u"], "x-hasura-default-role": "u"}}),
            "`x-hasura-allowed-roles` is required",
        ),
        (
            json!({"type": "HS256", "key": HS, "claims_namespace": "a", "claims_namespace_path": "$.b", "claims_map": {"x-hasura-allowed-roles": ["u"], "x-hasura-default-role": "u"}}),
            "both set",
        ),
        (json!("HS256"), "expected a JSON object"),
    ] {
        let e = v2(secret.clone()).expect_err(&secret.to_string());
        assert!(e.0.iter().any(|l| l.contains(why)), "{secret}: {e}");
    }
}

#[test]
fn hasura_v2_unauthorized_role_and_auth_hook() {
    let i = hasura_v2(&HasuraV2 {
        jwt_secret: Some(json!({"type": "HS256", "key": HS}).to_string()),
        unauthorized_role: Some("anonymous".into()),
        ..Default::default()
    })
    .unwrap();
    let c = loads(&i);
    assert_eq!(
        c["definition"]["modes"][1],
        json!({"id": "hasura-unauthorized", "mode": "noAuth", "sessionVariables": {"x-hasura-role": {"value": "anonymous"}}})
    );
    assert!(has(
        &i.differences,
        "client's `x-hasura-*` headers as session variables"
    ));

    for (mode, method) in [(None, "GET"), (Some("POST"), "POST")] {
        let i = hasura_v2(&HasuraV2 {
            auth_hook: Some("https://hook.example/auth".into()),
            auth_hook_mode: mode.map(str::to_owned),
            ..Default::default()
        })
        .unwrap();
        let c = loads(&i);
        assert_eq!(
            c["definition"]["modes"][0],
            json!({"id": "hasura-auth-hook", "mode": "webhook", "url": {"value": "https://hook.example/auth"}, "method": method})
        );
        assert!(has(&i.differences, "other 4xx answers: Hasura answers 500"));
    }

    for (input, why) in [
        (HasuraV2::default(), "nothing to import"),
        (
            HasuraV2 {
                jwt_secret: Some(json!({"type": "HS256", "key": HS}).to_string()),
                auth_hook: Some("https://h".into()),
                ..Default::default()
            },
            "together",
        ),
        (
            HasuraV2 {
                auth_hook: Some("https://h".into()),
                unauthorized_role: Some("anon".into()),
                ..Default::default()
            },
            "UNAUTHORIZED_ROLE with an auth hook",
        ),
        (
            HasuraV2 {
                auth_hook: Some("https://h".into()),
                auth_hook_mode: Some("get".into()),
                ..Default::default()
            },
            "GET or POST",
        ),
        (
            HasuraV2 {
                jwt_secret: Some("{not json".into()),
                ..Default::default()
            },
            "--jwt-secret: not JSON",
        ),
        (
            HasuraV2 {
                jwt_secrets: Some("{}".into()),
                ..Default::default()
            },
            "non-empty JSON list",
        ),
    ] {
        let e = hasura_v2(&input).expect_err(why);
        assert!(e.0.iter().any(|l| l.contains(why)), "{why}: {e}");
    }
}

fn ddn_doc(yaml: &str) -> Value {
    read_document(yaml, false).unwrap()
}

/// DDN's AuthConfig, every version and mode.
#[test]
fn ddn_field_matrix() {
    let jwt = r#"
      jwt:
        key:
          fixed:
            algorithm: RS256
            key: {valueFromEnv: JWT_PUBLIC_KEY}
        tokenLocation: {type: Header, name: X-Auth-Token}
        claimsConfig:
          namespace: {claimsFormat: StringifiedJson, location: "/https:~1~1hasura.io~1jwt~1claims"}
        audience: [app]
        issuer: https://idp.example
        allowedSkew: 30"#;
    for version in ["v1", "v2", "v3", "v4"] {
        let doc = ddn_doc(&format!(
            "kind: AuthConfig\nversion: {version}\ndefinition:\n  mode:{jwt}\n"
        ));
        assert!(is_ddn(&doc));
        let i = ddn(&doc).unwrap_or_else(|e| panic!("{version}: {e}"));
        let c = loads(&i);
        assert_eq!(
            c["definition"]["modes"][0],
            json!({
                "id": "primary",
                "mode": "jwt",
                "tokenLocation": {"in": "header", "name": "X-Auth-Token", "scheme": ""},
                "key": {"algorithm": "RS256", "key": {"env": "JWT_PUBLIC_KEY"}},
                "audience": ["app"],
                "issuer": "https://idp.example",
                "allowedSkew": 30,
                "claimsConfig": {
                    "namespace": {"location": "\"https://hasura.io/jwt/claims\"", "claimsFormat": "StringifiedJson"},
                    "locations": {"x-hasura-role": {"path": "`null`"}},
                },
            }),
            "{version}"
        );
        for d in [
            "every key of the namespace object",
            "a token without `aud` passes DDN's check",
            "a token without `iss` passes DDN's check",
            "`nbf` or `iat`",
            "Hasura answers 401",
        ] {
            assert!(has(&i.differences, d), "{version} {d}: {:?}", i.differences);
        }
        assert!(!has(&i.differences, "admin secret"), "DDN has none");
    }

    // locations, jwkFromUrl, bearer and cookie locations.
    let i = ddn(&ddn_doc(
        r#"
kind: AuthConfig
version: v3
definition:
  mode:
    jwt:
      key: {jwkFromUrl: "https://idp.example/jwks"}
      tokenLocation: {type: Cookie, name: tok}
      claimsConfig:
        locations:
          x-hasura-default-role: {literal: user}
          x-hasura-allowed-roles: {path: {path: /roles, default: [user]}}
          X-Hasura-User-Id: {path: {path: /sub}}
          x-hasura-first: {path: {path: /teams/0}}
"#,
    ))
    .unwrap();
    let c = loads(&i);
    let m = &c["definition"]["modes"][0];
    assert_eq!(
        m["key"],
        json!({"jwkFromUrl": {"value": "https://idp.example/jwks"}})
    );
    assert_eq!(m["tokenLocation"], json!({"in": "cookie", "name": "tok"}));
    assert_eq!(
        m["claimsConfig"]["locations"],
        json!({
            "x-hasura-default-role": {"default": {"value": "user"}},
            "x-hasura-allowed-roles": {"path": "roles", "default": {"value": ["user"]}},
            "x-hasura-user-id": {"path": "sub"},
            "x-hasura-first": {"path": "teams[0]"},
        })
    );
    for d in [
        "without `kid`",
        "only the first cookie",
        "read as an array index",
    ] {
        assert!(has(&i.differences, d), "{d}: {:?}", i.differences);
    }

    // Webhooks: v1/v2's form, v3's with header and body configs.
    let i = ddn(&ddn_doc(
        "kind: AuthConfig\nversion: v2\ndefinition:\n  mode:\n    webhook: {url: \"http://hook:3050/validate\", method: Post}\n",
    ))
    .unwrap();
    assert_eq!(
        loads(&i)["definition"]["modes"][0],
        json!({
            "id": "primary", "mode": "webhook", "url": {"value": "http://hook:3050/validate"}, "method": "POST",
            "customRequest": {"body": {"type": "jmespath", "template": {"type": "object", "properties": {"headers": {"type": "field", "path": "headers"}}}}},
        })
    );
    assert!(has(&i.differences, "DDN answers the client 403"));
    let i = ddn(&ddn_doc(
        r#"
kind: AuthConfig
version: v3
definition:
  mode:
    webhook:
      method: POST
      url: {valueFromEnv: AUTH_HOOK}
      customHeadersConfig:
        headers: {additional: {user-agent: hasura-ddn}}
        body: {headers: {forward: [Authorization, cookie], additional: {x-from: ddn}}}
"#,
    ))
    .unwrap();
    assert_eq!(
        loads(&i)["definition"]["modes"][0],
        json!({
            "id": "primary", "mode": "webhook", "url": {"env": "AUTH_HOOK"}, "method": "POST",
            "customRequest": {
                "headers": {"forward": "*", "additional": {"user-agent": {"default": {"value": "hasura-ddn"}}}},
                "body": {"type": "jmespath", "template": {"type": "object", "properties": {"headers": {"type": "field",
                    "path": "merge(merge(`{}`, headers.\"authorization\" && {\"authorization\": headers.\"authorization\"} || `{}`, headers.\"cookie\" && {\"cookie\": headers.\"cookie\"} || `{}`), `{\"x-from\":\"ddn\"}`)"}}}},
            },
        })
    );
    // The body DDN sends: forwarded headers that are present, plus the
    // additional ones; an absent header is no member at all.
    let body = loads(&i)["definition"]["modes"][0]["customRequest"]["body"]["template"]
        ["properties"]["headers"]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    let expr = jmespath::compile(&body).unwrap();
    let doc =
        jmespath::Variable::from_json(r#"{"headers": {"authorization": "Bearer t", "host": "h"}}"#)
            .unwrap();
    assert_eq!(
        serde_json::to_value(&*expr.search(doc).unwrap()).unwrap(),
        json!({"authorization": "Bearer t", "x-from": "ddn"})
    );
    let i = ddn(&ddn_doc(
        "kind: AuthConfig\nversion: v3\ndefinition:\n  mode:\n    webhook:\n      method: GET\n      url: {value: \"https://hook.example\"}\n      customHeadersConfig: {}\n",
    ))
    .unwrap();
    assert_eq!(
        loads(&i)["definition"]["modes"][0]["customRequest"],
        json!({"headers": {"forward": []}}),
        "a headers config without `headers` forwards none"
    );

    // noAuth, and v4's alternative modes selected by X-Hasura-Auth-Mode.
    let i = ddn(&ddn_doc(
        r#"
kind: AuthConfig
version: v4
definition:
  mode:
    noAuth: {role: admin, sessionVariables: {x-hasura-user-id: "100"}}
  alternativeModes:
    - identifier: hook
      config:
        webhook: {method: GET, url: {value: "https://hook.example"}}
"#,
    ))
    .unwrap();
    let c = loads(&i);
    assert_eq!(
        c["definition"]["modes"][0],
        json!({"id": "primary", "mode": "noAuth", "sessionVariables": {"x-hasura-role": {"value": "admin"}, "x-hasura-user-id": {"value": "100"}}})
    );
    assert_eq!(c["definition"]["modes"][1]["id"], "hook");
    assert_eq!(c["definition"]["modes"][1]["onlyWhenSelected"], true);
    assert!(has(&i.differences, "naming no mode"));
}

#[test]
fn ddn_refuses_what_ddn_refuses() {
    for (yaml, why) in [
        (
            "kind: AuthConfig\nversion: v5\ndefinition: {mode: {noAuth: {role: a, sessionVariables: {}}}}",
            "unsupported version `v5`",
        ),
        (
            "kind: AuthConfig\nversion: v3\ndefinition: {mode: {noAuth: {role: a, sessionVariables: {}}}, extra: 1}",
            "definition.extra: unknown key",
        ),
        (
            "kind: AuthConfig\nversion: v3\ndefinition: {mode: {noAuth: {role: a}}}",
            "definition.mode.noAuth: missing required key `sessionVariables`",
        ),
        (
            "kind: AuthConfig\nversion: v3\ndefinition: {mode: {noAuth: {role: a, sessionVariables: {}}, webhook: {}}}",
            "exactly one of `jwt`, `webhook` and `noAuth`",
        ),
        (
            "kind: AuthConfig\nversion: v3\ndefinition: {mode: {jwt: {key: {fixed: {algorithm: ES512, key: {value: x}}}, tokenLocation: {type: BearerAuthorization}, claimsConfig: {namespace: {claimsFormat: Json, location: /x}}}}}",
            "`ES512` is not a DDN algorithm",
        ),
        (
            "kind: AuthConfig\nversion: v3\ndefinition: {mode: {jwt: {key: {jwkFromUrl: u}, tokenLocation: {type: BearerAuthorization}, claimsConfig: {namespace: {claimsFormat: Json, location: x}}}}}",
            "must start with `/`",
        ),
        (
            "kind: AuthConfig\nversion: v2\ndefinition: {mode: {webhook: {url: u, method: GET}}}",
            "expected Get or Post",
        ),
        (
            "kind: AuthConfig\nversion: v3\ndefinition: {mode: {webhook: {url: u, method: GET}}}",
            "definition.mode.webhook.url: expected a mapping",
        ),
        (
            "kind: AuthConfig\nversion: v3\ndefinition: {mode: {noAuth: {role: a, sessionVariables: {}}}, alternativeModes: []}",
            "definition.alternativeModes: unknown key",
        ),
        (
            "kind: AuthConfig\nversion: v4\ndefinition: {mode: {noAuth: {role: a, sessionVariables: {}}}, alternativeModes: [{identifier: primary, config: {noAuth: {role: b, sessionVariables: {}}}}]}",
            "not `primary`",
        ),
        (
            "kind: AuthConfig\nversion: v3\ndefinition: {mode: {jwt: {key: {jwkFromUrl: u}, tokenLocation: {type: BearerAuthorization}, claimsConfig: {namespace: {claimsFormat: Json, location: /x}}, audience: []}}}",
            "an empty audience list",
        ),
        (
            "kind: AuthConfig\nversion: v3\ndefinition: {mode: {jwt: {key: {jwkFromUrl: u}, tokenLocation: {type: BearerAuthorization}, claimsConfig: {locations: {x-hasura-default-role: {literal: u}}}}}}",
            "missing required key `x-hasura-allowed-roles`",
        ),
    ] {
        let e = ddn(&ddn_doc(yaml)).expect_err(yaml);
        assert!(e.0.iter().any(|l| l.contains(why)), "{why}: {e}");
    }
    // RelyAuth's own file, with its `AuthConfig` alias, is not DDN's.
    assert!(!is_ddn(&ddn_doc(
        "kind: AuthConfig\nversion: v1\ndefinition: {modes: [{mode: noAuth, sessionVariables: {x-hasura-role: {value: a}}}]}"
    )));
}

/// `serve` and `validate` read a DDN file as its import, with the
/// differences as warnings and DDN's paths in errors.
#[test]
fn ddn_files_load_directly() {
    let env = |_: &str| None;
    let c = config::parse(
        "kind: AuthConfig\nversion: v3\ndefinition:\n  mode:\n    noAuth: {role: anonymous, sessionVariables: {}}\n",
        &env,
    )
    .unwrap();
    assert_eq!(c.modes.len(), 1);
    assert_eq!(&*c.modes[0].id, "primary");
    let e = config::parse(
        "kind: AuthConfig\nversion: v3\ndefinition:\n  mode:\n    noAuth: {role: anonymous, sessionVars: {}}\n",
        &env,
    )
    .unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.contains("definition.mode.noAuth.sessionVars: unknown key"),
        "{shown}"
    );
    assert!(shown.contains("5:31:"), "the line is shown: {shown}");
    let c = config::parse(
        "kind: AuthConfig\nversion: v2\ndefinition:\n  mode:\n    webhook: {url: \"https://hook.example\", method: Get}\n",
        &env,
    )
    .unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.message.contains("read as a DDN AuthConfig") && w.message.contains("403")),
        "{:?}",
        c.warnings
    );
}
