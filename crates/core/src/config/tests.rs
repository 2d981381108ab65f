use super::*;
use crate::session::{is_hasura_name, is_session_key};

fn env(name: &str) -> Option<String> {
    match name {
        "JWT_SECRET" => Some("a-string-secret-at-least-256-bits-long".into()),
        "SERVICE_KEY" => Some("svc".into()),
        _ => None,
    }
}

fn errors(yaml: &str) -> Vec<String> {
    match parse(yaml, &env) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn parses_the_relyauth_example_modes() {
    let c = parse(
        r#"
version: v1
kind: RelyAuth
definition:
  settings: {reloadInterval: 300}
  modes:
    - mode: noAuth
      sessionVariables: {x-hasura-role: {value: anonymous}}
    - id: users
      mode: jwt
      tokenLocation: {in: header, name: Authorization, scheme: bearer}
      key: {algorithm: HS256, key: {env: JWT_SECRET}}
      audience: ["myapp-1234"]
      issuer: https://my-auth-server.com
      claimsConfig:
        namespace: {location: '"claims.jwt.hasura.io"', claimsFormat: Json}
        locations:
          X-Hasura-User-Id: {path: sub}
          x-hasura-org-id: {path: org.id, default: {value: "none"}}
    - mode: apiKey
      tokenLocation: {in: header, name: X-API-Key}
      value: {env: SERVICE_KEY}
      sessionVariables: {x-hasura-role: {value: service}}
"#,
        &env,
    )
    .unwrap();
    let kinds: Vec<&str> = c.modes.iter().map(|m| m.kind.name()).collect();
    assert_eq!(kinds, ["apiKey", "jwt", "noAuth"]);
    // Default ids are the index after sorting (RelyAuth).
    let ids: Vec<&str> = c.modes.iter().map(|m| &*m.id).collect();
    assert_eq!(ids, ["0", "users", "2"]);
    assert_eq!(c.settings.reload_interval, Some(Duration::from_secs(300)));
    let ModeKind::Jwt(j) = &c.modes[1].kind else {
        panic!()
    };
    assert_eq!(j.allowed_skew, 60);
    assert!(j.require_exp);
    assert_eq!(j.claims.locations[0].key, "x-hasura-user-id");
    let ModeKind::ApiKey(a) = &c.modes[0].kind else {
        panic!()
    };
    assert_eq!(a.location.name, "x-api-key");
    assert!(
        !format!("{a:?}").contains("svc"),
        "secrets are redacted in Debug"
    );
}

#[test]
fn json_is_accepted() {
    let c = parse(
        r#"{"version":"v1","kind":"RelyAuth","definition":{"modes":[{"mode":"noAuth","sessionVariables":{"x-hasura-role":{"value":"anonymous"}}}]}}"#,
        &env,
    )
    .unwrap();
    assert_eq!(c.modes.len(), 1);
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let errs = errors(
        r#"
version: v2
kind: Other
definition:
  setings: {}
  modes:
    - mode: jwt
      key: {algorithm: HS257, key: {env: MISSING_VAR}}
      audiance: [x]
      claimsConfig:
        namespace: {location: '[[', claimsFormat: Yaml}
    - mode: apiKey
      tokenLocation: {in: body, name: X}
      value: {value: ""}
      sessionVariables: {x-hasura-role: {value: svc}}
    - mode: magic
"#,
    );
    let expect = [
        "version: unsupported version `v2`",
        "kind: unsupported kind `Other`",
        "definition.setings: unknown key `setings` (did you mean `settings`?)",
        "definition.modes[0].key.algorithm: unsupported algorithm `HS257`",
        "definition.modes[0].audiance: unknown key `audiance` (did you mean `audience`?)",
        "definition.modes[0].claimsConfig.namespace.location: invalid JMESPath expression",
        "definition.modes[0].claimsConfig.namespace.claimsFormat: unknown claimsFormat `Yaml`",
        "definition.modes[1].tokenLocation.in: unknown location `body`",
        "definition.modes[1].value: the API key is empty",
        "definition.modes[2].mode: unknown mode `magic`",
    ];
    for e in expect {
        assert!(
            errs.iter().any(|x| x.starts_with(e)),
            "missing `{e}` in {errs:#?}"
        );
    }
}

#[test]
fn secrets_never_appear_in_errors() {
    let errs = errors(
        r#"
definition:
  modes:
    - mode: jwt
      key: {algorithm: RS256, key: {value: "super-secret-not-a-pem"}}
      claimsConfig: {namespace: {location: x}}
"#,
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(!errs[0].contains("super-secret"), "{errs:?}");
}

#[test]
fn unset_env_is_an_error_naming_the_variable() {
    let errs = errors(
        r#"
definition:
  modes:
    - mode: apiKey
      tokenLocation: {name: X-Key}
      value: {env: NOPE}
      sessionVariables: {x-hasura-role: {value: svc}}
"#,
    );
    assert!(errs[0].contains("`NOPE` is not set"), "{errs:?}");
}

#[test]
fn remote_jwks_rules() {
    let errs = errors(
        r#"
definition:
  modes:
    - mode: jwt
      key: {algorithm: HS256, jwkFromUrl: {value: "https://x/jwks"}}
      claimsConfig: {namespace: {location: x}}
    - mode: jwt
      id: b
      key: {jwkFromUrl: {value: "ftp://x/jwks"}}
      claimsConfig: {namespace: {location: x}}
    - mode: jwt
      id: c
      key: {algorithm: RS256}
      claimsConfig: {namespace: {location: x}}
"#,
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("modes[0].key.algorithm: HMAC algorithms cannot")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("modes[b].key.jwkFromUrl: the JWKS URL must be http or https")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("modes[c].key: missing `key`")),
        "{errs:?}"
    );
}

#[test]
fn key_fetch_client_rules() {
    let errs = errors(
        r#"
definition:
  modes:
    - mode: jwt
      id: a
      key: {algorithm: RS256, key: {value: "x"}, httpClient: {timeout: 2s}}
      claimsConfig: {namespace: {location: x}}
    - mode: jwt
      id: b
      key:
        jwkFromUrl: {value: "https://x/jwks"}
        httpClient: {authentication: {type: basic, username: {value: u}, password: {value: p}}}
      claimsConfig: {namespace: {location: x}}
    - mode: jwt
      id: c
      key:
        jwkFromUrl: {value: "https://x/jwks"}
        httpClient: {headers: {"X-Key:s3cret": {value: v}, x-ok: {value: "a\nb"}, x-env: {env: UNSET_VAR}, Accept: {value: x}, X-Dup: {value: a}, x-dup: {value: b}}, proxy: {value: "ftp://p"}, tls: {rootCAFile: /nonexistent.pem, certificates: [{certFile: "-----BEGIN CERTIFICATE-----\nMIIB", keyPem: k}]}}
      claimsConfig: {namespace: {location: x}}
    - mode: jwt
      id: d
      key:
        jwkFromUrl: {value: "http://keys.example/jwks"}
        httpClient: {headers: {Authorization: {value: "Bearer x"}}}
      claimsConfig: {namespace: {location: x}}
"#,
    );
    for want in [
        "modes[a].key.httpClient: `httpClient` is for fetching keys: it needs `jwkFromUrl`",
        "modes[b].key.httpClient.authentication: not used for key fetches",
        "modes[c].key.httpClient.headers: 1 name is not a valid HTTP header name (not shown",
        "modes[c].key.httpClient.headers.x-ok: not a valid HTTP header value",
        "modes[c].key.httpClient.headers.x-env: ",
        "modes[c].key.httpClient.proxy: the proxy must be an http or https URL",
        "modes[c].key.httpClient.tls.rootCAFile: cannot read /nonexistent.pem",
        "modes[c].key.httpClient.headers.Accept: set by authgate itself",
        "the same header twice",
        "certificates[0].certFile: cannot read the file: the value looks like PEM text",
        "modes[d].key.jwkFromUrl: key.httpClient.headers would cross the network in clear text",
    ] {
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
    }
    assert!(
        !errs
            .iter()
            .any(|e| e.contains("s3cret") || e.contains("MIIB")),
        "{errs:?}"
    );
    // Accepted: headers (values from the environment too), timeouts, a
    // proxy; `retry` is a warning (the key cache retries by itself).
    let c = parse(
        r#"
definition:
  modes:
    - mode: jwt
      key:
        jwkFromUrl: {value: "https://x/jwks"}
        httpClient:
          timeout: 3s
          proxy: {value: "http://proxy:3128"}
          retry: {maxAttempts: 3}
          headers: {Authorization: {env: SERVICE_KEY}}
      claimsConfig: {namespace: {location: x}}
"#,
        &env,
    )
    .expect("loads");
    let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("httpClient.retry: has no effect on key fetches")),
        "{warnings:?}"
    );
    let ModeKind::Jwt(j) = &c.modes[0].kind else {
        panic!("jwt mode")
    };
    let KeySource::Remote { fetch: Some(f), .. } = &j.keys else {
        panic!("remote keys with fetch options")
    };
    assert_eq!(f.headers.get("authorization").unwrap(), "svc");
    assert!(!format!("{f:?}").contains("svc"), "{f:?}");
}

