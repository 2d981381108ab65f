//! The `authgate` binary as a user runs it: validate, check, token, serve,
//! signals and exit codes.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::process::*;
use common::*;
use serde_json::Value;

fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version() {
    let (code, out, _) = run(authgate().arg("--version"));
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
}

#[test]
fn validate_prints_a_summary_or_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(&dir, "good.yaml", &hs256_config(""));
    let (code, out, err) = run(authgate().args(["validate", "--config", &good]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("configuration OK: 1 mode: jwt (users)"),
        "{out}"
    );
    let bad = write_config(
        &dir,
        "bad.yaml",
        r#"
version: v1
kind: RelyAuth
definition:
  modes:
    - mode: jwt
      key: {algorithm: RS256, key: {value: "hunter2-very-secret"}}
      claimsConfig: {namespace: {location: "a[", claimsFormat: Json}}
      tokenLocaton: {in: header}
    - mode: apiKey
      tokenLocation: {in: header, name: X-Key}
      value: {env: AUTHGATE_TEST_UNSET_VAR}
      sessionVariables: {x-hasura-role: {value: svc}}
"#,
    );
    let (code, out, err) = run(authgate().args(["validate", "--config", &bad]));
    assert_eq!(code, 1);
    assert!(out.is_empty(), "problems go to stderr: {out}");
    for expected in [
        "definition.modes[0].key.key:",
        "definition.modes[0].claimsConfig.namespace.location: invalid JMESPath",
        "definition.modes[0].tokenLocaton: unknown key `tokenLocaton` (did you mean `tokenLocation`?)",
        "definition.modes[1].value: environment variable `AUTHGATE_TEST_UNSET_VAR` is not set",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!err.contains("hunter2"), "secret leaked:\n{err}");
    // Environment fallbacks for the config path.
    let (code, _, _) = run(authgate().arg("validate").env("AUTHGATE_CONFIG", &good));
    assert_eq!(code, 0);
    let (code, _, _) = run(authgate()
        .arg("validate")
        .env("RELY_AUTH_CONFIG_PATH", &good));
    assert_eq!(code, 0);
    let (code, _, err) = run(authgate().args(["validate", "--config", "/nonexistent/auth.yaml"]));
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}

/// The error lines of `validate`'s output.
fn problems(err: &str) -> Vec<&str> {
    err.lines().filter(|l| l.contains(": error: ")).collect()
}

#[test]
fn validate_refuses_duplicate_keys_with_their_lines() {
    let dir = tempfile::tempdir().unwrap();
    // Two x-hasura-role entries, then a second definition block.
    let yaml = write_config(
        &dir,
        "dup.yaml",
        "version: v1
kind: RelyAuth
definition:
  modes:
    - mode: noAuth
      sessionVariables:
        x-hasura-role: {value: anonymous}
        x-hasura-role: {value: admin}
definition:
  modes:
    - mode: noAuth
      sessionVariables: {x-hasura-role: {value: admin}}
",
    );
    let (code, out, err) = run(authgate().args(["validate", "--config", &yaml]));
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        problems(&err),
        [
            format!(
                "{yaml}:8:9: error: definition.modes[0].sessionVariables.x-hasura-role: duplicate key `x-hasura-role` (a mapping takes each key once; the first is at 7:9)"
            ),
            format!(
                "{yaml}:9:1: error: definition: duplicate key `definition` (a mapping takes each key once; the first is at 3:1)"
            ),
        ],
        "{err}"
    );
    // The same in a JSON file.
    let json = write_config(
        &dir,
        "dup.json",
        r#"{"definition": {"modes": [{"mode": "noAuth",
  "sessionVariables": {"x-hasura-role": {"value": "anonymous"},
                       "x-hasura-role": {"value": "admin"}}}]}}
"#,
    );
    let (code, _, err) = run(authgate().args(["validate", "--config", &json]));
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        problems(&err),
        [format!(
            "{json}:3:24: error: definition.modes[0].sessionVariables.x-hasura-role: duplicate key `x-hasura-role` (a mapping takes each key once; the first is at 2:24)"
        )],
        "{err}"
    );
}

