//! Shared test support: fixtures, token minting, a real JWKS HTTP server,
//! an in-process authgate on 127.0.0.1:0 and an ext_authz client built from
//! Envoy's protos (`envoy-types`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::config::core::v3::{
    HeaderMap as PbHeaderMap, HeaderValue, SocketAddress,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub mod envoy;
pub mod otlp;
pub mod process;

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("tests/fixtures").join(name))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The repository's root (where `Cargo.lock` is), for tests of any package.
pub fn repo_root() -> std::path::PathBuf {
    let mut p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !p.join("Cargo.lock").exists() {
        assert!(
            p.pop(),
            "no Cargo.lock above {}",
            env!("CARGO_MANIFEST_DIR")
        );
    }
    p
}

/// A port free at the moment (for processes that must be told their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The PEM fixture holding the private key for `alg`.
pub fn private_key(alg: Algorithm) -> String {
    match alg {
        Algorithm::ES256 => fixture("ec256.key"),
        Algorithm::ES384 => fixture("ec384.key"),
        Algorithm::EdDSA => fixture("ed25519.key"),
        _ => fixture("rsa.key"),
    }
}

pub fn encoding_key(alg: Algorithm, pem_or_secret: &str) -> EncodingKey {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(pem_or_secret.as_bytes())
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            EncodingKey::from_ec_pem(pem_or_secret.as_bytes()).unwrap()
        }
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem_or_secret.as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(pem_or_secret.as_bytes()).unwrap(),
    }
}

/// Signs `claims` with `alg`; `exp` defaults to an hour from now.
pub fn mint(alg: Algorithm, key: &str, mut claims: Value, kid: Option<&str>) -> String {
    let obj = claims.as_object_mut().unwrap();
    obj.entry("exp").or_insert(json!(now() + 3600));
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &encoding_key(alg, key)).unwrap()
}

/// Hasura-style claims under the default namespace.
pub fn hasura_claims(user: &str, roles: &[&str], default_role: &str) -> Value {
    json!({
        "sub": user,
        "claims.jwt.hasura.io": {
            "x-hasura-allowed-roles": roles,
            "x-hasura-default-role": default_role,
            "x-hasura-user-id": user,
        }
    })
}

/// A public JWK for the private key `pem` with `kid`.
pub fn public_jwk(alg: Algorithm, pem: &str, kid: &str) -> Value {
    let key = encoding_key(alg, pem);
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(&jwk).unwrap()
}

pub fn jwks_of(keys: Vec<Value>) -> String {
    let set: JwkSet = serde_json::from_value(json!({ "keys": keys })).unwrap();
    serde_json::to_string(&set).unwrap()
}

/// What the JWKS server answers; tests change it between requests.
pub struct JwksState {
    pub status: u16,
    pub body: String,
    pub cache_control: Option<String>,
    pub delay: Duration,
    /// A header every request must carry (else 401), as key servers that
    /// want a credential do.
    pub required_header: Option<(String, String)>,
    /// The `issuer` its OpenID discovery document names (default: the
    /// server's own base URL).
    pub discovery_issuer: Option<String>,
    /// The path the keys are served at (`jwks_uri`); other key paths 404.
    pub jwks_path: String,
}