#[test]
fn oidc_issuer_rules() {
    let errs = errors(
        r#"
definition:
  modes:
    - mode: jwt
      id: a
      key: {oidcIssuer: {value: "https://idp.example/?tenant=1"}}
      claimsConfig: {namespace: {location: x}}
    - mode: jwt
      id: b
      key: {oidcIssuer: {value: "https://u:pw@idp.example"}}
      claimsConfig: {namespace: {location: x}}
    - mode: jwt
      id: c
      key: {oidcIssuer: {value: "https://idp.example"}, jwkFromUrl: {value: "https://idp.example/jwks"}}
      claimsConfig: {namespace: {location: x}}
    - mode: jwt
      id: d
      key: {algorithm: HS256, oidcIssuer: {value: "https://idp.example"}}
      claimsConfig: {namespace: {location: x}}
    - mode: jwt
      id: e
      key: {oidcIssuer: {value: "ftp://idp.example"}}
      claimsConfig: {namespace: {location: x}}
"#,
    );
    for want in [
        "modes[a].key.oidcIssuer: an OpenID issuer has no query or fragment",
        "modes[b].key.oidcIssuer: an OpenID issuer has no user or password (not shown)",
        "modes[c].key: set one of `key`, `jwkFromUrl` and `oidcIssuer`",
        "modes[d].key.algorithm: HMAC algorithms cannot",
        "modes[e].key.oidcIssuer: the OpenID issuer URL must be http or https",
    ] {
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
    }
    assert!(!errs.iter().any(|e| e.contains("pw")), "{errs:?}");
    let c = parse(
        r#"
definition:
  modes:
    - mode: jwt
      key: {oidcIssuer: {value: "https://idp.example/realms/a/"}}
      claimsConfig: {namespace: {location: x}}
    - mode: jwt
      key: {oidcIssuer: {value: "https://idp.example"}}
      issuer: https://other.example
      claimsConfig: {namespace: {location: x}}
"#,
        &env,
    )
    .expect("loads");
    let jwt = |i: usize| match &c.modes[i].kind {
        ModeKind::Jwt(j) => j,
        _ => panic!("jwt mode"),
    };
    // The issuer defaults to `oidcIssuer`, exactly as written.
    assert_eq!(
        jwt(0).issuer.as_deref(),
        Some("https://idp.example/realms/a/")
    );
    assert!(matches!(&jwt(0).keys, KeySource::Remote { url, .. }
        if url == "https://idp.example/realms/a/.well-known/openid-configuration"));
    assert_eq!(jwt(1).issuer.as_deref(), Some("https://other.example"));
}