#[test]
fn validate_reads_json_files_as_json_and_reports_syntax_errors_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"version": "v1", "kind": "RelyAuth", "definition": {"modes": [
  {"mode": "noAuth", "sessionVariables": {"x-hasura-role": {"value": "anonymous"}}}
]}}
"#;
    let ok = write_config(&dir, "ok.json", good);
    let (code, out, err) = run(authgate().args(["validate", "--config", &ok]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
    // A trailing comma is valid YAML but not JSON.
    let trailing = good.replace(r#""anonymous"}}}"#, r#""anonymous"}}},"#);
    let as_yaml = write_config(&dir, "trailing.yaml", &trailing);
    let (code, _, err) = run(authgate().args(["validate", "--config", &as_yaml]));
    assert_eq!(code, 0, "YAML's flow style allows the comma: {err}");
    let as_json = write_config(&dir, "trailing.json", &trailing);
    let (code, _, err) = run(authgate().args(["validate", "--config", &as_json]));
    assert_eq!(code, 1);
    assert_eq!(
        problems(&err),
        [format!(
            "{as_json}:3:1: error: (root): not valid JSON: trailing comma"
        )],
        "{err}"
    );
    // A broken YAML file: where the parser stopped.
    let broken = write_config(
        &dir,
        "broken.yaml",
        "version: v1\ndefinition:\n  modes: [\n",
    );
    let (code, _, err) = run(authgate().args(["validate", "--config", &broken]));
    assert_eq!(code, 1);
    let lines = problems(&err);
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with(&format!("{broken}:4:1: error: (root): not valid YAML: ")),
        "{err}"
    );
}

#[test]
fn validate_lists_problems_in_file_order_and_names_modes_by_id() {
    let dir = tempfile::tempdir().unwrap();
    // apiKey modes are read before jwt and noAuth (RelyAuth's order); the
    // problems still come out in the order of the file.
    let bad = write_config(
        &dir,
        "bad.yaml",
        "version: v1
kind: RelyAuth
definition:
  modes:
    - mode: noAuth
      sessionVariables: {x-hasura-role: {value: anonymous}}
      rol: anonymous
    - mode: jwt
      id: main-jwt
      key: {algorithm: RS257, key: {value: x}}
      claimsConfig: {}
    - mode: apiKey
      tokenLocation: {in: header, name: X-Key}
      value: {value: k}
      sessionVariables: {x-hasura-role: {value: svc}}
      extra: 1
",
    );
    let (code, _, err) = run(authgate().args(["validate", "--config", &bad]));
    assert_eq!(code, 1);
    let got: Vec<String> = problems(&err)
        .iter()
        .map(|l| {
            let (at, rest) = l.split_once(": error: ").unwrap();
            format!("{at} {}", rest.split_once(": ").unwrap().0)
        })
        .collect();
    assert_eq!(
        got,
        [
            format!("{bad}:7:7 definition.modes[0].rol"),
            format!("{bad}:10:13 definition.modes[main-jwt].key.algorithm"),
            format!("{bad}:11:7 definition.modes[main-jwt].claimsConfig"),
            format!("{bad}:16:7 definition.modes[2].extra"),
        ],
        "{err}"
    );
    assert!(err.contains(&format!("{bad}: invalid: 4 errors")), "{err}");
}

#[test]
fn validate_strict_turns_warnings_into_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A short HMAC secret and a JWKS over plain http: valid, with warnings.
    let cfg = write_config(
        &dir,
        "warn.yaml",
        r#"definition:
  modes:
    - mode: jwt
      id: short
      key: {algorithm: HS256, key: {value: "short-secret"}}
      claimsConfig: {namespace: {location: '"claims.jwt.hasura.io"'}}
    - mode: jwt
      id: remote
      key: {algorithm: RS256, jwkFromUrl: {value: "http://issuer.test/jwks.json"}}
      claimsConfig: {namespace: {location: '"claims.jwt.hasura.io"'}}
"#,
    );
    let (code, out, err) = run(authgate().args(["validate", "--config", &cfg]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains(": warning: ")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings[0].starts_with(&format!(
            "{cfg}:5:31: warning: definition.modes[short].key.key: the HMAC secret is 12 bytes"
        )),
        "{err}"
    );
    assert!(
        warnings[1].starts_with(&format!(
            "{cfg}:9:31: warning: definition.modes[remote].key.jwkFromUrl: JWKS fetched over plain http"
        )),
        "{err}"
    );
    let (code, out, err) = run(authgate().args(["validate", "--strict", "--config", &cfg]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(problems(&err).len(), 2, "{err}");
    assert!(!err.contains(": warning: "), "{err}");
    assert!(err.contains("invalid under --strict: 2 warnings"), "{err}");
    // --strict on a file without warnings, and a usage error.
    let clean = write_config(&dir, "clean.yaml", &hs256_config(""));
    let (code, _, err) = run(authgate().args(["validate", "--strict", "--config", &clean]));
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = run(authgate().args(["validate", "--strcit", "--config", &clean]));
    assert_eq!(code, 2);
}

#[test]
fn token_then_check_offline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, "auth.yaml", &hs256_config(""));
    let claims = r#"{"sub":"u-7","claims.jwt.hasura.io":{"x-hasura-allowed-roles":["user","editor"],"x-hasura-default-role":"user","x-hasura-user-id":"u-7"}}"#;
    let (code, token, err) = run(authgate().args([
        "token", "--alg", "HS256", "--key", SECRET, "--claims", claims,
    ]));
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_owned();
    assert_eq!(token.split('.').count(), 3);
    let auth = format!("Authorization: Bearer {token}");
    let (code, out, err) = run(authgate().args([
        "check",
        "--config",
        &cfg,
        "-H",
        &auth,
        "-H",
        "x-hasura-role: editor",
    ]));
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["allowed"], true);
    assert_eq!(v["status"], 200);
    assert_eq!(v["headers"]["x-hasura-role"], "editor");
    assert_eq!(v["session"]["x-hasura-user-id"], "u-7");
    let (code, out, _) = run(authgate().args([
        "check",
        "--config",
        &cfg,
        "-H",
        &auth,
        "-H",
        "x-hasura-role: admin",
    ]));
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            v["allowed"].clone(),
            v["status"].clone(),
            v["reason"].clone()
        ),
        (
            Value::Bool(false),
            Value::from(403),
            Value::from("role_not_allowed")
        )
    );
    let (code, out, _) = run(authgate().args(["check", "--config", &cfg]));
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["reason"], "missing_credentials");
    assert_eq!(v["headers"]["www-authenticate"], "Bearer");
    // iat and exp are set from --ttl.
    let (_, short, _) = run(authgate().args([
        "token", "--alg", "HS256", "--key", SECRET, "--claims", "{}", "--ttl", "60",
    ]));
    let payload = short.trim().split('.').nth(1).unwrap().to_owned();
    use base64::Engine as _;
    let p: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(p["exp"].as_i64().unwrap() - p["iat"].as_i64().unwrap(), 60);
}

