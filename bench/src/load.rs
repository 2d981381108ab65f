//! Benchmark tool: a closed-loop ext_authz load generator, and the token
//! minting the scenarios need.
//!
//! ```text
//! authgate-bench-load run URL STREAMS SECONDS EXPECTED_CODE REQUESTS [PATH] [CONNECTIONS]
//!                                   (SECONDS 0: each request exactly once;
//!                                    BENCH_NO_REPEAT=1: none sent twice)
//! authgate-bench-load mint ALG KEY_PEM COUNT [KID] [GRANT_KEY_PEM]   > REQUESTS
//! authgate-bench-load jwks ALG KEY_PEM KID                            > jwks.json
//! ```
//!
//! `run` speaks HTTP/2 directly (the `h2` crate) with every request body
//! encoded before the clock starts, so the client spends its core on
//! framing, not on protobuf encoding or tower plumbing: one tonic client
//! saturated near 20k Check/s on this machine, below what the servers serve.
//! Every answer is checked twice: the gRPC status (`grpc-status` trailer)
//! must be OK, and the *decision* (`CheckResponse.status.code`) must equal
//! EXPECTED_CODE. REQUESTS is a file of lines `token` or `token<TAB>grant`
//! (sent as `authorization: Bearer <token>` and `x-elevation-token`), cycled
//! through; `-` sends no credential. Prints one JSON line.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message;
use sha2::{Digest, Sha256};

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("authgate-bench-load: {msg}");
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| fail(format!("missing or bad {name}")))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("run") => run(&args[2..]),
        Some("mint") => mint(&args[2..]),
        Some("jwks") => jwks(&args[2..]),
        _ => fail(
            "usage: authgate-bench-load run URL STREAMS SECONDS EXPECTED_CODE REQUESTS [PATH] [CONNECTIONS]\n\
             \x20      authgate-bench-load mint ALG KEY_PEM COUNT [KID] [GRANT_KEY_PEM]\n\
             \x20      authgate-bench-load jwks ALG KEY_PEM KID",
        ),
    }
}

/// A gRPC-framed CheckRequest (uncompressed flag + length + message).
fn check_body(token: Option<&str>, grant: Option<&str>, path: &str) -> Bytes {
    let mut headers = HashMap::new();
    if let Some(t) = token {
        headers.insert("authorization".to_owned(), format!("Bearer {t}"));
    }
    if let Some(g) = grant {
        headers.insert("x-elevation-token".to_owned(), g.to_owned());
    }
    headers.insert(":authority".to_owned(), "bench".to_owned());
    headers.insert("x-request-id".to_owned(), "bench".to_owned());
    let msg = CheckRequest {
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
    };
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    msg.encode(&mut buf)
        .unwrap_or_else(|e| fail(format!("encode: {e}")));
    buf.freeze()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Counters {
    stop: AtomicBool,
    next: AtomicU64,
    wrong: AtomicU64,
    errors: AtomicU64,
}

fn run(args: &[String]) {
    let url: String = arg(args, 0, "URL");
    let streams: usize = arg(args, 1, "STREAMS");
    let seconds: f64 = arg(args, 2, "SECONDS");
    let expected: i32 = arg(args, 3, "EXPECTED_CODE");
    let requests: String = arg(args, 4, "REQUESTS");
    let path = args.get(5).cloned().unwrap_or_else(|| "/v1/graphql".into());
    let conns: usize = args.get(6).and_then(|c| c.parse().ok()).unwrap_or(1).max(1);
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let bodies: Arc<Vec<Bytes>> = Arc::new(if requests == "-" {
        vec![check_body(None, None, &path)]
    } else {
        let text =
            std::fs::read_to_string(&requests).unwrap_or_else(|e| fail(format!("{requests}: {e}")));
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut parts = l.splitn(2, '\t');
                let token = parts.next();
                check_body(token, parts.next(), &path)
            })
            .collect()
    });
    if bodies.is_empty() {
        fail("no requests");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e));
    rt.block_on(async move {
        let counters = Arc::new(Counters {
            stop: AtomicBool::new(false),
            next: AtomicU64::new(0),
            wrong: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        let mut senders = Vec::new();
        for _ in 0..conns {
            let tcp = tokio::net::TcpStream::connect(&addr)
                .await
                .unwrap_or_else(|e| fail(format!("connect {addr}: {e}")));
            let _ = tcp.set_nodelay(true);
            let (send, conn) = h2::client::Builder::new()
                .initial_window_size(1 << 20)
                .initial_connection_window_size(1 << 24)
                .handshake::<_, Bytes>(tcp)
                .await
                .unwrap_or_else(|e| fail(format!("HTTP/2 handshake: {e}")));
            tokio::spawn(async move {
                let _ = conn.await;
            });
            senders.push(send);
        }
        let uri = format!("http://{addr}{CHECK_PATH}");
        // Warm-up: the first requests of every distinct body set a cache up;
        // not measured.
        // SECONDS = 0: every request exactly once (fills caches), no warm-up.
        let once = seconds <= 0.0;
        let warm = if once { 0 } else { bodies.len().min(100) };
        // BENCH_NO_REPEAT: stop after SECONDS or once every request after the
        // warm-up was sent, whichever comes first (distinct tokens stay new).
        let no_repeat = once || std::env::var_os("BENCH_NO_REPEAT").is_some();
        for body in bodies.iter().take(warm) {
            let _ = call(&senders[0], &uri, body.clone()).await;
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for s in 0..streams {
            let (send, uri, bodies, counters) = (
                senders[s % conns].clone(),
                uri.clone(),
                bodies.clone(),
                counters.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(200_000);
                while !counters.stop.load(Ordering::Relaxed) {
                    let n = counters.next.fetch_add(1, Ordering::Relaxed) as usize;
                    if no_repeat && n + warm >= bodies.len() {
                        break;
                    }
                    let body = bodies[(n + warm) % bodies.len()].clone();
                    let t = Instant::now();
                    match call(&send, &uri, body).await {
                        Ok(code) => {
                            latencies.push(t.elapsed().as_micros() as u64);
                            if code != expected {
                                counters.wrong.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            counters.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            }));
        }
        if !once {
            let counters = counters.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                counters.stop.store(true, Ordering::Relaxed);
            });
        }
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
            counters.wrong.load(Ordering::Relaxed),
            counters.errors.load(Ordering::Relaxed)
        );
    });
}

/// One Check: returns the decision code, or an error when the call failed
/// at the HTTP/2 or gRPC level.
async fn call(
    send: &h2::client::SendRequest<Bytes>,
    uri: &str,
    body: Bytes,
) -> Result<i32, String> {
    let req = http::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| e.to_string())?;
    let mut send = send.clone().ready().await.map_err(|e| e.to_string())?;
    let (response, mut stream) = send.send_request(req, false).map_err(|e| e.to_string())?;
    stream.send_data(body, true).map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut recv = response.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.map_err(|e| e.to_string())?;
    let grpc_status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok());
    if grpc_status != Some("0") {
        return Err(format!("grpc-status {grpc_status:?}"));
    }
    if data.len() < 5 {
        return Err("short gRPC message".into());
    }
    let msg = CheckResponse::decode(&data[5..]).map_err(|e| e.to_string())?;
    Ok(msg.status.map(|s| s.code).unwrap_or(-1))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn encoding_key(alg: Algorithm, pem: &str) -> EncodingKey {
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            Ok(EncodingKey::from_secret(pem.as_bytes()))
        }
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .unwrap_or_else(|e| fail(format!("key: {e}")))
}