#[test]
fn structural_rules() {
    let errs = errors(
        r#"
definition:
  modes:
    - {mode: noAuth, sessionVariables: {x-hasura-role: {value: a}}}
    - {mode: noAuth, sessionVariables: {x-hasura-user-id: {value: a}}}
    - {mode: apiKey, id: k, tokenLocation: {name: A}, value: {value: v}, sessionVariables: {x-hasura-role: {value: r}}}
    - {mode: apiKey, id: k, tokenLocation: {name: B}, value: {value: w}, sessionVariables: {x-hasura-role: {value: r}}}
"#,
    );
    assert!(
        errs.iter().any(|e| e.contains("only one noAuth")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("must set `x-hasura-role`")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("duplicate mode id `k`")),
        "{errs:?}"
    );
    assert!(!errors("").is_empty());
    assert!(!errors("definition: {modes: []}").is_empty());
    assert!(errors("[1, 2").iter().any(|e| e.contains("not valid YAML")));
}

/// Fuzzing (`fuzz/`, target `claims`) found that a claims-namespace key with
/// a multi-byte character across byte 9 (`x-Hasura̛…`) panicked while a
/// verified token's claims were mapped (a request-path panic).
#[test]
fn hasura_names_are_compared_bytewise() {
    assert!(!is_hasura_name("x-Hasura\u{31b}-role"));
    assert!(!is_hasura_name("\u{e9}-hasura-role"));
    assert!(is_hasura_name("X-Hasura-\u{e9}"));
    assert!(!is_session_key("x-hasura-\u{e9}"));
    let cfg = ClaimsConfig {
        namespace: Some(Namespace {
            expression: crate::claims::ClaimPath::new(jmespath::compile("h").unwrap()),
            format: ClaimsFormat::Json,
        }),
        locations: Vec::new(),
    };
    let payload = serde_json::json!({"h": {"x-Hasura\u{31b}-role": "a", "x-hasura-role": "r"}});
    let session = crate::claims::extract(&cfg, &payload).unwrap();
    assert_eq!(session.get_str("x-hasura-role"), Some("r"));
    assert_eq!(session.len(), 1);
}