/// A real HTTP JWKS endpoint on 127.0.0.1.
#[derive(Clone)]
pub struct JwksServer {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<JwksState>>,
    pub hits: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(body: String) -> Self {
        let state = Arc::new(Mutex::new(JwksState {
            status: 200,
            body,
            cache_control: None,
            delay: Duration::ZERO,
            required_header: None,
            discovery_issuer: None,
            jwks_path: "/jwks.json".into(),
        }));
        let hits = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let discovery = {
            let state = state.clone();
            move || {
                let base = format!("http://{addr}");
                let s = state.lock().unwrap();
                let issuer = s.discovery_issuer.clone().unwrap_or_else(|| base.clone());
                axum::Json(json!({
                    "issuer": issuer,
                    "jwks_uri": format!("{base}{}", s.jwks_path),
                    "id_token_signing_alg_values_supported": ["RS256"],
                }))
            }
        };
        let app = Router::new()
            .route("/jwks.json", get(serve_jwks))
            .route("/keys/set.json", get(serve_jwks))
            .route(
                "/.well-known/openid-configuration",
                get(move || std::future::ready(discovery())),
            )
            .with_state((state.clone(), hits.clone()));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer { addr, state, hits }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Its base URL, the issuer its discovery document names by default.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set(&self, status: u16, body: String) {
        let mut s = self.state.lock().unwrap();
        s.status = status;
        s.body = body;
    }
}

async fn serve_jwks(
    State((state, hits)): State<(Arc<Mutex<JwksState>>, Arc<AtomicUsize>)>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    let (status, body, cc, delay, required) = {
        let s = state.lock().unwrap();
        if uri.path() != s.jwks_path {
            return (StatusCode::NOT_FOUND, "no key set here").into_response();
        }
        (
            s.status,
            s.body.clone(),
            s.cache_control.clone(),
            s.delay,
            s.required_header.clone(),
        )
    };
    if let Some((name, value)) = required
        && headers.get(&name).and_then(|v| v.to_str().ok()) != Some(value.as_str())
    {
        return (StatusCode::UNAUTHORIZED, "credentials required").into_response();
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    if let Some(cc) = cc {
        resp.headers_mut()
            .insert("cache-control", cc.parse().unwrap());
    }
    resp
}

/// authgate running in-process on 127.0.0.1:0.
pub struct TestServer {
    pub running: authgate::server::Running,
}

impl TestServer {
    pub async fn start(yaml: &str) -> Self {
        Self::start_with_env(yaml, &[]).await
    }

    /// Starts with `{env: NAME}` resolved from `vars` (then the process).
    pub async fn start_with_env(yaml: &str, vars: &[(&str, &str)]) -> Self {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |name: &str| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(name).ok())
        };
        let config = authgate::config::parse(yaml, &env)
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let shared = authgate::server::Shared::new(config, None).await.unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let running = authgate::server::start(shared, any, any).await.unwrap();
        TestServer { running }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.running.grpc_addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.running.http_addr, path)
    }

    pub async fn client(&self) -> AuthorizationClient<tonic::transport::Channel> {
        AuthorizationClient::connect(self.grpc_url()).await.unwrap()
    }

    /// One Check with `headers` in `attributes.request.http.headers`.
    pub async fn check(&self, headers: &[(&str, &str)]) -> CheckResponse {
        self.check_request(check_request(headers, "/graphql")).await
    }

    pub async fn check_request(&self, req: CheckRequest) -> CheckResponse {
        self.client()
            .await
            .check(req)
            .await
            .expect("Check never fails as a call")
            .into_inner()
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.running.shared.is_ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server not ready after 5 s");
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.http_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub fn check_request(headers: &[(&str, &str)], path: &str) -> CheckRequest {
    let map: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(envoy_types::pb::envoy::config::core::v3::Address {
                    address: Some(Address::SocketAddress(SocketAddress {
                        address: "203.0.113.7".into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: path.into(),
                    headers: map,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// A Check with headers only in `header_map` (Envoy's `encode_raw_headers`).
pub fn check_request_raw(headers: &[(&str, &[u8])]) -> CheckRequest {
    let mut req = check_request(&[], "/graphql");
    let http = req
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    http.header_map = Some(PbHeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: String::new(),
                raw_value: v.to_vec(),
            })
            .collect(),
    });
    req
}

/// What a CheckResponse says, in a shape tests can assert on.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub http_status: i32,
    pub headers: HashMap<String, String>,
    pub header_options: Vec<(String, String, Option<bool>, i32)>,
    /// Headers sent with `keep_empty_value: true`.
    pub kept_empty: Vec<String>,
    pub removed: Vec<String>,
    pub body: String,
    pub metadata: HashMap<String, String>,
}

impl Outcome {
    pub fn reason(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

#[allow(deprecated)]
pub fn outcome(r: &CheckResponse) -> Outcome {
    let code = r.status.as_ref().map(|s| s.code).unwrap_or(-1);
    let mut o = Outcome {
        code,
        http_status: 0,
        headers: HashMap::new(),
        header_options: Vec::new(),
        kept_empty: Vec::new(),
        removed: Vec::new(),
        body: String::new(),
        metadata: HashMap::new(),
    };
    if let Some(md) = &r.dynamic_metadata {
        for (k, v) in &md.fields {
            use envoy_types::pb::google::protobuf::value::Kind;
            let s = match &v.kind {
                Some(Kind::StringValue(s)) => s.clone(),
                Some(Kind::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            o.metadata.insert(k.clone(), s);
        }
    }
    match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => {
            o.http_status = 200;
            for h in &ok.headers {
                let hv = h.header.as_ref().unwrap();
                o.headers.insert(hv.key.clone(), hv.value.clone());
                if h.keep_empty_value {
                    o.kept_empty.push(hv.key.clone());
                }
                o.header_options.push((
                    hv.key.clone(),
                    hv.value.clone(),
                    h.append.map(|b| b.value),
                    h.append_action,
                ));
            }
            o.removed = ok.headers_to_remove.clone();
        }
        Some(HttpResponse::DeniedResponse(d)) => {
            o.http_status = d.status.as_ref().map(|s| s.code).unwrap_or(0);
            for h in &d.headers {
                let hv = h.header.as_ref().unwrap();
                o.headers.insert(hv.key.clone(), hv.value.clone());
            }
            o.body = d.body.clone();
        }
        _ => {}
    }
    o
}

pub const SECRET: &str = "a-string-secret-at-least-256-bits-long-for-tests";

/// A YAML config with one HS256 jwt mode plus `extra` modes.
pub fn hs256_config(extra: &str) -> String {
    format!(
        r#"
version: v1
kind: RelyAuth
definition:
  modes:
    - id: users
      mode: jwt
      tokenLocation: {{in: header, name: Authorization, scheme: bearer}}
      key: {{algorithm: HS256, key: {{value: "{SECRET}"}}}}
      claimsConfig:
        namespace: {{location: '"claims.jwt.hasura.io"', claimsFormat: Json}}
{extra}
"#
    )
}

/// nhost's `auth.user_security_keys`, in hasura-auth's layout (the
/// statements that create it in an empty database).
pub const NHOST_SECURITY_KEYS: [&str; 2] = [
    "CREATE SCHEMA auth",
    "CREATE TABLE auth.user_security_keys (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        user_id uuid NOT NULL,
        credential_id text NOT NULL UNIQUE,
        credential_public_key bytea,
        counter bigint NOT NULL DEFAULT 0,
        transports varchar(255) NOT NULL DEFAULT '',
        nickname text
    )",
];

/// The admin URL of a PostgreSQL server for the store tests:
/// `AUTHGATE_TEST_POSTGRES_URL` when set, else a throwaway cluster this test
/// process starts once (Debian's `initdb` and `postgres`, in a temporary
/// directory, on a free port of 127.0.0.1, with a random password). A
/// watchdog stops the cluster and removes its directory when the test
/// process is gone, so nothing on the machine changes.
pub fn postgres_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        std::env::var("AUTHGATE_TEST_POSTGRES_URL").unwrap_or_else(|_| start_postgres())
    })
    .clone()
}

/// Where PostgreSQL's server programs are: `pg_config --bindir`, else the
/// newest `/usr/lib/postgresql/<version>/bin` (Debian keeps them off PATH).
fn postgres_bindir() -> std::path::PathBuf {
    let has_initdb = |dir: &std::path::Path| dir.join("initdb").is_file();
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let dir = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return dir;
        }
    }
    let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_initdb(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).unwrap_or_else(|| {
        panic!(
            "the PostgreSQL tests need PostgreSQL's server programs (initdb, postgres): \
             install Debian's `postgresql` package (bash scripts/test-deps.sh does), \
             or set AUTHGATE_TEST_POSTGRES_URL to an admin URL of a running server"
        )
    })
}

