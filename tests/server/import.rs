//! `authgate import`: Hasura v2's JWT secret and DDN's AuthConfig, run as
//! a user runs them (the binary, stdout and stderr, exit codes), and the
//! imported files deciding the tokens Hasura would decide the same way
//! (Hasura's rules as its code and docs state them; the listed
//! differences aside).

use crate::common;

use std::process::Command;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn import(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .arg("import")
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A JWT exactly as given: no `exp` added.
fn sign(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

/// What is checked, the request's headers, and what Hasura decides.
type Vector = (&'static str, Vec<(&'static str, String)>, Hasura);

/// What Hasura decides, as authgate's answer shows it: the session, or a
/// refusal.
#[derive(Debug, PartialEq)]
enum Hasura {
    Session(Vec<(&'static str, &'static str)>),
    Refused,
}

async fn decided(server: &TestServer, headers: &[(&str, &str)]) -> Hasura {
    let o = outcome(&server.check(headers).await);
    if o.code != 0 {
        return Hasura::Refused;
    }
    let mut session: Vec<(&'static str, &'static str)> = Vec::new();
    for (k, v) in &o.headers {
        if k.starts_with("x-hasura-") {
            session.push((
                Box::leak(k.clone().into_boxed_str()),
                Box::leak(v.clone().into_boxed_str()),
            ));
        }
    }
    session.sort();
    Hasura::Session(session)
}

/// A v2 secret with a namespace path, an audience and the unauthorized
/// role: `exp` optional, no leeway, a missing token is anonymous, a bad
/// one never is.
#[tokio::test]
async fn hasura_v2_jwt_secret_decides_as_hasura() {
    let secret = json!({
        "type": "HS256",
        "key": SECRET,
        "claims_namespace_path": "$.hasura",
        "audience": "app",
    });
    let (code, yaml, differences) = import(&[
        "hasura-v2",
        "--jwt-secret",
        &secret.to_string(),
        "--unauthorized-role",
        "anonymous",
    ]);
    assert_eq!(code, 0, "{differences}");
    assert!(
        differences.lines().all(|l| l.starts_with("difference: ")),
        "{differences}"
    );
    assert!(differences.contains("admin secret"), "{differences}");
    let server = TestServer::start(&yaml).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let now = now();
    let claims = |extra: Value| {
        let mut c = json!({
            "sub": "u1",
            "aud": "app",
            "hasura": {
                "x-hasura-allowed-roles": ["user", "editor"],
                "x-hasura-default-role": "user",
                "x-hasura-user-id": "u1",
                "x-hasura-org": "o1",
                // Hasura's role is the requested or the default one.
                "x-hasura-role": "editor",
                "not-a-session-variable": "dropped",
            },
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let bearer = |c: Value| format!("Bearer {}", sign(Algorithm::HS256, &key, c));
    let user = Hasura::Session(vec![
        ("x-hasura-org", "o1"),
        ("x-hasura-role", "user"),
        ("x-hasura-user-id", "u1"),
    ]);
    let vectors: Vec<Vector> = vec![
        (
            "no exp: v2 accepts it",
            vec![("authorization", bearer(claims(json!({}))))],
            user,
        ),
        (
            "a role among the allowed ones",
            vec![
                ("authorization", bearer(claims(json!({"exp": now + 600})))),
                ("x-hasura-role", "editor".into()),
            ],
            Hasura::Session(vec![
                ("x-hasura-org", "o1"),
                ("x-hasura-role", "editor"),
                ("x-hasura-user-id", "u1"),
            ]),
        ),
        (
            "a role outside them",
            vec![
                ("authorization", bearer(claims(json!({})))),
                ("x-hasura-role", "admin".into()),
            ],
            Hasura::Refused,
        ),
        (
            "expired, and no leeway",
            vec![("authorization", bearer(claims(json!({"exp": now - 5}))))],
            Hasura::Refused,
        ),
        (
            "not yet valid",
            vec![("authorization", bearer(claims(json!({"nbf": now + 30}))))],
            Hasura::Refused,
        ),
        (
            "another audience",
            vec![("authorization", bearer(claims(json!({"aud": "other"}))))],
            Hasura::Refused,
        ),
        (
            "another key",
            vec![(
                "authorization",
                format!(
                    "Bearer {}",
                    sign(
                        Algorithm::HS256,
                        &EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!"),
                        claims(json!({}))
                    )
                ),
            )],
            Hasura::Refused,
        ),
        (
            "a broken token never falls back to the unauthorized role",
            vec![("authorization", "Bearer not.a.jwt".into())],
            Hasura::Refused,
        ),
        (
            "no token: the unauthorized role",
            vec![],
            Hasura::Session(vec![("x-hasura-role", "anonymous")]),
        ),
    ];
    for (what, headers, want) in vectors {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(decided(&server, &headers).await, want, "{what}");
    }
    // The listed difference: Hasura would take the client's session headers
    // for the unauthorized role; authgate removes them.
    assert!(differences.contains("client's `x-hasura-*` headers"));
    assert_eq!(
        decided(&server, &[("x-hasura-user-id", "spoofed")]).await,
        Hasura::Session(vec![("x-hasura-role", "anonymous")])
    );
}

/// A v2 secret with `claims_map` (paths and literals, a default) and a
/// cookie, with an RSA key given as a file.
#[tokio::test]
async fn hasura_v2_claims_map_and_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let secret = json!({
        "type": "RS256",
        "key": fixture("rsa.pub.pem"),
        "header": {"type": "Cookie", "name": "tok"},
        "claims_map": {
            "x-hasura-allowed-roles": {"path": "$.roles"},
            "x-hasura-default-role": {"path": "$.roles[0]"},
            "x-hasura-user-id": {"path": "$.sub"},
            "x-hasura-tenant": {"path": "$.org['tenant-id']", "default": "none"},
            "x-hasura-plan": "free",
        },
    });
    let file = dir.path().join("secret.json");
    std::fs::write(&file, secret.to_string()).unwrap();
    let (code, yaml, differences) =
        import(&["hasura-v2", "--jwt-secret", &format!("@{}", file.display())]);
    assert_eq!(code, 0, "{differences}");
    let server = TestServer::start(&yaml).await;
    let key = EncodingKey::from_rsa_pem(fixture("rsa.key").as_bytes()).unwrap();
    let cookie = |c: Value| format!("theme=dark; tok={}", sign(Algorithm::RS256, &key, c));
    let base = json!({"sub": "u2", "roles": ["reader", "writer"], "exp": now() + 600});
    assert_eq!(
        decided(&server, &[("cookie", &cookie(base.clone()))]).await,
        Hasura::Session(vec![
            ("x-hasura-plan", "free"),
            ("x-hasura-role", "reader"),
            ("x-hasura-tenant", "none"),
            ("x-hasura-user-id", "u2"),
        ])
    );
    let mut with_org = base.clone();
    with_org["org"] = json!({"tenant-id": "acme"});
    assert_eq!(
        decided(
            &server,
            &[("cookie", &cookie(with_org)), ("x-hasura-role", "writer")]
        )
        .await,
        Hasura::Session(vec![
            ("x-hasura-plan", "free"),
            ("x-hasura-role", "writer"),
            ("x-hasura-tenant", "acme"),
            ("x-hasura-user-id", "u2"),
        ])
    );
    // The token in the Authorization header is not where this secret looks.
    let bearer = format!("Bearer {}", sign(Algorithm::RS256, &key, base));
    assert_eq!(
        decided(&server, &[("authorization", &bearer)]).await,
        Hasura::Refused
    );
}

/// DDN v4: a JWT primary mode with `locations`, and a `noAuth` alternative
/// the client selects with `X-Hasura-Auth-Mode`, as DDN does; without the
/// header only the primary mode applies.
#[tokio::test]
async fn ddn_auth_config_decides_as_ddn() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth-config.hml");
    std::fs::write(
        &file,
        format!(
            r#"kind: AuthConfig
version: v4
definition:
  mode:
    jwt:
      key:
        fixed:
          algorithm: HS256
          key: {{value: "{SECRET}"}}
      tokenLocation: {{type: BearerAuthorization}}
      claimsConfig:
        locations:
          x-hasura-default-role: {{path: {{path: /app/role}}}}
          x-hasura-allowed-roles: {{path: {{path: /app/roles}}}}
          x-hasura-user-id: {{path: {{path: /sub}}}}
          x-hasura-region: {{literal: eu}}
  alternativeModes:
    - identifier: anon
      config:
        noAuth: {{role: guest, sessionVariables: {{}}}}
"#
        ),
    )
    .unwrap();
    let (code, yaml, differences) = import(&["ddn", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{differences}");
    assert!(!differences.contains("admin secret"));
    // The file itself loads too, as the same config.
    let direct = TestServer::start(&std::fs::read_to_string(&file).unwrap()).await;
    let imported = TestServer::start(&yaml).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let token = sign(
        Algorithm::HS256,
        &key,
        json!({"sub": "u3", "exp": now() + 600, "app": {"role": "user", "roles": ["user"]}}),
    );
    let bearer = format!("Bearer {token}");
    for server in [&direct, &imported] {
        assert_eq!(
            decided(server, &[("authorization", &bearer)]).await,
            Hasura::Session(vec![
                ("x-hasura-region", "eu"),
                ("x-hasura-role", "user"),
                ("x-hasura-user-id", "u3"),
            ])
        );
        assert_eq!(
            decided(server, &[("x-hasura-auth-mode", "anon")]).await,
            Hasura::Session(vec![("x-hasura-role", "guest")])
        );
        // No header: the primary mode only, and it finds no token.
        assert_eq!(decided(server, &[]).await, Hasura::Refused);
        // DDN requires `exp`.
        let no_exp = sign(
            Algorithm::HS256,
            &key,
            json!({"sub": "u3", "app": {"role": "user", "roles": ["user"]}}),
        );
        assert_eq!(
            decided(server, &[("authorization", &format!("Bearer {no_exp}"))]).await,
            Hasura::Refused
        );
    }
}

/// Exit codes and streams: unusable input is exit 2 with the reason on
/// stderr and nothing on stdout.
#[test]
fn import_exit_codes() {
    let (code, out, err) = import(&["hasura-v2"]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(err.contains("error: nothing to import"), "{err}");
    let (code, out, err) = import(&["hasura-v2", "--jwt-secret", r#"{"type":"ES512","key":"k"}"#]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(
        err.contains("ES512 is not supported") || err.contains("no usable mode"),
        "{err}"
    );
    let (code, _, err) = import(&[
        "hasura-v2",
        "--jwt-secret",
        r#"{"type":"RS256","key":"not a pem"}"#,
    ]);
    assert_eq!(code, 2, "a key that cannot load: {err}");
    assert!(err.contains("does not load"), "{err}");
    let (code, out, err) = import(&["ddn", "/nonexistent/auth.hml"]);
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let relyauth = dir.path().join("auth.yaml");
    std::fs::write(&relyauth, hs256_config("")).unwrap();
    let (code, _, err) = import(&["ddn", relyauth.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a DDN AuthConfig"), "{err}");
}

/// DDN v4 with a `noAuth` primary and a JWT alternative: the alternative
/// runs only when selected, so a token sent without the header still gets
/// the primary's anonymous session, as in DDN.
#[tokio::test]
async fn ddn_alternative_modes_run_only_when_selected() {
    let yaml = format!(
        r#"kind: AuthConfig
version: v4
definition:
  mode:
    noAuth: {{role: guest, sessionVariables: {{}}}}
  alternativeModes:
    - identifier: users
      config:
        jwt:
          key: {{fixed: {{algorithm: HS256, key: {{value: "{SECRET}"}}}}}}
          tokenLocation: {{type: BearerAuthorization}}
          claimsConfig:
            namespace: {{claimsFormat: Json, location: "/https:~1~1hasura.io~1jwt~1claims"}}
"#
    );
    let server = TestServer::start(&yaml).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let token = sign(
        Algorithm::HS256,
        &key,
        json!({
            "exp": now() + 600,
            "https://hasura.io/jwt/claims": {
                "x-hasura-allowed-roles": ["user", "editor"],
                "x-hasura-default-role": "user",
                // A role claim is not how Hasura picks the role.
                "x-hasura-role": "editor",
                "x-hasura-user-id": "u4",
            },
        }),
    );
    let bearer = format!("Bearer {token}");
    let guest = Hasura::Session(vec![("x-hasura-role", "guest")]);
    assert_eq!(decided(&server, &[]).await, guest);
    assert_eq!(decided(&server, &[("authorization", &bearer)]).await, guest);
    assert_eq!(
        decided(
            &server,
            &[("authorization", &bearer), ("x-hasura-auth-mode", "users")]
        )
        .await,
        Hasura::Session(vec![("x-hasura-role", "user"), ("x-hasura-user-id", "u4")])
    );
    assert_eq!(
        decided(&server, &[("x-hasura-auth-mode", "users")]).await,
        Hasura::Refused,
        "selected, and no token"
    );
}