#[test]
fn empty_webauthn_origins_are_an_error_not_elevation_off() {
    let errs = errors(
        r#"
definition:
  modes:
    - mode: noAuth
      sessionVariables: {x-hasura-role: {value: anonymous}}
  elevation:
    mode: required
    routes: [{pathPrefix: /admin/}]
    webauthn: {rpId: example.com, origins: []}
"#,
    );
    assert_eq!(
        errs,
        ["definition.elevation.webauthn.origins: at least one origin is required"]
    );
}

#[test]
fn relyauth_keys_without_effect_are_warnings() {
    let c = parse(
        r#"
definition:
  modes:
    - mode: webhook
      url: {value: "https://hook.example/auth"}
      method: GET
      httpClient:
        transport: {dialer: {timeout: 5s, keepAlive: 30s}}
        retry: {maxAttempts: 2, jitter: true}
"#,
        &env,
    )
    .expect("valid");
    let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with("definition.modes[0].httpClient.transport.dialer.keepAlive: accepted for RelyAuth compatibility"), "{warnings:?}");
    assert!(
        warnings[1].starts_with(
            "definition.modes[0].httpClient.retry.jitter: accepted for RelyAuth compatibility"
        ),
        "{warnings:?}"
    );
    // In file order, with their lines.
    assert_eq!(c.warnings[0].location.map(|l| l.line), Some(8));
    assert_eq!(c.warnings[1].location.map(|l| l.line), Some(9));
}

#[test]
fn json_columns_count_characters_and_messages_carry_no_position() {
    // `é` is two bytes: the `}` after the comma is the 26th character (the
    // 27th byte), where serde_json notices the trailing comma.
    let text = "{\"definition\": {\"x\": \"é\",}}";
    let err = parse_as(text, Format::Json, &env).expect_err("invalid");
    let p = &err.0[0];
    assert_eq!(p.message, "not valid JSON: trailing comma");
    assert_eq!(
        p.location,
        Some(Location {
            line: 1,
            column: 26
        })
    );
    // End of input on an empty last line: column 1, not 0.
    let err = parse_as("{\"a\": 1\n", Format::Json, &env).expect_err("invalid");
    assert_eq!(err.0[0].location.map(|l| l.column), Some(1), "{:?}", err.0);
    let err = parse_as("a: \"unclosed\n\nb: 1\n", Format::Yaml, &env).expect_err("invalid");
    assert!(!err.0[0].message.contains(" at line "), "{:?}", err.0);
    assert!(err.0[0].location.is_some());
}

#[test]
fn a_byte_order_mark_is_not_content() {
    let text = "\u{feff}definition:\n  modes:\n    - mode: noAuth\n      sessionVariables: {x-hasura-role: {value: anonymous}}\n";
    parse_as(text, Format::Yaml, &env).expect("a BOM does not make a second document");
    let json = "\u{feff}{\"definition\": {\"modes\": [{\"mode\": \"noAuth\", \"sessionVariables\": {\"x-hasura-role\": {\"value\": \"anonymous\"}}}]}}";
    parse_as(json, Format::Json, &env).expect("nor a JSON syntax error");
}

