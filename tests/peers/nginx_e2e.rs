//! End to end through a real nginx (Debian's `nginx` with
//! `libnginx-mod-http-headers-more-filter`) running `envoy/nginx/nginx.conf`:
//! nginx asks authgate's HTTP `/check` with `auth_request` and forwards
//! allowed requests to a test upstream that records what it receives.
//!
//! nginx is found at `$NGINX_BIN`, `/usr/sbin/nginx` or on `PATH`; when it or
//! the headers-more module is missing the test fails (it does not skip):
//! `.ci/run` installs both.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::any;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const INSTALL: &str =
    "apt-get install -y nginx libnginx-mod-http-headers-more-filter (.ci/run does this)";

fn nginx_binary() -> PathBuf {
    if let Ok(p) = std::env::var("NGINX_BIN") {
        return PathBuf::from(p);
    }
    let debian = PathBuf::from("/usr/sbin/nginx");
    if debian.exists() {
        return debian;
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v nginx"]).output() {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx not found: set NGINX_BIN or {INSTALL}");
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// An upstream that records every request and answers 200.
async fn upstream() -> (SocketAddr, Log) {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    async fn handle(
        State(log): State<Log>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> &'static str {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        log.lock().unwrap().push(Seen {
            method: method.to_string(),
            uri: uri.to_string(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        "upstream ok"
    }
    let app = Router::new().fallback(any(handle)).with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, log)
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `envoy/nginx/nginx.conf` with its addresses pointed at this test's processes.
fn config(listen: u16, authgate: SocketAddr, upstream: SocketAddr) -> String {
    let path = format!("{}/envoy/nginx/nginx.conf", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let module = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("load_module "))
        .and_then(|rest| rest.strip_suffix(';'))
        .expect("nginx.conf loads the headers-more module");
    assert!(
        Path::new(module).exists(),
        "nginx module {module} missing: {INSTALL}"
    );
    let replaced = text
        .replace("listen 8000;", &format!("listen 127.0.0.1:{listen};"))
        .replace(
            "server authgate:8080;",
            &format!("server 127.0.0.1:{};", authgate.port()),
        )
        .replace(
            "server hasura:8080;",
            &format!("server 127.0.0.1:{};", upstream.port()),
        )
        .replace("access_log /dev/stdout;", "access_log off;");
    assert!(
        !replaced.contains("server authgate:")
            && !replaced.contains("server hasura:")
            && !replaced.contains("listen 8000"),
        "nginx.conf addresses changed; update this test"
    );
    replaced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_forwards_allowed_requests_with_session_headers_and_blocks_denials() {
    let nginx_bin = nginx_binary();
    let server = TestServer::start(&hs256_config("")).await;
    let (up_addr, seen) = upstream().await;
    let listen = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("nginx.conf");
    std::fs::write(&cfg_path, config(listen, server.running.http_addr, up_addr)).unwrap();
    // `-p`: pid and temp paths live in the temp dir. `master_process off`:
    // one process, which never switches to an unprivileged user (CI runs as
    // root, and the temp dir is root-only).
    let mut prefix = dir.path().as_os_str().to_owned();
    prefix.push("/");
    let mut nginx = Nginx(
        Command::new(&nginx_bin)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&cfg_path)
            .args(["-e", "stderr", "-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nginx_bin.display())),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{listen}");

    // Ready when it answers; the auth location is internal (404 from nginx,
    // authgate not called).
    let mut ready = false;
    for _ in 0..200 {
        if let Some(status) = nginx.0.try_wait().unwrap() {
            panic!("nginx exited early ({status}); its log is above");
        }
        if let Ok(r) = client.get(format!("{base}/_authgate")).send().await {
            assert_eq!(r.status(), 404, "the auth location is not public");
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "nginx did not start listening");
    let url = format!("{base}/v1/graphql?op=q");

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
        .header("x-hasura-role", "user")
        .header("x-hasura-admin-secret", "guess")
        .header("X-Hasura-Org-Id", "evil")
        .header("x_hasura_role", "admin")
        .header("content-type", "application/json")
        .body(r#"{"query":"{ me { id } }"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "upstream ok");
    let got = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(got.method, "POST");
    assert_eq!(got.uri, "/v1/graphql?op=q");
    assert_eq!(got.body, r#"{"query":"{ me { id } }"}"#);
    assert_eq!(
        got.values("authorization"),
        vec![format!("Bearer {token}").as_str()]
    );
    assert_eq!(
        got.values("x-hasura-user-id"),
        vec!["user-42"],
        "overwritten, never duplicated: {got:?}"
    );
    assert_eq!(got.values("x-hasura-role"), vec!["user"], "{got:?}");
    assert!(got.values("x-hasura-admin-secret").is_empty(), "{got:?}");
    assert!(got.values("x-hasura-org-id").is_empty(), "{got:?}");
    assert!(got.values("x_hasura_role").is_empty(), "{got:?}");
    let hasura: Vec<&str> = got
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-hasura-") || k.starts_with("x_hasura_"))
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(hasura.len(), 2, "only authgate's session: {got:?}");

    // Role override, and the subrequest carries the original method and URI.
    let resp = client
        .get(format!("{base}/v1/graphql"))
        .bearer_auth(&token)
        .header("x-hasura-role", "editor")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(got.method, "GET");
    assert_eq!(got.values("x-hasura-role"), vec!["editor"], "{got:?}");
    assert_eq!(got.values("x-hasura-user-id"), vec!["user-42"], "{got:?}");

    let forwarded = seen.lock().unwrap().len();
    // Missing token: 401 with the challenge and a JSON body.
    let resp = client.post(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenges: Vec<_> = resp.headers().get_all("www-authenticate").iter().collect();
    assert_eq!(challenges, vec!["Bearer"]);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "missing_credentials", "message": "credentials required"})
    );
    // Refused role: 403, no challenge.
    let resp = client
        .post(&url)
        .bearer_auth(&token)
        .header("x-hasura-role", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("www-authenticate").is_none());
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "role_not_allowed", "message": "access denied"})
    );
    // Expired: 401 token_expired, the body rebuilt from X-Authgate-Reason.
    let expired = mint(Algorithm::HS256, SECRET, json!({"exp": now() - 600}), None);
    let resp = client
        .post(&url)
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenges: Vec<_> = resp.headers().get_all("www-authenticate").iter().collect();
    assert_eq!(challenges, vec!["Bearer error=\"invalid_token\""]);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "token_expired", "message": "token expired"})
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        forwarded,
        "denied requests never reach the upstream"
    );

    // A client's copy of Traefik's header disagreeing with nginx's: without
    // `forwardAuth.proxy` authgate refuses it (400), which auth_request turns
    // into 500 and nginx.conf back into authgate's 400 and body.
    let resp = client
        .post(&url)
        .bearer_auth(&token)
        .header("x-forwarded-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "invalid_request", "message": "malformed request"})
    );
    assert_eq!(seen.lock().unwrap().len(), forwarded);

    // authgate decided each request once, over HTTP forward-auth.
    let m = server.metrics().await;
    for line in [
        r#"authgate_check_requests_total{decision="allow",frontend="http",mode="jwt",reason="none"} 2"#,
        r#"reason="invalid_request"} 1"#,
        r#"reason="missing_credentials"} 1"#,
        r#"reason="role_not_allowed"} 1"#,
        r#"reason="token_expired"} 1"#,
    ] {
        assert!(m.contains(line), "{line} in {m}");
    }
}