/// COUNT distinct Hasura tokens (user `u<i>`, valid for a week), minted on
/// every core. With GRANT_KEY_PEM, each line also carries an elevation grant
/// for that token (ES256, as authgate's `grant.signingKey`).
fn mint(args: &[String]) {
    let alg: Algorithm = arg(args, 0, "ALG");
    let key_path: String = arg(args, 1, "KEY_PEM");
    let count: usize = arg(args, 2, "COUNT");
    let kid = args.get(3).filter(|k| !k.is_empty() && *k != "-").cloned();
    let grant_key = args.get(4).map(|p| {
        let pem = std::fs::read_to_string(p).unwrap_or_else(|e| fail(format!("{p}: {e}")));
        encoding_key(Algorithm::ES256, &pem)
    });
    let pem =
        std::fs::read_to_string(&key_path).unwrap_or_else(|e| fail(format!("{key_path}: {e}")));
    let key = encoding_key(alg, &pem);
    let exp = now() + 7 * 24 * 3600;
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    let lines: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (key, kid, grant_key) = (&key, &kid, &grant_key);
                scope.spawn(move || {
                    let mut header = Header::new(alg);
                    header.kid = kid.clone();
                    (t..count)
                        .step_by(threads)
                        .map(|i| {
                            let user = format!("u{i}");
                            let claims = serde_json::json!({
                                "sub": user, "iat": now(), "exp": exp,
                                "claims.jwt.hasura.io": {
                                    "x-hasura-allowed-roles": ["user"],
                                    "x-hasura-default-role": "user",
                                    "x-hasura-user-id": user,
                                },
                            });
                            let token = jsonwebtoken::encode(&header, &claims, key)
                                .unwrap_or_else(|e| fail(format!("sign: {e}")));
                            match grant_key {
                                None => token,
                                Some(gk) => {
                                    let grant = serde_json::json!({
                                        "iss": "authgate", "aud": "authgate-elevation",
                                        "sub": user, "iat": now(), "exp": exp,
                                        "jti": format!("bench-{i}"),
                                        "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())),
                                    });
                                    let g = jsonwebtoken::encode(
                                        &Header::new(Algorithm::ES256),
                                        &grant,
                                        gk,
                                    )
                                    .unwrap_or_else(|e| fail(format!("sign grant: {e}")));
                                    format!("{token}\t{g}")
                                }
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut out = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in &lines {
        out.push_str(l);
        out.push('\n');
    }
    print!("{out}");
}

/// The public JWKS for a private key PEM, with `kid`.
fn jwks(args: &[String]) {
    let alg: Algorithm = arg(args, 0, "ALG");
    let key_path: String = arg(args, 1, "KEY_PEM");
    let kid: String = arg(args, 2, "KID");
    let pem =
        std::fs::read_to_string(&key_path).unwrap_or_else(|e| fail(format!("{key_path}: {e}")));
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding_key(alg, &pem), alg)
        .unwrap_or_else(|e| fail(format!("jwk: {e}")));
    jwk.common.key_id = Some(kid);
    println!("{}", serde_json::json!({ "keys": [jwk] }));
}