#[test]
fn names_that_differ_only_in_case_are_refused() {
    let errs = errors(
        r#"
definition:
  modes:
    - id: anon
      mode: noAuth
      sessionVariables:
        x-hasura-role: {value: admin}
        X-Hasura-Role: {value: anonymous}
    - id: hook
      mode: webhook
      url: {value: "https://hook.example/auth"}
      customRequest:
        headers:
          additional: {X-Tenant: {value: a}, x-tenant: {value: b}}
    - id: key
      mode: apiKey
      value: {value: k}
      sessionVariables: {x-hasura-role: {value: svc}}
      securityRules:
        headerRules: {X-Env: {include: {value: [prod]}}, x-env: {include: {value: [dev]}}}
"#,
    );
    for expected in [
        "definition.modes[anon].sessionVariables.X-Hasura-Role: `X-Hasura-Role`, `x-hasura-role` name the same session variable",
        "definition.modes[anon].sessionVariables.x-hasura-role: `X-Hasura-Role`, `x-hasura-role` name the same session variable",
        "definition.modes[hook].customRequest.headers.additional.X-Tenant: `X-Tenant`, `x-tenant` name the same header",
        "definition.modes[key].securityRules.headerRules.x-env: `X-Env`, `x-env` name the same header",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(expected)),
            "missing {expected:?} in {errs:#?}"
        );
    }
}

