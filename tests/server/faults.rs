//! Fault injection: real authgate servers on 127.0.0.1:0 whose dependencies
//! fail on purpose (JWKS endpoint, webhook, PostgreSQL credential store,
//! config file), and the resource limits of the front doors. Every fault has
//! a defined outcome (docs/security.md, "Failure behaviour") that is asserted
//! here; every client call runs under a tokio timeout, so a hang fails the
//! test instead of blocking it, and a panic hook records any panic raised
//! outside the test code.
//!
//! Already covered elsewhere and not repeated: JWKS 500 / garbage after a good
//! fetch (tests/server/jwks.rs `outage_keeps_serving_the_last_good_keys`), webhook
//! 500 / garbage / slow / unreachable (tests/server/webhook.rs
//! `hook_failures_are_internal_errors_and_never_panics`), a broken config on
//! SIGHUP and a deleted config file with the real binary (tests/server/cli.rs
//! `serve_answers_reloads_on_sighup_and_drains_on_sigterm`).
//!
//! The PostgreSQL tests start their own cluster (see tests/server/store.rs);
//! the server is never stopped: a TCP proxy owned by the test goes down.

use crate::common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use common::*;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

// ---------------------------------------------------------------------------
// Support: timeouts, panics, metrics, clients.

/// Awaits `f`, failing the test if it takes longer than `secs`.
async fn within<F: Future>(secs: u64, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("hung for {secs} s: {what}"),
    }
}

static SERVER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every panic raised outside the test code (authgate or a
/// dependency, even inside a task whose panic tokio swallows).
fn watch_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let file = info.location().map(|l| l.file()).unwrap_or("");
            if !file.starts_with("tests/") && !file.contains("/tests/") {
                SERVER_PANICS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(info.to_string());
            }
            previous(info);
        }));
    });
}

fn assert_no_panics() {
    let p = SERVER_PANICS.lock().unwrap_or_else(|e| e.into_inner());
    assert!(p.is_empty(), "panics outside the tests: {p:?}");
}

/// The value of one series in a Prometheus text page (0 when absent).
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(server: &TestServer) -> String {
    within(5, "GET /metrics", server.metrics()).await
}

const JWKS_ERRORS: &str = r#"authgate_jwks_fetches_total{result="error",source="idp"}"#;
const RELOAD_ERRORS: &str = r#"authgate_config_reloads_total{result="error"}"#;
const RELOAD_OK: &str = r#"authgate_config_reloads_total{result="ok"}"#;
const RELOAD_SUCCESSFUL: &str = "authgate_config_last_reload_successful";
const LAST_SUCCESS: &str = r#"authgate_jwks_last_success_timestamp_seconds{source="idp"}"#;

fn internal_errors(frontend: &str, mode: &str) -> String {
    format!(
        r#"authgate_check_requests_total{{decision="deny",frontend="{frontend}",mode="{mode}",reason="internal_error"}}"#
    )
}

/// One gRPC Check (fresh connection), bounded.
async fn grpc(server: &TestServer, headers: &[(&str, &str)], path: &str) -> Outcome {
    let r = within(
        20,
        "gRPC Check",
        server.check_request(check_request(headers, path)),
    )
    .await;
    outcome(&r)
}

