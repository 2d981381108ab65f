//! A closed-loop ext_authz load generator: one HTTP/2 connection with N
//! concurrent streams, each sending Check requests back to back for a fixed
//! time. Every answer's gRPC *decision* code (`CheckResponse.status.code`) is
//! checked, not only the transport status. Prints one JSON line.
//!
//! usage: authgate-bench-load URL STREAMS SECONDS EXPECTED_CODE TOKENS_FILE|- [PATH]
//! (tokens are sent as `authorization: Bearer <token>`, cycling through the
//! file; `-` sends no token).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

fn request(token: Option<&str>, path: &str) -> CheckRequest {
    let mut headers = std::collections::HashMap::new();
    if let Some(t) = token {
        headers.insert("authorization".to_owned(), format!("Bearer {t}"));
    }
    headers.insert(":authority".to_owned(), "bench".to_owned());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: path.into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!(
            "usage: authgate-bench-load URL STREAMS SECONDS EXPECTED_CODE TOKENS_FILE|- [PATH]"
        );
        std::process::exit(2);
    }
    let url = args[1].clone();
    let streams: usize = args[2].parse().expect("STREAMS is a number");
    let seconds: f64 = args[3].parse().expect("SECONDS is a number");
    let expected: i32 = args[4].parse().expect("EXPECTED_CODE is a number");
    let tokens: Arc<Vec<String>> = Arc::new(if args[5] == "-" {
        Vec::new()
    } else {
        std::fs::read_to_string(&args[5])
            .expect("tokens file readable")
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    });
    let path = args.get(6).cloned().unwrap_or_else(|| "/v1/graphql".into());
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("valid URL")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("server reachable");
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    // Warm up connections and caches briefly.
    {
        let mut c = AuthorizationClient::new(channel.clone());
        for i in 0..tokens.len().clamp(1, 100) {
            let _ = c
                .check(request(tokens.get(i).map(String::as_str), &path))
                .await;
        }
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let (channel, stop, next, wrong, errors, tokens, path) = (
            channel.clone(),
            stop.clone(),
            next.clone(),
            wrong.clone(),
            errors.clone(),
            tokens.clone(),
            path.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut client = AuthorizationClient::new(channel);
            let mut latencies = Vec::with_capacity(100_000);
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                let token = if tokens.is_empty() {
                    None
                } else {
                    Some(tokens[n % tokens.len()].as_str())
                };
                let req = request(token, &path);
                let t = Instant::now();
                match client.check(req).await {
                    Ok(r) => {
                        latencies.push(t.elapsed().as_micros() as u64);
                        let code = r.into_inner().status.map(|s| s.code).unwrap_or(-1);
                        if code != expected {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "{{\"requests\":{},\"rps\":{:.0},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"wrong_decisions\":{},\"errors\":{}}}",
        all.len(),
        all.len() as f64 / elapsed,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        wrong.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
}