fn start_postgres() -> String {
    let bin = postgres_bindir();
    let port = free_port();
    let password = uuid::Uuid::new_v4().simple().to_string();
    // PostgreSQL refuses to run as root: as root, the cluster belongs to
    // the `postgres` user the Debian package creates.
    let script = r#"
set -e
bin=$1; port=$2; watched=$3; password=$4
dir=$(mktemp -d "${TMPDIR:-/tmp}/authgate-test-pg.XXXXXX")
printf '%s\n' "$password" > "$dir/password"
"$bin/initdb" -D "$dir/data" -U postgres --auth-host=scram-sha-256 --auth-local=peer \
  --pwfile="$dir/password" -E UTF8 --no-sync > "$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1; }
"$bin/postgres" -D "$dir/data" -p "$port" -k "$dir" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
  > "$dir/server.log" 2>&1 < /dev/null &
server=$!
( while [ -d "/proc/$watched" ]; do sleep 1; done
  kill -INT "$server" 2>/dev/null; while kill -0 "$server" 2>/dev/null; do sleep 0.2; done
  rm -rf "$dir" ) > /dev/null 2>&1 < /dev/null &
for _ in $(seq 150); do
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && exit 0
  kill -0 "$server" 2>/dev/null || break
  sleep 0.2
done
cat "$dir/server.log" >&2
exit 1
"#;
    let args = [
        "-c",
        script,
        "sh",
        bin.to_str().expect("UTF-8 path"),
        &port.to_string(),
        &std::process::id().to_string(),
        &password,
    ];
    let is_root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let mut cmd = if is_root {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh"]);
        c
    } else {
        std::process::Command::new("sh")
    };
    let out = cmd
        .args(args)
        .current_dir("/")
        .output()
        .unwrap_or_else(|e| panic!("cannot start a PostgreSQL cluster: {e}"));
    assert!(
        out.status.success(),
        "starting a PostgreSQL cluster with {} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres")
}