#[test]
fn token_with_private_key_files() {
    let dir = tempfile::tempdir().unwrap();
    for (alg, key, public) in [
        ("RS256", "rsa.key", "rsa.pub.pem"),
        ("ES256", "ec256.key", "ec256.pub.pem"),
        ("EdDSA", "ed25519.key", "ed25519.pub.pem"),
    ] {
        let key_path = format!("@{}/tests/fixtures/{key}", env!("CARGO_MANIFEST_DIR"));
        let (code, token, err) = run(authgate().args([
            "token",
            "--alg",
            alg,
            "--key",
            &key_path,
            "--kid",
            "k1",
            "--claims",
            r#"{"h":{"x-hasura-role":"r"}}"#,
        ]));
        assert_eq!(code, 0, "{alg}: {err}");
        let cfg = write_config(
            &dir,
            &format!("{alg}.yaml"),
            &format!(
                "definition:\n  modes:\n    - mode: jwt\n      key: {{algorithm: {alg}, key: {{value: {}}}}}\n      claimsConfig: {{namespace: {{location: h}}}}\n",
                serde_json::to_string(&fixture(public)).unwrap()
            ),
        );
        let auth = format!("authorization: Bearer {}", token.trim());
        let (code, out, err) = run(authgate().args(["check", "--config", &cfg, "-H", &auth]));
        assert_eq!(code, 0, "{alg}: {out}{err}");
    }
    let (code, _, err) = run(authgate().args([
        "token",
        "--alg",
        "RS256",
        "--key",
        "not a pem",
        "--claims",
        "{}",
    ]));
    assert_ne!(code, 0);
    assert!(err.contains("not a private key PEM"), "{err}");
    let (code, _, err) =
        run(authgate().args(["token", "--alg", "none", "--key", "x", "--claims", "{}"]));
    assert_ne!(code, 0);
    assert!(err.contains("unsupported algorithm"), "{err}");
}

