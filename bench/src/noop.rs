//! The baseline for benchmarks: an ext_authz server on the same tonic stack
//! as authgate that allows every request with one header and decides nothing.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::google::rpc::Status;

struct Noop;

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(Status {
                code: 0,
                ..Default::default()
            }),
            dynamic_metadata: None,
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-hasura-role".into(),
                        value: "noop".into(),
                        raw_value: Vec::new(),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        }))
    }
}

/// On authgate's own runtime configuration (`authgate::server::runtime`).
fn main() {
    match authgate::server::runtime() {
        Ok(rt) => rt.block_on(serve()),
        Err(e) => eprintln!("cannot start the runtime: {e}"),
    }
}

async fn serve() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50061".into())
        .parse()
        .unwrap_or_else(|e| panic!("usage: authgate-bench-noop ADDR ({e})"));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    eprintln!(
        "noop ext_authz listening on {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // Same reset allowance as authgate (src/server.rs): Envoy cancels its
    // in-flight checks when wrk closes connections between runs.
    if let Err(e) = tonic::transport::Server::builder()
        .http2_max_pending_accept_reset_streams(Some(1024))
        .add_service(AuthorizationServer::new(Noop))
        .serve_with_incoming(incoming)
        .await
    {
        eprintln!("server error: {e}");
    }
}