#[test]
fn unknown_keys_of_a_secret_are_not_echoed() {
    // No space after the colon: YAML reads one key, `value:SUPERSECRET`.
    let errs = errors(
        r#"
definition:
  modes:
    - id: svc
      mode: apiKey
      value: {value:SUPERSECRET-api-key-777}
      sessionVariables: {x-hasura-role: {value: svc}}
"#,
    );
    assert!(errs.iter().all(|e| !e.contains("SUPERSECRET")), "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("definition.modes[svc].value: 1 unknown key (not shown")),
        "{errs:?}"
    );
}

#[test]
fn numeric_mode_ids_are_quoted_and_deep_values_keep_later_positions() {
    let text = format!(
        "definition:\n  modes:\n    - mode: noAuth\n      bogus: 1\n      sessionVariables: {{x-hasura-role: {{value: a}}}}\n    - id: \"0\"\n      mode: noAuth\n      sessionVariables: {{x-hasura-role: {{value: {}1{}}}}}\n      bogus: 1\n",
        "[".repeat(80),
        "]".repeat(80)
    );
    let err = parse_as(&text, Format::Yaml, &env).expect_err("invalid");
    let got: Vec<(String, Option<usize>)> = err
        .errors()
        .filter(|p| p.message.starts_with("unknown key"))
        .map(|p| (p.path.to_string(), p.location.map(|l| l.line)))
        .collect();
    assert_eq!(
        got,
        [
            ("definition.modes[0].bogus".to_owned(), Some(4)),
            ("definition.modes[\"0\"].bogus".to_owned(), Some(9)),
        ]
    );
}

/// `mode: introspection`: one endpoint source, a client that can
/// authenticate, and no way to send secrets in clear text by accident.
#[test]
fn introspection_rules() {
    let mode = |id: &str, block: &str| {
        format!(
            "
    - mode: introspection
      id: {id}
      introspection: {block}
      claimsConfig: {{namespace: {{location: x}}}}"
        )
    };
    let yaml = format!(
        "definition:\n  modes:{}\n",
        [
            mode("a", "{clientId: {value: c}, clientSecret: {value: s}}"),
            mode(
                "b",
                r#"{endpoint: {value: "https://idp.example/i"}, oidcIssuer: {value: "https://idp.example"}, clientId: {value: c}, clientSecret: {value: s}}"#
            ),
            mode(
                "c",
                r#"{endpoint: {value: "https://idp.example/i"}, clientId: {value: c}, clientSecret: {value: s}, authMethod: private_key_jwt}"#
            ),
            mode(
                "d",
                r#"{endpoint: {value: "https://idp.example/i"}, clientId: {value: c}}"#
            ),
            mode(
                "e",
                r#"{endpoint: {value: "https://idp.example/i"}, clientSecret: {value: s}}"#
            ),
            mode(
                "f",
                r#"{endpoint: {value: "https://u:pw@idp.example/i"}, clientId: {value: c}, clientSecret: {value: s}}"#
            ),
            mode(
                "g",
                r#"{endpoint: {value: "http://idp.example/i"}, clientId: {value: c}, clientSecret: {value: s}, httpClient: {headers: {x-key: {value: k}}}}"#
            ),
            mode(
                "h",
                r#"{endpoint: {value: "https://idp.example/i"}, clientId: {value: c}, clientSecret: {value: s}, httpClient: {authentication: {type: basic, username: {value: u}, password: {value: p}}}}"#
            ),
            mode(
                "i",
                r#"{endpoint: {value: "https://idp.example/i"}, clientId: {value: c}, clientSecret: {value: s}, cacheTTL: 5}"#
            ),
            mode(
                "j",
                r#"{oidcIssuer: {value: "https://idp.example/?t=1"}, clientId: {value: c}, clientSecret: {value: s}}"#
            ),
            mode(
                "k",
                r#"{endpoint: {value: "https://idp.example/i"}, clientId: {value: c}, clientSecret: {value: ""}}"#
            ),
            mode(
                "l",
                r#"{endpoint: {value: "https://idp.example/i"}, clientId: {value: c}, clientSecret: {value: s}, cacheTtl: 86401}"#
            ),
            mode(
                "m",
                r#"{endpoint: {value: "https://idp.example/i"}, clientId: {value: c}, clientSecret: {value: s}, httpClient: {headers: {Authorization: {value: x}}}}"#
            ),
            mode(
                "n",
                r#"{endpoint: {value: "https://idp.example/i"}, clientSecret: {value: "tok\n"}, authMethod: bearer}"#
            ),
        ]
        .concat()
    );
    let errs = errors(&yaml);
    for want in [
        "modes[a].introspection: missing `endpoint` (the introspection URL) or `oidcIssuer`",
        "modes[b].introspection: set one of `endpoint` and `oidcIssuer`, not both",
        "modes[c].introspection.authMethod: expected client_secret_basic, client_secret_post or bearer",
        "modes[d].introspection: missing required key `clientSecret`",
        "modes[e].introspection: missing required key `clientId` (required with authMethod client_secret_basic)",
        "modes[f].introspection.endpoint: the introspection endpoint URL has no user or password (not shown)",
        "modes[g].introspection.endpoint: introspection.httpClient.headers would cross the network in clear text",
        "modes[h].introspection.httpClient.authentication: not used for introspection",
        "modes[i].introspection.cacheTTL: unknown key `cacheTTL` (did you mean `cacheTtl`?)",
        "modes[j].introspection.oidcIssuer: an OpenID issuer has no query or fragment",
        "modes[k].introspection.clientSecret: must not be empty",
        "modes[l].introspection.cacheTtl: at most 86400 seconds",
        "modes[m].introspection.httpClient.headers: `authorization` is set by authgate",
        "modes[n].introspection.clientSecret: cannot be sent in a header",
    ] {
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
    }
    assert!(!errs.iter().any(|e| e.contains("pw")), "{errs:?}");

    let c = parse(
        r#"
definition:
  modes:
    - mode: webhook
      url: {value: "https://hook.example"}
      method: GET
    - mode: introspection
      introspection:
        endpoint: {value: "http://idp.example/introspect"}
        clientId: {value: c}
        clientSecret: {value: s}
        authMethod: bearer
      claimsConfig: {namespace: {location: x}}
    - mode: introspection
      id: discovered
      introspection:
        oidcIssuer: {value: "https://idp.example/realms/a"}
        clientId: {value: c}
        clientSecret: {value: s}
        authMethod: client_secret_post
        cacheTtl: 0
      claimsConfig: {namespace: {location: x}}
"#,
        &env,
    )
    .expect("loads");
    // Bearer tokens after jwt, before webhook: the default ids follow.
    assert_eq!(c.modes[0].kind.name(), "introspection");
    assert_eq!(&*c.modes[0].id, "0");
    assert_eq!(c.modes[2].kind.name(), "webhook");
    let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    for want in [
        "modes[1].introspection.endpoint: over plain http the client secret and every token cross the network in clear text",
        "modes[1].introspection.clientId: not sent with authMethod bearer",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(want)),
            "{want}: {warnings:?}"
        );
    }
    let ModeKind::Introspection(plain) = &c.modes[0].kind else {
        panic!("introspection mode");
    };
    assert!(matches!(
        plain.client,
        crate::introspection::ClientAuth::Bearer(_)
    ));
    assert_eq!(plain.cache_ttl, Duration::from_secs(60));
    let ModeKind::Introspection(discovered) = &c.modes[1].kind else {
        panic!("introspection mode");
    };
    assert!(matches!(
        &discovered.endpoint,
        crate::introspection::Endpoint::Discovered { document, issuer }
            if document == "https://idp.example/realms/a/.well-known/openid-configuration"
                && issuer == "https://idp.example/realms/a"
    ));
    assert!(matches!(
        discovered.client,
        crate::introspection::ClientAuth::Post { .. }
    ));
    assert!(discovered.cache_ttl.is_zero());
    assert!(
        !format!("{discovered:?}").contains("s\""),
        "secrets are redacted"
    );
}

