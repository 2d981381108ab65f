//! authgate: external authorization for Envoy, Istio, nginx and Traefik in
//! front of Hasura. See `README.md` and `docs/`.
#![forbid(unsafe_code)]

pub mod admission;
pub mod budget;
pub mod claims;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod decision;
pub mod elevation;
pub mod forward_auth;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod pipeline;
pub mod redact;
pub mod request;
pub mod route;
pub mod rules;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
pub mod webhook;
