//! Flood measurements (ignored by `cargo test`; docs/security.md, "Floods"):
//! the real `authgate` binary on 127.0.0.1, flooded the ways an outside
//! review did, while valid decisions are timed and the server's memory is
//! sampled from /proc. It prints a table and asserts only what must hold
//! whatever the machine: every valid decision during a flood is allowed,
//! and every flood connection is answered or closed.
//!
//!   cargo test --release --test floods -- --ignored --nocapture
//!
//! The figures are round trips on one shared machine (client and server on
//! the same cores), so compare a flood's row with the baseline of the same
//! run, not with another run.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::Algorithm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Server {
    child: Child,
    http: SocketAddr,
    grpc: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let yaml = hs256_config(&format!(
        r#"  elevation:
    mode: required
    routes:
      - {{methods: [POST], path: /v1/user/password}}
    webauthn: {{rpId: example.com, rpName: Example, origins: ["https://app.example.com"]}}
    store: {{url: "sqlite://{}"}}
"#,
        dir.path().join("f.db").display()
    ));
    let cfg = dir.path().join("auth.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let (http, grpc) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_authgate"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        http: format!("127.0.0.1:{http}").parse().unwrap(),
        grpc: format!("127.0.0.1:{grpc}").parse().unwrap(),
        _dir: dir,
    };
    for _ in 0..200 {
        if reqwest::get(format!("http://{}/readyz", server.http))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("authgate did not become ready");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn token() -> String {
    mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("alice", &["user"], "user"),
        None,
    )
}

/// Round trips of `n` valid `/check` calls, each on a new connection (as a
/// proxy opening one more does) and of `n` on one kept-alive connection.
async fn time_checks(server: &Server, n: usize) -> (Vec<Duration>, Vec<Duration>) {
    let auth = format!("Bearer {}", token());
    let url = format!("http://{}/check", server.http);
    let timed = async |client: &reqwest::Client| {
        let t = Instant::now();
        let r = client
            .get(&url)
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a valid /check during the flood");
        t.elapsed()
    };
    let mut fresh = Vec::new();
    for _ in 0..n {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        fresh.push(timed(&client).await);
    }
    let client = reqwest::Client::new();
    let mut kept = Vec::new();
    for _ in 0..n {
        kept.push(timed(&client).await);
    }
    (fresh, kept)
}

async fn time_grpc(server: &Server, n: usize) -> Vec<Duration> {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    let mut client = AuthorizationClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    let auth = format!("Bearer {}", token());
    let mut out = Vec::new();
    for _ in 0..n {
        let req = check_request(&[("authorization", &auth)], "/v1/graphql");
        let t = Instant::now();
        let resp = client.check(req).await.unwrap().into_inner();
        out.push(t.elapsed());
        assert_eq!(
            resp.status.map(|s| s.code),
            Some(0),
            "a valid Check during the flood"
        );
    }
    out
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let mut v: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn row(name: &str, v: &[Duration]) {
    println!(
        "| {name} | {:.2} | {:.2} | {:.2} |",
        pct(v, 0.5),
        pct(v, 0.99),
        pct(v, 1.0)
    );
}

async fn half_sent(addr: SocketAddr, head: &[u8]) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head).await.unwrap();
    s
}

/// Seconds until the server answered or closed each connection.
async fn until_closed(conns: Vec<tokio::net::TcpStream>, started: Instant) -> Vec<f64> {
    let waits = conns.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        started.elapsed().as_secs_f64()
    });
    futures_util::future::join_all(waits).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: cargo test --release --test floods -- --ignored --nocapture"]