/// A webhook's `cache`: off unless enabled, bounded, and strict.
#[test]
fn webhook_cache_rules() {
    let hook = |id: &str, cache: &str| {
        format!(
            r#"
    - mode: webhook
      id: {id}
      url: {{value: "https://hook.example"}}
      method: GET
      {cache}"#
        )
    };
    let errs = errors(&format!(
        "definition:\n  modes:{}\n",
        [
            hook("a", "cache: {enabled: true, maxEntries: 0}"),
            hook("b", "cache: {enabled: true, maxEntries: 1000001}"),
            hook("c", "cache: {enable: true}"),
            hook("d", "cache: {enabled: yes please}"),
        ]
        .concat()
    ));
    for want in [
        "modes[a].cache.maxEntries: must be 1 to 1000000",
        "modes[b].cache.maxEntries: must be 1 to 1000000",
        "modes[c].cache.enable: unknown key `enable` (did you mean `enabled`?)",
        "modes[d].cache.enabled",
    ] {
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
    }
    let c = parse(
        &format!(
            "definition:\n  modes:{}\n",
            [
                hook("on", "cache: {enabled: true}"),
                hook("sized", "cache: {enabled: true, maxEntries: 5}"),
                hook("off", "cache: {enabled: false, maxEntries: 5}"),
                hook("default", ""),
            ]
            .concat()
        ),
        &env,
    )
    .expect("loads");
    let cache = |i: usize| match &c.modes[i].kind {
        ModeKind::Webhook(w) => w.cache,
        _ => panic!("webhook mode"),
    };
    assert_eq!(
        [cache(0), cache(1), cache(2), cache(3)],
        [Some(10_000), Some(5), None, None]
    );
}

/// `onlyWhenSelected`: a boolean; a noAuth mode with it is no fallback,
/// so it does not count toward the one noAuth mode allowed.
#[test]
fn only_when_selected_rules() {
    let c = parse(
        r#"
definition:
  modes:
    - {mode: noAuth, sessionVariables: {x-hasura-role: {value: a}}}
    - {id: guest, mode: noAuth, onlyWhenSelected: true, sessionVariables: {x-hasura-role: {value: g}}}
"#,
        &env,
    )
    .expect("loads");
    assert!(!c.modes[0].only_when_selected);
    assert!(c.modes[1].only_when_selected);
    let errs = errors(
        r#"
definition:
  modes:
    - {mode: noAuth, onlyWhenSelected: "yes", sessionVariables: {x-hasura-role: {value: a}}}
    - {mode: noAuth, sessionVariables: {x-hasura-role: {value: b}}}
    - {mode: noAuth, sessionVariables: {x-hasura-role: {value: c}}}
"#,
    );
    assert!(
        errs.iter().any(|e| e.contains("onlyWhenSelected")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("only one noAuth mode is allowed")),
        "{errs:?}"
    );
}