/// One HTTP forward-auth call; the status and the reason header.
async fn http_check(server: &TestServer, headers: &[(&str, &str)]) -> (u16, String) {
    let mut rb = reqwest::Client::new().get(server.http_url("/check/graphql"));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = within(20, "GET /check", rb.send()).await.unwrap();
    let reason = resp
        .headers()
        .get("x-authgate-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (resp.status().as_u16(), reason)
}

async fn status_of(url: String) -> u16 {
    within(5, &url.clone(), reqwest::get(url))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// gRPC health (1 SERVING, 2 NOT_SERVING), the same for the server as a
/// whole (service "", what Envoy's and Kubernetes' checks ask) and for
/// ext_authz.
async fn grpc_health(server: &TestServer) -> i32 {
    // The two names are set one after the other: a change may fall between
    // the two reads, but they agree again at once.
    let mut answers = Vec::new();
    for _ in 0..5 {
        let all = grpc_health_of(server, "").await;
        let ext_authz = grpc_health_of(server, "envoy.service.auth.v3.Authorization").await;
        if all == ext_authz {
            return all;
        }
        answers.push((all, ext_authz));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("service \"\" and ext_authz disagree: {answers:?}");
}

async fn grpc_health_of(server: &TestServer, service: &str) -> i32 {
    within(5, "gRPC health", async {
        let channel = tonic::transport::Channel::from_shared(server.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    })
    .await
}

/// Polls `probe` every 50 ms until it holds, failing after `secs`.
async fn eventually<F, Fut>(secs: u64, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !probe().await {
        assert!(Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn rs256_token(pem: &str, kid: &str, user: &str) -> String {
    mint(
        Algorithm::RS256,
        pem,
        hasura_claims(user, &["user"], "user"),
        Some(kid),
    )
}

// ---------------------------------------------------------------------------
// Support: a TCP proxy the test can take down, make reset or stall, and bring
// back on the same port.

#[derive(Clone, Copy, PartialEq, Debug)]
enum Link {
    /// Forward bytes both ways.
    Forward,
    /// Accept, then close at once (a crashing peer).
    Reset,
    /// Accept and never answer (a black hole).
    Stall,
}

#[derive(Clone)]
struct Proxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    link: Arc<Mutex<Link>>,
    listener: Arc<Mutex<Option<AbortHandle>>>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            target: Arc::new(Mutex::new(target)),
            link: Arc::new(Mutex::new(Link::Forward)),
            listener: Arc::new(Mutex::new(None)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let me = self.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let link = *me.link.lock().unwrap();
                let target = *me.target.lock().unwrap();
                let conn = tokio::spawn(async move {
                    match link {
                        Link::Forward => {
                            if let Ok(mut outbound) = TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                            }
                        }
                        Link::Reset => drop(inbound),
                        Link::Stall => {
                            let _keep = inbound;
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        }
                    }
                });
                me.conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        *self.listener.lock().unwrap() = Some(task.abort_handle());
    }

    /// Closes every open connection (pooled clients see them die).
    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Connection refused: the port closes, open connections die.
    fn down(&self) {
        if let Some(l) = self.listener.lock().unwrap().take() {
            l.abort();
        }
        self.cut();
    }

    /// Listens again on the same port, with `link`.
    async fn up(&self, link: Link) {
        self.set(link);
        if self.listener.lock().unwrap().is_some() {
            return;
        }
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("rebinding {}: {e}", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Changes how new connections are treated; open ones are closed.
    fn set(&self, link: Link) {
        *self.link.lock().unwrap() = link;
        self.cut();
    }

    fn retarget(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
        self.cut();
    }
}

/// A bare HTTP server answering every request with a chunked body (no
/// Content-Length): `padding` bytes of JSON whitespace, then `tail`. Valid
/// JSON, so only a streaming size cap refuses it.
async fn chunked_server(padding: usize, tail: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tail = tail.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
                    )
                    .await;
                let chunk = vec![b' '; 64 * 1024];
                let mut sent = 0;
                while sent < padding {
                    let frame = format!("{:x}\r\n", chunk.len());
                    if s.write_all(frame.as_bytes()).await.is_err()
                        || s.write_all(&chunk).await.is_err()
                        || s.write_all(b"\r\n").await.is_err()
                    {
                        return;
                    }
                    sent += chunk.len();
                }
                let frame = format!("{:x}\r\n{tail}\r\n0\r\n\r\n", tail.len());
                let _ = s.write_all(frame.as_bytes()).await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------
// JWKS endpoint faults.

#[derive(Clone, Copy, Debug, PartialEq)]
enum JwksFault {
    Status500,
    GarbageJson,
    HugeBody,
    HugeChunkedBody,
    ConnectionRefused,
    ConnectionReset,
    Slow,
}

const ALL_JWKS_FAULTS: [JwksFault; 7] = [
    JwksFault::Status500,
    JwksFault::GarbageJson,
    JwksFault::HugeBody,
    JwksFault::HugeChunkedBody,
    JwksFault::ConnectionRefused,
    JwksFault::ConnectionReset,
    JwksFault::Slow,
];

/// A JWKS endpoint behind a proxy, so that every fault can be staged.
struct Idp {
    jwks: JwksServer,
    proxy: Proxy,
    chunked: SocketAddr,
    good: String,
}

impl Idp {
    async fn start(body: String) -> Idp {
        let jwks = JwksServer::start(body.clone()).await;
        let proxy = Proxy::start(jwks.addr).await;
        let chunked = chunked_server(2 * 1024 * 1024, body.clone()).await;
        Idp {
            jwks,
            proxy,
            chunked,
            good: body,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.proxy.addr)
    }

    async fn inject(&self, fault: JwksFault) {
        match fault {
            JwksFault::Status500 => self.jwks.set(500, "internal error".into()),
            JwksFault::GarbageJson => self.jwks.set(200, "{\"keys\": [{\"kty\": ".into()),
            // The good keys, padded over the 1 MiB cap (Content-Length set).
            JwksFault::HugeBody => {
                let mut padded: Value = serde_json::from_str(&self.good).unwrap();
                padded["pad"] = Value::String("x".repeat(2 * 1024 * 1024));
                self.jwks.set(200, padded.to_string());
            }
            JwksFault::HugeChunkedBody => self.proxy.retarget(self.chunked),
            JwksFault::ConnectionRefused => self.proxy.down(),
            JwksFault::ConnectionReset => self.proxy.set(Link::Reset),
            // Beyond the 5 s fetch timeout.
            JwksFault::Slow => self.jwks.state.lock().unwrap().delay = Duration::from_secs(7),
        }
    }

    /// Undoes every fault; the endpoint then serves `body`.
    async fn heal(&self, body: String) {
        self.jwks.set(200, body);
        self.jwks.state.lock().unwrap().delay = Duration::ZERO;
        self.proxy.retarget(self.jwks.addr);
        self.proxy.up(Link::Forward).await;
    }
}

fn jwks_config(url: &str, settings: &str) -> String {
    format!(
        r#"
definition:
  settings: {{{settings}}}
  modes:
    - id: idp
      mode: jwt
      key: {{jwkFromUrl: {{value: "{url}"}}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
"#
    )
}

/// Defined outcome: a JWKS that cannot be fetched at start leaves the server
/// up but not ready (/readyz 503, gRPC health NOT_SERVING); decisions that
/// need its keys answer at once with `internal_error` (gRPC UNAVAILABLE /
/// HTTP 503, no challenge) and never wait for the fetch; the failures are
/// counted; once the endpoint heals, the retry (backoff 1 s doubling to 10 s)
/// loads the keys and the server becomes ready.
async fn jwks_fault_at_start(fault: JwksFault) {
    let rsa = private_key(Algorithm::RS256);
    let good = jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")]);
    let idp = Idp::start(good.clone()).await;
    idp.inject(fault).await;
    let server = within(10, "start", TestServer::start(&jwks_config(&idp.url(), ""))).await;
    let token = rs256_token(&rsa, "k1", "u");
    let auth = bearer(&token);

    let started = Instant::now();
    let o = grpc(&server, &[("authorization", &auth)], "/graphql").await;
    assert_eq!(
        (o.code, o.http_status, o.reason().as_str()),
        (14, 503, "internal_error"),
        "{fault:?}: {o:?}"
    );
    assert!(!o.headers.contains_key("www-authenticate"), "{fault:?}");
    assert_eq!(
        http_check(&server, &[("authorization", &auth)]).await,
        (503, "internal_error".to_owned()),
        "{fault:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{fault:?}: decisions never wait for the start-up fetch"
    );
    assert_eq!(
        status_of(server.http_url("/readyz")).await,
        503,
        "{fault:?}"
    );
    assert_eq!(
        status_of(server.http_url("/healthz")).await,
        200,
        "{fault:?}"
    );
    assert_eq!(grpc_health(&server).await, 2, "{fault:?}: NOT_SERVING");
    // The failed fetch is counted (the slow one after its 5 s timeout).
    eventually(12, &format!("{fault:?}: fetch error counted"), || async {
        metric(&metrics(&server).await, JWKS_ERRORS) >= 1.0
    })
    .await;
    let m = metrics(&server).await;
    assert_eq!(metric(&m, r#"authgate_jwks_keys{source="idp"}"#), 0.0);
    assert!(metric(&m, &internal_errors("grpc", "jwt")) >= 1.0, "{m}");
    // No success yet: no time of last success (not a 0 read as 1970).
    assert!(!m.contains(LAST_SUCCESS), "{fault:?}: {m}");
    // /readyz says which source is missing, and why.
    let ready = within(5, "GET /readyz", reqwest::get(server.http_url("/readyz")))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["ready"], false, "{body}");
    let missing = body["missing"][0].as_str().unwrap_or_default();
    assert!(
        missing.starts_with(&format!(
            "jwks idp ({}",
            idp.url().split('?').next().unwrap()
        )) && missing.contains("no keys yet"),
        "{fault:?}: {body}"
    );

    idp.heal(good).await;
    eventually(15, &format!("{fault:?}: ready after healing"), || async {
        server.running.shared.is_ready()
    })
    .await;
    assert_eq!(
        status_of(server.http_url("/readyz")).await,
        200,
        "{fault:?}"
    );
    let o = grpc(&server, &[("authorization", &auth)], "/graphql").await;
    assert_eq!(o.code, 0, "{fault:?}: {o:?}");
    eventually(5, &format!("{fault:?}: SERVING"), || async {
        grpc_health(&server).await == 1
    })
    .await;
    assert!(metric(&metrics(&server).await, LAST_SUCCESS) > 1.0e9);
    within(10, "shutdown", server.running.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_faults_at_start_leave_the_server_unready_and_deny_internal_error() {
    watch_panics();
    let tasks: Vec<_> = ALL_JWKS_FAULTS
        .into_iter()
        .map(|f| tokio::spawn(jwks_fault_at_start(f)))
        .collect();
    for t in tasks {
        within(40, "a JWKS start-up fault scenario", t)
            .await
            .unwrap();
    }
    assert_no_panics();
}

/// Defined outcome: once keys have loaded, a failing refresh keeps serving
/// the last good keys (stale-if-error): tokens with known kids keep passing,
/// the server stays ready, every failure is counted. An unknown kid still
/// triggers its one refetch, which fails within the 5 s fetch timeout, and
/// the token is `invalid_token`. When the endpoint heals, the next refresh
/// brings the new keys.
async fn jwks_fault_after_good_fetch(fault: JwksFault) {
    let rsa = private_key(Algorithm::RS256);
    let rsa2 = fixture("rsa2.key");
    let idp = Idp::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let server = within(
        10,
        "start",
        TestServer::start(&jwks_config(&idp.url(), "reloadInterval: 1")),
    )
    .await;
    within(10, "ready", server.wait_ready()).await;
    let before = metric(&metrics(&server).await, JWKS_ERRORS);
    idp.inject(fault).await;
    eventually(15, &format!("{fault:?}: refresh error counted"), || async {
        metric(&metrics(&server).await, JWKS_ERRORS) > before
    })
    .await;

    let started = Instant::now();
    let known = rs256_token(&rsa, "k1", "u");
    let o = grpc(&server, &[("authorization", &bearer(&known))], "/graphql").await;
    assert_eq!(o.code, 0, "{fault:?}: last good keys serve: {o:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{fault:?}");
    assert_eq!(
        status_of(server.http_url("/readyz")).await,
        200,
        "{fault:?}"
    );
    assert_eq!(grpc_health(&server).await, 1, "{fault:?}: SERVING");
    let m = metrics(&server).await;
    assert_eq!(metric(&m, r#"authgate_jwks_keys{source="idp"}"#), 1.0);

    // An unknown kid: one refetch on the request path, bounded by the fetch
    // timeout (5 s) and well inside the decision timeout (10 s).
    let started = Instant::now();
    let unknown = rs256_token(&rsa2, "k-unknown", "u");
    let o = grpc(&server, &[("authorization", &bearer(&unknown))], "/graphql").await;
    assert_eq!(
        (o.code, o.reason().as_str()),
        (16, "invalid_token"),
        "{fault:?}: {o:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{fault:?}: the refetch is bounded ({:?})",
        started.elapsed()
    );

    idp.heal(jwks_of(vec![
        public_jwk(Algorithm::RS256, &rsa, "k1"),
        public_jwk(Algorithm::RS256, &rsa2, "k2"),
    ]))
    .await;
    let rotated = rs256_token(&rsa2, "k2", "u");
    eventually(
        15,
        &format!("{fault:?}: new keys after healing"),
        || async {
            grpc(&server, &[("authorization", &bearer(&rotated))], "/graphql")
                .await
                .code
                == 0
        },
    )
    .await;
    within(10, "shutdown", server.running.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_faults_after_a_good_fetch_keep_the_last_good_keys() {
    watch_panics();
    let tasks: Vec<_> = ALL_JWKS_FAULTS
        .into_iter()
        .map(|f| tokio::spawn(jwks_fault_after_good_fetch(f)))
        .collect();
    for t in tasks {
        within(45, "a JWKS refresh fault scenario", t)
            .await
            .unwrap();
    }
    assert_no_panics();
}

/// Defined outcome of a key removed at the IdP and later re-added, with no
/// background refresh due (refresh follows Cache-Control, >= 60 s): the key
/// set changes only through unknown-kid refetches, at most one per URL per
/// `unknownKidCooldown`. A new token signed by the removed key is
/// `invalid_token` once a refetch has seen the removal; a token verified
/// before the removal stays accepted from the verified-token cache (at most
/// `tokenCacheTtl`, never past its `exp`); the re-added key is accepted at the
/// first refetch after the cooldown.
#[tokio::test]
async fn key_removed_then_re_added_follows_the_refetch_rate_limit() {
    watch_panics();
    let rsa = private_key(Algorithm::RS256);
    let rsa2 = fixture("rsa2.key");
    let jwks = JwksServer::start(jwks_of(vec![public_jwk(Algorithm::RS256, &rsa, "k1")])).await;
    let server = TestServer::start(&jwks_config(&jwks.url(), "unknownKidCooldown: 2")).await;
    within(10, "ready", server.wait_ready()).await;
    assert_eq!(jwks.hits(), 1);
    let t1 = rs256_token(&rsa, "k1", "before");
    assert_eq!(
        grpc(&server, &[("authorization", &bearer(&t1))], "/")
            .await
            .code,
        0
    );

    // The IdP rotates: k1 removed, k2 added. The first k2 token refetches.
    jwks.set(
        200,
        jwks_of(vec![public_jwk(Algorithm::RS256, &rsa2, "k2")]),
    );
    let t2 = rs256_token(&rsa2, "k2", "u");
    assert_eq!(
        grpc(&server, &[("authorization", &bearer(&t2))], "/")
            .await
            .code,
        0
    );
    assert_eq!(jwks.hits(), 2);
    // A new token on the removed key: its kid is unknown now, and the
    // cooldown forbids another refetch.
    let removed = rs256_token(&rsa, "k1", "after");
    let o = grpc(&server, &[("authorization", &bearer(&removed))], "/").await;
    assert_eq!(o.reason(), "invalid_token", "{o:?}");
    assert_eq!(jwks.hits(), 2, "no refetch inside the cooldown");
    // The token verified before the removal is still served from the cache.
    assert_eq!(
        grpc(&server, &[("authorization", &bearer(&t1))], "/")
            .await
            .code,
        0,
        "verified-token cache outlives a key removal (bounded by tokenCacheTtl)"
    );

    // The IdP re-adds k1. Inside the cooldown the kid stays unknown...
    jwks.set(
        200,
        jwks_of(vec![
            public_jwk(Algorithm::RS256, &rsa, "k1"),
            public_jwk(Algorithm::RS256, &rsa2, "k2"),
        ]),
    );
    let again = rs256_token(&rsa, "k1", "again");
    let o = grpc(&server, &[("authorization", &bearer(&again))], "/").await;
    assert_eq!(o.reason(), "invalid_token", "{o:?}");
    assert_eq!(jwks.hits(), 2);
    // ... and after it, one refetch brings it back.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let o = grpc(&server, &[("authorization", &bearer(&again))], "/").await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(jwks.hits(), 3);
    // A burst of tokens with the same and other kids costs nothing more.
    for i in 0..20 {
        let t = rs256_token(&rsa, if i % 2 == 0 { "k1" } else { "k-none" }, "b");
        grpc(&server, &[("authorization", &bearer(&t))], "/").await;
    }
    assert_eq!(jwks.hits(), 3);
    assert_no_panics();
}

// ---------------------------------------------------------------------------
// Webhook faults.

/// A hook whose routes misbehave; counts the calls in progress.
#[derive(Clone, Default)]
struct Hook {
    active: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn hook_handler(State(hook): State<Hook>, uri: axum::http::Uri) -> Response {
    let now = hook.active.fetch_add(1, Ordering::SeqCst) + 1;
    hook.peak.fetch_max(now, Ordering::SeqCst);
    let _active = Active(hook.active.clone());
    match uri.path() {
        "/ok" => (
            [("content-type", "application/json")],
            r#"{"x-hasura-role":"hooked"}"#,
        )
            .into_response(),
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(120)).await;
            StatusCode::OK.into_response()
        }
        // Valid JSON over the 1 MiB answer cap.
        "/huge" => (
            [("content-type", "application/json")],
            format!(
                r#"{{"x-hasura-role":"user","pad":"{}"}}"#,
                "x".repeat(2 * 1024 * 1024)
            ),
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn start_hook() -> (SocketAddr, Hook) {
    let hook = Hook::default();
    let app = Router::new()
        .fallback(any(hook_handler))
        .with_state(hook.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, hook)
}

fn hook_config(addr: SocketAddr, path: &str, http_client: &str, settings: &str) -> String {
    format!(
        "definition:\n  settings: {{{settings}}}\n  modes:\n    - mode: webhook\n      url: {{value: \"http://{addr}{path}\"}}\n      method: GET\n{http_client}"
    )
}

/// Asserts the `internal_error` answer of every front door: gRPC 14/503,
/// HTTP `/check` 503, Hasura webhook endpoints an empty 401.
async fn assert_internal_error_everywhere(server: &TestServer, what: &str) {
    let o = grpc(server, &[], "/graphql").await;
    assert_eq!(
        (o.code, o.http_status, o.reason().as_str()),
        (14, 503, "internal_error"),
        "{what}: {o:?}"
    );
    assert_eq!(
        http_check(server, &[]).await,
        (503, "internal_error".to_owned()),
        "{what}"
    );
    let resp = within(
        20,
        "GET /auth/hasura",
        reqwest::get(server.http_url("/auth/hasura")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 401, "{what}");
    assert_eq!(within(5, "body", resp.text()).await.unwrap(), "", "{what}");
}

/// Defined outcomes (beside tests/server/webhook.rs, which covers 500, garbage JSON,
/// a slow hook under its `httpClient.timeout` and an unreachable hook): an
/// answer over 1 MiB (the hook's or its OAuth2 token endpoint's), a hook that
/// resets the connection or refuses it, and a
/// hook that hangs longer than the decision timeout (its own timeout and
/// retries set longer) all give `internal_error`, in bounded time; the hook
/// recovering brings allowed decisions back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_faults_are_internal_errors_in_bounded_time() {
    watch_panics();
    let (addr, _hook) = start_hook().await;

    // Over the 1 MiB answer cap.
    let server = TestServer::start(&hook_config(addr, "/huge", "", "")).await;
    assert_internal_error_everywhere(&server, "huge answer").await;
    within(10, "shutdown", server.running.shutdown()).await;

    // An OAuth2 token endpoint (webhook `httpClient.authentication`) whose
    // answer is over 1 MiB (valid JSON after 2 MiB of whitespace, streamed).
    let token_endpoint = chunked_server(
        2 * 1024 * 1024,
        r#"{"access_token":"t","expires_in":3600}"#.into(),
    )
    .await;
    let oauth = |token_url: SocketAddr| {
        format!(
            "      httpClient:\n        authentication:\n          type: oauth2\n          flows:\n            clientCredentials:\n              tokenUrl: {{value: \"http://{token_url}/token\"}}\n              clientId: {{value: id}}\n              clientSecret: {{value: secret}}\n"
        )
    };
    let server = TestServer::start(&hook_config(addr, "/ok", &oauth(token_endpoint), "")).await;
    assert_internal_error_everywhere(&server, "huge OAuth2 token answer").await;
    within(10, "shutdown", server.running.shutdown()).await;

    // Reset, refused, then back.
    let proxy = Proxy::start(addr).await;
    let server = TestServer::start(&hook_config(proxy.addr, "/ok", "", "")).await;
    assert_eq!(grpc(&server, &[], "/").await.code, 0);
    proxy.set(Link::Reset);
    let started = Instant::now();
    assert_internal_error_everywhere(&server, "connection reset").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    proxy.down();
    let started = Instant::now();
    assert_internal_error_everywhere(&server, "connection refused").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    proxy.up(Link::Forward).await;
    let o = grpc(&server, &[], "/").await;
    assert_eq!((o.code, o.headers["x-hasura-role"].as_str()), (0, "hooked"));
    within(10, "shutdown", server.running.shutdown()).await;

    // A hook that hangs, with a 60 s client timeout and retries: the
    // decision timeout (2 s here) ends every decision.
    let server = TestServer::start(&hook_config(
        addr,
        "/hang",
        "      httpClient: {timeout: 60s, retry: {maxAttempts: 5, delay: 10}}\n",
        "decisionTimeout: 2",
    ))
    .await;
    let started = Instant::now();
    let (g, h) = tokio::join!(grpc(&server, &[], "/"), http_check(&server, &[]));
    let elapsed = started.elapsed();
    assert_eq!(
        (g.code, g.reason().as_str()),
        (14, "internal_error"),
        "{g:?}"
    );
    assert_eq!(h, (503, "internal_error".to_owned()));
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(5),
        "cut by the decision timeout: {elapsed:?}"
    );
    let m = metrics(&server).await;
    assert_eq!(metric(&m, &internal_errors("grpc", "none")), 1.0, "{m}");
    assert_eq!(metric(&m, &internal_errors("http", "none")), 1.0, "{m}");
    within(10, "shutdown", server.running.shutdown()).await;
    assert_no_panics();
}

// ---------------------------------------------------------------------------
// PostgreSQL credential store faults.

const ORIGIN: &str = "https://app.example.com";

/// The admin URL of the test PostgreSQL server, and its address.
fn postgres() -> (reqwest::Url, SocketAddr) {
    let raw = postgres_url();
    let url = reqwest::Url::parse(&raw).unwrap();
    let host = url.host_str().unwrap().to_owned();
    let port = url.port().unwrap_or(5432);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .unwrap()
        .next()
        .unwrap();
    (url, addr)
}

fn store_config(mode: &str, store_url: &str, settings: &str) -> String {
    hs256_config(&format!(
        r#"  settings: {{{settings}}}
  elevation:
    mode: {mode}
    routes: [{{pathPrefix: /v1/user/}}]
    webauthn: {{rpId: example.com, origins: ["{ORIGIN}"]}}
    store: {{url: "{store_url}"}}
"#
    ))
}

fn user_token(user: &str) -> String {
    mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims(user, &["user"], "user"),
        None,
    )
}

fn fresh_user() -> String {
    format!("fault-{}", uuid::Uuid::new_v4())
}

async fn api(server: &TestServer, method: &str, path: &str, user: &str) -> (u16, Value) {
    let rb = reqwest::Client::new()
        .request(method.parse().unwrap(), server.http_url(path))
        .bearer_auth(user_token(user));
    let rb = if method == "POST" {
        rb.json(&json!({}))
    } else {
        rb
    };
    let resp = within(20, path, rb.send()).await.unwrap();
    let status = resp.status().as_u16();
    let text = within(5, "body", resp.text()).await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn elevated_route(server: &TestServer, user: &str) -> Outcome {
    grpc(
        server,
        &[("authorization", &bearer(&user_token(user)))],
        "/v1/user/password",
    )
    .await
}

/// Defined outcome of the credential store going down (connection refused,
/// or connections reset) and coming back: WebAuthn endpoints answer 503
/// `internal_error`; a check that needs the store (mode `recommended`, a user
/// whose key count is not cached) is `internal_error` within the pool's
/// 5 s acquire timeout; checks that do not need it (other routes, users whose
/// key count is cached for 30 s) are unaffected; readiness does not change.
/// When the store is back, the next calls succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_down_and_back() {
    watch_panics();
    let (mut url, pg) = postgres();
    let proxy = Proxy::start(pg).await;
    url.set_port(Some(proxy.addr.port())).unwrap();
    let server = within(
        30,
        "start",
        TestServer::start(&store_config("recommended", url.as_str(), "")),
    )
    .await;
    let (cached, needs_store, caller) = (fresh_user(), fresh_user(), fresh_user());
    assert_eq!(elevated_route(&server, &cached).await.code, 0);

    proxy.down();
    let off_route_auth = bearer(&user_token(&needs_store));
    let off_route_headers = [("authorization", off_route_auth.as_str())];
    let started = Instant::now();
    let (on_route, add, list, cached_user, off_route) = tokio::join!(
        elevated_route(&server, &needs_store),
        api(&server, "POST", "/user/webauthn/add", &caller),
        api(&server, "GET", "/user/webauthn", &caller),
        elevated_route(&server, &cached),
        grpc(&server, &off_route_headers, "/graphql",),
    );
    assert_eq!(
        (
            on_route.code,
            on_route.http_status,
            on_route.reason().as_str()
        ),
        (14, 503, "internal_error"),
        "{on_route:?}"
    );
    assert_eq!(
        (add.0, add.1["error"].as_str()),
        (503, Some("internal_error"))
    );
    assert_eq!(
        (list.0, list.1["error"].as_str()),
        (503, Some("internal_error"))
    );
    assert_eq!(cached_user.code, 0, "key count cached: {cached_user:?}");
    assert_eq!(off_route.code, 0, "no store needed: {off_route:?}");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "bounded by the acquire timeout: {:?}",
        started.elapsed()
    );
    // Still ready (decisions that need no store go on), the store named as
    // degraded, without its password.
    let ready = within(5, "GET /readyz", reqwest::get(server.http_url("/readyz")))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    let degraded = body["degraded"].to_string();
    assert!(
        degraded.contains("elevation store: an operation failed"),
        "{body}"
    );
    assert!(
        !degraded.contains(url.password().unwrap_or("\u{0}")),
        "{body}"
    );

    // Connections accepted then reset: the same answers, at once.
    proxy.up(Link::Reset).await;
    let started = Instant::now();
    let o = elevated_route(&server, &fresh_user()).await;
    assert_eq!(o.reason(), "internal_error", "{o:?}");
    let (status, body) = api(&server, "POST", "/user/webauthn/add", &caller).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("internal_error"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Back: the pool reconnects.
    proxy.set(Link::Forward);
    eventually(20, "store recovered", || async {
        elevated_route(&server, &needs_store).await.code == 0
    })
    .await;
    let (status, body) = api(&server, "POST", "/user/webauthn/add", &caller).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["publicKey"]["challenge"].is_string(), "{body}");
    let m = metrics(&server).await;
    assert!(metric(&m, &internal_errors("grpc", "jwt")) >= 2.0, "{m}");
    // Every failed store operation, decisions' and WebAuthn calls', counted.
    assert!(
        metric(&m, "authgate_elevation_store_errors_total") >= 3.0,
        "{m}"
    );
    within(10, "shutdown", server.running.shutdown()).await;
    assert_no_panics();
}

/// Defined outcome of a store that accepts connections but never answers:
/// checks and WebAuthn calls are `internal_error` when the decision timeout
/// (2 s here; the pool's acquire timeout is 5 s) runs out, never later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_that_hangs_is_cut_by_the_decision_timeout() {
    watch_panics();
    let (mut url, pg) = postgres();
    let proxy = Proxy::start(pg).await;
    url.set_port(Some(proxy.addr.port())).unwrap();
    let server = within(
        30,
        "start",
        TestServer::start(&store_config(
            "recommended",
            url.as_str(),
            "decisionTimeout: 2",
        )),
    )
    .await;
    proxy.set(Link::Stall);
    let (a, b) = (fresh_user(), fresh_user());
    let started = Instant::now();
    let (o, add) = tokio::join!(
        elevated_route(&server, &a),
        api(&server, "POST", "/user/webauthn/add", &b),
    );
    let elapsed = started.elapsed();
    assert_eq!(
        (o.code, o.reason().as_str()),
        (14, "internal_error"),
        "{o:?}"
    );
    assert_eq!(
        (add.0, add.1["error"].as_str()),
        (503, Some("internal_error"))
    );
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    proxy.set(Link::Forward);
    eventually(20, "store recovered", || async {
        elevated_route(&server, &fresh_user()).await.code == 0
    })
    .await;
    within(10, "shutdown", server.running.shutdown()).await;
    assert_no_panics();
}

/// Defined outcome: a store that cannot be reached at start stops the start
/// (`authgate serve` exits 1 with the reason); nothing is served half-open.
#[tokio::test]
async fn postgres_store_down_at_start_refuses_to_start() {
    watch_panics();
    let (mut url, pg) = postgres();
    let proxy = Proxy::start(pg).await;
    url.set_port(Some(proxy.addr.port())).unwrap();
    proxy.down();
    let config = authgate::config::parse(
        &store_config("required", url.as_str(), ""),
        &authgate::config::ProcessEnv,
    )
    .unwrap();
    let err = match within(
        10,
        "Shared::new",
        authgate::server::Shared::new(config, None),
    )
    .await
    {
        Ok(_) => panic!("started without its store"),
        Err(e) => e,
    };
    assert!(err.contains("elevation store"), "{err}");
    assert!(!err.contains("postgres:postgres@"), "no password: {err}");
    assert_no_panics();
}

// ---------------------------------------------------------------------------
// Config file faults during reload.

fn role_config(role: &str) -> String {
    format!(
        "version: v1\nkind: RelyAuth\ndefinition:\n  modes:\n    - mode: noAuth\n      sessionVariables:\n        x-hasura-role: {{value: {role}}}\n"
    )
}

/// Defined outcome: a config file that is deleted, emptied, truncated,
/// replaced with invalid YAML or with a config that does not validate is
/// rejected on reload (SIGHUP or the file watcher): the last good config keeps
/// serving, the server stays ready, each rejection is counted once in
/// `authgate_config_reloads_total{result="error"}` (SIGHUP and the watcher
/// seeing the same edit is one attempt) and sets
/// `authgate_config_last_reload_successful` to 0; fixing the file is picked
/// up by the watcher and sets it back to 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_faults_during_reload_keep_the_last_good_config() {
    watch_panics();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auth.yaml");
    std::fs::write(&path, role_config("first")).unwrap();
    let config = authgate::config::load_file(&path).unwrap();
    let shared = authgate::server::Shared::new(config, Some(path.clone()))
        .await
        .unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let running = authgate::server::start(shared.clone(), any, any)
        .await
        .unwrap();
    let watcher = authgate::server::watch_config(shared.clone()).unwrap();
    let server = TestServer { running };
    let role = || async {
        let o = grpc(&server, &[], "/").await;
        o.headers.get("x-hasura-role").cloned().unwrap_or_default()
    };
    assert_eq!(role().await, "first");
    // The load at start is not a reload.
    let m = metrics(&server).await;
    assert_eq!(metric(&m, RELOAD_OK), 0.0, "{m}");
    assert_eq!(metric(&m, RELOAD_SUCCESSFUL), 1.0, "{m}");

    let full = role_config("second");
    let faults: [(&str, Option<String>); 5] = [
        (
            "invalid YAML",
            Some("definition: {modes: [\n  - mode: noAuth\n\t".into()),
        ),
        ("emptied", Some(String::new())),
        ("truncated", Some(full[..full.len() / 2].to_owned())),
        (
            "invalid config",
            Some(role_config("second").replace("mode: noAuth", "mode: noAuth\n      extra: 1")),
        ),
        ("deleted", None),
    ];
    for (what, content) in faults {
        let errors = metric(&metrics(&server).await, RELOAD_ERRORS);
        match content {
            Some(c) => std::fs::write(&path, c).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
        // SIGHUP's path.
        assert!(
            within(10, "reload", shared.reload()).await.is_err(),
            "{what}: rejected"
        );
        assert_eq!(role().await, "first", "{what}: the last good config serves");
        assert_eq!(status_of(server.http_url("/readyz")).await, 200, "{what}");
        let m = metrics(&server).await;
        assert_eq!(
            metric(&m, RELOAD_ERRORS),
            errors + 1.0,
            "{what}: counted\n{m}"
        );
        assert_eq!(metric(&m, RELOAD_SUCCESSFUL), 0.0, "{what}\n{m}");
    }
    // The watcher sees the last edit too (it polls every 2 s): not counted
    // again.
    let errors = metric(&metrics(&server).await, RELOAD_ERRORS);
    tokio::time::sleep(authgate::server::CONFIG_POLL * 2).await;
    assert_eq!(metric(&metrics(&server).await, RELOAD_ERRORS), errors);
    // The watcher also notices a broken file on its own.
    let errors = metric(&metrics(&server).await, RELOAD_ERRORS);
    std::fs::write(&path, "definition: [").unwrap();
    eventually(8, "the watcher counts the broken file", || async {
        metric(&metrics(&server).await, RELOAD_ERRORS) > errors
    })
    .await;
    assert_eq!(role().await, "first");
    // An edit loaded by SIGHUP and undone before the watcher's next poll:
    // the watcher brings the file's content back.
    std::fs::write(&path, role_config("undone")).unwrap();
    within(10, "reload", shared.reload()).await.unwrap();
    assert_eq!(role().await, "undone");
    std::fs::write(&path, "definition: [").unwrap();
    eventually(8, "the watcher loads the file as it is again", || async {
        metric(&metrics(&server).await, RELOAD_ERRORS) > errors + 1.0
    })
    .await;
    assert_eq!(role().await, "undone");
    // Fixed: the watcher reloads it.
    let ok = metric(&metrics(&server).await, RELOAD_OK);
    std::fs::write(&path, role_config("fixed")).unwrap();
    eventually(8, "the watcher loads the fixed file", || async {
        role().await == "fixed"
    })
    .await;
    let m = metrics(&server).await;
    assert_eq!(metric(&m, RELOAD_OK), ok + 1.0, "{m}");
    assert_eq!(metric(&m, RELOAD_SUCCESSFUL), 1.0, "{m}");
    watcher.abort();
    within(10, "shutdown", server.running.shutdown()).await;
    assert_no_panics();
}

// ---------------------------------------------------------------------------
// Resource limits.

#[test]
fn decision_timeout_setting_defaults_and_validation() {
    let parse = |settings: &str| {
        authgate::config::parse(
            &format!(
                "definition:\n  settings: {{{settings}}}\n  modes: [{{mode: noAuth, sessionVariables: {{x-hasura-role: {{value: a}}}}}}]\n"
            ),
            &authgate::config::ProcessEnv,
        )
    };
    assert_eq!(
        parse("").unwrap().settings.decision_timeout,
        Duration::from_secs(10)
    );
    assert_eq!(
        parse("decisionTimeout: 3")
            .unwrap()
            .settings
            .decision_timeout,
        Duration::from_secs(3)
    );
    let err = parse("decisionTimeout: 0").unwrap_err().to_string();
    assert!(
        err.contains("definition.settings.decisionTimeout: must be at least 1 second"),
        "{err}"
    );
    let err = parse("decisionTimeout: soon").unwrap_err().to_string();
    assert!(err.contains("definition.settings.decisionTimeout"), "{err}");
}

/// At most `MAX_CONCURRENT_REQUESTS` (1024) gRPC Checks run in the pipeline
/// at once; more wait for a slot within their decision timeout. A saturated
/// gRPC door leaves the HTTP door and the health endpoints answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_bounds_the_pipeline_per_front_door() {
    watch_panics();
    assert_eq!(authgate::limits::MAX_CONCURRENT_REQUESTS, 1024);
    let (addr, hook) = start_hook().await;
    let cfg = format!(
        "definition:\n  settings: {{decisionTimeout: 8}}\n  modes:\n    - mode: apiKey\n      tokenLocation: {{in: header, name: X-Key}}\n      value: {{value: k}}\n      sessionVariables: {{x-hasura-role: {{value: service}}}}\n    - mode: webhook\n      url: {{value: \"http://{addr}/hang\"}}\n      method: GET\n      httpClient: {{timeout: 60s}}\n"
    );
    let server = TestServer::start(&cfg).await;
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(
            within(
                5,
                "connect",
                tonic::transport::Channel::from_shared(server.grpc_url())
                    .unwrap()
                    .connect(),
            )
            .await
            .unwrap(),
        );
    }
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..1100 {
        let mut client = AuthorizationClient::new(channels[i % 4].clone());
        calls.push(tokio::spawn(async move {
            let r = client.check(check_request(&[], "/")).await;
            (r.map(|r| outcome(&r.into_inner()).code), started.elapsed())
        }));
    }
    eventually(14, "the hook sees 1024 calls", || async {
        hook.active.load(Ordering::SeqCst) >= 1024
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hook.peak.load(Ordering::SeqCst),
        1024,
        "never more than the slots"
    );
    // The HTTP door has its own slots; health never waits.
    let t = Instant::now();
    assert_eq!(http_check(&server, &[("x-key", "k")]).await.0, 200);
    assert_eq!(status_of(server.http_url("/healthz")).await, 200);
    assert_eq!(status_of(server.http_url("/readyz")).await, 200);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // A gRPC check that needs no hook still queues for a slot, and gets one
    // only when the first hung decisions time out (8 s after they began: long
    // enough for 1024 hook calls to be open at once on a loaded CI machine).
    let o = grpc(&server, &[("x-key", "k")], "/").await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        started.elapsed() > Duration::from_millis(7900),
        "{:?}",
        started.elapsed()
    );
    for c in calls {
        let (code, at) = within(20, "a saturated Check", c).await.unwrap();
        assert_eq!(code.unwrap(), 14, "internal_error, never a gRPC error");
        assert!(at < Duration::from_secs(12), "{at:?}");
    }
    within(10, "shutdown", server.running.shutdown()).await;
    assert_no_panics();
}

/// A `CheckRequest` over 1 MiB is refused as a call (`OUT_OF_RANGE`; Envoy
/// then denies, fail closed); under it, an oversized token is just an
/// `invalid_token` denial (16 KiB token cap). The server keeps serving.
#[tokio::test]
async fn grpc_check_request_size_limit() {
    watch_panics();
    let server = TestServer::start(&hs256_config("")).await;
    let mut client = server.client().await;
    let huge = format!("Bearer {}", "a".repeat(1024 * 1024 + 1));
    let err = within(
        10,
        "oversized Check",
        client.check(check_request(&[("authorization", &huge)], "/")),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    let big = format!("Bearer {}", "a".repeat(512 * 1024));
    let o = grpc(&server, &[("authorization", &big)], "/").await;
    assert_eq!(o.reason(), "invalid_token", "{o:?}");
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("u", &["user"], "user"),
        None,
    );
    let o = grpc(&server, &[("authorization", &bearer(&token))], "/").await;
    assert_eq!(o.code, 0);
    assert_no_panics();
}

/// HTTP front door: more than 100 header fields, or more than 64 KiB of
/// request target and headers (16 KiB of headers over HTTP/2), is 431 before
/// any route runs; an oversized token within those limits is an
/// `invalid_token` denial.
#[tokio::test]
async fn http_header_limits() {
    watch_panics();
    let server = TestServer::start(&hs256_config("")).await;
    let client = reqwest::Client::new();
    let send = |headers: Vec<(String, String)>| {
        let mut rb = client.get(server.http_url("/check"));
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        async move {
            let resp = within(10, "GET /check", rb.send()).await.unwrap();
            resp.status().as_u16()
        }
    };
    let many = |n: usize| {
        (0..n)
            .map(|i| (format!("x-h{i}"), "v".to_owned()))
            .collect()
    };
    assert_eq!(send(many(90)).await, 401);
    assert_eq!(send(many(150)).await, 431);
    let one = |n: usize| vec![("x-big".to_owned(), "v".repeat(n))];
    assert_eq!(send(one(60 * 1024)).await, 401);
    assert_eq!(send(one(65 * 1024)).await, 431);
    assert_eq!(send(one(512 * 1024)).await, 431);
    // The request target counts too: 40 KiB of path plus 30 KiB of header.
    let path = format!("/check/{}", "p".repeat(40 * 1024));
    let long_target = |header: usize| {
        let rb = client
            .get(server.http_url(&path))
            .header("x-big", "v".repeat(header));
        async move {
            within(10, "GET /check/...", rb.send())
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(long_target(1024).await, 401);
    assert_eq!(long_target(30 * 1024).await, 431);
    // HTTP/2 (h2c) to the HTTP door: hyper's 16 KiB header-list limit
    // comes first.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (size, expected) in [(8 * 1024, 401), (20 * 1024, 431)] {
        let resp = within(
            10,
            "h2 GET /check",
            h2.get(server.http_url("/check"))
                .header("x-big", "v".repeat(size))
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status().as_u16(), expected, "{size}");
    }
    // The token cap (16 KiB) inside the header limits.
    let resp = within(
        10,
        "GET /check",
        client
            .get(server.http_url("/check"))
            .header("authorization", format!("Bearer {}", "a".repeat(20 * 1024)))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            resp.status().as_u16(),
            resp.headers()["x-authgate-reason"].to_str().unwrap()
        ),
        (401, "invalid_token")
    );
    assert_eq!(status_of(server.http_url("/healthz")).await, 200);
    assert_no_panics();
}

/// Body caps: WebAuthn endpoints 64 KiB, Hasura webhook POSTs 1 MiB; over
/// them the answer is 413 and nothing is decided.
#[tokio::test]
async fn http_body_limits() {
    watch_panics();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("authgate.db").display());
    let server = TestServer::start(&store_config("required", &db, "")).await;
    let client = reqwest::Client::new();
    let token = user_token(&fresh_user());
    let post = |path: &str, body: String| {
        let rb = client
            .post(server.http_url(path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body);
        async move {
            within(10, "POST", rb.send())
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let pad = |n: usize| json!({"nickname": "key", "pad": "x".repeat(n)}).to_string();
    assert_eq!(post("/user/webauthn/add", pad(1024)).await, 200);
    assert_eq!(post("/user/webauthn/add", pad(70 * 1024)).await, 413);
    assert_eq!(post("/elevate/webauthn/verify", pad(70 * 1024)).await, 413);
    let hook_body = |n: usize| {
        json!({"headers": {"authorization": format!("Bearer {token}")}, "pad": "x".repeat(n)})
            .to_string()
    };
    assert_eq!(post("/auth/ddn", hook_body(1024)).await, 200);
    assert_eq!(post("/auth/ddn", hook_body(1100 * 1024)).await, 413);
    assert_no_panics();
}

/// A WebAuthn call whose identity check hangs (a webhook mode that never
/// answers) is cut by the decision timeout: 503 `internal_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webauthn_calls_are_bounded_by_the_decision_timeout() {
    watch_panics();
    let (addr, _hook) = start_hook().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"definition:
  settings: {{decisionTimeout: 1}}
  modes:
    - mode: webhook
      url: {{value: "http://{addr}/hang"}}
      method: GET
      httpClient: {{timeout: 60s}}
  elevation:
    mode: required
    webauthn: {{rpId: example.com, origins: ["{ORIGIN}"]}}
    store: {{url: "sqlite://{}"}}
"#,
        dir.path().join("a.db").display()
    );
    let server = TestServer::start(&cfg).await;
    let started = Instant::now();
    let (status, body) = api(&server, "GET", "/user/webauthn", "u").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("internal_error"))
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(
        status_of(server.http_url("/.well-known/jwks.json")).await,
        200
    );
    assert_no_panics();
}