#[tokio::test]
async fn serve_answers_reloads_on_sighup_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        "auth.yaml",
        "definition:\n  modes:\n    - {mode: noAuth, sessionVariables: {x-hasura-role: {value: anonymous}}}\n",
    );
    let (mut child, grpc, http) = serve(&cfg, &[]);
    let health = reqwest::get(format!("http://{http}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let check = reqwest::get(format!("http://{http}/check")).await.unwrap();
    assert_eq!(check.headers()["x-hasura-role"], "anonymous");
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let r = client
        .check(check_request(&[], "/"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&r).headers["x-hasura-role"], "anonymous");

    // SIGHUP with a broken file keeps the old config.
    std::fs::write(&cfg, "definition: {modes: [{mode: nope}]}").unwrap();
    signal(&child, "-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let check = reqwest::get(format!("http://{http}/check")).await.unwrap();
    assert_eq!(check.headers()["x-hasura-role"], "anonymous");
    // SIGHUP with a valid change swaps it in.
    std::fs::write(&cfg, "definition:\n  modes:\n    - {mode: noAuth, sessionVariables: {x-hasura-role: {value: guest}}}\n").unwrap();
    signal(&child, "-HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let check = reqwest::get(format!("http://{http}/check")).await.unwrap();
    assert_eq!(check.headers()["x-hasura-role"], "guest");
    // A change to the file alone is picked up (polled every 2 s).
    std::fs::write(
        &cfg,
        "definition:\n  modes:\n    - {mode: noAuth, sessionVariables: {x-hasura-role: {value: visitor}}}\n",
    )
    .unwrap();
    let mut role = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let check = reqwest::get(format!("http://{http}/check")).await.unwrap();
        role = check.headers()["x-hasura-role"]
            .to_str()
            .unwrap()
            .to_owned();
        if role == "visitor" {
            break;
        }
    }
    assert_eq!(role, "visitor", "file change not reloaded");
    // Deleting the file keeps the running config.
    std::fs::remove_file(&cfg).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let check = reqwest::get(format!("http://{http}/check")).await.unwrap();
    assert_eq!(check.headers()["x-hasura-role"], "visitor");
    let m = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors: u64 = m
        .lines()
        .find(|l| l.starts_with(r#"authgate_config_reloads_total{result="error"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // The broken file (seen by SIGHUP and the watcher: one attempt) and the
    // deleted file.
    assert_eq!(errors, 2, "{m}");

    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child), 0);
}

#[test]
fn serve_refuses_an_invalid_config_and_sigint_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_config(
        &dir,
        "bad.yaml",
        "definition: {modes: [{mode: jwt}], extra: 1}",
    );
    let (code, out, err) = run(authgate().args([
        "serve",
        "--config",
        &bad,
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ]));
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("definition.extra: unknown key"), "{err}");
    assert!(
        err.contains("definition.modes[0]: missing required key `key`"),
        "{err}"
    );

    let good = write_config(&dir, "good.yaml", &hs256_config(""));
    let (mut child, _, _) = serve(&good, &[("AUTHGATE_LOG_FORMAT", "json")]);
    signal(&child, "-INT");
    assert_eq!(wait_exit(&mut child), 0);
}

#[tokio::test]
async fn reload_keeps_jwks_and_logs_never_show_tokens() {
    let rsa = private_key(jsonwebtoken::Algorithm::RS256);
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(
        jsonwebtoken::Algorithm::RS256,
        &rsa,
        "k1",
    )]))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = |issuer: &str| {
        format!(
            "definition:\n  modes:\n    - id: idp\n      mode: jwt\n      issuer: {issuer}\n      key: {{jwkFromUrl: {{value: \"{}\"}}}}\n      claimsConfig: {{namespace: {{location: h}}}}\n",
            jwks.url()
        )
    };
    let cfg = write_config(&dir, "auth.yaml", &config("https://a"));
    let (mut child, _grpc, http, logs) = serve_with_logs(&cfg, &[]);
    let mut ready = false;
    for _ in 0..100 {
        if reqwest::get(format!("http://{http}/readyz"))
            .await
            .unwrap()
            .status()
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready);
    assert_eq!(jwks.hits(), 1);
    // A reload with the same JWKS URL keeps the cache: no refetch, still ready.
    std::fs::write(&cfg, config("https://b")).unwrap();
    signal(&child, "-HUP");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        reqwest::get(format!("http://{http}/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(jwks.hits(), 1, "the JWKS cache survived the reload");
    let token = mint(
        jsonwebtoken::Algorithm::RS256,
        &rsa,
        serde_json::json!({"iss": "https://b", "h": {"x-hasura-role": "r"}}),
        Some("k1"),
    );
    let resp = reqwest::Client::new()
        .get(format!("http://{http}/check"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the new issuer applies");
    // A denial is logged once, with reason, mode and request id, never the token.
    let forged = format!("{}x", token);
    let resp = reqwest::Client::new()
        .get(format!("http://{http}/check"))
        .bearer_auth(&forged)
        .header("x-request-id", "req-123")
        .header("cookie", "session=cookie-secret-value")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child), 0);
    let logs = logs.lock().unwrap().join("\n");
    let denial = logs
        .lines()
        .find(|l| l.contains("\"denied\""))
        .unwrap_or_else(|| panic!("no denial line in:\n{logs}"));
    let v: Value = serde_json::from_str(denial).unwrap();
    assert_eq!(
        (
            v["reason"].as_str(),
            v["mode"].as_str(),
            v["request_id"].as_str()
        ),
        (Some("invalid_token"), Some("jwt"), Some("req-123"))
    );
    assert!(!logs.contains(&token[..40]), "a token was logged:\n{logs}");
    assert!(
        !logs.contains("cookie-secret-value"),
        "a cookie was logged:\n{logs}"
    );
}