#[test]
fn upstream_token_and_dynamic_metadata_rules() {
    let pem = include_str!("../../../../tests/fixtures/ec256.key").replace('\n', "\\n");
    let with = |u: &str| {
        format!(
            "definition:\n  modes:\n    - {{mode: noAuth, sessionVariables: {{x-hasura-role: {{value: anonymous}}}}}}\n  {u}\n"
        )
    };
    let ok = crate::config::parse(
        &with(&format!(
            "upstreamToken: {{signingKey: {{value: \"{pem}\"}}, issuer: \"https://a.example\", audience: [h1, h2], ttl: 1m, claimsFormat: StringifiedJson, scheme: \"\", header: X-Upstream-Jwt}}\n  dynamicMetadata: {{tenant: X-Hasura-Org-Id, org_2: x-hasura-org-id}}"
        )),
        &env,
    )
    .expect("loads");
    let u = ok.upstream_token.expect("upstream token");
    assert_eq!(u.header, "x-upstream-jwt");
    assert_eq!(u.scheme, None);
    assert_eq!(u.audience, ["h1", "h2"]);
    assert_eq!(u.ttl.as_secs(), 60);
    assert_eq!(ok.dynamic_metadata.len(), 2);
    assert_eq!(&*ok.dynamic_metadata[1].header, "x-authgate-meta-tenant");
    assert_eq!(&*ok.dynamic_metadata[1].variable, "x-hasura-org-id");
    // A generated key is fine for the algorithms authgate generates.
    assert!(
        crate::config::parse(
            &with("upstreamToken: {issuer: \"https://a.example\", audience: h, algorithm: EdDSA}"),
            &env
        )
        .is_ok()
    );

    for (u, expected) in [
        ("upstreamToken: {}", "missing required key `issuer`"),
        (
            "upstreamToken: {issuer: \"https://a.example\"}",
            "missing required key `audience`",
        ),
        (
            "upstreamToken: {issuer: \"https://a.example\", audience: authgate-elevation}",
            "the audience of elevation grants",
        ),
        (
            "upstreamToken: {issuer: a.example}",
            "an issuer is an http(s) URL",
        ),
        (
            "upstreamToken: {issuer: \"https://a.example?x=1\"}",
            "an issuer is an http(s) URL",
        ),
        (
            "upstreamToken: {issuer: \"https://a.example\", algorithm: HS256}",
            "asymmetric",
        ),
        (
            "upstreamToken: {issuer: \"https://a.example\", algorithm: RS256}",
            "without `signingKey`",
        ),
        (
            "upstreamToken: {issuer: \"https://a.example\", header: X-Hasura-Jwt}",
            "authgate decides this header",
        ),
        (
            "upstreamToken: {issuer: \"https://a.example\", header: Host}",
            "HTTP and the proxy",
        ),
        (
            "upstreamToken: {issuer: \"https://a.example\", ttl: 0}",
            "from 1 second",
        ),
        (
            "upstreamToken: {issuer: \"https://a.example\", ttl: 25h}",
            "from 1 second",
        ),
        (
            "upstreamToken: {issuer: \"https://a.example\", claimsNamespace: exp}",
            "registered claim",
        ),
        (
            "upstreamToken: {issuer: \"https://a.example\", claimsFormat: json}",
            "unknown format",
        ),
        (
            "upstreamToken: {issuer: \"https://a.example\", audience: []}",
            "empty audience",
        ),
        (
            "upstreamToken: {issuer: \"https://a.example\", signingKey: {value: nope}}",
            "not a private key PEM",
        ),
        (
            "upstreamToken: {issuer: \"https://a.example\", sigingKey: {value: nope}}",
            "did you mean `signingKey`",
        ),
        (
            "dynamicMetadata: {role: x-hasura-role}",
            "one of authgate's own",
        ),
        (
            "dynamicMetadata: {\"a b\": x-hasura-role}",
            "a metadata key is",
        ),
        (
            "dynamicMetadata: {a_b: x-hasura-role, a-b: x-hasura-user-id}",
            "the same response header",
        ),
        (
            "dynamicMetadata: {a: \"x hasura\"}",
            "not a valid header name",
        ),
    ] {
        let errs = errors(&with(u));
        assert!(
            errs.iter().any(|e| e.contains(expected)),
            "{u}: expected {expected:?} in {errs:?}"
        );
    }
    // One key for grants and upstream tokens is refused.
    let both = format!(
        "definition:\n  modes:\n    - {{mode: noAuth, sessionVariables: {{x-hasura-role: {{value: anonymous}}}}}}\n  upstreamToken: {{issuer: \"https://a.example\", audience: h, signingKey: {{value: \"{pem}\"}}}}\n  elevation:\n    mode: required\n    webauthn: {{rpId: a.example, origins: [\"https://a.example\"]}}\n    grant: {{signingKey: {{algorithm: ES256, key: {{value: \"{pem}\"}}}}}}\n"
    );
    let errs = errors(&both);
    assert!(
        errs.iter()
            .any(|e| e.contains("a key other than elevation.grant.signingKey")),
        "{errs:?}"
    );
}