async fn floods() {
    let server = start().await;
    let pid = server.child.id();
    let n = 200;
    println!("\n| phase | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|");
    let idle_rss = rss_kib(pid);
    let (fresh, kept) = time_checks(&server, n).await;
    row("baseline `/check`, new connection each", &fresh);
    row("baseline `/check`, kept-alive connection", &kept);
    row("baseline gRPC Check", &time_grpc(&server, n).await);

    // 1. 1100 connections starting a WebAuthn verify with one byte of body.
    let auth = format!("Bearer {}", token());
    let head = format!(
        "POST /elevate/webauthn/verify HTTP/1.1\r\nHost: a\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..1100 {
        slow.push(half_sent(server.http, head.as_bytes()).await);
    }
    let (fresh, kept) = time_checks(&server, n).await;
    let ceremony_rss = rss_kib(pid);
    row(
        "1100 slow WebAuthn bodies: `/check`, new connection each",
        &fresh,
    );
    row("1100 slow WebAuthn bodies: `/check`, kept-alive", &kept);
    let closed = until_closed(slow, started).await;
    let ceremony_closed = closed.iter().copied().fold(0.0, f64::max);

    // 2. 200 request heads of 60 KiB that never end.
    let mut head = b"GET /check HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 60 * 1024));
    let started = Instant::now();
    let mut heads = Vec::new();
    for _ in 0..200 {
        heads.push(half_sent(server.http, &head).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heads_rss = rss_kib(pid);
    let (fresh, kept) = time_checks(&server, n).await;
    row(
        "200 half-sent 60 KiB heads: `/check`, new connection each",
        &fresh,
    );
    row("200 half-sent 60 KiB heads: `/check`, kept-alive", &kept);
    let closed = until_closed(heads, started).await;
    let heads_closed = closed.iter().copied().fold(0.0, f64::max);
    let heads_first = closed.iter().copied().fold(f64::MAX, f64::min);

    // 3. One gRPC connection, 300 streams each withholding the last byte of
    //    a 1 MB message.
    let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let announced: usize = 1_000_000;
    let mut partial = vec![0u8];
    partial.extend_from_slice(&u32::try_from(announced).unwrap().to_be_bytes());
    partial.resize(5 + announced - 1, b'x');
    let partial = bytes::Bytes::from(partial);
    let mut streams = Vec::new();
    let mut responses = Vec::new();
    for _ in 0..300 {
        let mut ready = send.clone().ready().await.unwrap();
        let req = http::Request::post("/envoy.service.auth.v3.Authorization/Check")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut stream) = ready.send_request(req, false).unwrap();
        stream.send_data(partial.clone(), false).unwrap();
        streams.push(stream);
        responses.push(response);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grpc_rss = rss_kib(pid);
    row(
        "300 unfinished 1 MB gRPC messages: Check on another connection",
        &time_grpc(&server, n).await,
    );
    let started = Instant::now();
    let answered = futures_util::future::join_all(
        responses
            .into_iter()
            .map(|r| tokio::time::timeout(Duration::from_secs(30), r)),
    )
    .await;
    let grpc_answered = answered.iter().filter(|a| matches!(a, Ok(Ok(_)))).count();
    let grpc_wait = started.elapsed().as_secs_f64();
    drop(streams);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_rss = rss_kib(pid);

    println!("\n| memory (VmRSS) | KiB |\n|---|---:|");
    println!("| idle | {idle_rss} |");
    println!("| 1100 slow WebAuthn bodies open | {ceremony_rss} |");
    println!("| 200 half-sent 60 KiB heads open | {heads_rss} |");
    println!("| 300 unfinished 1 MB gRPC messages open | {grpc_rss} |");
    println!("| after the floods | {after_rss} |");
    println!(
        "\nslow WebAuthn bodies: the last connection answered or closed {ceremony_closed:.1} s after the flood began"
    );
    println!(
        "half-sent heads: closed between {heads_first:.1} s and {heads_closed:.1} s after they were sent"
    );
    println!(
        "unfinished gRPC messages: {grpc_answered} of 300 streams answered, the last within {grpc_wait:.1} s"
    );
    assert_eq!(grpc_answered, 300);
    assert!(ceremony_closed < 60.0 && heads_closed < 60.0);
}
